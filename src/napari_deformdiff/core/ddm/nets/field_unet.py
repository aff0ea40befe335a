"""The DDM / DiffuseMorph deformation module: a VoxelMorph-1-style U-Net on [source, code].

Names follow the authors' checkpoints (``field_fn.*``): inconv, downconv1-4, upconv1-4 (transposed
conv + conv block on the skip concatenation), keepblock, outconv. Output: a displacement field in
voxels, channels in tensor-axis order, no integration.

Every up block concatenates the SKIP features first, then the upsampled ones, as the authors'
network does. Our code before this fix put the upsampled features first; the shapes are the
same, so such weights load either way but only compute what they were trained to compute after
`skip_first_from_up_first` (exact: a permutation of the input channels of the four convolutions
that read the concatenation).
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.layers import check_ndims, conv, conv_transpose


class ConvBlock(nn.Module):
    """conv (k3) -> LeakyReLU(0.2)."""

    def __init__(self, ndims: int, dim: int, dim_out: int, stride: int = 1):
        super().__init__()
        self.block = nn.Sequential(conv(ndims)(dim, dim_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.conv_act(x)

    def conv_act(self, x, weight=None):
        """act(conv(x)), with `weight` in place of the conv's weight if given (bias kept); in one call
        where the conv is an inference copy's oneDNN one."""
        layer, act = self.block
        fused = getattr(layer, "leaky_relu", None)
        if fused is not None:
            return fused(x, act.negative_slope, weight)
        if weight is None:
            return act(layer(x))
        conv_nd = nn.functional.conv3d if weight.ndim == 5 else nn.functional.conv2d
        return act(conv_nd(x, weight, layer.bias, layer.stride, layer.padding))


class EncoderBlock(nn.Module):
    def __init__(self, ndims: int, dim: int, dim_out: int, stride: int):
        super().__init__()
        self.block = ConvBlock(ndims, dim, dim_out, stride)

    def forward(self, x):
        return self.block(x)


class UpBlock(nn.Module):
    """Transposed conv (x2), concatenate the skip, conv block."""

    def __init__(self, ndims: int, dim: int, skip: int, dim_out: int):
        super().__init__()
        self.upconv = conv_transpose(ndims)(dim, dim, 3, stride=2, padding=1, output_padding=1)
        self.block = ConvBlock(ndims, dim + skip, dim_out)

    def forward(self, x, skip):
        return self.block(torch.cat([skip, self.upconv(x)], dim=1))


UP_BLOCKS = ("upconv1", "upconv2", "upconv3", "upconv4")


def skip_first_from_up_first(state: dict[str, torch.Tensor], prefix: str = "field_fn.") -> dict[str, torch.Tensor]:
    """A copy of `state` with the deformation module's weights moved from the old concatenation
    order cat[up, skip] to the authors' cat[skip, up]: the same outputs up to float rounding.

    Only the input channels of the four convolutions that read the concatenation are permuted;
    every other tensor is passed through. The number of upsampled channels is read from the
    transposed conv of the same block (weight shape (in, out, *k)). Works on any tensors keyed
    like the parameters (e.g. Adam's moments), as long as both weights of a block are present.
    """
    out = dict(state)
    for name in UP_BLOCKS:
        key = f"{prefix}{name}.block.block.0.weight"
        up_key = f"{prefix}{name}.upconv.weight"
        if key not in state and up_key not in state:
            continue
        w, up = state[key], state[up_key].shape[1]
        if not 0 < up < w.shape[1]:
            raise ValueError(f"{key} has {w.shape[1]} input channels: no room for {up} upsampled ones and a skip.")
        out[key] = torch.cat([w[:, up:], w[:, :up]], dim=1)
    return out


class OutConv(nn.Module):
    def __init__(self, ndims: int, dim: int):
        super().__init__()
        self.block = conv(ndims)(dim, ndims, 3, padding=1)
        # Start from (almost) zero displacement, as VoxelMorph does.
        nn.init.normal_(self.block.weight, std=1e-5)
        nn.init.zeros_(self.block.bias)

    def forward(self, x):
        return self.block(x)


class FieldUNet(nn.Module):
    """[source, code] (B, 2, *S) -> displacement (B, ndims, *S) in voxels. S divisible by 16."""

    def __init__(self, ndims: int = 3, *, in_channel: int = 2, enc=(16, 32, 32, 32, 32), dec=(32, 32, 32, 8, 8)):
        super().__init__()
        check_ndims(ndims)
        self.inconv = EncoderBlock(ndims, in_channel, enc[0], 1)
        self.downconv1 = EncoderBlock(ndims, enc[0], enc[1], 2)
        self.downconv2 = EncoderBlock(ndims, enc[1], enc[2], 2)
        self.downconv3 = EncoderBlock(ndims, enc[2], enc[3], 2)
        self.downconv4 = EncoderBlock(ndims, enc[3], enc[4], 2)
        self.upconv1 = UpBlock(ndims, enc[4], enc[3], dec[0])
        self.upconv2 = UpBlock(ndims, dec[0], enc[2], dec[1])
        self.upconv3 = UpBlock(ndims, dec[1], enc[1], dec[2])
        self.keepblock = ConvBlock(ndims, dec[2], dec[3])
        self.upconv4 = UpBlock(ndims, dec[3], enc[0], dec[4])
        self.outconv = OutConv(ndims, dec[4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._decode(self.inconv(x))

    def scaled_code_fields(self, source: torch.Tensor, code: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
        """forward(cat[source, g * code]) for every g in `gammas` (B = len(gammas)), source/code batch 1.

        The first convolution is linear in its input, so its source and code parts are computed
        once and only combined per gamma.
        """
        first = self.inconv.block.block[0]
        w, b = first.weight, first.bias
        convolve = getattr(first, "convolve", None)  # an inference copy's oneDNN convolution
        if convolve is None:
            conv_nd = torch.nn.functional.conv3d if w.ndim == 5 else torch.nn.functional.conv2d
            convolve = lambda x, weight, bias: conv_nd(x, weight, bias, padding=1)  # noqa: E731
        from_source = convolve(source, w[:, :1], b)
        from_code = convolve(code, w[:, 1:], None)
        g = gammas.reshape(-1, *([1] * (source.ndim - 1))).to(from_code)
        x0 = self.inconv.block.block[1](from_source + g * from_code)
        return self._decode(x0)

    def zero_code_field(self, source: torch.Tensor) -> torch.Tensor:
        """forward(cat[source, 0]), the field at gamma = 0, without the code's half of the first conv."""
        return self._decode(self.inconv.block.conv_act(source, self.inconv.block.block[0].weight[:, :1]))

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        x1 = self.downconv1(x0)
        x2 = self.downconv2(x1)
        x3 = self.downconv3(x2)
        x4 = self.downconv4(x3)
        y = self.upconv1(x4, x3)
        y = self.upconv2(y, x2)
        y = self.upconv3(y, x1)
        y = self.keepblock(y)
        y = self.upconv4(y, x0)
        return self.outconv(y)
