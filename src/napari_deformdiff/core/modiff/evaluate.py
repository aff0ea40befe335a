"""`deformdiff evaluate modiff`: forecasts of held-out sequences against their ground truth.

Per case the first frame and the frame count N go in; frames 2..N come out and are compared with
the true frames: PSNR and SSIM per frame (intensities scaled by the first frame's min-max, so the
data range is 1) and a temporal-consistency error, the mean absolute difference between the
forecast's and the truth's frame-to-frame changes; also on frames smoothed with a Gaussian of
sigma SMOOTH voxels, because acquisition noise drawn afresh every frame dominates the raw changes. Baselines: "repeat first frame", and DDM given
the true last frame (an upper reference: it sees the end of the motion).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..events import Frame, Plan, Progress
from ..image_metrics import psnr
from ..io.volume import Volume
from .nets.modiff import MoDiff
from .data import MotionSequence, resample_indices, scaling
from .generate import forecast_variants


OUTPUT_ABLATION = {", additive output (former)": ("additive", "none"),
                   ", warp, no temporal smoothing": ("warp", "none"),
                   ", warp, Gaussian along time": ("warp", "gaussian"),
                   ", warp, cubic along time (former default)": ("warp", "poly"),
                   "": ("warp", "monotone")}


SMOOTH = 1.5


@dataclass
class CaseResult:
    case: str
    method: str
    frames: int
    psnr: list[float] = field(default_factory=list)  # frames 2..N
    ssim: list[float] = field(default_factory=list)
    temporal: float = float("nan")
    temporal_smooth: float = float("nan")
    seconds: float = 0.0
    temporal_frames: list[float] = field(default_factory=list)  # frames 2..N: the change into frame k
    temporal_smooth_frames: list[float] = field(default_factory=list)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, win_size=min(7, *[s - (1 - s % 2) for s in a.shape])))


def score(case: str, method: str, forecast: np.ndarray, truth: np.ndarray, lo: float, hi: float,
          seconds: float) -> CaseResult:
    f = (np.asarray(forecast, np.float64) - lo) / (hi - lo)
    g = (np.asarray(truth, np.float64) - lo) / (hi - lo)
    r = CaseResult(case, method, len(g), seconds=seconds)
    for k in range(1, len(g)):
        r.psnr.append(psnr(f[k], g[k], 1.0))
        r.ssim.append(ssim(f[k].astype(np.float32), g[k].astype(np.float32)))
    axes = tuple(range(1, f.ndim))
    err = np.abs(np.diff(f, axis=0) - np.diff(g, axis=0))
    r.temporal, r.temporal_frames = float(err.mean()), [float(v) for v in err.mean(axis=axes)]
    sigma = (0,) + (SMOOTH,) * (f.ndim - 1)
    fs, gs = ndimage.gaussian_filter(f, sigma), ndimage.gaussian_filter(g, sigma)
    err = np.abs(np.diff(fs, axis=0) - np.diff(gs, axis=0))
    r.temporal_smooth, r.temporal_smooth_frames = float(err.mean()), [float(v) for v in err.mean(axis=axes)]
    return r


def truth_clip(seq: MotionSequence, frames: int | None, max_frames: int) -> np.ndarray:
    data = seq.frames.data
    n = frames or min(len(data), max_frames)
    if n > len(data):
        raise InputError(f"{seq.name} has {len(data)} frames; cannot evaluate a forecast of {n}.")
    return np.asarray(data[resample_indices(len(data), n)], np.float32)


def evaluate_modiff(sequences: Sequence[MotionSequence], models: dict[str, MoDiff], *, frames: int | None = None,
                    steps: int = 25, sampler: str = "ddim", seed: int = 0, ddm=None, repeat: bool = True,
                    outputs: dict[str, tuple[str, str]] | None = None) -> Iterator[Progress | CaseResult]:
    """Yield Progress and a CaseResult per case and method ("Mo-Diff <ablation><output>", baselines).

    `outputs` {name suffix: (output, temporal)} (generate.py), all from one sampling per model
    and case; default {"": ("warp", "monotone")}. OUTPUT_ABLATION compares the output designs."""
    outputs = outputs or {"": ("warp", "monotone")}
    if not models:
        raise InputError("no Mo-Diff model to evaluate.")
    max_frames = min(m.config.max_frames for m in models.values())
    total = len(sequences)
    yield Plan((("cases", total),))
    for i, seq in enumerate(sequences):
        yield Progress(i, total, f"case {i + 1}/{total}: {seq.name}", "cases")
        truth = truth_clip(seq, frames, max_frames)
        first = Volume(truth[0], seq.frames.geometry, False, seq.name)
        lo, hi = scaling(truth[0])
        if repeat:
            yield score(seq.name, "repeat first frame", np.repeat(truth[:1], len(truth), 0), truth, lo, hi, 0.0)
        for name, model in models.items():
            variants = forecast_variants(first, frames=len(truth), model=model, variants=outputs, steps=steps,
                                         sampler=sampler, seed=seed + i)
            for suffix, (images, seconds) in variants.items():
                yield score(seq.name, name + suffix, images, truth, lo, hi, seconds)
        if ddm is not None:
            from ..ddm.generate import generate_ddm

            last = Volume(truth[-1], seq.frames.geometry, False, f"{seq.name} last")
            t0 = time.perf_counter()
            out = [e.image for e in generate_ddm(first, last, frames=len(truth), model=ddm) if isinstance(e, Frame)]
            yield score(seq.name, "DDM (sees the last frame)", np.stack(out), truth, lo, hi, time.perf_counter() - t0)
    yield Progress(total, total, "done", "cases")


def summarize(results: Sequence[CaseResult]) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == method]
        p, s, t, ts = (np.array([getattr(r, k) for r in rs])
                       for k in ("mean_psnr", "mean_ssim", "temporal", "temporal_smooth"))
        same = len({len(r.psnr) for r in rs}) == 1
        per_frame = np.mean([r.psnr for r in rs], axis=0) if same else None
        per_frame_ssim = np.mean([r.ssim for r in rs], axis=0) if same else None
        per_frame_temporal = np.mean([r.temporal_smooth_frames for r in rs], axis=0) if same else None
        rows.append({"method": method, "cases": len(rs), "psnr": p.mean(), "psnr_std": p.std(), "ssim": s.mean(),
                     "ssim_std": s.std(), "temporal": t.mean(), "temporal_smooth": ts.mean(),
                     "seconds": float(np.mean([r.seconds for r in rs])), "per_frame_psnr": per_frame,
                     "per_frame_ssim": per_frame_ssim, "per_frame_temporal_smooth": per_frame_temporal})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"| method | cases | PSNR (dB) | SSIM | temporal error | temporal error, smoothed (sigma {SMOOTH}) "
             "| s / case |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['cases']} | {r['psnr']:.2f} +- {r['psnr_std']:.2f} | "
                     f"{r['ssim']:.3f} +- {r['ssim_std']:.3f} | {r['temporal']:.4f} | {r['temporal_smooth']:.4f} | "
                     f"{r['seconds']:.1f} |")
    per = [r for r in rows if r["per_frame_psnr"] is not None]
    if per:
        n = len(per[0]["per_frame_psnr"])
        for key, title, digits in (("per_frame_psnr", "PSNR (dB)", 2), ("per_frame_ssim", "SSIM", 3),
                                   ("per_frame_temporal_smooth", "Smoothed temporal error", 4)):
            lines += ["", f"{title} per forecast frame:", "",
                      "| method | " + " | ".join(f"frame {k + 2}" for k in range(n)) + " |", "|---|" + "---|" * n]
            for r in per:
                if len(r[key]) == n:
                    lines.append(f"| {r['method']} | " + " | ".join(f"{v:.{digits}f}" for v in r[key]) + " |")
    return "\n".join(lines)


def write_csv(results: Sequence[CaseResult], path, *, overwrite: bool = False) -> None:
    from ..io.atomic import atomic_output

    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            out = csv.writer(fh, lineterminator="\n")  # quoted: method names hold commas
            out.writerow(["case", "method", "frames", "frame", "psnr_db", "ssim", "temporal_error",
                          "temporal_error_smoothed", "seconds", "frame_temporal_error",
                          "frame_temporal_error_smoothed"])
            for r in results:
                for k, (p, s, t, ts) in enumerate(zip(r.psnr, r.ssim, r.temporal_frames, r.temporal_smooth_frames)):
                    out.writerow([r.case, r.method, r.frames, k + 2, f"{p:.4f}", f"{s:.5f}", f"{r.temporal:.6f}",
                                  f"{r.temporal_smooth:.6f}", f"{r.seconds:.3f}", f"{t:.6f}", f"{ts:.6f}"])
