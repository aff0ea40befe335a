"""DRDM Algorithm 2 streamed: events, fields on the input grid, labels, loops, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm import generate as recover
from napari_deformdiff.core.drdm.forward import ForwardSample, sample_forward
from napari_deformdiff.core.drdm.generate import (
    deform_instance,
    instance_field,
    model_grid_map,
    recovery_times,
    time_index,
)
from napari_deformdiff.core.drdm.nets import RecResACNet
from napari_deformdiff.core.drdm.weights import DRDMMeta
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame, Plan
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume
from napari_deformdiff.core.phantom import cardiac_phantom

SPACING = (1.8, 1.4)


def tiny(ndims=2, grid=32, seed=0, gain=0.02):
    """A random-weight network on a small model grid whose steps are about a voxel large."""
    torch.manual_seed(seed)
    net = RecResACNet(ndims).eval()
    with torch.no_grad():
        net.conv_out.weight.mul_(gain)
        net.conv_out.bias.mul_(gain)
    return net, DRDMMeta(ndims, (grid,) * ndims, 80, "tiny", "test")


def constant(shift, ndims=2, grid=32):
    """A network whose every pass outputs the constant field `shift` (authors' units)."""
    net, meta = tiny(ndims, grid)
    with torch.no_grad():
        net.conv_out.weight.zero_()
        net.conv_out.bias.copy_(torch.tensor(shift))
    return net, meta


@pytest.fixture(scope="module")
def slice_100x120():
    case = cardiac_phantom(1, two_d=True, frames=2, shape=(100, 120), spacing=SPACING)
    geometry = Geometry(SPACING, (-30.0, 12.0), np.array([[0.0, 1.0], [1.0, 0.0]]))
    return Volume(case.images[0], geometry), Volume(case.labels[0], geometry, is_labels=True)


def frames_of(events):
    return [e for e in events if isinstance(e, Frame)]


def test_events_frames_and_fields_on_the_input_grid(slice_100x120):
    image, labels = slice_100x120
    model, meta = tiny()
    events = list(deform_instance(image, 6, model=model, meta=meta, labels=labels, seed=4))
    assert isinstance(events[0], Plan) and events[0].stages == (("compile", 0), ("frames", 7))
    frames = frames_of(events)
    assert [f.index for f in frames] == list(range(7)) and all(f.total == 7 for f in frames)
    assert [f.info["t"] for f in frames] == [6, 6, 5, 4, 3, 2, 1]
    assert frames[0].info["forward"] and not frames[1].info["forward"]
    for f in frames:
        assert f.image.shape == (100, 120) and f.image.dtype == np.float32
        assert f.field.shape == (2, 100, 120)
    # frame 0: the forward field of the model grid brought to the input grid, applied to the original
    grid = model_grid_map((100, 120), SPACING, (32, 32))
    psi = sample_forward((32, 32), 6, seed=4).ddf
    assert np.allclose(frames[0].field, grid.field_to_input(psi)[0].numpy(), atol=1e-5)
    src = torch.from_numpy(image.data.astype(np.float32))[None, None]
    for f in (frames[0], frames[-1]):
        again = spatial.warp(src, torch.from_numpy(f.field)[None], padding_mode="border")[0, 0].numpy()
        assert np.allclose(again, f.image, atol=1e-5)
    # the recovery steps really change the field, and the images keep the input's intensity range
    assert np.abs(frames[-1].field - frames[0].field).max() > 0.5
    assert frames[-1].image.min() >= image.data.min() - 1e-4 and frames[-1].image.max() <= image.data.max() + 1e-4
    # labels only on the last frame, nearest: same integer values, dtype kept
    assert all(f.labels is None for f in frames[:-1])
    last = frames[-1].labels
    assert last.dtype == labels.data.dtype and last.shape == (100, 120)
    assert set(np.unique(last)) == set(np.unique(labels.data))
    lab = torch.from_numpy(labels.data)[None, None]
    warped = spatial.warp(lab, torch.from_numpy(frames[-1].field)[None], mode="nearest", padding_mode="border")
    assert np.array_equal(warped[0, 0].numpy(), last)


def test_fields_are_in_input_voxels_with_the_input_spacing(monkeypatch):
    # no forward deformation and a network that always says "shift by b": one step of the
    # recursive net moves by 2 b (authors' units) = 2 b * 32 model voxels of the isotropic
    # model spacing; on the input grid that is 2 b * 32 * s_model / s_input voxels per axis.
    def no_deformation(shape, level, **kw):
        return ForwardSample(torch.zeros(1, len(shape), *shape))

    monkeypatch.setattr(recover, "sample_forward", no_deformation)
    b = (0.01, -0.02)
    model, meta = constant(b)
    data = np.random.default_rng(0).random((100, 120)).astype(np.float32)
    field = instance_field(data, 1, model=model, meta=meta, spacing=SPACING)
    s_model = max(1.8 * 99 / 31, 1.4 * 119 / 31)
    for k in range(2):
        expected = 2 * b[k] * 32 * s_model / SPACING[k]
        assert np.allclose(field[k, 5:-5, 5:-5], expected, rtol=1e-4), (k, expected, field[k, 50, 60])


def test_model_grid_keeps_the_aspect_ratio():
    grid = model_grid_map((100, 120), SPACING, (32, 32))
    assert grid.model_spacing[0] == grid.model_spacing[1] == pytest.approx(1.8 * 99 / 31)
    square = model_grid_map((256, 256), (1.0, 1.0), (256, 256))
    assert square.model_spacing == (1.0, 1.0)


def test_seeds_are_deterministic(slice_100x120):
    image, _ = slice_100x120
    model, meta = tiny()
    a = instance_field(image, 5, model=model, meta=meta, seed=1)
    b = instance_field(image, 5, model=model, meta=meta, seed=1)
    c = instance_field(image, 5, model=model, meta=meta, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    streamed = frames_of(deform_instance(image, 5, model=model, meta=meta, seed=1))[-1].field
    assert np.allclose(streamed, a, atol=1e-6)


def test_authors_loop_runs_all_steps():
    model, meta = tiny(grid=16)
    data = np.random.default_rng(1).random((24, 20)).astype(np.float32)
    frames = frames_of(deform_instance(data, 10, model=model, meta=meta, loop="authors"))
    assert len(frames) == 81
    assert [f.info["t"] for f in frames[1:]] == list(range(79, -1, -1))
    assert recovery_times(10, "paper", 80) == list(range(10, 0, -1))
    assert time_index(80, 80) == 79 and time_index(12, 80) == 12


def test_3d_instance():
    model, meta = tiny(3, grid=16)
    data = np.random.default_rng(2).random((12, 20, 18)).astype(np.float32)
    labels = (data > 0.5).astype(np.int16) * 7
    frames = frames_of(deform_instance(data, 3, model=model, meta=meta, labels=labels, spacing=(3.0, 1.5, 1.5)))
    assert len(frames) == 4
    assert frames[-1].field.shape == (3, 12, 20, 18) and frames[-1].image.shape == (12, 20, 18)
    assert frames[-1].labels.dtype == np.int16 and set(np.unique(frames[-1].labels)) <= {0, 7}


def test_bad_input_is_refused(slice_100x120):
    image, labels = slice_100x120
    model, meta = tiny()
    run = lambda *a, **k: list(deform_instance(*a, **k))  # noqa: E731
    for level in (0, 81, 2.0):
        with pytest.raises(InputError, match="level"):
            run(image, level, model=model, meta=meta)
    with pytest.raises(InputError, match="loop"):
        run(image, 3, model=model, meta=meta, loop="reverse")
    with pytest.raises(InputError, match="3D but the image is 2D"):
        run(image, 3, model=tiny(3, grid=16)[0], meta=tiny(3, grid=16)[1])
    with pytest.raises(InputError, match="labels' shape"):
        run(image, 3, model=model, meta=meta, labels=np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="not integers"):
        run(image, 3, model=model, meta=meta, labels=labels.data + 0.5)
    with pytest.raises(InputError, match="constant"):
        run(np.ones((40, 40), np.float32), 3, model=model, meta=meta)
    with pytest.raises(InputError, match="DRDMMeta"):
        run(image, 3, model=model)
    with pytest.raises(InputError, match="frames"):
        run(Volume(np.zeros((3, 100, 120), np.float32), image.geometry), 3, model=model, meta=meta)
