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

from collections.abc import Iterator

import numpy as np

from ..events import Frame, Plan
from .cardiac import _CardiacModel
from .lung import _LungModel
from .shapes import (
    CARDIAC_DEFAULTS,
    CARDIAC_LABELS,
    LUNG_DEFAULTS,
    LUNG_LABELS,
    PhantomCase,
)

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
    model = _CardiacModel(seed, shape, spacing, frames, two_d, noise)
    yield Plan((("frames", model.frames),))
    yield from _iter(model)


def stream_lung_phantom(seed: int = 0, *, shape=None, spacing=None, frames: int = 10,
                        two_d: bool = False, noise: bool = True) -> Iterator[Frame]:
    """Yield the breathing-lung phantom frame by frame (events.Frame). Arguments as lung_phantom."""
    model = _LungModel(seed, shape, spacing, frames, two_d, noise)
    yield Plan((("frames", model.frames),))
    yield from _iter(model)


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
