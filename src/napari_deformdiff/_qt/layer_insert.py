"""Adding a layer to the viewer with napari's layer controls made in a later GUI turn, and
without making it the selected (active) layer unless asked.

napari's add_layer does everything in one go: the layer list entry, the canvas visual, the
layer's controls panel (20-50 ms of GUI thread) and selecting it (the layer list, the controls
dock and everything listening to the selection follow: 20-30 ms), then the canvas paints it:
150-200 ms in one pause. Here napari's controls handler is held back while the layer goes in,
and called with the layer in a later turn of gui_turns.TURNS; a layer to `activate` is selected
in the turn after that; meanwhile an empty panel stands in for them (napari's handlers of the
selection and of removals look a layer's panel up). Layers a run adds beside the one the user works with
(the overlays, a sequence's labels) are not selected: the selection stays where it was.

Uses napari's private LayerList._activate_on_insert and QtLayerControlsContainer._add, on the
objects themselves (a plugin's viewer is a proxy that warns on private names); where they are
missing, layers are added the usual way.
"""

from __future__ import annotations

import weakref
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .gui_turns import TURNS

if TYPE_CHECKING:
    import napari


def insert_layer(viewer: napari.viewer.Viewer, layer, *, activate: bool = True):
    """viewer.add_layer(layer); its controls made in a later turn, then selected if `activate`."""
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    panel = _controls_panel(viewer)
    if not hasattr(layers, "_activate_on_insert") or not hasattr(panel, "_add") \
            or not isinstance(getattr(panel, "widgets", None), dict):
        return viewer.add_layer(layer)
    before = layers._activate_on_insert
    layers._activate_on_insert = False
    try:
        with layers.events.inserted.blocker(panel._add):
            viewer.add_layer(layer)
    finally:
        layers._activate_on_insert = before
    stand_in = _StandIn()
    panel.addWidget(stand_in)
    panel.widgets[layer] = stand_in  # napari's selection and removal handlers find this
    _LaterControls.of(layers, panel).add(layer, stand_in, activate)
    return layer


def _controls_panel(viewer):
    window = getattr(getattr(viewer, "__wrapped__", viewer), "window", None)
    return getattr(getattr(window, "_qt_viewer", None), "controls", None)


def _StandIn():
    """An empty panel in place of a layer's controls until they are made (shown if the layer is
    selected meanwhile); napari sets `ndisplay` on every panel when the view changes dimension."""
    from qtpy.QtWidgets import QFrame

    frame = QFrame()
    frame.ndisplay = 2
    return frame


class _LaterControls:
    """Layers of one viewer whose controls are still to be made, and the one to select then."""

    _all: list[tuple[weakref.ref, _LaterControls]] = []

    @classmethod
    def of(cls, layers, panel) -> _LaterControls:
        cls._all = [(ref, later) for ref, later in cls._all if ref() is not None]
        for ref, later in cls._all:
            if ref() is layers:
                return later
        later = cls(layers, panel)
        cls._all.append((weakref.ref(layers), later))
        return later

    def __init__(self, layers, panel):
        self.layers = weakref.ref(layers)
        self.panel = panel
        self.waiting: list = []  # (layer, stand-in)
        self.select = None

    def add(self, layer, stand_in, activate: bool) -> None:
        self.waiting.append((layer, stand_in))
        if activate:
            self.select = layer
        TURNS.submit(self._next)

    def _next(self) -> None:
        layers = self.layers()
        if layers is None:
            return
        if self.waiting:
            layer, stand_in = self.waiting.pop(0)
            if self.panel.widgets.get(layer) is stand_in:  # else removed meanwhile (napari dropped it)
                shown = self.panel.currentWidget() is stand_in
                del self.panel.widgets[layer]
                self.panel._add(SimpleNamespace(value=layer))
                if shown:
                    self.panel.setCurrentWidget(self.panel.widgets[layer])
                self.panel.removeWidget(stand_in)
                stand_in.deleteLater()
        elif self.select is not None:
            layer, self.select = self.select, None
            if layer in layers:
                layers.selection.active = layer
        if self.waiting or self.select is not None:
            TURNS.submit(self._next)
