"""DDM weights: the bundled phantom models, our safetensors checkpoints, the authors' .pth files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..weights.files import load_strict, read_state, save_safetensors
from ..weights.resolve import resolve
from ..errors import InputError
from .nets.ddm import DDM, DDMConfig

MODEL_NAME = "ddm"


def _ndims_of_state(state: dict[str, torch.Tensor]) -> int | None:
    w = state.get("field_fn.outconv.block.weight")
    return None if w is None else w.ndim - 2


def load_ddm(weights: str | Path | None = None, *, ndims: int | None = None,
             device: torch.device | str = "cpu") -> tuple[DDM, dict[str, str]]:
    """A DDM in eval mode on `device`, and the checkpoint's metadata.

    weights: see core.weights.resolve (bundled, registry name, or a file): one of our .safetensors
    files or a state dict in the authors' layout (.pth / .pt, read with weights_only=True).
    A checkpoint whose dimensionality differs from `ndims` is refused.
    """
    path, _ = resolve(weights, MODEL_NAME, ndims)
    state, meta = read_state(path)
    if meta:
        if meta.get("model") != MODEL_NAME:
            raise InputError(
                f"{path.name} is a checkpoint of another model ({meta.get('model', 'unknown')}), not DDM."
            )
        config = DDMConfig.from_json(meta["config"])
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
    meta = {"model": MODEL_NAME, "config": model.config.to_json(), **metadata}
    return save_safetensors(path, model.state_dict(), meta, overwrite=overwrite)
