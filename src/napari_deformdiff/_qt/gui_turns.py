"""GUI-thread work of every running stream, overlay set and plot, one task per event-loop turn.

Each task (handle one streamed event, create or update one layer, update a progress bar, redraw
the plot) costs the GUI thread 10-120 ms plus the repaint it causes. Scheduled each on its own
timer, tasks that became due during a long one ran back to back in the same event-loop pass,
and the viewer froze for their sum. Here they wait in one queue: a task starts SPACING_MS after
the previous one ended, so the timers, input and repaint that became due in between go first.

A nested event loop (napari's progress bar runs one on every update) runs no task: the task
waits for the outer loop's next turn.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager

SPACING_MS = 10

_NESTED = [0]


@contextmanager
def nested_event_loop():
    """Mark code that runs a nested event loop (napari's progress bar updates do)."""
    _NESTED[0] += 1
    try:
        yield
    finally:
        _NESTED[0] -= 1


def in_nested_event_loop() -> bool:
    """True while a nested event loop runs: heavy GUI work should wait for the outer turn."""
    return _NESTED[0] > 0


class TurnQueue:
    """Callables run in the GUI thread in submission order, one per event-loop turn."""

    def __init__(self):
        self._tasks: deque[Callable[[], object]] = deque()
        self._armed = False
        self._running = False
        self._ended = 0.0

    def submit(self, task: Callable[[], object]) -> None:
        """Run `task` in a turn of its own (once, however often it is submitted before it runs)."""
        if task not in self._tasks:
            self._tasks.append(task)
        self._arm()

    def discard(self, task: Callable[[], object]) -> None:
        while task in self._tasks:
            self._tasks.remove(task)

    def pending(self, task: Callable[[], object]) -> bool:
        return task in self._tasks

    @property
    def idle(self) -> bool:
        return not self._tasks and not self._running

    def _arm(self) -> None:
        from qtpy.QtCore import QTimer

        if self._armed or self._running or not self._tasks:  # a running task arms when it ends
            return
        self._armed = True
        wait = SPACING_MS / 1000 - (time.perf_counter() - self._ended)
        QTimer.singleShot(max(0, math.ceil(wait * 1000)), self._run)

    def _run(self) -> None:
        self._armed = False
        if self._running:  # a nested event loop inside a task: the task arms when it ends
            return
        if in_nested_event_loop():  # inside a progress bar's update
            self._ended = time.perf_counter()
            self._arm()
            return
        if self._tasks:
            task = self._tasks.popleft()
            self._running = True
            try:
                task()
            finally:
                self._running = False
                self._ended = time.perf_counter()
                self._arm()


TURNS = TurnQueue()
