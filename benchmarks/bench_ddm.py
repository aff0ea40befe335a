"""DDM generation benchmark: 128 x 128 x 32, N = 16 frames, on this machine (CPU, or --device cuda).

Each variant runs in its own spawned process so its peak memory (max RSS, plus CUDA peak on a
GPU) is its own. Variants:
- streamed: generate_ddm as the GUI and CLI run it (first frame before the diffusion pass,
  batched frames, shared first convolution, inference copy with channels-last / padded input);
- plain loop: the straightforward baseline in the same run (the code once, then one plain
  deformation-module call per frame, back to the input grid, warp).

Usage: .venv/bin/python benchmarks/bench_ddm.py [--frames 16] [--device cpu] [--weights PATH]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

from _spawn import measure
from _table import print_table  # benchmarks/ is on sys.path when a script here runs


def _case():
    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.phantom.dataset import case_volumes

    case = cardiac_phantom(123, frames=10)
    cine, _ = case_volumes(case, "bench")
    from napari_deformdiff.core.io import Volume

    return (Volume(cine.data[0], cine.geometry), Volume(cine.data[case.es_index], cine.geometry))


def _peak_mb(device: str) -> float:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.startswith("cuda"):
        return rss, torch.cuda.max_memory_allocated() / 2**20
    return rss, 0.0


def run_streamed(frames, device, weights, queue):
    import torch

    from napari_deformdiff.core.ddm.generate import generate_ddm
    from napari_deformdiff.core.ddm.weights import load_ddm
    from napari_deformdiff.core.events import Frame

    source, target = _case()
    model, _ = load_ddm(weights, ndims=3, device=device)
    list(generate_ddm(source, target, frames=2, model=model))  # warm-up (allocator, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    first = None
    for event in generate_ddm(source, target, frames=frames, model=model):
        if isinstance(event, Frame) and first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    queue.put((first, total, *_peak_mb(device)))


def run_plain(frames, device, weights, queue):
    import numpy as np
    import torch

    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.ddm.weights import load_ddm
    from napari_deformdiff.core.nn.model_grid import GridMap, to_model

    source, target = _case()
    model, _ = load_ddm(weights, ndims=3, device=device)
    cfg = model.config

    def loop(n):
        grid = GridMap(source.spatial_shape, source.geometry.spacing, cfg.grid, cfg.spacing)
        s, t = to_model(source.data, grid, device), to_model(target.data, grid, device)
        s_in = torch.from_numpy(source.data)[None, None].to(device)
        first = None
        t0 = time.perf_counter()
        with torch.inference_mode():
            code = model.code(s, t)
            for g in np.linspace(0, 1, n):
                ddf = grid.field_to_input(model.field(s, float(g) * code))
                frame = spatial.warp(s_in, ddf, padding_mode="border")[0, 0].cpu().numpy()
                if first is None:
                    first = time.perf_counter() - t0
        return first, time.perf_counter() - t0, frame

    loop(2)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first, total, _ = loop(frames)
    queue.put((first, total, *_peak_mb(device)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="default: the bundled 3D phantom weights")
    args = parser.parse_args()
    import torch

    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    streamed = measure(run_streamed, args.frames, args.device, args.weights)
    plain = measure(run_plain, args.frames, args.device, args.weights)
    n = args.frames
    gpu = args.device.startswith("cuda")
    rows = [
        ("streamed: first frame", streamed[0], f"plain loop {plain[0]:.3f} s ({plain[0] / streamed[0]:.2f}x); target <= 1.5 s"),
        (f"streamed: all {n} frames", streamed[1], f"plain loop {plain[1]:.3f} s ({plain[1] / streamed[1]:.2f}x); target <= 8 s"),
        ("streamed: frames per second", n / streamed[1], f"plain loop {n / plain[1]:.2f} fps (value column = fps)"),
        ("streamed: peak RSS (MB)", streamed[2], f"plain loop {plain[2]:.0f} MB; target <= 2048 MB (value column = MB)"),
    ]
    if gpu:
        rows.append(("streamed: CUDA peak (MB)", streamed[3], f"plain loop {plain[3]:.0f} MB (value column = MB)"))
    print_table(f"DDM generation, 128 x 128 x 32, N = {n}", rows)


if __name__ == "__main__":
    main()
