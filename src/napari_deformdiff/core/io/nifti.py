"""NIfTI-1/2 (.nii, .nii.gz) reading and writing with nibabel.

NIfTI stores (i, j, k[, t]) with an i,j,k -> RAS affine; we hold ([T,] Z, Y, X) arrays and an
array-order LPS Geometry (see geometry.py). A single-slice volume opens as 2D(+t) and keeps its
3D placement for writing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from .atomic import atomic_output
from .volume import Volume, as_label_array, check_values, decide_labels

SUFFIXES = (".nii", ".nii.gz")
_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def read_nifti(path: str | Path, *, as_labels: bool | None = None) -> Volume:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    try:
        img = nib.load(str(path))
        raw = np.asanyarray(img.dataobj)
    except (ImageFileError, EOFError, OSError, ValueError) as exc:
        raise InputError(
            f"{path.name}: not a readable NIfTI file (truncated or corrupt?): {exc}"
        ) from exc
    if raw.ndim == 5 and raw.shape[3] == 1:
        raise InputError(
            f"{path.name}: this is a vector image (e.g. a displacement field), not a scalar "
            "volume; open it as a field instead."
        )
    if raw.ndim > 4:
        raise InputError(f"{path.name}: {raw.ndim}-D NIfTI images are not supported (shape {raw.shape}).")
    warnings = check_values(raw, path.name)
    while raw.ndim < 3:
        raw = raw[..., None]
    data = np.ascontiguousarray(raw.T)  # (i, j, k[, t]) -> ([t,] k, j, i)
    geometry = Geometry.from_nifti_affine(img.affine)
    time_spacing = None
    if raw.ndim == 4:
        zooms = img.header.get_zooms()
        unit = img.header.get_xyzt_units()[1]
        if len(zooms) > 3 and zooms[3] > 0:
            time_spacing = float(zooms[3]) * _TIME_UNIT_SECONDS.get(unit, 1.0)
    data, geometry = squeeze_single_slice(data, geometry, has_time=raw.ndim == 4)
    is_labels = decide_labels(data, path, as_labels)
    if is_labels:
        data = as_label_array(data)
    return Volume(data, geometry, is_labels, _stem(path), time_spacing, str(path), warnings)


def write_nifti(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    import nibabel as nib

    data = volume.data
    geometry = volume.geometry
    if geometry.ndim == 2:  # NIfTI is 3D: a slice gets its singleton k axis back
        data = data[:, None] if volume.has_time else data[None]
    arr = data.T  # ([T,] Z, Y, X) -> (X, Y, Z[, T])
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    affine = geometry.to_nifti_affine()
    img = nib.Nifti1Image(np.asarray(arr), affine, dtype=arr.dtype)
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    img.header.set_xyzt_units("mm", "sec")
    if volume.has_time:
        zooms = list(img.header.get_zooms())
        zooms[3] = volume.time_spacing or 1.0
        img.header.set_zooms(zooms)
    if volume.is_labels:
        img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def squeeze_single_slice(data: np.ndarray, geometry: Geometry, *, has_time: bool):
    """([T,] 1, Y, X) with a 3D geometry -> ([T,] Y, X) with a 2D geometry that remembers it."""
    z_axis = 1 if has_time else 0
    if geometry.ndim == 3 and data.shape[z_axis] == 1 and data.ndim - has_time == 3:
        return np.take(data, 0, axis=z_axis), geometry.slice_2d()
    return data, geometry


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
