"""DICOM cines (phases at the same slice position) open with a time axis; files written with pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import can_read, read_path, read_volume

from .test_io import rotation

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"

SPACING = (0.7, 0.8, 6.5)  # x (between columns), y (between rows), z (between slices) mm
ORIGIN = (-30.0, 12.5, 48.0)
OBLIQUE_R = rotation(20, -15, 35)  # columns: row direction, column direction, normal (LPS)
TRIGGERS = (0.0, 45.0, 90.0, 135.0, 180.0)
SLOPE, INTERCEPT = 2.0, -1024.0


def base_dataset(sop_class: str, series_uid: str, rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesDescription = "SAX cine"
    ds.PatientName, ds.PatientID = "Test^Cine", "cine01"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def ds_list(values) -> list[str]:
    return [f"{v:.6f}" for v in values]


def slice_position(k: int) -> np.ndarray:
    return np.asarray(ORIGIN) + OBLIQUE_R[:, 2] * SPACING[2] * k


def write_cine_folder(folder: Path, stored: np.ndarray, *, tag: str = "trigger", seed: int = 0,
                      slope=SLOPE, intercept=INTERCEPT, series_uid=None) -> list[tuple[int, int, Path]]:
    """One MR file per (phase, slice), shuffled, random names; `tag` says how phases are told apart.

    stored: (T, Z, Y, X) uint16. Returns (t, z, path) of every file written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    nt, nz, rows, cols = stored.shape
    series_uid = series_uid or generate_uid()
    pairs = [(t, z) for t in range(nt) for z in range(nz)]
    written = []
    for i in rng.permutation(len(pairs)):
        t, z = pairs[i]
        ds = base_dataset(MR_IMAGE, series_uid, rows, cols)
        ds.ImagePositionPatient = ds_list(slice_position(z))
        ds.ImageOrientationPatient = ds_list(list(OBLIQUE_R[:, 0]) + list(OBLIQUE_R[:, 1]))
        ds.PixelSpacing = ds_list((SPACING[1], SPACING[0]))  # row spacing (y), column spacing (x)
        ds.SliceThickness = f"{SPACING[2]:.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if tag == "trigger":
            ds.TriggerTime = f"{TRIGGERS[t] + 0.5 * z:g}"  # slices acquired a little later
            ds.InstanceNumber = str(1 + int(rng.integers(0, 1000)))  # no help with ordering
        elif tag == "temporal":
            ds.TemporalPositionIdentifier = str(t + 1)
            ds.InstanceNumber = str(1 + int(rng.integers(0, 1000)))
        elif tag == "instance":
            ds.InstanceNumber = str(z * nt + t + 1)
        ds.PixelData = np.ascontiguousarray(stored[t, z]).astype("<u2").tobytes()
        path = folder / f"{rng.integers(0, 16**12):012x}"
        ds.save_as(path, enforce_file_format=True)
        written.append((t, z, path))
    return written


def expected_geometry() -> tuple:
    return SPACING, ORIGIN, tuple(OBLIQUE_R.ravel())


def assert_geometry(geometry: Geometry, spacing, origin, direction):
    s, o, d = geometry.to_itk()
    np.testing.assert_allclose(s, spacing, rtol=1e-5)
    np.testing.assert_allclose(o, origin, atol=1e-4)
    np.testing.assert_allclose(d, direction, atol=1e-5)


