"""Displacement field files: ITK convention checked against SimpleITK's own resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_deformdiff.core.errors import InputError, OutputExistsError
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io.fields import (
    field_to_mm,
    from_itk_displacement,
    is_displacement_file,
    mm_to_field,
    read_displacement,
    read_displacement_series,
    to_itk_displacement,
    write_displacement,
    write_displacement_series,
)
from napari_deformdiff.core.spatial import identity_grid, warp

SHAPE3 = (24, 40, 36)
FORMATS = [".nii.gz", ".mha", ".nrrd"]


def _rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique3() -> Geometry:
    return Geometry((3.0, 1.4, 1.6), (-12.5, 30.25, 7.0), _rotation((0.3, -0.5, 0.8)))


def _oblique2() -> Geometry:
    t = 0.4
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return Geometry((0.7, 1.3), (5.0, -3.0), rot)


def _smooth(shape, seed: int, waves: int = 3) -> np.ndarray:
    """Sum of plane waves of at most ~1.5 cycles per image, float64."""
    rng = np.random.default_rng(seed)
    x = identity_grid(shape, dtype=torch.float64).numpy()
    out = np.zeros(shape)
    for _ in range(waves):
        f = rng.uniform(-1.5, 1.5, len(shape))
        phase = rng.uniform(0, 2 * math.pi)
        out += np.sin(sum(2 * math.pi * f[k] * x[k] / shape[k] for k in range(len(shape))) + phase)
    return out


def _field(shape, amplitude: float, seed: int) -> np.ndarray:
    u = np.stack([_smooth(shape, seed + k) for k in range(len(shape))])
    return (amplitude * u / np.abs(u).max()).astype(np.float32)


def _to_sitk(image: np.ndarray, geometry: Geometry):
    img = sitk.GetImageFromArray(image)
    spacing, origin, direction = geometry.to_itk()
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    peak = float(b.max() - b.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


@pytest.mark.parametrize("suffix", FORMATS)
def test_itk_resample_matches_our_warp(tmp_path, suffix):
    """The key check: SimpleITK resampling with our written field reproduces our warp."""
    geometry = _oblique3()
    source = _smooth(SHAPE3, 7, waves=4).astype(np.float32) * 100 + 50
    u = _field(SHAPE3, 3.0, 11)
    ours = warp(
        torch.from_numpy(source)[None, None], torch.from_numpy(u)[None], mode="linear",
        padding_mode="zeros",
    )[0, 0].numpy()

    path = write_displacement(tmp_path / f"u{suffix}", u, geometry)
    disp = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    assert disp.GetNumberOfComponentsPerPixel() == 3
    transform = sitk.DisplacementFieldTransform(disp)
    src = _to_sitk(source, geometry)
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(src, src, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    m = 4
    interior = (slice(m, -m),) * 3
    psnr = _psnr(theirs[interior], ours[interior])
    print(f"{suffix}: PSNR {psnr:.1f} dB")
    assert psnr >= 40.0
    # the field moves things a lot: identity resampling would be far off
    assert _psnr(source[interior], ours[interior]) < 30.0


def test_translation_components_exact():
    geometry = _oblique3()
    shape = (4, 5, 6)
    shift = np.array([1.5, -2.0, 0.75])
    u = np.broadcast_to(shift.reshape(3, 1, 1, 1), (3, *shape)).astype(np.float32)
    image = to_itk_displacement(u, geometry)
    assert image.GetPixelID() == sitk.sitkVectorFloat64
    assert image.GetSize() == shape[::-1]
    assert np.allclose(image.GetSpacing(), geometry.spacing[::-1])
    assert np.allclose(image.GetOrigin(), geometry.origin[::-1])
    expected = (geometry.direction * np.asarray(geometry.spacing)) @ shift  # array-order world
    vectors = sitk.GetArrayFromImage(image)  # (*S, 3) in ITK (x, y, z) order
    np.testing.assert_allclose(vectors, np.broadcast_to(expected[::-1], vectors.shape), atol=1e-12)
    # ITK itself agrees on where the voxel (0, 0, 0) goes
    transform = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
    p0 = np.asarray(geometry.origin[::-1])
    moved = np.asarray(transform.TransformPoint(tuple(p0)))
    world_index = geometry.index_to_world() @ np.append(shift, 1.0)
    np.testing.assert_allclose(moved, world_index[:3][::-1], atol=1e-9)


def test_mm_conversion_inverse():
    geometry = _oblique3()
    u = _field((5, 6, 7), 2.0, 3)
    d = field_to_mm(u, geometry)
    assert d.dtype == np.float32
    np.testing.assert_allclose(mm_to_field(d, geometry), u, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(d, axis=0),
        np.linalg.norm(u * np.reshape(geometry.spacing, (3, 1, 1, 1)), axis=0),
        rtol=1e-5,
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("n", [2, 3])
def test_round_trip(tmp_path, n, suffix):
    geometry = _oblique3() if n == 3 else _oblique2()
    shape = (6, 7, 8)[:n] if n == 3 else (9, 11)
    u = _field(shape, 2.5, 5 + n)
    path = write_displacement(tmp_path / f"f{suffix}", u, geometry)
    assert path.exists() and is_displacement_file(path)
    v, g = read_displacement(path)
    assert v.dtype == np.float32 and v.shape == u.shape
    np.testing.assert_allclose(v, u, atol=1e-5)
    assert g.almost_equal(geometry, rtol=1e-6, atol_mm=1e-6)
    v2, g2 = from_itk_displacement(to_itk_displacement(u, geometry))
    np.testing.assert_allclose(v2, u, atol=1e-5)
    assert g2.almost_equal(geometry, rtol=1e-6, atol_mm=1e-6)


def test_nii_gz_beside_nii_reads_the_right_file(tmp_path):
    geometry = Geometry.identity(2)
    a = np.zeros((2, 4, 5), np.float32)
    b = np.ones((2, 4, 5), np.float32)
    write_displacement(tmp_path / "f.nii.gz", a, geometry)
    write_displacement(tmp_path / "f.nii", b, geometry)
    assert np.all(read_displacement(tmp_path / "f.nii.gz")[0] == 0)
    assert np.all(read_displacement(tmp_path / "f.nii")[0] == 1)


def test_series_round_trip_and_overwrite(tmp_path):
    geometry = _oblique2()
    ddfs = np.stack([_field((10, 12), 1.0 + t, 20 + t) for t in range(3)])
    folder = tmp_path / "out" / "fields"
    paths = write_displacement_series(folder, ddfs, geometry, stem="phase", suffix=".mha")
    assert [p.name for p in paths] == ["phase_000.mha", "phase_001.mha", "phase_002.mha"]
    back, g = read_displacement_series(paths)
    assert back.shape == ddfs.shape
    np.testing.assert_allclose(back, ddfs, atol=1e-5)
    assert g.almost_equal(geometry)

    # one clash: nothing is written, not even the frames that did not exist
    paths[1].unlink()
    before = paths[0].stat().st_mtime_ns
    with pytest.raises(OutputExistsError):
        write_displacement_series(folder, ddfs * 2, geometry, stem="phase", suffix=".mha")
    assert not paths[1].exists()
    assert paths[0].stat().st_mtime_ns == before
    write_displacement_series(folder, ddfs * 2, geometry, stem="phase", suffix=".mha", overwrite=True)
    np.testing.assert_allclose(read_displacement_series(paths)[0], ddfs * 2, atol=1e-5)


def test_series_mismatch(tmp_path):
    u = _field((8, 9), 1.0, 1)
    a = write_displacement(tmp_path / "a.mha", u, Geometry.identity(2))
    b = write_displacement(tmp_path / "b.mha", u, Geometry.identity(2, spacing=(2.0, 1.0)))
    c = write_displacement(tmp_path / "c.mha", _field((8, 10), 1.0, 1), Geometry.identity(2))
    with pytest.raises(InputError, match="b.mha.*geometry"):
        read_displacement_series([a, b])
    with pytest.raises(InputError, match="c.mha.*grid"):
        read_displacement_series([a, c])
    with pytest.raises(InputError):
        read_displacement_series([])


def test_no_overwrite(tmp_path):
    geometry = Geometry.identity(3)
    u = _field((4, 5, 6), 1.0, 2)
    path = write_displacement(tmp_path / "f.nrrd", u, geometry)
    with pytest.raises(OutputExistsError):
        write_displacement(path, u * 0, geometry)
    np.testing.assert_allclose(read_displacement(path)[0], u, atol=1e-5)
    write_displacement(path, u * 0, geometry, overwrite=True)
    assert np.all(read_displacement(path)[0] == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nrrd"]  # no temporaries left


def test_bad_inputs(tmp_path):
    scalar = tmp_path / "scalar.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(scalar))
    with pytest.raises(InputError, match="scalar.nii.gz.*component"):
        read_displacement(scalar)
    rgb = tmp_path / "rgb.mha"  # 2D image with 3 components
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 3), np.float32), isVector=True), str(rgb))
    with pytest.raises(InputError, match="rgb.mha"):
        read_displacement(rgb)
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: float\ngarbage")
    with pytest.raises(InputError, match="corrupt.nrrd"):
        read_displacement(corrupt)
    with pytest.raises(InputError, match="missing.mha"):
        read_displacement(tmp_path / "missing.mha")
    with pytest.raises(InputError, match="suffix|written as"):
        write_displacement(tmp_path / "f.png", np.zeros((2, 4, 4), np.float32), Geometry.identity(2))
    with pytest.raises(InputError):
        write_displacement(tmp_path / "f.mha", np.zeros((3, 4, 4), np.float32), Geometry.identity(2))

    vtk = tmp_path / "field.vtk"  # a vector image, but not a format of ours
    sitk.WriteImage(to_itk_displacement(np.zeros((2, 4, 5), np.float32), Geometry.identity(2)), str(vtk))
    for p in (scalar, rgb, corrupt, tmp_path / "missing.mha", vtk, tmp_path):
        assert not is_displacement_file(p)


def test_itk_resample_of_acdc_header_original_matches_our_warp(tmp_path):
    """Issue 13: an ACDC-style header (sform_code 2 with unit scales, qform_code 0, the true
    spacing only in pixdim) read by us, warped, field exported: SimpleITK resampling the ORIGINAL
    file through that field reproduces our frame."""
    import nibabel as nib

    from napari_deformdiff.core.io import read_volume

    from .test_nifti_geometry import write_raw

    source_ijk = (_smooth(SHAPE3, 5, waves=4) * 300 + 600).round().astype(np.int16).T
    sform = np.eye(4)
    sform[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ _rotation((0.2, -0.1, 0.5))
    sform[:3, 3] = (101.5, 87.25, -42.0)
    original = write_raw(tmp_path / "patient001_frame01.nii.gz", source_ijk,
                         pix=(1, 1.5625, 1.5625, 10), sform=sform, sform_code=2, qform_code=0,
                         xyzt_units=2 | 8)
    volume = read_volume(original)
    assert volume.geometry.spacing == pytest.approx((10, 1.5625, 1.5625))
    assert len(volume.warnings) == 1

    source = volume.data.astype(np.float32)
    u = _field(SHAPE3, 3.0, 17)
    ours = warp(
        torch.from_numpy(source)[None, None], torch.from_numpy(u)[None], mode="linear",
        padding_mode="zeros",
    )[0, 0].numpy()

    def itk_psnr(geometry) -> float:
        path = write_displacement(tmp_path / f"u{id(geometry)}.nii.gz", u, geometry)
        disp = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
        src = sitk.Cast(sitk.ReadImage(original), sitk.sitkFloat32)  # the ORIGINAL file
        theirs = sitk.GetArrayFromImage(
            sitk.Resample(src, src, sitk.DisplacementFieldTransform(disp), sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
        )
        interior = (slice(4, -4),) * 3
        return _psnr(theirs[interior], ours[interior])

    psnr = itk_psnr(volume.geometry)
    print(f"ACDC header: PSNR {psnr:.1f} dB")
    assert psnr >= 40.0
    # nibabel's affine alone (1 mm spacing) was the bug: its field misses badly
    wrong = Geometry.from_nifti_affine(nib.load(original).affine)
    assert wrong.spacing == pytest.approx((1, 1, 1))
    assert itk_psnr(wrong) < 30.0


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_a_slice_field_fits_its_image_file_in_simpleitk(tmp_path, suffix):
    """A slice of a 3D file (one slice at z = 33 mm) and a 2D+t sequence: the field files fit the
    image files as written (NIfTI: the slice that sitk.Extract takes), so SimpleITK resamples the
    written source with the written field as our warp does; the field reads back as the same 2D field."""
    from napari_deformdiff.core.io import Volume, read_volume, write_volume
    from napari_deformdiff.core.io.fields import write_displacement_sequence

    placed = Geometry((8.0, 1.5, 1.2), (33.0, 7.0, -20.0), np.eye(3)).slice_2d()
    shape = (40, 36)
    image = (_smooth(shape, 3) * 100).astype(np.float32)
    u = _field(shape, 2.0, 11)
    ours = warp(torch.from_numpy(image)[None, None], torch.from_numpy(u)[None], padding_mode="border")[0, 0].numpy()

    src = write_volume(Volume(image, placed, False, "s"), tmp_path / f"s{suffix}")
    fld = write_displacement(tmp_path / f"u{suffix}", u, placed)
    itk_image, itk_field = sitk.ReadImage(str(src)), sitk.ReadImage(str(fld))
    assert itk_image.GetDimension() == 3 and itk_image.GetOrigin()[2] == pytest.approx(33.0)
    if suffix == ".nii.gz":  # ITK reads a one-slice vector NIfTI as 2D: the field fits the slice
        assert itk_field.GetDimension() == 2
        itk_image = sitk.Extract(itk_image, [*itk_image.GetSize()[:2], 0], [0, 0, 0])
    else:
        assert itk_field.GetDimension() == 3 and itk_field.GetOrigin()[2] == pytest.approx(33.0)
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(itk_field, get)(), getattr(itk_image, get)(), atol=1e-6)
    theirs = _itk_resampled(itk_image, itk_field).reshape(shape)
    assert _psnr(theirs[4:-4, 4:-4], ours[4:-4, 4:-4]) >= 40.0
    v, g = read_displacement(fld)
    np.testing.assert_allclose(v, u, atol=1e-5)
    assert g.almost_equal(placed)
    if suffix != ".nii.gz":
        assert g.as_3d().almost_equal(placed.as_3d())

    flat = Geometry((1.5, 1.2), (7.0, -20.0), np.eye(2))  # a 2D image over time: frames are (T, 1, Y, X)
    frames = write_volume(Volume(np.stack([image, ours]), flat, False, "c", 0.05), tmp_path / f"c{suffix}")
    seq = write_displacement_sequence(tmp_path / f"us{suffix}", np.stack([np.zeros_like(u), u]), flat)
    itk_frames, itk_seq = sitk.ReadImage(str(frames)), sitk.ReadImage(str(seq))
    assert itk_seq.GetDimension() == itk_frames.GetDimension() == 4
    first = sitk.Extract(itk_frames, [*itk_frames.GetSize()[:3], 0], [0, 0, 0, 0])
    field1 = sitk.Extract(itk_seq, [*itk_seq.GetSize()[:3], 0], [0, 0, 0, 1])
    for get in ("GetSize", "GetSpacing", "GetOrigin"):
        np.testing.assert_allclose(getattr(field1, get)(), getattr(first, get)(), atol=1e-6)
    assert _psnr(_itk_resampled(first, field1)[0, 4:-4, 4:-4], ours[4:-4, 4:-4]) >= 40.0


def _itk_resampled(image, field) -> np.ndarray:
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.GetArrayFromImage(sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
