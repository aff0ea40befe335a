"""DRDM forward process: a large random deformation made by self-composing small multi-scale fields.

Recipe (methods.md section 2, the authors' code): on a control grid of C = 64 voxels per axis,
multi-scale Gaussian noise MS(s) = sum over c in (64, 32, 16, 8) of upsample(randn(c^n) * s * 64/c)
(linear, align_corners=False); v = MS(sigma); v0 = v + warp(MS(0.08 sigma), v); the level-t DDF is
v0 self-composed N_ddf(t) times, the one-step target DVF is v self-composed N_dvf(t) times
(composition b + warp(a, b), border padding, align_corners=True). The 64 grid spans a field of view
of 2S per axis; the field is upsampled there and the central S is kept.

Units (our reading of the authors' "fractions of the control grid"):
* On the control grid the authors' field value f is a fraction of the grid, i.e. 64 f voxels of the
  64 grid; the compositions above are done here in those control-grid voxels with the toolkit's warp.
* To image size S the authors multiply the fraction field by S/64 and then read the cropped field
  as a fraction of the IMAGE size S (their network and warp use voxels = S * value). So one
  control-grid voxel g becomes g * S^2 / 64^2 image voxels (per axis k with S_k). This is not the
  geometric scaling (2S/64 voxels per control voxel, since 64 control voxels span 2S): at S = 128
  both agree, at S = 256 the authors' field is twice the geometric one and no longer free of folds.
  We keep the factor exactly because the published weights were trained with it.
* Returned fields are in image VOXELS, channel k along tensor axis k (core.spatial convention).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import spatial
from ..errors import InputError

CONTROL_GRID = 64
SCALES = (64, 32, 16, 8)
SIGMA = 4e-5
NOISE_RATIO = 0.08
MAX_LEVEL = 80
MAX_COMPOSITIONS = 200
RECIPES = ("chain", "doubling")
SPARSE_FROM = 4  # compositions from which building the sparse map (~3 grid_samples' time) pays off
NEEDED = (15, 49)  # control voxels to_image_field reads, per axis: it samples at 15.5 + 16/S .. 47.5 - 16/S
BOX_PAD = 4  # voxels beyond a box's drift bound (interpolation spreads a little further than the drift)

__all__ = [
    "CONTROL_GRID", "SCALES", "SIGMA", "NOISE_RATIO", "MAX_LEVEL", "RECIPES",
    "n_ddf", "n_dvf", "ForwardSample", "sample_forward", "control_field", "to_image_field",
]


def n_ddf(t: int) -> int:
    """Self-compositions of v0 for the level-t DDF: clamp(floor(2 t^1.3 / 3), 1, 200)."""
    return int(min(max(math.floor(2.0 * float(t) ** 1.3 / 3.0), 1), MAX_COMPOSITIONS))


def n_dvf(t: int) -> int:
    """Self-compositions of v for the one-step target DVF at level t: floor(t^0.6)."""
    return int(math.floor(float(t) ** 0.6))


@dataclass
class ForwardSample:
    """ddf: (B, n, *shape) level-t field in voxels; dvf: (B, n, *shape) one-step target or None."""

    ddf: torch.Tensor
    dvf: torch.Tensor | None = None


def _mode(n: int) -> str:
    return "bilinear" if n == 2 else "trilinear"


def _multiscale_noise(batch: int, n: int, amplitude: float, generator: torch.Generator) -> torch.Tensor:
    """MS(amplitude) on the control grid, in fractions of the grid, (B, n, 64, ...) on the CPU."""
    total = torch.zeros(batch, n, *([CONTROL_GRID] * n))
    for c in SCALES:
        noise = torch.randn(batch, n, *([c] * n), generator=generator) * (amplitude * CONTROL_GRID / c)
        if c != CONTROL_GRID:
            noise = F.interpolate(noise, size=(CONTROL_GRID,) * n, mode=_mode(n), align_corners=False)
        total += noise
    return total


def interpolation_matrix(v: torch.Tensor) -> torch.Tensor:
    """Sparse CSR (N, N), N voxels of one field v (n, *S) in voxels: row x holds the (bi/tri)linear
    weights that grid_sample (align_corners=True, border padding) gives the voxels around x + v(x),
    so M @ f (f: (N, channels), voxels in C order) = warp(f, v) up to float rounding."""
    shape = tuple(v.shape[1:])
    n = len(shape)
    if v.shape[0] != n or min(shape) < 2:
        raise ValueError(f"expected a field (n, *S) with n spatial sizes >= 2, got {tuple(v.shape)}")
    count = math.prod(shape)
    strides = [math.prod(shape[axis + 1:]) for axis in range(n)]
    base = torch.zeros(count, dtype=torch.int32, device=v.device)
    pairs = []
    for axis, size in enumerate(shape):
        index = torch.arange(size, dtype=v.dtype, device=v.device).view(*[-1 if k == axis else 1 for k in range(n)])
        pos = (index + v[axis]).clamp_(0, size - 1)
        low = pos.floor().clamp_(max=size - 2)
        base += low.to(torch.int32).reshape(-1) * strides[axis]
        frac = (pos - low).reshape(-1)
        pairs.append((1 - frac, frac))
    corners = list(itertools.product((0, 1), repeat=n))
    offsets = torch.tensor([sum(c * st for c, st in zip(corner, strides)) for corner in corners],
                           dtype=torch.int32, device=v.device)
    cols = base[:, None] + offsets  # (N, 2^n): the corners in C order
    weights = torch.empty(count, len(corners), dtype=v.dtype, device=v.device)
    for k, corner in enumerate(corners):
        w = pairs[0][corner[0]]
        for axis in range(1, n - 1):
            w = w * pairs[axis][corner[axis]]
        torch.mul(w, pairs[n - 1][corner[n - 1]], out=weights[:, k])
    rows = torch.arange(0, count * 2**n + 1, 2**n, dtype=torch.int32, device=v.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(rows, cols.reshape(-1), weights.reshape(-1), (count, count),
                                       check_invariants=False)


def _chain(v: torch.Tensor, times: int) -> torch.Tensor:
    """psi = v + warp(psi, v), `times` - 1 times from psi = v: warping with the fixed field v is a
    fixed sparse linear map (8 weights per voxel in 3D), applied as one sparse matrix product per
    composition in 3D, 3-4x faster than grid_sample there (it recomputes every gather and weight);
    2D fields are small and grid_sample's 2D kernel is faster than the product; GPUs keep grid_sample."""
    if times <= SPARSE_FROM or v.ndim != 5 or v.device.type != "cpu" or min(v.shape[2:]) < 2:
        grid = spatial._sampling_grid(v)  # the grid spatial.warp builds, so the steps equal compose()
        psi = v
        for _ in range(times - 1):
            psi = F.grid_sample(psi, grid, mode="bilinear", padding_mode="border", align_corners=True).add_(v)
        return psi
    out = []
    for item in v:  # (n, *S)
        matrix = interpolation_matrix(item)
        flat = item.reshape(item.shape[0], -1).t().contiguous()  # (N, n)
        psi = flat
        for _ in range(times - 1):
            psi = torch.addmm(flat, matrix, psi)
        out.append(psi.t().reshape(item.shape))
    return torch.stack(out)


