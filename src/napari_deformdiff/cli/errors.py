"""The one place that turns an exception into what the user sees and the exit code."""

from __future__ import annotations

import sys
import traceback

from ..core.errors import InputError, OutputExistsError, os_error_message

EXIT_ERROR = 2  # the user's input, files or machine: a one-line message
EXIT_BUG = 1  # anything else: a bug, reported with its traceback
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


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
