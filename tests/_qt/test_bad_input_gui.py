"""The CLI's bad inputs through the dock widgets: a notification says what is wrong, no layer is added,
nothing is written and the inputs keep their data (a table: one row per bad input)."""

from __future__ import annotations

import errno
import os
import struct
import types
from pathlib import Path

import numpy as np
import pytest

from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume, atomic, write_volume

from ..ddm_helpers import tiny_model as tiny_ddm
from ..drdm_export_helpers import tiny_drdm
from ..modiff_helpers import tiny_model as tiny_modiff

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"
DDM, DRDM, MODIFF, EXPORT, OPEN = ("Generate cycle (DDM)", "Augment (DRDM)", "Forecast (Mo-Diff)", "Export",
                                   "Open volume")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2D phantom patient and weights: good ones of each model, and bad ones."""
    import torch
    from safetensors.torch import save_file

    from napari_deformdiff.core.ddm.weights import save_ddm
    from napari_deformdiff.core.drdm.weights import save_drdm
    from napari_deformdiff.core.modiff.weights import save_modiff
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    t = tmp_path_factory.mktemp("inputs")
    list(write_phantom_dataset(t / "ds", cases=1, seed=11, two_d=True, frames=6, fields=False))
    model, meta = tiny_drdm(2, seed=8)
    (t / "garbage.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    save_file({"w": torch.zeros(1)}, str(t / "huge.safetensors"),
              metadata={"model": "ddm", "config": '{"ndims": 3, "grid": [4096, 4096, 4096]}'})
    return types.SimpleNamespace(
        patient=t / "ds" / "patient001",
        ddm2=save_ddm(tiny_ddm(2, seed=3, grid=(64, 64), spacing=(3.0, 3.0)), t / "ddm2.safetensors"),
        ddm3=save_ddm(tiny_ddm(3, seed=1), t / "ddm3.safetensors"),
        drdm2=save_drdm(model, t / "drdm2.safetensors", meta=meta),
        modiff2=save_modiff(tiny_modiff(2), t / "modiff2.safetensors"),
        garbage=t / "garbage.safetensors", huge=t / "huge.safetensors",
    )


def layer(viewer, text):
    return next(x for x in viewer.layers if text in x.name)


def sequence_layer(viewer, with_field=True):
    """A generated-looking 2D+t sequence layer, with its displacement fields in the metadata."""
    from napari.layers import Layer

    from napari_deformdiff._layers import attach_field, volume_to_layer_data

    frames = np.random.default_rng(0).random((4, 16, 18)).astype(np.float32)
    data, kwargs, kind = volume_to_layer_data(Volume(frames, Geometry((1.5, 2.0), (3.0, -4.0), np.eye(2)),
                                                     False, "DDM result", 0.04))
    if with_field:
        attach_field(kwargs["metadata"], np.zeros((4, 2, 16, 18), np.float32))
    return viewer.add_layer(Layer.create(data, kwargs, kind))


def failing_moves(monkeypatch, code):
    def fail(src, dst, *a, **k):
        raise OSError(code, os.strerror(code), str(dst))
    monkeypatch.setattr(atomic, "os", types.SimpleNamespace(link=fail, replace=fail))


# Each row: (dock widget, setup(viewer, widget, files, out folder, monkeypatch) -> the action, message fragment).
def ddm_source_is_target(v, w, f, out, m):
    w.target.value = w.source.value
    return w.start, "same layer"


def ddm_time_series_without_frame(v, w, f, out, m):
    w.target.value = layer(v, "cine (4D)")
    return w.start, "time series (6 frames)"


def ddm_3d_weights_on_2d_images(v, w, f, out, m):
    w.weights.value = f.ddm3
    return w.start, "3D DDM model but the image is 2D"


def ddm_corrupt_checkpoint(v, w, f, out, m):
    w.weights.value = f.garbage
    return w.start, "garbage.safetensors is not a readable safetensors file"


def ddm_absurd_checkpoint_grid(v, w, f, out, m):
    w.weights.value = f.huge
    return w.start, "would need 768.0 GiB"


def ddm_labels_on_another_grid(v, w, f, out, m):
    w.weights.value = f.ddm2
    w.labels.value = v.add_labels(np.zeros((10, 12), np.uint8), name="small labels")
    return w.start, "the labels' shape (10, 12) differs from the source's (128, 128)"


def drdm_labels_on_another_grid(v, w, f, out, m):
    w.labels.value = v.add_labels(np.zeros((10, 12), np.uint8), name="small labels")
    return w.start, "the label map's shape (10, 12) differs from the image's (128, 128)"


def drdm_levels_reversed(v, w, f, out, m):
    w.level_from.value, w.level_to.value = 50, 40
    return w.start, "'to' must not be below 'from'"


def drdm_time_series_without_frame(v, w, f, out, m):
    w.image.value = layer(v, "cine (4D)")
    return w.start, "time series (6 frames)"


def drdm_corrupt_checkpoint(v, w, f, out, m):
    w.weights_file.value = f.garbage
    return w.start, "garbage.safetensors is not a readable safetensors file"


def drdm_ddm_checkpoint(v, w, f, out, m):
    w.weights_file.value = f.ddm2
    return w.start, "a checkpoint of another model (ddm), not DRDM"


def drdm_export_folder_is_a_file(v, w, f, out, m):
    (out / "a file").write_text("mine")
    w.out_dir.value = out / "a file"
    return w.export, "a file is a file; the export needs a folder"


def drdm_export_folder_full(v, w, f, out, m):
    (out / "full").mkdir()
    (out / "full" / "mine.txt").write_text("x")
    w.out_dir.value = out / "full"
    return w.export, "overwrite"


def drdm_export_disk_full(v, w, f, out, m):
    (out / "batch").mkdir()
    w.out_dir.value = out / "batch"
    w.samples.value, w.level_from.value, w.level_to.value = 1, 40, 40
    failing_moves(m, errno.ENOSPC)
    return w.export, "no space left on device (the disk is full)"


def modiff_3d_first_with_2d_weights(v, w, f, out, m):
    w.first.value = v.add_image(np.random.rand(6, 20, 20).astype(np.float32), name="a 3D volume")
    return w.start, "holds a 2D Mo-Diff model but the image is 3D"


def modiff_ddm_checkpoint(v, w, f, out, m):
    w.weights.value = f.ddm2
    return w.start, "not a Mo-Diff checkpoint"


def modiff_corrupt_checkpoint(v, w, f, out, m):
    w.weights.value = f.garbage
    return w.start, "garbage.safetensors is not a readable safetensors file"


def modiff_time_series_without_frame(v, w, f, out, m):
    w.first.value = layer(v, "cine (4D)")
    return w.start, "time series (6 frames)"


def export_existing_report(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    (out / "folding.csv").write_text("already here")
    w.report_path.value = out / "folding.csv"
    return w.export_report, "already exists"


def export_existing_cine_volume(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    (out / "cine.nii.gz").write_bytes(b"already here")
    w.cine_path.value = out / "cine.nii.gz"
    return w.export_cine, "already exists"


def export_cine_into_a_missing_folder(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    w.cine_path.value = out / "nowhere" / "cine.nii.gz"
    return w.export_cine, "does not exist"


def export_cine_on_a_full_disk(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    w.cine_path.value = out / "cine.nrrd"
    failing_moves(m, errno.ENOSPC)
    return w.export_cine, f"Cine not written: cannot use {out / 'cine.nrrd'}: no space left on the device (disk full)"


def export_fields_into_a_read_only_folder(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    (out / "fields").mkdir()
    w.fields_dir.value = out / "fields"
    failing_moves(m, errno.EROFS)
    return w.export_fields, "the file system is read-only"


def export_fields_failing_at_the_third_frame(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    (out / "fields").mkdir()
    w.fields_dir.value = out / "fields"
    real = os.link

    def link(src, dst, *a, **k):  # the moves of frames 0 and 1 work, frame 2's fails: none may stay
        if "_002" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)
    m.setattr(atomic, "os", types.SimpleNamespace(link=link, replace=os.replace))
    return w.export_fields, "DDM_result_002.nii.gz: no space left on the device (disk full)"


def export_fields_into_a_file(v, w, f, out, m):
    w.source.value = sequence_layer(v)
    (out / "a file").write_text("mine")
    w.fields_dir.value = out / "a file"
    return w.export_fields, "a file is a file; choose a folder for the fields"


def export_fields_of_a_layer_without_fields(v, w, f, out, m):
    w.source.value = sequence_layer(v, with_field=False)
    (out / "fields").mkdir()
    w.fields_dir.value = out / "fields"
    return w.export_fields, "carries no displacement field"


def open_truncated_file(v, w, f, out, m):
    (out / "cut.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 40)
    w.path.value = out / "cut.nii.gz"
    return w.open, "cut.nii.gz"


def open_missing_file(v, w, f, out, m):
    w.path.value = out / "missing.nrrd"
    return w.open, "missing.nrrd: no such file"


def open_bool_nifti(v, w, f, out, m):
    path = write_volume(Volume(np.zeros((3, 4, 4), np.uint8), Geometry.identity(3), True), out / "m.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<hh", raw, 70, 1, 1)  # datatype DT_BINARY, bitpix 1
    path.write_bytes(bytes(raw))
    w.path.value = path
    return w.open, "datatype 1"


def open_header_naming_an_outside_file(v, w, f, out, m):
    (out / "secret.raw").write_bytes(b"\1\2\3\4")
    (out / "h").mkdir()
    (out / "h" / "x.mhd").write_text("ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\n"
                                     "ElementDataFile = ../secret.raw\n")
    w.path.value = out / "h" / "x.mhd"
    return w.open, "outside the header's folder"


ROWS = {
    DDM: [ddm_source_is_target, ddm_time_series_without_frame, ddm_3d_weights_on_2d_images, ddm_corrupt_checkpoint,
          ddm_absurd_checkpoint_grid, ddm_labels_on_another_grid],
    DRDM: [drdm_labels_on_another_grid, drdm_levels_reversed, drdm_time_series_without_frame,
           drdm_corrupt_checkpoint, drdm_ddm_checkpoint, drdm_export_folder_is_a_file, drdm_export_folder_full,
           drdm_export_disk_full],
    MODIFF: [modiff_3d_first_with_2d_weights, modiff_ddm_checkpoint, modiff_corrupt_checkpoint,
             modiff_time_series_without_frame],
    EXPORT: [export_existing_report, export_existing_cine_volume, export_cine_into_a_missing_folder,
             export_cine_on_a_full_disk, export_fields_into_a_read_only_folder,
             export_fields_failing_at_the_third_frame, export_fields_into_a_file,
             export_fields_of_a_layer_without_fields],
    OPEN: [open_truncated_file, open_missing_file, open_bool_nifti, open_header_naming_an_outside_file],
}
CASES = [(name, row) for name, rows in ROWS.items() for row in rows]


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dock(viewer, name, files):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    if name == DRDM:
        widget.weights.value = "file..."
        widget.weights_file.value = files.drdm2
        widget.device.value = "cpu"
    elif name == MODIFF:
        widget.weights.value = files.modiff2
    elif name == DDM:
        widget.weights.value = files.ddm2
    return widget


@pytest.mark.parametrize(("name", "row"), CASES, ids=[row.__name__ for _, row in CASES])
def test_bad_input_is_a_notification_and_changes_nothing(name, row, files, make_napari_viewer, qtbot, tmp_path,
                                                         monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    viewer.open(str(files.patient), plugin=PLUGIN)
    widget = dock(viewer, name, files)
    action, fragment = row(viewer, widget, files, tmp_path, monkeypatch)
    layers = {x.name: np.array(x.data, copy=True) for x in viewer.layers if not hasattr(x.data, "levels")}
    before, inputs = snapshot(tmp_path), snapshot(files.patient.parent)
    result = action()
    if result is not None and hasattr(result, "finished"):  # a worker: its error arrives when it stops
        with qtbot.waitSignal(result.finished, timeout=120_000):
            pass
        result = None
    assert result in (None, []), result
    assert messages, "no notification"
    assert fragment in messages[-1], messages
    assert "Traceback" not in messages[-1]
    assert [x.name for x in viewer.layers] == list(layers)  # no layer added (or removed)
    for x in viewer.layers:
        if x.name in layers:
            np.testing.assert_array_equal(x.data, layers[x.name])
    assert snapshot(tmp_path) == before  # nothing written, no temporary left
    assert snapshot(files.patient.parent) == inputs
    assert not [p for p in tmp_path.rglob(".*")]


def test_drdm_levels_outside_1_to_80_cannot_be_chosen(make_napari_viewer, files):
    viewer = make_napari_viewer()
    widget = dock(viewer, DRDM, files)
    for control in (widget.level_from, widget.level_to):
        assert (control.min, control.max) == (1, 80)
        for bad in (0, 81):
            with pytest.raises(ValueError):
                control.value = bad
