"""The Mo-Diff frame autoencoder: one frame <-> a latent downsampled 2x per level (KL-regularised)."""

from __future__ import annotations

import torch
from torch import nn

from ...nn.layers import conv
from .blocks import Down, ResBlock, Up, groups


class FrameVAE(nn.Module):
    """Encoder/decoder of single frames (B, 1, *S) <-> latents (B, C, *S / 2**levels)."""

    def __init__(self, ndims: int, widths: tuple[int, ...], latent_channels: int):
        super().__init__()
        Conv = conv(ndims)
        self.levels = len(widths) - 1
        self.enc_in = Conv(1, widths[0], 3, padding=1)
        enc = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [ResBlock(ndims, a, a), Down(ndims, a), ResBlock(ndims, a, b)]
        self.enc = nn.Sequential(*enc)
        self.enc_out = nn.Sequential(nn.GroupNorm(groups(widths[-1]), widths[-1]), nn.SiLU(),
                                     Conv(widths[-1], 2 * latent_channels, 3, padding=1))
        self.dec_in = Conv(latent_channels, widths[-1], 3, padding=1)
        dec = []
        for a, b in zip(widths[::-1][:-1], widths[::-1][1:]):
            dec += [ResBlock(ndims, a, b), Up(ndims, b), ResBlock(ndims, b, b)]
        self.dec = nn.Sequential(*dec)
        self.dec_out = nn.Sequential(nn.GroupNorm(groups(widths[0]), widths[0]), nn.SiLU(),
                                     Conv(widths[0], 1, 3, padding=1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the latent."""
        h = self.enc_out(self.enc(self.enc_in(x)))
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_out(self.dec(self.dec_in(z)))
