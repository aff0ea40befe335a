"""The manifest of a DRDM export (manifest.csv or manifest.json): columns, reading, appending, checks.

One row per complete unit. Each file a row names is recorded with its size and sha256
(`<role>_bytes`, `<role>_sha256`), so a resume can tell a complete file from a truncated one.

While an export runs, rows are appended as units finish (a CSV line; a JSON manifest keeps one
sample per line and its closing `]}` is rewritten after the new line), so the cost per unit does
not grow with the export. The file therefore lists units in the order they finished; at the end
of a run it is rewritten once, atomically, in plan order (`write_manifest`), so identical
settings give an identical manifest. Readers take any order; a torn last line (a process killed
while appending) is ignored, and its unit is redone by a resume.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.atomic import atomic_output

STAT_COLUMNS = ("max_mm", "mean_mm", "max_pct", "mean_pct", "folding_pct")
FILE_ROLES = {
    "augment": ("image", "labels", "field"),
    "pairs": ("moving", "fixed", "moving_labels", "fixed_labels", "field"),
}
_COMMON = ("id", "case", "source", "level", "sample", "seed")
_PROVENANCE = ("loop", "weights", "precision", "fold_free")


def _checksum_columns(mode: str) -> tuple[str, ...]:
    return tuple(f"{role}_{what}" for role in FILE_ROLES[mode] for what in ("bytes", "sha256"))


COLUMNS = {
    "augment": (*_COMMON, *FILE_ROLES["augment"], *STAT_COLUMNS, *_PROVENANCE, *_checksum_columns("augment")),
    "pairs": (*_COMMON, "syn_level", "syn_seed", *FILE_ROLES["pairs"], *STAT_COLUMNS, *_PROVENANCE,
              *_checksum_columns("pairs")),
}
INT_COLUMNS = ("level", "sample", "seed", "syn_level", "syn_seed", "fold_free",
               *{c for mode in FILE_ROLES for c in _checksum_columns(mode) if c.endswith("_bytes")})
_JSON_TAIL = b"\n]}\n"
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- checksums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(out_dir: Path, files: dict[str, str]) -> dict[str, Any]:
    """{"<role>_bytes": size, "<role>_sha256": hex} of a unit's written files."""
    sums: dict[str, Any] = {}
    for role, name in files.items():
        path = Path(out_dir) / name
        sums[f"{role}_bytes"] = path.stat().st_size
        sums[f"{role}_sha256"] = sha256_of(path)
    return sums


def check_row_files(out_dir: Path, row: dict, mode: str) -> str:
    """'' when every file the row names is there with its recorded size and sha256, else why not."""
    for role in FILE_ROLES[mode]:
        name = row.get(role)
        if not name:
            continue
        path = Path(out_dir) / name
        if not path.is_file():
            return f"{name} is missing"
        size, digest = row.get(f"{role}_bytes"), row.get(f"{role}_sha256")
        if size in ("", None) or not digest:
            continue  # a manifest from before checksums: the file's presence is all it says
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest recorded {size} (truncated?)"
        if sha256_of(path) != digest:
            return f"{name} does not match its recorded sha256 (changed or damaged)"
    return ""


# --------------------------------------------------------------------------- text


def _cells(row: dict, columns: Sequence[str]) -> dict:
    return {c: ("" if row.get(c) is None else row.get(c, "")) for c in columns}


def _csv_lines(rows: Iterable[dict], columns: Sequence[str], header: bool) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow(_cells(row, columns))
    return out.getvalue()


def _json_head(settings) -> str:
    head = {"format": "napari-deformdiff drdm export", "version": 2, "settings": asdict(settings),
            "columns": list(COLUMNS[settings.mode])}
    return json.dumps(head)[:-1] + ', "samples": ['


def _json_row(row: dict, settings) -> str:
    return json.dumps(_cells(row, COLUMNS[settings.mode]))


def manifest_text(rows: Sequence[dict], settings) -> str:
    """The whole manifest of `rows` (in the order given)."""
    columns = COLUMNS[settings.mode]
    if settings.manifest == "json":
        body = ",\n".join(_json_row(r, settings) for r in rows)
        return _json_head(settings) + ("\n" + body if rows else "") + _JSON_TAIL.decode()
    return _csv_lines(rows, columns, header=True)


# --------------------------------------------------------------------------- writing


def write_manifest(out_dir: Path, rows: Sequence[dict], settings) -> Path:
    """Atomically (re)write the manifest listing `rows`."""
    path = Path(out_dir) / settings.manifest_name
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(manifest_text(rows, settings), encoding="utf-8")
    return path


def append_row(out_dir: Path, row: dict, settings) -> Path:
    """Add one row to the manifest (created with this row when there is none yet); durable on return."""
    path = Path(out_dir) / settings.manifest_name
    if not path.is_file():
        return write_manifest(out_dir, [row], settings)
    if settings.manifest == "json":
        line = (",\n" + _json_row(row, settings)).encode() + _JSON_TAIL
        with open(path, "r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - len(_JSON_TAIL)))
            if fh.read() != _JSON_TAIL:  # damaged by a killed run: rewrite what can be read
                rows = read_manifest(path)
                return write_manifest(out_dir, [*rows, row], settings)
            if size - len(_JSON_TAIL) <= len(_json_head(settings).encode()):
                line = line[1:]  # the first sample: no comma
            fh.seek(size - len(_JSON_TAIL))
            fh.write(line)
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
        return path
    with open(path, "ab") as fh:
        fh.write(_csv_lines([row], COLUMNS[settings.mode], header=False).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    return path


# --------------------------------------------------------------------------- reading


def _typed(rows: list[dict]) -> list[dict]:
    for row in rows:
        for key, value in row.items():
            if value in ("", None):
                row[key] = ""
            elif key in INT_COLUMNS:
                row[key] = int(value)
            elif key in STAT_COLUMNS:
                row[key] = float(value)
    return rows


def _json_rows(text: str) -> list[dict]:
    try:
        return json.loads(text)["samples"]
    except ValueError:
        pass
    rows = []  # a torn append: every complete sample line still reads
    for line in text.splitlines()[1:]:
        line = line.strip().rstrip(",")
        if line.startswith("{") and line.endswith("}"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a manifest.csv / manifest.json in file order, numbers as int/float, empty cells as ''."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            rows = _json_rows(text)
        else:
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]  # a torn last line
            rows = list(csv.DictReader(io.StringIO(text)))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable DRDM export manifest ({exc}).") from exc
    return _typed([dict(r) for r in rows if isinstance(r, dict)])


def manifest_mode(rows: Sequence[dict]) -> str | None:
    """'augment' or 'pairs' from the file columns of the rows (None when there are none)."""
    for row in rows:
        return "pairs" if "moving" in row else "augment"
    return None
