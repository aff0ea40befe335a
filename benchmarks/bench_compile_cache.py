"""DRDM bfloat16: the one-time torch.compile, and a second process that loads it from the disk cache.

Each process is a fresh spawned Python: it loads the weights, builds the bfloat16 runner
(core/drdm/bfloat16.py, which points Inductor's cache at <cache folder>/torchinductor), and times
the first pass (compile + one pass), then a second pass alone. The first process starts from an
empty cache folder, the second reuses it. "Compile" = first pass - second pass. Also prints the
cache hits PyTorch counted (AOTAutograd and Inductor's FX graph cache).

On a CPU without native bfloat16 (AVX512-BF16 or AMX) the product refuses bfloat16; this script
builds the runner anyway, so its passes run emulated and slowly, but the compile and the cache are
the same code. Use a small --grid there.

Usage:
    .venv/bin/python benchmarks/bench_compile_cache.py --weights ../shared/weights/drdm_cmr2d_official.pth [--grid 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from _spawn import measure
from _table import print_table


def one_process(weights: str, grid: int, cache: str, queue) -> None:
    os.environ["DEFORMDIFF_CACHE"] = cache
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    import torch
    from torch._dynamo.utils import counters

    from napari_deformdiff.core.drdm.bfloat16 import Bfloat16Recovery
    from napari_deformdiff.core.drdm.weights import load_drdm

    model, _ = load_drdm(weights, ndims=2)
    runner = Bfloat16Recovery(model, torch.device("cpu"))
    x, t = torch.rand(1, 1, grid, grid), torch.zeros(1, dtype=torch.long)
    with torch.inference_mode():
        t0 = time.perf_counter()
        runner._run(x, t)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        runner._run(x, t)
        second = time.perf_counter() - t0
    hits = {k: dict(v) for k, v in counters.items() if k in ("aot_autograd", "inductor")}
    queue.put((first, second, os.environ.get("TORCHINDUCTOR_CACHE_DIR"), runner.compiled, hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="DRDM 2D weights (a path or a registry name)")
    ap.add_argument("--grid", type=int, default=64, help="image side of the passes (a multiple of 8)")
    args = ap.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        runs = [measure(one_process, args.weights, args.grid, cache) for _ in range(2)]
    for name, (first, second, where, compiled, hits) in zip(("first process, empty cache", "second process"), runs,
                                                             strict=True):
        cache_hits = (hits.get("aot_autograd", {}).get("autograd_cache_hit", 0),
                      hits.get("inductor", {}).get("fxgraph_cache_hit", 0))
        rows.append((f"{name}: compile (first pass - second pass)", first - second,
                     f"first pass {first:.2f} s, second {second:.2f} s; compiled: {compiled}; "
                     f"cache hits AOTAutograd {cache_hits[0]}, FX graph {cache_hits[1]}; cache {where}"))
    rows.append(("second process / first, compile", runs[1][0] - runs[1][1],
                 f"{(runs[1][0] - runs[1][1]) / max(runs[0][0] - runs[0][1], 1e-9):.3f}x the first process's"))
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print_table(f"DRDM bfloat16 compile cache — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                f"grid {args.grid}^2, native bfloat16: {native}", rows)


if __name__ == "__main__":
    main()
