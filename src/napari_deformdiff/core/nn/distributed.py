"""Training on several processes (torchrun) and assembling batches in DataLoader workers.

Under `torchrun --nproc_per_node N`, every process (rank) runs the same training loop with
`batch` items per step: a step's global batch holds N * batch items, item i is drawn from its own
generator seeded by (seed, step, i), and rank r assembles items r * batch .. (r + 1) * batch - 1.
DistributedDataParallel averages the ranks' gradients, so with losses that are means over equal
items, N ranks of `batch` items follow the run of one process with N * batch items (up to the
order of float sums). Rank 0 writes checkpoints; the others stay quiet.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass(frozen=True)
class World:
    """This process's rank among `size` training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def note(self) -> str:
        """", N processes" for a progress line, empty for one process."""
        return f", {self.size} processes" if self.size > 1 else ""

    def items(self, batch: int) -> range:
        """The global batch items this rank assembles when each rank takes `batch`."""
        return range(self.rank * batch, (self.rank + 1) * batch)


def torchrun_world() -> World:
    """The World that torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) describes."""
    try:
        world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them).") from None
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise InputError(f"rank {world.rank} is not among WORLD_SIZE={world.size} processes.")
    return world


def current_world() -> World:
    """The World of the initialised process group, or one process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


@contextmanager
def process_group(device: str) -> Iterator[tuple[World, str]]:
    """(world, this rank's device): under torchrun, join the process group (nccl for CUDA, gloo
    otherwise; each rank on cuda:LOCAL_RANK) and leave it on exit; alone, nothing to join."""
    world = torchrun_world()
    if world.size == 1 or dist.is_initialized():
        yield current_world(), device
        return
    if not dist.is_available():
        raise InputError("this PyTorch build has no torch.distributed: train in one process.")
    if str(device).startswith("mps"):
        raise InputError("several training processes run on CPUs (gloo) or CUDA GPUs (nccl), not on mps.")
    if str(device).startswith("cuda"):
        if world.local_rank >= torch.cuda.device_count():
            raise InputError(f"local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} visible).")
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def item_generator(seed: int, step: int, item: int, purpose: str = "batch") -> torch.Generator:
    """The generator of item `item` of step `step`'s global batch, for one purpose (assembly, loss)."""
    key = hashlib.blake2b(f"{seed},{step},{item},{purpose}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little"))


def loss_generators(seed: int, step: int, items: range, purpose: str = "loss") -> list[torch.Generator]:
    """One generator per item for the loss's own draws (timesteps, noise): see nn/draws.py."""
    return [item_generator(seed, step, i, purpose) for i in items]


def mean_over_ranks(values: list[float], world: World) -> list[float]:
    """Each value averaged over the ranks (every rank gets the means)."""
    if world.size == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world.size).tolist()


class Objective(torch.nn.Module):
    """A training loss as a module's forward over the `trained` network, for DistributedDataParallel."""

    def __init__(self, trained: torch.nn.Module, loss: Callable):
        super().__init__()
        self.trained = trained
        self.loss = loss

    def forward(self, *args, **kwargs):
        return self.loss(*args, **kwargs)


def shared(objective: Objective, world: World, device) -> torch.nn.Module:
    """The objective wrapped in DistributedDataParallel when there are several ranks (it averages
    the gradients in backward); the objective itself for one process."""
    if world.size == 1:
        return objective
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    return DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)


def _seed_worker(worker_id: int) -> None:
    """numpy's and random's seeds in a DataLoader worker, from its torch seed (set by the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _StepItems(torch.utils.data.Dataset):
    def __init__(self, make: Callable):
        self.make = make

    def __getitem__(self, key):
        return self.make(*key)


class _StepKeys:
    """For each step start .. steps - 1, the (step, item) keys of this rank's items."""

    def __init__(self, start: int, steps: int, items: range):
        self.start, self.steps, self.items = start, steps, items

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield [(step, i) for i in self.items]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _collate(items: list[tuple]) -> tuple:
    """Items (tuples of tensors with a batch axis of 1, or numbers) -> one batch."""
    return tuple(torch.cat(field) if isinstance(field[0], torch.Tensor) else torch.tensor(field)
                 for field in zip(*items))


def step_batches(make: Callable, start: int, steps: int, *, world: World, batch: int, workers: int = 0,
                 seed: int = 0, device="cpu") -> Iterator[tuple]:
    """This rank's batch of every step start .. steps - 1, on `device`.

    make(step, item) -> a tuple of tensors (batch axis of 1) or numbers, item being the index in the
    step's global batch; it must draw from item_generator(seed, step, item) only, so that an item
    is the same whichever rank or worker assembles it. With workers > 0, DataLoader worker processes
    (persistent, seeded) assemble the items in parallel; `make` must then be picklable and work on the CPU.
    """
    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}.")
    loader = torch.utils.data.DataLoader(
        _StepItems(make), batch_sampler=_StepKeys(start, steps, world.items(batch)), num_workers=workers,
        collate_fn=_collate, worker_init_fn=_seed_worker, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed), pin_memory=workers > 0 and torch.device(device).type == "cuda")
    return (tuple(p.to(device, non_blocking=True) for p in parts) for parts in loader)