def _box(t: torch.Tensor, lo, hi, origin=None) -> torch.Tensor:
    origin = origin or [0] * len(lo)
    return t[(..., *[slice(a - o, b - o) for a, b, o in zip(lo, hi, origin)])]


def _cone_box(up, down, compositions: int) -> tuple[list[int], list[int]]:
    """The box [lo, hi) of control voxels whose values can reach NEEDED in `compositions` more
    compositions of a field that moves what a voxel reads by at most up[a] along axis a and down[a]
    against it, plus BOX_PAD voxels for the interpolation's spread (and one for its upper corner)."""
    lo = [max(NEEDED[0] - math.ceil(compositions * d) - BOX_PAD, 0) for d in down]
    hi = [min(NEEDED[1] + math.ceil(compositions * u) + BOX_PAD + 1, CONTROL_GRID) for u in up]
    return lo, hi


def _cone_key(shape, lo, up, down) -> torch.Tensor:
    """Per voxel of the box at `lo` (sizes `shape`): the fewest compositions still to do at which its
    value can reach NEEDED (0 in NEEDED and BOX_PAD around it), the inverse of _cone_box."""
    key = torch.zeros(shape)
    for axis, size in enumerate(shape):
        x = torch.arange(size, dtype=torch.float32) + lo[axis]
        below = (NEEDED[0] - BOX_PAD - x).clamp(min=0)
        above = (x - (NEEDED[1] + BOX_PAD)).clamp(min=0)
        with torch.no_grad():
            need = torch.maximum(below / down[axis] if down[axis] > 0 else below * math.inf,
                                 above / up[axis] if up[axis] > 0 else above * math.inf).nan_to_num(0.0)
        key = torch.maximum(key, need.view(*[-1 if k == axis else 1 for k in range(len(shape))]))
    return key


