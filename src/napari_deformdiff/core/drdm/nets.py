"""RecResACNet: the DRDM recovery network (U-Net of atrous residual blocks), 2D or 3D.

Parameter names follow the authors' checkpoint layout (193 keys in 2D), so their published state
dict loads with strict key matching. The network outputs a displacement field in the AUTHORS'
units: channel k (tensor-axis order) is a fraction of the image size S_k, i.e. S_k * value voxels
(authors_to_voxels / voxels_to_authors convert). One call runs the U-Net twice with shared weights
(recursive refinement): ddf1 = net(x); ddf2 = net(x o ddf1); ddf2 + ddf1 o ddf2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import spatial
from ..nn.layers import check_ndims, conv, conv_transpose

SLOPE = 1e-6


def sinusoid_table(steps: int, dim: int) -> torch.Tensor:
    """(steps, dim) table of the authors: column c = sin(p w_c) for even c, cos(p w_(c-1)) for odd c.

    w_c = 10000^(-2c/dim) for the even column index c (so both columns of a pair share w_c).
    """
    pos = torch.arange(steps, dtype=torch.float64)[:, None]
    j = torch.arange(0, dim, 2, dtype=torch.float64)
    angles = pos / torch.pow(10000.0, 2.0 * j / dim)
    table = torch.zeros(steps, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table.float()


def _channel_scale(shape, n: int, ref: torch.Tensor, invert: bool) -> torch.Tensor:
    values = [1.0 / float(s) if invert else float(s) for s in shape]
    return torch.tensor(values, dtype=ref.dtype, device=ref.device).view(1, n, *([1] * n))


def authors_to_voxels(ddf: torch.Tensor, shape=None) -> torch.Tensor:
    """Authors' units (fraction of the image size per axis) -> voxels: channel k times S_k."""
    n = ddf.shape[1]
    shape = tuple(ddf.shape[2:]) if shape is None else tuple(shape)
    return ddf * _channel_scale(shape, n, ddf, invert=False)


def voxels_to_authors(ddf: torch.Tensor, shape=None) -> torch.Tensor:
    """Voxels -> authors' units: channel k divided by S_k."""
    n = ddf.shape[1]
    shape = tuple(ddf.shape[2:]) if shape is None else tuple(shape)
    return ddf * _channel_scale(shape, n, ddf, invert=True)


class AtrousBlock(nn.Module):
    """conv0 3x3 (-> InstanceNorm) = x; two 3x3 convs (dilation 1, 3) each after LeakyReLU; LeakyReLU(h + x)."""

    def __init__(self, ndims: int, cin: int, cout: int, norm: bool):
        super().__init__()
        Conv = conv(ndims)
        norm_layer = nn.InstanceNorm2d if ndims == 2 else nn.InstanceNorm3d
        self.ln = norm_layer(cout, affine=True) if norm else None
        self.conv0 = Conv(cin, cout, 3, padding=1)
        self.convs = nn.ModuleList([Conv(cout, cout, 3, padding=d, dilation=d) for d in (1, 3)])
        self.act = nn.LeakyReLU(SLOPE)
        self.eager_fast_path = True  # False for a copy that torch.compile traces (it fuses itself)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eager_fast_path and torch.is_inference_mode_enabled():
            return self._inference_forward(x)
        x = self.conv0(x).to(self.convs[0].weight.dtype)  # a no-op unless mixed precision
        if self.ln is not None:
            x = self.ln(x)
        h = x
        for c in self.convs:
            h = c(self.act(h))
        return self.act(h + x)

    def _inference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same values as forward, fewer passes over memory: in-place activations and a two-pass
        instance norm that keeps the input's memory format (channels-last stays channels-last)."""
        x = _conv(self.conv0, x).to(self.convs[0].weight.dtype)
        if self.ln is not None:
            x = _instance_norm_(x, self.ln)  # x is the fresh convolution output
        h = _conv(self.convs[0], F.leaky_relu(x, SLOPE))
        h = _conv(self.convs[1], F.leaky_relu_(h, SLOPE))
        return F.leaky_relu_(h.add_(x), SLOPE)


def _conv(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x); for float32 on the CPU straight through oneDNN, whose kernels PyTorch's backend
    choice skips for small inputs (N*C*D*H <= 20480 in 3D): there the native kernel is ~10x slower."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and isinstance(layer, (nn.Conv2d, nn.Conv3d)) and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)):
        return torch.ops.aten.mkldnn_convolution(x, layer.weight, layer.bias, layer.padding, layer.stride,
                                                 layer.dilation, layer.groups)
    return layer(x)


def _instance_norm_(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """InstanceNorm (biased variance, affine) in place on x: centre, centred mean of squares, scale."""
    dims = tuple(range(2, x.ndim))
    x.sub_(x.mean(dim=dims, keepdim=True))
    var = torch.linalg.vector_norm(x, dim=dims, keepdim=True).square_().div_(math.prod(x.shape[2:]))
    view = (1, -1) + (1,) * len(dims)
    return x.mul_(norm.weight.view(view) * torch.rsqrt(var + norm.eps)).add_(norm.bias.view(view))


def _stage(ndims: int, channels, norm: bool) -> nn.Sequential:
    return nn.Sequential(*[AtrousBlock(ndims, a, b, norm) for a, b in zip(channels[:-1], channels[1:])])


def _time_mlp(embed_dim: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, c), nn.ReLU(), nn.Linear(c, c))


