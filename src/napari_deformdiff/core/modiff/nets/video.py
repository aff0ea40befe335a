"""Mo-Diff stage 2: the image-to-video latent denoiser.

A light U-Net over latent videos (B, C, T, *S) whose blocks separate space and time (a spatial
conv per frame, then a 1D conv along time per voxel, P3D style). It sees the first frame's latent
(concatenated to every frame and encoded once per level) and the differential fields through a
field augmented layer (FAL): the accumulated fields modulate ("warp") the first frame's features
into one guess per frame, these guesses are interleaved with the frame features along time, and
an attention along time takes its queries from the frame features and its keys and values from
the interleaved sequence. Ablation `fal="concat"`: the fields are fused by channel
concatenation and a 1x1 conv instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.layers import conv
from .blocks import ResBlock, TimeEmbedding, groups, sinusoid


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a spatial module to every frame of (B, C, T, *S)."""
    b, _, t = x.shape[:3]
    flat = x.transpose(1, 2).reshape(b * t, x.shape[1], *x.shape[3:])
    out = fn(flat)
    return out.reshape(b, t, *out.shape[1:]).transpose(1, 2)


def pool(x: torch.Tensor, ndims: int) -> torch.Tensor:
    return (nn.functional.avg_pool2d if ndims == 2 else nn.functional.avg_pool3d)(x, 2)


class P3DBlock(nn.Module):
    """Per-frame norm and spatial conv, then a temporal conv: frames only meet in the latter."""

    def __init__(self, ndims: int, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups(cin), cin)
        self.spatial = conv(ndims)(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(groups(cout), cout)
        self.temporal = nn.Conv1d(cout, cout, 3, padding=1)
        self.skip = conv(ndims)(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = per_frame(lambda f: self.spatial(self.act(self.norm1(f))), x)
        h = h + self.emb(emb).reshape(emb.shape[0], -1, *([1] * (h.ndim - 2)))
        h = per_frame(lambda f: self.act(self.norm2(f)), h)
        b, c, t = h.shape[:3]
        seq = h.reshape(b, c, t, -1).permute(0, 3, 1, 2).reshape(-1, c, t)
        seq = self.temporal(seq)
        h = seq.reshape(b, -1, c, t).permute(0, 2, 3, 1).reshape(h.shape)
        return h + per_frame(self.skip, x)


class FieldAugmented(nn.Module):
    """h (B,C,T,*S), first-frame features c (B,C,*S), accumulated fields f (B,T,*S) -> h + attention."""

    def __init__(self, ndims: int, channels: int, heads: int, mode: str = "fal"):
        super().__init__()
        if mode not in ("fal", "concat"):
            raise ValueError(f"fal must be 'fal' or 'concat', got {mode!r}")
        Conv = conv(ndims)
        self.mode = mode
        if mode == "fal":
            self.warp = nn.Sequential(Conv(1, channels, 3, padding=1), nn.SiLU(), Conv(channels, 2 * channels, 3, padding=1))
            self.norm_q = nn.LayerNorm(channels)
            self.norm_kv = nn.LayerNorm(channels)
            self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
            self.proj = nn.Linear(channels, channels)
        else:
            self.proj = Conv(2 * channels + 1, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, first: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        b, c, t = h.shape[:3]
        if self.mode == "concat":
            cat = torch.cat([h, first.unsqueeze(2).expand_as(h), fields.unsqueeze(1)], 1)
            return h + per_frame(self.proj, cat)
        scale, shift = per_frame(self.warp, fields.unsqueeze(1)).chunk(2, dim=1)
        warped = first.unsqueeze(2) * (1.0 + scale) + shift  # (B, C, T, *S)
        tokens_h = h.reshape(b, c, t, -1).permute(0, 3, 2, 1).reshape(-1, t, c)
        tokens_w = warped.reshape(b, c, t, -1).permute(0, 3, 2, 1).reshape(-1, t, c)
        pos = sinusoid(torch.arange(2 * t, device=h.device), c).to(h.dtype)
        kv = torch.stack([tokens_w, tokens_h], dim=2).reshape(-1, 2 * t, c) + pos  # w_0, h_0, w_1, h_1, ...
        q = self.norm_q(tokens_h + pos[1::2])
        out, _ = self.attn(q, self.norm_kv(kv), self.norm_kv(kv), need_weights=False)
        out = self.proj(out).reshape(b, -1, t, c).permute(0, 3, 2, 1).reshape(h.shape)
        return h + out


class LatentVideoUNet(nn.Module):
    def __init__(self, ndims: int, latent_channels: int, widths: tuple[int, ...], emb: int = 128,
                 heads: int = 4, fal: str = "fal"):
        super().__init__()
        Conv = conv(ndims)
        self.ndims = ndims
        self.time = TimeEmbedding(emb)
        self.inp = Conv(2 * latent_channels, widths[0], 3, padding=1)
        self.first_in = Conv(latent_channels, widths[0], 3, padding=1)
        self.first_blocks = nn.ModuleList()
        self.down_blocks, self.down_fal, self.downs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            a = widths[max(i - 1, 0)]
            self.first_blocks.append(ResBlock(ndims, a, w))
            self.down_blocks.append(P3DBlock(ndims, a, w, emb))
            self.down_fal.append(FieldAugmented(ndims, w, heads, fal))
            self.downs.append(Conv(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.mid = P3DBlock(ndims, widths[-1], widths[-1], emb)
        self.mid_fal = FieldAugmented(ndims, widths[-1], heads, fal)
        self.up_blocks, self.ups = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            out = widths[max(i - 1, 0)]
            self.up_blocks.append(P3DBlock(ndims, widths[i] * 2, out, emb))
            self.ups.append(Conv(out, out, 3, padding=1) if i > 0 else nn.Identity())
        self.out_norm = nn.GroupNorm(groups(widths[0]), widths[0])
        self.out = Conv(widths[0], latent_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, first: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """z: (B, C, T, *L) noisy latents; first: (B, C, *L) first-frame latent; fields: (B, T, *L)
        accumulated differential fields at latent resolution."""
        emb = self.time(t)
        h = per_frame(self.inp, torch.cat([z, first.unsqueeze(2).expand_as(z)], 1))
        c = self.first_in(first)
        skips = []
        for i, (block, fal, down) in enumerate(zip(self.down_blocks, self.down_fal, self.downs)):
            c = self.first_blocks[i](c)
            h = fal(block(h, emb), c, fields)
            skips.append(h)
            if i < len(self.downs) - 1:
                h = per_frame(down, h)
                c = down(c)
                fields = per_frame(lambda f: pool(f, self.ndims), fields.unsqueeze(1)).squeeze(1)
        h = self.mid_fal(self.mid(h, emb), c, fields)
        for block, up in zip(self.up_blocks, self.ups):
            h = block(torch.cat([h, skips.pop()], 1), emb)
            if not isinstance(up, nn.Identity):
                h = per_frame(lambda x: up(nn.functional.interpolate(x, scale_factor=2, mode="nearest")), h)
        return per_frame(lambda f: self.out(nn.functional.silu(self.out_norm(f))), h)
