"""Training DDM on (source, target) pairs with the paper's losses and schedule, as a generator of progress."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..events import Progress
from ..io.pairs import Pair
from ..nn.model_grid import GridMap, to_model
from ..nn.distributed import (Objective, World, barrier, current_world, item_generator, loss_generators, shared,
                              step_batches)
from ..io.atomic import staged
from ..nn.optim_step import descend_shared, save_optimizer, saved_optimizer, training_start
from .nets.ddm import DDM, DDMConfig
from .synth_pairs import MixedItems, RealItems, SynthItems
from .nets.field_unet import skip_first_from_up_first
from .weights import OLD_FIELD_CONCAT, field_concat_of, load_ddm, save_ddm


def model_grid_of(volume, config: DDMConfig) -> GridMap:
    return GridMap(volume.spatial_shape, volume.geometry.spacing, config.grid, config.spacing)


PAIR_SAMPLING = ("ends", "cine")


def moments_skip_first(model: torch.nn.Module, optim: torch.optim.Optimizer) -> None:
    """Permute Adam's moments saved beside an old-layout checkpoint (cat[up, skip]) like its
    weights, so that a resumed run continues exactly where it stopped (see load_ddm)."""
    names = {p: n for n, p in model.named_parameters()}
    for key in ("exp_avg", "exp_avg_sq"):
        moments = {names[p]: s[key] for p, s in optim.state.items() if key in s}
        converted = skip_first_from_up_first(moments)
        for p, s in optim.state.items():
            if key in s:
                s[key] = converted[names[p]]


def pair_frames(pairs: Sequence[Pair], config: DDMConfig, sampling: str = "ends") -> list[list[torch.Tensor]]:
    """Per pair, its frames on the model grid in [-1, 1] (each volume min-max scaled on its own):
    [source, target] or, with sampling="cine" and a known cine, every frame source .. target."""
    out = []
    for p in pairs:
        if p.source.geometry.ndim != config.ndims:
            raise InputError(f"{p.name}: a {p.source.geometry.ndim}D pair cannot train a {config.ndims}D model.")
        grid = model_grid_of(p.source, config)
        if sampling == "cine" and p.cine is not None and p.cine.data.shape[0] > 2:
            out.append([to_model(frame, grid) for frame in p.cine.data])
        else:
            out.append([to_model(p.source.data, grid), to_model(p.target.data, grid)])
    return out


def label_frames(pairs: Sequence[Pair], config: DDMConfig, sampling: str = "ends") -> list[list[torch.Tensor] | None]:
    """Per pair, its label maps on the model grid (nearest, uint8 (1, 1, *grid)) matching pair_frames'
    frames, or None where the pair has none."""
    out = []
    for p in pairs:
        grid = model_grid_of(p.source, config)
        if sampling == "cine" and p.cine is not None and p.cine.data.shape[0] > 2:
            maps = list(p.cine_labels.data) if p.cine_labels is not None else None
        else:
            target = p.target_labels if p.target_labels is not None else None
            if target is None and p.cine_labels is not None:
                target = p.cine_labels.data[-1]
            elif target is not None:
                target = target.data
            maps = [p.source_labels.data, target] if p.source_labels is not None and target is not None else None
        out.append(None if maps is None else [labels_to_model(m, grid) for m in maps])
    return out


def labels_to_model(labels: np.ndarray, grid: GridMap) -> torch.Tensor:
    values = torch.from_numpy(np.asarray(labels, np.float32))[None, None]
    return grid._resample(values, grid.input_shape, grid.model_shape, grid.ratio, "nearest").round().to(torch.uint8)


def draw_indices(n: int, g: torch.Generator, sampling: str) -> tuple[int, int]:
    """(source, target) frame indices: the ends, or for "cine" half the time any two frames of the
    sequence (either order, possibly the same frame), so that the code, not the source alone, must
    say how far to deform."""
    if sampling == "ends" or n == 2 or torch.rand((), generator=g) < 0.5:
        return 0, n - 1
    i, j = (int(v) for v in torch.randint(0, n, (2,), generator=g))
    return i, j


def draw_pair(frames: list[torch.Tensor], g: torch.Generator, sampling: str):
    """(source, target) frames drawn with draw_indices."""
    i, j = draw_indices(len(frames), g, sampling)
    return frames[i], frames[j]


def augment(s: torch.Tensor, t: torch.Tensor, g: torch.Generator, crop: Sequence[int] | None,
            labels: Sequence[torch.Tensor] = (), field: torch.Tensor | None = None):
    """Random in-plane flips and transposes (as the paper), then an optional random crop, of (s, t)
    and alike of the `labels` maps and the voxel `field` (its components flipped and swapped with
    the axes, so that it still maps s onto t); returns (s, t, *labels[, field]).

    Crops are centred with a jitter of a quarter of the spare room, so the anatomy (centred in
    the model grid) stays mostly inside.
    """
    n = s.ndim - 2
    y, x = n, n + 1  # the two in-plane axes (last two)
    images = [s, t, *labels]
    for axis in (y, x):
        if torch.rand((), generator=g) < 0.5:
            images = [a.flip(axis) for a in images]
            if field is not None:
                field = field.flip(axis)
                field[:, axis - 2] = -field[:, axis - 2]
    if s.shape[y] == s.shape[x] and torch.rand((), generator=g) < 0.5:
        images = [a.transpose(y, x) for a in images]
        if field is not None:
            field = field.transpose(y, x)[:, [*range(n - 2), n - 1, n - 2]]
    if crop is not None:
        index = []
        for size, c in zip(s.shape[2:], crop):
            c = min(c, size)
            spare = size - c
            lo, hi = spare // 2 - spare // 4, spare // 2 + spare // 4
            start = int(torch.randint(lo, hi + 1, (), generator=g))
            index.append(slice(start, start + c))
        images = [a[(..., *index)] for a in images]
        if field is not None:
            field = field[(..., *index)]
    out = [a.contiguous() for a in images]
    return tuple(out) if field is None else (*out, field.contiguous())


def supervised_item(s: torch.Tensor, t: torch.Tensor, labels=None, field: torch.Tensor | None = None):
    """(s, t, source labels, target labels, true field, field mask) with zero labels (none) and a zero
    mask where the truth is unknown, so that every item of a batch has the same parts."""
    n = s.ndim - 2
    blank = torch.zeros_like(s, dtype=torch.long)
    sl, tl = (blank, blank) if labels is None else (labels[0].long(), labels[1].long())
    mask = torch.ones_like(s) if field is not None else torch.zeros_like(s)
    field = field if field is not None else torch.zeros(s.shape[0], n, *s.shape[2:], dtype=s.dtype)
    return s, t, sl, tl, field, mask


class PairItems:
    """make(step, item) of nn.distributed.step_batches: item `item` of a step's global batch, a random
    pair drawn with draw_pair and augmented, from the item's own generator. With `labels` (label_frames),
    the item is supervised_item's tuple."""

    def __init__(self, data: list[list[torch.Tensor]], seed: int, sampling: str, crop: Sequence[int] | None,
                 labels: list[list[torch.Tensor] | None] | None = None):
        self.data, self.seed, self.sampling, self.crop, self.labels = data, seed, sampling, crop, labels

    def __call__(self, step: int, item: int):
        g = item_generator(self.seed, step, item)
        k = int(torch.randint(0, len(self.data), (), generator=g))
        frames = self.data[k]
        i, j = draw_indices(len(frames), g, self.sampling)
        if self.labels is None:
            return augment(frames[i], frames[j], g, self.crop)
        maps = self.labels[k]
        if maps is None:
            return supervised_item(*augment(frames[i], frames[j], g, self.crop))
        s, t, sl, tl = augment(frames[i], frames[j], g, self.crop, labels=(maps[i], maps[j]))
        return supervised_item(s, t, (sl, tl))


