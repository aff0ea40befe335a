"""Training Mo-Diff stage by stage (VAE, then stage 1, then stage 2), as a generator of progress.

AdamW with a linear warm-up and a cosine decay per stage (as the paper). Every step plans its
batch (sequences, frame counts) from a generator seeded with (seed, stage, step) and each item draws
its clip, crop, timestep and noise from its own (batches.py), so a run is reproducible, a resumed
run continues the same sequence and a batch split over processes gives the same items.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..events import Plan, Progress
from .nets.modiff import STAGES, MoDiff, ModiffConfig
from ..nn.distributed import Objective, World, barrier, current_world, loss_generators, shared, step_batches
from ..io.atomic import staged
from ..nn.optim_step import descend_shared, save_optimizer
from .batches import ClipItems, stage_loss, step_plan
from .data import MotionSequence, model_sequences
from .weights import load_modiff, save_modiff, stage_steps

DEFAULT_STEPS = {"vae": 800, "tddm": 1500, "video": 1500}
DEFAULT_BATCH = {"vae": 8, "tddm": 4, "video": 2}
DEFAULT_LR = {"vae": 5e-4, "tddm": 2e-4, "video": 2e-4}


def lr_factor(step: int, steps: int) -> float:
    warm = max(1, min(200, steps // 10))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def measure_scales(model: MoDiff, data: list[torch.Tensor], which: str) -> float:
    """1 / std of the scaled differential fields (k >= 1) or of the VAE latents over the data."""
    with torch.no_grad():
        if which == "field":
            values = [model.fields_of(seq[None])[0, 1:] / model.config.field_scale for seq in data]
        else:
            values = [model.encode(seq[::2, None]) / model.config.latent_scale for seq in data]
    std = float(torch.cat([v.flatten() for v in values]).std())
    return 1.0 / max(std, 1e-6)


def train_modiff(
    sequences: Sequence[MotionSequence],
    out: str | Path,
    *,
    steps: dict[str, int] | None = None,
    stages: Sequence[str] = STAGES,
    config: ModiffConfig | None = None,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    lr: dict[str, float] | None = None,
    batch: dict[str, int] | None = None,
    save_every: int = 100,
    overwrite: bool = False,
    workers: int = 0,
    world: World | None = None,
) -> Iterator[Progress]:
    """Train the `stages` of a Mo-Diff for `steps[stage]` steps each, saving `out` as it goes.

    resume: continue a checkpoint (weights, stage steps, optimizer state of the stage in progress).
    init: start from another checkpoint's parts where they fit this configuration (e.g. an
    ablation that retrains only stage 1 reuses the full model's VAE and stage 2). A copied part
    that is among `stages` is fine-tuned: its steps count from 0 and it keeps the checkpoint's
    field / latent scale.
    `batch` items per step and process: under torchrun (`world`, default: the initialised process
    group) N processes give the run of one process with N times the batch (batches.py,
    nn/distributed.py); rank 0 saves. `workers` DataLoader processes assemble the batches.
    """
    out = Path(out)
    steps = {**DEFAULT_STEPS, **(steps or {})}
    lr = {**DEFAULT_LR, **(lr or {})}
    batch = {**DEFAULT_BATCH, **(batch or {})}
    stages = _check_arguments(sequences, out, stages, steps, batch, resume, overwrite)
    torch.manual_seed(seed)
    history: dict[str, list[float]] = {}
    model, done, seconds, tuned = _starting_model(sequences, config, resume, init, device, stages)
    config = model.config
    world = world or current_world()
    data = [s.to(device) for s in model_sequences(sequences, config)]
    lengths = [s.shape[0] for s in data]
    if max(lengths) < config.min_frames:
        raise InputError(f"the sequences are shorter than the model's minimum of {config.min_frames} frames.")
    if "video" in stages and done.get("vae", 0) == 0 and "vae" not in stages:
        raise InputError("stage 2 (video) needs a trained VAE: train the vae stage first or resume from a checkpoint.")
    optim_path = out.with_name(out.name + ".optim.pt")
    yield Plan(tuple((s, steps[s]) for s in stages))
    count = 0

    def save(stage: str, optim) -> None:
        with staged():  # the checkpoint and its optimizer state appear together
            save_modiff(model, out, overwrite=True, seed=str(seed), stage_steps=json.dumps(done),
                        stage_seconds=json.dumps({k: round(v) for k, v in seconds.items()}),
                        sequences=str(len(data)), frames_range=f"{config.min_frames}-{config.max_frames}",
                        finetuned=json.dumps(tuned),
                        last_loss=json.dumps({k: round(float(np.mean(v[-50:])), 5) for k, v in history.items() if v}))
            save_optimizer({"stage": stage, "state": optim.state_dict()}, optim_path)

    for stage in stages:
        start = done.get(stage, 0)
        if start >= steps[stage]:
            continue
        part, optim = _start_stage(model, stage, start, data, lr[stage], optim_path if resume is not None else None,
                                   device, measure=stage not in tuned)
        config = model.config
        history.setdefault(stage, [])
        t0 = time.perf_counter() - seconds.get(stage, 0.0)
        size, mine = batch[stage] * world.size, world.items(batch[stage])
        items = ClipItems(data if workers == 0 else [s.cpu() for s in data], config, stage, seed, size)
        batches = step_batches(items, start, steps[stage], world=world, batch=batch[stage], workers=workers,
                               seed=seed, device=device)
        objective = shared(Objective(part, lambda *a, stage=stage: stage_loss(model, stage, *a)), world, device)
        for step, (clips, counts) in enumerate(batches, start):
            for group in optim.param_groups:
                group["lr"] = lr[stage] * lr_factor(step, steps[stage])
            # stage 1's loss is a mean over the frames of every item: this rank's share of the global mean
            everyone = sum(step_plan(seed, stage, step, lengths, size, config)[1])
            weight = world.size * sum(counts.tolist()) / everyone if stage == "tddm" else 1.0
            loss = objective(clips, counts, loss_generators(seed, step, mine, stage + " loss"), weight)
            value = descend_shared(optim, loss, step, world)[0]
            history[stage].append(value)
            done[stage] = step + 1
            seconds[stage] = time.perf_counter() - t0
            count += 1
            if world.main and (done[stage] % save_every == 0 or done[stage] == steps[stage]):
                save(stage, optim)
            yield Progress(step + 1, steps[stage], f"{stage} {step + 1}/{steps[stage]}: loss {value:.4f}", stage)
        part.eval()
    barrier(world)
    if count == 0:
        yield Progress(0, 0, "nothing to train: every stage already reached its steps")


def _init_from(model: MoDiff, init: str | Path, device) -> dict[str, int]:
    """Copy the parts of `init` whose parameters fit `model`; the stage steps of the copied parts."""
    source, meta = load_modiff(init, device=device)
    if source.config.ndims != model.config.ndims or source.config.grid != model.config.grid:
        raise InputError(f"{Path(init).name} is a model of another grid or dimensionality.")
    copied = {}
    src_steps = stage_steps(meta)
    for stage in STAGES:
        mine, theirs = getattr(model, stage).state_dict(), getattr(source, stage).state_dict()
        if mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine):
            getattr(model, stage).load_state_dict(theirs)
            copied[stage] = src_steps.get(stage, 0)
    scales = {}
    if "tddm" in copied:
        scales["field_scale"] = source.config.field_scale
    if "vae" in copied:
        scales["latent_scale"] = source.config.latent_scale
    model.config = dataclasses.replace(model.config, **scales)
    return copied


def _starting_model(sequences, config: ModiffConfig | None, resume, init, device, stages):
    """(model, steps done per stage, seconds per stage, fine-tuned stages): resumed, started from
    `init` (its parts among `stages` fine-tuned from step 0), or new."""
    if resume is not None:
        model, meta = load_modiff(resume, device=device)
        seconds = {k: float(v) for k, v in json.loads(meta.get("stage_seconds", "{}")).items()}
        return model, stage_steps(meta), seconds, json.loads(meta.get("finetuned", "[]"))
    config = config or ModiffConfig.default(sequences[0].frames.geometry.ndim)
    model = MoDiff(config).to(device)
    done = _init_from(model, init, device) if init is not None else {}
    tuned = [s for s in stages if s in done]
    done.update({s: 0 for s in tuned})
    return model, done, {}, tuned


def _start_stage(model: MoDiff, stage: str, start: int, data, lr: float, optim_path: Path | None, device,
                 measure: bool = True):
    """(the stage's network in train mode, its AdamW): scales measured when a stage starts afresh
    (unless `measure` is False: fine-tuning), optimizer state restored from `optim_path` when it
    holds this stage's."""
    part = getattr(model, stage)
    c = model.config
    if stage == "tddm" and start == 0 and measure:
        model.config = dataclasses.replace(c, field_scale=c.field_scale * measure_scales(model, data, "field"))
    if stage == "video" and start == 0:
        model.vae.eval()
    if stage == "video" and start == 0 and measure:
        model.config = dataclasses.replace(c, latent_scale=c.latent_scale * measure_scales(model, data, "latent"))
    optim = torch.optim.AdamW(part.parameters(), lr=lr, weight_decay=1e-2)
    if optim_path is not None and optim_path.is_file() and start > 0:
        saved = torch.load(optim_path, map_location=device, weights_only=True)
        if saved.get("stage") == stage:
            optim.load_state_dict(saved["state"])
    return part.train(), optim


def _check_arguments(sequences, out: Path, stages, steps: dict, batch: dict, resume, overwrite: bool) -> list[str]:
    """The stages to train, in training order, or InputError for arguments no run can use."""
    stages = [s for s in STAGES if s in stages]
    if not stages:
        raise InputError(f"choose stages among {', '.join(STAGES)}.")
    if any(steps[s] < 0 for s in stages) or any(batch[s] < 1 for s in stages):
        raise InputError("steps must be >= 0 and batch sizes >= 1.")
    if not sequences:
        raise InputError("no training sequences.")
    if out.exists() and not overwrite and (resume is None or Path(resume).resolve() != out.resolve()):
        raise InputError(f"{out} exists; choose a new name, resume from it, or allow overwriting.")
    return stages
