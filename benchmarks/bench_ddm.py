"""DDM generation benchmark: 128 x 128 x 32, N = 16 frames, on this machine (CPU, or --device cuda).

Variants:
- streamed: generate_ddm as the GUI and CLI run it (first frame before the diffusion pass; on the
  CPU an inference copy with oneDNN convolutions and channels-last, and the deformation module
  run at 4 gammas with the other frames' fields interpolated (cubic in gamma); no resampling
  as this input already is on the model grid);
- streamed, every frame: the same with anchors=0 (the deformation module at every gamma);
- authors' loop: the baseline, our re-implementation of the authors' inference as they describe
  and run it (methods.md section 1): under no_grad, c = G_diff(cat[S, T, T], t = 0) once, then
  for every gamma of linspace(0, 1, N) phi = G_def(cat[S, gamma c]) and frame = their spatial
  transformer on (S + 1) / 2 (identity grid built once, trilinear, zero padding,
  align_corners=True), each frame and field copied to numpy. It starts from S and T already on
  the model grid (their data loader's job), so it does less than the streamed generator, which
  is timed from the input volumes.

Times: the variants run interleaved in one process, `--repeats` rounds; the table gives the median
time and the median of the per-round ratios. Peak RSS: each variant once more in its own spawned
process.

First frame (time from calling the generator to its first Frame; the model is loaded before, as
for a user who presses Run again; no adaptation, as `--adapt 0`): warm = `--first-repeats` more
interleaved runs of the streamed generator and the authors' loop stopped at their first frame, in
the process above (oneDNN's kernels made by the earlier runs); cold = the first run of a fresh
process right after loading the model (`--cold` processes, each variant; the model load time is
given beside it, not included). The 2D case: the bundled 2D weights on a 2D phantom slice, the
streamed generator against the plain model's first frame (the authors' order: the code, then the
deformation module at gamma 0, then the warp) in the same process. On the CPU also the CPU time
(thread_time) to the first frame on one thread, warm: a figure that other jobs on a shared machine
barely change. `--first-only` prints the first-frame rows alone. Quality: the streamed frames against the every-frame ones (PSNR per frame), and both
against the phantom's true frames ED -> ES (N = the number of true frames), as the paper scores DDM.

Usage: .venv/bin/python benchmarks/bench_ddm.py [--frames 16] [--repeats 3] [--first-repeats 7] [--cold 3]
                                                [--first-only] [--device cpu] [--weights PATH]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

from _spawn import measure
from _table import print_table  # benchmarks/ is on sys.path when a script here runs


def _pair(frames: int = 10):
    """(source ED, target ES, the true frames ED..ES) of a held-out 3D cardiac phantom."""
    from napari_deformdiff.core.io import Volume
    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.phantom.dataset import case_volumes

    case = cardiac_phantom(123, frames=frames)
    cine, _ = case_volumes(case, "bench")
    truth = cine.data[: case.es_index + 1]
    return Volume(cine.data[0], cine.geometry), Volume(cine.data[case.es_index], cine.geometry), truth


def _peak_mb(device: str) -> tuple[float, float]:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.startswith("cuda"):
        return rss, torch.cuda.max_memory_allocated() / 2**20
    return rss, 0.0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def streamed(source, target, model, frames, device, anchors=None, first_only=False):
    """generate_ddm as the GUI runs it: (seconds to the first frame, seconds in all, frames)."""
    from napari_deformdiff.core.ddm.generate import generate_ddm
    from napari_deformdiff.core.events import Frame

    t0 = time.perf_counter()
    first, out = None, []
    events = generate_ddm(source, target, frames=frames, model=model, device=device, anchors=anchors)
    for event in events:
        if isinstance(event, Frame):
            out.append(event.image)
            if first is None:
                _sync(device)
                first = time.perf_counter() - t0
                if first_only:
                    events.close()
                    break
    _sync(device)
    return first, time.perf_counter() - t0, out


def authors_inputs(source, target, model, device):
    """S and T on the model grid in [-1, 1], as the authors' data loader hands them to the model."""
    from napari_deformdiff.core.nn.model_grid import GridMap, to_model

    cfg = model.config
    grid = GridMap(source.spatial_shape, source.geometry.spacing, cfg.grid, cfg.spacing)
    return to_model(source.data, grid, device), to_model(target.data, grid, device)


def identity_grid(shape, device):
    import torch

    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]  # (1, 3, D, H, W) voxel indices


