"""Supervised DDM training (off by default): a label Dice term and a true-field term where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.nets.ddm import DDM, field_error, one_hot, soft_dice
from napari_deformdiff.core.ddm.synth_pairs import RealItems, SynthItems, synth_pair
from napari_deformdiff.core.ddm.train import augment, label_frames, train_ddm
from napari_deformdiff.core.ddm.weights import load_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.io import Volume
from napari_deformdiff.core.io.pairs import Pair
from napari_deformdiff.core.image_metrics import dice as hard_dice

from .ddm_helpers import pair_volumes, tiny_config


def boxes(shape=(32, 32)):
    """Source: label 3 on rows 4..13, target: label 3 on rows 9..18 (same columns): overlap 5 of 10 rows."""
    s = torch.zeros(1, 1, *shape, dtype=torch.long)
    t = torch.zeros_like(s)
    s[..., 4:14, 8:20] = 3
    t[..., 9:19, 8:20] = 3
    return s, t


def zero_field_model(**changes) -> DDM:
    """A tiny 2D DDM whose deformation module outputs exactly zero (its head zeroed)."""
    import dataclasses

    torch.manual_seed(0)
    model = DDM(dataclasses.replace(tiny_config(2), **changes))
    head = model.field_fn.outconv.block
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return model


def test_soft_dice_of_one_hot_maps_is_the_dice_of_the_overlap():
    s, t = boxes()
    assert float(soft_dice(one_hot(s), t)) == pytest.approx(0.5)  # 2 * 60 / (120 + 120)
    assert float(soft_dice(one_hot(t), t)) == pytest.approx(1.0)
    # label 0 is "no label": an unlabelled item leaves the mean over the labelled ones unchanged
    both = soft_dice(one_hot(torch.cat([s, torch.zeros_like(s)])), torch.cat([t, torch.zeros_like(t)]))
    assert float(both) == pytest.approx(0.5)
    assert float(soft_dice(one_hot(torch.zeros_like(s)), torch.zeros_like(t))) == 1.0


def test_dice_term_is_one_minus_dice_of_the_warped_labels_and_off_by_default():
    s, t = boxes()
    image = s.float() / 3 * 2 - 1
    target = t.float() / 3 * 2 - 1
    model = zero_field_model(lambda_dice=4.0)
    losses = model.training_losses(image, target, s, t, generator=torch.Generator().manual_seed(1))
    assert float(losses["dice"].detach()) == pytest.approx(1.0 - 0.5, abs=1e-6)  # zero field: the boxes as they are
    assert float(losses["dice"].detach()) == pytest.approx(1.0 - hard_dice(s.numpy(), t.numpy(), labels=[3]))
    plain = zero_field_model()
    off = plain.training_losses(image, target, s, t, generator=torch.Generator().manual_seed(1))
    assert "dice" not in off and "field" not in off
    assert float((losses["total"] - off["total"]).detach()) == pytest.approx(4.0 * 0.5, abs=1e-5)


def test_field_error_is_zero_for_the_true_field_and_grows_quadratically_where_masked_in():
    g = torch.Generator().manual_seed(2)
    true = torch.randn(2, 2, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0] = 1.0  # only the first item's truth is known
    assert float(field_error(true, true, mask)) == 0.0
    off = true + torch.tensor([0.5, 0.0]).reshape(1, 2, 1, 1)
    assert float(field_error(off, true, mask)) == pytest.approx(0.25)
    assert float(field_error(true + 2 * (off - true), true, mask)) == pytest.approx(1.0)
    wrong_elsewhere = true.clone()
    wrong_elsewhere[1] += 7.0
    assert float(field_error(wrong_elsewhere, true, mask)) == 0.0  # the unknown item does not count
    assert float(field_error(off, true, torch.zeros_like(mask))) == 0.0


def test_field_term_compares_the_end_field_and_a_scaled_one_with_the_truth():
    s, t = boxes()
    image, target = s.float() / 3 * 2 - 1, t.float() / 3 * 2 - 1
    true = torch.zeros(1, 2, 32, 32)
    true[:, 0] = 1.5  # 1.5 voxels along rows; the model's field is exactly 0
    model = zero_field_model(lambda_field=1.0)
    mask = torch.ones(1, 1, 32, 32)
    values = []
    for seed in range(6):
        losses = model.training_losses(image, target, s, t, true, mask, generator=torch.Generator().manual_seed(seed))
        values.append(float(losses["field"].detach()))
    # 0.5 * (|0 - u|^2 + |0 - gamma u|^2) with gamma in [0, 1]: between 1.125 and 2.25, gamma random
    assert all(1.125 - 1e-6 <= v <= 2.25 + 1e-6 for v in values) and len(set(np.round(values, 6))) > 3
    zero_truth = model.training_losses(image, target, s, t, torch.zeros_like(true), mask,
                                       generator=torch.Generator().manual_seed(0))
    assert float(zero_truth["field"].detach()) == 0.0


def test_gradients_of_both_terms_reach_the_networks():
    torch.manual_seed(0)
    import dataclasses

    model = DDM(dataclasses.replace(tiny_config(2), lambda_dice=1.0, lambda_field=1.0))
    p = synth_pair((32, 32), torch.Generator().manual_seed(3), labels=4, max_voxels=3.0)
    args = (p.source, p.target, p.source_labels + 1, p.target_labels + 1, p.field, torch.ones_like(p.source))
    for term, nets in (("dice", ("field_fn", "denoise_fn")), ("field", ("field_fn", "denoise_fn"))):
        model.zero_grad()
        losses = model.training_losses(*args, generator=torch.Generator().manual_seed(0))
        losses[term].backward()
        for net in nets:
            norm = sum(float(q.grad.norm()) for q in getattr(model, net).parameters() if q.grad is not None)
            assert norm > 1e-6, (term, net)


@pytest.mark.parametrize("shape", [(40, 40), (8, 24, 24)])
def test_augment_keeps_the_field_mapping_source_labels_onto_target_labels(shape):
    """Flips and transposes move the field's components with the axes: target(x) = source(x + u(x)) still."""
    moved = []
    for seed in range(12):
        p = synth_pair(shape, torch.Generator().manual_seed(seed), labels=6, max_voxels=4.0)
        g = torch.Generator().manual_seed(100 + seed)
        s, t, sl, tl, u = augment(p.source, p.target, g, None, labels=(p.source_labels, p.target_labels),
                                  field=p.field)
        pulled = spatial.warp(sl, u, mode="nearest", padding_mode="border")
        assert float((pulled == tl).float().mean()) > 0.97
        untouched = float((spatial.warp(sl, p.field, mode="nearest", padding_mode="border") == tl).float().mean())
        moved.append(untouched < 0.9)
        # the images moved with their labels
        assert torch.equal(torch.sort(s.flatten())[0], torch.sort(p.source.flatten())[0])
    assert sum(moved) >= 6  # most draws flipped or transposed (the original field no longer fits)


