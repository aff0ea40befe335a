"""The DDM / DiffuseMorph diffusion module: a DDPM U-Net on [source, target, x_t] with time embedding.

Module and parameter names follow the authors' 3D model (``denoise_fn.*`` in their checkpoints):
downs / mid / ups lists of residual blocks, ``Block = GroupNorm -> Swish -> (dropout) -> conv`` with
the conv at index 3, a time MLP whose first entry holds the sinusoid frequencies as a buffer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...nn.layers import check_ndims, conv


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of integer timesteps: [sin(t f), cos(t f)], f = 10000^(-2j/dim)."""

    def __init__(self, dim: int):
        super().__init__()
        inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1).float()[:, None] * self.inv_freq[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Block(nn.Module):
    def __init__(self, ndims: int, dim: int, dim_out: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            conv(ndims)(dim, dim_out, 3, padding=1),
        )

    def forward(self, x):
        return self.block(x)


class ResnetBlock(nn.Module):
    """block1 -> + per-channel bias from the time embedding -> block2, plus a (1x1) skip."""

    def __init__(self, ndims: int, dim: int, dim_out: int, time_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.ndims = ndims
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out))
        self.block1 = Block(ndims, dim, dim_out, groups)
        self.block2 = Block(ndims, dim_out, dim_out, groups, dropout)
        self.res_conv = conv(ndims)(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        h = self.block1(x)
        h = h + self.mlp(time_emb).reshape(*time_emb.shape[:1], -1, *([1] * self.ndims))
        h = self.block2(h)
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Multi-head linear attention (keys softmaxed over positions) with a residual connection."""

    def __init__(self, ndims: int, dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, dim)
        self.qkv = conv(ndims)(dim, dim * 3, 1, bias=False)
        self.out = conv(ndims)(dim, dim, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, -1)
        q, k, v = qkv.unbind(dim=1)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, c, *spatial)
        return self.out(out) + x


class ResnetBlocWithAttn(nn.Module):
    def __init__(self, ndims, dim, dim_out, *, time_dim, groups, dropout=0.0, with_attn=False, heads=4):
        super().__init__()
        self.res_block = ResnetBlock(ndims, dim, dim_out, time_dim, groups, dropout)
        self.attn = LinearAttention(ndims, dim_out, heads, groups) if with_attn else None

    def forward(self, x, time_emb):
        x = self.res_block(x, time_emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, ndims: int, dim: int):
        super().__init__()
        self.conv = conv(ndims)(dim, dim, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ndims: int, dim: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = conv(ndims)(dim, dim, 3, padding=1)

    def forward(self, x):
        return self.conv(self.up(x))


class DiffusionUNet(nn.Module):
    """Input (B, in_channel, *S) and integer timesteps (B,) -> (B, out_channel, *S).

    S must be divisible by 2 ** (len(channel_mults) - 1).
    """

    def __init__(self, ndims: int = 3, *, in_channel: int = 3, out_channel: int = 1, inner_channel: int = 8,
                 channel_mults=(1, 2, 4, 4), res_blocks: int = 1, norm_groups: int = 4, dropout: float = 0.0,
                 heads: int = 4):
        super().__init__()
        check_ndims(ndims)
        self.levels = len(channel_mults)
        time_dim = inner_channel
        self.time_mlp = nn.Sequential(
            TimeEmbedding(inner_channel),
            nn.Linear(inner_channel, inner_channel * 4),
            nn.SiLU(),
            nn.Linear(inner_channel * 4, inner_channel),
        )
        block = dict(time_dim=time_dim, groups=norm_groups, dropout=dropout)
        pre = inner_channel
        skips = [pre]
        downs: list[nn.Module] = [conv(ndims)(in_channel, inner_channel, 3, padding=1)]
        for level, mult in enumerate(channel_mults):
            width = inner_channel * mult
            for _ in range(res_blocks):
                downs.append(ResnetBlocWithAttn(ndims, pre, width, **block))
                skips.append(width)
                pre = width
            if level != self.levels - 1:
                downs.append(Downsample(ndims, pre))
                skips.append(pre)
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([
            ResnetBlocWithAttn(ndims, pre, pre, with_attn=True, heads=heads, **block),
            ResnetBlocWithAttn(ndims, pre, pre, **block),
        ])
        ups: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(channel_mults))):
            width = inner_channel * mult
            for _ in range(res_blocks + 1):
                ups.append(ResnetBlocWithAttn(ndims, pre + skips.pop(), width, **block))
                pre = width
            if level != 0:
                ups.append(Upsample(ndims, pre))
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(ndims, pre, out_channel, norm_groups)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        t = self.time_mlp(time)
        feats = []
        for layer in self.downs:
            x = layer(x, t) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, t)
        for layer in self.ups:
            if isinstance(layer, ResnetBlocWithAttn):
                x = layer(torch.cat([x, feats.pop()], dim=1), t)
            else:
                x = layer(x)
        return self.final_conv(x)
