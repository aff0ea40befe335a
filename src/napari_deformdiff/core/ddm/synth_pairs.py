"""Training pairs beyond the phantom, drawn per (seed, step, item) like nn.distributed's items.

- synth: SynthMorph-style random label maps (argmax of smoothed noise, K labels) with random
  intensities per label, blur, a bias field and noise; the target is the same label map pulled by a
  random smooth diffeomorphic field (integrated stationary velocity), rendered with its own noise.
- real: a real volume on the model grid pulled by a cardiac-like field: contraction toward a random
  centre plus smooth noise, exactly zero beyond a radius (the zero-motion region).
- MixedItems draws, per item, which source (phantom pairs included) makes it, with given weights.

Images are (1, 1, *S) tensors in [-1, 1] like train.pair_frames; fields are voxels, (1, n, *S),
pull convention: target(x) = source(x + u(x)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import spatial
from ..errors import InputError
from ..nn.distributed import item_generator

MIX_SOURCES = ("phantom", "synth", "real")


@dataclass
class SynthPair:
    source: torch.Tensor
    target: torch.Tensor
    field: torch.Tensor  # voxels, target(x) = source(x + field(x))
    source_labels: torch.Tensor | None = None
    target_labels: torch.Tensor | None = None


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def smooth_noise(shape: Sequence[int], g: torch.Generator, cell: float, channels: int = 1) -> torch.Tensor:
    """(1, channels, *shape) standard-normal noise on a coarse lattice (one node per `cell` voxels),
    interpolated (bi/trilinear) to `shape`: smooth over about `cell` voxels."""
    coarse = [max(2, math.ceil(n / cell) + 1) for n in shape]
    noise = torch.randn(1, channels, *coarse, generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=tuple(shape), mode=mode, align_corners=True)


def _scale(image: torch.Tensor) -> torch.Tensor:
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo).clamp_min(1e-6) * 2.0 - 1.0


def _blur(image: torch.Tensor) -> torch.Tensor:
    n = image.ndim - 2
    pool = F.avg_pool2d if n == 2 else F.avg_pool3d
    return pool(image, 3, stride=1, padding=1, count_include_pad=False)


def random_label_map(shape: Sequence[int], g: torch.Generator, labels: int = 8) -> torch.Tensor:
    """(1, 1, *shape) int64 in 0..labels-1: argmax of `labels` smooth noise channels."""
    cell = _uniform(g, 4.0, 12.0)
    return smooth_noise(shape, g, cell, labels).argmax(1, keepdim=True)


def random_diffeomorphism(shape: Sequence[int], g: torch.Generator, max_voxels: float) -> torch.Tensor:
    """(1, n, *shape) voxel field: a smooth random velocity scaled so that its largest component is
    a random share of `max_voxels`, integrated by scaling and squaring (invertible)."""
    velocity = smooth_noise(shape, g, _uniform(g, 6.0, 16.0), len(shape))
    amplitude = _uniform(g, 0.0, 1.0) * max_voxels
    velocity = velocity * (amplitude / velocity.abs().max().clamp_min(1e-6))
    return spatial.integrate_velocity(velocity, steps=7)


def _render(labels: torch.Tensor, intensities: torch.Tensor, bias: torch.Tensor, sigma: float,
            g: torch.Generator) -> torch.Tensor:
    image = _blur(intensities[labels].float()) * bias
    return _scale(image + sigma * torch.randn(image.shape, generator=g))


def synth_pair(shape: Sequence[int], g: torch.Generator, *, labels: int = 8, max_voxels: float = 6.0) -> SynthPair:
    """A SynthMorph-style pair: random label map and intensities, and the same map deformed."""
    source_labels = random_label_map(shape, g, labels)
    field = random_diffeomorphism(shape, g, max_voxels)
    target_labels = spatial.warp(source_labels, field, mode="nearest", padding_mode="border")
    intensities = torch.rand(labels, generator=g)
    bias = torch.exp(_uniform(g, 0.0, 0.3) * smooth_noise(shape, g, 32.0))
    sigma = _uniform(g, 0.0, 0.05)
    source = _render(source_labels, intensities, bias, sigma, g)
    target = _render(target_labels, intensities, bias, sigma, g)
    return SynthPair(source, target, field, source_labels, target_labels)


def _smootherstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def cardiac_like_field(shape: Sequence[int], spacing: Sequence[float], g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """(1, n, *shape) voxel field that contracts the tissue around a random centre by up to 30 %
    (plus smooth noise) inside radius R mm, fading out to exactly zero beyond `outer` = 2.2 R."""
    spacing = torch.tensor([float(s) for s in spacing])
    extent = torch.tensor([float(n) for n in shape]) * spacing
    centre = extent / 2 + (torch.rand(len(shape), generator=g) - 0.5) * 0.2 * extent
    radius = _uniform(g, 0.08, 0.16) * float(extent[-2:].min())
    outer = 2.2 * radius
    axes = [torch.arange(n, dtype=torch.float32) * s for n, s in zip(shape, spacing)]
    mm = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (n, *shape)
    offset = mm - centre.view(-1, *([1] * len(shape)))
    r = offset.norm(dim=0)
    weight = 1.0 - _smootherstep((r - radius) / (outer - radius))
    weight[r >= outer] = 0.0
    contraction = _uniform(g, 0.0, 0.3)
    voxels = offset / spacing.view(-1, *([1] * len(shape)))
    noise = smooth_noise(shape, g, 12.0, len(shape))[0] * _uniform(g, 0.0, 1.0)
    field = (contraction * voxels + noise) * weight
    return field[None], {"centre_mm": centre, "radius_mm": radius, "outer_mm": outer, "contraction": contraction}


def real_pair(volume: torch.Tensor, spacing: Sequence[float], g: torch.Generator) -> SynthPair:
    """`volume` (1, 1, *S) on the model grid in [-1, 1], and it pulled by a cardiac-like field."""
    field, _ = cardiac_like_field(volume.shape[2:], spacing, g)
    target = spatial.warp(volume, field, padding_mode="border")
    return SynthPair(volume, target, field)


def parse_mix(text: str) -> dict[str, float]:
    """"synth=0.5,real=0.25,phantom=0.25" -> weights normalised to sum 1."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in MIX_SOURCES:
            raise InputError(f"--mix: unknown source {name!r}; use {', '.join(MIX_SOURCES)}.")
        try:
            weights[name] = float(value) if value else 1.0
        except ValueError:
            raise InputError(f"--mix: {part!r} is not name=weight.") from None
        if weights[name] < 0:
            raise InputError(f"--mix: weight of {name} must be >= 0.")
    total = sum(weights.values())
    if total <= 0:
        raise InputError("--mix: the weights must not all be zero.")
    return {k: v / total for k, v in weights.items() if v > 0}


