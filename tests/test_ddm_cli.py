"""`deformdiff generate/train/evaluate ddm`, checked against the core and SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_deformdiff.cli import main
from napari_deformdiff.core.ddm.generate import generate_ddm
from napari_deformdiff.core.ddm.weights import save_ddm
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.image_metrics import psnr
from napari_deformdiff.core.io import Volume, read_volume, write_volume
from napari_deformdiff.core.io.fields import from_itk_displacement

from .ddm_helpers import blob, tiny_model
from .geometry_cases import OBLIQUE


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = tiny_model(3, seed=7)
    for p in model.field_fn.outconv.parameters():  # a visibly non-zero field
        p.data.normal_(0, 0.05)
    return save_ddm(model, folder / "tiny3d.safetensors"), model


def oblique_pair(tmp_path):
    shape, spacing = (10, 30, 34), (4.0, 1.6, 1.4)
    direction = OBLIQUE[::-1, ::-1]  # ITK (x,y,z) -> array order
    geometry = Geometry(spacing, (-30.0, 12.5, 70.0), direction)
    centre = [n * s / 2 for n, s in zip(shape, spacing)]
    src = blob(shape, centre, 12.0, spacing) * 300 + 20
    tgt = blob(shape, [centre[0], centre[1] + 3, centre[2] - 2], 10.0, spacing) * 300 + 20
    labels = ((src - 20) > 150).astype(np.int16) * 2
    paths = {}
    for name, data, is_lab in (("ed", src, False), ("es", tgt, False), ("ed_gt", labels, True)):
        paths[name] = write_volume(Volume(data, geometry, is_lab), tmp_path / f"{name}.nrrd")
    return paths, geometry


def test_generate_writes_frames_fields_and_labels_with_the_source_geometry(tmp_path, tiny_weights, capsys):
    weights, model = tiny_weights
    paths, geometry = oblique_pair(tmp_path)
    out, fields, labels = tmp_path / "cycle.nii.gz", tmp_path / "fields.nii.gz", tmp_path / "labels.nii.gz"
    args = ["generate", "ddm", "--source", str(paths["ed"]), "--target", str(paths["es"]), "--frames", "4",
            "--out", str(out), "--fields-out", str(fields), "--labels", str(paths["ed_gt"]),
            "--labels-out", str(labels), "--weights", str(weights), "--device", "cpu"]
    assert main(args) == 0
    cycle = read_volume(out)
    assert cycle.data.shape == (4, 10, 30, 34)
    assert cycle.geometry.almost_equal(geometry)
    source = read_volume(paths["ed"])
    expected = [e for e in generate_ddm(source, read_volume(paths["es"]), frames=4,  # --adapt auto by default
                                        labels=read_volume(paths["ed_gt"], as_labels=True), model=model,
                                        adapt="auto")
                if isinstance(e, Frame)]
    np.testing.assert_allclose(cycle.data, np.stack([f.image for f in expected]), atol=1e-3)
    assert psnr(cycle.data[0], source.data, float(np.ptp(source.data))) > 20
    # one 4D ITK vector image: each time index is that frame's displacement field
    image = sitk.ReadImage(str(fields))
    assert image.GetDimension() == 4 and image.GetNumberOfComponentsPerPixel() == 3
    for k in (0, 3):
        frame = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, k])
        ddf, g = from_itk_displacement(frame)
        assert g.almost_equal(geometry)
        np.testing.assert_allclose(ddf, expected[k].field, atol=1e-3)
    lab = read_volume(labels, as_labels=True)
    assert lab.is_labels and lab.data.shape == (4, 10, 30, 34) and set(np.unique(lab.data)) <= {0, 2}
    np.testing.assert_array_equal(lab.data, np.stack([f.labels for f in expected]))
    # never overwritten silently
    before = out.read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_generate_from_an_acdc_patient_and_bad_input(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--cases", "1", "--2d", "--frames", "10"]) == 0
    weights = save_ddm(tiny_model(2, grid=(64, 64), spacing=(3.0, 3.0)), tmp_path / "tiny2d.safetensors")
    out = tmp_path / "c.nii.gz"
    patient = tmp_path / "ds" / "patient001"
    assert main(["generate", "ddm", "--patient", str(patient), "--weights", str(weights), "--out", str(out),
                 "--labels-out", str(tmp_path / "l.nii.gz")]) == 0
    cycle = read_volume(out)
    cine = read_volume(patient / "patient001_4d.nii.gz")
    assert cycle.data.shape[0] == 5  # ED (frame 1) .. ES (frame 5) of the phantom
    assert cycle.geometry.almost_equal(cine.geometry) and cycle.time_spacing == pytest.approx(cine.time_spacing)
    capsys.readouterr()
    assert main(["generate", "ddm", "--patient", str(patient), "--out", str(tmp_path / "x.nii.gz"),
                 "--weights", str(tmp_path / "tiny3d.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    three_d = save_ddm(tiny_model(3), tmp_path / "tiny3d.safetensors")
    assert main(["generate", "ddm", "--patient", str(patient), "--out", str(tmp_path / "x.nii.gz"),
                 "--weights", str(three_d)]) == 2
    assert "3D DDM model but the image is 2D" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_train_then_evaluate_on_phantom_cases(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--cases", "2", "--2d", "--frames", "12",
                 "--seed", "40"]) == 0
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(ckpt), "--steps", "3",
                 "--batch", "2"]) == 0
    assert ckpt.is_file() and (tmp_path / "m.safetensors.optim.pt").is_file()
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(ckpt), "--steps", "4",
                 "--resume", str(ckpt)]) == 0
    capsys.readouterr()
    csv = tmp_path / "r.csv"
    assert main(["evaluate", "ddm", "--data", str(tmp_path / "ds"), "--weights", str(ckpt), "--cases", "1",
                 "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    for method in ("initial", "linear blend", "demons (gamma * field)", "VM (gamma * field)", "DDM"):
        assert method in text
    rows = [line.split(",") for line in csv.read_text(encoding="utf-8").splitlines()[1:]]
    initial = next(r for r in rows if r[1] == "initial")
    # "initial" is the source repeated: its PSNR against the real intermediate frames, computed here
    cine = read_volume(tmp_path / "ds" / "patient001" / "patient001_4d.nii.gz").data
    es = int((tmp_path / "ds" / "patient001" / "Info.cfg").read_text().split("ES:")[1].split()[0]) - 1
    src = cine[0]
    expected = np.mean([psnr(src, cine[k], float(src.max() - src.min())) for k in range(1, es)])
    assert float(initial[2]) == pytest.approx(expected, abs=1e-3)


def test_frames_of_a_cine_and_output_names_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """One 4D file gives source and target with --source-frame/--target-frame (the core's frames of
    it, the folding of the written fields reported); a bad output name or folder is refused before
    the generator runs; a cine without a frame choice names the option to use."""
    import torch

    import napari_deformdiff.core.ddm.generate as ddm_generate
    from napari_deformdiff.core.spatial import folding_ratio

    assert main(["phantom", "--out", str(tmp_path / "ds"), "--cases", "1", "--2d", "--frames", "10"]) == 0
    cine_path = tmp_path / "ds" / "patient001" / "patient001_4d.nii.gz"
    cine = read_volume(cine_path)
    model = tiny_model(2, grid=(64, 64), spacing=(3.0, 3.0))
    weights = save_ddm(model, tmp_path / "tiny2d.safetensors")
    out, fields = tmp_path / "c.nii.gz", tmp_path / "f.nii.gz"
    base = ["generate", "ddm", "--source", str(cine_path), "--target", str(cine_path), "--weights", str(weights),
            "--frames", "3", "--adapt", "0", "--device", "cpu"]
    capsys.readouterr()
    assert main([*base, "--source-frame", "1", "--target-frame", "6", "--out", str(out),
                 "--fields-out", str(fields)]) == 0
    printed = capsys.readouterr().out
    one = lambda k: Volume(np.array(cine.data[k]), cine.geometry, False)  # noqa: E731
    expected = [e for e in generate_ddm(one(1), one(6), frames=3, model=model, adapt=0) if isinstance(e, Frame)]
    np.testing.assert_allclose(read_volume(out).data, np.stack([f.image for f in expected]), atol=1e-4)
    assert read_volume(out).geometry.almost_equal(cine.geometry)
    worst = float(folding_ratio(torch.from_numpy(np.stack([f.field for f in expected]))).max()) * 100
    assert (f"{worst:.3f} % of voxels at most" in printed) if worst else "no folding" in printed

    same = ["generate", "ddm", "--source", str(cine_path), "--target", str(cine_path), "--source-frame", "2",
            "--target-frame", "2", "--weights", str(weights), "--out", str(tmp_path / "o.nii.gz")]
    assert main(same) == 2  # refused by the core generator before its first event: one line, no empty bar
    err = capsys.readouterr().err
    assert "the same image" in err and len(err.strip().splitlines()) == 1

    calls = []
    monkeypatch.setattr(ddm_generate, "generate_ddm", lambda *a, **k: calls.append(1) or iter(()))
    for bad, message in ((["--out", str(tmp_path / "o.png")], "cannot write 'o.png': choose one of"),
                         (["--out", str(tmp_path / "nodir" / "o.nii.gz")], "folder"),
                         (["--out", str(tmp_path / "o.nii.gz"), "--fields-out", str(tmp_path / "f.txt")],
                          "cannot write 'f.txt'")):
        assert main([*base, "--source-frame", "1", "--target-frame", "6", *bad]) == 2
        assert message in capsys.readouterr().err
    assert main([*base, "--target-frame", "6", "--out", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "has 10 frames; say which one with --source-frame K" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--source-frame", "1", "--target-frame", "10", "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "--target-frame 10 is outside 0..9" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "nodir").exists()
