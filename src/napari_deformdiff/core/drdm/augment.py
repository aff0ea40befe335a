"""DRDM data export: augmentation (the paper's Algorithm 3) and registration pairs (Algorithm 4).

A plan lists one unit per (case, level, sample). Each unit runs the instance deformation of
recover.deform_instance (Algorithm 2) and writes its files into the output folder:

- mode "augment":  <id>_image, <id>_labels (if the case has labels), <id>_field = phi, where
  image o phi and labels o phi (nearest, integer values kept) are resampled from the ORIGINAL input.
- mode "pairs":    phi_aug from (I0, level) gives the moving image I_mv = I0 o phi_aug; phi_syn from
  (I_mv, syn_level) gives the fixed image I_fx = I_mv o phi_syn. Written: <id>_moving, <id>_fixed,
  <id>_field = phi_syn (so warping moving with the field gives fixed), and <id>_moving_labels /
  <id>_fixed_labels when the case has labels.

<id> is "<case>_L<level, 2 digits>_s<sample, 3 digits>". Every file has the input's grid and
geometry (spacing, origin, direction); fields are ITK displacement fields (mm, see core/field_io.py).
Every field is fold-free, and every label keeps its number of connected components (label_warp.py),
unless settings.fold_free is False (generate.py; the manifest's fold_free column says which, 1 or 0).

Seeds. Unit (case, level, sample) uses
    numpy.random.SeedSequence(seed, spawn_key=(crc32(case name), level, sample, role))
        .generate_state(1)[0]
with role 0 for the instance field (phi in "augment", phi_aug in "pairs") and role 1 for phi_syn.
The seed of a unit depends only on these numbers, never on the order in which units run, so a
resumed, a parallel (Dask) and a plain run write the same files, and the moving image of a pair
equals the augmented image of the same unit.

Files are written atomically (core/io/atomic.py); a unit's row (with the size and sha256 of each
of its files) is appended to the manifest (manifest.csv or manifest.json, see manifest.py) once
all its files are complete, so the manifest always lists exactly the complete units; stopping the
generator (Cancel) keeps them. At the end of a run the manifest is rewritten once in plan order. A
failed write removes the files of the unfinished unit. With settings.shard_size = N, unit k of
the plan writes into the subfolder f"{k // N:03d}" and the manifest names files relative to the
output folder ("000/heart_L04_s000_image.nii.gz").
"""

from __future__ import annotations

import errno
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputExistsError
from ..events import Frame, Plan, Progress
from ..io.atomic import split_suffix
from ..io.volume import Volume, is_integer_valued
from .manifest import (  # noqa: F401  (COLUMNS, manifest_text, read_manifest: this module's API too)
    COLUMNS,
    FILE_ROLES,
    STAT_COLUMNS,
    append_row,
    check_row_files,
    file_checksums,
    manifest_mode,
    manifest_text,
    read_manifest,
    write_manifest,
)

MAX_LEVEL = 80  # = forward.MAX_LEVEL; repeated here so planning does not import torch
MODES = ("augment", "pairs")
FORMATS = (".nii.gz", ".nrrd", ".mha")
MANIFEST_FORMATS = ("csv", "json")
LOOPS = ("paper", "authors")
PRECISIONS = ("float32", "bfloat16")  # = models.drdm_bf16.PRECISIONS, repeated so planning does not import torch
MAX_SAMPLES = 10_000


class ExportWarning(UserWarning):
    """A resume found a listed unit whose files are missing or damaged: the unit is made again."""


# --------------------------------------------------------------------------- settings and plan


def parse_levels(spec: str | int | Sequence[int]) -> tuple[int, ...]:
    """'40:64:8' -> (40, 48, 56, 64) (end included when the step reaches it), '40:44' -> step 1,
    '30,45,60' -> a list, 48 or '48' -> (48,). Every level must be in 1..80."""
    if isinstance(spec, (int, np.integer)):
        levels = [int(spec)]
    elif isinstance(spec, str):
        text = spec.strip()
        try:
            if ":" in text:
                parts = [int(p) for p in text.split(":")]
                if len(parts) not in (2, 3):
                    raise ValueError
                start, stop, step = (*parts, 1) if len(parts) == 2 else parts
                if step <= 0 or stop < start:
                    raise InputError(f"levels {spec!r}: use from:to[:step] with from <= to and a positive step.")
                levels = list(range(start, stop + 1, step))
            else:
                levels = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise InputError(
                f"levels {spec!r}: expected a level (48), a range from:to[:step] (40:64:8) or a list (30,45,60)."
            ) from None
    else:
        levels = [int(v) for v in spec]
    if not levels:
        raise InputError(f"levels {spec!r}: no level given.")
    bad = [v for v in levels if not 1 <= v <= MAX_LEVEL]
    if bad:
        raise InputError(f"deformation level {bad[0]} is outside 1..{MAX_LEVEL} (the DRDM level T').")
    return tuple(dict.fromkeys(levels))


def normalize_format(fmt: str) -> str:
    """'nii.gz', '.nii.gz', 'NRRD' ... -> '.nii.gz' / '.nrrd' / '.mha'."""
    suffix = "." + fmt.strip().lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputError(f"output format {fmt!r}: choose one of {', '.join(f[1:] for f in FORMATS)}.")
    return suffix


