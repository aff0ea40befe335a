"""Run a core generator in napari's thread_worker; its events reach the GUI one per event-loop turn."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator

from qtpy.QtCore import QObject, QTimer, Signal

from ..core.errors import InputError
from ..core.events import RunProgress
from .gui_turns import TURNS, nested_event_loop

log = logging.getLogger(__name__)
PROGRESS_MS = 250  # napari's progress bar runs a nested event loop per update: not more often than this
WORKER_NICENESS = 10  # a worker thread's niceness above the GUI thread's (Linux)


def yield_cpu_to_the_gui() -> None:
    """Give the calling (worker) thread a lower scheduling priority than the GUI thread.

    With the workers, the GUI thread and the renderer's threads on a few cores, the GUI thread
    waited for a core behind the workers for most of each of its turns; now it runs first when
    it has work, and the workers take what is left. Linux only (niceness is per thread there;
    elsewhere it would lower the whole process). Idempotent: pool threads are reused; one that
    ran a worker keeps the niceness (raising a priority needs privileges) until Qt's thread pool
    retires it (30 s idle), and threads the pool makes anew start from the GUI thread's."""
    if not sys.platform.startswith("linux"):
        return
    try:
        gui = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's id is the process id
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, gui + WORKER_NICENESS))
    except OSError:  # not permitted in this sandbox: run at the same priority
        pass


