"""What a user reads after a run, in the tabbed layout of `deformdiff gui`: docks that never scroll
sideways, the canvas on the new result's frames, errors whole on the status line, the chosen
sequence kept when a result is renamed, arrows that show the motion and a Jacobian coloured as
volume change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff._layers import set_provenance
from napari_deformdiff.cli.gui import WIDGETS
from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.weights import save_ddm
from napari_deformdiff.core.inspect.overlays import frame_overlay
from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

from ..ddm_helpers import tiny_model

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"


def tabbed_viewer(make_napari_viewer):
    """The layout `deformdiff gui` makes on a 1366 x 768 laptop screen: {title: (dock, widget)}."""
    from napari_deformdiff._qt.window_fit import fit_to_screen

    viewer = make_napari_viewer(show=True)
    made = {title: viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
            for name, title in WIDGETS.items()}
    fit_to_screen([dock for dock, _ in made.values()], list(made), raised=list(made).index("DDM"),
                  size=(1366, 768))
    return viewer, made


def sideways(dock) -> int:
    """Pixels a dock's content needs beyond the width its scroll area shows (0: it fits)."""
    scroll = dock.widget()
    return max(0, scroll.widget().minimumSizeHint().width() - scroll.viewport().width())


def test_after_a_run_the_docks_fit_and_the_canvas_shows_the_result(make_napari_viewer, qtbot, tmp_path):
    list(write_phantom_dataset(tmp_path / "ds", cases=1, seed=11, two_d=True, frames=10))
    model = tiny_model(2, seed=3, grid=(64, 64), spacing=(3.0, 3.0))
    weights = save_ddm(model, tmp_path / "tiny.safetensors")
    viewer, made = tabbed_viewer(make_napari_viewer)
    viewer.open(str(tmp_path / "ds" / "patient001"), plugin=PLUGIN)
    (ddm_dock, ddm), (inspect_dock, inspect) = made["DDM"], made["Inspect"]
    ddm.weights.value, ddm.frames.value, ddm.adapt.value = weights, 4, 0
    viewer.dims.set_current_step(0, 8)  # the 10-frame cine sets the slider's range; the result has 4
    worker = ddm.start()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.wait(200)
    layer = ddm.sequence.image_layer
    assert 0 <= ddm.sequence._frame_shown(layer) < 4  # moved onto the result (the inputs are hidden)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    assert shot.mean() > 10 and (shot.max(-1) > 60).mean() > 0.05  # the image shows, not a black canvas
    assert len(ddm.status.value) > 80 and "NCC" in ddm.status.value  # the long quality line
    assert sideways(ddm_dock) == 0, ddm.status.value

    inspect_dock.raise_()
    inspect.source.value = layer
    worker = inspect.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: inspect.overlays.idle, timeout=30_000)
    qtbot.wait(200)
    assert inspect.plot.canvas.isVisible() and inspect.readout.value
    assert sideways(inspect_dock) == 0  # the plot, the legend and the readout take the dock's width
    assert all(sideways(dock) == 0 for dock, _ in made.values())


def test_an_error_is_shown_whole_on_the_status_line(make_napari_viewer, monkeypatch, tmp_path):
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    list(write_phantom_dataset(tmp_path / "ds", cases=1, seed=11, two_d=True, frames=6))
    viewer, made = tabbed_viewer(make_napari_viewer)
    viewer.open(str(tmp_path / "ds" / "patient001"), plugin=PLUGIN)
    ddm = made["DDM"][1]
    ddm.target.value = ddm.source.value
    assert ddm.start() is None
    assert len(errors) == 1 and len(errors[0]) > 60  # napari's pop-up shows about 40 characters of it
    assert ddm.status.value == f"Not started: {errors[0]}"


def test_export_keeps_the_latest_result_when_it_is_renamed(make_napari_viewer):
    """Mo-Diff renames its forecast when the final frames replace the previews, and then adds its
    hidden differential fields: Export's sequence stays the forecast."""
    viewer = make_napari_viewer()
    _, export = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    viewer.add_image(np.zeros((5, 16, 16), np.float32), name="cine (4D)")

    def result(name, visible=True):
        layer = viewer.add_image(np.zeros((4, 16, 16), np.float32), name=name, visible=visible)
        set_provenance(layer.metadata, {"method": "Mo-Diff"})
        layer.events.metadata()
        return layer

    forecast = result("Mo-Diff ED (preview, stage 1)")
    export.reset_choices()
    export.source.value = forecast
    forecast.name = "Mo-Diff ED"
    assert export.source.value is forecast
    result("Mo-Diff ED differential fields", visible=False)
    assert export.source.value is forecast


def test_arrows_show_the_motion_and_det_j_colours_read_as_volume_change(make_napari_viewer, qtbot):
    """Fields pull (frame(x) = source(x + u(x))). A square under u = +3 voxels along x moves by -3:
    the arrows point that way. Under u(x) = a (x - centre) (a > 0) the square shrinks, det J =
    (1 + a)^2 > 1, and the Jacobian layer draws it blue (shrinking), not red."""
    from napari_deformdiff._qt.overlay_layers import OverlaySet
    from napari_deformdiff.core.geometry import Geometry

    size, a = 32, 0.25
    source = torch.zeros(1, 1, size, size)
    source[..., 12:20, 8:16] = 1.0
    shift = torch.zeros(1, 2, size, size)
    shift[:, 1] = 3.0
    moved = spatial.warp(source, shift)[0, 0]
    cols = lambda img: float((img.sum(0) * torch.arange(size)).sum() / img.sum())  # noqa: E731
    assert cols(moved) - cols(source[0, 0]) == pytest.approx(-3.0, abs=0.05)
    arrows = frame_overlay(shift[0].numpy(), (1.0, 1.0), stride=4, grid_step=None).vectors
    np.testing.assert_allclose(arrows[:, 1], [[0.0, -3.0]] * len(arrows))  # along the square's motion

    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    contraction = (a * torch.stack([yy - 15.5, xx - 11.5]))[None]
    shrunk = spatial.warp(source, contraction)[0, 0]
    assert float(shrunk.sum()) < 0.75 * float(source.sum())  # the square shrinks in the frame
    overlay = frame_overlay(contraction[0].numpy(), (1.0, 1.0), grid_step=None)
    assert np.median(overlay.jacobian) == pytest.approx((1 + a) ** 2, rel=1e-3)

    viewer = make_napari_viewer()
    overlays = OverlaySet(viewer, name="contraction", geometry=Geometry((1.0, 1.0), (0.0, 0.0), np.eye(2)),
                          total=1, show={"vectors": False, "jacobian": True, "folding": False})
    overlays.add(0, overlay)
    qtbot.waitUntil(lambda: "jacobian" in overlays.layers and overlays.idle, timeout=30_000)
    layer = overlays.layers["jacobian"]
    lo, hi = layer.contrast_limits
    red, green, blue, alpha = layer.colormap.map(np.array([((1 + a) ** 2 - lo) / (hi - lo)]))[0]
    assert blue - red > 0.3 and alpha > 0.2
    red, green, blue, alpha = layer.colormap.map(np.array([(0.6 - lo) / (hi - lo)]))[0]  # det < 1: it grew
    assert red - blue > 0.3 and alpha > 0.2
    overlays.remove()
