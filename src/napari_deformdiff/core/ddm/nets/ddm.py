"""DDM / DiffuseMorph: diffusion module + deformation module + the DDPM schedule, as one module.

The module's state dict has the authors' layout: the 12 schedule buffers at top level, then
``denoise_fn.*`` (DiffusionUNet) and ``field_fn.*`` (FieldUNet), so their 3D checkpoints load with
strict key matching. Images entering the networks are in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ... import spatial
from ...nn import draws
from ...nn.losses import folding_penalty, local_ncc, smoothness
from ...nn.config_json import JsonConfig
from .field_unet import FieldUNet
from .diffusion_unet import DiffusionUNet

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)


@dataclass(frozen=True)
class DDMConfig(JsonConfig):
    label = "DDM"

    """Architecture, schedule, losses and the model grid (array order, mm) of a DDM model."""

    ndims: int = 3
    inner_channel: int = 8
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    norm_groups: int = 4
    heads: int = 4
    field_enc: tuple[int, ...] = (16, 32, 32, 32, 32)
    field_dec: tuple[int, ...] = (32, 32, 32, 8, 8)
    timesteps: int = 2000
    beta_start: float = 1e-6
    beta_end: float = 1e-2
    lambda_sim: float = 20.0
    lambda_reg: float = 1.0
    ncc_window: int = 9
    lambda_anchor: float = 0.0  # not in the paper: weight of ||field(source, code = 0)||^2
    lambda_dice: float = 0.0  # not in the paper: weight of 1 - soft Dice of warped label maps
    lambda_field: float = 0.0  # not in the paper: weight of the squared error to a known true field
    lambda_fold: float = 0.0  # not in the paper: weight of folding_penalty of the fields inference makes
    grid: tuple[int, ...] = (32, 128, 128)
    spacing: tuple[float, ...] = (3.15, 1.5, 1.5)

    @classmethod
    def default(cls, ndims: int) -> DDMConfig:
        if ndims == 3:
            return cls()
        if ndims == 2:
            return cls(ndims=2, grid=(128, 128), spacing=(1.5, 1.5))
        raise ValueError(f"ndims must be 2 or 3, got {ndims!r}")

    def multiple(self) -> int:
        return 16


def linear_schedule(timesteps: int, beta_start: float, beta_end: float) -> dict[str, torch.Tensor]:
    """The 12 DDPM schedule tensors (float32) of a linear beta schedule."""
    betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    values = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


class DDM(nn.Module):
    def __init__(self, config: DDMConfig | None = None):
        super().__init__()
        self.config = config = config or DDMConfig()
        for name, value in linear_schedule(config.timesteps, config.beta_start, config.beta_end).items():
            self.register_buffer(name, value)
        self.denoise_fn = DiffusionUNet(
            config.ndims, inner_channel=config.inner_channel, channel_mults=config.channel_mults,
            norm_groups=config.norm_groups, heads=config.heads,
        )
        self.field_fn = FieldUNet(config.ndims, enc=config.field_enc, dec=config.field_dec)

    @property
    def ndims(self) -> int:
        return self.config.ndims

    def weight_device(self) -> torch.device:
        return self.betas.device

    def code(self, source: torch.Tensor, target: torch.Tensor, x_t: torch.Tensor | None = None,
             t: torch.Tensor | int = 0) -> torch.Tensor:
        """The diffusion module's output c for (source, target, x_t) at timestep t (x_t = target by default)."""
        x_t = target if x_t is None else x_t
        if not isinstance(t, torch.Tensor):
            t = torch.full((source.shape[0],), int(t), device=source.device, dtype=torch.long)
        return self.denoise_fn(torch.cat([source, target, x_t], dim=1), t)

    def field(self, source: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Displacement (voxels) that the deformation module makes of the source and a (scaled) code."""
        if source.shape[0] != code.shape[0]:
            source = source.expand(code.shape[0], *source.shape[1:])
        return self.field_fn(torch.cat([source, code], dim=1))

    @staticmethod
    def warp_unit(source: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """Warp a [-1, 1] source to a [0, 1] frame (the authors' convention)."""
        return spatial.warp((source + 1.0) / 2.0, ddf, padding_mode="zeros")

    def q_sample(self, target: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (target.ndim - 1)
        return (self.sqrt_alphas_cumprod[t].reshape(shape) * target
                + self.sqrt_one_minus_alphas_cumprod[t].reshape(shape) * noise)

    def training_losses(self, source: torch.Tensor, target: torch.Tensor, source_labels: torch.Tensor | None = None,
                        target_labels: torch.Tensor | None = None, true_field: torch.Tensor | None = None,
                        field_mask: torch.Tensor | None = None, *,
                        generator: draws.Generators = None) -> dict[str, torch.Tensor]:
        """The paper's losses for a batch of (source, target) in [-1, 1].

        total = ||c - eps||^2 + lambda_sim * (-NCC(S o phi, T) + lambda_reg * smooth(phi)),
        plus lambda_anchor * mean(field(S, 0)^2) when lambda_anchor > 0 (our addition: the paper
        never shows the deformation module a zero code, which gamma = 0 gives it at inference).

        Supervision where the truth is known (our addition, SynthMorph-like; off by default), on the
        fields inference makes: the code c0 of (S, T, x_t = T, t = 0) and phi_gamma = G_def(S, gamma c0)
        (methods.md, latent scaling; training itself never uses gamma). Integer label maps (B, 1, *S),
        0 = no label: lambda_dice * (1 - soft_dice(S_labels o phi_1, T_labels)). A true field (B, n, *S,
        voxels) where `field_mask` (B, 1, *S) is 1: lambda_field * the mean of field_error(phi_1, u)
        and field_error(phi_gamma, gamma u), gamma ~ U[0, 1] per item (the frame latent scaling should
        give between the ends).
        Folding (our addition, off by default): lambda_fold * folding_penalty(phi_1) (and of phi_gamma
        when a true field is given), so that the end field inference makes keeps det(I + grad u) > 0.
        """
        cfg = self.config
        b = source.shape[0]
        t = draws.randint(cfg.timesteps, b, generator).to(source.device)
        noise = draws.randn(target.shape, generator).to(source.device, source.dtype)
        x_t = self.q_sample(target, t, noise)
        c = self.code(source, target, x_t, t)
        diffusion = torch.mean((c - noise) ** 2)
        ddf = self.field(source, c)
        warped = self.warp_unit(source, ddf)
        ncc = local_ncc(warped, (target + 1.0) / 2.0, window=cfg.ncc_window)
        smooth = smoothness(ddf)
        total = diffusion + cfg.lambda_sim * (-ncc + cfg.lambda_reg * smooth)
        losses = {"total": total, "diffusion": diffusion, "ncc": ncc, "smooth": smooth}
        if cfg.lambda_anchor > 0:
            losses["anchor"] = torch.mean(self.field(source, torch.zeros_like(c)) ** 2)
            losses["total"] = losses["total"] + cfg.lambda_anchor * losses["anchor"]
        dice_on = cfg.lambda_dice > 0 and source_labels is not None
        field_on = cfg.lambda_field > 0 and true_field is not None
        fold_on = cfg.lambda_fold > 0
        if dice_on or field_on or fold_on:
            c0 = self.code(source, target)
            end = self.field(source, c0)
        if dice_on:
            losses["dice"] = 1.0 - soft_dice(warped_labels(source_labels, end), target_labels)
            losses["total"] = losses["total"] + cfg.lambda_dice * losses["dice"]
        if field_on:
            shape = (b,) + (1,) * (source.ndim - 1)
            gamma = (draws.randint(1001, b, generator).float() / 1000.0).to(source.device).reshape(shape)
            scaled = self.field(source, gamma * c0)
            losses["field"] = 0.5 * (field_error(end, true_field, field_mask)
                                     + field_error(scaled, gamma * true_field, field_mask))
            losses["total"] = losses["total"] + cfg.lambda_field * losses["field"]
        if fold_on:
            losses["fold"] = folding_penalty(end)
            if field_on:
                losses["fold"] = 0.5 * (losses["fold"] + folding_penalty(scaled))
            losses["total"] = losses["total"] + cfg.lambda_fold * losses["fold"]
        return losses


LABEL_CHANNELS = 9  # label values 0 (none) .. 8 in supervised training


def warped_labels(labels: torch.Tensor, ddf: torch.Tensor, channels: int = LABEL_CHANNELS) -> torch.Tensor:
    """Integer label maps (B, 1, *S) as one-hot channels (B, channels, *S), pulled linearly by `ddf`
    (differentiable in the field)."""
    onehot = one_hot(labels, channels)
    return spatial.warp(onehot, ddf, padding_mode="border")


def one_hot(labels: torch.Tensor, channels: int = LABEL_CHANNELS) -> torch.Tensor:
    """(B, 1, *S) integers in 0 .. channels - 1 -> (B, channels, *S) float."""
    return torch.nn.functional.one_hot(labels[:, 0].long(), channels).movedim(-1, 1).float()


def soft_dice(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice 2 sum(p y) / (sum p + sum y) over every (item, label) pair whose label is in
    the target map `labels` (B, 1, *S), label 0 excluded (0 = no label); 1 when no label is present
    (so that items without labels add nothing to the loss's gradient)."""
    target = one_hot(labels, probabilities.shape[1])[:, 1:]
    p = probabilities[:, 1:]
    dims = tuple(range(2, p.ndim))
    present = target.sum(dims) > 0
    if not present.any():
        return probabilities.new_ones(())
    dice = 2.0 * (p * target).sum(dims) / (p.sum(dims) + target.sum(dims)).clamp_min(1e-6)
    return dice[present].mean()


def field_error(field: torch.Tensor, true_field: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared length (voxels^2) of field - true_field over the voxels where `mask` is 1 (all
    when None); 0 when no voxel is masked in."""
    sq = ((field - true_field) ** 2).sum(1, keepdim=True)
    if mask is None:
        return sq.mean()
    return (sq * mask).sum() / mask.sum().clamp_min(1.0)
