"""A real napari viewer under Xvfb: samples, readers/writers through the viewer, streaming widget,
and what the user sees (screenshot pixels)."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels

from napari_deformdiff.core.events import Frame

from ..geometry_cases import OBLIQUE, itk_oblique_image, write_acdc_by_hand

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"
SCREENSHOT_DIR = Path(__file__).parents[1] / "screenshots"


@pytest.mark.parametrize(
    ("key", "ndim", "spacing"),
    [("cardiac", 4, (3.15, 1.5, 1.5)), ("cardiac_2d", 3, (1.5, 1.5)), ("lung", 4, (2.5, 2.5, 2.5))],
)
def test_open_each_sample(make_napari_viewer, key, ndim, spacing):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, key)
    image, labels = layers
    assert isinstance(image, Image) and isinstance(labels, Labels)
    assert image.data.ndim == ndim and image.data.dtype == np.float32
    assert labels.data.shape == image.data.shape and labels.data.dtype.kind in "iu"
    assert set(np.unique(labels.data[0])) >= {0, 1, 2}
    assert tuple(image.scale[1:]) == pytest.approx(spacing)
    assert viewer.dims.nsteps[0] == image.data.shape[0]  # the time slider covers every frame


def test_open_acdc_folder_and_save_labels_through_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    write_acdc_by_hand(tmp_path / "patient010")
    viewer.open(str(tmp_path / "patient010"), plugin=PLUGIN)
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "patient010 cine (4D)", "patient010 ES image (frame 04)", "patient010 ED image (frame 01)",
        "patient010 ES labels", "patient010 ED labels",
    ]
    out = tmp_path / "ed_gt.nii.gz"
    from napari.plugins.io import save_layers

    save_layers(str(out), [viewer.layers["patient010 ED labels"]], plugin=PLUGIN)
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    ref = sitk.ReadImage(str(tmp_path / "patient010" / "patient010_frame01_gt.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), rtol=1e-5)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_oblique_round_trip_through_the_viewer(make_napari_viewer, tmp_path, ext):
    from napari.plugins.io import save_layers

    viewer = make_napari_viewer()
    img, arr = itk_oblique_image(dim4=3)
    sitk.WriteImage(img, str(tmp_path / f"in{ext}"))
    (layer,) = viewer.open(str(tmp_path / f"in{ext}"), plugin=PLUGIN)
    assert layer.data.shape == arr.shape
    save_layers(str(tmp_path / f"out{ext}"), [layer], plugin=PLUGIN)
    back = sitk.ReadImage(str(tmp_path / f"out{ext}"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetSpacing()[:3], img.GetSpacing()[:3], rtol=1e-5)
    np.testing.assert_allclose(back.GetOrigin()[:3], img.GetOrigin()[:3], atol=1e-4)
    d = np.asarray(back.GetDirection()).reshape(4, 4)[:3, :3]
    np.testing.assert_allclose(d, OBLIQUE, atol=1e-5)


def test_phantom_widget_streams_frames_and_cancels(make_napari_viewer, qtbot):
    from napari_deformdiff.core.phantom import cardiac_phantom, stream_cardiac_phantom

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Phantom generator")
    widget.two_d.value = True
    widget.frames.value = 6
    widget.seed.value = 3
    sizes = []
    worker = widget.start()
    worker.yielded.connect(lambda e: sizes.append(widget.sequence.image_layer.data.shape[0])
                           if isinstance(e, Frame) else None)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert sizes == [1, 2, 3, 4, 5, 6]  # the layer grew frame by frame
    reference = cardiac_phantom(3, frames=6, two_d=True)
    np.testing.assert_array_equal(widget.sequence.image_layer.data, reference.images)
    np.testing.assert_array_equal(widget.sequence.labels_layer.data, reference.labels)
    assert widget.run_button.enabled and not widget.cancel_button.enabled

    widget.two_d.value = False  # 3D frames take long enough (~0.2 s) for a cancel to land mid-run
    widget.frames.value = 40
    worker = widget.start()
    worker.yielded.connect(lambda e: widget.cancel() if isinstance(e, Frame) else None)  # at the first frame
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    kept = widget.sequence.image_layer.data
    assert 1 <= kept.shape[0] < 40
    frames = (e for e in stream_cardiac_phantom(3, frames=40) if isinstance(e, Frame))
    for frame in itertools.islice(frames, kept.shape[0]):
        np.testing.assert_array_equal(kept[frame.index], frame.image)  # frames made are kept intact
    assert widget.status.value == f"{kept.shape[0]}/40 frames"


def test_open_widget_flags_labels_and_reports_errors(make_napari_viewer, tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Open volume")
    ints = np.zeros((4, 5, 6), np.int16)
    ints[1:3, 2:4, 2:5] = 7
    sitk.WriteImage(sitk.GetImageFromArray(ints), str(tmp_path / "regions.nrrd"))
    widget.path.value = tmp_path / "regions.nrrd"
    widget.open_as.value = "label map"
    (layer,) = widget.open()
    assert isinstance(layer, Labels) and layer.data.dtype == np.int16
    assert set(np.unique(layer.data)) == {0, 7}
    (tmp_path / "cut.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 40)
    widget.path.value = tmp_path / "cut.nii.gz"
    widget.open_as.value = "image"
    assert widget.open() == []
    assert "cut.nii.gz" in messages[-1] and len(viewer.layers) == 1  # nothing else added


def test_screenshot_shows_the_heart(make_napari_viewer, qtbot):
    """The rendered canvas shows the phantom: a textured image, with the labels overlay on the heart."""
    viewer = make_napari_viewer(show=True)
    for name in ("Phantom generator", "Open volume"):
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    image, labels = viewer.open_sample(PLUGIN, "cardiac")
    viewer.dims.set_current_step(1, image.data.shape[1] // 2)  # mid-ventricular slice
    viewer.reset_view()
    qtbot.wait(200)
    with_labels = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    labels.visible = False
    qtbot.wait(100)
    image_only = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    assert image_only.std() > 20  # a textured image, not a blank canvas
    overlay = np.abs(with_labels - image_only).sum(-1) > 30
    share = overlay.mean()
    assert 0.003 < share < 0.25, share  # the heart: a small part of the torso
    rows, cols = np.nonzero(overlay)
    h, w = overlay.shape
    assert abs(rows.mean() - h / 2) < h / 4 and abs(cols.mean() - w / 2) < w / 4  # near the centre
    # the labels sit on bright blood (LV/RV cavities) in the image underneath
    gray = image_only.mean(-1)
    assert gray[overlay].mean() > gray[gray > 5].mean()


def run_on_own_screen(cmd: list[str], width: int, height: int, cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` on a fresh Xvfb screen of width x height (Xvfb picks a free display number)."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24",
                             "-nolisten", "tcp"], pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as f:
            display = f.readline().strip()
        assert display, "Xvfb did not start"
        env = {**os.environ, "DISPLAY": f":{display}", "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env=env,
                              cwd=cwd)
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize(("width", "height"), [(1366, 768), (1920, 1080)])
def test_gui_command_fits_the_screen_and_shows_the_heart(tmp_path, width, height):
    """README command (1), with a screenshot instead of the event loop, on screens of both sizes:
    the window fits, the docks are tabbed, the canvas takes >= 60 % of the width and shows the heart."""
    import json

    root = Path(__file__).resolve().parents[2]
    shot = tmp_path / "gui.png"
    cmd = [sys.executable, "-m", "napari_deformdiff.cli", "gui", "sample_data/patient001",
           "--screenshot", str(shot), "--quit"]
    out = run_on_own_screen(cmd, width, height, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    layout = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("layout "))[7:])
    assert (layout["window_width"], layout["window_height"]) == (width, height)
    assert layout["canvas_width"] >= 0.6 * width, layout
    assert layout["canvas_y"] + layout["canvas_height"] <= height  # the time slider is on screen
    wide = {k: w for k, w in layout["dock_content_widths"].items() if w > layout["dock_view_width"]}
    assert not wide, f"these docks scroll sideways in {layout['dock_view_width']} px: {wide}"
    from PIL import Image

    pixels = np.asarray(Image.open(shot))[..., :3].astype(float)
    assert pixels.shape[:2] == (height, width)
    x, y = layout["canvas_x"], layout["canvas_y"]
    canvas = pixels[y:y + layout["canvas_height"], x:x + layout["canvas_width"]]
    # the ACDC labels (coloured) over the grey image: the heart, a part of the canvas near its centre
    labelled = canvas.max(-1) - canvas.min(-1) > 60
    assert 0.03 < labelled.mean() < 0.4, labelled.mean()
    rows, cols = np.nonzero(labelled)
    h, w = labelled.shape
    assert abs(rows.mean() - h / 2) < h / 4 and abs(cols.mean() - w / 2) < w / 4
    heart_rows = rows.max() - rows.min()
    assert heart_rows > 0.2 * h  # drawn large, not a thumbnail
    if os.environ.get("DEFORMDIFF_UPDATE_SCREENSHOTS") and width == 1366:
        SCREENSHOT_DIR.mkdir(exist_ok=True)
        (SCREENSHOT_DIR / "main_window.png").write_bytes(shot.read_bytes())
