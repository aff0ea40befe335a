"""DDIM (deterministic, eta = 0) and ancestral (eta = 1) sampling of a v-predicting denoiser."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..errors import InputError

SAMPLERS = ("ddim", "ancestral")


def timestep_plan(timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from timesteps-1 down to 0, evenly spaced."""
    if not 1 <= steps <= timesteps:
        raise InputError(f"sampler steps must be between 1 and {timesteps}, got {steps}.")
    return [int(t) for t in np.unique(np.round(np.linspace(0, timesteps - 1, steps)).astype(int))[::-1]]


def sample(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
           alphas_cumprod: torch.Tensor, *, steps: int, sampler: str = "ddim",
           generator: torch.Generator, device: torch.device | str = "cpu",
           constrain: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
           ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield (step, steps, x_t after the step, x0 estimate) for every step; the last x_t is the sample.

    `denoise(x_t, t)` returns v. Noise comes from `generator` (a CPU generator), so a seed gives
    the same sample on any device.
    """
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}.")
    eta = 0.0 if sampler == "ddim" else 1.0
    plan = timestep_plan(len(alphas_cumprod), steps)
    abar = alphas_cumprod.double().cpu()
    x = torch.randn(shape, generator=generator).to(device)
    if constrain is not None:
        x = constrain(x, float(abar[plan[0]]))
    for i, t in enumerate(plan):
        a = float(abar[t])
        a_prev = float(abar[plan[i + 1]]) if i + 1 < len(plan) else 1.0
        v = denoise(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
        x0 = a**0.5 * x - (1 - a) ** 0.5 * v
        eps = (1 - a) ** 0.5 * x + a**0.5 * v
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator).to(device)
        if constrain is not None:
            x = constrain(x, a_prev)
        yield i, len(plan), x, x0
