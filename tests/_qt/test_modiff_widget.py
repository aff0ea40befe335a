"""The "Forecast (Mo-Diff)" dock widget in a real viewer: previews, final frames, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deformdiff._layers import field_of
from napari_deformdiff.core.ddm.weights import save_ddm
from napari_deformdiff.core.events import Frame, SequencePreview
from napari_deformdiff.core.io.acdc import read_acdc_patient
from napari_deformdiff.core.modiff.generate import generate_modiff
from napari_deformdiff.core.modiff.weights import save_modiff

from ..ddm_helpers import tiny_model as tiny_ddm
from .gui_helpers import assert_change_near_the_centre, canvas_at_steps
from ..modiff_helpers import phantom_sequences, tiny_model

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"


@pytest.fixture
def patient(tmp_path):
    return phantom_sequences(tmp_path / "ds", cases=1, seed=21) / "patient001"


def test_modiff_widget_shows_sharpening_previews_then_the_forecast(make_napari_viewer, qtbot, patient, tmp_path):
    model = tiny_model(2, seed=8)
    weights = save_modiff(model, tmp_path / "tiny.safetensors")
    viewer = make_napari_viewer()
    viewer.open(str(patient), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Forecast (Mo-Diff)")
    assert "ED image" in widget.first.value.name
    widget.weights.value = weights
    widget.frames.value, widget.steps.value, widget.seed.value = 5, 8, 4
    first_layer = widget.first.value
    before = np.array(first_layer.data, copy=True)
    count = len(viewer.layers)
    seen = []
    worker = widget.start()
    worker.yielded.connect(
        lambda e: seen.append((type(e).__name__, widget.forecast.layer.name if widget.forecast.layer else None,
                               None if widget.forecast.layer is None else np.array(widget.forecast.layer.data))))
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    previews = [s for s in seen if s[0] == "SequencePreview"]
    assert 3 <= len(previews) <= 7  # a sensible number of refreshes for 2 x 8 steps
    assert all("(preview" in name for _, name, _ in previews)
    assert all(data.shape == (5, 48, 48) for _, _, data in previews)
    assert np.abs(previews[-1][2] - previews[0][2]).max() > 1e-4  # the estimate changes as it denoises
    layer = widget.forecast.layer
    assert layer.name == "Mo-Diff ED" and layer.blending == "translucent"
    assert not first_layer.visible  # the input is hidden under the forecast
    prov = layer.metadata["deformdiff"]["provenance"]
    assert prov["first"] == first_layer.name and prov["seed"] == 4 and prov["steps"] == 8
    assert prov["weights"] == str(weights)
    p = read_acdc_patient(patient)
    events = list(generate_modiff(p.ed, frames=5, steps=8, seed=4, model=model))
    expected = np.stack([e.image for e in events if isinstance(e, Frame)])
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5, atol=1e-5)
    diff = [e for e in events if isinstance(e, SequencePreview) and e.differential is not None][-1].differential
    np.testing.assert_allclose(widget.differential.layer.data, diff, rtol=1e-5, atol=1e-6)
    lo, hi = widget.differential.layer.contrast_limits
    assert lo == pytest.approx(-hi)  # diverging colormap centred at zero
    assert tuple(layer.scale[1:]) == pytest.approx(tuple(first_layer.scale))
    assert tuple(layer.translate[1:]) == pytest.approx(tuple(first_layer.translate))
    assert len(viewer.layers) == count + 2
    np.testing.assert_array_equal(first_layer.data, before)
    # the range check, recomputed: share of voxels outside the first frame's [min, max]
    lo, hi = float(p.ed.data.min()), float(p.ed.data.max())
    out = (expected < lo) | (expected > hi)
    over = max(lo - float(expected.min()), float(expected.max()) - hi, 0.0)
    note = (f"LEFT the first frame's range [{lo:.3g}, {hi:.3g}]: {100 * out.mean():.1f} % of voxels, by up to "
            f"{over:.3g}" if out.any() else f"within the first frame's range [{lo:.3g}, {hi:.3g}]")
    assert not out.any()  # warped frames stay in the first frame's range
    # the fields behind the frames travel with the layer, for Inspect
    fields, geometry, total = field_of(layer)
    np.testing.assert_allclose(fields, np.stack([e.field for e in events if isinstance(e, Frame)]), atol=1e-6)
    assert total == 5 and geometry.almost_equal(p.ed.geometry) and np.abs(fields[4]).max() > 1e-3
    assert widget.status.value == f"5 frames ({widget.previews} previews); {note}; no folding (det J > 0)"

    widget.steps.value = 40
    worker = widget.start()
    worker.yielded.connect(lambda e: widget.cancel() if isinstance(e, SequencePreview) else None)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert widget.status.value.startswith("cancelled after") and widget.previews < 8
    assert "(preview" in widget.forecast.layer.name  # no final frames after a cancel
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_modiff_widget_reports_bad_input_without_adding_layers(make_napari_viewer, monkeypatch, patient, tmp_path):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    viewer.open(str(patient), plugin=PLUGIN)
    viewer.add_image(np.random.rand(6, 20, 20).astype(np.float32), name="a 3D volume")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Forecast (Mo-Diff)")
    widget.weights.value = save_modiff(tiny_model(2), tmp_path / "tiny.safetensors")
    count = len(viewer.layers)
    model = tiny_model(2)
    # the frame count's range is the model's: a count it was not trained for cannot be chosen
    assert (widget.frames.min, widget.frames.max) == (model.config.min_frames, model.config.max_frames) == (3, 6)
    with pytest.raises(ValueError):
        widget.frames.value = 9
    widget.frames.value = 4
    widget.first.value = viewer.layers["a 3D volume"]
    assert widget.start() is None and "2D" in messages[-1] and "3D" in messages[-1]
    widget.first.value = next(layer for layer in viewer.layers if "ED image" in layer.name)
    widget.weights.value = save_ddm(tiny_ddm(2), tmp_path / "ddm.safetensors")
    assert widget.start() is None and "not a Mo-Diff checkpoint" in messages[-1]
    assert len(viewer.layers) == count


def test_modiff_screenshot(make_napari_viewer, qtbot, tmp_path):
    """Bundled 2D weights on a held-out phantom slice: what the user sees changes where the heart is."""
    import os
    from pathlib import Path

    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "ds", cases=1, seed=9003, two_d=True, frames=32, fields=False))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(tmp_path / "ds" / "patient001"), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Forecast (Mo-Diff)")
    widget.frames.value, widget.steps.value = 12, 25
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    layer = widget.forecast.layer
    assert layer.data.shape[0] == 12 and "preview" not in layer.name
    for other in viewer.layers:
        other.visible = other.name == layer.name  # (the widget hands out proxies: no "is")
    viewer.reset_view()
    assert_change_near_the_centre(*canvas_at_steps(viewer, qtbot, (0, 11)))
    if os.environ.get("DEFORMDIFF_UPDATE_SCREENSHOTS"):
        viewer.dims.set_current_step(0, 11)
        qtbot.wait(600)
        viewer.screenshot(str(Path(__file__).parents[1] / "screenshots" / "modiff.png"), canvas_only=False, flash=False)
