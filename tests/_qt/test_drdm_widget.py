"""The "Augment (DRDM)" dock widget in a real viewer: preview streaming, export, errors, screenshot."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_deformdiff._layers import field_of, volume_to_layer_data
from napari_deformdiff.core.drdm.augment import read_manifest
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.io import read_volume

from ..drdm_export_helpers import case_2d, tiny_drdm
from ..shared_data import OFFICIAL_DRDM as OFFICIAL

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"


@pytest.fixture
def weights(tmp_path):
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=8)
    return save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)


def add_case(viewer, case):
    from napari.layers import Layer

    image = viewer.add_layer(Layer.create(*volume_to_layer_data(case.image)))
    labels = viewer.add_layer(Layer.create(*volume_to_layer_data(case.labels)))
    return image, labels


def widget_for(viewer, weights=None):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Augment (DRDM)")
    if weights is not None:
        widget.weights.value = "file..."
        widget.weights_file.value = weights
    widget.device.value = "cpu"
    return widget


def test_preview_grows_a_4d_layer_and_export_writes_the_batch(make_napari_viewer, qtbot, weights, tmp_path):
    viewer = make_napari_viewer()
    case = case_2d()
    image_layer, labels_layer = add_case(viewer, case)
    widget = widget_for(viewer, weights)
    _, export = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    assert export.source.value is None  # no result yet (and no 2D+t layer)
    widget.labels.value = labels_layer
    widget.level_from.value, widget.level_to.value, widget.level_step.value = 6, 8, 2
    widget.samples.value = 1
    sizes = []
    worker = widget.start()
    worker.yielded.connect(lambda e: sizes.append(widget.sequence.count) if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert sizes == list(range(1, len(sizes) + 1)) and len(sizes) >= 7  # frame 0 + one per recovery step
    layer = widget.sequence.image_layer
    assert layer.data.shape == (len(sizes), *case.image.data.shape)
    fields, geometry, _ = field_of(layer)
    assert fields.shape == (len(sizes), 2, *case.image.data.shape) and geometry.almost_equal(case.image.geometry)
    assert np.abs(layer.data[-1] - case.image.data).mean() > 0.5  # the preview deforms the image
    warped = widget.preview_labels.data
    assert warped.shape == case.labels.data.shape
    assert set(np.unique(warped).tolist()) <= set(np.unique(case.labels.data).tolist())
    np.testing.assert_array_equal(image_layer.data, case.image.data)  # inputs untouched
    # results: short names, normal blending over hidden inputs, provenance; Export picks the result
    assert layer.name == "DRDM heart level 6" and widget.preview_labels.name == "DRDM heart level 6 labels"
    assert layer.blending == widget.preview_labels.blending == "translucent"
    assert not image_layer.visible and not labels_layer.visible
    prov = widget.preview_labels.metadata["deformdiff"]["provenance"]
    assert (prov["image"], prov["labels"], prov["level"], prov["seed"]) == ("heart", "heart labels", 6, 0)
    assert prov["weights"] == str(weights)
    assert export.source.value.name == layer.name
    # status: folding over all steps' fields (recomputed), no phantom note for a weights file
    u = fields.astype(np.float64)
    g = [[np.gradient(u[:, i], axis=j + 1) for j in range(2)] for i in range(2)]
    folds = int((((1 + g[0][0]) * (1 + g[1][1]) - g[0][1] * g[1][0]) <= 0).sum())
    folding = f"FOLDING: det J <= 0 at {folds} voxels" if folds else "no folding (det J > 0)"
    assert widget.status.value == f"preview: {len(sizes)}/{len(sizes)} steps; {folding}"

    out = tmp_path / "export"
    widget.out_dir.value = out
    worker = widget.export()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    rows = read_manifest(out / "manifest.csv")
    assert [r["level"] for r in rows] == [6, 8] and widget.exported == 2
    for row in rows:
        vol = read_volume(out / row["image"])
        assert vol.geometry.almost_equal(case.image.geometry)
        assert read_volume(out / row["labels"]).data.dtype == np.uint8
    assert widget.status.value.startswith("exported 2/2")
    assert {r["precision"] for r in rows} == {"float32"}
    widget.precision.value = "bfloat16"
    assert widget._settings().precision == "bfloat16"  # what Preview and Export pass on
    widget.precision.value = "float32"

    # cancel keeps the complete samples and a manifest that lists them
    widget.samples.value = 50
    widget.if_files.value = "overwrite"
    worker = widget.export()
    worker.yielded.connect(lambda e: widget.cancel() if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    rows = read_manifest(out / "manifest.csv")
    assert 1 <= len(rows) < 100
    for row in rows:
        assert (out / row["image"]).is_file() and (out / row["field"]).is_file()
    assert not [t for t in threading.enumerate() if t.name.startswith("drdm-export-")]  # units made at once: stopped


def test_bad_input_is_a_notification_and_changes_nothing(make_napari_viewer, qtbot, monkeypatch, weights,
                                                         tmp_path):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    case = case_2d()
    add_case(viewer, case)
    wrong = viewer.add_labels(np.zeros((10, 12), np.uint8), name="small labels")
    widget = widget_for(viewer, weights)
    count = len(viewer.layers)
    widget.labels.value = wrong
    widget.out_dir.value = tmp_path / "never"
    assert widget.start() is None and "shape" in messages[-1]
    assert widget.export() is None and "shape" in messages[-1]
    widget.labels.value = None
    widget.level_from.value, widget.level_to.value = 50, 40
    assert widget.export() is None and "'to'" in messages[-1]
    widget.level_to.value = 60
    widget.weights_file.value = tmp_path / "missing.safetensors"
    assert widget.start() is None and "does not exist" in messages[-1]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    widget.weights_file.value = weights
    widget.out_dir.value = tmp_path / "full"
    assert widget.export() is None and "overwrite" in messages[-1]
    assert len(viewer.layers) == count and not (tmp_path / "never").exists()
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["mine.txt"]


@pytest.mark.slow
def test_drdm_screenshot(make_napari_viewer, qtbot, tmp_path):
    """The README picture: a phantom slice, its DRDM preview and the warped labels."""
    from napari.layers import Layer

    from napari_deformdiff.core.drdm.weights import load_drdm
    from napari_deformdiff.core.errors import InputError
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    try:
        load_drdm(None, ndims=2)
        weights = None
    except InputError:
        if not OFFICIAL.is_file():
            pytest.skip("no bundled 2D DRDM weights and no official weights here")
        weights = OFFICIAL
    list(write_phantom_dataset(tmp_path / "ds", cases=1, seed=9003, two_d=True, frames=10))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(tmp_path / "ds" / "patient001"), plugin=PLUGIN)
    widget = widget_for(viewer, weights)
    widget.image.value = next(layer for layer in viewer.layers if "ED image" in layer.name)
    widget.labels.value = viewer.layers["patient001 ED labels"]
    widget.level_from.value = 24
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    for layer in viewer.layers:
        layer.visible = layer in (widget.sequence.image_layer, widget.preview_labels)
    viewer.dims.set_current_step(0, widget.sequence.count - 1)
    viewer.reset_view()
    qtbot.wait(150)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    assert shot.std() > 10  # something is drawn
    if os.environ.get("DEFORMDIFF_UPDATE_SCREENSHOTS"):
        viewer.screenshot(str(Path(__file__).parents[1] / "screenshots" / "drdm.png"), canvas_only=False, flash=False)
    assert isinstance(widget.preview_labels, Layer)