def sitk_phase(tmp_path: Path, files: list[Path], t: int):
    """SimpleITK's own reading of one phase: GDCM sorts the files of a folder holding only them."""
    folder = tmp_path / f"sitk_phase{t}"
    folder.mkdir()
    for p in files:
        shutil.copy(p, folder / (p.name + ".dcm"))
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    image = reader.Execute()
    return sitk.GetArrayFromImage(image), Geometry.from_itk(
        image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def random_stored(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.uint16)


def check_cine(tmp_path, v, stored, written, *, slope=SLOPE, intercept=INTERCEPT, compare_sitk=True):
    nt = stored.shape[0]
    assert v.has_time and v.data.shape == stored.shape
    np.testing.assert_allclose(v.data, stored.astype(np.float64) * slope + intercept, rtol=1e-6)
    assert_geometry(v.geometry, *expected_geometry())
    if compare_sitk:
        for t in range(nt):
            arr, geometry = sitk_phase(tmp_path, [p for tt, _, p in written if tt == t], t)
            np.testing.assert_allclose(v.data[t], arr, rtol=1e-6)
            assert v.geometry.almost_equal(geometry, rtol=1e-5, atol_mm=1e-4)


# --- (a)-(d) single-frame files -----------------------------------------------------------


def test_trigger_time_cine_opens_3d_plus_t(tmp_path):
    stored = random_stored((5, 4, 10, 12), 1)
    written = write_cine_folder(tmp_path / "cine", stored)
    assert can_read(tmp_path / "cine")
    (v,) = read_path(tmp_path / "cine")
    check_cine(tmp_path, v, stored, written)
    assert v.metadata["time_source"] == "TriggerTime"
    # per-phase trigger times: the mean over slices (written as TRIGGERS[t] + 0.5 z)
    np.testing.assert_allclose(v.metadata["trigger_times_ms"], np.asarray(TRIGGERS) + 0.75)
    assert v.time_spacing == pytest.approx(0.045)
    assert v.metadata["series_description"] == "SAX cine" and "SAX cine" in v.name
    assert v.data.dtype.kind == "i"  # integer slope and intercept keep integers


def test_temporal_position_identifier_cine(tmp_path):
    stored = random_stored((3, 5, 8, 9), 2)
    written = write_cine_folder(tmp_path / "cine", stored, tag="temporal", seed=2, slope=0.5,
                                intercept=3.25)
    (v,) = read_path(tmp_path / "cine")
    check_cine(tmp_path, v, stored, written, slope=0.5, intercept=3.25)
    assert v.metadata["time_source"] == "TemporalPositionIdentifier"
    assert "trigger_times_ms" not in v.metadata and v.time_spacing is None


def test_repeated_positions_ordered_by_instance_number(tmp_path):
    stored = random_stored((4, 3, 7, 6), 3)
    written = write_cine_folder(tmp_path / "cine", stored, tag="instance", seed=3)
    (v,) = read_path(tmp_path / "cine")
    check_cine(tmp_path, v, stored, written)
    assert v.metadata["time_source"] == "InstanceNumber"


def test_single_slice_cine_is_2d_plus_t(tmp_path):
    stored = random_stored((5, 1, 11, 9), 4)
    write_cine_folder(tmp_path / "cine", stored, seed=4)
    (v,) = read_path(tmp_path / "cine")
    assert v.geometry.ndim == 2 and v.data.shape == (5, 11, 9) and v.has_time
    np.testing.assert_array_equal(v.data, stored[:, 0].astype(np.int64) * 2 - 1024)
    assert v.geometry.spacing == pytest.approx((SPACING[1], SPACING[0]))
    # the slice keeps its oblique 3D placement, its thickness as the third spacing
    assert_geometry(v.geometry.embedding, *expected_geometry())
    np.testing.assert_allclose(v.metadata["trigger_times_ms"], TRIGGERS)


def test_uneven_phase_counts_are_refused(tmp_path):
    stored = random_stored((4, 3, 6, 6), 5)
    written = write_cine_folder(tmp_path / "cine", stored, seed=5)
    next(p for t, z, p in written if (t, z) == (2, 1)).unlink()
    with pytest.raises(InputError, match=r"same number of phases \(3 positions: 1 with 3, 2 with 4\)"):
        read_path(tmp_path / "cine")


def test_plain_series_matches_simpleitk(tmp_path):
    stored = random_stored((1, 6, 9, 10), 6)
    write_cine_folder(tmp_path / "plain", stored, tag="none", seed=6)
    (v,) = read_path(tmp_path / "plain")
    assert not v.has_time and v.data.shape == (6, 9, 10)
    np.testing.assert_array_equal(v.data, stored[0].astype(np.int64) * 2 - 1024)
    assert_geometry(v.geometry, *expected_geometry())
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "plain"))
    image = sitk.ImageSeriesReader()
    image.SetFileNames(names)
    image = image.Execute()
    np.testing.assert_array_equal(v.data, sitk.GetArrayFromImage(image))
    assert v.geometry.almost_equal(
        Geometry.from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection()),
        rtol=1e-6, atol_mm=1e-6)
    assert "time_source" not in v.metadata


