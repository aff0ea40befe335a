"""Tiny Mo-Diff models and phantom sequences for fast tests."""

from __future__ import annotations

import numpy as np
import torch

from napari_deformdiff.core.modiff.nets.modiff import MoDiff, ModiffConfig
from napari_deformdiff.core.phantom.dataset import write_phantom_dataset


def tiny_config(ndims: int = 2, **kw) -> ModiffConfig:
    base = dict(ndims=ndims, grid=(32, 32) if ndims == 2 else (8, 16, 16),
                spacing=(4.0, 4.0) if ndims == 2 else (12.0, 8.0, 8.0), min_frames=3, max_frames=6,
                vae_widths=(8, 16), latent_channels=2, field_factor=2, tddm_widths=(8, 16),
                video_widths=(8, 16), emb=16, heads=2, timesteps=50)
    base.update(kw)
    return ModiffConfig(**base)


def tiny_model(ndims: int = 2, seed: int = 0, randomize: bool = True, **kw) -> MoDiff:
    """A tiny model; `randomize` also fills the zero-initialised output and fusion layers, so that
    outputs depend on every input (an untrained model with zero heads ignores them)."""
    torch.manual_seed(seed)
    model = MoDiff(tiny_config(ndims, **kw)).eval()
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.abs().sum():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def phantom_sequences(folder, cases: int = 3, seed: int = 0, frames: int = 12):
    """ACDC folders of small 2D cardiac phantoms (48 x 48 at 3.2 mm); ED..ES holds 5 frames at 12."""
    list(write_phantom_dataset(folder, cases=cases, seed=seed, two_d=True, frames=frames, shape=(48, 48),
                               spacing=(3.2, 3.2), fields=False))
    return folder


def first_frame(shape=(40, 44), spacing=(3.5, 3.0), seed=0):
    from napari_deformdiff.core.geometry import Geometry
    from napari_deformdiff.core.io.volume import Volume

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    image = np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) / 60.0) + 0.05 * rng.random(shape)
    direction = np.array([[0.0, 1.0], [1.0, 0.0]])
    geometry = Geometry(tuple(spacing), (10.0, -4.0), direction)
    return Volume(image.astype(np.float32), geometry, False, "first")
