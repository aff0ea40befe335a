"""`python -m napari_deformdiff.cli ...` runs the `deformdiff` command."""

import sys

from .main import main

sys.exit(main())
