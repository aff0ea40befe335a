"""Run a core generator in napari's thread_worker and grow 4D layers as its frames arrive."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from .._layers import attach_field, volume_to_layer_data
from ..core.errors import InputError
from ..core.events import Frame, RunProgress
from ..core.geometry import Geometry
from ..core.io import Volume

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)
PROGRESS_MS = 250  # napari's progress bar runs a nested event loop per update: not more often than this
# Queued events are handled this far apart: back-to-back zero-delay turns (each with the repaint it
# causes) would keep timers and input waiting for all of them.
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


class FrameBuffers:
    """Preallocated (T, ...) arrays of a stream's frames: images and fields float32, labels in
    their own dtype, allocated for frame.total frames when the first frame comes.

    `stage` runs in the worker thread (start_stream's `prepare`): it copies each frame into its
    slot before the GUI thread sees the frame, which then only re-assigns views. Copying there
    stalled the viewer 25-55 ms per 128 x 128 x 32 frame while the worker kept both cores busy.
    The GUI only reads slots below the frames it has shown, the worker only writes later ones.
    """

    def __init__(self):
        self.images: np.ndarray | None = None
        self.fields: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._staged: set[int] = set()
        self._lock = threading.Lock()

    def stage(self, event):
        if isinstance(event, Frame):
            self.put(event)
        return event

    def holds(self, index: int) -> bool:
        return index in self._staged

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self.images is None:
                total = max(int(frame.total), frame.index + 1)
                self.images = np.zeros((total, *frame.image.shape), np.float32)
                if frame.labels is not None:
                    self.labels = np.zeros((total, *frame.labels.shape), frame.labels.dtype)
                if frame.field is not None:
                    self.fields = np.zeros((total, *frame.field.shape), np.float32)
            k = frame.index
            self.images[k] = frame.image
            if self.fields is not None and frame.field is not None:
                self.fields[k] = frame.field
            if self.labels is not None and frame.labels is not None:
                self.labels[k] = frame.labels
            self._staged.add(k)


class GrowingSequence:
    """Image (and optional labels) layers of shape (T, ...) that grow frame by frame.

    Frames go into preallocated buffers (FrameBuffers; pass the ones a worker stages into); the
    layers are re-assigned a view buf[:k+1] so napari's time slider extends (in-place writes
    would not update it). Fields that come with the frames are kept in the image layer's metadata
    (see _layers.attach_field), updated before its data so that listeners of the data event see both.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, name: str, geometry: Geometry,
                 total: int, with_labels: bool = False, time_spacing: float | None = None,
                 buffers: FrameBuffers | None = None):
        self.viewer = viewer
        self.name = name
        self.geometry = geometry
        self.total = total
        self.with_labels = with_labels
        self.time_spacing = time_spacing
        self.buffers = buffers or FrameBuffers()
        self.count = 0
        self.image_layer = None
        self.labels_layer = None
        self._labels_pending = False

    def add(self, frame: Frame) -> None:
        from napari.layers import Layer

        k = frame.index
        if not self.buffers.holds(k):
            self.buffers.put(frame)
        images, fields = self.buffers.images, self.buffers.fields
        labels = self.buffers.labels if self.with_labels else None
        self.count = max(self.count, k + 1)
        view = images[: self.count]
        if self.image_layer is None:
            image = Volume(view, self.geometry, False, self.name, self.time_spacing, "generated")
            data, kwargs, kind = volume_to_layer_data(image)
            if fields is not None:
                attach_field(kwargs["metadata"], fields[: self.count], total=self.total)
            self.image_layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        else:
            if fields is not None:
                attach_field(self.image_layer.metadata, fields[: self.count], total=self.total)
            self.image_layer.data = view
        if labels is not None:
            if self.labels_layer is not None:
                self.labels_layer.data = labels[: self.count]
            elif not self._labels_pending:  # napari takes ~80 ms per new layer: not in the image's turn
                self._labels_pending = True
                QTimer.singleShot(SPACING_MS, self.flush)

    def flush(self) -> None:
        """Make the labels layer now if it is still waiting for its own event-loop turn."""
        from napari.layers import Layer

        if not self._labels_pending:
            return
        self._labels_pending = False
        labels = self.buffers.labels[: self.count]
        volume = Volume(labels, self.geometry, True, f"{self.name} labels", self.time_spacing, "generated")
        self.labels_layer = self.viewer.add_layer(Layer.create(*volume_to_layer_data(volume, opacity=0.4)))


