"""DRDM export manifest: the cost of recording N finished samples.

- append: what the export does now (core/drdm/manifest.py): each row appended and synced as its
  sample finishes, the whole file rewritten once at the end, in plan order;
- rewrite: the baseline in the same run, what the export did before: the whole manifest rewritten
  (atomically) after every sample, so recording N samples costs O(N^2).
Rows carry every column of an augment export with labels (sizes and sha256 included).

Usage: .venv/bin/python benchmarks/bench_manifest.py [--samples 250,1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _table import print_table  # benchmarks/ is on sys.path when a script here runs


def _rows(n: int, settings) -> list[dict]:
    from napari_deformdiff.core.drdm.manifest import COLUMNS

    rows = []
    for k in range(n):
        row = {c: "" for c in COLUMNS[settings.mode]}
        row.update(id=f"case{k // 8:04d}_l50_s{k % 8}", case=f"case{k // 8:04d}", level=50, sample=k % 8,
                   seed=1000 + k)
        for c in COLUMNS[settings.mode]:
            if c.endswith("_sha256"):
                row[c] = f"{k:064x}"
            elif c.endswith("_bytes"):
                row[c] = 123456 + k
            elif c in ("image", "field", "labels"):
                row[c] = f"{row['id']}_{c}.nii.gz"
        rows.append(row)
    return rows


def _record(rows, settings, how: str) -> float:
    from napari_deformdiff.core.drdm.manifest import append_row, write_manifest

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        if how == "append":
            for row in rows:
                append_row(out, row, settings)
            write_manifest(out, rows, settings)
        else:
            for k in range(len(rows)):
                write_manifest(out, rows[: k + 1], settings)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", default="250,1000")
    args = p.parse_args()
    from napari_deformdiff.core.drdm.augment import ExportSettings

    table = []
    for fmt in ("csv", "json"):
        settings = ExportSettings(levels=(50,), samples=8, manifest=fmt)
        for n in (int(s) for s in args.samples.split(",")):
            rows = _rows(n, settings)
            new, old = _record(rows, settings, "append"), _record(rows, settings, "rewrite")
            table.append((f"{fmt}, {n} samples: append", new, f"rewrite every sample {old:.2f} s ({old / new:.1f}x)"))
    print_table("DRDM export manifest: recording N finished samples", table)


if __name__ == "__main__":
    main()
