"""Training pairs beyond the phantom: seeded per item, label maps and fields with the promised statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.synth_pairs import (MixedItems, RealItems, SynthItems, cardiac_like_field, parse_mix,
                                                    real_pair, synth_pair)
from napari_deformdiff.core.ddm.train import augment
from napari_deformdiff.core.errors import InputError


def gen(seed):
    return torch.Generator().manual_seed(seed)


def pulled_nearest(labels: np.ndarray, field: np.ndarray) -> np.ndarray:
    """labels(x + u(x)) by rounding and clamping, in numpy (independent of spatial.warp)."""
    idx = np.indices(labels.shape).astype(np.float64) + field
    idx = [np.clip(np.rint(i), 0, n - 1).astype(int) for i, n in zip(idx, labels.shape)]
    return labels[tuple(idx)]


def test_items_are_a_function_of_seed_step_and_item():
    make = SynthItems((16, 32, 32), seed=4)
    a, b = make(7, 1), make(7, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(make(7, 2)[0], a[0]) and not torch.equal(make(8, 1)[0], a[0])
    assert not torch.equal(SynthItems((16, 32, 32), seed=5)(7, 1)[0], a[0])
    assert a[0].shape == (1, 1, 16, 32, 32) and float(a[0].min()) == -1.0 and float(a[0].max()) == 1.0


@pytest.mark.parametrize("shape", [(64, 64), (16, 48, 48)])
def test_synth_pair_is_the_same_label_map_pulled_by_a_diffeomorphism(shape):
    counts, moved = [], []
    for seed in range(6):
        p = synth_pair(shape, gen(seed), labels=8, max_voxels=6.0)
        src, tgt = p.source_labels[0, 0].numpy(), p.target_labels[0, 0].numpy()
        u = p.field[0].numpy()
        counts.append(len(np.unique(src)))
        # the target's labels are the source's at x + u(x) (nearest), up to rounding ties
        assert np.mean(pulled_nearest(src, u) == tgt) > 0.97
        assert np.abs(u).max() <= 6.0 * 1.5  # scaling and squaring compounds a little
        assert float(spatial.jacobian_determinant(p.field).min()) > 0.0  # invertible
        moved.append(np.linalg.norm(u, axis=0).mean())
        # intensities follow the labels: within one label the source varies far less than across labels
        s = p.source[0, 0].numpy()
        within = np.mean([s[src == k].std() for k in np.unique(src) if (src == k).sum() > 50])
        assert within < 0.6 * s.std()
    assert min(counts) >= 4 and max(counts) <= 8
    assert max(moved) > 0.5 and len(set(np.round(moved, 4))) == len(moved)  # random, non-trivial motion


def test_cardiac_like_field_contracts_around_its_centre_and_is_zero_beyond_the_outer_radius():
    shape, spacing = (24, 96, 96), (3.0, 1.5, 1.5)
    for seed in range(5):
        u, info = cardiac_like_field(shape, spacing, gen(seed))
        mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
        r = np.linalg.norm(mm - info["centre_mm"].numpy().reshape(3, 1, 1, 1), axis=0)
        norm = np.linalg.norm(u[0].numpy(), axis=0)
        assert norm[r >= info["outer_mm"]].max() == 0.0 and (r >= info["outer_mm"]).mean() > 0.5
        assert float(spatial.folding_ratio(u).max()) == 0.0
        # a ball around the centre shrinks by about (1 + contraction)^3 when pulled by u
        ball = torch.from_numpy((r < 0.8 * info["radius_mm"]).astype(np.float32))[None, None]
        ratio = float(spatial.warp(ball, u).sum() / ball.sum())
        expected = (1.0 + info["contraction"]) ** -3
        assert ratio == pytest.approx(expected, abs=0.12), (ratio, expected, info)


def test_real_pair_keeps_the_grid_and_leaves_the_outer_region_unchanged():
    g = gen(1)
    s = torch.rand(1, 1, 16, 64, 64, generator=g) * 2 - 1
    p = real_pair(s, (3.0, 1.5, 1.5), gen(3))
    assert p.target.shape == s.shape and p.source is s
    still = np.linalg.norm(p.field[0].numpy(), axis=0) == 0
    assert still.mean() > 0.3
    assert np.abs((p.target - s)[0, 0].numpy()[still]).max() < 1e-4  # float rounding of the sampling grid
    assert np.abs((p.target - s)[0, 0].numpy()[~still]).mean() > 0.05


def test_real_items_slice_3d_volumes_for_a_2d_model_and_crop():
    vol = torch.rand(1, 1, 20, 64, 64, generator=gen(0)) * 2 - 1
    make = RealItems([vol], (1.5, 1.5), seed=2, augment=lambda s, t, g: augment(s, t, g, (32, 32)))
    s, t = make(0, 0)
    assert s.shape == t.shape == (1, 1, 32, 32)
    assert torch.equal(make(0, 0)[1], t)
    with pytest.raises(InputError, match="real"):
        RealItems([], (1.5, 1.5), seed=2, augment=augment)


def test_parse_mix_and_mixed_frequencies():
    assert parse_mix("synth=2,real=1,phantom=1") == pytest.approx({"synth": 0.5, "real": 0.25, "phantom": 0.25})
    assert parse_mix("synth") == {"synth": 1.0}
    for bad in ("foo=1", "synth=x", "synth=-1", "synth=0"):
        with pytest.raises(InputError):
            parse_mix(bad)
    mix = MixedItems({"a": None, "b": None, "c": None}, {"a": 0.5, "b": 0.3, "c": 0.2}, seed=1)
    drawn = [mix.choose(step, item) for step in range(300) for item in range(4)]
    assert drawn == [mix.choose(step, item) for step in range(300) for item in range(4)]
    freq = {k: drawn.count(k) / len(drawn) for k in "abc"}
    assert freq == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.05)
    with pytest.raises(InputError, match="real"):
        MixedItems({"synth": None}, {"synth": 0.5, "real": 0.5}, seed=0)
