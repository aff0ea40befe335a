"""Mo-Diff training and evaluation sequences: ED -> ES (or the whole cycle) of ACDC-layout folders,
or a user's own 2D+t / 3D+t images (4D NIfTI, NRRD, MHA, DICOM cine files or series folders; each
one sequence, first frame to last), brought onto the model grid with the first frame's intensity
scaling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.acdc import is_acdc_folder, read_acdc_patient
from ..io.volume import Volume
from ..nn.model_grid import GridMap, unit_range
from .nets.modiff import ModiffConfig

SPANS = ("es", "cycle")


@dataclass
class MotionSequence:
    name: str
    frames: Volume  # (N, *S): first frame .. last frame
    labels: Volume | None = None  # labels of every frame, when known


def _patient_folders(folder: Path) -> list[Path]:
    if is_acdc_folder(folder):
        return [folder]
    return [sub for sub in sorted(folder.iterdir()) if sub.is_dir() and is_acdc_folder(sub)]


def _image_sequences(path: Path) -> list[MotionSequence]:
    """The sequences of a time-series file, a DICOM series folder or a folder of such files."""
    from ..io.dispatch import READ_SUFFIXES, is_dicom_folder, read_path, suffix_of

    if path.is_file() or is_dicom_folder(path):
        sources = [path]
    else:
        sources = [p for p in sorted(path.iterdir())
                   if (p.is_file() and suffix_of(p) in READ_SUFFIXES) or (p.is_dir() and is_dicom_folder(p))]
    out = []
    for source in sources:
        for i, v in enumerate(read_path(source, as_labels=False)):
            if not v.has_time:
                raise InputError(f"{source.name} is a single frame; Mo-Diff learns from sequences (2D+t or 3D+t).")
            name = f"{source.name}" + (f"#{i}" if i else "")
            out.append(MotionSequence(name, Volume(np.asarray(v.data), v.geometry, False, name, v.time_spacing)))
    return out


def find_sequences(folders: Sequence[str | Path], span: str = "es") -> list[MotionSequence]:
    """The sequences in `folders`: one per ACDC patient folder (each given folder a patient or a
    folder of them), else one per time-series image (a 4D file, a DICOM cine or series folder, or a
    folder of these; first frame to last, whatever `span`).

    span "es": frames ED .. ES (cardiac) / end-inspiration .. end-expiration (the phantom's lung);
    "cycle": every frame of the cine, starting at ED.
    """
    if span not in SPANS:
        raise InputError(f"span must be one of {', '.join(SPANS)}, not {span!r}.")
    out = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise InputError(f"{folder} does not exist.")
        patients = _patient_folders(folder) if folder.is_dir() else []
        if not patients:
            out += _image_sequences(folder)
        for sub in patients:
            p = read_acdc_patient(sub)
            if p.cine is None:
                raise InputError(f"{sub.name}: no 4D cine (<patient>_4d.nii.gz); Mo-Diff learns from whole sequences.")
            ed, es = int(p.info["ED"]) - 1, int(p.info["ES"]) - 1
            n = p.cine.data.shape[0]
            idx = np.arange(ed, es + 1) if span == "es" and es > ed else (np.arange(n) + ed) % n
            frames = Volume(p.cine.data[idx], p.cine.geometry, False, f"{p.patient}", p.cine.time_spacing)
            labels = None
            gt = sub / f"{p.patient}_4d_gt.nii.gz"
            if gt.is_file():
                from ..io import read_volume

                lab = read_volume(gt, as_labels=True)
                labels = Volume(lab.data[idx], lab.geometry, True, f"{p.patient} labels")
            out.append(MotionSequence(f"{folder.name}/{p.patient}", frames, labels))
    if not out:
        raise InputError(f"no sequences (ACDC patient folders with a 4D cine, or 2D+t / 3D+t images) in "
                         f"{', '.join(map(str, folders))}.")
    ndims = {s.frames.geometry.ndim for s in out}
    if len(ndims) > 1:
        raise InputError("the sequences mix 2D and 3D images; train one model per dimensionality.")
    return out


def grid_map(volume: Volume, config: ModiffConfig) -> GridMap:
    return GridMap(volume.spatial_shape, volume.geometry.spacing, config.grid, config.spacing)


def scaling(first: np.ndarray) -> tuple[float, float]:
    _, lo, hi = unit_range(first)
    return lo, hi


def sequence_to_model(frames: np.ndarray, grid: GridMap, lo: float, hi: float,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, *input) frames -> (N, *model grid) in [-1, 1] by the given (first frame's) min-max."""
    t = torch.from_numpy((np.asarray(frames, np.float32) - lo) / (hi - lo))[:, None].to(device)
    return (grid.image_to_model(t) * 2.0 - 1.0)[:, 0]


def model_sequences(sequences: Sequence[MotionSequence], config: ModiffConfig) -> list[torch.Tensor]:
    out = []
    for s in sequences:
        if s.frames.geometry.ndim != config.ndims:
            raise InputError(f"{s.name}: a {s.frames.geometry.ndim}D sequence cannot train a {config.ndims}D model.")
        if s.frames.data.shape[0] < config.min_frames:
            raise InputError(f"{s.name} has {s.frames.data.shape[0]} frames, fewer than the model's "
                             f"minimum {config.min_frames}.")
        lo, hi = scaling(s.frames.data[0])
        out.append(sequence_to_model(s.frames.data, grid_map(s.frames, config), lo, hi))
    return out


def resample_indices(length: int, frames: int) -> np.ndarray:
    """`frames` indices 0 .. length-1 evenly spread (real frames, first and last kept)."""
    return np.round(np.linspace(0, length - 1, frames)).astype(int)


def draw_clip(seq: torch.Tensor, frames: int, g: torch.Generator) -> torch.Tensor:
    """The sequence resampled to `frames` frames, with random in-plane flips / transpose."""
    clip = seq[torch.from_numpy(resample_indices(seq.shape[0], frames))]
    y, x = clip.ndim - 2, clip.ndim - 1
    for axis in (y, x):
        if torch.rand((), generator=g) < 0.5:
            clip = clip.flip(axis)
    if clip.shape[y] == clip.shape[x] and torch.rand((), generator=g) < 0.5:
        clip = clip.transpose(y, x)
    return clip.contiguous()
