"""Dock widget "Inspect deformation": overlays of a field that follow the time slider.

The source is any layer that carries a displacement field (a generated sequence, a phantom
sample, a field file opened as vectors). Overlays are computed in a worker thread, frame by
frame, and follow the source while a generator is still streaming frames into it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox

from .._layers import field_of
from .layer_inputs import keep_choice
from ..core.inspect.vector_style import MAGNITUDE_BIN_COLORS, MAGNITUDE_BIN_NAMES, fields_extent, vector_strides
from .overlay_layers import OverlaySet
from .readout_plot import BlitReadoutPlot
from .stream_worker import FROZEN_HEAP
from .window_fit import fit_width

if TYPE_CHECKING:
    import napari


def legend_html() -> str:
    boxes = "".join(
        f'<span style="color:{c}">&#9632;</span>&nbsp;{html.escape(n).replace(" ", "&nbsp;")}&nbsp; '
        for c, n in zip(MAGNITUDE_BIN_COLORS, MAGNITUDE_BIN_NAMES, strict=True)
    )  # a bin's swatch, number and unit never part: lines break between bins
    return f"<small>vectors by |u|: {boxes}</small>"


class InspectWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.source = ComboBox(label="Field of", choices=self._source_choices)
        self.vectors_on = CheckBox(text="Vectors (coloured by |u| in mm)", value=True,
                                   tooltip="Arrows show the motion: where the tissue at each point moved since the "
                                           "first frame (minus the pulling field u).")
        self.stride = SpinBox(label="Vector stride", tooltip="In-plane voxels between vectors; 0: automatic.", value=0, min=0, max=64)
        self.length = FloatSpinBox(label="Vector length", tooltip="Arrow length as a multiple of |u|; 0: automatic.", value=0.0, min=0.0, max=20.0, step=0.5)
        self.grid_on = CheckBox(text="Deformed grid", value=True)
        self.grid_step = SpinBox(label="Grid step (voxels)", value=8, min=2, max=64)
        self.jacobian_on = CheckBox(text="Jacobian determinant (centred at 1)", value=True,
                                    tooltip="Blue: the tissue here shrank since the first frame (det > 1 of the "
                                            "pulling field); red: it grew; clear: unchanged.")
        self.log_jacobian = CheckBox(text="log10 of the determinant", value=False)
        self.folding_on = CheckBox(text="Folding voxels (det <= 0)", value=True)
        self.magnitude_on = CheckBox(text="Displacement magnitude (mm)", value=False)
        self.show_button = PushButton(text="Show overlays")
        self.legend = Label(value=legend_html())
        self.readout = Label(value="")
        self.extend([self.source, self.vectors_on, self.stride, self.length, self.grid_on, self.grid_step,
                     self.jacobian_on, self.log_jacobian, self.folding_on, self.magnitude_on,
                     self.show_button, self.legend, self.readout])
        for label in (self.legend, self.readout):  # wrapped: a narrow dock needs no scrolling
            fit_width(label.native)
        self.plot = BlitReadoutPlot()
        fit_width(self.plot.canvas, wrap=False)
        self.plot.canvas.setVisible(False)  # empty axes until there is something to plot
        self.native.layout().addWidget(self.plot.canvas)
        self.overlays: OverlaySet | None = None
        self.worker = None
        self._source_layer = None
        self.show_button.changed.connect(self.start)
        viewer.layers.events.inserted.connect(self._refresh_sources)
        viewer.layers.events.removed.connect(self._refresh_sources)
        viewer.dims.events.current_step.connect(self._update_readout)
        viewer.mouse_move_callbacks.append(self._on_mouse_move)
        FROZEN_HEAP.watch(viewer)

    # --- sources ----------------------------------------------------------------------------
    def _source_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if field_of(layer) is not None]

    def _refresh_sources(self, _event=None):
        self.reset_choices()

    def reset_choices(self, *args) -> None:
        """Refresh the choices, keeping the chosen layer when it is renamed (see ExportWidget)."""
        chosen = self.source.value
        super().reset_choices(*args)
        keep_choice(self.source, chosen)

    # --- overlays -----------------------------------------------------------------------------
    def start(self):
        """(Re)build the overlays of the chosen source; keeps following it while it grows."""
        layer = self.source.value
        if layer is None or field_of(layer) is None:
            from napari.utils.notifications import show_error

            show_error("No layer with a displacement field: generate a sequence, open a phantom "
                       "sample or open a displacement-field file first.")
            return None
        if self.overlays is not None:
            self.overlays.remove()
        if self._source_layer is not None:
            self._source_layer.events.data.disconnect(self._on_source_grew)
        fields, geometry, total = field_of(layer)
        stride = self.stride.value or None
        show = {"vectors": self.vectors_on.value, "grid": self.grid_on.value,
                "jacobian": self.jacobian_on.value, "folding": self.folding_on.value,
                "magnitude": self.magnitude_on.value}
        self.overlays = OverlaySet(self.viewer, name=layer.name, geometry=geometry, total=total,
                                   show=show, log_jacobian=self.log_jacobian.value,
                                   vector_length=self.length.value or None, stride=stride,
                                   vector_extent=fields_extent(fields, vector_strides(fields.shape[2:], stride)))
        self.plot.set_frames(total)
        self.plot.canvas.setVisible(True)
        self._source_layer = layer
        layer.events.data.connect(self._on_source_grew)
        self.viewer.layers.selection.active = layer
        return self._compute_pending()

    def _on_source_grew(self, _event=None):
        if self.worker is None:
            self._compute_pending()

    def _compute_pending(self):
        """Start a worker for the frames the source has and the overlays don't have yet."""
        from .stream_worker import start_stream

        fields, geometry, expected = field_of(self._source_layer)
        first, last = self.overlays.count, fields.shape[0]
        if first >= last:
            return None
        spacing = geometry.spacing
        stride = self.stride.value or None
        grid_step = self.grid_step.value if self.grid_on.value else None

        def events():
            from ..core.inspect.overlays import stream_overlays

            return stream_overlays(fields[:last], spacing, first=first, stride=stride, grid_step=grid_step)

        def on_event(event):
            from ..core.inspect.overlays import OverlayReady

            if not isinstance(event, OverlayReady):
                return
            self.overlays.add(event.frame, event.overlay)
            self.plot.update(self.overlays.metrics, self._current_frame())
            self._update_readout()

        # a source still streaming in has its generator's progress bar; the plot shows the overlays'
        self.worker = start_stream(events, description="Deformation overlays",
                                   on_event=on_event, on_done=self._worker_done, progress_bar=last >= expected)
        return self.worker

    def _worker_done(self):
        self.worker = None
        if self._source_layer is not None and self.overlays is not None:
            fields, _, _ = field_of(self._source_layer)
            if fields.shape[0] > self.overlays.count:  # frames arrived while we were computing
                self._compute_pending()

    # --- readouts -----------------------------------------------------------------------------
    def _current_frame(self) -> int:
        layer = self._source_layer
        if layer is None or layer.ndim != len(self.viewer.dims.point) or layer.ndim < 3:
            return 0
        return int(round(layer.world_to_data(self.viewer.dims.point)[0]))

    def _update_readout(self, _event=None):
        if self.overlays is None or not self.overlays.metrics:
            return
        t = min(max(self._current_frame(), 0), len(self.overlays.metrics) - 1)
        m = self.overlays.metrics[t]
        if not m:
            return
        self.readout.value = (  # frames numbered as napari's time slider: 0 .. total - 1
            f"frame {t}/{self.overlays.total - 1}: folding {m['folding_count']} voxels "
            f"({m['folding_pct']:.3f} %), det J {m['det_min']:.3f} .. {m['det_max']:.3f}<br>"
            f"|u| max {m['max_mm']:.2f} mm ({m['max_pct']:.1f} %), mean {m['mean_mm']:.2f} mm "
            f"({m['mean_pct']:.2f} %)"
        )
        self.plot.mark(t)

    def field_at(self, world_position) -> tuple[np.ndarray, float] | None:
        """Field vector (mm, array order) and |u| under a world position, or None outside."""
        layer = self._source_layer
        if layer is None:
            return None
        fields, geometry, _ = field_of(layer)
        index = np.round(layer.world_to_data(world_position)).astype(int)
        n = geometry.ndim
        t, spatial = (index[0], index[-n:]) if len(index) > n else (0, index[-n:])
        shape = fields.shape[2:]
        if not (0 <= t < fields.shape[0] and all(0 <= i < s for i, s in zip(spatial, shape, strict=True))):
            return None
        u = fields[(t, slice(None), *spatial)]
        mm = geometry.index_to_world()[:n, :n] @ u
        return mm, float(np.linalg.norm(mm))

    def _on_mouse_move(self, viewer, event):
        value = self.field_at(viewer.cursor.position)
        if value is not None:
            mm, norm = value
            comps = ", ".join(f"{c:+.2f}" for c in mm)
            viewer.help = f"u = ({comps}) mm, |u| = {norm:.2f} mm"
