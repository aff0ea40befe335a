"""Model configurations (frozen dataclasses) as JSON in checkpoint metadata."""

from __future__ import annotations

import dataclasses
import json


class JsonConfig:
    """Mixin for configuration dataclasses: to_json / from_json (lists come back as tuples)."""

    label = "model"  # named in the error for unknown keys

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str):
        raw = json.loads(text)
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.label} configuration keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


GRID_LIMIT_BYTES = 4 << 30  # one float32 field over a checkpoint's grid (and frames) must fit in 4 GiB
INT_LIMITS = {"timesteps": 100_000, "steps": 100_000, "max_frames": 512, "min_frames": 512}
INT_LIMIT = 8192  # channels, widths, heads, windows: far above any real model


def check_sizes(values: dict, where: str, *, frames: int = 1) -> None:
    """Refuse absurd sizes in a checkpoint's configuration before anything is allocated."""
    import math

    from ..errors import InputError

    for key, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"{where}: configuration {key} = {value!r} is not finite.")
            limit = 4096 if key == "grid" else INT_LIMITS.get(key, INT_LIMIT)
            if isinstance(v, int) and not 0 <= v <= limit:
                raise InputError(f"{where}: configuration {key} = {value!r} is outside 0..{limit}; "
                                 "the file is corrupt or not one of ours.")
    grid = values.get("grid")
    if isinstance(grid, (list, tuple)) and grid:
        need = math.prod(int(s) for s in grid) * len(grid) * 4 * max(int(frames), 1)
        if need > GRID_LIMIT_BYTES:
            raise InputError(f"{where}: grid {'x'.join(map(str, grid))}"
                             f"{f' with {frames} frames' if frames > 1 else ''} would need "
                             f"{need / 2**30:.1f} GiB per field (limit {GRID_LIMIT_BYTES >> 30} GiB); refused.")


def read_config(cls, meta: dict, where: str):
    """`cls` from a checkpoint's metadata["config"], sizes checked; any problem -> InputError."""
    from ..errors import InputError

    text = meta.get("config")
    if text is None:
        raise InputError(f"{where}: the checkpoint metadata has no model configuration; the file is "
                         "incomplete or not one of ours.")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - caught just below
    except ValueError as exc:
        raise InputError(f"{where}: unreadable model configuration in the metadata ({exc}).") from None
    check_sizes(raw, where, frames=raw.get("max_frames", 1) if isinstance(raw.get("max_frames"), int) else 1)
    try:
        return cls.from_json(text)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: invalid model configuration ({exc}).") from None
