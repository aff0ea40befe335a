"""One-line quality notes the GUI shows after a run (numpy + core.spatial; no Qt).

- match_note: a generated frame against the target image (NCC, PSNR over the target's range)
  and, with label maps, Dice.
- folding_note: a warning when det(I + grad u) <= 0 anywhere in the fields.
- range_note: how far a forecast leaves the first frame's intensity range.
- PHANTOM_WEIGHTS_NOTE: bundled (phantom-trained) weights on an image that is not a phantom.
"""

from __future__ import annotations

import numpy as np

from .image_metrics import dice, ncc, psnr

PHANTOM_WEIGHTS_NOTE = "bundled weights were trained on phantoms: this image is not one, expect weak motion"


def match_metrics(end: np.ndarray, target: np.ndarray, end_labels=None, target_labels=None) -> dict[str, float]:
    """{"ncc", "psnr"} of end vs target (PSNR range: target max - min), and "dice" with both label maps."""
    target = np.asarray(target, np.float64)
    data_range = float(target.max() - target.min()) or 1.0
    out = {"ncc": ncc(end, target), "psnr": psnr(end, target, data_range)}
    if end_labels is not None and target_labels is not None:
        out["dice"] = dice(np.asarray(end_labels), np.asarray(target_labels))
    return out


def match_note(metrics: dict[str, float]) -> str:
    text = f"end vs target: NCC {metrics['ncc']:.3f}, PSNR {metrics['psnr']:.1f} dB"
    if "dice" in metrics:
        text += f", Dice {metrics['dice']:.3f}"
    return text


def folding_voxels(fields: np.ndarray) -> int:
    """Voxels (over all frames) where det(I + grad u) <= 0; fields (T, n, *S) in voxels."""
    import torch

    from .spatial import jacobian_determinant

    fields = np.asarray(fields, np.float32)
    if fields.ndim < 3 or fields.shape[0] == 0:
        return 0
    det = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(fields)))
    return int((det <= 0).sum())


def folding_note(fields: np.ndarray | None) -> str:
    if fields is None:
        return ""
    n = folding_voxels(fields)
    return f"FOLDING: det J <= 0 at {n} voxels" if n else "no folding (det J > 0)"


def range_check(images: np.ndarray, reference: np.ndarray) -> tuple[float, float, float, float]:
    """(fraction of voxels outside the reference's [min, max], reference min, max, overshoot)."""
    images = np.asarray(images, np.float64)
    lo, hi = float(np.min(reference)), float(np.max(reference))
    outside = (images < lo) | (images > hi)
    over = max(lo - float(images.min()), float(images.max()) - hi, 0.0)
    return float(outside.mean()), lo, hi, over


def range_note(images: np.ndarray, reference: np.ndarray) -> str:
    fraction, lo, hi, over = range_check(images, reference)
    if fraction == 0:
        return f"within the first frame's range [{lo:.3g}, {hi:.3g}]"
    return (f"LEFT the first frame's range [{lo:.3g}, {hi:.3g}]: {100 * fraction:.1f} % of voxels, "
            f"by up to {over:.3g}")
