"""Layer pickers shared by the generator widgets: layer -> Volume (a frame of a 4D layer)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .._layers import layer_attributes, layer_to_volume
from ..core.errors import InputError
from ..core.io import Volume

SLIDER_TEXT = "Frame at the time slider"  # short: the docks must fit a 1366 px wide screen
SLIDER_TIP = "For a time series (4D layer): use the frame the time slider shows."


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


def keep_choice(combo, chosen) -> None:
    """Select `chosen` again in `combo` if it is still one of its choices."""
    if chosen is not None and combo.value is not chosen and any(c is chosen for c in combo.choices):
        combo.value = chosen


def chosen_file(file_edit) -> Path | None:
    """The path of a magicgui FileEdit, or None when it is empty."""
    value = file_edit.value
    return None if value is None or str(value) in ("", ".") else Path(value)


def follow_layer_list(widget, viewer, defaults: RoleDefaults | None = None) -> None:
    """Refresh the widget's layer choices whenever a layer is added or removed (and its defaults)."""

    def refresh(_event):
        if defaults is None:
            widget.reset_choices()
        else:
            defaults.refresh(widget)

    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        event.connect(refresh)


def _name(value):
    return None if value is None else value.name


class RoleDefaults:
    """Preselects ACDC roles in layer pickers and follows newly added patients.

    `picks`: (combo, role, anchor) with anchor a combo whose chosen layer's patient the role is
    taken from (None: the newest patient). A picker the user set keeps that layer while it exists;
    changes made here or by a refresh of the choices do not count as the user's.
    """

    def __init__(self, viewer, picks):
        self.viewer, self.picks = viewer, list(picks)
        self._user: dict[int, str | None] = {}  # id(combo) -> the layer name the user chose
        self._internal = False
        for combo, _, _ in self.picks:
            combo.changed.connect(lambda value, combo=combo: self._changed(combo, value))
        for anchor in {id(a): a for _, _, a in self.picks if a is not None}.values():
            anchor.changed.connect(lambda *_: self.apply())  # e.g. target follows the source's patient

    def _changed(self, combo, value) -> None:
        if not self._internal:
            self._user[id(combo)] = _name(value)

    def refresh(self, widget) -> None:
        """The widget's reset_choices, then the defaults (as one change not made by the user)."""
        with self._inside():
            widget.reset_choices()
            self._apply()

    def apply(self) -> None:
        if not self._internal:
            with self._inside():
                self._apply()

    @contextmanager
    def _inside(self):
        self._internal, before = True, self._internal
        try:
            yield
        finally:
            self._internal = before

    def _apply(self) -> None:
        from .._layers import acdc_tag, role_layer

        for combo, role, anchor in self.picks:
            if id(combo) in self._user:
                choices = [_name(c) for c in combo.choices]
                if self._user[id(combo)] in choices:
                    continue  # the user chose, and that layer is still there
                del self._user[id(combo)]
            patient = acdc_tag(anchor.value).get("patient") if anchor is not None and anchor.value else None
            found = role_layer(self.viewer.layers, role, patient)
            if found is not None:
                combo.value = found
            elif patient is not None and None in combo.choices:
                combo.value = None  # e.g. no labels for this patient


def compact(*combos, chars: int = 14) -> None:
    """Layer pickers that do not grow with long layer names (the full name shows as tooltip)."""
    from qtpy.QtWidgets import QComboBox

    for combo in combos:
        box = combo.native
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(chars)
        combo.changed.connect(lambda value, box=box: box.setToolTip("" if value is None else value.name))
