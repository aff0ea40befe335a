"""Bad input ends in one line on stderr (exit 2), or exit 130 / 1; nothing is written, inputs keep their bytes."""

from __future__ import annotations

import errno
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

from napari_deformdiff.cli import main
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume, atomic, write_volume

from .ddm_helpers import tiny_model


def image(path: Path, shape=(6, 8, 10), flip: bool = False) -> Path:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    data = data[..., ::-1].copy() if flip else data
    return write_volume(Volume(data, Geometry.identity(len(shape)), False), path)


def tiny_ddm(path: Path) -> Path:
    from napari_deformdiff.core.ddm.weights import save_ddm

    return save_ddm(tiny_model(3, seed=1), path)


def checkpoint(path: Path, model: str, config) -> Path:
    import torch
    from safetensors.torch import save_file

    meta = {"model": model} if config is None else {"model": model, "config": config}
    save_file({"w": torch.zeros(1)}, str(path), metadata=meta)
    return path


def failing_writes(monkeypatch, code: int) -> None:
    """The final link/rename of every atomic output fails with `code` (disk full, read-only, ...)."""
    def fail(src, dst, *a, **k):
        raise OSError(code, os.strerror(code), str(dst))
    monkeypatch.setattr(atomic, "os", types.SimpleNamespace(link=fail, replace=fail))


def mhd(folder: Path, data_file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.mhd").write_text("ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_UCHAR\n"
                                  f"ElementDataFile = {data_file}\n")
    return folder / "x.mhd"


def nhdr(folder: Path, data_file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.nhdr").write_text("NRRD0004\ntype: uint8\ndimension: 2\nsizes: 2 2\nencoding: raw\n"
                                   f"data file: {data_file}\n")
    return folder / "x.nhdr"


def acdc(tmp_path: Path, ed: str) -> Path:
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4"]) == 0
    patient = tmp_path / "ds" / "patient001"
    info = patient / "Info.cfg"
    info.write_text("".join(f"ED: {ed}\n" if ln.startswith("ED:") else ln + "\n"
                            for ln in info.read_text().splitlines()))
    return patient


# Each case: (tmp_path, monkeypatch) -> (argv, exit code, stderr fragment, outputs that must not exist).
def out_is_source(t, m):
    a = image(t / "a.nrrd")
    return ["generate", "ddm", "--source", str(a), "--target", str(image(t / "b.nrrd", flip=True)), "--out", str(a),
            "--overwrite"], 2, "is an input of this command", []


def out_through_dotdot(t, m):
    (t / "out").mkdir()
    a = image(t / "out" / "x.nrrd")
    return ["generate", "modiff", "--first", str(a), "--frames", "4", "--out", str(t / "out" / ".." / "out" /
            "x.nrrd"), "--overwrite"], 2, "is an input of this command", []


def convert_onto_itself(t, m):
    a = image(t / "a.nrrd")
    return ["convert", str(a), str(a), "--overwrite"], 2, "is an input of this command", []


def convert_onto_hard_link(t, m):
    a = image(t / "a.nrrd")
    os.link(a, t / "b.nrrd")
    return ["convert", str(a), str(t / "b.nrrd"), "--overwrite"], 2, "is an input of this command", []


def out_equals_fields_out(t, m):
    return ["generate", "ddm", "--source", str(image(t / "a.nrrd")), "--target", str(image(t / "b.nrrd", flip=True)),
            "--out", str(t / "o.nii.gz"), "--fields-out", str(t / "o.nii.gz")], 2, "name the same output", \
        [t / "o.nii.gz"]


def out_is_a_folder(t, m):
    (t / "dir.nrrd").mkdir()
    return ["convert", str(image(t / "a.nrrd")), str(t / "dir.nrrd"), "--overwrite"], 2, "is a folder", []


def name_of_300_characters(t, m):
    long = t / ("x" * 300 + ".nrrd")
    return ["convert", str(image(t / "a.nrrd")), str(long)], 2, "at most 255", []


def disk_full_convert(t, m):
    a = image(t / "a.nrrd")
    failing_writes(m, errno.ENOSPC)
    return ["convert", str(a), str(t / "b.nii.gz")], 2, "disk full", [t / "b.nii.gz"]


def read_only_convert(t, m):
    a = image(t / "a.nrrd")
    failing_writes(m, errno.EROFS)
    return ["convert", str(a), str(t / "b.mha")], 2, "read-only", [t / "b.mha"]


def permission_phantom(t, m):
    failing_writes(m, errno.EACCES)
    return ["phantom", "--out", str(t / "ds"), "--2d", "--frames", "4"], 2, "permission denied", \
        [t / "ds" / "patient001" / "patient001_4d.nii.gz"]


def disk_full_ddm(t, m):
    w, a, b = tiny_ddm(t / "w.safetensors"), image(t / "a.nrrd"), image(t / "b.nrrd", flip=True)
    failing_writes(m, errno.ENOSPC)
    return ["generate", "ddm", "--source", str(a), "--target", str(b),
            "--frames", "2", "--weights", str(w), "--out", str(t / "o.nii.gz")], 2, "disk full", [t / "o.nii.gz"]


