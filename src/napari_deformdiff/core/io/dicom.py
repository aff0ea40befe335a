"""DICOM read with pydicom headers: series folders whose phases become a time axis (cine MR),
enhanced multi-frame files (per-frame functional groups) and multi-frame ultrasound cines.

Frames are grouped by slice position (ImagePositionPatient projected on the slice normal) and by
phase (trigger time, else temporal position, else instance order). A single-phase greyscale
series still goes through SimpleITK's ImageSeriesReader, as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import Geometry
from .volume import Volume, as_label_array, check_values, decide_labels

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
_POSITION_TOL_MM = 0.01
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luminance weights
_FRAME_TIME_TAGS = (0x00181063, 0x00181065)  # FrameTime, FrameTimeVector
_HEADER_ERRORS = (OSError, ValueError, KeyError, AttributeError, EOFError, TypeError)


@dataclass
class _Frame:
    """One 2D image (a file or a frame of a multi-frame file) and what places it in space and time."""

    rows: int
    cols: int
    position: np.ndarray | None
    orientation: np.ndarray | None  # row and column cosines, LPS
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    thickness: float | None
    trigger_ms: float | None
    temporal: float | None
    stack: float | None
    order: tuple
    slope: float
    intercept: float
    load: Callable[[], np.ndarray]


# --- entry points -----------------------------------------------------------------------------


def read_dicom_folder(folder: str | Path, *, as_labels: bool | None = None) -> list[Volume]:
    """Every DICOM series in `folder` (not recursive), one Volume per series (and orientation)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.upper() != "DICOMDIR"]
    series: dict[str, list] = defaultdict(list)
    for p in files:
        try:
            ds = dcmread(p, stop_before_pixels=True)
        except (InvalidDicomError, *_HEADER_ERRORS):  # not DICOM, truncated, ...: skipped, as GDCM did
            continue
        if "Rows" in ds and "Columns" in ds:
            series[str(ds.get("SeriesInstanceUID", ""))].append((p, ds))
    if not series:
        raise InputError(
            f"{folder.name}: no readable DICOM series in this folder ({len(files)} files checked)."
        )
    volumes = []
    for uid, items in series.items():
        description = str(items[0][1].get("SeriesDescription", "")).strip()
        name = f"{folder.name} {description or uid[-8:]}".strip()
        singles = []
        for p, ds in items:
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                volumes.append(read_dicom_file(p, as_labels=as_labels))
            else:
                singles.append((p, ds))
        groups: dict[tuple, list] = defaultdict(list)  # e.g. the three planes of a localizer
        for p, ds in singles:
            iop = tuple(np.round(_floats(ds, "ImageOrientationPatient") or (), 3))
            groups[(iop, ds.Rows, ds.Columns, int(ds.get("SamplesPerPixel", 1)))].append((p, ds))
        for k, group in enumerate(groups.values()):
            label = name if len(groups) == 1 else f"{name} ({k + 1})"
            warnings: list[str] = []
            frames = [_file_frame(p, ds, warnings) for p, ds in group]
            volumes.append(_series_volume(frames, group, folder, label, uid, description,
                                          as_labels, warnings))
    return volumes