def transformer(image, flow, grid):
    """Pull-warp in voxels: locations = identity + flow, normalized with align_corners=True."""
    import torch
    import torch.nn.functional as F

    locs = grid + flow
    shape = flow.shape[2:]
    locs = torch.stack([2.0 * (locs[:, i] / (shape[i] - 1) - 0.5) for i in range(len(shape))], dim=1)
    locs = locs.permute(0, 2, 3, 4, 1).flip(-1)  # grid_sample wants (x, y, z) = (W, H, D)
    return F.grid_sample(image, locs, mode="bilinear", padding_mode="zeros", align_corners=True)


def authors_loop(s, t, model, frames, device, first_only=False):
    """The baseline: (seconds to the first frame, seconds in all, frames) of the authors' loop."""
    import numpy as np
    import torch

    t0 = time.perf_counter()
    first, out = None, []
    with torch.no_grad():
        grid = identity_grid(s.shape[2:], s.device)
        code = model.code(s, t)  # G_diff(cat[S, T, x_t = T], t = 0)
        for gamma in np.linspace(0.0, 1.0, frames):
            flow = model.field_fn(torch.cat([s, float(gamma) * code], dim=1))
            frame = transformer((s + 1.0) / 2.0, flow, grid)
            out.append(frame[0, 0].cpu().numpy())
            flow.cpu().numpy()
            if first is None:
                first = time.perf_counter() - t0
                if first_only:
                    break
    _sync(device)
    return first, time.perf_counter() - t0, out


def plain_first_2d(s, t, model, device):
    """The plain 2D model's first frame in the authors' order: code, field at gamma 0, warp (seconds)."""
    import torch

    from napari_deformdiff.core import spatial

    t0 = time.perf_counter()
    with torch.no_grad():
        code = model.code(s, t)
        flow = model.field_fn(torch.cat([s, 0.0 * code], dim=1))
        spatial.warp((s + 1.0) / 2.0, flow, padding_mode="zeros")[0, 0].cpu().numpy()
    _sync(device)
    return time.perf_counter() - t0


def _pair_2d():
    """(source ED, target ES) of a held-out 2D cardiac phantom slice."""
    from napari_deformdiff.core.io import Volume
    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.phantom.dataset import centred_geometry

    case = cardiac_phantom(123, two_d=True, frames=10)
    geometry = centred_geometry(case.images.shape[1:], case.spacing)
    return Volume(case.images[0], geometry), Volume(case.images[case.es_index], geometry)


def _load(device, weights, ndims=3):
    from napari_deformdiff.core.ddm.weights import load_ddm

    return load_ddm(weights if ndims == 3 else None, ndims=ndims, device=device)[0]


def run_cold(variant, device, weights, queue):
    """In this fresh process: load the model, then the first frame of its first run: (load s, first s)."""
    t0 = time.perf_counter()
    if variant == "2d":
        source, target = _pair_2d()
        model = _load(device, weights, 2)
    else:
        source, target, _ = _pair()
        model = _load(device, weights)
    _sync(device)
    load = time.perf_counter() - t0
    if variant == "authors":
        s, t = authors_inputs(source, target, model, device)
        first = authors_loop(s, t, model, 16, device, first_only=True)[0]
    else:
        first = streamed(source, target, model, 16, device, first_only=True)[0]
    queue.put((load, first))


def run_first_cpu_time(weights, repeats, queue):
    """CPU seconds (thread_time) to the first frame on ONE thread, warm, streamed and authors' loop
    interleaved: a figure other jobs on the machine barely change (two idle cores take about half)."""
    import torch

    torch.set_num_threads(1)
    source, target, _ = _pair()
    model = _load("cpu", weights)
    s, t = authors_inputs(source, target, model, "cpu")
    variants = {
        "streamed": lambda: streamed(source, target, model, 16, "cpu", first_only=True),
        "authors": lambda: authors_loop(s, t, model, 16, "cpu", first_only=True),
    }
    for run in variants.values():
        run()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            t0 = time.thread_time()
            run()
            times[name].append(time.thread_time() - t0)
    queue.put(times)


def run_first_2d(device, repeats, queue):
    """2D first frame, warm: the streamed generator and the plain model, interleaved: {name: [s, ...]}."""
    source, target = _pair_2d()
    model = _load(device, None, 2)
    s, t = authors_inputs(source, target, model, device)
    variants = {
        "streamed": lambda: streamed(source, target, model, 16, device, first_only=True)[0],
        "plain": lambda: plain_first_2d(s, t, model, device),
    }
    for run in variants.values():
        run()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
    queue.put(times)