class ItemsOn:
    """`make`'s items with their tensors on `device` (synth and real items are made on the CPU)."""

    def __init__(self, make, device):
        self.make, self.device = make, device

    def __call__(self, step: int, item: int):
        return tuple(p.to(self.device) if isinstance(p, torch.Tensor) else p for p in self.make(step, item))


def _check_crop(crop, config: DDMConfig):
    if crop is None:
        return None
    crop = tuple(int(c) for c in crop)
    if len(crop) != config.ndims or any(c % config.multiple() or c <= 0 for c in crop):
        raise InputError(
            f"crop must have {config.ndims} sizes that are multiples of {config.multiple()}, got {crop}."
        )
    return crop


def train_ddm(
    pairs: Sequence[Pair],
    out: str | Path,
    *,
    steps: int,
    config: DDMConfig | None = None,
    resume: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    lr: float = 2e-4,
    crop: Sequence[int] | None = None,
    batch: int = 1,
    sampling: str = "ends",
    save_every: int = 100,
    overwrite: bool = False,
    anchor: float | None = None,
    workers: int = 0,
    world: World | None = None,
    mix: dict[str, float] | None = None,
    real: Sequence = (),
    dice: float | None = None,
    field_weight: float | None = None,
    fold_weight: float | None = None,
) -> Iterator[Progress]:
    """Train (or continue training) a DDM, saving a safetensors checkpoint to `out` as it goes.

    `batch` pairs per step and process (the paper uses 1; on a CPU 2-4 uses the cores better).
    `sampling`: "ends" trains on source -> target only (the paper); "cine" also on random frame
    pairs of the pair's cine (ACDC 4D files), see draw_pair.
    Yields a Plan, then Progress(step, steps, "loss ...", "train") after every step. With `resume`, weights, optimizer
    state and the step count come from that checkpoint (and its .optim.pt beside it).
    Each item of a step's batch draws its pair, augmentation, timestep and noise from its own
    generator seeded with (seed, step, item), so a run is reproducible, a resumed run continues the
    same sequence and, under torchrun (`world`, default: the initialised process group), N processes
    of `batch` pairs give the run of one process with N * batch (nn/distributed.py); rank 0 saves.
    `workers` DataLoader processes assemble the batches (0: in this process).
    `anchor` sets the configuration's lambda_anchor (see DDM.training_losses), also when resuming.
    `mix` ({"phantom": w, "synth": w, "real": w}, see synth_pairs.parse_mix) draws each item from the
    `pairs` (phantom), SynthMorph-style pairs or the `real` Volumes deformed by cardiac-like fields.
    `dice` and `field_weight` set the configuration's lambda_dice and lambda_field (supervision where
    the truth is known, see DDM.training_losses; default: as saved, 0 for a new model): the pairs'
    label maps (phantom, synth) and the true fields (synth, real) then go with every item.
    `fold_weight` sets lambda_fold (a penalty on the end field's folding; default: as saved).
    """
    out = Path(out)
    _check_arguments(pairs, out, steps, batch, sampling, resume, overwrite)
    torch.manual_seed(seed)
    model, optim, start = _model_and_optimizer(pairs, config, resume, anchor, device, lr)
    model.config = config = _with_supervision(model.config, dice, field_weight, fold_weight)
    supervised = config.lambda_dice > 0 or config.lambda_field > 0
    crop = _check_crop(crop, config)
    optim_path = out.with_name(out.name + ".optim.pt")
    world = world or current_world()
    item_device = device if workers == 0 else "cpu"
    data = [[f.to(item_device) for f in frames] for frames in pair_frames(pairs, config, sampling)]
    started = time.perf_counter()
    history: list[float] = []

    def save(step: int) -> None:
        with staged():  # the checkpoint and its optimizer state appear together
            save_ddm(model, out, overwrite=True, step=str(step), seed=str(seed), lr=str(lr),
                     pairs=str(len(data)), batch=str(batch * world.size), sampling=sampling,
                     crop=str(list(crop) if crop else "none"),
                     train_seconds=f"{time.perf_counter() - started:.0f}",
                     last_loss=f"{np.mean(history[-50:]) if history else float('nan'):.5f}",
                     mix=",".join(f"{k}={v:.3g}" for k, v in mix.items()) if mix else "phantom=1",
                     dice=str(config.lambda_dice), field_weight=str(config.lambda_field),
                     fold_weight=str(config.lambda_fold))
            save_optimizer(optim.state_dict(), optim_path)

    objective = shared(Objective(model, model.training_losses), world, device)
    labels = None
    if supervised:
        labels = [None if maps is None else [m.to(item_device) for m in maps]
                  for maps in label_frames(pairs, config, sampling)]
    items = PairItems(data, seed, sampling, crop, labels)
    if mix:
        items = ItemsOn(mixed_items(items, mix, real, config, seed, crop, supervised), item_device)
    batches = step_batches(items, start, steps, world=world, batch=batch,
                           workers=workers, seed=seed, device=device)
    yield from training_start(start, steps)
    for step, parts in enumerate(batches, start):
        losses = objective(*parts, generator=loss_generators(seed, step, world.items(batch)))
        total, ncc, eps = descend_shared(optim, losses["total"], step, world, (losses["ncc"], losses["diffusion"]))
        history.append(total)
        done = step + 1
        if world.main and (done % save_every == 0 or done == steps):
            save(done)
        yield Progress(done, steps, f"loss {total:.4f} (ncc {ncc:.3f}, eps {eps:.4f})", "train")
    barrier(world)
    model.eval()


