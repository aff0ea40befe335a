"""Dock widget "Generate cycle (DDM)": frames between a source and a target, streamed into 4D layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, SpinBox

from .layer_inputs import chosen_file, follow_layer_list, frame_volume, pick
from ..core.events import Frame, Progress
from .streaming import FrameBuffers, GrowingSequence, StreamingWidget, start_stream

if TYPE_CHECKING:
    import napari

NO_LABELS = "(none)"
DEVICES = ["auto", "cpu", "cuda", "mps"]


class DDMWidget(StreamingWidget, Container):
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
        self.weights = FileEdit(label="Weights (empty: bundled)", mode="r",
                                filter="*.safetensors *.pth *.pt")
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.extend([self.source, self.target, self.labels, self.frames, self.loop, self.adapt, self.weights,
                     self.device, *self._stream_controls("Run")])
        follow_layer_list(self, viewer)

    def start(self):
        from napari.utils.notifications import show_error

        from .._settings import gui_device_name
        from ..core.ddm.generate import gamma_schedule, generate_ddm
        from ..core.errors import InputError
        from ..core.io.pairs import check_pair

        try:
            if self.source.value is None or self.target.value is None:
                raise InputError("DDM: choose a source and a target image layer.")
            source = frame_volume(self.viewer, self.source.value, is_labels=False)
            target = frame_volume(self.viewer, self.target.value, is_labels=False)
            labels = None
            if self.labels.value is not None:
                labels = frame_volume(self.viewer, self.labels.value, is_labels=True)
            check_pair(source, target, labels)
            frames, loop, adapt = self.frames.value, self.loop.value, self.adapt.value
            gamma_schedule(frames, loop)
            weights = chosen_file(self.weights)
            if weights is not None and not weights.is_file():
                raise InputError(f"DDM: weights file {weights} does not exist.")
            device = gui_device_name(None if self.device.value == "auto" else self.device.value)
        except (InputError, ValueError) as exc:
            show_error(str(exc))
            return None

        name = f"DDM {self.source.value.name} -> {self.target.value.name}"
        self.sequence = GrowingSequence(self.viewer, name=name, geometry=source.geometry, total=frames,
                                        with_labels=labels is not None, buffers=FrameBuffers())

        def on_event(event):
            if isinstance(event, Frame):
                self.sequence.add(event)
                self.status.value = f"frame {event.index + 1}/{event.total} (gamma {event.info['gamma']:.2f})"
            elif isinstance(event, Progress):
                self.status.value = event.message

        self._running()
        self.worker = start_stream(
            lambda: generate_ddm(source, target, frames=frames, loop=loop, labels=labels, weights=weights,
                                 device=device, adapt=adapt),
            description=name, on_event=on_event, on_done=self._done,
            prepare=self.sequence.buffers.stage,
        )
        return self.worker
