"""4D layers that grow as a streamed generator's frames arrive (the frames staged in the worker)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from .._layers import attach_field, set_provenance, volume_to_layer_data
from ..core.events import Frame
from ..core.geometry import Geometry
from ..core.io import Volume
from .gui_turns import TURNS
from .layer_insert import insert_layer

if TYPE_CHECKING:
    import napari


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


def add_time_slider(viewer: napari.viewer.Viewer, ndim: int) -> None:
    """Give an empty viewer `ndim` dimensions now (at a run's start), not when the first frame's layer
    goes in: napari makes the sliders then, and the two together took 160-270 ms of one GUI turn
    during the run (the sliders alone 60-100 ms). A viewer with layers is left alone (napari fits
    the view to its layers' extents, which lack the new dimension)."""
    if len(viewer.layers) == 0 and viewer.dims.ndim < ndim:
        viewer.dims.ndim = ndim


class GrowingSequence:
    """Image (and optional labels) layers of shape (T, ...) that grow frame by frame.

    Frames go into preallocated buffers (FrameBuffers; pass the ones a worker stages into); the
    layers are re-assigned a view buf[:k+1] so napari's time slider extends (in-place writes
    would not update it). Fields that come with the frames are kept in the image layer's metadata
    (see _layers.attach_field), updated before its data so that listeners of the data event see both.
    Results cover what is below (normal "translucent" blending, not additive); `provenance` goes
    into both layers' metadata; `on_first` is called once with the new image layer.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, name: str, geometry: Geometry,
                 total: int, with_labels: bool = False, time_spacing: float | None = None,
                 buffers: FrameBuffers | None = None, provenance: dict | None = None, on_first=None):
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
        self.provenance = provenance
        self.on_first = on_first
        add_time_slider(viewer, geometry.ndim + 1)

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
            data, kwargs, kind = volume_to_layer_data(image, blending="translucent")
            if self.provenance is not None:
                set_provenance(kwargs["metadata"], self.provenance)
            if fields is not None:
                attach_field(kwargs["metadata"], fields[: self.count], total=self.total)
            self.image_layer = insert_layer(self.viewer, Layer.create(data, kwargs, kind))
            if self.on_first is not None:
                self.on_first(self.image_layer)
            TURNS.submit(self._slider_onto_frames)
        else:
            if fields is not None:
                attach_field(self.image_layer.metadata, fields[: self.count], total=self.total)
            self._grow(self.image_layer, view, k)
        if labels is not None:
            if self.labels_layer is not None:
                self._grow(self.labels_layer, labels[: self.count], k)
            elif not self._labels_pending:  # napari takes ~80 ms per new layer: not in the image's turn
                self._labels_pending = True
                TURNS.submit(self.flush)

    def _grow(self, layer, view: np.ndarray, new: int) -> None:
        """layer.data = view. Where the frame under the time slider is neither new to the layer nor
        frame `new`, only the time extent grows: napari still re-slices and extends the slider, but
        its set_data and thumbnail events are held, so no texture upload or repaint follows."""
        shown = self._frame_shown(layer)
        if shown is not None and shown < len(layer.data) and shown != new:
            with layer.events.set_data.blocker(), layer.events.thumbnail.blocker():
                layer.data = view
        else:
            layer.data = view

    def _slider_onto_frames(self) -> None:
        """Move the time slider to the first frame when it stands where this sequence has none and
        no other layer is shown (a longer input cine set its range, the inputs are hidden under the
        result: the canvas would be empty). A turn of its own: the move re-slices every layer."""
        layer = self.image_layer
        if layer is None or layer not in self.viewer.layers:
            return
        if any(other.visible for other in self.viewer.layers if other is not layer and other is not self.labels_layer):
            return
        shown = self._frame_shown(layer)
        if shown is not None and not 0 <= shown < self.count:
            self.viewer.dims.set_point(0, float(layer.data_to_world([0] * layer.ndim)[0]))

    def _frame_shown(self, layer) -> int | None:
        point = self.viewer.dims.point
        if len(point) != layer.ndim:
            return None
        return int(round(layer.world_to_data(point)[0]))

    def flush(self) -> None:
        """Make the labels layer now if it is still waiting for its own event-loop turn."""
        from napari.layers import Layer

        if not self._labels_pending:
            return
        self._labels_pending = False
        labels = self.buffers.labels[: self.count]
        volume = Volume(labels, self.geometry, True, f"{self.name} labels", self.time_spacing, "generated")
        data, kwargs, kind = volume_to_layer_data(volume, opacity=0.4, blending="translucent")
        if self.provenance is not None:
            set_provenance(kwargs["metadata"], self.provenance)
        self.labels_layer = insert_layer(self.viewer, Layer.create(data, kwargs, kind), activate=False)
