"""`deformdiff generate drdm`: folders of images, labels by name, formats, pairs, errors (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_deformdiff.cli import main
from napari_deformdiff.core.drdm.augment import (
    ExportSettings,
    export_drdm,
    find_cases,
    read_manifest,
)
from napari_deformdiff.core.io import Volume, read_volume, write_volume

from .drdm_export_helpers import case_2d, tiny_drdm


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=4)
    return save_drdm(model, tmp_path_factory.mktemp("w") / "tiny2d.safetensors", meta=meta), model, meta


@pytest.fixture
def folder(tmp_path):
    c = case_2d()
    d = tmp_path / "images"
    d.mkdir()
    write_volume(c.image, d / "p1.nii.gz")
    write_volume(c.labels, d / "p1_gt.nii.gz")
    write_volume(Volume(c.image.data[::-1].copy(), c.image.geometry, False), d / "p2.mha")
    return d


def test_a_folder_of_images_gives_every_sample_with_labels_matched_by_name(folder, tmp_path, weights, capsys):
    path, model, meta = weights
    out = tmp_path / "out"
    args = ["generate", "drdm", "--image", str(folder), "--levels", "3:6:3", "--samples", "2", "--out-dir", str(out),
            "--weights", str(path), "--device", "cpu", "--seed", "3", "--format", "nrrd"]
    assert main(args) == 0
    assert "wrote 8 sample(s)" in capsys.readouterr().out
    rows = read_manifest(out / "manifest.csv")
    assert [r["id"] for r in rows] == [f"{c}_L{lv:02d}_s{k:03d}" for c in ("p1", "p2") for lv in (3, 6)
                                       for k in (0, 1)]
    assert all(r["labels"] for r in rows[:4]) and not any(r["labels"] for r in rows[4:])
    assert all(r["image"].endswith(".nrrd") for r in rows)
    # the same as the core run on the same inputs
    cases, _ = find_cases(folder)
    settings = ExportSettings(levels="3:6:3", samples=2, seed=3, fmt="nrrd")
    list(export_drdm(cases, tmp_path / "core", settings, model=model, meta=meta))
    core = read_manifest(tmp_path / "core" / "manifest.csv")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "weights"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(core)
    np.testing.assert_allclose(read_volume(out / rows[5]["image"]).data,
                               read_volume(tmp_path / "core" / rows[5]["image"]).data, atol=1e-5)
    # a second run does not touch the folder
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_pairs_with_a_label_file_and_a_json_manifest(folder, tmp_path, weights):
    path, _, _ = weights
    out = tmp_path / "pairs"
    assert main(["generate", "drdm", "--image", str(folder / "p1.nii.gz"), "--labels", str(folder / "p1_gt.nii.gz"),
                 "--levels", "5", "--samples", "1", "--pairs", "--syn-level", "4", "--out-dir", str(out),
                 "--weights", str(path), "--manifest", "json", "--device", "cpu"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    (row,) = doc["samples"]
    assert doc["settings"]["mode"] == "pairs" and row["syn_level"] == 4
    for col in ("moving", "fixed", "moving_labels", "fixed_labels", "field"):
        assert (out / row[col]).is_file()
    assert read_volume(out / row["fixed_labels"]).data.dtype.kind in "iu"


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no native bfloat16")
def test_bfloat16_precision_is_recorded_and_a_resume_does_not_mix_precisions(folder, tmp_path, weights, capsys):
    path, _, _ = weights
    out = tmp_path / "bf16"
    args = ["generate", "drdm", "--image", str(folder / "p1.nii.gz"), "--levels", "4", "--samples", "2",
            "--out-dir", str(out), "--weights", str(path), "--device", "cpu"]
    assert main([*args, "--precision", "bfloat16"]) == 0
    rows = read_manifest(out / "manifest.csv")
    assert [r["precision"] for r in rows] == ["bfloat16", "bfloat16"]
    from napari_deformdiff.core.io.fields import read_displacement

    field, _ = read_displacement(out / rows[0]["field"])
    assert np.isfinite(field).all() and np.abs(field).max() > 0.1
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # float32 (the default) into a bfloat16 folder
    assert "precision" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize("extra, message", [
    (["--levels", "0:10"], "outside 1..80"),
    (["--levels", "40:64:8", "--syn-level", "10"], "--pairs"),
    (["--format", "png"], "invalid choice"),
    (["--precision", "float16"], "invalid choice"),
    (["--workers-per-gpu", "2"], "add --scheduler"),
    (["--shard-size", "0"], "shard size must be a positive"),
])
def test_bad_options_fail_with_one_line_and_write_nothing(folder, tmp_path, weights, capsys, extra, message):
    path, _, _ = weights
    out = tmp_path / "never"
    args = ["generate", "drdm", "--image", str(folder), "--out-dir", str(out), "--weights", str(path), *extra]
    if "invalid choice" in message:
        with pytest.raises(SystemExit):
            main(args)
    else:
        assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_float_labels_and_a_3d_checkpoint_are_refused(folder, tmp_path, capsys):
    from napari_deformdiff.core.drdm.weights import save_drdm

    c = case_2d()
    write_volume(Volume(c.labels.data + 0.25, c.image.geometry, False), tmp_path / "bad_labels.nii.gz")
    args = ["generate", "drdm", "--image", str(folder / "p1.nii.gz"), "--out-dir", str(tmp_path / "o"),
            "--levels", "4", "--samples", "1"]
    assert main([*args, "--labels", str(tmp_path / "bad_labels.nii.gz")]) == 2
    assert "not integers" in capsys.readouterr().err
    model, meta = tiny_drdm(3)
    three_d = save_drdm(model, tmp_path / "tiny3d.safetensors", meta=meta)
    assert main([*args, "--weights", str(three_d)]) == 2
    err = capsys.readouterr().err
    assert "deformdiff: error:" in err and "3D" in err and "2D" in err
    assert not (tmp_path / "o").exists()


def test_a_resume_says_what_it_made_and_needs_an_export_to_resume(folder, tmp_path, weights, capsys):
    """A resume reports the samples made now apart from those it found; a damaged sample is said on
    one warning line; --resume of a folder that does not exist is refused, nothing written."""
    path, _, _ = weights
    out = tmp_path / "part"
    args = ["generate", "drdm", "--image", str(folder / "p1.nii.gz"), "--levels", "3", "--samples", "3",
            "--out-dir", str(out), "--weights", str(path), "--device", "cpu"]
    assert main(args) == 0
    rows = read_manifest(out / "manifest.csv")
    (out / rows[1]["image"]).unlink()  # damaged: made again on resume
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 sample(s)" in captured.out and "1 made now" in captured.out
    assert f"deformdiff: warning: {rows[1]['id']}:" in captured.err and "made again" in captured.err
    assert (out / rows[1]["image"]).is_file()
    missing = tmp_path / "never"
    assert main([*args[:-6], "--out-dir", str(missing), *args[-4:], "--resume"]) == 2
    assert "does not exist, so there is no export to resume" in capsys.readouterr().err
    assert not missing.exists()


def test_overwrite_leaves_only_the_new_export(folder, tmp_path, weights):
    """--overwrite with a smaller plan: the earlier samples it does not make again go with the old
    manifest's listing; a file the export did not write stays."""
    path, _, _ = weights
    out = tmp_path / "again"
    args = ["generate", "drdm", "--image", str(folder / "p1.nii.gz"), "--labels", str(folder / "p1_gt.nii.gz"),
            "--out-dir", str(out), "--weights", str(path), "--device", "cpu"]
    assert main([*args, "--levels", "3:6:3", "--samples", "2"]) == 0
    assert len(read_manifest(out / "manifest.csv")) == 4
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--levels", "3", "--samples", "1", "--overwrite"]) == 0
    rows = read_manifest(out / "manifest.csv")
    assert [r["id"] for r in rows] == ["p1_L03_s000"]
    listed = {rows[0][role] for role in ("image", "labels", "field")}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.csv", "notes.txt"}
