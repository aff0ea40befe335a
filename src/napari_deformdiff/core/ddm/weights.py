"""DDM weights: the bundled phantom models, our safetensors checkpoints, the authors' .pth files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..nn.config_json import read_config
from ..weights.files import load_strict, read_state, save_safetensors
from ..weights.resolve import resolve
from ..errors import InputError
from .nets.ddm import DDM, DDMConfig
from .nets.field_unet import skip_first_from_up_first

MODEL_NAME = "ddm"

# Concatenation order of the deformation module's up blocks, recorded in every file we save.
# Our files without this entry were written before the order was fixed (cat[up, skip]) and are
# converted exactly on load; the authors' .pth files carry no metadata and are already skip-first.
FIELD_CONCAT_KEY = "field_concat"
FIELD_CONCAT = "skip_first"
OLD_FIELD_CONCAT = "up_first"


def _ndims_of_state(state: dict[str, torch.Tensor]) -> int | None:
    w = state.get("field_fn.outconv.block.weight")
    return None if w is None else w.ndim - 2


def field_concat_of(meta: dict[str, str], name: str = "the checkpoint") -> str:
    """FIELD_CONCAT or OLD_FIELD_CONCAT for a checkpoint's metadata (not ours: the authors' file)."""
    if meta.get("model") != MODEL_NAME:
        return FIELD_CONCAT
    order = meta.get(FIELD_CONCAT_KEY, OLD_FIELD_CONCAT)
    if order not in (FIELD_CONCAT, OLD_FIELD_CONCAT):
        raise InputError(
            f"{name} records an unknown deformation-module layout ({FIELD_CONCAT_KEY}={order!r}); "
            "it was written by a newer or another program."
        )
    return order


def load_ddm(weights: str | Path | None = None, *, ndims: int | None = None,
             device: torch.device | str = "cpu") -> tuple[DDM, dict[str, str]]:
    """A DDM in eval mode on `device`, and the checkpoint's metadata.

    weights: see core.weights.resolve (bundled, registry name, or a file): one of our .safetensors
    files or a state dict in the authors' layout (.pth / .pt, read with weights_only=True).
    A checkpoint whose dimensionality differs from `ndims` is refused. Our files written before
    the deformation module's concatenation order was fixed (no FIELD_CONCAT_KEY in the metadata)
    are converted on load and compute what they computed; the metadata returned is the file's.
    """
    path, _ = resolve(weights, MODEL_NAME, ndims)
    state, meta = read_state(path)
    if meta:
        if meta.get("model") != MODEL_NAME:
            raise InputError(
                f"{path.name} is a checkpoint of another model ({meta.get('model', 'unknown')}), not DDM."
            )
        config = read_config(DDMConfig, meta, path.name)
        if field_concat_of(meta, path.name) == OLD_FIELD_CONCAT:
            state = skip_first_from_up_first(state)
    else:
        found = _ndims_of_state(state)
        if found is None:
            raise InputError(f"{path.name} is not a DDM checkpoint (no field_fn.outconv weights).")
        config = DDMConfig.default(found)
    if ndims is not None and config.ndims != ndims:
        raise InputError(
            f"{path.name} holds a {config.ndims}D DDM model but the image is {ndims}D; "
            f"pick {ndims}D weights (or the default)."
        )
    model = DDM(config)
    load_strict(model, state, "DDM", path)
    meta = dict(meta)
    meta.setdefault("source", str(path))
    return model.to(device).eval(), meta


def save_ddm(model: DDM, path: str | Path, *, overwrite: bool = False, **metadata) -> Path:
    meta = {"model": MODEL_NAME, "config": model.config.to_json(), **metadata, FIELD_CONCAT_KEY: FIELD_CONCAT}
    return save_safetensors(path, model.state_dict(), meta, overwrite=overwrite)


def upgrade_ddm_file(path: str | Path, out: str | Path | None = None) -> bool:
    """Rewrite one of our DDM files of the old layout (cat[up, skip]) in the current one.

    Exact: the input channels of the four decoder convolutions that read the concatenation are
    permuted, nothing else changes; same keys, same metadata plus FIELD_CONCAT_KEY. Written to
    `out` (default: in place, atomically). Returns False (and writes nothing) when the file is
    already in the current layout.
    """
    path = Path(path)
    state, meta = read_state(path)
    if meta.get("model") != MODEL_NAME:
        raise InputError(f"{path.name} is not one of our DDM checkpoints (safetensors with model=ddm).")
    if field_concat_of(meta, path.name) == FIELD_CONCAT:
        return False
    save_safetensors(out or path, skip_first_from_up_first(state), {**meta, FIELD_CONCAT_KEY: FIELD_CONCAT},
                     overwrite=True)
    return True
