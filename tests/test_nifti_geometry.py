"""Broken and unusual NIfTI headers: our reader decides geometry and voxels as SimpleITK does.

Every file is written here byte by byte from raw header fields (nibabel's header struct, no
image-level 'fixing'), then read by SimpleITK and by our reader. Where SimpleITK refuses a file
the test names the deliberate difference.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import read_volume
from napari_deformdiff.core.io.nifti import write_nifti

SHAPE = (7, 6, 5)  # (i, j, k)


def write_raw(path, data, v2=False, pix=None, sform=None, **fields):
    """A .nii(.gz) with exactly these header fields; data in (i, j, k[, t]) order."""
    hdr = nib.Nifti2Header() if v2 else nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["vox_offset"] = 544 if v2 else 352
    if pix is not None:
        pd = np.array(hdr["pixdim"], dtype=np.float64)
        pd[: len(pix)] = pix  # pix[0] is qfac
        hdr["pixdim"] = pd
    if sform is not None:
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = np.asarray(sform, dtype=np.float64)[:3]
    for key, value in fields.items():
        hdr[key] = value
    blob = hdr.binaryblock
    blob += b"\0" * (int(hdr["vox_offset"]) - len(blob)) + np.asarray(data).tobytes(order="F")
    path = str(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as fh:
        fh.write(blob)
    return path


def quaternion(rot):
    """(b, c, d) of a proper rotation matrix."""
    a = 0.5 * math.sqrt(max(1.0 + np.trace(rot), 0.0))
    return ((rot[2, 1] - rot[1, 2]) / (4 * a), (rot[0, 2] - rot[2, 0]) / (4 * a),
            (rot[1, 0] - rot[0, 1]) / (4 * a))


def rot_z(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def affine(rot, spacing, offset):
    m = np.eye(4)
    m[:3, :3] = np.asarray(rot) * np.asarray(spacing)[None, :]
    m[:3, 3] = offset
    return m


def itk_geometry(img) -> Geometry:
    n = min(img.GetDimension(), 3)
    d = np.asarray(img.GetDirection()).reshape(img.GetDimension(), -1)[:n, :n]
    return Geometry.from_itk(img.GetSpacing()[:n], img.GetOrigin()[:n], d.ravel())


def ours_3d(volume) -> Geometry:
    g = volume.geometry
    return g.embedding if g.ndim == 2 and g.embedding is not None else g


def assert_same_as_itk(path, *, n_warnings):
    img = sitk.ReadImage(path)
    v = read_volume(path)
    expected = itk_geometry(img)
    got = v.geometry if expected.ndim == 2 else ours_3d(v)
    assert got.almost_equal(expected), f"ours {got} {got.direction}\nITK {expected} {expected.direction}"
    arr = sitk.GetArrayFromImage(img)
    assert v.data.dtype == arr.dtype
    np.testing.assert_array_equal(v.data.reshape(arr.shape), arr)
    assert len(v.warnings) == n_warnings, v.warnings
    return v, img


def int_data(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(-500, 1500, shape).astype(np.int16)


ROT = rot_z(30) @ np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])


def test_acdc_pattern_opens_at_pixdim_spacing(tmp_path):
    """sform_code 2 with unit scales, qform_code 0, true spacing only in pixdim."""
    sform = affine(np.diag([-1.0, -1.0, 1.0]) @ ROT, (1, 1, 1), (120.5, -33.0, 47.25))
    path = write_raw(tmp_path / "patient001_frame01.nii.gz", int_data(), pix=(1, 1.5625, 1.5625, 10),
                     sform=sform, sform_code=2, qform_code=0, xyzt_units=2 | 8)
    v, img = assert_same_as_itk(path, n_warnings=1)
    assert v.geometry.spacing == pytest.approx((10, 1.5625, 1.5625))
    assert img.GetSpacing() == pytest.approx((1.5625, 1.5625, 10))
    assert "pixdim" in v.warnings[0] and "sform" in v.warnings[0]
    # nibabel's affine alone says 1 mm: that was the bug
    assert np.allclose(np.linalg.norm(nib.load(path).affine[:3, :3], axis=0), 1.0)


def test_both_codes_zero(tmp_path):
    path = write_raw(tmp_path / "a.nii", int_data(), pix=(1, 2, 3, 4), qform_code=0, sform_code=0)
    v, _ = assert_same_as_itk(path, n_warnings=0)
    assert v.geometry.origin == (0, 0, 0)


def test_qform_only_rotated(tmp_path):
    b, c, d = quaternion(ROT)
    path = write_raw(tmp_path / "q.nii", int_data(), pix=(1, 0.9, 1.1, 2.5), qform_code=1,
                     quatern_b=b, quatern_c=c, quatern_d=d, qoffset_x=-10, qoffset_y=20, qoffset_z=5)
    v, _ = assert_same_as_itk(path, n_warnings=0)
    assert not np.allclose(v.geometry.direction, np.eye(3))


def test_qfac_minus_one(tmp_path):
    b, c, d = quaternion(rot_z(20))
    path = write_raw(tmp_path / "qfac.nii.gz", int_data(), pix=(-1, 1.0, 1.2, 3.0), qform_code=1,
                     quatern_b=b, quatern_c=c, quatern_d=d, qoffset_x=4)
    v, _ = assert_same_as_itk(path, n_warnings=0)
    assert np.linalg.det(v.geometry.direction) == pytest.approx(-1.0)  # left-handed in array order


@pytest.mark.parametrize(
    "qcode, scode, winner",
    [(1, 1, "sform"), (1, 2, "qform"), (2, 3, "qform"), (1, 4, "qform")],
)
def test_qform_and_sform_disagree(tmp_path, qcode, scode, winner):
    b, c, d = quaternion(rot_z(10))
    sform = affine(ROT, (0.9, 1.1, 2.5), (3, 4, 5))
    path = write_raw(tmp_path / f"qs{qcode}{scode}.nii", int_data(), pix=(1, 0.9, 1.1, 2.5),
                     qform_code=qcode, sform_code=scode, sform=sform,
                     quatern_b=b, quatern_c=c, quatern_d=d, qoffset_x=-7)
    v, img = assert_same_as_itk(path, n_warnings=1)
    assert "disagree" in v.warnings[0] and winner in v.warnings[0]
    rot = ROT if winner == "sform" else rot_z(10)
    lps = np.diag([-1.0, -1.0, 1.0]) @ rot  # ITK (x, y, z) direction
    assert np.allclose(np.asarray(img.GetDirection()).reshape(3, 3), lps, atol=1e-5)


def test_qform_and_sform_agree_no_warning(tmp_path):
    b, c, d = quaternion(ROT)
    sform = affine(ROT, (0.9, 1.1, 2.5), (3, 4, 5))
    path = write_raw(tmp_path / "same.nii", int_data(), pix=(1, 0.9, 1.1, 2.5), qform_code=1,
                     sform_code=2, sform=sform, quatern_b=b, quatern_c=c, quatern_d=d,
                     qoffset_x=3, qoffset_y=4, qoffset_z=5)
    assert_same_as_itk(path, n_warnings=0)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["qform", "sform"])
def test_zero_or_invalid_pixdim_becomes_one(tmp_path, bad, which):
    kw = {"qform_code": 1} if which == "qform" else {
        "sform_code": 1, "sform": affine(np.eye(3), (1, 3, 4), (1, 2, 3))}
    path = write_raw(tmp_path / "z.nii", int_data(), pix=(1, bad, 3, 4), **kw)
    v, img = assert_same_as_itk(path, n_warnings=1)
    assert img.GetSpacing() == pytest.approx((1, 3, 4))
    assert "pixdim" in v.warnings[0]


@pytest.mark.parametrize("codes", [(1, 0), (0, 1), (0, 0)])
def test_negative_pixdim_flips_axis(tmp_path, codes):
    q, s = codes
    path = write_raw(tmp_path / "n.nii", int_data(), pix=(1, -2, 3, 4), qform_code=q, sform_code=s,
                     sform=affine(np.eye(3), (2, 3, 4), (1, 2, 3)))
    v, img = assert_same_as_itk(path, n_warnings=1)
    assert img.GetSpacing() == pytest.approx((2, 3, 4))
    assert "negative" in v.warnings[0]


def test_sheared_sform_with_qform_uses_qform(tmp_path):
    sform = np.array([[2, 0.5, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1.0]])
    path = write_raw(tmp_path / "sq.nii", int_data(), pix=(1, 2, 3, 4), sform_code=1, sform=sform,
                     qform_code=1, qoffset_x=9)
    v, img = assert_same_as_itk(path, n_warnings=1)
    assert img.GetOrigin() == pytest.approx((-9, 0, 0))
    assert "qform" in v.warnings[0] and "not orthonormal" in v.warnings[0]


def _itk_permissive(path):
    """SimpleITK's read with ITK_NIFTI_SFORM_PERMISSIVE set, in a fresh process."""
    code = (
        "import json,sys,SimpleITK as s; i=s.ReadImage(sys.argv[1]); "
        "print(json.dumps([i.GetSpacing(), i.GetOrigin(), i.GetDirection()]))"
    )
    env = dict(os.environ, ITK_NIFTI_SFORM_PERMISSIVE="1")
    out = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


