"""Dock widget "Export": a sequence as a cine (MP4/GIF of the current view, or 4D volume), its
displacement fields in the ITK convention, and a per-frame folding report (CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, SpinBox

from .._layers import field_of, is_result, layer_attributes, layer_to_volume
from .layer_inputs import compact, keep_choice

if TYPE_CHECKING:
    import napari

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
FIELD_SUFFIXES = [".nii.gz", ".mha", ".nrrd"]


class ExportWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.source = ComboBox(label="Sequence", choices=self._sequences,
                               tooltip="The sequence to export; a new result becomes it.")
        compact(self.source)
        self.cine_path = FileEdit(label="Cine file", mode="w", tooltip="Where to write the cine: .mp4, .gif or .nii.gz (4D).")
        self.fps = SpinBox(label="Frame rate", value=10, min=1, max=60, tooltip="Frames per second of the cine.")
        self.loop = CheckBox(text="ED -> ES -> ED loop", value=True)
        self.cine_button = PushButton(text="Export cine")
        self.fields_dir = FileEdit(label="Fields folder", mode="d")
        self.field_format = ComboBox(label="Field format", choices=FIELD_SUFFIXES, value=".nii.gz")
        self.fields_button = PushButton(text="Export fields", tooltip="ITK displacement fields, one file per frame.")
        self.report_path = FileEdit(label="Report (.csv)", mode="w", tooltip="The folding report: one row per frame.")
        self.report_button = PushButton(text="Export folding report")
        self.extend([self.source, self.cine_path, self.fps, self.loop, self.cine_button, self.fields_dir,
                     self.field_format, self.fields_button, self.report_path, self.report_button])
        self.cine_button.changed.connect(self.export_cine)
        self.fields_button.changed.connect(self.export_fields)
        self.report_button.changed.connect(self.export_report)
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(lambda _e: self.reset_choices())
        self.reset_choices()
        latest = [layer for layer in viewer.layers if _exportable_result(layer)]
        if latest:
            self.source.value = latest[-1]

    def reset_choices(self, *args) -> None:
        """Refresh the choices, keeping the chosen layer: magicgui re-selects the first choice when the
        chosen layer was renamed (a Mo-Diff forecast is renamed when its final frames replace the previews)."""
        chosen = self.source.value
        super().reset_choices(*args)
        keep_choice(self.source, chosen)

    def _inserted(self, event) -> None:
        """Refresh the choices; a new generated sequence becomes the one to export."""
        self.reset_choices()
        layer = event.value
        if _exportable_result(layer):
            self.source.value = next(c for name, c in self._sequences() if name == layer.name)

    def _sequences(self, _widget=None):
        from napari.layers import Image, Labels

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image | Labels) and layer.ndim >= 3]

    def _run(self, action, what: str):
        """Run an export; report a specific error or what was written, as notifications."""
        from napari.utils.notifications import show_error, show_info

        from ..core.errors import InputError, OutputExistsError, os_error_message
        from ..core.io.atomic import staged

        if self.source.value is None:
            show_error(f"{what}: choose a sequence layer first.")
            return None
        try:
            with staged():  # all files of the export (a field per frame) appear together, or none
                written = action(self.source.value)
        except (InputError, OutputExistsError, ValueError) as exc:
            show_error(f"{what} not written: {exc}")
            return None
        except OSError as exc:
            show_error(f"{what} not written: {os_error_message(exc)}")
            return None
        show_info(f"{what} written: {written}")
        return written

    # --- cine ---------------------------------------------------------------------------------
    def export_cine(self):
        return self._run(self._write_cine, "Cine")

    def _write_cine(self, layer):
        from napari.layers import Labels
        from napari.utils import progress

        from ..core.io import write_volume
        from ..core.io.atomic import split_suffix
        from ..core.io.cine import MovieWriter, pingpong

        path = Path(self.cine_path.value)
        frames = layer.data.shape[0]
        order = pingpong(frames) if self.loop.value else list(range(frames))
        if split_suffix(path.name)[1].lower() in VOLUME_SUFFIXES:
            volume = layer_to_volume(layer.data, layer_attributes(layer), is_labels=isinstance(layer, Labels))
            volume.data = volume.data[order]
            return write_volume(volume, path)
        axis = self.viewer.dims.ndim - layer.ndim  # the layer's time axis in the viewer
        before = self.viewer.dims.current_step
        try:
            with MovieWriter(path, fps=self.fps.value) as movie:
                for t in progress(order, desc=f"Exporting {path.name}"):
                    self.viewer.dims.set_current_step(axis, t)
                    movie.append(self.viewer.screenshot(canvas_only=True, flash=False))
        finally:
            self.viewer.dims.current_step = before
        return path

    # --- fields and report ---------------------------------------------------------------------
    def export_fields(self):
        return self._run(self._write_fields, "Fields")

    def _write_fields(self, layer):
        from ..core.io.fields import write_displacement_series

        from ..core.errors import InputError

        fields, geometry = self._field(layer)
        if Path(self.fields_dir.value).is_file():
            raise InputError(f"{self.fields_dir.value} is a file; choose a folder for the fields.")
        return write_displacement_series(Path(self.fields_dir.value), fields, geometry,
                                         stem=_safe(layer.name), suffix=self.field_format.value)

    def export_report(self):
        return self._run(self._write_report, "Folding report")

    def _write_report(self, layer):
        from ..core.inspect.report import sequence_metrics, write_metrics_csv

        fields, geometry = self._field(layer)
        return write_metrics_csv(Path(self.report_path.value), sequence_metrics(fields, geometry.spacing))

    @staticmethod
    def _field(layer):
        from ..core.errors import InputError

        found = field_of(layer)
        if found is None:
            raise InputError(f"layer '{layer.name}' carries no displacement field.")
        fields, geometry, _ = found
        return fields, geometry


def _exportable_result(layer) -> bool:
    """A shown generated image sequence (not its labels or the hidden differential fields)."""
    from napari.layers import Image

    return isinstance(layer, Image) and layer.visible and layer.ndim >= 3 and is_result(layer)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "field"
