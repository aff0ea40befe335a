"""DRDM commands: train drdm, generate drdm (augmentation / registration pairs), evaluate drdm."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import InputError
from .paths import check_name, check_output_folder_files, unless_resumed
from .progress import _check_outputs, check_grid, _report_trained, _train, _progress, _run_options, _sizes, _table_and_csv, bounded_int


def cmd_train_drdm(args: argparse.Namespace) -> int:
    from ..core.device import choose_device_name
    from ..core.drdm.train import DEFAULT_GRID, train_drdm
    from ..core.nn.distributed import process_group

    data = None if args.data == "phantom" else Path(args.data)
    _check_outputs([unless_resumed(args.out, args.resume)], args.overwrite, inputs=[data, args.init])
    if args.resume is not None:
        from ..core.weights.files import check_optimizer_files

        check_optimizer_files(args.resume, args.out)
    grid = _sizes(args.grid) or DEFAULT_GRID[args.ndims]
    with process_group(choose_device_name(args.device)) as (world, device):  # torchrun: one rank of several
        if world.main:
            print(f"training a {args.ndims}D DRDM on grid {'x'.join(map(str, grid))} from {args.data} on "
                  f"{device}{world.note}", file=sys.stderr)
        events = train_drdm(
            args.data, args.out, ndims=args.ndims, grid=grid, steps=args.steps, batch=args.batch, lr=args.lr,
            seed=args.seed, resume=args.resume, save_every=args.save_every, device=device,
            overwrite=args.overwrite, crop=_sizes(args.crop), field_bank=args.field_bank, init=args.init,
            workers=args.workers,
        )
        _train(events, world, desc="train drdm")
    return _report_trained(world, args.out)


def cmd_generate_drdm(args: argparse.Namespace) -> int:
    from ..core.device import choose_device_name
    from ..core.drdm.augment import ExportSettings, export_drdm, find_cases, plan_export, unit_files
    from ..core.events import Frame

    if args.syn_level is not None and not args.pairs:
        raise InputError("--syn-level applies to registration pairs: add --pairs.")
    if args.workers_per_gpu is not None and not args.scheduler:
        raise InputError("--workers-per-gpu applies to Dask runs: add --scheduler.")
    settings = ExportSettings(levels=args.levels, samples=args.samples, seed=args.seed,
                              mode="pairs" if args.pairs else "augment", syn_level=args.syn_level, loop=args.loop,
                              fmt=args.format, manifest=args.manifest, precision=args.precision,
                              fold_free=not args.allow_folding, shard_size=args.shard_size)
    # on Dask the workers read the inputs; here each is read once to check it, then dropped
    cases, notes = find_cases(args.image, args.labels, keep_data=not args.scheduler)
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    with_labels = sum(c.labels is not None for c in cases)
    units = plan_export(cases, settings)
    total = len(units)
    check_name(args.out_dir)
    names = [settings.manifest_name, *(f for u in units for f in unit_files(u, settings, True).values())]
    check_output_folder_files(args.out_dir, names, [p for c in cases for p in _case_files(c)])
    print(f"{len(cases)} image(s) ({with_labels} with labels), levels {list(settings.levels)}, "
          f"{settings.samples} sample(s) per level: {total} {settings.mode} sample(s)", file=sys.stderr)
    if args.resume and not args.out_dir.is_dir():
        raise InputError(f"--resume: {args.out_dir} does not exist, so there is no export to resume; "
                         "run without --resume to start one.")
    common = dict(weights=args.weights, overwrite=args.overwrite, resume=args.resume)
    if args.scheduler:
        from ..core.drdm.distributed import export_drdm_distributed

        # each worker resolves the device (and pins its GPU)
        events = export_drdm_distributed(cases, args.out_dir, settings, scheduler=args.scheduler,
                                         device=args.device or "auto",
                                         workers=args.workers, workers_per_gpu=args.workers_per_gpu or 1, **common)
    else:
        events = export_drdm(cases, args.out_dir, settings, device=choose_device_name(args.device),
                             on_redo=lambda message: print(f"deformdiff: warning: {message}", file=sys.stderr),
                             **common)
    made = sum(isinstance(e, Frame) for e in _progress(events, desc=f"drdm {settings.mode}"))
    now = "" if args.scheduler or made == total else f", {made} made now, the others by the run it resumed"
    print(f"wrote {total} sample(s) to {args.out_dir} (listed in {settings.manifest_name}{now})")
    return 0


def _case_files(case) -> list[Path]:
    """The files an export case (a Case or CaseFiles) was read from."""
    if isinstance(case.image, str):
        return [Path(p) for p in (case.image, case.labels) if p]
    return [Path(v.source) for v in (case.image, case.labels) if v is not None and v.source]


def _evaluation_images(args: argparse.Namespace, shape: tuple[int, ...]):
    """(images, where they come from) of --data, or cardiac phantom images."""
    from ..core.drdm.evaluate import folder_images, phantom_images

    if args.data:
        images = folder_images(args.data, args.ndims, shape)
        return images, f"{len(images)} image(s) from {args.data}"
    images = phantom_images(args.ndims, shape, args.samples, seed=args.seed)
    return images, f"{len(images)} cardiac phantom image(s)"


def cmd_evaluate_drdm(args: argparse.Namespace) -> int:
    from ..core.device import choose_device_name
    from ..core.drdm.evaluate import SampleResult, evaluate_drdm, format_table, summarize, write_csv
    from ..core.drdm.weights import load_drdm

    _check_outputs([args.csv], args.overwrite, inputs=[args.data])
    try:
        levels = tuple(int(v) for v in args.levels.split(","))
    except ValueError:
        raise InputError(f"--levels expects levels like 30,45,55, got {args.levels!r}") from None
    device = choose_device_name(args.device)
    model, meta = load_drdm(args.weights, ndims=args.ndims, device=device)
    shape = _sizes(args.size) or tuple(meta.grid)
    if len(shape) == 1:
        shape = shape * args.ndims
        check_grid(shape, args.size)  # a 3D model makes one size a cube: check the cube
    images, where = _evaluation_images(args, shape)
    print(f"weights: {meta.name} ({meta.source}); {where} at {'x'.join(map(str, shape))}; "
          f"{args.samples} sample(s) per level; loop {args.loop}; precision {args.precision}"
          f"{'; folding allowed' if args.allow_folding else ''}", file=sys.stderr)
    events = evaluate_drdm(images, model=model, meta=meta, levels=levels, samples=args.samples, seed=args.seed,
                           loop=args.loop, compare=args.compare, device=device, precision=args.precision,
                           fold_free=not args.allow_folding)
    results = [e for e in _progress(events, desc="evaluate drdm") if isinstance(e, SampleResult)]
    return _table_and_csv(format_table(summarize(results)), results, write_csv, args.csv, args.overwrite)


def _add_train(train) -> None:
    p = train.add_parser("drdm", help="train the DRDM recovery network on images (or the phantom)")
    p.add_argument("--data", required=True,
                   help="folder of images or ACDC patients (every frame is used), or 'phantom'")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--ndims", type=int, choices=[2, 3], default=2, help="2D (slices) or 3D model")
    p.add_argument("--grid", default=None, help="model grid, multiples of 8 (default 128,128 / 32,64,64)")
    p.add_argument("--steps", type=int, default=20000, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=4, help="images per step and process, each at its own level")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--crop", default=None, help="train on random crops of the grid, e.g. 64,64 (CPU saving)")
    p.add_argument("--field-bank", type=int, default=None,
                   help="reuse the fields of N forward draws (all levels each; saves most 3D CPU time)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a 2D file starts a 3D model slice by slice)")
    p.add_argument("--workers", type=bounded_int(0, 256), default=0,
                   help="DataLoader processes that assemble the batches (0: the training process)")
    _run_options(p)
    p.set_defaults(func=cmd_train_drdm)


def _add_generate(generate) -> None:
    p = generate.add_parser("drdm", help="DRDM augmentation or registration pairs: deformed images, labels, fields")
    p.add_argument("--image", type=Path, required=True,
                   help="an image, or a folder of images (labels matched by name: <name>_gt, _seg, _labels, "
                        "_label or _mask beside it, or in a labels/ subfolder)")
    p.add_argument("--labels", type=Path, help="label map of the image (or a folder of them, matched by name)")
    p.add_argument("--levels", default="40:64:8",
                   help="levels T' (1..80): 48, 40:64:8 (end included) or 30,45,60 (default: 40:64:8)")
    p.add_argument("--samples", type=int, default=4, help="samples per image and level (default: 4)")
    p.add_argument("--out-dir", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--pairs", action="store_true",
                   help="registration pairs (moving, fixed, field) instead of augmented images (Algorithm 4)")
    p.add_argument("--syn-level", type=int, default=None, help="level of the pair's synthetic motion (default: "
                   "the sample's level)")
    p.add_argument("--weights", default=None, help="registry name (drdm-cmr-2d), checkpoint file, or bundled")
    p.add_argument("--loop", choices=["paper", "authors"], default="paper",
                   help="recovery steps T'..1 (paper) or always 79..0 (the authors' script)")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="precision of the recovery network: bfloat16 is about 1.7x faster on CPUs with AMX "
                        "(compiled once per run, 10-40 s), its fields differ but their statistics match")
    p.add_argument("--allow-folding", action="store_true",
                   help="write the authors' fields as they are (they fold on a few percent of voxels) and their "
                        "labels by plain nearest-neighbour sampling; by default each field is repaired around its "
                        "folds and each label keeps its number of connected components")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "mha"], help="file format")
    p.add_argument("--manifest", choices=["csv", "json"], default="csv")
    p.add_argument("--scheduler", default=None,
                   help="run on Dask: 'local' (worker processes here) or a scheduler address (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None, help="worker processes of --scheduler local")
    p.add_argument("--workers-per-gpu", type=int, default=None,
                   help="--scheduler local on GPUs: worker processes per GPU, each pinned to one GPU (default 1)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="put every N samples into a subfolder (000/, 001/, ...); the manifest names them relative")
    p.add_argument("--resume", action="store_true", help="continue an interrupted export in --out-dir")
    _run_options(p)
    p.set_defaults(func=cmd_generate_drdm)


def _add_evaluate(evaluate) -> None:
    p = evaluate.add_parser("drdm", help="the paper's Table 1: displacement and folding per level "
                            "(optionally against TorchIO/MONAI elastic deformations)")
    p.add_argument("--weights", default=None, help="registry name (drdm-cmr-2d), checkpoint file, or bundled")
    p.add_argument("--ndims", type=int, choices=[2, 3], default=2)
    p.add_argument("--levels", default="30,45,55,65,70", help="deformation levels, e.g. 30,45,55,65,70")
    p.add_argument("--samples", type=int, default=4, help="samples per level")
    p.add_argument("--size", default=None, help="image size, e.g. 256 or 32,128,128 (default: the model grid)")
    p.add_argument("--data", type=Path, help="folder of images (default: cardiac phantom images)")
    p.add_argument("--loop", choices=["paper", "authors"], default="paper")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="precision of the recovery network (see generate drdm --precision)")
    p.add_argument("--compare", action="store_true",
                   help="add TorchIO and MONAI elastic deformations tuned to DRDM's mean displacement")
    p.add_argument("--allow-folding", action="store_true",
                   help="report only the authors' recovered fields (by default their fold-free repair is reported too)")
    p.add_argument("--csv", type=Path, help="write per-sample results")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate_drdm)


def add_method_commands(train, generate, evaluate) -> None:
    """`drdm` under train, generate and evaluate."""
    _add_train(train)
    _add_generate(generate)
    _add_evaluate(evaluate)
