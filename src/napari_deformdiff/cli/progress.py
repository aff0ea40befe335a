"""The one progress style of every command, and helpers the commands share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ..core.errors import InputError, OutputExistsError


def _progress(events: Iterable, *, desc: str):
    """Consume core events with one tqdm bar sized by the generator's Plan; returns the events."""
    from tqdm import tqdm

    from ..core.events import RunProgress

    seen = []
    state = RunProgress()
    with tqdm(total=None, desc=desc, unit="step", file=sys.stderr) as bar:
        for event in events:
            seen.append(event)
            if state.update(event):
                bar.total = state.total
                bar.n = state.done
                bar.set_postfix_str(state.message, refresh=False)
                bar.refresh()
    return seen


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"expected sizes like 32,64,64, got {text!r}") from None


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


def _check_outputs(paths, overwrite: bool) -> None:
    for p in paths:
        if p is not None and p.exists() and not overwrite:
            raise OutputExistsError(f"{p} already exists; choose another name or pass --overwrite.")


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="allow replacing existing outputs")
