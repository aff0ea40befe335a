"""DDM commands: train ddm, generate ddm, evaluate ddm."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import InputError
from .paths import check_volume_outputs, unless_resumed
from .progress import _check_outputs, _progress, _report_trained, _run_options, _sizes, _table_and_csv, _train, bounded_int
from .volumes import one_frame


def cmd_train_ddm(args: argparse.Namespace) -> int:
    from ..core.ddm.nets.ddm import DDMConfig
    from ..core.ddm.train import train_ddm
    from ..core.device import choose_device_name
    from ..core.io.pairs import find_pairs
    from ..core.nn.distributed import process_group

    _check_outputs([unless_resumed(args.out, args.resume)], args.overwrite, inputs=[args.data])
    if args.resume is not None:
        from ..core.weights.files import check_optimizer_files

        check_optimizer_files(args.resume, args.out)
    pairs = find_pairs(args.data)
    ndims = pairs[0].source.geometry.ndim
    mix, real = _mix_and_real(args)
    with process_group(choose_device_name(args.device)) as (world, device):  # torchrun: one rank of several
        if world.main:
            print(f"{len(pairs)} {ndims}D pairs from {args.data}; training on {device}{world.note}", file=sys.stderr)
        events = train_ddm(
            pairs, args.out, steps=args.steps, config=DDMConfig.default(ndims), resume=args.resume,
            seed=args.seed, device=device, lr=args.lr, crop=_sizes(args.crop), batch=args.batch, sampling=args.pairs,
            save_every=args.save_every, overwrite=args.overwrite, anchor=args.anchor, workers=args.workers,
            mix=mix, real=real, dice=args.dice, field_weight=args.field_weight,
            fold_weight=args.fold_weight,
        )
        _train(events, world, desc="train ddm")
    return _report_trained(world, args.out)


def _mix_and_real(args: argparse.Namespace):
    """(--mix weights or None, the --real volumes: files, or the images in folders)."""
    from ..core.ddm.synth_pairs import parse_mix
    from ..core.io import read_volume

    mix = parse_mix(args.mix) if args.mix else None
    files = []
    for path in args.real or ():
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.name.endswith((".nii", ".nii.gz", ".nrrd", ".mha")))
        else:
            files.append(path)
    if mix and mix.get("real", 0) > 0 and not files:
        raise InputError("--mix real=... needs volumes: --real FILE_OR_DIR.")
    return mix, [read_volume(f, as_labels=False) for f in files] if mix and "real" in mix else []


def _ddm_inputs(args: argparse.Namespace):
    """(source, target, labels, time spacing, pair) from --patient or --source/--target[/--labels]."""
    from ..core.io import read_volume
    from ..core.io.pairs import find_pairs

    if args.patient:
        if args.source or args.target:
            raise InputError("give either --patient or --source/--target, not both.")
        pair = find_pairs(args.patient)[0]
        labels = pair.source_labels if args.labels is None else read_volume(args.labels, as_labels=True)
        dt = pair.cine.time_spacing if pair.cine is not None else None
        return pair.source, pair.target, labels, dt, pair
    if not (args.source and args.target):
        raise InputError("give --source and --target images (or --patient DIR).")
    source = one_frame(read_volume(args.source, as_labels=False), args.source_frame, "--source-frame", args.source)
    target = one_frame(read_volume(args.target, as_labels=False), args.target_frame, "--target-frame", args.target)
    labels = read_volume(args.labels, as_labels=True) if args.labels else None
    if labels is not None and labels.has_time:
        labels = one_frame(labels, args.source_frame, "--source-frame", args.labels)
    return source, target, labels, None, None


def _folding_line(frames: list) -> str:
    """Folding of the frames' fields (det(I + grad u) <= 0), the worst frame named."""
    import numpy as np
    import torch

    from ..core.spatial import folding_ratio

    fields = torch.from_numpy(np.stack([np.asarray(f.field, np.float32) for f in frames]))
    ratios = folding_ratio(fields).reshape(-1).numpy() * 100.0
    worst = int(np.argmax(ratios))
    if ratios[worst] == 0:
        return "no folding (det J > 0 in every frame)"
    return f"folding (det J <= 0): {ratios[worst]:.3f} % of voxels at most (frame {worst})"


