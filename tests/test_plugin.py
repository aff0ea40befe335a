"""napari hooks without a window: manifest, reader/writer placement in world space, device choice."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Labels, Layer

import napari_deformdiff
from napari_deformdiff._reader import get_reader
from napari_deformdiff._writer import write_image, write_labels
from napari_deformdiff.core import device
from napari_deformdiff.core.errors import InputError

from .geometry_cases import OBLIQUE, itk_oblique_image, write_acdc_by_hand

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_registered_and_shipped_in_the_package():
    from npe2 import PluginManager, PluginManifest

    packaged = Path(napari_deformdiff.__file__).parent / "napari.yaml"
    assert packaged.is_file()
    assert (ROOT / "napari.yaml").read_text() == packaged.read_text()
    manifest = PluginManifest.from_file(packaged)  # validates
    pm = PluginManager.instance()
    pm.discover()
    registered = pm.get_manifest("napari-deformdiff")
    c = registered.contributions
    assert {s.key for s in c.sample_data} == {"cardiac", "cardiac_2d", "lung"}
    assert {w.display_name for w in c.widgets} == {"Phantom generator", "Open volume", "Inspect deformation",
                                                   "Generate cycle (DDM)", "Export", "Augment (DRDM)",
                                                   "Forecast (Mo-Diff)"}
    assert c.configurations["compute"].properties["device"].default == "auto"
    assert manifest.name == registered.name


def test_napari_modules_do_not_import_torch():
    """napari imports the hooks to build menus: torch (2 s) must stay out of that path."""
    import subprocess
    import sys

    code = (
        "import sys, napari_deformdiff._reader, napari_deformdiff._writer, "
        "napari_deformdiff._sample_data, napari_deformdiff._qt.phantom_widget, "
        "napari_deformdiff._qt.inspect_widget, napari_deformdiff._qt.export_widget, "
        "napari_deformdiff._qt.open_widget, napari_deformdiff._qt.ddm_widget, "
        "napari_deformdiff._qt.drdm_widget, napari_deformdiff._qt.modiff_widget; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == "False"


def layer_from(path):
    reader = get_reader(str(path))
    assert reader is not None
    return [Layer.create(*t) for t in reader(str(path))]


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii.gz"])
def test_reader_places_oblique_voxels_where_itk_says(tmp_path, ext):
    img, arr = itk_oblique_image()
    sitk.WriteImage(img, str(tmp_path / f"sax{ext}"))
    (layer,) = layer_from(tmp_path / f"sax{ext}")
    assert layer.data.shape == arr.shape
    assert list(layer.scale) == pytest.approx([8.0, 1.6, 1.4])
    ref = sitk.ReadImage(str(tmp_path / f"sax{ext}"))
    for k, j, i in [(0, 0, 0), (5, 8, 10), (3, 1, 9)]:
        world = layer.data_to_world((k, j, i))
        np.testing.assert_allclose(world[::-1], ref.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-3)


def test_acdc_folder_gives_named_layers_that_overlay_exactly(tmp_path):
    write_acdc_by_hand(tmp_path / "patient003")
    layers = layer_from(tmp_path / "patient003")
    by_name = {layer.name: layer for layer in layers}
    assert set(by_name) == {
        "patient003 cine (4D)", "patient003 ES image (frame 04)", "patient003 ED image (frame 01)",
        "patient003 ES labels", "patient003 ED labels",
    }
    ed, ed_lab = by_name["patient003 ED image (frame 01)"], by_name["patient003 ED labels"]
    assert isinstance(ed_lab, Labels) and ed_lab.data.dtype == np.uint8
    assert ed.visible and ed_lab.visible and not by_name["patient003 cine (4D)"].visible
    cine = by_name["patient003 cine (4D)"]
    for idx in [(0, 0, 0), (2, 11, 9)]:
        np.testing.assert_allclose(ed.data_to_world(idx), ed_lab.data_to_world(idx))
        np.testing.assert_allclose(cine.data_to_world((3, *idx))[1:], ed.data_to_world(idx))


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "a.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "x.png")) is None


def test_reader_reports_corrupt_file_without_raising(tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 9 9 9\nencoding: raw\n\n" + b"\0" * 10)
    reader = get_reader(str(bad))
    assert reader(str(bad)) == [(None,)]
    assert len(messages) == 1 and "broken.nrrd" in messages[0]


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_writer_writes_back_the_geometry_read(tmp_path, ext):
    img, arr = itk_oblique_image()
    src = tmp_path / "src.nrrd"
    sitk.WriteImage(img, str(src))
    (layer,) = layer_from(src)
    out = tmp_path / f"out{ext}"
    assert write_image(str(out), layer.data, layer._get_state()) == [str(out)]
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), OBLIQUE.ravel(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), arr)


def test_writer_follows_a_layer_the_user_moved(tmp_path):
    img, _ = itk_oblique_image()
    sitk.WriteImage(img, str(tmp_path / "src.mha"))
    (layer,) = layer_from(tmp_path / "src.mha")
    before = layer.data_to_world((1, 2, 3))
    layer.translate = np.asarray(layer.translate) + [5.0, -2.0, 1.0]
    moved = layer.data_to_world((1, 2, 3))
    assert not np.allclose(before, moved)
    write_image(str(tmp_path / "moved.mha"), layer.data, layer._get_state())
    back = sitk.ReadImage(str(tmp_path / "moved.mha"))
    np.testing.assert_allclose(back.TransformIndexToPhysicalPoint((3, 2, 1)), moved[::-1], atol=1e-3)


def test_label_writer_keeps_integers_and_refuses_to_overwrite(tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    write_acdc_by_hand(tmp_path / "patient001")
    layers = {layer.name: layer for layer in layer_from(tmp_path / "patient001")}
    lab = layers["patient001 ED labels"]
    out = tmp_path / "ed_gt.nrrd"
    assert write_labels(str(out), lab.data, lab._get_state()) == [str(out)]
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), lab.data)
    stamp = out.stat().st_mtime_ns, out.read_bytes()
    assert write_labels(str(out), lab.data * 0, lab._get_state()) == []
    assert (out.stat().st_mtime_ns, out.read_bytes()) == stamp
    assert "already exists" in messages[-1]


def test_device_choice_precedence(monkeypatch):
    import torch

    monkeypatch.delenv(device.ENV_VAR, raising=False)
    mps = getattr(torch.backends, "mps", None)
    auto = "cuda" if torch.cuda.is_available() else "mps" if mps and mps.is_available() else "cpu"
    assert device.choose_device_name() == auto
    assert device.choose_device_name(setting="cpu") == "cpu"
    monkeypatch.setenv(device.ENV_VAR, "cpu")
    assert device.choose_device_name("auto", setting="cuda") == "cpu"  # env beats the setting
    monkeypatch.setenv(device.ENV_VAR, "cuda:7")
    if torch.cuda.device_count() < 8:
        with pytest.raises(InputError, match="DEFORMDIFF_DEVICE asks for 'cuda:7'"):
            device.choose_device_name()
    assert device.choose_device_name("cpu") == "cpu"  # an explicit request beats everything
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        device.choose_device_name("tpu")


def test_napari_setting_chooses_the_device(plugin_settings, npe2pm, monkeypatch):
    """Compute > Device in napari's Preferences reaches the device choice (below the env var).

    napari's plugin_settings fixture keeps the settings file in this test's tmp_path.
    """
    import torch
    from napari.settings import get_plugin_settings
    from npe2 import PluginManifest

    from napari_deformdiff._settings import gui_device_name

    npe2pm.register(PluginManifest.from_distribution("napari-deformdiff"))
    monkeypatch.delenv(device.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a GPU, to tell auto from cpu
    settings = get_plugin_settings("napari-deformdiff")
    assert settings.compute.device == "auto"
    assert gui_device_name() == "cuda"
    settings.compute.device = "cpu"  # what the Preferences dialog does
    assert "device: cpu" in settings.config_path.read_text()
    assert gui_device_name() == "cpu"
    monkeypatch.setenv(device.ENV_VAR, "cuda")
    assert gui_device_name() == "cuda"  # the environment variable overrides the setting
    assert gui_device_name("cpu") == "cpu"  # and the widget's own choice overrides both


def test_core_runs_without_napari_or_qt(tmp_path):
    """The core (IO, phantom, toolkit, device) imports and works with napari and Qt unimportable."""
    import subprocess
    import sys

    code = f"""
