"""Dock widget "Forecast (Mo-Diff)": one frame + a frame count -> a forecast sequence that
sharpens in a 4D layer while the model samples, and the differential fields as a second layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox

from .layer_inputs import chosen_file, follow_layer_list, frame_volume, pick
from ..core.events import Frame, Progress, SequencePreview
from .streaming import StreamingWidget, start_stream

if TYPE_CHECKING:
    import napari

DEVICES = ["auto", "cpu", "cuda", "mps"]


class SequenceLayer:
    """A 4D image layer whose whole content is replaced (previews, then the final frames)."""

    def __init__(self, viewer: napari.viewer.Viewer, name: str, geometry, **style):
        self.viewer, self.name, self.geometry, self.style = viewer, name, geometry, style
        self.layer = None

    def show(self, images: np.ndarray, name: str | None = None) -> None:
        from napari.layers import Layer

        from .._layers import volume_to_layer_data
        from ..core.io import Volume

        images = np.asarray(images, np.float32)
        if self.layer is None or self.layer not in self.viewer.layers:
            data, kwargs, kind = volume_to_layer_data(
                Volume(images, self.geometry, False, name or self.name, None, "generated"), **self.style)
            self.layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
        else:
            self.layer.data = images
        if name is not None:
            self.layer.name = name


class ModiffWidget(StreamingWidget, Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = viewer
        self.first = ComboBox(label="First frame", choices=lambda _w: pick(viewer.layers, Image, "ED"))
        self.frames = SpinBox(label="Frame count N", value=10, min=2, max=64)
        self.steps = SpinBox(label="Sampler steps", value=25, min=1, max=1000)
        self.sampler = ComboBox(label="Sampler", choices=["ddim", "ancestral"], value="ddim")
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.weights = FileEdit(label="Weights (empty: bundled)", mode="r", filter="*.safetensors")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.extend([self.first, self.frames, self.steps, self.sampler, self.seed, self.weights, self.device,
                     *self._stream_controls("Forecast")])
        self.forecast: SequenceLayer | None = None
        self.differential: SequenceLayer | None = None
        self.previews = 0
        self.made = 0
        follow_layer_list(self, viewer)

    def start(self):
        from napari.utils.notifications import show_error

        from .._settings import gui_device_name
        from ..core.errors import InputError
        from ..core.modiff.generate import check_request, generate_modiff
        from ..core.modiff.weights import load_modiff

        try:
            if self.first.value is None:
                raise InputError("Mo-Diff: choose the first frame (an image layer).")
            first = frame_volume(self.viewer, self.first.value, is_labels=False)
            frames, steps, sampler, seed = self.frames.value, self.steps.value, self.sampler.value, self.seed.value
            check_request(first, frames, None, steps, sampler)
            device = gui_device_name(None if self.device.value == "auto" else self.device.value)
            # Loading takes well under a second and catches a wrong file, 2D/3D mismatch or an
            # untrained frame count here, as a notification, before any layer is made.
            model, _ = load_modiff(chosen_file(self.weights), ndims=first.geometry.ndim, device=device)
            check_request(first, frames, model, steps, sampler)
        except (InputError, ValueError) as exc:
            show_error(str(exc))
            return None

        name = f"Mo-Diff {self.first.value.name}"
        self.forecast = SequenceLayer(self.viewer, name, first.geometry, colormap="gray")
        self.differential = SequenceLayer(self.viewer, f"{name} differential fields", first.geometry,
                                          colormap="PiYG", blending="translucent", visible=False)
        self.previews, self.made = 0, 0
        final = np.zeros((frames, *first.data.shape), np.float32)

        def on_event(event):
            if isinstance(event, SequencePreview):
                self.previews += 1
                self.forecast.show(event.images, f"{name} (preview, {event.stage})")
                if event.differential is not None:
                    self.differential.show(event.differential)
                    limit = float(np.abs(event.differential).max()) or 1.0
                    self.differential.layer.contrast_limits = (-limit, limit)
                self.status.value = f"preview {self.previews} ({event.stage}, step {event.index + 1}/{event.total})"
            elif isinstance(event, Frame):
                final[event.index] = event.image
                self.made = event.index + 1
                if self.made == frames:
                    self.forecast.show(final, name)
            elif isinstance(event, Progress):
                self.status.value = event.message

        self._running()
        self.worker = start_stream(
            lambda: generate_modiff(first, frames=frames, steps=steps, sampler=sampler, seed=seed, model=model),
            description=name, on_event=on_event, on_done=self._done,
        )
        return self.worker

    def _done(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if self.made == self.frames.value:
            self.status.value = f"{self.made} frames ({self.previews} previews)"
        else:
            self.status.value = f"cancelled after {self.previews} previews: the layer shows the last preview"
        self.worker = None
