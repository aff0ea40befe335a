"""Baseline for DDM on one pair: SimpleITK's diffeomorphic demons, multi-resolution, field scaled by gamma.

itk::DiffeomorphicDemonsRegistrationFilter (Vercauteren et al. 2009): each update is exponentiated
and composed with the current field. 200 iterations per level, Gaussian smoothing of the field with
standard deviation 1.5 (SetStandardDeviations, as ITK takes it), coarse-to-fine shrink factors
4-2-1 (BinShrink of both images, axes whose spacing is coarser are shrunk less; the field of one
level initialises the next). Intermediate frames: source warped by gamma times the final field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError


def shrink_factors(spacing: Sequence[float], factor: int) -> tuple[int, ...]:
    """Per-axis shrink for a pyramid level: `factor` on the finest axes, less on coarser ones."""
    finest = min(spacing)
    return tuple(max(1, int(round(factor * finest / s))) for s in spacing)


def joint_unit(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images scaled by one min-max range to [0, 1] (frames of one acquisition share intensities)."""
    s, t = np.asarray(source, np.float32), np.asarray(target, np.float32)
    lo, hi = min(float(s.min()), float(t.min())), max(float(s.max()), float(t.max()))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise InputError("the images are constant or hold NaN/inf values.")
    return (s - lo) / (hi - lo), (t - lo) / (hi - lo)


def demons_field(source: np.ndarray, target: np.ndarray, spacing: Sequence[float], *, iterations: int = 200,
                 sigma: float = 1.5, shrink: Sequence[int] = (4, 2, 1)) -> np.ndarray:
    """Pull displacement (n, *S) in voxels, array-axis components, with source(x + u(x)) ~ target(x).

    Both images are scaled to [0, 1] by their joint min-max range; `spacing` is the voxel size in array-axis order (mm).
    """
    import SimpleITK as sitk

    n = source.ndim
    sp = tuple(float(s) for s in spacing)

    def image(a: np.ndarray):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(sp[::-1])
        return img

    src, tgt = joint_unit(source, target)
    fixed, moving = image(tgt), image(src)
    field = None
    for f in shrink:
        factors = shrink_factors(sp, int(f))
        fixed_l = sitk.BinShrink(fixed, list(factors[::-1])) if max(factors) > 1 else fixed
        moving_l = sitk.BinShrink(moving, list(factors[::-1])) if max(factors) > 1 else moving
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SetStandardDeviations(float(sigma))
        if field is None:
            field = demons.Execute(fixed_l, moving_l)
        else:
            init = sitk.Resample(field, fixed_l, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            field = demons.Execute(fixed_l, moving_l, init)
    if tuple(field.GetSize()) != tuple(fixed.GetSize()) or field.GetOrigin() != fixed.GetOrigin():
        field = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    arr = sitk.GetArrayFromImage(field)  # (*S, n), components in (x, y[, z]) physical order
    return np.stack([arr[..., n - 1 - k] / sp[k] for k in range(n)]).astype(np.float32)
