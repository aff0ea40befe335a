"""DRDM instance deformation (the paper's Algorithm 2), streamed frame by frame.

The image is brought to the model grid (aspect kept: the longest physical axis spans the grid,
the rest is padded; intensities min-max scaled to [0, 1] as the authors' data), a random DDF psi
of level T' is drawn there (forward process) and phi = psi; then for each recovery step t the
network predicts psi_t from I_t = I_0 o phi and phi = psi_t composed after phi. After every step
the accumulated field is brought back to the input grid (input voxels) and the ORIGINAL image (and
at the end its labels, nearest) is resampled through it, so frames keep the input's resolution,
intensities and geometry.

Loops: "paper" runs t = T', ..., 1 (the paper); "authors" always runs t = steps-1, ..., 0 whatever
T' is (the authors' script). The network's time index for step t is min(t, steps - 1).

Fold-free (default): the final field, on the input grid, goes through spatial.repair_folding so
that det(I + grad u) > MIN_DET everywhere (the authors' recovery folds 1-6 % of pixels at levels
48-50); the field changes only around its folds. fold_free=False gives the authors' field bit for bit.
Only the last Frame is repaired: the intermediate ones show the plain recovery.

Precision: "float32" (default), or "bfloat16" for the network's passes (models/drdm_bf16.py; the
fields are composed and images resampled in float32 either way).
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
from ..io.volume import Volume, is_integer_valued
from ..nn.model_grid import GridMap, unit_range
from .bfloat16 import bfloat16_runner, check_precision
from .nets import RecResACNet, authors_to_voxels
from .forward import MAX_LEVEL, sample_forward
from .weights import DRDMMeta, load_drdm

LOOPS = ("paper", "authors")
MIN_DET = 0.05  # the repaired field's smallest Jacobian determinant (margin above 0)
REPAIR_ROUNDS = 800  # 400 left 0.14 % folded on one real level-70 field; 500 sufficed


def fold_free_field(field: torch.Tensor) -> torch.Tensor:
    """The exported field (B, n, *S) in input voxels without folds (see the module's docstring)."""
    return spatial.repair_folding(field, min_det=MIN_DET, max_iterations=REPAIR_ROUNDS)


def recovery_times(level: int, loop: str, steps: int) -> list[int]:
    """The t values of the recovery loop: level..1 ("paper") or steps-1..0 ("authors")."""
    if loop == "paper":
        return list(range(int(level), 0, -1))
    if loop == "authors":
        return list(range(int(steps) - 1, -1, -1))
    raise InputError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}.")


def time_index(t: int, steps: int) -> int:
    """Row of the time embedding used for level/step t (levels go up to MAX_LEVEL = steps)."""
    return min(max(int(t), 0), int(steps) - 1)


def model_grid_map(input_shape, input_spacing, grid) -> GridMap:
    """GridMap with an isotropic model spacing so that the longest physical axis spans the grid."""
    extent = [sp * (s - 1) for s, sp in zip(input_shape, input_spacing)]
    iso = max(e / (g - 1) for e, g in zip(extent, grid))
    if iso <= 0:
        iso = max(input_spacing)
    return GridMap(tuple(int(s) for s in input_shape), tuple(float(s) for s in input_spacing),
                   tuple(int(g) for g in grid), (iso,) * len(grid))


def _image_array(image, spacing, what: str = "image") -> tuple[np.ndarray, tuple[float, ...]]:
    if isinstance(image, Volume):
        if image.has_time:
            raise InputError(f"the {what} has {image.data.shape[0]} frames; give a single 2D or 3D frame.")
        data, sp = np.asarray(image.data), image.geometry.spacing
    else:
        data = np.asarray(image)
        sp = (1.0,) * data.ndim if spacing is None else tuple(float(s) for s in spacing)
    if data.ndim not in (2, 3):
        raise InputError(f"the {what} must be 2D or 3D, got shape {data.shape}.")
    if len(sp) != data.ndim or min(sp) <= 0:
        raise InputError(f"spacing {sp} does not fit a {data.ndim}D {what}.")
    if data.dtype.kind not in "biuf":
        raise InputError(f"the {what} must hold real numbers, got dtype {data.dtype}.")
    return data, sp


def _labels_array(labels, shape) -> np.ndarray | None:
    if labels is None:
        return None
    data = np.asarray(labels.data if isinstance(labels, Volume) else labels)
    if data.shape != tuple(shape):
        raise InputError(f"the labels' shape {data.shape} differs from the image's {tuple(shape)}.")
    if not is_integer_valued(data):
        raise InputError("the labels are not integers; give a label map.")
    return data


def _check_level(level) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 1 <= level <= MAX_LEVEL:
        raise InputError(f"deformation level must be an integer from 1 to {MAX_LEVEL}, got {level!r}.")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (b.index is None or a.index == b.index)