@dataclass(frozen=True)
class ExportSettings:
    """What to make: levels x samples per case, in one mode, written in one format."""

    levels: tuple[int, ...]
    samples: int = 1
    seed: int = 0
    mode: str = "augment"
    syn_level: int | None = None  # pairs: level of phi_syn (None: the unit's own level)
    loop: str = "paper"
    fmt: str = ".nii.gz"
    manifest: str = "csv"
    precision: str = "float32"  # of the recovery network's passes (see recover.py)
    fold_free: bool = True  # False: the authors' fields, which may fold
    shard_size: int | None = None  # units per subfolder (000/, 001/, ...); None: all in the folder

    def __post_init__(self):
        object.__setattr__(self, "levels", parse_levels(self.levels))
        object.__setattr__(self, "fmt", normalize_format(self.fmt))
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r}: choose 'augment' or 'pairs'.")
        if self.loop not in LOOPS:
            raise InputError(f"recovery loop {self.loop!r}: choose 'paper' or 'authors'.")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r}: choose 'float32' or 'bfloat16'.")
        if self.manifest not in MANIFEST_FORMATS:
            raise InputError(f"manifest {self.manifest!r}: choose 'csv' or 'json'.")
        if not 1 <= int(self.samples) <= MAX_SAMPLES:
            raise InputError(f"samples per level must be between 1 and {MAX_SAMPLES}, got {self.samples}.")
        if self.syn_level is not None:
            if self.mode != "pairs":
                raise InputError("a synthesis level (syn_level) only applies to registration pairs (mode 'pairs').")
            parse_levels(int(self.syn_level))
        if not isinstance(self.fold_free, (bool, np.bool_)):
            raise InputError(f"fold_free must be True or False, got {self.fold_free!r}.")
        object.__setattr__(self, "fold_free", bool(self.fold_free))
        if not 0 <= int(self.seed) < 2**63:
            raise InputError(f"seed must be a non-negative integer, got {self.seed}.")
        if self.shard_size is not None and not 1 <= int(self.shard_size) <= MAX_SAMPLES * 100:
            raise InputError(f"shard size must be a positive number of samples per subfolder, got {self.shard_size}.")

    @property
    def manifest_name(self) -> str:
        return f"manifest.{self.manifest}"


@dataclass
class Case:
    """One input: an image and optionally its label map, named for the output files."""

    name: str
    image: Volume
    labels: Volume | None = None
    source: str = ""


@dataclass(frozen=True)
class Unit:
    case: str
    level: int
    sample: int
    seed: int
    syn_level: int | None = None
    syn_seed: int | None = None
    folder: str = ""  # shard subfolder ("" without sharding)

    @property
    def id(self) -> str:
        return f"{self.case}_L{self.level:02d}_s{self.sample:03d}"


def derive_seed(base: int, case: str, level: int, sample: int, role: int = 0) -> int:
    """The documented per-unit seed (see the module docstring); a 32-bit unsigned integer."""
    key = (zlib.crc32(case.encode("utf-8")), int(level), int(sample), int(role))
    return int(np.random.SeedSequence(int(base), spawn_key=key).generate_state(1, np.uint32)[0])


def safe_name(name: str) -> str:
    """A file-name-safe case name (letters, digits, '-', '_', '.')."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip())
    while "__" in cleaned:
        cleaned = cleaned.replace("__", "_")
    return cleaned.strip("._") or "image"


def check_case(case: Case) -> None:
    """Raise InputError for an image/labels pair that cannot be exported."""
    image = case.image
    if image.is_labels:
        raise InputError(f"{case.name}: the image is a label map; give an intensity image (labels go with it).")
    if image.has_time:
        raise InputError(f"{case.name}: the image is a time series; choose one frame (2D or 3D).")
    if image.data.dtype.kind not in "biuf":
        raise InputError(f"{case.name}: unsupported voxel type {image.data.dtype}.")
    if image.data.ndim != image.geometry.ndim or image.geometry.ndim not in (2, 3):
        raise InputError(f"{case.name}: the image must be 2D or 3D, got shape {image.data.shape}.")
    if safe_name(case.name) != case.name:
        raise InputError(f"case name {case.name!r} is not a safe file name; use safe_name().")
    labels = case.labels
    if labels is None:
        return
    if not is_integer_valued(labels.data):
        raise InputError(f"{case.name}: the label map has non-integer values; labels must be integers.")
    if tuple(labels.data.shape) != tuple(image.data.shape):
        raise InputError(
            f"{case.name}: the label map's shape {tuple(labels.data.shape)} differs from the image's "
            f"{tuple(image.data.shape)}; labels must be on the image's grid."
        )
    if labels.geometry.ndim != image.geometry.ndim or not labels.geometry.almost_equal(image.geometry):
        raise InputError(
            f"{case.name}: the label map's geometry ({labels.geometry.describe()}) differs from the "
            f"image's ({image.geometry.describe()}); resample the labels onto the image first."
        )


def check_names(cases: Sequence) -> None:
    """At least one case, and no two with the same name (their output files would collide)."""
    if not cases:
        raise InputError("no images to export.")
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"two inputs have the same name {sorted(dup)[0]!r}; output files would collide.")


def check_cases(cases: Sequence[Case]) -> int:
    """Validate all cases; return their (common) dimensionality."""
    check_names(cases)
    for c in cases:
        check_case(c)
    dims = {c.image.geometry.ndim for c in cases}
    if len(dims) > 1:
        raise InputError("the inputs mix 2D and 3D images; one export uses one (2D or 3D) model.")
    return dims.pop()


def plan_export(cases: Sequence[Case], settings: ExportSettings) -> list[Unit]:
    """Every unit of the export, in output order: case, then level, then sample."""
    units = []
    for case in cases:
        for level in settings.levels:
            for k in range(settings.samples):
                seed = derive_seed(settings.seed, case.name, level, k, 0)
                folder = f"{len(units) // settings.shard_size:03d}" if settings.shard_size else ""
                if settings.mode == "pairs":
                    syn = settings.syn_level if settings.syn_level is not None else level
                    units.append(Unit(case.name, level, k, seed, int(syn),
                                      derive_seed(settings.seed, case.name, level, k, 1), folder))
                else:
                    units.append(Unit(case.name, level, k, seed, folder=folder))
    return units


def unit_files(unit: Unit, settings: ExportSettings, with_labels: bool) -> dict[str, str]:
    """Manifest column -> file name of a unit's outputs (relative to the output folder)."""
    prefix = f"{unit.folder}/" if unit.folder else ""
    return {r: f"{prefix}{unit.id}_{r}{settings.fmt}" for r in FILE_ROLES[settings.mode]
            if with_labels or "labels" not in r}


