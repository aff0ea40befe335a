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
    assert widget.adapt.value == "auto"
    expected = [e for e in generate_ddm(p.ed, p.es, frames=5, labels=p.ed_labels, model=model, adapt="auto")
                if isinstance(e, Frame)]
    np.testing.assert_allclose(layer.data, np.stack([f.image for f in expected]), atol=1e-4)
    np.testing.assert_array_equal(widget.sequence.labels_layer.data, np.stack([f.labels for f in expected]))
    fields, geometry, total = field_of(layer)
    np.testing.assert_allclose(fields, np.stack([f.field for f in expected]), atol=1e-4)
    assert total == 5 and geometry.almost_equal(p.ed.geometry)
    assert tuple(layer.scale[1:]) == pytest.approx(tuple(ed_layer.scale))
    assert tuple(layer.translate[1:]) == pytest.approx(tuple(ed_layer.translate))
    np.testing.assert_array_equal(ed_layer.data, ed_before)  # the input layer is untouched

    # the result: short names, normal blending over hidden inputs, provenance in the metadata
    assert layer.name == "DDM ED->ES" and widget.sequence.labels_layer.name == "DDM ED->ES labels"
    assert layer.blending == "translucent" and widget.sequence.labels_layer.blending == "translucent"
    hidden = [p.ed.name, p.es.name, "patient001 ED labels", "patient001 ES labels"]
    assert [viewer.layers[n].visible for n in hidden] == [False] * 4
    for result in (layer, widget.sequence.labels_layer):
        prov = result.metadata["deformdiff"]["provenance"]
        assert prov["source"] == p.ed.name and prov["target"] == p.es.name
        assert prov["labels"] == "patient001 ED labels" and prov["weights"] == str(weights) and prov["frames"] == 5

    # the quality line: last frame (gamma 1, numbered as the time slider: 4) vs ES, recomputed here
    end, es = expected[-1].image.astype(np.float64), p.es.data.astype(np.float64)
    a_, b_ = end - end.mean(), es - es.mean()
    ncc = (a_ * b_).sum() / np.sqrt((a_ ** 2).sum() * (b_ ** 2).sum())
    psnr = 10 * np.log10((es.max() - es.min()) ** 2 / np.mean((end - es) ** 2))
    dice = np.mean([2 * ((expected[-1].labels == k) & (p.es_labels.data == k)).sum()
                    / ((expected[-1].labels == k).sum() + (p.es_labels.data == k).sum()) for k in (1, 2, 3)])
    u = np.stack([f.field for f in expected]).astype(np.float64)  # (T, 2, H, W) voxels
    g = [[np.gradient(u[:, i], axis=j + 1) for j in range(2)] for i in range(2)]
    det = (1 + g[0][0]) * (1 + g[1][1]) - g[0][1] * g[1][0]
    folding = f"FOLDING: det J <= 0 at {(det <= 0).sum()} voxels" if (det <= 0).any() else "no folding (det J > 0)"
    assert widget.status.value == (f"5/5 frames; frame 4 end vs target: NCC {ncc:.3f}, PSNR {psnr:.1f} dB, "
                                   f"Dice {dice:.3f}; {folding}")

    widget.frames.value = 200
    widget.labels.value = None
    worker = widget.start()
    worker.yielded.connect(lambda e: widget.cancel() if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert 1 <= widget.sequence.count < 200
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
    # source = target, or the same image in another layer: refused before any work
    widget.target.value = widget.source.value
    assert widget.start() is None and widget.worker is None
    assert "same layer" in messages[-1] and "no motion" in messages[-1]
    copy = viewer.add_image(np.array(widget.source.value.data), name="ED copy")
    widget.target.value = copy
    assert widget.start() is None and "same image" in messages[-1]
    viewer.layers.remove(copy)
    # a time series without the explicit frame choice
    widget.target.value = viewer.layers["patient001 cine (4D)"]
    assert widget.start() is None and "time series (10 frames)" in messages[-1]
    assert len(viewer.layers) == count and widget.worker is None
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
