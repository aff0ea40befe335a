"""DDM adaptation to a pair (core/ddm/adapt.py): against SimpleITK's demons on a known smooth motion,
folding, gamma = 0, determinism, divergence, and pairs refused before any model work."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.adapt import (
    AdaptSettings, adapt_pair, fit_velocity, local_ncc_fast, residual_field, settings_for, working_shape)
from napari_deformdiff.core.ddm.demons import demons_field, joint_unit
from napari_deformdiff.core.ddm.generate import generate_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame, Progress
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.image_metrics import psnr
from napari_deformdiff.core.io import Volume
from napari_deformdiff.core.nn.losses import local_ncc

from .ddm_helpers import tiny_model

SPACING = (1.2, 1.0)


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


def known_motion_pair(shape=(64, 64), seed=3):
    """A textured source and the target it becomes under a known smooth diffeomorphic field (voxels)."""
    g = torch.Generator().manual_seed(seed)
    texture = _smooth(torch.rand((1, 1, *shape), generator=g), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    v = _smooth(torch.randn((1, 2, *shape), generator=g), 8.0)
    v = v / spatial.vector_norm(v).max() * 4.0  # up to 4 voxels
    u = spatial.integrate_velocity(v, steps=7)
    target = spatial.warp(texture, u, padding_mode="border")
    geom = Geometry(SPACING, (0.0, 0.0), np.eye(2))
    return (Volume(texture[0, 0].numpy(), geom, False, "source"), Volume(target[0, 0].numpy(), geom, False, "target"),
            u[0].numpy())


def sitk_demons(source: np.ndarray, target: np.ndarray, spacing=SPACING, shrinks=((4, 4), (2, 2), (1, 1))) -> np.ndarray:
    """SimpleITK's diffeomorphic demons (200 iterations, sigma 1.5, 4-2-1), called here directly;
    returns the source warped onto the target by SimpleITK's own resampler. `shrinks`: per level,
    in array-axis order."""
    def img(a):
        i = sitk.GetImageFromArray(a.astype(np.float32))
        i.SetSpacing(tuple(spacing)[::-1])
        return i
    fixed, moving = img(target), img(source)
    field = None
    for f in shrinks:
        f = list(f)[::-1]
        fl, ml = (sitk.BinShrink(fixed, f), sitk.BinShrink(moving, f)) if max(f) > 1 else (fixed, moving)
        d = sitk.DiffeomorphicDemonsRegistrationFilter()
        d.SetNumberOfIterations(200)
        d.SetStandardDeviations(1.5)
        if field is None:
            field = d.Execute(fl, ml)
        else:
            field = d.Execute(fl, ml, sitk.Resample(field, fl, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkVectorFloat64))
    field = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    # nearest-neighbour extrapolation outside, like the border padding of our frames
    return sitk.GetArrayFromImage(sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32, True))


@pytest.fixture(scope="module")
def adapted():
    source, target, _ = known_motion_pair()
    model = tiny_model(2, seed=1)
    events = list(generate_ddm(source, target, frames=5, model=model, adapt="auto"))
    return source, target, model, events


def test_adaptation_matches_or_beats_simpleitk_demons_without_folding(adapted):
    source, target, model, events = adapted
    frames = [e for e in events if isinstance(e, Frame)]
    rng = float(np.ptp(source.data))
    initial = psnr(source.data, target.data, rng)
    demons = psnr(sitk_demons(source.data, target.data), target.data, rng)
    plain = [e for e in generate_ddm(source, target, frames=5, model=model) if isinstance(e, Frame)]
    ours = psnr(frames[-1].image, target.data, rng)
    assert demons > initial + 5  # the baseline does register this pair
    assert ours >= demons, (initial, demons, ours)
    assert ours > psnr(plain[-1].image, target.data, rng) + 5
    fields = torch.from_numpy(np.stack([f.field for f in frames]))
    assert float(spatial.folding_ratio(fields).max()) <= 0.001
    # our demons wrapper (joint intensity scaling, our warp) agrees with the direct SimpleITK call
    u = demons_field(source.data, target.data, SPACING)
    ours_demons = spatial.warp(torch.from_numpy(source.data)[None, None], torch.from_numpy(u)[None],
                               padding_mode="border")[0, 0].numpy()
    assert abs(psnr(ours_demons, target.data, rng) - demons) < 2.0


SPACING_3D = (2.0, 1.0, 1.0)


def known_motion_volume(shape=(16, 40, 40), seed=5, max_mm=3.0):
    """A textured volume, the target it becomes under a known smooth diffeomorphic field of at most
    `max_mm` (anisotropic voxels), and that field's velocity (voxels)."""
    g = torch.Generator().manual_seed(seed)

    def smooth(x, sigma_mm):
        for axis, sp in enumerate(SPACING_3D):
            s = sigma_mm / sp
            r = int(3 * s)
            k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / s) ** 2)
            k = (k / k.sum()).view(1, 1, *[2 * r + 1 if a == axis else 1 for a in range(3)])
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
            c = x.shape[1]
            x = F.conv3d(F.pad(x, pad, mode="replicate"), k.repeat(c, 1, 1, 1, 1), groups=c)
        return x

    texture = smooth(torch.rand((1, 1, *shape), generator=g), 2.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    v = smooth(torch.randn((1, 3, *shape), generator=g), 10.0)
    v_mm = v * torch.tensor(SPACING_3D).view(1, 3, 1, 1, 1)
    v = v / spatial.vector_norm(v_mm).max() * max_mm
    u = spatial.integrate_velocity(v, steps=7)
    target = spatial.warp(texture, u, padding_mode="border")
    geom = Geometry(SPACING_3D, (0.0, 0.0, 0.0), np.eye(3))
    return (Volume(texture[0, 0].numpy(), geom, False, "source"), Volume(target[0, 0].numpy(), geom, False, "target"),
            v)


def test_3d_adaptation_matches_or_beats_simpleitk_demons_without_folding():
    source, target, _ = known_motion_volume()
    frames = [e for e in generate_ddm(source, target, frames=3, model=tiny_model(3, seed=1), adapt="auto")
              if isinstance(e, Frame)]
    rng = float(np.ptp(source.data))
    # demons' shrink per level: 4-2-1 on the 1 mm axes, 2-1-1 on the 2 mm axis
    warped = sitk_demons(source.data, target.data, SPACING_3D, ((2, 4, 4), (1, 2, 2), (1, 1, 1)))
    initial, demons = psnr(source.data, target.data, rng), psnr(warped, target.data, rng)
    ours = psnr(frames[-1].image, target.data, rng)
    assert demons > initial + 5, (initial, demons)  # the baseline does register this pair
    # measured 55.4 against 52.3 dB. |grad v|^2 weight 10 (before 100 in 3D) reached 67.4 here, but its rougher
    # fields missed the real pairs' intermediate frames (abdominal MR 52.2 dB vs demons' 55.1, docs/ddm.md)
    assert ours >= demons + 2, (initial, demons, ours)
    unit = lambda a: torch.from_numpy((a - source.data.min()) / rng)[None, None].float()  # noqa: E731
    ncc = lambda a: float(local_ncc(unit(a), unit(target.data), window=9))  # noqa: E731
    assert ncc(frames[-1].image) >= ncc(warped) - 1e-4, (ncc(frames[-1].image), ncc(warped))
    fields = torch.from_numpy(np.stack([f.field for f in frames]))
    assert float(spatial.folding_ratio(fields).max()) <= 0.001


def test_gamma_zero_is_the_source_and_frames_move_monotonically(adapted):
    source, target, _, events = adapted
    frames = [e for e in events if isinstance(e, Frame)]
    np.testing.assert_allclose(frames[0].image, source.data, atol=1e-5)
    assert np.abs(frames[0].field).max() < 1e-6
    err = [float(np.mean((f.image - target.data) ** 2)) for f in frames]
    assert all(a > b for a, b in zip(err, err[1:])), err
    # the intermediate field is the half-way diffeomorphism: exp(v / 2) composed twice ~ exp(v)
    half = torch.from_numpy(frames[2].field)[None]
    twice = spatial.compose(half, half)[0].numpy()
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(twice - frames[4].field)[inner].max() < 0.25


def test_the_source_is_shown_before_the_adaptation_runs(adapted):
    source, _, _, events = adapted
    first_adapt = next(i for i, e in enumerate(events) if isinstance(e, Progress) and e.stage == "adapt")
    early = [e for e in events[:first_adapt] if isinstance(e, Frame)]
    assert [f.index for f in early] == [0] and np.array_equal(early[0].image, source.data.astype(np.float32))
    assert not early[0].field.any()
    assert sorted(e.index for e in events if isinstance(e, Frame)) == list(range(5))  # each frame once


def test_adaptation_is_deterministic(adapted):
    source, target, model, events = adapted
    again = list(generate_ddm(source, target, frames=5, model=model, adapt="auto"))
    for a, b in zip([e for e in events if isinstance(e, Frame)], [e for e in again if isinstance(e, Frame)]):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.field, b.field)


