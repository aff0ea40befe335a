"""Mo-Diff commands: train modiff, generate modiff (forecast), evaluate modiff."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import InputError
from .paths import check_volume_outputs, unless_resumed
from .progress import _check_outputs, _report_trained, _train, _per_stage, _progress, _run_options, _sizes, _table_and_csv, bounded_int
from .volumes import one_frame


def _modiff_config(args: argparse.Namespace, ndims: int, frames: list[int]):
    """The model configuration: --init's (else the defaults for `ndims`), then --grid/--spacing,
    frame range and ablations."""
    import dataclasses

    from ..core.modiff.nets.modiff import ModiffConfig

    config = ModiffConfig.default(ndims)
    if args.init is not None:
        from ..core.modiff.weights import load_modiff

        config = load_modiff(args.init, ndims=ndims)[0].config
        if args.max_frames is None:
            args.max_frames = config.max_frames
    try:
        if args.grid or args.spacing:
            if not (args.grid and args.spacing):
                raise InputError("give --grid and --spacing together (the model grid and its voxel size in mm).")
            spacing = tuple(float(v) for v in args.spacing.replace("x", ",").split(","))
            config = dataclasses.replace(config, grid=_sizes(args.grid), spacing=spacing)
        return dataclasses.replace(
            config, max_frames=args.max_frames or min(max(frames), 16), min_frames=args.min_frames,
            frame_count=not args.no_frame_count, prompt="concat" if args.pal_concat else "pal",
            fal="concat" if args.fal_concat else "fal")
    except ValueError as exc:
        raise InputError(f"model configuration: {exc}") from None


def cmd_train_modiff(args: argparse.Namespace) -> int:
    from ..core.device import choose_device_name
    from ..core.modiff.data import find_sequences
    from ..core.modiff.train import train_modiff
    from ..core.nn.distributed import process_group

    steps, lr, batch = _per_stage(args.steps), _per_stage(args.lr, float), _per_stage(args.batch)
    _check_outputs([unless_resumed(args.out, args.resume)], args.overwrite, inputs=[*args.data, args.init])
    if args.resume is not None:
        from ..core.weights.files import check_optimizer_files

        check_optimizer_files(args.resume, args.out)
    sequences = find_sequences(args.data, span=args.span)
    ndims = sequences[0].frames.geometry.ndim
    frames = [s.frames.data.shape[0] for s in sequences]
    if args.init is not None:  # "default": the bundled weights for this dimensionality
        from ..core.modiff.weights import MODEL_NAME
        from ..core.weights.resolve import resolve

        args.init = resolve(args.init, MODEL_NAME, ndims)[0]
    config = _modiff_config(args, ndims, frames)
    stages = args.stages.split(",") if args.stages else ("vae", "tddm", "video")
    with process_group(choose_device_name(args.device)) as (world, device):  # torchrun: one rank of several
        if world.main:
            print(f"{len(sequences)} {ndims}D sequences of {min(frames)}-{max(frames)} frames from "
                  f"{', '.join(map(str, args.data))}; model {config.ablation()}, frames {config.min_frames}-"
                  f"{config.max_frames}; stages {', '.join(stages)} on {device}{world.note}", file=sys.stderr)
        events = train_modiff(
            sequences, args.out, steps=steps, stages=stages, config=config, resume=args.resume,
            init=args.init, seed=args.seed, device=device, lr=lr,
            batch=batch, save_every=args.save_every, overwrite=args.overwrite, workers=args.workers,
        )
        _train(events, world, desc="train modiff")
    return _report_trained(world, args.out)


def _first_frame(args: argparse.Namespace):
    """--first as one 2D/3D frame (frame --frame K of a 4D image)."""
    from ..core.io import read_volume

    return one_frame(read_volume(args.first, as_labels=False), args.frame, "--frame", args.first)


def cmd_generate_modiff(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.device import choose_device_name
    from ..core.events import Frame, SequencePreview
    from ..core.io import Volume, write_volume
    from ..core.modiff.generate import generate_modiff

    _check_outputs([args.out, args.fields_out, args.differential_out], args.overwrite, inputs=[args.first])
    check_volume_outputs([args.out, args.fields_out, args.differential_out])
    if args.fields_out and args.output != "warp":
        raise InputError("--fields-out needs --output warp (additive frames are not made by fields).")
    first = _first_frame(args)
    dt = None  # the forecast's frame spacing is the model's, not the input cine's
    device = choose_device_name(args.device)
    events = generate_modiff(first, frames=args.frames, steps=args.steps, sampler=args.sampler, seed=args.seed,
                             weights=args.weights, device=device, output=args.output, temporal=args.temporal)
    frames, fields, differential = [], [], None
    for event in _progress(events, desc="modiff"):
        if isinstance(event, Frame):
            frames.append(event.image)
            fields.append(event.field)
        elif isinstance(event, SequencePreview) and event.differential is not None:
            differential = event.differential
    images = np.stack(frames).astype(np.float32)
    if args.output == "warp" and np.issubdtype(first.data.dtype, np.integer):
        images = images.astype(first.data.dtype)  # integer-valued and inside the first frame's range
    write_volume(Volume(images, first.geometry, False, "modiff forecast", dt), args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(frames)} frames)")
    if args.fields_out:
        from ..core.io.fields import write_displacement_sequence

        write_displacement_sequence(args.fields_out, np.stack(fields), first.geometry, overwrite=args.overwrite)
        print(f"wrote {args.fields_out}")
    if args.differential_out:
        write_volume(Volume(differential.astype(np.float32), first.geometry, False, "modiff differential fields", dt),
                     args.differential_out, overwrite=args.overwrite)
        print(f"wrote {args.differential_out}")
    return 0


def _evaluation_models(args: argparse.Namespace, ndims: int, device: str):
    """({label: Mo-Diff model}, the full model's metadata, DDM baseline or None)."""
    from ..core.modiff.weights import load_modiff

    model, meta = load_modiff(args.weights, ndims=ndims, device=device)
    models = {"Mo-Diff": model}
    for item in args.ablation or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--ablation expects NAME=PATH, got {item!r}")
        models[f"Mo-Diff {name}"] = load_modiff(path, ndims=ndims, device=device)[0]
    ddm = None
    if not args.no_ddm:
        from ..core.ddm.weights import load_ddm

        ddm = load_ddm(args.ddm_weights, ndims=ndims, device=device)[0]
    return models, meta, ddm


def cmd_evaluate_modiff(args: argparse.Namespace) -> int:
    from ..core.device import choose_device_name
    from ..core.modiff.data import find_sequences
    from ..core.modiff.evaluate import CaseResult, evaluate_modiff, format_table, summarize, write_csv

    _check_outputs([args.csv], args.overwrite, inputs=[*args.data])
    sequences = find_sequences(args.data, span=args.span)
    if args.cases:
        sequences = sequences[: args.cases]
    ndims = sequences[0].frames.geometry.ndim
    device = choose_device_name(args.device)
    models, meta, ddm = _evaluation_models(args, ndims, device)
    print(f"weights: {meta.get('source')}; {len(sequences)} sequence(s); {args.steps} {args.sampler} steps",
          file=sys.stderr)
    from ..core.modiff.evaluate import OUTPUT_ABLATION

    outputs = OUTPUT_ABLATION if args.output_ablation else {"": (args.output, args.temporal)}
    events = evaluate_modiff(sequences, models, frames=args.frames, steps=args.steps, sampler=args.sampler,
                             seed=args.seed, ddm=ddm, outputs=outputs)
    results = [e for e in _progress(events, desc="evaluate modiff") if isinstance(e, CaseResult)]
    return _table_and_csv(format_table(summarize(results)), results, write_csv, args.csv, args.overwrite)


def _add_train(train) -> None:
    p = train.add_parser("modiff", help="train Mo-Diff (VAE, stage 1, stage 2) on ACDC-layout sequences")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="ACDC patient folders or folders of them (phantoms: `deformdiff phantom`), or your own "
                   "2D+t / 3D+t sequences: 4D NIfTI/NRRD/MHA or DICOM cine files, series folders, folders of these "
                   "(each one sequence, first frame to last)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--span", choices=["es", "cycle"], default="es",
                   help="sequence to learn: ED -> ES (default) or the whole cycle from ED")
    p.add_argument("--steps", default="", help="steps per stage, e.g. vae=800,tddm=1500,video=1200")
    p.add_argument("--stages", default="", help="train only these stages, e.g. tddm (default: all three)")
    p.add_argument("--batch", default="", help="batch per stage and process, e.g. vae=8,tddm=4,video=2")
    p.add_argument("--lr", default="", help="learning rate per stage, e.g. tddm=2e-4")
    p.add_argument("--min-frames", type=int, default=4, help="smallest frame count N the model learns")
    p.add_argument("--max-frames", type=int, default=None,
                   help="largest N (the padded temporal length; default: the longest sequence, at most 16)")
    p.add_argument("--grid", default=None, help="model grid in array order, e.g. 64,96 (default 2D 128,128; "
                   "3D 16,64,64); multiple of 16")
    p.add_argument("--spacing", default=None, help="model voxel size in mm, e.g. 2.5,2.5 (with --grid)")
    p.add_argument("--no-frame-count", action="store_true", help="ablation: no frame-count condition")
    p.add_argument("--pal-concat", action="store_true", help="ablation: first frame by concatenation, not PAL")
    p.add_argument("--fal-concat", action="store_true", help="ablation: fields by channel fusion, not FAL")
    p.add_argument("--init", type=Path, help="start from the parts of this checkpoint that fit ('default': the "
                   "bundled weights); the parts among --stages are fine-tuned (steps from 0, scales kept)")
    p.add_argument("--resume", type=Path, help="continue training this checkpoint")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--workers", type=bounded_int(0, 256), default=0,
                   help="DataLoader processes that assemble the batches (0: the training process)")
    _run_options(p)
    p.set_defaults(func=cmd_train_modiff)