def test_uneven_slice_spacing_warns(tmp_path):
    stored = random_stored((2, 4, 5, 5), 7)
    written = write_cine_folder(tmp_path / "cine", stored, seed=7)
    from pydicom import dcmread

    for t, z, p in written:  # move the last slice 2 mm further along the normal
        if z == 3:
            ds = dcmread(p)
            ds.ImagePositionPatient = ds_list(slice_position(3) + 2.0 * OBLIQUE_R[:, 2])
            ds.save_as(p, enforce_file_format=True)
    (v,) = read_path(tmp_path / "cine")
    assert any("uneven slice spacing (6.5 to 8.5 mm)" in w for w in v.warnings), v.warnings
    assert v.geometry.spacing[0] == pytest.approx((6.5 * 3 + 2) / 3)


# --- (e) enhanced multi-frame MR ------------------------------------------------------------


def item(**values) -> Sequence:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return Sequence([ds])


def test_enhanced_multiframe_mr(tmp_path):
    nt, nz, rows, cols = 4, 3, 8, 7
    stored = random_stored((nt, nz, rows, cols), 8)
    rng = np.random.default_rng(8)
    order = rng.permutation(nt * nz)
    intercepts = {}
    ds = base_dataset(ENHANCED_MR, generate_uid(), rows, cols)
    ds.NumberOfFrames = nt * nz
    shared = Dataset()
    shared.PlaneOrientationSequence = item(
        ImageOrientationPatient=ds_list(list(OBLIQUE_R[:, 0]) + list(OBLIQUE_R[:, 1])))
    shared.PixelMeasuresSequence = item(PixelSpacing=ds_list((SPACING[1], SPACING[0])),
                                        SliceThickness=f"{SPACING[2]:g}")
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, pixels = [], []
    for i in order:
        t, z = divmod(int(i), nz)
        intercepts[t, z] = float(-100 * t - z)  # per-frame rescale
        fg = Dataset()
        fg.PlanePositionSequence = item(ImagePositionPatient=ds_list(slice_position(z)))
        fg.CardiacSynchronizationSequence = item(NominalCardiacTriggerDelayTime=float(TRIGGERS[t]))
        fg.FrameContentSequence = item(TemporalPositionIndex=t + 1, InStackPositionNumber=z + 1)
        fg.PixelValueTransformationSequence = item(
            RescaleSlope="1.5", RescaleIntercept=f"{intercepts[t, z]:g}", RescaleType="US")
        per_frame.append(fg)
        pixels.append(stored[t, z])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(pixels).astype("<u2").tobytes()
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)

    v = read_volume(tmp_path / "enhanced.dcm")
    assert v.data.shape == (nt, nz, rows, cols)
    for t in range(nt):
        for z in range(nz):
            np.testing.assert_allclose(v.data[t, z], stored[t, z] * 1.5 + intercepts[t, z])
    assert_geometry(v.geometry, *expected_geometry())
    assert v.metadata["time_source"] == "NominalCardiacTriggerDelayTime"
    np.testing.assert_allclose(v.metadata["trigger_times_ms"], TRIGGERS[:nt])
    assert v.time_spacing == pytest.approx(0.045)
    # a folder holding it gives the same
    (tmp_path / "folder").mkdir()
    shutil.copy(tmp_path / "enhanced.dcm", tmp_path / "folder" / "x")
    (w,) = read_path(tmp_path / "folder")
    np.testing.assert_array_equal(w.data, v.data)


