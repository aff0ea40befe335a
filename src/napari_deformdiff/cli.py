"""`deformdiff` command line: the same core as the napari plugin, headless."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from .core.errors import InputError, OutputExistsError


def _progress(events: Iterable, *, desc: str):
    """Consume core events with one tqdm bar sized by the generator's Plan; returns the events."""
    from tqdm import tqdm

    from .core.events import RunProgress

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


def cmd_phantom(args: argparse.Namespace) -> int:
    from .core.phantom.dataset import write_phantom_dataset

    events = write_phantom_dataset(
        args.out, cases=args.cases, seed=args.seed, kind=args.kind, two_d=args.two_d,
        frames=args.frames, image_dtype=args.dtype, fields=args.fields, overwrite=args.overwrite,
    )
    _progress(events, desc=f"{args.kind} phantom")
    print(f"wrote {args.cases} {args.kind} phantom case(s) in ACDC layout to {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    from .core.io import read_path
    from .core.io.dicom import describe_time

    for path in args.paths:
        for v in read_path(path):
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
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .core.io import read_volume, write_volume

    as_labels = True if args.labels else (False if args.image else None)
    volume = read_volume(args.input, as_labels=as_labels)
    for w in volume.warnings:
        print(f"warning: {w}", file=sys.stderr)
    write_volume(volume, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    from .core.device import choose_device_name

    print(choose_device_name(args.device))
    return 0


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"expected sizes like 32,64,64, got {text!r}") from None


def cmd_train_ddm(args: argparse.Namespace) -> int:
    from .core.ddm.train import train_ddm
    from .core.device import choose_device_name
    from .core.ddm.nets.ddm import DDMConfig
    from .core.io.pairs import find_pairs

    pairs = find_pairs(args.data)
    ndims = pairs[0].source.geometry.ndim
    device = choose_device_name(args.device)
    print(f"{len(pairs)} {ndims}D pairs from {args.data}; training on {device}", file=sys.stderr)
    events = train_ddm(
        pairs, args.out, steps=args.steps, config=DDMConfig.default(ndims), resume=args.resume,
        seed=args.seed, device=device, lr=args.lr, crop=_sizes(args.crop), batch=args.batch, sampling=args.pairs,
        save_every=args.save_every, overwrite=args.overwrite, anchor=args.anchor,
    )
    _progress(events, desc="train ddm")
    print(f"wrote {args.out}")
    return 0


def cmd_train_drdm(args: argparse.Namespace) -> int:
    from .core.device import choose_device_name
    from .core.drdm.train import DEFAULT_GRID, train_drdm

    grid = _sizes(args.grid) or DEFAULT_GRID[args.ndims]
    device = choose_device_name(args.device)
    print(f"training a {args.ndims}D DRDM on grid {'x'.join(map(str, grid))} from {args.data} on {device}",
          file=sys.stderr)
    events = train_drdm(
        args.data, args.out, ndims=args.ndims, grid=grid, steps=args.steps, batch=args.batch, lr=args.lr,
        seed=args.seed, resume=args.resume, save_every=args.save_every, device=device,
        overwrite=args.overwrite, crop=_sizes(args.crop), field_bank=args.field_bank, init=args.init,
    )
    _progress(events, desc="train drdm")
    print(f"wrote {args.out}")
    return 0


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


def cmd_train_modiff(args: argparse.Namespace) -> int:
    import dataclasses

    from .core.device import choose_device_name
    from .core.modiff.data import find_sequences
    from .core.modiff.train import train_modiff
    from .core.modiff.nets.modiff import ModiffConfig

    sequences = find_sequences(args.data, span=args.span)
    ndims = sequences[0].frames.geometry.ndim
    config = ModiffConfig.default(ndims)
    frames = [s.frames.data.shape[0] for s in sequences]
    try:
        if args.grid or args.spacing:
            if not (args.grid and args.spacing):
                raise InputError("give --grid and --spacing together (the model grid and its voxel size in mm).")
            spacing = tuple(float(v) for v in args.spacing.replace("x", ",").split(","))
            config = dataclasses.replace(config, grid=_sizes(args.grid), spacing=spacing)
        config = dataclasses.replace(
            config, max_frames=args.max_frames or min(max(frames), 16), min_frames=args.min_frames,
            frame_count=not args.no_frame_count, prompt="concat" if args.pal_concat else "pal",
            fal="concat" if args.fal_concat else "fal")
    except ValueError as exc:
        raise InputError(f"model configuration: {exc}") from None
    stages = args.stages.split(",") if args.stages else ("vae", "tddm", "video")
    device = choose_device_name(args.device)
    print(f"{len(sequences)} {ndims}D sequences of {min(frames)}-{max(frames)} frames from "
          f"{', '.join(map(str, args.data))}; model {config.ablation()}, frames {config.min_frames}-"
          f"{config.max_frames}; stages {', '.join(stages)} on {device}", file=sys.stderr)
    events = train_modiff(
        sequences, args.out, steps=_per_stage(args.steps), stages=stages, config=config, resume=args.resume,
        init=args.init, seed=args.seed, device=device, lr=_per_stage(args.lr, float),
        batch=_per_stage(args.batch), save_every=args.save_every, overwrite=args.overwrite,
    )
    _progress(events, desc="train modiff")
    print(f"wrote {args.out}")
    return 0


def _ddm_inputs(args: argparse.Namespace):
    """(source, target, labels, time spacing) from --patient or --source/--target[/--labels]."""
    from .core.io import read_volume
    from .core.io.pairs import find_pairs

    if args.patient:
        if args.source or args.target:
            raise InputError("give either --patient or --source/--target, not both.")
        pair = find_pairs(args.patient)[0]
        labels = pair.source_labels if args.labels is None else read_volume(args.labels, as_labels=True)
        dt = pair.cine.time_spacing if pair.cine is not None else None
        return pair.source, pair.target, labels, dt, pair
    if not (args.source and args.target):
        raise InputError("give --source and --target images (or --patient DIR).")
    source = read_volume(args.source, as_labels=False)
    target = read_volume(args.target, as_labels=False)
    labels = read_volume(args.labels, as_labels=True) if args.labels else None
    return source, target, labels, None, None


def _check_outputs(paths, overwrite: bool) -> None:
    for p in paths:
        if p is not None and p.exists() and not overwrite:
            raise OutputExistsError(f"{p} already exists; choose another name or pass --overwrite.")


def cmd_generate_ddm(args: argparse.Namespace) -> int:
    import numpy as np

    from .core.ddm.generate import generate_ddm
    from .core.device import choose_device_name
    from .core.events import Frame
    from .core.io.fields import write_displacement_sequence
    from .core.io import Volume, write_volume

    if args.labels_out and not (args.labels or args.patient):
        raise InputError("--labels-out needs --labels (or an ACDC --patient with ED labels).")
    _check_outputs([args.out, args.fields_out, args.labels_out], args.overwrite)
    source, target, labels, dt, pair = _ddm_inputs(args)
    if args.labels_out and labels is None:
        raise InputError(f"{args.patient} has no ED labels to warp for --labels-out.")
    frames = args.frames
    if frames is None:
        frames = pair.cine.data.shape[0] if pair is not None and pair.cine is not None else 16
    device = choose_device_name(args.device)
    events = generate_ddm(source, target, frames=frames, loop=args.loop, labels=labels, weights=args.weights,
                          device=device, adapt=args.adapt, seed=args.seed, batch=args.batch)
    got = [e for e in _progress(events, desc="ddm") if isinstance(e, Frame)]
    geometry = source.geometry
    images = np.stack([f.image for f in got]).astype(np.float32)
    write_volume(Volume(images, geometry, False, "ddm cycle", dt), args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(got)} frames)")
    if args.fields_out:
        write_displacement_sequence(args.fields_out, np.stack([f.field for f in got]), geometry,
                                    overwrite=args.overwrite)
        print(f"wrote {args.fields_out}")
    if args.labels_out:
        lab = np.stack([f.labels for f in got])
        write_volume(Volume(lab, labels.geometry, True, "ddm labels", dt), args.labels_out, overwrite=args.overwrite)
        print(f"wrote {args.labels_out}")
    return 0


