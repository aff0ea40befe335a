"""Mo-Diff networks and sampler: what each part may and may not depend on, in numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.modiff.nets.modiff import (
    MoDiff,
    ModiffConfig,
    cosine_alphas_cumprod,
)
from napari_deformdiff.core.modiff.nets.video import P3DBlock
from napari_deformdiff.core.modiff.sampling import sample, timestep_plan

from .modiff_helpers import tiny_config, tiny_model


def test_differential_fields_are_frame_differences_at_the_field_grid():
    model = tiny_model()
    model.config = dataclasses.replace(model.config, field_scale=3.0)
    frames = torch.randn(2, 5, 32, 32)
    d = model.fields_of(frames).numpy()
    coarse = frames.numpy().reshape(2, 5, 16, 2, 16, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(d[:, 0], 0.0)
    np.testing.assert_allclose(d[:, 1:], 3.0 * np.diff(coarse, axis=1), atol=1e-5)
    # accumulated at latent resolution, unscaled: the change since the first frame
    acc = model.latent_fields(model.fields_of(frames)).numpy()
    expected = (frames.numpy() - frames.numpy()[:, :1]).reshape(2, 5, 16, 2, 16, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(acc, expected, atol=1e-5)


def test_stage1_loss_ignores_the_padded_frames(monkeypatch):
    model = tiny_model()
    fields = model.pad_fields(torch.randn(2, 4, 16, 16))
    pred = torch.zeros(fields.shape, requires_grad=True)
    monkeypatch.setattr(model.tddm, "forward", lambda *a: pred)
    model.tddm_loss(fields, torch.randn(2, 1, 16, 16), torch.tensor([4, 3]))["total"].backward()
    grad = pred.grad.abs().amax(dim=(2, 3))
    assert float(grad[0, 4:].max()) == 0.0 and float(grad[1, 3:].max()) == 0.0
    assert float(grad[0, :4].min()) > 0 and float(grad[1, :3].min()) > 0


def _tddm_out(model, first, counts, x=None, t=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.config.max_frames, 16, 16, generator=g) if x is None else x
    with torch.no_grad():
        return model.tddm(x, torch.tensor([t]), first, torch.tensor([counts]))


def test_prompt_and_frame_count_conditions_and_their_ablations():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 1, 16, 16, generator=g), torch.randn(1, 1, 16, 16, generator=g)
    full = tiny_model()
    assert full.tddm.pals and full.tddm.count is not None
    assert (_tddm_out(full, a, 4) - _tddm_out(full, b, 4)).abs().max() > 1e-3  # PAL: the frame matters
    assert (_tddm_out(full, a, 4) - _tddm_out(full, a, 6)).abs().max() > 1e-3  # N matters
    no_count = tiny_model(frame_count=False)
    assert no_count.tddm.count is None
    torch.testing.assert_close(_tddm_out(no_count, a, 4), _tddm_out(no_count, a, 6))
    concat = tiny_model(prompt="concat")
    assert len(concat.tddm.pals) == 0 and concat.tddm.inp.in_channels == concat.config.max_frames + 1
    assert (_tddm_out(concat, a, 4) - _tddm_out(concat, b, 4)).abs().max() > 1e-3
    assert concat.config.ablation() == "pal-concat" and full.config.ablation() == "full"
    assert tiny_config(frame_count=False, fal="concat").ablation() == "no-frame-count+fal-concat"


def test_pal_fuses_by_multiplication_and_addition():
    model = tiny_model()
    pal = model.tddm.pals[0]
    h = torch.randn(1, pal.scale.out_channels, 16, 16)
    prompt = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        out, p = pal(h, prompt)
        expected = h * (1 + pal.scale(p)) + pal.shift(p)
    torch.testing.assert_close(out, expected)


def _video_out(model, first, fields, n=5, t=10):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, model.config.latent_channels, n, 8, 8, generator=g)
    with torch.no_grad():
        return model.video(z, torch.tensor([t]), first, fields)


@pytest.mark.parametrize("fal", ["fal", "concat"])
def test_stage2_depends_on_first_frame_and_fields(fal):
    model = tiny_model(fal=fal)
    g = torch.Generator().manual_seed(3)
    first = torch.randn(1, 2, 8, 8, generator=g)
    fields = torch.randn(1, 5, 8, 8, generator=g)
    base = _video_out(model, first, fields)
    assert (base - _video_out(model, first, fields * 2)).abs().max() > 1e-3
    assert (base - _video_out(model, first + 1, fields)).abs().max() > 1e-3
    assert base.shape == (1, 2, 5, 8, 8)


def test_fal_attention_sees_the_order_of_frames():
    model = tiny_model()
    g = torch.Generator().manual_seed(4)
    fields = torch.randn(1, 5, 8, 8, generator=g)
    fal = model.video.down_fal[0]
    h = torch.randn(1, fal.proj.out_features, 5, 8, 8, generator=g)
    c = torch.randn(1, fal.proj.out_features, 8, 8, generator=g)
    with torch.no_grad():
        out = fal(h, c, fields)
        rolled = fal(h, c, fields.roll(1, dims=1))
    # the same set of fields in another temporal order gives other features for every frame
    assert all((out[:, :, k] - rolled[:, :, k]).abs().max() > 1e-4 for k in range(5))


def test_p3d_block_mixes_time_only_through_its_temporal_conv():
    torch.manual_seed(0)
    block = P3DBlock(2, 4, 4, emb=8).eval()
    x = torch.randn(1, 4, 6, 8, 8)
    emb = torch.randn(1, 8)
    y = x.clone()
    y[:, :, 0] += torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        d = (block(x, emb) - block(y, emb)).abs().amax(dim=(0, 1, 3, 4))
    # frame 0 reaches frames 0 and 1 (one temporal conv of width 3), no further
    assert d[0] > 1e-3 and d[1] > 1e-3 and float(d[2:].max()) == 0.0


def test_cosine_schedule_runs_from_clean_to_noise():
    abar = cosine_alphas_cumprod(1000)
    assert abar[0] > 0.9999 and abar[-1] < 1e-4
    assert bool((abar[1:] < abar[:-1]).all())


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampler_with_an_oracle_denoiser_returns_the_clean_sample(sampler):
    abar = cosine_alphas_cumprod(200)
    target = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))

    def oracle(x, t):  # the v that points exactly at `target`
        a = abar[t].reshape(-1, 1, 1, 1)
        return (a.sqrt() * x - target) / (1 - a).sqrt()

    steps = list(sample(oracle, target.shape, abar, steps=12, sampler=sampler,
                        generator=torch.Generator().manual_seed(0)))
    assert len(steps) == 12
    torch.testing.assert_close(steps[-1][2], target, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(steps[3][3], target, atol=1e-4, rtol=1e-4)  # x0 estimate at every step


def test_ddim_is_deterministic_and_ancestral_is_not_the_same_path():
    abar = cosine_alphas_cumprod(100)

    def weak(x, t):
        return 0.3 * x

    def run(sampler, seed):
        return list(sample(weak, (1, 4, 4), abar, steps=10, sampler=sampler,
                           generator=torch.Generator().manual_seed(seed)))[-1][2]

    torch.testing.assert_close(run("ddim", 1), run("ddim", 1))
    torch.testing.assert_close(run("ancestral", 1), run("ancestral", 1))
    assert (run("ddim", 1) - run("ancestral", 1)).abs().max() > 1e-3
    assert (run("ddim", 1) - run("ddim", 2)).abs().max() > 1e-3


def test_timestep_plan_and_bad_step_counts():
    assert timestep_plan(1000, 4) == [999, 666, 333, 0]
    with pytest.raises(InputError, match="between 1 and 1000"):
        timestep_plan(1000, 0)


def test_config_round_trip_and_grid_checks():
    c = ModiffConfig.default(3)
    assert ModiffConfig.from_json(c.to_json()) == c
    assert c.latent_grid == (4, 16, 16) and c.field_grid == (4, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        ModiffConfig(grid=(100, 100))
    with pytest.raises(ValueError, match="unknown"):
        ModiffConfig.from_json('{"bogus": 1}')
    assert sum(p.numel() for p in MoDiff(tiny_config()).parameters()) < 200_000
