"""On a CUDA GPU, each generator and the DDM training give what they give on the CPU (to float
tolerance, TF32 off), and mixed bfloat16 DRDM keeps float32's statistics. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.train import train_ddm
from napari_deformdiff.core.ddm.weights import load_ddm
from napari_deformdiff.core.drdm.generate import deform_instance, recover_batch
from napari_deformdiff.core.events import Frame, run_to_end
from napari_deformdiff.core.io.pairs import Pair
from napari_deformdiff.core.modiff.generate import generate_modiff

from .ddm_helpers import pair_volumes, tiny_config
from .drdm_export_helpers import tiny_drdm
from .modiff_helpers import first_frame, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _image(shape=(32, 32)):
    y, x = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(y - shape[0] / 2, x - shape[1] / 2)
    return (100.0 / (1 + np.exp(r - 8)) + 20.0 * np.sin(x / 3.0)).astype(np.float32)


def _last_field(events):
    return [e for e in events if isinstance(e, Frame)][-1].field


def test_drdm_instance_and_batch_on_the_gpu_equal_the_cpu():
    model, meta = tiny_drdm(2)
    image = _image(meta.grid)
    cpu = _last_field(deform_instance(image, 6, model=model, meta=meta, seed=3, loop="authors"))
    gpu = _last_field(deform_instance(image, 6, model=model.cuda(), meta=meta, seed=3, loop="authors",
                                      device="cuda"))
    scale = float(np.abs(cpu).max())
    assert scale > 0.05
    assert np.abs(gpu - cpu).max() < 1e-3 * scale
    batch = run_to_end(recover_batch(image, [6, 6], [3, 4], model=model.cuda(), meta=meta, loop="authors",
                                 device="cuda"))
    assert np.abs(batch[0] - cpu).max() < 1e-3 * scale
    other = _last_field(deform_instance(image, 6, model=model.cpu(), meta=meta, seed=4, loop="authors"))
    assert np.abs(batch[1] - other).max() < 1e-3 * scale


def test_drdm_bfloat16_on_the_gpu_keeps_the_float32_statistics():
    model, meta = tiny_drdm(2)
    model = model.cuda()
    image = _image(meta.grid)
    means = {}
    for precision in ("float32", "bfloat16"):
        fields = [_last_field(deform_instance(image, 10, model=model, meta=meta, seed=s, loop="authors",
                                              device="cuda", precision=precision)) for s in range(3)]
        assert all(np.isfinite(f).all() for f in fields)
        means[precision] = np.mean([np.linalg.norm(f, axis=0).mean() for f in fields])
        det = spatial.jacobian_determinant(torch.from_numpy(np.stack(fields)))
        assert float((det <= 0).float().mean()) <= 5e-4  # fold-free repair on the GPU too
    assert means["bfloat16"] == pytest.approx(means["float32"], rel=0.05)


def test_modiff_forecast_on_the_gpu_equals_the_cpu():
    first = first_frame()
    model = tiny_model()
    cpu = [e for e in generate_modiff(first, model=model, frames=5, steps=6, seed=2) if isinstance(e, Frame)]
    gpu = [e for e in generate_modiff(first, model=tiny_model().cuda(), frames=5, steps=6, seed=2, device="cuda")
           if isinstance(e, Frame)]
    assert len(cpu) == len(gpu) == 5
    peak = max(float(np.abs(f.image).max()) for f in cpu)
    for a, b in zip(cpu, gpu):
        assert np.abs(a.image - b.image).max() < 1e-3 * peak


@pytest.mark.parametrize("mix", [None, {"phantom": 0.4, "synth": 0.3, "real": 0.3}])
def test_ddm_training_on_the_gpu_follows_the_cpu_run(tmp_path, mix):
    data = [Pair(f"case{i}", *pair_volumes(shift=(3.0 + i, -2.0))) for i in range(2)]
    kw = dict(steps=3, config=tiny_config(2), lr=1e-3, seed=5, save_every=3, batch=3, mix=mix,
              real=[data[0].source] if mix else (), field_weight=1.0 if mix else None)
    cpu = [e.message for e in train_ddm(data, tmp_path / "cpu.safetensors", **kw) if getattr(e, "message", "").startswith("loss")]
    gpu = [e.message for e in train_ddm(data, tmp_path / "gpu.safetensors", device="cuda", **kw)
           if getattr(e, "message", "").startswith("loss")]
    losses = [[float(m.split()[1]) for m in run] for run in (cpu, gpu)]
    assert len(losses[0]) == 3 and np.allclose(losses[0], losses[1], rtol=1e-3, atol=1e-4)
    a, _ = load_ddm(tmp_path / "cpu.safetensors", ndims=2)
    b, _ = load_ddm(tmp_path / "gpu.safetensors", ndims=2)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y.cpu(), atol=1e-4 * max(1.0, float(x.abs().max()))), k
