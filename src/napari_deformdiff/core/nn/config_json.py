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
