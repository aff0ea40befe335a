"""DRDM training: the loss's numbers, learning on a fixed batch, exact resume, checkpoints, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.cli import main
from napari_deformdiff.core.drdm.forward import sample_forward
from napari_deformdiff.core.drdm.losses import (
    distance_and_angle,
    drdm_loss,
    gradient_l1,
    negative_jacobian,
)
from napari_deformdiff.core.drdm.nets import RecResACNet, voxels_to_authors
from napari_deformdiff.core.drdm.train import (
    FieldBank,
    inflate_to_3d,
    load_training_images,
    make_optimizer,
    train_drdm,
    training_batch,
    zero_output,
)
from napari_deformdiff.core.drdm.weights import load_drdm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.phantom import cardiac_phantom
from napari_deformdiff.core.weights.files import read_state
from napari_deformdiff.core.events import Progress

GRID = (32, 32)


def constant_field(shape, values):
    return torch.tensor(values, dtype=torch.float32).view(1, len(shape), *([1] * len(shape))).expand(
        1, len(shape), *shape).clone()


@pytest.fixture(scope="module")
def images():
    """Four 2D phantom frames on a 32x32 grid in [0, 1] (training_batch's input)."""
    case = cardiac_phantom(3, frames=4, two_d=True, noise=False)
    from napari_deformdiff.core.drdm.train import image_on_grid

    return torch.stack([image_on_grid(f, case.spacing, GRID) for f in case.images])


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("shape", [(24, 20), (8, 12, 10)])
def test_distance_and_angle_are_zero_for_the_inverse_and_scale_as_designed(shape):
    n = len(shape)
    dvf = constant_field(shape, [1.5, -0.75, 0.5][:n])  # a translation, in voxels
    inverse = voxels_to_authors(-dvf)  # its exact inverse, in the network's units
    dist, angle = distance_and_angle(inverse, dvf)
    assert float(dist) == pytest.approx(0.0, abs=1e-10) and float(angle) == pytest.approx(0.0, abs=1e-6)
    dist, angle = distance_and_angle(0.5 * inverse, dvf)  # right direction, half the length
    assert float(dist) == pytest.approx(0.25, rel=1e-5) and float(angle) == pytest.approx(0.0, abs=1e-6)
    dist, angle = distance_and_angle(-inverse, dvf)  # the wrong way
    assert float(dist) == pytest.approx(4.0, rel=1e-5) and float(angle) == pytest.approx(2.0, rel=1e-6)
    dist, angle = distance_and_angle(torch.zeros_like(dvf), dvf)
    assert float(dist) == pytest.approx(1.0) and float(angle) == pytest.approx(1.0)


def test_distance_resamples_the_prediction_by_the_dvf():
    # dvf shifts by 2 voxels along x; a prediction that is -dvf only where x + 2 lands is perfect.
    shape = (6, 12)
    dvf = constant_field(shape, [0.0, 2.0])
    pred = torch.zeros(1, 2, *shape)
    pred[:, 1, :, 2:] = -2.0 / 12  # -2 voxels in the network's units, at the resampled positions
    dist, _ = distance_and_angle(pred, dvf)
    assert float(dist) == pytest.approx(0.0, abs=1e-10)
    shifted = torch.zeros(1, 2, *shape)
    shifted[:, 1, :, :-2] = -2.0 / 12  # the same values at the unresampled positions: not perfect
    assert float(distance_and_angle(shifted, dvf)[0]) > 0.2


def test_gradient_penalty_counts_only_differences_above_the_threshold():
    ramp = torch.zeros(1, 2, 10, 10)
    ramp[:, 1] = 2e-4 * torch.arange(10.0)  # x component changes by 2e-4 per voxel along x
    # only 1 of 2 components x 1 of 2 axes exceeds the threshold, by 1e-4
    assert float(gradient_l1(ramp)) == pytest.approx(0.25e-4, rel=1e-4)
    assert float(gradient_l1(0.4 * ramp)) == 0.0


def test_folding_penalty_uses_the_true_jacobian():
    shape = (16, 16)
    x = torch.arange(16.0).view(1, 16).expand(16, 16)
    mirror = torch.zeros(1, 2, *shape)
    mirror[:, 1] = -2.0 * x  # u_x = -2x: det(I + grad u) = 1 - 2 = -1 everywhere
    assert float(negative_jacobian(voxels_to_authors(mirror))) == pytest.approx(1.0, rel=1e-5)
    shrink = mirror * 0.25  # det = 0.5 > 0: no penalty
    assert float(negative_jacobian(voxels_to_authors(shrink))) == 0.0
    shear = torch.zeros(1, 2, *shape)
    shear[:, 1] = 3.0 * torch.arange(16.0).view(16, 1).expand(16, 16)
    assert float(negative_jacobian(voxels_to_authors(shear))) == 0.0


def test_loss_gradients_flow_and_unfold():
    shape = (16, 16)
    g = torch.Generator().manual_seed(0)
    dvf = sample_forward(shape, 30, generator=g, with_dvf=True).dvf
    x = torch.arange(16.0).view(1, 16).expand(16, 16)
    folded = torch.zeros(1, 2, *shape)
    folded[:, 1] = -2.0 * x
    pred = voxels_to_authors(folded).requires_grad_()
    losses = drdm_loss(pred, dvf)
    assert set(losses) == {"total", "distance", "angle", "gradient", "folding"}
    losses["total"].backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad.abs().sum()) > 0
    before = float(negative_jacobian(pred).detach())
    fold_grad = torch.autograd.grad(negative_jacobian(pred), pred)[0]
    after = float(negative_jacobian((pred - 1e-3 * fold_grad / fold_grad.abs().max()).detach()))
    assert after < before