def _real_on_grid(volume, config: DDMConfig) -> torch.Tensor:
    """A real volume on the model grid; for a 2D model a 3D volume goes on a 32-slice grid of the
    2D grid's in-plane size (RealItems takes one slice of it)."""
    if volume.geometry.ndim == config.ndims:
        return to_model(volume.data, model_grid_of(volume, config))
    if config.ndims == 2 and volume.geometry.ndim == 3:
        grid = GridMap(volume.spatial_shape, volume.geometry.spacing, (32, *config.grid), (3.15, *config.spacing))
        return to_model(volume.data, grid)
    raise InputError(f"a {volume.geometry.ndim}D real volume cannot train a {config.ndims}D model.")


def mixed_items(phantom: PairItems, mix: dict[str, float], real: Sequence, config: DDMConfig, seed: int,
                crop: Sequence[int] | None, supervised: bool = False) -> MixedItems:
    parts = {"phantom": phantom, "synth": SynthItems(crop or config.grid, seed, supervised=supervised)}
    if mix.get("real", 0) > 0:
        parts["real"] = RealItems([_real_on_grid(v, config) for v in real], config.spacing, seed,
                                  functools.partial(augment, crop=crop), supervised=supervised)
    return MixedItems(parts, mix, seed)


def _with_supervision(config: DDMConfig, dice: float | None, field_weight: float | None,
                      fold_weight: float | None = None) -> DDMConfig:
    for name, value in (("dice", dice), ("field", field_weight), ("fold", fold_weight)):
        if value is not None and value < 0:
            raise InputError(f"{name} weight must be >= 0, got {value}.")
    return dataclasses.replace(
        config, lambda_dice=config.lambda_dice if dice is None else float(dice),
        lambda_field=config.lambda_field if field_weight is None else float(field_weight),
        lambda_fold=config.lambda_fold if fold_weight is None else float(fold_weight))


