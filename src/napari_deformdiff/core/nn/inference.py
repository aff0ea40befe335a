"""Inference-only speed-ups that leave a model's outputs unchanged (up to float rounding)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ZeroPaddedInputConv(nn.Module):
    """A conv with few input channels run as one with `to` channels (zero weights, zero inputs).

    oneDNN takes a much faster path for 8+ input channels on CPU; the extra channels add exactly 0.
    """

    def __init__(self, conv: nn.Module, to: int = 8):
        super().__init__()
        extra = to - conv.in_channels
        weight = conv.weight.detach()
        pad = torch.zeros(weight.shape[0], extra, *weight.shape[2:], dtype=weight.dtype, device=weight.device)
        self.extra = extra
        self.inner = type(conv)(to, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                padding=conv.padding, bias=conv.bias is not None).to(weight.device)
        with torch.no_grad():
            self.inner.weight.copy_(torch.cat([weight, pad], dim=1))
            if conv.bias is not None:
                self.inner.bias.copy_(conv.bias.detach())

    def forward(self, x):
        zeros = x.new_zeros(x.shape[0], self.extra, *x.shape[2:])
        return self.inner(torch.cat([x, zeros], dim=1))


def fast_copy(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of a DDM for inference on the CPU (the original is untouched)."""
    fast = copy.deepcopy(model).eval()
    unet = getattr(fast, "denoise_fn", None)
    if unet is not None and fast.weight_device().type == "cpu":
        first = unet.downs[0]
        if first.in_channels < 8:
            unet.downs[0] = ZeroPaddedInputConv(first)
    if channels_last and fast.ndims == 3:
        fast = fast.to(memory_format=torch.channels_last_3d)
    return fast


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x


__all__ = ["ZeroPaddedInputConv", "fast_copy", "as_channels_last"]
