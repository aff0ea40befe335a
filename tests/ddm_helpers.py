"""Tiny DDM models and synthetic pairs for fast tests (CI never trains real weights)."""

from __future__ import annotations

import numpy as np
import torch

from napari_deformdiff.core.ddm.nets.ddm import DDM, DDMConfig
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume


def tiny_config(ndims: int = 2, grid=None, spacing=None) -> DDMConfig:
    grid = grid or ((32, 32) if ndims == 2 else (16, 32, 32))
    spacing = spacing or ((2.0,) * ndims)
    return DDMConfig(ndims=ndims, inner_channel=4, channel_mults=(1, 2), norm_groups=2, heads=2,
                     field_enc=(4, 8, 8, 8, 8), field_dec=(8, 8, 8, 4, 4), grid=tuple(grid),
                     spacing=tuple(spacing), timesteps=100)


def tiny_model(ndims: int = 2, seed: int = 0, **kw) -> DDM:
    torch.manual_seed(seed)
    return DDM(tiny_config(ndims, **kw)).eval()


def blob(shape, centre, radius, spacing=None) -> np.ndarray:
    """A smooth bright disc/ball (mm if spacing is given, else voxels) on a dark background."""
    spacing = spacing or (1.0,) * len(shape)
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return (1.0 / (1.0 + np.exp((np.sqrt(r2) - radius) / 1.0))).astype(np.float32)


def pair_volumes(shape=(40, 44), spacing=(1.5, 1.7), shift=(3.0, -2.0), geometry=None):
    """Source: a disc with labels; target: the disc moved by `shift` mm."""
    centre = [n * s / 2 for n, s in zip(shape, spacing)]
    geometry = geometry or Geometry(spacing, tuple(-c for c in centre), np.eye(len(shape)))
    src = blob(shape, centre, 14.0, spacing) + 0.1
    tgt = blob(shape, [c + d for c, d in zip(centre, shift)], 14.0, spacing) + 0.1
    labels = (src > 0.6).astype(np.uint8) * 3
    return (Volume(src, geometry, False, "source"), Volume(tgt, geometry, False, "target"),
            Volume(labels, geometry, True, "labels"))
