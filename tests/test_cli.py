"""`deformdiff` commands, run in-process through cli.main, checked against the core's own output."""

import numpy as np
import pytest
import SimpleITK as sitk

from napari_deformdiff.cli import main
from napari_deformdiff.core.io import read_path, read_volume
from napari_deformdiff.core.io.acdc import read_acdc_patient
from napari_deformdiff.core.phantom import cardiac_phantom

from .geometry_cases import itk_oblique_image


def test_phantom_dataset_in_acdc_layout(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["phantom", "--out", str(out), "--cases", "2", "--seed", "5", "--frames", "6", "--2d"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["patient001", "patient002"]
    for i, folder in enumerate(sorted(out.iterdir())):
        case = cardiac_phantom(5 + i, frames=6, two_d=True)
        files = {p.name for p in folder.iterdir()}
        es = case.es_index + 1
        assert {
            "Info.cfg", f"{folder.name}_4d.nii.gz", f"{folder.name}_4d_gt.nii.gz",
            f"{folder.name}_frame01.nii.gz", f"{folder.name}_frame01_gt.nii.gz",
            f"{folder.name}_frame{es:02d}.nii.gz", f"{folder.name}_frame{es:02d}_gt.nii.gz",
            f"{folder.name}_4d_ddf.npz",
        } == files
        patient = read_acdc_patient(folder)
        assert patient.info["ED"] == "1" and patient.info["ES"] == str(es) and patient.info["NbFrame"] == "6"
        np.testing.assert_array_equal(patient.cine.data, case.images)
        np.testing.assert_array_equal(patient.ed_labels.data, case.labels[0])
        np.testing.assert_array_equal(patient.es_labels.data, case.labels[case.es_index])
        np.testing.assert_array_equal(patient.es.data, case.images[case.es_index])
        assert patient.cine.geometry.spacing == pytest.approx(case.spacing)
        all_labels = read_volume(folder / f"{folder.name}_4d_gt.nii.gz")
        assert all_labels.is_labels
        np.testing.assert_array_equal(all_labels.data, case.labels)
        ddf = np.load(folder / f"{folder.name}_4d_ddf.npz")
        np.testing.assert_array_equal(ddf["ddf"], case.fields)
    assert "wrote 2 cardiac phantom case(s)" in capsys.readouterr().out


def test_phantom_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["phantom", "--out", str(tmp_path), "--cases", "1", "--2d", "--frames", "3"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_info_and_convert_keep_geometry(tmp_path, capsys):
    img, arr = itk_oblique_image()
    sitk.WriteImage(img, str(tmp_path / "in.nrrd"))
    assert main(["info", str(tmp_path / "in.nrrd")]) == 0
    text = capsys.readouterr().out
    assert "shape (6, 9, 11)" in text and "spacing (8, 1.6, 1.4) mm" in text and "oblique" in text
    assert main(["convert", str(tmp_path / "in.nrrd"), str(tmp_path / "out.nii.gz")]) == 0
    back = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), arr)
    assert main(["convert", str(tmp_path / "in.nrrd"), str(tmp_path / "out.nii.gz")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.nii.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["device", "--device", "tpu"]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert main(["device", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == "cpu"


def test_sample_case_in_the_repository_reads_as_acdc():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "sample_data" / "patient001"
    volumes = read_path(folder)
    patient = read_acdc_patient(folder)
    assert len(volumes) == 5 and patient.cine.data.shape[1:] == (32, 128, 128)
    assert patient.cine.geometry.spacing == pytest.approx((3.15, 1.5, 1.5))
    assert set(np.unique(patient.ed_labels.data)) == {0, 1, 2, 3}
    lv_ed = (patient.ed_labels.data == 3).sum()
    lv_es = (patient.es_labels.data == 3).sum()
    assert lv_es < 0.8 * lv_ed  # the sample case contracts from ED to ES
