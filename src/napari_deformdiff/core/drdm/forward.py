"""DRDM forward process: a large random deformation made by self-composing small multi-scale fields.

Recipe (methods.md section 2, the authors' code): on a control grid of C = 64 voxels per axis,
multi-scale Gaussian noise MS(s) = sum over c in (64, 32, 16, 8) of upsample(randn(c^n) * s * 64/c)
(linear, align_corners=False); v = MS(sigma); v0 = v + warp(MS(0.08 sigma), v); the level-t DDF is
v0 self-composed N_ddf(t) times, the one-step target DVF is v self-composed N_dvf(t) times
(composition b + warp(a, b), border padding, align_corners=True). The 64 grid spans a field of view
of 2S per axis; the field is upsampled there and the central S is kept.

Units (our reading of the authors' "fractions of the control grid"):
* On the control grid the authors' field value f is a fraction of the grid, i.e. 64 f voxels of the
  64 grid; the compositions above are done here in those control-grid voxels with the toolkit's warp.
* To image size S the authors multiply the fraction field by S/64 and then read the cropped field
  as a fraction of the IMAGE size S (their network and warp use voxels = S * value). So one
  control-grid voxel g becomes g * S^2 / 64^2 image voxels (per axis k with S_k). This is not the
  geometric scaling (2S/64 voxels per control voxel, since 64 control voxels span 2S): at S = 128
  both agree, at S = 256 the authors' field is twice the geometric one and no longer free of folds.
  We keep the factor exactly because the published weights were trained with it.
* Returned fields are in image VOXELS, channel k along tensor axis k (core.spatial convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import spatial
from ..errors import InputError

CONTROL_GRID = 64
SCALES = (64, 32, 16, 8)
SIGMA = 4e-5
NOISE_RATIO = 0.08
MAX_LEVEL = 80
MAX_COMPOSITIONS = 200

__all__ = [
    "CONTROL_GRID", "SCALES", "SIGMA", "NOISE_RATIO", "MAX_LEVEL",
    "n_ddf", "n_dvf", "ForwardSample", "sample_forward", "control_field", "to_image_field",
]


def n_ddf(t: int) -> int:
    """Self-compositions of v0 for the level-t DDF: clamp(floor(2 t^1.3 / 3), 1, 200)."""
    return int(min(max(math.floor(2.0 * float(t) ** 1.3 / 3.0), 1), MAX_COMPOSITIONS))


def n_dvf(t: int) -> int:
    """Self-compositions of v for the one-step target DVF at level t: floor(t^0.6)."""
    return int(math.floor(float(t) ** 0.6))


@dataclass
class ForwardSample:
    """ddf: (B, n, *shape) level-t field in voxels; dvf: (B, n, *shape) one-step target or None."""

    ddf: torch.Tensor
    dvf: torch.Tensor | None = None


def _mode(n: int) -> str:
    return "bilinear" if n == 2 else "trilinear"


def _multiscale_noise(batch: int, n: int, amplitude: float, generator: torch.Generator) -> torch.Tensor:
    """MS(amplitude) on the control grid, in fractions of the grid, (B, n, 64, ...) on the CPU."""
    total = torch.zeros(batch, n, *([CONTROL_GRID] * n))
    for c in SCALES:
        noise = torch.randn(batch, n, *([c] * n), generator=generator) * (amplitude * CONTROL_GRID / c)
        if c != CONTROL_GRID:
            noise = F.interpolate(noise, size=(CONTROL_GRID,) * n, mode=_mode(n), align_corners=False)
        total += noise
    return total


def _self_compose(v: torch.Tensor, times: int) -> torch.Tensor:
    """psi = 0; repeat `times`: psi = v + warp(psi, v). Zero field for times = 0."""
    if times <= 0:
        return torch.zeros_like(v)
    psi = v
    for _ in range(times - 1):
        psi = spatial.compose(psi, v, padding_mode="border")
    return psi


def control_field(batch: int, n: int, level: int, generator: torch.Generator, *, device="cpu",
                  with_dvf: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ddf, dvf) on the 64 control grid in control-grid voxels (noise drawn on the CPU)."""
    v = _multiscale_noise(batch, n, SIGMA, generator)
    noise = _multiscale_noise(batch, n, NOISE_RATIO * SIGMA, generator)
    v = (v * CONTROL_GRID).to(device)
    noise = (noise * CONTROL_GRID).to(device)
    v0 = spatial.compose(noise, v, padding_mode="border")
    ddf = _self_compose(v0, n_ddf(level))
    dvf = _self_compose(v, n_dvf(level)) if with_dvf else None
    return ddf, dvf


def _central_axis(size: int, device) -> torch.Tensor:
    """grid_sample (align_corners=False) coordinates on the control grid of the central `size`
    voxels of a 2*size upsampling of the control grid."""
    big = 2 * size
    j = torch.arange(size // 2, size // 2 + size, dtype=torch.float64, device=device)
    src = (j + 0.5) * CONTROL_GRID / big - 0.5          # control-grid index (interpolate's mapping)
    return (2.0 * src + 1.0) / CONTROL_GRID - 1.0


def to_image_field(field: torch.Tensor, shape) -> torch.Tensor:
    """A control-grid field (B, n, 64, ...) in control voxels -> (B, n, *shape) image voxels.

    Same values as upsampling the 64 grid to 2S per axis (linear, align_corners=False), taking the
    central S and scaling channel k by S_k^2 / 64^2 (see the module docstring), without ever
    building the 2S array.
    """
    n = field.shape[1]
    axes = [_central_axis(s, field.device) for s in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack(mesh[::-1], dim=-1).to(field.dtype)[None].expand(field.shape[0], *shape, n)
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)
    scale = torch.tensor([s * s / CONTROL_GRID**2 for s in shape], dtype=out.dtype, device=out.device)
    return out * scale.view(1, n, *([1] * n))


def _check(shape, level, batch) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InputError(f"shape must be a tuple of 2 or 3 sizes, got {shape!r}.") from None
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise InputError(f"the DRDM forward process works on 2D or 3D grids (sizes >= 2), got {shape}.")
    if isinstance(level, bool) or int(level) != level or not 0 <= level <= MAX_LEVEL:
        raise InputError(f"deformation level must be an integer from 0 to {MAX_LEVEL}, got {level!r}.")
    if int(batch) < 1:
        raise InputError(f"batch must be at least 1, got {batch}.")
    return shape


def sample_forward(shape, level: int, *, generator: torch.Generator | None = None,
                   seed: int | None = None, batch: int = 1, device="cpu",
                   with_dvf: bool = False) -> ForwardSample:
    """Random DDF of deformation level `level` for images of `shape` (2D or 3D), in voxels.

    Randomness comes from `generator` (a CPU torch.Generator, advanced in place), else from a new
    generator seeded with `seed` (default 0): the same seed gives the same field on any device.
    with_dvf also returns the one-step target DVF (training).
    """
    shape = _check(shape, level, batch)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    n = len(shape)
    with torch.no_grad():
        ddf, dvf = control_field(int(batch), n, int(level), generator, device=device, with_dvf=with_dvf)
        return ForwardSample(to_image_field(ddf, shape), None if dvf is None else to_image_field(dvf, shape))
