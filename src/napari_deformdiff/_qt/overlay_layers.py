"""The overlay layers of one field source, grown frame by frame in the GUI thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._layers import derived_layer_kwargs, vector_colors
from ..core.geometry import Geometry
from ..core.inspect.vector_style import ARROW_WIDTH_SHARE, auto_length, in_plane_extent, vector_strides
from .gui_turns import TURNS
from .layer_insert import insert_layer

if TYPE_CHECKING:
    import napari

    from ..core.inspect.overlays import FrameOverlay

JACOBIAN_LIMITS = {False: (0.0, 2.0), True: (-0.5, 0.5)}  # centred at det 1 (log10: 0)
# det J of the pull-back field is the volume the tissue at a voxel had in the source over the volume
# it has now: red (det < 1, it grew) - transparent at 1 (the anatomy shows) - blue (det > 1, it shrank)
JACOBIAN_COLORS = ((1.0, 0.15, 0.1, 1.0), (1.0, 1.0, 1.0, 0.0), (0.15, 0.35, 1.0, 1.0))
GRID_OPACITY = 0.15
# Frames that are not under the time slider reach the image layers once no frame has arrived for
# this long (or when the last frame arrives): each layer growth costs napari 10 ms, a repaint of
# the layer list (and for labels of the canvas), 30-70 ms that would recur with every frame.
CATCH_UP_MS = 1000


class OverlaySet:
    """Vectors, deformed grid, Jacobian, folding and magnitude layers for `total` frames.

    Images go into preallocated (total, *S) buffers, and layers are re-assigned views that
    grow, as for generated frames. The Vectors layer is 4D (time index as first coordinate) but
    holds only the frame under the time slider: every frame's vectors are kept here and swapped
    in when the slider moves. Holding all frames made napari mask and slice every frame's
    vectors on each time step, and re-assign all of them for each frame that arrived.

    Layer updates run in the event loop after a frame arrives, one per turn (gui_turns.TURNS,
    shared with the streams; creating a layer,
    or re-assigning its data, costs napari 10-40 ms and a repaint). Layers are created with the
    first frame and updated at once when the frame under the slider arrives. Other frames only
    extend the time range of the image layers, which the time slider does not need (the source
    layer spans the frames): that waits until frames stop arriving for CATCH_UP_MS or the last
    one arrives, unless the slider moves to a frame a layer does not hold yet.
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, name: str, geometry: Geometry, total: int,
                 show: dict[str, bool], log_jacobian: bool = False, vector_length: float | None = 1.0,
                 stride: int | None = None, vector_extent: float = 0.0):
        self.viewer = viewer
        self.name = name
        self.geometry = geometry
        self.total = total
        self.show = show
        self.log_jacobian = log_jacobian
        self.auto_length = vector_length is None  # follows the largest in-plane |u| seen so far
        self.vector_length = vector_length or 1.0
        self.stride = stride
        self.vector_extent = vector_extent  # voxels (see vector_style.in_plane_extent)
        self.count = 0
        self.metrics: list[dict[str, float]] = []
        self.layers: dict[str, object] = {}
        self.vectors_frame: int | None = None  # the frame whose vectors the Vectors layer holds
        self._buffers: dict[str, np.ndarray] = {}
        self._vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # t -> (N, 2, n+1), RGBA
        self._grid_shape: tuple[int, ...] = ()
        self._dirty: list[str] = []  # layers to create or update, one per event-loop turn
        self._behind: set[str] = set()  # image layers holding fewer frames than have arrived
        self._rewritten: set[int] = set()
        self._catch_up = None  # QTimer that moves self._behind to self._dirty
        self._deleted: set[str] = set()  # layers the user deleted: not updated or made again
        viewer.dims.events.current_step.connect(self._on_step)
        viewer.layers.events.removed.connect(self._on_layer_removed)

    def add(self, t: int, overlay: FrameOverlay) -> None:
        images = {
            "jacobian": np.log10(np.where(overlay.jacobian > 0, overlay.jacobian, np.nan)).astype(np.float32)
            if self.log_jacobian else overlay.jacobian,
            "folding": overlay.folding,
            "magnitude": overlay.magnitude_mm,
            "grid": overlay.grid,
        }
        viewed = self.viewed_frame()
        if t < self.count and t == viewed:  # shown already, and computed again: show it anew
            self._rewritten.add(t)
        for key, frame in images.items():
            if frame is None or not self.show.get(key):
                continue
            if key not in self._buffers:
                self._buffers[key] = np.zeros((self.total, *frame.shape), frame.dtype)
            self._buffers[key][t] = frame
            if key not in self.layers or t == viewed:
                self._mark(key)
            elif key not in self._deleted:
                self._behind.add(key)
        if len(self.metrics) <= t:
            self.metrics.extend([{}] * (t + 1 - len(self.metrics)))
        self.metrics[t] = overlay.metrics
        self.count = max(self.count, t + 1)
        if self.show.get("vectors"):
            v = np.zeros((len(overlay.vectors), 2, overlay.vectors.shape[2] + 1), np.float32)
            v[:, 0, 0] = t
            v[:, :, 1:] = overlay.vectors
            self._vectors[t] = (v, vector_colors(overlay.vector_mm))
            self._grid_shape = overlay.jacobian.shape
            self._follow_extent(in_plane_extent(overlay.vectors))
            if t == self.vectors_frame:  # recomputed: the layer holds the old vectors
                self.vectors_frame = None
            if "vectors" not in self.layers or t == viewed:
                self._mark("vectors")  # frames not under the slider wait in self._vectors
        if self._behind:
            self._start_catch_up(0 if self.count >= self.total else CATCH_UP_MS)
        self._schedule()

    def in_plane_stride(self) -> int:
        return vector_strides(self._grid_shape, self.stride)[-1]

    def _follow_extent(self, extent: float) -> None:
        """Automatic length: shorter arrows once a frame moves more than all before it (by 10 %)."""
        if not self.auto_length or extent <= self.vector_extent * 1.1:
            return
        self.vector_extent = extent
        self.vector_length = auto_length(extent, self.in_plane_stride())
        layer = self.layers.get("vectors")
        if layer is not None:
            layer.length = self.vector_length

    def vectors_of(self, t: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Frame t's vectors (N, 2, n+1) with t as time coordinate and their RGBA colours."""
        return self._vectors.get(t)

    def vectors_extent(self) -> np.ndarray:
        """Data extent of the Vectors layer: the frames computed so far, on the field's voxel grid.

        Not the extent of the vectors held (napari's default, with their tips): it changes with
        the frame shown, and the dims ranges, and the slice shown, would move with the slider.
        """
        frames = list(self._vectors) or [0]
        return np.array([[min(frames), *(0 for _ in self._grid_shape)],
                         [max(frames), *(s - 1 for s in self._grid_shape)]], float)

    def viewed_frame(self) -> int:
        """The frame under the time slider: overlay layers put frame t at world time t."""
        point = self.viewer.dims.point
        n = self.geometry.ndim
        return int(round(point[-(n + 1)])) if len(point) > n else 0

    @property
    def idle(self) -> bool:
        """True when every layer shows every frame added so far."""
        return not self._dirty and not self._behind

    def _start_catch_up(self, delay_ms: int) -> None:
        from qtpy.QtCore import QTimer

        if self._catch_up is None:
            self._catch_up = QTimer()
            self._catch_up.setSingleShot(True)
            self._catch_up.timeout.connect(self._catch_up_now)
        self._catch_up.start(delay_ms)  # restarted by every frame: runs once they pause

    def _catch_up_now(self) -> None:
        for key in sorted(self._behind):
            self._mark(key)
        self._behind.clear()
        self._schedule()

    def _mark(self, key: str) -> None:
        if key not in self._dirty and key not in self._deleted:
            self._dirty.append(key)

    def _on_layer_removed(self, _event=None) -> None:
        for key, layer in list(self.layers.items()):
            if layer not in self.viewer.layers:
                del self.layers[key]
                self._deleted.add(key)
                self._behind.discard(key)
                if key in self._dirty:
                    self._dirty.remove(key)

    def _schedule(self) -> None:
        if self._dirty:
            TURNS.submit(self._refresh_next)

    def _refresh_next(self) -> None:
        if self._dirty:
            self._refresh(self._dirty.pop(0))
            if not self._dirty:
                self._rewritten.clear()
        self._schedule()

    def _refresh(self, key: str) -> None:
        self._show_vectors(self.viewed_frame()) if key == "vectors" else self._refresh_image(key)

    def _refresh_image(self, key: str) -> None:
        from napari.layers import Image, Labels
        from napari.utils.colormaps import Colormap, DirectLabelColormap

        view = self._buffers[key][: self.count]
        layer = self.layers.get(key)
        self._behind.discard(key)
        if layer is not None:
            t = self.viewed_frame()
            if len(layer.data) <= t < self.count or t in self._rewritten:
                layer.data = view  # the frame under the slider is new to the layer: show it
            else:
                # Only the time extent grows; the slice shown stays the same: napari re-slices
                # (and the dims ranges grow), but no texture upload, repaint or thumbnail event.
                with layer.events.set_data.blocker(), layer.events.thumbnail.blocker():
                    layer.data = view
            return
        title = {"jacobian": "log10 det J" if self.log_jacobian else "det J", "folding": "folding (det <= 0)",
                 "magnitude": "|u| mm", "grid": "deformed grid"}[key]
        kwargs = derived_layer_kwargs(self.geometry, f"{self.name} {title}")
        if key == "folding":
            cmap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "magenta"})
            layer = Labels(view, colormap=cmap, opacity=0.8, **kwargs)
        elif key == "jacobian":
            cmap = Colormap(JACOBIAN_COLORS, controls=(0.0, 0.5, 1.0), name="det J, clear at 1")
            layer = Image(view, colormap=cmap, contrast_limits=JACOBIAN_LIMITS[self.log_jacobian],
                          opacity=0.6, **kwargs)
        elif key == "magnitude":
            layer = Image(view, colormap="inferno", contrast_limits=(0.0, 10.0), opacity=0.6,
                          visible=True, **kwargs)
        else:
            layer = Image(view, colormap="gray", blending="additive", contrast_limits=(0.0, 1.0),
                          opacity=GRID_OPACITY, **kwargs)
        self.layers[key] = insert_layer(self.viewer, layer, activate=False)

    def _on_step(self, _event=None) -> None:
        """The time slider moved: the vectors of the frame now shown, and image layers that
        do not hold it yet (frames arrived since their last update) grown to hold it."""
        t = self.viewed_frame()
        for key, layer in list(self.layers.items()):
            if key != "vectors" and len(layer.data) <= t < self.count:
                if key in self._dirty:
                    self._dirty.remove(key)
                self._refresh_image(key)
        if "vectors" in self.layers:
            self._show_vectors(t)

    def _show_vectors(self, t: int) -> None:
        """Put frame t's vectors in the Vectors layer (created on first use).

        Frames not computed yet keep the layer as it is: its vectors carry another time
        coordinate, so napari shows none at t. A new layer takes the latest frame then.
        """
        from .field_vectors import Vectors

        layer = self.layers.get("vectors")
        if t not in self._vectors:
            if layer is not None or not self._vectors:
                return
            t = max(self._vectors)
        if layer is not None and t == self.vectors_frame:
            return
        data, colors = self._vectors[t]
        if layer is None:
            kwargs = derived_layer_kwargs(self.geometry, f"{self.name} vectors")
            if self.auto_length:
                self.vector_length = auto_length(self.vector_extent, self.in_plane_stride())
            layer = Vectors(data, edge_color=colors, edge_width=ARROW_WIDTH_SHARE * self.in_plane_stride(),
                            length=self.vector_length,
                            vector_style="arrow", extent=self.vectors_extent, **kwargs)
            self.layers["vectors"] = insert_layer(self.viewer, layer, activate=False)
        elif len(data) == len(layer.data):
            # colours first, quietly (they match the vectors that follow): one redraw, not two
            with layer.events.edge_color.blocker():
                layer.edge_color = colors
            layer.data = data
        else:
            layer.data = data
            layer.edge_color = colors
        self.vectors_frame = t

    def remove(self) -> None:
        TURNS.discard(self._refresh_next)
        self._dirty.clear()
        self._behind.clear()
        if self._catch_up is not None:
            self._catch_up.stop()
        self.viewer.dims.events.current_step.disconnect(self._on_step)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers.clear()