# --- (h) multi-frame ultrasound --------------------------------------------------------------


def test_ultrasound_multiframe_rgb_is_2d_plus_t_luminance(tmp_path):
    n, rows, cols = 6, 10, 12
    rgb = np.random.default_rng(9).integers(0, 256, size=(n, rows, cols, 3)).astype(np.uint8)
    ds = base_dataset(US_MULTIFRAME, generate_uid(), rows, cols)
    ds.Modality = "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = n
    ds.FrameTime = "33.3"
    ds.FrameIncrementPointer = 0x00181063
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.051, 0.04
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "echo.dcm", enforce_file_format=True)

    v = read_volume(tmp_path / "echo.dcm")
    assert v.has_time and v.geometry.ndim == 2 and v.data.shape == (n, rows, cols)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(v.data, luma, rtol=1e-5, atol=1e-3)
    assert v.geometry.spacing == pytest.approx((0.4, 0.51))
    assert v.time_spacing == pytest.approx(0.0333)
    np.testing.assert_allclose(v.metadata["trigger_times_ms"], np.arange(n) * 33.3)
    assert v.metadata["time_source"] == "FrameTime"
    assert any("luminance" in w for w in v.warnings)


def test_palette_and_ybr_images_become_luminance(tmp_path):
    rows, cols = 9, 11
    rng = np.random.default_rng(13)
    # a single palette-colour frame: 8-bit indices into 16-bit red/green/blue tables
    index = rng.integers(0, 256, size=(rows, cols)).astype(np.uint8)
    tables = rng.integers(0, 65536, size=(3, 256)).astype(np.uint16)
    ds = base_dataset(US_IMAGE, generate_uid(), rows, cols)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for colour, table in zip(("Red", "Green", "Blue"), tables, strict=True):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.astype("<u2").tobytes())
    ds.PixelSpacing = ["0.3", "0.4"]
    ds.PixelData = index.tobytes()
    ds.save_as(tmp_path / "palette.dcm", enforce_file_format=True)
    v = read_volume(tmp_path / "palette.dcm")
    assert not v.has_time and v.data.shape == (rows, cols)
    rgb = tables[:, index].astype(np.float64)
    np.testing.assert_allclose(v.data, 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], rtol=1e-5)
    assert v.geometry.spacing == pytest.approx((0.3, 0.4))
    assert any("PALETTE COLOR" in w for w in v.warnings)

    # a YBR_FULL cine: luminance is Y (chroma kept near neutral so RGB is not clipped)
    n = 4
    ybr = np.empty((n, rows, cols, 3), np.uint8)
    ybr[..., 0] = rng.integers(40, 216, size=(n, rows, cols))
    ybr[..., 1:] = rng.integers(120, 137, size=(n, rows, cols, 2))
    ds = base_dataset(US_MULTIFRAME, generate_uid(), rows, cols)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = n
    ds.FrameTimeVector = [0.0, 30.0, 40.0, 50.0]  # increments between frames
    ds.PixelData = ybr.tobytes()
    ds.save_as(tmp_path / "ybr.dcm", enforce_file_format=True)
    v = read_volume(tmp_path / "ybr.dcm")
    assert v.data.shape == (n, rows, cols)
    assert np.abs(v.data - ybr[..., 0]).max() <= 1.0  # rounding of the YBR -> RGB conversion
    np.testing.assert_allclose(v.metadata["trigger_times_ms"], [0.0, 30.0, 70.0, 120.0])
    assert v.time_spacing == pytest.approx(0.04) and v.metadata["time_source"] == "FrameTimeVector"
    assert any("no pixel spacing" in w for w in v.warnings)


# --- (i) reader hook, CLI, layers -------------------------------------------------------------