def _central_chain(v: torch.Tensor, noise: torch.Tensor, times: int) -> torch.Tensor | None:
    """The chain of v0 = compose(noise, v) (one item (n, 64, ...)) where to_image_field reads it.

    Composition j only has to be right on the voxels whose values can still reach NEEDED in the
    times - j compositions left (_cone_key: a box that shrinks as the chain goes on). The sparse
    map is built once, its rows sorted by that key, so composition j is one product with the first
    rows; voxels left out keep an earlier value, which by then no longer reaches NEEDED. Equal to
    _chain on NEEDED up to float rounding (tests/test_drdm_forward.py); elsewhere the edge values.
    None where it does not apply (displacements of a voxel or more, few compositions).
    """
    n = v.shape[0]
    vmax = [float(v[a].abs().max()) for a in range(n)]
    if times <= SPARSE_FROM or max(vmax) >= 1.0:
        return None
    # |v0_a| <= max |v_a| + max |noise_a| bounds the box; v0 there needs v, noise one voxel further
    bound = [a + float(noise[k].abs().max()) for k, a in enumerate(vmax)]
    lo, hi = _cone_box(bound, bound, times - 1)
    wide_lo, wide_hi = [max(a - 1, 0) for a in lo], [min(b + 1, CONTROL_GRID) for b in hi]
    v0 = spatial.compose(_box(noise, wide_lo, wide_hi)[None], _box(v, wide_lo, wide_hi)[None],
                         padding_mode="border")[0]
    v0 = _box(v0, lo, hi, wide_lo).contiguous()
    up = [float(v0[a].clamp(min=0).max()) for a in range(n)]
    down = [float(v0[a].clamp(max=0).neg().max()) for a in range(n)]
    # ceil(key) <= j exactly when key <= j: integer keys give the same rows per composition, and
    # integers sort about 5x faster than floats
    key = _cone_key(v0.shape[1:], lo, up, down).reshape(-1).ceil_().clamp_(max=times).to(torch.int32)
    order = torch.argsort(key, stable=True)  # stable: C order within a key, gathers stay local
    rows = torch.searchsorted(key[order], torch.arange(times, dtype=key.dtype), right=True).tolist()
    matrix = interpolation_matrix(v0)
    corners, count = 2**n, key.numel()
    where = torch.empty(count, dtype=torch.int32)  # a voxel's row in the sorted order
    where[order] = torch.arange(count, dtype=torch.int32)
    crow = matrix.crow_indices()
    cols = where.index_select(0, matrix.col_indices()).view(count, corners).index_select(0, order).reshape(-1)
    weights = matrix.values().view(count, corners).index_select(0, order).reshape(-1)
    flat = v0.reshape(n, -1).index_select(1, order).t().contiguous()  # gathering rows of the transpose is 8x slower
    psi, other = flat.clone(), flat.clone()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for j in range(2, times + 1):
            r = rows[times - j]  # the voxels composition j must get right
            part = torch.sparse_csr_tensor(crow[:r + 1], cols[:r * corners], weights[:r * corners], (r, count),
                                           check_invariants=False)
            torch.addmm(flat[:r], part, psi, out=other[:r])
            psi, other = other, psi
    psi = torch.empty_like(psi).index_copy_(0, order, psi)
    pads = [w for a, b in zip(reversed(lo), reversed(hi)) for w in (a, CONTROL_GRID - b)]
    return F.pad(psi.t().reshape(v0.shape)[None], pads, mode="replicate")[0]


def _self_compose(v: torch.Tensor, times: int, recipe: str = "chain") -> torch.Tensor:
    """v composed with itself `times` times (zero field for times = 0).

    "chain": psi = v + warp(psi, v), `times` - 1 compositions (the authors' order).
    "doubling": the same power by binary exponentiation, v^(2k) = v^k o v^k, about 2 log2(times)
    compositions; equal up to interpolation (powers of one field commute).
    """
    if times <= 0:
        return torch.zeros_like(v)
    if recipe == "chain":
        return _chain(v, times)
    psi, power, left = None, v, int(times)
    while True:
        if left & 1:
            psi = power if psi is None else spatial.compose(psi, power, padding_mode="border")
        left >>= 1
        if not left:
            return psi
        power = spatial.compose(power, power, padding_mode="border")