# --------------------------------------------------------------------------- manifest


def _format_value(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if key in STAT_COLUMNS:
        return float(f"{float(value):.6g}")
    return value


# --------------------------------------------------------------------------- output folder


def _other_manifest(out: Path, settings: ExportSettings) -> Path | None:
    for kind in ("csv", "json"):
        path = out / f"manifest.{kind}"
        if kind != settings.manifest and path.is_file():
            return path
    return None


def _check_row(row: dict, unit: Unit | None, settings: ExportSettings, manifest: Path) -> None:
    """InputError when a listed unit was made with other settings than the resumed export's."""
    if unit is None or row.get("seed") != unit.seed or row.get("loop") != settings.loop or (
            row.get("precision") or "float32") != settings.precision or (
            unit.syn_seed is not None and row.get("syn_seed") != unit.syn_seed) or (
            unit.syn_level is not None and row.get("syn_level") != unit.syn_level) or (
            # exports from before the column were not repaired
            bool(row.get("fold_free") or 0) != settings.fold_free):
        raise InputError(
            f"{manifest} lists sample {row.get('id')!r} made with other settings (levels, samples, "
            "seed, mode, loop, precision or fold-free); resume with the same settings, or use another "
            "folder."
        )
    expected = unit_files(unit, settings, True)
    for role in FILE_ROLES[settings.mode]:
        name = str(row.get(role) or "")
        if not name:
            if "labels" not in role:
                raise InputError(f"{manifest} lists sample {row['id']!r} without its {role} file; it is not "
                                 "a DRDM export manifest of this mode.")
            continue
        folder, _, base = name.rpartition("/")
        if not base.endswith(settings.fmt) and base.startswith(f"{unit.id}_{role}."):
            fmt = base[len(unit.id) + len(role) + 2:]
            raise InputError(f"{manifest} lists {fmt} files, not {settings.fmt[1:]}: resume with --format {fmt} "
                             "(one export keeps one format), or use another folder.")
        if base != expected[role].rpartition("/")[2] or (folder and not folder.isdigit()):
            raise InputError(f"{manifest} lists file {name!r} for sample {row['id']!r}; expected "
                             f"{expected[role]!r}. Resume with the same settings, or use another folder.")


def prepare_output(out_dir: str | Path, units: Sequence[Unit], settings: ExportSettings, *,
                   overwrite: bool = False, resume: bool = False, verify: bool = True,
                   on_redo: Callable[[str], None] | None = None) -> list[dict]:
    """Check the output folder; return the manifest rows already done (resume) in plan order.

    A folder with files in it is refused unless `overwrite` (start again, replacing files) or
    `resume` (keep the complete units of the same plan, make the rest) is asked. A resume refuses
    another mode, format or manifest format than the folder's; a listed unit whose files are
    missing or differ from their recorded size and sha256 is made again, and said so: on_redo(message),
    by default an ExportWarning. Without `verify` the files are not read (the settings are checked).
    """
    out = Path(out_dir)
    if overwrite and resume:
        raise InputError("choose either overwrite or resume, not both.")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; the export needs a folder.")
    existing = [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    done: list[dict] = []
    if existing and not (overwrite or resume):
        raise InputError(
            f"{out} already holds {len(existing)} file(s); choose a new or empty folder, or ask to "
            "overwrite (--overwrite) or to resume an interrupted export (--resume)."
        )
    manifest = out / settings.manifest_name
    other = _other_manifest(out, settings) if resume else None
    if other is not None:
        raise InputError(f"{out} holds {other.name}: resume it with the manifest format {other.suffix[1:]} "
                         f"(--manifest {other.suffix[1:]}), or use another folder.")
    if resume and manifest.is_file():
        rows = read_manifest(manifest)
        mode = manifest_mode(rows)
        if mode is not None and mode != settings.mode:
            raise InputError(f"{manifest} lists {'registration pairs' if mode == 'pairs' else 'augmentations'}; "
                             f"resume it in mode {mode!r}, or use another folder.")
        by_id = {u.id: u for u in units}
        seen = set()
        for row in rows:
            _check_row(row, by_id.get(str(row.get("id"))), settings, manifest)
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            problem = check_row_files(out, row, settings.mode) if verify else ""
            if problem:
                (on_redo or _warn)(f"{row['id']}: {problem}; this sample is made again.")
            else:
                done.append(row)
    order = {u.id: k for k, u in enumerate(units)}
    done.sort(key=lambda r: order[r["id"]])
    return done


def _warn(message: str) -> None:
    warnings.warn(message, ExportWarning, stacklevel=3)


def start_output(out_dir: Path, rows: Sequence[dict], settings: ExportSettings,
                 units: Sequence[Unit] = ()) -> Path:
    """Create the folder, list exactly `rows` (the units already done) in the manifest; returns its path.

    No manifest is written while no unit is complete. Hidden temporaries of `units` left by a killed
    process (".<id>_<role>.<hex>.partial.<ext>", also in shard subfolders) are removed.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}.") from exc
    remove_partials(out_dir, units)
    manifest = out_dir / settings.manifest_name
    try:
        if rows:
            write_manifest(out_dir, rows, settings)
        else:
            manifest.unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(exc, out_dir, len(rows), manifest) from exc
    return manifest


def remove_partials(out_dir: Path, units: Sequence[Unit]) -> None:
    prefixes = tuple(f".{u.id}_" for u in units)
    if not prefixes:
        return
    for leftover in [*out_dir.glob(".*.partial*"), *out_dir.glob("[0-9]*/.*.partial*")]:
        if leftover.name.startswith(prefixes) and leftover.is_file():
            leftover.unlink(missing_ok=True)


def finish_output(out_dir: Path, rows: Sequence[dict], settings: ExportSettings, order: dict[str, int]) -> None:
    """The one rewrite of a run: the manifest in plan order (identical for identical settings)."""
    if rows:
        write_manifest(out_dir, sorted(rows, key=lambda r: order.get(r["id"], len(order))), settings)


def close_output(out_dir: Path, rows: Sequence[dict], settings: ExportSettings, order: dict[str, int], *,
                 finished: bool, created: bool) -> None:
    """End of a run: the manifest in plan order; after an error or Cancel that may fail quietly (the
    appended manifest is exact already), and a folder this run created and left empty goes."""
    if finished:
        finish_output(out_dir, rows, settings, order)
        return
    if not rows:
        discard_empty_output(out_dir, created)
        return
    try:
        finish_output(out_dir, rows, settings, order)
    except OSError:
        pass


def discard_empty_output(out_dir: Path, created: bool) -> None:
    """Remove the output folder this run created when nothing ended up in it (a rejected input)."""
    if not created:
        return
    try:
        for sub in out_dir.iterdir():
            if sub.is_dir() and sub.name.isdigit():
                sub.rmdir()
        out_dir.rmdir()
    except OSError:
        pass  # not empty: keep it


# --------------------------------------------------------------------------- one unit


def _field_stats(field: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    import torch

    from .. import spatial

    u = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None]
    stats = spatial.displacement_stats(u, spacing=spacing)[0]
    folding = float(spatial.folding_ratio(u)[0])
    return {"max_mm": stats["max_mm"], "mean_mm": stats["mean_mm"], "max_pct": stats["max_pct"],
            "mean_pct": stats["mean_pct"], "folding_pct": 100.0 * folding}


def composed_field(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The field of `first` then `second` (n, *S voxels): warp(warp(I, first), second) == warp(I, result)."""
    import torch

    from .. import spatial

    a, b = (torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))[None] for f in (first, second))
    return spatial.compose(a, b)[0].numpy()


