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
        self._mm: list[np.ndarray] = []

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
            self._mm.append(overlay.vector_mm)
        self._refresh()

    def _refresh(self) -> None:
        from napari.layers import Image, Labels
        from napari.utils.colormaps import DirectLabelColormap

        from .field_vectors import Vectors

        for key, buf in self._buffers.items():
            view = buf[: self.count]
            layer = self.layers.get(key)
            if layer is not None:
                layer.data = view
                continue
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
        if self._vectors:
            data = np.concatenate(self._vectors)
            colors = np.concatenate(self._colors)
            features = {"magnitude_mm": np.concatenate(self._mm)}
            layer = self.layers.get("vectors")
            if layer is None:
                kwargs = derived_layer_kwargs(self.geometry, f"{self.name} vectors")
                layer = Vectors(data, edge_color=colors, features=features, edge_width=0.4,
                                length=self.vector_length, vector_style="arrow", **kwargs)
                self.layers["vectors"] = self.viewer.add_layer(layer)
            else:
                layer.data = data
                layer.features = features
                layer.edge_color = colors

    def remove(self) -> None:
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers.clear()