def control_field(batch: int, n: int, level: int, generator: torch.Generator, *, device="cpu",
                  with_dvf: bool = False, recipe: str = "chain",
                  central: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ddf, dvf) on the 64 control grid in control-grid voxels (noise drawn on the CPU);
    `recipe`: how the self-compositions are done (see _self_compose). central: the ddf only
    where to_image_field reads it (3D chains on the CPU: _central_chain, about half the work),
    elsewhere edge values."""
    v = _multiscale_noise(batch, n, SIGMA, generator)
    noise = _multiscale_noise(batch, n, NOISE_RATIO * SIGMA, generator)
    v = (v * CONTROL_GRID).to(device)
    noise = (noise * CONTROL_GRID).to(device)
    times = n_ddf(level)
    if central and recipe == "chain" and n == 3 and v.device.type == "cpu":
        parts = [_central_chain(a, b, times) for a, b in zip(v, noise)]
        if all(p is not None for p in parts):
            ddf = torch.stack(parts)
            return ddf, (_self_compose(v, n_dvf(level), recipe) if with_dvf else None)
    v0 = spatial.compose(noise, v, padding_mode="border")
    ddf = _self_compose(v0, times, recipe)
    dvf = _self_compose(v, n_dvf(level), recipe) if with_dvf else None
    return ddf, dvf


def _central_axis(size: int, device) -> torch.Tensor:
    """grid_sample (align_corners=False) coordinates on the control grid of the central `size`
    voxels of a 2*size upsampling of the control grid."""
    big = 2 * size
    j = torch.arange(size // 2, size // 2 + size, dtype=torch.float64, device=device)
    src = (j + 0.5) * CONTROL_GRID / big - 0.5          # control-grid index (interpolate's mapping)
    return (2.0 * src + 1.0) / CONTROL_GRID - 1.0


def _crop_start(size: int) -> int | None:
    """Largest control index c0 <= 15 at which the 2*size upsampling of the control grid can start
    (c0 * 2 size / 64 an integer, so a crop upsampled alone gives the same samples); None if none."""
    for c0 in range(CONTROL_GRID // 4 - 1, -1, -1):
        if (c0 * 2 * size) % CONTROL_GRID == 0:
            return c0
    return None


def to_image_field(field: torch.Tensor, shape) -> torch.Tensor:
    """A control-grid field (B, n, 64, ...) in control voxels -> (B, n, *shape) image voxels.

    Same values as upsampling the 64 grid to 2S per axis (linear, align_corners=False), taking the
    central S and scaling channel k by S_k^2 / 64^2 (see the module docstring), without ever
    building the 2S array: the control voxels the central S needs (15..48) are upsampled alone.
    """
    n = field.shape[1]
    scale = torch.tensor([s * s / CONTROL_GRID**2 for s in shape], dtype=field.dtype, device=field.device)
    starts = [_crop_start(s) for s in shape]
    if any(c0 is None for c0 in starts):
        axes = [_central_axis(s, field.device) for s in shape]
        mesh = torch.meshgrid(*axes, indexing="ij")
        grid = torch.stack(mesh[::-1], dim=-1).to(field.dtype)[None].expand(field.shape[0], *shape, n)
        out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out * scale.view(1, n, *([1] * n))
    stop = 3 * CONTROL_GRID // 4 + 2  # the last needed index (48) and one more
    crop = field[(..., *[slice(c0, stop) for c0 in starts])]
    factors = [2.0 * s / CONTROL_GRID for s in shape]
    up = F.interpolate(crop, scale_factor=factors, mode=_mode(n), align_corners=False,
                       recompute_scale_factor=False)
    first = [s // 2 - round(c0 * f) for s, c0, f in zip(shape, starts, factors)]
    out = up[(..., *[slice(a, a + s) for a, s in zip(first, shape)])]
    return out * scale.view(1, n, *([1] * n))


def _check(shape, level, batch, recipe="chain") -> tuple[int, ...]:
    if recipe not in RECIPES:
        raise InputError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}.")
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InputError(f"shape must be a tuple of 2 or 3 sizes, got {shape!r}.") from None
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise InputError(f"the DRDM forward process works on 2D or 3D grids (sizes >= 2), got {shape}.")
    if isinstance(level, bool) or int(level) != level or not 0 <= level <= MAX_LEVEL:
        raise InputError(f"deformation level must be an integer from 0 to {MAX_LEVEL}, got {level!r}.")
    if int(batch) < 1:
        raise InputError(f"batch must be at least 1, got {batch}.")
    return shape


def sample_forward(shape, level: int, *, generator: torch.Generator | None = None,
                   seed: int | None = None, batch: int = 1, device="cpu",
                   with_dvf: bool = False, recipe: str = "chain") -> ForwardSample:
    """Random DDF of deformation level `level` for images of `shape` (2D or 3D), in voxels.

    Randomness comes from `generator` (a CPU torch.Generator, advanced in place), else from a new
    generator seeded with `seed` (default 0): the same seed gives the same field on any device.
    with_dvf also returns the one-step target DVF (training). recipe "chain" self-composes one
    field at a time as the authors do; "doubling" reaches the same power in about 2 log2 N
    compositions (14 instead of 101 at level 48; close statistics, see docs/drdm.md). In 3D on the
    CPU the chain runs as sparse matrix products, each only on the control voxels that can still
    reach the image (_central_chain): about half the grid at level 48.
    """
    shape = _check(shape, level, batch, recipe)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    n = len(shape)
    with torch.no_grad():
        ddf, dvf = control_field(int(batch), n, int(level), generator, device=device, with_dvf=with_dvf,
                                 recipe=recipe, central=True)
        return ForwardSample(to_image_field(ddf, shape), None if dvf is None else to_image_field(dvf, shape))
