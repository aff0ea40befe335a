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
            if _is_field_file(p):  # an ITK displacement field: shown as vectors, usable by Inspect
                layers.append(_field_layer(p))
                continue
            if is_acdc_folder(p):  # show ED and its labels; the cine and ES start hidden
                patient = read_acdc_patient(p)
                _tag_roles(patient)
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


def _is_field_file(path) -> bool:
    from .core.io.fields import is_displacement_file

    return Path(path).is_file() and is_displacement_file(path)


def _field_layer(path) -> tuple:
    from ._layers import field_vectors_layer_data
    from .core.io.fields import read_displacement
    from .core.io.atomic import split_suffix

    ddf, geometry = read_displacement(path)
    name = f"{split_suffix(Path(path).name)[0]} field"
    return field_vectors_layer_data(ddf[None], geometry, name=name, source=str(path))


def _tag_roles(patient) -> None:
    """Mark each volume's ACDC role (and the Info.cfg group) so the widgets can preselect ED/ES/labels."""
    roles = {"cine": patient.cine, "ED": patient.ed, "ES": patient.es,
             "ED labels": patient.ed_labels, "ES labels": patient.es_labels}
    group = patient.info.get("Group", "")
    for role, volume in roles.items():
        if volume is not None:
            volume.metadata["acdc"] = {"patient": patient.patient, "role": role, "group": group}