SHEARS = [
    np.array([[2, 0.5, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3], [0, 0, 0, 1.0]]),
    affine(ROT @ np.array([[1, 0.2, -0.1], [0, 1, 0.3], [0, 0, 1]]), (2, 3, 4), (-5, 6, 7)),
]


@pytest.mark.parametrize("sform", SHEARS)
def test_sheared_sform_alone_opens_as_itk_permissive_mode(tmp_path, sform):
    """Deliberate difference: SimpleITK refuses; we open as ITK's own permissive mode does."""
    path = write_raw(tmp_path / "shear.nii", int_data(), pix=(1, 2, 3, 4), sform_code=1, sform=sform)
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(path)
    v = read_volume(path)
    spacing, origin, direction = _itk_permissive(path)
    assert v.geometry.almost_equal(Geometry.from_itk(spacing, origin, direction))
    assert len(v.warnings) == 1 and "ITK_NIFTI_SFORM_PERMISSIVE" in v.warnings[0]
    np.testing.assert_array_equal(v.data, int_data().T)


def test_singular_sform_alone_is_opened_with_identity(tmp_path):
    """Deliberate difference: ITK refuses even in permissive mode; we open with identity axes."""
    sform = np.array([[2, 0, 0, 1], [0, 3, 0, 2], [0, 0, 0, 3], [0, 0, 0, 1.0]])
    path = write_raw(tmp_path / "sing.nii", int_data(), pix=(1, 2, 3, 4), sform_code=1, sform=sform)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(path)
    v = read_volume(path)
    assert v.geometry.spacing == (4, 3, 2)
    assert v.geometry.origin == (3, -2, -1)  # RAS (1, 2, 3) in LPS, array order
    assert np.array_equal(v.geometry.direction, np.eye(3))
    assert len(v.warnings) == 1 and "singular" in v.warnings[0]


