"""Dock widget "Open volume": open a file or folder, optionally forcing image or label map."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, PushButton

if TYPE_CHECKING:
    import napari

OPEN_AS = {"auto (from name and values)": None, "image": False, "label map": True}


class OpenVolumeWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.path = FileEdit(label="File", mode="r")
        self.open_as = ComboBox(label="Open as", choices=list(OPEN_AS), value=next(iter(OPEN_AS)))
        self.open_button = PushButton(text="Open")
        self.extend([self.path, self.open_as, self.open_button])
        self.open_button.changed.connect(self.open)

    def open(self) -> list:
        """Read in the GUI thread (files are small next to model runs); errors -> notifications."""
        from napari.layers import Layer
        from napari.utils.notifications import show_error, show_warning

        from .._layers import volume_to_layer_data
        from ..core.errors import InputError
        from ..core.io import read_path

        try:
            volumes = read_path(self.path.value, as_labels=OPEN_AS[self.open_as.value])
        except InputError as exc:
            show_error(str(exc))
            return []
        added = []
        for volume in volumes:
            for warning in volume.warnings:
                show_warning(warning)
            added.append(self.viewer.add_layer(Layer.create(*volume_to_layer_data(volume))))
        return added
