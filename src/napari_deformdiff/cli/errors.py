"""The one place that turns an exception into what the user sees and the exit code."""

from __future__ import annotations

import errno
import os
import sys
import traceback

from ..core.errors import InputError, OutputExistsError

EXIT_ERROR = 2  # the user's input, files or machine: a one-line message
EXIT_BUG = 1  # anything else: a bug, reported with its traceback
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

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
    """'cannot use PATH: CAUSE' for any OSError, whatever raised it."""
    cause = _CAUSES.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(os.fsdecode(p) for p in paths)
    return f"cannot use {where}: {cause}" if where else f"{cause} ({type(exc).__name__})"


def report(exc: BaseException, *, debug: bool = False, stream=None) -> int:
    """Print `exc` for the user and return the exit code; --debug re-raises it."""
    stream = stream or sys.stderr
    if debug:
        raise exc
    if isinstance(exc, KeyboardInterrupt):
        print("deformdiff: interrupted", file=stream)
        return EXIT_INTERRUPTED
    if isinstance(exc, (InputError, OutputExistsError)):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = os_error_message(exc)
    elif isinstance(exc, MemoryError):
        message = f"out of memory{': ' + str(exc) if str(exc) else ''}; try smaller inputs or sizes."
    else:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
        print("deformdiff: internal error (a bug): please report it with the traceback above and "
              "the command line (rerun with --debug for the same traceback).", file=stream)
        return EXIT_BUG
    print(f"deformdiff: error: {' '.join(message.split())}", file=stream)
    return EXIT_ERROR