def cmd_generate_modiff(args: argparse.Namespace) -> int:
    import numpy as np

    from .core.device import choose_device_name
    from .core.events import Frame, SequencePreview
    from .core.io import Volume, read_volume, write_volume
    from .core.modiff.generate import generate_modiff

    _check_outputs([args.out, args.fields_out], args.overwrite)
    first = read_volume(args.first, as_labels=False)
    dt = None  # the forecast's frame spacing is the model's, not the input cine's
    if first.has_time:
        if args.frame is None:
            raise InputError(f"{args.first.name} has {first.data.shape[0]} frames; say which one starts the "
                             "forecast with --frame K (0-based).")
        if not 0 <= args.frame < first.data.shape[0]:
            raise InputError(f"--frame {args.frame} is outside 0..{first.data.shape[0] - 1}.")
        first = Volume(np.array(first.data[args.frame]), first.geometry, False, first.name, None, first.source)
    device = choose_device_name(args.device)
    events = generate_modiff(first, frames=args.frames, steps=args.steps, sampler=args.sampler, seed=args.seed,
                             weights=args.weights, device=device)
    frames, differential = [], None
    for event in _progress(events, desc="modiff"):
        if isinstance(event, Frame):
            frames.append(event.image)
        elif isinstance(event, SequencePreview) and event.differential is not None:
            differential = event.differential
    images = np.stack(frames).astype(np.float32)
    write_volume(Volume(images, first.geometry, False, "modiff forecast", dt), args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({len(frames)} frames)")
    if args.fields_out:
        write_volume(Volume(differential.astype(np.float32), first.geometry, False, "modiff differential fields", dt),
                     args.fields_out, overwrite=args.overwrite)
        print(f"wrote {args.fields_out}")
    return 0


def cmd_generate_drdm(args: argparse.Namespace) -> int:

    from .core.device import choose_device_name
    from .core.drdm.augment import ExportSettings, export_drdm, find_cases, plan_export

    if args.syn_level is not None and not args.pairs:
        raise InputError("--syn-level applies to registration pairs: add --pairs.")
    settings = ExportSettings(levels=args.levels, samples=args.samples, seed=args.seed,
                              mode="pairs" if args.pairs else "augment", syn_level=args.syn_level, loop=args.loop,
                              fmt=args.format, manifest=args.manifest, precision=args.precision)
    cases, notes = find_cases(args.image, args.labels)
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    with_labels = sum(c.labels is not None for c in cases)
    total = len(plan_export(cases, settings))
    print(f"{len(cases)} image(s) ({with_labels} with labels), levels {list(settings.levels)}, "
          f"{settings.samples} sample(s) per level: {total} {settings.mode} sample(s)", file=sys.stderr)
    device = choose_device_name(args.device)
    common = dict(weights=args.weights, device=device, overwrite=args.overwrite, resume=args.resume)
    if args.scheduler:
        from .core.drdm.distributed import export_drdm_distributed

        events = export_drdm_distributed(cases, args.out_dir, settings, scheduler=args.scheduler,
                                         workers=args.workers, **common)
    else:
        events = export_drdm(cases, args.out_dir, settings, **common)
    _progress(events, desc=f"drdm {settings.mode}")
    print(f"wrote {total} sample(s) to {args.out_dir} (listed in {settings.manifest_name})")
    return 0


def cmd_evaluate_ddm(args: argparse.Namespace) -> int:
    from .core.ddm.evaluate import CaseResult, evaluate_ddm, format_table, summarize
    from .core.ddm.weights import load_ddm
    from .core.device import choose_device_name
    from .core.io.pairs import find_pairs

    pairs = find_pairs(args.data)
    if args.cases:
        pairs = pairs[: args.cases]
    model, meta = load_ddm(args.weights, ndims=pairs[0].source.geometry.ndim, device=choose_device_name(args.device))
    adapt = tuple(int(k) for k in args.adapt.split(",")) if args.adapt else (0,)
    if 0 not in adapt:
        adapt = (0, *adapt)
    results = [e for e in _progress(evaluate_ddm(pairs, model, adapt=adapt, seed=args.seed), desc="evaluate ddm")
               if isinstance(e, CaseResult)]
    print(f"weights: {meta.get('source')}")
    print(format_table(summarize(results)))
    if args.csv:
        from .core.io.atomic import atomic_output

        with atomic_output(args.csv, overwrite=args.overwrite) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write("case,method,psnr_db,nmse,dice,folding_pct,seconds\n")
                for r in results:
                    fh.write(f"{r.case},{r.method},{r.psnr:.4f},{r.nmse:.6e},{r.dice:.4f},"
                             f"{r.folding_pct:.4f},{r.seconds:.3f}\n")
        print(f"wrote {args.csv}")
    return 0


def cmd_evaluate_drdm(args: argparse.Namespace) -> int:
    from .core.device import choose_device_name
    from .core.drdm.evaluate import (
        SampleResult, evaluate_drdm, folder_images, format_table, phantom_images, summarize, write_csv,
    )
    from .core.drdm.weights import load_drdm

    if args.csv and args.csv.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.csv} already exists; choose another name or pass --overwrite.")
    try:
        levels = tuple(int(v) for v in args.levels.split(","))
    except ValueError:
        raise InputError(f"--levels expects levels like 30,45,55, got {args.levels!r}") from None
    device = choose_device_name(args.device)
    model, meta = load_drdm(args.weights, ndims=args.ndims, device=device)
    shape = _sizes(args.size) or tuple(meta.grid)
    if len(shape) == 1:
        shape = shape * args.ndims
    if args.data:
        images = folder_images(args.data, args.ndims, shape)
        where = f"{len(images)} image(s) from {args.data}"
    else:
        images = phantom_images(args.ndims, shape, args.samples, seed=args.seed)
        where = f"{len(images)} cardiac phantom image(s)"
    print(f"weights: {meta.name} ({meta.source}); {where} at {'x'.join(map(str, shape))}; "
          f"{args.samples} sample(s) per level; loop {args.loop}; precision {args.precision}", file=sys.stderr)
    events = evaluate_drdm(images, model=model, meta=meta, levels=levels, samples=args.samples, seed=args.seed,
                           loop=args.loop, compare=args.compare, device=device, precision=args.precision)
    results = [e for e in _progress(events, desc="evaluate drdm") if isinstance(e, SampleResult)]
    print(format_table(summarize(results)))
    if args.csv:
        write_csv(results, args.csv, overwrite=args.overwrite)
        print(f"wrote {args.csv}")
    return 0


