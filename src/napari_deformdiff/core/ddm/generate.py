"""DDM 4D generation by latent scaling, streamed frame by frame (events.Progress / events.Frame).

c = G_diff(S, T, x_t = T, t = 0); for gamma in the schedule: phi = G_def(S, gamma c), frame = S o phi.
Networks run on the model grid; every field is brought back to the source's own grid and the
ORIGINAL source (and its labels, nearest) is warped there, so frames keep the input's resolution,
intensities and geometry.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
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
from ..weights.resolve import resolve
from .adapt import AdaptSettings, Residual, adapt_pair, settings_for

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
    adapt: int | str | AdaptSettings = 0,
    seed: int = 0,
    fold_free: bool = True,
) -> Iterator[Progress | Frame]:
    """Yield a Plan, Progress events, then Frame(index, total, image, field, labels, info) per frame.

    frames: N frames ED -> ES (gamma = linspace(0, 1, N)) or, with loop, ED -> ES -> ED.
    Fields are pull displacements in the source's voxels (array-axis components); labels are
    warped with nearest-neighbour sampling and keep their values. `adapt` ("auto", K steps per
    level, or AdaptSettings; 0 = off) first fits a residual velocity field to this pair
    (core/ddm/adapt.py); the networks are never changed.
    anchors: run the deformation module at this many gammas (linspace(0, 1, anchors)) and
    interpolate the fields of the other frames (Lagrange, cubic for 4); 0 = run it for every
    frame; default CPU_ANCHORS on the CPU, 0 elsewhere.
    fold_free: a frame whose field folds (det(I + grad u) <= 0 somewhere) gets the field repaired
    around its folds (spatial.repair_folding, as DRDM's exports) and the source warped again with
    it; False gives the networks' fields as they are.
    """
    check_pair(source, target, labels)
    gammas = gamma_schedule(frames, loop)
    if batch < 1:
        raise InputError("batch must be at least 1.")
    settings = settings_for(adapt, source.spatial_shape)
    if anchors is not None and (anchors == 1 or anchors < 0):
        raise InputError(f"anchors must be 0 (every frame) or at least 2, got {anchors}.")
    ndims = source.geometry.ndim
    # with adaptation, frame 0 (the source) comes before the fit: a stage of its own, so that the
    # run's progress does not jump past the fit
    first = (("first frame", 1),) if settings else ()
    yield Plan((("weights", 1), *first, ("adapt", settings.total if settings else 0), ("frames", frames)))
    yield Progress(0, 1, "loading weights", "weights")
    model = _model_for(model, weights, ndims, device)
    if anchors is None:
        anchors = CPU_ANCHORS if model.weight_device().type == "cpu" else 0
    grid = grid_map(source.spatial_shape, source.geometry.spacing, model.config.grid, model.config.spacing)
    s = to_model(source.data, grid, model.weight_device())
    net = inference_copy(model)
    info = {"method": "ddm", "loop": loop, "adapt": settings.total if settings else 0}
    repaired = _fold_free if fold_free else lambda events, *_: events
    if settings is None:  # the target is not needed before the first frame
        yield from repaired(_frames(net, s, lambda: to_model(target.data, grid, model.weight_device()), source,
                                    labels, grid, gammas, batch, anchors, info), source, labels)
        return
    t = to_model(target.data, grid, model.weight_device())
    # adapted frames start exactly at the source (exp(0 v) = id): show it before the adaptation runs
    yield Frame(0, len(gammas), np.array(source.data, dtype=np.float32, copy=True),
                np.zeros((ndims, *source.spatial_shape), np.float32),
                None if labels is None else np.array(labels.data, copy=True), {**info, "gamma": float(gammas[0])},
                stage="first frame")
    residual = yield from adapt_pair(source.data, target.data, source.geometry.spacing,
                                     _network_motion(net, s, t, grid), settings)
    info["adapt_network_field"] = residual.use_network
    yield from repaired(_with_residual(_frames(net, s, lambda: t, source, labels, grid, gammas, batch, anchors, info),
                                       residual, source, labels), source, labels)


REPAIR_ROUNDS = 800  # spatial.repair_folding's limit (as DRDM's exports)
# Only folds are repaired, with a margin for rounding. DRDM's 0.05 also smoothed the strong, valid
# contraction of a real echo's adapted field (det in (0, 0.05] on 5 % of the pixels): -2.9 dB.
REPAIR_MIN_DET = 1e-5


def _fold_free(events: Iterator[Progress | Frame], source: Volume, labels: Volume | None) -> Iterator[Progress | Frame]:
    """Frames whose field folds: the field repaired, the ORIGINAL source (and labels) warped with it."""
    s_in = torch.from_numpy(np.ascontiguousarray(source.data, dtype=np.float32))[None, None]
    lab_in = torch.from_numpy(np.ascontiguousarray(labels.data))[None, None] if labels is not None else None
    for event in events:
        if isinstance(event, Frame):
            u = torch.from_numpy(np.ascontiguousarray(event.field, dtype=np.float32))[None]
            with torch.no_grad():
                v = spatial.repair_folding(u, min_det=REPAIR_MIN_DET, max_iterations=REPAIR_ROUNDS)
                if v is not u:  # it folded
                    image = spatial.warp(s_in, v, padding_mode="border")[0, 0].numpy()
                    warped = None
                    if lab_in is not None:
                        warped = spatial.warp(lab_in, v, mode="nearest", padding_mode="border")[0, 0].numpy()
                    event = Frame(event.index, event.total, image, v[0].numpy(), warped, event.info)
        yield event


def _network_motion(net, s: torch.Tensor, t: torch.Tensor, grid: GridMap) -> torch.Tensor:
    """field(gamma = 1) - field(gamma = 0) of the networks, on the input grid (1, n, *S)."""
    with torch.inference_mode():
        s_fast = as_channels_last(s)
        code = net.code(s_fast, as_channels_last(t))
        _check_finite(code, "latent code")
        ddf = net.field_fn.scaled_code_fields(s_fast, code, torch.tensor([0.0, 1.0], dtype=s.dtype, device=s.device))
        _check_finite(ddf, "deformation field")
        ddf = grid.field_to_input(ddf.contiguous()).cpu()
    return (ddf[1:] - ddf[:1]).clone()


def _with_residual(frames: Iterator[Progress | Frame], residual: Residual, source: Volume,
                   labels: Volume | None) -> Iterator[Progress | Frame]:
    """Frames 1.. of the adapted model: (network field - its gamma = 0 field) then exp(gamma v)."""
    s_in = torch.from_numpy(np.ascontiguousarray(source.data, dtype=np.float32))[None, None]
    lab_in = torch.from_numpy(np.ascontiguousarray(labels.data))[None, None] if labels is not None else None
    at_zero = None
    for event in frames:
        if not isinstance(event, Frame):
            yield event
            continue
        gamma = float(event.info["gamma"])
        net_field = torch.from_numpy(event.field)[None]
        if at_zero is None:  # the schedule starts at gamma = 0, whose frame was shown before adapting
            at_zero = net_field
            continue
        with torch.no_grad():
            ddf = residual.compose((net_field - at_zero).float(), gamma)
            _check_finite(ddf, "adapted deformation field")
            image = spatial.warp(s_in, ddf, padding_mode="border")[0, 0].numpy()
            warped_labels = None
            if lab_in is not None:
                warped_labels = spatial.warp(lab_in, ddf, mode="nearest", padding_mode="border")[0, 0].numpy()
        yield Frame(event.index, event.total, image, ddf[0].numpy(), warped_labels, event.info)


_last_loaded: dict[tuple, DDM] = {}  # the model of the last weights file read, for a run with the same file
_inference_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _model_for(model: DDM | None, weights, ndims: int, device) -> DDM:
    if model is None:
        path, _ = resolve(weights, "ddm", ndims)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, ndims, str(device))
        if key not in _last_loaded:
            model, _ = load_ddm(path, ndims=ndims, device=device)
            _last_loaded.clear()
            _last_loaded[key] = model
        model = _last_loaded[key]
    elif model.ndims != ndims:
        raise InputError(f"the model is {model.ndims}D but the images are {ndims}D.")
    return model


def inference_copy(model: DDM) -> DDM:
    """fast_copy(model), made once per model and kept while its weights are unchanged (a parameter
    or buffer replaced or changed in place makes a new one)."""
    state = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in (*model.parameters(), *model.buffers()))
    kept = _inference_copies.get(model)
    if kept is None or kept[0] != state:
        kept = (state, fast_copy(model))
        _inference_copies[model] = kept
    return kept[1]


def lagrange_weights(nodes: np.ndarray, x: float) -> np.ndarray:
    """Weights w with sum(w_i f(nodes_i)) = the polynomial through (nodes, f(nodes)) at x."""
    w = np.ones(len(nodes))
    for i, a in enumerate(nodes):
        for j, b in enumerate(nodes):
            if j != i:
                w[i] *= (x - b) / (a - b)
    return w


def _frames(net, s: torch.Tensor, target: Callable[[], torch.Tensor], source: Volume, labels: Volume | None, grid: GridMap,
            gammas: np.ndarray, batch: int, anchors: int, info_base: dict) -> Iterator[Progress | Frame]:
    """Frame 0 (gamma 0 needs no code, nor the target), the diffusion pass, then the other frames in batches.

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
        # every schedule starts at gamma = 0, whose field does not depend on the code: show the
        # first frame before the diffusion pass.
        first = net.field_fn.zero_code_field(s_fast)
        _check_finite(first, "deformation field")
        first = grid.field_to_input(first.contiguous())[0]
        done: dict[float, torch.Tensor] = {key(gammas[0]): first}
        yield frame(0, gammas[0], first)
        yield Progress(1, frames, "diffusion pass", "frames")
        code = net.code(s_fast, as_channels_last(target()))
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
