"""Pick the reader or writer for a path from its suffix (or folder content)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from . import acdc, dicom, itk, nifti
from .atomic import split_suffix
from .volume import Volume

READ_SUFFIXES = nifti.SUFFIXES + itk.SUFFIXES
WRITE_SUFFIXES = (".nii.gz", ".nii") + itk.WRITE_SUFFIXES
_DICOM_MAGIC_OFFSET = 128


def suffix_of(path: str | Path) -> str:
    return split_suffix(Path(path).name)[1].lower()


def is_dicom_folder(folder: Path, *, probe: int = 20) -> bool:
    """True if the folder holds files named *.dcm or starting with the DICOM preamble."""
    checked = 0
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        if p.suffix.lower() in (".dcm", ".dicom"):
            return True
        if checked < probe:
            checked += 1
            try:
                with open(p, "rb") as fh:
                    fh.seek(_DICOM_MAGIC_OFFSET)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                continue
    return False


def can_read(path: str | Path) -> bool:
    """Whether this plugin should claim `path` (napari asks before reading)."""
    path = Path(path)
    if path.is_dir():
        return acdc.is_acdc_folder(path) or is_dicom_folder(path)
    return suffix_of(path) in READ_SUFFIXES


def read_volume(path: str | Path, *, as_labels: bool | None = None) -> Volume:
    """One file -> one Volume."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if path.is_dir():
        raise InputError(f"{path} is a folder; use read_path for DICOM or ACDC folders.")
    suffix = suffix_of(path)
    if suffix in nifti.SUFFIXES:
        return nifti.read_nifti(path, as_labels=as_labels)
    if suffix in (".dcm", ".dicom"):
        return dicom.read_dicom_file(path, as_labels=as_labels)
    if suffix in itk.SUFFIXES:
        return itk.read_itk(path, as_labels=as_labels)
    raise InputError(
        f"{path.name}: unknown file type '{suffix or path.name}'; readable: "
        + ", ".join(READ_SUFFIXES) + ", DICOM folders and ACDC patient folders."
    )


def read_path(path: str | Path, *, as_labels: bool | None = None) -> list[Volume]:
    """A file, a DICOM series folder or an ACDC patient folder -> its Volumes."""
    path = Path(path)
    if path.is_dir():
        if acdc.is_acdc_folder(path):
            return acdc.read_acdc_patient(path).volumes()
        return dicom.read_dicom_folder(path, as_labels=as_labels)
    return [read_volume(path, as_labels=as_labels)]


def write_volume(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a Volume; the format follows the suffix (.nii.gz, .nii, .nrrd, .mha)."""
    suffix = suffix_of(path)
    if suffix in (".nii", ".nii.gz"):
        return nifti.write_nifti(volume, path, overwrite=overwrite)
    if suffix in itk.WRITE_SUFFIXES:
        return itk.write_itk(volume, path, overwrite=overwrite)
    raise InputError(
        f"cannot write '{Path(path).name}': choose one of " + ", ".join(WRITE_SUFFIXES) + "."
    )
