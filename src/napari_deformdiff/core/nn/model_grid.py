"""Bring any image onto a model's fixed grid and bring fields back to the image's own grid.

The model grid has a fixed shape and spacing (array order, mm) and shares the input's centre and
axes: model voxel i sits at input index c_in + (i - c_model) * spacing_model / spacing_in. Areas of
the model grid outside the input are padded with the input's minimum; fields outside the model
grid are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass(frozen=True)
class GridMap:
    input_shape: tuple[int, ...]
    input_spacing: tuple[float, ...]
    model_shape: tuple[int, ...]
    model_spacing: tuple[float, ...]

    def __post_init__(self):
        n = len(self.model_shape)
        if len(self.input_shape) != n or len(self.input_spacing) != n or len(self.model_spacing) != n:
            raise InputError(
                f"the model works on {n}D images; got a {len(self.input_shape)}D image "
                f"of shape {tuple(self.input_shape)}."
            )

    @property
    def ratio(self) -> np.ndarray:
        """Model voxel size in input voxels, per axis."""
        return np.asarray(self.model_spacing, float) / np.asarray(self.input_spacing, float)

    def _axis_coords(self, src_shape, dst_shape, ratio, device):
        """Normalized (align_corners=True) src coordinates of every dst voxel, one 1D tensor per axis."""
        coords = []
        for s, d, r in zip(src_shape, dst_shape, ratio):
            i = torch.arange(d, dtype=torch.float64, device=device)
            p = (s - 1) / 2.0 + (i - (d - 1) / 2.0) * r
            coords.append((2.0 * p / (s - 1) - 1.0) if s > 1 else torch.zeros_like(p))
        return coords

    def _resample(self, values: torch.Tensor, src_shape, dst_shape, ratio, mode: str) -> torch.Tensor:
        axes = self._axis_coords(src_shape, dst_shape, ratio, values.device)
        mesh = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack(mesh[::-1], dim=-1).to(values.dtype)[None]
        grid = grid.expand(values.shape[0], *grid.shape[1:])
        return F.grid_sample(values, grid, mode=mode, padding_mode="zeros", align_corners=True)

    def image_to_model(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, *input_shape) -> (B, C, *model_shape), linear; outside the input -> 0."""
        return self._resample(image, self.input_shape, self.model_shape, self.ratio, "bilinear")

    def model_to_input(self, values: torch.Tensor) -> torch.Tensor:
        """A model-grid scalar map (B, C, *model_shape) -> (B, C, *input_shape), linear; outside -> 0."""
        return self._resample(values, self.model_shape, self.input_shape, 1.0 / self.ratio, "bilinear")

    def field_to_input(self, ddf: torch.Tensor) -> torch.Tensor:
        """A model-grid field (B, n, *model_shape) in model voxels -> (B, n, *input_shape) in input voxels."""
        out = self._resample(ddf, self.model_shape, self.input_shape, 1.0 / self.ratio, "bilinear")
        scale = torch.as_tensor(self.ratio, dtype=out.dtype, device=out.device)
        return out * scale.reshape(1, -1, *([1] * len(self.model_shape)))

    def field_to_model(self, ddf: torch.Tensor) -> torch.Tensor:
        """An input-grid field (B, n, *input_shape) in input voxels -> model grid, model voxels."""
        out = self._resample(ddf, self.input_shape, self.model_shape, self.ratio, "bilinear")
        scale = torch.as_tensor(1.0 / self.ratio, dtype=out.dtype, device=out.device)
        return out * scale.reshape(1, -1, *([1] * len(self.model_shape)))


def unit_range(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max scaling to [0, 1] (per volume, as the papers do); returns (scaled, lo, hi)."""
    data = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError("the image contains NaN or infinite values; fix or mask them first.")
    lo, hi = float(data.min()), float(data.max())
    if hi - lo <= 0:
        raise InputError("the image is constant (all voxels equal): there is nothing to deform.")
    return (data - lo) / (hi - lo), lo, hi


def to_model(image: np.ndarray, grid: GridMap, device: torch.device | str = "cpu") -> torch.Tensor:
    """Image (input grid, any intensities) -> (1, 1, *model_shape) tensor in [-1, 1]."""
    unit, _, _ = unit_range(image)
    t = torch.from_numpy(unit)[None, None].to(device)
    return grid.image_to_model(t) * 2.0 - 1.0
