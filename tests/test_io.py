"""Readers and writers: geometry, dtype and values survive; bad input gets specific errors.

Files are written here with nibabel / SimpleITK directly (not with the code under test) where a
test checks reading, and read back with the other library where a test checks writing.
"""

import gzip
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_deformdiff.core.errors import InputError, OutputExistsError
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import (
    Volume,
    can_read,
    read_path,
    read_volume,
    write_volume,
)
from napari_deformdiff.core.io.acdc import read_acdc_patient

from .geometry_cases import OBLIQUE, itk_oblique_image, rotation, write_acdc_by_hand

FORMATS = [".nii.gz", ".nrrd", ".mha"]


def assert_same_itk_geometry(a, b, *, tol=1e-4):
    assert np.allclose(a.GetSpacing()[:3], b.GetSpacing()[:3], rtol=tol)
    assert np.allclose(a.GetOrigin()[:3], b.GetOrigin()[:3], atol=1e-3)
    da = np.asarray(a.GetDirection()).reshape(a.GetDimension(), -1)[:3, :3]
    db = np.asarray(b.GetDirection()).reshape(b.GetDimension(), -1)[:3, :3]
    assert np.allclose(da, db, atol=tol)


# --- reading files written by the libraries themselves ------------------------------------


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii.gz"])
def test_read_oblique_3d_matches_itk_physical_points(tmp_path, ext):
    img, arr = itk_oblique_image()
    path = tmp_path / f"scan{ext}"
    sitk.WriteImage(img, str(path))
    v = read_volume(path)
    assert v.data.shape == arr.shape and not v.is_labels
    np.testing.assert_allclose(v.data, arr, rtol=1e-6)
    m = v.geometry.index_to_world()
    ref = sitk.ReadImage(str(path))
    for k, j, i in [(0, 0, 0), (5, 8, 10), (2, 3, 7)]:
        ours = m @ np.array([k, j, i, 1.0])
        theirs = ref.TransformIndexToPhysicalPoint((i, j, k))  # ITK: (x, y, z), LPS
        np.testing.assert_allclose(ours[:3][::-1], theirs, atol=1e-3)


