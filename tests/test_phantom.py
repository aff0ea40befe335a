"""Procedural phantoms: determinism, anatomy, the known motion, 2D variants, argument errors."""

from __future__ import annotations

import functools
import inspect
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from napari_deformdiff.core import phantom as ph
from napari_deformdiff.core.events import Frame, Plan

SMALL = {"shape": (16, 64, 64), "spacing": (6.3, 3.0, 3.0)}  # the default field of view, coarser


@functools.lru_cache(maxsize=None)
def cardiac(seed=0, frames=8, noise=False, two_d=False, shape=None, spacing=None):
    return ph.cardiac_phantom(seed, frames=frames, noise=noise, two_d=two_d, shape=shape, spacing=spacing)


@functools.lru_cache(maxsize=None)
def lung(seed=0, frames=4, noise=False, two_d=False, shape=None, spacing=None):
    return ph.lung_phantom(seed, frames=frames, noise=noise, two_d=two_d, shape=shape, spacing=spacing)


def ml(mask, spacing):
    return float(mask.sum()) * float(np.prod(spacing)) / 1000.0


def lv_cavity_ml_expected(p):
    """Analytic volume of the truncated spheroidal LV cavity from the drawn parameters."""
    a_r = p["lv_cavity_diameter_mm"] / 2
    t_apex = p["lv_wall_mm"] * p["apex_wall_ratio"]
    lb = p["base_above_equator_mm"]
    a_l = p["long_axis_mm"] - t_apex - lb
    return math.pi * a_r**2 * ((lb + a_l) - (lb**3 + a_l**3) / (3 * a_l**2)) / 1000.0


def jacobian_min_per_frame(fields):
    import torch

    from napari_deformdiff.core.spatial import jacobian_determinant

    det = jacobian_determinant(torch.from_numpy(fields))
    return det.flatten(1).min(dim=1).values.numpy()


def warp_ed(case, what, mode):
    """Warp frame 0 of case.<what> with every frame's field (spatial.warp, pull)."""
    import torch

    from napari_deformdiff.core.spatial import warp

    ref = torch.from_numpy(np.ascontiguousarray(getattr(case, what)[:1]))[:, None]
    ref = ref.expand(case.frames, *ref.shape[1:]).contiguous()
    out = warp(ref, torch.from_numpy(case.fields), mode=mode, padding_mode="border")
    return out[:, 0].numpy()


def psnr(a, b, mask, peak):
    mse = float(np.mean((a[mask].astype(np.float64) - b[mask]) ** 2))
    return 10 * math.log10(peak**2 / mse)


# ----------------------------------------------------------------------------- determinism / API


