"""DRDM on a CUDA GPU: the recovery of a 256 x 256 slice with the authors' published weights, ours
against a re-implementation of the authors' loop (bench_drdm.authors_loop) on the same GPU, in one
process, interleaved rounds, medians; CUDA synchronised around each timing.

Rows: the authors' loop (float32, 80 steps from --level); ours streamed (deform_instance as the GUI
and CLI run it, every frame made, fold-free repair) in float32 and in mixed bfloat16; a batch of
--batch samples (recover_batch) against --batch authors' loops; mean |u| and folding of the final
fields (same output statistics); peak CUDA memory.

Usage: python benchmarks/bench_drdm_gpu.py --weights PATH_OR_NAME [--level 48] [--batch 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _table import print_table
from bench_drdm import LEVEL_2D, _image, _model, authors_loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="drdm-cmr-2d", help="2D weights: registry name or file")
    parser.add_argument("--level", type=int, default=LEVEL_2D)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="float32,bfloat16")
    args = parser.parse_args()
    import numpy as np
    import torch

    from napari_deformdiff.core import spatial
    from napari_deformdiff.core.drdm.generate import deform_instance, recover_batch
    from napari_deformdiff.core.events import Frame, run_to_end

    dev = torch.device(args.device)
    model, meta, note = _model("2d", args.weights, None)
    model = model.to(dev).eval()
    image = _image(2, meta.grid)
    level, batch = args.level, args.batch

    precisions = args.precisions.split(",")
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    def streamed(seed, precision):
        last = []
        for e in deform_instance(image, level, model=model, meta=meta, seed=seed, loop="authors",
                                 precision=precision, device=dev):
            if isinstance(e, Frame):
                last[:] = [e.field]
        return last[0]

    def batched(r, precision):
        return run_to_end(recover_batch(image, [level] * batch, [100 * r + k for k in range(batch)], model=model,
                                    meta=meta, loop="authors", precision=precision, device=dev))

    def describe(field):
        u = torch.as_tensor(np.asarray(field))
        u = u if u.dim() == 4 else u[None]
        det = spatial.jacobian_determinant(u)
        return float(spatial.vector_norm(u).mean()), 100.0 * float((det <= 0).float().mean())

    # warm-up: cuDNN autotuning, first-use allocations
    authors_loop(image, 2, model, meta, 1, loop="paper", device=dev)
    for precision in precisions:
        list(deform_instance(image, 2, model=model, meta=meta, seed=1, precision=precision, device=dev))
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times: dict = {}
    stats: dict = {}
    for r in range(args.rounds):
        s, phi = timed(lambda: authors_loop(image, level, model, meta, r, device=dev))
        times.setdefault("authors", []).append(s)
        stats.setdefault("authors", []).append(describe(phi[0].cpu()))
        for precision in precisions:
            s, field = timed(lambda: streamed(r, precision))
            times.setdefault(precision, []).append(s)
            stats.setdefault(precision, []).append(describe(field))
        if batch:
            for precision in precisions:
                times.setdefault(f"batch {precision}", []).append(timed(lambda: batched(r, precision))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: tuple(float(np.mean(c)) for c in zip(*v)) for k, v in stats.items()}
    a = med["authors"]
    steps = meta.steps
    rows = [(f"authors' loop, float32, level {level} ({steps} steps)", a,
             f"{note}; mean |u| {mean['authors'][0]:.3f} px, folding {mean['authors'][1]:.2f} %")]
    for precision, target in (("float32", 2), ("bfloat16", 4)):
        if precision not in precisions:
            continue
        m = mean[precision]
        rows.append((f"ours streamed, {precision}", med[precision],
                     f"{a / med[precision]:.2f}x the authors' loop (target >= {target}x); mean |u| {m[0]:.3f} px, "
                     f"folding {m[1]:.3f} % (fold-free repair)"))
    if batch:
        for precision in precisions:
            b = med[f"batch {precision}"]
            rows.append((f"{batch} samples, recover_batch, {precision}", b,
                         f"{batch * a / b:.2f}x the throughput of {batch} authors' loops ({batch * a:.2f} s; "
                         "target >= 3x)"))
    if cuda:
        rows.append(("peak CUDA memory (MB)", torch.cuda.max_memory_allocated(dev) / 2**20, "(value column = MB)"))
    print(f"# {torch.cuda.get_device_name(dev) if cuda else dev}, torch {torch.__version__}, {args.rounds} interleaved rounds")
    print_table("DRDM recovery on the GPU, 256 x 256", rows)


if __name__ == "__main__":
    main()
