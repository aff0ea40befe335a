"""DRDM recovery benchmark (the paper's Algorithm 2) on this machine, CPU by default.

Cases, each variant in its own spawned process so that its peak memory (max RSS) is its own:
- 2D: a 256 x 256 cardiac phantom slice, the authors' published weights (registry name
  drdm-cmr-2d, or --weights PATH), the authors' loop (80 recovery steps, t = 79..0), level 48;
- 3D: the bundled 3D phantom weights on their model grid when they exist, else the same network
  randomly initialised on --grid-3d (said so in the table), the paper's loop at --level-3d.
Variants:
- streamed: deform_instance as the GUI and CLI run it (inference mode, channels-last copy of the
  network, in-place inference path, oneDNN convolutions, no resampling when the input is the model
  grid), consuming every frame;
- streamed bfloat16: the same with precision="bfloat16" (the network's passes in mixed bfloat16,
  compiled by torch.compile; the compile time is its first-use row);
- plain loop: the same recovery one straightforward step at a time in the same run (no_grad, fresh
  tensors, the network's ordinary path, the field always resampled to the input grid, the original
  image warped through it).

Usage: .venv/bin/python benchmarks/bench_drdm.py [--weights drdm-cmr-2d] [--level-3d 4] [--threads N] [--skip-bf16]
Run it on a quiet machine (`uptime` load below 1.5); the script prints the load before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

from _spawn import measure
from _table import print_table  # benchmarks/ is on sys.path when a script here runs

LEVEL_2D = 48
DEFAULT_GRID_3D = (32, 128, 128)


def _image(ndims, shape):
    from napari_deformdiff.core.drdm.evaluate import phantom_images

    return phantom_images(ndims, shape, 1, seed=123)[0]


def _model(case, weights, grid_3d):
    """(model, meta, note) for case '2d' or '3d'."""
    import torch

    from napari_deformdiff.core.drdm.weights import DRDMMeta, load_drdm
    from napari_deformdiff.core.weights.resolve import default_weights
    from napari_deformdiff.core.drdm.nets import RecResACNet

    if case == "2d":
        model, meta = load_drdm(weights, ndims=2)
        return model, meta, f"weights {meta.name}"
    if default_weights("drdm", 3).is_file():
        model, meta = load_drdm(None, ndims=3)
        return model, meta, f"bundled 3D weights {meta.name}"
    torch.manual_seed(0)
    meta = DRDMMeta(ndims=3, grid=grid_3d, steps=80, name="random")
    return RecResACNet(3).eval(), meta, "no bundled 3D weights: the same net randomly initialised"


def _settings(case, level_3d):
    if case == "2d":
        return (3, "paper") if os.environ.get("BENCH_DRDM_QUICK") else (LEVEL_2D, "authors")
    return level_3d, "paper"


def run_streamed_bf16(case, weights, grid_3d, level_3d, threads, queue):
    run_streamed(case, weights, grid_3d, level_3d, threads, queue, "bfloat16")


def run_streamed(case, weights, grid_3d, level_3d, threads, queue, precision="float32"):
    import torch

    from napari_deformdiff.core.drdm.generate import deform_instance
    from napari_deformdiff.core.events import Frame

    torch.set_num_threads(threads)
    model, meta, note = _model(case, weights, grid_3d)
    image = _image(meta.ndims, meta.grid)
    level, loop = _settings(case, level_3d)
    w0 = time.perf_counter()
    list(deform_instance(image, 2, model=model, meta=meta, seed=1, precision=precision))  # warm-up (and compile)
    warm = time.perf_counter() - w0
    c0 = time.process_time()
    t0 = time.perf_counter()
    first, steps = None, 0
    for event in deform_instance(image, level, model=model, meta=meta, seed=0, loop=loop, precision=precision):
        if isinstance(event, Frame):
            if first is None:
                first = time.perf_counter() - t0
            steps = event.total - 1
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    queue.put((first, total, steps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, note,
               tuple(meta.grid), cpu, warm))


def run_plain(case, weights, grid_3d, level_3d, threads, queue):
    import numpy as np
    import torch

    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.drdm.forward import sample_forward
    from napari_deformdiff.core.drdm.generate import model_grid_map, recovery_times, time_index
    from napari_deformdiff.core.nn.model_grid import unit_range
    from napari_deformdiff.core.drdm.nets import authors_to_voxels

    torch.set_num_threads(threads)
    model, meta, note = _model(case, weights, grid_3d)
    image = _image(meta.ndims, meta.grid)
    level, loop = _settings(case, level_3d)

    def loop_once(level, seed):
        c0 = time.process_time()
        t0 = time.perf_counter()
        first = None
        with torch.no_grad():
            grid = model_grid_map(image.shape, (1.0,) * image.ndim, meta.grid)
            src = torch.from_numpy(np.asarray(image, np.float32))[None, None]
            x0 = grid.image_to_model(torch.from_numpy(unit_range(image)[0])[None, None])
            phi = sample_forward(meta.grid, level, seed=seed).ddf
            times = recovery_times(level, loop, meta.steps)
            for t in [None, *times]:
                if t is not None:
                    moved = spatial.warp(x0, phi, padding_mode="border")
                    step = authors_to_voxels(model(moved, torch.tensor([time_index(t, meta.steps)])))
                    phi = spatial.compose(phi, step, padding_mode="border")
                field = grid.field_to_input(phi)
                spatial.warp(src, field, padding_mode="border")[0, 0].numpy()
                field[0].numpy()
                if first is None:
                    first = time.perf_counter() - t0
        return first, time.perf_counter() - t0, len(times), time.process_time() - c0

    loop_once(2, 1)  # warm-up
    first, total, steps, cpu = loop_once(level, 0)
    queue.put((first, total, steps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, note,
               tuple(meta.grid), cpu))


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="drdm-cmr-2d", help="2D weights: registry name or file")
    parser.add_argument("--level-3d", type=int, default=4, help="3D level (paper loop: this many steps)")
    parser.add_argument("--grid-3d", default=",".join(map(str, DEFAULT_GRID_3D)),
                        help="3D model grid when there are no bundled 3D weights")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true", help="no bfloat16 rows")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 steps in 2D, a tiny 3D grid")
    args = parser.parse_args()
    if args.quick:
        os.environ["BENCH_DRDM_QUICK"] = "1"  # inherited by the spawned processes
        args.grid_3d, args.level_3d = "16,32,32", 2
    import torch

    threads = args.threads or torch.get_num_threads()
    grid_3d = tuple(int(v) for v in args.grid_3d.split(","))
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{threads} threads; {_load()} at start")
    s2 = measure(run_streamed, "2d", args.weights, grid_3d, args.level_3d, threads)
    p2 = measure(run_plain, "2d", args.weights, grid_3d, args.level_3d, threads)
    rows = [
        (f"2D 256x256, {s2[2]} steps: total", s2[1],
         f"plain loop {p2[1]:.3f} s ({p2[1] / s2[1]:.2f}x); target <= 10 s (authors' code: 12-16 s); {s2[4]}"),
        ("2D: seconds per step", s2[1] / s2[2], f"plain loop {p2[1] / p2[2]:.3f} s"),
        ("2D: CPU seconds per step (all threads)", s2[6] / s2[2],
         f"plain loop {p2[6] / p2[2]:.3f} s ({p2[6] / s2[6]:.2f}x); less sensitive to other jobs than wall time"),
        ("2D: first frame (forward field)", s2[0], f"plain loop {p2[0]:.3f} s"),
        ("2D: peak RSS (MB)", s2[3], f"plain loop {p2[3]:.0f} MB (value column = MB)"),
    ]
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported() and not args.skip_bf16
    if bf16:
        b2 = measure(run_streamed_bf16, "2d", args.weights, grid_3d, args.level_3d, threads)
        rows += [
            (f"2D bfloat16, {b2[2]} steps: total", b2[1],
             f"float32 {s2[1]:.3f} s ({s2[1] / b2[1]:.2f}x), plain loop {p2[1] / b2[1]:.2f}x; target <= 10 s"),
            ("2D bfloat16: seconds per step", b2[1] / b2[2], f"CPU {b2[6] / b2[2]:.3f} s per step"),
            ("2D bfloat16: first use (compile + 2 steps)", b2[7], "once per process; later processes reuse "
             "PyTorch's compile cache"),
            ("2D bfloat16: peak RSS (MB)", b2[3], "(value column = MB)"),
        ]
    if not args.skip_3d:
        s3 = measure(run_streamed, "3d", args.weights, grid_3d, args.level_3d, threads)
        p3 = measure(run_plain, "3d", args.weights, grid_3d, args.level_3d, threads)
        g = "x".join(map(str, s3[5]))
        rows += [
            (f"3D {g}, {s3[2]} steps: total", s3[1], f"plain loop {p3[1]:.3f} s ({p3[1] / s3[1]:.2f}x); {s3[4]}"),
            ("3D: seconds per step", s3[1] / s3[2], f"plain loop {p3[1] / p3[2]:.3f} s"),
            ("3D: CPU seconds per step (all threads)", s3[6] / s3[2],
             f"plain loop {p3[6] / p3[2]:.3f} s ({p3[6] / s3[6]:.2f}x)"),
            ("3D: peak RSS (MB)", s3[3], f"plain loop {p3[3]:.0f} MB (value column = MB)"),
        ]
        if bf16:
            b3 = measure(run_streamed_bf16, "3d", args.weights, grid_3d, args.level_3d, threads)
            rows += [
                (f"3D bfloat16, {b3[2]} steps: total", b3[1], f"float32 {s3[1]:.3f} s ({s3[1] / b3[1]:.2f}x)"),
                ("3D bfloat16: seconds per step", b3[1] / b3[2], f"CPU {b3[6] / b3[2]:.3f} s per step"),
                ("3D bfloat16: first use (compile + 2 steps)", b3[7], ""),
                ("3D bfloat16: peak RSS (MB)", b3[3], "(value column = MB)"),
            ]
    print_table("DRDM recovery (Algorithm 2), streamed vs plain loop", rows)
    print(f"# {_load()} at end")


if __name__ == "__main__":
    main()