def test_units_micron_scale_spacing_and_origin(tmp_path):
    path = write_raw(tmp_path / "um.nii", int_data(), pix=(1, 200, 300, 400), sform_code=1,
                     sform=affine(np.eye(3), (200, 300, 400), (1000, 2000, 3000)), xyzt_units=3)
    v, img = assert_same_as_itk(path, n_warnings=1)
    assert img.GetSpacing() == pytest.approx((0.2, 0.3, 0.4))
    assert "micron" in v.warnings[0]


def test_2d_nifti(tmp_path):
    sform = affine(rot_z(90), (0.7, 0.7, 1), (5, 6, 0))
    path = write_raw(tmp_path / "slice.nii", int_data((9, 8)), pix=(1, 0.7, 0.7), sform_code=1,
                     sform=sform)
    v, img = assert_same_as_itk(path, n_warnings=0)
    assert img.GetDimension() == 2 and v.geometry.ndim == 2


def test_single_slice_3d_keeps_embedding(tmp_path):
    sform = affine(ROT, (0.7, 0.8, 6), (5, 6, 7))
    path = write_raw(tmp_path / "one.nii", int_data((9, 8, 1)), pix=(1, 0.7, 0.8, 6), sform_code=1,
                     sform=sform)
    v, _ = assert_same_as_itk(path, n_warnings=0)
    assert v.geometry.ndim == 2 and v.geometry.embedding is not None