def test_reader_hook_and_layer_metadata(tmp_path):
    from napari_deformdiff._layers import META_KEY, layer_to_volume
    from napari_deformdiff._reader import get_reader

    stored = random_stored((5, 3, 6, 7), 10)
    write_cine_folder(tmp_path / "cine", stored, seed=10)
    reader = get_reader(str(tmp_path / "cine"))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(tmp_path / "cine"))
    assert kind == "image" and data.shape == (5, 3, 6, 7)
    meta = kwargs["metadata"][META_KEY]["metadata"]
    np.testing.assert_allclose(meta["trigger_times_ms"], np.asarray(TRIGGERS) + 0.5)
    assert kwargs["units"] == [None, "mm", "mm", "mm"]
    back = layer_to_volume(data, kwargs, is_labels=False)
    assert back.metadata["trigger_times_ms"] == meta["trigger_times_ms"]
    assert back.time_spacing == pytest.approx(0.045)


def test_cli_info_prints_phases_and_trigger_times(tmp_path, capsys):
    from napari_deformdiff.cli import main

    write_cine_folder(tmp_path / "cine", random_stored((5, 2, 6, 6), 11), seed=11)
    assert main(["info", str(tmp_path / "cine")]) == 0
    out = capsys.readouterr().out
    assert "3D, 5 frames every 0.045 s" in out
    assert "5 phases (from TriggerTime)" in out
    assert "trigger times ms: 0.25, 45.25, 90.25, 135.25, 180.25" in out


@pytest.mark.gui
def test_viewer_layers_and_scale_bar_in_mm(make_napari_viewer, tmp_path, qtbot):
    from napari_deformdiff._qt.open_widget import OpenVolumeWidget

    write_cine_folder(tmp_path / "cine", random_stored((3, 2, 16, 16), 12), seed=12)
    viewer = make_napari_viewer()
    widget = OpenVolumeWidget(viewer)
    widget.path.value = tmp_path / "cine"
    (layer,) = widget.open()
    assert [str(u) for u in layer.units] == ["pixel", "millimeter", "millimeter", "millimeter"]
    assert layer.metadata["deformdiff"]["metadata"]["time_source"] == "TriggerTime"
    scale_bar = viewer.canvas.overlays.scale_bar
    scale_bar.visible = True
    qtbot.wait(100)
    overlay = viewer.window._qt_viewer.canvas._viewer_overlay_to_visual[scale_bar][0]
    assert overlay.node.text.text.endswith("mm")


# --- a real echo (pydicom-data 1.0.0), when cached --------------------------------------------


def test_real_apical_four_chamber_echo():
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    from ._dicom_real import echo_path

    path = echo_path()
    if path is None:
        pytest.skip("real echo not cached: run `python -m tests._dicom_real` to fetch pydicom-data 1.0.0")
    header = dcmread(path, stop_before_pixels=True)
    v = read_volume(path)
    assert v.has_time and v.geometry.ndim == 2 and v.data.shape == (120, 480, 640)
    # spacing from the ultrasound region (cm), frame time 33.333 ms
    region = header.SequenceOfUltrasoundRegions[0]
    assert v.geometry.spacing == pytest.approx((10 * region.PhysicalDeltaY, 10 * region.PhysicalDeltaX))
    assert v.geometry.spacing[1] == pytest.approx(0.5105, abs=1e-4)
    assert v.time_spacing == pytest.approx(0.033333)
    assert len(v.metadata["trigger_times_ms"]) == 120
    assert v.metadata["trigger_times_ms"][-1] == pytest.approx(119 * 33.333)
    # YBR_FULL's Y is the BT.601 luminance: compare with the undecoded Y channel of two frames
    # (equal up to rounding, except where saturated colours were clipped to RGB)
    for index in (0, 77):
        ybr = pixel_array(path, index=index, as_rgb=False)
        diff = np.abs(v.data[index] - ybr[..., 0])
        assert np.percentile(diff, 99.9) <= 1.5 and diff.mean() < 0.6, (np.percentile(diff, 99.9), diff.mean())
    assert v.data[50].std() > 10  # an image, not a blank frame
