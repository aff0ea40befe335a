"""`deformdiff generate/train/evaluate modiff`, checked against the core and the files' geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_deformdiff.cli import main
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.image_metrics import psnr
from napari_deformdiff.core.io import Volume, read_volume, write_volume
from napari_deformdiff.core.io.fields import from_itk_displacement
from napari_deformdiff.core.modiff.data import find_sequences, resample_indices
from napari_deformdiff.core.modiff.generate import generate_modiff
from napari_deformdiff.core.modiff.weights import load_modiff, save_modiff, stage_steps

from .geometry_cases import OBLIQUE
from .modiff_helpers import phantom_sequences, tiny_model


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mw")
    return save_modiff(tiny_model(3, seed=5), folder / "tiny3d.safetensors"), save_modiff(
        tiny_model(2, seed=6), folder / "tiny2d.safetensors")


def oblique_first(tmp_path):
    geometry = Geometry((9.0, 6.5, 7.0), (-30.0, 12.5, 70.0), OBLIQUE[::-1, ::-1])
    rng = np.random.default_rng(1)
    data = (rng.random((10, 20, 18)) * 400 + 50).astype(np.float32)
    path = tmp_path / "first.nrrd"
    write_volume(Volume(data, geometry, False, "first"), path)
    return path, Volume(data, geometry, False, "first")


def test_generate_writes_a_4d_forecast_with_the_first_frames_geometry(tiny_weights, tmp_path, capsys):
    path, first = oblique_first(tmp_path)
    out, fields, diff_path = tmp_path / "seq.nii.gz", tmp_path / "fields.nii.gz", tmp_path / "diff.nii.gz"
    rc = main(["generate", "modiff", "--first", str(path), "--frames", "5", "--steps", "4", "--seed", "2",
               "--weights", str(tiny_weights[0]), "--out", str(out), "--fields-out", str(fields),
               "--differential-out", str(diff_path)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    seq = read_volume(out)
    assert seq.data.shape == (5, 10, 20, 18) and seq.geometry.almost_equal(first.geometry)
    model, _ = load_modiff(tiny_weights[0])
    expected = [e for e in generate_modiff(first, frames=5, steps=4, seed=2, model=model) if isinstance(e, Frame)]
    np.testing.assert_allclose(seq.data, np.stack([e.image for e in expected]), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(seq.data[0], first.data, rtol=1e-6)
    # the fields behind the frames: one 4D ITK vector image, each time index one frame's field
    image = sitk.ReadImage(str(fields))
    assert image.GetDimension() == 4 and image.GetNumberOfComponentsPerPixel() == 3
    for k in (0, 4):
        ddf, g = from_itk_displacement(sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, k]))
        assert g.almost_equal(first.geometry)
        np.testing.assert_allclose(ddf, expected[k].field, atol=1e-4)
    assert np.abs(expected[4].field).max() > 1e-3
    diff = read_volume(diff_path)
    assert diff.data.shape == (5, 10, 20, 18) and np.abs(diff.data[0]).max() == 0
    assert diff.geometry.almost_equal(first.geometry)


def test_generate_refuses_bad_requests_and_keeps_files(tiny_weights, tmp_path, capsys):
    path, _ = oblique_first(tmp_path)
    out = tmp_path / "seq.nii.gz"
    args = ["generate", "modiff", "--first", str(path), "--steps", "2", "--weights", str(tiny_weights[0]),
            "--out", str(out)]
    assert main([*args, "--frames", "12"]) == 2
    assert "(3-6 frames, first frame included)" in capsys.readouterr().err
    assert main([*args, "--frames", "4", "--weights", str(tiny_weights[1])]) == 2
    assert "holds a 2D Mo-Diff model but the image is 3D" in capsys.readouterr().err
    out.write_bytes(b"keep")
    assert main([*args, "--frames", "4"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep"


def test_generate_from_a_frame_of_a_4d_file(tiny_weights, tmp_path, capsys):
    folder = phantom_sequences(tmp_path / "ds", cases=1)
    cine = folder / "patient001" / "patient001_4d.nii.gz"
    out = tmp_path / "seq.nii.gz"
    base = ["generate", "modiff", "--first", str(cine), "--frames", "4", "--steps", "2",
            "--weights", str(tiny_weights[1]), "--out", str(out)]
    assert main(base) == 2 and "--frame K" in capsys.readouterr().err
    assert main([*base, "--frame", "3"]) == 0
    seq, src = read_volume(out), read_volume(cine)
    np.testing.assert_allclose(seq.data[0], src.data[3], rtol=1e-6)
    assert seq.geometry.almost_equal(src.geometry) and seq.time_spacing != src.time_spacing  # not the cine's


def test_train_command_writes_a_resumable_checkpoint(tmp_path, capsys):
    folder = phantom_sequences(tmp_path / "ds", cases=2)
    out = tmp_path / "m.safetensors"
    rc = main(["train", "modiff", "--data", str(folder), "--out", str(out), "--steps", "vae=1,tddm=1,video=1",
               "--batch", "vae=1,tddm=1,video=1", "--no-frame-count", "--max-frames", "6"])
    assert rc == 0
    model, meta = load_modiff(out)
    assert stage_steps(meta) == {"vae": 1, "tddm": 1, "video": 1}
    assert model.config.max_frames == 6 and model.config.ablation() == "no-frame-count"
    assert main(["train", "modiff", "--data", str(folder), "--out", str(out), "--steps", "bogus=3"]) == 2
    assert "stage=value" in capsys.readouterr().err


def test_evaluate_prints_forecast_and_baseline_scores(tiny_weights, tmp_path, capsys):
    folder = phantom_sequences(tmp_path / "ds", cases=2, seed=40)
    csv = tmp_path / "r.csv"
    rc = main(["evaluate", "modiff", "--data", str(folder), "--weights", str(tiny_weights[1]), "--steps", "2",
               "--frames", "4", "--ablation", f"again={tiny_weights[1]}", "--csv", str(csv)])
    assert rc == 0
    table = capsys.readouterr().out
    for method in ("repeat first frame", "Mo-Diff", "Mo-Diff again", "DDM (sees the last frame)"):
        assert f"| {method} | 2 |" in table
    # the "repeat first frame" row, recomputed here from the files
    seqs = find_sequences([folder])
    values = []
    for s in seqs:
        clip = s.frames.data[resample_indices(len(s.frames.data), 4)]
        lo, hi = float(clip[0].min()), float(clip[0].max())
        values += [psnr((clip[0] - lo) / (hi - lo), (clip[k] - lo) / (hi - lo), 1.0) for k in range(1, 4)]
    row = next(line for line in table.splitlines() if line.startswith("| repeat first frame"))
    assert float(row.split("|")[3].split("+-")[0]) == pytest.approx(np.mean(values), abs=0.01)
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("case,method,frames,frame,psnr_db") and len(lines) == 1 + 2 * 4 * 3


def test_train_on_breathing_lungs_with_its_own_model_grid(tmp_path, capsys):
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "lung", cases=1, kind="lung", two_d=True, frames=10, fields=False))
    seq = find_sequences([tmp_path / "lung"])[0]
    assert seq.frames.data.shape == (6, 64, 96)  # end-inspiration .. end-expiration
    out = tmp_path / "lung.safetensors"
    base = ["train", "modiff", "--data", str(tmp_path / "lung"), "--out", str(out), "--steps", "vae=1,tddm=1,video=1",
            "--batch", "vae=1,tddm=1,video=1"]
    assert main([*base, "--grid", "30,45", "--spacing", "5,5"]) == 2
    assert "divisible by" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--grid", "32,48", "--spacing", "5,5"]) == 0
    model, _ = load_modiff(out)
    assert model.config.grid == (32, 48) and model.config.spacing == (5.0, 5.0) and model.config.max_frames == 6


def test_generate_keeps_an_integer_first_frames_dtype_and_range(tiny_weights, tmp_path):
    path, first = oblique_first(tmp_path)
    data = np.round(first.data).astype(np.int16)
    write_volume(Volume(data, first.geometry, False, "first"), tmp_path / "i16.nrrd")
    out = tmp_path / "seq.nii.gz"
    assert main(["generate", "modiff", "--first", str(tmp_path / "i16.nrrd"), "--frames", "4", "--steps", "2",
                 "--weights", str(tiny_weights[0]), "--out", str(out)]) == 0
    seq = read_volume(out)
    assert seq.data.dtype == np.int16
    assert seq.data.min() >= data.min() and seq.data.max() <= data.max()
    np.testing.assert_array_equal(seq.data[0], data)
    assert np.abs(seq.data[1:].astype(int) - data).max() >= 1  # the forecast moves
