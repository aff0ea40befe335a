"""DRDM weights: bundled phantom models, our safetensors files, the authors' .pth, registry names.

Our files are safetensors with metadata {"model": "drdm", "config": {"ndims", "grid", "steps",
"embed_dim"}, "name", ...}. The authors' state dict (.pth, read with weights_only=True) carries no
metadata: its model grid is the authors' (256x256 in 2D, 128^3 in 3D) and its steps come from the
time-embedding table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..nn.config_json import check_sizes
from ..weights.files import load_strict, read_state, save_safetensors
from ..weights.resolve import resolve
from ..errors import InputError
from .nets import RecResACNet

MODEL_NAME = "drdm"
AUTHORS_GRID = {2: (256, 256), 3: (128, 128, 128)}


@dataclass
class DRDMMeta:
    """ndims; grid: model grid shape (array order); steps: diffusion steps (time-embedding rows)."""

    ndims: int
    grid: tuple[int, ...]
    steps: int = 80
    name: str = ""
    source: str = ""
    embed_dim: int = 100

    def __post_init__(self):
        self.grid = tuple(int(s) for s in self.grid)
        if self.ndims not in (2, 3) or len(self.grid) != self.ndims:
            raise InputError(f"DRDM metadata: grid {self.grid} does not match ndims {self.ndims}.")
        if any(s < 8 or s % 8 for s in self.grid):
            raise InputError(f"DRDM model grid sizes must be multiples of 8, got {self.grid}.")

    def config(self) -> dict:
        return {"ndims": self.ndims, "grid": list(self.grid), "steps": self.steps, "embed_dim": self.embed_dim}


def _authors_meta(state: dict[str, torch.Tensor], path: Path, name: str) -> DRDMMeta:
    out = state.get("conv_out.weight")
    emb = state.get("time_embed.weight")
    if out is None or emb is None or emb.ndim != 2:
        raise InputError(f"{path.name} is not a DRDM (RecResACNet) checkpoint: it has no conv_out / "
                         f"time_embed weights.")
    found = out.ndim - 2
    if found not in AUTHORS_GRID:
        raise InputError(f"{path.name}: conv_out has {out.ndim} dimensions, not a 2D or 3D DRDM network.")
    return DRDMMeta(found, AUTHORS_GRID[found], int(emb.shape[0]), name, str(path), int(emb.shape[1]))


def load_drdm(weights: str | Path | None = None, *, ndims: int,
              device: torch.device | str = "cpu") -> tuple[RecResACNet, DRDMMeta]:
    """A RecResACNet in eval mode on `device` and its DRDMMeta.

    weights: None (bundled phantom model of `ndims`), a registry name ("drdm-cmr-2d": downloaded
    into the cache, sha256 checked), one of our .safetensors files, or an authors' .pth state dict.
    A checkpoint of another dimensionality, another model or another layout -> InputError.
    """
    path, name = resolve(weights, MODEL_NAME, ndims)
    state, raw = read_state(path)
    if raw:
        model_name = raw.get("model", "unknown")
        if model_name != MODEL_NAME:
            raise InputError(f"{path.name} is a checkpoint of another model ({model_name}), not DRDM.")
        try:
            cfg = json.loads(raw["config"])
            check_sizes(cfg, path.name)
            meta = DRDMMeta(int(cfg["ndims"]), tuple(cfg["grid"]), int(cfg.get("steps", 80)),
                            raw.get("name", name), raw.get("source", str(path)), int(cfg.get("embed_dim", 100)))
        except InputError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"{path.name}: unreadable DRDM metadata ({exc!r}).") from None
    else:
        meta = _authors_meta(state, path, name)
    if ndims is not None and meta.ndims != ndims:
        raise InputError(f"{path.name} holds a {meta.ndims}D DRDM model but the image is {ndims}D; "
                         f"pick {ndims}D weights (or the default).")
    model = RecResACNet(meta.ndims, meta.steps, meta.embed_dim)
    load_strict(model, state, "DRDM (RecResACNet)", path)
    return model.to(device).eval(), meta


def save_drdm(model: RecResACNet, path: str | Path, *, meta: DRDMMeta, overwrite: bool = False,
              **extra_metadata) -> Path:
    """Atomic safetensors file with {"model": "drdm", "config": ..., "name", "source", **extra}."""
    if model.ndims != meta.ndims or model.steps != meta.steps or model.embed_dim != meta.embed_dim:
        raise InputError(f"DRDM metadata {asdict(meta)} does not describe this network "
                         f"(ndims {model.ndims}, steps {model.steps}, embed_dim {model.embed_dim}).")
    metadata = {"model": MODEL_NAME, "config": meta.config(), "name": meta.name, "source": meta.source,
                **extra_metadata}
    return save_safetensors(path, model.state_dict(), metadata, overwrite=overwrite)