def test_a_diverging_fit_stops_with_a_message_not_nans():
    source, target, _ = known_motion_pair(shape=(32, 32))
    events = []
    with pytest.raises(InputError, match="adaptation diverged"):
        for e in generate_ddm(source, target, frames=3, model=tiny_model(2), adapt=AdaptSettings(lr=1e30)):
            events.append(e)
    frames = [e for e in events if isinstance(e, Frame)]  # only the source, shown before adapting
    assert [f.index for f in frames] == [0] and np.array_equal(frames[0].image, source.data.astype(np.float32))


def _refused(source, target, tmp_path, message):
    missing = tmp_path / "no-such-weights.safetensors"  # loading it would fail with another message
    with pytest.raises(InputError, match=message):
        next(generate_ddm(source, target, frames=3, weights=missing, adapt="auto"))


def test_bad_pairs_are_refused_before_any_model_work(tmp_path):
    source, target, _ = known_motion_pair(shape=(32, 32))
    g = source.geometry
    far = Volume(target.data, Geometry(g.spacing, (500.0, 0.0), np.eye(2)))
    _refused(source, far, tmp_path, "do not overlap")
    _refused(source, Volume(np.full_like(target.data, 7.0), g), tmp_path, "target is constant")
    _refused(source, Volume(source.data.copy(), g), tmp_path, "same image")
    cine = Volume(np.stack([source.data, target.data]), g, False, "cine")
    _refused(cine, target, tmp_path, "2 frames; choose one frame")
    nan = target.data.copy()
    nan[0, 0] = np.nan
    _refused(source, Volume(nan, g), tmp_path, "NaN")