def warp_array(data: np.ndarray, field: np.ndarray, *, labels: bool, keep_components: bool = False) -> np.ndarray:
    """`data` pulled by `field` (voxels); labels by nearest neighbour, with `keep_components` so that
    each label keeps its number of connected components (label_warp)."""
    import torch

    from .. import spatial

    if labels and keep_components:
        from ..label_warp import warp_labels_keeping_components

        return warp_labels_keeping_components(np.asarray(data), field)
    u = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None]
    if labels:
        src = torch.from_numpy(np.ascontiguousarray(data).astype(np.int64))[None, None]
        out = spatial.warp(src, u, mode="nearest", padding_mode="border")
        return out[0, 0].numpy().astype(data.dtype)
    src = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    return spatial.warp(src, u, padding_mode="border")[0, 0].numpy()


def _instance_field(image: Volume, level: int, seed: int, *, model, meta, settings: ExportSettings, device,
                    what: str, index: int, total: int) -> Iterator[Progress]:
    """Run Algorithm 2 on `image`; yields Progress per recovery step, returns the final field (n, *S)."""
    from .generate import recover_batch

    run = recover_batch(image, [level], [seed], model=model, meta=meta, loop=settings.loop, device=device,
                        precision=settings.precision, fold_free=settings.fold_free)
    while True:
        try:
            event = next(run)
        except StopIteration as done:
            return np.asarray(done.value[0], dtype=np.float32)
        step = event.message if event.stage == "compile" else f"step {event.index + 1}/{event.total}"
        yield Progress(index, total, f"{what}: {step}", "samples")


