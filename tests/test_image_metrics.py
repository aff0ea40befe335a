"""Image metrics checked against hand counts."""

import numpy as np

from napari_deformdiff.core.image_metrics import dice, nmse, psnr


def test_dice_of_disjoint_foregrounds_is_zero():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[:3, :3] = 1
    b[6:, 6:] = 1
    assert dice(a, b) == 0.0


def test_dice_matches_a_hand_count_per_label_and_ignores_background():
    a = np.zeros((6, 6), np.uint8)
    b = np.zeros((6, 6), np.uint8)
    a[0:2, 0:3] = 1  # 6 voxels
    b[0:2, 1:4] = 1  # 6 voxels, 4 shared
    a[4:6, 4:6] = 2  # 4 voxels
    b[4:6, 5:6] = 2  # 2 voxels, 2 shared
    expected = np.mean([2 * 4 / (6 + 6), 2 * 2 / (4 + 2)])
    assert dice(a, b) == np.float64(expected)
    assert dice(a, b, labels=[2]) == 2 * 2 / 6
    # a label present in one map only counts as 0, background never counts
    c = a.copy()
    c[3, 0] = 3
    assert dice(c, b) == np.float64(np.mean([2 * 4 / 12, 2 * 2 / 6, 0.0]))


def test_dice_of_two_empty_maps_is_undefined():
    assert np.isnan(dice(np.zeros((4, 4), int), np.zeros((4, 4), int)))


def test_psnr_and_nmse_match_their_definitions():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    est = ref + np.array([0.5, -0.5, 0.0, 0.0])
    mse = 0.125
    assert psnr(est, ref, data_range=3.0) == np.float64(10 * np.log10(9.0 / mse))
    assert nmse(est, ref) == np.float64(0.5 / 14.0)
