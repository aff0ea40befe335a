"""Per-frame deformation metrics against analytic fields, and their CSV."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from napari_deformdiff.core.errors import InputError, OutputExistsError
from napari_deformdiff.core.inspect.report import (
    METRIC_COLUMNS,
    frame_metrics,
    sequence_metrics,
    write_metrics_csv,
)


def _translation(shape, shift) -> np.ndarray:
    n = len(shape)
    return np.broadcast_to(np.reshape(shift, (n,) + (1,) * n), (n, *shape)).astype(np.float32)


def _fold(shape, a: float, period: int) -> np.ndarray:
    """u_x(i) = a * sin(2 pi i / period) along the last axis, zero elsewhere."""
    n = len(shape)
    u = np.zeros((n, *shape), np.float32)
    i = np.arange(shape[-1])
    u[-1] = a * np.sin(2 * np.pi * i / period)
    return u


def test_translation():
    m = frame_metrics(_translation((6, 7, 8), (1.0, 2.0, 3.0)), (2.0, 1.0, 0.5))
    assert m["folding_count"] == 0 and m["folding_pct"] == 0.0
    assert m["det_min"] == pytest.approx(1.0, abs=1e-6)
    assert m["det_max"] == pytest.approx(1.0, abs=1e-6)
    expected = math.sqrt(2.0**2 + 2.0**2 + 1.5**2)
    assert m["max_mm"] == pytest.approx(expected, rel=1e-6)
    assert m["mean_mm"] == pytest.approx(expected, rel=1e-6)
    assert m["max_pct"] == pytest.approx(math.sqrt((100 / 6) ** 2 + (200 / 7) ** 2 + (300 / 8) ** 2), rel=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_analytic_fold(n):
    # Central differences of a*sin(2 pi i/L): a*sin(2 pi/L)*cos(2 pi i/L), so
    # det_i = 1 + 4 sin(pi/8) cos(pi i/8) with a = 4, L = 16: <= 0 exactly for i = 6..10 (mod 16).
    # Over i = 0..32 that is 10 columns; both borders (one-sided) have det = 1 + 4 sin(pi/8) > 0.
    shape = (3, 5, 33)[-n:]
    a, period = 4.0, 16
    per_col = 1 + a * np.sin(2 * np.pi / period) * np.cos(2 * np.pi * np.arange(33) / period)
    assert sorted(np.flatnonzero(per_col[1:-1] <= 0) + 1) == [6, 7, 8, 9, 10, 22, 23, 24, 25, 26]
    m = frame_metrics(torch.from_numpy(_fold(shape, a, period)), (1.0,) * n)
    rows = int(np.prod(shape[:-1]))
    assert m["folding_count"] == 10 * rows
    assert m["folding_pct"] == pytest.approx(100 * 10 / 33)
    assert m["det_min"] == pytest.approx(1 - a * np.sin(2 * np.pi / period), abs=1e-5)
    assert m["det_max"] == pytest.approx(1 + a * np.sin(2 * np.pi / period), abs=1e-5)
    assert m["max_mm"] == pytest.approx(a * np.abs(np.sin(2 * np.pi * np.arange(33) / 16)).max(), rel=1e-5)


def test_sequence_in_batches_matches_frames():
    spacing = (1.5, 0.8)
    ddfs = np.stack([_fold((6, 33), a, 16) for a in (0.0, 1.0, 2.0, 4.0, 10.0)])
    rows = sequence_metrics(ddfs, spacing, batch_size=2)
    assert [r["frame"] for r in rows] == [0, 1, 2, 3, 4]
    assert list(rows[0]) == list(METRIC_COLUMNS)
    for t, row in enumerate(rows):
        single = frame_metrics(ddfs[t], spacing)
        assert {k: v for k, v in row.items() if k != "frame"} == pytest.approx(single)
    counts = [r["folding_count"] for r in rows]
    assert counts[0] == counts[1] == 0 and counts[3] == 60 and counts[4] > counts[3]
    assert rows[0]["det_min"] == rows[0]["det_max"] == 1.0
    with pytest.raises(InputError):
        sequence_metrics(ddfs[0], spacing)


def test_csv(tmp_path):
    ddfs = np.stack([_fold((4, 5, 33), a, 16) for a in (0.5, 3.0, 4.0)])
    ddfs[1] += _translation((4, 5, 33), (0.1, 0.2, 0.3))
    rows = sequence_metrics(ddfs, (2.0, 1.0, 0.5))
    path = write_metrics_csv(tmp_path / "metrics.csv", rows)
    lines = path.read_text().splitlines()
    assert len(lines) == len(rows) + 1
    with open(path, newline="") as fh:
        parsed = list(csv.reader(fh))
    assert tuple(parsed[0]) == METRIC_COLUMNS
    for row, values in zip(rows, parsed[1:]):
        for column, text in zip(METRIC_COLUMNS, values):
            expected = row[column]
            back = int(text) if isinstance(expected, int) else float(text)
            assert back == expected, column

    with pytest.raises(OutputExistsError):
        write_metrics_csv(path, rows[:1])
    assert len(path.read_text().splitlines()) == len(rows) + 1
    write_metrics_csv(path, rows[:1], overwrite=True)
    assert len(path.read_text().splitlines()) == 2
    with pytest.raises(InputError, match="det_min"):
        write_metrics_csv(tmp_path / "bad.csv", [{k: 0 for k in METRIC_COLUMNS if k != "det_min"}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
