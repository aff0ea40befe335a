"""One optimisation step shared by the training loops."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import InputError


def descend(optim: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> float:
    """Back-propagate `loss`, step `optim`; the loss value, or a clear error if training diverged."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise InputError(f"training diverged at step {step + 1} (loss {value}); lower the learning rate.")
    return value


def save_optimizer(state: dict, path: Path) -> None:
    """Write an optimizer state beside its checkpoint, atomically (a hidden file renamed into place)."""
    tmp = path.with_name("." + path.name + ".partial")
    torch.save(state, tmp)
    tmp.replace(path)


def saved_optimizer(checkpoint, device) -> dict | None:
    """The optimizer state saved beside `checkpoint` (<name>.optim.pt, weights only), if there is one."""
    path = Path(checkpoint).with_name(Path(checkpoint).name + ".optim.pt")
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None
