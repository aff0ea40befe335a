"""Dock widget "Forecast (Mo-Diff)": one frame + a frame count -> a forecast sequence that
sharpens in a 4D layer while the model samples, and the differential fields as a second layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, SpinBox

from ..core.events import Frame, SequencePreview
from .generator_widget import GeneratorWidget
from .layer_inputs import follow_layer_list, frame_volume, pick

if TYPE_CHECKING:
    import napari


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


class ModiffWidget(GeneratorWidget):
    method = "Mo-Diff"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = viewer
        self.first = ComboBox(label="First frame", choices=lambda _w: pick(viewer.layers, Image, "ED"))
        self.frames = SpinBox(label="Frame count N", value=10, min=2, max=64)
        self.steps = SpinBox(label="Sampler steps", value=25, min=1, max=1000)
        self.sampler = ComboBox(label="Sampler", choices=["ddim", "ancestral"], value="ddim")
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.extend([self.first, self.frames, self.steps, self.sampler, self.seed,
                     *self._compute_controls(weights_filter="*.safetensors"), *self._stream_controls("Forecast")])
        self.forecast: SequenceLayer | None = None
        self.differential: SequenceLayer | None = None
        self.previews = 0
        self.made = 0
        follow_layer_list(self, viewer)

    def _inputs(self):
        from ..core.errors import InputError
        from ..core.modiff.generate import check_request
        from ..core.modiff.weights import load_modiff

        if self.first.value is None:
            raise InputError("Mo-Diff: choose the first frame (an image layer).")
        first = frame_volume(self.viewer, self.first.value, is_labels=False)
        frames, steps, sampler = self.frames.value, self.steps.value, self.sampler.value
        check_request(first, frames, None, steps, sampler)
        device, weights = self._compute(must_exist=False)  # load_modiff says what is wrong with the file
        # Loading takes well under a second and catches a wrong file, 2D/3D mismatch or an
        # untrained frame count here, as a notification, before any layer is made.
        model, _ = load_modiff(weights, ndims=first.geometry.ndim, device=device)
        check_request(first, frames, model, steps, sampler)
        return first, model

    def start(self):
        from ..core.modiff.generate import generate_modiff

        inputs = self._read(self._inputs)
        if inputs is None:
            return None
        first, model = inputs
        frames, steps, sampler, seed = self.frames.value, self.steps.value, self.sampler.value, self.seed.value
        name = f"Mo-Diff {self.first.value.name}"
        self.forecast = SequenceLayer(self.viewer, name, first.geometry, colormap="gray")
        self.differential = SequenceLayer(self.viewer, f"{name} differential fields", first.geometry,
                                          colormap="PiYG", blending="translucent", visible=False)
        self.previews, self.made = 0, 0
        final = np.zeros((frames, *first.data.shape), np.float32)

        def on_event(event):
            if isinstance(event, SequencePreview):
                self._show_preview(event, name)
            elif isinstance(event, Frame):
                final[event.index] = event.image
                self.made = event.index + 1
                if self.made == frames:
                    self.forecast.show(final, name)

        return self._stream(
            lambda: generate_modiff(first, frames=frames, steps=steps, sampler=sampler, seed=seed, model=model),
            description=name, on_event=on_event,
        )

    def _show_preview(self, event: SequencePreview, name: str) -> None:
        self.previews += 1
        self.forecast.show(event.images, f"{name} (preview, {event.stage})")
        if event.differential is not None:
            self.differential.show(event.differential)
            limit = float(np.abs(event.differential).max()) or 1.0
            self.differential.layer.contrast_limits = (-limit, limit)
        self.status.value = f"preview {self.previews} ({event.stage}, step {event.index + 1}/{event.total})"

    def _done(self):
        self._idle()
        if self.made == self.frames.value:
            self.status.value = f"{self.made} frames ({self.previews} previews)"
        else:
            self.status.value = f"cancelled after {self.previews} previews: the layer shows the last preview"
