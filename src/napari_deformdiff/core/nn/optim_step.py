"""One optimisation step shared by the training loops."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import InputError
from ..events import Plan, Progress


def save_optimizer(state: dict, path: Path) -> None:
    """Write an optimizer state beside its checkpoint, atomically (a hidden file moved into place; none
    left behind on a full disk or Ctrl-C)."""
    from ..io.atomic import atomic_output

    with atomic_output(path, overwrite=True) as tmp:
        torch.save(state, tmp)


def saved_optimizer(checkpoint, device) -> dict | None:
    """The optimizer state saved beside `checkpoint` (<name>.optim.pt, weights only), if there is one."""
    path = Path(checkpoint).with_name(Path(checkpoint).name + ".optim.pt")
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None


def training_start(start: int, steps: int):
    """The first events of a one-stage training run: its Plan and where it starts."""
    yield Plan((("train", steps),))
    yield Progress(start, steps, "starting" if start == 0 else f"resuming at step {start}", "train")


def descend_shared(optim: torch.optim.Optimizer, loss: torch.Tensor, step: int, world, parts=()) -> list[float]:
    """Back-propagate and step for this rank's share of a step's loss (DistributedDataParallel averages the
    gradients in backward): [loss, *parts] averaged over the ranks, a clear error on every rank if
    training diverged. With one process, the loss and parts themselves."""
    from .distributed import mean_over_ranks

    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    values = mean_over_ranks([float(loss.detach()), *(float(p.detach()) for p in parts)], world)
    if not math.isfinite(values[0]):
        raise InputError(f"training diverged at step {step + 1} (loss {values[0]}); lower the learning rate.")
    return values