def _add_generate(generate) -> None:
    p = generate.add_parser("modiff", help="forecast a motion sequence from one frame and a frame count (Mo-Diff)")
    p.add_argument("--first", type=Path, required=True, help="the first frame (2D or 3D image)")
    p.add_argument("--frame", type=int, default=None, help="if --first is 4D: which frame (0-based) to start from")
    p.add_argument("--frames", type=int, required=True, help="frame count N, the first frame included")
    p.add_argument("--out", type=Path, required=True, help="4D image to write (the first frame's geometry)")
    p.add_argument("--output", choices=["warp", "additive"], default="warp",
                   help="frames = the first frame warped by fields (default), "
                   "or first frame + decoded change (ablation)")
    p.add_argument("--temporal", choices=["monotone", "poly", "gaussian", "none"], default="monotone",
                   help="smoothing of the fields along time (warp output): one pattern with a non-decreasing "
                   "amplitude (default), cubic fit, Gaussian, none")
    p.add_argument("--fields-out", type=Path,
                   help="also write the displacement fields behind the frames (one ITK displacement image over time)")
    p.add_argument("--differential-out", type=Path,
                   help="also write stage 1's differential fields I_k - I_(k-1) as a 4D image")
    p.add_argument("--steps", type=int, default=25, help="sampler steps per stage")
    p.add_argument("--sampler", choices=["ddim", "ancestral"], default="ddim")
    p.add_argument("--weights", default=None, help="checkpoint (.safetensors; default: bundled phantom model)")
    _run_options(p)
    p.set_defaults(func=cmd_generate_modiff)