class RecResACNet(nn.Module):
    def __init__(self, ndims: int = 2, steps: int = 80, embed_dim: int = 100):
        super().__init__()
        self.ndims = check_ndims(ndims)
        self.steps = int(steps)
        self.embed_dim = int(embed_dim)
        Conv, ConvT = conv(ndims), conv_transpose(ndims)
        self.time_embed = nn.Embedding(self.steps, self.embed_dim)
        self.time_embed.weight.data.copy_(sinusoid_table(self.steps, self.embed_dim))
        self.time_embed.weight.requires_grad_(False)

        self.te1 = _time_mlp(embed_dim, 1)
        self.b1 = _stage(ndims, (1, 10, 10, 10), True)
        self.down1 = Conv(10, 10, 4, stride=2, padding=1)
        self.te2 = _time_mlp(embed_dim, 10)
        self.b2 = _stage(ndims, (10, 20, 20, 20), True)
        self.down2 = Conv(20, 20, 4, stride=2, padding=1)
        self.te3 = _time_mlp(embed_dim, 20)
        self.b3 = _stage(ndims, (20, 40, 40, 40), True)
        self.down3 = Conv(40, 40, 4, stride=2, padding=1)
        self.te_mid = _time_mlp(embed_dim, 40)
        self.b_mid = _stage(ndims, (40, 20, 20, 40), True)
        self.up1 = ConvT(40, 40, 4, stride=2, padding=1)
        self.te4 = _time_mlp(embed_dim, 80)
        self.b4 = _stage(ndims, (80, 40, 20, 20), False)
        self.up2 = ConvT(20, 20, 4, stride=2, padding=1)
        self.te5 = _time_mlp(embed_dim, 40)
        self.b5 = _stage(ndims, (40, 20, 10, 10), False)
        self.up3 = ConvT(10, 10, 4, stride=2, padding=1)
        self.te_out = _time_mlp(embed_dim, 20)
        self.b_out = _stage(ndims, (20, 10, 10, 10), False)
        self.conv_out = Conv(10, ndims, 3, padding=1)
        self.eager_fast_path = True

    def set_eager_fast_path(self, on: bool) -> RecResACNet:
        """Turn the in-place inference path (used under torch.inference_mode) on or off; off for
        tracing by torch.compile, which fuses the plain ops itself."""
        for m in self.modules():
            if hasattr(m, "eager_fast_path"):
                m.eager_fast_path = bool(on)
        return self

    def weight_device(self) -> torch.device:
        return self.conv_out.weight.device

    def to_mixed_bfloat16(self) -> RecResACNet:
        """bfloat16 everywhere except the input convolution and its time term (float32).

        The network reads fine intensity differences: rounding its input image to bfloat16 alone
        changes its output by about 5 %, all the rest in bfloat16 by about 1.6 %.
        """
        self.to(torch.bfloat16)
        for m in (self.b1[0].conv0, self.te1, self.time_embed):
            m.float()
        return self

    def _t(self, mlp: nn.Module, emb: torch.Tensor) -> torch.Tensor:
        out = mlp(emb.to(mlp[0].weight.dtype))
        return out.view(*out.shape, *([1] * self.ndims))

    def single(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One U-Net pass: (B, 1, *S), t (B,) -> (B, ndims, *S) in authors' units.

        Decoder inputs are cat([skip, upsampled]) (skip first: the order the published weights need).
        """
        emb = self.time_embed(t)
        fast = self.eager_fast_path and torch.is_inference_mode_enabled()
        add = torch.Tensor.add_ if fast else torch.add  # fresh intermediate tensors take the time terms in place
        h1 = self.b1(x + self._t(self.te1, emb))
        h2 = self.b2(add(self.down1(h1), self._t(self.te2, emb)))
        h3 = self.b3(add(self.down2(h2), self._t(self.te3, emb)))
        m = self.b_mid(self.down3(h3) * self._t(self.te_mid, emb))
        u = self.b4(add(torch.cat([h3, self.up1(m)], dim=1), self._t(self.te4, emb)))
        u = self.b5(add(torch.cat([h2, self.up2(u)], dim=1), self._t(self.te5, emb)))
        u = self.b_out(add(torch.cat([h1, self.up3(u)], dim=1), self._t(self.te_out, emb)))
        out = _conv(self.conv_out, u) if fast else self.conv_out(u)
        return out.to(x.dtype)

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.ndims + 2 or x.shape[1] != 1:
            raise ValueError(f"expected x of shape (B, 1, *S) with {self.ndims} spatial dims, got {tuple(x.shape)}")
        if any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"spatial sizes must be divisible by 8, got {tuple(x.shape[2:])}")
        t = torch.as_tensor(t, device=x.device).long().reshape(-1)
        if t.numel() == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise ValueError(f"t must have one entry per batch item ({x.shape[0]}), got {t.numel()}")
        if int(t.min()) < 0 or int(t.max()) >= self.steps:
            raise ValueError(f"t must be in [0, {self.steps - 1}], got {t.tolist()}")
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Recursive two-pass recovery field (B, ndims, *S) in authors' units."""
        return recursive_refinement(self.single, x, self._check(x, t))


def recursive_refinement(single, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The authors' two passes of one U-Net `single(x, t)` (authors' units), the field algebra in
    x's dtype: ddf1 = single(x); ddf2 = single(x o ddf1); ddf2 + ddf1 o ddf2."""
    shape = x.shape[2:]
    ddf1 = authors_to_voxels(single(x, t), shape)
    x2 = spatial.warp(x, ddf1, padding_mode="border")
    ddf2 = authors_to_voxels(single(x2, t), shape)
    return voxels_to_authors(spatial.compose(ddf1, ddf2, padding_mode="border"), shape)
