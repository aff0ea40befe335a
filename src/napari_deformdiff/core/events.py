"""The one protocol between the core's generators and their consumers (napari worker, CLI).

Every long-running core function is a Python generator that yields these events as soon as
their content exists. Consumers stop it (cancel) by simply not asking for the next event.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Progress:
    """Work advanced to `index` of `total` steps, with a short human-readable message."""

    index: int
    total: int
    message: str = ""


@dataclass
class Frame:
    """Frame `index` of `total` is ready.

    `image` is a float32 array in array-axis order ([Z,] Y, X); `field` (optional) is the pull
    displacement that made it, shape (ndim, [Z,] Y, X), in voxels, components in array-axis order;
    `labels` (optional) is the frame's integer label map.
    """

    index: int
    total: int
    image: np.ndarray
    field: np.ndarray | None = None
    labels: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class SequencePreview:
    """The current estimate of a whole sequence while a generator refines it (step `index` of
    `total`): `images` (N, [Z,] Y, X) float32 at the input's grid; `differential` (optional,
    same shape) the temporal differential fields I_k - I_{k-1} behind it; `stage` names the
    part of the model that produced it. Final frames follow as Frame events."""

    index: int
    total: int
    images: np.ndarray
    differential: np.ndarray | None = None
    stage: str = ""