class SynthItems:
    """make(step, item) -> (source, target) SynthMorph-style, at `shape` (the crop or the model grid);
    `supervised`: (source, target, source labels, target labels, true field, field mask), labels
    shifted to 1 .. `labels` (0 = none, see train.supervised_item)."""

    def __init__(self, shape: Sequence[int], seed: int, labels: int = 8, max_voxels: float = 6.0,
                 supervised: bool = False):
        self.shape, self.seed, self.labels, self.max_voxels = tuple(shape), seed, labels, max_voxels
        self.supervised = supervised

    def __call__(self, step: int, item: int):
        p = synth_pair(self.shape, item_generator(self.seed, step, item, "synth"), labels=self.labels,
                       max_voxels=self.max_voxels)
        if not self.supervised:
            return p.source, p.target
        return (p.source, p.target, p.source_labels + 1, p.target_labels + 1, p.field,
                torch.ones_like(p.source))


class RealItems:
    """make(step, item) -> (source, target): a random volume of `volumes` ((1, 1, *grid) tensors on the
    model grid; for a 2D model 3D volumes give a random axial slice), pulled by a cardiac-like
    field, then flipped/cropped by `augment`."""

    def __init__(self, volumes: Sequence[torch.Tensor], spacing: Sequence[float], seed: int,
                 augment: Callable, supervised: bool = False):
        if not volumes:
            raise InputError("--mix real needs real volumes (--real FILE_OR_DIR).")
        self.volumes, self.spacing, self.seed, self.augment = list(volumes), tuple(spacing), seed, augment
        self.supervised = supervised

    def __call__(self, step: int, item: int):
        g = item_generator(self.seed, step, item, "real")
        volume = self.volumes[int(torch.randint(0, len(self.volumes), (), generator=g))]
        if volume.ndim - 2 == len(self.spacing) + 1:  # a 3D volume for a 2D model: one slice
            z = int(torch.randint(volume.shape[2] // 4, max(volume.shape[2] * 3 // 4, volume.shape[2] // 4 + 1),
                                  (), generator=g))
            volume = _scale(volume[:, :, z])
        p = real_pair(volume, self.spacing, g)
        if not self.supervised:
            return self.augment(p.source, p.target, g)
        s, t, u = self.augment(p.source, p.target, g, field=p.field)
        blank = torch.zeros_like(s, dtype=torch.long)
        return s, t, blank, blank, u, torch.ones_like(s)


class MixedItems:
    """make(step, item): which part makes the item is drawn from item_generator(seed, step, item, "mix")."""

    def __init__(self, parts: Mapping[str, Callable], weights: Mapping[str, float], seed: int):
        self.names = [n for n in weights if weights[n] > 0]
        missing = [n for n in self.names if n not in parts]
        if missing:
            raise InputError(f"no data for the mix source(s) {', '.join(missing)}.")
        self.parts = {n: parts[n] for n in self.names}
        self.bounds = np.cumsum([weights[n] for n in self.names]) / sum(weights[n] for n in self.names)
        self.seed = seed

    def choose(self, step: int, item: int) -> str:
        u = float(torch.rand((), generator=item_generator(self.seed, step, item, "mix")))
        return self.names[min(int(np.searchsorted(self.bounds, u, side="right")), len(self.names) - 1)]

    def __call__(self, step: int, item: int):
        return self.parts[self.choose(step, item)](step, item)