def test_nibabel_nifti_geometry_agrees_with_simpleitk(tmp_path):
    """Same file, two independent readers: our nibabel path must match ITK's LPS geometry."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(-8, 20, 65) @ np.diag([1.3, 1.7, 6.0])
    affine[:3, 3] = [30.0, -14.5, 52.0]
    data = np.arange(7 * 8 * 5, dtype=np.int16).reshape(7, 8, 5)  # (i, j, k)
    path = tmp_path / "nib.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    v = read_volume(path)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(v.data, sitk.GetArrayFromImage(ref))
    spacing, origin, direction = v.geometry.to_itk()
    np.testing.assert_allclose(spacing, ref.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(direction, ref.GetDirection(), atol=1e-5)


def test_read_4d_nifti_is_t_z_y_x_with_time_spacing(tmp_path):
    data = np.random.default_rng(1).random((10, 12, 4, 6)).astype(np.float32)  # (x, y, z, t)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.15, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((1.5, 1.5, 3.15, 40.0))
    path = tmp_path / "cine.nii.gz"
    nib.save(img, str(path))
    v = read_volume(path)
    assert v.data.shape == (6, 4, 12, 10) and v.has_time
    np.testing.assert_array_equal(v.data[3, 2, 5, 7], data[7, 5, 2, 3])
    assert v.time_spacing == pytest.approx(0.040)
    assert v.geometry.spacing == pytest.approx((3.15, 1.5, 1.5))


def test_read_4d_itk_and_2d_image(tmp_path):
    img4, arr4 = itk_oblique_image(dim4=5)
    sitk.WriteImage(img4, str(tmp_path / "cine.mha"))
    v = read_volume(tmp_path / "cine.mha")
    assert v.data.shape == arr4.shape and v.has_time and v.time_spacing == pytest.approx(0.035)
    np.testing.assert_allclose(np.asarray(v.geometry.to_itk()[2]), OBLIQUE.ravel(), atol=1e-6)

    arr2 = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    img2 = sitk.GetImageFromArray(arr2)
    img2.SetSpacing((0.7, 0.9))
    img2.SetOrigin((5.0, -3.0))
    sitk.WriteImage(img2, str(tmp_path / "slice.nrrd"))
    v2 = read_volume(tmp_path / "slice.nrrd")
    assert v2.geometry.ndim == 2 and v2.data.shape == (20, 30) and not v2.has_time
    assert v2.geometry.spacing == pytest.approx((0.9, 0.7))
    assert v2.geometry.origin == pytest.approx((-3.0, 5.0))


def test_single_slice_cine_opens_as_2d_plus_t_and_writes_back_in_place(tmp_path):
    data = np.random.default_rng(2).random((16, 14, 1, 5)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = rotation(10, 30, -20) @ np.diag([1.25, 1.25, 8.0])
    affine[:3, 3] = [12.0, 40.0, -7.5]
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "sax.nii.gz"))
    v = read_volume(tmp_path / "sax.nii.gz")
    assert v.data.shape == (5, 14, 16) and v.geometry.ndim == 2 and v.has_time
    for ext in FORMATS:
        out = tmp_path / f"back{ext}"
        write_volume(v, out)
        ref = sitk.ReadImage(str(out))
        assert ref.GetSize()[:3] == (16, 14, 1)
        orig = sitk.ReadImage(str(tmp_path / "sax.nii.gz"))
        assert_same_itk_geometry(ref, orig)
        again = read_volume(out)
        assert again.data.shape == v.data.shape
        np.testing.assert_array_equal(again.data, v.data)


# --- writing, read back by the other library ----------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("with_time", [False, True])
def test_write_keeps_geometry_values_and_dtype(tmp_path, ext, with_time):
    rng = np.random.default_rng(3)
    geometry = Geometry.from_itk((1.4, 1.6, 8.0), (-120.5, 33.25, 71.0), OBLIQUE.ravel())
    shape = ((4,) if with_time else ()) + (6, 9, 11)
    image = Volume(rng.normal(size=shape).astype(np.float32), geometry, False, "img", 0.03 if with_time else None)
    labels = Volume(rng.integers(0, 4, size=shape).astype(np.int16), geometry, True, "lab", image.time_spacing)
    for vol, stem in ((image, "img"), (labels, "lab_gt")):
        path = tmp_path / f"{stem}{ext}"
        write_volume(vol, path)
        ref = sitk.ReadImage(str(path))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), vol.data)
        spacing, origin, direction = geometry.to_itk()
        np.testing.assert_allclose(ref.GetSpacing()[:3], spacing, rtol=1e-5)
        np.testing.assert_allclose(ref.GetOrigin()[:3], origin, atol=1e-4)
        d = np.asarray(ref.GetDirection()).reshape(ref.GetDimension(), -1)[:3, :3]
        np.testing.assert_allclose(d.ravel(), direction, atol=1e-5)
        back = read_volume(path)
        assert back.data.dtype == vol.data.dtype
        assert back.is_labels == vol.is_labels
        assert back.geometry.almost_equal(geometry)
        if with_time:
            assert back.time_spacing == pytest.approx(0.03, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.uint16])
def test_label_dtypes_survive(tmp_path, dtype):
    lab = np.zeros((3, 5, 7), dtype)
    lab[1, 2:4, 3:6] = 3
    lab[2, 0, 0] = 1
    v = Volume(lab, Geometry.identity(3, (3.15, 1.5, 1.5)), True)
    for ext in FORMATS:
        p = tmp_path / f"seg_{np.dtype(dtype).name}{ext}"
        write_volume(v, p)
        back = read_volume(p)
        assert back.is_labels and back.data.dtype == dtype
        np.testing.assert_array_equal(back.data, lab)


def test_label_detection_by_name_and_flag(tmp_path):
    ints = np.zeros((4, 4, 4), np.uint8)
    ints[1:3, 1:3, 1:3] = 2
    for name in ("case_gt.nii.gz", "heart_seg.nrrd", "LabelMap.mha", "roi_mask.nii.gz"):
        sitk.WriteImage(sitk.GetImageFromArray(ints), str(tmp_path / name))
        assert read_volume(tmp_path / name).is_labels, name
    sitk.WriteImage(sitk.GetImageFromArray(ints), str(tmp_path / "anatomy.nii.gz"))
    assert not read_volume(tmp_path / "anatomy.nii.gz").is_labels
    assert read_volume(tmp_path / "anatomy.nii.gz", as_labels=True).is_labels
    # float label map with integer values keeps its values as integers
    sitk.WriteImage(sitk.GetImageFromArray(ints.astype(np.float32)), str(tmp_path / "f_gt.nii.gz"))
    v = read_volume(tmp_path / "f_gt.nii.gz")
    assert v.is_labels and v.data.dtype.kind in "iu" and set(np.unique(v.data)) == {0, 2}
    # a *_mask file with fractional values stays an image; forcing labels is refused
    frac = np.full((4, 4, 4), 0.5, np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(frac), str(tmp_path / "soft_mask.nii.gz"))
    assert not read_volume(tmp_path / "soft_mask.nii.gz").is_labels
    with pytest.raises(InputError, match="not integers"):
        read_volume(tmp_path / "soft_mask.nii.gz", as_labels=True)


def test_nearest_value_of_writer_round_trip_2d(tmp_path):
    v = Volume(np.arange(12, dtype=np.float32).reshape(3, 4), Geometry((0.5, 0.25), (1.0, 2.0), np.eye(2)))
    for ext in FORMATS:
        p = tmp_path / f"two{ext}"
        write_volume(v, p)
        back = read_volume(p)
        assert back.geometry.ndim == 2 and back.geometry.almost_equal(v.geometry)
        np.testing.assert_array_equal(back.data, v.data)


# --- no silent overwrite, atomic writes -----------------------------------------------------


def test_never_overwrites_unless_asked(tmp_path):
    v = Volume(np.ones((2, 3, 4), np.float32), Geometry.identity(3))
    p = tmp_path / "out.nrrd"
    write_volume(v, p)
    before = p.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        write_volume(Volume(np.zeros((2, 3, 4), np.float32), Geometry.identity(3)), p)
    assert p.read_bytes() == before
    write_volume(Volume(np.zeros((2, 3, 4), np.float32), Geometry.identity(3)), p, overwrite=True)
    assert read_volume(p).data.max() == 0


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    v = Volume(np.ones((2, 3, 4), np.float32), Geometry.identity(3))

    def disk_full(*args, **kwargs):
        with open(args[1], "wb") as fh:  # half a file, then the disk is full
            fh.write(b"NRRD0004\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_volume(v, tmp_path / "full.nrrd")
    assert list(tmp_path.iterdir()) == []


# --- bad input: specific messages ---------------------------------------------------------


def test_unknown_extension_is_declined_and_explained(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    assert not can_read(p)
    with pytest.raises(InputError, match="unknown file type"):
        read_volume(p)


def test_truncated_and_corrupt_files(tmp_path):
    v = Volume(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32), Geometry.identity(3))
    for ext in FORMATS:
        good = tmp_path / f"good{ext}"
        write_volume(v, good)
        raw = good.read_bytes()
        bad = tmp_path / f"truncated{ext}"
        bad.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(InputError, match="truncated|corrupt"):
            read_volume(bad)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(InputError, match=r"garbage\.nii\.gz"):
        read_volume(garbage)
    (tmp_path / "random.mha").write_bytes(os.urandom(500))
    with pytest.raises(InputError, match="random.mha"):
        read_volume(tmp_path / "random.mha")


def test_non_numeric_empty_single_voxel_and_nan(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), str(tmp_path / "c.nii.gz"))
    with pytest.raises(InputError, match="complex"):
        read_volume(tmp_path / "c.nii.gz")
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="components"):
        read_volume(tmp_path / "rgb.mha")
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), str(tmp_path / "empty.nii"))
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "empty.nii")
    nib.save(nib.Nifti1Image(np.full((1, 1, 1), 7.0, np.float32), np.eye(4)), str(tmp_path / "one.nii"))
    one = read_volume(tmp_path / "one.nii")
    assert any("single voxel" in w for w in one.warnings)
    nan = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    nan[0, 0, :3] = np.nan
    nan[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    v = read_volume(tmp_path / "nan.nii.gz")
    assert np.isnan(v.data).sum() == 3 and np.isinf(v.data).sum() == 1  # kept as they are
    assert any("3 NaN and 1 infinite" in w for w in v.warnings)


def test_missing_file_and_folder_without_series(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    folder = tmp_path / "dicomless"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"\0" * 300)
    assert can_read(folder)
    with pytest.raises(InputError, match="no readable DICOM series"):
        read_path(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not can_read(empty)


# --- DICOM ----------------------------------------------------------------------------------


def write_dicom_series(folder, arr, spacing, origin, direction):
    """A CT-like series, one file per slice, tags set as the SimpleITK series-writing example does."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = np.asarray(direction).reshape(3, 3)
    series_uid = "1.2.826.0.1.3680043.2.1125.1" + "".join(str(x) for x in range(6))
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k])
        pos = np.asarray(origin) + d[:, 2] * spacing[2] * k
        tags = {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".9",
            "0008|103e": "SAX cine",
            "0020|0032": "\\".join(f"{x:.6f}" for x in pos),
            "0020|0037": "\\".join(f"{x:.6f}" for x in list(d[:, 0]) + list(d[:, 1])),
            "0020|0013": str(k + 1),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{spacing[2]:.6f}",
            "0008|0018": series_uid + f".{k + 100}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        sl.SetSpacing(spacing[:2])
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path):
    arr = (np.random.default_rng(4).random((5, 12, 10)) * 1000).astype(np.int16)
    direction = rotation(0, 0, 30).ravel()
    write_dicom_series(tmp_path / "series", arr, (0.8, 0.9, 6.0), (-20.0, 15.0, 40.0), direction)
    assert can_read(tmp_path / "series")
    (v,) = read_path(tmp_path / "series")
    np.testing.assert_array_equal(v.data, arr)
    spacing, origin, d = v.geometry.to_itk()
    np.testing.assert_allclose(spacing, (0.8, 0.9, 6.0), rtol=1e-4)
    np.testing.assert_allclose(origin, (-20.0, 15.0, 40.0), atol=1e-3)
    np.testing.assert_allclose(d, direction, atol=1e-5)
    assert "SAX cine" in v.name