def _write_unit_files(out: Path, files: dict[str, str], arrays: dict[str, tuple[np.ndarray, bool]],
                      field: np.ndarray, case: Case, overwrite: bool) -> None:
    """Write every file of a unit, or (on any failure) none: the ones already written are removed."""
    from ..io.fields import write_displacement
    from ..io import write_volume

    geometry = case.image.geometry
    written: list[Path] = []
    for name in files.values():
        (out / name).parent.mkdir(exist_ok=True)  # a shard subfolder
    try:
        for role, name in files.items():
            if role == "field":
                write_displacement(out / name, field, geometry, overwrite=overwrite)
            else:
                data, is_labels = arrays[role]
                write_volume(Volume(data, geometry, is_labels, name), out / name, overwrite=overwrite)
            written.append(out / name)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


@dataclass
class MadeUnit:
    """A unit computed but not written: its files' roles and names, arrays, field, manifest row, preview."""

    files: dict[str, str]
    arrays: dict[str, tuple[np.ndarray, bool]]
    field: np.ndarray
    row: dict[str, Any]
    preview: np.ndarray
    preview_labels: np.ndarray | None


def make_unit(case: Case, unit: Unit, settings: ExportSettings, *, model, meta, device="cpu", index: int = 0,
              total: int = 1, weights_name: str = "") -> Iterator[Progress]:
    """Compute one unit (nothing written); yields Progress, returns a MadeUnit."""
    image = case.image
    with_labels = case.labels is not None
    files = unit_files(unit, settings, with_labels)
    original = np.asarray(image.data, dtype=np.float32)
    phi = yield from _instance_field(image, unit.level, unit.seed, model=model, meta=meta, settings=settings,
                                     device=device, what=unit.id, index=index, total=total)
    warped = warp_array(original, phi, labels=False)
    keep = settings.fold_free  # the authors' behaviour without: plain nearest-neighbour labels
    warped_labels = warp_array(case.labels.data, phi, labels=True, keep_components=keep) if with_labels else None
    if settings.mode == "augment":
        field = phi
        arrays = {"image": (warped, False)}
        if with_labels:
            arrays["labels"] = (warped_labels, True)
        preview, preview_labels = warped, warped_labels
    else:
        moving = Volume(warped, image.geometry, False, f"{unit.id} moving")
        field = yield from _instance_field(moving, unit.syn_level, unit.syn_seed, model=model, meta=meta,
                                           settings=settings, device=device, what=f"{unit.id} (pair)",
                                           index=index, total=total)
        fixed = warp_array(warped, field, labels=False)
        arrays = {"moving": (warped, False), "fixed": (fixed, False)}
        fixed_labels = None
        if with_labels:
            # one nearest-neighbour resampling of the input labels through phi_aug then phi_syn: resampling
            # the moving labels again can split a thin part of a label
            fixed_labels = warp_array(case.labels.data, composed_field(phi, field), labels=True, keep_components=keep)
            arrays["moving_labels"] = (warped_labels, True)
            arrays["fixed_labels"] = (fixed_labels, True)
        preview, preview_labels = fixed, fixed_labels
    row: dict[str, Any] = {"id": unit.id, "case": case.name, "source": case.source or case.name,
                           "level": unit.level, "sample": unit.sample, "seed": unit.seed,
                           "syn_level": unit.syn_level, "syn_seed": unit.syn_seed, **files,
                           "loop": settings.loop, "weights": weights_name, "precision": settings.precision,
                           "fold_free": int(settings.fold_free)}
    row.update(_field_stats(field, image.geometry.spacing))
    row = {k: _format_value(k, v) for k, v in row.items()}
    return MadeUnit(files, arrays, field, row, preview, preview_labels)


def write_unit(made: MadeUnit, case: Case, unit: Unit, out_dir: str | Path, *, overwrite: bool = False,
               index: int = 0, total: int = 1) -> tuple[dict, Frame]:
    """Write a made unit's files (all or none); its manifest row (with checksums) and preview Frame."""
    out = Path(out_dir)
    _write_unit_files(out, made.files, made.arrays, made.field, case, overwrite)
    row = {**made.row, **file_checksums(out, made.files)}
    frame = Frame(index, total, made.preview, made.field, made.preview_labels, {"row": row, "id": unit.id}, "samples")
    return row, frame


