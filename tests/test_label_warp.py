"""core/label_warp.py: under a fold-free field every label keeps its number of connected components
(full connectivity), where plain nearest-neighbour sampling loses one-voxel labels and splits thin
parts. Components are counted here with scipy directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm.augment import warp_array
from napari_deformdiff.core.drdm.forward import sample_forward
from napari_deformdiff.core.label_warp import warp_labels_keeping_components

from . import real_data


def counts(labels: np.ndarray) -> dict[int, int]:
    full = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    return {int(v): ndimage.label(labels == v, structure=full)[1] for v in np.unique(labels)}


def random_labels(shape, seed: int) -> np.ndarray:
    """Eight smooth regions (argmax of smoothed noise) and twelve one-voxel labels (20..31)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((8, *shape)), sigma=(0, *[3] * len(shape)))
    labels = noise.argmax(0).astype(np.uint8)
    for value in range(20, 32):
        labels[tuple(rng.integers(2, s - 2) for s in shape)] = value
    return labels


def smooth_field(shape, seed: int, amplitude: float) -> np.ndarray:
    """A random smooth velocity of about `amplitude` voxels integrated by scaling and squaring."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn((1, len(shape), *shape), generator=g).numpy()
    v = ndimage.gaussian_filter(v, sigma=(0, 0, *[4] * len(shape)))
    v *= amplitude / np.abs(v).max()
    u = spatial.integrate_velocity(torch.from_numpy(v.astype(np.float32)))
    assert float(spatial.folding_ratio(u)) == 0.0
    return u[0].numpy()


@pytest.mark.parametrize("shape", [(64, 64), (16, 40, 40)])
def test_every_label_keeps_its_components_where_nearest_neighbour_does_not(shape):
    plain_failures = 0
    for seed in range(6):
        labels = random_labels(shape, seed)
        u = smooth_field(shape, seed, amplitude=4.0)
        plain = warp_array(labels, u, labels=True)
        ours = warp_labels_keeping_components(labels, u)
        assert counts(ours) == counts(labels), seed
        assert ours.dtype == labels.dtype
        assert (ours != plain).mean() < 0.05  # ~100 small regions here; elsewhere the plain result
        plain_failures += counts(plain) != counts(labels)
    assert plain_failures >= 3  # the cases are ones plain resampling gets wrong


def test_an_export_keeps_components_and_the_off_switch_gives_plain_nearest_neighbour():
    labels = random_labels((48, 48), 3)
    u = smooth_field((48, 48), 3, amplitude=4.0)
    plain = warp_array(labels, u, labels=True)
    assert np.array_equal(warp_array(labels, u, labels=True, keep_components=False), plain)
    assert counts(warp_array(labels, u, labels=True, keep_components=True)) == counts(labels)
    assert counts(plain) != counts(labels)


def test_real_segmentations_under_fold_free_drdm_forward_fields():
    """TotalSegmentator's CT segmentation (41 organs, 3 mm): three axial slices and the volume,
    each pulled by a DRDM forward field at level 48 made fold-free by the repair."""
    from napari_deformdiff.core.io import read_volume

    try:
        folder = real_data.fetch("totalsegmentator")
    except real_data.RealDataUnavailable as exc:
        pytest.skip(f"real data unavailable: {exc}")
    seg = read_volume(folder / "example_seg.nii.gz", as_labels=True).data
    cases = [seg[z] for z in (8, 15, 22)] + [seg[:, :96, :120]]
    plain_failures = 0
    for k, labels in enumerate(cases):
        grid = tuple(s - s % 8 for s in labels.shape)
        labels = np.ascontiguousarray(labels[tuple(slice(0, s) for s in grid)])
        u = spatial.repair_folding(sample_forward(grid, 48, seed=k).ddf, max_iterations=800)
        assert float(spatial.folding_ratio(u)) == 0.0
        u = u[0].numpy()
        ours = warp_labels_keeping_components(labels, u)
        plain = warp_array(labels, u, labels=True)
        assert counts(ours) == counts(labels), k
        assert (ours != plain).mean() < 0.005  # a few voxels where plain resampling breaks a label
        plain_failures += counts(plain) != counts(labels)
    assert plain_failures >= 1
