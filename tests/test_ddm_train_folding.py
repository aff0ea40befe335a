"""The folding term of DDM training (off by default): a penalty on det(I + grad u) below 0.1 of the end field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.nets.ddm import DDM
from napari_deformdiff.core.ddm.train import train_ddm
from napari_deformdiff.core.ddm.weights import load_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.io.pairs import Pair
from napari_deformdiff.core.nn.losses import folding_penalty

from .ddm_helpers import pair_volumes, tiny_config


def numpy_det(u: np.ndarray) -> np.ndarray:
    """det(I + grad u) of one (n, *S) field with numpy.gradient, written here from the definition."""
    n = u.shape[0]
    jac = np.empty((n, n, *u.shape[1:]))
    for i in range(n):
        for j in range(n):
            jac[i, j] = np.gradient(u[i], axis=j, edge_order=1) + (i == j)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def bump(shape, strength: float) -> torch.Tensor:
    """A Gaussian push along the last axis, `strength` x its width at the centre: det(I + grad u) falls
    to 1 - 0.61 x strength, so it folds above strength 1.65."""
    sigma = shape[-1] / 6
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) - (s - 1) / 2 for s in shape], indexing="ij")
    r2 = sum(g * g for g in grids[-2:])
    u = np.zeros((len(shape), *shape))
    u[-1] = strength * sigma * np.exp(-r2 / (2 * sigma**2))
    return torch.from_numpy(u[None]).float()


@pytest.mark.parametrize("shape", [(40, 40), (8, 24, 24)])
def test_folding_penalty_is_the_mean_shortfall_of_the_determinant_below_the_floor(shape):
    u = bump(shape, 4.0)
    det = numpy_det(u[0].double().numpy())
    assert (det <= 0).mean() > 0.01  # the swirl folds
    expected = np.maximum(0.1 - det, 0).mean()
    assert float(folding_penalty(u)) == pytest.approx(expected, rel=1e-4)
    assert float(folding_penalty(u, min_det=0.5)) == pytest.approx(np.maximum(0.5 - det, 0).mean(), rel=1e-4)
    gentle = bump(shape, 0.3)
    assert numpy_det(gentle[0].double().numpy()).min() > 0.1
    assert float(folding_penalty(gentle)) == 0.0


def test_descending_the_folding_penalty_unfolds_a_field():
    u = bump((40, 40), 4.0).requires_grad_(True)
    start = float(spatial.folding_ratio(u.detach()))
    optim = torch.optim.Adam([u], lr=0.05)
    for _ in range(300):
        optim.zero_grad()
        folding_penalty(u).backward()
        optim.step()
    assert start > 0.02
    assert float(spatial.folding_ratio(u.detach())) == 0.0


def test_the_term_penalises_the_end_field_inference_makes_and_is_off_by_default():
    torch.manual_seed(0)
    model = DDM(dataclasses.replace(tiny_config(2), lambda_fold=0.0))
    g = torch.Generator().manual_seed(2)
    s, t = torch.rand(1, 1, 32, 32, generator=g) * 2 - 1, torch.rand(1, 1, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():  # make the end field fold: a loud deformation head
        torch.nn.init.normal_(model.field_fn.outconv.block.weight, std=3.0)
        end = model.field(s, model.code(s, t))
    assert float(spatial.folding_ratio(end)) > 0.01
    off = model.training_losses(s, t, generator=torch.Generator().manual_seed(5))
    assert "fold" not in off
    model.config = dataclasses.replace(model.config, lambda_fold=3.0)
    on = model.training_losses(s, t, generator=torch.Generator().manual_seed(5))
    fold = float(on["fold"].detach())
    assert fold == pytest.approx(float(folding_penalty(end)), rel=1e-5)
    assert float((on["total"] - off["total"]).detach()) == pytest.approx(3.0 * fold, rel=1e-4)
    grads = torch.autograd.grad(on["fold"], list(model.field_fn.parameters()) + list(model.denoise_fn.parameters()),
                                allow_unused=True)
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads[:2])


def test_fold_weight_is_saved_and_checked(tmp_path, capsys):
    s, t, lab = pair_volumes(shape=(32, 32), spacing=(2.0, 2.0), shift=(4.0, -2.0))
    data = [Pair("a", s, t, lab)]
    list(train_ddm(data, tmp_path / "f.safetensors", steps=2, config=tiny_config(2), fold_weight=7.0))
    model, meta = load_ddm(tmp_path / "f.safetensors", ndims=2)
    assert model.config.lambda_fold == 7.0 and meta["fold_weight"] == "7.0"
    resumed = tmp_path / "g.safetensors"
    list(train_ddm(data, resumed, steps=3, resume=tmp_path / "f.safetensors"))
    assert load_ddm(resumed, ndims=2)[0].config.lambda_fold == 7.0  # kept unless set again
    with pytest.raises(InputError, match="fold weight must be >= 0"):
        list(train_ddm(data, tmp_path / "h.safetensors", steps=1, fold_weight=-1.0, config=tiny_config(2)))

    from napari_deformdiff.cli.main import main

    assert main(["phantom", "--out", str(tmp_path / "ds"), "--cases", "1", "--2d", "--frames", "4", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "n.safetensors"),
                 "--steps", "1", "--fold-weight", "-2"]) == 2
    assert "fold weight must be >= 0" in capsys.readouterr().err