def read_dicom_file(path: str | Path, *, as_labels: bool | None = None) -> Volume:
    """One DICOM file: enhanced/multi-frame cines and colour images here, the rest by SimpleITK."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from .itk import read_itk

    path = Path(path)
    try:
        header = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, *_HEADER_ERRORS):
        return read_itk(path, as_labels=as_labels)  # SimpleITK gives its own diagnosis
    n_frames = int(header.get("NumberOfFrames", 1) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in header
    cine = n_frames > 1 and any(t in header for t in _FRAME_TIME_TAGS)
    colour = int(header.get("SamplesPerPixel", 1)) > 1 or _photometric(header) == "PALETTE COLOR"
    if not (enhanced or cine or colour):
        return read_itk(path, as_labels=as_labels)
    ds = dcmread(path)
    warnings: list[str] = []
    pixels = _Lazy(lambda: _frames_first(
        _luminance(ds, _pixel_array(ds, path), path.name, warnings), n_frames))
    frames = _enhanced_frames(ds, pixels) if enhanced else _multiframe_frames(ds, pixels, path)
    names = (
        ("NominalCardiacTriggerDelayTime", "TemporalPositionIndex", "frame order")
        if enhanced else (next((k for k in ("FrameTimeVector", "FrameTime") if k in header), ""),
                          "TemporalPositionIdentifier", "frame order")
    )
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    volume = _assemble(frames, path, stem, as_labels, names, warnings)
    volume.metadata.update(_series_info(ds))
    return volume


def describe_time(volume: Volume) -> list[str]:
    """Lines for `deformdiff info`: where the phases come from and their trigger times."""
    meta = volume.metadata
    times = meta.get("trigger_times_ms")
    if not volume.has_time or not meta.get("time_source"):
        return []
    lines = [f"{volume.data.shape[0]} phases (from {meta['time_source']})"]
    if times:
        shown = [f"{t:g}" for t in times]
        if len(shown) > 12:
            shown = shown[:6] + ["..."] + shown[-3:]
        kind = "frame" if meta["time_source"].startswith("FrameTime") else "trigger"
        lines.append(f"{kind} times ms: " + ", ".join(shown))
    return lines


# --- frames from headers ----------------------------------------------------------------------


class _Lazy:
    """Decode the pixel data once, on first use."""

    def __init__(self, make: Callable[[], np.ndarray]):
        self.make, self.value = make, None

    def __call__(self) -> np.ndarray:
        if self.value is None:
            self.value = self.make()
        return self.value


def _file_frame(path: Path, ds, warnings: list[str]) -> _Frame:
    def load():
        from pydicom import dcmread

        full = dcmread(path)
        return _luminance(full, _pixel_array(full, path), path.parent.name, warnings)

    return _Frame(
        ds.Rows, ds.Columns,
        _array(_floats(ds, "ImagePositionPatient")),
        _array(_floats(ds, "ImageOrientationPatient")),
        _pair(_floats(ds, "PixelSpacing")),
        _float(ds, "SliceThickness"),
        _float(ds, "TriggerTime"),
        _float(ds, "TemporalPositionIdentifier"),
        None,
        (_float(ds, "InstanceNumber") or 0.0, path.name),
        _float(ds, "RescaleSlope") or 1.0,
        _float(ds, "RescaleIntercept") or 0.0,
        load,
    )


def _enhanced_frames(ds, pixels: _Lazy) -> list[_Frame]:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None

    def item(groups, sequence):
        for source in (groups, shared):
            if source is not None and sequence in source and len(source[sequence].value):
                return source[sequence][0]
        return None

    def value(groups, sequence, keyword, get=_float):
        found = item(groups, sequence)
        return get(found, keyword) if found is not None else None

    frames = []
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        slope = value(fg, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = value(fg, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(_Frame(
            ds.Rows, ds.Columns,
            _array(value(fg, "PlanePositionSequence", "ImagePositionPatient", _floats)
                   or _floats(ds, "ImagePositionPatient")),
            _array(value(fg, "PlaneOrientationSequence", "ImageOrientationPatient", _floats)
                   or _floats(ds, "ImageOrientationPatient")),
            _pair(value(fg, "PixelMeasuresSequence", "PixelSpacing", _floats)
                  or _floats(ds, "PixelSpacing")),
            value(fg, "PixelMeasuresSequence", "SliceThickness"),
            value(fg, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
            value(fg, "FrameContentSequence", "TemporalPositionIndex"),
            value(fg, "FrameContentSequence", "InStackPositionNumber"),
            (float(i),),
            slope if slope is not None else (_float(ds, "RescaleSlope") or 1.0),
            intercept if intercept is not None else (_float(ds, "RescaleIntercept") or 0.0),
            lambda i=i: pixels()[i],
        ))
    return frames


def _multiframe_frames(ds, pixels: _Lazy, path: Path) -> list[_Frame]:
    """A cine without functional groups (e.g. ultrasound): every frame at one place, timed."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    times = None
    if "FrameTimeVector" in ds and len(_floats(ds, "FrameTimeVector") or ()) == n:
        times = np.cumsum(_floats(ds, "FrameTimeVector"))  # increments, the first one 0
    elif _float(ds, "FrameTime"):
        times = np.arange(n) * _float(ds, "FrameTime")
    spacing = _pair(_floats(ds, "PixelSpacing")) or _ultrasound_spacing(ds)
    return [
        _Frame(
            ds.Rows, ds.Columns,
            _array(_floats(ds, "ImagePositionPatient")),
            _array(_floats(ds, "ImageOrientationPatient")),
            spacing, _float(ds, "SliceThickness"),
            None if times is None else float(times[i]),
            None, None, (float(i),),
            _float(ds, "RescaleSlope") or 1.0, _float(ds, "RescaleIntercept") or 0.0,
            lambda i=i: pixels()[i],
        )
        for i in range(n)
    ]


