"""Layer pickers shared by the generator widgets: layer -> Volume (a frame of a 4D layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._layers import layer_attributes, layer_to_volume
from ..core.errors import InputError
from ..core.io import Volume


def frame_volume(viewer, layer, *, is_labels: bool) -> Volume:
    """A copy of the layer as a single-frame Volume; a time series gives the frame at the time slider."""
    try:
        volume = layer_to_volume(layer.data, layer_attributes(layer), is_labels=is_labels)
    except ValueError as exc:
        raise InputError(f"layer '{layer.name}': {exc}") from None
    data = volume.data
    if volume.has_time:
        t = int(viewer.dims.current_step[0]) if viewer.dims.ndim == data.ndim else 0
        t = min(max(t, 0), data.shape[0] - 1)
        data = data[t]
        volume.name = f"{layer.name} [t={t}]"
    volume.data = np.array(data, copy=True)
    return volume


def pick(layers, kind, hint: str = ""):
    """(name, layer) choices of the given layer type, the ones whose name contains `hint` first."""
    found = [(layer.name, layer) for layer in layers if isinstance(layer, kind)]
    if hint:
        found.sort(key=lambda item: hint.lower() not in item[0].lower())
    return found


def chosen_file(file_edit) -> Path | None:
    """The path of a magicgui FileEdit, or None when it is empty."""
    value = file_edit.value
    return None if value is None or str(value) in ("", ".") else Path(value)


def follow_layer_list(widget, viewer) -> None:
    """Refresh the widget's layer choices whenever a layer is added or removed."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        event.connect(lambda _e: widget.reset_choices())
