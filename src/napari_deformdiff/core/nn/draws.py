"""Random draws of a loss from one generator, or from one generator per batch item.

With one generator per item, item i's draws do not depend on which other items share its batch,
which is what lets a batch be split over processes (nn/distributed.py) and give the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def randint(high: int, batch: int, generator: Generators) -> torch.Tensor:
    """(batch,) integers in 0..high-1."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randint(0, high, (batch,), generator=generator)
    return torch.cat([torch.randint(0, high, (1,), generator=g) for g in _each(generator, batch)])


def randn(shape: Sequence[int], generator: Generators) -> torch.Tensor:
    """Standard normal noise of `shape` (batch first)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in _each(generator, shape[0])])


def _each(generators: Sequence[torch.Generator], batch: int) -> Sequence[torch.Generator]:
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for a batch of {batch}.")
    return generators