def test_same_seed_is_bit_identical_and_seeds_differ():
    a = ph.cardiac_phantom(3, frames=3, noise=True, **SMALL)
    b = ph.cardiac_phantom(3, frames=3, noise=True, **SMALL)
    for name in ("images", "labels", "fields"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.params == b.params
    c = ph.cardiac_phantom(4, frames=3, noise=True, **SMALL)
    assert c.params["inplane_angle_deg"] != a.params["inplane_angle_deg"]
    va, vc = ml(a.labels[0] == 3, a.spacing), ml(c.labels[0] == 3, c.spacing)
    assert abs(va - vc) > 1.0  # different LV cavity volume (mL)
    assert (a.labels[0] != c.labels[0]).mean() > 0.005

    la = ph.lung_phantom(5, frames=2, shape=(32, 48, 48))
    lb = ph.lung_phantom(5, frames=2, shape=(32, 48, 48))
    lc = ph.lung_phantom(6, frames=2, shape=(32, 48, 48))
    assert np.array_equal(la.images, lb.images) and np.array_equal(la.fields, lb.fields)
    assert not np.array_equal(la.labels, lc.labels)


def test_case_layout_dtypes_and_params():
    c = cardiac()
    T, S = 8, (32, 128, 128)
    assert c.images.shape == (T, *S) and c.images.dtype == np.float32
    assert c.labels.shape == (T, *S) and c.labels.dtype == np.uint8
    assert c.fields.shape == (T, 3, *S) and c.fields.dtype == np.float32
    assert c.spacing == (3.15, 1.5, 1.5) and c.kind == "cardiac" and c.seed == 0
    assert c.ed_index == 0 and c.es_index == round(0.35 * T) == 3
    assert np.all(c.fields[0] == 0)
    assert np.all(np.isfinite(c.images)) and np.all(np.isfinite(c.fields))
    json.dumps(c.params)  # JSON-serialisable
    assert all(isinstance(v, (int, float, bool, str)) for v in c.params.values())
    assert ph.cardiac_phantom(0, frames=20, **SMALL).es_index == 7
    lg = lung()
    assert lg.images.shape == (4, 64, 96, 96) and lg.fields.shape == (4, 3, 64, 96, 96)
    assert lg.kind == "lung" and lg.es_index == 2 and lg.spacing == (2.5, 2.5, 2.5)
    assert np.all(lg.fields[0] == 0)
    json.dumps(lg.params)


def test_stream_yields_the_same_frames_one_by_one():
    assert inspect.isgeneratorfunction(ph.stream_cardiac_phantom)
    assert inspect.isgeneratorfunction(ph.stream_lung_phantom)
    case = ph.cardiac_phantom(2, frames=4, noise=True, **SMALL)
    gen = ph.stream_cardiac_phantom(2, frames=4, noise=True, **SMALL)
    plan = next(gen)
    assert isinstance(plan, Plan) and plan.stages == (("frames", 4),)
    first = next(gen)
    assert isinstance(first, Frame) and first.index == 0 and first.total == 4
    assert first.info["es_index"] == case.es_index and tuple(first.info["spacing"]) == case.spacing
    frames = [first, *gen]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    for f in frames:
        assert np.array_equal(f.image, case.images[f.index])
        assert np.array_equal(f.labels, case.labels[f.index])
        assert np.array_equal(f.field, case.fields[f.index])
    lframes = [e for e in ph.stream_lung_phantom(1, frames=3, two_d=True) if isinstance(e, Frame)]
    lcase = ph.lung_phantom(1, frames=3, two_d=True)
    assert len(lframes) == 3 and lframes[2].field.shape == (2, 64, 96)
    assert np.array_equal(lframes[2].image, lcase.images[2])


# ----------------------------------------------------------------------------- cardiac anatomy


def test_cardiac_labels_anatomy_and_volumes():
    c = cardiac()
    ed = c.labels[0]
    assert set(np.unique(ed)) == {0, 1, 2, 3}
    # LV cavity enclosed by myocardium in a mid-ventricular slice: 4-neighbours are 2 or 3.
    zs = np.flatnonzero((ed == 3).any(axis=(1, 2)))
    mid = ed[(zs[0] + zs[-1]) // 2]
    cav = mid == 3
    assert cav.sum() > 200
    for shift in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        neigh = np.roll(mid, shift, axis=(0, 1))[cav]
        assert np.isin(neigh, (2, 3)).all()
    # The apex is closed (below the cavity there is myocardium), above the base there is no heart.
    assert (ed[zs[0] - 1] == 2).any() and not (ed[zs[0] - 1] == 3).any()
    heart_z = np.flatnonzero((ed > 0).any(axis=(1, 2)))
    assert heart_z[-1] < ed.shape[0] - 1 and heart_z[0] > 0
    # Volumes (mL): realistic, and the cavity matches its analytic volume within 4 %.
    lv, myo, rv = (ml(ed == k, c.spacing) for k in (3, 2, 1))
    assert 70 < lv < 170 and 60 < myo < 170 and 50 < rv < 220, (lv, myo, rv)
    assert lv == pytest.approx(lv_cavity_ml_expected(c.params), rel=0.04)
    # RV is a crescent on one side: its centroid is off the LV axis, towards the RV side.
    zc = (zs[0] + zs[-1]) // 2
    cy, cx = ndimage.center_of_mass(ed[zc] == 3)
    ry, rx = ndimage.center_of_mass(ed[zc] == 1)
    dist_mm = math.hypot((ry - cy) * 1.5, (rx - cx) * 1.5)
    assert 20 < dist_mm < 60
    angle = math.degrees(math.atan2(ry - cy, rx - cx)) % 360
    expected = c.params["inplane_angle_deg"] % 360
    assert min(abs(angle - expected), 360 - abs(angle - expected)) < 20


def test_cardiac_mri_like_intensities():
    c = cardiac()
    img, lab = c.images[0], c.labels[0]
    blood = img[lab == 3].mean()
    myo = img[lab == 2].mean()
    assert blood > 0.75 and myo < 0.35 and blood > 2.5 * myo
    air = img[:, :3, :].mean()  # anterior air outside the body (top rows)
    assert air < 0.05
    body = img[(lab == 0) & (img > 0.1)]
    assert 0.2 < np.median(body) < 0.6


def test_cardiac_contraction_curve_and_ejection_fraction():
    c = cardiac()
    vol = np.array([ml(lab == 3, c.spacing) for lab in c.labels])
    es = c.es_index
    assert np.all(np.diff(vol[: es + 1]) < 0)  # ED -> ES: strictly shrinking
    assert np.all(np.diff(vol[es:]) > 0)  # ES -> end: refilling
    assert vol[-1] > 0.85 * vol[0]
    ef = 1 - vol[es] / vol[0]
    # Tolerance: 0.03 absolute (voxelisation of a 109 mL cavity at 3.15 x 1.5 x 1.5 mm).
    assert ef == pytest.approx(c.params["ejection_fraction"], abs=0.03)
    # Longitudinal shortening: the base descends (fewer slices hold the heart at ES).
    top = [np.flatnonzero((lab > 0).any(axis=(1, 2)))[-1] for lab in (c.labels[0], c.labels[es])]
    assert top[1] < top[0]
    # Myocardium is (nearly) conserved while the cavity empties: the wall thickens.
    myo = [ml(lab == 2, c.spacing) for lab in (c.labels[0], c.labels[es])]
    assert myo[1] == pytest.approx(myo[0], rel=0.35)


@pytest.mark.parametrize("which", ["cardiac3d", "cardiac2d", "lung3d", "lung2d"])
def test_fields_are_folding_free_and_nontrivial(which):
    case = {
        "cardiac3d": lambda: cardiac(),
        "cardiac2d": lambda: cardiac(two_d=True, frames=10),
        "lung3d": lambda: lung(),
        "lung2d": lambda: lung(two_d=True, frames=10),
    }[which]()
    dets = jacobian_min_per_frame(case.fields)
    assert dets[0] == pytest.approx(1.0)
    assert dets.min() > 0.3, dets
    scale = np.asarray(case.spacing, np.float32).reshape(-1, *[1] * (case.fields.ndim - 2))
    u_mm = case.fields[case.es_index] * scale
    assert np.sqrt((u_mm**2).sum(0)).max() > 5.0  # a real motion at ES (mm)


def test_fields_are_the_true_motion_cardiac():
    c = cardiac()
    warped = warp_ed(c, "labels", "nearest")
    agree = (warped == c.labels).reshape(c.frames, -1).mean(axis=1)
    assert agree.min() >= 0.99, agree
    # Disagreements only where the frame's labels change within 2 voxels (rounding at borders).
    es = c.es_index
    wrong = warped[es] != c.labels[es]
    border = ndimage.maximum_filter(c.labels[es], size=5) != ndimage.minimum_filter(c.labels[es], size=5)
    assert not (wrong & ~border).any()
    # Noise-free images: the ED image warped by u_t reproduces image_t (textured, moving).
    images = warp_ed(c, "images", "linear")
    body = c.images[0] > 0.05
    for t in (1, es, c.frames - 1):
        assert psnr(images[t], c.images[t], body, 1.0) > 30.0
    # Control: without the motion the match is far worse (the test can fail).
    assert psnr(c.images[0], c.images[es], body, 1.0) < psnr(images[es], c.images[es], body, 1.0) - 8.0


def test_cardiac_noise_is_rician_and_does_not_move():
    clean = ph.cardiac_phantom(1, frames=3, noise=False, **SMALL)
    noisy = ph.cardiac_phantom(1, frames=3, noise=True, **SMALL)
    assert np.array_equal(clean.labels, noisy.labels) and np.array_equal(clean.fields, noisy.fields)
    sigma = noisy.params["noise_sigma"]
    r0 = noisy.images[0] - clean.images[0]
    r1 = noisy.images[1] - clean.images[1]
    tissue = clean.images[0] > 0.3
    assert np.std(r0[tissue]) == pytest.approx(sigma, rel=0.25)
    assert abs(np.corrcoef(r0.ravel(), r1.ravel())[0, 1]) < 0.1  # fresh noise every frame
    air = clean.images[0] < 1e-3
    assert noisy.images[0][air].min() >= 0  # magnitude data: Rician, non-negative
    assert noisy.images[0][air].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.25)


def test_spacing_invariance_of_the_anatomy():
    vols = []
    for shape, spacing in (((32, 128, 128), (3.15, 1.5, 1.5)), ((16, 64, 64), (6.3, 3.0, 3.0)),
                           ((40, 96, 96), (2.6, 2.0, 2.0))):
        c = cardiac(seed=7, frames=2, shape=shape, spacing=spacing)
        vols.append([ml(c.labels[0] == k, spacing) for k in (3, 2)])
    vols = np.array(vols)
    assert np.allclose(vols[1:, 0], vols[0, 0], rtol=0.06), vols
    assert np.allclose(vols[1:, 1], vols[0, 1], rtol=0.10), vols
    assert vols[0, 0] == pytest.approx(lv_cavity_ml_expected(c.params), rel=0.04)


def test_shape_without_spacing_keeps_the_field_of_view():
    c = ph.cardiac_phantom(0, frames=2, shape=(16, 64, 64))
    assert c.spacing == pytest.approx((6.3, 3.0, 3.0))


# ----------------------------------------------------------------------------- 2D+t cardiac


def test_cardiac_2d_variant():
    c = cardiac(two_d=True, frames=10)
    assert c.images.shape == (10, 128, 128) and c.labels.shape == (10, 128, 128)
    assert c.fields.shape == (10, 2, 128, 128) and c.spacing == (1.5, 1.5)
    assert set(np.unique(c.labels[0])) == {0, 1, 2, 3}
    warped = warp_ed(c, "labels", "nearest")
    agree = (warped == c.labels).reshape(c.frames, -1).mean(axis=1)
    assert agree.min() >= 0.99, agree
    images = warp_ed(c, "images", "linear")
    body = c.images[0] > 0.05
    assert psnr(images[c.es_index], c.images[c.es_index], body, 1.0) > 30.0
    # Area change of the LV cavity matches the in-plane contraction parameter.
    area = [float((lab == 3).sum()) for lab in c.labels]
    assert area[c.es_index] / area[0] == pytest.approx(c.params["area_ratio_es"], abs=0.03)
    # Same anatomy as the 3D heart of the same seed (diameter in mm), on a custom 2D grid.
    c2 = ph.cardiac_phantom(0, frames=2, two_d=True, shape=(64, 64), spacing=(3.0, 3.0))
    assert c2.images.shape == (2, 64, 64)
    r1 = ml(c.labels[0] == 3, (1.5, 1.5, 1000.0))
    r2 = ml(c2.labels[0] == 3, (3.0, 3.0, 1000.0))
    assert r2 == pytest.approx(r1, rel=0.06)


# ----------------------------------------------------------------------------- lung


def test_lung_labels_intensities_and_sides():
    lg = lung()
    ed = lg.labels[0]
    has = lg.params["has_nodule"]
    assert set(np.unique(ed)) == ({0, 1, 2, 3} if has else {0, 1, 2})
    assert has  # seed 0 draws a nodule
    x_mm = (np.arange(96) - 47.5) * 2.5
    left_x = x_mm[np.nonzero(ed == 1)[2]].mean()
    right_x = x_mm[np.nonzero(ed == 2)[2]].mean()
    assert left_x > 20 and right_x < -20  # patient left = +x
    v_left, v_right = ml(ed == 1, lg.spacing), ml(ed == 2, lg.spacing)
    assert 100 < v_left < 1500 and 100 < v_right < 1500
    img = lg.images[0]
    assert np.abs(img[:, :, :2] + 1000).max() < 1.0  # air outside the body (noise-free)
    lung_hu = img[(ed == 1) | (ed == 2)]
    assert -900 < np.median(lung_hu) < -780
    assert np.percentile(lung_hu, 99.5) > -300  # bright vessels inside the lungs
    soft = img[(ed == 0) & (img > -300)]
    assert 20 < np.median(soft) < 80
    noisy = ph.lung_phantom(0, frames=2, shape=(32, 48, 48), noise=True)
    clean = ph.lung_phantom(0, frames=2, shape=(32, 48, 48), noise=False)
    assert np.std(noisy.images[0] - clean.images[0]) == pytest.approx(noisy.params["noise_sigma_hu"], rel=0.1)
    nodule_case = ph.lung_phantom(1, frames=2, shape=(32, 48, 48))
    expected = {0, 1, 2, 3} if nodule_case.params["has_nodule"] else {0, 1, 2}
    assert set(np.unique(nodule_case.labels[0])) == expected


def test_lung_bases_move_cranially_by_the_amplitude():
    lg = lung()
    es, amp = lg.es_index, lg.params["si_amplitude_mm"]
    sz = lg.spacing[0]
    # Right dome top (the left lung's base is partly the heart's surface): the lowest lung voxel
    # of the 3 x 3 central columns rises by the amplitude (+- one slice, voxelisation).
    iy = int(round(lg.params["right_dome_top_y_mm"] / 2.5 + 47.5))
    ix = int(round(lg.params["right_dome_top_x_mm"] / 2.5 + 47.5))
    shifts = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            low = [np.flatnonzero(lab[:, iy + dy, ix + dx] == 2)[0] for lab in (lg.labels[0], lg.labels[es])]
            shifts.append((low[1] - low[0]) * sz)
    assert np.median(shifts) == pytest.approx(amp, abs=sz), (shifts, amp)
    # The field there is the cranio-caudal amplitude itself (pull: from below, in voxels).
    z_base = np.flatnonzero(lg.labels[es][:, iy, ix] == 2)[0]
    assert -lg.fields[es, 0, z_base, iy, ix] * sz == pytest.approx(amp, rel=0.02)
    for label in (1, 2):
        # The whole lung moves cranially, less than its base (the apex stays).
        zc = [ndimage.center_of_mass(lab == label)[0] * sz for lab in (lg.labels[0], lg.labels[es])]
        assert 0.35 * amp < zc[1] - zc[0] < 0.9 * amp, (zc, amp)
        v = [ml(lab == label, lg.spacing) for lab in (lg.labels[0], lg.labels[es])]
        assert v[1] < 0.97 * v[0]  # expiration: smaller lungs
    warped = warp_ed(lg, "labels", "nearest")
    agree = (warped == lg.labels).reshape(lg.frames, -1).mean(axis=1)
    assert agree.min() >= 0.99, agree
    images = warp_ed(lg, "images", "linear")
    body = lg.images[0] > -900
    peak = 1700.0  # HU range -1000..700
    # Tolerance 28 dB: thin bright vessels (1-4 mm at 2.5 mm voxels) are blurred by re-sampling.
    assert psnr(images[es], lg.images[es], body, peak) > 28.0
    assert psnr(lg.images[0], lg.images[es], body, peak) < psnr(images[es], lg.images[es], body, peak) - 6.0


def test_lung_2d_coronal_variant():
    lg = lung(two_d=True, frames=10)
    assert lg.images.shape == (10, 64, 96) and lg.fields.shape == (10, 2, 64, 96)
    assert lg.spacing == (2.5, 2.5)
    assert {1, 2} <= set(np.unique(lg.labels[0])) <= {0, 1, 2, 3}
    assert np.all(lg.fields[0] == 0)
    es = lg.es_index
    assert lg.fields[es, 0].min() < -0.8 * lg.params["si_amplitude_mm"] / 2.5  # pull from below
    warped = warp_ed(lg, "labels", "nearest")
    wrong = warped[es] != lg.labels[es]
    assert wrong.mean() < 0.02
    border = ndimage.maximum_filter(lg.labels[es], size=5) != ndimage.minimum_filter(lg.labels[es], size=5)
    assert not (wrong & ~border).any()
    lung_z = [np.nonzero(lab == 1)[0].mean() for lab in (lg.labels[0], lg.labels[es])]
    assert lung_z[1] > lung_z[0]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"frames": 1}, "frames must be at least 2"),
        ({"shape": (32, 128)}, "two_d=True"),
        ({"shape": (4, 32, 128, 128)}, "2 .* or 3"),
        ({"shape": (8, 128, 128), "spacing": (12.6, 1.5, 1.5)}, "at least 16 voxels"),
        ({"spacing": (3.15, 0.0, 1.5)}, "positive"),
        ({"spacing": (1.5, 1.5)}, "3 values"),
        ({"shape": (32, 64, 64), "spacing": (1.0, 1.0, 1.0)}, "field of view"),
        ({"two_d": True, "shape": (32, 128, 128)}, "2-axis shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ph.cardiac_phantom(0, **kwargs)
    with pytest.raises(ValueError, match=match):
        next(ph.stream_cardiac_phantom(0, **kwargs))


def test_lung_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        ph.lung_phantom(-1)
    with pytest.raises(ValueError, match="seed"):
        ph.cardiac_phantom(None)
    with pytest.raises(ValueError, match="frames"):
        ph.lung_phantom(0, frames=0)
    with pytest.raises(ValueError, match="field of view"):
        ph.lung_phantom(0, two_d=True, shape=(64, 64), spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        next(ph.stream_lung_phantom(0, spacing=(2.5, -2.5, 2.5)))