def _write_ddm_outputs(args: argparse.Namespace, got: list, geometry, labels, dt) -> None:
    """The 4D image, and the fields and labels if asked for, from the generated frames."""
    import numpy as np

    from ..core.io import Volume, write_volume
    from ..core.io.fields import write_displacement_sequence

    images = np.stack([f.image for f in got]).astype(np.float32)
    write_volume(Volume(images, geometry, False, "ddm cycle", dt), args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(got)} frames); {_folding_line(got)}")
    if args.fields_out:
        write_displacement_sequence(args.fields_out, np.stack([f.field for f in got]), geometry,
                                    overwrite=args.overwrite)
        print(f"wrote {args.fields_out}")
    if args.labels_out:
        lab = np.stack([f.labels for f in got])
        write_volume(Volume(lab, labels.geometry, True, "ddm labels", dt), args.labels_out, overwrite=args.overwrite)
        print(f"wrote {args.labels_out}")


def cmd_generate_ddm(args: argparse.Namespace) -> int:
    from ..core.ddm.generate import generate_ddm
    from ..core.device import choose_device_name
    from ..core.events import Frame

    if args.labels_out and not (args.labels or args.patient):
        raise InputError("--labels-out needs --labels (or an ACDC --patient with ED labels).")
    _check_outputs([args.out, args.fields_out, args.labels_out], args.overwrite,
                   inputs=[args.source, args.target, args.labels, args.patient])
    check_volume_outputs([args.out, args.fields_out, args.labels_out])
    if args.patient and (args.source_frame is not None or args.target_frame is not None):
        raise InputError("--source-frame/--target-frame go with --source/--target; --patient takes ED and ES.")
    source, target, labels, dt, pair = _ddm_inputs(args)
    if args.labels_out and labels is None:
        raise InputError(f"{args.patient} has no ED labels to warp for --labels-out.")
    frames = args.frames
    if frames is None:
        frames = pair.cine.data.shape[0] if pair is not None and pair.cine is not None else 16
    device = choose_device_name(args.device)
    events = generate_ddm(source, target, frames=frames, loop=args.loop, labels=labels, weights=args.weights,
                          device=device, adapt=args.adapt, seed=args.seed, batch=args.batch,
                          fold_free=not args.allow_folding)
    got = [e for e in _progress(events, desc="ddm") if isinstance(e, Frame)]
    _write_ddm_outputs(args, got, source.geometry, labels, dt)
    return 0


def _write_ddm_csv(results: list, path: Path, *, overwrite: bool) -> None:
    from ..core.io.atomic import atomic_output

    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("case,method,psnr_db,nmse,dice,folding_pct,seconds\n")
            for r in results:
                fh.write(f"{r.case},{r.method},{r.psnr:.4f},{r.nmse:.6e},{r.dice:.4f},"
                         f"{r.folding_pct:.4f},{r.seconds:.3f}\n")


def cmd_evaluate_ddm(args: argparse.Namespace) -> int:
    from ..core.ddm.evaluate import CaseResult, evaluate_ddm, format_table, summarize
    from ..core.ddm.weights import load_ddm
    from ..core.device import choose_device_name
    from ..core.io.pairs import find_pairs

    _check_outputs([args.csv], args.overwrite, inputs=[args.data])
    pairs = find_pairs(args.data)
    if args.cases:
        pairs = pairs[: args.cases]
    model, meta = load_ddm(args.weights, ndims=pairs[0].source.geometry.ndim, device=choose_device_name(args.device))
    adapt = tuple(_adapt_value(k) for k in args.adapt.split(",")) if args.adapt else (0,)
    if 0 not in adapt:
        adapt = (0, *adapt)
    results = [e for e in _progress(evaluate_ddm(pairs, model, adapt=adapt, seed=args.seed), desc="evaluate ddm")
               if isinstance(e, CaseResult)]
    print(f"weights: {meta.get('source')}")
    if args.targets:
        from ..core.ddm.evaluate_weights import format_phantom_targets, phantom_targets

        print(format_phantom_targets(phantom_targets(pairs, model, seed=args.seed)))
    return _table_and_csv(format_table(summarize(results)), results, _write_ddm_csv, args.csv, args.overwrite)


