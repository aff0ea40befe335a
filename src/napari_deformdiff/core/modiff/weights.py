"""Mo-Diff weights: the bundled phantom models and our safetensors checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..nn.config_json import read_config
from ..weights.files import load_strict, read_state, save_safetensors
from ..weights.resolve import resolve
from ..errors import InputError
from .nets.modiff import MoDiff, ModiffConfig

MODEL_NAME = "modiff"


def load_modiff(weights: str | Path | None = None, *, ndims: int | None = None,
                device: torch.device | str = "cpu") -> tuple[MoDiff, dict[str, str]]:
    """A MoDiff in eval mode and its checkpoint metadata; a checkpoint of another model or of
    another dimensionality than `ndims` is refused with a clear message."""
    path, _ = resolve(weights, MODEL_NAME, ndims)
    state, meta = read_state(path)
    if meta.get("model") != MODEL_NAME:
        raise InputError(f"{path.name} is not a Mo-Diff checkpoint (it holds "
                         f"{meta.get('model') or 'weights of an unknown model'}); pick a file written by "
                         "`deformdiff train modiff`.")
    config = read_config(ModiffConfig, meta, path.name)
    if ndims is not None and config.ndims != ndims:
        raise InputError(f"{path.name} holds a {config.ndims}D Mo-Diff model but the image is {ndims}D; "
                         f"pick {ndims}D weights (or the default).")
    model = MoDiff(config)
    load_strict(model, state, "Mo-Diff", path)
    meta = dict(meta)
    meta.setdefault("source", str(path))
    return model.to(device).eval(), meta


def stage_steps(meta: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads(meta.get("stage_steps", "{}")).items()}


def save_modiff(model: MoDiff, path: str | Path, *, overwrite: bool = False, **metadata) -> Path:
    meta = {"model": MODEL_NAME, "config": model.config.to_json(), **metadata}
    return save_safetensors(path, model.state_dict(), meta, overwrite=overwrite)


def frame_range(weights: str | Path | None = None, *, ndims: int | None = None) -> tuple[int, int]:
    """(min_frames, max_frames) the checkpoint's model was trained for, read from its config only."""
    path, _ = resolve(weights, MODEL_NAME, ndims)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
            raise InputError(f"{path.name} is not a readable safetensors file ({exc}).") from None
    else:
        meta = read_state(path)[1]
    if meta.get("model") != MODEL_NAME or "config" not in meta:
        raise InputError(f"{path.name} is not a Mo-Diff checkpoint.")
    config = ModiffConfig.from_json(meta["config"])
    return config.min_frames, config.max_frames
