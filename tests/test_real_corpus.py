"""Real files (fetched by tests/real_data.py): our readers agree with SimpleITK on every one.

Geometry within 1e-4 relative / 1e-3 mm, voxel arrays exact (same dtype). Named deliberate
differences are listed in DELIBERATE and checked for what we do instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import read_path, read_volume

from . import real_data

try:
    FILES = {name: files() for name, files in real_data.ALL.items()}
except real_data.RealDataUnavailable as exc:
    pytest.skip(f"real-data corpus unavailable: {exc}", allow_module_level=True)

CASES = [pytest.param(p, id=f"{src}/{p.relative_to(real_data.cache_dir()).as_posix().split('/', 1)[1]}")
         for src, paths in FILES.items() for p in paths]

# file name -> why we differ from SimpleITK on purpose
DELIBERATE = {
    "example_nifti2.nii.gz": "NIfTI-2: SimpleITK 2.5 has no reader; we read it with the NIfTI-1 rules",
    "row_major.dconn.nii": "CIFTI-2 connectivity matrix: SimpleITK cannot read it; we refuse it "
                           "with an InputError",
    "spine_report.nii.gz": "RGB24 NIfTI: SimpleITK reads 3-component pixels; we refuse non-scalar "
                           "voxels with an InputError",
    "resampled_anat_moved.nii": "float NaN voxels: nifti1_io (ITK) replaces them by 0; we keep "
                                "them (and warn) so missing data stays visible",
}


def itk_geometry(img) -> Geometry:
    dim = img.GetDimension()
    n = min(dim, 3)
    d = np.asarray(img.GetDirection()).reshape(dim, dim)[:n, :n]
    return Geometry.from_itk(img.GetSpacing()[:n], img.GetOrigin()[:n], d.ravel())


def assert_agrees(volume, img):
    expected = itk_geometry(img)
    got = volume.geometry
    if got.ndim == 2 and expected.ndim == 3:
        got = got.as_3d()
    assert got.almost_equal(expected, rtol=1e-4, atol_mm=1e-3), f"ours {got}\nITK  {expected}"
    arr = sitk.GetArrayFromImage(img)
    assert volume.data.dtype == arr.dtype
    np.testing.assert_array_equal(volume.data.reshape(arr.shape), arr)
    if img.GetDimension() == 4:
        assert volume.time_spacing == pytest.approx(img.GetSpacing()[3])


@pytest.mark.parametrize("path", CASES)
def test_reader_agrees_with_simpleitk(path):
    why = DELIBERATE.get(path.name)
    if why is None:
        assert_agrees(read_volume(path, as_labels=False), sitk.ReadImage(str(path)))
    elif "InputError" in why:
        with pytest.raises(InputError, match=path.name.replace(".", r"\.")):
            read_volume(path)
    elif path.name == "example_nifti2.nii.gz":
        with pytest.raises(RuntimeError):
            sitk.ReadImage(str(path))
        _check_nifti2_as_nifti1(path)
    elif "NaN" in why:
        v = read_volume(path, as_labels=False)
        img = sitk.ReadImage(str(path))
        nan = np.isnan(v.data)
        assert nan.any() and len(v.warnings) == 1 and "NaN" in v.warnings[0]
        assert np.all(sitk.GetArrayFromImage(img)[nan] == 0)
        v.data = np.where(nan, 0, v.data).astype(v.data.dtype)
        assert_agrees(v, img)


def _check_nifti2_as_nifti1(path):
    """The same header fields in a NIfTI-1 file, which SimpleITK reads, give the same volume."""
    import tempfile

    import nibabel as nib

    img2 = nib.load(str(path))
    h1 = nib.Nifti1Header.from_header(img2.header)
    h1["vox_offset"] = 352
    raw = np.asanyarray(img2.dataobj.get_unscaled())
    with tempfile.TemporaryDirectory() as tmpdir:
        p1 = f"{tmpdir}/as_nifti1.nii"
        with open(p1, "wb") as fh:
            fh.write(h1.binaryblock + b"\0" * 4 + raw.astype(h1.get_data_dtype()).tobytes(order="F"))
        assert_agrees(read_volume(path, as_labels=False), sitk.ReadImage(p1))


def test_dicom_series_agrees_with_simpleitk():
    folder = real_data.totalsegmentator_dicom_folder()
    (volume,) = read_path(folder, as_labels=False)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    assert_agrees(volume, reader.Execute())


def test_corpus_size():
    assert len(FILES["nibabel"]) >= 8
    assert len(FILES["totalsegmentator"]) >= 150
    assert len(FILES["pyradiomics"]) == 10