class StreamingWidget:
    """Run / Cancel buttons and a status line around one streamed generator (a mixin for
    magicgui Containers that have a `frames` spin box and fill `self.sequence`)."""

    worker = None
    sequence: GrowingSequence | None = None

    def _stream_controls(self, run_text: str) -> list:
        from magicgui.widgets import Label, PushButton

        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        return [self.run_button, self.cancel_button, self.status]

    def _running(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "starting..."

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()  # stops at the next event; frames already made stay

    def _done(self):
        if self.sequence is not None:
            self.sequence.flush()
        self.run_button.enabled, self.cancel_button.enabled = True, False
        made = self.sequence.count if self.sequence else 0
        self.status.value = f"{made}/{self.frames.value} frames"
        self.worker = None


class StreamHandle(QObject):
    """The GUI side of one streamed worker.

    napari's progress bar runs a nested event loop on every update (QApplication.processEvents),
    and a nested loop delivers the worker's next events inside the current one. Handling every
    event on arrival therefore chained frame handlers, layer creations and repaints into one
    main-thread stall. Here events are queued on arrival and handled one per event-loop turn;
    no turn handles events inside another, and the progress bar is updated in a turn of its own,
    at most every PROGRESS_MS.

    Signals: `yielded(event)` once `on_event` has handled the event, `finished` once every
    event is handled and `on_done` has run. `quit()` cancels: the worker stops at its next event,
    and the events it already made are still handled (frames made are kept).
    """

    yielded = Signal(object)
    finished = Signal()

    def __init__(self, worker, *, description: str, on_event: Callable, on_done: Callable[[], None],
                 progress_bar: bool = True):
        super().__init__()
        from napari.utils import progress

        self.worker = worker
        self._on_event = on_event
        self._on_done = on_done
        self._queue: deque = deque()
        self._busy = False  # inside a handler or a progress update: nested deliveries only queue
        self._scheduled = False
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

    def quit(self) -> None:
        self.worker.quit()

    @property
    def is_running(self) -> bool:
        return not self._closed

    def _arrived(self, event) -> None:
        self._queue.append(event)
        self._kick()

    def _kick(self, delay_ms: int = 0) -> None:
        if not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(delay_ms, self._handle_next)

    def _handle_next(self) -> None:
        self._scheduled = False
        if self._busy or in_nested_event_loop():
            if not self._busy:
                self._kick(SPACING_MS)  # inside another stream's progress update: come back later
            return  # inside our own turn: it kicks again when it ends
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
            self._kick(SPACING_MS)
        elif self._worker_done:
            self._finish()

    def _progress_due(self) -> None:
        if self._progress_scheduled:
            return
        wait = max(0.0, PROGRESS_MS / 1000 - (time.perf_counter() - self._last_progress))
        self._progress_scheduled = True
        QTimer.singleShot(int(wait * 1000), self._show_progress)

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
            self._kick()

    def _worker_finished(self) -> None:
        self._worker_done = True
        if not self._queue and not self._busy:
            self._finish()
        else:
            self._kick()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pbar is not None:
            self._pbar.close()
        try:
            self._on_done()
        finally:
            self.finished.emit()


def start_stream(
    make_events: Callable[[], Iterator], *, description: str,
    on_event: Callable, on_done: Callable[[], None], progress_bar: bool = True,
    prepare: Callable | None = None,
) -> StreamHandle:
    """Run the generator `make_events()` in napari's thread_worker, with a napari progress bar
    whose length comes from the generator's Plan (core.events).

    `on_event` runs in the GUI thread for every event, one per event-loop turn (StreamHandle);
    `on_done` when the worker has stopped for any reason (finished, cancelled by quit(), or
    failed) and every event it made has been handled. Errors become notifications. Without
    `progress_bar` (work that follows another stream, which has its own), no napari progress bar:
    creating one runs a nested event loop too. `prepare(event) -> event` runs in the worker thread
    before the event is passed on (e.g. FrameBuffers.stage).
    """
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error

    def events():  # a generator function, so napari makes a GeneratorWorker (cancellable)
        for event in make_events():
            yield prepare(event) if prepare is not None else event

    worker = create_worker(events, _ignore_errors=True)
    handle = StreamHandle(worker, description=description, on_event=on_event, on_done=on_done,
                          progress_bar=progress_bar)

    def report(exc: Exception) -> None:
        if isinstance(exc, InputError):
            show_error(str(exc))
        else:
            log.error("%s failed:\n%s", description, "".join(traceback.format_exception(exc)))
            show_error(f"{description} failed: {type(exc).__name__}: {exc}")

    worker.errored.connect(report)
    worker.start()
    return handle