def _check_arguments(pairs, out: Path, steps: int, batch: int, sampling: str, resume, overwrite: bool) -> None:
    if steps < 1 or batch < 1:
        raise InputError("steps and batch must be at least 1.")
    if sampling not in PAIR_SAMPLING:
        raise InputError(f"pair sampling must be one of {', '.join(PAIR_SAMPLING)}, not {sampling!r}.")
    if not pairs:
        raise InputError("no training pairs.")
    if out.exists() and not overwrite and (resume is None or Path(resume).resolve() != out.resolve()):
        raise InputError(f"{out} exists; choose a new name, resume from it, or allow overwriting.")


def _model_and_optimizer(pairs, config: DDMConfig | None, resume, anchor: float | None, device, lr: float):
    """(model in train mode, Adam, first step): new, or resumed with the optimizer state beside `resume`."""
    start = 0
    if resume is not None:
        model, meta = load_ddm(resume, device=device)
        config = model.config
        start = int(meta.get("step", 0))
    else:
        config = config or DDMConfig.default(pairs[0].source.geometry.ndim)
        model = DDM(config).to(device)
    if anchor is not None:
        if anchor < 0:
            raise InputError(f"anchor weight must be >= 0, got {anchor}.")
        model.config = dataclasses.replace(config, lambda_anchor=float(anchor))
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    if resume is not None and (saved := saved_optimizer(resume, device)) is not None:
        optim.load_state_dict(saved)
        if field_concat_of(meta, Path(resume).name) == OLD_FIELD_CONCAT:
            moments_skip_first(model, optim)
    return model, optim, start
