"""`deformdiff weights list|fetch`: named third-party weights."""

from __future__ import annotations

import argparse


def cmd_weights_list(args: argparse.Namespace) -> int:
    from ..core.weights import registry as wr

    print(f"cache folder: {wr.cache_dir()} (set {wr.CACHE_ENV} to change it)")
    for name, e in sorted(wr.REGISTRY.items()):
        state = "cached" if wr.is_cached(name) else "not cached"
        print(f"{name}: {e.description} [{state}, {e.size / 1e6:.1f} MB]")
        print(f"  licence: {e.licence}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from ..core.weights import registry as wr

    was_cached = wr.is_cached(args.name)
    path = wr.fetch(args.name, report=print)
    if was_cached:
        print(f"{args.name} is already in the cache: {path}")
    return 0


def add_commands(sub) -> None:
    """`weights` and its actions, on the top-level subparsers."""
    weights = sub.add_parser("weights", help="list or download named third-party weights").add_subparsers(
        dest="action", required=True)
    p = weights.add_parser("list", help="the known weights, their licence and whether they are cached")
    p.set_defaults(func=cmd_weights_list)
    p = weights.add_parser("fetch", help="download named weights into the cache (sha256 checked)")
    p.add_argument("name", help="e.g. drdm-cmr-2d")
    p.set_defaults(func=cmd_weights_fetch)
