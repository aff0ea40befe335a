"""The "Generate cycle (DDM)" dock widget in a real viewer: streaming, geometry, labels, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deformdiff._layers import field_of
from napari_deformdiff.core.ddm.generate import generate_ddm
from napari_deformdiff.core.ddm.weights import save_ddm
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.io.acdc import read_acdc_patient
from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

from ..ddm_helpers import tiny_model
from .gui_helpers import assert_change_near_the_centre, canvas_at_steps

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"


@pytest.fixture
def patient(tmp_path):
    list(write_phantom_dataset(tmp_path / "ds", cases=1, seed=11, two_d=True, frames=10))
    return tmp_path / "ds" / "patient001"


def test_ddm_widget_streams_a_cycle_with_labels_and_fields(make_napari_viewer, qtbot, patient, tmp_path):
    model = tiny_model(2, seed=3, grid=(64, 64), spacing=(3.0, 3.0))
    for p in model.field_fn.outconv.parameters():
        p.data.normal_(0, 0.05)
    weights = save_ddm(model, tmp_path / "tiny.safetensors")
    viewer = make_napari_viewer()
    viewer.open(str(patient), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate cycle (DDM)")
    assert widget.source.value.name.endswith("ED image (frame 01)")
    assert "ES image" in widget.target.value.name
    widget.labels.value = viewer.layers["patient001 ED labels"]
    widget.weights.value = weights
    widget.frames.value = 5
    ed_layer = widget.source.value
    ed_before = np.array(ed_layer.data, copy=True)
    sizes = []
    worker = widget.start()
    worker.yielded.connect(lambda e: sizes.append(widget.sequence.count) if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert sizes == [1, 2, 3, 4, 5]
    layer = widget.sequence.image_layer
    p = read_acdc_patient(patient)
    expected = [e for e in generate_ddm(p.ed, p.es, frames=5, labels=p.ed_labels, model=model) if isinstance(e, Frame)]
    np.testing.assert_allclose(layer.data, np.stack([f.image for f in expected]), atol=1e-4)
    np.testing.assert_array_equal(widget.sequence.labels_layer.data, np.stack([f.labels for f in expected]))
    fields, geometry, total = field_of(layer)
    np.testing.assert_allclose(fields, np.stack([f.field for f in expected]), atol=1e-4)
    assert total == 5 and geometry.almost_equal(p.ed.geometry)
    assert tuple(layer.scale[1:]) == pytest.approx(tuple(ed_layer.scale))
    assert tuple(layer.translate[1:]) == pytest.approx(tuple(ed_layer.translate))
    np.testing.assert_array_equal(ed_layer.data, ed_before)  # the input layer is untouched
    assert widget.status.value == "5/5 frames"

    widget.frames.value = 60
    widget.labels.value = None
    worker = widget.start()
    worker.yielded.connect(lambda e: widget.cancel() if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert 1 <= widget.sequence.count < 60
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_ddm_widget_reports_bad_input_without_touching_layers(make_napari_viewer, qtbot, monkeypatch, patient,
                                                              tmp_path):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    viewer.open(str(patient), plugin=PLUGIN)
    viewer.add_image(np.random.rand(6, 20, 20).astype(np.float32), name="a 3D volume")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate cycle (DDM)")
    count = len(viewer.layers)
    widget.target.value = viewer.layers["a 3D volume"]
    assert widget.start() is None
    assert "2D" in messages[-1] and "3D" in messages[-1]
    three_d = save_ddm(tiny_model(3), tmp_path / "tiny3d.safetensors")
    widget.target.value = next(layer for layer in viewer.layers if "ES image" in layer.name)
    widget.weights.value = tmp_path / "missing.safetensors"
    assert widget.start() is None
    assert "does not exist" in messages[-1]
    widget.weights.value = three_d
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert "3D DDM model but the image is 2D" in messages[-1]
    assert len(viewer.layers) == count  # nothing was added


def test_ddm_screenshot_shows_the_heart_contracting(make_napari_viewer, qtbot, tmp_path):
    """Bundled 2D weights on a held-out phantom slice: what the user sees changes where the heart is."""
    import os
    from pathlib import Path

    list(write_phantom_dataset(tmp_path / "ds", cases=1, seed=9002, two_d=True, frames=20))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(tmp_path / "ds" / "patient001"), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate cycle (DDM)")
    widget.labels.value = viewer.layers["patient001 ED labels"]
    widget.frames.value = 8
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    for layer in viewer.layers:
        layer.visible = layer in (widget.sequence.image_layer, widget.sequence.labels_layer)
    viewer.reset_view()
    assert_change_near_the_centre(*canvas_at_steps(viewer, qtbot, (0, 7)))
    lv = widget.sequence.labels_layer.data == 3
    assert lv[7].sum() < 0.85 * lv[0].sum()
    if os.environ.get("DEFORMDIFF_UPDATE_SCREENSHOTS"):
        viewer.dims.set_current_step(0, 7)
        qtbot.wait(150)
        viewer.screenshot(str(Path(__file__).parents[1] / "screenshots" / "ddm.png"), canvas_only=False, flash=False)