def _adapt_value(text: str) -> int | str:
    """'auto' or a whole number of steps >= 0 (for --adapt)."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) > 100000:
        raise InputError(f"--adapt takes 'auto', 0 or a number of steps up to 100000, got {text!r}.")
    return int(text)


def _adapt_arg(text: str) -> int | str:
    try:
        return _adapt_value(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_train(train) -> None:
    p = train.add_parser("ddm", help="train DDM on ACDC folders or <name>_source/_target pairs")
    p.add_argument("--data", type=Path, required=True, help="folder of ACDC patients or of pairs")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--steps", type=int, default=72000, help="total optimisation steps (paper: 72000)")
    p.add_argument("--batch", type=int, default=1, help="pairs per step and process (paper: 1)")
    p.add_argument("--crop", default=None, help="random crops of the model grid, e.g. 16,64,64")
    p.add_argument("--pairs", choices=["ends", "cine"], default="ends",
                   help="ends: source -> target only (paper); cine: also random frame pairs of the 4D cine")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--anchor", type=float, default=None,
                   help="weight of ||field(source, zero code)||^2 (not in the paper; 0 = off): makes "
                        "gamma = 0 give the source itself")
    p.add_argument("--workers", type=bounded_int(0, 256), default=0,
                   help="DataLoader processes that assemble the batches (0: the training process)")
    p.add_argument("--mix", default=None,
                   help="draw pairs from phantom (--data), synth (random label maps) and real (--real, deformed "
                        "by cardiac-like fields), e.g. synth=0.5,real=0.25,phantom=0.25")
    p.add_argument("--real", type=Path, nargs="*", default=None, help="real images (files or folders) for --mix real")
    p.add_argument("--dice", type=float, default=None,
                   help="weight of 1 - Dice of the warped label maps (phantom, synth; not in the paper; 0 = off)")
    p.add_argument("--field-weight", type=float, default=None,
                   help="weight of the squared error to the true field where known (synth, real; not in the "
                        "paper; 0 = off)")
    p.add_argument("--fold-weight", type=float, default=None,
                   help="weight of a penalty on folding (det(I + grad u) < 0.1) of the end field (not in the "
                        "paper; 0 = off)")
    _run_options(p)
    p.set_defaults(func=cmd_train_ddm)


def _add_generate(generate) -> None:
    p = generate.add_parser("ddm", help="frames between a source and a target (DDM latent scaling)")
    p.add_argument("--source", type=Path, help="source frame (e.g. ED)")
    p.add_argument("--target", type=Path, help="target frame (e.g. ES)")
    p.add_argument("--allow-folding", action="store_true",
                   help="write the networks' fields as they are; by default a frame whose field folds "
                        "(det J <= 0) gets it repaired around the folds")
    p.add_argument("--source-frame", type=int, default=None, metavar="K",
                   help="if --source is a time series (4D, a cine): its frame K (0-based)")
    p.add_argument("--target-frame", type=int, default=None, metavar="K",
                   help="if --target is a time series: its frame K (0-based); the same file as --source may be given")
    p.add_argument("--patient", type=Path, help="ACDC patient folder: ED -> ES from Info.cfg")
    p.add_argument("--frames", type=int, default=None,
                   help="number of frames (default: the patient's ED..ES frames, else 16)")
    p.add_argument("--loop", action="store_true", help="a full ED -> ES -> ED cycle")
    p.add_argument("--out", type=Path, required=True, help="4D image to write")
    p.add_argument("--fields-out", type=Path, help="the fields as one ITK displacement image over time")
    p.add_argument("--labels", type=Path, help="label map of the source to warp (nearest)")
    p.add_argument("--labels-out", type=Path, help="4D label map to write")
    p.add_argument("--weights", default=None, help="checkpoint (.safetensors, or the authors' .pth)")
    p.add_argument("--adapt", type=_adapt_arg, default="auto",
                   help="fit a residual velocity to this pair first: auto (default), 0 (off) or K steps "
                        "at the finest of 3 levels")
    p.add_argument("--batch", type=int, default=4, help="frames per network pass")
    _run_options(p)
    p.set_defaults(func=cmd_generate_ddm)


def _add_evaluate(evaluate) -> None:
    p = evaluate.add_parser("ddm", help="PSNR/NMSE of the intermediate frames against the real ones, Dice at the "
                            "target, folding: DDM against baselines")
    p.add_argument("--data", type=Path, required=True, help="ACDC-layout folders with 4D cines")
    p.add_argument("--weights", default=None)
    p.add_argument("--cases", type=int, default=None, help="use only the first N cases")
    p.add_argument("--adapt", default="", help="also evaluate after adapting, e.g. auto or auto,25")
    p.add_argument("--csv", type=Path, help="write per-case results")
    p.add_argument("--targets", action="store_true",
                   help="also print the bundled weights' targets per case (LV Dice at ES, |u| outside the heart)")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate_ddm)


def add_method_commands(train, generate, evaluate) -> None:
    """`ddm` under train, generate and evaluate."""
    _add_train(train)
    _add_generate(generate)
    _add_evaluate(evaluate)
