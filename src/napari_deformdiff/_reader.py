"""napari reader hook: medical volumes, DICOM folders and ACDC patient folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .core.errors import InputError
from .core.io import can_read, read_path
from .core.io.acdc import is_acdc_folder, read_acdc_patient


def get_reader(path: str | list[str]) -> Callable | None:
    """Claim the path if we can read it; decline (None) so other readers can try otherwise."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(can_read(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    from napari.utils.notifications import show_error, show_warning

    from ._layers import volume_to_layer_data

    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for p in paths:
        try:
            if is_acdc_folder(p):  # show ED and its labels; the cine and ES start hidden
                patient = read_acdc_patient(p)
                shown = (patient.ed, patient.ed_labels)
                items = [(v, any(v is s for s in shown)) for v in patient.volumes()]
            else:
                items = [(v, True) for v in read_path(p)]
        except InputError as exc:
            # a specific message instead of a traceback; [(None,)] claims the file without layers
            show_error(str(exc))
            continue
        for volume, visible in items:
            for warning in volume.warnings:
                show_warning(warning)
            layers.append(volume_to_layer_data(volume, visible=visible))
    return layers or [(None,)]
