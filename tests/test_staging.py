"""A command's outputs appear together or not at all: staged writes, Ctrl-C and failures part-way."""

from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import numpy as np
import pytest

from napari_deformdiff.cli import main
from napari_deformdiff.core.errors import OutputExistsError
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume, atomic, write_volume
from napari_deformdiff.core.io.atomic import atomic_output, staged

from .ddm_helpers import tiny_model as tiny_ddm_model
from .modiff_helpers import tiny_model as tiny_modiff_model


def files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def entries(folder: Path) -> set:
    """Every file and folder below `folder` (hidden temporaries included)."""
    return {p.relative_to(folder) for p in folder.rglob("*")}


def write_text(path: Path, text: str, *, overwrite: bool = False) -> None:
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_a_failure_after_the_first_of_three_outputs_leaves_none(tmp_path, exc):
    names = [tmp_path / n for n in ("a.txt", "b.nii.gz", "c.csv")]
    with pytest.raises(type(exc)):
        with staged():
            write_text(names[0], "first")
            raise exc
    assert entries(tmp_path) == set()
    with pytest.raises(type(exc)):
        with staged():
            write_text(names[0], "first")
            write_text(names[1], "second")
            with atomic_output(names[2]) as tmp:
                tmp.write_text("half")
                raise exc
    assert entries(tmp_path) == set()  # no output and no hidden temporary