def run_unit(case: Case, unit: Unit, settings: ExportSettings, out_dir: str | Path, *, model, meta,
             device="cpu", overwrite: bool = False, index: int = 0, total: int = 1,
             weights_name: str = "") -> Iterator[Progress]:
    """Make and write one unit's files; yields Progress, returns (manifest row, preview Frame).

    Writes nothing until everything is computed; a failed write removes the unit's files.
    `overwrite` replaces existing files of the unit (overwrite and resume runs).
    """
    made = yield from make_unit(case, unit, settings, model=model, meta=meta, device=device, index=index,
                                total=total, weights_name=weights_name)
    return write_unit(made, case, unit, out_dir, overwrite=overwrite, index=index, total=total)


def listed_files(out_dir: Path) -> set[str]:
    """The sample files the manifests in `out_dir` list (none when a manifest cannot be read)."""
    names: set[str] = set()
    for manifest in (Path(out_dir) / "manifest.csv", Path(out_dir) / "manifest.json"):
        if not manifest.is_file():
            continue
        try:
            rows = read_manifest(manifest)
        except (InputError, OSError, ValueError):
            return set()
        mode = manifest_mode(rows)
        names |= {str(row[role]) for row in rows for role in FILE_ROLES.get(mode, ()) if row.get(role)}
    return names


def remove_stale_files(out_dir: Path, previous: set[str], rows: Sequence[dict], settings: ExportSettings) -> None:
    """After an --overwrite run: the previous export's samples that this one did not make again,
    and the manifest of the other format, go (nothing else in the folder is touched)."""
    current = {str(row[role]) for row in rows for role in FILE_ROLES[settings.mode] if row.get(role)}
    for name in previous - current:
        (Path(out_dir) / name).unlink(missing_ok=True)
    other = _other_manifest(Path(out_dir), settings)
    if other is not None:
        other.unlink(missing_ok=True)


def remove_unit_files(out_dir: Path, row: dict, mode: str) -> None:
    """Delete the files a manifest row names (a unit whose row could not be recorded)."""
    for role in FILE_ROLES[mode]:
        if row.get(role):
            (Path(out_dir) / row[role]).unlink(missing_ok=True)


def write_error(exc: OSError, out_dir: Path, done: int, manifest: str) -> InputError:
    """A readable error for a failed write (full disk, permissions, ...)."""
    reason = "no space left on device (the disk is full)" if exc.errno == errno.ENOSPC else (
        exc.strerror or str(exc))
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return InputError(
        f"writing the export to {out_dir} failed: {reason}{where}. The {done} complete sample(s) are listed in "
        f"{manifest} and no partial file was left; free space (or fix the folder) and run again with resume."
    )


# --------------------------------------------------------------------------- units made at once

MAX_WORKERS = 4


def export_workers(device, precision: str, units: int) -> int:
    """Units made at once by export_drdm. On the CPU one per torch thread, each single-threaded (up
    to MAX_WORKERS): the network's 10- and 20-channel convolutions keep two cores busier as two
    samples than as one sample split over two threads (docs/drdm.md, batch export). One on a GPU
    and in bfloat16 (one compiled network per process)."""
    import torch

    if torch.device(device).type != "cpu" or precision != "float32":
        return 1
    return max(1, min(torch.get_num_threads(), MAX_WORKERS, int(units)))


