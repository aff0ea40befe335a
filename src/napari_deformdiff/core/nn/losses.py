"""Registration losses (torch, 2D and 3D): local normalized cross-correlation, smoothness, folding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spatial import jacobian_determinant


def local_ncc(a: torch.Tensor, b: torch.Tensor, *, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared local correlation of (B, 1, *S) images over a `window`^n box (1 = identical)."""
    n = a.ndim - 2
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[n]

    def mean(x):  # separable box mean, border windows averaged over their in-image part
        for axis in range(n):
            kernel = tuple(window if k == axis else 1 for k in range(n))
            padding = tuple(window // 2 if k == axis else 0 for k in range(n))
            x = pool(x, kernel, stride=1, padding=padding, count_include_pad=False)
        return x

    ma, mb = mean(a), mean(b)
    cross = mean(a * b) - ma * mb
    var_a = (mean(a * a) - ma * ma).clamp_min(0)
    var_b = (mean(b * b) - mb * mb).clamp_min(0)
    return (cross * cross / (var_a * var_b + eps)).mean()


def smoothness(ddf: torch.Tensor) -> torch.Tensor:
    """Mean over axes of the mean squared forward difference of a (B, n, *S) field."""
    n = ddf.ndim - 2
    terms = [torch.diff(ddf, dim=2 + k).pow(2).mean() for k in range(n)]
    return torch.stack(terms).mean()


def folding_penalty(ddf: torch.Tensor, *, min_det: float = 0.1) -> torch.Tensor:
    """Mean over voxels of relu(min_det - det(I + grad u)) of a (B, n, *S) voxel field: 0 where the
    field keeps every voxel's volume above `min_det`, growing with how far a voxel folds."""
    return F.relu(min_det - jacobian_determinant(ddf)).mean()
