"""Foundation benchmark: deformation toolkit, phantom generation and volume IO on this machine.

Prints a table of measured times (median of repeats) and, where there is a natural baseline,
the ratio against it measured in the same process:
- warping 16 frames in one batched call vs one call per frame;
- the torch Jacobian of 16 fields in one call vs numpy.gradient per frame.

Usage: .venv/bin/python benchmarks/bench_foundation.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _table import print_table  # benchmarks/ is on sys.path when a script here runs

from napari_deformdiff.core import spatial
from napari_deformdiff.core.io import read_volume, write_volume
from napari_deformdiff.core.phantom import cardiac_phantom, lung_phantom
from napari_deformdiff.core.phantom.dataset import case_volumes

GRID = (32, 128, 128)
FRAMES = 16


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def smooth_fields(batch, shape, amplitude=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, len(shape), *[max(2, s // 8) for s in shape], generator=g)
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True) * amplitude


def numpy_jacobian(u):
    """Baseline: det(I + grad u) of one (3, Z, Y, X) field with numpy.gradient."""
    grads = [np.gradient(u[i], axis=(0, 1, 2)) for i in range(3)]
    j = np.empty((3, 3) + u.shape[1:], np.float32)
    for i in range(3):
        for k in range(3):
            j[i, k] = grads[i][k] + (1.0 if i == k else 0.0)
    return (j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
            - j[0, 1] * (j[1, 0] * j[2, 2] - j[1, 2] * j[2, 0])
            + j[0, 2] * (j[1, 0] * j[2, 1] - j[1, 1] * j[2, 0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []

    image = torch.rand(1, 1, *GRID)
    frames = image.expand(FRAMES, 1, *GRID).contiguous()
    fields = smooth_fields(FRAMES, GRID)
    t_batched = timed(lambda: spatial.warp(frames, fields), args.repeats)
    t_loop = timed(lambda: [spatial.warp(image, fields[i : i + 1]) for i in range(FRAMES)], args.repeats)
    rows.append((f"warp {FRAMES} frames {GRID}, batched", t_batched, f"{t_loop / t_batched:.2f}x vs per-frame loop ({t_loop:.3f} s)"))

    labels = (torch.rand(1, 1, *GRID) * 4).to(torch.uint8)
    rows.append((f"warp labels (nearest) {GRID}", timed(lambda: spatial.warp(labels, fields[:1], mode="nearest"), args.repeats), ""))
    v = fields[:1] * 0.5
    rows.append((f"integrate velocity, 7 steps {GRID}", timed(lambda: spatial.integrate_velocity(v, steps=7), args.repeats), ""))
    rows.append((f"compose two fields {GRID}", timed(lambda: spatial.compose(fields[:1], fields[1:2]), args.repeats), ""))
    t_jac = timed(lambda: spatial.jacobian_determinant(fields), args.repeats)
    np_fields = fields.numpy()
    t_np = timed(lambda: [numpy_jacobian(np_fields[i]) for i in range(FRAMES)], args.repeats)
    rows.append((f"Jacobian det, {FRAMES} fields {GRID}", t_jac, f"{t_np / t_jac:.2f}x vs numpy.gradient per frame ({t_np:.3f} s)"))
    rows.append(("field -> vectors, stride 4", timed(lambda: spatial.field_to_vectors(fields[0], stride=4), args.repeats), f"{len(spatial.field_to_vectors(fields[0], stride=4))} vectors"))

    rows.append(("cardiac phantom 3D, 20 frames (default)", timed(lambda: cardiac_phantom(0), 1), ""))
    rows.append(("cardiac phantom 2D+t, 20 frames", timed(lambda: cardiac_phantom(0, two_d=True), args.repeats), ""))
    rows.append(("lung phantom 3D, 10 frames (default)", timed(lambda: lung_phantom(0), 1), ""))

    case = cardiac_phantom(0)
    cine, _ = case_volumes(case, "bench")
    mb = cine.data.nbytes / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        for ext in (".nii.gz", ".mha", ".nrrd"):
            counter = iter(range(10_000))
            path = lambda: Path(tmp) / f"cine{next(counter)}{ext}"  # noqa: E731
            t_w = timed(lambda: write_volume(cine, path()), 1)
            target = Path(tmp) / f"cine0{ext}"
            t_r = timed(lambda: read_volume(target), args.repeats)
            size = target.stat().st_size / 2**20
            rows.append((f"write 4D cine {ext} ({mb:.0f} MiB -> {size:.0f} MiB)", t_w, f"read {t_r:.3f} s"))

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(f"napari-deformdiff foundation benchmark — {platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
                f"median of {args.repeats}", rows)
    print(f"peak RSS of the process: {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
