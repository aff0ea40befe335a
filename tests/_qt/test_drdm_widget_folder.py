"""The "Augment (DRDM)" widget on a folder: whole-batch export, Cancel, Resume; the same manifest as the CLI."""

from __future__ import annotations

import pytest

from napari_deformdiff.cli import main
from napari_deformdiff.core.drdm.augment import read_manifest
from napari_deformdiff.core.events import Frame, Progress
from napari_deformdiff.core.io import Volume, write_volume

from ..drdm_export_helpers import case_2d, tiny_drdm
from .test_drdm_widget import widget_for

pytestmark = pytest.mark.gui


@pytest.fixture
def weights(tmp_path):
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=8)
    return save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)


@pytest.fixture
def folder(tmp_path):
    a, b = case_2d("a"), case_2d("b", shape=(36, 40))
    d = tmp_path / "cases"
    d.mkdir()
    write_volume(a.image, d / "p1.nii.gz")
    write_volume(a.labels, d / "p1_gt.nii.gz")
    write_volume(Volume(b.image.data[::-1].copy(), b.image.geometry, False), d / "p2.mha")
    return d


def folder_widget(viewer, weights, folder, out):
    widget = widget_for(viewer, weights)
    widget.source.value = "folder / ACDC dataset"
    assert not widget.in_folder.native.isHidden() and widget.image.native.isHidden()
    widget.in_folder.value = folder
    widget.out_dir.value = out
    widget.level_from.value, widget.level_to.value, widget.level_step.value = 16, 24, 8
    widget.samples.value = 1
    return widget


def test_folder_export_cancel_and_resume_give_the_cli_manifest(make_napari_viewer, qtbot, monkeypatch, weights,
                                                               folder, tmp_path):
    viewer = make_napari_viewer()
    out = tmp_path / "gui"
    widget = folder_widget(viewer, weights, folder, out)
    statuses = []
    worker = widget.export()
    worker.yielded.connect(lambda e: widget.cancel() if isinstance(e, Frame) else None)
    worker.yielded.connect(lambda e: statuses.append(widget.status.value) if isinstance(e, Progress) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    first = read_manifest(out / "manifest.csv")
    assert 1 <= len(first) < 4 and first[0]["id"] == "p1_L16_s000"
    assert any(s.startswith("0/4 samples: p1_L16_s000: step") for s in statuses)  # the whole batch's count
    assert widget.status.value.endswith("; Resume continues") and f"exported {len(first)}/4" in widget.status.value
    assert len(viewer.layers) == 0  # an export adds no layer

    field = out / first[0]["field"]
    field.write_bytes(field.read_bytes()[:-16])  # a damaged file: Resume makes its sample again
    warned = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warned.append)
    worker = widget.resume()
    made = []
    worker.yielded.connect(lambda e: made.append(e.info["id"]) if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert len(warned) == 1 and "p1_L16_s000" in warned[0] and "truncated" in warned[0]
    ids = ["p1_L16_s000", "p1_L24_s000", "p2_L16_s000", "p2_L24_s000"]
    assert made == ["p1_L16_s000", *ids[len(first):]]
    assert widget.status.value == f"exported 4/4 samples to {out}; 1 damaged sample(s) made again"

    cli = tmp_path / "cli"
    assert main(["generate", "drdm", "--image", str(folder), "--levels", "16:24:8", "--samples", "1",
                 "--out-dir", str(cli), "--weights", str(weights), "--device", "cpu"]) == 0
    rows, expected = read_manifest(out / "manifest.csv"), read_manifest(cli / "manifest.csv")
    keys = ("id", "image", "labels", "field", "image_sha256", "labels_sha256", "field_sha256", "field_bytes")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in expected]
    assert [r["labels"] != "" for r in rows] == [True, True, False, False]
    assert (out / "manifest.csv").read_text() == (cli / "manifest.csv").read_text()


def test_a_folder_with_labels_on_another_grid_or_a_3d_checkpoint_is_a_notification_and_writes_nothing(
        make_napari_viewer, qtbot, monkeypatch, weights, folder, tmp_path):
    from napari_deformdiff.core.drdm.weights import save_drdm

    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    monkeypatch.setattr("napari_deformdiff._qt.stream_worker.show_error", messages.append, raising=False)
    c = case_2d()
    write_volume(Volume(c.labels.data[:-2].copy(), c.image.geometry, True), folder / "p2_gt.mha")
    viewer = make_napari_viewer()
    out = tmp_path / "never"
    widget = folder_widget(viewer, weights, folder, out)
    assert widget.export() is None and "p2" in messages[-1] and "shape" in messages[-1]
    (folder / "p2_gt.mha").unlink()
    assert widget.resume() is None and "does not exist" in messages[-1]
    model, meta = tiny_drdm(3)
    widget.weights_file.value = save_drdm(model, tmp_path / "tiny3d.safetensors", meta=meta)
    worker = widget.export()  # the weights are read in the worker
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert "3D" in messages[-1] and "2D" in messages[-1]
    assert not out.exists() and len(viewer.layers) == 0
