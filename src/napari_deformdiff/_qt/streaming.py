"""Run a core generator in napari's thread_worker and grow 4D layers as its frames arrive."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from .._layers import attach_field, volume_to_layer_data
from ..core.errors import InputError
from ..core.events import Frame
from ..core.geometry import Geometry
from ..core.io import Volume

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


class GrowingSequence:
    """Image (and optional labels) layers of shape (T, ...) that grow frame by frame.

    Frames go into preallocated float32 / integer buffers; the layers are re-assigned a view
    buf[:k+1] so napari's time slider extends (in-place writes would not update it). Fields that
    come with the frames are kept in the image layer's metadata (see _layers.attach_field),
    updated before its data so that listeners of the data event see both.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, name: str, geometry: Geometry,
                 total: int, with_labels: bool = False, time_spacing: float | None = None):
        self.viewer = viewer
        self.name = name
        self.geometry = geometry
        self.total = total
        self.with_labels = with_labels
        self.time_spacing = time_spacing
        self.count = 0
        self.image_layer = None
        self.labels_layer = None
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._fields: np.ndarray | None = None

    def add(self, frame: Frame) -> None:
        from napari.layers import Layer

        k = frame.index
        if self._images is None:
            self._images = np.zeros((self.total, *frame.image.shape), np.float32)
            if self.with_labels and frame.labels is not None:
                self._labels = np.zeros((self.total, *frame.labels.shape), frame.labels.dtype)
            if frame.field is not None:
                self._fields = np.zeros((self.total, *frame.field.shape), np.float32)
        self._images[k] = frame.image
        if self._fields is not None and frame.field is not None:
            self._fields[k] = frame.field
        if self._labels is not None and frame.labels is not None:
            self._labels[k] = frame.labels
        self.count = max(self.count, k + 1)
        view = self._images[: self.count]
        if self.image_layer is None:
            image = Volume(view, self.geometry, False, self.name, self.time_spacing, "generated")
            data, kwargs, kind = volume_to_layer_data(image)
            if self._fields is not None:
                attach_field(kwargs["metadata"], self._fields[: self.count], total=self.total)
            self.image_layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        else:
            if self._fields is not None:
                attach_field(self.image_layer.metadata, self._fields[: self.count], total=self.total)
            self.image_layer.data = view
        if self._labels is not None:
            lview = self._labels[: self.count]
            if self.labels_layer is None:
                labels = Volume(lview, self.geometry, True, f"{self.name} labels", self.time_spacing, "generated")
                data = volume_to_layer_data(labels, opacity=0.4)
                self.labels_layer = self.viewer.add_layer(Layer.create(*data))
            else:
                self.labels_layer.data = lview


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
        self.run_button.enabled, self.cancel_button.enabled = True, False
        made = self.sequence.count if self.sequence else 0
        self.status.value = f"{made}/{self.frames.value} frames"
        self.worker = None


def start_stream(
    make_events: Callable[[], Iterator], *, total: int, description: str,
    on_event: Callable, on_done: Callable[[], None],
):
    """Start a thread_worker over the generator `make_events()` with a napari progress bar.

    `on_event` runs in the GUI thread for every event; `on_done` when the worker stops for any
    reason (finished, cancelled by worker.quit(), or failed). Errors become notifications.
    """
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error

    def events():  # a generator function, so napari makes a GeneratorWorker (cancellable)
        yield from make_events()

    worker = create_worker(events, _progress={"total": total, "desc": description}, _ignore_errors=True)
    worker.yielded.connect(on_event)

    def report(exc: Exception) -> None:
        if isinstance(exc, InputError):
            show_error(str(exc))
        else:
            log.error("%s failed:\n%s", description, "".join(traceback.format_exception(exc)))
            show_error(f"{description} failed: {type(exc).__name__}: {exc}")

    worker.errored.connect(report)
    worker.finished.connect(on_done)
    worker.start()
    return worker
