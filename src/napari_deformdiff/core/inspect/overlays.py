"""What the "Inspect deformation" overlays show for one frame's field, computed without Qt.

Fields follow the toolkit's convention (spatial.py): (n, *S) voxels, array-axis components,
pull warping. Vectors are in data (voxel) coordinates: a Vectors layer that shares the image
layer's scale/translate/affine puts them in world space.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .. import spatial
from ..events import Plan, Progress
from . import report as deformation_report
from .vector_style import magnitude_bins, sampled, vector_strides


@dataclass
class FrameOverlay:
    """Overlays of one frame: vectors (N, 2, n) with magnitude bins, and (*S) images."""

    vectors: np.ndarray
    vector_mm: np.ndarray
    vector_bins: np.ndarray
    jacobian: np.ndarray
    folding: np.ndarray
    magnitude_mm: np.ndarray
    grid: np.ndarray | None
    metrics: dict[str, float]


def grid_image(shape: tuple[int, ...], step: int = 8) -> torch.Tensor:
    """Lines every `step` voxels along the in-plane axes (the last two), on every slice."""
    grid = torch.zeros(shape)
    grid[..., ::step, :] = 1.0
    grid[..., :, ::step] = 1.0
    return grid


@dataclass
class OverlayReady:
    """The overlays of frame `frame` are ready (unit `index` of `total` of the stream)."""

    index: int
    total: int
    frame: int
    overlay: FrameOverlay
    stage: str = "overlays"


def stream_overlays(fields: np.ndarray, spacing: tuple[float, ...], *, first: int = 0, stride: int | None = None,
                    grid_step: int | None = 8) -> Iterator[Plan | OverlayReady | Progress]:
    """A Plan, then the overlays of frames first..T-1 of `fields` (T, n, *S), each followed by its Progress."""
    total = fields.shape[0] - first
    yield Plan((("overlays", total),))
    for k in range(total):
        overlay = frame_overlay(fields[first + k], spacing, stride=stride, grid_step=grid_step)
        yield OverlayReady(k, total, first + k, overlay)
        yield Progress(k + 1, total, f"overlays of frame {first + k}", "overlays")


def frame_overlay(
    ddf: np.ndarray, spacing: tuple[float, ...], *, stride: int | None = None, grid_step: int | None = 8
) -> FrameOverlay:
    """All overlays of one field (n, *S) in voxels on a grid of `spacing` (array order, mm)."""
    u = torch.as_tensor(np.ascontiguousarray(ddf), dtype=torch.float32)[None]
    n = u.shape[1]
    shape = tuple(u.shape[2:])
    scale = torch.tensor(spacing, dtype=torch.float32).view(1, n, *([1] * n))
    with torch.no_grad():
        det = spatial.jacobian_determinant(u)[0]
        mm = spatial.vector_norm(u * scale)[0]
        strides = vector_strides(shape, stride)
        # Fields pull: the tissue at x came from x + u(x). Arrows show its motion, -u, from x.
        vectors = spatial.field_to_vectors(-u[0], stride=strides)
        vec_mm = mm[sampled(shape, strides)].reshape(-1).numpy()
        grid = None
        if grid_step:
            grid = spatial.warp(grid_image(shape, grid_step)[None, None], u, padding_mode="zeros")[0, 0]
    folding = (det <= 0).to(torch.uint8)
    metrics = deformation_report.batch_metrics(u, spacing, det=det[None])[0]
    return FrameOverlay(
        vectors=vectors,
        vector_mm=vec_mm.astype(np.float32),
        vector_bins=magnitude_bins(vec_mm),
        jacobian=det.numpy().astype(np.float32),
        folding=folding.numpy(),
        magnitude_mm=mm.numpy().astype(np.float32),
        grid=None if grid is None else grid.numpy().astype(np.float32),
        metrics=metrics,
    )