def test_adapt_values_and_the_working_grid():
    assert settings_for(0, (64, 64)) is None and settings_for("0", (64, 64)) is None
    assert settings_for("auto", (64, 64)).iterations == 50
    # 3D: 30 steps for 128 x 128 x 32 (and larger, fitted on a capped grid), up to 60 on smaller volumes
    assert [settings_for("auto", s).iterations for s in ((32, 128, 128), (48, 512, 512), (20, 91, 117))] == [30, 30, 60]
    assert settings_for(7, (64, 64)).total == 7 + 14 + 28
    for bad in ("fast", -1, 2.5):
        with pytest.raises(InputError, match="adapt must be"):
            settings_for(bad, (64, 64))
    # a large anisotropic volume: the fine in-plane axes are coarsened first, towards isotropic voxels
    shape, sp = working_shape((48, 512, 512), (5.0, 0.57, 0.57), 2**17)
    assert 0.8 * 2**17 < np.prod(shape) <= 2**17 and shape[1] == shape[2] and 40 <= shape[0] <= 48
    assert sp[1] == pytest.approx(0.57 * 511 / (shape[1] - 1)) and sp[0] == pytest.approx(5.0 * 47 / (shape[0] - 1))
    assert sp[1] == pytest.approx(sp[0], rel=0.1)
    shape, sp = working_shape((32, 512, 512), (8.0, 0.5, 0.5), 2**17)
    assert shape == (32, 64, 64) and sp[0] == 8.0
    assert working_shape((30, 40), (1.0, 1.0), 2**16) == ((30, 40), (1.0, 1.0))


