"""'Inspect deformation' in a real viewer under Xvfb, on analytic fields with known answers."""

import numpy as np
import pytest
from napari.layers import Image, Labels, Layer, Vectors

from napari_deformdiff._layers import attach_field, volume_to_layer_data
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.inspect.vector_style import (
    MAX_VECTORS_PER_FRAME,
    vector_strides,
)
from napari_deformdiff.core.io import Volume

from .gui_helpers import common_centre, stream_phantom_with_overlays

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"
SHAPE = (8, 32, 40)
SPACING = (3.0, 1.5, 1.25)


def field_layer(viewer, fields, name="analytic"):
    geometry = Geometry(SPACING, (10.0, -5.0, 2.0), np.eye(3))
    images = np.random.default_rng(0).random((fields.shape[0], *SHAPE)).astype(np.float32)
    data, kwargs, kind = volume_to_layer_data(Volume(images, geometry, False, name, 0.04))
    attach_field(kwargs["metadata"], fields)
    return viewer.add_layer(Layer.create(data, kwargs, kind))


def translation(frames=3):
    f = np.zeros((frames, 3, *SHAPE), np.float32)
    for t in range(frames):
        f[t, 0], f[t, 1], f[t, 2] = 0.5 * t, 1.0 * t, -2.0 * t  # voxels, array order
    return f


def fold(frames=2):
    """u_x = -a sin(2 pi x / L): det = 1 - a 2pi/L cos(2 pi x / L) <= 0 in a known band of x."""
    f = np.zeros((frames, 3, *SHAPE), np.float32)
    x = np.arange(SHAPE[2], dtype=np.float64)
    a, period = 4.5, 20.0  # no sample sits exactly on det = 0
    f[1, 2] = (-a * np.sin(2 * np.pi * x / period)).astype(np.float32)[None, None, :]
    return f


def show(viewer, qtbot, layer, **options):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect deformation")
    widget.source.value = layer
    for name, value in options.items():
        getattr(widget, name).value = value
    worker = widget.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget.overlays.idle, timeout=30_000)  # layers refresh one per event-loop turn
    return widget