def test_dicom_multiframe_file(tmp_path):
    arr = (np.random.default_rng(5).random((4, 8, 9)) * 500).astype(np.uint16)  # GDCM writes no int16 multi-frame
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.6, 2.0))
    sitk.WriteImage(img, str(tmp_path / "multi.dcm"))
    v = read_volume(tmp_path / "multi.dcm")
    assert v.data.shape == (4, 8, 9)
    np.testing.assert_array_equal(v.data, arr)
    assert v.geometry.spacing[1:] == pytest.approx((0.6, 0.5))


# --- ACDC folders -----------------------------------------------------------------------------


def test_acdc_patient_folder(tmp_path):
    cine, gts = write_acdc_by_hand(tmp_path / "patient042")
    assert can_read(tmp_path / "patient042")
    p = read_acdc_patient(tmp_path / "patient042")
    assert p.patient == "patient042"
    assert "ED" in p.ed.name and "frame 01" in p.ed.name and "ES" in p.es.name and "frame 04" in p.es.name
    np.testing.assert_array_equal(p.ed.data, cine[..., 0].T)
    np.testing.assert_array_equal(p.es.data, cine[..., 3].T)
    assert p.ed_labels.is_labels and p.ed_labels.data.dtype == np.uint8
    np.testing.assert_array_equal(p.es_labels.data, gts[4].T)
    assert p.cine.data.shape == (6, 3, 12, 10) and p.cine.has_time
    # every volume of a patient shares one geometry, so labels overlay the images exactly
    assert all(v.geometry.almost_equal(p.ed.geometry) for v in p.volumes())
    names = [v.name for v in read_path(tmp_path / "patient042")]
    assert len(names) == 5 and len(set(names)) == 5


def test_acdc_folder_with_bad_info(tmp_path):
    write_acdc_by_hand(tmp_path / "patient007")
    (tmp_path / "patient007" / "Info.cfg").write_text("Group: NOR\n")
    with pytest.raises(InputError, match="'ED:'"):
        read_path(tmp_path / "patient007")


@pytest.mark.skipif(sys.platform == "win32", reason="os.link semantics")
def test_write_into_missing_folder_is_explained(tmp_path):
    v = Volume(np.ones((2, 2, 2), np.float32), Geometry.identity(3))
    with pytest.raises(InputError, match="does not exist"):
        write_volume(v, tmp_path / "nope" / "x.nii.gz")
