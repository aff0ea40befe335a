"""Image-similarity numbers the papers report: PSNR, NMSE, Dice (numpy)."""

from __future__ import annotations

import numpy as np


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def nmse(estimate: np.ndarray, reference: np.ndarray) -> float:
    ref = np.asarray(reference, np.float64)
    return float(np.sum((np.asarray(estimate, np.float64) - ref) ** 2) / max(np.sum(ref**2), 1e-12))


def dice(a: np.ndarray, b: np.ndarray, labels=None) -> float:
    """Mean Dice over `labels` (default: every non-zero label in either map)."""
    if labels is None:
        labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    scores = []
    for lab in labels:
        x, y = a == lab, b == lab
        total = x.sum() + y.sum()
        if total:
            scores.append(2.0 * np.logical_and(x, y).sum() / total)
    return float(np.mean(scores)) if scores else float("nan")


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Global normalised cross-correlation (Pearson) of two images; nan if either is constant."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denom) if denom > 0 else float("nan")
