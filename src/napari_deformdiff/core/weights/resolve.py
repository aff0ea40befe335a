"""One way to find weights for every model: bundled default, registry name, or file path."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .files import bundled_path
from .registry import REGISTRY, fetch

METHOD_NAMES = {"ddm": "DDM", "drdm": "DRDM", "modiff": "Mo-Diff"}


def bundled_name(method: str, ndims: int) -> str:
    """File name of a method's bundled phantom weights (the package's weights/ folder)."""
    return f"{method}_phantom_{ndims}d.safetensors"


BUNDLED = {(m, n): bundled_name(m, n) for m in METHOD_NAMES for n in (2, 3)}


def default_weights(method: str, ndims: int) -> Path:
    """The bundled phantom weights of `method` for `ndims`-D images."""
    return bundled_path(bundled_name(method, ndims))


def registry_names(method: str, ndims: int | None = None) -> list[str]:
    """Registry names of third-party weights for `method` (and `ndims`, if given)."""
    return sorted(n for n, e in REGISTRY.items() if e.method == method and ndims in (None, e.ndims))


def resolve(weights: str | Path | None, method: str, ndims: int | None) -> tuple[Path, str]:
    """(path, name) of the weights to load.

    weights: None / "" / "default" (the bundled model for ndims), a registry name (downloaded
    into the cache, sha256 checked), or a file path.
    """
    label = METHOD_NAMES.get(method, method)
    if weights is None or str(weights) in ("", "default"):
        if ndims not in (2, 3):
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
    known = ", ".join(registry_names(method)) or "none for this model"
    if path.suffix or "/" in text or "\\" in text:
        raise InputError(f"{label} weights file {path} does not exist (known names: {known}).")
    raise InputError(f"{label} weights {text!r}: no such file, and not a known name ({known}).")
