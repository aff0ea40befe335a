"""DDM networks: the authors' checkpoint layout, the documented architecture, exact speed-ups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deformdiff.core.ddm.nets.ddm import DDM, DDMConfig, linear_schedule
from napari_deformdiff.core.ddm.weights import load_ddm, save_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.nn.inference import fast_copy

from .ddm_helpers import tiny_model

# Key names and shapes of the authors' checkpoint (from ../shared/reference: facts, no weights).
TSV = Path(__file__).parent / "data" / "ddm_official_state_dict.tsv"


def official_layout():
    lines = TSV.read_text(encoding="utf-8").splitlines()
    out = {}
    for line in lines:
        key, shape = line.split("\t")[:2]
        out[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


def test_state_dict_matches_the_authors_layout_key_for_key():
    ref = official_layout()
    model = DDM()
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ref) == 230
    assert own == ref
    assert sum(p.numel() for p in model.denoise_fn.parameters()) == 715_665
    assert sum(p.numel() for p in model.field_fn.parameters()) == 361_299


def test_an_authors_checkpoint_loads_strictly_and_gives_the_same_outputs(tmp_path):
    ref = official_layout()
    g = torch.Generator().manual_seed(3)
    source_model = DDM()
    state = {k: (torch.randn(shape, generator=g) * 0.05) for k, shape in ref.items()}
    state.update(linear_schedule(2000, 1e-6, 1e-2))
    state["denoise_fn.time_mlp.0.inv_freq"] = source_model.state_dict()["denoise_fn.time_mlp.0.inv_freq"]
    path = tmp_path / "I72000_E800_gen_G.pth"
    torch.save(state, path)
    model, meta = load_ddm(path, ndims=3)
    assert meta == {"source": str(path)}
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    source_model.load_state_dict(state, strict=True)
    x = torch.rand(1, 1, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.code(x, x), source_model.eval().code(x, x))

    wrong = dict(state)
    wrong.pop("field_fn.upconv4.block.block.0.bias")
    wrong["denoise_fn.extra"] = torch.zeros(1)
    bad = tmp_path / "wrong.pth"
    torch.save(wrong, bad)
    with pytest.raises(InputError, match=r"not a DDM checkpoint of this layout: 1 missing .*1 unexpected"):
        load_ddm(bad, ndims=3)
    with pytest.raises(InputError, match="3D DDM model but the image is 2D"):
        load_ddm(path, ndims=2)


def test_time_embedding_is_the_sinusoid_of_the_integer_step():
    emb = DDM().denoise_fn.time_mlp[0]
    t = torch.tensor([0, 7, 1999])
    freqs = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    angles = t.numpy()[:, None] * freqs[None]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    assert np.allclose(emb(t).numpy(), expected, atol=1e-4)


def test_schedule_is_linear_from_1e6_to_1e2_over_2000_steps():
    s = DDM().state_dict()
    assert torch.allclose(s["betas"], torch.linspace(1e-6, 1e-2, 2000), atol=1e-9)
    abar = torch.cumprod(1 - s["betas"].double(), 0)
    assert torch.allclose(s["alphas_cumprod"].double(), abar, rtol=1e-5)
    assert s["alphas_cumprod_prev"][0] == 1.0 and s["posterior_variance"][0] == 0.0
    beta, abar_prev = s["betas"][5].double(), abar[4]
    assert float(s["posterior_variance"][5]) == pytest.approx(float(beta * (1 - abar_prev) / (1 - abar[5])), rel=1e-5)


def test_scaled_code_fields_equal_the_plain_forward_for_every_gamma():
    model = tiny_model(3)
    for p in model.field_fn.parameters():
        p.data.normal_(0, 0.2)
    s, c = torch.randn(1, 1, 16, 32, 32), torch.randn(1, 1, 16, 32, 32)
    gammas = torch.tensor([0.0, 0.25, 1.0])
    with torch.no_grad():
        fast = model.field_fn.scaled_code_fields(s, c, gammas)
        plain = torch.cat([model.field(s, g * c) for g in gammas])
    assert torch.allclose(fast, plain, atol=1e-5 * float(plain.abs().max()))


def test_fast_inference_copy_gives_the_same_outputs_and_leaves_the_model_alone():
    torch.manual_seed(1)
    model = DDM().eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fast_copy(model)
    s, t = torch.rand(1, 1, 16, 32, 32) * 2 - 1, torch.rand(1, 1, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        for a, b in ((fast.code(s, t), model.code(s, t)), (fast.field(s, t), model.field(s, t))):
            # other kernels (oneDNN, channels-last) sum in another order: float rounding only
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_our_checkpoints_round_trip_with_config_and_refuse_other_models(tmp_path):
    from napari_deformdiff.core.weights.files import save_safetensors

    model = tiny_model(2, seed=4)
    path = save_ddm(model, tmp_path / "tiny.safetensors", step="12")
    loaded, meta = load_ddm(path, ndims=2)
    assert loaded.config == model.config and meta["step"] == "12"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(Exception, match="already exists"):
        save_ddm(model, path)
    other = save_safetensors(tmp_path / "drdm.safetensors", {"w": torch.zeros(1)}, {"model": "drdm"})
    with pytest.raises(InputError, match=r"another model \(drdm\)"):
        load_ddm(other, ndims=2)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="could not be read as plain weights"):
        load_ddm(tmp_path / "junk.pth", ndims=2)


def test_default_config_2d_and_3d():
    assert DDMConfig.default(3).grid == (32, 128, 128) and DDMConfig.default(3).spacing == (3.15, 1.5, 1.5)
    assert DDMConfig.default(2).ndims == 2
    assert DDMConfig.from_json(DDMConfig.default(2).to_json()) == DDMConfig.default(2)