def run_peak(variant, frames, device, weights, queue):
    """One variant once (after a warm-up) in this fresh process; puts the peak memory."""
    import torch

    source, target, _ = _pair()
    model = _load(device, weights)
    if variant == "authors":
        s, t = authors_inputs(source, target, model, device)
        authors_loop(s, t, model, 2, device)
        run = lambda: authors_loop(s, t, model, frames, device)  # noqa: E731
    else:
        anchors = 0 if variant == "every" else None
        streamed(source, target, model, 2, device, anchors)
        run = lambda: streamed(source, target, model, frames, device, anchors)  # noqa: E731
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run()
    queue.put(_peak_mb(device))


def run_times(frames, device, weights, repeats, first_repeats, queue):
    """Every variant `repeats` times, interleaved, in this process: {variant: [(first, total), ...]};
    then the streamed generator and the authors' loop `first_repeats` times to their first frame."""
    source, target, _ = _pair()
    model = _load(device, weights)
    s, t = authors_inputs(source, target, model, device)
    variants = {
        "streamed": lambda n: streamed(source, target, model, n, device),
        "every": lambda n: streamed(source, target, model, n, device, anchors=0),
        "authors": lambda n: authors_loop(s, t, model, n, device),
    }
    for run in variants.values():
        run(2)  # warm-up (allocator, kernels)
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            first, total, _ = run(frames)
            times[name].append((first, total))
    firsts = {"streamed": [], "authors": []}
    for _ in range(first_repeats):
        firsts["streamed"].append(streamed(source, target, model, frames, device, first_only=True)[0])
        firsts["authors"].append(authors_loop(s, t, model, frames, device, first_only=True)[0])
    queue.put((times, firsts))


