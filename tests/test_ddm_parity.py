"""DDM deformation module: parity with the authors' network, and exact conversion of our old files.

The reference below is written from ../shared/reference/methods.md (section 1, "Deformation module
G_def" and "Spatial transformer") with torch.nn.functional only, reading the state dict by key
name: a VoxelMorph-1-style U-Net whose up blocks compute conv(cat[skip, upconv(x)]), a head
without activation, and a pull warp of (source + 1) / 2 with zero padding and the align_corners
grid 2 * (index + u) / (size - 1) - 1. Our code before the fix concatenated cat[upconv(x), skip];
`skip_first=False` gives that old network, so the conversion of old weights is checked against it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from napari_deformdiff.core.weights.files import read_state, save_safetensors
from napari_deformdiff.core.ddm.train import moments_skip_first
from napari_deformdiff.core.ddm.weights import load_ddm, save_ddm, upgrade_ddm_file
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.ddm.nets.ddm import DDM, DDMConfig
from napari_deformdiff.core.ddm.nets.field_unet import skip_first_from_up_first

TSV = Path(__file__).parent / "data" / "ddm_official_state_dict.tsv"
UP_CONVS = [f"field_fn.upconv{k}.block.block.0.weight" for k in (1, 2, 3, 4)]
SHAPES = {2: (32, 32), 3: (16, 32, 32)}  # tiny sizes, divisible by 16


def reference_field(state: dict[str, torch.Tensor], x: torch.Tensor, *, skip_first: bool = True) -> torch.Tensor:
    """G_def of methods.md on x = cat[source, code]: (B, 2, *S) -> displacement (B, ndims, *S)."""
    nd = x.ndim - 2
    conv = {2: F.conv2d, 3: F.conv3d}[nd]
    up_conv = {2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]

    def p(key):
        return state["field_fn." + key]

    def conv_lrelu(name, h, stride=1):  # conv k3 p1 + LeakyReLU(0.2)
        return F.leaky_relu(conv(h, p(name + ".weight"), p(name + ".bias"), stride=stride, padding=1), 0.2)

    def up(name, h, skip):  # ConvTranspose(k3, s2, p1, output_padding 1), concat, conv + LeakyReLU
        h = up_conv(h, p(name + ".upconv.weight"), p(name + ".upconv.bias"), stride=2, padding=1, output_padding=1)
        return conv_lrelu(name + ".block.block.0", torch.cat([skip, h] if skip_first else [h, skip], dim=1))

    e0 = conv_lrelu("inconv.block.block.0", x)  # 2 -> 16
    e1 = conv_lrelu("downconv1.block.block.0", e0, 2)  # 16 -> 32, 1/2
    e2 = conv_lrelu("downconv2.block.block.0", e1, 2)  # 1/4
    e3 = conv_lrelu("downconv3.block.block.0", e2, 2)  # 1/8
    e4 = conv_lrelu("downconv4.block.block.0", e3, 2)  # 1/16
    d = up("upconv1", e4, e3)
    d = up("upconv2", d, e2)
    d = up("upconv3", d, e1)
    d = conv_lrelu("keepblock.block.0", d)  # 32 -> 8
    d = up("upconv4", d, e0)  # full size, skip of the first conv
    return conv(d, p("outconv.block.weight"), p("outconv.block.bias"), padding=1)  # no activation


def reference_frame(source: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """(source + 1) / 2 pulled through the voxel field: linear, zeros outside, align_corners grid."""
    sizes = source.shape[2:]
    index = torch.meshgrid(*[torch.arange(n, dtype=ddf.dtype) for n in sizes], indexing="ij")
    coords = [2 * (index[i] + ddf[:, i]) / (sizes[i] - 1) - 1 for i in range(len(sizes))]
    grid = torch.stack(coords[::-1], dim=-1)  # grid_sample takes (x, y[, z]): the last axis first
    image = ((source + 1) / 2).expand(ddf.shape[0], *source.shape[1:])
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def official_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in TSV.read_text(encoding="utf-8").splitlines():
        key, shape = line.split("\t")[:2]
        out[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


def random_state(ndims: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights (He-scaled, heads scaled up so the fields move voxels) in the authors' layout.

    3D: every key and shape of the authors' checkpoint list; 2D: the same names with 2D kernels.
    The schedule buffers and the sinusoid frequencies keep their values.
    """
    own = DDM(DDMConfig.default(ndims)).state_dict()
    shapes = official_shapes() if ndims == 3 else {k: tuple(v.shape) for k, v in own.items()}
    assert set(shapes) == set(own)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if not key.startswith(("denoise_fn.", "field_fn.")) or key.endswith("inv_freq"):
            state[key] = own[key].clone()
        elif len(shape) > 2:  # conv kernels: fan-in of the input channels and kernel
            fan_in = shape[0 if ".upconv.weight" in key else 1] * int(torch.tensor(shape[2:]).prod())
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            scale = 1.0 if "norm" in key and key.endswith("weight") else 0.0  # GroupNorm scales near 1
            state[key] = torch.randn(shape, generator=g) * 0.1 + scale
    state["denoise_fn.final_conv.block.3.weight"] *= 8.0  # a code of about the source's size
    state["field_fn.outconv.block.weight"] *= 4.0  # fields of a few voxels
    return state