import sys
for name in ("napari", "qtpy", "PyQt6", "PyQt5", "PySide6", "magicgui", "vispy"):
    sys.modules[name] = None  # any import of these now fails
import numpy as np, torch
from napari_deformdiff.core import spatial, device
from napari_deformdiff.core.io import read_volume, write_volume
from napari_deformdiff.core.phantom import cardiac_phantom
from napari_deformdiff.core.phantom.dataset import case_volumes
case = cardiac_phantom(1, frames=3, two_d=True)
image, labels = case_volumes(case, "p")
write_volume(labels, r"{tmp_path / 'l_gt.nii.gz'}")
back = read_volume(r"{tmp_path / 'l_gt.nii.gz'}")
warped = spatial.warp(torch.from_numpy(case.labels[:1, None]), torch.from_numpy(case.fields[2:3]), mode="nearest")
print(back.is_labels, np.array_equal(back.data, case.labels), device.choose_device_name("cpu"), warped.dtype)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "cpu", "torch.uint8"]


def test_single_slice_cine_layer_is_2d_and_writes_back_in_3d(tmp_path):
    import nibabel as nib

    from .geometry_cases import rotation

    affine = np.eye(4)
    affine[:3, :3] = rotation(15, -25, 50) @ np.diag([1.3, 1.3, 7.0])
    affine[:3, 3] = [-40.0, 22.0, 61.0]
    data = np.random.default_rng(9).random((12, 10, 1, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "sax.nii.gz"))
    (layer,) = layer_from(tmp_path / "sax.nii.gz")
    assert layer.data.shape == (4, 10, 12) and list(layer.scale) == pytest.approx([1.0, 1.3, 1.3])
    write_image(str(tmp_path / "back.mha"), layer.data, layer._get_state())
    back, orig = sitk.ReadImage(str(tmp_path / "back.mha")), sitk.ReadImage(str(tmp_path / "sax.nii.gz"))
    assert back.GetSize() == (12, 10, 1, 4)
    for index in [(0, 0, 0), (11, 9, 0), (5, 3, 0)]:
        np.testing.assert_allclose(
            back.TransformIndexToPhysicalPoint((*index, 0))[:3], orig.TransformIndexToPhysicalPoint((*index, 0))[:3], atol=1e-3
        )