def _prepare(image, level, model, meta, labels, loop, device, spacing, weights, precision):
    data, sp = _image_array(image, spacing)
    ndims = data.ndim
    _check_level(level)
    lab = _labels_array(labels, data.shape)
    if model is None:
        model, meta = load_drdm(weights, ndims=ndims, device=device)
    elif meta is None:
        raise InputError("a DRDM model needs its DRDMMeta (model grid and steps); use load_drdm.")
    if not isinstance(model, RecResACNet) or model.ndims != ndims or meta.ndims != ndims:
        raise InputError(f"the DRDM model is {meta.ndims}D but the image is {ndims}D.")
    times = recovery_times(level, loop, meta.steps)
    try:
        check_precision(precision, torch.device(device))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model = _inference_model(model, torch.device(device), precision)
    dev = model.weight_device()
    grid = model_grid_map(data.shape, sp, meta.grid)
    return data, lab, model, meta, grid, times, dev


def _inference_model(model: RecResACNet, dev: torch.device, precision: str = "float32"):
    """The model in eval mode on `dev`; on the CPU a channels-last copy (its convolutions run
    about a quarter faster there), so the caller's model keeps its memory format and mode.
    bfloat16: the model's cached mixed-precision runner."""
    if precision == "bfloat16":
        return bfloat16_runner(model, dev)
    if dev.type == "cpu":
        fmt = torch.channels_last if model.ndims == 2 else torch.channels_last_3d
        return copy.deepcopy(model).to(dev, memory_format=fmt).eval()
    if not _same_device(model.weight_device(), dev):
        model = copy.deepcopy(model).to(dev)
    return model.eval()


def _field_to_input(grid: GridMap):
    """grid.field_to_input, or a plain copy when the input already is the model grid (frames
    must not share memory with the field the recovery goes on composing)."""
    if tuple(grid.input_shape) == tuple(grid.model_shape) and bool(np.all(grid.ratio == 1.0)):
        return torch.clone
    return grid.field_to_input


def _recover(data, level, model, meta, grid, times, dev, seed) -> Iterator[tuple[int, torch.Tensor]]:
    """(t, phi) on the model grid in model voxels: first the forward field (t = level), then one per step."""
    with torch.inference_mode():
        unit, _, _ = unit_range(data)
        x0 = grid.image_to_model(torch.from_numpy(unit)[None, None].to(dev))
        phi = sample_forward(meta.grid, level, seed=seed, device=dev).ddf
    yield level, phi
    for t in times:
        with torch.inference_mode():
            moved = spatial.warp(x0, phi, padding_mode="border")
            tt = torch.full((1,), time_index(t, meta.steps), dtype=torch.long, device=dev)
            step = authors_to_voxels(model(moved, tt))
            if not torch.isfinite(step).all():
                raise InputError("the DRDM network produced NaN or infinite values; check the weights.")
            phi = spatial.compose(phi, step, padding_mode="border")
        yield t, phi


def deform_instance(image: Volume | np.ndarray, level: int, *, model: RecResACNet | None = None,
                    meta: DRDMMeta | None = None, labels=None, seed: int = 0, loop: str = "paper",
                    device="cpu", spacing=None, weights: str | Path | None = None, precision: str = "float32",
                    fold_free: bool = True) -> Iterator[Progress | Frame]:
    """Algorithm 2, streamed: a Plan, Progress, then Frame 0 (the forward-deformed image) and one Frame per step.

    Frame.image: the original image (input grid, float32) resampled through the accumulated field;
    Frame.field: that field (n, *S) in input voxels; info {"t", "level", "loop", "seed"}. The last
    Frame carries the labels warped with nearest sampling (values kept). Without `model`, the
    weights are loaded with load_drdm(weights, ndims=image's). `precision`, `fold_free`: see the
    module's docstring (info["fold_free"] says whether the Frame's field was repaired).
    """
    data, lab, model, meta, grid, times, dev = _prepare(image, level, model, meta, labels, loop, device,
                                                        spacing, weights, precision)
    total = len(times) + 1
    compile_first = not getattr(model, "ready", True)
    yield Plan((("compile", int(compile_first)), ("frames", total)))
    if compile_first:
        yield Progress(0, 1, "compiling the bfloat16 network (once per session, 10-40 s)", "compile")
        model.warm_up(meta.grid)
    yield Progress(0, total, f"forward deformation at level {level}", "frames")
    src = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None].to(dev)
    lab_t = None if lab is None else torch.from_numpy(np.ascontiguousarray(lab))[None, None].to(dev)
    to_input = _field_to_input(grid)
    for index, (t, phi) in enumerate(_recover(data, level, model, meta, grid, times, dev, seed)):
        with torch.inference_mode():
            field = to_input(phi)
            last = index == total - 1
            if fold_free and last:
                field = fold_free_field(field)
            frame = spatial.warp(src, field, padding_mode="border")[0, 0].cpu().numpy()
            warped_labels = None
            if lab_t is not None and last:
                warped_labels = spatial.warp(lab_t, field, mode="nearest", padding_mode="border")[0, 0].cpu().numpy()
            info = {"method": "drdm", "t": int(t), "level": int(level), "loop": loop, "seed": int(seed),
                    "forward": index == 0, "fold_free": bool(fold_free and last)}
            yield Frame(index, total, frame, field[0].cpu().numpy(), warped_labels, info)


