"""Layer pickers shared by the generator widgets: layer -> Volume (a frame of a 4D layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._layers import layer_attributes, layer_to_volume
from ..core.errors import InputError
from ..core.io import Volume

SLIDER_TEXT = "Time series: use the frame at the time slider"


def frame_volume(viewer, layer, *, is_labels: bool, use_slider: bool = False, who: str = "") -> Volume:
    """A copy of the layer as a single-frame Volume. A time series is refused (InputError) unless
    `use_slider`: then it gives the frame at the time slider, said in a notification."""
    try:
        volume = layer_to_volume(layer.data, layer_attributes(layer), is_labels=is_labels)
    except ValueError as exc:
        raise InputError(f"layer '{layer.name}': {exc}") from None
    data = volume.data
    if volume.has_time:
        if not use_slider:
            raise InputError(
                f"{who + ': ' if who else ''}layer '{layer.name}' is a time series ({data.shape[0]} frames): "
                f"pick a single frame (ED/ES) or tick '{SLIDER_TEXT}'.")
        from napari.utils.notifications import show_info

        t = int(viewer.dims.current_step[0]) if viewer.dims.ndim == data.ndim else 0
        t = min(max(t, 0), data.shape[0] - 1)
        data = data[t]
        volume.name = f"{layer.name} [t={t}]"
        show_info(f"{who + ': ' if who else ''}using frame {t} of '{layer.name}' (the time slider).")
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


def follow_layer_list(widget, viewer, after=None) -> None:
    """Refresh the widget's layer choices whenever a layer is added or removed, then call `after`."""

    def refresh(_event):
        widget.reset_choices()
        if after is not None:
            after()

    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        event.connect(refresh)


def _name(value):
    return None if value is None else value.name


class RoleDefaults:
    """Preselects ACDC roles in layer pickers and follows newly added patients.

    `picks`: (combo, role, anchor) with anchor a combo whose chosen layer's patient the role is
    taken from (None: the newest patient). A picker keeps a choice the user made: it is only
    changed while it still shows what was last set here (compared by name: the widgets see
    proxies of the layers).
    """

    def __init__(self, viewer, picks):
        self.viewer, self.picks = viewer, list(picks)
        self._auto = {id(combo): _name(combo.value) for combo, _, _ in self.picks}
        self._busy = False
        for anchor in {id(a): a for _, _, a in self.picks if a is not None}.values():
            anchor.changed.connect(lambda *_: self.apply())  # e.g. target follows the source's patient

    def apply(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._apply()
        finally:
            self._busy = False

    def _apply(self) -> None:
        from .._layers import acdc_tag, role_layer

        for combo, role, anchor in self.picks:
            if _name(combo.value) != self._auto[id(combo)]:
                continue  # the user chose
            patient = acdc_tag(anchor.value).get("patient") if anchor is not None and anchor.value else None
            found = role_layer(self.viewer.layers, role, patient)
            if found is not None:
                combo.value = found
            elif patient is not None and None in combo.choices:
                combo.value = None  # e.g. no labels for this patient
            self._auto[id(combo)] = _name(combo.value)


def compact(*combos, chars: int = 14) -> None:
    """Layer pickers that do not grow with long layer names (the full name shows as tooltip)."""
    from qtpy.QtWidgets import QComboBox

    for combo in combos:
        box = combo.native
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(chars)
        combo.changed.connect(lambda value, box=box: box.setToolTip("" if value is None else value.name))
