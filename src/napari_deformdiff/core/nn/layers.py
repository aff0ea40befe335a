"""Dimension-agnostic building blocks: pick the 2D or 3D torch layer by `ndims`."""

from __future__ import annotations

from torch import nn


def conv(ndims: int):
    return {2: nn.Conv2d, 3: nn.Conv3d}[ndims]


def conv_transpose(ndims: int):
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndims]


def check_ndims(ndims: int) -> int:
    if ndims not in (2, 3):
        raise ValueError(f"ndims must be 2 or 3, got {ndims!r}")
    return ndims
