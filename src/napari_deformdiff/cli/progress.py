"""The one progress style of every command, and helpers the commands share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ..core.errors import InputError
from .paths import check_outputs


def _progress(events: Iterable, *, desc: str):
    """Consume core events with one tqdm bar sized by the generator's Plan; returns the events."""
    from tqdm import tqdm

    from ..core.events import RunProgress

    seen = []
    state = RunProgress()
    bar = None  # made with the first event: an input refused before it leaves one error line, no empty bar
    try:
        for event in events:
            if bar is None:
                bar = tqdm(total=None, desc=desc, unit="step", file=sys.stderr)
            seen.append(event)
            if state.update(event):
                bar.total = state.total
                bar.n = state.done
                bar.set_postfix_str(state.message, refresh=False)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return seen


def _train(events: Iterable, world, *, desc: str) -> None:
    """Run a training generator: rank 0 shows its progress, the other ranks train quietly."""
    if world.main:
        _progress(events, desc=desc)
    else:
        for _ in events:
            pass


def _report_trained(world, out) -> int:
    if world.main:
        print(f"wrote {out}")
    return 0


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        sizes = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"expected sizes like 32,64,64, got {text!r}") from None
    check_grid(sizes, text)
    return sizes


GRID_SIDE_LIMIT = 4096  # as for checkpoint grids (core/nn/config_json.py)


def check_grid(sizes: tuple[int, ...], text: str) -> None:
    """Sizes given on the command line: each 1..4096, one float32 field of them at most 4 GiB."""
    import math

    from ..core.nn.config_json import GRID_LIMIT_BYTES

    if not 1 <= len(sizes) <= 3 or not all(1 <= s <= GRID_SIDE_LIMIT for s in sizes):
        raise InputError(f"sizes {text!r}: give 1 to 3 sizes, each in 1..{GRID_SIDE_LIMIT}.")
    side = sizes * 2 if len(sizes) == 1 else sizes  # one size: a square here, its cube checked where it is made
    need = math.prod(side) * len(side) * 4
    if need > GRID_LIMIT_BYTES:
        raise InputError(f"sizes {text!r}: one displacement field would need {need / 2**30:.1f} GiB "
                         f"(limit {GRID_LIMIT_BYTES >> 30} GiB); refused before allocating.")


def _per_stage(text: str | None, kind=int) -> dict:
    """'vae=800,tddm=1500' -> {"vae": 800, "tddm": 1500}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = kind(value)
        except ValueError:
            sep = ""
        if not sep or key.strip() not in ("vae", "tddm", "video"):
            raise InputError(f"expected stage=value pairs for vae, tddm, video, like vae=800,video=1500; got {item!r}")
    return out


def _check_outputs(paths, overwrite: bool, inputs=()) -> None:
    """Outputs exist only with --overwrite, never collide, never replace an input (see paths.py)."""
    check_outputs(paths, inputs, overwrite=overwrite)


SEED_LIMIT = 2**63  # torch and numpy take seeds below this


def seed_type(text: str) -> int:
    """argparse type of every --seed: an integer 0 <= seed < 2**63."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed must be 0 <= seed < 2**63, got {text}")
    return value


def bounded_int(low: int, high: int):
    """argparse type: an integer in low..high (both included)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value
    parse.__name__ = f"integer {low}..{high}"
    return parse


def _table_and_csv(table: str, results: list, write_csv, csv, overwrite: bool) -> int:
    """An evaluation's end: print its table, write its per-item results to --csv if given."""
    print(table)
    if csv:
        write_csv(results, csv, overwrite=overwrite)
        print(f"wrote {csv}")
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    """--device, --seed and --overwrite, shared by the model commands."""
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=seed_type, default=0, help="0 <= seed < 2**63")
    p.add_argument("--overwrite", action="store_true", help="allow replacing existing outputs")
