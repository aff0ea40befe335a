"""Tiny seeded DRDM recovery networks and oblique test images for the export tests (no trained weights)."""

from __future__ import annotations

import numpy as np
import torch

from napari_deformdiff.core.drdm.augment import Case
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume

from .geometry_cases import OBLIQUE


def tiny_drdm(ndims: int = 2, seed: int = 0, grid=None):
    """(RecResACNet with seeded random weights and a damped output layer, hand-built DRDMMeta)."""
    from napari_deformdiff.core.drdm.nets import RecResACNet
    from napari_deformdiff.core.drdm.weights import DRDMMeta

    torch.manual_seed(seed)
    model = RecResACNet(ndims=ndims).eval()
    with torch.no_grad():  # small recovery steps: a random net should not tear the image apart
        for p in model.conv_out.parameters():
            p.mul_(0.02)
    grid = tuple(grid or ((32, 32) if ndims == 2 else (16, 32, 32)))
    meta = DRDMMeta(ndims=ndims, grid=grid, steps=80, name=f"tiny-{ndims}d", source="tests")
    return model, meta


def rotation_2d(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def heart_like(shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """A smooth ring (myocardium 2) around a bright disc (cavity 3) on a textured background (label 0/1)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    extent = min(n * s for n, s in zip(shape, spacing))
    image = 200.0 / (1 + np.exp((r - 0.22 * extent) / 1.0)) + 80.0 * np.exp(-((r - 0.3 * extent) / 2.0) ** 2)
    image += 20.0 * np.sin(grids[-1] / 3.0) + 40.0
    labels = np.zeros(shape, np.uint8)
    labels[r < 0.38 * extent] = 1
    labels[(r >= 0.18 * extent) & (r < 0.32 * extent)] = 2
    labels[r < 0.18 * extent] = 3
    return image.astype(np.float32), labels


def case_2d(name="heart", shape=(40, 36), spacing=(1.5, 1.2), labels=True) -> Case:
    geometry = Geometry(spacing, (-21.0, 33.5), rotation_2d(20))
    image, lab = heart_like(shape, spacing)
    return Case(name, Volume(image, geometry, False, name),
                Volume(lab, geometry, True, f"{name} labels") if labels else None, f"/data/{name}.nii.gz")


def case_3d(name="chest", shape=(10, 24, 28), spacing=(3.0, 1.4, 1.6)) -> Case:
    geometry = Geometry(spacing, (-30.0, 12.5, 70.0), OBLIQUE[::-1, ::-1])
    image, lab = heart_like(shape, spacing)
    return Case(name, Volume(image, geometry, False, name), Volume(lab.astype(np.int16), geometry, True), name)
