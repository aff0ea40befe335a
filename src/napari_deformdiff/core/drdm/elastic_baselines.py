"""Random elastic deformations of TorchIO and MONAI, with their dense fields read out, for comparison.

Each baseline applies the library's own random transform to an image and returns the library's
output together with the displacement it applied, as a pull field in voxels (toolkit convention:
components in array-axis order, out(x) = in(x + u(x))):

- TorchIO RandomElasticDeformation (defaults: 7 control points per axis, borders locked, cubic
  B-spline): the control-point displacements it drew are read from the subject's history and the
  dense B-spline displacement is rebuilt with SimpleITK on the same reference image
  (TransformToDisplacementField), then taken from physical (LPS) to index space.
- MONAI Rand2DElastic (control spacing S/8, bicubic upsampling) and Rand3DElastic (per-voxel
  noise smoothed with a Gaussian of sigma S/16): the dense sampling grid they pass to their
  resampler is captured, minus the identity grid.

Both displacements are linear in the magnitude parameter (max_displacement, magnitude) for a given
seed, so tune_magnitude finds the magnitude that gives a target mean displacement by a secant
search, which converges in one or two steps (bisection would too, more slowly).
The optional "compare" extra installs both libraries.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

TORCHIO_CONTROL_POINTS = 7
MONAI_2D_SPACING_FRACTION = 1 / 8  # control-point spacing as a fraction of the image size
MONAI_3D_SIGMA_FRACTION = 1 / 16  # Gaussian smoothing sigma as a fraction of the image size


@dataclass
class Draw:
    output: np.ndarray  # the library's deformed image, float32, same shape as the input
    field: np.ndarray  # (n, *S) pull displacement in voxels
    seconds: float  # the library's transform call alone (field + resampling)


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise InputError(
            f"the comparison needs {module}: install it with "
            f"`pip install napari-deformdiff[compare]` (or `pip install torchio monai`)."
        ) from None


class TorchIOElastic:
    name = "TorchIO RandomElasticDeformation"
    parameter = "max_displacement (vox)"

    def __init__(self, ndims: int, control_points: int = TORCHIO_CONTROL_POINTS):
        self.ndims = ndims
        self.control_points = control_points

    def draw(self, image: np.ndarray, magnitude: float, seed: int) -> Draw:
        _need("torchio")
        import SimpleITK as sitk
        import torchio as tio

        if image.ndim != self.ndims:
            raise InputError(f"expected a {self.ndims}D image, got shape {image.shape}.")
        tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32))
        tensor = tensor[None, ..., None] if self.ndims == 2 else tensor[None]
        subject = tio.Subject(image=tio.ScalarImage(tensor=tensor, affine=np.eye(4)))
        transform = tio.RandomElasticDeformation(
            num_control_points=self.control_points, max_displacement=float(magnitude), locked_borders=2)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*folding may occur", category=RuntimeWarning)
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            out = transform(subject)
            seconds = time.perf_counter() - t0
        applied = out.get_applied_transforms()[-1]  # the ElasticDeformation with the drawn control points
        output = out["image"].data[0].numpy()
        output = output[..., 0] if self.ndims == 2 else output
        reference = tio.data.io.nib_to_sitk(tensor, np.eye(4), force_3d=True)
        bspline = applied.get_bspline_transform(reference)
        disp = sitk.TransformToDisplacementField(
            bspline, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
            reference.GetSpacing(), reference.GetDirection())
        phys = sitk.GetArrayFromImage(disp)  # (k, j, i, 3): sitk array order, physical x, y, z
        phys = np.transpose(phys, (2, 1, 0, 3))  # (i, j, k, 3): tensor axes of the TorchIO image
        direction = np.asarray(reference.GetDirection()).reshape(3, 3)
        spacing = np.asarray(reference.GetSpacing())
        index = (phys @ direction) / spacing  # index-space displacement, component c along tensor axis c
        field = np.moveaxis(index, -1, 0).astype(np.float32)
        if self.ndims == 2:
            field = field[:2, :, :, 0]
        return Draw(output.astype(np.float32), field, seconds)


class MonaiElastic:
    parameter = "magnitude (vox)"

    def __init__(self, ndims: int):
        self.ndims = ndims
        self.name = f"MONAI Rand{ndims}DElastic"

    def _transform(self, shape: Sequence[int], magnitude: float):
        _need("monai")
        from monai.transforms import Rand2DElastic, Rand3DElastic

        m = (float(magnitude), float(magnitude))
        if self.ndims == 2:
            spacing = tuple(max(2, round(s * MONAI_2D_SPACING_FRACTION)) for s in shape)
            return Rand2DElastic(spacing=spacing, magnitude_range=m, prob=1.0, padding_mode="border")
        sigma = max(1.0, min(shape) * MONAI_3D_SIGMA_FRACTION)
        return Rand3DElastic(sigma_range=(sigma, sigma), magnitude_range=m, prob=1.0, padding_mode="border")

    def draw(self, image: np.ndarray, magnitude: float, seed: int) -> Draw:
        _need("monai")
        from monai.transforms.utils import create_grid

        if image.ndim != self.ndims:
            raise InputError(f"expected a {self.ndims}D image, got shape {image.shape}.")
        transform = self._transform(image.shape, magnitude)
        transform.set_random_state(seed)
        captured = {}
        resample = transform.resampler

        def capture(img, grid, **kwargs):
            captured["grid"] = torch.as_tensor(grid).detach().clone()
            return resample(img, grid, **kwargs)

        transform.resampler = capture
        tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]
        t0 = time.perf_counter()
        out = transform(tensor)
        seconds = time.perf_counter() - t0
        grid = captured["grid"].float()[: self.ndims]
        identity = torch.as_tensor(create_grid(image.shape, backend="torch"), dtype=torch.float32)[: self.ndims]
        field = (grid - identity).numpy()
        output = np.asarray(out)[0].astype(np.float32)
        return Draw(output, field, seconds)


def baselines(ndims: int) -> list:
    return [TorchIOElastic(ndims), MonaiElastic(ndims)]


def mean_displacement_pct(field: np.ndarray) -> float:
    """Mean over voxels of |u| with u_k in percent of the image size along axis k."""
    sizes = np.asarray(field.shape[1:], float).reshape(-1, *([1] * (field.ndim - 1)))
    return float(np.sqrt(((100.0 * field / sizes) ** 2).sum(0)).mean())


class MagnitudeTuner:
    """Finds the magnitude at which a baseline's mean |u| (mean over fixed draws) hits a target.

    Draw i uses images[i] and seeds[i]. Secant search from magnitude 1: the displacement is linear in
    the magnitude for fixed draws, so the first step lands within float error; further steps only
    guard against non-linearity. Results per magnitude are cached, so tuning to several targets
    costs one set of draws at magnitude 1 plus one per target.
    """

    def __init__(self, baseline, images: Sequence[np.ndarray], seeds: Sequence[int]):
        self.baseline, self.images, self.seeds = baseline, list(images), list(seeds)
        self.draws: dict[float, list[Draw]] = {}

    def run(self, magnitude: float) -> list[Draw]:
        if magnitude not in self.draws:
            self.draws[magnitude] = [self.baseline.draw(img, magnitude, s) for img, s in zip(self.images, self.seeds)]
        return self.draws[magnitude]

    def reached(self, magnitude: float) -> float:
        return float(np.mean([mean_displacement_pct(d.field) for d in self.run(magnitude)]))

    def tune(self, target_mean_pct: float, *, rtol: float = 0.005, max_iter: int = 8) -> float:
        if target_mean_pct <= 0:
            raise InputError("the target mean displacement must be positive.")
        m0, f0 = 1.0, self.reached(1.0)
        if f0 <= 0:
            raise InputError(f"{self.baseline.name} made no displacement at magnitude 1.")
        m1 = target_mean_pct / f0
        f1 = self.reached(m1)
        for _ in range(max_iter):
            if abs(f1 - target_mean_pct) <= rtol * target_mean_pct or f1 == f0:
                break
            m0, f0, m1 = m1, f1, m1 + (target_mean_pct - f1) * (m1 - m0) / (f1 - f0)
            f1 = self.reached(m1)
        for m in [k for k in self.draws if k not in (1.0, m1)]:
            del self.draws[m]  # keep memory bounded: only the unit draws and the answer
        return m1
