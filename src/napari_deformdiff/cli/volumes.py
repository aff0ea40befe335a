"""Volume commands: phantom, info, convert, device."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import InputError
from .paths import check_name, check_outputs
from .progress import SEED_LIMIT, _progress, bounded_int, seed_type

MAX_FRAMES = 512  # a phantom cine of more frames is refused before allocating it
MAX_CASES = 10000


def one_frame(volume, frame: int | None, option: str, path: Path):
    """`volume` itself, or frame `frame` (0-based) of a time series; a time series needs `option` K."""
    import numpy as np

    from ..core.io import Volume

    if not volume.has_time:
        if frame is not None:
            raise InputError(f"{option} {frame}: {path.name} is not a time series.")
        return volume
    count = volume.data.shape[0]
    if frame is None:
        raise InputError(f"{path.name} has {count} frames; say which one with {option} K (0-based).")
    if not 0 <= frame < count:
        raise InputError(f"{option} {frame} is outside 0..{count - 1}.")
    return Volume(np.array(volume.data[frame]), volume.geometry, volume.is_labels, volume.name, None, volume.source)


def cmd_phantom(args: argparse.Namespace) -> int:
    from ..core.phantom.dataset import write_phantom_dataset

    check_name(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out} is a file; phantom writes a folder of patients.")
    if args.seed + args.cases > SEED_LIMIT:
        raise InputError(f"--seed {args.seed} with --cases {args.cases}: the cases' seeds would pass 2**63.")
    events = write_phantom_dataset(
        args.out, cases=args.cases, seed=args.seed, kind=args.kind, two_d=args.two_d,
        frames=args.frames, image_dtype=args.dtype, fields=args.fields, overwrite=args.overwrite,
    )
    _progress(events, desc=f"{args.kind} phantom")
    print(f"wrote {args.cases} {args.kind} phantom case(s) in ACDC layout to {args.out}")
    return 0


def _print_volume(v) -> None:
    import numpy as np

    from ..core.io.dicom import describe_time

    kind = "label map" if v.is_labels else "image"
    time = f", {v.data.shape[0]} frames" if v.has_time else ""
    dt = f" every {v.time_spacing:g} s" if v.time_spacing else ""
    print(f"{v.name}: {kind}, {v.geometry.ndim}D{time}{dt}, shape {v.data.shape}, {v.data.dtype}")
    print(f"  {v.geometry.describe()}")
    for line in describe_time(v):
        print(f"  {line}")
    finite = v.data[np.isfinite(v.data)] if v.data.dtype.kind == "f" else v.data
    if finite.size:
        print(f"  values {float(finite.min()):g} .. {float(finite.max()):g}")
    if v.is_labels:
        print(f"  labels {sorted(int(x) for x in np.unique(v.data))}")
    for w in v.warnings:
        print(f"  warning: {w}")


def cmd_info(args: argparse.Namespace) -> int:
    from ..core.io import read_path

    for path in args.paths:
        for v in read_path(path):
            _print_volume(v)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..core.io import read_volume, write_volume

    check_outputs([args.output], [args.input], overwrite=args.overwrite)
    as_labels = True if args.labels else (False if args.image else None)
    volume = read_volume(args.input, as_labels=as_labels)
    for w in volume.warnings:
        print(f"warning: {w}", file=sys.stderr)
    write_volume(volume, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    from ..core.device import choose_device_name

    print(choose_device_name(args.device))
    return 0


def add_commands(sub) -> None:
    """phantom, info, convert and device, on the top-level subparsers."""
    p = sub.add_parser("phantom", help="write a seeded phantom dataset in the ACDC folder layout")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--cases", type=bounded_int(1, MAX_CASES), default=1,
                   help=f"number of patients (seed, seed+1, ...), at most {MAX_CASES}")
    p.add_argument("--seed", type=seed_type, default=0, help="0 <= seed < 2**63")
    p.add_argument("--kind", choices=["cardiac", "lung"], default="cardiac")
    p.add_argument("--2d", dest="two_d", action="store_true", help="2D+t: one slice over time")
    p.add_argument("--frames", type=bounded_int(2, MAX_FRAMES), default=None,
                   help=f"frames per cycle (2..{MAX_FRAMES})")
    p.add_argument("--dtype", choices=["float32", "uint16"], default="float32",
                   help="image storage: float32 (exact) or uint16 (scanner-like, ~3x smaller)")
    p.add_argument("--no-fields", dest="fields", action="store_false",
                   help="do not write the ground-truth displacement fields (_4d_ddf.npz)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("info", help="print shape, geometry and values of volumes or folders")
    p.add_argument("paths", nargs="+", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert between NIfTI, NRRD and MHA keeping geometry")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--labels", action="store_true", help="treat as a label map")
    kind.add_argument("--image", action="store_true", help="treat as an image")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("device", help="print the torch device the models would use")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_device)