def test_translation_has_no_folding_and_det_one(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = field_layer(viewer, translation())
    widget = show(viewer, qtbot, layer, magnitude_on=True)
    layers = widget.overlays.layers
    assert isinstance(layers["folding"], Labels) and isinstance(layers["jacobian"], Image)
    assert isinstance(layers["vectors"], Vectors)
    assert layers["folding"].data.shape == (3, *SHAPE) and layers["folding"].data.max() == 0
    np.testing.assert_allclose(layers["jacobian"].data, 1.0, atol=1e-6)
    for t in range(3):  # |u| in mm from the spacing: (0.5 t * 3, 1 t * 1.5, -2 t * 1.25)
        expected = t * np.sqrt(1.5**2 + 1.5**2 + 2.5**2)
        np.testing.assert_allclose(layers["magnitude"].data[t], expected, rtol=1e-5)
        m = widget.overlays.metrics[t]
        assert m["folding_count"] == 0 and m["max_mm"] == pytest.approx(expected, rel=1e-5)
    # overlays sit exactly on the frames: same world transform as the source layer
    for key in ("jacobian", "folding", "grid", "vectors"):
        np.testing.assert_allclose(layers[key].data_to_world((1, 2, 3, 4)), layer.data_to_world((1, 2, 3, 4)))
    # vectors: a 4D layer holding the frame under the time slider, projection = the motion, minus
    # the (pull-back) translation
    for t in (2, 0, 1):
        viewer.dims.set_current_step(0, t)
        vec = layers["vectors"].data
        assert vec.shape[1:] == (2, 4) and set(vec[:, 0, 0]) == {t}
        np.testing.assert_allclose(vec[:, 1, 1:], [[-0.5 * t, -1.0 * t, 2.0 * t]] * len(vec))
    # the cursor readout gives the field in mm at the voxel under the mouse
    mm, norm = widget.field_at(layer.data_to_world((2, 4, 10, 10)))
    np.testing.assert_allclose(mm, [3.0, 3.0, -5.0], atol=1e-5)
    viewer.cursor.position = tuple(layer.data_to_world((2, 4, 10, 10)))
    widget._on_mouse_move(viewer, None)  # what napari calls when the mouse moves over the canvas
    assert viewer.help == f"u = (+3.00, +3.00, -5.00) mm, |u| = {np.sqrt(43):.2f} mm"
    viewer.dims.set_current_step(0, 2)
    assert "frame 2/2: folding 0 voxels" in widget.readout.value  # numbered as the time slider
    assert widget.plot.series()["max_mm"] == pytest.approx([m["max_mm"] for m in widget.overlays.metrics])


def test_vectors_layer_shows_exactly_the_frame_under_the_time_slider(make_napari_viewer, qtbot):
    """The 4D Vectors layer holds one frame: after each slider move, that frame's sampled field
    (time coordinate t), coloured by its own |u| in mm, and napari draws those at the shown slice."""
    from napari_deformdiff._layers import vector_colors
    from napari_deformdiff.core.inspect.vector_style import sampled
    from napari_deformdiff.core.spatial import field_to_vectors

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    scale = np.array([0.3, 1.0, 2.0, 4.0], np.float32).reshape(4, 1, 1, 1, 1)  # |u| bins differ per frame
    fields = (rng.standard_normal((4, 3, *SHAPE)) * scale).astype(np.float32)
    layer = field_layer(viewer, fields)
    widget = show(viewer, qtbot, layer, stride=4)
    vectors = widget.overlays.layers["vectors"]
    shown = viewer.layers[vectors.name]  # the layer itself (the widget holds a public-only proxy)
    strides = vector_strides(SHAPE, 4)
    assert strides == (1, 4, 4)
    spacing = np.reshape(SPACING, (3, 1, 1, 1))
    viewer.dims.set_point(1, layer.data_to_world((0, 5, 0, 0))[1])  # z slice 5
    ranges = viewer.dims.range
    for t in (3, 0, 2, 1, 3):
        viewer.dims.set_current_step(0, t)
        assert viewer.dims.range == ranges  # another frame's vector tips do not move the sliders
        data = vectors.data
        expected = field_to_vectors(-fields[t], stride=strides)  # the motion
        assert data.shape == (len(expected), 2, 4)
        np.testing.assert_array_equal(data[:, 0, 0], t)
        np.testing.assert_array_equal(data[:, 1, 0], 0)
        np.testing.assert_array_equal(data[:, :, 1:], expected)
        mm = np.linalg.norm(fields[t][(slice(None), *sampled(SHAPE, strides))] * spacing, axis=0).reshape(-1)
        np.testing.assert_array_equal(vectors.edge_color, vector_colors(mm))
        assert len(set(map(tuple, vectors.edge_color))) >= 2
        in_slice = np.flatnonzero(expected[:, 0, 0] == 5)
        np.testing.assert_array_equal(np.sort(shown._view_indices), in_slice)
        np.testing.assert_array_equal(shown._view_data, data[in_slice][:, :, 2:])
    viewer.dims.set_point(1, layer.data_to_world((0, 0, 0, 0))[1])
    assert shown._view_data.shape == (int((expected[:, 0, 0] == 0).sum()), 2, 2)


def test_moving_the_slider_shows_frames_that_arrived_before_the_layers_caught_up(make_napari_viewer, qtbot):
    """While frames are still arriving, frames not under the slider wait to reach the image layers;
    moving the slider to such a frame shows its overlays in the same slider change."""
    from napari_deformdiff._qt.overlay_layers import OverlaySet
    from napari_deformdiff.core.inspect.overlays import frame_overlay

    viewer = make_napari_viewer()
    fields = translation(frames=4)
    field_layer(viewer, fields)  # the time slider spans 4 frames
    overlays = OverlaySet(viewer, name="growing", geometry=Geometry(SPACING, (10.0, -5.0, 2.0), np.eye(3)),
                          total=9, show={"vectors": True, "jacobian": True, "folding": True})
    overlays.add(0, frame_overlay(fields[0], SPACING, stride=4, grid_step=None))
    qtbot.waitUntil(lambda: len(overlays.layers) == 3 and overlays.idle, timeout=30_000)
    layers = overlays.layers
    for t in (1, 2, 3):  # frames arrive while the slider shows frame 0
        overlays.add(t, frame_overlay(fields[t], SPACING, stride=4, grid_step=None))
    assert not overlays.idle and len(layers["jacobian"].data) == 1
    assert set(layers["vectors"].data[:, 0, 0]) == {0}
    viewer.dims.set_current_step(0, 3)  # no event-loop turn in between: the slider change does it
    assert len(layers["jacobian"].data) == 4 and len(layers["folding"].data) == 4
    np.testing.assert_allclose(layers["jacobian"].data[3], 1.0, atol=1e-6)
    np.testing.assert_array_equal(layers["vectors"].data[:, 0, 0], 3)
    vec = layers["vectors"].data
    np.testing.assert_allclose(vec[:, 1, 1:], [[-1.5, -3.0, 6.0]] * len(vec))
    qtbot.waitUntil(lambda: overlays.idle, timeout=5_000)
    overlays.remove()
    assert [layer.name for layer in viewer.layers] == ["analytic"]


def test_folding_layer_marks_exactly_the_folded_band(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = field_layer(viewer, fold())
    widget = show(viewer, qtbot, layer)
    folding = widget.overlays.layers["folding"].data
    assert folding[0].max() == 0  # frame 0 has no motion
    x = np.arange(SHAPE[2])
    # central differences of the sampled sine (what the toolkit computes inside the image)
    u = -4.5 * np.sin(2 * np.pi * x / 20.0)
    du = np.gradient(u)
    expected = (1.0 + du) <= 0
    np.testing.assert_array_equal(folding[1], np.broadcast_to(expected, SHAPE).astype(np.uint8))
    assert widget.overlays.metrics[1]["folding_count"] == int(expected.sum()) * SHAPE[0] * SHAPE[1]
    assert widget.overlays.layers["jacobian"].data[1].min() < 0


def test_overlays_follow_a_streaming_generator(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, phantom = viewer.window.add_plugin_dock_widget(PLUGIN, "Phantom generator")
    phantom.two_d.value = True
    phantom.frames.value = 8
    _, inspect = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect deformation")
    started = []

    def first_frame(event):
        if isinstance(event, Frame) and not started:  # start inspecting while the generator is still running
            inspect.source.reset_choices()
            inspect.source.value = phantom.sequence.image_layer
            started.append(inspect.start())

    worker = phantom.start()
    worker.yielded.connect(first_frame)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: inspect.overlays is not None and inspect.overlays.count == 8 and inspect.worker is None
                    and inspect.overlays.idle, timeout=60_000)
    import torch

    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.spatial import jacobian_determinant

    truth = cardiac_phantom(0, frames=8, two_d=True)
    det = jacobian_determinant(torch.from_numpy(truth.fields)).numpy()
    np.testing.assert_allclose(inspect.overlays.layers["jacobian"].data, det, atol=1e-5)
    assert inspect.overlays.layers["folding"].data.max() == 0  # the phantom's motion never folds
    from napari_deformdiff.core.spatial import field_to_vectors

    vectors = inspect.overlays.layers["vectors"]
    for t in (7, 2):  # the vectors layer follows the slider to frames that arrived while streaming
        viewer.dims.set_current_step(0, t)
        np.testing.assert_array_equal(vectors.data[:, 0, 0], t)
        expected = field_to_vectors(-truth.fields[t], stride=vector_strides(truth.fields.shape[2:]))
        np.testing.assert_allclose(vectors.data[:, :, 1:], expected, atol=1e-5)


def test_default_stride_keeps_vectors_under_the_limit_with_vectors_on_every_slice():
    assert vector_strides((32, 128, 128)) == (1, 9, 9)  # 32 x 14 x 14 = 6272; stride 8: 32 x 16 x 16 = 8192
    def count(shape, strides):
        return np.prod([int(np.ceil(n / s)) for n, s in zip(shape, strides)])

    for shape in [(32, 128, 128), (64, 256, 256), (128, 128), (256, 200)]:
        strides = vector_strides(shape)
        assert count(shape, strides) <= MAX_VECTORS_PER_FRAME
        assert count(shape[-2:], strides[-2:]) <= 32 * 32  # arrows long enough to show their direction
        readable = int(np.ceil(max(shape[-2:]) / 32))
        if strides[-1] > readable:  # and the in-plane stride is the smallest that fits
            assert count(shape, vector_strides(shape, strides[-1] - 1)) > MAX_VECTORS_PER_FRAME
    assert vector_strides((128, 128)) == (4, 4)  # 32 x 32 arrows on a 2D slice


def test_screenshot_changes_with_the_time_step(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    image, labels = viewer.open_sample(PLUGIN, "cardiac_2d")
    widget = show(viewer, qtbot, image)
    viewer.reset_view()
    es = 7
    viewer.dims.set_current_step(0, 0)
    qtbot.wait(100)
    ed_shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    viewer.dims.set_current_step(0, es)
    qtbot.wait(100)
    es_shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    changed = (np.abs(ed_shot - es_shot).sum(-1) > 30).mean()
    assert changed > 0.01, changed  # the heart contracted and the overlays moved with it
    assert f"frame {es}/19" in widget.readout.value


def test_overlays_are_visible_on_the_cardiac_sample(make_napari_viewer, qtbot):
    """What a user sees: the overlays change the picture where the heart moves (README image)."""
    import os
    from pathlib import Path

    viewer = make_napari_viewer(show=True)
    image, labels = viewer.open_sample(PLUGIN, "cardiac")
    labels.visible = False
    viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect deformation")
    viewer.dims.set_current_step(1, 16)
    viewer.dims.set_current_step(0, 7)  # end-systole
    viewer.reset_view()
    qtbot.wait(100)
    plain = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    widget.source.value = image
    with qtbot.waitSignal(widget.start().finished, timeout=180_000):  # slow on a loaded machine
        pass
    qtbot.waitUntil(lambda: widget.overlays.idle, timeout=30_000)
    viewer.dims.set_current_step(0, 7)
    viewer.layers.selection.active = image
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    h, w = min(shot.shape[0], plain.shape[0]), min(shot.shape[1], plain.shape[1])

    def centre(a):  # the dock growing can shrink the canvas by a few pixels; the view stays centred
        top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        return a[top : top + h, left : left + w]

    changed = np.abs(centre(shot) - centre(plain)).sum(-1) > 40
    assert 0.05 < changed.mean() < 0.95, changed.mean()
    assert "frame 7/19: folding 0 voxels" in widget.readout.value
    if os.environ.get("DEFORMDIFF_UPDATE_SCREENSHOTS"):
        out = Path(__file__).parents[1] / "screenshots"
        out.mkdir(exist_ok=True)
        viewer.window._qt_window.resize(1400, 900)
        qtbot.wait(300)
        viewer.screenshot(str(out / "inspect.png"), canvas_only=False, flash=False)


def canvas(viewer, qtbot):
    qtbot.wait(150)
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)


def test_jacobian_is_clear_at_det_one_and_the_grid_is_faint(make_napari_viewer, qtbot):
    """A translation (det = 1 everywhere): the Jacobian layer leaves the image as it is; the grid
    brightens its lines by at most its opacity."""
    from napari_deformdiff._qt.overlay_layers import GRID_OPACITY

    viewer = make_napari_viewer(show=True)
    layer = field_layer(viewer, translation())
    widget = show(viewer, qtbot, layer, grid_step=8)
    layers = widget.overlays.layers
    jacobian, grid = layers["jacobian"], layers["grid"]
    assert jacobian.colormap.map(np.array([0.5]))[0, 3] == 0  # det 1 (the middle of 0..2): transparent
    np.testing.assert_allclose(jacobian.colormap.map(np.array([0.0, 1.0]))[:, 3], 1.0)  # 0 and 2: opaque
    assert tuple(jacobian.contrast_limits) == (0.0, 2.0)
    for other in viewer.layers:
        other.visible = other is layer
    viewer.dims.set_current_step(0, 2)
    qtbot.wait(500)  # the readout's new text may resize the dock, and the canvas with it
    viewer.reset_view()
    image_only = canvas(viewer, qtbot)
    jacobian.visible = True
    with_det = canvas(viewer, qtbot)
    jacobian.visible, grid.visible = False, True
    with_grid = canvas(viewer, qtbot)
    image_only, with_det, with_grid = common_centre(image_only, with_det, with_grid)  # a dock may resize
    assert np.abs(with_det - image_only).max() <= 2  # nothing drawn where det = 1
    lift = with_grid - image_only
    lines = lift.max(-1) > 10
    assert 0.05 < lines.mean() < 0.5, lines.mean()  # lines drawn, and thin: most of the image is left as is
    assert lift.max() <= 255 * GRID_OPACITY + 3  # faint: at most the grid's opacity of full brightness


def test_vectors_are_arrows_at_an_automatic_length(make_napari_viewer, qtbot):
    """Vectors along x (2 voxels): drawn as arrows (heads twice the shaft width) whose length is
    0.9 of the distance between neighbouring vectors, whatever the displacement."""
    from napari_deformdiff.core.inspect.vector_style import ARROW_WIDTH_SHARE, AUTO_LENGTH_SHARE

    viewer = make_napari_viewer(show=True)
    fields = np.zeros((2, 3, *SHAPE), np.float32)
    fields[1, 2] = 2.0
    layer = field_layer(viewer, fields)
    widget = show(viewer, qtbot, layer, stride=8)
    vectors = widget.overlays.layers["vectors"]
    assert vectors.vector_style == "arrow"
    assert vectors.length == pytest.approx(AUTO_LENGTH_SHARE * 8 / 2.0)
    assert vectors.edge_width == pytest.approx(ARROW_WIDTH_SHARE * 8)
    for other in viewer.layers:
        other.visible = other.name == vectors.name
    viewer.dims.set_current_step(0, 1)
    viewer.reset_view()
    shot = canvas(viewer, qtbot)
    drawn = shot.max(-1) > 40
    px_per_voxel = viewer.scene.camera.zoom * SPACING[2]
    runs = []  # horizontal runs of drawn pixels: one arrow each
    for row in drawn[np.flatnonzero(drawn.sum(1) > 0)]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        runs.extend(edges[1::2] - edges[0::2])
    longest = max(runs)
    assert longest == pytest.approx(AUTO_LENGTH_SHARE * 8 * px_per_voxel, rel=0.15)
    # rows crossed by each row of arrows: the heads (2 x shaft width) make the band that thick
    rows = np.flatnonzero(drawn.any(1))
    band = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    thickness = np.median([len(b) for b in band])
    assert thickness == pytest.approx(2 * ARROW_WIDTH_SHARE * 8 * viewer.scene.camera.zoom * SPACING[1], abs=2)
    assert thickness >= 4


def test_legend_and_plot_axes_make_sense(make_napari_viewer, qtbot):
    """The legend shows every bin name and colour; the plot is hidden before a run, then spans the
    frames as the time slider numbers them, with both y axes from 0."""
    from qtpy.QtGui import QTextDocument

    from napari_deformdiff.core.inspect.vector_style import MAGNITUDE_BIN_COLORS, MAGNITUDE_BIN_NAMES

    viewer = make_napari_viewer(show=True)
    layer = field_layer(viewer, translation(frames=4))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect deformation")
    doc = QTextDocument()
    doc.setHtml(widget.legend.native.text())
    text = doc.toPlainText().replace("\xa0", " ")  # each bin's text is kept on one line
    for name in MAGNITUDE_BIN_NAMES:
        assert name in text
    qtbot.wait(100)
    legend = widget.legend.native.grab().toImage()
    pixels = np.array([[legend.pixelColor(x, y).getRgb()[:3] for x in range(legend.width())]
                       for y in range(legend.height())], float)
    for colour in MAGNITUDE_BIN_COLORS:  # each swatch is drawn in its colour
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], float)
        assert (np.abs(pixels - rgb).max(-1) < 30).sum() >= 9, colour
    assert not widget.plot.canvas.isVisible()  # no empty axes before a run

    widget = show(viewer, qtbot, layer)
    assert widget.plot.canvas.isVisible()
    viewer.dims.set_current_step(0, 3)
    assert widget.plot.ax.get_xlim() == (-0.5, 3.5)
    assert widget.plot.ax.get_ylim()[0] == 0 and widget.plot.ax2.get_ylim()[0] == 0  # no -0.05 % folding
    assert widget.plot.ax.get_ylim()[1] > 0
    assert list(widget.plot.folding_line.get_xdata()) == [0, 1, 2, 3]
    assert list(widget.plot.marker.get_xdata()) == [3, 3]
    assert widget.readout.value.startswith("frame 3/3:")


def test_a_stream_with_overlays_leaves_other_layers_alone(make_napari_viewer, qtbot):
    """With 13 other layers present (20 in all once the stream has its 7), streaming and inspecting
    re-slice, re-draw or re-thumbnail none of them: their cost per frame does not grow with them."""
    from napari_deformdiff._sample_data import cardiac_2d

    viewer = make_napari_viewer()
    samples = cardiac_2d()
    others = [viewer.add_layer(Layer.create(*samples[k % 2][:2], samples[k % 2][2])) for k in range(13)]
    for k, layer in enumerate(others):
        layer.name = f"other {k}"
    viewer.dims.set_current_step(0, 0)  # where the stream's frames begin: the slider stays put
    events = []
    for layer in others:
        for emitter in (layer.events.set_data, layer.events.thumbnail, layer.events.data):
            emitter.connect(lambda e, name=layer.name: events.append(name))
    ranges = viewer.dims.range
    stream_phantom_with_overlays(viewer, qtbot, 6, timeout=120_000)
    assert len(viewer.layers) == 13 + 2 + 4  # + image, labels, vectors, grid, det J, folding
    assert events == [] and viewer.dims.range == ranges
