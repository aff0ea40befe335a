"""Dock widget "Forecast (Mo-Diff)": one frame + a frame count -> a forecast sequence that
sharpens in a 4D layer while the model samples, and the differential fields as a second layer.

The first frame defaults to the newest ACDC ED; the frame count's range is the loaded model's
(min_frames..max_frames of its config). The final frames carry the fields that made them (layer
metadata, as DDM's and DRDM's), so Inspect shows their vectors, Jacobian and folding; the status
line reports the intensity range against the first frame's and the folding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, SpinBox

from ..core.errors import InputError
from ..core.events import Frame, SequencePreview
from .generator_widget import GeneratorWidget
from .layer_inputs import RoleDefaults, compact, follow_layer_list, pick

if TYPE_CHECKING:
    import napari


class SequenceLayer:
    """A 4D image layer whose whole content is replaced (previews, then the final frames)."""

    def __init__(self, viewer: napari.viewer.Viewer, name: str, geometry, provenance=None, **style):
        self.viewer, self.name, self.geometry, self.style = viewer, name, geometry, style
        self.provenance = provenance
        self.layer = None

    def show(self, images: np.ndarray, name: str | None = None) -> None:
        from napari.layers import Layer

        from .._layers import set_provenance, volume_to_layer_data
        from ..core.io import Volume

        images = np.asarray(images, np.float32)
        if self.layer is None or self.layer not in self.viewer.layers:
            data, kwargs, kind = volume_to_layer_data(
                Volume(images, self.geometry, False, name or self.name, None, "generated"), **self.style)
            if self.provenance is not None:
                set_provenance(kwargs["metadata"], self.provenance)
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
        compact(self.first)
        self.frames = SpinBox(label="Frame count N", value=10, min=4, max=12)
        self.steps = SpinBox(label="Sampler steps", value=25, min=1, max=1000)
        self.sampler = ComboBox(label="Sampler", choices=["ddim", "ancestral"], value="ddim")
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.extend([self.first, self._slider_control(), self.frames, self.steps, self.sampler, self.seed,
                     *self._compute_controls(weights_filter="*.safetensors"), *self._stream_controls("Forecast")])
        self.forecast: SequenceLayer | None = None
        self.differential: SequenceLayer | None = None
        self.previews = 0
        self.made = 0
        self.fields: np.ndarray | None = None
        self._quality = ("", None)
        self.defaults = RoleDefaults(viewer, [(self.first, "ED", None)])
        self.defaults.apply()
        follow_layer_list(self, viewer, self.defaults)
        self.first.changed.connect(self.update_frame_range)
        self.weights.changed.connect(self.update_frame_range)
        self.update_frame_range()

    def update_frame_range(self, *_args) -> None:
        """The frame count's range from the chosen model's config (left as is while it cannot be read)."""
        from .._layers import layer_attributes, layer_to_volume
        from ..core.modiff.weights import frame_range

        try:
            ndims = None
            if self.first.value is not None:
                layer = self.first.value
                ndims = layer_to_volume(layer.data, layer_attributes(layer), is_labels=False).geometry.ndim
            lo, hi = frame_range(self._weights(), ndims=ndims)
        except (InputError, ValueError, OSError):
            return
        self.frames.min, self.frames.max = lo, hi  # magicgui clamps the value into the range

    def _inputs(self):
        from ..core.errors import InputError
        from ..core.modiff.generate import check_request
        from ..core.modiff.weights import load_modiff

        if self.first.value is None:
            raise InputError("Mo-Diff: choose the first frame (an image layer).")
        first = self._frame(self.first.value, is_labels=False)
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
        from .._layers import short_label

        first, model = inputs
        frames, steps, sampler, seed = self.frames.value, self.steps.value, self.sampler.value, self.seed.value
        layer = self.first.value
        name = f"Mo-Diff {short_label(layer)}"
        weights = self._weights(must_exist=False)
        provenance = {"method": "Mo-Diff", "first": layer.name, "weights": self._weights_text(weights),
                      "seed": seed, "frames": frames, "steps": steps, "sampler": sampler,
                      "time_series_frame": self.use_slider.value}
        self.forecast = SequenceLayer(self.viewer, name, first.geometry, provenance, colormap="gray",
                                      blending="translucent")
        self.differential = SequenceLayer(self.viewer, f"{name} differential fields", first.geometry, provenance,
                                          colormap="PiYG", blending="translucent", visible=False)
        self._quality = (self._phantom_note(weights, layer), first.data)
        hidden = []
        self.previews, self.made = 0, 0
        final = np.zeros((frames, *first.data.shape), np.float32)
        self.fields = None

        def on_event(event):
            if isinstance(event, SequencePreview):
                self._show_preview(event, name)
            elif isinstance(event, Frame):
                final[event.index] = event.image
                if event.field is not None:
                    if self.fields is None:
                        self.fields = np.zeros((frames, *event.field.shape), np.float32)
                    self.fields[event.index] = event.field
                self.made = event.index + 1
                if self.made == frames:
                    self._show_final(final, name)
            if not hidden and self.forecast.layer is not None:  # hide the input once, under the first preview
                self._hide(layer)
                hidden.append(True)

        return self._stream(
            lambda: generate_modiff(first, frames=frames, steps=steps, sampler=sampler, seed=seed, model=model),
            description=name, on_event=on_event,
        )

    def _show_final(self, images: np.ndarray, name: str) -> None:
        """The final frames replace the preview; their fields go into the layer's metadata first."""
        from .._layers import attach_field

        layer = self.forecast.layer
        if self.fields is not None and layer is not None and layer in self.viewer.layers:
            attach_field(layer.metadata, self.fields, total=len(self.fields))
        self.forecast.show(images, name)
        if self.fields is not None and layer is None:
            attach_field(self.forecast.layer.metadata, self.fields, total=len(self.fields))

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
            from ..core.quality import folding_note, range_note

            note, reference = self._quality
            self.status.value = self._line(f"{self.made} frames ({self.previews} previews)",
                                           range_note(self.forecast.layer.data, reference),
                                           folding_note(self.fields), note)
        else:
            ended = "stopped" if self._failure else "cancelled"
            shown = (f"{ended} after {self.previews} previews: the layer shows the last preview" if self.previews
                     else f"{ended} before the first preview")
            self.status.value = self._line(shown, self._failure)