def test_synth_and_real_items_carry_labels_and_true_fields_when_supervised():
    make = SynthItems((32, 32), seed=4, supervised=True)
    s, t, sl, tl, u, m = make(3, 0)
    plain = SynthItems((32, 32), seed=4)(3, 0)
    assert torch.equal(s, plain[0]) and torch.equal(t, plain[1])  # the same pair as unsupervised
    assert int(sl.min()) >= 1 and int(sl.max()) <= 8 and float(m.min()) == 1.0
    assert float((spatial.warp(sl, u, mode="nearest", padding_mode="border") == tl).float().mean()) > 0.97
    volume = torch.linspace(-1, 1, 64 * 64).reshape(1, 1, 64, 64)
    real = RealItems([volume], (1.5, 1.5), seed=2, augment=lambda *a, **k: augment(*a, crop=(32, 32), **k),
                     supervised=True)
    s, t, sl, tl, u, m = real(5, 1)
    assert s.shape == (1, 1, 32, 32) and u.shape == (1, 2, 32, 32) and int(sl.abs().max()) == 0
    warped = spatial.warp(s, u, padding_mode="border")
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert float((warped - t)[inner].abs().max()) < 0.05  # the field maps the crop's source onto its target


def test_phantom_label_frames_follow_the_cine_on_the_model_grid():
    s, t, lab = pair_volumes(shape=(32, 32), spacing=(2.0, 2.0))
    tlab = Volume((t.data > 0.6).astype(np.uint8) * 3, lab.geometry, True)
    cfg = tiny_config(2)  # 32 x 32 at 2 mm: the model grid is the input grid
    maps = label_frames([Pair("a", s, t, lab, tlab), Pair("b", s, t)], cfg)
    assert maps[1] is None
    assert np.array_equal(maps[0][0][0, 0].numpy(), lab.data) and np.array_equal(maps[0][1][0, 0].numpy(), tlab.data)


