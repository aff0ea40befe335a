"""How displacement vectors are sampled and coloured for display (numpy only, no torch)."""

from __future__ import annotations

import math

import numpy as np

MAX_VECTORS_PER_FRAME = 8_000
ARROWS_ACROSS = 32  # at most this many arrows across a slice: more are too short to show a direction
# Magnitude bins in mm, as 3D Slicer's transform visualisation uses them.
MAGNITUDE_BIN_EDGES_MM = (1.0, 2.0, 5.0, 10.0)
MAGNITUDE_BIN_NAMES = ("< 1 mm", "1-2 mm", "2-5 mm", "5-10 mm", ">= 10 mm")
MAGNITUDE_BIN_COLORS = ("#3b4cc0", "#4fb0e0", "#59c35a", "#f2c12e", "#d62728")


def default_stride(shape: tuple[int, ...], limit: int = MAX_VECTORS_PER_FRAME) -> int:
    """Smallest in-plane stride that keeps one frame under `limit` vectors (see vector_strides) and
    a slice under ARROWS_ACROSS arrows across."""
    stride = max(1, math.ceil(max(shape[-2:]) / ARROWS_ACROSS))
    while math.prod(math.ceil(s / st) for s, st in zip(shape, vector_strides(shape, stride), strict=True)) > limit:
        stride += 1
    return stride


def vector_strides(shape: tuple[int, ...], stride: int | None = None) -> tuple[int, ...]:
    """Per-axis sampling of vectors: every slice along the first axis (the one napari slices
    through by default, so each displayed slice has its vectors), `stride` in-plane."""
    if stride is None:
        stride = default_stride(shape)
    return (1, stride, stride) if len(shape) == 3 else (stride,) * len(shape)


def sampled(shape: tuple[int, ...], strides: tuple[int, ...]) -> tuple[slice, ...]:
    """The voxels field_to_vectors takes for these strides (from stride // 2 on each axis)."""
    return tuple(slice(st // 2, None, st) for st in strides)


def magnitude_bins(mm: np.ndarray) -> np.ndarray:
    return np.digitize(mm, MAGNITUDE_BIN_EDGES_MM).astype(np.uint8)


# Automatic vector length: the longest vectors (99th percentile of in-plane |u|) span this share of
# the distance between neighbouring vectors, so arrows are readable and do not overlap.
AUTO_LENGTH_SHARE = 0.9
ARROW_WIDTH_SHARE = 0.12  # arrow shaft width as a share of that distance (the head is twice as wide)


def in_plane_extent(vectors: np.ndarray) -> float:
    """99th percentile of the in-plane (last two axes) length, in voxels, of vectors (N, 2, n)."""
    if len(vectors) == 0:
        return 0.0
    return float(np.percentile(np.hypot(vectors[:, 1, -1], vectors[:, 1, -2]), 99))


def auto_length(extent_voxels: float, stride: int) -> float:
    """Length multiplier that draws vectors of `extent_voxels` as AUTO_LENGTH_SHARE of `stride`
    (1.0 for no motion)."""
    if extent_voxels <= 1e-3:
        return 1.0
    return AUTO_LENGTH_SHARE * stride / extent_voxels


def fields_extent(fields: np.ndarray, strides: tuple[int, ...]) -> float:
    """in_plane_extent over every frame of fields (T, n, *S) sampled at `strides`."""
    if fields.shape[0] == 0:
        return 0.0
    picked = fields[(slice(None), slice(-2, None), *sampled(fields.shape[2:], strides))]
    return float(np.percentile(np.hypot(picked[:, 0], picked[:, 1]), 99))
