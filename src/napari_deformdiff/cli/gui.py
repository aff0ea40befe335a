"""`deformdiff gui`: napari with the plugin's widgets and a case."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.errors import InputError

# widget name -> its tab's title
WIDGETS = {"Phantom generator": "Phantom", "Open volume": "Open", "Generate cycle (DDM)": "DDM",
           "Augment (DRDM)": "DRDM", "Forecast (Mo-Diff)": "Mo-Diff", "Inspect deformation": "Inspect",
           "Export": "Export"}


def cmd_gui(args: argparse.Namespace) -> int:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError(
            "no display found (DISPLAY is not set): run this on a desktop session, or under "
            "a virtual one with `xvfb-run -a deformdiff gui ...`."
        )
    import json

    import napari
    from qtpy.QtWidgets import QApplication

    from .._qt.window_fit import fit_to_screen, layout_report

    viewer = napari.Viewer(title="napari-deformdiff")
    docks = [viewer.window.add_plugin_dock_widget("napari-deformdiff", widget, tabify=True)[0]
             for widget in WIDGETS]
    if args.paths:
        viewer.open([str(p) for p in args.paths], plugin="napari-deformdiff")
    elif args.sample != "none":
        viewer.open_sample("napari-deformdiff", args.sample)
    first = list(WIDGETS).index("Generate cycle (DDM)" if args.paths else "Phantom generator")
    fit_to_screen(docks, list(WIDGETS.values()), raised=first)
    QApplication.processEvents()
    viewer.reset_view()
    if args.screenshot:
        QApplication.processEvents()
        viewer.screenshot(str(args.screenshot), canvas_only=False, flash=False)
        print(f"screenshot written to {args.screenshot}")
        print("layout " + json.dumps(layout_report(docks[0].window(), docks)))
    if args.quit:
        viewer.close()
        return 0
    napari.run()
    return 0


def add_commands(sub) -> None:
    """`gui`, on the top-level subparsers."""
    p = sub.add_parser("gui", help="open napari with the plugin's widgets and a case")
    p.add_argument("paths", nargs="*", type=Path, help="files or folders to open (default: a sample)")
    p.add_argument("--sample", choices=["cardiac", "cardiac_2d", "lung", "none"], default="cardiac")
    p.add_argument("--screenshot", type=Path,
                   help="save a window screenshot after loading (and print the window and canvas geometry)")
    p.add_argument("--quit", action="store_true", help="close instead of running the event loop")
    p.set_defaults(func=cmd_gui)
