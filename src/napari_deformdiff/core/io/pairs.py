"""Training and evaluation pairs (source, target[, labels]) found in a folder.

Accepted layouts: ACDC patient folders (ED -> ES from Info.cfg; the 4D cine and its per-frame
labels, when present, give the true intermediate frames), or files named
<name>_source.<ext>, <name>_target.<ext> and optionally <name>_labels.<ext> /
<name>_target_labels.<ext> in one folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .dispatch import read_volume
from .acdc import is_acdc_folder, read_acdc_patient
from .atomic import split_suffix
from .dispatch import can_read
from .volume import Volume


@dataclass
class Pair:
    name: str
    source: Volume
    target: Volume
    source_labels: Volume | None = None
    target_labels: Volume | None = None
    cine: Volume | None = None  # frames source .. target (ground truth in between), if known
    cine_labels: Volume | None = None


def _acdc_pair(folder: Path) -> Pair:
    p = read_acdc_patient(folder)
    cine = cine_labels = None
    ed, es = int(p.info["ED"]) - 1, int(p.info["ES"]) - 1
    if p.cine is not None and es > ed:
        cine = Volume(p.cine.data[ed:es + 1], p.cine.geometry, False, f"{p.patient} ED->ES", p.cine.time_spacing)
        gt = folder / f"{p.patient}_4d_gt.nii.gz"
        if gt.is_file():
            lab = read_volume(gt, as_labels=True)
            cine_labels = Volume(lab.data[ed:es + 1], lab.geometry, True, f"{p.patient} ED->ES labels")
    return Pair(p.patient, p.ed, p.es, p.ed_labels, p.es_labels, cine, cine_labels)


def _named_pairs(folder: Path) -> list[Pair]:
    groups: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or not can_read(f):
            continue
        stem, _ = split_suffix(f.name)
        for role in ("_target_labels", "_labels", "_source", "_target"):
            if stem.endswith(role):
                groups.setdefault(stem[: -len(role)], {})[role[1:]] = f
                break
    pairs = []
    for name, files in sorted(groups.items()):
        if "source" not in files or "target" not in files:
            continue
        lab = files.get("labels")
        tlab = files.get("target_labels")
        pairs.append(Pair(
            name, read_volume(files["source"], as_labels=False), read_volume(files["target"], as_labels=False),
            read_volume(lab, as_labels=True) if lab else None,
            read_volume(tlab, as_labels=True) if tlab else None,
        ))
    return pairs


def find_pairs(folder: str | Path) -> list[Pair]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.")
    if is_acdc_folder(folder):
        pairs = [_acdc_pair(folder)]
    else:
        pairs = [_acdc_pair(sub) for sub in sorted(folder.iterdir()) if sub.is_dir() and is_acdc_folder(sub)]
        pairs += _named_pairs(folder)
    if not pairs:
        raise InputError(
            f"{folder} holds no pairs: expected ACDC patient folders (with Info.cfg) or files named "
            "<name>_source.nii.gz and <name>_target.nii.gz."
        )
    for p in pairs:
        check_pair(p.source, p.target, p.source_labels, where=p.name)
    return pairs


def _world_box(v: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest world coordinates (mm) of the volume's voxel corners."""
    n = v.geometry.ndim
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in v.spatial_shape], indexing="ij")).reshape(n, -1)
    world = v.geometry.index_to_world() @ np.vstack([corners, np.ones(corners.shape[1])])
    return world[:n].min(axis=1), world[:n].max(axis=1)


def check_pair(source: Volume, target: Volume, labels: Volume | None = None, *, where: str = "") -> None:
    """Source and target (and labels) must be single, non-constant, different frames on the same grid."""
    at = f"{where}: " if where else ""
    for v, what in ((source, "source"), (target, "target")):
        if v.has_time:
            raise InputError(f"{at}the {what} has {v.data.shape[0]} frames; choose one frame (a single 2D or "
                             "3D image).")
        if v.is_labels:
            raise InputError(f"{at}the {what} is a label map; give an intensity image.")
    if source.geometry.ndim != target.geometry.ndim:
        raise InputError(
            f"{at}the source is {source.geometry.ndim}D but the target is {target.geometry.ndim}D; "
            "both must be 2D or both 3D."
        )
    (lo_s, hi_s), (lo_t, hi_t) = _world_box(source), _world_box(target)
    if np.any(hi_s <= lo_t) or np.any(hi_t <= lo_s):
        raise InputError(f"{at}source and target do not overlap in space (their physical extents are disjoint); "
                         "they cannot be registered.")
    for v, what in ((source, "source"), (target, "target")):
        data = v.data
        if data.size and not np.all(np.isfinite(data)):
            raise InputError(f"{at}the {what} contains NaN or infinite values; fix or mask them first.")
        if data.size == 0 or data.min() == data.max():
            raise InputError(f"{at}the {what} is constant (all voxels equal): there is nothing to register.")
    if source.data.shape != target.data.shape:
        raise InputError(
            f"{at}source and target have different shapes {source.data.shape} and {target.data.shape}; "
            "resample one onto the other first."
        )
    if not source.geometry.almost_equal(target.geometry):
        raise InputError(
            f"{at}source and target have different geometry (spacing, origin or direction); "
            "they must be two frames of the same acquisition."
        )
    if np.array_equal(source.data, target.data):
        raise InputError(f"{at}source and target are the same image: there is no motion to generate.")
    if labels is not None:
        if labels.data.shape != source.data.shape:
            raise InputError(
                f"{at}the labels' shape {labels.data.shape} differs from the source's {source.data.shape}."
            )
        if not np.issubdtype(labels.data.dtype, np.integer) and not np.array_equal(labels.data, np.round(labels.data)):
            raise InputError(f"{at}the labels are not integers; give a label map.")
        if not labels.geometry.almost_equal(source.geometry):
            raise InputError(f"{at}the labels' geometry differs from the source's.")
