"""The bundled weights' targets: held-out phantom figures and real volumes without adaptation.

Phantom (cases with a 4D cine and labels, ACDC numbering: 3 = LV cavity): DDM's intermediate-frame
PSNR against the linear intensity blend's, LV Dice at the last frame (ES), LV cavity voxels, and the
mean |u| in mm of the last field farther than `margin_mm` from the heart labels (the phantom moves
nothing there).
Real: a volume on the model grid pulled by a seeded cardiac-like field (synth_pairs); the true
frame at gamma is the source pulled by gamma * that field. Per gamma, the PSNR of DDM's frame and
of the source unchanged against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError
from ..events import Frame
from ..image_metrics import dice, psnr
from ..io.pairs import Pair
from ..spatial import folding_ratio
from .generate import generate_ddm
from .nets.ddm import DDM
from .synth_pairs import cardiac_like_field

LV = 3


def phantom_targets(pairs: Sequence[Pair], model: DDM, *, margin_mm: float = 10.0, seed: int = 0) -> list[dict]:
    """One row per held-out phantom case (needs the cine, its labels and the source labels)."""
    rows = []
    for p in pairs:
        if p.cine is None or p.cine_labels is None or p.source_labels is None or p.cine.data.shape[0] < 3:
            raise InputError(f"{p.name}: the phantom targets need a 4D cine with labels.")
        real = p.cine.data.astype(np.float32)
        n = real.shape[0]
        src, tgt = real[0], real[-1]
        data_range = float(src.max() - src.min())
        out = [e for e in generate_ddm(p.source, p.target, frames=n, labels=p.source_labels, model=model, seed=seed)
               if isinstance(e, Frame)]
        inner = range(1, n - 1)
        blend = [psnr((1 - k / (n - 1)) * src + k / (n - 1) * tgt, real[k], data_range) for k in inner]
        ddm = [psnr(out[k].image, real[k], data_range) for k in inner]
        end_labels, true_es = out[-1].labels, p.cine_labels.data[-1]
        spacing = np.asarray(p.source.geometry.spacing, np.float64)
        heart = p.source_labels.data > 0
        outside = ndimage.distance_transform_edt(~heart, sampling=spacing) > margin_mm
        u_mm = np.linalg.norm(out[-1].field * spacing.reshape(-1, *([1] * len(spacing))), axis=0)
        rows.append({
            "case": p.name, "psnr_ddm": float(np.mean(ddm)), "psnr_blend": float(np.mean(blend)),
            "lv_dice_es": dice(end_labels, true_es, labels=[LV]),
            "u_outside_mm": float(u_mm[outside].mean()),
            "folding_pct": 100.0 * float(folding_ratio(torch.from_numpy(np.ascontiguousarray(out[-1].field))[None])),
            "lv_voxels": (int((p.source_labels.data == LV).sum()), int((end_labels == LV).sum()),
                          int((true_es == LV).sum())),
        })
    return rows


def format_phantom_targets(rows: Sequence[dict]) -> str:
    head = (f"{'case':<14} {'DDM PSNR':>9} {'blend':>7} {'LV Dice ES':>10} {'|u| out mm':>10} {'fold %':>7} "
            f"{'LV voxels ED -> end (true ES)':>30}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ed, end, es = r["lv_voxels"]
        lines.append(f"{r['case']:<14} {r['psnr_ddm']:>9.2f} {r['psnr_blend']:>7.2f} {r['lv_dice_es']:>10.3f} "
                     f"{r['u_outside_mm']:>10.3f} {r['folding_pct']:>7.3f} {f'{ed} -> {end} ({es})':>30}")
    keys = ("psnr_ddm", "psnr_blend", "lv_dice_es", "u_outside_mm", "folding_pct")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    lines.append(f"{'mean':<14} {mean['psnr_ddm']:>9.2f} {mean['psnr_blend']:>7.2f} {mean['lv_dice_es']:>10.3f} "
                 f"{mean['u_outside_mm']:>10.3f} {mean['folding_pct']:>7.3f}")
    lines.append("targets: DDM PSNR > blend, LV Dice at ES >= 0.85, |u| outside the heart < 0.5 mm")
    return "\n".join(lines)


def real_rows(volumes: dict[str, torch.Tensor], model: DDM, *, frames: int = 5, seed: int = 0) -> list[dict]:
    """Per (volume, gamma > 0): PSNR of DDM's frame and of the source unchanged against the truth.

    `volumes`: name -> (1, 1, *grid) tensor in [-1, 1] on the model's grid (train._real_on_grid)."""
    rows = []
    gammas = np.linspace(0.0, 1.0, frames)[1:]
    device = model.weight_device()
    for i, (name, s) in enumerate(volumes.items()):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        u, _ = cardiac_like_field(s.shape[2:], model.config.spacing, g)
        s, u = s.to(device), u.to(device)
        with torch.no_grad():
            unit = (s + 1.0) / 2.0
            t = model.warp_unit(s, u) * 2.0 - 1.0
            code = model.code(s, t)
            for gamma in gammas:
                truth = model.warp_unit(s, float(gamma) * u)[0, 0].cpu().numpy()
                generated = model.warp_unit(s, model.field(s, float(gamma) * code))[0, 0].cpu().numpy()
                rows.append({"volume": name, "gamma": float(gamma),
                             "psnr_ddm": psnr(generated, truth, 1.0),
                             "psnr_unchanged": psnr(unit[0, 0].cpu().numpy(), truth, 1.0)})
    return rows


def format_real_rows(rows: Sequence[dict]) -> str:
    head = f"{'volume':<16} {'gamma':>6} {'DDM PSNR':>9} {'unchanged':>9} {'better':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        better = "yes" if r["psnr_ddm"] > r["psnr_unchanged"] else "NO"
        lines.append(f"{r['volume']:<16} {r['gamma']:>6.2f} {r['psnr_ddm']:>9.2f} {r['psnr_unchanged']:>9.2f} "
                     f"{better:>6}")
    return "\n".join(lines)


def sequence_rows(cine, model: DDM, *, starts: Sequence[int], span: int, seed: int = 0,
                  name: str = "frames") -> list[dict]:
    """A real sequence (a time-series Volume, e.g. the echo clip): per start frame i, DDM from frame i to
    frame i + span, scored per gamma against the real frames between, with the source unchanged."""
    from ..io import Volume

    data = cine.data.astype(np.float32)
    rows = []
    for i in starts:
        if i + span >= data.shape[0]:
            raise InputError(f"frame {i} + {span} is beyond the {data.shape[0]} frames.")
        src, tgt = (Volume(data[k], cine.geometry, False, f"frame {k}") for k in (i, i + span))
        out = [e for e in generate_ddm(src, tgt, frames=span + 1, model=model, seed=seed) if isinstance(e, Frame)]
        data_range = float(data[i].max() - data[i].min())
        for k in range(1, span + 1):
            rows.append({"volume": f"{name} {i}-{i + span}", "gamma": k / span,
                         "psnr_ddm": psnr(out[k].image, data[i + k], data_range),
                         "psnr_unchanged": psnr(data[i], data[i + k], data_range)})
    return rows
