"""Atomic, no-clobber file output: write to a hidden temporary beside the target, then link it in."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it becomes `path`, on failure it vanishes.

    Without `overwrite`, an existing `path` is never replaced, even if it appears while writing.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; choose another name or ask to overwrite it."
        )
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path.name}: folder {path.parent} does not exist.")
    stem, suffix = split_suffix(path.name)
    tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.partial{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"writer produced no file for {path}")
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: no silent clobbering
            except FileExistsError:
                raise OutputExistsError(
                    f"{path} appeared while writing; it was left untouched."
                ) from None
    finally:
        tmp.unlink(missing_ok=True)