def run_quality(frames, device, weights, queue):
    """Per-frame PSNR (dB, range of the source): streamed vs every-frame, and both vs the true frames."""
    import numpy as np

    from napari_deformdiff.core.image_metrics import psnr  # inf for identical frames

    model = _load(device, weights)
    source, target, _ = _pair()
    peak = float(np.ptp(source.data))
    fast = streamed(source, target, model, frames, device)[2]
    exact = streamed(source, target, model, frames, device, anchors=0)[2]
    vs_exact = [psnr(a, b, peak) for a, b in zip(fast, exact)]
    vs_target = [abs(psnr(a, target.data, peak) - psnr(b, target.data, peak)) for a, b in zip(fast, exact)]
    # the paper's score: N = the number of true frames ED..ES of a 20-frame phantom cycle
    source, target, truth = _pair(20)
    n = len(truth)
    fast = streamed(source, target, model, n, device)[2]
    exact = streamed(source, target, model, n, device, anchors=0)[2]
    true_fast = [psnr(a, g, peak) for a, g in zip(fast, truth)]
    true_exact = [psnr(b, g, peak) for b, g in zip(exact, truth)]
    queue.put((vs_exact, vs_target, true_fast, true_exact))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-repeats", type=int, default=7, help="warm first-frame runs (median)")
    parser.add_argument("--cold", type=int, default=3, help="fresh processes per variant for the cold first frame")
    parser.add_argument("--first-only", action="store_true", help="only the first-frame rows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="default: the bundled 3D phantom weights")
    args = parser.parse_args()
    import os

    import numpy as np
    import torch

    load = os.getloadavg()[0]
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
          + f", load before {load:.2f}")
    n, dev = args.frames, args.device
    firsts_2d = measure(run_first_2d, dev, args.first_repeats)
    cold = {v: [] for v in ("streamed", "authors", "2d")}
    for _ in range(args.cold):
        for v in cold:
            cold[v].append(measure(run_cold, v, dev, args.weights))
    cpu_first = measure(run_first_cpu_time, args.weights, args.first_repeats) if dev == "cpu" else None
    if args.first_only:
        times, firsts = measure(run_times, n, dev, args.weights, 0, args.first_repeats)
    else:
        times, firsts = measure(run_times, n, dev, args.weights, args.repeats, args.first_repeats)

    def med(name, i):
        return statistics.median(r[i] for r in times[name])

    def ratio(name, i):
        return statistics.median(a[i] / b[i] for a, b in zip(times["authors"], times[name]))

    def spread(values):
        return f"{min(values):.3f}-{max(values):.3f} s"

    k = args.first_repeats
    warm_ratio = statistics.median(a / b for a, b in zip(firsts["authors"], firsts["streamed"]))
    cold_first = {v: [r[1] for r in cold[v]] for v in cold}
    cold_load = {v: [r[0] for r in cold[v]] for v in cold}
    ratio_2d = statistics.median(a / b for a, b in zip(firsts_2d["plain"], firsts_2d["streamed"]))
    base = f"authors' loop {{:.3f}} s, median of {args.repeats} interleaved rounds"
    rows = [
        ("streamed: first frame, warm", statistics.median(firsts["streamed"]),
         f"{warm_ratio:.2f}x vs authors' loop {statistics.median(firsts['authors']):.3f} s; median of {k} "
         f"interleaved runs, range {spread(firsts['streamed'])}; target <= 0.3 s"),
        ("streamed: first frame, cold", statistics.median(cold_first["streamed"]),
         f"first run of {args.cold} fresh processes, range {spread(cold_first['streamed'])}; authors' loop "
         f"{statistics.median(cold_first['authors']):.3f} s; model load {spread(cold_load['streamed'])} not included"),
        ("2D 128 x 128: first frame, warm", statistics.median(firsts_2d["streamed"]),
         f"{ratio_2d:.2f}x vs the plain 2D model {statistics.median(firsts_2d['plain']):.3f} s; median of {k}, "
         f"range {spread(firsts_2d['streamed'])}"),
        ("2D 128 x 128: first frame, cold", statistics.median(cold_first["2d"]),
         f"first run of {args.cold} fresh processes, range {spread(cold_first['2d'])}; "
         f"model load {spread(cold_load['2d'])} not included"),
    ]
    if cpu_first:
        rows.append(("first frame, CPU time on 1 thread", statistics.median(cpu_first["streamed"]),
                     f"{statistics.median(a / b for a, b in zip(cpu_first['authors'], cpu_first['streamed'])):.2f}x "
                     f"vs authors' loop {statistics.median(cpu_first['authors']):.3f} s; thread_time, median of {k}, "
                     f"range {spread(cpu_first['streamed'])}; warm"))
    if args.first_only:
        print_table("DDM first frame, 128 x 128 x 32", rows)
        print(f"# load after {os.getloadavg()[0]:.2f}")
        return
    peaks = {v: measure(run_peak, v, n, dev, args.weights) for v in ("streamed", "every", "authors")}
    vs_exact, vs_target, true_fast, true_exact = measure(run_quality, n, dev, args.weights)
    rows += [
        ("streamed: first frame in the 16-frame runs", med("streamed", 0),
         f"{ratio('streamed', 0):.2f}x vs " + base.format(med("authors", 0))),
        (f"streamed: all {n} frames", med("streamed", 1),
         f"{ratio('streamed', 1):.2f}x vs " + base.format(med("authors", 1)) + "; target >= 2x"),
        ("every frame: first frame", med("every", 0), f"{ratio('every', 0):.2f}x vs the authors' loop"),
        (f"every frame: all {n} frames", med("every", 1), f"{ratio('every', 1):.2f}x vs the authors' loop"),
        ("streamed: peak RSS (MB)", peaks["streamed"][0],
         f"every frame {peaks['every'][0]:.0f} MB, authors' loop {peaks['authors'][0]:.0f} MB; "
         "target <= 1536 MB (value column = MB)"),
        ("streamed vs every frame: PSNR (dB)", min(vs_exact),
         f"min over the {n} frames (value column = dB); {sum(np.isinf(vs_exact))} frames identical (anchors)"),
        ("|dPSNR| vs the target (dB)", max(vs_target),
         f"max over the {n} frames of |PSNR(streamed, ES) - PSNR(every frame, ES)|; target <= 0.5 dB"),
        ("|dPSNR| vs the true frames (dB)", max(abs(a - b) for a, b in zip(true_fast, true_exact)),
         f"max over {len(true_fast)} frames ED..ES of a 20-frame phantom; PSNR streamed "
         f"{np.mean(true_fast):.2f} dB, every frame {np.mean(true_exact):.2f} dB (means); target <= 0.5 dB"),
    ]
    if dev.startswith("cuda"):
        rows.append(("streamed: CUDA peak (MB)", peaks["streamed"][1],
                     f"authors' loop {peaks['authors'][1]:.0f} MB (value column = MB)"))
    print_table(f"DDM generation, 128 x 128 x 32, N = {n}", rows)
    print(f"# load after {os.getloadavg()[0]:.2f}; per-frame PSNR streamed vs every frame: "
          + " ".join(f"{v:.1f}" for v in vs_exact))


if __name__ == "__main__":
    main()
