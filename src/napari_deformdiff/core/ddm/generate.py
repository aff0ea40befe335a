"""DDM 4D generation by latent scaling, streamed frame by frame (events.Progress / events.Frame).

c = G_diff(S, T, x_t = T, t = 0); for gamma in the schedule: phi = G_def(S, gamma c), frame = S o phi.
Networks run on the model grid; every field is brought back to the source's own grid and the
ORIGINAL source (and its labels, nearest) is warped there, so frames keep the input's resolution,
intensities and geometry.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .. import spatial
from ..errors import InputError
from ..events import Frame, Plan, Progress
from ..io.volume import Volume
from ..nn.model_grid import GridMap, to_model
from .nets.ddm import DDM
from ..nn.inference import as_channels_last, fast_copy, grid_map
from ..io.pairs import check_pair
from .weights import load_ddm

MAX_FRAMES = 200
CPU_ANCHORS = 4  # deformation-module passes per run on the CPU (cubic in gamma); 0 = one per frame


def gamma_schedule(frames: int, loop: bool = False) -> np.ndarray:
    """Latent scales of the frames: 0 .. 1 (ED -> ES), or 0 .. 1 .. back towards 0 for a loop.

    A loop of N frames reaches gamma = 1 at frame N // 2 and ends one step before returning to
    gamma = 0, so it repeats seamlessly.
    """
    if not 2 <= frames <= MAX_FRAMES or (loop and frames < 3):
        raise InputError(f"frames must be between {3 if loop else 2} and {MAX_FRAMES}, got {frames}.")
    if not loop:
        return np.linspace(0.0, 1.0, frames)
    k = np.arange(frames)
    half = frames // 2
    return np.where(k <= half, k / half, (frames - k) / (frames - half))


def adapt_model(model: DDM, source: torch.Tensor, target: torch.Tensor, steps: int, *, seed: int = 0,
                lr: float = 1e-4) -> Iterator[Progress]:
    """Fine-tune `model` in place for `steps` steps of the training losses on one pair."""
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    for k in range(steps):
        losses = model.training_losses(source, target, generator=g)
        optim.zero_grad(set_to_none=True)
        losses["total"].backward()
        optim.step()
        yield Progress(k + 1, steps, f"adapting {k + 1}/{steps}: ncc {float(losses['ncc'].detach()):.3f}", "adapt")
    model.eval()


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise InputError(f"the model produced NaN or infinite values in the {what}; check the weights.")


def generate_ddm(
    source: Volume,
    target: Volume,
    *,
    frames: int = 16,
    loop: bool = False,
    labels: Volume | None = None,
    weights: str | Path | None = None,
    model: DDM | None = None,
    device: str = "cpu",
    batch: int = 4,
    anchors: int | None = None,
    adapt: int = 0,
    adapt_lr: float = 1e-4,
    seed: int = 0,
) -> Iterator[Progress | Frame]:
    """Yield a Plan, Progress events, then Frame(index, total, image, field, labels, info) per frame.

    frames: N frames ED -> ES (gamma = linspace(0, 1, N)) or, with loop, ED -> ES -> ED.
    Fields are pull displacements in the source's voxels (array-axis components); labels are
    warped with nearest-neighbour sampling and keep their values. `adapt` > 0 fine-tunes a copy
    of the networks on this pair first (the given model is never changed).
    anchors: run the deformation module at this many gammas (linspace(0, 1, anchors)) and
    interpolate the fields of the other frames (Lagrange, cubic for 4); 0 = run it for every
    frame; default CPU_ANCHORS on the CPU, 0 elsewhere.
    """
    check_pair(source, target, labels)
    gammas = gamma_schedule(frames, loop)
    if batch < 1:
        raise InputError("batch must be at least 1.")
    if anchors is not None and (anchors == 1 or anchors < 0):
        raise InputError(f"anchors must be 0 (every frame) or at least 2, got {anchors}.")
    if adapt < 0:
        raise InputError("adapt steps must be 0 or more.")
    ndims = source.geometry.ndim
    yield Plan((("weights", 1), ("adapt", adapt), ("frames", frames)))
    yield Progress(0, 1, "loading weights", "weights")
    model = _model_for(model, weights, ndims, device)
    if anchors is None:
        anchors = CPU_ANCHORS if model.weight_device().type == "cpu" else 0
    grid = grid_map(source.spatial_shape, source.geometry.spacing, model.config.grid, model.config.spacing)
    s = to_model(source.data, grid, model.weight_device())
    t = to_model(target.data, grid, model.weight_device())
    if adapt:
        torch.manual_seed(seed)
        model = copy.deepcopy(model)
        yield from adapt_model(model, s, t, adapt, seed=seed, lr=adapt_lr)
    yield from _frames(fast_copy(model), s, t, source, labels, grid, gammas, batch, anchors,
                       {"method": "ddm", "loop": loop, "adapt": adapt})


def _model_for(model: DDM | None, weights, ndims: int, device) -> DDM:
    if model is None:
        model, _ = load_ddm(weights, ndims=ndims, device=device)
    elif model.ndims != ndims:
        raise InputError(f"the model is {model.ndims}D but the images are {ndims}D.")
    return model


def lagrange_weights(nodes: np.ndarray, x: float) -> np.ndarray:
    """Weights w with sum(w_i f(nodes_i)) = the polynomial through (nodes, f(nodes)) at x."""
    w = np.ones(len(nodes))
    for i, a in enumerate(nodes):
        for j, b in enumerate(nodes):
            if j != i:
                w[i] *= (x - b) / (a - b)
    return w


def _frames(net, s: torch.Tensor, t: torch.Tensor, source: Volume, labels: Volume | None, grid: GridMap,
            gammas: np.ndarray, batch: int, anchors: int, info_base: dict) -> Iterator[Progress | Frame]:
    """Frame 0 (gamma 0 needs no code), the diffusion pass, then the other frames in batches.

    With anchors, the fields are computed at the anchor gammas only and the frames' fields are
    interpolated between them (on the input grid: resampling there is linear, so this is the same
    as interpolating on the model grid).
    """
    frames = len(gammas)
    device = s.device
    s_in = torch.from_numpy(np.ascontiguousarray(source.data, dtype=np.float32))[None, None].to(device)
    lab_in = None
    if labels is not None:
        lab_in = torch.from_numpy(np.ascontiguousarray(labels.data))[None, None].to(device)
    s_fast = as_channels_last(s)
    key = lambda g: round(float(g), 9)  # noqa: E731
    distinct = sorted({key(g) for g in gammas})
    nodes = np.linspace(0.0, 1.0, anchors) if 0 < anchors < len(distinct) else None

    def fields_for(gs, code: torch.Tensor) -> torch.Tensor:
        g = torch.as_tensor(np.asarray(gs, dtype=np.float64), dtype=s.dtype, device=device)
        ddf = net.field_fn.scaled_code_fields(s_fast, code, g)
        _check_finite(ddf, "deformation field")
        return grid.field_to_input(ddf.contiguous())

    def frame(index: int, gamma: float, ddf: torch.Tensor) -> Frame:
        image = spatial.warp(s_in, ddf[None], padding_mode="border")
        warped_labels = None
        if lab_in is not None:
            warped_labels = spatial.warp(lab_in, ddf[None], mode="nearest", padding_mode="border")[0, 0].cpu().numpy()
        return Frame(index, frames, image[0, 0].cpu().numpy(), ddf.cpu().numpy(), warped_labels,
                     {**info_base, "gamma": float(gamma)})

    with torch.inference_mode():
        # gamma = 0 does not depend on the code: show the first frame before the diffusion pass.
        zero_code = torch.zeros_like(s_fast)
        done: dict[float, torch.Tensor] = {}
        first = fields_for([gammas[0]], zero_code)[0]
        done[key(gammas[0])] = first
        yield frame(0, gammas[0], first)
        yield Progress(1, frames, "diffusion pass", "frames")
        code = net.code(s_fast, as_channels_last(t))
        _check_finite(code, "latent code")
        if nodes is not None:
            at_nodes = {key(0.0): done[key(0.0)]} if key(gammas[0]) == key(0.0) else {}
            todo = [g for g in nodes if key(g) not in at_nodes]
            for i in range(0, len(todo), batch):
                at_nodes.update(zip(map(key, todo[i:i + batch]), fields_for(todo[i:i + batch], code)))
            stack = torch.stack([at_nodes[key(g)] for g in nodes])
        pending = list(range(1, frames))
        while pending:
            todo = sorted({key(gammas[k]) for k in pending if key(gammas[k]) not in done})[:batch]
            if nodes is not None:
                for g in todo:
                    w = torch.as_tensor(lagrange_weights(nodes, g), dtype=stack.dtype, device=device)
                    done[g] = at_nodes[g] if g in at_nodes else torch.tensordot(w, stack, dims=1)
            elif todo:
                done.update(zip(todo, fields_for(todo, code)))
            while pending and key(gammas[pending[0]]) in done:
                k = pending.pop(0)
                yield frame(k, gammas[k], done[key(gammas[k])])
