"""'Export' in a real viewer under Xvfb: cine (MP4, GIF, 4D NIfTI), ITK fields, folding report."""

import csv

import imageio.v3 as iio
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from napari.layers import Layer, Vectors

from napari_deformdiff._layers import attach_field, field_of, volume_to_layer_data
from napari_deformdiff.core import spatial
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.inspect.report import METRIC_COLUMNS, sequence_metrics
from napari_deformdiff.core.io import Volume, read_volume

from ..geometry_cases import rotation

pytestmark = pytest.mark.gui
PLUGIN = "napari-deformdiff"
FRAMES = 5


def generated_sequence(viewer):
    """A sequence made as a generator makes it: frame t = source warped by field t (oblique grid)."""
    shape = (10, 36, 40)
    geometry = Geometry.from_itk((1.4, 1.6, 4.0), (-30.0, 12.0, 55.0), rotation(20, -10, 35).ravel())
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    source = (np.exp(-((y / 0.5) ** 2 + (x / 0.45) ** 2 + (z / 0.9) ** 2) * 2) + 0.3 * np.cos(6 * x) ** 2)
    source = torch.from_numpy(source.astype(np.float32))[None, None]
    fields = np.zeros((FRAMES, 3, *shape), np.float32)
    for t in range(FRAMES):
        gamma = t / (FRAMES - 1)
        fields[t, 1] = 3.0 * gamma * np.sin(np.pi * (y + 1) / 2) * np.cos(np.pi * x / 2)
        fields[t, 2] = -2.0 * gamma * np.cos(np.pi * y / 2) * np.sin(np.pi * (x + 1) / 2)
    frames = spatial.warp(source.expand(FRAMES, 1, *shape), torch.from_numpy(fields), padding_mode="border")
    data, kwargs, kind = volume_to_layer_data(Volume(frames[:, 0].numpy(), geometry, False, "cycle", 0.04))
    attach_field(kwargs["metadata"], fields)
    return viewer.add_layer(Layer.create(data, kwargs, kind)), source[0, 0].numpy(), geometry


def export_widget(viewer, layer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    widget.source.reset_choices()
    widget.source.value = layer
    return widget


@pytest.mark.parametrize(("suffix", "loop", "count"), [(".mp4", True, 2 * FRAMES - 2), (".gif", False, FRAMES)])
def test_cine_from_the_current_view(make_napari_viewer, tmp_path, suffix, loop, count):
    viewer = make_napari_viewer(show=True)
    layer, _, _ = generated_sequence(viewer)
    viewer.dims.set_current_step(1, 5)
    before = viewer.dims.current_step
    widget = export_widget(viewer, layer)
    widget.cine_path.value = tmp_path / f"cycle{suffix}"
    widget.loop.value = loop
    widget.fps.value = 8
    assert widget.export_cine() == tmp_path / f"cycle{suffix}"
    frames = iio.imread(tmp_path / f"cycle{suffix}", index=None)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert frames.shape[0] == count
    h, w = shot.shape[:2]
    expected = (h + h % 2, w + w % 2) if suffix == ".mp4" else (h, w)
    assert frames.shape[1:3] == expected
    # the frames differ (the anatomy moves), and the view is back where the user left it
    assert np.abs(frames[0].astype(float) - frames[FRAMES - 1].astype(float)).mean() > 0.5
    assert viewer.dims.current_step == before


def test_cine_as_4d_nifti_in_loop_order_with_geometry(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer, _, geometry = generated_sequence(viewer)
    widget = export_widget(viewer, layer)
    widget.cine_path.value = tmp_path / "cycle.nii.gz"
    widget.export_cine()
    back = read_volume(tmp_path / "cycle.nii.gz")
    order = list(range(FRAMES)) + list(range(FRAMES - 2, 0, -1))
    np.testing.assert_array_equal(back.data, layer.data[order])
    assert back.geometry.almost_equal(geometry)


def psnr(a, b):
    return 10 * np.log10((b.max() - b.min()) ** 2 / np.mean((a - b) ** 2))


def test_exported_fields_reproduce_the_frames_in_simpleitk(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer, source, geometry = generated_sequence(viewer)
    widget = export_widget(viewer, layer)
    widget.fields_dir.value = tmp_path / "fields"
    written = widget.export_fields()
    assert [p.name for p in written] == [f"cycle_{t:03d}.nii.gz" for t in range(FRAMES)]
    moving = sitk.GetImageFromArray(source)
    spacing, origin, direction = geometry.to_itk()
    moving.SetSpacing(spacing)
    moving.SetOrigin(origin)
    moving.SetDirection(direction)
    for t in (2, FRAMES - 1):
        field = sitk.Cast(sitk.ReadImage(str(written[t])), sitk.sitkVectorFloat64)
        transform = sitk.DisplacementFieldTransform(field)
        resampled = sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0))
        inner = (slice(1, -1), slice(3, -3), slice(3, -3))
        value = psnr(resampled[inner], layer.data[t][inner])
        assert value >= 40, value


def test_folding_report_and_no_silent_overwrite(make_napari_viewer, tmp_path, monkeypatch):
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer = make_napari_viewer()
    layer, _, geometry = generated_sequence(viewer)
    widget = export_widget(viewer, layer)
    widget.report_path.value = tmp_path / "folding.csv"
    widget.export_report()
    with open(tmp_path / "folding.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(METRIC_COLUMNS) and len(rows) == FRAMES
    expected = sequence_metrics(layer.metadata["deformdiff"]["field"], geometry.spacing)
    for row, exp in zip(rows, expected, strict=True):
        assert int(row["folding_count"]) == exp["folding_count"]
        assert float(row["max_mm"]) == pytest.approx(exp["max_mm"])
    stamp = (tmp_path / "folding.csv").read_bytes()
    assert widget.export_report() is None  # the file exists: refused, reported, untouched
    assert "already exists" in errors[-1]
    assert (tmp_path / "folding.csv").read_bytes() == stamp


def test_a_field_file_opens_as_vectors_and_can_be_inspected(make_napari_viewer, qtbot, tmp_path):
    from napari_deformdiff.core.io.fields import write_displacement

    viewer = make_napari_viewer()
    geometry = Geometry((2.0, 1.5, 1.5), (0.0, 10.0, -4.0), np.eye(3))
    ddf = np.zeros((3, 8, 24, 24), np.float32)
    ddf[2] = 2.0  # 2 voxels along x = 3 mm
    write_displacement(tmp_path / "warp.nii.gz", ddf, geometry)
    (layer,) = viewer.open(str(tmp_path / "warp.nii.gz"), plugin=PLUGIN)
    assert isinstance(layer, Vectors)
    # arrows show the motion, minus the (pulling) field; the layer keeps the field itself
    np.testing.assert_allclose(layer.data[:, 1, 1:], [[0.0, 0.0, -2.0]] * len(layer.data), atol=1e-5)
    np.testing.assert_allclose(field_of(layer)[0][0], ddf, atol=1e-5)
    np.testing.assert_allclose(layer.features["magnitude_mm"], 3.0, atol=1e-5)
    _, inspect = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspect deformation")
    inspect.source.value = layer
    with qtbot.waitSignal(inspect.start().finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: inspect.overlays.idle, timeout=30_000)
    assert inspect.overlays.metrics[0]["max_mm"] == pytest.approx(3.0, abs=1e-4)
    np.testing.assert_allclose(inspect.overlays.layers["jacobian"].data, 1.0, atol=1e-5)
