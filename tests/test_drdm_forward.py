"""DRDM forward process: recipe constants, measured statistics, units, seeds, 3D, the 2S crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm import forward
from napari_deformdiff.core.drdm.forward import (
    CONTROL_GRID,
    MAX_LEVEL,
    control_field,
    n_ddf,
    n_dvf,
    sample_forward,
    to_image_field,
)
from napari_deformdiff.core.errors import InputError


def rms(ddf: torch.Tensor) -> float:
    return float(ddf.pow(2).sum(1).mean().sqrt())


def test_composition_counts_follow_the_formulas():
    # N_ddf = clamp(floor(2 t^1.3 / 3), 1, 200): 48^1.3 = 153.3, 80^1.3 = 297.7
    assert [n_ddf(t) for t in (0, 1, 2, 48, 80)] == [1, 1, 1, 102, 198]
    assert n_ddf(200) == 200
    # N_dvf = floor(t^0.6): 48^0.6 = 10.2, 80^0.6 = 13.9
    assert [n_dvf(t) for t in (0, 1, 2, 48, 80)] == [0, 1, 1, 10, 13]
    assert (forward.SCALES, forward.SIGMA, forward.NOISE_RATIO, CONTROL_GRID, MAX_LEVEL) == (
        (64, 32, 16, 8), 4e-5, 0.08, 64, 80)


def test_displacement_grows_with_level_and_stays_fold_free_at_small_size():
    fields = [sample_forward((64, 64), level, seed=5, batch=4).ddf for level in (10, 30, 50, 64)]
    rmss = [rms(f) for f in fields]
    maxs = [float(spatial.vector_norm(f).max()) for f in fields]
    assert all(b > 1.3 * a for a, b in zip(rmss, rmss[1:])), rmss
    assert all(b > a for a, b in zip(maxs, maxs[1:])), maxs
    # at S = 64 the authors' factor S/64 is 1: the composed field is diffeomorphic
    assert float(spatial.folding_ratio(fields[-1]).max()) < 0.01
    assert float(spatial.jacobian_determinant(fields[0]).min()) > 0.5


def test_level_48_at_256_matches_the_measured_figures():
    # methods.md (authors' code, level 48, S = 256): max 24-27 %, mean 10-12 % of the image size,
    # folding 11-13 % of pixels; over 12 seeds our medians must sit in a band around those.
    ddf = sample_forward((256, 256), 48, seed=11, batch=12).ddf
    stats = spatial.displacement_stats(ddf)
    mean_pct = np.median([s["mean_pct"] for s in stats])
    max_pct = np.median([s["max_pct"] for s in stats])
    fold = float(spatial.folding_ratio(ddf).median())
    assert 9.0 < mean_pct < 13.0, mean_pct
    assert 22.0 < max_pct < 32.0, max_pct
    assert 0.08 < fold < 0.20, fold


def test_units_scale_with_the_square_of_the_image_size():
    # one control-grid voxel g becomes g * S^2 / 64^2 image voxels: doubling S gives 4x the voxels
    small = sample_forward((128, 128), 40, seed=2, batch=4).ddf
    big = sample_forward((256, 256), 40, seed=2, batch=4).ddf
    ratio = float(spatial.vector_norm(big).mean() / spatial.vector_norm(small).mean())
    assert 3.8 < ratio < 4.2, ratio
    # and at S = 64 the image field is the central half of the control field, unscaled: image
    # voxel 32 is voxel 64 of the 2S = 128 upsampling, control position (64.5) * 64/128 - 0.5 = 31.75
    gen = torch.Generator().manual_seed(9)
    ctrl, _ = control_field(1, 2, 20, gen)
    img = to_image_field(ctrl, (64, 64))
    w = torch.tensor([0.25, 0.75])
    expected = (ctrl[0, :, 31:33, 31:33] * w[:, None] * w[None, :]).sum(dim=(1, 2))
    assert torch.allclose(img[0, :, 32, 32], expected, atol=1e-6)


def test_field_is_the_central_crop_of_a_2s_upsampling():
    gen = torch.Generator().manual_seed(3)
    ctrl, _ = control_field(2, 2, 30, gen)
    shape = (40, 56)
    big = F.interpolate(ctrl, size=(80, 112), mode="bilinear", align_corners=False)
    expected = big[:, :, 20:60, 28:84] * torch.tensor([40 * 40, 56 * 56]).view(1, 2, 1, 1) / 64**2
    assert torch.allclose(to_image_field(ctrl, shape), expected, atol=1e-5 * float(expected.abs().max()))


def test_statistics_are_stationary_towards_the_border():
    # made on a 2S field of view, the border of the image is no different from its centre
    ddf = sample_forward((64, 64), 50, seed=4, batch=24).ddf
    mag = spatial.vector_norm(ddf)
    border = torch.cat([mag[:, :6].flatten(), mag[:, -6:].flatten(), mag[:, :, :6].flatten(),
                        mag[:, :, -6:].flatten()]).mean()
    centre = mag[:, 20:44, 20:44].mean()
    assert 0.8 < float(border / centre) < 1.25


def test_seeds_reproduce_and_batch_members_differ():
    a = sample_forward((32, 48), 20, seed=7, batch=3)
    b = sample_forward((32, 48), 20, seed=7, batch=3)
    c = sample_forward((32, 48), 20, seed=8, batch=3)
    assert torch.equal(a.ddf, b.ddf)
    assert not torch.allclose(a.ddf, c.ddf)
    assert not torch.allclose(a.ddf[0], a.ddf[1])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(sample_forward((32, 32), 10, generator=g1).ddf,
                       sample_forward((32, 32), 10, generator=g2).ddf)
    # the generator advances: a second draw differs from the first
    assert not torch.equal(sample_forward((32, 32), 10, generator=g1).ddf,
                           sample_forward((32, 32), 10, generator=torch.Generator().manual_seed(1)).ddf)


def test_one_step_dvf():
    s = sample_forward((64, 64), 48, seed=1, batch=2, with_dvf=True)
    assert s.dvf.shape == s.ddf.shape
    ratio = rms(s.dvf) / rms(s.ddf)  # 10 compositions of v against 102 of v0
    assert 0.05 < ratio < 0.2, ratio
    assert float(sample_forward((64, 64), 0, seed=1, with_dvf=True).dvf.abs().max()) == 0.0
    assert sample_forward((64, 64), 3, seed=1).dvf is None


def test_3d_fields():
    s = sample_forward((16, 24, 20), 16, seed=0, batch=2)
    assert s.ddf.shape == (2, 3, 16, 24, 20)
    per_axis = s.ddf.pow(2).mean(dim=(0, 2, 3, 4)).sqrt()
    assert float(per_axis.min()) > 0.3 * float(per_axis.max()) > 0
    assert float(spatial.folding_ratio(s.ddf).max()) < 0.01


@pytest.mark.parametrize("bad", [-1, 81, 2.5, True])
def test_bad_levels_are_refused(bad):
    with pytest.raises(InputError, match="level"):
        sample_forward((32, 32), bad)


def test_bad_shapes_are_refused():
    with pytest.raises(InputError, match="2D or 3D"):
        sample_forward((32,), 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_field_on_the_gpu():
    cpu = sample_forward((64, 64), 40, seed=3).ddf
    gpu = sample_forward((64, 64), 40, seed=3, device="cuda").ddf
    assert gpu.device.type == "cuda"
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-3 * float(cpu.abs().max()))


def _chain_by_compose(v: torch.Tensor, times: int) -> torch.Tensor:
    """The authors' order written with the toolkit's compose: psi = v + warp(psi, v)."""
    psi = v
    for _ in range(times - 1):
        psi = spatial.compose(psi, v, padding_mode="border")
    return psi


@pytest.mark.parametrize("n", [2, 3])
def test_chain_with_one_sampling_grid_equals_step_by_step_composition(n):
    v = forward._multiscale_noise(2, n, 40 * forward.SIGMA, torch.Generator().manual_seed(n)) * CONTROL_GRID
    for times in (1, 2, 9, 12):
        got, want = forward._self_compose(v, times), _chain_by_compose(v, times)
        if n == 2:  # the same grid_sample calls
            assert torch.equal(got, want)
        else:  # 3D: a sparse matrix product, the same weights summed in another order
            assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())
    assert float(forward._self_compose(v, 0).abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(64, 64, 64), (5, 7, 6), (9, 11)])
def test_interpolation_matrix_warps_like_grid_sample(shape):
    # displacements of up to 3 voxels, many samples outside the grid (border padding)
    n = len(shape)
    gen = torch.Generator().manual_seed(7)
    v = 3.0 * (2 * torch.rand(n, *shape, generator=gen) - 1)
    f = torch.randn(2, *shape, generator=gen)
    want = spatial.warp(f[None], v[None], padding_mode="border")[0]
    got = (forward.interpolation_matrix(v) @ f.reshape(2, -1).t()).t().reshape(f.shape)
    # grid_sample's coordinates go through [-1, 1] and back: a rounding of ~1e-7 x size voxels
    assert float((got - want).abs().max()) < 1e-6 * max(shape) * float(f.abs().max())
    moved = spatial.warp(torch.arange(f[0].numel(), dtype=torch.float32).reshape(1, 1, *shape), v[None],
                         padding_mode="border")
    assert float((forward.interpolation_matrix(v) @ torch.arange(f[0].numel(), dtype=torch.float32)[:, None]
                  - moved.reshape(-1, 1)).abs().max()) < 1e-5 * f[0].numel()


@pytest.mark.parametrize("shape, level", [((16, 32, 32), 16), ((32, 128, 128), 48)])
def test_3d_chain_has_the_statistics_of_grid_sample_compositions(shape, level):
    # today's recipe (one grid_sample per composition on the whole control grid; at level 48, 101
    # compositions, the same chain as one sparse product each, checked against grid_sample above)
    # against sample_forward (sparse products on the shrinking boxes that reach the image,
    # _central_chain) over 8 seeds: mean / max |u| and det(J) spread agree far within 1 %
    whole = _chain_by_compose if level < 20 else forward._chain
    new, old = [], []
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        v = forward._multiscale_noise(1, 3, forward.SIGMA, gen) * CONTROL_GRID
        noise = forward._multiscale_noise(1, 3, forward.NOISE_RATIO * forward.SIGMA, gen) * CONTROL_GRID
        v0 = spatial.compose(noise, v)
        old.append(to_image_field(whole(v0, n_ddf(level)), shape))
        new.append(sample_forward(shape, level, seed=seed).ddf)

    def stats(ddf):
        norm = spatial.vector_norm(ddf)
        return np.array([float(norm.mean()), float(norm.max()), float(spatial.jacobian_determinant(ddf).std())])

    a, b = np.mean([stats(d) for d in old], 0), np.mean([stats(d) for d in new], 0)
    assert np.all(np.abs(b / a - 1) < 1e-3), (a, b)
    assert max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(old, new)) < 2e-4


@pytest.mark.parametrize("level, seed, shape", [(5, 0, (32, 128, 128)), (48, 1, (7, 9, 11)),
                                               (48, 2, (64, 48, 40)), (80, 3, (32, 128, 128))])
def test_central_chain_equals_the_whole_grid_chain_where_the_image_reads_it(level, seed, shape):
    # the chain on the whole 64^3 grid (sparse products) against the one on the shrinking boxes
    # around the control voxels to_image_field reads: the image fields agree to float rounding
    # (each chain's own rounding is ~3e-5 of the field against a float64 chain)
    whole, _ = control_field(1, 3, level, torch.Generator().manual_seed(seed))
    central, _ = control_field(1, 3, level, torch.Generator().manual_seed(seed), central=True)
    a, b = to_image_field(whole, shape), to_image_field(central, shape)
    assert float((a - b).abs().max()) < 2e-4 * float(a.abs().max())
    # the voxels it reads are the ones it computes: NEEDED per axis
    lo, hi = forward.NEEDED
    inside = (slice(None), slice(None), *[slice(lo, hi)] * 3)
    assert float((whole[inside] - central[inside]).abs().max()) < 2e-4 * float(whole.abs().max())


@pytest.mark.parametrize("shape", [(256, 256), (33, 100), (32, 128, 128), (7, 9, 11), (16, 24, 20)])
def test_image_field_equals_a_float64_2s_upsampling_and_central_crop(shape):
    n = len(shape)
    ctrl = torch.randn(2, n, *([CONTROL_GRID] * n), generator=torch.Generator().manual_seed(1))
    mode = "bilinear" if n == 2 else "trilinear"
    big = F.interpolate(ctrl.double(), size=tuple(2 * s for s in shape), mode=mode, align_corners=False)
    crop = big[(..., *[slice(s // 2, s // 2 + s) for s in shape])]
    expected = crop * torch.tensor([s * s / 64**2 for s in shape], dtype=torch.float64).view(1, n, *([1] * n))
    got = to_image_field(ctrl, shape)
    assert got.shape == expected.shape
    assert float((got.double() - expected).abs().max()) < 1e-5 * float(expected.abs().max())


def test_doubling_recipe_has_the_statistics_of_the_chain():
    # powers of one field by squaring: 12 compositions instead of 101 at level 48, less
    # interpolation smoothing, so a little larger; measured over 8 seeds at 256 x 256:
    # mean |u| +2.7 %, std of det(J) +6 %, folded pixels +11 % (relative) at level 48
    def stats(recipe, level):
        ddf = sample_forward((256, 256), level, seed=3, batch=6, recipe=recipe).ddf
        det = spatial.jacobian_determinant(ddf)
        return (float(spatial.vector_norm(ddf).mean()), float(det.mean()), float(det.std()),
                float(spatial.folding_ratio(ddf).mean()))

    for level in (10, 48):
        chain, fast = stats("chain", level), stats("doubling", level)
        assert abs(fast[0] / chain[0] - 1) < 0.05, (level, chain, fast)
        assert abs(fast[1] - chain[1]) < 0.01
        assert abs(fast[2] / chain[2] - 1) < 0.10, (level, chain, fast)
        if level == 48:
            assert 0.9 < fast[3] / chain[3] < 1.25, (chain, fast)
    with pytest.raises(InputError, match="recipe"):
        sample_forward((32, 32), 4, recipe="fast")
