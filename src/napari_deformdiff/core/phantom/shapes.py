"""Shared building blocks of the phantoms: the case record, label tables, defaults, smooth
shape primitives, texture, validation and the seeded set-up every phantom model shares."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError

CARDIAC_LABELS = {0: "background", 1: "RV cavity", 2: "LV myocardium", 3: "LV cavity"}
LUNG_LABELS = {0: "background", 1: "left lung", 2: "right lung", 3: "nodule"}

# (shape, spacing) per dimensionality.
CARDIAC_DEFAULTS = {3: ((32, 128, 128), (3.15, 1.5, 1.5)), 2: ((128, 128), (1.5, 1.5))}
LUNG_DEFAULTS = {3: ((64, 96, 96), (2.5, 2.5, 2.5)), 2: ((64, 96), (2.5, 2.5))}

# Smallest field of view (mm) per array axis that holds the anatomy.
_CARDIAC_MIN_FOV = {3: (96.0, 150.0, 150.0), 2: (150.0, 150.0)}
_LUNG_MIN_FOV = {3: (150.0, 180.0, 220.0), 2: (150.0, 220.0)}
_MIN_VOXELS = 16
_TEX_SPACING_MM = 2.0  # grid of the texture / vessel volumes (independent of the image grid)
_TEX_MARGIN_MM = 24.0


@dataclass(frozen=True)
class PhantomCase:
    """A whole phantom sequence.

    images: float32 (T, *S); labels: uint8 (T, *S); fields: float32 (T, n, *S), the pull
    displacement of every frame in voxels, components in array-axis order (fields[0] == 0);
    spacing: n floats in array-axis order (mm); kind: "cardiac" or "lung"; ed_index: 0 (ED /
    end-inspiration); es_index: ES / end-expiration frame; seed; params: the drawn parameters
    (JSON-serialisable scalars).
    """

    images: np.ndarray
    labels: np.ndarray
    fields: np.ndarray
    spacing: tuple[float, ...]
    kind: str
    ed_index: int
    es_index: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.images.shape[0])


# ----------------------------------------------------------------------------- small helpers


def _smootherstep(x):
    """C2 step from 0 (x <= 0) to 1 (x >= 1); its slope is at most 15/8."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (x * 6.0 - 15.0) + 10.0)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _soft(sdf, width: float):
    """Anti-aliased membership (1 inside, 0 outside) from a signed-distance-like value (mm)."""
    s = sdf * np.float32(-1.0 / width)
    s += np.float32(0.5)
    np.clip(s, 0.0, 1.0, out=s)
    out = s * np.float32(-2.0)
    out += np.float32(3.0)
    out *= s
    out *= s
    return out


def _ellipsoid_sdf(offsets, axes):
    """Approximate signed distance (mm) to an axis-aligned ellipsoid/ellipse, exact on the surface.

    offsets: arrays (point minus centre) along the ellipsoid's axes; axes: the semi-axes.
    """
    return _ellipsoid_sdf_sq([d * d for d in offsets], axes)


def _ellipsoid_sdf_sq(squares, axes):
    """_ellipsoid_sdf from the squared offsets (lets a caller reuse v^2 + w^2 for spheroids)."""
    k0 = k1 = None
    for d2, a in zip(squares, axes):
        inv = np.float32(1.0 / (a * a))
        t = d2 * inv
        if k0 is None:
            k0 = t
            k1 = t * inv
        else:
            k0 += t
            t *= inv
            k1 += t
    np.sqrt(k0, out=k0)
    np.sqrt(k1, out=k1)
    eps = np.float32(1e-6)
    # (k0 + eps*amin) / (k1 + eps) lies between k0/k1 and amin: always in [amin, amax].
    ratio = k0 + eps * np.float32(min(axes))
    k1 += eps
    ratio /= k1
    k0 -= np.float32(1.0)
    k0 *= ratio
    return k0


def _circle_sdf(dy, dx, radius: float):
    return np.sqrt(dy * dy + dx * dx) - np.float32(radius)


class _Table:
    """Functions of one variable tabulated on a uniform grid; one index computation, many lookups."""

    def __init__(self, start: float, step: float, n: int):
        self.start, self.step, self.n = float(start), float(step), int(n)

    def grid(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.n)

    def locate(self, x):
        pos = np.clip((x - np.float32(self.start)) * np.float32(1.0 / self.step), 0.0, self.n - 1.001)
        i = pos.astype(np.intp)
        return i, (pos - i).astype(np.float32)

    @staticmethod
    def lookup(table: np.ndarray, where) -> np.ndarray:
        i, w = where
        t = table.astype(np.float32, copy=False)
        lo = np.take(t, i)
        return lo + w * (np.take(t, i + 1) - lo)


def _lerp(img, value, m):
    return img + m * (value - img)


def _time_profile(frames: int, es_index: int) -> np.ndarray:
    """0 at t=0, 1 at es_index; raised cosine up, slower raised cosine back (one cycle)."""
    t = np.arange(frames, dtype=np.float64)
    phase = t / frames
    phase_es = es_index / frames
    up = 0.5 * (1.0 - np.cos(np.pi * np.minimum(phase, phase_es) / phase_es))
    down = 0.5 * (1.0 + np.cos(np.pi * (phase - phase_es) / (1.0 - phase_es)))
    return np.where(t <= es_index, up, down)


