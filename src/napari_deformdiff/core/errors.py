"""Errors that carry a message meant for the user (shown as-is in napari and the CLI)."""

import errno
import os


class InputError(ValueError):
    """The user's input (file, layer, parameter) cannot be used; the message says why and what to do."""


class OutputExistsError(FileExistsError):
    """A write would replace an existing file and overwriting was not asked for."""


_CAUSES = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.EIO: "input/output error",
    errno.EFBIG: "the file is too large",
}


def os_error_message(exc: OSError) -> str:
    """'cannot use PATH: CAUSE' for any OSError, whatever raised it (the CLI's and the GUI's wording)."""
    cause = _CAUSES.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) for p in paths)
    return f"cannot use {where}: {cause}" if where else f"{cause} ({type(exc).__name__})"