def test_fast_local_ncc_equals_the_loss_module():
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 1, 23, 31), (1, 1, 9, 12, 14)):
        a, b = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
        b = 0.5 * a + b
        assert float(local_ncc_fast(a, b, 9)) == pytest.approx(float(local_ncc(a, b, window=9)), rel=1e-4)


def test_adaptation_works_in_a_thread_left_in_inference_mode():
    """A GUI worker thread can still be in the inference mode of a generator it ran before."""
    source, target, _ = known_motion_pair(shape=(32, 32))
    model = tiny_model(2)
    plain = [e for e in generate_ddm(source, target, frames=2, model=model) if isinstance(e, Frame)]
    with torch.inference_mode():
        out = [e for e in generate_ddm(source, target, frames=2, model=model, adapt=20) if isinstance(e, Frame)]
    err = lambda f: float(np.mean((f.image - target.data) ** 2))  # noqa: E731
    assert err(out[-1]) < 0.1 * err(plain[-1])


def _run(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _start_choice(net_field):
    """adapt_pair on the 64 x 64 known-motion pair with `net_field` as the network's motion, and the
    PSNR at gamma = 1 of: the whole run, the fit from the source alone, the fit from the network's frame."""
    source, target, _ = known_motion_pair()
    settings = settings_for("auto", source.data.shape)
    residual = _run(adapt_pair(source.data, target.data, SPACING, net_field, settings))
    s, t = (torch.from_numpy(a)[None, None] for a in joint_unit(source.data, target.data))
    rng = float(np.ptp(source.data))
    s_in = torch.from_numpy(source.data)[None, None]

    def frame_psnr(field):
        return psnr(spatial.warp(s_in, field, padding_mode="border")[0, 0].numpy(), target.data, rng)

    by_net = spatial.warp(s, net_field, padding_mode="border")
    v_source = _run(fit_velocity(s, t, SPACING, settings))
    v_net = _run(fit_velocity(by_net, t, SPACING, settings))
    alone = frame_psnr(residual_field(v_source, 1.0, source.data.shape))
    after_net = frame_psnr(spatial.compose(net_field, residual_field(v_net, 1.0, source.data.shape)))
    whole = frame_psnr(residual.compose(net_field, 1.0))
    return residual, whole, alone, after_net


def test_a_network_frame_closer_to_the_target_but_a_worse_start_is_left_out():
    """The network's frame starts closer to the target (the true motion plus voxel-scale noise), but
    the smooth velocity cannot undo the noise: the whole run must reach the fit from the source."""
    _, _, u = known_motion_pair()
    g = torch.Generator().manual_seed(11)
    net_field = torch.from_numpy(u)[None] + 0.5 * torch.randn((1, 2, *u.shape[1:]), generator=g)
    residual, whole, alone, after_net = _start_choice(net_field)
    assert residual.loss_network < residual.loss_source  # keeping the network by its start was the rule before
    assert alone > after_net + 3, (alone, after_net)  # and it is the worse start
    assert not residual.use_network and residual.fitted_source < residual.fitted_network
    assert whole >= max(alone, after_net) - 1e-6, (whole, alone, after_net)


def test_a_network_frame_that_is_a_better_start_is_kept():
    """The network's motion = 0.8 x the true one: its fit ends closer than the fit from the source."""
    _, _, u = known_motion_pair()
    residual, whole, alone, after_net = _start_choice(0.8 * torch.from_numpy(u)[None])
    assert after_net > alone, (alone, after_net)
    assert residual.use_network and residual.fitted_network < residual.fitted_source
    assert whole >= max(alone, after_net) - 1e-6, (whole, alone, after_net)
