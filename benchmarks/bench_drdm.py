"""DRDM speed on this machine (CPU by default): recovery (Algorithm 2) and the forward random field,
each against a re-implementation of the authors' loop run in the same process, interleaved.

Cases, each in its own spawned process (its peak memory, max RSS, is its own):
- 2D: a 256 x 256 cardiac phantom slice, the authors' published weights (registry name
  drdm-cmr-2d, or --weights PATH), the authors' loop (80 recovery steps, t = 79..0; --steps N runs
  its last N steps only), level 48 (--level). Per round, interleaved:
  * authors' loop: Algorithm 2 as the authors' script runs it (methods.md section 2): the forward
    field composed one small field at a time (grid rebuilt at every composition), then per step
    the network's ordinary path (no_grad, default memory format, modules as written), the
    recovery field composed after phi, the original image resampled through phi for the next step;
    the image warped once at the end;
  * streamed: deform_instance as the GUI and CLI run it (every frame made, fold-free repair);
  * export: the real export path (export_drdm, augment mode, .nii.gz files written to a temporary
    folder) of --batch samples of the image at the level, with its default workers (on the CPU one
    single-threaded unit per torch thread); throughput against --batch runs of the authors' loop;
  * the fold-free repair alone on the last field (its share of the streamed time).
  * one U-Net pass, the authors' path (NCHW, no_grad) against ours (the inference copy): the
    ceiling of the streamed ratio, since two passes are most of a step.
- 2D bfloat16 (CPUs with native bfloat16 only): streamed with precision="bfloat16" against the
  authors' loop; first use (compile) in a fresh process, read from Inductor's on-disk cache when a
  previous process compiled the same network (core/drdm/bfloat16.py says where).
- forward field at --forward-shape (32 x 128 x 128): today's recipe (the authors' chain written with
  spatial.compose, grid_sample to the image), ours (sample_forward: the same chain on one sampling
  grid, the needed control block upsampled), ours with recipe="doubling", TorchIO's
  RandomElasticDeformation and MONAI's Rand3DElastic (each drawing a field and warping the image),
  interleaved; with the statistics of the doubling recipe against the chain.
- 3D recovery at --grid-3d (bundled 3D weights if any, else the same network randomly initialised),
  the paper's loop at --level-3d: streamed against the authors' loop.

Usage: .venv/bin/python benchmarks/bench_drdm.py [--weights drdm-cmr-2d] [--steps 80] [--batch 8]
       [--rounds 2] [--threads N] [--skip-bf16] [--skip-3d] [--skip-forward] [--quick]
Run it on a quiet machine (`uptime` load below 1.5); the script prints the load before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import time

from _spawn import measure
from _table import print_table  # benchmarks/ is on sys.path when a script here runs

LEVEL_2D = 48
DEFAULT_GRID_3D = (32, 128, 128)
FORWARD_SHAPE = (32, 128, 128)
FORWARD_LEVELS = (4, 48)


def _image(ndims, shape):
    from napari_deformdiff.core.drdm.evaluate import phantom_images

    return phantom_images(ndims, shape, 1, seed=123)[0]


def _model(case, weights, grid_3d):
    """(model, meta, note) for case '2d' or '3d'."""
    import torch

    from napari_deformdiff.core.drdm.nets import RecResACNet
    from napari_deformdiff.core.drdm.weights import DRDMMeta, load_drdm
    from napari_deformdiff.core.weights.resolve import default_weights

    if case == "2d":
        model, meta = load_drdm(weights, ndims=2)
        return model, meta, f"weights {meta.name}"
    if default_weights("drdm", 3).is_file():
        model, meta = load_drdm(None, ndims=3)
        return model, meta, f"bundled 3D weights {meta.name}"
    torch.manual_seed(0)
    meta = DRDMMeta(ndims=3, grid=grid_3d, steps=80, name="random")
    return RecResACNet(3).eval(), meta, "no bundled 3D weights: the same net randomly initialised"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def authors_forward(shape, level, seed, device="cpu"):
    """The authors' forward recipe one composition at a time, as today's code before the speed-up."""
    import torch
    import torch.nn.functional as F

    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.drdm import forward as fw

    g = torch.Generator().manual_seed(seed)
    n = len(shape)
    with torch.no_grad():
        v = (fw._multiscale_noise(1, n, fw.SIGMA, g) * fw.CONTROL_GRID).to(device)
        v0 = spatial.compose((fw._multiscale_noise(1, n, fw.NOISE_RATIO * fw.SIGMA, g) * fw.CONTROL_GRID).to(device), v)
        psi = v0
        for _ in range(fw.n_ddf(level) - 1):
            psi = spatial.compose(psi, v0, padding_mode="border")
        axes = [fw._central_axis(s, psi.device) for s in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).float()[None]
        out = F.grid_sample(psi, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out * torch.tensor([s * s / 64.0**2 for s in shape], device=device).view(1, n, *([1] * n))


def authors_loop(image, level, model, meta, seed, loop="authors", device="cpu"):
    """Algorithm 2 as the authors' script runs it; returns the final field (model grid = image grid)."""
    import numpy as np
    import torch

    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.drdm.generate import recovery_times, time_index
    from napari_deformdiff.core.drdm.nets import authors_to_voxels
    from napari_deformdiff.core.nn.model_grid import unit_range

    with torch.no_grad():
        src = torch.from_numpy(np.asarray(image, np.float32))[None, None].to(device)
        x0 = torch.from_numpy(unit_range(image)[0])[None, None].to(device)
        phi = authors_forward(tuple(image.shape), level, seed, device)
        for t in recovery_times(level, loop, meta.steps):
            moved = spatial.warp(x0, phi, padding_mode="border")
            step = authors_to_voxels(model(moved, torch.tensor([time_index(t, meta.steps)], device=device)))
            phi = spatial.compose(phi, step, padding_mode="border")
        spatial.warp(src, phi, padding_mode="border")
    return phi


