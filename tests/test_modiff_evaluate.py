"""The forecast scores: PSNR/SSIM per frame and the temporal-consistency errors, on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_deformdiff.core.modiff.evaluate import SMOOTH, score, summarize


def _truth(seed=0):
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random((40, 40)), 3)
    return np.stack([np.roll(base, k, axis=1) + 0.01 * rng.standard_normal((40, 40)) for k in range(5)])


def test_a_perfect_forecast_scores_perfectly():
    g = _truth()
    r = score("c", "m", g.copy(), g, float(g[0].min()), float(g[0].max()), 0.0)
    assert r.psnr == [float("inf")] * 4 and r.ssim == pytest.approx([1.0] * 4)
    assert r.temporal == 0 and r.temporal_smooth == 0


def test_repeating_the_first_frame_scores_the_truths_own_changes():
    g = _truth()
    lo, hi = float(g[0].min()), float(g[0].max())
    r = score("c", "repeat", np.repeat(g[:1], 5, 0), g, lo, hi, 0.0)
    u = (g - lo) / (hi - lo)
    assert r.temporal == pytest.approx(np.abs(np.diff(u, axis=0)).mean())
    smooth = ndimage.gaussian_filter(u, (0, SMOOTH, SMOOTH))
    assert r.temporal_smooth == pytest.approx(np.abs(np.diff(smooth, axis=0)).mean())
    expected = [10 * np.log10(1.0 / np.mean((u[0] - u[k]) ** 2)) for k in range(1, 5)]
    assert r.psnr == pytest.approx(expected)
    assert r.psnr[0] > r.psnr[-1]  # further from the first frame, further from the truth
    row = summarize([r, score("d", "repeat", np.repeat(g[:1], 5, 0), g, lo, hi, 0.0)])[0]
    assert row["cases"] == 2 and row["psnr"] == pytest.approx(np.mean(expected))
    # per frame: the error of the change into frame k is the truth's own change there
    assert r.temporal_frames == pytest.approx([np.abs(u[k] - u[k - 1]).mean() for k in range(1, 5)])
    assert r.temporal_smooth_frames == pytest.approx([np.abs(smooth[k] - smooth[k - 1]).mean() for k in range(1, 5)])
    assert np.mean(r.temporal_frames) == pytest.approx(r.temporal)
    np.testing.assert_allclose(row["per_frame_temporal_smooth"], r.temporal_smooth_frames)


def test_the_table_lists_psnr_and_ssim_per_frame():
    from napari_deformdiff.core.modiff.evaluate import format_table

    g = _truth()
    lo, hi = float(g[0].min()), float(g[0].max())
    r = score("c", "repeat", np.repeat(g[:1], 5, 0), g, lo, hi, 0.0)
    text = format_table(summarize([r]))
    assert "PSNR (dB) per forecast frame:" in text and "SSIM per forecast frame:" in text
    ssim_row = text.split("SSIM per forecast frame:")[1].strip().splitlines()[2]
    assert ssim_row == "| repeat | " + " | ".join(f"{v:.3f}" for v in r.ssim) + " |"
    temporal_row = text.split("Smoothed temporal error per forecast frame:")[1].strip().splitlines()[2]
    assert temporal_row == "| repeat | " + " | ".join(f"{v:.4f}" for v in r.temporal_smooth_frames) + " |"


def test_the_csv_keeps_method_names_with_commas_and_the_per_frame_temporal_error(tmp_path):
    import csv

    from napari_deformdiff.core.modiff.evaluate import write_csv

    g = _truth()
    lo, hi = float(g[0].min()), float(g[0].max())
    r = score("c", "Mo-Diff, warp, no temporal smoothing", np.repeat(g[:1], 5, 0), g, lo, hi, 0.0)
    write_csv([r], tmp_path / "r.csv")
    rows = list(csv.DictReader(open(tmp_path / "r.csv", encoding="utf-8")))
    assert [row["method"] for row in rows] == [r.method] * 4 and [int(row["frame"]) for row in rows] == [2, 3, 4, 5]
    assert [float(row["frame_temporal_error_smoothed"]) for row in rows] == pytest.approx(
        r.temporal_smooth_frames, abs=1e-6)