def test_public_layer_attributes_match_what_napari_gives_writers(tmp_path):
    from napari_deformdiff._layers import layer_attributes, layer_to_volume

    img, _ = itk_oblique_image(dim4=3)
    sitk.WriteImage(img, str(tmp_path / "cine.mha"))
    (layer,) = layer_from(tmp_path / "cine.mha")
    layer.translate = np.asarray(layer.translate) + [0.0, 2.0, -1.0, 3.0]  # a moved layer too
    ours = layer_to_volume(layer.data, layer_attributes(layer), is_labels=False)
    napari_s = layer_to_volume(layer.data, layer._get_state(), is_labels=False)
    assert ours.geometry.almost_equal(napari_s.geometry, rtol=1e-9, atol_mm=1e-9)
    assert ours.time_spacing == napari_s.time_spacing == pytest.approx(0.035)


def sequence_layers(tmp_path):
    """An oblique 3D+t image read through the plugin, carrying (3, 3, Z, Y, X) voxel fields (frames 0
    and 1 shift along the ITK x axis by 0.5 and 1.5 voxels, frame 2 is random), and its label map."""
    from napari_deformdiff._layers import attach_field, volume_to_layer_data
    from napari_deformdiff.core.geometry import Geometry
    from napari_deformdiff.core.io import Volume

    img, arr = itk_oblique_image(dim4=3)
    sitk.WriteImage(img, str(tmp_path / "src.nrrd"))
    (image,) = layer_from(tmp_path / "src.nrrd")
    fields = np.zeros((3, 3, *arr.shape[1:]), np.float32)
    fields[0, 2], fields[1, 2] = 0.5, 1.5
    fields[2] = np.random.default_rng(4).normal(0, 0.7, fields[2].shape)
    attach_field(image.metadata, fields)
    geometry = Geometry.from_dict(image.metadata["deformdiff"]["geometry"])
    labels = (arr > 100).astype(np.uint8)
    labels_layer = Layer.create(*volume_to_layer_data(Volume(labels, geometry, True, "seq labels")))
    return img, arr, fields, image, labels_layer