@pytest.mark.parametrize("units, seconds", [(2 | 8, 0.5), (2 | 16, 0.5e-3), (2 | 24, 0.5e-6)])
def test_4d_time_units(tmp_path, units, seconds):
    path = write_raw(tmp_path / "t.nii.gz", int_data((7, 6, 5, 4)), pix=(1, 1.5, 1.5, 8, 0.5),
                     sform_code=1, sform=affine(np.eye(3), (1.5, 1.5, 8), (0, 0, 0)),
                     xyzt_units=units)
    v, img = assert_same_as_itk(path, n_warnings=0)
    assert v.has_time and v.time_spacing == pytest.approx(img.GetSpacing()[3])
    assert v.time_spacing == pytest.approx(seconds)


def test_4d_with_one_frame_is_3d_as_in_itk(tmp_path):
    path = write_raw(tmp_path / "t1.nii", int_data((7, 6, 5, 1)), pix=(1, 1, 1, 1, 1), qform_code=1)
    v, img = assert_same_as_itk(path, n_warnings=0)
    assert img.GetDimension() == 3 and not v.has_time


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
def test_scl_slope_inter_as_itk(tmp_path, dtype):
    data = (np.random.default_rng(1).random(SHAPE) * 200).astype(dtype)
    path = write_raw(tmp_path / "s.nii", data, pix=(1, 1, 1, 1), qform_code=1, scl_slope=0.37,
                     scl_inter=-12.5)
    v, _ = assert_same_as_itk(path, n_warnings=0)
    assert v.data.dtype == (np.float32 if np.dtype(dtype).kind in "iu" else dtype)


def test_nifti2_uses_the_same_rules(tmp_path):
    """Deliberate difference: SimpleITK 2.5 has no NIfTI-2 reader; we read it like NIfTI-1."""
    sform = affine(ROT, (1, 1, 1), (1, 2, 3))
    kw = {"pix": (1, 1.5625, 1.5625, 10), "sform": sform, "sform_code": 2}
    p2 = write_raw(tmp_path / "v2.nii", int_data(), v2=True, **kw)
    p1 = write_raw(tmp_path / "v1.nii", int_data(), **kw)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(p2)
    assert read_volume(p2).geometry.almost_equal(itk_geometry(sitk.ReadImage(p1)))


def test_acdc_pattern_write_back_keeps_itk_geometry(tmp_path):
    sform = affine(np.diag([-1.0, -1.0, 1.0]) @ ROT, (1, 1, 1), (120.5, -33.0, 47.25))
    src = write_raw(tmp_path / "orig.nii.gz", int_data(), pix=(1, 1.5625, 1.5625, 10), sform=sform,
                    sform_code=2, qform_code=0)
    out = write_nifti(read_volume(src), tmp_path / "again.nii.gz")
    a, b = sitk.ReadImage(src), sitk.ReadImage(str(out))
    assert itk_geometry(b).almost_equal(itk_geometry(a), rtol=1e-6, atol_mm=1e-4)
    hdr = nib.load(str(out)).header
    assert np.allclose(hdr["pixdim"][1:4], a.GetSpacing())
    assert np.allclose(hdr.get_sform()[:3, :3], hdr.get_qform()[:3, :3], atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), sitk.GetArrayFromImage(a))
