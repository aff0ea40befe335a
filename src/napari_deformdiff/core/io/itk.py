"""NRRD/NHDR, MHA/MHD and DICOM (plain series and single files; cines: dicom.py) with SimpleITK.

SimpleITK arrays are already ([T,] Z, Y, X); its spacing/origin/direction are (x, y, z[, t]) and
are converted by Geometry.from_itk. A 4D image is a time series of 3D volumes.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from .atomic import atomic_output, split_suffix
from .nifti import squeeze_single_slice
from .volume import Volume, as_label_array, check_values, decide_labels

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom")
WRITE_SUFFIXES = (".nrrd", ".mha")
HEADER_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
HEADER_BYTES = 1 << 16  # headers are text at the start of the file; voxels follow in .mha/.nrrd

# True lets a header's data file lie outside the header's folder (CLI --allow-external-data).
ALLOW_EXTERNAL_DATA = contextvars.ContextVar("allow_external_data", default=False)


def header_data_files(path: Path) -> list[str]:
    """The data file names a MetaImage or NRRD header refers to ([] for data in the file itself)."""
    with open(path, "rb") as fh:
        text = fh.read(HEADER_BYTES).decode("latin-1")
    lines = text.splitlines()
    nrrd = lines[:1] and lines[0].startswith("NRRD")
    for k, line in enumerate(lines):
        if nrrd:
            if not line.strip():  # end of the NRRD header
                break
            key, sep, value = line.partition(":")
            if not sep or key.strip().lower() not in ("data file", "datafile"):
                continue
        else:
            key, sep, value = line.partition("=")
            if not sep or key.strip() != "ElementDataFile":
                continue
        value = value.lstrip("=").strip()
        first = value.split()[0] if value.split() else ""
        if first.upper() == "LIST":
            return [ln.strip() for ln in lines[k + 1:] if ln.strip()]
        if not nrrd and first.upper() in ("LOCAL", ""):
            return []
        return [first if "%" in first else value]  # a printf pattern: its first word is the names' form
    return []


def check_data_files(path: Path) -> None:
    """A header's data files must lie in its folder or below, unless ALLOW_EXTERNAL_DATA."""
    if path.suffix.lower() not in HEADER_SUFFIXES or ALLOW_EXTERNAL_DATA.get():
        return
    try:
        names = header_data_files(path)
    except OSError:
        return  # SimpleITK reports the unreadable file
    top = os.path.realpath(path.parent)
    for name in names:
        real = os.path.realpath(os.path.join(path.parent, name))
        if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
            raise InputError(
                f"{path.name}: its header names the data file {name[:120]!r}, outside the header's folder "
                f"({path.parent}); refused so that a header cannot pull in unrelated files. Move the data "
                "beside the header, or pass --allow-external-data if you trust this header."
            )


def read_itk(path: str | Path, *, as_labels: bool | None = None) -> Volume:
    import SimpleITK as sitk

    path = Path(path)
    check_data_files(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"{path.name}: could not be read (truncated, corrupt or not a {_kind(path)} "
            f"file): {_itk_message(exc)}"
        ) from exc
    return _volume_from_itk(image, path, split_suffix(path.name)[0], as_labels)


def write_itk(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    import SimpleITK as sitk

    data = volume.data
    geometry = volume.geometry
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if geometry.ndim == 2 and (volume.has_time or geometry.embedding is not None):
        # a slice that has a 3D placement or a time axis is stored as one-slice 3D(+t), so that
        # reading it back is unambiguous (a 3D image could be 2D+t or a volume).
        geometry = geometry.as_3d()
        data = data[:, None] if volume.has_time else data[None]
    image = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=False)
    spacing, origin, direction = geometry.to_itk()
    if volume.has_time:
        n = geometry.ndim
        d = np.eye(n + 1)
        d[:n, :n] = np.asarray(direction).reshape(n, n)
        spacing = (*spacing, volume.time_spacing or 1.0)
        origin = (*origin, 0.0)
        direction = tuple(d.ravel())
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def _volume_from_itk(image, path: Path, name: str, as_labels: bool | None) -> Volume:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path.name}: this image has {image.GetNumberOfComponentsPerPixel()} components per "
            "voxel (RGB or a vector/displacement field), not a scalar volume."
        )
    dim = image.GetDimension()
    if dim not in (2, 3, 4):
        raise InputError(f"{path.name}: {dim}-D images are not supported.")
    data = sitk.GetArrayFromImage(image)
    warnings = check_values(data, path.name)
    n = min(dim, 3)
    spacing = image.GetSpacing()[:n]
    origin = image.GetOrigin()[:n]
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:n, :n]
    try:
        geometry = Geometry.from_itk(spacing, origin, direction.ravel())
    except ValueError as exc:
        raise InputError(f"{path.name}: invalid geometry in the header: {exc}") from exc
    time_spacing = float(image.GetSpacing()[3]) if dim == 4 else None
    data, geometry = squeeze_single_slice(data, geometry, has_time=dim == 4)
    is_labels = decide_labels(data, path, as_labels)
    if is_labels:
        data = as_label_array(data)
    return Volume(data, geometry, is_labels, name, time_spacing, str(path), warnings)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"}.get(
        suffix, "DICOM"
    )


def _itk_message(exc: Exception) -> str:
    """ITK's exception text without the C++ file/line noise."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("/", "itk::", "Exception thrown"))]
    return (useful or lines or ["unknown error"])[-1][:300]
