"""The one protocol between the core's generators and their consumers (napari worker, CLI).

Every long-running core function is a Python generator. Its first event is a `Plan` that names
its stages and how many units of work each has; every later event names its stage and where it
is in it. Events are yielded as soon as their content exists; consumers stop the run (cancel) by
not asking for the next event. `RunProgress` turns the events into one overall figure, so no
consumer needs to know how many events a generator yields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import numpy as np


@dataclass
class Plan:
    """The work ahead, in order: `stages` = ((name, units), ...)."""

    stages: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(units for _, units in self.stages)


@dataclass
class Progress:
    """`index` of the `total` units of `stage` are done; `message` says what happens now."""

    index: int
    total: int
    message: str = ""
    stage: str = ""


@dataclass
class Frame:
    """Frame `index` of `total` is ready (unit `index` of its stage, done).

    `image` is a float32 array in array-axis order ([Z,] Y, X); `field` (optional) is the pull
    displacement that made it, shape (ndim, [Z,] Y, X), in voxels, components in array-axis order;
    `labels` (optional) is the frame's integer label map.
    """

    index: int
    total: int
    image: np.ndarray
    field: np.ndarray | None = None
    labels: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    stage: str = "frames"


@dataclass
class SequencePreview:
    """The current estimate of a whole sequence while a generator refines it (step `index` of
    `total` of `stage`): `images` (N, [Z,] Y, X) float32 at the input's grid; `differential`
    (optional, same shape) the temporal differential fields I_k - I_{k-1} behind it. Final
    frames follow as Frame events. A preview does not advance the progress."""

    index: int
    total: int
    images: np.ndarray
    differential: np.ndarray | None = None
    stage: str = ""


class RunProgress:
    """Overall progress of one run, fed with its events: `done` of `total` units, `message`."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0
        self.message = ""
        self._offsets: dict[str, int] = {}

    def update(self, event: Any) -> bool:
        """Take one event; True if the figure or the message changed."""
        before = (self.total, self.done, self.message)
        if isinstance(event, Plan):
            offset = 0
            for name, units in event.stages:
                self._offsets[name] = offset
                offset += units
            self.total = offset
        elif isinstance(event, (Progress, Frame)):
            within = event.index if isinstance(event, Progress) else event.index + 1
            done = self._offsets.get(event.stage, 0) + within
            self.done = max(self.done, min(done, self.total if self.total is not None else done))
            if isinstance(event, Progress):
                self.message = event.message
            else:
                self.message = f"{event.stage} {event.index + 1}/{event.total}"
        return (self.total, self.done, self.message) != before


def run_to_end(events: Iterator[Any]) -> Any:
    """Drive an event generator to its end, dropping the events; what it returns."""
    while True:
        try:
            next(events)
        except StopIteration as done:
            return done.value
