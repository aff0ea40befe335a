"""DDM's first frame and the inference copy's fast paths: the same numbers as the plain model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.generate import gamma_schedule, generate_ddm, inference_copy
from napari_deformdiff.core.ddm.weights import save_ddm
from napari_deformdiff.core.events import Frame, Progress
from napari_deformdiff.core.nn.inference import OneDNNConv, as_channels_last, fast_copy

from .ddm_helpers import tiny_model
from .test_ddm_generate import frames_of, lively_model, pair_3d, plain_loop_fields

CL = torch.channels_last_3d


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=CL) and not x.is_contiguous()


@pytest.mark.parametrize("on_model_grid", [False, True])
@pytest.mark.parametrize("loop", [False, True])
def test_the_first_frame_is_the_plain_models_frame_at_gamma_zero(on_model_grid, loop):
    source, target, labels = pair_3d(on_model_grid)
    model = lively_model()
    first = next(e for e in generate_ddm(source, target, fold_free=False, frames=6, loop=loop, labels=labels,
                                         model=model)
                 if isinstance(e, Frame))
    # today's frame 0: the unmodified model's deformation module on cat[S, 0 * code], by the plain loop
    plain = plain_loop_fields(model, source, target, [0.0])[0]
    assert float(plain.abs().max()) > 0.5  # this model's field at gamma 0 is far from zero
    assert first.index == 0 and first.info["gamma"] == 0.0
    assert np.allclose(first.field, plain.numpy(), rtol=0, atol=1e-5 * float(plain.abs().max()))
    s_in = torch.from_numpy(source.data)[None, None]
    image = spatial.warp(s_in, plain[None], padding_mode="border")[0, 0].numpy()
    assert np.abs(first.image - image).max() < 1e-4
    lab = spatial.warp(torch.from_numpy(labels.data)[None, None], plain[None], mode="nearest",
                       padding_mode="border")[0, 0].numpy()
    assert np.mean(first.labels != lab) < 1e-3  # nearest: a voxel exactly between two may flip


def test_before_the_first_frame_only_the_deformation_module_runs_once():
    source, target, _ = pair_3d()
    model = lively_model()
    calls = []
    model.denoise_fn.register_forward_hook(lambda m, i, o: calls.append("diffusion"))
    model.field_fn.outconv.register_forward_hook(lambda m, i, o: calls.append(("deformation", o.shape[0])))
    events = generate_ddm(source, target, frames=16, model=model)
    for event in events:
        if isinstance(event, Frame):
            break
    assert event.index == 0 and calls == [("deformation", 1)]
    rest = list(events)
    assert [type(rest[0]).__name__, rest[0].message] == ["Progress", "diffusion pass"]
    assert calls[1] == "diffusion" and [f.index for f in frames_of(rest)] == list(range(1, 16))


def test_zero_code_field_is_the_field_of_a_zero_code():
    model = lively_model()
    s = torch.rand(2, 1, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model.field(s, torch.zeros_like(s))
        assert float(expected.abs().max()) > 0.5
        got = model.field_fn.zero_code_field(s)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("ndims", [2, 3])
def test_channels_last_onednn_copy_equals_the_plain_model(ndims):
    model = lively_model(ndims)
    shape = model.config.grid
    g = torch.Generator().manual_seed(5)
    s, t = (torch.rand(1, 1, *shape, generator=g) * 2 - 1 for _ in range(2))
    gammas = torch.tensor([0.0, 0.4, 1.0])
    fast = fast_copy(model)
    with torch.inference_mode():
        code = model.code(s, t)
        plain = torch.cat([model.field(s, float(x) * code) for x in gammas])
        fast_code = fast.code(as_channels_last(s), as_channels_last(t))
        batched = fast.field_fn.scaled_code_fields(as_channels_last(s), fast_code, gammas)
        zero = fast.field_fn.zero_code_field(as_channels_last(s))
    scale = float(plain.abs().max())
    assert scale > 0.5
    assert torch.allclose(fast_code, code, rtol=0, atol=1e-5 * float(code.abs().max()))
    assert torch.allclose(batched, plain, rtol=0, atol=1e-5 * scale)
    assert torch.allclose(zero[0], plain[0], rtol=0, atol=1e-5 * scale)


def test_the_3d_copy_runs_its_decoder_channels_last_from_a_one_channel_source():
    """A one-channel tensor is contiguous in both layouts; the first conv must still hand the
    decoder channels-last features (NCDHW ran it 1.5-2x slower on the CPU)."""
    model = lively_model(3)
    fast = fast_copy(model)
    seen = []
    fast.field_fn.downconv1.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    s = as_channels_last(torch.rand(1, 1, 16, 32, 32) * 2 - 1)
    with torch.inference_mode():
        fast.field_fn.zero_code_field(s)
        fast.field_fn.scaled_code_fields(s, torch.rand_like(s), torch.tensor([0.5, 1.0]))
    assert len(seen) == 2 and all(_is_channels_last(x) and _is_channels_last(y) for x, y in seen)


@pytest.mark.parametrize("shape", [(1, 3, 6, 8, 10), (2, 3, 9, 11)])
def test_fused_conv_leaky_relu_equals_conv_then_leaky_relu(shape):
    layer = (torch.nn.Conv3d if len(shape) == 5 else torch.nn.Conv2d)(3, 5, 3, padding=1, stride=2)
    x = torch.randn(*shape)
    fused = OneDNNConv(layer)
    with torch.no_grad():
        expected = torch.nn.functional.leaky_relu(layer(x), 0.2)
        assert (expected < 0).any() and (expected > 0).any()
        assert torch.allclose(fused.leaky_relu(x, 0.2), expected, rtol=0, atol=1e-5)
        half = layer.weight[:, :2]  # a slice of the input channels, bias kept
        expected = torch.nn.functional.leaky_relu(layer._conv_forward(x[:, :2], half, layer.bias), 0.2)
        assert torch.allclose(fused.leaky_relu(x[:, :2], 0.2, half), expected, rtol=0, atol=1e-5)


def test_the_inference_copy_is_kept_until_the_weights_change():
    model = lively_model()
    first = inference_copy(model)
    assert inference_copy(model) is first
    s = as_channels_last(torch.rand(1, 1, 16, 32, 32) * 2 - 1)
    with torch.no_grad():
        before = first.field_fn.zero_code_field(s)
        model.field_fn.outconv.block.bias.add_(torch.tensor([1.0, -2.0, 0.5]))
    second = inference_copy(model)
    assert second is not first
    with torch.no_grad():
        after = second.field_fn.zero_code_field(s)
    shift = (after - before).mean(dim=(2, 3, 4))[0]
    assert torch.allclose(shift, torch.tensor([1.0, -2.0, 0.5]), atol=1e-5)


def test_weights_read_again_when_the_file_changes(tmp_path):
    source, target, _ = pair_3d()
    path = tmp_path / "tiny.safetensors"
    one, two = lively_model(seed=3), lively_model(seed=4)

    def first_field(weights):
        return next(e for e in generate_ddm(source, target, fold_free=False, frames=3, weights=weights)
                    if isinstance(e, Frame)).field

    save_ddm(one, path)
    a = first_field(path)
    assert np.array_equal(first_field(path), a)
    path.unlink()
    save_ddm(two, path)
    b = first_field(path)
    expected = plain_loop_fields(two, source, target, [0.0])[0].numpy()
    assert np.abs(b - a).max() > 0.1
    assert np.allclose(b, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_frames_keep_their_indices_and_gammas_on_every_path():
    source, target, _ = pair_3d()
    model = lively_model()
    for anchors in (None, 0):
        for loop in (False, True):
            events = list(generate_ddm(source, target, fold_free=False, frames=7, loop=loop, model=model,
                                       anchors=anchors))
            frames = frames_of(events)
            assert [f.index for f in frames] == list(range(7)) and all(f.total == 7 for f in frames)
            assert [f.info["gamma"] for f in frames] == pytest.approx(list(gamma_schedule(7, loop)))
            assert sum(isinstance(e, Progress) and e.message == "diffusion pass" for e in events) == 1


def test_a_2d_model_takes_the_same_first_frame_path():
    from .ddm_helpers import pair_volumes

    source, target, _ = pair_volumes()
    model = tiny_model(2, seed=2)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    first = next(e for e in generate_ddm(source, target, fold_free=False, frames=4, model=model)
                 if isinstance(e, Frame))
    plain = plain_loop_fields(model, source, target, [0.0])[0]
    assert float(plain.abs().max()) > 0.5
    assert np.allclose(first.field, plain.numpy(), rtol=0, atol=1e-5 * float(plain.abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_the_gpu_path_gives_the_cpu_frames():
    """On a GPU: no oneDNN, no anchors (every frame computed); the first frame and all the others are
    the plain CPU model's to float tolerance (TF32 off, as torch's default for convolutions is on)."""
    source, target, labels = pair_3d()
    model = lively_model()
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu = frames_of(generate_ddm(source, target, frames=6, labels=labels, model=model.cuda(), device="cuda",
                                     fold_free=False))
    finally:
        torch.backends.cudnn.allow_tf32 = True
    plain = plain_loop_fields(model.cpu(), source, target, gamma_schedule(6))
    scale = float(plain.abs().max())
    assert [f.index for f in gpu] == list(range(6))
    for f, ddf in zip(gpu, plain):
        assert np.allclose(f.field, ddf.numpy(), rtol=0, atol=1e-4 * scale)
        image = spatial.warp(torch.from_numpy(source.data)[None, None], ddf[None], padding_mode="border")[0, 0].numpy()
        assert np.abs(f.image - image).max() < 1e-3