def cmd_evaluate_modiff(args: argparse.Namespace) -> int:
    from .core.device import choose_device_name
    from .core.modiff.data import find_sequences
    from .core.modiff.evaluate import CaseResult, evaluate_modiff, format_table, summarize, write_csv
    from .core.modiff.weights import load_modiff

    if args.csv and args.csv.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.csv} already exists; choose another name or pass --overwrite.")
    sequences = find_sequences(args.data, span=args.span)
    if args.cases:
        sequences = sequences[: args.cases]
    ndims = sequences[0].frames.geometry.ndim
    device = choose_device_name(args.device)
    model, meta = load_modiff(args.weights, ndims=ndims, device=device)
    models = {"Mo-Diff": model}
    for item in args.ablation or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--ablation expects NAME=PATH, got {item!r}")
        models[f"Mo-Diff {name}"] = load_modiff(path, ndims=ndims, device=device)[0]
    ddm = None
    if not args.no_ddm:
        from .core.ddm.weights import load_ddm

        ddm = load_ddm(args.ddm_weights, ndims=ndims, device=device)[0]
    print(f"weights: {meta.get('source')}; {len(sequences)} sequence(s); {args.steps} {args.sampler} steps",
          file=sys.stderr)
    events = evaluate_modiff(sequences, models, frames=args.frames, steps=args.steps, sampler=args.sampler,
                             seed=args.seed, ddm=ddm)
    results = [e for e in _progress(events, desc="evaluate modiff") if isinstance(e, CaseResult)]
    print(format_table(summarize(results)))
    if args.csv:
        write_csv(results, args.csv, overwrite=args.overwrite)
        print(f"wrote {args.csv}")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from .core.weights import registry as wr

    print(f"cache folder: {wr.cache_dir()} (set {wr.CACHE_ENV} to change it)")
    for name, e in sorted(wr.REGISTRY.items()):
        state = "cached" if wr.is_cached(name) else "not cached"
        print(f"{name}: {e.description} [{state}, {e.size / 1e6:.1f} MB]")
        print(f"  licence: {e.licence}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from .core.weights import registry as wr

    was_cached = wr.is_cached(args.name)
    path = wr.fetch(args.name, report=print)
    if was_cached:
        print(f"{args.name} is already in the cache: {path}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError(
            "no display found (DISPLAY is not set): run this on a desktop session, or under "
            "a virtual one with `xvfb-run -a deformdiff gui ...`."
        )
    import napari

    viewer = napari.Viewer(title="napari-deformdiff")
    for widget in ("Phantom generator", "Open volume", "Generate cycle (DDM)", "Augment (DRDM)",
                   "Forecast (Mo-Diff)", "Inspect deformation"):
        viewer.window.add_plugin_dock_widget("napari-deformdiff", widget)
    if args.paths:
        viewer.open([str(p) for p in args.paths], plugin="napari-deformdiff")
    elif args.sample != "none":
        viewer.open_sample("napari-deformdiff", args.sample)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        viewer.screenshot(str(args.screenshot), canvas_only=False)
        print(f"screenshot written to {args.screenshot}")
    if args.quit:
        viewer.close()
        return 0
    napari.run()
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    """--device, --seed and --overwrite, shared by the model commands."""
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="allow replacing existing outputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deformdiff",
        description="Generate and inspect anatomical motion with deformation-based diffusion models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write a seeded phantom dataset in the ACDC folder layout")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--cases", type=int, default=1, help="number of patients (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=["cardiac", "lung"], default="cardiac")
    p.add_argument("--2d", dest="two_d", action="store_true", help="2D+t: one slice over time")
    p.add_argument("--frames", type=int, default=None, help="frames per cycle")
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

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    p = train.add_parser("ddm", help="train DDM on ACDC folders or <name>_source/_target pairs")
    p.add_argument("--data", type=Path, required=True, help="folder of ACDC patients or of pairs")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--steps", type=int, default=72000, help="total optimisation steps (paper: 72000)")
    p.add_argument("--batch", type=int, default=1, help="pairs per step (paper: 1)")
    p.add_argument("--crop", default=None, help="random crops of the model grid, e.g. 16,64,64")
    p.add_argument("--pairs", choices=["ends", "cine"], default="ends",
                   help="ends: source -> target only (paper); cine: also random frame pairs of the 4D cine")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--anchor", type=float, default=None,
                   help="weight of ||field(source, zero code)||^2 (not in the paper; 0 = off): makes "
                        "gamma = 0 give the source itself")
    _run_options(p)
    p.set_defaults(func=cmd_train_ddm)
    p = train.add_parser("drdm", help="train the DRDM recovery network on images (or the phantom)")
    p.add_argument("--data", required=True,
                   help="folder of images or ACDC patients (every frame is used), or 'phantom'")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--ndims", type=int, choices=[2, 3], default=2, help="2D (slices) or 3D model")
    p.add_argument("--grid", default=None, help="model grid, multiples of 8 (default 128,128 / 32,64,64)")
    p.add_argument("--steps", type=int, default=20000, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=4, help="images per step, each at its own level")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--crop", default=None, help="train on random crops of the grid, e.g. 64,64 (CPU saving)")
    p.add_argument("--field-bank", type=int, default=None,
                   help="reuse the fields of N forward draws (all levels each; saves most 3D CPU time)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a 2D file starts a 3D model slice by slice)")
    _run_options(p)
    p.set_defaults(func=cmd_train_drdm)

    p = train.add_parser("modiff", help="train Mo-Diff (VAE, stage 1, stage 2) on ACDC-layout sequences")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="ACDC patient folders, or folders of them (phantoms: `deformdiff phantom`)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--span", choices=["es", "cycle"], default="es",
                   help="sequence to learn: ED -> ES (default) or the whole cycle from ED")
    p.add_argument("--steps", default="", help="steps per stage, e.g. vae=800,tddm=1500,video=1200")
    p.add_argument("--stages", default="", help="train only these stages, e.g. tddm (default: all three)")
    p.add_argument("--batch", default="", help="batch per stage, e.g. vae=8,tddm=4,video=2")
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
    p.add_argument("--init", type=Path, help="start from the parts of this checkpoint that fit (ablations)")
    p.add_argument("--resume", type=Path, help="continue training this checkpoint")
    p.add_argument("--save-every", type=int, default=100)
    _run_options(p)
    p.set_defaults(func=cmd_train_modiff)

    generate = sub.add_parser("generate", help="generate frames with a model").add_subparsers(
        dest="model", required=True)
    p = generate.add_parser("ddm", help="frames between a source and a target (DDM latent scaling)")
    p.add_argument("--source", type=Path, help="source frame (e.g. ED)")
    p.add_argument("--target", type=Path, help="target frame (e.g. ES)")
    p.add_argument("--patient", type=Path, help="ACDC patient folder: ED -> ES from Info.cfg")
    p.add_argument("--frames", type=int, default=None,
                   help="number of frames (default: the patient's ED..ES frames, else 16)")
    p.add_argument("--loop", action="store_true", help="a full ED -> ES -> ED cycle")
    p.add_argument("--out", type=Path, required=True, help="4D image to write")
    p.add_argument("--fields-out", type=Path, help="the fields as one ITK displacement image over time")
    p.add_argument("--labels", type=Path, help="label map of the source to warp (nearest)")
    p.add_argument("--labels-out", type=Path, help="4D label map to write")
    p.add_argument("--weights", default=None, help="checkpoint (.safetensors, or the authors' .pth)")
    p.add_argument("--adapt", type=int, default=0, help="fine-tune on this pair for K steps first")
    p.add_argument("--batch", type=int, default=4, help="frames per network pass")
    _run_options(p)
    p.set_defaults(func=cmd_generate_ddm)
    p = generate.add_parser("drdm", help="DRDM augmentation or registration pairs: deformed images, labels, fields")
    p.add_argument("--image", type=Path, required=True,
                   help="an image, or a folder of images (labels matched by name: <name>_gt, _seg, _labels, "
                        "_label or _mask beside it, or in a labels/ subfolder)")
    p.add_argument("--labels", type=Path, help="label map of the image (or a folder of them, matched by name)")
    p.add_argument("--levels", default="40:64:8", help="levels T' (1..80): 48, 40:64:8 (end included) or 30,45,60")
    p.add_argument("--samples", type=int, default=4, help="samples per image and level")
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
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "mha"], help="file format")
    p.add_argument("--manifest", choices=["csv", "json"], default="csv")
    p.add_argument("--scheduler", default=None,
                   help="run on Dask: 'local' (worker processes here) or a scheduler address (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None, help="worker processes of --scheduler local")
    p.add_argument("--resume", action="store_true", help="continue an interrupted export in --out-dir")
    _run_options(p)
    p.set_defaults(func=cmd_generate_drdm)

    p = generate.add_parser("modiff", help="forecast a motion sequence from one frame and a frame count (Mo-Diff)")
    p.add_argument("--first", type=Path, required=True, help="the first frame (2D or 3D image)")
    p.add_argument("--frame", type=int, default=None, help="if --first is 4D: which frame (0-based) to start from")
    p.add_argument("--frames", type=int, required=True, help="frame count N, the first frame included")
    p.add_argument("--out", type=Path, required=True, help="4D image to write (the first frame's geometry)")
    p.add_argument("--fields-out", type=Path, help="also write the differential fields I_k - I_(k-1) as a 4D image")
    p.add_argument("--steps", type=int, default=25, help="sampler steps per stage")
    p.add_argument("--sampler", choices=["ddim", "ancestral"], default="ddim")
    p.add_argument("--weights", default=None, help="checkpoint (.safetensors; default: bundled phantom model)")
    _run_options(p)
    p.set_defaults(func=cmd_generate_modiff)

    evaluate = sub.add_parser("evaluate", help="measure a model on held-out cases").add_subparsers(
        dest="model", required=True)
    p = evaluate.add_parser("ddm", help="PSNR/NMSE/Dice/folding of DDM against baselines")
    p.add_argument("--data", type=Path, required=True, help="ACDC-layout folders with 4D cines")
    p.add_argument("--weights", default=None)
    p.add_argument("--cases", type=int, default=None, help="use only the first N cases")
    p.add_argument("--adapt", default="", help="also evaluate after adapting, e.g. 25,50")
    p.add_argument("--csv", type=Path, help="write per-case results")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate_ddm)
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
    p.add_argument("--csv", type=Path, help="write per-sample results")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate_drdm)

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
    p.add_argument("--no-ddm", action="store_true", help="skip the DDM baseline")
    p.add_argument("--ddm-weights", default=None, help="DDM weights for the baseline (default: bundled)")
    p.add_argument("--csv", type=Path, help="write per-frame results")
    _run_options(p)
    p.set_defaults(func=cmd_evaluate_modiff)

    weights = sub.add_parser("weights", help="list or download named third-party weights").add_subparsers(
        dest="action", required=True)
    p = weights.add_parser("list", help="the known weights, their licence and whether they are cached")
    p.set_defaults(func=cmd_weights_list)
    p = weights.add_parser("fetch", help="download named weights into the cache (sha256 checked)")
    p.add_argument("name", help="e.g. drdm-cmr-2d")
    p.set_defaults(func=cmd_weights_fetch)

    p = sub.add_parser("gui", help="open napari with the plugin's widgets and a case")
    p.add_argument("paths", nargs="*", type=Path, help="files or folders to open (default: a sample)")
    p.add_argument("--sample", choices=["cardiac", "cardiac_2d", "lung", "none"], default="cardiac")
    p.add_argument("--screenshot", type=Path, help="save a window screenshot after loading")
    p.add_argument("--quit", action="store_true", help="close instead of running the event loop")
    p.set_defaults(func=cmd_gui)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting collapse when another job holds a core (measured:
    # 0.35 s -> 1.4-5.6 s per DRDM step at load 4); torch is imported later, inside the commands.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, OutputExistsError) as exc:
        print(f"deformdiff: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