# ----------------------------------------------------------------------------- data and batches


def test_field_bank_matches_the_forward_process():
    bank = FieldBank(GRID, 2, seed=4, max_level=20)
    for level in (1, 7, 20):
        ddf, dvf = bank.fields(1, level)
        ref = sample_forward(GRID, level, seed=bank.chain_seed(1), with_dvf=True)
        assert torch.allclose(ddf, ref.ddf, atol=1e-5) and torch.allclose(dvf, ref.dvf, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    a = bank.sample(10, g)[0]
    assert a.shape == (1, 2, *GRID)


def test_training_batch_shapes_crops_and_seeds(images):
    def batch(seed, **kw):
        return training_batch(images, 3, torch.Generator().manual_seed(seed), "cpu", **kw)

    x, t, dvf = batch(0)
    assert x.shape == (3, 1, *GRID) and dvf.shape == (3, 2, *GRID) and t.shape == (3,)
    assert int(t.min()) >= 1 and int(t.max()) <= 79
    x2, t2, dvf2 = batch(0)
    assert torch.equal(x, x2) and torch.equal(t, t2) and torch.equal(dvf, dvf2)
    assert not torch.equal(batch(1)[0], x)
    xc, _, dc = batch(0, crop=(16, 24))
    assert xc.shape == (3, 1, 16, 24) and dc.shape == (3, 2, 16, 24)
    assert float(dvf.abs().max()) > 0


def test_training_images_from_acdc_folders_and_files(tmp_path):
    from napari_deformdiff.core.io import Volume, write_volume
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "acdc", cases=2, seed=1, two_d=True, frames=3))
    imgs, desc = load_training_images(tmp_path / "acdc", ndims=2, grid=GRID)
    assert imgs.shape == (6, 1, *GRID) and "6 images" in desc  # every frame of both 4D cines
    assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
    from napari_deformdiff.core.phantom.dataset import centred_geometry

    geometry = centred_geometry((8, 40, 40), (6.0, 1.5, 1.5))
    volume = np.random.default_rng(0).random((8, 40, 40)).astype(np.float32)
    write_volume(Volume(volume, geometry), tmp_path / "vol.nii.gz")
    write_volume(Volume((volume > 0.5).astype(np.uint8), geometry, True), tmp_path / "vol_gt.nii.gz")
    imgs, _ = load_training_images(tmp_path, ndims=2, grid=GRID)  # 3D volume -> its 8 slices; labels skipped
    assert imgs.shape[0] == 8
    imgs3, _ = load_training_images(tmp_path, ndims=3, grid=(8, 16, 16))
    assert imgs3.shape == (1, 1, 8, 16, 16)
    with pytest.raises(InputError, match="3D DRDM needs 3D images"):
        load_training_images(tmp_path / "acdc", ndims=3, grid=(8, 16, 16))
    with pytest.raises(InputError, match="no 2D images"):
        (tmp_path / "empty").mkdir()
        load_training_images(tmp_path / "empty", ndims=2, grid=GRID)


# ----------------------------------------------------------------------------- training


def test_loss_decreases_on_a_fixed_batch(images):
    torch.manual_seed(0)
    model = zero_output(RecResACNet(2))
    x, t, dvf = training_batch(images, 4, torch.Generator().manual_seed(2), "cpu")
    optim = make_optimizer(model, 1e-3)
    history = []
    for _ in range(40):
        loss = drdm_loss(model(x, t), dvf)
        optim.zero_grad()
        loss["total"].backward()
        optim.step()
        history.append(tuple(float(loss[k].detach()) for k in ("total", "distance", "angle")))
    assert history[0][0] == pytest.approx(2.0, abs=1e-4)  # zero output: distance 1 + angle 1
    last = np.mean(history[-5:], axis=0)
    assert last[0] < 0.75 * history[0][0] and last[1] < 0.9 and last[2] < 0.7, history[-5:]


