"""One way to find weights for every model: bundled default, registry name, or file path."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .files import bundled_path
from .registry import REGISTRY, fetch

METHOD_NAMES = {"ddm": "DDM", "drdm": "DRDM", "modiff": "Mo-Diff"}
BUNDLED = {
    ("ddm", 2): "ddm_phantom_2d.safetensors",
    ("ddm", 3): "ddm_phantom_3d.safetensors",
    ("drdm", 2): "drdm_phantom_2d.safetensors",
    ("drdm", 3): "drdm_phantom_3d.safetensors",
    ("modiff", 2): "modiff_phantom_2d.safetensors",
    ("modiff", 3): "modiff_phantom_3d.safetensors",
}


def default_weights(method: str, ndims: int) -> Path:
    """The bundled phantom weights of `method` for `ndims`-D images."""
    return bundled_path(BUNDLED[(method, ndims)])


def registry_names(method: str, ndims: int | None = None) -> list[str]:
    """Registry names of third-party weights for `method` (and `ndims`, if given)."""
    return sorted(n for n, e in REGISTRY.items() if e.method == method and ndims in (None, e.ndims))


def resolve(weights: str | Path | None, method: str, ndims: int | None) -> tuple[Path, str]:
    """(path, name) of the weights to load.

    weights: None / "" / "default" (the bundled model for ndims), a registry name (downloaded
    into the cache, sha256 checked), or a file path.
    """
    label = METHOD_NAMES[method]
    if weights is None or str(weights) in ("", "default"):
        if (method, ndims) not in BUNDLED:
            raise InputError(f"say whether the image is 2D or 3D to pick the default {label} weights.")
        path = default_weights(method, ndims)
        if not path.is_file():
            names = registry_names(method, ndims)
            hint = f" or one of the names {', '.join(names)}" if names else ""
            raise InputError(f"the bundled {ndims}D {label} weights ({path.name}) are missing from the package; "
                             f"pass a weights file{hint}.")
        return path, path.stem
    text = str(weights)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            raise InputError(f"{label} weights {path} is a folder; give a .safetensors or .pth file.")
        return path, path.stem
    if text in REGISTRY:
        entry = REGISTRY[text]
        if entry.method != method:
            raise InputError(f"{text!r} are {METHOD_NAMES.get(entry.method, entry.method)} weights, not {label}.")
        return fetch(text), text
    known = registry_names(method)
    raise InputError(f"{label} weights {text!r}: no such file, and not a known name "
                     f"({', '.join(known) or 'none for this model'}).")