def _ultrasound_spacing(ds) -> tuple[float, float] | None:
    """(dy, dx) mm of the first ultrasound region measured in cm (units code 3)."""
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:
            dx, dy = abs(float(region.PhysicalDeltaX)), abs(float(region.PhysicalDeltaY))
            if dx > 0 and dy > 0:
                return (10.0 * dy, 10.0 * dx)
    return None


# --- frames -> volume -------------------------------------------------------------------------


def _series_volume(frames, group, folder, name, uid, description, as_labels, warnings) -> Volume:
    grid, _, _ = _arrange(frames, folder.name, ("TriggerTime", "TemporalPositionIdentifier",
                                                "InstanceNumber"))
    phases = len(grid[0])
    info = {"series_description": description, "series_instance_uid": uid,
            "modality": str(group[0][1].get("Modality", ""))}
    if phases == 1 and group[0][1].get("SamplesPerPixel", 1) == 1:
        volume = _read_with_itk([_path_of(group, f) for f in (g[0] for g in grid)], folder,
                                name, as_labels)
    else:
        volume = _assemble(frames, folder, name, as_labels,
                           ("TriggerTime", "TemporalPositionIdentifier", "InstanceNumber"), warnings)
    volume.metadata.update(info)
    return volume


def _path_of(group, frame: _Frame) -> Path:
    return next(p for p, _ in group if p.name == frame.order[1])


def _read_with_itk(files: list[Path], folder: Path, name: str, as_labels) -> Volume:
    import SimpleITK as sitk

    from .itk import _itk_message, _volume_from_itk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder.name}: DICOM series {name} could not be read: "
                         f"{_itk_message(exc)}") from exc
    return _volume_from_itk(image, folder, name, as_labels)


def _arrange(frames: list[_Frame], what: str, names: tuple[str, str, str]):
    """Frames as grid[position][phase], positions along the normal; their distances; time source."""
    first = frames[0]
    normal = None
    if first.orientation is not None:
        normal = np.cross(first.orientation[:3], first.orientation[3:])
    if normal is not None and all(f.position is not None for f in frames):
        where = [float(f.position @ normal) for f in frames]
    elif all(f.stack is not None for f in frames):
        where = [f.stack * (f.thickness or 1.0) for f in frames]
    else:
        where = [0.0] * len(frames)
    order = np.argsort(where, kind="stable")
    grid: list[list[_Frame]] = []
    distances: list[float] = []
    for i in order:
        if not distances or where[i] - distances[-1] > _POSITION_TOL_MM:
            grid.append([])
            distances.append(where[i])
        grid[-1].append(frames[i])
    counts = [len(g) for g in grid]
    if len(set(counts)) > 1:
        tally = ", ".join(f"{counts.count(c)} with {c}" for c in sorted(set(counts)))
        raise InputError(
            f"{what}: the slice positions do not all have the same number of phases "
            f"({len(grid)} positions: {tally}); a series is missing images or mixes acquisitions."
        )
    source = None
    if counts[0] > 1:
        source = names[2]
        for key, label in (("trigger_ms", names[0]), ("temporal", names[1])):
            values = [[getattr(f, key) for f in g] for g in grid]
            if all(None not in v and len(set(v)) == len(v) for v in values):
                source = label
                grid = [sorted(g, key=lambda f, k=key: (getattr(f, k), f.order)) for g in grid]
                break
        else:
            grid = [sorted(g, key=lambda f: f.order) for g in grid]
    return grid, distances, source


def _assemble(frames, where: Path, name: str, as_labels, names, warnings: list[str]) -> Volume:
    grid, distances, source = _arrange(frames, where.name, names)
    nz, nt = len(grid), len(grid[0])
    first = grid[0][0]
    if any((f.rows, f.cols) != (first.rows, first.cols) for f in frames):
        raise InputError(f"{where.name}: the images of {name} do not all have the same size.")
    raw = np.stack([np.stack([grid[z][t].load() for z in range(nz)]) for t in range(nt)])
    slopes = np.array([[grid[z][t].slope for z in range(nz)] for t in range(nt)])
    intercepts = np.array([[grid[z][t].intercept for z in range(nz)] for t in range(nt)])
    data = _rescaled(raw, slopes, intercepts)  # (T, Z, Y, X)
    warnings = list(warnings) + check_values(data, where.name)
    geometry = _geometry(first, distances, where.name, warnings)
    metadata: dict = {}
    time_spacing = None
    if nt > 1:
        metadata["time_source"] = source
        times = [[f.trigger_ms for f in g] for g in grid]
        if all(None not in col for col in times):
            per_phase = np.mean(np.asarray(times, dtype=float), axis=0)
            metadata["trigger_times_ms"] = [round(float(t), 3) for t in per_phase]
            steps = np.diff(per_phase)
            if np.all(steps > 0):
                time_spacing = float(np.mean(steps)) / 1000.0
    else:
        data = data[0]
    if nz == 1:
        data = data[:, 0] if nt > 1 else data[0]
        geometry = geometry.slice_2d()
    is_labels = decide_labels(data, where, as_labels)
    if is_labels:
        data = as_label_array(data)
    return Volume(data, geometry, is_labels, name, time_spacing, str(where), warnings, metadata)


