"""Atomic, no-clobber file output: write to a hidden temporary beside the target, then link it in.

Inside `staged()`, every `atomic_output` of the block (in any function it calls) keeps its temporary
until the block ends; then all of them are moved into place together. An exception in the block,
Ctrl-C included, removes every temporary and every folder the block created, so a command leaves
all of its outputs or none.
"""

from __future__ import annotations

import contextvars
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from os import link as _hard_link  # backups of replaced files: not the final move tests make fail
from os.path import realpath
from pathlib import Path

from ..errors import InputError, OutputExistsError

COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz")


def split_suffix(name: str) -> tuple[str, str]:
    """('scan', '.nii.gz') for 'scan.nii.gz'; the suffix keeps its case."""
    lower = name.lower()
    for suffix in COMPOUND_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot and stem else (name, "")


def _hidden(path: Path, tag: str) -> Path:
    stem, suffix = split_suffix(path.name)
    return path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.{tag}{suffix}")


def _place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move a finished temporary to `path`; without `overwrite`, never replace an existing file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: no silent clobbering
    except FileExistsError:
        raise OutputExistsError(f"{path} appeared while writing; it was left untouched.") from None


class Staging:
    """Outputs written as temporaries, moved into place together by `commit`, or all removed by `discard`."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path, bool]] = []  # (temporary, destination, overwrite)
        self.created: list[Path] = []  # folders made for the outputs, removed on discard if empty

    def makedirs(self, folder: str | os.PathLike) -> Path:
        """Create `folder` (and missing parents); `discard` removes the ones it created."""
        folder = Path(folder)
        missing = []
        for f in (folder, *folder.parents):
            if f.is_dir():
                break
            missing.append(f)
        for f in reversed(missing):
            f.mkdir()
            self.created.append(f)
        return folder

    def add(self, tmp: Path, path: Path, overwrite: bool) -> None:
        if any(realpath(path) == realpath(p) for _, p, _ in self.pending):
            tmp.unlink(missing_ok=True)
            raise InputError(f"{path} is written twice by this command; give each output its own name.")
        self.pending.append((tmp, path, overwrite))

    def commit(self) -> list[Path]:
        """Move every temporary into place; if one fails, undo the moves already made."""
        done: list[tuple[Path, Path | None]] = []  # (destination, backup of the file it replaced)
        try:
            for tmp, path, overwrite in self.pending:
                if not overwrite and path.exists():
                    raise OutputExistsError(f"{path} appeared while writing; it was left untouched.")
            for tmp, path, overwrite in self.pending:
                backup = None
                if overwrite and path.is_file():
                    backup = _hidden(path, "previous")
                    _hard_link(path, backup)
                done.append((path, backup))
                try:
                    _place(tmp, path, overwrite)
                except BaseException:
                    done.pop()
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    raise
        except BaseException:
            for path, backup in reversed(done):
                if backup is not None:
                    backup.replace(path)
                else:
                    path.unlink(missing_ok=True)
            self.discard()
            raise
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)
        written = [path for _, path, _ in self.pending]
        self.discard()
        return written

    def discard(self) -> None:
        """Remove every temporary, then the folders created for them that are left empty."""
        for tmp, _, _ in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending = []
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:  # not empty: it holds files that are not ours
                pass
        self.created = []

    @contextmanager
    def collecting(self) -> Iterator[Staging]:
        """Within this block, `atomic_output` adds to this staging (for generators: never across a yield)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)


_CURRENT: contextvars.ContextVar[Staging | None] = contextvars.ContextVar("deformdiff_staging", default=None)


def current_staging() -> Staging | None:
    return _CURRENT.get()


@contextmanager
def staged() -> Iterator[Staging]:
    """All outputs written in the block appear together at its end, or none on any exception.

    Inside an enclosing `staged()`, the block joins it: the outermost one moves everything.
    """
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    stage = Staging()
    try:
        with stage.collecting():
            yield stage
    except BaseException:
        stage.discard()
        raise
    stage.commit()


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it becomes `path`, on failure it vanishes.

    Without `overwrite`, an existing `path` is never replaced, even if it appears while writing.
    Inside `staged()`, the move waits for the end of the staged block.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; choose another name or ask to overwrite it."
        )
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path.name}: folder {path.parent} does not exist.")
    tmp = _hidden(path, "partial")
    stage = _CURRENT.get()
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced no file for {path}")
        if stage is not None:
            stage.add(tmp, path, overwrite)
            tmp = None
        else:
            _place(tmp, path, overwrite)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
