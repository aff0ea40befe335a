"""One optimisation step shared by the training loops."""

from __future__ import annotations

import math

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
