"""Adding a layer to the viewer without making it the selected (active) layer.

napari selects every layer it adds: the layer list, the layer controls dock (a widget stack
relaid out) and everything listening to the selection follow, 20-30 ms of the 80-130 ms an
added layer costs the GUI thread. Layers a run adds beside the one the user works with (the
overlays, a sequence's labels) are added quietly; the selection stays where it was. That uses
napari's private LayerList._activate_on_insert, on the list itself (a plugin's viewer is a proxy
that warns on private names); without it, layers are added the usual way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari


def insert_layer(viewer: napari.viewer.Viewer, layer, *, activate: bool = True):
    """viewer.add_layer(layer), selecting it only if `activate`; returns the layer."""
    layers = getattr(viewer.layers, "__wrapped__", viewer.layers)
    if activate or not hasattr(layers, "_activate_on_insert"):
        return viewer.add_layer(layer)
    before = layers._activate_on_insert
    layers._activate_on_insert = False
    try:
        return viewer.add_layer(layer)
    finally:
        layers._activate_on_insert = before
