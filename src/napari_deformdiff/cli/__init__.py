"""`deformdiff` command line: the same core as the napari plugin, headless.

`main` parses and dispatches; each module adds its own subcommands to the parser:
ddm, drdm, modiff (train / generate / evaluate), volumes (info, convert, device, phantom),
weights (list, fetch) and gui. `progress` holds the one progress bar and the shared helpers.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