def _add_evaluate(evaluate) -> None:
    p = evaluate.add_parser("modiff", help="PSNR/SSIM/temporal error of Mo-Diff forecasts, ablations and baselines")
    p.add_argument("--data", type=Path, nargs="+", required=True, help="held-out ACDC-layout folders with 4D cines")
    p.add_argument("--weights", default=None, help="the full model (default: bundled)")
    p.add_argument("--ablation", action="append", metavar="NAME=PATH",
                   help="also evaluate an ablation checkpoint (repeatable), e.g. no-frame-count=nofc.safetensors")
    p.add_argument("--span", choices=["es", "cycle"], default="es")
    p.add_argument("--frames", type=int, default=None,
                   help="forecast N frames (the truth resampled to N; default: each sequence's own length)")
    p.add_argument("--cases", type=int, default=None, help="use only the first N cases")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", choices=["ddim", "ancestral"], default="ddim")
    p.add_argument("--output", choices=["warp", "additive"], default="warp", help="output design (see generate)")
    p.add_argument("--temporal", choices=["monotone", "poly", "gaussian", "none"], default="monotone")
    p.add_argument("--output-ablation", action="store_true",
                   help="compare the output designs (additive; warp with no, Gaussian, cubic, monotone smoothing) "
                   "from one sampling")
    p.add_argument("--no-ddm", action="store_true", help="skip the DDM baseline")
    p.add_argument("--ddm-weights", default=None, help="DDM weights for the baseline (default: bundled)")
    p.add_argument("--csv", type=Path, help="write per-frame results")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate_modiff)


def add_method_commands(train, generate, evaluate) -> None:
    """`modiff` under train, generate and evaluate."""
    _add_train(train)
    _add_generate(generate)
    _add_evaluate(evaluate)
