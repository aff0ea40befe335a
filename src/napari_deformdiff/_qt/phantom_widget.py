"""Dock widget "Phantom generator": stream a seeded cardiac or lung phantom into 4D layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, SpinBox

from ..core.events import Frame
from .generator_widget import GeneratorWidget
from .stream_layers import FrameBuffers, GrowingSequence, add_time_slider

if TYPE_CHECKING:
    import napari


class PhantomWidget(GeneratorWidget):
    method = "Phantom"

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.kind = ComboBox(label="Phantom", choices=["cardiac", "lung"], value="cardiac")
        self.two_d = CheckBox(text="2D+t (one slice)", value=False)
        self.frames = SpinBox(label="Frames", value=20, min=2, max=200)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.extend([self.kind, self.two_d, self.frames, self.seed, *self._stream_controls("Generate")])

    def start(self):
        from ..core.phantom import stream_cardiac_phantom, stream_lung_phantom
        from ..core.phantom.dataset import FRAME_SECONDS, centred_geometry

        kind, two_d, seed, total = self.kind.value, self.two_d.value, self.seed.value, self.frames.value
        stream = stream_cardiac_phantom if kind == "cardiac" else stream_lung_phantom
        name = f"{kind} phantom{' 2D' if two_d else ''} seed {seed}"
        buffers = FrameBuffers()

        def on_event(frame):
            if not isinstance(frame, Frame):
                return
            if self.sequence is None:
                spacing = tuple(frame.info["spacing"])
                self.sequence = GrowingSequence(
                    self.viewer, name=name, geometry=centred_geometry(frame.image.shape, spacing),
                    total=frame.total, with_labels=True, time_spacing=FRAME_SECONDS[kind], buffers=buffers,
                )
            self.sequence.add(frame)
            self.status.value = f"{frame.index + 1}/{frame.total} frames"

        self.sequence = None
        add_time_slider(self.viewer, (2 if two_d else 3) + 1)
        return self._stream(lambda: stream(seed, frames=total, two_d=two_d), description=f"Generating {name}",
                            on_event=on_event, prepare=buffers.stage)
