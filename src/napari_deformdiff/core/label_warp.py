"""Warp a label map so that each label keeps its number of connected components.

A fold-free field is one-to-one, but nearest-neighbour sampling of a label map is not: a thin part
can be sampled on either side and come out as an island, a one-voxel structure can fall between
samples and vanish, and two parts of one label can come to touch. `warp_labels_keeping_components`
warps an id per connected component (full connectivity: 8 in 2D, 26 in 3D) instead of the labels,
then per component keeps its largest piece (the other pieces go to the nearest other component),
puts a vanished component back at the voxel that samples nearest to it, and, where two
components of one label touch, gives the larger one's contact voxels to a neighbouring component
of another label (a component that is all contact moves instead), repeating until nothing changes.
Labels keep their integer values; voxels away from those spots are the plain nearest-neighbour
result.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from . import spatial


def warp_labels_keeping_components(labels: np.ndarray, field: np.ndarray, rounds: int = 8) -> np.ndarray:
    """labels (*S) integers pulled by field (n, *S) voxels (out(x) = labels(x + u(x)), border
    padding), each label's components counted with full connectivity kept in number."""
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    ids, values = component_ids(labels, structure)
    u = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None]
    warped = _pull(ids, u, nearest=True)
    for _ in range(rounds):  # a separation can leave a new piece: until nothing changes
        _keep_largest_pieces(warped, structure)
        _restore_vanished(warped, ids, u, len(values))
        _fill_from_neighbours(warped)
        if not _separate_touching(warped, values, structure, ids, u):
            break
    return values[warped].astype(labels.dtype)


def component_ids(labels: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids (*S) int32 from 1, one per connected component of each label value, values[id] = its label)."""
    ids = np.zeros(labels.shape, np.int32)
    values = [0]
    for value in np.unique(labels):
        pieces, n = ndimage.label(labels == value, structure=structure)
        ids[pieces > 0] = pieces[pieces > 0] + (len(values) - 1)
        values += [value] * n
    return ids, np.asarray(values, labels.dtype)


def _pull(data: np.ndarray, u: torch.Tensor, *, nearest: bool) -> np.ndarray:
    src = torch.from_numpy(data.astype(np.int64 if nearest else np.float32))[None, None]
    out = spatial.warp(src, u, mode="nearest" if nearest else "bilinear", padding_mode="border")[0, 0]
    return out.numpy().astype(np.int32 if nearest else np.float32)


def _keep_largest_pieces(warped: np.ndarray, structure: np.ndarray) -> None:
    """Per id, voxels outside its largest connected piece become 0 (unassigned)."""
    for k, box in enumerate(ndimage.find_objects(warped), start=1):
        if box is None:
            continue
        mine = warped[box] == k
        pieces, n = ndimage.label(mine, structure=structure)
        if n > 1:
            keep = np.argmax(np.bincount(pieces[mine])[1:]) + 1
            warped[box][mine & (pieces != keep)] = 0


def _restore_vanished(warped: np.ndarray, ids: np.ndarray, u: torch.Tensor, count: int) -> None:
    """An id no voxel samples any more goes back to the voxel whose sample point x + u(x) lies
    nearest to it, unless that voxel is the last of another id."""
    present = np.bincount(warped.ravel(), minlength=count)
    for k in np.flatnonzero(present[1:] == 0) + 1:
        distance = _pull(ndimage.distance_transform_edt(ids != k).astype(np.float32), u, nearest=False)
        at = np.unravel_index(int(np.argmin(distance)), distance.shape)
        owner = warped[at]
        if owner == 0 or present[owner] > 1:
            present[owner] -= 1
            warped[at] = k
            present[k] = 1


def _fill_from_neighbours(warped: np.ndarray) -> None:
    """Unassigned voxels (0) take the id of the nearest assigned voxel."""
    free = warped == 0
    if free.any() and not free.all():
        nearest = ndimage.distance_transform_edt(free, return_distances=False, return_indices=True)
        warped[free] = warped[tuple(nearest)][free]


def _separate_touching(warped: np.ndarray, values: np.ndarray, structure: np.ndarray, ids: np.ndarray,
                       u: torch.Tensor) -> bool:
    """Where two components of one label touch, the larger one's voxels next to the other go to the
    most frequent neighbouring component of another label (the nearest one if none is adjacent);
    a component that is all contact moves to the nearest voxel that touches no other component of
    its label. Returns whether anything changed."""
    sizes = np.bincount(warped.ravel(), minlength=len(values))
    changed = False
    for k, box in enumerate(ndimage.find_objects(warped), start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        region = warped[box]
        mine = region == k
        ring = ndimage.binary_dilation(mine, structure) & ~mine
        others = np.unique(region[ring])
        smaller = others[(values[others] == values[k]) & (sizes[others] <= sizes[k]) & (others != k)]
        if smaller.size == 0:
            continue
        contact = mine & ndimage.binary_dilation(np.isin(region, smaller), structure)
        if contact.sum() >= sizes[k]:
            changed |= _move_apart(warped, values, structure, ids, u, k, sizes)
            sizes = np.bincount(warped.ravel(), minlength=len(values))
            continue
        for at in zip(*np.nonzero(contact), strict=True):
            region[at] = _other_label_near(region, values, at, values[k], warped, box)
        sizes = np.bincount(warped.ravel(), minlength=len(values))
        changed = True
    return changed


def _other_label_near(region: np.ndarray, values: np.ndarray, at: tuple, value, warped: np.ndarray, box) -> int:
    """The most frequent id of another label around `at` (3^n neighbourhood), else the nearest one."""
    around = region[tuple(slice(max(i - 1, 0), i + 2) for i in at)].ravel()
    around = around[values[around] != value]
    if around.size:
        return int(np.bincount(around).argmax())
    other = values[warped] != value
    if not other.any():
        return int(region[at])
    nearest = ndimage.distance_transform_edt(~other, return_distances=False, return_indices=True)
    point = tuple(int(i + b.start) for i, b in zip(at, box, strict=True))
    return int(warped[tuple(n[point] for n in nearest)])


def _move_apart(warped: np.ndarray, values: np.ndarray, structure: np.ndarray, ids: np.ndarray, u: torch.Tensor,
                k: int, sizes: np.ndarray) -> bool:
    """Move all-contact component k (a voxel or a few) to the voxel that samples nearest to it among
    those that touch no other component of its label and are not the last voxel of another id."""
    same = values[warped] == values[k]
    blocked = ndimage.binary_dilation(same & (warped != k), structure) | same | (sizes[warped] <= 1)
    if blocked.all():
        return False
    distance = _pull(ndimage.distance_transform_edt(ids != k).astype(np.float32), u, nearest=False)
    distance[blocked] = np.inf
    at = np.unravel_index(int(np.argmin(distance)), distance.shape)
    warped[warped == k] = 0  # filled from their neighbours in the next round
    warped[at] = k
    return True