def mhd_outside(t, m):
    (t / "secret.raw").write_bytes(b"\1\2\3\4")
    return ["info", str(mhd(t / "h", "../secret.raw"))], 2, "outside the header's folder", []


def mhd_absolute(t, m):
    (t / "secret.raw").write_bytes(b"\1\2\3\4")
    return ["info", str(mhd(t / "h", str(t / "secret.raw")))], 2, "outside the header's folder", []


def nhdr_outside(t, m):
    (t / "secret.raw").write_bytes(b"\1\2\3\4")
    return ["info", str(nhdr(t / "h", "../secret.raw"))], 2, "outside the header's folder", []


def nhdr_list_outside(t, m):
    (t / "secret.raw").write_bytes(b"\1\2\3\4")
    return ["info", str(nhdr(t / "h", "LIST\n../secret.raw"))], 2, "outside the header's folder", []


def bool_nifti(t, m):
    import struct

    path = write_volume(Volume(np.zeros((3, 4, 4), np.uint8), Geometry.identity(3), True), t / "m.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<hh", raw, 70, 1, 1)  # datatype DT_BINARY, bitpix 1
    path.write_bytes(bytes(raw))
    return ["info", str(path)], 2, "datatype 1", []


def ed_infinite(t, m):
    return ["generate", "ddm", "--patient", str(acdc(t, "inf")), "--out", str(t / "o.nii.gz")], 2, \
        "no valid 'ED:'", [t / "o.nii.gz"]


def ed_fraction(t, m):
    return ["generate", "ddm", "--patient", str(acdc(t, "1.9")), "--out", str(t / "o.nii.gz")], 2, \
        "no valid 'ED:'", [t / "o.nii.gz"]


def ed_after_last_frame(t, m):
    return ["generate", "ddm", "--patient", str(acdc(t, "9")), "--out", str(t / "o.nii.gz")], 2, \
        "outside 1..NbFrame", [t / "o.nii.gz"]


def _ddm_with_weights(t, w):
    return ["generate", "ddm", "--source", str(image(t / "a.nrrd")), "--target", str(image(t / "b.nrrd", flip=True)),
            "--weights", str(w), "--out", str(t / "o.nii.gz")]


def ckpt_bad_json(t, m):
    return _ddm_with_weights(t, checkpoint(t / "w.safetensors", "ddm", "{not json")), 2, \
        "unreadable model configuration", [t / "o.nii.gz"]


def ckpt_no_config(t, m):
    return _ddm_with_weights(t, checkpoint(t / "w.safetensors", "ddm", None)), 2, \
        "no model configuration", [t / "o.nii.gz"]


def ckpt_absurd_grid(t, m):
    config = json.dumps({"ndims": 3, "grid": [4096, 4096, 4096]})
    return _ddm_with_weights(t, checkpoint(t / "w.safetensors", "ddm", config)), 2, \
        "grid 4096x4096x4096 would need 768.0 GiB", [t / "o.nii.gz"]


def ckpt_absurd_channels(t, m):
    config = json.dumps({"ndims": 3, "inner_channel": 10**9})
    return _ddm_with_weights(t, checkpoint(t / "w.safetensors", "ddm", config)), 2, \
        "inner_channel = 1000000000 is outside", [t / "o.nii.gz"]


def modiff_grid_with_frames(t, m):
    config = json.dumps({"ndims": 2, "grid": [4096, 4096], "max_frames": 512})
    w = checkpoint(t / "w.safetensors", "modiff", config)
    return ["generate", "modiff", "--first", str(image(t / "a.nrrd", (8, 8))), "--frames", "4", "--weights",
            str(w), "--out", str(t / "o.nii.gz")], 2, "with 512 frames would need", [t / "o.nii.gz"]


def drdm_bad_json(t, m):
    w = checkpoint(t / "w.safetensors", "drdm", "[1, 2")
    return ["evaluate", "drdm", "--weights", str(w)], 2, "unreadable DRDM metadata", []


def bad_optimizer_state(t, m):
    ckpt = tiny_ddm(t / "m.safetensors")
    (t / "m.safetensors.optim.pt").write_bytes(b"not a torch file")
    return ["train", "ddm", "--data", str(t / "nodata"), "--resume", str(ckpt), "--out", str(ckpt)], 2, \
        "optimizer state beside the checkpoint is unreadable", []


def evaluate_csv_exists(t, m):
    (t / "r.csv").write_text("kept")
    return ["evaluate", "ddm", "--data", str(t / "nodata"), "--csv", str(t / "r.csv")], 2, \
        "r.csv already exists", []  # refused before the data are read (they do not exist here)


