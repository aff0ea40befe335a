"""Inference-only speed-ups that leave a model's outputs unchanged (up to float rounding)."""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import torch
from torch import nn

from .model_grid import GridMap


class OneDNNConv(nn.Module):
    """A (non-transposed) Conv2d/Conv3d that always runs oneDNN's kernel on the CPU.

    At batch 1 torch picks its slower native kernel for small inputs (few channels x depth x
    height); oneDNN computes the same convolution 1.5-3x faster there.
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def forward(self, x):
        return self.convolve(x, self.weight, self.bias)

    def convolve(self, x, weight, bias):
        """This convolution with other weights of the same kernel (e.g. a slice of the input channels)."""
        return torch.ops.aten.mkldnn_convolution(x, weight.contiguous(memory_format=self._layout(x)), bias, *self.args)

    def _layout(self, x):
        """x's memory format; this weight's where x has one channel (contiguous in both layouts), so
        that a channels-last model stays channels-last after it (the DDM deformation module's
        decoder ran NCDHW after its one-channel source, 1.5-2x slower)."""
        if x.ndim == 5 and x.shape[1] == 1 and self.weight.is_contiguous(memory_format=torch.channels_last_3d) \
                and not self.weight.is_contiguous():
            return torch.channels_last_3d
        return _layout(x)

    def leaky_relu(self, x, slope: float, weight=None):
        """leaky_relu(convolve(x, weight or this weight, this bias)) in one oneDNN call (the activation
        as a post-op of the convolution). About 2x faster than the two steps for the 3D DDM
        deformation module on the CPU (channels-last). The op is torch's internal one (used by its
        compiler): checked before use, the two steps where it fails."""
        weight = self.weight if weight is None else weight
        if not _fused_leaky_relu_works(x.ndim):
            return nn.functional.leaky_relu(self.convolve(x, weight, self.bias), slope)
        return torch.ops.mkldnn._convolution_pointwise(x, weight.contiguous(memory_format=self._layout(x)), self.bias,
                                                       *self.args, "leaky_relu", [slope], "")


class OneDNNConvTranspose(nn.Module):
    """A ConvTranspose2d/3d run by oneDNN's deconvolution (torch's own CPU kernel is 1.6-2x slower
    here). The op is torch's internal one (used by its compiler): checked before use."""

    def __init__(self, conv: nn.ConvTranspose2d | nn.ConvTranspose3d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.args = (list(conv.padding), list(conv.output_padding), list(conv.stride), list(conv.dilation),
                     conv.groups)

    def forward(self, x):
        return torch.ops.mkldnn._convolution_transpose_pointwise(x, self.weight, self.bias, *self.args,
                                                                 "none", [], "")


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


@functools.cache
def _onednn_works(wrapper: type[nn.Module], conv: type[nn.Module]) -> bool:
    """Does `wrapper` compute what `conv` computes in this torch (a tiny case)?"""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        kw = {"output_padding": 1} if conv is nn.ConvTranspose3d else {}
        layer = conv(2, 2, 3, stride=2, padding=1, **kw)
        x = torch.rand(1, 2, 4, 4, 4)
        with torch.no_grad():
            return torch.allclose(wrapper(layer)(x), layer(x), atol=1e-5)
    except (RuntimeError, AttributeError):
        return False


@functools.cache
def _fused_leaky_relu_works(ndim: int) -> bool:
    """Does oneDNN's convolution with a leaky_relu post-op compute conv then leaky_relu here (a tiny case)?"""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        layer = (nn.Conv2d if ndim == 4 else nn.Conv3d)(3, 2, 3, padding=1)
        x = torch.rand(1, 3, *(4,) * (ndim - 2)) - 0.5
        with torch.no_grad():
            fused = OneDNNConv(layer)
            out = torch.ops.mkldnn._convolution_pointwise(x, layer.weight, layer.bias, *fused.args, "leaky_relu",
                                                          [0.2], "")
            return torch.allclose(out, nn.functional.leaky_relu(layer(x), 0.2), atol=1e-5)
    except (RuntimeError, AttributeError):
        return False


def use_onednn_convs(module: nn.Module) -> nn.Module:
    """Replace, in place, every plain float32 (transposed) convolution of a CPU module by its oneDNN one.

    Leaves the module as it is (with a warning) where this torch has no working oneDNN.
    """
    wrappers = {}
    if _onednn_works(OneDNNConv, nn.Conv3d):
        wrappers.update({nn.Conv2d: OneDNNConv, nn.Conv3d: OneDNNConv})
    else:
        warnings.warn("oneDNN convolutions are not available in this torch; using its default kernels.",
                      RuntimeWarning, stacklevel=2)
    if _onednn_works(OneDNNConvTranspose, nn.ConvTranspose3d):
        wrappers.update({nn.ConvTranspose2d: OneDNNConvTranspose, nn.ConvTranspose3d: OneDNNConvTranspose})
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if (type(child) in wrappers and child.padding_mode == "zeros"
                    and child.weight.device.type == "cpu" and child.weight.dtype == torch.float32):
                setattr(parent, name, wrappers[type(child)](child))
    return module


def fast_copy(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of a DDM for inference (the original is untouched).

    On the CPU every convolution runs oneDNN's kernel; 3D models also go channels-last.
    """
    fast = copy.deepcopy(model).eval()
    if fast.weight_device().type == "cpu":
        use_onednn_convs(fast)
    if channels_last and fast.ndims == 3:
        fast = fast.to(memory_format=torch.channels_last_3d)
    return fast


class SameGridMap(GridMap):
    """A GridMap whose input grid is the model grid (same shape and spacing): no resampling.

    grid_sample at the voxel centres returns the values up to float rounding; this returns them as
    they are, without the interpolation passes.
    """

    def _resample(self, values, src_shape, dst_shape, ratio, mode):
        return values


def grid_map(input_shape, input_spacing, model_shape, model_spacing) -> GridMap:
    """GridMap(...), or a SameGridMap where the input already is on the model grid."""
    grid = GridMap(tuple(input_shape), tuple(input_spacing), tuple(model_shape), tuple(model_spacing))
    if grid.input_shape == grid.model_shape and np.allclose(grid.ratio, 1.0, rtol=0, atol=1e-9):
        return SameGridMap(grid.input_shape, grid.input_spacing, grid.model_shape, grid.model_spacing)
    return grid


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x


__all__ = ["OneDNNConv", "OneDNNConvTranspose", "use_onednn_convs", "SameGridMap", "grid_map", "fast_copy", "as_channels_last"]
