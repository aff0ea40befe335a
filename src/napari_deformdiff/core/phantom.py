"""Procedural, seeded 4D phantoms with a known motion: a beating heart (cine-MR look) and
breathing lungs (CT look), in 3D+t or 2D+t.

Every frame ``t`` is defined by a known *pull* displacement field ``u_t`` (voxels, channel ``k``
= displacement along array axis ``k``)::

    image_t(x) = ED_image(x + u_t(x))        labels_t(x) = ED_labels(x + u_t(x))

where ``ED_*`` are analytic functions of physical position (millimetres). Frames are rendered by
evaluating the reference anatomy analytically at the pulled positions (no re-warping of warped
images), so images, labels and fields agree exactly at every frame. Tissue texture is a smooth
random volume defined once in reference coordinates and sampled at the pulled positions (it moves
with the tissue); acquisition noise is drawn afresh per frame (it does not move).

Every random choice comes from ``numpy.random.default_rng(seed)``: the same seed and arguments
give bit-identical arrays. Anatomy is defined in millimetres, so changing the grid or the spacing
keeps the anatomy the same physical size.

Coordinates: the array axes are (z, y, x) in 3D (the 2D cardiac variant is (y, x), the 2D lung
variant is coronal (z, x)). Physical coordinates are centred on the grid centre; +z is cranial
(superior), +y is posterior, +x is the patient's left (the radiological LPS-like convention).

Folding-free by construction: each field is a composition of maps whose Jacobian determinants are
positive in closed form (a longitudinal map with ``1 + beta*h'(l) > 0``, a twist with determinant
1, a radial map ``r -> R(r)`` with ``dR/dr > 0``; for the lung ``z -> z - a f(z) g(y, x)`` with
``f`` non-increasing and two more monotone one-axis maps). The 1D bounds are verified when a case
is built.

Parameter ranges (drawn uniformly per seed; every drawn value is returned in ``PhantomCase.params``):

Cardiac (ACDC labels 1 = RV cavity, 2 = LV myocardium, 3 = LV cavity)
    LV ED cavity diameter 45-55 mm; wall 8-12 mm (apex 70-90 % of it); long axis
    (epicardial apex to base plane) 80-88 mm; base plane 5-12 mm above the cavity equator;
    RV: centre 14-24 mm from the LV axis, reach 52-62 mm from the LV axis, half-width 42-52 mm,
    longitudinal extent 75-90 % of the LV's, free wall 2.5-4 mm; in-plane orientation of the
    heart 210 +- 45 deg (RV towards the patient's right-anterior), long-axis tilt 0-4 deg
    (any azimuth), position offset -4..8 mm along y, +-8 mm along x, -1.5..0 mm along z.
    Motion: ejection fraction 0.40-0.65 (ES LV cavity = 35-60 % of ED), longitudinal shortening
    10-18 %, base-to-apex twist 4-10 deg, RV free-wall inward motion 7-12 mm.
    Intensities (a.u.): blood 0.85-1.0, myocardium 0.18-0.30, muscle/background 0.32-0.45,
    lung 0.03-0.09, fat 0.70-0.92, air 0; texture strength 4-12 %, texture scale 2.5-5 mm;
    Rician noise sigma 0.015-0.04.
    Time: ED at t=0, ES at round(0.35*T), raised-cosine contraction, slower raised-cosine return.

Lung (labels 1 = left lung, 2 = right lung, 3 = nodule), anatomy scaled to fit the default
240 x 240 x 160 mm field of view
    Body half-axes 100-112 mm (lateral) x 75-88 mm (AP); lungs centred 44-52 mm from the midline,
    half-axes 32-40 mm (lateral) x 50-60 mm (AP); apices at z = 52-64 mm; left dome top at
    z = -42..-34 mm, right dome 6-16 mm higher; dome depth 18-28 mm; nodule (80 % of seeds)
    radius 4-10 mm.
    Motion: cranio-caudal amplitude of the lung bases 10-20 mm (decaying to 0 at the apex),
    antero-posterior amplitude 2-6 mm, lateral expansion 1-3 %.
    CT-like values (HU): air -1000, lung -880..-820, soft tissue 30-55, fat -110..-80,
    vessels 40-100, nodule 10-60, bone marrow 250-400 with a 700 HU cortex; Gaussian noise
    sigma 8-20 HU. Time: end-inspiration at t=0, end-expiration at round(0.5*T).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError
from .events import Frame

__all__ = [
    "PhantomCase",
    "cardiac_phantom",
    "lung_phantom",
    "stream_cardiac_phantom",
    "stream_lung_phantom",
    "CARDIAC_LABELS",
    "LUNG_LABELS",
    "CARDIAC_DEFAULTS",
    "LUNG_DEFAULTS",
]

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


# ----------------------------------------------------------------------------- cardiac


class _CardiacModel(_PhantomModel):
    kind, defaults, min_fov, es_fraction = "cardiac", CARDIAC_DEFAULTS, _CARDIAC_MIN_FOV, 0.35

    def _build(self) -> None:
        params, rng, U = self.params, self.rng, self.draw
        # --- anatomy (mm); the draw order is fixed: never reorder (reproducibility).
        self.a_r = U("lv_cavity_diameter_mm", 45.0, 55.0) / 2.0
        self.t_wall = U("lv_wall_mm", 8.0, 12.0)
        self.t_apex = self.t_wall * U("apex_wall_ratio", 0.7, 0.9)
        long_axis = U("long_axis_mm", 80.0, 88.0)
        self.l_base = U("base_above_equator_mm", 5.0, 12.0)
        self.a_l = long_axis - self.t_apex - self.l_base
        self.d_rv = U("rv_centre_offset_mm", 14.0, 24.0)
        rv_reach = U("rv_reach_mm", 52.0, 62.0)
        self.a_v_rv = rv_reach - self.d_rv
        self.a_w_rv = U("rv_half_width_mm", 42.0, 52.0)
        self.a_l_rv = (self.a_l + self.t_apex) * U("rv_length_ratio", 0.75, 0.90)
        self.t_rv = U("rv_wall_mm", 2.5, 4.0)
        psi = math.radians(U("inplane_angle_deg", 165.0, 255.0))
        tilt = math.radians(U("tilt_deg", 0.0, 4.0))
        tilt_az = math.radians(U("tilt_azimuth_deg", 0.0, 360.0))
        off_y = U("offset_y_mm", -4.0, 8.0)
        off_x = U("offset_x_mm", -8.0, 8.0)
        off_z = U("offset_z_mm", -1.5, 0.0)
        # --- motion
        ef = U("ejection_fraction", 0.40, 0.65)
        shortening = U("longitudinal_shortening", 0.10, 0.18)
        twist = math.radians(U("twist_deg", 4.0, 10.0))
        rv_disp = U("rv_free_wall_motion_mm", 7.0, 12.0)
        # --- appearance
        self.i_blood = U("intensity_blood", 0.85, 1.0)
        self.i_myo = U("intensity_myocardium", 0.18, 0.30)
        self.i_tissue = U("intensity_tissue", 0.32, 0.45)
        self.i_lung = U("intensity_lung", 0.03, 0.09)
        self.i_fat = U("intensity_fat", 0.70, 0.92)
        self.tex_strength = U("texture_strength", 0.04, 0.12)
        tex_scale = U("texture_scale_mm", 2.5, 5.0)
        self.sigma = U("noise_sigma", 0.015, 0.04)
        # --- torso (z-invariant)
        self.body_ap = U("body_ap_semi_mm", 110.0, 125.0)
        self.body_lat = U("body_lateral_semi_mm", 150.0, 175.0)
        self.body_y = U("anterior_skin_y_mm", -92.0, -82.0) + self.body_ap
        self.fat = U("fat_mm", 8.0, 15.0)
        lung_x = U("lung_centre_x_mm", 66.0, 78.0)
        lung_y = U("lung_centre_y_mm", 18.0, 32.0)
        self.lung_axes = (U("lung_semi_y_mm", 50.0, 62.0), U("lung_semi_x_mm", 35.0, 45.0))
        self.lung_centres = ((lung_y, lung_x), (lung_y, -lung_x))
        self.aorta = (U("aorta_y_mm", 45.0, 60.0), U("aorta_x_mm", 15.0, 30.0),
                      U("aorta_radius_mm", 10.0, 13.0))
        self.spine = (U("spine_y_mm", 78.0, 88.0), U("spine_radius_mm", 16.0, 20.0))
        tex_seed = int(rng.integers(0, 2**63 - 1))
        noise_seed = int(rng.integers(0, 2**63 - 1))

        # --- derived motion parameters
        self.beta_es = shortening / (1.0 - shortening)  # pull stretch along the long axis at ES
        self.c_es = math.sqrt((1.0 - ef) / (1.0 - shortening))  # ES/ED endocardial radius ratio
        self.rho = 0.5 * self.c_es * self.a_r  # near-axis length scale of the radial map
        self.twist_es = twist
        params["es_volume_ratio"] = 1.0 - ef
        params["endo_radius_ratio_es"] = self.c_es
        params["two_d"] = self.two_d
        if self.two_d:
            params["tilt_deg"] = 0.0  # a true short-axis slice: the long axis is through-plane
            tilt = 0.0
            self.beta_es = 0.0  # through-plane motion is not part of a 2D+t sequence
            params["area_ratio_es"] = self.c_es**2

        # --- heart frame: e_l (long axis, towards the base), e_v (towards the RV), e_w
        e_l = np.array([math.cos(tilt), math.sin(tilt) * math.sin(tilt_az),
                        math.sin(tilt) * math.cos(tilt_az)])
        e_v = np.array([0.0, math.sin(psi), math.cos(psi)])
        e_v = e_v - e_v.dot(e_l) * e_l
        e_v /= np.linalg.norm(e_v)
        e_w = np.cross(e_l, e_v)
        if self.two_d:  # tilt is 0: e_v and e_w lie in the (y, x) plane
            e_l = np.array([1.0, 0.0, 0.0])
            e_v = np.array([0.0, e_v[1], e_v[2]])
            e_w = np.array([0.0, e_w[1], e_w[2]])
        self.frame_vectors = (e_l, e_v, e_w)
        base_z = 41.9 + off_z  # base-plane centre: 8.5 mm below the top of the default 100.8 mm FOV
        centre = np.array([base_z, off_y, off_x]) - self.l_base * e_l  # LV equator centre
        self.l_mid = 0.5 * (self.l_base - self.a_l)  # mid-ventricular level (cavity)

        # --- grid points (physical mm, 3 components each broadcast to S)
        if self.two_d:
            ny, nx = self.shape
            yy = _centred_axis(ny, self.spacing[0])[:, None]
            xx = _centred_axis(nx, self.spacing[1])[None, :]
            z_plane = float(centre[0] + self.l_mid)
            P = [np.full(self.shape, z_plane, np.float32), np.broadcast_to(yy, self.shape),
                 np.broadcast_to(xx, self.shape)]
            params["slice_z_mm"] = z_plane
        else:
            nz, ny, nx = self.shape
            zz = _centred_axis(nz, self.spacing[0])[:, None, None]
            yy = _centred_axis(ny, self.spacing[1])[None, :, None]
            xx = _centred_axis(nx, self.spacing[2])[None, None, :]
            P = [np.broadcast_to(zz, self.shape), np.broadcast_to(yy, self.shape),
                 np.broadcast_to(xx, self.shape)]
        self.P = [np.ascontiguousarray(p, dtype=np.float32) for p in P]
        rel = [self.P[k] - np.float32(centre[k]) for k in range(3)]

        def dot(vec):
            return (rel[0] * np.float32(vec[0]) + rel[1] * np.float32(vec[1])
                    + rel[2] * np.float32(vec[2])).astype(np.float32)

        self.l0, self.v0, self.w0 = dot(e_l), dot(e_v), dot(e_w)
        self.r0sq = self.v0 * self.v0 + self.w0 * self.w0
        r0 = np.sqrt(self.r0sq)

        # --- 1D tables along the long axis (ED level l), 0.1 mm steps
        l_apex = -(self.a_l + self.t_apex)
        self.ltab = _Table(l_apex - 160.0, 0.1, int(round((self.l_base - l_apex + 320.0) / 0.1)))
        lt = self.ltab.grid()
        # Longitudinal pull displacement shape h(l): 0 below the apex, (l - apex) over the heart,
        # back to 0 well above the base. beta * h'(l) > -1 keeps the map folding-free.
        m = 5.0
        w_long = 70.0
        h_long = m * _softplus((lt - l_apex) / m) * (1.0 - _smootherstep((lt - self.l_base - 5.0) / w_long))
        slope = np.diff(h_long) / np.diff(lt)
        if 1.0 + self.beta_es * slope.min() <= 0.2:  # pragma: no cover - guaranteed by the ranges
            raise RuntimeError("internal: longitudinal map would fold")
        # Windows along l for the radial map (1 over the heart, 0 far above/below).
        win_lv = (_smootherstep((lt - (l_apex - 30.0)) / 25.0)
                  * (1.0 - _smootherstep((lt - (self.l_base + 5.0)) / 25.0)))
        rv_apex = -self.a_l_rv
        win_rv = (_smootherstep((lt - (rv_apex - 25.0)) / 20.0)
                  * (1.0 - _smootherstep((lt - (self.l_base + 5.0)) / 25.0)))
        # Squared ED endocardial radius per level, smoothly clamped to [apex, base].
        s = 3.0
        lc = -self.a_l + s * _softplus((lt + self.a_l) / s)
        lc = self.l_base - s * _softplus((self.l_base - lc) / s)
        Q = np.maximum(self.a_r**2 * (1.0 - (lc / self.a_l) ** 2), 0.0)
        self.Q_tab = Q * win_lv
        self.win_lv = win_lv
        self.win_rv = win_rv
        self.h_long = h_long
        # Twist angle profile: smoothly -1 at the apex to +1 at the base, windowed.
        self.twist_shape = (2.0 * _smootherstep((lt - l_apex) / (self.l_base - l_apex)) - 1.0) * win_lv

        # --- radial windows (functions of the in-plane radius r, mm)
        c2 = self.c_es**2
        d1_max = float(((1.0 - c2) * self.Q_tab + self.rho**2 * (1.0 / c2 - 1.0) * win_lv).max())
        R_epi = self.a_r + self.t_wall
        E = R_epi**2
        b = self.rho**2 + d1_max - E
        r_epi_es = math.sqrt((-b + math.sqrt(b * b + 4.0 * E * self.rho**2)) / 2.0)
        r_lv_disp_at_reach = rv_reach - math.sqrt(max(rv_reach**2 - d1_max, 1.0))
        r_rvo_es = rv_reach - max(rv_disp, r_lv_disp_at_reach)
        self.r_h0 = r_epi_es + 1.5
        self.r_h1 = max(r_rvo_es, self.r_h0 + 5.0)
        g_at = self.r_h1**2 / (self.r_h1**2 + self.rho**2)
        self.d2_max = max(rv_reach**2 - self.r_h1**2 - d1_max * g_at, 0.0)
        self.r_a = rv_reach + 4.0  # the LV radial contraction is full inside, decays outside
        self.w_a = 20.0
        self.w_h = 25.0
        self._check_radial(d1_max)
        params["rv_es_outer_radius_mm"] = self.r_h1

        self.G1r = (self._w_lv(r0) / (self.r0sq + np.float32(self.rho**2))).astype(np.float32)
        self.Hr = (self._h_rv(r0) / np.maximum(self.r0sq, np.float32(1e-6))).astype(np.float32)
        self.inv_r0 = (1.0 / np.maximum(r0, np.float32(1e-6))).astype(np.float32)
        self.w_twist = self._w_lv(r0).astype(np.float32)
        wr_long = (1.0 - _smootherstep((r0 - rv_reach - 2.0) / 25.0)).astype(np.float32)
        self.H0 = None if self.two_d else _Table.lookup(h_long, self.ltab.locate(self.l0)) * wr_long

        # --- texture and noise generators
        tex_rng = np.random.default_rng(tex_seed)
        self.tex_axes = (1, 2) if self.two_d else (0, 1, 2)
        self.tex, self.tex_origin = _texture_volume(
            tex_rng, [self.P[k] for k in self.tex_axes], tex_scale
        )
        self.noise_rng = np.random.default_rng(noise_seed)
        self.edge = float(np.prod(self.spacing) ** (1.0 / len(self.spacing)))

    # radial weight of the LV contraction (and twist): 1 inside r_a, 0 beyond r_a + w_a
    def _w_lv(self, r):
        return 1.0 - _smootherstep((r - self.r_a) / self.w_a)

    # radial profile of the RV free-wall contraction: 0 inside the ES LV epicardium, 1 at the
    # ES RV free wall, then back to 0
    def _h_rv(self, r):
        up = _smootherstep((r - self.r_h0) / (self.r_h1 - self.r_h0))
        return up * (1.0 - _smootherstep((r - self.r_h1) / self.w_h))

    def _check_radial(self, d1_max):
        """dR^2/dr = 2r + D1 (g w)' + D2 a h' > 0 for every D1 <= d1_max, D2 <= d2_max, a in [0,1]."""
        for _ in range(20):
            r = np.arange(0.02, 400.0, 0.02)
            g = r**2 / (r**2 + self.rho**2)
            gw = g * self._w_lv(r)
            h = self._h_rv(r)
            d_gw = np.diff(gw) / 0.02
            d_h = np.diff(h) / 0.02
            rm = 0.5 * (r[1:] + r[:-1])
            worst = 2.0 * rm + d1_max * np.minimum(d_gw, 0.0) + self.d2_max * np.minimum(d_h, 0.0)
            if (worst / (2.0 * rm)).min() > 0.2:
                return
            self.w_a *= 1.5
            self.w_h *= 1.5
        raise RuntimeError("internal: radial map would fold")  # pragma: no cover

    # ------------------------------------------------------------------ per frame
    def pulled(self, t: int):
        """Local heart coordinates (l, v, w) and physical coordinates of x + u_t(x)."""
        p = float(self.profile[t])
        if p == 0.0:
            return self.l0, self.v0, self.w0, self.r0sq, list(self.P), True
        c = 1.0 - (1.0 - self.c_es) * p
        c2 = c * c
        # 1) longitudinal: base towards apex
        if self.two_d:
            l1 = self.l0
        else:
            l1 = self.l0 + np.float32(self.beta_es * p) * self.H0
        # 2) twist about the long axis (determinant 1)
        where = self.ltab.locate(l1)
        theta = _Table.lookup(self.twist_shape, where)
        theta *= np.float32(self.twist_es * p)
        theta *= self.w_twist
        ct, st = np.cos(theta), np.sin(theta)
        v1 = self.v0 * ct - self.w0 * st
        w1 = self.v0 * st + self.w0 * ct
        # 3) radial: R^2 = r^2 + D1(l) g(r) w(r) + D2(l) a(phi) h(r)
        d1_tab = (1.0 - c2) * self.Q_tab + self.rho**2 * (1.0 / c2 - 1.0) * self.win_lv
        d1 = _Table.lookup(d1_tab, where)
        k2 = 1.0 + d1 * self.G1r
        if self.d2_max > 0:
            d2 = _Table.lookup(self.win_rv, where) * np.float32(self.d2_max * p)
            a = 0.5 * (1.0 + v1 * self.inv_r0)
            k2 += d2 * (a * a) * self.Hr
        k = np.sqrt(k2)
        v2 = v1 * k
        w2 = w1 * k
        e_l, e_v, e_w = self.frame_vectors
        du_l = l1 - self.l0
        du_v = v2 - self.v0
        du_w = w2 - self.w0
        X = []
        for axis in range(3):
            comp = du_v * np.float32(e_v[axis]) + du_w * np.float32(e_w[axis])
            if not self.two_d:
                comp += du_l * np.float32(e_l[axis])
            X.append(self.P[axis] + comp)
        return l1, v2, w2, k2 * self.r0sq, X, False

    def render(self, t: int):
        l, v, w, rsq, X, is_ref = self.pulled(t)
        n = len(self.shape)
        if is_ref:
            fld = np.zeros((n, *self.shape), np.float32)
        else:
            axes = (1, 2) if self.two_d else (0, 1, 2)
            fld = np.stack([(X[a] - self.P[a]) * np.float32(1.0 / h) for a, h in zip(axes, self.spacing)])
        edge = self.edge
        Y, Xx = X[1], X[2]
        # torso (z-invariant)
        dy = Y - np.float32(self.body_y)
        sdf_body = _ellipsoid_sdf((dy, Xx), (self.body_ap, self.body_lat))
        sdf_inner = _ellipsoid_sdf((dy, Xx), (self.body_ap - self.fat, self.body_lat - self.fat))
        m_body = _soft(sdf_body, edge)
        img = m_body * np.float32(self.i_fat)
        img = _lerp(img, np.float32(self.i_tissue), _soft(sdf_inner, edge))
        sdf_lung = None
        for (cy, cx) in self.lung_centres:
            s = _ellipsoid_sdf((Y - np.float32(cy), Xx - np.float32(cx)), self.lung_axes)
            sdf_lung = s if sdf_lung is None else np.minimum(sdf_lung, s)
        img = _lerp(img, np.float32(self.i_lung), _soft(np.maximum(sdf_lung, sdf_inner + 4.0), edge))
        ay, ax, ar = self.aorta
        sdf_ao = _circle_sdf(Y - np.float32(ay), Xx - np.float32(ax), ar)
        m_blood = _soft(sdf_ao, edge)
        img = _lerp(img, np.float32(self.i_blood), m_blood)
        sy, sr = self.spine
        img = _lerp(img, np.float32(0.5 * (self.i_tissue + self.i_myo)),
                    _soft(_circle_sdf(Y - np.float32(sy), Xx, sr), edge))
        # heart (local coordinates)
        cut = l - np.float32(self.l_base)
        lsq = l * l
        sdf_endo = _ellipsoid_sdf_sq((lsq, rsq), (self.a_l, self.a_r))
        sdf_epi = _ellipsoid_sdf_sq((lsq, rsq), (self.a_l + self.t_apex, self.a_r + self.t_wall))
        sdf_cav = np.maximum(sdf_endo, cut)
        sdf_epi_t = np.maximum(sdf_epi, cut)
        dv = v - np.float32(self.d_rv)
        sdf_rv = _ellipsoid_sdf_sq((lsq, dv * dv, w * w), (self.a_l_rv, self.a_v_rv, self.a_w_rv))
        sdf_rv_cav = np.maximum(np.maximum(sdf_rv, -sdf_epi), cut)
        sdf_heart = np.minimum(sdf_epi_t, np.maximum(sdf_rv - np.float32(self.t_rv), cut))
        img = _lerp(img, np.float32(self.i_myo), _soft(sdf_heart, edge))
        m_lv = _soft(sdf_cav, edge)
        m_rv = _soft(sdf_rv_cav, edge)
        img = _lerp(img, np.float32(self.i_blood), m_lv)
        img = _lerp(img, np.float32(self.i_blood), m_rv)
        m_blood = np.maximum(m_blood, np.maximum(m_lv, m_rv))
        # texture (moves with the tissue), weaker in blood
        tex = _sample(self.tex, self.tex_origin, [X[a] for a in self.tex_axes])
        img *= 1.0 + np.float32(self.tex_strength) * tex * (1.0 - 0.6 * m_blood)
        if self.noise:
            sig = np.float32(self.sigma)
            n1 = self.noise_rng.standard_normal(self.shape, dtype=np.float32)
            n2 = self.noise_rng.standard_normal(self.shape, dtype=np.float32)
            re = img + sig * n1
            im = sig * n2
            img = np.sqrt(re * re + im * im)
        labels = np.zeros(self.shape, np.uint8)
        labels[sdf_rv_cav < 0] = 1
        labels[sdf_epi_t < 0] = 2
        labels[sdf_cav < 0] = 3
        return img.astype(np.float32, copy=False), fld, labels


# ----------------------------------------------------------------------------- lung


class _LungModel(_PhantomModel):
    kind, defaults, min_fov, es_fraction = "lung", LUNG_DEFAULTS, _LUNG_MIN_FOV, 0.5

    def _build(self) -> None:
        params, rng, U = self.params, self.rng, self.draw
        # --- anatomy (mm); fixed draw order
        self.body_lat = U("body_lateral_semi_mm", 100.0, 112.0)
        self.body_ap = U("body_ap_semi_mm", 75.0, 88.0)
        self.body_y = U("body_centre_y_mm", -3.0, 3.0)
        self.fat = U("fat_mm", 6.0, 12.0)
        self.wall = U("chest_wall_mm", 8.0, 12.0)
        cav_lat = self.body_lat - self.fat - self.wall
        cav_ap = self.body_ap - self.fat - self.wall
        self.cav_axes = (cav_ap, cav_lat)
        lungs = []
        for side, sign in (("left", 1.0), ("right", -1.0)):
            cx = sign * U(f"{side}_lung_centre_x_mm", 44.0, 52.0)
            cy = U(f"{side}_lung_centre_y_mm", 2.0, 10.0)
            ax = min(U(f"{side}_lung_semi_x_mm", 32.0, 40.0), cav_lat - abs(cx) - 3.0)
            ay = min(U(f"{side}_lung_semi_y_mm", 50.0, 60.0), cav_ap - abs(cy - self.body_y) - 3.0)
            apex = U(f"{side}_lung_apex_z_mm", 52.0, 64.0)
            depth = U(f"{side}_dome_depth_mm", 18.0, 28.0)
            params[f"{side}_lung_semi_x_mm"], params[f"{side}_lung_semi_y_mm"] = ax, ay  # as used
            lungs.append({"cx": cx, "cy": cy, "ax": ax, "ay": ay, "apex": apex, "depth": depth})
        dome_left = U("left_dome_z_mm", -42.0, -34.0)
        dome_right = dome_left + U("right_dome_above_left_mm", 6.0, 16.0)
        lungs[0]["dome"], lungs[1]["dome"] = dome_left, dome_right
        for lung in lungs:
            lung["zc"] = lung["dome"] - lung["depth"]  # costophrenic recess level
            lung["hz"] = lung["apex"] - lung["zc"]
        self.lungs = lungs
        hz = U("heart_semi_z_mm", 38.0, 45.0)
        hy = U("heart_semi_y_mm", 34.0, 40.0)
        hx = U("heart_semi_x_mm", 44.0, 52.0)
        self.heart = (dome_left + U("heart_above_dome_mm", 18.0, 28.0),
                      self.body_y - cav_ap + hy + U("heart_gap_mm", 2.0, 8.0),
                      U("heart_centre_x_mm", 8.0, 20.0), hz, hy, hx)
        self.medi = (self.body_y - 0.35 * cav_ap, 0.75 * cav_ap, U("mediastinum_semi_x_mm", 14.0, 20.0))
        spine_r = U("spine_radius_mm", 14.0, 18.0)
        spine_y = self.body_y + self.body_ap - U("spine_depth_mm", 28.0, 34.0)
        self.spine = (spine_y, spine_r)
        ao_r = U("aorta_radius_mm", 9.0, 12.0)
        self.aorta = (spine_y - spine_r - ao_r - 2.0, U("aorta_x_mm", 12.0, 20.0), ao_r)
        # --- motion
        self.amp = U("si_amplitude_mm", 10.0, 20.0)
        self.ap_amp = U("ap_amplitude_mm", 2.0, 6.0)
        self.lat = U("lateral_expansion", 0.01, 0.03)
        # --- appearance
        self.hu_lung = U("hu_lung", -880.0, -820.0)
        self.hu_soft = U("hu_soft_tissue", 30.0, 55.0)
        self.hu_fat = U("hu_fat", -110.0, -80.0)
        self.hu_vessel = U("hu_vessel", 40.0, 100.0)
        self.hu_nodule = U("hu_nodule", 10.0, 60.0)
        self.hu_marrow = U("hu_bone_marrow", 250.0, 400.0)
        self.hu_abd = U("hu_abdomen", 45.0, 65.0)
        self.sigma = U("noise_sigma_hu", 8.0, 20.0)
        self.tex_lung = U("lung_texture_hu", 15.0, 35.0)
        self.tex_soft = U("tissue_texture_hu", 4.0, 10.0)
        tex_scale = U("texture_scale_mm", 3.0, 6.0)
        # --- nodule (rejection-sampled inside one lung, away from its border)
        self.nodule = None
        has_nodule = bool(rng.random() < 0.8)
        nod_r = U("nodule_radius_mm", 4.0, 10.0)
        nod_side = int(rng.integers(0, 2))
        if has_nodule:
            lung = lungs[nod_side]
            for _ in range(2000):
                z = rng.uniform(lung["dome"], lung["apex"] - 10.0)
                y = lung["cy"] + rng.uniform(-1, 1) * lung["ay"]
                x = lung["cx"] + rng.uniform(-1, 1) * lung["ax"]
                pt = [np.array([z], np.float32), np.array([y], np.float32), np.array([x], np.float32)]
                sdfs = self._lung_sdfs(pt)[0]
                if float(sdfs[nod_side][0]) < -(nod_r + 6.0):
                    self.nodule = (float(z), float(y), float(x), nod_r)
                    break
        params["has_nodule"] = self.nodule is not None
        params["nodule_side"] = ("left", "right")[nod_side] if self.nodule else "none"
        if self.nodule:
            params["nodule_z_mm"], params["nodule_y_mm"], params["nodule_x_mm"] = self.nodule[:3]
        vessel_seed = int(rng.integers(0, 2**63 - 1))
        tex_seed = int(rng.integers(0, 2**63 - 1))
        noise_seed = int(rng.integers(0, 2**63 - 1))

        # --- motion profiles
        self.z_f0 = max(dome_left, dome_right) + self.amp + 2.0  # f = 1 up to the ES dome tops
        self.z_f1 = max(l["apex"] for l in lungs) + 15.0
        self.y_ant = self.body_y - self.body_ap
        self.y_post = spine_y
        self.plane_y = 0.5 * (lungs[0]["cy"] + lungs[1]["cy"])
        params["two_d"] = self.two_d
        if self.two_d:
            params["coronal_plane_y_mm"] = self.plane_y
            self.ap_amp = 0.0
            params["ap_amplitude_mm"] = 0.0
        for lung, side in zip(lungs, ("left", "right")):
            params[f"{side}_dome_top_z_mm"] = lung["dome"]
            params[f"{side}_dome_top_y_mm"] = lung["cy"]
            params[f"{side}_dome_top_x_mm"] = lung["cx"]

        # --- grid points
        if self.two_d:
            nz, nx = self.shape
            zz = _centred_axis(nz, self.spacing[0])[:, None]
            xx = _centred_axis(nx, self.spacing[1])[None, :]
            P = [np.broadcast_to(zz, self.shape), np.full(self.shape, self.plane_y, np.float32),
                 np.broadcast_to(xx, self.shape)]
            self.tex_axes = (0, 2)
        else:
            nz, ny, nx = self.shape
            zz = _centred_axis(nz, self.spacing[0])[:, None, None]
            yy = _centred_axis(ny, self.spacing[1])[None, :, None]
            xx = _centred_axis(nx, self.spacing[2])[None, None, :]
            P = [np.broadcast_to(zz, self.shape), np.broadcast_to(yy, self.shape),
                 np.broadcast_to(xx, self.shape)]
            self.tex_axes = (0, 1, 2)
        self.P = [np.ascontiguousarray(p, dtype=np.float32) for p in P]
        self.edge = float(np.prod(self.spacing) ** (1.0 / len(self.spacing)))
        # z-only profiles of the map (tables, 0.1 mm)
        self.ztab = _Table(-400.0, 0.1, 8001)
        self.f_tab = 1.0 - _smootherstep((self.ztab.grid() - self.z_f0) / (self.z_f1 - self.z_f0))
        if np.any(np.diff(self.f_tab) > 0):  # pragma: no cover
            raise RuntimeError("internal: SI profile must be non-increasing")

        tex_rng = np.random.default_rng(tex_seed)
        tex_coords = [self.P[k] for k in self.tex_axes]
        self.tex, self.tex_origin = _texture_volume(tex_rng, tex_coords, tex_scale)
        self.vessels = self._vessel_volume(np.random.default_rng(vessel_seed), tex_coords)
        self.noise_rng = np.random.default_rng(noise_seed)

    # ------------------------------------------------------------------ anatomy
    def _lung_sdfs(self, X):
        Z, Y, Xx = X
        hz_, hy_, hx_ = self.heart[3:]
        sdf_heart = _ellipsoid_sdf(
            (Z - np.float32(self.heart[0]), Y - np.float32(self.heart[1]), Xx - np.float32(self.heart[2])),
            (hz_, hy_, hx_))
        my, may, max_ = self.medi
        sdf_medi = _ellipsoid_sdf((Y - np.float32(my), Xx), (may, max_))
        sy, sr = self.spine
        sdf_spine = _circle_sdf(Y - np.float32(sy), Xx, sr)
        ay, ax, ar = self.aorta
        sdf_ao = _circle_sdf(Y - np.float32(ay), Xx - np.float32(ax), ar)
        sdf_cav = _ellipsoid_sdf((Y - np.float32(self.body_y), Xx), self.cav_axes)
        excl = np.minimum(np.minimum(sdf_heart - 3.0, sdf_medi),
                          np.minimum(sdf_spine - 4.0, sdf_ao - 3.0))
        out = []
        for lung in self.lungs:
            dy = Y - np.float32(lung["cy"])
            dx = Xx - np.float32(lung["cx"])
            sdf_e = _ellipsoid_sdf((Z - np.float32(lung["zc"]), dy, dx), (lung["hz"], lung["ay"], lung["ax"]))
            qy = dy * np.float32(1.0 / lung["ay"] ** 2)
            qx = dx * np.float32(1.0 / lung["ax"] ** 2)
            dome = np.float32(lung["dome"]) - np.float32(lung["depth"]) * (dy * qy + dx * qx)
            grad2 = np.float32(4.0 * lung["depth"] ** 2) * (qy * qy + qx * qx)
            sdf_d = (dome - Z) / np.sqrt(1.0 + grad2)
            s = np.maximum(np.maximum(sdf_e, sdf_d), np.maximum(-excl, sdf_cav + 1.0))
            out.append(s)
        return out, sdf_heart, sdf_spine, sdf_ao, sdf_cav

    def _vessel_volume(self, rng, coords):
        """Vessel density (0..1) on the texture grid: branching tubes from each hilum + blobs."""
        h = _TEX_SPACING_MM
        axes_1d = []
        for c in coords:
            lo = float(np.min(c)) - _TEX_MARGIN_MM
            n = int(math.ceil((float(np.max(c)) + _TEX_MARGIN_MM - lo) / h)) + 1
            axes_1d.append(lo + h * np.arange(n, dtype=np.float64))
        grid_axes = dict(zip(self.tex_axes, axes_1d))
        fixed = {k: float(self.P[k].flat[0]) for k in range(3) if k not in grid_axes}
        vol = np.zeros([len(a) for a in axes_1d], np.float32)

        def capsule(a, b, rad):
            lo = np.minimum(a, b) - rad - 2 * h
            hi = np.maximum(a, b) + rad + 2 * h
            sl, sub = [], []
            for k in range(3):
                if k in fixed:
                    if not (lo[k] <= fixed[k] <= hi[k]):
                        return
                    continue
                ax = grid_axes[k]
                i0, i1 = np.searchsorted(ax, lo[k]), np.searchsorted(ax, hi[k])
                if i1 <= i0:
                    return
                sl.append(slice(i0, i1))
                sub.append(ax[i0:i1])
            mesh = np.meshgrid(*sub, indexing="ij")
            pts = []
            it = iter(mesh)
            for k in range(3):
                pts.append(np.full(mesh[0].shape, fixed[k]) if k in fixed else next(it))
            ab = b - a
            denom = max(float(ab.dot(ab)), 1e-9)
            tpar = np.clip(sum((pts[k] - a[k]) * ab[k] for k in range(3)) / denom, 0.0, 1.0)
            d2 = sum((pts[k] - (a[k] + tpar * ab[k])) ** 2 for k in range(3))
            val = np.clip((rad - np.sqrt(d2)) / h + 0.5, 0.0, 1.0).astype(np.float32)
            region = vol[tuple(sl)]
            np.maximum(region, val, out=region)

        for sign, lung in zip((1.0, -1.0), self.lungs):
            hilum = np.array([lung["dome"] + 0.45 * (lung["apex"] - lung["dome"]),
                              lung["cy"], lung["cx"] - sign * 0.55 * lung["ax"]])
            stack = []
            for _ in range(4):
                d = np.array([rng.uniform(-1, 0.6), rng.uniform(-0.7, 0.7), sign * rng.uniform(0.3, 1.0)])
                stack.append((hilum, d / np.linalg.norm(d), rng.uniform(3.5, 4.5), 0))
            while stack:
                start, d, rad, depth = stack.pop()
                length = rng.uniform(12.0, 22.0) * (0.85**depth)
                end = start + d * length
                capsule(start, end, rad)
                if depth < 4 and rad > 1.2:
                    for _ in range(2):
                        nd = d + rng.normal(0.0, 0.45, 3)
                        stack.append((end, nd / np.linalg.norm(nd), rad * 0.75, depth + 1))
            for _ in range(30):
                z = rng.uniform(lung["zc"], lung["apex"])
                p0 = np.array([z, lung["cy"] + rng.uniform(-1, 1) * lung["ay"],
                               lung["cx"] + rng.uniform(-1, 1) * lung["ax"]])
                dd = rng.normal(0.0, 1.0, 3)
                capsule(p0, p0 + 4.0 * dd / np.linalg.norm(dd), rng.uniform(0.8, 1.8))
        return ndimage.gaussian_filter(vol, 0.6).astype(np.float32)

    # ------------------------------------------------------------------ per frame
    def pulled(self, t: int):
        p = float(self.profile[t])
        if p == 0.0:
            return list(self.P), True
        Z, Y, Xx = self.P
        fz = _Table.lookup(self.f_tab, self.ztab.locate(Z))
        # 1) antero-posterior: anterior tissue moves posteriorly on expiration (det >= 1)
        if self.ap_amp > 0:
            hy = 1.0 - _smootherstep((Y - np.float32(self.y_ant)) / np.float32(self.y_post - self.y_ant))
            Y = Y - np.float32(self.ap_amp * p) * hy * (0.3 + 0.7 * fz)
        # 2) lateral: the chest narrows on expiration (det = 1 + e f(z) >= 1)
        Xx = Xx * (1.0 + np.float32(self.lat * p) * fz)
        # 3) cranio-caudal: bases move cranially (det = 1 - a f'(z) g >= 1, f non-increasing)
        sdf_cav = _ellipsoid_sdf((Y - np.float32(self.body_y), Xx), self.cav_axes)
        g = 1.0 - _smootherstep((sdf_cav + 2.0) / np.float32(self.fat + self.wall + 4.0))
        Z = Z - np.float32(self.amp * p) * fz * g
        return [Z, Y, Xx], False

    def render(self, t: int):
        X, is_ref = self.pulled(t)
        n = len(self.shape)
        axes = (0, 2) if self.two_d else (0, 1, 2)
        if is_ref:
            fld = np.zeros((n, *self.shape), np.float32)
        else:
            fld = np.stack([(X[a] - self.P[a]) * np.float32(1.0 / h) for a, h in zip(axes, self.spacing)])
        edge = self.edge
        Z, Y, Xx = X
        sdf_lungs, sdf_heart, sdf_spine, sdf_ao, sdf_cav = self._lung_sdfs(X)
        dy = Y - np.float32(self.body_y)
        sdf_body = _ellipsoid_sdf((dy, Xx), (self.body_ap, self.body_lat))
        sdf_sub = _ellipsoid_sdf((dy, Xx), (self.body_ap - self.fat, self.body_lat - self.fat))
        tex = _sample(self.tex, self.tex_origin, [X[a] for a in self.tex_axes])
        ves = _sample(self.vessels, self.tex_origin, [X[a] for a in self.tex_axes])
        m_body = _soft(sdf_body, edge)
        img = np.float32(-1000.0) + m_body * np.float32(self.hu_fat + 1000.0)
        soft_val = np.float32(self.hu_soft) + np.float32(self.tex_soft) * tex
        img = _lerp(img, soft_val, _soft(sdf_sub, edge))
        # abdomen below the diaphragm envelope
        dome_env = None
        for lung in self.lungs:
            dyl = Y - np.float32(lung["cy"])
            dxl = Xx - np.float32(lung["cx"])
            d = np.float32(lung["dome"]) - np.float32(lung["depth"] / lung["ay"] ** 2) * dyl * dyl \
                - np.float32(lung["depth"] / lung["ax"] ** 2) * dxl * dxl
            dome_env = d if dome_env is None else np.maximum(dome_env, d)
        img = _lerp(img, np.float32(self.hu_abd) + np.float32(self.tex_soft) * tex,
                    _soft(np.maximum(Z - dome_env + 3.0, sdf_cav), edge))
        img = _lerp(img, np.float32(700.0), _soft(sdf_spine, edge))
        img = _lerp(img, np.float32(self.hu_marrow), _soft(sdf_spine + 2.5, edge))
        img = _lerp(img, np.float32(self.hu_soft + 8.0), _soft(sdf_ao, edge))
        img = _lerp(img, np.float32(self.hu_soft + 5.0), _soft(sdf_heart, edge))
        sdf_lung = np.minimum(sdf_lungs[0], sdf_lungs[1])
        lung_val = np.float32(self.hu_lung) + np.float32(self.tex_lung) * tex
        lung_val = _lerp(lung_val, np.float32(self.hu_vessel), np.minimum(ves, 1.0))
        img = _lerp(img, lung_val, _soft(sdf_lung, edge))
        sdf_nod = None
        if self.nodule is not None:
            nz, ny, nx, nr = self.nodule
            dz_, dy_, dx_ = Z - np.float32(nz), Y - np.float32(ny), Xx - np.float32(nx)
            sdf_nod = np.sqrt(dz_ * dz_ + dy_ * dy_ + dx_ * dx_) - np.float32(nr)
            nod_val = np.float32(self.hu_nodule) + np.float32(self.tex_soft) * tex
            img = _lerp(img, nod_val, _soft(sdf_nod, edge))
        if self.noise:
            img = img + np.float32(self.sigma) * self.noise_rng.standard_normal(self.shape, dtype=np.float32)
        labels = np.zeros(self.shape, np.uint8)
        labels[sdf_lungs[1] < 0] = 2
        labels[sdf_lungs[0] < 0] = 1
        if sdf_nod is not None:
            labels[sdf_nod < 0] = 3
        return img.astype(np.float32, copy=False), fld, labels


# ----------------------------------------------------------------------------- public API


def _iter(model) -> Iterator[Frame]:
    info = {"es_index": model.es_index, "ed_index": 0, "spacing": model.spacing,
            "kind": model.kind, "seed": model.seed}
    for t in range(model.frames):
        img, fld, lab = model.render(t)
        yield Frame(index=t, total=model.frames, image=img, field=fld, labels=lab, info=dict(info))


def _collect(model) -> PhantomCase:
    T = model.frames
    n = len(model.shape)
    images = np.empty((T, *model.shape), np.float32)
    labels = np.empty((T, *model.shape), np.uint8)
    fields = np.empty((T, n, *model.shape), np.float32)
    for fr in _iter(model):
        images[fr.index] = fr.image
        labels[fr.index] = fr.labels
        fields[fr.index] = fr.field
    return PhantomCase(images=images, labels=labels, fields=fields, spacing=tuple(model.spacing),
                       kind=model.kind, ed_index=0, es_index=model.es_index, seed=model.seed,
                       params=dict(model.params))


def stream_cardiac_phantom(seed: int = 0, *, shape=None, spacing=None, frames: int = 20,
                           two_d: bool = False, noise: bool = True) -> Iterator[Frame]:
    """Yield the cardiac phantom frame by frame (events.Frame), each as soon as it is computed.

    Arguments as for cardiac_phantom; invalid arguments raise InputError (a ValueError) on the
    first next().
    """
    yield from _iter(_CardiacModel(seed, shape, spacing, frames, two_d, noise))


def stream_lung_phantom(seed: int = 0, *, shape=None, spacing=None, frames: int = 10,
                        two_d: bool = False, noise: bool = True) -> Iterator[Frame]:
    """Yield the breathing-lung phantom frame by frame (events.Frame). Arguments as lung_phantom."""
    yield from _iter(_LungModel(seed, shape, spacing, frames, two_d, noise))


def cardiac_phantom(seed: int = 0, *, shape=None, spacing=None, frames: int = 20,
                    two_d: bool = False, noise: bool = True) -> PhantomCase:
    """A beating heart (cine bSSFP look) over one cycle ED -> ES -> ED.

    shape/spacing: array order (z, y, x) in 3D, default (32, 128, 128) at (3.15, 1.5, 1.5) mm;
    with two_d=True a mid-ventricular short-axis slice (y, x), default (128, 128) at (1.5, 1.5).
    A shape given without spacing keeps the default field of view. Labels: 1 RV cavity,
    2 LV myocardium, 3 LV cavity. In 2D the motion is the in-plane part only (no through-plane
    shortening), so the slice's ES/ED cavity area ratio is params["area_ratio_es"].
    """
    return _collect(_CardiacModel(seed, shape, spacing, frames, two_d, noise))


def lung_phantom(seed: int = 0, *, shape=None, spacing=None, frames: int = 10,
                 two_d: bool = False, noise: bool = True) -> PhantomCase:
    """Breathing lungs (CT look, HU) from end-inspiration (t=0) to end-expiration and back.

    shape/spacing: (z, y, x), default (64, 96, 96) at 2.5 mm; with two_d=True a coronal slice
    (z, x), default (64, 96) at 2.5 mm. Labels: 1 left lung, 2 right lung, 3 nodule.
    """
    return _collect(_LungModel(seed, shape, spacing, frames, two_d, noise))
