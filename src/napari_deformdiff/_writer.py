"""napari writer hooks: Image and Labels layers to .nii.gz/.nii, .nrrd, .mha with their geometry.

An image layer that carries displacement fields (a generated sequence, a phantom) is written
with them: scan.nii.gz and scan_fields.nii.gz, one ITK displacement-field image with a last
(time) axis (core/io/fields.py:write_displacement_sequence). Image and labels saved together
(File > Save Selected Layers) also give scan_labels.nii.gz.

Writes are atomic and never replace an existing file: napari has no way to say "overwrite", so a
clash is reported and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import InputError, OutputExistsError
from .core.io import write_volume
from .core.io.atomic import split_suffix

FIELDS_SUFFIX = "_fields"
LABELS_SUFFIX = "_labels"


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    return _write(path, [(data, attributes, "image")])


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    return _write(path, [(data, attributes, "labels")])


def write_sequence(path: str, layer_data: list[tuple]) -> list[str]:
    """An image (with its fields, if it carries them) and a label map, side by side."""
    return _write(path, layer_data)


def sibling(path: Path, tag: str) -> Path:
    """scan.nii.gz -> scan{tag}.nii.gz"""
    stem, suffix = split_suffix(path.name)
    return path.with_name(f"{stem}{tag}{suffix}")


def fields_of(data: np.ndarray, attributes: dict) -> np.ndarray | None:
    """The (T, n, *S) voxel fields an image layer carries for its frames, or None."""
    from ._layers import META_KEY

    fields = ((attributes.get("metadata") or {}).get(META_KEY) or {}).get("field")
    if fields is None:
        return None
    fields = np.asarray(fields)
    frames = data.shape[0] if data.ndim == fields.ndim - 1 else 1
    if fields.shape[0] < frames or fields.shape[2:] != data.shape[data.ndim - fields.shape[1]:]:
        raise InputError(f"the fields of {attributes.get('name', 'the layer')} (shape {fields.shape}) do "
                         f"not match its data (shape {data.shape}); save the image alone with another writer.")
    return fields[:frames]


def _plan(path: Path, layer_data: list[tuple]) -> list[tuple[Path, str, Any, dict]]:
    """(target, kind, data, attributes) of every file to write: image first, then fields, labels."""
    from ._layers import layer_to_volume

    images = [(np.asarray(d), a) for d, a, kind in layer_data if kind == "image"]
    labels = [(np.asarray(d), a) for d, a, kind in layer_data if kind == "labels"]
    if len(images) > 1 or len(labels) > 1 or not (images or labels):
        raise InputError("save one image, one label map, or one of each (with the image's fields) at a time.")
    plan = []
    if images:
        data, attributes = images[0]
        volume = layer_to_volume(data, attributes, is_labels=False)
        plan.append((path, "volume", volume, attributes))
        fields = fields_of(data, attributes)
        if fields is not None:
            plan.append((sibling(path, FIELDS_SUFFIX), "fields", fields, volume.geometry))
    if labels:
        data, attributes = labels[0]
        target = sibling(path, LABELS_SUFFIX) if images else path
        plan.append((target, "volume", layer_to_volume(data, attributes, is_labels=True), attributes))
    return plan


def _write(path: str, layer_data: list[tuple]) -> list[str]:
    from napari.utils.notifications import show_error

    from .core.io.fields import write_displacement_sequence

    written: list[Path] = []
    try:
        plan = _plan(Path(path), layer_data)
        for target, *_ in plan:  # all or nothing: no file of the set may exist
            if target.exists():
                raise OutputExistsError(f"{target} already exists; choose another name.")
        for target, kind, what, extra in plan:
            if kind == "fields":
                written.append(write_displacement_sequence(target, what, extra))
            else:
                written.append(write_volume(what, target))
        return [str(p) for p in written]
    except (InputError, OutputExistsError, ValueError) as exc:
        for done in written:  # a set is written whole or not at all
            done.unlink(missing_ok=True)
        show_error(f"Not saved: {exc}")
        return []
