"""Reading and writing model weights: safetensors for ours, weights-only torch.load for others'.

Our files are safetensors with metadata {"model": name, "config": json, ...}; nothing is ever
unpickled as code.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..errors import InputError
from ..io.atomic import atomic_output

BUNDLED_PACKAGE = "napari_deformdiff.weights"


def bundled_path(filename: str) -> Path:
    return Path(str(resources.files(BUNDLED_PACKAGE).joinpath(filename)))


def save_safetensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, object], *,
                     overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_output(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a .safetensors file or a plain tensor dict saved by torch.save."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
            raise InputError(f"{path.name} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"{path.name} could not be read as plain weights (only tensors are loaded, never code): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path.name} does not hold a dictionary of tensors (a state dict).")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, {}


def describe_mismatch(model_name: str, path: Path, missing, unexpected, shapes=()) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {sorted(missing)[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[0]})")
    if shapes:
        k, a, b = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: {a} in the file, {b} expected)")
    return (f"{path.name} is not a {model_name} checkpoint of this layout: "
            + "; ".join(parts) + ". Pick a file trained for this model.")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], model_name: str, path: Path) -> None:
    """load_state_dict(strict=True) with a readable InputError instead of a RuntimeError."""
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise InputError(describe_mismatch(model_name, path, missing, unexpected, shapes))
    module.load_state_dict(state, strict=True)


def check_optimizer_files(*checkpoints) -> None:
    """The `<checkpoint>.optim.pt` side files a resume will read must hold an optimizer state."""
    for ckpt in checkpoints:
        if ckpt is None:
            continue
        side = Path(ckpt).with_name(Path(ckpt).name + ".optim.pt")
        if not side.is_file():
            continue
        try:
            state = torch.load(str(side), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several kinds for a damaged file
            raise InputError(f"{side.name}: the optimizer state beside the checkpoint is unreadable "
                             f"({type(exc).__name__}); delete it to resume with a fresh optimizer.") from None
        if not isinstance(state, dict):
            raise InputError(f"{side.name}: not an optimizer state ({type(state).__name__}); delete it to "
                             "resume with a fresh optimizer.")