def test_staged_outputs_appear_only_at_the_end_and_all_together(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with staged():
        write_text(a, "A")
        assert not a.exists()  # still a hidden temporary
        write_text(b, "B")
        assert {p.name.startswith(".") for p in tmp_path.iterdir()} == {True}
    assert (a.read_text(), b.read_text()) == ("A", "B") and entries(tmp_path) == {Path("a.txt"), Path("b.txt")}


def test_a_move_failing_part_way_undoes_the_moves_before_it(tmp_path, monkeypatch):
    old = tmp_path / "old.txt"
    old.write_text("previous bytes")
    new = tmp_path / "new.txt"
    real_link, real_replace = os.link, os.replace
    calls = []

    def link(src, dst):
        calls.append(dst)
        if Path(dst).name == "z.txt":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_link(src, dst)

    monkeypatch.setattr(atomic, "os", types.SimpleNamespace(link=link, replace=real_replace))
    with pytest.raises(OSError):
        with staged():
            write_text(new, "new")
            write_text(old, "replacement", overwrite=True)
            write_text(tmp_path / "z.txt", "z")
    assert len(calls) == 2  # new.txt moved, z.txt failed: new.txt taken back, old.txt restored
    assert files(tmp_path) == {Path("old.txt"): b"previous bytes"} and entries(tmp_path) == {Path("old.txt")}


def test_the_same_file_twice_in_one_command_is_refused(tmp_path):
    with pytest.raises(Exception, match="written twice"):
        with staged():
            write_text(tmp_path / "a.txt", "1", overwrite=True)
            write_text(tmp_path / "./a.txt", "2", overwrite=True)
    assert entries(tmp_path) == set()


def test_a_file_appearing_meanwhile_is_not_replaced_and_nothing_is_written(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with pytest.raises(OutputExistsError):
        with staged():
            write_text(a, "ours")
            write_text(b, "ours")
            b.write_text("someone else's")
    assert files(tmp_path) == {Path("b.txt"): b"someone else's"}


def image(path: Path, shape=(6, 8, 10)) -> Path:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return write_volume(Volume(data, Geometry.identity(len(shape)), False), path)


def interrupt_on_call(monkeypatch, module, name: str, when: int = 1):
    """`module.name` works as before, but its call number `when` (0-based) raises KeyboardInterrupt."""
    real = getattr(module, name)
    count = [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > when:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)
    return count


def assert_interrupted(argv, tmp_path, capsys, new_paths):
    capsys.readouterr()
    before = files(tmp_path)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "deformdiff: interrupted"
    assert [ln for ln in err.splitlines() if ln.startswith("deformdiff")] == ["deformdiff: interrupted"]
    assert "Traceback" not in err
    assert files(tmp_path) == before  # inputs byte-identical, nothing new, no temporary
    for p in new_paths:
        assert not p.exists()


def test_ctrl_c_in_generate_ddm_after_the_image_leaves_no_output(tmp_path, monkeypatch, capsys):
    from napari_deformdiff.core.ddm.weights import save_ddm
    from napari_deformdiff.core.io import fields

    w = save_ddm(tiny_ddm_model(3, seed=1), tmp_path / "w.safetensors")
    a = image(tmp_path / "a.nrrd")
    b = write_volume(Volume(np.arange(480, dtype=np.float32).reshape(6, 8, 10)[:, ::-1].copy(),
                            Geometry.identity(3), False), tmp_path / "b.nrrd")  # source = target is refused
    write_volume(Volume(np.ones((6, 8, 10), np.uint8), Geometry.identity(3), True), tmp_path / "l.nrrd")
    outs = [tmp_path / "o.nii.gz", tmp_path / "f.nii.gz", tmp_path / "ol.nii.gz"]
    count = interrupt_on_call(monkeypatch, fields, "atomic_output", when=0)  # the fields, after the 4D image
    assert_interrupted(["generate", "ddm", "--source", str(a), "--target", str(b), "--labels",
                        str(tmp_path / "l.nrrd"), "--frames", "2", "--weights", str(w), "--out", str(outs[0]),
                        "--fields-out", str(outs[1]), "--labels-out", str(outs[2])], tmp_path, capsys, outs)
    assert count[0] == 1
    monkeypatch.undo()
    assert main(["generate", "ddm", "--source", str(a), "--target", str(b), "--labels", str(tmp_path / "l.nrrd"),
                 "--frames", "2", "--weights", str(w), "--out", str(outs[0]), "--fields-out", str(outs[1]),
                 "--labels-out", str(outs[2])]) == 0
    assert all(p.is_file() for p in outs)


def test_ctrl_c_in_generate_modiff_after_the_forecast_leaves_no_output(tmp_path, monkeypatch, capsys):
    from napari_deformdiff.core.io import fields
    from napari_deformdiff.core.modiff.weights import save_modiff

    w = save_modiff(tiny_modiff_model(3, seed=5), tmp_path / "m.safetensors")
    first = image(tmp_path / "first.nrrd", (10, 20, 18))
    outs = [tmp_path / "seq.nii.gz", tmp_path / "diff.nii.gz"]
    count = interrupt_on_call(monkeypatch, fields, "atomic_output", when=0)  # the fields, after the forecast
    assert_interrupted(["generate", "modiff", "--first", str(first), "--frames", "3", "--steps", "2",
                        "--weights", str(w), "--out", str(outs[0]), "--fields-out", str(outs[1])],
                       tmp_path, capsys, outs)
    assert count[0] == 1


def test_ctrl_c_in_phantom_after_the_first_case_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from napari_deformdiff.core.phantom import dataset

    count = interrupt_on_call(monkeypatch, dataset, "write_acdc_patient", when=1)
    assert_interrupted(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4", "--cases", "2"],
                       tmp_path, capsys, [tmp_path / "ds"])
    assert count[0] == 2 and entries(tmp_path) == set()


def test_phantom_into_an_existing_empty_folder_keeps_the_folder_on_failure(tmp_path, monkeypatch, capsys):
    from napari_deformdiff.core.phantom import dataset

    (tmp_path / "ds").mkdir()
    interrupt_on_call(monkeypatch, dataset, "write_acdc_patient", when=1)
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4", "--cases", "2"]) == 130
    assert entries(tmp_path) == {Path("ds")}


def test_cancelling_the_phantom_generator_removes_what_it_wrote(tmp_path):
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    events = write_phantom_dataset(tmp_path / "ds", cases=3, two_d=True, frames=4)
    for k, _ in enumerate(events):
        if k == 3:  # Plan, case 1, case 2, case 3 (not yet written): two cases staged
            break
    assert len([p for p in (tmp_path / "ds").rglob("*") if p.is_file()]) > 0  # staged temporaries
    events.close()  # what a GUI cancel does
    assert entries(tmp_path) == set()


def test_disk_full_in_phantom_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    def fail(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    monkeypatch.setattr(atomic, "os", types.SimpleNamespace(link=fail, replace=fail))
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4"]) == 2
    assert "disk full" in capsys.readouterr().err and entries(tmp_path) == set()


def test_ctrl_c_in_convert_leaves_no_output(tmp_path, monkeypatch, capsys):
    import SimpleITK

    a = image(tmp_path / "a.nii.gz")
    interrupt_on_call(monkeypatch, SimpleITK, "WriteImage", when=0)
    assert_interrupted(["convert", str(a), str(tmp_path / "b.nrrd")], tmp_path, capsys, [tmp_path / "b.nrrd"])


def test_disk_full_while_training_is_one_line_and_leaves_no_checkpoint(tmp_path, monkeypatch, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4", "--seed", "3"]) == 0

    def fail(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    monkeypatch.setattr(atomic, "os", types.SimpleNamespace(link=fail, replace=fail))
    before = files(tmp_path)
    capsys.readouterr()
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(ckpt), "--steps", "1",
                 "--crop", "32,32"]) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("deformdiff")] == \
        [f"deformdiff: error: cannot use {ckpt}: no space left on the device (disk full)"]
    assert files(tmp_path) == before and not ckpt.exists()
    assert not list(tmp_path.glob(".*"))


def test_a_failing_optimizer_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import torch

    from napari_deformdiff.core.nn import optim_step

    path = tmp_path / "m.safetensors.optim.pt"
    path.write_bytes(b"the previous state")

    def half_then_full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError):
        optim_step.save_optimizer({"state": {}}, path)
    assert files(tmp_path) == {Path(path.name): b"the previous state"}


def test_ctrl_c_while_training_saves_leaves_no_partial_checkpoint(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4", "--seed", "3"]) == 0

    def half_then_ctrl_c(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_ctrl_c)
    ckpt = tmp_path / "m.safetensors"
    assert_interrupted(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(ckpt), "--steps", "1",
                        "--crop", "32,32"], tmp_path, capsys, [ckpt, tmp_path / "m.safetensors.optim.pt"])
    assert not list(tmp_path.glob(".*"))


def test_checkpoint_and_optimizer_state_are_saved_together(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the optimizer state is saved: the checkpoint written just before it goes too."""
    import torch

    assert main(["phantom", "--out", str(tmp_path / "ds"), "--2d", "--frames", "4", "--seed", "3"]) == 0
    ckpt = tmp_path / "m.safetensors"
    interrupt_on_call(monkeypatch, torch, "save", when=0)
    before = files(tmp_path)
    assert main(["train", "ddm", "--data", str(tmp_path / "ds"), "--out", str(ckpt), "--steps", "1",
                 "--crop", "32,32"]) == 130
    assert files(tmp_path) == before and not ckpt.exists()
    assert not list(tmp_path.glob(".*"))


def test_wrote_is_said_only_once_the_files_are_in_place(tmp_path, monkeypatch, capsys):
    a = image(tmp_path / "a.nii.gz")
    assert main(["convert", str(a), str(tmp_path / "b.nrrd")]) == 0
    assert f"wrote {tmp_path / 'b.nrrd'}" in capsys.readouterr().out

    def fail(src, dst, *args, **kwargs):  # the final move of the staged files fails: disk full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    monkeypatch.setattr(atomic, "os", types.SimpleNamespace(link=fail, replace=fail))
    assert main(["convert", str(a), str(tmp_path / "c.nrrd")]) == 2
    out, err = capsys.readouterr()
    assert "wrote" not in out and "disk full" in err and not (tmp_path / "c.nrrd").exists()