def pair(ndims: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 1, *SHAPES[ndims])
    smooth = (torch.rand(shape, generator=g) * 2 - 1)
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[ndims]
    source = pool(smooth, 3, stride=1, padding=1) * 2  # some structure to warp
    return source.clamp(-1, 1), (torch.rand(shape, generator=g) * 2 - 1)


GAMMAS = torch.tensor([0.0, 0.5, 1.0])


@pytest.mark.parametrize("ndims", [2, 3])
def test_an_authors_checkpoint_computes_the_authors_fields_and_frames(tmp_path, ndims):
    state = random_state(ndims, seed=10 + ndims)
    path = tmp_path / "I72000_E800_gen_G.pth"  # the authors' file: a plain state dict, no metadata
    torch.save(state, path)
    model, meta = load_ddm(path, ndims=ndims)
    assert "field_concat" not in meta
    source, target = pair(ndims, seed=ndims)
    with torch.no_grad():
        code = model.code(source, target)
        ours = model.field(source, GAMMAS.reshape(-1, *[1] * (ndims + 1)) * code)
        fast = model.field_fn.scaled_code_fields(source, code, GAMMAS)  # the path generation takes
        frames = model.warp_unit(source, ours)
        x = torch.cat([source.expand(3, *source.shape[1:]), GAMMAS.reshape(-1, *[1] * (ndims + 1)) * code], 1)
        ref = reference_field(state, x)
        ref_frames = reference_frame(source, ref)
        old_order = reference_field(state, x, skip_first=False)
    assert ours.shape == (3, ndims, *SHAPES[ndims])
    # the fields are large enough to tell the two networks apart: several voxels at gamma = 1
    assert 1.0 < float(ref[2].abs().mean()) and float(ref.abs().max()) < 50
    assert float((ref[2] - ref[0]).abs().mean()) > 0.5  # gamma matters
    assert float((old_order - ref).abs().max()) > 1.0  # the concatenation order matters
    assert float(ref_frames.std()) > 0.1
    assert torch.allclose(ours, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    assert torch.allclose(fast, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    assert torch.allclose(frames, ref_frames, rtol=0, atol=1e-5)


@pytest.mark.parametrize("ndims", [2, 3])
def test_converted_old_weights_compute_what_the_old_network_computed(ndims):
    old = random_state(ndims, seed=20 + ndims)  # weights trained with cat[up, skip]
    new = skip_first_from_up_first(old)
    assert [k for k in old if not torch.equal(old[k], new[k])] == UP_CONVS
    # upconv4 reads 8 upsampled + 16 skip channels: old [up 0:8 | skip 8:24] -> new [skip 0:16 | up 16:24]
    w_old, w_new = old["field_fn.upconv4.block.block.0.weight"], new["field_fn.upconv4.block.block.0.weight"]
    assert torch.equal(w_new[:, 16:], w_old[:, :8]) and torch.equal(w_new[:, :16], w_old[:, 8:])
    source, target = pair(ndims, seed=5)
    model = DDM(DDMConfig.default(ndims)).eval()
    model.load_state_dict(new, strict=True)
    stale = DDM(DDMConfig.default(ndims)).eval()
    stale.load_state_dict(old, strict=True)  # what a plain load of an old file would compute
    with torch.no_grad():
        code = model.code(source, target)
        gc = GAMMAS.reshape(-1, *[1] * (ndims + 1)) * code
        x = torch.cat([source.expand(3, *source.shape[1:]), gc], 1)
        before = reference_field(old, x, skip_first=False)
        before_frames = reference_frame(source, before)
        after = model.field(source, gc)
        after_frames = model.warp_unit(source, after)
        stale_field = stale.field(source, gc)
    assert float(before.abs().mean()) > 0.5  # voxels
    assert float((stale_field - before).abs().max()) > 1.0
    assert torch.allclose(after, before, rtol=0, atol=1e-5 * float(before.abs().max()))
    assert torch.allclose(after_frames, before_frames, rtol=0, atol=1e-5)


def test_our_old_files_are_converted_on_load_and_can_be_rewritten(tmp_path):
    ndims = 2
    config = DDMConfig.default(ndims)
    old = random_state(ndims, seed=31)
    meta = {"model": "ddm", "config": config.to_json(), "step": "700", "seed": "2"}  # no field_concat
    old_file = save_safetensors(tmp_path / "mine.safetensors", old, meta)
    source, target = pair(ndims, seed=7)
    model, got = load_ddm(old_file, ndims=ndims)
    assert got["step"] == "700" and "field_concat" not in got
    with torch.no_grad():
        code = model.code(source, target)
        ours = model.field(source, code)
        before = reference_field(old, torch.cat([source, code], 1), skip_first=False)
    assert float(before.abs().mean()) > 0.5  # voxels
    assert torch.allclose(ours, before, rtol=0, atol=1e-5 * float(before.abs().max()))

    out = tmp_path / "mine_new.safetensors"
    assert upgrade_ddm_file(old_file, out) is True
    state, new_meta = read_state(out)
    assert new_meta == {**meta, "field_concat": "skip_first"}
    assert set(state) == set(old)
    assert [k for k in old if not torch.equal(old[k], state[k])] == UP_CONVS
    assert upgrade_ddm_file(out) is False  # already current: left alone
    again, _ = load_ddm(out, ndims=ndims)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))

    saved = save_ddm(model, tmp_path / "saved.safetensors", step="1")
    assert read_state(saved)[1]["field_concat"] == "skip_first"
    reloaded, _ = load_ddm(saved, ndims=ndims)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))

    future = save_safetensors(tmp_path / "future.safetensors", old, {**meta, "field_concat": "interleaved"})
    with pytest.raises(InputError, match="unknown deformation-module layout"):
        load_ddm(future, ndims=ndims)


