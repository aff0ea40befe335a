"""DDM on real pairs never seen in training, against SimpleITK's diffeomorphic demons.

    PYTHONPATH=src python benchmarks/eval_ddm_real.py [--pairs echo,para,ct,ct2,mr,mr2] [--adapt auto]

Pairs (from the real-data cache; a missing one is skipped with the reason):
- echo: the apical 4-chamber echo of pydicom-data 1.0.0 (120 frames, 33 ms). Grayscale (the
  decoded luminance), the square around the moving sector (rows 71..375, columns 183..487, the
  bounding box of voxels whose std over time exceeds 5) resampled to 256 x 256 (0.608 mm).
  Source = frame 0; target = the frame of the first cycle (frames 6..36) least correlated with it
  (Pearson over the crop: frame 22, end of the contraction seen in the clip); the real frames in
  between are the intermediate phases.
- para: the parasternal long-axis echo of Debian's octave-dicom 0.5.1 (10 frames, 76 ms), its sector
  (tests/_dicom_real.parasternal_cycle: 350 x 350 at 0.457 mm) resampled to 256 x 256 (0.626 mm).
  Source = the first frame, target = the frame that differs most from it (frame 6); the real
  frames between are the intermediate phases.
- ct: pyradiomics' lung1 chest CT (48 x 512 x 512, 5 x 0.57 x 0.57 mm), HU clipped to
  [-1000, 1000], resampled to 32 x 128 x 128 (7.58 x 2.30 x 2.30 mm), deformed by a known smooth
  diffeomorphic field (a seeded random velocity, Gaussian sigma 25 mm, up to 8 mm, integrated);
  intermediates = the source warped by gamma times that field.
- ct2: pyradiomics' lung2 CT (61 x 512 x 512) the same way, 32 x 128 x 128 (9.68 x 2.52 x 2.52 mm),
  a larger motion: up to 16 mm (seed 1).
- mr: pyradiomics' brain1 MR (25 x 256 x 256, 6.5 x 0.78 x 0.78 mm), resampled to 25 x 128 x 128,
  up to 8 mm (seed 2).
- mr2: TotalSegmentator's example_mr_sm abdominal MR (20 x 91 x 117, 3 mm isotropic), its own
  grid, up to 12 mm (seed 3).
Method "DDM adapt auto v": the network's field was left out (v alone), "net+v": kept under v.
Columns: PSNR (dB, range of the source) and local NCC (window 9) of the gamma = 1 frame against
the target; mean PSNR of the generated intermediates against the real ones; folding = % voxels
with det(I + grad u) <= 0, worst frame; time = whole run (s) in this process, and its ratio to the
demons run just before it (the figure that survives a loaded machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_deformdiff.core import spatial  # noqa: E402
from napari_deformdiff.core.ddm.demons import demons_field  # noqa: E402
from napari_deformdiff.core.ddm.generate import generate_ddm  # noqa: E402
from napari_deformdiff.core.ddm.weights import load_ddm  # noqa: E402
from napari_deformdiff.core.events import Frame  # noqa: E402
from napari_deformdiff.core.geometry import Geometry  # noqa: E402
from napari_deformdiff.core.image_metrics import psnr  # noqa: E402
from napari_deformdiff.core.io import read_volume  # noqa: E402
from napari_deformdiff.core.io.volume import Volume  # noqa: E402
from napari_deformdiff.core.nn.losses import local_ncc  # noqa: E402


def _resize(image: np.ndarray, shape) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    mode = "bilinear" if image.ndim == 2 else "trilinear"
    return F.interpolate(t, size=tuple(shape), mode=mode, align_corners=True)[0, 0].numpy()


def echo_pair():
    """(name, source, target, real frames source..target, spacing) or a reason string."""
    from tests._dicom_real import echo_path

    path = echo_path()
    if path is None:
        return "echo not cached: run `python -m tests._dicom_real`"
    v = read_volume(path)
    crop = v.data[:, 71:376, 183:488].astype(np.float32)
    spacing = v.geometry.spacing[0] * (crop.shape[1] - 1) / 255
    flat = crop.reshape(len(crop), -1).astype(np.float64)
    flat = flat - flat.mean(1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    corr = flat[6:37] @ flat[0]
    es = 6 + int(np.argmin(corr))
    frames = np.stack([_resize(f, (256, 256)) for f in crop[: es + 1]])
    return f"echo A4C 0->{es} 256^2", frames[0], frames[-1], frames, (spacing, spacing)


def parasternal_pair():
    from tests._dicom_real import parasternal_cycle

    cycle = parasternal_cycle()
    if cycle is None:
        return "parasternal echo not cached: run `python -m tests._dicom_real`"
    spacing = cycle.geometry.spacing[0] * (cycle.data.shape[1] - 1) / 255
    frames = np.stack([_resize(f, (256, 256)) for f in cycle.data])
    return f"echo PLAX 1->{len(frames)} 256^2", frames[0], frames[-1], frames, (spacing, spacing)


def smooth_field(shape, spacing, *, sigma_mm=25.0, max_mm=8.0, seed=0) -> np.ndarray:
    """A seeded smooth diffeomorphic displacement (n, *S) in voxels."""
    g = torch.Generator().manual_seed(seed)
    n = len(shape)
    v = torch.randn((1, n, *shape), generator=g)
    for axis in range(n):
        s = sigma_mm / spacing[axis]
        r = int(3 * s)
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / s) ** 2)
        k /= k.sum()
        kshape = [1] * n
        kshape[axis] = 2 * r + 1
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = r
        conv = F.conv2d if n == 2 else F.conv3d
        v = conv(F.pad(v, pad, mode="replicate"), k.view(1, 1, *kshape).repeat(n, 1, *([1] * n)), groups=n)
    sp = torch.tensor(spacing, dtype=torch.float32).view(1, n, *([1] * n))
    v_mm = v * sp
    v = v / spatial.vector_norm(v_mm).max() * max_mm
    return spatial.integrate_velocity(v, steps=7)[0].numpy()


def _cached(which: str, name: str):
    from tests.real_data import RealDataUnavailable, pyradiomics_files, totalsegmentator_files

    try:
        files = (pyradiomics_files if which == "pyradiomics" else totalsegmentator_files)()
    except RealDataUnavailable as e:
        return f"{which} not cached: {e}"
    files = [p for p in files if p.name == name]
    return files[0] if files else f"{which} {name} not cached"


def deformed_pair(label: str, which: str, name: str, shape, clip, max_mm: float, seed: int, frames: int = 8):
    """A real volume resampled to `shape` (intensities clipped to `clip`), deformed by a known smooth
    diffeomorphic field of at most `max_mm`; intermediates = the source warped by gamma times that field."""
    path = _cached(which, name)
    if isinstance(path, str):
        return path
    v = read_volume(path)
    data = _resize(np.clip(v.data.astype(np.float32), *clip), shape)
    spacing = tuple(sp * (s - 1) / (o - 1) for sp, s, o in zip(v.geometry.spacing, v.data.shape, shape))
    u = smooth_field(shape, spacing, max_mm=max_mm, seed=seed)
    src = torch.from_numpy(data)[None, None]
    real = np.stack([spatial.warp(src, torch.from_numpy(g * u)[None], padding_mode="border")[0, 0].numpy()
                     for g in np.linspace(0, 1, frames)])
    return label, data, real[-1], real, spacing


def ct_pair():
    return deformed_pair("CT lung1 32x128x128 + synthetic", "pyradiomics", "lung1_image.nrrd",
                         (32, 128, 128), (-1000, 1000), 8.0, 0)


def ct_large_pair():
    return deformed_pair("CT lung2 32x128x128 + 16 mm", "pyradiomics", "lung2_image.nrrd",
                         (32, 128, 128), (-1000, 1000), 16.0, 1)


def mr_pair():
    return deformed_pair("MR brain1 25x128x128 + 8 mm", "pyradiomics", "brain1_image.nrrd",
                         (25, 128, 128), (0, 3057), 8.0, 2)


def mr_abdomen_pair():
    return deformed_pair("MR abdomen 20x91x117 + 12 mm", "totalsegmentator", "example_mr_sm.nii.gz",
                         (20, 91, 117), (-47, 833), 12.0, 3)


def _local_ncc(a, b) -> float:
    def unit(x):
        x = torch.from_numpy(np.asarray(x, np.float32))[None, None]
        return (x - x.min()) / (x.max() - x.min())
    return float(local_ncc(unit(a), unit(b), window=9))


def score(frames: np.ndarray, fields, real: np.ndarray, target, data_range: float, seconds: float) -> dict:
    inner = range(1, len(real) - 1)
    fold = 0.0
    if fields is not None:
        fold = max(float(spatial.folding_ratio(torch.from_numpy(f)[None])[0]) for f in fields) * 100
    return {"psnr": psnr(frames[-1], target, data_range), "ncc": _local_ncc(frames[-1], target),
            "mid": float(np.mean([psnr(frames[k], real[k], data_range) for k in inner])),
            "fold": fold, "s": seconds}


def run_pair(name, source, target, real, spacing, adapt, model) -> list[tuple[str, dict]]:
    n = len(real)
    data_range = float(source.max() - source.min())
    gammas = np.linspace(0, 1, n)
    rows = []
    rows.append(("initial", score(np.repeat(source[None], n, 0), None, real, target, data_range, 0.0)))
    t0 = time.perf_counter()
    u = demons_field(source, target, spacing)
    s_t = torch.from_numpy(source)[None, None]
    fields = np.stack([g * u for g in gammas])
    frames = np.stack([spatial.warp(s_t, torch.from_numpy(f)[None], padding_mode="border")[0, 0].numpy() for f in fields])
    rows.append(("demons (gamma*u)", score(frames, fields, real, target, data_range, time.perf_counter() - t0)))
    geom = Geometry.identity(source.ndim, spacing)
    vs, vt = Volume(source, geom, False, "s"), Volume(target, geom, False, "t")
    for k in (0, adapt):
        t0 = time.perf_counter()
        out = [e for e in generate_ddm(vs, vt, frames=n, model=model, adapt=k) if isinstance(e, Frame)]
        frames = np.stack([e.image for e in out])
        fields = np.stack([e.field for e in out])
        label = "DDM" if k == 0 else f"DDM adapt {k}" + (" net+v" if out[-1].info["adapt_network_field"] else " v")
        rows.append((label, score(frames, fields, real, target, data_range, time.perf_counter() - t0)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default="echo,para,ct,ct2,mr,mr2")
    ap.add_argument("--adapt", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapt = args.adapt if args.adapt == "auto" else int(args.adapt)
    makers = {"echo": echo_pair, "para": parasternal_pair, "ct": ct_pair, "ct2": ct_large_pair, "mr": mr_pair, "mr2": mr_abdomen_pair}
    print(f"{'pair':<32} {'method':<20} {'PSNR@1':>7} {'NCC@1':>6} {'PSNR mid':>8} {'fold %':>7} {'time s':>7} {'/demons':>7}")
    for key in args.pairs.split(","):
        got = makers[key]()
        if isinstance(got, str):
            print(f"{key}: skipped ({got})")
            continue
        name, source, target, real, spacing = got
        model, _ = load_ddm(None, ndims=source.ndim)
        rows = run_pair(name, source, target, real, spacing, adapt, model)
        base = dict(rows)["demons (gamma*u)"]["s"]
        for method, r in rows:
            print(f"{name:<32} {method:<20} {r['psnr']:>7.2f} {r['ncc']:>6.3f} {r['mid']:>8.2f} "
                  f"{r['fold']:>7.3f} {r['s']:>7.1f} {r['s'] / base:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
