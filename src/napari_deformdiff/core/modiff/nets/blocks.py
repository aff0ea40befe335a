"""Building blocks shared by the Mo-Diff networks (2D or 3D by `ndims`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...nn.layers import conv


def groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def sinusoid(values: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) float positions or timesteps -> (B, dim) sine/cosine features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    angles = values.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """Diffusion timestep -> embedding vector (sinusoid + MLP)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.dim))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual; an optional embedding shifts the features."""

    def __init__(self, ndims: int, cin: int, cout: int, emb: int = 0):
        super().__init__()
        Conv = conv(ndims)
        self.norm1 = nn.GroupNorm(groups(cin), cin)
        self.conv1 = Conv(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout) if emb else None
        self.norm2 = nn.GroupNorm(groups(cout), cout)
        self.conv2 = Conv(cout, cout, 3, padding=1)
        self.skip = Conv(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb).reshape(*emb.shape[:1], -1, *([1] * (h.ndim - 2)))
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class Down(nn.Module):
    def __init__(self, ndims: int, channels: int):
        super().__init__()
        self.conv = conv(ndims)(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, ndims: int, channels: int):
        super().__init__()
        self.conv = conv(ndims)(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