def test_resumed_adam_moments_follow_the_converted_weights():
    """Two Adam steps of the old network equal one old step, conversion, then one new step."""
    ndims = 2
    model = DDM(DDMConfig.default(ndims))
    names = [n for n, _ in model.named_parameters()]
    start = random_state(ndims, seed=41)
    x = torch.randn(1, 2, *SHAPES[ndims], generator=torch.Generator().manual_seed(1))

    def loss(state, skip_first):
        return reference_field(state, x, skip_first=skip_first).square().mean()

    old = {n: start[n].clone().requires_grad_(n.startswith("field_fn.")) for n in names}
    old_optim = torch.optim.Adam([old[n] for n in names], lr=1e-2, betas=(0.5, 0.999))
    for step in range(2):
        old_optim.zero_grad()
        loss(old, skip_first=False).backward()
        old_optim.step()
        if step == 0:
            saved = {k: v.detach().clone() for k, v in old.items()}
            saved_optim = copy.deepcopy(old_optim.state_dict())

    def resume(convert_moments: bool) -> dict[str, torch.Tensor]:
        resumed = DDM(DDMConfig.default(ndims))
        resumed.load_state_dict({**start, **skip_first_from_up_first(saved)}, strict=True)
        optim = torch.optim.Adam(resumed.parameters(), lr=1e-2, betas=(0.5, 0.999))
        optim.load_state_dict(saved_optim)
        if convert_moments:
            moments_skip_first(resumed, optim)
        optim.zero_grad()
        resumed.field_fn(x).square().mean().backward()
        optim.step()
        return {n: p.detach() for n, p in resumed.named_parameters()}

    expected = skip_first_from_up_first({n: old[n].detach() for n in names})
    got = resume(True)
    wrong = resume(False)
    worst = max(float((got[n] - expected[n]).abs().max()) for n in UP_CONVS)
    assert worst < 1e-5  # float rounding: 1.6e-6 with AVX-512 kernels, < 1e-6 with AVX2; 1e-3 x lr
    assert max(float((wrong[n] - expected[n]).abs().max()) for n in UP_CONVS) > 1e-3
    assert all(torch.allclose(got[n], expected[n], rtol=0, atol=1e-5) for n in names)
