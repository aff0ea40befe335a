"""The bundled weights' targets, checked against figures computed here from the files and the fields."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_deformdiff.core.ddm.evaluate_weights import phantom_targets, real_rows
from napari_deformdiff.core.io.pairs import find_pairs
from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

from .ddm_helpers import tiny_model


def test_phantom_targets_count_the_lv_and_score_the_blend_like_numpy(tmp_path):
    list(write_phantom_dataset(tmp_path, cases=1, seed=7, two_d=True, frames=5, shape=(48, 48), spacing=(3.2, 3.2),
                               fields=False))
    pairs = find_pairs(tmp_path)
    (row,) = phantom_targets(pairs, tiny_model(2), margin_mm=10.0)
    folder = tmp_path / "patient001"
    cine = np.asarray(nib.load(folder / "patient001_4d.nii.gz").dataobj, np.float64)
    ed_labels = np.asarray(nib.load(next(folder.glob("patient001_frame01_gt.nii.gz"))).dataobj)
    es_labels = np.asarray(nib.load(next(folder.glob("patient001_frame03_gt.nii.gz"))).dataobj)  # Info.cfg: ES 3
    assert row["lv_voxels"][0] == int((ed_labels == 3).sum()) > row["lv_voxels"][2] == int((es_labels == 3).sum()) > 0
    frames = np.moveaxis(cine[:, :, 0, :3], -1, 0)  # ED (frame 1) .. ES (frame 3)
    n = frames.shape[0]
    rng = frames[0].max() - frames[0].min()
    blend = [10 * np.log10(rng**2 / np.mean(((1 - k / (n - 1)) * frames[0] + k / (n - 1) * frames[-1] - frames[k]) ** 2))
             for k in range(1, n - 1)]
    assert row["psnr_blend"] == pytest.approx(np.mean(blend), abs=1e-3)
    assert 0.0 <= row["lv_dice_es"] <= 1.0 and np.isfinite(row["u_outside_mm"]) and row["u_outside_mm"] >= 0


def test_real_rows_truth_moves_away_from_the_source_as_gamma_grows():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 16, 32, 32, generator=g), 5, 1, 2)
    s = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 2 - 1
    rows = real_rows({"v": s}, tiny_model(3), frames=5, seed=1)
    assert [r["gamma"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    unchanged = [r["psnr_unchanged"] for r in rows]
    assert all(a > b for a, b in zip(unchanged, unchanged[1:])) and unchanged[-1] < 60
