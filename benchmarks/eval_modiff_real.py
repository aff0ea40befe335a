"""Mo-Diff on real 2D+t cardiac sequences, scored per frame against the real frames
(core/modiff/evaluate.py: PSNR, SSIM, temporal error): Mo-Diff's output designs, Mo-Diff
fine-tuned on OTHER real sequences (`--finetuned`), "repeat the first frame" and DDM given the
true last frame. Both clips are fetched and cached by `python -m tests._dicom_real`.

Echo: the apical 4-chamber echo in pydicom-data 1.0.0 (120 frames, 480 x 640, 0.51 mm), read with
the project's DICOM reader (luminance), cropped to the sector without the overlay text (rows
30:430, columns 120:520, 204 x 204 mm) and cut into ED -> ES segments from the mean intensity in
a box on the LV cavity (rows 120:330, columns 320:420 of the full frame; blood is dark, so the mean
rises as the cavity empties), smoothed along time (Gaussian, 1.5 frames): ES at its peaks, ED at
the lowest point before each (the file has no ECG to confirm the phases). Each segment is forecast
from its ED frame with N = 12 (the truth resampled to 12 real frames).

Parasternal: the parasternal long-axis echo with colour Doppler in Debian's octave-dicom 0.5.1
(10 palette-colour frames, 76 ms/frame, 85 bpm: about one cycle), read as luminance, cropped to
rows 0:350, columns 125:475 (the sector, without the overlay text, the colour bar and the ECG
trace). The file has no pixel spacing: 160 mm / 350 rows = 0.457 mm, from the overlay's "16CM"
depth over the 350 rows the sector spans. Its ECG trace is a static picture, so the phases are
unknown: the segment runs from frame 1 to the frame that differs most from it (mean absolute
difference in the crop), all real frames, N = that count.

Fine-tuning: `--write-training DIR` writes the echo's ED -> ES segments of every cycle except the
held-out one (`--held-out`, default the last) as 4D NIfTI files, with the start shifted by -2..2
frames (5 sequences per cycle); train on them with `deformdiff train modiff --data DIR --init
default --stages tddm,video ...` (docs/modiff.md) and evaluate the result with `--finetuned CKPT`
on the held-out echo segment and on the parasternal clip (never seen in training).

Usage: python benchmarks/eval_modiff_real.py [--finetuned CKPT] [--write-training DIR] [--held-out K]
       [--clips echo,parasternal] [--steps 25] [--no-ablation] [--csv F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CROP = (slice(30, 430), slice(120, 520))
LV_BOX = (slice(120, 330), slice(320, 420))
SHIFTS = (-2, -1, 0, 1, 2)


def echo_clip():
    """The echo (Volume, (T, 480, 640)), or None when it is not cached."""
    sys.path.insert(0, str(ROOT))
    from tests._dicom_real import echo_path

    from napari_deformdiff.core.io import read_volume

    path = echo_path()
    return None if path is None else read_volume(path, as_labels=False)


def parasternal_sequence():
    """Frame 1 .. the frame that differs most from it (tests/_dicom_real.parasternal_cycle), or None."""
    sys.path.insert(0, str(ROOT))
    from tests._dicom_real import parasternal_cycle

    from napari_deformdiff.core.modiff.data import MotionSequence

    cycle = parasternal_cycle()
    return None if cycle is None else MotionSequence(cycle.name, cycle)


def ed_es_segments(frames: np.ndarray, prominence: float = 3.0, min_rise: float = 5.0) -> list[tuple[int, int]]:
    """(ED, ES) frame pairs: ES = a peak of the smoothed LV-box mean (prominence >= `prominence`
    grey levels), ED = the lowest point between the previous peak (or frame 0) and it; kept when
    the mean rises by >= `min_rise` from ED to ES."""
    from scipy import ndimage, signal

    curve = ndimage.gaussian_filter1d(frames[(slice(None), *LV_BOX)].mean(axis=(1, 2)), 1.5)
    peaks = signal.find_peaks(curve, prominence=prominence)[0]
    out, start = [], 0
    for es in peaks:
        ed = start + int(np.argmin(curve[start: es + 1]))
        if es - ed >= 4 and curve[es] - curve[ed] >= min_rise:
            out.append((ed, int(es)))
        start = int(es)
    return out


def segment(clip, ed: int, es: int, name: str):
    from napari_deformdiff.core.geometry import Geometry
    from napari_deformdiff.core.io import Volume
    from napari_deformdiff.core.modiff.data import MotionSequence

    data = np.ascontiguousarray(clip.data[ed: es + 1][(slice(None), *CROP)], np.float32)
    geometry = Geometry(tuple(clip.geometry.spacing), (0.0, 0.0), np.eye(2))
    return MotionSequence(name, Volume(data, geometry, False, name, clip.time_spacing))


def write_training(clip, segments, held_out: int, folder: Path) -> list[Path]:
    from napari_deformdiff.core.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (ed, es) in enumerate(segments):
        if i == held_out:
            continue
        for s in SHIFTS:
            if ed + s < 0 or es + s >= clip.data.shape[0]:
                continue
            seq = segment(clip, ed + s, es + s, f"echo_cycle{i}_start{ed + s}")
            path = folder / f"{seq.name}.nii.gz"
            write_volume(seq.frames, path, overwrite=True)
            paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--finetuned", type=Path, help="also evaluate these weights (fine-tuned on the other cycles)")
    p.add_argument("--write-training", type=Path, help="write the training segments (4D NIfTI) here and stop")
    p.add_argument("--held-out", type=int, default=-1, help="index of the held-out ED -> ES segment (default: last)")
    p.add_argument("--clips", default="echo,parasternal", help="which clips to evaluate (comma-separated)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--frames", type=int, default=12, help="N for the echo segments")
    p.add_argument("--no-ablation", action="store_true", help="only the default output design")
    p.add_argument("--csv", type=Path, help="also write every case's per-frame scores here")
    args = p.parse_args(argv)
    clips = set(args.clips.split(","))

    clip = echo_clip()
    if clip is None:
        print("skipped: the pydicom-data echo is not cached (fetch it with `python -m tests._dicom_real`)")
        return 0
    import torch

    torch.set_num_threads(1)
    segments = ed_es_segments(clip.data)
    held_out = range(len(segments))[args.held_out]
    print(f"echo {clip.data.shape}, {clip.geometry.spacing[0]:.3f} mm, {1000 * clip.time_spacing:.1f} ms/frame; "
          f"ED -> ES segments {segments}; held out: {segments[held_out]}")
    if args.write_training:
        paths = write_training(clip, segments, held_out, args.write_training)
        print(f"wrote {len(paths)} training sequences to {args.write_training}")
        return 0

    from napari_deformdiff.core.ddm.weights import load_ddm
    from napari_deformdiff.core.modiff.evaluate import (
        OUTPUT_ABLATION, CaseResult, evaluate_modiff, format_table, summarize, write_csv)
    from napari_deformdiff.core.modiff.weights import load_modiff

    outputs = {"": ("warp", "monotone")} if args.no_ablation else OUTPUT_ABLATION
    bundled = {"Mo-Diff": load_modiff(None, ndims=2)[0]}
    tuned = {"Mo-Diff fine-tuned": load_modiff(args.finetuned, ndims=2)[0]} if args.finetuned else {}
    ddm = load_ddm(None, ndims=2)[0]

    def run(sequences, models, frames, **kw):
        return [e for e in evaluate_modiff(sequences, models, frames=frames, steps=args.steps, outputs=outputs, **kw)
                if isinstance(e, CaseResult)]

    results, sections = [], []
    if "echo" in clips:
        sequences = [segment(clip, ed, es, f"cycle{i} ED {ed} -> ES {es}") for i, (ed, es) in enumerate(segments)]
        echo = run(sequences, bundled, args.frames, ddm=ddm)
        if tuned:
            echo += run([sequences[held_out]], tuned, args.frames, repeat=False)
        results += echo
        sections.append((f"echo: all {len(sequences)} ED -> ES segments, N = {args.frames}",
                         [r for r in echo if not r.method.startswith("Mo-Diff fine-tuned")]))
        sections.append((f"echo: held-out segment {sequences[held_out].name}, N = {args.frames}",
                         [r for r in echo if r.case == sequences[held_out].name]))
    if "parasternal" in clips:
        seq = parasternal_sequence()
        if seq is None:
            print("skipped the parasternal clip: not cached (fetch it with `python -m tests._dicom_real`)")
        else:
            print(f"parasternal {seq.frames.data.shape}, {1000 * seq.frames.time_spacing:.1f} ms/frame; {seq.name}")
            found = run([seq], {**bundled, **tuned}, None, ddm=ddm)
            results += found
            sections.append((f"parasternal: {seq.name}, N = {len(seq.frames.data)}", found))
    for title, rows in sections:
        print(f"\n## {title}\n")
        print(format_table(summarize(rows)))
    if args.csv:
        write_csv(results, args.csv, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
