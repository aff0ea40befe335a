"""Mo-Diff stage 1: the temporal differential diffusion network.

Denoises the stack of differential fields D_0..D_{M-1} (time as channels, padded to M frames),
conditioned on the first frame through prompt attention layers (PAL: features of the frame that
scale and shift the field features) and on the frame count N (an embedding added to the
timestep embedding). Ablations: `prompt="concat"` feeds the frame as an extra input channel
instead of PAL; `frame_count=False` drops the N embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.layers import conv
from .blocks import Down, ResBlock, TimeEmbedding, Up, groups


class PromptAttention(nn.Module):
    """Feature-level fusion: h * (1 + a(p)) + b(p), with p = GroupNorm(ReLU(conv(prompt)))."""

    def __init__(self, ndims: int, prompt_channels: int, channels: int):
        super().__init__()
        Conv = conv(ndims)
        self.features = nn.Sequential(Conv(prompt_channels, channels, 3, padding=1), nn.ReLU(),
                                      nn.GroupNorm(groups(channels), channels))
        self.scale = Conv(channels, channels, 1)
        self.shift = Conv(channels, channels, 1)
        for layer in (self.scale, self.shift):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.features(prompt)
        return h * (1.0 + self.scale(p)) + self.shift(p), p


class TemporalDifferentialUNet(nn.Module):
    def __init__(self, ndims: int, max_frames: int, widths: tuple[int, ...], emb: int = 128,
                 prompt: str = "pal", frame_count: bool = True):
        super().__init__()
        if prompt not in ("pal", "concat"):
            raise ValueError(f"prompt must be 'pal' or 'concat', got {prompt!r}")
        Conv = conv(ndims)
        self.prompt_mode, self.use_frame_count = prompt, frame_count
        self.time = TimeEmbedding(emb)
        self.count = nn.Embedding(max_frames + 1, emb) if frame_count else None
        cin = max_frames + (1 if prompt == "concat" else 0)
        self.inp = Conv(cin, widths[0], 3, padding=1)
        self.down_blocks, self.downs, self.pals = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        prompt_in = 1
        for i, w in enumerate(widths):
            a = widths[max(i - 1, 0)]
            self.down_blocks.append(ResBlock(ndims, a, w, emb))
            if prompt == "pal":
                self.pals.append(PromptAttention(ndims, prompt_in, w))
                prompt_in = w
            self.downs.append(Down(ndims, w) if i < len(widths) - 1 else nn.Identity())
        self.mid = ResBlock(ndims, widths[-1], widths[-1], emb)
        self.up_blocks, self.ups = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            out = widths[max(i - 1, 0)]
            self.up_blocks.append(ResBlock(ndims, widths[i] * 2, out, emb))
            self.ups.append(Up(ndims, out) if i > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(groups(widths[0]), widths[0]), nn.SiLU(),
                                 Conv(widths[0], max_frames, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, first: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """x: (B, M, *S) noisy fields; t: (B,) timesteps; first: (B, 1, *S); frames: (B,) counts N."""
        emb = self.time(t)
        if self.count is not None:
            emb = emb + self.count(frames.long())
        h = self.inp(torch.cat([x, first], 1) if self.prompt_mode == "concat" else x)
        prompt = first
        skips = []
        for i, (block, down) in enumerate(zip(self.down_blocks, self.downs)):
            h = block(h, emb)
            if self.prompt_mode == "pal":
                h, prompt = self.pals[i](h, prompt)
            skips.append(h)
            h = down(h)
            if self.prompt_mode == "pal" and i < len(self.downs) - 1:
                prompt = nn.functional.avg_pool2d(prompt, 2) if prompt.ndim == 4 else nn.functional.avg_pool3d(prompt, 2)
        h = self.mid(h, emb)
        for block, up in zip(self.up_blocks, self.ups):
            h = up(block(torch.cat([h, skips.pop()], 1), emb))
        return self.out(h)
