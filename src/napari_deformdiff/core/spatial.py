"""Deformation toolkit shared by every model: warping, composition, integration, Jacobians.

Torch only (no napari, no Qt); batched; 2D and 3D; runs on the inputs' device and dtype.

Conventions
-----------
* Images are ``(B, C, *S)`` with ``S = (H, W)`` in 2D or ``(D, H, W)`` in 3D.
* Displacement fields (DDF) are ``(B, n, *S)`` with ``n = len(S)``. Channel ``k`` is the
  displacement along tensor spatial axis ``k`` ("array-axis order": in 3D channel 0 = D/z,
  1 = H/y, 2 = W/x). Units are voxels unless a function says otherwise.
* Pull warping: ``out(x) = in(x + u(x))``, sampled with ``torch.nn.functional.grid_sample``
  and ``align_corners=True``: voxel index 0 maps to -1 and index ``S_k - 1`` to +1, so one
  voxel is ``2 / (S_k - 1)`` normalized units. Along an axis of size 1 the factor is 0 (the
  displacement along it is ignored). grid_sample's last grid dimension is (x, y[, z]), i.e.
  the reversed array-axis order; this module does that flip internally.
* Composition: ``compose(first, second)`` is the field ``phi`` with
  ``warp(warp(I, first), second) == warp(I, phi)``, i.e.
  ``phi(x) = second(x) + first(x + second(x)) = second + warp(first, second)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "identity_grid",
    "voxel_to_normalized",
    "normalized_to_voxel",
    "warp",
    "compose",
    "integrate_velocity",
    "resize_field",
    "jacobian_determinant",
    "folding_ratio",
    "repair_folding",
    "vector_norm",
    "displacement_stats",
    "field_to_vectors",
]

_PADDING_MODES = ("zeros", "border", "reflection")
_MODES = {"linear": "bilinear", "bilinear": "bilinear", "trilinear": "bilinear", "nearest": "nearest"}
_UNITS = ("voxel", "mm")
# Integers up to this magnitude are exactly representable in float32.
_FLOAT32_EXACT_INT = 2**24
_WIDE_INTS = tuple(
    getattr(torch, name) for name in ("int32", "int64", "uint32", "uint64") if hasattr(torch, name)
)


# --------------------------------------------------------------------------- validation helpers


def _check_ddf(ddf: torch.Tensor, name: str = "ddf") -> int:
    """Validate a batched field (B, n, *S) and return n."""
    if not isinstance(ddf, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(ddf).__name__}")
    if ddf.ndim not in (4, 5):
        raise ValueError(
            f"{name} must have shape (B, n, *S) with 2 or 3 spatial dims (ndim 4 or 5), "
            f"got shape {tuple(ddf.shape)}"
        )
    n = ddf.ndim - 2
    if ddf.shape[1] != n:
        raise ValueError(
            f"{name} has {ddf.shape[1]} channels but {n} spatial dims (shape {tuple(ddf.shape)}); "
            f"a displacement field needs one channel per spatial axis"
        )
    if not ddf.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {ddf.dtype}")
    return n


def _check_spacing(spacing, n: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * n
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != n:
        raise ValueError(f"spacing must have {n} entries (array-axis order), got {spacing}")
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing entries must be positive and finite, got {spacing}")
    return spacing


def _channel_view(values: Sequence[float], n: int, ref: torch.Tensor) -> torch.Tensor:
    """Per-channel factors shaped (1, n, 1, ..., 1) on ref's device/dtype."""
    return torch.tensor(values, device=ref.device, dtype=ref.dtype).view(1, n, *([1] * n))


# --------------------------------------------------------------------------- grids and units