def test_saving_a_sequence_keeps_its_labels_and_fields(tmp_path, monkeypatch):
    """File > Save Selected Layers on image + labels: three files, geometry kept, fields as ITK
    displacement images (mm, x-y-z), nothing overwritten."""
    from napari.plugins.io import save_layers

    from napari_deformdiff.core.io.fields import from_itk_displacement

    messages = []
    monkeypatch.setattr("napari.utils.notifications.show_error", messages.append)
    img, arr, fields, image, labels = sequence_layers(tmp_path)
    out = tmp_path / "seq.nii.gz"
    written = save_layers(str(out), [image, labels], plugin="napari-deformdiff")
    names = ["seq.nii.gz", "seq_fields.nii.gz", "seq_labels.nii.gz"]
    assert sorted(Path(p).name for p in written) == sorted(names)
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), arr)
    back_labels = sitk.ReadImage(str(tmp_path / "seq_labels.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back_labels), (arr > 100).astype(np.uint8))
    field_image = sitk.ReadImage(str(tmp_path / "seq_fields.nii.gz"))
    assert field_image.GetDimension() == 4 and field_image.GetSize()[3] == 3
    assert field_image.GetNumberOfComponentsPerPixel() == 3
    direction = np.asarray(img.GetDirection()).reshape(4, 4)[:3, :3]
    for t, shift in ((0, 0.5), (1, 1.5)):  # physical mm along the image's x axis, by SimpleITK alone
        frame = sitk.Extract(field_image, [*field_image.GetSize()[:3], 0], [0, 0, 0, t])
        expected = shift * img.GetSpacing()[0] * direction[:, 0]
        vectors = sitk.GetArrayFromImage(frame).reshape(-1, 3)
        np.testing.assert_allclose(vectors, np.broadcast_to(expected, vectors.shape), atol=1e-5)
    for t in range(3):
        frame = sitk.Extract(field_image, [*field_image.GetSize()[:3], 0], [0, 0, 0, t])
        u, geometry = from_itk_displacement(frame)
        np.testing.assert_allclose(u, fields[t], atol=1e-5)
        for written_image in (frame, back, back_labels):
            np.testing.assert_allclose(written_image.GetSpacing()[:3], img.GetSpacing()[:3], rtol=1e-5)
            np.testing.assert_allclose(written_image.GetOrigin()[:3], img.GetOrigin()[:3], atol=1e-4)
            np.testing.assert_allclose(np.reshape(written_image.GetDirection(), (-1,))[:3], direction[0], atol=1e-5)
    assert messages == []

    # saved again: refused as a whole, the files untouched
    before = {n: (tmp_path / n).read_bytes() for n in names}
    assert save_layers(str(out), [image, labels], plugin="napari-deformdiff") == []
    assert "already exists" in messages[-1]
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    # one file of the set in the way: nothing written, not even the free ones
    (tmp_path / "other_fields.nii.gz").write_bytes(b"mine")
    assert save_layers(str(tmp_path / "other.nii.gz"), [image, labels], plugin="napari-deformdiff") == []
    assert not (tmp_path / "other.nii.gz").exists() and not (tmp_path / "other_labels.nii.gz").exists()
    assert (tmp_path / "other_fields.nii.gz").read_bytes() == b"mine"


def test_saving_an_image_alone_keeps_its_fields(tmp_path):
    from napari_deformdiff.core.io.fields import from_itk_displacement

    img, arr, fields, image, _ = sequence_layers(tmp_path)
    out = tmp_path / "alone.mha"
    assert write_image(str(out), image.data, image._get_state()) == [str(out), str(tmp_path / "alone_fields.mha")]
    field_image = sitk.ReadImage(str(tmp_path / "alone_fields.mha"))
    for t in range(3):
        u, _ = from_itk_displacement(sitk.Extract(field_image, [*field_image.GetSize()[:3], 0], [0, 0, 0, t]))
        np.testing.assert_allclose(u, fields[t], atol=1e-5)
