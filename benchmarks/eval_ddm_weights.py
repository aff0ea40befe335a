"""DDM weights against the bundled-weights targets, side by side (the first weights are the baseline).

Per weights file: the held-out phantom targets (core/ddm/evaluate_weights.phantom_targets) and the
real rows without adaptation (real volumes pulled by seeded cardiac-like fields; DDM vs the source
unchanged at every gamma > 0). For a 2D model, real 3D volumes give their middle slice.

Usage: .venv/bin/python benchmarks/eval_ddm_weights.py --data eval3d --real a.nii.gz b.nrrd
           --weights bundled candidate.safetensors [--cases 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    import numpy as np
    import torch

    from napari_deformdiff.core.ddm.evaluate_weights import (format_phantom_targets, format_real_rows,
                                                              phantom_targets, real_rows, sequence_rows)
    from napari_deformdiff.core.ddm.train import _real_on_grid
    from napari_deformdiff.core.ddm.weights import load_ddm
    from napari_deformdiff.core.io import read_volume
    from napari_deformdiff.core.io.pairs import find_pairs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests._dicom_real import parasternal_cycle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="held-out phantom cases (deformdiff phantom)")
    ap.add_argument("--real", type=Path, nargs="*", default=[], help="held-out real volumes")
    ap.add_argument("--weights", nargs="+", default=["bundled"], help="'bundled' or checkpoint paths")
    ap.add_argument("--echo", type=Path, default=None, help="a real 2D sequence (the pydicom-data echo clip), 2D weights")
    ap.add_argument("--parasternal", action="store_true",
                    help="also the parasternal echo of octave-dicom (tests/_dicom_real.py), 2D weights")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--frames", type=int, default=5, help="gammas of the real rows (0 excluded)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pairs = find_pairs(args.data)[: args.cases]
    ndims = pairs[0].source.geometry.ndim
    real = [read_volume(f, as_labels=False) for f in args.real]
    for w in args.weights:
        model, meta = load_ddm(None if w == "bundled" else w, ndims=ndims)
        model.eval()
        print(f"\n== {w} (step {meta.get('step')}, mix {meta.get('mix', 'phantom=1')})")
        print(format_phantom_targets(phantom_targets(pairs, model)))
        volumes = {}
        for f, v in zip(args.real, real):
            s = _real_on_grid(v, model.config)
            if s.ndim - 2 != ndims:
                s = s[:, :, s.shape[2] // 2]
                s = (s - s.min()) / (s.max() - s.min()) * 2 - 1
            volumes[f.name.split(".")[0]] = s
        rows = real_rows(volumes, model, frames=args.frames) if volumes else []
        if args.echo is not None and ndims == 2:
            rows += sequence_rows(read_volume(args.echo), model, starts=(0, 30, 60, 90), span=8)
        if args.parasternal and ndims == 2:
            cycle = parasternal_cycle()
            if cycle is None:
                raise SystemExit("the parasternal echo is not cached: run `python -m tests._dicom_real`")
            rows += sequence_rows(cycle, model, starts=(0,), span=len(cycle.data) - 1,
                                  name="parasternal frames")
        if rows:
            print(format_real_rows(rows))
            d = np.array([r["psnr_ddm"] - r["psnr_unchanged"] for r in rows])
            d = d[np.isfinite(d)]  # a repeated frame: the source unchanged is exact there
            print(f"DDM - unchanged: mean {d.mean():+.2f} dB, min {d.min():+.2f} dB, better in {(d > 0).sum()}/{d.size}"
                  " (rows where the source unchanged is not exact)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
