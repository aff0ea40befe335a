"""Volume <-> napari layer data, carrying geometry both ways. numpy only; napari imported lazily.

A layer of a Volume gets scale = spacing, translate = origin and an affine that rotates by the
direction cosines about the origin (identity for axis-aligned volumes), all in array-axis order,
with a leading time axis of scale 1 (one step per frame) for time series. Spatial axes carry
units "mm" (scale bar, status bar); the time axis keeps napari's unitless step, as its scale is
one per frame, not seconds. The exact geometry and the reader's metadata (trigger times, ...)
also travel in layer.metadata["deformdiff"], so writers give back what was read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .core.geometry import Geometry
from .core.io import Volume

META_KEY = "deformdiff"
AXIS_LABELS = ("t", "z", "y", "x")


def layer_transform(geometry: Geometry, *, has_time: bool) -> dict[str, Any]:
    """scale/translate/affine kwargs placing a layer of this geometry in world space."""
    n = geometry.ndim
    rotation = np.eye(n + 1)
    rotation[:n, :n] = geometry.direction
    origin = np.asarray(geometry.origin)
    rotation[:n, n] = origin - geometry.direction @ origin  # rotate about the origin point
    scale, translate = list(geometry.spacing), list(geometry.origin)
    units = ["mm"] * n
    if has_time:
        affine = np.eye(n + 2)
        affine[1:, 1:] = rotation
        return {"scale": [1.0, *scale], "translate": [0.0, *translate], "affine": affine,
                "units": [None, *units]}  # None: napari's default (pixel) for the frame axis
    return {"scale": scale, "translate": translate, "affine": rotation, "units": units}


def volume_to_layer_data(volume: Volume, **kwargs: Any) -> tuple:
    """A napari LayerDataTuple for this volume; extra kwargs override the defaults."""
    ndim = volume.data.ndim
    meta = {
        META_KEY: {
            "geometry": volume.geometry.to_dict(),
            "time_spacing": volume.time_spacing,
            "source": volume.source,
            "metadata": dict(volume.metadata),
        }
    }
    layer_kwargs: dict[str, Any] = {
        "name": volume.name or "volume",
        "metadata": meta,
        "axis_labels": AXIS_LABELS[-ndim:],
        **layer_transform(volume.geometry, has_time=volume.has_time),
    }
    if volume.is_labels:
        layer_kwargs.update(kwargs)
        return (volume.data, layer_kwargs, "labels")
    layer_kwargs.update(
        {"colormap": "gray", "contrast_limits": contrast_limits(volume.data), "blending": "additive"}
    )
    layer_kwargs.update(kwargs)
    return (volume.data, layer_kwargs, "image")


def contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Robust display range from finite values (NaN/Inf ignored), subsampled for speed."""
    step = max(1, data.size // 2_000_000)
    sample = np.asarray(data).ravel()[::step]
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(finite, [0.5, 99.5]).astype(float)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def layer_to_volume(data: Any, attributes: dict[str, Any], *, is_labels: bool) -> Volume:
    """The Volume a layer shows: its data with the geometry of its current world placement.

    The geometry stored at reading time is reused (exact values, 3D placement of slices) as long
    as the layer's transform still matches it; if the user moved or rescaled the layer, the
    geometry is derived from the transform instead.
    """
    data = np.asarray(data)
    meta = (attributes.get("metadata") or {}).get(META_KEY) or {}
    stored = Geometry.from_dict(meta["geometry"]) if "geometry" in meta else None
    n = stored.ndim if stored is not None and data.ndim in (stored.ndim, stored.ndim + 1) else min(data.ndim, 3)
    has_time = data.ndim == n + 1
    if data.ndim not in (n, n + 1) or n < 2:
        raise ValueError(f"layer data of shape {data.shape} is not a 2D/3D volume or time series")
    derived = geometry_from_transform(attributes, ndim=n)
    geometry = stored if stored is not None and stored.almost_equal(derived) else derived
    return Volume(
        data,
        geometry,
        is_labels,
        attributes.get("name", ""),
        meta.get("time_spacing") if has_time else None,
        meta.get("source", ""),
        metadata=dict(meta.get("metadata") or {}),
    )


def layer_attributes(layer) -> dict[str, Any]:
    """The attributes napari hands to writer hooks, read from a layer's public properties."""
    return {
        "name": layer.name,
        "metadata": layer.metadata,
        "scale": list(layer.scale),
        "translate": list(layer.translate),
        "rotate": np.asarray(layer.rotate).tolist(),
        "shear": list(layer.shear),
        "affine": layer.affine.affine_matrix,
    }


def geometry_from_transform(attributes: dict[str, Any], *, ndim: int) -> Geometry:
    """Geometry of the last `ndim` axes from a layer's scale/translate/rotate/shear/affine."""
    from napari.utils.transforms import Affine, CompositeAffine

    full = len(attributes["scale"])
    data2physical = CompositeAffine(
        scale=attributes["scale"],
        translate=attributes["translate"],
        rotate=attributes.get("rotate"),
        shear=attributes.get("shear"),
        ndim=full,
    )
    affine = attributes.get("affine")
    physical2world = Affine(affine_matrix=np.asarray(affine)) if affine is not None else Affine(ndim=full)
    matrix = physical2world.affine_matrix @ data2physical.affine_matrix
    spatial = np.eye(ndim + 1)
    spatial[:ndim, :ndim] = matrix[full - ndim : full, full - ndim : full]
    spatial[:ndim, ndim] = matrix[full - ndim : full, full]
    return Geometry.from_index_to_world(spatial)


# --- displacement fields travel in layer metadata --------------------------------------------
# A (T, Z, Y, X, D) napari layer would be right-aligned against (T, Z, Y, X) images and put D
# where X is, so a field is kept as a dense (T, n, *S) voxel array in the metadata of the layer
# it belongs to (a generated image) or of the Vectors layer it is shown as (a field file).


def attach_field(meta: dict[str, Any], fields: np.ndarray, *, total: int | None = None) -> None:
    """Store a (T, n, *S) voxel field (and the number of frames expected) in layer metadata."""
    entry = meta.setdefault(META_KEY, {})
    entry["field"] = fields
    entry["frames_total"] = int(total if total is not None else fields.shape[0])


def field_of(layer) -> tuple[np.ndarray, Geometry, int] | None:
    """(fields (T, n, *S) voxels, geometry, frames expected) of a layer that carries a field."""
    entry = (getattr(layer, "metadata", None) or {}).get(META_KEY) or {}
    if entry.get("field") is None or "geometry" not in entry:
        return None
    fields = entry["field"]
    return fields, Geometry.from_dict(entry["geometry"]), int(entry.get("frames_total", fields.shape[0]))


def vector_colors(magnitude_mm: np.ndarray) -> np.ndarray:
    """RGBA per vector from the fixed mm bins of core.overlays."""
    from matplotlib.colors import to_rgba

    from .core.inspect.vector_style import MAGNITUDE_BIN_COLORS, magnitude_bins

    palette = np.array([to_rgba(c) for c in MAGNITUDE_BIN_COLORS], np.float32)
    return palette[magnitude_bins(magnitude_mm)]


def field_vectors_layer_data(
    fields: np.ndarray, geometry: Geometry, *, name: str, stride: int | None = None, source: str = ""
) -> tuple:
    """A 4D Vectors LayerDataTuple (one time step per frame) that carries the dense field."""
    from .core.spatial import field_to_vectors
    from .core.inspect.vector_style import sampled, vector_strides

    n = geometry.ndim
    strides = vector_strides(fields.shape[2:], stride)
    picked = fields[(slice(None), slice(None), *sampled(fields.shape[2:], strides))]  # (T, n, *s)
    scale = np.asarray(geometry.spacing, np.float32).reshape((1, n) + (1,) * n)
    mm = np.linalg.norm(picked * scale, axis=1).reshape(-1)
    vectors = field_to_vectors(-fields, stride=strides)  # the motion: fields pull (see core.inspect.overlays)
    meta = {META_KEY: {"geometry": geometry.to_dict(), "source": source}}
    attach_field(meta, fields)
    kwargs = {
        "name": name,
        "metadata": meta,
        "edge_color": vector_colors(mm),
        "features": {"magnitude_mm": mm},
        "edge_width": 0.4,
        "vector_style": "arrow",
        **layer_transform(geometry, has_time=True),
    }
    return (vectors, kwargs, "vectors")


def derived_layer_kwargs(geometry: Geometry, name: str, **kwargs: Any) -> dict[str, Any]:
    """kwargs for an overlay layer (T, *S) that must sit exactly on the frames it describes."""
    return {"name": name, **layer_transform(geometry, has_time=True), **kwargs}


# --- ACDC roles, provenance and short names of results ---------------------------------------
# The reader tags ACDC layers with metadata["deformdiff"]["metadata"]["acdc"] =
# {"patient", "role" (cine / ED / ES / ED labels / ES labels), "group"}; the pickers preselect
# by role. Results keep their full provenance in metadata["deformdiff"]["provenance"].

ACDC_ROLES = ("cine", "ED", "ES", "ED labels", "ES labels")
SHORT_NAME = 24  # characters of a layer name kept in a result's short name


def _entry(layer) -> dict[str, Any]:
    return (getattr(layer, "metadata", None) or {}).get(META_KEY) or {}


def acdc_tag(layer) -> dict[str, Any]:
    """{"patient", "role", "group"} of a layer the reader made from an ACDC folder, else {}."""
    return dict((_entry(layer).get("metadata") or {}).get("acdc") or {})


def role_layer(layers, role: str, patient: str | None = None):
    """The newest (top-most) layer with this ACDC role, of `patient` when given; None if none."""
    for layer in reversed(list(layers)):
        tag = acdc_tag(layer)
        if tag.get("role") == role and (patient is None or tag.get("patient") == patient):
            return layer
    return None


def is_phantom(layer) -> bool:
    """Whether a layer shows a phantom: the sample data (source "phantom:..."), a phantom dataset
    read from disk (Info.cfg Group "PHANTOM-..."), or a name that says "phantom"."""
    entry = _entry(layer)
    return (str(entry.get("source", "")).startswith("phantom")
            or str(acdc_tag(layer).get("group", "")).upper().startswith("PHANTOM")
            or "phantom" in str(getattr(layer, "name", "")).lower())


def short_label(layer) -> str:
    """The ACDC role of a layer ("ED"), else its name cut to SHORT_NAME characters."""
    role = acdc_tag(layer).get("role")
    if role:
        return role
    name = str(layer.name)
    return name if len(name) <= SHORT_NAME else name[: SHORT_NAME - 1] + "…"


def set_provenance(meta: dict[str, Any], provenance: dict[str, Any]) -> None:
    meta.setdefault(META_KEY, {})["provenance"] = dict(provenance)


def provenance_of(layer) -> dict[str, Any] | None:
    return _entry(layer).get("provenance")


def is_result(layer) -> bool:
    return provenance_of(layer) is not None
