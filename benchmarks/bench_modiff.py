"""Mo-Diff forecasting benchmark: N = 10 frames from one phantom frame at the default sizes
(2D 128 x 128 slice, 3D 128 x 128 x 32 volume), on this machine (CPU, or --device cuda).

Each variant runs in its own spawned process so its peak memory (max RSS, plus CUDA peak on a
GPU) is its own. Variants, same weights, seed and sampler:
- streamed: generate_modiff as the GUI runs it (about 8 decoded previews while sampling);
- no previews: the same sampling decoding only the final frames (the baseline of the ratio:
  what the previews cost);
- additive output: no previews and the former output (first frame + decoded change), so no
  registration (the baseline of what the warp output's fields cost);
and for scale, the same streamed run with twice the sampler steps.

Usage: .venv/bin/python benchmarks/bench_modiff.py [--frames 10] [--steps 25] [--device cpu] [--dims 2,3]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

from _spawn import measure
from _table import print_table  # benchmarks/ is on sys.path when a script here runs


def _first(ndims: int):
    from napari_deformdiff.core.io import Volume
    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.phantom.dataset import case_volumes

    cine, _ = case_volumes(cardiac_phantom(123, frames=32, two_d=ndims == 2), "bench")
    return Volume(cine.data[0], cine.geometry)


def _peak(device: str) -> tuple[float, float]:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return rss, torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0


def run(ndims, frames, steps, refreshes, device, output, queue):
    import torch

    from napari_deformdiff.core.events import Frame, SequencePreview
    from napari_deformdiff.core.modiff.generate import generate_modiff
    from napari_deformdiff.core.modiff.weights import load_modiff

    first = _first(ndims)
    model, _ = load_modiff(None, ndims=ndims, device=device)
    list(generate_modiff(first, frames=frames, steps=2, model=model, output=output))  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    first_preview, previews = None, 0
    for event in generate_modiff(first, frames=frames, steps=steps, model=model, refreshes=refreshes, output=output):
        if isinstance(event, SequencePreview):
            previews += 1
            first_preview = first_preview or time.perf_counter() - t0
        elif isinstance(event, Frame) and event.index == frames - 1:
            total = time.perf_counter() - t0
    queue.put((first_preview, total, previews, *_peak(device)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", default="2,3")
    args = parser.parse_args()
    import torch

    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    n, k = args.frames, args.steps
    for ndims in (int(d) for d in args.dims.split(",")):
        size = "128 x 128" if ndims == 2 else "128 x 128 x 32"
        streamed = measure(run, ndims, n, k, 8, args.device, "warp")
        plain = measure(run, ndims, n, k, 1, args.device, "warp")
        longer = measure(run, ndims, n, 2 * k, 8, args.device, "warp")
        additive = measure(run, ndims, n, k, 1, args.device, "additive")
        rows = [
            ("streamed: first preview", streamed[0], f"{streamed[2]} previews in all"),
            (f"streamed: all {n} frames", streamed[1],
             f"no previews {plain[1]:.3f} s (previews cost {streamed[1] / plain[1]:.2f}x)"),
            (f"streamed, {2 * k} steps: all {n} frames", longer[1], f"{longer[1] / streamed[1]:.2f}x the {k}-step run"),
            (f"additive output, no previews: all {n} frames", additive[1],
             f"the warp output's fields cost {plain[1] / additive[1]:.2f}x"),
            ("streamed: peak RSS (MB)", streamed[3], f"no previews {plain[3]:.0f} MB (value column = MB)"),
        ]
        if args.device.startswith("cuda"):
            rows.append(("streamed: CUDA peak (MB)", streamed[4], f"no previews {plain[4]:.0f} MB (value column = MB)"))
        print_table(f"Mo-Diff {ndims}D forecast, {size}, N = {n}, {k} DDIM steps per stage", rows)


if __name__ == "__main__":
    main()
