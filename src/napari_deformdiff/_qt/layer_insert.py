"""Adding a layer to the viewer in several GUI turns, and without selecting it unless asked.

napari's add_layer does everything in one go: the layer list entry, the canvas visual, the
layer's controls panel (20-50 ms of GUI thread), for labels the visuals of their editing
overlays (polygon, brush stroke: 40-80 ms), and selecting it (the layer list, the controls dock
and everything listening to the selection follow: 20-30 ms), then the canvas paints it:
150-200 ms in one pause. Here napari's controls handler is held back while the layer goes in and
called with the layer in a later turn of gui_turns.TURNS (an empty panel stands in meanwhile:
napari's selection and removal handlers look a layer's panel up); visible editing overlays are
hidden while it goes in and shown again in the turn after (napari makes their visuals then); a
layer to `activate` is selected last. Layers a run adds beside the one the user works with (the
overlays, a sequence's labels) are not selected: the selection stays where it was.

While a run streams, the controls and editing overlays of layers that are not selected wait until
the last run ends (stream_worker.FROZEN_HEAP.after_runs), so the run's turns stay short; a layer
the user selects meanwhile gets them in the next turn.

Uses napari's private LayerList._activate_on_insert, Layer._overlays and
QtLayerControlsContainer._add, on the objects themselves (a plugin's viewer is a proxy that warns
on private names); where they are missing, layers are added the usual way.
"""

from __future__ import annotations

import weakref
from collections import deque
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .gui_turns import TURNS
from .stream_worker import FROZEN_HEAP

if TYPE_CHECKING:
    import napari


def insert_layer(viewer: napari.viewer.Viewer, layer, *, activate: bool = True):
    """viewer.add_layer(layer); its controls and editing overlays made in later turns, then it is
    selected if `activate`."""
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    panel = _controls_panel(viewer)
    if not hasattr(layers, "_activate_on_insert") or not hasattr(panel, "_add") \
            or not isinstance(getattr(panel, "widgets", None), dict):
        return viewer.add_layer(layer)
    overlays = [o for o in getattr(layer, "_overlays", {}).values() if getattr(o, "visible", False)]
    for overlay in overlays:  # napari makes the visuals of visible ones only, and when they become visible
        overlay.visible = False
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
    later = _Later.of(layers, panel)
    later.steps.append(lambda: later.controls(layer, stand_in))
    if overlays:
        later.steps.append(lambda: later.show(layer, overlays))
    if activate:
        later.steps.append(lambda: later.select(layer))
    TURNS.submit(later.next)
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


class _Later:
    """The steps still to do for the layers inserted into one viewer, one per GUI turn."""

    _all: list[tuple[weakref.ref, _Later]] = []

    @classmethod
    def of(cls, layers, panel) -> _Later:
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
        self.steps: deque = deque()
        self.waiting: list = []  # (layer, step) held back until the runs end or the layer is selected
        layers.selection.events.active.connect(self._on_active)

    def _wait(self, layer, step) -> None:
        self.waiting.append((layer, step))
        FROZEN_HEAP.after_runs(self._resume)

    def _resume(self) -> None:
        self.steps.extend(step for _, step in self.waiting)
        self.waiting.clear()
        if self.steps:
            TURNS.submit(self.next)

    def _on_active(self, event) -> None:
        mine = [step for layer, step in self.waiting if layer is event.value]
        if mine:
            self.waiting = [(layer, step) for layer, step in self.waiting if layer is not event.value]
            self.steps.extendleft(reversed(mine))
            TURNS.submit(self.next)

    def _held_back(self, layer) -> bool:
        layers = self.layers()
        return FROZEN_HEAP.runs > 0 and layers is not None and layers.selection.active is not layer

    def next(self) -> None:
        if self.steps:
            self.steps.popleft()()
        if self.steps:
            TURNS.submit(self.next)

    def _present(self, layer) -> bool:
        layers = self.layers()
        return layers is not None and layer in layers

    def controls(self, layer, stand_in) -> None:
        if self.panel.widgets.get(layer) is not stand_in:  # removed meanwhile: napari dropped it
            return
        if self._held_back(layer):
            self._wait(layer, lambda: self.controls(layer, stand_in))
            return
        try:
            shown = self.panel.currentWidget() is stand_in
        except RuntimeError:  # the viewer was closed while the step waited
            return
        del self.panel.widgets[layer]
        self.panel._add(SimpleNamespace(value=layer))
        if shown:
            self.panel.setCurrentWidget(self.panel.widgets[layer])
        self.panel.removeWidget(stand_in)
        stand_in.deleteLater()

    def show(self, layer, overlays) -> None:
        if self._present(layer) and self._held_back(layer):
            self._wait(layer, lambda: self.show(layer, overlays))
        elif self._present(layer):
            for overlay in overlays:
                overlay.visible = True

    def select(self, layer) -> None:
        if self._present(layer):
            self.layers().selection.active = layer