def test_resume_continues_exactly_where_a_run_stopped(tmp_path, images):
    kw = dict(ndims=2, grid=GRID, batch=2, lr=1e-3, seed=3, save_every=2, warmup=2, images=images)
    events = list(train_drdm("test", tmp_path / "full.safetensors", steps=4, **kw))
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.index for e in progress] == [0, 1, 2, 3, 4] and "loss" in events[-1].message
    list(train_drdm("test", tmp_path / "half.safetensors", steps=2, **kw))
    assert (tmp_path / "half.safetensors.optim.pt").is_file()
    list(train_drdm("test", tmp_path / "half.safetensors", steps=4, resume=tmp_path / "half.safetensors", **kw))
    a, meta_a = load_drdm(tmp_path / "full.safetensors", ndims=2)
    b, meta_b = load_drdm(tmp_path / "half.safetensors", ndims=2)
    assert meta_b.grid == GRID and meta_b.steps == 80
    _, extra = read_state(tmp_path / "half.safetensors")
    assert extra["train_steps"] == "4" and extra["batch"] == "2" and extra["data"] == "test"
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k
    c = RecResACNet(2)
    assert not torch.allclose(c.conv_out.weight, a.conv_out.weight)  # training changed the weights
    with pytest.raises(InputError, match="holds a 2D DRDM"):
        load_drdm(tmp_path / "full.safetensors", ndims=3)


def test_training_3d_with_a_bank_and_crops(tmp_path):
    case = cardiac_phantom(1, frames=2, shape=(16, 32, 32), noise=False)
    from napari_deformdiff.core.drdm.train import image_on_grid

    imgs = torch.stack([image_on_grid(f, case.spacing, (16, 16, 16)) for f in case.images])
    out = tmp_path / "d3.safetensors"
    events = list(train_drdm("phantom3d", out, ndims=3, grid=(16, 16, 16), steps=2, batch=1, field_bank=1,
                             crop=(8, 16, 8), max_level=3, images=imgs, save_every=1))
    assert [e.index for e in events if isinstance(e, Progress)] == [0, 1, 2]
    assert np.isfinite(float(events[-1].message.split()[1]))
    model, meta = load_drdm(out, ndims=3)
    assert meta.grid == (16, 16, 16) and model.ndims == 3
    _, extra = read_state(out)
    assert extra["crop"] == "8,16,8" and extra["field_bank"] == "1"


def test_inflated_3d_network_is_the_2d_network_slice_by_slice(tmp_path):
    torch.manual_seed(0)
    m2 = RecResACNet(2).eval()
    m3 = inflate_to_3d(m2).eval()
    x2 = torch.rand(1, 1, 32, 32)
    x3 = x2[:, :, None].expand(1, 1, 16, 32, 32).contiguous()  # the same slice 16 times
    t = torch.tensor([30])
    with torch.no_grad():
        a, b = m2(x2, t), m3(x3, t)
    assert float(a.abs().mean()) > 1e-2
    for z in (5, 8, 10):  # interior slices (zero padding along z touches the border ones)
        assert torch.allclose(b[:, 1:, z], a, atol=1e-3 * float(a.abs().max())), z
    assert float(b[:, 0].abs().max()) == 0.0  # no through-plane displacement yet
    from napari_deformdiff.core.drdm.weights import DRDMMeta, save_drdm

    save_drdm(m2, tmp_path / "m2.safetensors", meta=DRDMMeta(2, (32, 32)))
    imgs = torch.rand(2, 1, 16, 16, 16)
    list(train_drdm("x", tmp_path / "m3.safetensors", ndims=3, grid=(16, 16, 16), steps=1, batch=1, lr=0.0,
                    max_level=2, field_bank=1, init=tmp_path / "m2.safetensors", images=imgs))
    started, _ = load_drdm(tmp_path / "m3.safetensors", ndims=3)
    assert torch.equal(started.b1[0].conv0.weight, m3.b1[0].conv0.weight)  # lr 0: the inflated start
    assert read_state(tmp_path / "m3.safetensors")[1]["init"] == "m2.safetensors"


def test_bad_arguments_are_refused(tmp_path, images):
    kw = dict(ndims=2, steps=1, images=images)
    with pytest.raises(InputError, match="multiples of 8"):
        list(train_drdm("x", tmp_path / "a.safetensors", grid=(30, 32), **kw))
    with pytest.raises(InputError, match="larger than the model grid"):
        list(train_drdm("x", tmp_path / "a.safetensors", grid=GRID, crop=(64, 8), **kw))
    with pytest.raises(InputError, match=".safetensors"):
        list(train_drdm("x", tmp_path / "a.pt", grid=GRID, **kw))
    assert not list(tmp_path.iterdir())


def test_cli_trains_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "data", cases=1, seed=2, two_d=True, frames=2))
    out = tmp_path / "m.safetensors"
    args = ["train", "drdm", "--data", str(tmp_path / "data"), "--out", str(out), "--grid", "32,32",
            "--steps", "2", "--batch", "1", "--save-every", "1", "--seed", "1"]
    assert main(args) == 0
    model, meta = load_drdm(out, ndims=2)
    assert meta.grid == GRID
    _, extra = read_state(out)
    assert extra["train_steps"] == "2" and extra["images"] == "2"
    before = out.read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(args + ["--steps", "3", "--resume", str(out)]) == 0  # the last --steps counts
    assert read_state(out)[1]["train_steps"] == "3"