class _FrozenHeap:
    """Long-lived objects are kept out of the garbage collector's full passes; one full pass
    runs after layers are removed, where napari runs one per removed layer anyway.

    napari, Qt and torch hold 350 000-600 000 long-lived objects. A full collection walks all of
    them, holding the GIL, in whichever thread happens to allocate: 250-350 ms of GUI thread each,
    five per 16-frame run. gc.freeze puts them in a generation no pass walks. Each run freezes
    what exists when it starts (O(1)); when the last run ends and the GUI is quiet, only the
    objects made since are collected (the run's cyclic garbage) and the survivors frozen too: no
    full pass after a run. Garbage among frozen objects (a removed layer and its data, held in
    reference cycles) is freed by one full pass in the turn after layers leave a watched viewer
    (`watch`), or when the next run starts, if that comes first.
    """

    def __init__(self):
        self.runs = 0
        self._after_runs: list[Callable[[], None]] = []  # called once no run is left
        self._viewers: list = []  # weak references to the watched viewers' layer lists
        self._settle_armed = False
        self._full_pass_due = False

    def watch(self, viewer) -> None:
        """One full pass after layers leave `viewer` (a plugin widget's; connected once per viewer)."""
        import weakref

        layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
        self._viewers = [ref for ref in self._viewers if ref() is not None]
        if any(ref() is layers for ref in self._viewers):
            return
        self._viewers.append(weakref.ref(layers))
        layers.events.removed.connect(self._layer_removed)

    def _layer_removed(self, _event=None) -> None:
        from qtpy.QtCore import QTimer

        if gc.get_freeze_count() and not self._full_pass_due:  # else napari's own collection frees it
            self._full_pass_due = True
            QTimer.singleShot(0, self._full_pass)  # after the batch: viewer.layers.clear() removes many

    def _full_pass(self) -> None:
        if not self._full_pass_due:
            return
        self._full_pass_due = False
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def enter(self) -> None:
        self._full_pass()  # layers removed just before the run (Inspect's previous overlays): now
        self.runs += 1
        gc.freeze()

    def leave(self) -> None:
        self.runs -= 1
        if self.runs == 0:
            waiting, self._after_runs = self._after_runs, []
            for callback in waiting:
                callback()
            self._settle_when_quiet()

    def after_runs(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the last run ends (at once when none runs)."""
        if self.runs == 0:
            callback()
        elif callback not in self._after_runs:
            self._after_runs.append(callback)

    def _settle_when_quiet(self) -> None:
        from qtpy.QtCore import QTimer

        if not self._settle_armed:
            self._settle_armed = True
            QTimer.singleShot(SETTLE_AFTER_MS, self._settle)

    def _settle(self) -> None:
        self._settle_armed = False
        if self.runs > 0:  # the run that started meanwhile settles when it ends
            return
        if not TURNS.idle:  # a run's last layer updates first
            self._settle_when_quiet()
            return
        gc.collect()  # walks only the objects made since the run started
        gc.freeze()


SETTLE_AFTER_MS = 1000  # quiet time after the last run before its objects are collected and frozen
FROZEN_HEAP = _FrozenHeap()


class StreamHandle(QObject):
    """The GUI side of one streamed worker.

    napari's progress bar runs a nested event loop on every update (QApplication.processEvents),
    and a nested loop delivers the worker's next events inside the current one. Handling every
    event on arrival therefore chained frame handlers, layer creations and repaints into one
    main-thread stall. Here events are queued on arrival and handled one per event-loop turn
    (gui_turns.TURNS, shared with every other stream and overlay set); no turn handles events
    inside another, and the progress bar is updated in a turn of its own, at most every PROGRESS_MS.

    Signals: `yielded(event)` once `on_event` has handled the event, `finished` once every
    event is handled and `on_done` has run. `quit()` cancels: the worker stops at its next event,
    and the events it already made are still handled (frames made are kept).
    """

    yielded = Signal(object)
    finished = Signal()

    def __init__(self, worker, *, description: str, on_event: Callable, on_done: Callable[[], None],
                 progress_bar: bool = True, cancel: threading.Event | None = None):
        super().__init__()
        from napari.utils import progress

        self.worker = worker
        self._cancel = cancel
        self._on_event = on_event
        self._on_done = on_done
        self._queue: deque = deque()
        self._busy = False  # inside a handler or a progress update: nested deliveries only queue
        self._worker_done = False
        self._closed = False
        self.handled = 0
        self.progress = RunProgress()  # from the events: the generator's own Plan
        self._shown = 0
        self._last_progress = 0.0
        self._progress_scheduled = False
        self._pbar = progress(total=0, desc=description) if progress_bar else None
        worker.yielded.connect(self._arrived)
        worker.finished.connect(self._worker_finished)
        FROZEN_HEAP.enter()

    def quit(self) -> None:
        if self._cancel is not None:  # the generator returns at its next event and is closed in the worker
            self._cancel.set()
        else:
            self.worker.quit()

    @property
    def is_running(self) -> bool:
        return not self._closed

    def _arrived(self, event) -> None:
        self._queue.append(event)
        TURNS.submit(self._handle_next)

    def _handle_next(self) -> None:
        if self._busy:  # a nested loop of our own progress update: its turn submits again
            return
        if self._queue:
            event = self._queue.popleft()
            self._busy = True
            try:
                self._on_event(event)
            finally:
                self._busy = False
            self.handled += 1
            if self.progress.update(event):
                self._progress_due()
            self.yielded.emit(event)
        if self._queue:
            TURNS.submit(self._handle_next)
        elif self._worker_done:
            self._finish()

    def _progress_due(self) -> None:
        if self._progress_scheduled:
            return
        wait = max(0.0, PROGRESS_MS / 1000 - (time.perf_counter() - self._last_progress))
        self._progress_scheduled = True
        QTimer.singleShot(int(wait * 1000), lambda: TURNS.submit(self._show_progress))

    def _show_progress(self) -> None:
        self._progress_scheduled = False
        if self._closed or self._pbar is None or self._shown == self.progress.done:
            return
        if self._busy:
            self._progress_due()
            return
        self._busy = True
        try:
            with nested_event_loop():
                if self.progress.total is not None and self._pbar.total != self.progress.total:
                    self._pbar.total = self.progress.total
                self._pbar.update(self.progress.done - self._shown)
            self._shown = self.progress.done
        finally:
            self._busy = False
        self._last_progress = time.perf_counter()
        if self._queue:
            TURNS.submit(self._handle_next)

    def _worker_finished(self) -> None:
        self._worker_done = True
        if not self._queue and not self._busy:
            self._finish()
        else:
            TURNS.submit(self._handle_next)

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        FROZEN_HEAP.leave()
        if self._pbar is not None:
            self._pbar.close()
        try:
            self._on_done()
        finally:
            self.finished.emit()


class WorkerFailure(Exception):
    """A RuntimeError raised in the worker, passed on as this: superqt takes a RuntimeError from a
    worker for a deleted Qt object and emits neither `errored` nor `finished` (a widget left waiting)."""

    def __init__(self, original: RuntimeError):
        super().__init__(str(original))
        self.original = original


def start_stream(
    make_events: Callable[[], Iterator], *, description: str,
    on_event: Callable, on_done: Callable[[], None], progress_bar: bool = True,
    prepare: Callable | None = None, on_error: Callable[[str], None] | None = None,
) -> StreamHandle:
    """Run the generator `make_events()` in napari's thread_worker, with a napari progress bar
    whose length comes from the generator's Plan (core.events).

    `on_event` runs in the GUI thread for every event, one per event-loop turn (StreamHandle);
    `on_done` when the worker has stopped for any reason (finished, cancelled by quit(), or
    failed) and every event it made has been handled. Errors become notifications. Without
    `progress_bar` (work that follows another stream, which has its own), no napari progress bar:
    creating one runs a nested event loop too. `prepare(event) -> event` runs in the worker thread
    before the event is passed on (e.g. FrameBuffers.stage). `on_error(message)` gets the text of
    an error's notification, before `on_done`.
    """
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error

    cancel = threading.Event()

    def events():  # a generator function, so napari makes a GeneratorWorker
        yield_cpu_to_the_gui()
        stream = make_events()
        try:
            for event in stream:
                yield prepare(event) if prepare is not None else event
                if cancel.is_set():
                    return
        except RuntimeError as exc:  # torch's errors are RuntimeErrors: see WorkerFailure
            raise WorkerFailure(exc) from exc
        finally:  # a cancelled core generator cleans up here, in the worker (its threads, open outputs)
            stream.close()

    worker = create_worker(events, _ignore_errors=True)
    handle = StreamHandle(worker, description=description, on_event=on_event, on_done=on_done,
                          progress_bar=progress_bar, cancel=cancel)

    def report(exc: Exception) -> None:
        from ..core.errors import os_error_message

        if isinstance(exc, WorkerFailure):
            exc = exc.original
        if isinstance(exc, InputError):
            message = str(exc)
        elif isinstance(exc, OSError):  # disk full, read-only, permission: the CLI's one line
            message = f"{description}: {os_error_message(exc)}"
        elif isinstance(exc, MemoryError):
            message = f"{description}: out of memory; try smaller inputs or sizes."
        else:
            log.error("%s failed:\n%s", description, "".join(traceback.format_exception(exc)))
            message = f"{description} failed: {type(exc).__name__}: {exc}"
        show_error(message)
        if on_error is not None:
            on_error(message)

    worker.errored.connect(report)
    worker.start()
    return handle