def made_in_order(jobs: Sequence[Callable[[], Iterator]], workers: int) -> Iterator[tuple]:
    """Run the generators jobs[i]() on `workers` threads, one torch thread each; yields
    ("event", i, event) as events come and ("made", i, value) with each return value in job order.

    A job's exception is raised here at its turn (after the jobs before it are yielded). At most
    2 * workers jobs run or wait ahead of the next one to yield. Closing this generator stops the
    threads at their next event and waits for them. A job's result does not depend on `workers`:
    each runs alone on its thread, as with one worker.
    """
    import queue
    import threading

    import torch

    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    window = threading.Semaphore(2 * workers)
    lock = threading.Lock()
    taken = [0]

    def work():
        torch.set_num_threads(1)  # this thread's (and new threads') intra-op threads; restored below
        while not stop.is_set():
            if not window.acquire(timeout=0.1):
                continue
            with lock:
                i = taken[0]
                taken[0] += 1
            if i >= len(jobs):
                return
            try:
                gen = jobs[i]()
                while True:
                    if stop.is_set():
                        gen.close()
                        return
                    try:
                        event = next(gen)
                    except StopIteration as done:
                        events.put(("made", i, done.value))
                        break
                    events.put(("event", i, event))
            except BaseException as exc:  # noqa: BLE001  (raised in the caller's thread)
                events.put(("error", i, exc))
                return

    threads_before = torch.get_num_threads()
    threads = [threading.Thread(target=work, name=f"drdm-export-{k}", daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    try:
        ready: dict[int, tuple] = {}
        turn = 0
        while turn < len(jobs):
            kind, i, payload = events.get()
            if kind == "event":
                yield ("event", i, payload)
                continue
            ready[i] = (kind, payload)
            while turn in ready:
                kind, payload = ready.pop(turn)
                if kind == "error":
                    raise payload
                yield ("made", turn, payload)
                window.release()
                turn += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        torch.set_num_threads(threads_before)


# --------------------------------------------------------------------------- whole export


def load_for_export(cases: Sequence[Case], settings: ExportSettings, *, weights=None, model=None, meta=None,
                    device="cpu", ndims: int | None = None):
    """(model, meta, weights label) for the cases' dimensionality (or `ndims`, cases already checked);
    checks levels against meta.steps."""
    ndims = check_cases(cases) if ndims is None else int(ndims)
    if model is None:
        from .weights import load_drdm

        model, meta = load_drdm(weights, ndims=ndims, device=device)
    elif meta is None:
        raise InputError("a model needs its DRDMMeta (grid, steps).")
    if int(meta.ndims) != ndims:
        raise InputError(f"the DRDM model is {meta.ndims}D but the images are {ndims}D.")
    steps = int(getattr(meta, "steps", MAX_LEVEL))
    top = max(settings.levels + ((settings.syn_level,) if settings.syn_level else ()))
    if top > steps:
        raise InputError(f"level {top} is above the model's {steps} steps.")
    label = str(getattr(meta, "name", "") or (weights if weights is not None else "bundled"))
    return model, meta, label


def record_unit(out: Path, rows: list[dict], row: dict, settings: ExportSettings, manifest: Path) -> list[dict]:
    """Append a finished unit's row to the manifest; the rows now listed. When the manifest cannot be
    written, the unit's files go too, so nothing unlisted stays."""
    try:
        append_row(out, row, settings)
    except OSError as exc:
        remove_unit_files(out, row, settings.mode)
        raise write_error(exc, out, len(rows), manifest) from exc
    return [*rows, row]


def export_drdm(
    cases: Sequence[Case],
    out_dir: str | Path,
    settings: ExportSettings,
    *,
    weights: str | Path | None = None,
    model=None,
    meta=None,
    device="cpu",
    overwrite: bool = False,
    resume: bool = False,
    on_redo: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> Iterator[Progress | Frame]:
    """Run the whole export in this process.

    Yields Progress(index = unit, total = units) while a unit is made (one per recovery step) and a
    Frame per finished unit (image: the augmented / fixed image, field: the written field, labels,
    info["row"]: its manifest row, info["done"]: the units listed now). Units already listed in the
    manifest (resume) are skipped; a listed unit with missing or damaged files is made again and said
    so (on_redo(message), by default an ExportWarning). `workers`: units made at once (default
    export_workers(...): on the CPU one per torch thread, each single-threaded); units are written
    and listed in plan order, and their files do not depend on it.
    """
    check_cases(cases)
    units = plan_export(cases, settings)
    out = Path(out_dir)
    rows = prepare_output(out, units, settings, overwrite=overwrite, resume=resume, on_redo=on_redo)
    previous = listed_files(out) if overwrite else set()
    yield Plan((("weights", 1), ("samples", len(units))))
    yield Progress(0, 1, "loading weights", "weights")
    model, meta, label = load_for_export(cases, settings, weights=weights, model=model, meta=meta, device=device)
    by_name = {c.name: c for c in cases}
    done_ids = {r["id"] for r in rows}
    order = {u.id: k for k, u in enumerate(units)}
    created = not out.exists()
    manifest = start_output(out, rows, settings, units)
    finished = False
    todo = [k for k, unit in enumerate(units) if unit.id not in done_ids]
    if workers is None:
        workers = export_workers(device, settings.precision, len(todo))
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise InputError(f"workers (units made at once) must be a positive integer, got {workers!r}.")

    def job(k):
        unit = units[k]

        def run():
            yield Progress(k, len(units), f"{unit.id}: sampling the random deformation", "samples")
            return (yield from make_unit(by_name[unit.case], unit, settings, model=model, meta=meta, device=device,
                                         index=k, total=len(units), weights_name=label))
        return run

    jobs = [job(k) for k in todo]
    runs = _one_at_a_time(jobs, todo) if int(workers) == 1 else _at_once(jobs, todo, int(workers))
    try:
        for item in runs:
            if isinstance(item, Progress):
                yield item
                continue
            k, made = item
            unit = units[k]
            try:
                # files of a unit the manifest does not list are leftovers of an interrupted run: replaced
                row, frame = write_unit(made, by_name[unit.case], unit, out, overwrite=overwrite or resume,
                                        index=k, total=len(units))
            except OutputExistsError:
                raise
            except OSError as exc:
                raise write_error(exc, out, len(rows), manifest) from exc
            rows = record_unit(out, rows, row, settings, manifest)
            frame.info["done"] = len(rows)  # samples the manifest lists now
            yield frame
        finished = True
    finally:
        runs.close()  # stops the workers (Cancel) before the manifest is closed
        close_output(out, rows, settings, order, finished=finished, created=created)
    if finished and previous:
        remove_stale_files(out, previous, rows, settings)


def _one_at_a_time(jobs, keys) -> Iterator:
    """Progress events and (key, value) per job, one job after the other in this thread."""
    for key, job in zip(keys, jobs):
        value = yield from job()
        yield key, value


def _at_once(jobs, keys, workers: int) -> Iterator:
    """The same as _one_at_a_time with the jobs made on `workers` threads (made_in_order)."""
    runs = made_in_order(jobs, workers)
    try:
        for kind, i, payload in runs:
            yield payload if kind == "event" else (keys[i], payload)
    finally:
        runs.close()


# --------------------------------------------------------------------------- inputs from files

LABEL_SUFFIXES = ("_gt", "_seg", "_labels", "_label", "_mask")


@dataclass(frozen=True)
class CaseFiles:
    """Where a case is read from; `ndims` is set once the case was read and checked."""

    name: str
    image: str
    labels: str | None = None
    ndims: int = 0
    source: str = ""  # the manifest's source column (default: `image`)

    def load(self) -> Case:
        from ..io import read_volume

        lab = read_volume(self.labels, as_labels=True) if self.labels else None
        return Case(self.name, read_volume(self.image, as_labels=False), lab, self.source or self.image)

    def absolute(self) -> CaseFiles:
        """The same case with absolute paths (for workers in other working folders), same source."""
        from dataclasses import replace

        return replace(self, image=os.path.abspath(self.image), source=self.source or self.image,
                       labels=os.path.abspath(self.labels) if self.labels else None)


def _readable_files(folder: Path) -> list[Path]:
    from ..io import can_read

    return [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and can_read(p)]


class _Listing:
    """The readable files of each folder by stem, listed once (not once per image)."""

    def __init__(self) -> None:
        self._stems: dict[Path, dict[str, Path]] = {}

    def stems(self, folder: Path) -> dict[str, Path]:
        if folder not in self._stems:
            files = _readable_files(folder) if folder.is_dir() else []
            self._stems[folder] = {split_suffix(p.name)[0]: p for p in files}
        return self._stems[folder]

    def labels_for(self, image: Path, folders: Sequence[Path]) -> Path | None:
        """The label map of `image`: <stem><label suffix>.<ext> beside it, or <stem>[<suffix>].<ext> in a
        labels folder."""
        stem = split_suffix(image.name)[0]
        for folder in folders:
            found = self.stems(folder)
            own = folder == image.parent
            for name in [stem + s for s in LABEL_SUFFIXES] + ([] if own else [stem]):
                if name in found:
                    return found[name]
        return None


def _image_folders(image: Path) -> list[Path]:
    """The folders whose files are inputs: `image` itself, or the ACDC patient folders of a dataset
    (a folder of patientNNN/ folders, also below training/ and testing/)."""
    from ..io.acdc import is_acdc_folder

    if is_acdc_folder(image):
        return [image]
    patients = [p for p in sorted(image.iterdir()) if is_acdc_folder(p)]
    for part in ("training", "testing"):
        if not patients and (image / part).is_dir():
            patients += [p for p in sorted((image / part).iterdir()) if is_acdc_folder(p)]
    return patients or [image]


def find_case_files(image: str | Path, labels: str | Path | None = None) -> list[CaseFiles]:
    """The files of find_cases' inputs, without reading them (see find_cases for the rules)."""
    from ..io.volume import looks_like_label_name

    image, labels = Path(image), (Path(labels) if labels is not None else None)
    if not image.exists():
        raise InputError(f"{image}: no such file or folder.")
    if image.is_file():
        if labels is not None and labels.is_dir():
            raise InputError(f"--labels {labels} is a folder but the image is a single file; give its label file.")
        return [CaseFiles(safe_name(split_suffix(image.name)[0]), str(image), str(labels) if labels else None)]
    if labels is not None and not labels.is_dir():
        raise InputError(f"--image {image} is a folder, so --labels must be a folder too (matched by name).")
    listing = _Listing()
    found = []
    for folder in _image_folders(image):
        for path in listing.stems(folder).values():
            if looks_like_label_name(path):
                continue
            folders = [folder, labels] if labels is not None else [folder, folder / "labels"]
            lab = listing.labels_for(path, folders)
            found.append(CaseFiles(safe_name(split_suffix(path.name)[0]), str(path), str(lab) if lab else None))
    return found


def find_cases(image: str | Path, labels: str | Path | None = None, *,
               keep_data: bool = True) -> tuple[list, list[str]]:
    """Cases from an image file (+ optional label file), a folder of images or an ACDC dataset;
    returns (cases, notes).

    Folder rules: every readable file whose name does not look like a label map (_gt, seg, label,
    mask) is an image; its labels are <name>_gt / _seg / _labels / _label / _mask (any readable
    format) beside it, else <name> or <name>_gt ... in a `labels/` subfolder, or in the folder given
    as `labels`. A folder of ACDC patient folders (or with training/ and testing/ holding them)
    gives the frames of every patient. Time series in a folder are skipped (with a note); a single
    file must be 2D or 3D. Every case is checked (check_case). With keep_data=False the volumes are
    read one at a time and dropped: the cases are CaseFiles, read again where they are used (a Dask
    worker).
    """
    files = find_case_files(image, labels)
    single = Path(image).is_file()
    cases: list = []
    notes: list[str] = []
    for entry in files:
        case = entry.load()
        if case.image.has_time and not single:
            notes.append(f"skipped {Path(entry.image).name}: a time series (export single frames)")
            continue
        check_case(case)
        cases.append(case if keep_data else CaseFiles(entry.name, entry.image, entry.labels,
                                                      case.image.geometry.ndim))
    if not cases:
        raise InputError(f"{image}: no 2D/3D images found (label maps and time series are not inputs).")
    return cases, notes
