"""DRDM evaluation as the paper's Table 1, with TorchIO and MONAI elastic deformations side by side.

Per deformation level and method: max and mean displacement (|u| with u_k in percent of the image
size along axis k; max and mean over voxels) and the negative-Jacobian ratio (per mille of voxels
with the TRUE det(I + grad u) <= 0, central differences), each as mean and std over samples, and
the seconds per sample. Methods: the forward random field of DRDM at the level, DRDM's final
recovered field (Algorithm 2), and, with compare=True, TorchIO's RandomElasticDeformation and
MONAI's Rand2DElastic / Rand3DElastic with their magnitude tuned per level so that their mean
displacement (mean over the same images and seeds) equals DRDM's recovered mean displacement.
With fold_free=True (default) the recovered field is also reported after generate.fold_free_field
(the field that exports write; its seconds include the repair's), and the baselines are tuned to it.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import spatial
from ..errors import InputError
from ..events import Frame, Plan, Progress

LEVELS = (30, 45, 55, 65, 70)
# The paper's Table 1 (cardiac MRI): level -> (max %, mean %, negative-Jacobian per mille).
PAPER_TABLE1 = {30: (7.8, 2.4, 0.7), 45: (10.4, 3.0, 0.9), 55: (11.8, 3.3, 2.4), 65: (12.7, 3.6, 6.6),
                70: (14.8, 4.3, 9.8)}
FORWARD, RECOVERED, FOLD_FREE = "DRDM forward", "DRDM recovered", "DRDM recovered, fold-free"


@dataclass
class SampleResult:
    level: int
    method: str
    sample: int
    max_pct: float
    mean_pct: float
    folding_permille: float
    seconds: float
    magnitude: float = math.nan  # the baseline's tuned magnitude parameter (voxels)


@dataclass
class Row:
    level: int
    method: str
    samples: int
    max_pct: tuple[float, float]  # (mean, std) over samples
    mean_pct: tuple[float, float]
    folding_permille: tuple[float, float]
    seconds: tuple[float, float]
    magnitude: float = math.nan


def field_stats(field: np.ndarray | torch.Tensor) -> tuple[float, float, float]:
    """(max %, mean %, folding per mille) of one field (n, *S) in voxels."""
    t = torch.as_tensor(np.asarray(field, np.float32) if not isinstance(field, torch.Tensor) else field)
    t = t.float()[None]
    s = spatial.displacement_stats(t)[0]
    fold = float(spatial.folding_ratio(t)[0]) * 1000.0
    return s["max_pct"], s["mean_pct"], fold


def _resize(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    if tuple(image.shape) == tuple(shape):
        return np.ascontiguousarray(image, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=True)[0, 0].numpy()


def phantom_images(ndims: int, shape: Sequence[int], count: int, *, seed: int = 0) -> list[np.ndarray]:
    """`count` cardiac phantom images (ED frames of seeds seed, seed+1, ...) at `shape`, in [0, 1]."""
    from ..nn.model_grid import unit_range
    from ..phantom import cardiac_phantom

    images = []
    for k in range(count):
        case = cardiac_phantom(seed + k, two_d=ndims == 2, frames=2)
        images.append(unit_range(_resize(case.images[0], shape))[0])
    return images


def folder_images(folder: str | Path, ndims: int, shape: Sequence[int]) -> list[np.ndarray]:
    """Intensity images found in `folder` (ACDC patients' ED/ES frames, or plain volumes), at `shape`.

    3D volumes give their middle slice (array axis 0) for 2D weights; time series their first frame.
    """
    from ..io import read_path
    from ..io.dispatch import can_read
    from ..nn.model_grid import unit_range

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.")
    entries = [folder] if can_read(folder) else sorted(p for p in folder.iterdir() if can_read(p))
    images = []
    for entry in entries:
        for v in read_path(entry):
            if v.is_labels:
                continue
            data = v.data[0] if v.has_time else v.data
            if data.ndim == 3 and ndims == 2:
                data = data[data.shape[0] // 2]
            if data.ndim != ndims:
                continue
            images.append(unit_range(_resize(data, shape))[0])
    if not images:
        raise InputError(f"{folder} holds no {ndims}D (or 3D, for slices) intensity images to deform.")
    return images


def _repaired(field: np.ndarray, device) -> tuple[np.ndarray, float]:
    """(fold-free field, seconds of the repair) of a recovered field (n, *S)."""
    from .generate import fold_free_field

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = fold_free_field(torch.from_numpy(np.ascontiguousarray(field))[None].to(device))[0].cpu().numpy()
    return out, time.perf_counter() - t0


def _drdm_sample(image: np.ndarray, level: int, *, model, meta, seed: int, loop: str, device, precision: str):
    """(forward field, recovered field, seconds) of one Algorithm 2 run (without the fold repair)."""
    from .generate import deform_instance

    first = last = None
    t0 = time.perf_counter()
    for event in deform_instance(image, level, model=model, meta=meta, seed=seed, loop=loop, device=device,
                                 precision=precision, fold_free=False):
        if isinstance(event, Frame):
            if first is None:
                first = event.field
            last = event.field
    seconds = time.perf_counter() - t0
    if first is None:
        raise InputError("the DRDM recovery produced no frames.")
    return first, last, seconds


def evaluate_drdm(images: Sequence[np.ndarray], *, model, meta, levels: Sequence[int] = LEVELS,
                  samples: int = 4, seed: int = 0, loop: str = "paper", compare: bool = False,
                  device="cpu", precision: str = "float32", fold_free: bool = True
                  ) -> Iterator[Progress | SampleResult]:
    """Yield a SampleResult per (level, method, sample) as soon as it is known, and Progress.

    Sample i deforms images[i % len(images)] with seed + i, at every level (the same draws for the
    baselines). With compare=True each baseline is tuned per level to DRDM's recovered (fold-free
    when fold_free) mean displacement over these samples. precision "bfloat16": see recover.py (compiled before timing).
    """
    if not images:
        raise InputError("no images to evaluate on.")
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}.")
    pick = [np.asarray(images[i % len(images)], np.float32) for i in range(samples)]
    seeds = [seed + i for i in range(samples)]
    tuners = []
    if compare:
        from .elastic_baselines import MagnitudeTuner, baselines

        tuners = [MagnitudeTuner(b, pick, seeds) for b in baselines(meta.ndims)]
    total = len(levels) * (samples + len(tuners))
    done = 0
    yield Plan((("compile", 1 if precision == "bfloat16" else 0), ("samples", total)))
    if precision == "bfloat16":
        import torch

        from .bfloat16 import bfloat16_runner

        yield Progress(0, 1, "compiling the bfloat16 network", "compile")
        bfloat16_runner(model, torch.device(device)).warm_up(meta.grid)
    for level in levels:
        recovered = []
        for i, (img, s) in enumerate(zip(pick, seeds)):
            fwd, rec, seconds = _drdm_sample(img, level, model=model, meta=meta, seed=s, loop=loop, device=device,
                                             precision=precision)
            yield SampleResult(level, FORWARD, i, *field_stats(fwd), math.nan)
            result = SampleResult(level, RECOVERED, i, *field_stats(rec), seconds)
            yield result
            if fold_free:
                rec, extra = _repaired(rec, device)
                result = SampleResult(level, FOLD_FREE, i, *field_stats(rec), seconds + extra)
                yield result
            recovered.append(result.mean_pct)
            done += 1
            yield Progress(done, total, f"level {level}: DRDM sample {i + 1}/{samples}", "samples")
        target = float(np.mean(recovered))
        for tuner in tuners:
            magnitude = tuner.tune(target)
            for i, draw in enumerate(tuner.run(magnitude)):
                yield SampleResult(level, tuner.baseline.name, i, *field_stats(draw.field), draw.seconds, magnitude)
            done += 1
            yield Progress(done, total, f"level {level}: {tuner.baseline.name} at {magnitude:.3g} vox", "samples")


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(results: Sequence[SampleResult]) -> list[Row]:
    groups: dict[tuple[int, str], list[SampleResult]] = {}
    for r in results:
        groups.setdefault((r.level, r.method), []).append(r)
    rows = []
    for (level, method), rs in groups.items():
        secs = [r.seconds for r in rs if not math.isnan(r.seconds)]
        rows.append(Row(level, method, len(rs), _mean_std([r.max_pct for r in rs]),
                        _mean_std([r.mean_pct for r in rs]), _mean_std([r.folding_permille for r in rs]),
                        _mean_std(secs) if secs else (math.nan, math.nan), rs[0].magnitude))
    return rows


def format_table(rows: Sequence[Row], *, paper: bool = True) -> str:
    """The table as text; with paper=True the paper's Table 1 values follow each level's rows."""
    head = (f"{'level':>5} | {'method':<34} | {'max %':>13} | {'mean %':>13} | {'neg. Jac. per mille':>19} "
            f"| {'s / sample':>10} | magnitude")
    lines = [head, "-" * len(head)]

    def pm(v, digits=1):
        return f"{v[0]:.{digits}f} +- {v[1]:.{digits}f}"

    for level in sorted({r.level for r in rows}):
        for r in [r for r in rows if r.level == level]:
            secs = "-" if math.isnan(r.seconds[0]) else f"{r.seconds[0]:.3f}"
            mag = "" if math.isnan(r.magnitude) else f"{r.magnitude:.3g} vox"
            lines.append(f"{level:>5} | {r.method:<34} | {pm(r.max_pct):>13} | {pm(r.mean_pct, 2):>13} | "
                         f"{pm(r.folding_permille):>19} | {secs:>10} | {mag}")
        if paper and level in PAPER_TABLE1:
            mx, mn, fold = PAPER_TABLE1[level]
            lines.append(f"{level:>5} | {'paper Table 1 (DRDM, cardiac MRI)':<34} | {mx:>13.1f} | {mn:>13.2f} | "
                         f"{fold:>19.1f} | {'':>10} |")
    return "\n".join(lines)


def write_csv(results: Sequence[SampleResult], path: str | Path, *, overwrite: bool = False) -> Path:
    from ..io.atomic import atomic_output

    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["level", "method", "sample", "max_pct", "mean_pct", "neg_jacobian_permille", "seconds",
                        "magnitude_vox"])
            for r in results:
                w.writerow([r.level, r.method, r.sample, f"{r.max_pct:.4f}", f"{r.mean_pct:.4f}",
                            f"{r.folding_permille:.4f}", f"{r.seconds:.4f}", f"{r.magnitude:.6g}"])
    return Path(path)
