"""The optimised DRDM recovery (channels-last copy, in-place inference path, oneDNN convolutions,
no resampling when the input is the model grid) gives the frames and fields of a plain loop.

The plain loop is written out here step by step as Algorithm 2 says: fresh tensors, no
inference_mode (only no_grad), the network's ordinary path, the field always resampled to the input
grid and the original image warped through it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm.evaluate import field_stats
from napari_deformdiff.core.drdm.forward import sample_forward
from napari_deformdiff.core.drdm.generate import (
    _inference_model,
    deform_instance,
    instance_field,
    model_grid_map,
    recover_batch,
    recovery_times,
    time_index,
)
from napari_deformdiff.core.drdm.nets import AtrousBlock, RecResACNet, authors_to_voxels
from napari_deformdiff.core.drdm.weights import DRDMMeta, load_drdm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame, Progress
from napari_deformdiff.core.nn.model_grid import unit_range

from .shared_data import MISSING_OFFICIAL
from .shared_data import OFFICIAL_DRDM as OFFICIAL


def plain_recovery(image, level, model, meta, *, seed, loop="paper", spacing=None):
    """[(frame, field)] of Algorithm 2, one plain step at a time."""
    spacing = spacing or (1.0,) * image.ndim
    grid = model_grid_map(image.shape, spacing, meta.grid)
    src = torch.from_numpy(image.astype(np.float32))[None, None]
    out = []
    with torch.no_grad():
        x0 = grid.image_to_model(torch.from_numpy(unit_range(image)[0])[None, None])
        phi = sample_forward(meta.grid, level, seed=seed).ddf
        for t in [None, *recovery_times(level, loop, meta.steps)]:
            if t is not None:
                moved = spatial.warp(x0, phi, padding_mode="border")
                step = authors_to_voxels(model(moved, torch.tensor([time_index(t, meta.steps)])))
                phi = spatial.compose(phi, step, padding_mode="border")
            field = grid.field_to_input(phi)
            out.append((spatial.warp(src, field, padding_mode="border")[0, 0].numpy(), field[0].numpy()))
    return out


def _fast(image, level, model, meta, *, seed, loop="paper", spacing=None):
    return [(e.image, e.field) for e in deform_instance(image, level, model=model, meta=meta, seed=seed, loop=loop,
                                                        spacing=spacing, fold_free=False)  # the loop only
            if isinstance(e, Frame)]


def _compare(fast, plain, field_tol, image_tol):
    assert len(fast) == len(plain)
    moved = max(float(np.abs(f).max()) for _, f in plain)
    assert moved > 1.0  # the comparison is about real motion
    for (fi, ff), (pi, pf) in zip(fast, plain):
        assert fi.shape == pi.shape and ff.shape == pf.shape
        assert np.abs(ff - pf).max() < field_tol
        assert np.abs(fi - pi).max() < image_tol


def _slice(shape):
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    return (np.exp(-((yy / 0.5) ** 2 + (xx / 0.35) ** 2)) * 200 + 30 * (np.hypot(yy, xx) < 0.3)).astype(np.float32)


needs_official = pytest.mark.skipif(not OFFICIAL.is_file(), reason=MISSING_OFFICIAL)


@needs_official
def test_one_fast_step_matches_the_plain_step_within_float_sensitivity():
    # The published network is numerically chaotic: a 1e-6 change of its input (16 float32 ulps)
    # changes its output by a few percent at some pixels. The fast path (channels-last, another
    # summation order) must stay well inside that, and within 1 % of the output's size.
    model, meta = load_drdm(OFFICIAL, ndims=2)
    x0 = torch.from_numpy(unit_range(_slice((256, 256)))[0])[None, None]
    moved = spatial.warp(x0, sample_forward((256, 256), 10, seed=2).ddf, padding_mode="border")
    t = torch.tensor([10])
    with torch.no_grad():
        plain = model(moved, t)
        nudged = model(moved + 1e-6 * torch.randn(moved.shape, generator=torch.Generator().manual_seed(0)), t)
    fast_model = _inference_model(model, torch.device("cpu"))
    assert fast_model.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast = fast_model(moved, t)
    diff = float((fast - plain).abs().max())
    sensitivity = float((nudged - plain).abs().max())
    assert diff < 0.01 * float(plain.abs().max())
    assert diff < 0.2 * sensitivity


@needs_official
@pytest.mark.parametrize(("shape", "spacing"), [((256, 256), None), ((72, 96), (1.4, 1.1))],
                         ids=["model-grid", "resampled"])
def test_fast_recovery_matches_the_plain_loop_with_the_official_weights(shape, spacing):
    # Over steps the per-step float differences grow (see above): fields agree to a few percent of
    # their size, their Table-1 statistics to 1-2 % (the float order differs by CPU).
    model, meta = load_drdm(OFFICIAL, ndims=2)
    image = _slice(shape)
    plain = plain_recovery(image, 10, model, meta, seed=2, spacing=spacing)
    fast = _fast(image, 10, model, meta, seed=2, spacing=spacing)
    assert len(fast) == len(plain) == 11
    _compare(fast[:1], plain[:1], field_tol=1e-4, image_tol=1e-2)  # the forward field: no network yet
    for (fi, ff), (pi, pf) in zip(fast[1:], plain[1:]):
        size = np.sqrt((pf ** 2).sum(0)).mean()
        assert np.abs(ff - pf).mean() < 0.04 * size
    ours, theirs = field_stats(fast[-1][1]), field_stats(plain[-1][1])
    assert ours[:2] == pytest.approx(theirs[:2], rel=0.02)  # 1.1 % seen on a 2026-12 machine, same code
    assert ours[2] == pytest.approx(theirs[2], rel=0.05, abs=0.2)
    assert model.conv_out.weight.is_contiguous()  # the caller's model is not converted


def test_fast_recovery_equals_the_plain_loop_in_3d():
    torch.manual_seed(3)
    model = RecResACNet(3).eval()
    with torch.no_grad():
        model.conv_out.weight.mul_(0.2)
    meta = DRDMMeta(ndims=3, grid=(16, 24, 24), steps=80, name="tiny3d")
    rng = np.random.default_rng(0)
    image = rng.random((16, 24, 24)).astype(np.float32)
    plain = plain_recovery(image, 5, model, meta, seed=4)
    fast = _fast(image, 5, model, meta, seed=4)
    _compare(fast, plain, field_tol=1e-3, image_tol=1e-4)


@pytest.mark.parametrize("ndims", [2, 3])
def test_inference_path_of_a_block_equals_its_ordinary_path(ndims):
    torch.manual_seed(ndims)
    block = AtrousBlock(ndims, 4, 6, norm=True).eval()
    with torch.no_grad():
        block.ln.weight.uniform_(0.5, 2.0)
        block.ln.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 4, *([12] * ndims)) * 3 + 1
    with torch.no_grad():
        ordinary = block(x)
    fmt = torch.channels_last if ndims == 2 else torch.channels_last_3d
    fast_block = AtrousBlock(ndims, 4, 6, norm=True)
    fast_block.load_state_dict(block.state_dict())
    fast_block = fast_block.to(memory_format=fmt).eval()
    with torch.inference_mode():
        fast = fast_block(x.contiguous(memory_format=fmt))
    assert float(ordinary.abs().max()) > 0.5
    assert torch.allclose(fast, ordinary, atol=1e-5, rtol=1e-5)


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def _tiny_2d():
    torch.manual_seed(5)
    model = RecResACNet(2).eval()
    with torch.no_grad():
        model.conv_out.weight.mul_(0.2)
    return model, DRDMMeta(ndims=2, grid=(32, 40), steps=80, name="tiny2d")


@pytest.mark.parametrize("loop", ["paper", "authors"])
def test_a_batch_of_8_equals_8_single_recoveries(loop):
    model, meta = _tiny_2d()
    meta = DRDMMeta(ndims=2, grid=meta.grid, steps=6 if loop == "authors" else 80, name="tiny2d")
    model.steps = meta.steps
    image = _slice((48, 60))  # resampled to the model grid and back
    levels, seeds = [2, 3, 5, 2, 4, 6, 3, 5], [11, 12, 13, 14, 15, 16, 17, 18]
    fields, events = _run(recover_batch(image, levels, seeds, model=model, meta=meta, loop=loop))
    steps = 6 if loop == "authors" else max(levels)
    assert [e.index for e in events if isinstance(e, Progress)] == list(range(steps))
    assert fields.shape == (8, 2, 48, 60)
    for i, (level, seed) in enumerate(zip(levels, seeds)):
        single = instance_field(image, level, model=model, meta=meta, seed=seed, loop=loop)
        assert float(np.abs(single).max()) > 1.0  # real motion
        assert np.abs(fields[i] - single).max() < 1e-4 * np.abs(single).max(), i
    assert not np.allclose(fields[0], fields[3])  # same level, other seed
    # chunks of 3 samples per pass: the same fields
    chunked, _ = _run(recover_batch(image, levels, seeds, model=model, meta=meta, loop=loop, chunk=3))
    assert np.abs(chunked - fields).max() < 1e-4 * np.abs(fields).max()


def test_batch_recovery_is_the_plain_loop_without_fold_repair():
    model, meta = _tiny_2d()
    image = _slice((32, 40))
    fields, _ = _run(recover_batch(image, [4, 2], [1, 2], model=model, meta=meta, fold_free=False))
    for i, (level, seed) in enumerate(((4, 1), (2, 2))):
        plain = plain_recovery(image, level, model, meta, seed=seed)[-1][1]
        assert np.abs(fields[i] - plain).max() < 1e-3 * np.abs(plain).max()


def test_batch_recovery_refuses_unpaired_levels_and_bad_levels():
    model, meta = _tiny_2d()
    image = _slice((32, 40))
    with pytest.raises(InputError, match="one seed per level"):
        _run(recover_batch(image, [2, 3], [1], model=model, meta=meta))
    with pytest.raises(InputError, match="level"):
        _run(recover_batch(image, [2, 81], [1, 2], model=model, meta=meta))
    with pytest.raises(InputError, match="chunk"):
        _run(recover_batch(image, [2, 3], [1, 2], model=model, meta=meta, chunk=0))


def test_the_compile_cache_goes_to_the_weights_cache_folder_unless_chosen(monkeypatch, tmp_path):
    from napari_deformdiff.core.drdm.bfloat16 import use_persistent_compile_cache

    monkeypatch.setenv("DEFORMDIFF_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_persistent_compile_cache() == str(tmp_path / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_persistent_compile_cache() == str(tmp_path / "mine")


def test_the_compile_cache_is_ours_after_torch_dynamo_wrote_its_temporary_default(monkeypatch, tmp_path):
    """Importing torch._dynamo (any earlier torch.compile) sets TORCHINDUCTOR_CACHE_DIR to a folder in /tmp:
    kernels cached there are gone after a reboot, so that value is replaced by the weights' cache folder."""
    from torch._inductor.runtime.runtime_utils import cache_dir as inductor_cache_dir
    from torch._inductor.runtime.runtime_utils import default_cache_dir

    from napari_deformdiff.core.drdm.bfloat16 import use_persistent_compile_cache

    monkeypatch.setenv("DEFORMDIFF_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch._dynamo's import leaves
    assert use_persistent_compile_cache() == str(tmp_path / "torchinductor")
    assert inductor_cache_dir() == str(tmp_path / "torchinductor")  # where Inductor now reads and writes