def instance_field(image: Volume | np.ndarray, level: int, *, model: RecResACNet | None = None,
                   meta: DRDMMeta | None = None, seed: int = 0, loop: str = "paper", device="cpu",
                   spacing=None, weights: str | Path | None = None, precision: str = "float32",
                   fold_free: bool = True) -> np.ndarray:
    """The final field of deform_instance (n, *S) in input voxels, without making the frames."""
    data, _, model, meta, grid, times, dev = _prepare(image, level, model, meta, None, loop, device,
                                                      spacing, weights, precision)
    phi = None
    for _, phi in _recover(data, level, model, meta, grid, times, dev, seed):
        pass
    with torch.inference_mode():
        field = _field_to_input(grid)(phi)
        return (fold_free_field(field) if fold_free else field)[0].cpu().numpy()


def recover_batch(image: Volume | np.ndarray, levels, seeds, *, model: RecResACNet | None = None,
                  meta: DRDMMeta | None = None, loop: str = "paper", device="cpu", spacing=None,
                  weights: str | Path | None = None, precision: str = "float32", fold_free: bool = True,
                  chunk: int | None = None) -> Iterator[Progress]:
    """Final fields of several Algorithm 2 runs on one image, `chunk` samples per network pass.

    Sample i has level levels[i] and seed seeds[i]; its field equals instance_field(image,
    levels[i], seed=seeds[i], ...) up to float rounding (the passes run on a batch). No frames are
    made. Yields Progress (one per recovery step); returns the fields (B, n, *S), input voxels.
    chunk: samples per pass (default all in float32; 1 in bfloat16, compiled for one batch size).
    """
    levels, seeds = [int(v) for v in levels], [int(v) for v in seeds]
    if not levels or len(levels) != len(seeds):
        raise InputError(f"give one seed per level, got {len(levels)} levels and {len(seeds)} seeds.")
    for level in levels:
        _check_level(level)
    data, _, model, meta, grid, _, dev = _prepare(image, max(levels), model, meta, None, loop, device,
                                                  spacing, weights, precision)
    if chunk is None:
        chunk = 1 if precision == "bfloat16" else len(levels)
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise InputError(f"chunk (samples per network pass) must be a positive integer, got {chunk!r}.")
    if not getattr(model, "ready", True):
        yield Progress(0, 1, "compiling the bfloat16 network (once per session, 10-40 s)", "compile")
        model.warm_up(meta.grid)
    times = [recovery_times(level, loop, meta.steps) for level in levels]
    steps = sorted({t for ts in times for t in ts}, reverse=True)
    to_input = _field_to_input(grid)
    with torch.inference_mode():
        unit, _, _ = unit_range(data)
        x0 = grid.image_to_model(torch.from_numpy(unit)[None, None].to(dev))
        phi = torch.cat([sample_forward(meta.grid, level, seed=seed, device=dev).ddf
                         for level, seed in zip(levels, seeds)])
    for k, t in enumerate(steps):
        yield Progress(k, len(steps), f"recovery step {k + 1}/{len(steps)}", "steps")
        active = [i for i, ts in enumerate(times) if t in ts]
        tt = time_index(t, meta.steps)
        with torch.inference_mode():
            for part in (active[a:a + chunk] for a in range(0, len(active), chunk)):
                sub = phi[part]
                moved = spatial.warp(x0, sub, padding_mode="border")
                step = authors_to_voxels(model(moved, torch.full((len(part),), tt, dtype=torch.long, device=dev)))
                if not torch.isfinite(step).all():
                    raise InputError("the DRDM network produced NaN or infinite values; check the weights.")
                phi[part] = spatial.compose(sub, step, padding_mode="border")
    with torch.inference_mode():
        fields = [to_input(phi[i:i + 1]) for i in range(len(levels))]
        if fold_free:  # one sample at a time: the repair's growing radius depends on the whole batch
            fields = [fold_free_field(f) for f in fields]
        return torch.cat(fields).cpu().numpy()