def _centred_axis(n: int, h: float) -> np.ndarray:
    return ((np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * h).astype(np.float32)


def _validate(kind, seed, shape, spacing, frames, two_d, defaults, min_fov):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)):
        raise InputError(f"frames must be an integer, got {frames!r}.")
    if frames < 2:
        raise InputError(f"frames must be at least 2 (one cycle needs ED and ES), got {frames}.")
    n = 2 if two_d else 3
    if shape is None:
        shape = defaults[n][0]
    if spacing is None:
        spacing = defaults[n][1] if tuple(shape) == tuple(defaults[n][0]) else None
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InputError(f"shape must be a sequence of 2 or 3 integers, got {shape!r}.") from None
    if len(shape) not in (2, 3):
        raise InputError(f"shape must have 2 (2D+t) or 3 (3D+t) axes, got {len(shape)}: {shape}.")
    if len(shape) != n:
        raise InputError(
            f"shape {shape} has {len(shape)} axes but two_d={two_d}; "
            f"{'pass a 2-axis shape' if two_d else 'pass two_d=True for the 2D+t variant'}."
        )
    if spacing is None:
        # A custom grid without spacing: keep the default field of view.
        dshape, dspacing = defaults[n]
        spacing = tuple(ds * dn / s for s, dn, ds in zip(shape, dshape, dspacing))
    try:
        spacing = tuple(float(s) for s in spacing)
    except TypeError:
        raise InputError(f"spacing must be a sequence of {n} numbers, got {spacing!r}.") from None
    if len(spacing) != n:
        raise InputError(f"spacing must have {n} values (one per axis of {shape}), got {spacing}.")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing must be positive (mm per voxel), got {spacing}.")
    if min(shape) < _MIN_VOXELS:
        raise InputError(
            f"grid {shape} is too small: every axis needs at least {_MIN_VOXELS} voxels."
        )
    fov = tuple(s * h for s, h in zip(shape, spacing))
    need = min_fov[n]
    if any(f < m - 1e-6 for f, m in zip(fov, need)):
        raise InputError(
            f"the field of view {tuple(round(f, 1) for f in fov)} mm (shape x spacing) is too small "
            f"for the {kind} anatomy; it needs at least {need} mm per axis."
        )
    return shape, spacing


def _texture_volume(rng, axes_coords, scale_mm: float):
    """Smooth zero-mean unit-std random volume on a _TEX_SPACING_MM grid covering axes_coords.

    Returns (volume float32, origins per axis) for sampling with _sample.
    """
    h = _TEX_SPACING_MM
    origins, sizes = [], []
    for c in axes_coords:
        lo = float(np.min(c)) - _TEX_MARGIN_MM
        hi = float(np.max(c)) + _TEX_MARGIN_MM
        origins.append(lo)
        sizes.append(int(math.ceil((hi - lo) / h)) + 1)
    noise = rng.standard_normal(tuple(sizes), dtype=np.float32)
    vol = ndimage.gaussian_filter(noise, sigma=scale_mm / h, mode="wrap", truncate=3.0)
    vol -= vol.mean()
    vol /= max(float(vol.std()), 1e-12)
    return vol.astype(np.float32), origins


def _sample(vol, origins, coords):
    """Linear interpolation of vol (grid _TEX_SPACING_MM, given origins) at physical coords."""
    idx = [(c - o) * (1.0 / _TEX_SPACING_MM) for c, o in zip(coords, origins)]
    return ndimage.map_coordinates(
        vol, idx, order=1, mode="nearest", prefilter=False, output=np.float32
    )


class _Drawer:
    """Uniform draws recorded into params (JSON-safe floats)."""

    def __init__(self, rng: np.random.Generator, params: dict):
        self.rng = rng
        self.params = params

    def __call__(self, name: str, lo: float, hi: float) -> float:
        value = float(self.rng.uniform(lo, hi))
        self.params[name] = value
        return value


class _PhantomModel:
    """Shared set-up of the phantoms: validated grid, frame timing and the seeded draws.

    Subclasses set the class attributes and draw their anatomy in `_build` from `self.draw`
    (recorded uniform draws) and `self.rng`, in a fixed order (reproducibility).
    """

    kind: str
    defaults: dict
    min_fov: tuple
    es_fraction: float

    def __init__(self, seed, shape, spacing, frames, two_d, noise):
        self.shape, self.spacing = _validate(
            self.kind, seed, shape, spacing, frames, two_d, self.defaults, self.min_fov
        )
        self.seed = int(seed)
        self.frames = int(frames)
        self.two_d = bool(two_d)
        self.noise = bool(noise)
        self.es_index = min(max(int(round(self.es_fraction * self.frames)), 1), self.frames - 1)
        self.profile = _time_profile(self.frames, self.es_index)
        self.params: dict[str, Any] = {}
        self.rng = np.random.default_rng(self.seed)
        self.draw = _Drawer(self.rng, self.params)
        self._build()

    def _build(self) -> None:
        raise NotImplementedError


