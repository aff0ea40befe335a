"""Dock widget "Generate cycle (DDM)": frames between a source and a target, streamed into 4D layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, SpinBox

from ..core.events import Frame
from .generator_widget import GeneratorWidget
from .layer_inputs import follow_layer_list, frame_volume, pick
from .stream_layers import FrameBuffers, GrowingSequence

if TYPE_CHECKING:
    import napari

NO_LABELS = "(none)"


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
        self.frames = SpinBox(label="Frames", value=16, min=2, max=200)
        self.loop = CheckBox(text="Full loop ED -> ES -> ED", value=False)
        self.adapt = SpinBox(label="Adapt to pair (steps)", value=0, min=0, max=2000)
        self.extend([self.source, self.target, self.labels, self.frames, self.loop, self.adapt,
                     *self._compute_controls(), *self._stream_controls("Run")])
        follow_layer_list(self, viewer)

    def _inputs(self):
        from ..core.ddm.generate import gamma_schedule
        from ..core.errors import InputError
        from ..core.io.pairs import check_pair

        if self.source.value is None or self.target.value is None:
            raise InputError("DDM: choose a source and a target image layer.")
        source = frame_volume(self.viewer, self.source.value, is_labels=False)
        target = frame_volume(self.viewer, self.target.value, is_labels=False)
        labels = None
        if self.labels.value is not None:
            labels = frame_volume(self.viewer, self.labels.value, is_labels=True)
        check_pair(source, target, labels)
        gamma_schedule(self.frames.value, self.loop.value)
        return source, target, labels, *self._compute()

    def start(self):
        from ..core.ddm.generate import generate_ddm

        inputs = self._read(self._inputs)
        if inputs is None:
            return None
        source, target, labels, device, weights = inputs
        frames, loop, adapt = self.frames.value, self.loop.value, self.adapt.value
        name = f"DDM {self.source.value.name} -> {self.target.value.name}"
        self.sequence = GrowingSequence(self.viewer, name=name, geometry=source.geometry, total=frames,
                                        with_labels=labels is not None, buffers=FrameBuffers())

        def on_event(event):
            if isinstance(event, Frame):
                self.sequence.add(event)
                self.status.value = f"frame {event.index + 1}/{event.total} (gamma {event.info['gamma']:.2f})"

        return self._stream(
            lambda: generate_ddm(source, target, frames=frames, loop=loop, labels=labels, weights=weights,
                                 device=device, adapt=adapt),
            description=name, on_event=on_event, prepare=self.sequence.buffers.stage,
        )
