"""DDM evaluation as the paper's Table 1: generated intermediate frames against the real ones.

Methods side by side on every held-out pair with true intermediate frames (source .. target):
initial (the source unchanged), linear intensity blend, SimpleITK's diffeomorphic demons field
scaled by gamma (core/ddm/demons.py), the same deformation network's final field scaled by gamma
(the paper's VM baseline) and DDM (latent code scaled by gamma), optionally after adapting to the
pair ("auto" or K steps per level, core/ddm/adapt.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import spatial
from ..errors import InputError
from ..events import Frame, Plan, Progress
from ..image_metrics import dice, nmse, psnr
from .nets.ddm import DDM
from ..io.pairs import Pair
from .demons import demons_field
from .generate import generate_ddm

METHODS = ("initial", "linear blend", "demons (gamma * field)", "VM (gamma * field)", "DDM")


@dataclass
class CaseResult:
    case: str
    method: str
    psnr: float  # mean over intermediate frames
    nmse: float
    dice: float  # warped source labels at the target vs the target's labels
    folding_pct: float  # mean over frames of % voxels with det(I + grad u) <= 0
    seconds: float
    psnr_per_frame: list[float] = field(default_factory=list)


def _folding_pct(fields: np.ndarray) -> float:
    t = torch.from_numpy(fields)
    return float(spatial.folding_ratio(t).mean()) * 100.0


def _score(case, method, frames, real, data_range, labels_at_target, true_labels, fields, seconds):
    inner = range(1, len(real) - 1) if len(real) > 2 else range(1, len(real))
    per = [psnr(frames[k], real[k], data_range) for k in inner]
    nm = [nmse(frames[k], real[k]) for k in inner]
    d = dice(labels_at_target, true_labels) if labels_at_target is not None and true_labels is not None else float("nan")
    fold = _folding_pct(fields) if fields is not None else 0.0
    return CaseResult(case, method, float(np.mean(per)), float(np.mean(nm)), d, fold, seconds, per)


def evaluate_ddm(pairs: Sequence[Pair], model: DDM, *, adapt: Sequence[int | str] = (0,), seed: int = 0,
                 batch: int = 4) -> Iterator[Progress | CaseResult]:
    """Yield a CaseResult per (pair, method) as soon as it is known, and Progress per pair."""
    usable = [p for p in pairs if p.cine is not None and p.cine.data.shape[0] >= 3]
    if not usable:
        raise InputError(
            "no held-out case has true intermediate frames: evaluation needs ACDC folders with the "
            "4D cine (<patient>_4d.nii.gz), e.g. a phantom dataset from `deformdiff phantom`."
        )
    yield Plan((("cases", len(usable)),))
    for i, p in enumerate(usable):
        yield Progress(i, len(usable), p.name, "cases")
        real = p.cine.data.astype(np.float32)
        n = real.shape[0]
        src = p.source.data.astype(np.float32)
        lo, hi = float(src.min()), float(src.max())
        data_range = hi - lo
        true_labels = p.cine_labels.data[-1] if p.cine_labels is not None else (
            p.target_labels.data if p.target_labels is not None else None)
        gammas = np.linspace(0.0, 1.0, n)
        lab_src = p.source_labels

        t0 = time.perf_counter()
        frames = np.repeat(src[None], n, axis=0)
        yield _score(p.name, "initial", frames, real, data_range,
                     lab_src.data if lab_src is not None else None, true_labels, None, time.perf_counter() - t0)

        t0 = time.perf_counter()
        tgt = p.target.data.astype(np.float32)
        frames = np.stack([(1 - g) * src + g * tgt for g in gammas])
        yield _score(p.name, "linear blend", frames, real, data_range, None, true_labels, None,
                     time.perf_counter() - t0)

        t0 = time.perf_counter()
        u = demons_field(src, tgt, p.source.geometry.spacing)
        s_t = torch.from_numpy(src)[None, None]
        dm_fields = np.stack([g * u for g in gammas])
        dm = np.stack([spatial.warp(s_t, torch.from_numpy(f)[None], padding_mode="border")[0, 0].numpy()
                       for f in dm_fields])
        dm_lab = None
        if lab_src is not None:
            dm_lab = spatial.warp(torch.from_numpy(np.ascontiguousarray(lab_src.data))[None, None],
                                  torch.from_numpy(u)[None], mode="nearest", padding_mode="border")[0, 0].numpy()
        yield _score(p.name, "demons (gamma * field)", dm, real, data_range, dm_lab, true_labels, dm_fields,
                     time.perf_counter() - t0)

        for k in adapt:
            t0 = time.perf_counter()
            out = [e for e in generate_ddm(p.source, p.target, frames=n, labels=lab_src, model=model,
                                           adapt=k, seed=seed, batch=batch) if isinstance(e, Frame)]
            seconds = time.perf_counter() - t0
            frames = np.stack([e.image for e in out])
            fields = np.stack([e.field for e in out])
            name = "DDM" if k in (0, "0") else f"DDM (adapt {k})"
            yield _score(p.name, name, frames, real, data_range,
                         out[-1].labels if lab_src is not None else None, true_labels, fields, seconds)
            if k in (0, "0"):
                t0 = time.perf_counter()
                final = torch.from_numpy(fields[-1])[None]
                s_t = torch.from_numpy(src)[None, None]
                vm_fields = np.stack([g * fields[-1] for g in gammas])
                vm = np.stack([spatial.warp(s_t, g * final, padding_mode="border")[0, 0].numpy() for g in gammas])
                vm_lab = None
                if lab_src is not None:
                    vm_lab = spatial.warp(torch.from_numpy(np.ascontiguousarray(lab_src.data))[None, None], final,
                                          mode="nearest", padding_mode="border")[0, 0].numpy()
                yield _score(p.name, "VM (gamma * field)", vm, real, data_range, vm_lab, true_labels, vm_fields,
                             seconds + time.perf_counter() - t0)
    yield Progress(len(usable), len(usable), "done", "cases")


def summarize(results: Sequence[CaseResult]) -> list[dict]:
    """Mean +- std per method, in first-seen order."""
    order: list[str] = []
    for r in results:
        if r.method not in order:
            order.append(r.method)
    rows = []
    for m in order:
        rs = [r for r in results if r.method == m]

        def stat(attr):
            v = np.array([getattr(r, attr) for r in rs], float)
            v = v[np.isfinite(v)]
            return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))

        rows.append({"method": m, "cases": len(rs), **{a: stat(a) for a in ("psnr", "nmse", "dice", "folding_pct", "seconds")}})
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """PSNR and NMSE of the intermediate frames against the real ones; Dice at the last frame."""
    head = f"{'method':<22} {'cases':>5} {'PSNR dB':>14} {'NMSE':>18} {'Dice':>14} {'|J|<=0 %':>14} {'time s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        pm = lambda v, f: "-" if np.isnan(v[0]) else f"{v[0]:{f}} ± {v[1]:{f}}"  # noqa: E731  (no labels: no Dice)
        lines.append(
            f"{r['method']:<22} {r['cases']:>5} {pm(r['psnr'], '.2f'):>14} {pm(r['nmse'], '.2e'):>18} "
            f"{pm(r['dice'], '.3f'):>14} {pm(r['folding_pct'], '.3f'):>14} {r['seconds'][0]:>8.2f}"
        )
    return "\n".join(lines)
