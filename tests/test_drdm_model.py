"""RecResACNet: the authors' layout, its parts by hand, the recursion, loading, trained behaviour."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm.generate import deform_instance
from napari_deformdiff.core.drdm.nets import (
    AtrousBlock,
    RecResACNet,
    authors_to_voxels,
    sinusoid_table,
    voxels_to_authors,
)
from napari_deformdiff.core.drdm.weights import (
    DRDMMeta,
    load_drdm,
    save_drdm,
)
from napari_deformdiff.core.errors import InputError, OutputExistsError
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.phantom import cardiac_phantom
from napari_deformdiff.core.weights.resolve import BUNDLED

from .shared_data import DRDM_REFERENCE_KEYS as REFERENCE
from .shared_data import MISSING_OFFICIAL
from .shared_data import OFFICIAL_DRDM as OFFICIAL

needs_official = pytest.mark.skipif(not OFFICIAL.is_file(), reason=MISSING_OFFICIAL)


def reference_layout() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in REFERENCE.read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference key list not here")
def test_keys_and_shapes_equal_the_authors_layout():
    ours = [(k, tuple(v.shape)) for k, v in RecResACNet(2).state_dict().items()]
    assert len(ours) == 193
    assert ours == reference_layout()


def test_3d_layout_has_the_same_keys():
    two, three = RecResACNet(2).state_dict(), RecResACNet(3).state_dict()
    assert list(two) == list(three)
    assert three["b1.0.conv0.weight"].shape == (10, 1, 3, 3, 3)
    assert three["conv_out.weight"].shape == (3, 10, 3, 3, 3)


def test_time_embedding_table():
    table = sinusoid_table(80, 100)
    # column c: sin(p w) for even c, cos(p w) for odd c, w = 10000^(-2 c'/100), c' the even index
    assert table[7, 0] == pytest.approx(math.sin(7.0), abs=1e-6)
    assert table[7, 1] == pytest.approx(math.cos(7.0), abs=1e-6)
    assert table[7, 10] == pytest.approx(math.sin(7.0 / 10000 ** (20 / 100)), abs=1e-6)
    assert table[7, 11] == pytest.approx(math.cos(7.0 / 10000 ** (20 / 100)), abs=1e-6)
    assert table[33, 98] == pytest.approx(math.sin(33.0 / 10000 ** (196 / 100)), abs=1e-6)
    net = RecResACNet(2)
    assert torch.equal(net.time_embed.weight, table)
    assert not net.time_embed.weight.requires_grad
    if OFFICIAL.is_file():
        stored = torch.load(OFFICIAL, map_location="cpu", weights_only=True)["time_embed.weight"]
        assert torch.allclose(stored, table, atol=1e-5)


def test_atrous_block_by_hand():
    block = AtrousBlock(2, 1, 1, norm=False)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block.conv0.weight[0, 0, 1, 1] = 1.0  # identity
        block.convs[0].weight[0, 0, 0, 0] = 1.0  # out(i, j) = in(i - 1, j - 1)
        block.convs[1].weight[0, 0, 2, 2] = 1.0  # dilation 3: out(i, j) = in(i + 3, j + 3)
        block.convs[0].bias.fill_(0.25)
        block.convs[1].bias.fill_(0.25)
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 3.0
    # c1 = 0.25 + 3 at (4, 4); c2(i, j) = c1(i + 3, j + 3) + 0.25 (zero padding beyond the edge)
    expected = torch.full((7, 7), 0.25)
    expected[:4, :4] = 0.5
    expected[1, 1] += 3.0
    expected[3, 3] += 3.0  # the residual x
    assert torch.allclose(block(x)[0, 0], expected, atol=1e-6)

    normed = AtrousBlock(2, 1, 1, norm=True)
    with torch.no_grad():
        for p in normed.parameters():
            p.zero_()
        normed.conv0.weight[0, 0, 1, 1] = 1.0
        normed.ln.weight.fill_(2.0)
        normed.ln.bias.fill_(0.5)
    inp = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5) ** 1.5
    a = inp[0, 0].numpy().astype(np.float64)
    z = 2.0 * (a - a.mean()) / np.sqrt(a.var() + 1e-5) + 0.5
    want = np.where(z > 0, z, 1e-6 * z)
    assert np.allclose(normed(inp)[0, 0].detach().numpy(), want, atol=1e-5)


def test_unit_conversions():
    ddf = torch.ones(1, 2, 32, 48)
    vox = authors_to_voxels(ddf)
    assert float(vox[0, 0].mean()) == 32.0 and float(vox[0, 1].mean()) == 48.0
    assert torch.allclose(voxels_to_authors(vox), ddf)
    assert float(authors_to_voxels(ddf, (64, 64))[0, 1, 0, 0]) == 64.0


def test_forward_is_the_recursive_two_pass_composition():
    torch.manual_seed(0)
    net = RecResACNet(2).eval()
    with torch.no_grad():
        net.conv_out.weight.mul_(20.0)
        net.conv_out.bias.copy_(torch.tensor([0.02, -0.03]))
    x = torch.rand(1, 1, 32, 32)
    t = torch.tensor([17])
    with torch.no_grad():
        out = net(x, t)
        ddf1 = net.single(x, t) * 32.0  # voxels
        x2 = spatial.warp(x, ddf1, padding_mode="border")
        ddf2 = net.single(x2, t) * 32.0
        expected = (ddf2 + spatial.warp(ddf1, ddf2, padding_mode="border")) / 32.0
    assert out.shape == (1, 2, 32, 32)
    assert torch.allclose(out, expected, atol=1e-5)
    assert float((out - ddf2 / 32.0).abs().max()) > 0.01  # the first pass really contributes
    with pytest.raises(ValueError, match="t must be in"):
        net(x, torch.tensor([80]))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 30, 32), t)


def test_time_changes_the_output():
    torch.manual_seed(1)
    net = RecResACNet(2).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        out = net.single(x, torch.tensor([3, 60]))
        same = net.single(x[:1], torch.tensor([3]))
        other = net.single(x[1:], torch.tensor([3]))
    assert torch.allclose(out[:1], same, atol=1e-6)
    assert float((other - out[1:]).abs().max()) > 1e-4


def test_3d_forward_runs():
    net = RecResACNet(3).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 16, 16, 16), torch.tensor([5]))
    assert out.shape == (1, 3, 16, 16, 16) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------- loading


@needs_official
def test_official_weights_load_strictly():
    model, meta = load_drdm(OFFICIAL, ndims=2)
    assert meta == DRDMMeta(2, (256, 256), 80, "drdm_cmr2d_official", str(OFFICIAL), 100)
    assert not model.training
    state = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@needs_official
def test_registry_name_loads_from_the_cache(tmp_path, monkeypatch):
    from napari_deformdiff.core.weights.registry import REGISTRY

    shutil.copy(OFFICIAL, tmp_path / REGISTRY["drdm-cmr-2d"].filename)
    monkeypatch.setenv("DEFORMDIFF_CACHE", str(tmp_path))
    model, meta = load_drdm("drdm-cmr-2d", ndims=2)
    assert meta.name == "drdm-cmr-2d" and meta.grid == (256, 256)


@needs_official
def test_wrong_dimensionality_is_refused():
    with pytest.raises(InputError, match="2D DRDM model but the image is 3D"):
        load_drdm(OFFICIAL, ndims=3)


def test_foreign_checkpoints_are_refused(tmp_path):
    ddm = Path(__file__).parents[1] / "src/napari_deformdiff/weights/ddm_phantom_2d.safetensors"
    if ddm.is_file():
        with pytest.raises(InputError, match=r"another model \(ddm\)"):
            load_drdm(ddm, ndims=2)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(InputError, match="not a DRDM"):
        load_drdm(other, ndims=2)
    broken = RecResACNet(2).state_dict()
    broken["b4.0.conv0.weight"] = torch.zeros(40, 81, 3, 3)
    del broken["te5.0.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(broken, bad)
    with pytest.raises(InputError, match=r"1 missing \(e.g. te5.0.bias\).*b4.0.conv0.weight"):
        load_drdm(bad, ndims=2)
    with pytest.raises(InputError, match="does not exist"):
        load_drdm(tmp_path / "nothing.safetensors", ndims=2)


def test_missing_bundled_weights_say_so(monkeypatch, tmp_path):
    import napari_deformdiff.core.weights.resolve as resolve

    monkeypatch.setattr(resolve, "bundled_path", lambda name: tmp_path / name)  # a broken install
    with pytest.raises(InputError, match=BUNDLED[("drdm", 2)]):
        load_drdm(None, ndims=2)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(2)
    net = RecResACNet(3).eval()
    meta = DRDMMeta(3, (16, 16, 16), 80, "tiny", "test")
    path = save_drdm(net, tmp_path / "tiny.safetensors", meta=meta, train_steps=5)
    loaded, got = load_drdm(path, ndims=3)
    assert got == meta
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([4])), net(x, torch.tensor([4])))
    with pytest.raises(OutputExistsError):
        save_drdm(net, path, meta=meta)
    with pytest.raises(InputError, match="3D DRDM model but the image is 2D"):
        load_drdm(path, ndims=2)


# ---------------------------------------------------------------------------- trained behaviour


@needs_official
def test_official_weights_recover_a_forward_deformed_cardiac_slice():
    # methods.md (authors' code, level 48, real slice): forward mean 10-12 % -> after 80 steps
    # 2.8-3.1 %, folding 11-13 % -> 0.9-1.8 %. Here: the phantom's mid-ventricular slice at 256^2,
    # level 44, the paper's loop (44 steps).
    case = cardiac_phantom(0, two_d=True, frames=2)
    img = torch.from_numpy(case.images[0])[None, None]
    img = F.interpolate(img, size=(256, 256), mode="bilinear", align_corners=True)[0, 0].numpy()
    model, meta = load_drdm(OFFICIAL, ndims=2)
    frames = [e for e in deform_instance(img, 44, model=model, meta=meta, seed=0) if isinstance(e, Frame)]
    assert len(frames) == 45
    first, last = (torch.from_numpy(f.field)[None] for f in (frames[0], frames[-1]))
    before, after = spatial.displacement_stats(first)[0], spatial.displacement_stats(last)[0]
    fold_before, fold_after = float(spatial.folding_ratio(first)), float(spatial.folding_ratio(last))
    assert before["mean_pct"] > 7.0
    assert after["mean_pct"] < 0.5 * before["mean_pct"]
    assert after["mean_pct"] < 4.5
    assert fold_after < 0.5 * fold_before
    # the recovered frame looks more like the original than the forward-deformed one does
    err0 = np.abs(frames[0].image - img).mean()
    err1 = np.abs(frames[-1].image - img).mean()
    assert err1 < 0.8 * err0
