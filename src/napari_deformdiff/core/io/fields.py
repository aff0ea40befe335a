"""Displacement fields on disk in the ITK convention (NIfTI, MetaImage, NRRD) via SimpleITK.

Our fields are voxel displacements in array-axis order on a grid, pull convention:
frame(x) = source(x + u(x)). ITK's DisplacementFieldTransform is a pull too: Resample gives
output(p) = input(p + d(p)), with d in physical mm (LPS), vector components in (x, y[, z]) order,
stored on the output (here: source) grid. So d = (direction * spacing) @ u per voxel, reversed
to ITK component order. Files written here are plain ITK vector images (NIfTI intent "vector",
as ANTs writes them): vectors are LPS, exactly what ITK reads back.

A 2D field is written on the grid the image writers give its image, so that ITK applies it to
the image file as written: a one-slice 3D field (zero through-plane component) in time sequences
(2D+t images are (T, 1, Y, X) in every format) and, in MetaImage and NRRD, for a slice of a 3D
file (its placement). ITK reads a one-slice vector NIfTI as 2D, so a single NIfTI field stays 2D:
it fits the slice that sitk.Extract takes from the one-slice image. A one-slice field reads back
as 2D with that placement, as a one-slice image does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputExistsError
from ..geometry import Geometry
from .atomic import atomic_output, split_suffix

__all__ = [
    "FIELD_SUFFIXES",
    "field_to_mm",
    "from_itk_displacement",
    "is_displacement_file",
    "mm_to_field",
    "read_displacement",
    "read_displacement_series",
    "to_itk_displacement",
    "write_displacement",
    "write_displacement_series",
]

FIELD_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
# what is_displacement_file considers (headers with separate data files too)
_CANDIDATE_SUFFIXES = (*FIELD_SUFFIXES, ".mhd", ".nhdr")


def _check_field(ddf, geometry: Geometry | None = None, name: str = "field") -> np.ndarray:
    arr = np.asarray(ddf)
    n = arr.ndim - 1
    if n not in (2, 3) or arr.shape[0] != n:
        raise InputError(
            f"{name} must have shape (n, *S) with n = 2 or 3 components, one per spatial axis; "
            f"got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if geometry is not None and geometry.ndim != n:
        raise InputError(f"{name} is {n}D but its geometry is {geometry.ndim}D")
    return arr


def _linear(geometry: Geometry) -> np.ndarray:
    n = geometry.ndim
    return geometry.index_to_world()[:n, :n]


def field_to_mm(ddf, geometry: Geometry) -> np.ndarray:
    """Voxel field (n, *S) -> physical displacement (n, *S) in mm, array-order world axes."""
    u = _check_field(ddf, geometry)
    d = np.einsum("ij,j...->i...", _linear(geometry), u.astype(np.float64))
    return d.astype(np.float32)


def mm_to_field(d, geometry: Geometry) -> np.ndarray:
    """Physical displacement (n, *S) in mm, array-order world axes -> voxel field (n, *S)."""
    d = _check_field(d, geometry, "displacement")
    inv = np.linalg.inv(_linear(geometry))
    return np.einsum("ij,j...->i...", inv, d.astype(np.float64)).astype(np.float32)


def to_itk_displacement(ddf, geometry: Geometry):
    """SimpleITK sitkVectorFloat64 image of the field: mm, LPS, components (x, y[, z])."""
    import SimpleITK as sitk

    u = _check_field(ddf, geometry)
    d = np.einsum("ij,j...->i...", _linear(geometry), u.astype(np.float64))
    vectors = np.ascontiguousarray(np.moveaxis(d[::-1], 0, -1))
    image = sitk.GetImageFromArray(vectors, isVector=True)
    spacing, origin, direction = geometry.to_itk()
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _as_image_grid(ddf, geometry: Geometry, path: Path, series: bool) -> tuple[np.ndarray, Geometry]:
    """The field on its image file's grid (module docstring): a 2D field (2, Y, X) becomes the
    one-slice 3D field (3, 1, Y, X) of geometry.as_3d() where its image is one-slice 3D."""
    u = _check_field(ddf, geometry)
    nifti = _suffix(path) in (".nii", ".nii.gz")
    if u.shape[0] == 3 or not (series or (geometry.embedding is not None and not nifti)):
        return u, geometry
    through = np.zeros((1, 1, *u.shape[1:]), u.dtype)
    return np.concatenate([through, u[:, None]]), geometry.as_3d()


def from_itk_displacement(image, *, name: str = "image") -> tuple[np.ndarray, Geometry]:
    """(voxel field float32 (n, *S), geometry) from a SimpleITK displacement image."""
    import SimpleITK as sitk

    dim = image.GetDimension()
    comps = image.GetNumberOfComponentsPerPixel()
    if dim not in (2, 3):
        raise InputError(f"{name}: {dim}-D image; a displacement field must be 2D or 3D.")
    if comps != dim:
        raise InputError(
            f"{name}: {comps} component(s) per voxel in a {dim}-D image; a displacement field "
            f"needs {dim} (one vector component per axis)."
        )
    try:
        geometry = Geometry.from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    except ValueError as exc:
        raise InputError(f"{name}: invalid geometry in the header: {exc}") from exc
    vectors = sitk.GetArrayFromImage(image).astype(np.float64)  # (*S, n), ITK component order
    if not np.all(np.isfinite(vectors)):
        raise InputError(f"{name}: the displacement field contains NaN or infinite values.")
    d = np.moveaxis(vectors, -1, 0)[::-1]
    u = mm_to_field(d, geometry)
    if dim == 3 and u.shape[1] == 1 and np.abs(u[0]).max() <= 1e-5:  # a slice's field, written as one-slice 3D
        return np.ascontiguousarray(u[1:, 0]), geometry.slice_2d()
    return u, geometry


def _suffix(path: Path) -> str:
    suffix = split_suffix(path.name)[1].lower()
    if suffix not in FIELD_SUFFIXES:
        raise InputError(
            f"{path.name}: displacement fields are written as {', '.join(FIELD_SUFFIXES)} "
            f"(the suffix decides the format); got {suffix or 'no suffix'!r}."
        )
    return suffix


def write_displacement(path, ddf, geometry: Geometry, *, overwrite: bool = False) -> Path:
    """Write one voxel field (n, *S) as an ITK displacement field file; returns the path."""
    import SimpleITK as sitk

    path = Path(path)
    _suffix(path)
    image = to_itk_displacement(*_as_image_grid(ddf, geometry, path, series=False))
    with atomic_output(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_displacement_sequence(path, ddfs, geometry: Geometry, *, overwrite: bool = False) -> Path:
    """Write a field sequence (T, n, *S) as ONE (n+1)-D vector image: frame t is the ITK
    displacement field of `write_displacement` stacked along a last (time) axis of spacing 1.

    SimpleITK reads it back as a 4D image with 3 components (2D fields as one-slice 3D ones, as
    the frames are written); `sitk.Extract` of one time index gives that frame's displacement
    field (for one file per frame, use write_displacement_series).
    """
    import SimpleITK as sitk

    arr = np.asarray(ddfs)
    if arr.ndim not in (4, 5) or arr.shape[1] != arr.ndim - 2:
        raise InputError(f"a field sequence must have shape (T, n, *S) with n = 2 or 3; got shape {arr.shape}")
    path = Path(path)
    _suffix(path)
    image = sitk.JoinSeries([to_itk_displacement(*_as_image_grid(u, geometry, path, series=True)) for u in arr])
    with atomic_output(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


@contextmanager
def _readable_name(path: Path) -> Iterator[str]:
    """A name SimpleITK reads as exactly `path`.

    The NIfTI library opens 'x.nii' in place of 'x.nii.gz' when both exist; such a file is read
    through a symlink with a unique name in a temporary folder.
    """
    name = path.name
    if name.lower().endswith(".nii.gz") and path.with_name(name[:-3]).exists():
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / "field.nii.gz"
            os.symlink(path.resolve(), link)
            yield str(link)
    else:
        yield str(path)


def _itk_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("/", "itk::", "Exception thrown"))]
    return (useful or lines or ["unknown error"])[-1][:300]


def read_displacement(path) -> tuple[np.ndarray, Geometry]:
    """(voxel field float32 (n, *S), geometry) from an ITK displacement field file."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: no such file ({path}).")
    from .itk import check_data_files

    check_data_files(path)
    try:
        with _readable_name(path) as name:
            image = sitk.ReadImage(name)
    except RuntimeError as exc:
        raise InputError(
            f"{path.name}: could not be read as a displacement field (truncated, corrupt or "
            f"not an image file): {_itk_error(exc)}"
        ) from exc
    return from_itk_displacement(image, name=path.name)


