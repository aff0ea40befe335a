"""napari writer hooks: Image and Labels layers to .nii.gz/.nii, .nrrd, .mha with their geometry.

Writes are atomic and never replace an existing file: napari has no way to say "overwrite", so a
clash is reported and nothing is written.
"""

from __future__ import annotations

from typing import Any

from .core.errors import InputError, OutputExistsError
from .core.io import write_volume


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    return _write(path, data, attributes, is_labels=False)


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    return _write(path, data, attributes, is_labels=True)


def _write(path: str, data: Any, attributes: dict, *, is_labels: bool) -> list[str]:
    from napari.utils.notifications import show_error

    from ._layers import layer_to_volume

    try:
        volume = layer_to_volume(data, attributes, is_labels=is_labels)
        return [str(write_volume(volume, path))]
    except (InputError, OutputExistsError, ValueError) as exc:
        show_error(f"Not saved: {exc}")
        return []
