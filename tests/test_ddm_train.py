"""DDM training: the paper's losses learn registration, runs are seeded and resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core.ddm.train import train_ddm
from napari_deformdiff.core.ddm.weights import load_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.io.pairs import Pair, find_pairs
from napari_deformdiff.core.nn.losses import local_ncc, smoothness
from napari_deformdiff.core.nn.model_grid import GridMap, to_model
from napari_deformdiff.core.events import Progress

from .ddm_helpers import pair_volumes, tiny_config


def pairs(n=3):
    out = []
    for i in range(n):
        s, t, lab = pair_volumes(shift=(3.0 + i, -2.0 - 0.5 * i))
        out.append(Pair(f"case{i}", s, t, lab))
    return out


def test_local_ncc_and_smoothness_values():
    a = torch.rand(1, 1, 20, 20)
    assert float(local_ncc(a, a)) == pytest.approx(1.0, abs=3e-3)  # eps in the denominator
    assert float(local_ncc(a, 3 * a + 2)) == pytest.approx(1.0, abs=3e-3)
    assert float(local_ncc(a, torch.rand(1, 1, 20, 20))) < 0.3
    ramp = torch.arange(10.0).reshape(1, 1, 10).expand(1, 10, 10)[None].repeat(1, 2, 1, 1)  # d/dx = 1
    assert float(smoothness(ramp)) == pytest.approx(0.5)  # mean over the two axes of (0, 1)


def test_training_learns_to_register_the_pairs(tmp_path):
    data = pairs()
    out = tmp_path / "ddm.safetensors"
    events = list(train_ddm(data, out, steps=400, config=tiny_config(2), lr=2e-3, batch=2, save_every=200))
    assert [e.index for e in events if isinstance(e, Progress)] == list(range(401)) and "loss" in events[-1].message
    model, meta = load_ddm(out, ndims=2)
    assert meta["step"] == "400" and meta["batch"] == "2"
    cfg = model.config
    gains = []
    for p in data:
        grid = GridMap(p.source.spatial_shape, p.source.geometry.spacing, cfg.grid, cfg.spacing)
        s, t = to_model(p.source.data, grid), to_model(p.target.data, grid)
        with torch.no_grad():
            ddf = model.field(s, model.code(s, t))
            before = float(local_ncc((s + 1) / 2, (t + 1) / 2))
            after = float(local_ncc(model.warp_unit(s, ddf), (t + 1) / 2))
        gains.append(after - before)
    assert min(gains) > 0.02, gains


def test_resuming_continues_exactly_where_a_run_stopped(tmp_path):
    data = pairs(2)
    kw = dict(config=tiny_config(2), lr=1e-3, seed=5, save_every=4)
    list(train_ddm(data, tmp_path / "full.safetensors", steps=8, **kw))
    list(train_ddm(data, tmp_path / "half.safetensors", steps=4, **kw))
    list(train_ddm(data, tmp_path / "half.safetensors", steps=8, resume=tmp_path / "half.safetensors", **kw))
    a, _ = load_ddm(tmp_path / "full.safetensors", ndims=2)
    b, meta = load_ddm(tmp_path / "half.safetensors", ndims=2)
    assert meta["step"] == "8"
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_mixed_training_is_seeded_and_differs_from_phantom_only(tmp_path):
    data = pairs(2)
    mix = {"synth": 0.5, "real": 0.25, "phantom": 0.25}
    kw = dict(config=tiny_config(2), lr=1e-3, seed=3, batch=2, save_every=6, real=[data[1].source])
    for name in ("a", "b"):
        list(train_ddm(data, tmp_path / f"{name}.safetensors", steps=6, mix=mix, **kw))
    list(train_ddm(data, tmp_path / "phantom.safetensors", steps=6, **kw))
    a, meta = load_ddm(tmp_path / "a.safetensors", ndims=2)
    b, _ = load_ddm(tmp_path / "b.safetensors", ndims=2)
    c, meta_c = load_ddm(tmp_path / "phantom.safetensors", ndims=2)
    assert meta["mix"] == "synth=0.5,real=0.25,phantom=0.25" and meta_c["mix"] == "phantom=1"
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert any(not torch.allclose(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    with pytest.raises(InputError, match="real"):
        list(train_ddm(data, tmp_path / "d.safetensors", steps=1, mix=mix, config=tiny_config(2)))


def test_training_refuses_to_overwrite_and_bad_crops(tmp_path):
    data = pairs(1)
    (tmp_path / "x.safetensors").write_bytes(b"keep")
    with pytest.raises(InputError, match="exists"):
        list(train_ddm(data, tmp_path / "x.safetensors", steps=1, config=tiny_config(2)))
    assert (tmp_path / "x.safetensors").read_bytes() == b"keep"
    with pytest.raises(InputError, match="multiples of 16"):
        list(train_ddm(data, tmp_path / "y.safetensors", steps=1, config=tiny_config(2), crop=(20, 32)))


def test_pairs_are_found_by_name_and_checked(tmp_path):
    from napari_deformdiff.core.io import Volume, write_volume

    s, t, lab = pair_volumes()
    write_volume(s, tmp_path / "a_source.nii.gz")
    write_volume(t, tmp_path / "a_target.nii.gz")
    write_volume(lab, tmp_path / "a_labels.nii.gz")
    write_volume(s, tmp_path / "b_source.nii.gz")
    write_volume(Volume(t.data[:-1], t.geometry), tmp_path / "b_target.nii.gz")
    with pytest.raises(InputError, match="b: source and target have different shapes"):
        find_pairs(tmp_path)
    (tmp_path / "b_target.nii.gz").unlink()
    found = find_pairs(tmp_path)
    assert [p.name for p in found] == ["a"]
    assert found[0].source_labels is not None and np.array_equal(found[0].source_labels.data, lab.data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no pairs"):
        find_pairs(tmp_path / "empty")


def test_anchor_term_is_the_zero_code_field_energy_and_pulls_it_to_zero(tmp_path):
    data = pairs(2)
    kw = dict(config=tiny_config(2), lr=2e-3, batch=2, seed=3, save_every=40)
    list(train_ddm(data, tmp_path / "plain.safetensors", steps=40, **kw))
    list(train_ddm(data, tmp_path / "anchor.safetensors", steps=40, anchor=50.0, **kw))
    plain, _ = load_ddm(tmp_path / "plain.safetensors", ndims=2)
    anchored, meta = load_ddm(tmp_path / "anchor.safetensors", ndims=2)
    assert anchored.config.lambda_anchor == 50.0 and plain.config.lambda_anchor == 0.0
    cfg = plain.config
    p = data[0]
    grid = GridMap(p.source.spatial_shape, p.source.geometry.spacing, cfg.grid, cfg.spacing)
    s, t = to_model(p.source.data, grid), to_model(p.target.data, grid)

    def zero_code_energy(model):
        with torch.no_grad():
            code = model.code(s, t)
            return float(torch.mean(model.field(s, torch.zeros_like(code)) ** 2))

    # the loss term is exactly that energy
    torch.manual_seed(0)
    losses = anchored.training_losses(s, t, generator=torch.Generator().manual_seed(1))
    assert float(losses["anchor"].detach()) == pytest.approx(zero_code_energy(anchored), rel=1e-4)
    assert "anchor" not in plain.training_losses(s, t, generator=torch.Generator().manual_seed(1))
    assert zero_code_energy(anchored) < 0.2 * zero_code_energy(plain)
    with pytest.raises(InputError, match="anchor"):
        next(train_ddm(data, tmp_path / "bad.safetensors", steps=1, anchor=-1.0, **kw))