def export_samples(image, level, samples, model, meta, seed, folder, precision="float32"):
    """The real export path for `samples` samples of one 2D image (files written, then removed)."""
    import shutil

    from napari_deformdiff.core.drdm.augment import Case, ExportSettings, export_drdm
    from napari_deformdiff.core.geometry import Geometry
    from napari_deformdiff.core.io import Volume

    case = Case("bench", Volume(image, Geometry.identity(2), False, "bench"))
    settings = ExportSettings(levels=(level,), samples=samples, seed=seed, loop="authors", precision=precision)
    out = os.path.join(folder, f"export{seed}")
    for _ in export_drdm([case], out, settings, model=model, meta=meta):
        pass
    shutil.rmtree(out)


def run_2d(weights, level, steps, batch, rounds, threads, precision, queue):
    import tempfile

    import torch

    from napari_deformdiff.core.drdm.augment import export_workers
    from napari_deformdiff.core.drdm.generate import _inference_model, deform_instance, fold_free_field
    from napari_deformdiff.core.events import Frame
    from napari_deformdiff.core.nn.model_grid import unit_range

    torch.set_num_threads(threads)
    model, meta, note = _model("2d", weights, None)
    meta = dataclasses.replace(meta, steps=steps)  # the authors' loop: t = steps-1..0
    image = _image(2, meta.grid)
    w0 = time.perf_counter()
    list(deform_instance(image, 2, model=model, meta=meta, seed=1, precision=precision))  # warm-up (compile)
    warm = time.perf_counter() - w0
    authors_loop(image, 2, model, meta, 1, loop="paper")
    rows = {"authors": [], "streamed": [], "batch": [], "repair": [], "pass_authors": [], "pass_ours": []}
    fast = _inference_model(model, torch.device("cpu"), precision)
    x = torch.from_numpy(unit_range(image)[0])[None, None]
    t = torch.tensor([meta.steps // 2])

    def authors_pass():
        with torch.no_grad():
            model.single(x, t)

    def our_pass():
        with torch.inference_mode():
            fast(x, t) if precision == "bfloat16" else fast.single(x, t)

    for r in range(rounds):
        for _ in range(3):  # one U-Net pass, the bulk of a step (two per step)
            rows["pass_authors"].append(_timed(authors_pass)[0])
            rows["pass_ours"].append(_timed(our_pass)[0] / (2 if precision == "bfloat16" else 1))
        rows["authors"].append(_timed(lambda: authors_loop(image, level, model, meta, r))[0])
        last = []

        def streamed():
            for e in deform_instance(image, level, model=model, meta=meta, seed=r, loop="authors",
                                     precision=precision):
                if isinstance(e, Frame):
                    last[:] = [e.field]

        rows["streamed"].append(_timed(streamed)[0])
        if batch:
            with tempfile.TemporaryDirectory() as folder:
                rows["batch"].append(_timed(lambda: export_samples(image, level, batch, model, meta, r, folder,
                                                                   precision))[0])
        raw = torch.from_numpy(last[0])[None]
        with torch.inference_mode():
            rows["repair"].append(_timed(lambda: fold_free_field(raw))[0])
    med = {k: (statistics.median(v) if v else float("nan")) for k, v in rows.items()}
    med["workers"] = export_workers("cpu", precision, batch) if batch else 0
    queue.put((med, rows, _rss_mb(), note, warm, steps))


def run_forward(shape, levels, rounds, threads, queue):
    import numpy as np
    import torch

    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.drdm.elastic_baselines import MonaiElastic, TorchIOElastic
    from napari_deformdiff.core.drdm.forward import sample_forward

    torch.set_num_threads(threads)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    src = torch.from_numpy(image)[None, None]
    tio, monai = TorchIOElastic(len(shape)), MonaiElastic(len(shape))
    tio.draw(image, 5.0, 0)
    monai.draw(image, 5.0, 0)
    times: dict = {}
    stats: dict = {}

    def ours(level, seed, recipe):
        with torch.no_grad():
            ddf = sample_forward(shape, level, seed=seed, recipe=recipe).ddf
            spatial.warp(src, ddf, padding_mode="border")
        return ddf

    def today(level, seed):
        with torch.no_grad():
            ddf = authors_forward(shape, level, seed)
            spatial.warp(src, ddf, padding_mode="border")
        return ddf

    def describe(ddf):
        det = spatial.jacobian_determinant(ddf)
        return float(spatial.vector_norm(ddf).mean()), float(det.std())

    for r in range(rounds):
        for level in levels:
            for name, fn in (("today", lambda: today(level, r)), ("chain", lambda: ours(level, r, "chain")),
                             ("doubling", lambda: ours(level, r, "doubling"))):
                seconds, ddf = _timed(fn)
                times.setdefault((name, level), []).append(seconds)
                stats.setdefault((name, level), []).append(describe(ddf))
            times.setdefault(("torchio", level), []).append(tio.draw(image, 5.0, r).seconds)
            times.setdefault(("monai", level), []).append(monai.draw(image, 5.0, r).seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    mean_stats = {k: tuple(float(np.mean(c)) for c in zip(*v)) for k, v in stats.items()}
    queue.put((med, mean_stats, _rss_mb()))


def run_3d(weights, grid_3d, level_3d, threads, queue):
    import torch

    from napari_deformdiff.core.drdm.generate import deform_instance

    torch.set_num_threads(threads)
    model, meta, note = _model("3d", weights, grid_3d)
    image = _image(3, meta.grid)
    list(deform_instance(image, 1, model=model, meta=meta, seed=1))
    streamed = _timed(lambda: list(deform_instance(image, level_3d, model=model, meta=meta, seed=0)))[0]
    authors = _timed(lambda: authors_loop(image, level_3d, model, meta, 0, loop="paper"))[0]
    queue.put((streamed, authors, _rss_mb(), note, tuple(meta.grid)))


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="drdm-cmr-2d", help="2D weights: registry name or file")
    parser.add_argument("--level", type=int, default=LEVEL_2D, help="2D deformation level")
    parser.add_argument("--steps", type=int, default=80, help="2D: the authors' loop's last N steps (80: all)")
    parser.add_argument("--batch", type=int, default=8, help="2D: samples in the export row (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians)")
    parser.add_argument("--level-3d", type=int, default=4, help="3D level (paper loop: this many steps)")
    parser.add_argument("--grid-3d", default=",".join(map(str, DEFAULT_GRID_3D)),
                        help="3D model grid when there are no bundled 3D weights")
    parser.add_argument("--forward-shape", default=",".join(map(str, FORWARD_SHAPE)))
    parser.add_argument("--forward-levels", default=",".join(map(str, FORWARD_LEVELS)))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-2d", action="store_true")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true", help="no bfloat16 rows")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 steps, batch 2, tiny 3D grid")
    args = parser.parse_args()
    if args.quick:
        args.level, args.steps, args.batch, args.rounds = 3, 3, 2, 1
        args.grid_3d, args.level_3d, args.forward_shape = "16,32,32", 2, "16,32,32"
    import torch

    threads = args.threads or torch.get_num_threads()
    grid_3d = tuple(int(v) for v in args.grid_3d.split(","))
    fshape = tuple(int(v) for v in args.forward_shape.split(","))
    flevels = tuple(int(v) for v in args.forward_levels.split(","))
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{threads} threads; {_load()} at start")
    rows = []
    if not args.skip_2d:
        med, _, rss, note, _, steps = measure(run_2d, args.weights, args.level, args.steps, args.batch, args.rounds, threads,
                                              "float32")
        a, s = med["authors"], med["streamed"]
        rows += [
            (f"2D 256x256, level {args.level}, {steps} steps: authors' loop", a, f"{a / steps:.3f} s per step; {note}"),
            (f"2D {steps} steps: streamed float32", s, f"{a / s:.2f}x the authors' loop (target >= 2x)"),
            ("2D: fold-free repair of the last field", med["repair"],
             f"{100 * med['repair'] / s:.1f} % of the streamed time"),
            ("2D: one U-Net pass, authors' (NCHW, no_grad)", med["pass_authors"], "two passes per step"),
            ("2D: one U-Net pass, ours (float32)", med["pass_ours"],
             f"{med['pass_authors'] / med['pass_ours']:.2f}x: the ceiling of the streamed ratio (convolutions "
             "are ~85 % of it)"),
        ]
        if args.batch:
            b, workers = med["batch"], med["workers"]
            rows.append((f"2D: export of {args.batch} samples (export_drdm, files written)", b,
                         f"{args.batch * a / b:.2f}x the throughput of {args.batch} authors' loops "
                         f"({args.batch * a:.1f} s; target >= 3x); units at once: {workers}"))
        rows.append(("2D: peak RSS (MB), all of the above", rss, "target <= 1024 MB (value column = MB)"))
        if torch.ops.mkldnn._is_mkldnn_bf16_supported() and not args.skip_bf16:
            med, _, rss, _, warm, _ = measure(run_2d, args.weights, args.level, args.steps, args.batch, args.rounds,
                                              threads, "bfloat16")
            a = med["authors"]
            rows += [
                (f"2D {steps} steps: streamed bfloat16", med["streamed"],
                 f"{a / med['streamed']:.2f}x the authors' loop (target >= 4x)"),
                ("2D bfloat16: one U-Net pass", med["pass_ours"],
                 f"{med['pass_authors'] / med['pass_ours']:.2f}x the authors' float32 pass"),
            ]
            if args.batch:
                rows.append((f"2D bfloat16: export of {args.batch} samples", med["batch"],
                             f"{args.batch * a / med['batch']:.2f}x the throughput of {args.batch} authors' loops "
                             f"({args.batch * a:.1f} s; target >= 3x); units at once: {med['workers']}"))
            rows += [
                ("2D bfloat16: first use (compile + 2 steps)", warm,
                 "fresh process; Inductor's on-disk cache (see core/drdm/bfloat16.py) after a first run"),
                ("2D bfloat16: peak RSS (MB)", rss, "(value column = MB)"),
            ]
    if not args.skip_forward:
        med, st, rss = measure(run_forward, fshape, flevels, args.rounds, threads)
        g = "x".join(map(str, fshape))
        for level in flevels:
            t, c, d = med[("today", level)], med[("chain", level)], med[("doubling", level)]
            tio, mon = med[("torchio", level)], med[("monai", level)]
            rows += [
                (f"forward {g} level {level}: today's recipe", t, "field + warp"),
                (f"forward level {level}: ours (same chain)", c,
                 f"{t / c:.2f}x today's; TorchIO {tio:.3f} s ({tio / c:.2f}x ours), MONAI {mon:.3f} s"),
                (f"forward level {level}: ours, doubling recipe", d,
                 f"{t / d:.2f}x today's, {tio / d:.2f}x TorchIO's speed; mean |u| "
                 f"{st[('doubling', level)][0]:.3f} vs chain {st[('chain', level)][0]:.3f} vox, std det "
                 f"{st[('doubling', level)][1]:.4f} vs {st[('chain', level)][1]:.4f}"),
            ]
        rows.append(("forward: peak RSS (MB)", rss, "TorchIO and MONAI in the same process"))
    if not args.skip_3d:
        s3, a3, rss, note, grid = measure(run_3d, args.weights, grid_3d, args.level_3d, threads)
        g = "x".join(map(str, grid))
        rows += [
            (f"3D {g}, {args.level_3d} steps: streamed", s3, f"authors' loop {a3:.3f} s ({a3 / s3:.2f}x); {note}"),
            ("3D: peak RSS (MB)", rss, "target <= 2048 MB (value column = MB)"),
        ]
    print_table("DRDM speed against the authors' loop (same process, interleaved)", rows)
    print(f"# {_load()} at end")


if __name__ == "__main__":
    main()
