"""DRDM recovery in mixed bfloat16 (models/drdm_bf16.py): close to float32 pass by pass, the same
recovery statistics with the published weights, cached per set of weights, seeded, and an
uncompiled fallback when torch.compile fails."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm import bfloat16 as drdm_bf16
from napari_deformdiff.core.drdm.augment import ExportSettings
from napari_deformdiff.core.drdm.bfloat16 import Bfloat16Recovery, bfloat16_runner
from napari_deformdiff.core.drdm.evaluate import field_stats, phantom_images
from napari_deformdiff.core.drdm.forward import sample_forward
from napari_deformdiff.core.drdm.generate import deform_instance, instance_field
from napari_deformdiff.core.drdm.weights import load_drdm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.nn.model_grid import unit_range

from .drdm_export_helpers import tiny_drdm
from .shared_data import MISSING_OFFICIAL
from .shared_data import OFFICIAL_DRDM as OFFICIAL

needs_official = pytest.mark.skipif(not OFFICIAL.is_file(),
                                    reason=MISSING_OFFICIAL)
needs_bf16 = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                                reason="this CPU has no native bfloat16")
CPU = torch.device("cpu")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _moved_slice(level=30, seed=0):
    image = phantom_images(2, (256, 256), 1, seed=123)[0]
    x0 = torch.from_numpy(unit_range(image)[0])[None, None]
    return spatial.warp(x0, sample_forward((256, 256), level, seed=seed).ddf, padding_mode="border")


@needs_official
@needs_bf16
def test_mixed_bfloat16_passes_stay_close_to_float32_where_plain_bfloat16_does_not():
    model, _ = load_drdm(OFFICIAL, ndims=2)
    x = _moved_slice()
    runner = bfloat16_runner(model, CPU)
    plain = copy.deepcopy(model).to(torch.bfloat16)  # everything, the input image included, in bfloat16
    with torch.inference_mode():
        for t in (5, 40, 79):
            tt = torch.tensor([t])
            ref = model.single(x, tt)
            mixed = runner.net.single(x, tt)
            assert mixed.dtype == torch.float32
            all_bf16 = plain.single(x.to(torch.bfloat16), tt).float()
            # measured: mixed 1.6-5.8 %, all-bfloat16 about 14 %
            assert _rel(mixed, ref) < 0.07
            assert _rel(all_bf16, ref) > 2 * _rel(mixed, ref)
            full = runner(x, tt)  # the two recursive passes, compiled
            assert full.dtype == torch.float32 and _rel(full, model(x, tt)) < 0.07


@needs_official
@needs_bf16
def test_bfloat16_recovery_has_the_statistics_of_float32():
    # The published network is chaotic (see test_drdm_fast_recovery): trajectories part ways, so
    # what must agree is what the recovery does to the random field, seed by seed and on average.
    model, meta = load_drdm(OFFICIAL, ndims=2)
    image = phantom_images(2, (256, 256), 1, seed=123)[0]
    level, rows = 20, []
    for seed in range(3):
        forward = field_stats(sample_forward((256, 256), level, seed=seed).ddf[0])
        f32 = instance_field(image, level, model=model, meta=meta, seed=seed)
        b16 = instance_field(image, level, model=model, meta=meta, seed=seed, precision="bfloat16")
        a, b = field_stats(f32), field_stats(b16)
        rows.append((forward, a, b))
        assert a[1] < 0.7 * forward[1] and b[1] < 0.7 * forward[1]  # both recover: mean displacement down
        assert np.sqrt(((f32 - b16) ** 2).mean() / (f32**2).mean()) < 0.35  # measured 0.12-0.19
    mean32 = np.mean([r[1][1] for r in rows])
    mean16 = np.mean([r[2][1] for r in rows])
    max32 = np.mean([r[1][0] for r in rows])
    max16 = np.mean([r[2][0] for r in rows])
    assert abs(mean16 - mean32) < 0.1 * mean32  # measured 2 %
    assert abs(max16 - max32) < 0.15 * max32  # measured 4 %


@needs_bf16
def test_bfloat16_runs_are_seeded_cached_per_weights_and_streamed():
    model, meta = tiny_drdm(2, seed=3)
    image = np.random.default_rng(0).random((40, 36)).astype(np.float32) * 100

    def run(seed, m=model):
        events = list(deform_instance(image, 6, model=m, meta=meta, seed=seed, precision="bfloat16"))
        return events, [e for e in events if isinstance(e, Frame)]

    _, first = run(1)
    assert len(first) == 7 and first[-1].field.dtype == np.float32
    _, again = run(1)
    _, other = run(2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.field, b.field)
        np.testing.assert_array_equal(a.image, b.image)
    assert np.abs(first[-1].field - other[-1].field).max() > 0.1
    runner = bfloat16_runner(model, CPU)
    assert runner.ready  # compiled before the first step, then reused
    assert bfloat16_runner(copy.deepcopy(model), CPU) is runner  # same weights, same runner
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.conv_out.bias.add_(1e-3)
    assert bfloat16_runner(changed, CPU) is not runner
    # the float32 recovery of the same draw starts from the same forward field
    f32 = [e for e in deform_instance(image, 6, model=model, meta=meta, seed=1) if isinstance(e, Frame)]
    np.testing.assert_allclose(f32[0].field, first[0].field, atol=1e-5)


@needs_bf16
def test_a_failing_compiler_falls_back_to_the_uncompiled_network(monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(drdm_bf16.torch, "compile", broken_compile)
    model, _ = tiny_drdm(2, seed=5)
    runner = Bfloat16Recovery(model, CPU)
    x = torch.rand(1, 1, 32, 32)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="uncompiled"):
        out = runner(x, torch.tensor([3]))
    assert not runner.compiled
    with torch.inference_mode():
        expected = runner.net(x, torch.tensor([3]))  # the mixed network's own (uncompiled) call
    torch.testing.assert_close(out, expected)


def test_unknown_precisions_are_refused_before_any_work():
    model, meta = tiny_drdm(2)
    with pytest.raises(InputError, match="precision"):
        list(deform_instance(np.ones((32, 32), np.float32), 5, model=model, meta=meta, precision="float16"))
    with pytest.raises(InputError, match="precision"):
        ExportSettings(levels=(5,), precision="half")
    events = deform_instance(np.ones((32, 32), np.float32), 5, model=model, meta=meta, precision="float16")
    with pytest.raises(InputError, match="precision"):
        next(events)  # refused before the first event
