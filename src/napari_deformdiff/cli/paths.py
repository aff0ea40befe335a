"""Checks on a command's output paths, made before anything is read or written."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import InputError, OutputExistsError

NAME_MAX = 255  # bytes per path component on Linux, macOS and Windows file systems


def unless_resumed(out: Path, resume: Path | None) -> Path | None:
    """`out`, or None when training continues `out` itself (the trainer reads it before saving)."""
    return None if resume is not None and _same(out, resume) else out


def _same(a: Path, b: Path) -> bool:
    """Same file: the same resolved path, or (hard links) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _read_from(path: Path, folder: Path) -> bool:
    """An existing image file (or Info.cfg) below an input folder: the command may read it."""
    from ..core.io.acdc import INFO_FILE
    from ..core.io.dispatch import READ_SUFFIXES, suffix_of

    real, top = os.path.realpath(path), os.path.realpath(folder)
    if real == top or not real.startswith(top.rstrip(os.sep) + os.sep):
        return False
    return path.name == INFO_FILE or suffix_of(path) in READ_SUFFIXES


def check_name(path: Path, what: str = "output") -> None:
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise InputError(f"{what} {str(path)[:60]}...: a name in this path is {len(os.fsencode(part))} "
                             f"bytes long; file systems allow at most {NAME_MAX}.")


def check_outputs(outputs: Iterable[Path | None], inputs: Iterable[Path | None] = (), *,
                  overwrite: bool = False, folders: Iterable[Path | None] = ()) -> None:
    """Refuse, before any write, outputs that replace an input, collide, are folders or exist.

    `outputs` are files; `folders` are output folders (their existing files are checked by the
    command); an input folder protects the image files below it.
    """
    outputs = [Path(p) for p in outputs if p is not None]
    inputs = [Path(p) for p in inputs if p is not None]
    for p in [*outputs, *(Path(f) for f in folders if f is not None)]:
        check_name(p)
    for k, out in enumerate(outputs):
        for other in outputs[:k]:
            if _same(out, other):
                raise InputError(f"{other} and {out} name the same output file; give each output its own name.")
    for out in outputs:
        if out.is_dir():
            raise InputError(f"{out} is a folder; give a file name for this output.")
        for src in inputs:
            if _same(out, src) or (src.is_dir() and out.is_file() and _read_from(out, src)):
                raise InputError(f"{out} is an input of this command ({src}); an output never replaces its "
                                 "input, even with --overwrite: choose another name.")
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} already exists; choose another name or pass --overwrite.")
        if not out.parent.is_dir():
            raise InputError(f"cannot write {out.name}: folder {out.parent} does not exist.")


def check_volume_outputs(outputs: Iterable[Path | None]) -> None:
    """Image, label and field outputs need a suffix a volume can be written as (before any work)."""
    from ..core.io import WRITE_SUFFIXES
    from ..core.io.dispatch import suffix_of

    for out in (Path(p) for p in outputs if p is not None):
        if suffix_of(out) not in WRITE_SUFFIXES:
            raise InputError(f"cannot write '{out.name}': choose one of " + ", ".join(WRITE_SUFFIXES) + ".")


def check_output_folder_files(folder: Path, names: Iterable[str], inputs: Iterable[Path | None]) -> None:
    """Files an export will write into `folder` must not be any of its inputs."""
    inputs = [Path(p) for p in inputs if p is not None]
    for name in names:
        out = Path(folder) / name
        for src in inputs:
            if _same(out, src):
                raise InputError(f"{out} would be written by this command but is one of its inputs; "
                                 "choose another --out-dir.")