def drdm_grid_too_large(t, m):
    return ["train", "drdm", "--data", "phantom", "--ndims", "3", "--grid", "4096,4096,4096",
            "--out", str(t / "m.safetensors")], 2, "would need 768.0 GiB", [t / "m.safetensors"]


def drdm_grid_side_out_of_range(t, m):
    return ["train", "drdm", "--data", "phantom", "--grid", "100000,64", "--out", str(t / "m.safetensors")], 2, \
        "each in 1..4096", [t / "m.safetensors"]


def drdm_one_size_is_a_cube_for_3d(t, m):
    return ["evaluate", "drdm", "--ndims", "3", "--size", "4096", "--csv", str(t / "r.csv")], 2, \
        "would need 768.0 GiB", [t / "r.csv"]


CASES = [out_is_source, out_through_dotdot, convert_onto_itself, convert_onto_hard_link, out_equals_fields_out,
         out_is_a_folder, name_of_300_characters, disk_full_convert, read_only_convert, permission_phantom,
         disk_full_ddm, mhd_outside, mhd_absolute, nhdr_outside, nhdr_list_outside, bool_nifti, ed_infinite,
         ed_fraction, ed_after_last_frame, ckpt_bad_json, ckpt_no_config, ckpt_absurd_grid, ckpt_absurd_channels,
         modiff_grid_with_frames, drdm_bad_json, bad_optimizer_state, evaluate_csv_exists, drdm_grid_too_large,
         drdm_grid_side_out_of_range, drdm_one_size_is_a_cube_for_3d]


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    argv, code, fragment, absent = case(tmp_path, monkeypatch)
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("deformdiff:")]
    assert len(errors) == 1 and errors[0].startswith("deformdiff: error: "), err
    assert fragment in errors[0]
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # no new file, no partial file, every input byte-identical
    for p in absent:
        assert not p.exists()


# argparse refuses these before the command runs: exit 2, its usage line and one error line.
PARSE_CASES = [
    (["generate", "modiff", "--first", "a.nrrd", "--frames", "4", "--out", "o.nrrd", "--seed", str(2**70)],
     "0 <= seed < 2**63"),
    (["generate", "ddm", "--source", "a", "--target", "b", "--out", "o.nrrd", "--adapt", "3", "--seed", str(2**70)],
     "0 <= seed < 2**63"),
    (["generate", "modiff", "--first", "a.nrrd", "--frames", "4", "--out", "o.nrrd", "--seed", "-1"],
     "0 <= seed < 2**63"),
    (["phantom", "--out", "ds", "--seed", "-1"], "0 <= seed < 2**63"),
    (["generate", "drdm", "--image", "a.nrrd", "--out-dir", "d", "--seed", str(2**63)], "0 <= seed < 2**63"),
    (["phantom", "--out", "ds", "--frames", "100000"], "must be in 2..512"),
    (["phantom", "--out", "ds", "--cases", "0"], "must be in 1..10000"),
]


@pytest.mark.parametrize("argv,fragment", PARSE_CASES, ids=[f"parse{k}" for k in range(len(PARSE_CASES))])
def test_limits_are_refused_while_parsing(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_seed_at_the_limit_is_accepted(tmp_path):
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4", "--seed", str(2**63 - 2)]) == 0
    assert main(["phantom", "--out", str(tmp_path / "ds2"), "--2d", "--cases", "2", "--seed", str(2**63 - 1)]) == 2


def test_data_inside_the_header_folder_reads_and_external_data_needs_the_flag(tmp_path, capsys):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "x.raw").write_bytes(b"\1\2\3\4")
    assert main(["info", str(mhd(tmp_path / "h", "x.raw"))]) == 0
    (tmp_path / "secret.raw").write_bytes(b"\5\6\7\10")
    outside = mhd(tmp_path / "h2", "../secret.raw")
    assert main(["info", str(outside)]) == 2
    capsys.readouterr()
    assert main(["--allow-external-data", "info", str(outside)]) == 0
    assert "values 5 .. 8" in capsys.readouterr().out
    assert main(["info", str(outside)]) == 2  # the flag does not outlive its command


def _convert_raising(monkeypatch, exc):
    from napari_deformdiff.core import io

    def read_volume(*a, **k):
        raise exc
    monkeypatch.setattr(io, "read_volume", read_volume)
    return ["convert", "in.nrrd", "out.nrrd"]


def test_ctrl_c_is_exit_130_without_traceback(monkeypatch, capsys):
    assert main(_convert_raising(monkeypatch, KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "deformdiff: interrupted\n"


def test_memory_error_is_one_line(monkeypatch, capsys):
    assert main(_convert_raising(monkeypatch, MemoryError())) == 2
    err = capsys.readouterr().err
    assert err.startswith("deformdiff: error: out of memory") and err.count("\n") == 1


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    assert main(_convert_raising(monkeypatch, RuntimeError("boom"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "please report it" in err


def test_debug_reraises_everything(monkeypatch):
    with pytest.raises(OSError):
        main(["--debug", *_convert_raising(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))])