def write_displacement_series(
    folder,
    ddfs,
    geometry: Geometry,
    *,
    stem: str = "field",
    suffix: str = ".nii.gz",
    overwrite: bool = False,
) -> list[Path]:
    """Write a field sequence (T, n, *S) as folder/{stem}_{t:03d}{suffix}; returns the paths."""
    arr = np.asarray(ddfs)
    if arr.ndim not in (4, 5) or arr.shape[1] != arr.ndim - 2:
        raise InputError(
            f"a field sequence must have shape (T, n, *S) with n = 2 or 3; got shape {arr.shape}"
        )
    folder = Path(folder)
    paths = [folder / f"{stem}_{t:03d}{suffix}" for t in range(arr.shape[0])]
    _suffix(paths[0] if paths else folder / f"{stem}{suffix}")
    if not overwrite:
        existing = [p for p in paths if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]} already exists ({len(existing)} of the {len(paths)} files); "
                "choose another folder or name, or ask to overwrite."
            )
    folder.mkdir(parents=True, exist_ok=True)
    for p, u in zip(paths, arr):
        write_displacement(p, u, geometry, overwrite=overwrite)
    return paths


def read_displacement_series(paths: Sequence) -> tuple[np.ndarray, Geometry]:
    """(fields float32 (T, n, *S), geometry) from one displacement file per frame."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no displacement field files given.")
    fields = []
    first_geometry = None
    for p in paths:
        u, g = read_displacement(p)
        if first_geometry is None:
            first_geometry = g
        elif u.shape != fields[0].shape:
            raise InputError(
                f"{p.name}: field grid {u.shape[1:]} differs from {paths[0].name}'s "
                f"{fields[0].shape[1:]}; a sequence needs one grid."
            )
        elif not g.almost_equal(first_geometry):
            raise InputError(
                f"{p.name}: geometry ({g.describe()}) differs from {paths[0].name}'s "
                f"({first_geometry.describe()}); a sequence needs one grid."
            )
        fields.append(u)
    return np.stack(fields), first_geometry


def is_displacement_file(path) -> bool:
    """Header-only check: a readable 2D/3D NIfTI, MetaImage or NRRD with one vector component per
    axis."""
    import SimpleITK as sitk

    path = Path(path)
    if split_suffix(path.name)[1].lower() not in _CANDIDATE_SUFFIXES or not path.is_file():
        return False
    try:
        with _readable_name(path) as name:
            reader = sitk.ImageFileReader()
            reader.SetFileName(name)
            reader.ReadImageInformation()
            dim = reader.GetDimension()
            comps = reader.GetNumberOfComponents()
    except RuntimeError:
        return False
    return dim in (2, 3) and comps == dim
