"""The overlay layers of one field source, grown frame by frame in the GUI thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._layers import derived_layer_kwargs, vector_colors
from ..core.geometry import Geometry

if TYPE_CHECKING:
    import napari

    from ..core.overlays import FrameOverlay

JACOBIAN_LIMITS = {False: (0.0, 2.0), True: (-0.5, 0.5)}  # centred at det 1 (log10: 0)


class OverlaySet:
    """Vectors, deformed grid, Jacobian, folding and magnitude layers for `total` frames.

    Images go into preallocated (total, *S) buffers, and layers are re-assigned views that
    grow, as for generated frames; vectors are appended per frame with a time coordinate.
    Layers are refreshed one per event-loop turn (each napari data assignment costs 20-40 ms),
    so that a frame arriving never blocks the viewer for the sum of them.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, name: str, geometry: Geometry, total: int,
                 show: dict[str, bool], log_jacobian: bool = False, vector_length: float = 1.0):
        self.viewer = viewer
        self.name = name
        self.geometry = geometry
        self.total = total
        self.show = show
        self.log_jacobian = log_jacobian
        self.vector_length = vector_length
        self.count = 0
        self.metrics: list[dict[str, float]] = []
        self.layers: dict[str, object] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._vectors: list[np.ndarray] = []
        self._colors: list[np.ndarray] = []
        self._dirty: list[str] = []
        self._scheduled = False

    def add(self, t: int, overlay: FrameOverlay) -> None:
        images = {
            "jacobian": np.log10(np.where(overlay.jacobian > 0, overlay.jacobian, np.nan)).astype(np.float32)
            if self.log_jacobian else overlay.jacobian,
            "folding": overlay.folding,
            "magnitude": overlay.magnitude_mm,
            "grid": overlay.grid,
        }
        for key, frame in images.items():
            if frame is None or not self.show.get(key):
                continue
            if key not in self._buffers:
                self._buffers[key] = np.zeros((self.total, *frame.shape), frame.dtype)
            self._buffers[key][t] = frame
        if len(self.metrics) <= t:
            self.metrics.extend([{}] * (t + 1 - len(self.metrics)))
        self.metrics[t] = overlay.metrics
        self.count = max(self.count, t + 1)
        if self.show.get("vectors"):
            v = np.zeros((len(overlay.vectors), 2, overlay.vectors.shape[2] + 1), np.float32)
            v[:, 0, 0] = t
            v[:, :, 1:] = overlay.vectors
            self._vectors.append(v)
            self._colors.append(vector_colors(overlay.vector_mm))
        for key in [*self._buffers, "vectors"]:
            if key not in self._dirty and (key != "vectors" or self._vectors):
                self._dirty.append(key)
        self._schedule()

    @property
    def idle(self) -> bool:
        """True when every layer shows every frame added so far."""
        return not self._dirty

    def _schedule(self) -> None:
        from qtpy.QtCore import QTimer

        if self._dirty and not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._refresh_next)

    def _refresh_next(self) -> None:
        self._scheduled = False
        if self._dirty:
            key = self._dirty.pop(0)
            self._refresh_vectors() if key == "vectors" else self._refresh_image(key)
        self._schedule()

    def _refresh_image(self, key: str) -> None:
        from napari.layers import Image, Labels
        from napari.utils.colormaps import DirectLabelColormap

        view = self._buffers[key][: self.count]
        layer = self.layers.get(key)
        if layer is not None:
            layer.data = view
            return
        title = {"jacobian": "log10 det J" if self.log_jacobian else "det J", "folding": "folding (det <= 0)",
                 "magnitude": "|u| mm", "grid": "deformed grid"}[key]
        kwargs = derived_layer_kwargs(self.geometry, f"{self.name} {title}")
        if key == "folding":
            cmap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "magenta"})
            layer = Labels(view, colormap=cmap, opacity=0.8, **kwargs)
        elif key == "jacobian":
            layer = Image(view, colormap="bwr", contrast_limits=JACOBIAN_LIMITS[self.log_jacobian],
                          opacity=0.5, **kwargs)
        elif key == "magnitude":
            layer = Image(view, colormap="inferno", contrast_limits=(0.0, 10.0), opacity=0.6,
                          visible=True, **kwargs)
        else:
            layer = Image(view, colormap="yellow", blending="additive", contrast_limits=(0.0, 1.0),
                          opacity=0.7, **kwargs)
        self.layers[key] = self.viewer.add_layer(layer)

    def _refresh_vectors(self) -> None:
        from .field_vectors import Vectors

        if self._vectors:
            data = np.concatenate(self._vectors)
            colors = np.concatenate(self._colors)
            layer = self.layers.get("vectors")
            if layer is None:
                kwargs = derived_layer_kwargs(self.geometry, f"{self.name} vectors")
                layer = Vectors(data, edge_color=colors, edge_width=0.4,
                                length=self.vector_length, vector_style="arrow", **kwargs)
                self.layers["vectors"] = self.viewer.add_layer(layer)
            else:
                layer.data = data
                layer.edge_color = colors

    def remove(self) -> None:
        self._dirty.clear()
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers.clear()
