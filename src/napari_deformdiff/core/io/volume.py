"""The in-memory volume every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import Geometry

LABEL_NAME_HINTS = ("_gt", "seg", "label", "mask")


@dataclass
class Volume:
    """A scalar image or label map: data in array-axis order ([T,] [Z,] Y, X) plus its geometry.

    `time_spacing` is the time between frames in seconds (None if unknown or not a time series).
    `warnings` collects non-fatal findings of the reader (NaN/Inf values, a single voxel, ...).
    `metadata` holds reader facts worth keeping, e.g. {"trigger_times_ms": [...],
    "time_source": "TriggerTime", "series_description": ...}.
    """

    data: np.ndarray
    geometry: Geometry
    is_labels: bool = False
    name: str = ""
    time_spacing: float | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def has_time(self) -> bool:
        return self.data.ndim == self.geometry.ndim + 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[-self.geometry.ndim :])


def looks_like_label_name(path: str | Path) -> bool:
    stem = Path(path).name.lower()
    return any(hint in stem for hint in LABEL_NAME_HINTS)


def check_values(data: np.ndarray, what: str) -> list[str]:
    """Raise InputError for data nobody can use; return warnings for data that is merely odd."""
    if data.dtype.names is not None or data.dtype.kind in "OSUV":
        raise InputError(
            f"{what}: the voxels are not scalar numbers (dtype {data.dtype}); "
            "RGB, string or record images are not supported: convert to a scalar volume."
        )
    if data.dtype.kind == "c":
        raise InputError(
            f"{what}: the voxels are complex numbers; save the magnitude image instead."
        )
    if data.dtype.kind not in "biuf":
        raise InputError(f"{what}: unsupported voxel type {data.dtype}.")
    if data.size == 0:
        raise InputError(f"{what}: the volume is empty (shape {tuple(data.shape)}).")
    warnings = []
    if data.size == 1:
        warnings.append(f"{what}: the volume has a single voxel; there is little to show.")
    if data.dtype.kind == "f":
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        if n_nan or n_inf:
            warnings.append(
                f"{what}: {n_nan} NaN and {n_inf} infinite voxel values "
                f"({100.0 * (n_nan + n_inf) / data.size:.3g} % of the volume); they are kept "
                "as they are and ignored for contrast limits."
            )
    return warnings


def decide_labels(data: np.ndarray, path: str | Path, as_labels: bool | None) -> bool:
    """Label map if the user says so, else if the name says so and the values are integers."""
    if as_labels is not None:
        if as_labels and not is_integer_valued(data):
            raise InputError(
                f"{Path(path).name}: cannot open as labels: the values are not integers."
            )
        return as_labels
    return looks_like_label_name(path) and is_integer_valued(data)


def is_integer_valued(data: np.ndarray) -> bool:
    if data.dtype.kind in "biu":
        return True
    if data.dtype.kind != "f":
        return False
    finite = np.isfinite(data)
    return bool(finite.all()) and bool(np.all(data == np.round(data)))


def as_label_array(data: np.ndarray) -> np.ndarray:
    """Integer copy of an integer-valued array, in the smallest fitting standard dtype."""
    if data.dtype.kind in "iu":
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    lo, hi = float(np.min(data)), float(np.max(data))
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return data.astype(dtype)
    raise InputError("label values do not fit in 64-bit integers")
