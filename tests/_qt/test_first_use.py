"""First use in napari: ACDC defaults (also for patients opened after the widgets), explicit frame
choice for time series, the phantom-weights rule."""

from __future__ import annotations

import pytest

from napari_deformdiff.core.modiff.weights import load_modiff
from napari_deformdiff.core.quality import PHANTOM_WEIGHTS_NOTE

from ..geometry_cases import write_acdc_by_hand

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"


def names(*combos):
    return [None if c.value is None else c.value.name for c in combos]


def test_defaults_follow_acdc_patients_opened_after_the_widgets(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, ddm = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate cycle (DDM)")
    _, modiff = viewer.window.add_plugin_dock_widget(PLUGIN, "Forecast (Mo-Diff)")
    _, drdm = viewer.window.add_plugin_dock_widget(PLUGIN, "Augment (DRDM)")
    write_acdc_by_hand(tmp_path / "patient001", ed=1, es=4)
    viewer.open(str(tmp_path / "patient001"), plugin=PLUGIN)
    assert viewer.layers[0].name == "patient001 cine (4D)"  # what the pickers used to default to
    assert names(ddm.source, ddm.target, ddm.labels, ddm.target_labels) == [
        "patient001 ED image (frame 01)", "patient001 ES image (frame 04)", "patient001 ED labels",
        "patient001 ES labels"]
    assert names(modiff.first, drdm.image, drdm.labels) == [
        "patient001 ED image (frame 01)", "patient001 ED image (frame 01)", "patient001 ED labels"]
    # Mo-Diff's frame count: the range of the bundled 3D model's config
    config = load_modiff(None, ndims=3)[0].config
    assert (modiff.frames.min, modiff.frames.max) == (config.min_frames, config.max_frames)

    # a second patient: the untouched pickers follow it
    write_acdc_by_hand(tmp_path / "patient002", ed=2, es=5)
    viewer.open(str(tmp_path / "patient002"), plugin=PLUGIN)
    assert names(ddm.source, ddm.target, ddm.labels, ddm.target_labels) == [
        "patient002 ED image (frame 02)", "patient002 ES image (frame 05)", "patient002 ED labels",
        "patient002 ES labels"]
    assert names(modiff.first) == ["patient002 ED image (frame 02)"]

    # a choice the user makes is kept; the target and labels follow the chosen source's patient
    ddm.source.value = viewer.layers["patient001 ED image (frame 01)"]
    assert names(ddm.target, ddm.labels) == ["patient001 ES image (frame 04)", "patient001 ED labels"]
    write_acdc_by_hand(tmp_path / "patient003", ed=1, es=3)
    viewer.open(str(tmp_path / "patient003"), plugin=PLUGIN)
    assert names(ddm.source, ddm.target) == ["patient001 ED image (frame 01)", "patient001 ES image (frame 04)"]
    assert names(modiff.first, drdm.image) == ["patient003 ED image (frame 01)"] * 2


def test_a_time_series_needs_the_explicit_frame_choice(make_napari_viewer, monkeypatch, tmp_path):
    errors, infos = [], []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    monkeypatch.setattr("napari.utils.notifications.show_info", infos.append)
    cine, _ = write_acdc_by_hand(tmp_path / "patient001", ed=1, es=4)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "patient001"), plugin=PLUGIN)
    _, drdm = viewer.window.add_plugin_dock_widget(PLUGIN, "Augment (DRDM)")
    count = len(viewer.layers)
    drdm.image.value = viewer.layers["patient001 cine (4D)"]
    drdm.labels.value = None
    assert drdm.start() is None and drdm.worker is None and len(viewer.layers) == count
    assert "time series (6 frames)" in errors[-1] and "Frame at the time slider" in errors[-1]
    drdm.use_slider.value = True
    viewer.dims.set_current_step(0, 2)
    case = drdm._case()  # what Preview and Export would use
    assert case.image.data.shape == (3, 12, 10)
    assert (case.image.data == cine[..., 2].T).all()  # (x, y, z) on disk -> (z, y, x)
    assert infos[-1] == "DRDM: using frame 2 of 'patient001 cine (4D)' (the time slider)."


def test_bundled_weights_on_a_real_image_get_a_note(make_napari_viewer, tmp_path):
    """The rule: a layer is a phantom if the sample data or a phantom dataset (Info.cfg Group
    PHANTOM-...) made it, or its name says phantom; bundled weights elsewhere get the note."""
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    write_acdc_by_hand(tmp_path / "patient001")
    list(write_phantom_dataset(tmp_path / "ph", cases=1, seed=1, two_d=True, frames=6))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "patient001"), plugin=PLUGIN)
    real = viewer.layers["patient001 ED image (frame 01)"]
    viewer.layers.clear()
    viewer.open(str(tmp_path / "ph" / "patient001"), plugin=PLUGIN)
    phantom = viewer.layers["patient001 ED labels"]
    sample = viewer.open_sample(PLUGIN, "cardiac_2d")[0]
    _, ddm = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate cycle (DDM)")
    assert ddm._phantom_note(None, real) == PHANTOM_WEIGHTS_NOTE
    assert ddm._phantom_note(tmp_path / "mine.safetensors", real) == ""
    assert ddm._phantom_note(None, phantom) == "" and ddm._phantom_note(None, sample) == ""
