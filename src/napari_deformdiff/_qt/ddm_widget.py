"""Dock widget "Generate cycle (DDM)": frames between a source and a target, streamed into 4D layers.

Defaults: the newest ACDC patient's ED, ES and labels. Refused before any work: source = target
(no motion to learn) and time-series layers without an explicit frame choice. After a run the
status line compares the frame at gamma = 1 with the target (NCC, PSNR, Dice with target labels)
and warns about folding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, SpinBox

from ..core.events import Frame
from .generator_widget import GeneratorWidget
from .layer_inputs import RoleDefaults, compact, follow_layer_list, pick
from .stream_layers import FrameBuffers, GrowingSequence

if TYPE_CHECKING:
    import napari

NO_LABELS = "(none)"
ADAPT_CHOICES = [("auto", "auto"), ("off", 0), ("25 steps", 25), ("100 steps", 100)]


class DDMWidget(GeneratorWidget):
    method = "DDM"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = viewer
        self.source = ComboBox(label="Source (ED)", choices=lambda _w: pick(viewer.layers, Image, "ED"))
        self.target = ComboBox(label="Target (ES)", choices=lambda _w: pick(viewer.layers, Image, "ES"))
        self.labels = ComboBox(label="Source labels",
                               choices=lambda _w: [(NO_LABELS, None), *pick(viewer.layers, Labels, "ED")])
        self.target_labels = ComboBox(label="Target labels", tooltip="Labels of the target: the quality line reports the Dice score.",
                                      choices=lambda _w: [(NO_LABELS, None), *pick(viewer.layers, Labels, "ES")])
        compact(self.source, self.target, self.labels, self.target_labels)
        self.frames = SpinBox(label="Frames", value=16, min=2, max=200)
        self.loop = CheckBox(text="Full loop ED -> ES -> ED", value=False)
        self.adapt = ComboBox(label="Adapt to pair", value="auto", choices=ADAPT_CHOICES,
                              tooltip="fit a residual velocity field to this pair before generating "
                                      "(auto: steps chosen from the image size)")
        self.extend([self.source, self.target, self.labels, self.target_labels, self._slider_control(),
                     self.frames, self.loop, self.adapt, *self._compute_controls(), *self._stream_controls("Run")])
        self.defaults = RoleDefaults(viewer, [(self.source, "ED", None), (self.target, "ES", self.source),
                                              (self.labels, "ED labels", self.source),
                                              (self.target_labels, "ES labels", self.target)])
        self.defaults.apply()
        follow_layer_list(self, viewer, self.defaults)
        self._run = None

    def _inputs(self):
        from ..core.ddm.generate import gamma_schedule
        from ..core.errors import InputError
        from ..core.io.pairs import check_pair

        if self.source.value is None or self.target.value is None:
            raise InputError("DDM: choose a source and a target image layer.")
        if self.source.value.name == self.target.value.name:
            raise InputError(f"DDM: source and target are the same layer ('{self.source.value.name}'): "
                             "the sequence would have no motion; choose the ES frame as target.")
        source = self._frame(self.source.value, is_labels=False)
        target = self._frame(self.target.value, is_labels=False)
        if source.data.shape == target.data.shape and np.array_equal(source.data, target.data):
            raise InputError("DDM: source and target show the same image: the sequence would have no motion.")
        labels = target_labels = None
        if self.labels.value is not None:
            labels = self._frame(self.labels.value, is_labels=True)
        if self.target_labels.value is not None:
            target_labels = self._frame(self.target_labels.value, is_labels=True)
        check_pair(source, target, labels)
        if target_labels is not None and target_labels.data.shape != target.data.shape:
            raise InputError(f"DDM: target labels {target_labels.data.shape} and target "
                             f"{target.data.shape} differ in shape.")
        gamma_schedule(self.frames.value, self.loop.value)
        return source, target, labels, target_labels, *self._compute()

    def start(self):
        from .._layers import short_label
        from ..core.ddm.generate import generate_ddm

        inputs = self._read(self._inputs)
        if inputs is None:
            return None
        source, target, labels, target_labels, device, weights = inputs
        frames, loop, adapt = self.frames.value, self.loop.value, self.adapt.value
        layers = (self.source.value, self.target.value, self.labels.value, self.target_labels.value)
        name = f"DDM {short_label(layers[0])}->{short_label(layers[1])}"
        provenance = {"method": "DDM", "source": layers[0].name, "target": layers[1].name,
                      "labels": layers[2].name if layers[2] is not None else None,
                      "weights": self._weights_text(weights), "seed": 0, "frames": frames, "loop": loop,
                      "adapt": adapt, "device": device, "time_series_frame": self.use_slider.value}
        self.sequence = GrowingSequence(self.viewer, name=name, geometry=source.geometry, total=frames,
                                        with_labels=labels is not None, buffers=FrameBuffers(),
                                        provenance=provenance, on_first=lambda _l: self._hide(*layers))
        # what the quality line needs when the run ends
        self._run = {"target": target, "target_labels": target_labels, "gammas": {},
                     "note": self._phantom_note(weights, layers[0])}

        def on_event(event):
            if isinstance(event, Frame):
                self.sequence.add(event)
                self._run["gammas"][event.index] = float(event.info["gamma"])
                self.status.value = f"{event.index + 1}/{event.total} frames (gamma {event.info['gamma']:.2f})"

        return self._stream(
            lambda: generate_ddm(source, target, frames=frames, loop=loop, labels=labels, weights=weights,
                                 device=device, adapt=adapt),
            description=name, on_event=on_event, prepare=self.sequence.buffers.stage,
        )

    def _done(self):
        super()._done()
        self.status.value = self._line(self.status.value, self.quality())

    def quality(self) -> str:
        """The frame closest to gamma = 1 (the ES end) against the target; folding over all frames."""
        from ..core.quality import folding_note, match_metrics, match_note

        run, seq = self._run, self.sequence
        if run is None or seq is None or not run["gammas"] or seq.buffers.images is None:
            return ""
        k = max(run["gammas"], key=run["gammas"].get)
        buffers = seq.buffers
        end_labels = buffers.labels[k] if buffers.labels is not None else None
        target_labels = run["target_labels"].data if run["target_labels"] is not None else None
        metrics = match_metrics(buffers.images[k], run["target"].data, end_labels, target_labels)
        fields = buffers.fields[: seq.count] if buffers.fields is not None else None
        self.metrics = {**metrics, "frame": k}
        return self._line(f"frame {k} {match_note(metrics)}", folding_note(fields), run["note"])