def _geometry(first: _Frame, distances: list[float], what: str, warnings: list[str]) -> Geometry:
    orientation = first.orientation
    if orientation is None:
        orientation = np.array([1.0, 0, 0, 0, 1.0, 0])
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    if first.pixel_spacing is None:
        warnings.append(f"{what}: no pixel spacing in the header; 1 mm assumed.")
    if len(distances) > 1:
        gaps = np.diff(distances)
        dz = float(np.mean(gaps))
        if np.ptp(gaps) > max(_POSITION_TOL_MM, 0.01 * dz):
            warnings.append(
                f"{what}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm); "
                f"the mean {dz:.4g} mm is used."
            )
    else:
        dz = first.thickness or 1.0
    origin = first.position if first.position is not None else np.zeros(3)
    direction = np.column_stack([row, col, normal]).ravel()
    try:
        return Geometry.from_itk((dx, dy, dz), tuple(origin), direction)
    except ValueError as exc:
        raise InputError(f"{what}: invalid geometry in the DICOM header: {exc}") from exc


def _rescaled(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Stored values -> real values; integers stay integers when slope and intercept are."""
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return raw
    shape = slopes.shape + (1,) * (raw.ndim - slopes.ndim)
    out = raw * slopes.reshape(shape) + intercepts.reshape(shape)
    integral = raw.dtype.kind in "iu" and np.all(slopes == np.round(slopes)) and np.all(
        intercepts == np.round(intercepts))
    if integral:
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= out.min() and out.max() <= np.iinfo(dtype).max:
                return out.astype(dtype)
        return out.astype(np.int64)
    return out.astype(np.float32)


# --- pixels -----------------------------------------------------------------------------------


def _pixel_array(ds, path: Path) -> np.ndarray:
    try:
        return ds.pixel_array
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, OSError) as exc:
        # a missing decoder, truncated pixel data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f" ({syntax.name})" if syntax is not None else ""
        raise InputError(f"{path.name}: the pixel data could not be decoded{what}: {exc}") from exc


def _frames_first(arr: np.ndarray, n_frames: int) -> np.ndarray:
    return arr[None] if n_frames == 1 else arr


def _luminance(ds, arr: np.ndarray, what: str, warnings: list[str]) -> np.ndarray:
    """Colour frames (RGB, YBR converted by pydicom, palette) -> luminance, with a warning."""
    import pydicom

    try:
        from pydicom.pixels import apply_color_lut, convert_color_space
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import (
            apply_color_lut,
            convert_color_space,
        )
    photometric = _photometric(ds)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif int(ds.get("SamplesPerPixel", 1)) == 1:
        return arr
    elif photometric.startswith("YBR") and int(pydicom.__version__.split(".")[0]) < 3:
        arr = convert_color_space(arr, photometric, "RGB")  # pydicom 3 returns RGB already
    message = (f"{what}: colour ({photometric}) images converted to luminance "
               "(0.299 R + 0.587 G + 0.114 B).")
    if message not in warnings:
        warnings.append(message)
    return (arr.astype(np.float32) @ _LUMA.astype(np.float32)).astype(np.float32)


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper()


def _series_info(ds) -> dict:
    return {
        "series_description": str(ds.get("SeriesDescription", "")).strip(),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
    }


# --- header values ----------------------------------------------------------------------------


def _floats(ds, keyword) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    many = hasattr(value, "__len__") and not isinstance(value, str)
    try:
        return [float(v) for v in (value if many else [value])]
    except (TypeError, ValueError):
        return None


def _float(ds, keyword) -> float | None:
    values = _floats(ds, keyword)
    return values[0] if values else None


def _array(values) -> np.ndarray | None:
    return None if values is None or len(values) not in (3, 6) else np.asarray(values, float)


def _pair(values) -> tuple[float, float] | None:
    if values is None or len(values) != 2 or min(values) <= 0:
        return None
    return (values[0], values[1])
