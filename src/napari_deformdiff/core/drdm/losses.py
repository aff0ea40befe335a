"""DRDM training loss (methods.md section 2), in the network's units.

The network predicts a recovery field r (authors' units: fraction of the image size per axis).
The forward process gives the one-step DVF d (voxels). A perfect r undoes d: following a point,
x -> x + d(x) -> x + d(x) + r(x + d(x)) = x, i.e. r resampled by d equals -d. The loss is

    distance  sum |warp(r, d) + d|^2 / sum |d|^2          (0 when perfect, 1 for r = 0), per
              batch item, then averaged: a level with a tiny DVF must be predicted as quietly as
              its target, or the recovery loop's many late steps add up to a large error
  + angle     mean over voxels of 1 - cos(warp(r, d), -d)  (0 when perfect)
  + 10 x (    gradient  mean of relu(|finite difference of r| - 1e-4)   (L1 above a threshold)
          + 2 x folding  mean of relu(-det(I + grad r)) )               (true Jacobian, voxels)

distance and angle compare fields in the network's units (d is converted); the Jacobian is taken
of r in voxels, det(I + grad u), not the authors' product of one-sided differences.
"""

from __future__ import annotations

import torch

from .nets import authors_to_voxels, voxels_to_authors
from ..spatial import jacobian_determinant, warp

GRADIENT_THRESHOLD = 1e-4
REGULARIZER_WEIGHT = 10.0
FOLDING_WEIGHT = 2.0
_EPS = 1e-12


def distance_and_angle(pred: torch.Tensor, dvf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized squared error, mean 1 - cosine) between warp(pred, dvf) and -dvf.

    pred: (B, n, *S) in the network's units; dvf: (B, n, *S) in voxels.
    """
    target = -voxels_to_authors(dvf, tuple(dvf.shape[2:]))
    moved = warp(pred, dvf, padding_mode="border")
    dims = tuple(range(1, pred.ndim))
    err = (((moved - target) ** 2).sum(dim=dims) / ((target**2).sum(dim=dims) + _EPS)).mean()
    dot = (moved * target).sum(dim=1)
    norms = (moved * moved).sum(dim=1).add(_EPS).sqrt() * (target * target).sum(dim=1).add(_EPS).sqrt()
    angle = (1.0 - dot / norms).flatten(1).mean(dim=1)
    return err, angle.mean()


def gradient_l1(pred: torch.Tensor, threshold: float = GRADIENT_THRESHOLD) -> torch.Tensor:
    """Mean over axes of the mean of relu(|forward difference| - threshold) of every component."""
    n = pred.ndim - 2
    terms = [torch.relu(pred.diff(dim=2 + k).abs() - threshold).mean() for k in range(n)]
    return torch.stack(terms).mean()


def negative_jacobian(pred: torch.Tensor) -> torch.Tensor:
    """mean(relu(-det(I + grad u))) with u = pred in voxels (folding penalty)."""
    u = authors_to_voxels(pred, tuple(pred.shape[2:]))
    return torch.relu(-jacobian_determinant(u)).mean()


def drdm_loss(pred: torch.Tensor, dvf: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training loss and its parts: {"total", "distance", "angle", "gradient", "folding"}."""
    distance, angle = distance_and_angle(pred, dvf)
    gradient = gradient_l1(pred)
    folding = negative_jacobian(pred)
    total = distance + angle + REGULARIZER_WEIGHT * (gradient + FOLDING_WEIGHT * folding)
    return {"total": total, "distance": distance, "angle": angle, "gradient": gradient, "folding": folding}
