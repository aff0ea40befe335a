"""Per-frame numbers of a displacement field sequence: folding, Jacobian range, magnitudes."""

from __future__ import annotations

import csv
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.atomic import atomic_output
from ..spatial import displacement_stats, jacobian_determinant

__all__ = ["METRIC_COLUMNS", "frame_metrics", "sequence_metrics", "write_metrics_csv"]

METRIC_COLUMNS = (
    "frame",
    "folding_count",
    "folding_pct",
    "det_min",
    "det_max",
    "max_mm",
    "mean_mm",
    "max_pct",
    "mean_pct",
)


def _as_tensor(ddfs) -> torch.Tensor:
    t = ddfs.detach() if isinstance(ddfs, torch.Tensor) else torch.from_numpy(np.asarray(ddfs))
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


@torch.no_grad()
def batch_metrics(batch: torch.Tensor, spacing, *, det: torch.Tensor | None = None) -> list[dict]:
    """Metrics of a batch of fields (B, n, *S), in METRIC_COLUMNS order without "frame".

    `det` (B, *S), if the caller has the Jacobian determinant already, is used as it is.
    """
    try:
        if det is None:
            det = jacobian_determinant(batch, spacing=spacing, units="voxel")
        stats = displacement_stats(batch, spacing=spacing)
    except ValueError as exc:
        raise InputError(f"cannot measure this field: {exc}") from exc
    flat = det.flatten(1)
    folds = (flat <= 0).sum(dim=1).tolist()
    dmin = flat.amin(dim=1).tolist()
    dmax = flat.amax(dim=1).tolist()
    size = flat.shape[1]
    return [
        {
            "folding_count": int(folds[b]),
            "folding_pct": 100.0 * folds[b] / size,
            "det_min": float(dmin[b]),
            "det_max": float(dmax[b]),
            **{k: stats[b][k] for k in ("max_mm", "mean_mm", "max_pct", "mean_pct")},
        }
        for b in range(batch.shape[0])
    ]


def frame_metrics(ddf, spacing) -> dict:
    """Metrics of one voxel field (n, *S), numpy or torch; spacing in array-axis order (mm)."""
    t = _as_tensor(ddf)
    if t.ndim not in (3, 4):
        raise InputError(f"a field must have shape (n, *S) with n = 2 or 3; got {tuple(t.shape)}")
    return batch_metrics(t[None], spacing)[0]


def sequence_metrics(ddfs, spacing, *, batch_size: int = 4) -> list[dict]:
    """Metrics of each frame of a field sequence (T, n, *S), each row starting with "frame": t."""
    t = _as_tensor(ddfs)
    if t.ndim not in (4, 5):
        raise InputError(
            f"a field sequence must have shape (T, n, *S) with n = 2 or 3; got {tuple(t.shape)}"
        )
    rows = []
    for start in range(0, t.shape[0], max(1, int(batch_size))):
        batch = t[start : start + max(1, int(batch_size))]
        for i, metrics in enumerate(batch_metrics(batch, spacing)):
            rows.append({"frame": start + i, **metrics})
    return rows


def _format(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def write_metrics_csv(path, rows: Iterable[Mapping], *, overwrite: bool = False) -> Path:
    """Write metric rows as CSV with header METRIC_COLUMNS (floats exact: repr); returns path."""
    path = Path(path)
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [c for c in METRIC_COLUMNS if c not in row]
        if missing:
            raise InputError(f"metrics row {i} lacks {', '.join(missing)}.")
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(METRIC_COLUMNS)
            for row in rows:
                writer.writerow([_format(row[c]) for c in METRIC_COLUMNS])
    return path