def test_supervised_runs_are_seeded_and_save_their_weights(tmp_path):
    s, t, lab = pair_volumes(shape=(32, 32), spacing=(2.0, 2.0), shift=(4.0, -2.0))
    tlab = Volume((t.data > 0.6).astype(np.uint8) * 3, lab.geometry, True)
    data = [Pair("a", s, t, lab, tlab)]
    mix = {"synth": 0.4, "real": 0.3, "phantom": 0.3}
    kw = dict(config=tiny_config(2), lr=1e-3, seed=3, batch=2, save_every=5, real=[s], mix=mix)
    for name in ("a", "b"):
        list(train_ddm(data, tmp_path / f"{name}.safetensors", steps=5, dice=5.0, field_weight=1.0, **kw))
    list(train_ddm(data, tmp_path / "plain.safetensors", steps=5, **kw))
    a, meta = load_ddm(tmp_path / "a.safetensors", ndims=2)
    b, _ = load_ddm(tmp_path / "b.safetensors", ndims=2)
    plain, meta_plain = load_ddm(tmp_path / "plain.safetensors", ndims=2)
    assert (a.config.lambda_dice, a.config.lambda_field) == (5.0, 1.0) and meta["dice"] == "5.0"
    assert (plain.config.lambda_dice, plain.config.lambda_field) == (0.0, 0.0) and meta_plain["field_weight"] == "0.0"
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert any(not torch.allclose(x, y) for x, y in zip(a.state_dict().values(), plain.state_dict().values()))
    with pytest.raises(InputError, match="dice weight must be >= 0"):
        list(train_ddm(data, tmp_path / "c.safetensors", steps=1, dice=-1.0, config=tiny_config(2)))


def test_dice_supervision_moves_the_labels_onto_the_target(tmp_path):
    """On a labelled pair, training with the Dice term aligns the labels better than the paper's losses alone."""
    s, t, lab = pair_volumes(shape=(32, 32), spacing=(2.0, 2.0), shift=(6.0, -4.0))
    tlab = Volume((t.data > 0.6).astype(np.uint8) * 3, lab.geometry, True)
    data = [Pair("a", s, t, lab, tlab)]
    kw = dict(config=tiny_config(2), lr=2e-3, seed=1, batch=2, save_every=60)
    list(train_ddm(data, tmp_path / "dice.safetensors", steps=60, dice=20.0, **kw))
    list(train_ddm(data, tmp_path / "plain.safetensors", steps=60, **kw))
    scores = {}
    for name in ("dice", "plain"):
        model, _ = load_ddm(tmp_path / f"{name}.safetensors", ndims=2)
        src, tgt = torch.from_numpy(s.data)[None, None], torch.from_numpy(t.data)[None, None]
        src = (src - src.min()) / (src.max() - src.min()) * 2 - 1
        tgt = (tgt - tgt.min()) / (tgt.max() - tgt.min()) * 2 - 1
        with torch.no_grad():
            u = model.field(src, model.code(src, tgt))
        moved = spatial.warp(torch.from_numpy(lab.data.astype(np.int64))[None, None], u, mode="nearest")
        scores[name] = hard_dice(moved[0, 0].numpy(), tlab.data, labels=[3])
    before = hard_dice(lab.data, tlab.data, labels=[3])
    assert scores["dice"] > before + 0.05 and scores["dice"] > scores["plain"], (before, scores)


def test_cli_train_ddm_with_dice_and_field_weight_on_phantom_cines(tmp_path, capsys):
    from napari_deformdiff.cli.main import main

    assert main(["phantom", "--out", str(tmp_path / "ds"), "--cases", "2", "--2d", "--frames", "6", "--seed", "41"]) == 0
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(ckpt), "--steps", "2", "--batch", "2",
                 "--pairs", "cine", "--crop", "64,64", "--mix", "synth=1,phantom=1", "--dice", "3",
                 "--field-weight", "0.5"]) == 0
    model, meta = load_ddm(ckpt, ndims=2)
    assert (model.config.lambda_dice, model.config.lambda_field) == (3.0, 0.5) and meta["step"] == "2"
    capsys.readouterr()
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "n.safetensors"),
                 "--steps", "1", "--field-weight", "-1"]) == 2
    assert "field weight must be >= 0" in capsys.readouterr().err