def identity_grid(shape, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel index coordinates: a tensor (n, *shape) whose channel k holds the index along axis k."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"shape must be 2 or 3 positive sizes, got {shape}")
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _voxel_factors(spatial: Sequence[int]) -> list[float]:
    return [2.0 / (s - 1) if s > 1 else 0.0 for s in spatial]


def voxel_to_normalized(ddf: torch.Tensor) -> torch.Tensor:
    """Scale channel k of a voxel field (B, n, *S) by 2/(S_k-1) (0 for a size-1 axis)."""
    n = _check_ddf(ddf)
    return ddf * _channel_view(_voxel_factors(ddf.shape[2:]), n, ddf)


def normalized_to_voxel(ddf: torch.Tensor) -> torch.Tensor:
    """Scale channel k of a normalized field (B, n, *S) by (S_k-1)/2 (inverse of voxel_to_normalized)."""
    n = _check_ddf(ddf)
    return ddf * _channel_view([(s - 1) / 2.0 for s in ddf.shape[2:]], n, ddf)


def _sampling_grid(ddf: torch.Tensor) -> torch.Tensor:
    """grid_sample grid (B, *S, n) in (x, y[, z]) order for positions x + u(x)."""
    n = ddf.ndim - 2
    spatial = ddf.shape[2:]
    factors = _voxel_factors(spatial)
    offsets = [-1.0 if s > 1 else 0.0 for s in spatial]
    pos = identity_grid(spatial, device=ddf.device, dtype=ddf.dtype).unsqueeze(0) + ddf
    pos = pos * _channel_view(factors, n, ddf) + _channel_view(offsets, n, ddf)
    return pos.movedim(1, -1).flip(-1)


# --------------------------------------------------------------------------- warping


def warp(
    image: torch.Tensor, ddf: torch.Tensor, *, mode: str = "linear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """Pull-warp ``image`` (B, C, *S) with the voxel field ``ddf`` (B, n, *S): out(x) = in(x + u(x)).

    mode: "linear" (bi/trilinear) or "nearest". padding_mode: "zeros", "border" or "reflection".
    An image (or field) of batch 1 is broadcast to the other's batch.
    Linear output has the promoted floating dtype of image and ddf; integer images are rejected.
    Nearest output keeps the image dtype exactly (labels stay integer, no new values appear;
    with padding_mode="zeros" samples outside the image are 0).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
    n = _check_ddf(ddf)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != ddf.ndim:
        raise ValueError(
            f"image must have shape (B, C, *S) with the field's {n} spatial dims: "
            f"image shape {tuple(image.shape)} vs ddf shape {tuple(ddf.shape)}"
        )
    if tuple(image.shape[2:]) != tuple(ddf.shape[2:]):
        raise ValueError(
            f"image and ddf spatial shapes differ: image shape {tuple(image.shape)} "
            f"vs ddf shape {tuple(ddf.shape)}"
        )
    bi, bd = image.shape[0], ddf.shape[0]
    if bi != bd and bi != 1 and bd != 1:
        raise ValueError(
            f"image and ddf batch sizes differ (and neither is 1): image shape "
            f"{tuple(image.shape)} vs ddf shape {tuple(ddf.shape)}"
        )
    if image.is_complex():
        raise ValueError(f"complex images are not supported (dtype {image.dtype})")
    if image.device != ddf.device:
        raise ValueError(f"image is on {image.device} but ddf is on {ddf.device}")

    out_dtype = image.dtype
    if image.is_floating_point():
        work = torch.promote_types(image.dtype, ddf.dtype)
        if _MODES[mode] == "bilinear":
            out_dtype = work
    else:
        if _MODES[mode] != "nearest":
            raise ValueError(
                f"cannot linearly interpolate an integer image (dtype {image.dtype}); "
                f"use mode='nearest' for label maps"
            )
        work = torch.float32
        if image.dtype in _WIDE_INTS and image.numel():
            big = max(abs(int(image.max())), abs(int(image.min())))
            if big > _FLOAT32_EXACT_INT:
                work = torch.float64
        work = torch.promote_types(work, ddf.dtype)

    batch = max(bi, bd)
    src = image.to(work)
    if bi != batch:
        src = src.expand(batch, *src.shape[1:])
    grid = _sampling_grid(ddf.to(work))
    if bd != batch:
        grid = grid.expand(batch, *grid.shape[1:])
    out = F.grid_sample(src, grid, mode=_MODES[mode], padding_mode=padding_mode, align_corners=True)
    if out.dtype != out_dtype:
        if not out_dtype.is_floating_point and out_dtype != torch.bool:
            out = torch.round(out)
        out = out.to(out_dtype)
    return out


def compose(first: torch.Tensor, second: torch.Tensor, *, padding_mode: str = "border") -> torch.Tensor:
    """Field phi = second + warp(first, second), so warp(warp(I, first), second) == warp(I, phi)."""
    _check_ddf(first, "first")
    _check_ddf(second, "second")
    if tuple(first.shape[1:]) != tuple(second.shape[1:]):
        raise ValueError(
            f"fields to compose must have the same shape: first {tuple(first.shape)} "
            f"vs second {tuple(second.shape)}"
        )
    return second + warp(first, second, mode="linear", padding_mode=padding_mode)


def integrate_velocity(velocity: torch.Tensor, *, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field (B, n, *S) in voxels.

    u = v / 2**steps, then `steps` times u = u + warp(u, u, padding_mode="border").
    steps=0 returns v unchanged.
    """
    _check_ddf(velocity, "velocity")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if steps == 0:
        return velocity
    u = velocity / (2.0 ** int(steps))
    for _ in range(int(steps)):
        u = u + warp(u, u, mode="linear", padding_mode="border")
    return u


def resize_field(ddf: torch.Tensor, shape) -> torch.Tensor:
    """Resample a voxel field (B, n, *S) to spatial `shape`, keeping it in voxels of the new grid.

    Components are linearly interpolated (align_corners=True) and component k is multiplied by
    (new_k-1)/(old_k-1). Along an old axis of size 1 the factor is 0 (such a displacement has no
    meaning under the align_corners convention; warp ignores it too).
    """
    n = _check_ddf(ddf)
    shape = tuple(int(s) for s in shape)
    if len(shape) != n or any(s < 1 for s in shape):
        raise ValueError(
            f"shape must have {n} positive sizes for ddf of shape {tuple(ddf.shape)}, got {shape}"
        )
    old = tuple(ddf.shape[2:])
    if shape == old:
        return ddf.clone()
    out = F.interpolate(ddf, size=shape, mode="bilinear" if n == 2 else "trilinear", align_corners=True)
    factors = [(s - 1) / (o - 1) if o > 1 else 0.0 for s, o in zip(shape, old)]
    return out * _channel_view(factors, n, out)


# --------------------------------------------------------------------------- Jacobians and stats


def _gradient(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Like numpy.gradient(edge_order=1) along `dim` (unit step); 0 along an axis of size 1."""
    size = t.shape[dim]
    if size == 1:
        return torch.zeros_like(t)
    first = t.narrow(dim, 1, 1) - t.narrow(dim, 0, 1)
    last = t.narrow(dim, size - 1, 1) - t.narrow(dim, size - 2, 1)
    inner = (t.narrow(dim, 2, size - 2) - t.narrow(dim, 0, size - 2)) * 0.5
    return torch.cat([first, inner, last], dim=dim)


def jacobian_determinant(ddf: torch.Tensor, *, spacing=None, units: str = "voxel") -> torch.Tensor:
    """det(I + grad u) per voxel, shape (B, *S).

    Derivatives: central differences inside, one-sided at the borders (numpy.gradient,
    edge_order=1). units="voxel": u in voxels, derivatives per voxel; the determinant is then the
    same whatever the spacing (spacing is only validated). units="mm": u in millimetres and
    `spacing` (n floats, array-axis order) is required; d/dx_j is divided by spacing[j].
    """
    n = _check_ddf(ddf)
    if units not in _UNITS:
        raise ValueError(f"units must be 'voxel' or 'mm', got {units!r}")
    if units == "mm" and spacing is None:
        raise ValueError("units='mm' needs spacing (one value per axis, array-axis order)")
    sp = _check_spacing(spacing, n)
    if units == "voxel":
        sp = (1.0,) * n
    # J[i][j] = delta_ij + d u_i / d x_j ; u_i is ddf[:, i] (B, *S), axis j is dim j + 1.
    # In-place updates: this runs on every frame of a streamed sequence.
    J = [[_gradient(ddf[:, i], j + 1) for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            if sp[j] != 1.0:
                J[i][j].div_(sp[j])
        J[i][i].add_(1.0)
    if n == 2:
        return (J[0][0] * J[1][1]).sub_(J[0][1] * J[1][0])
    det = (J[1][1] * J[2][2]).sub_(J[1][2] * J[2][1]).mul_(J[0][0])
    det.sub_((J[1][0] * J[2][2]).sub_(J[1][2] * J[2][0]).mul_(J[0][1]))
    det.add_((J[1][0] * J[2][1]).sub_(J[1][1] * J[2][0]).mul_(J[0][2]))
    return det


def folding_ratio(ddf: torch.Tensor, *, spacing=None, units: str = "voxel") -> torch.Tensor:
    """Fraction of voxels with det(I + grad u) <= 0, shape (B,)."""
    det = jacobian_determinant(ddf, spacing=spacing, units=units)
    return (det <= 0).flatten(1).to(ddf.dtype).mean(dim=1)


def _box_mean(ddf: torch.Tensor) -> torch.Tensor:
    """3^n box average of each component, borders replicated."""
    n = ddf.ndim - 2
    padded = F.pad(ddf, (1, 1) * n, mode="replicate")
    return (F.avg_pool2d if n == 2 else F.avg_pool3d)(padded, 3, stride=1)


def repair_folding(ddf: torch.Tensor, *, min_det: float = 0.05, max_iterations: int = 400,
                   grow_every: int = 25) -> torch.Tensor:
    """A field like `ddf` (B, n, *S, voxels) without folds: det(I + grad u) > 0 everywhere (central
    differences, as jacobian_determinant), changed only around the folds.

    Each iteration replaces u by its 3^n box average on the voxels within r of one with
    det <= min_det (r = 1, growing by 1 every `grow_every` iterations that leave folds); repeated,
    this relaxes the field there towards a smooth (harmonic-like) fill of its surroundings. Stops
    when no voxel has det <= min_det or after `max_iterations` (a few folded voxels may then
    remain; check with folding_ratio). Deterministic; a field without such voxels is returned as is.

    The iterations run on a box around the folds (it grows when they spread), with the result of
    running them on the whole field: what lies outside the box neither changes nor folds.
    """
    n = _check_ddf(ddf)
    pool = F.max_pool2d if n == 2 else F.max_pool3d
    shape = ddf.shape[2:]
    u, box, k = ddf, None, 0
    while k < int(max_iterations):
        r = 1 + k // int(grow_every)
        if box is None:
            bad = (jacobian_determinant(u) <= min_det).any(0)
            if not bool(bad.any()):
                break
            box = _box_around(bad, r + 4, shape)
            inner = _inside(box, shape, 1, u.device)  # det is exact there; the box's edge never folds
            changeable = _inside(box, shape, 2, u.device)  # the box mean is exact there
            if u is ddf:
                u = ddf.clone()
        crop = u[(slice(None), slice(None), *box)]
        bad = ((jacobian_determinant(crop) <= min_det) & inner).to(u.dtype)[:, None]
        if not bool(bad.any()):
            break
        near = bad
        for axis in range(n):  # a (2r+1)^n max is n 1D maxima: O(n r) per voxel, not O(r^n)
            size = [1] * n
            size[axis] = 2 * r + 1
            pad = [0, 0] * n
            pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = r
            near = pool(F.pad(near, pad), tuple(size), stride=1)
        if bool((near.amax((0, 1)) > 0).logical_and_(~changeable).any()):
            box = None  # the changes would reach the box's edge: a larger box, the same iteration
            continue
        crop.copy_(torch.where(near > 0, _box_mean(crop), crop))
        k += 1
    return u


def _box_around(mask: torch.Tensor, margin: int, shape) -> tuple[slice, ...]:
    """The bounding box of a boolean (*S) mask, `margin` voxels wider on every side, within shape."""
    box = []
    for axis, size in enumerate(shape):
        hit = torch.nonzero(mask.any(dim=tuple(a for a in range(mask.ndim) if a != axis)))[:, 0]
        box.append(slice(max(0, int(hit[0]) - margin), min(size, int(hit[-1]) + 1 + margin)))
    return tuple(box)


def _inside(box: tuple[slice, ...], shape, depth: int, device) -> torch.Tensor:
    """Boolean mask of the box's voxels at least `depth` voxels from its edges inside the field
    (edges on the field's own border do not count)."""
    masks = []
    for sl, size in zip(box, shape):
        m = torch.ones(sl.stop - sl.start, dtype=torch.bool, device=device)
        if sl.start > 0:
            m[:depth] = False
        if sl.stop < size:
            m[len(m) - depth:] = False
        masks.append(m)
    out = masks[0]
    for m in masks[1:]:
        out = out[..., None] & m
    return out


def vector_norm(ddf: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the component axis: (B, n, *S) -> (B, *S).

    Written as sqrt(sum(u*u)): torch's norm(dim=1) reduces over a strided axis and is about
    50x slower on CPU for 3D fields.
    """
    return (ddf * ddf).sum(dim=1).sqrt()


def displacement_stats(ddf: torch.Tensor, *, spacing=None) -> list[dict[str, float]]:
    """Per batch item: max/mean displacement norm in voxels, mm and percent of image size.

    max_vox/mean_vox: |u| in voxels. max_mm/mean_mm: |u| with component k times spacing[k]
    (spacing defaults to 1). max_pct/mean_pct: |v| with v_k = 100 * u_k / S_k (percent of the
    image size along each axis).
    """
    n = _check_ddf(ddf)
    sp = _check_spacing(spacing, n)
    spatial = ddf.shape[2:]
    u = ddf.detach()
    norms = {
        "vox": vector_norm(u),
        "mm": vector_norm(u * _channel_view(sp, n, u)),
        "pct": vector_norm(u * _channel_view([100.0 / s for s in spatial], n, u)),
    }
    result = []
    for b in range(u.shape[0]):
        item = {}
        for key, norm in norms.items():
            flat = norm[b].flatten()
            item[f"max_{key}"] = float(flat.max())
            item[f"mean_{key}"] = float(flat.double().mean())
        result.append(item)
    return result


# --------------------------------------------------------------------------- napari vectors


def _as_numpy(field) -> np.ndarray:
    if isinstance(field, torch.Tensor):
        return field.detach().cpu().numpy()
    return np.asarray(field)


def _field_series(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """(T, n, *S) view of a field or a field series, and whether it was a series."""
    if (arr.ndim == 3 and arr.shape[0] == 2) or (arr.ndim == 4 and arr.shape[0] == 3 and arr.shape[1] != 2):
        return arr[None], False
    if (arr.ndim == 4 and arr.shape[1] == 2) or (arr.ndim == 5 and arr.shape[1] == 3):
        return arr, True
    raise ValueError(
        f"field must be (n, *S) or a time series (T, n, *S) with n = 2 or 3 spatial dims "
        f"and one channel per spatial axis, got shape {arr.shape}"
    )


def field_to_vectors(ddf, *, stride=4, affine=None, min_length: float = 0.0) -> np.ndarray:
    """Sample a field as napari Vectors data: float32 (N, 2, n) with [:, 0] start, [:, 1] projection.

    `ddf` is one field (n, *S) or a time series (T, n, *S); the latter gives (N, 2, n+1) with the
    time index as first coordinate and zero time projection (all vectors of t=0 first). A shape
    that fits both readings, (3, 2, H, W), is read as a 2D time series. Torch or numpy input.
    Positions are every `stride` voxels per axis (int or tuple per axis) starting at stride//2.
    Without `affine`, positions and projections are in voxel coordinates; with an (n+1)x(n+1)
    homogeneous matrix (array-order voxel index -> world), positions go through it and
    projections through its linear part. For a time series an (n+2)x(n+2) matrix whose first axis
    is time is accepted too. Vectors shorter than `min_length` voxels are dropped.
    """
    arr, series = _field_series(_as_numpy(ddf))
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    T, n = arr.shape[0], arr.shape[1]
    spatial = arr.shape[2:]

    if isinstance(stride, (int, np.integer)) and not isinstance(stride, bool):
        strides = (int(stride),) * n
    else:
        strides = tuple(int(s) for s in stride)
    if len(strides) != n or any(s < 1 for s in strides):
        raise ValueError(f"stride must be a positive int or {n} positive ints, got {stride!r}")
    if min_length < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")

    index = [np.arange(s // 2, size, s) for s, size in zip(strides, spatial)]
    mesh = np.meshgrid(*index, indexing="ij")
    pos = np.stack([m.ravel() for m in mesh], axis=1).astype(np.float64)  # (P, n)
    sel = (slice(None), slice(None), *np.ix_(*index))
    proj = arr[sel].reshape(T, n, -1).transpose(0, 2, 1).astype(np.float64)  # (T, P, n)

    keep = np.linalg.norm(proj, axis=2) >= min_length  # (T, P), lengths in voxels
    time_aff = None
    if affine is not None:
        A = np.asarray(affine, dtype=np.float64)
        if series and A.shape == (n + 2, n + 2):
            time_aff, A = A, None
        elif A.shape != (n + 1, n + 1):
            raise ValueError(
                f"affine must be ({n + 1}, {n + 1}) (homogeneous, array-axis order)"
                + (f" or ({n + 2}, {n + 2}) with time first" if series else "")
                + f", got {A.shape}"
            )
        M = A if A is not None else time_aff
        bottom = np.zeros(M.shape[0])
        bottom[-1] = 1.0
        if not np.allclose(M[-1], bottom):
            raise ValueError(f"affine's last row must be [0, ..., 0, 1], got {M[-1]}")
        if A is not None:
            lin, shift = A[:n, :n], A[:n, n]
            pos = pos @ lin.T + shift
            proj = proj @ lin.T

    starts = np.broadcast_to(pos, (T,) + pos.shape)
    if series:
        tcol = np.broadcast_to(np.arange(T, dtype=np.float64)[:, None, None], (T, pos.shape[0], 1))
        starts = np.concatenate([tcol, starts], axis=2)
        proj = np.concatenate([np.zeros_like(tcol), proj], axis=2)
        if time_aff is not None:
            lin, shift = time_aff[:-1, :-1], time_aff[:-1, -1]
            starts = starts @ lin.T + shift
            proj = proj @ lin.T
    out = np.stack([starts[keep], proj[keep]], axis=1)
    return out.astype(np.float32)
