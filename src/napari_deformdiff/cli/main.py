"""`deformdiff` entry point: the top-level parser and the error mapping."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

from . import gui, volumes, weights
from .errors import report


# Commands whose outputs are written together (staged, then moved); training saves checkpoints as it
# goes and the DRDM export resumes from its manifest, so they write each file atomically on its own.
STAGED = {("phantom", None), ("convert", None), ("generate", "ddm"), ("generate", "modiff"),
          ("evaluate", "ddm"), ("evaluate", "modiff"), ("evaluate", "drdm")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deformdiff",
        description="Generate and inspect anatomical motion with deformation-based diffusion models.",
    )
    parser.add_argument("--debug", action="store_true", help="on any error, show the full Python traceback")
    parser.add_argument("--allow-external-data", action="store_true",
                        help="let .mhd/.nhdr headers name data files outside their own folder")
    sub = parser.add_subparsers(dest="command", required=True)
    volumes.add_commands(sub)
    train = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    generate = sub.add_parser("generate", help="generate frames with a model").add_subparsers(
        dest="model", required=True)
    evaluate = sub.add_parser("evaluate", help="measure a model on held-out cases").add_subparsers(
        dest="model", required=True)
    for method in method_modules():
        method.add_method_commands(train, generate, evaluate)
    weights.add_commands(sub)
    gui.add_commands(sub)
    return parser


def method_modules() -> list:
    """The generators' CLI modules: every module of this package with add_method_commands."""
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
    modules = [importlib.import_module(f"{__package__}.{name}") for name in names]
    return [m for m in modules if hasattr(m, "add_method_commands")]


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting collapse when another job holds a core (measured:
    # 0.35 s -> 1.4-5.6 s per DRDM step at load 4); torch is imported later, inside the commands.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        from ..core.io.itk import ALLOW_EXTERNAL_DATA

        token = ALLOW_EXTERNAL_DATA.set(args.allow_external_data)
        try:
            if (args.command, getattr(args, "model", None)) not in STAGED:
                return args.func(args)
            return _run_staged(args)
        finally:
            ALLOW_EXTERNAL_DATA.reset(token)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - report() decides: a one-line message, or a bug's traceback
        return report(exc, debug=args.debug if args is not None else "--debug" in argv)


def _run_staged(args: argparse.Namespace) -> int:
    """All of the command's files appear at its end, or none of them; its "wrote ..." lines are
    printed once the files are in place (and dropped if they never get there)."""
    import contextlib
    import io

    from ..core.io.atomic import staged

    out = io.StringIO()
    done = False
    try:
        with contextlib.redirect_stdout(out), staged():
            code = args.func(args)
        done = True
        return code
    finally:
        text = out.getvalue()
        if not done:
            text = "".join(line for line in text.splitlines(True) if not line.startswith("wrote "))
        sys.stdout.write(text)
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
