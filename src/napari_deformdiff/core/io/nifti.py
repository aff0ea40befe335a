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
from .nifti_geometry import geometry_from_header
from .volume import Volume, as_label_array, check_values, decide_labels

SUFFIXES = (".nii", ".nii.gz")


def read_nifti(path: str | Path, *, as_labels: bool | None = None) -> Volume:
    """Voxels with nibabel, geometry and intensity scaling decided as ITK does."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    path = Path(path)
    try:
        # nibabel's affine of a bad header; its log lines would repeat our message
        with np.errstate(invalid="ignore", over="ignore"), nib.imageglobals.LoggingOutputSuppressor():
            img = nib.load(str(path))
        if not isinstance(img, nib.analyze.AnalyzeImage):  # e.g. CIFTI-2, also .nii
            raise InputError(
                f"{path.name}: a {type(img).__name__.replace('Image', '')} file, not a NIfTI "
                "volume; it is not supported."
            )
        raw = np.asanyarray(img.dataobj.get_unscaled())
        header = _unchecked_header(img)
    except InputError:
        raise
    except HeaderDataError as exc:
        if "data code 1 " in f"{exc} ":
            raise InputError(f"{path.name}: a 1-bit (NIfTI datatype 1, DT_BINARY) image; it is not supported: "
                             "save the mask as uint8 (datatype 2).") from exc
        raise InputError(f"{path.name}: invalid NIfTI header: {exc}") from exc
    except (ImageFileError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise InputError(
            f"{path.name}: not a readable NIfTI file (truncated or corrupt?): {exc}"
        ) from exc
    if raw.ndim == 5 and raw.shape[3] == 1:
        raise InputError(
            f"{path.name}: this is a vector image (e.g. a displacement field), not a scalar "
            "volume; open it as a field instead."
        )
    while raw.ndim > 3 and raw.shape[-1] == 1:  # ITK drops trailing singleton dimensions
        raw = raw[..., 0]
    if raw.ndim > 4:
        raise InputError(f"{path.name}: {raw.ndim}-D NIfTI images are not supported (shape {raw.shape}).")
    is_nifti = isinstance(header, nib.Nifti1Header)  # NIfTI-2 headers subclass it
    fields = {key: header[key] for key in header}
    try:
        decided = geometry_from_header(fields, is_nifti=is_nifti)
    except ValueError as exc:
        raise InputError(f"{path.name}: invalid geometry in the header: {exc}") from exc
    warnings = check_values(raw, path.name)
    if is_nifti:
        raw = _rescale_as_itk(raw, header["scl_slope"], header["scl_inter"])
    if raw.dtype.byteorder not in ("=", "|"):
        raw = raw.astype(raw.dtype.newbyteorder("="))
    while raw.ndim < 3:
        raw = raw[..., None]
    data = np.ascontiguousarray(raw.T)  # (i, j, k[, t]) -> ([t,] k, j, i)
    geometry = decided.geometry
    time_spacing = decided.time_spacing if raw.ndim == 4 else None
    warnings += [f"{path.name}: {w}" for w in decided.warnings]
    data, geometry = squeeze_single_slice(data, geometry, has_time=raw.ndim == 4)
    is_labels = decide_labels(data, path, as_labels)
    if is_labels:
        data = as_label_array(data)
    return Volume(data, geometry, is_labels, _stem(path), time_spacing, str(path), warnings)


def _unchecked_header(img):
    """The header fields as stored: nibabel's loader would already 'fix' negative pixdim."""
    from nibabel.openers import ImageOpener

    holder = img.file_map.get("header") or img.file_map["image"]
    with ImageOpener(holder.filename, "rb") as fh:
        return type(img.header).from_fileobj(fh, check=False)


def _rescale_as_itk(raw: np.ndarray, slope, inter) -> np.ndarray:
    """scl_slope/scl_inter as ITK applies them: integers become float32, floats keep their type."""
    slope = float(slope) if np.isfinite(slope) else 0.0
    inter = float(inter) if np.isfinite(inter) else 0.0
    eps = np.finfo(np.float64).eps
    if abs(slope) < eps:
        slope = 1.0
    if abs(slope - 1.0) <= eps and abs(inter) <= eps:
        return raw
    if raw.dtype.kind in "iub":
        return (raw.astype(np.float32).astype(np.float64) * slope + inter).astype(np.float32)
    if raw.dtype.kind == "f":
        return (raw.astype(np.float64) * slope + inter).astype(raw.dtype.newbyteorder("="))
    return raw


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
    zooms = list(geometry.as_3d().spacing[::-1])  # pixdim must be the spacing (ITK reads it)
    if volume.has_time:
        zooms.append(volume.time_spacing or 1.0)
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
