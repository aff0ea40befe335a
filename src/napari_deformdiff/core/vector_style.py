"""How displacement vectors are sampled and coloured for display (numpy only, no torch)."""

from __future__ import annotations

import math

import numpy as np

MAX_VECTORS_PER_FRAME = 20_000
# Magnitude bins in mm, as 3D Slicer's transform visualisation uses them.
MAGNITUDE_BIN_EDGES_MM = (1.0, 2.0, 5.0, 10.0)
MAGNITUDE_BIN_NAMES = ("< 1 mm", "1-2 mm", "2-5 mm", "5-10 mm", ">= 10 mm")
MAGNITUDE_BIN_COLORS = ("#3b4cc0", "#4fb0e0", "#59c35a", "#f2c12e", "#d62728")


def default_stride(shape: tuple[int, ...], limit: int = MAX_VECTORS_PER_FRAME) -> int:
    """Smallest stride that keeps one frame under `limit` vectors."""
    stride = 1
    while math.prod(math.ceil(s / stride) for s in shape) > limit:
        stride += 1
    return stride


def magnitude_bins(mm: np.ndarray) -> np.ndarray:
    return np.digitize(mm, MAGNITUDE_BIN_EDGES_MM).astype(np.uint8)
