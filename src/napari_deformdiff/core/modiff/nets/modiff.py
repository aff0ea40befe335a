"""Mo-Diff (You et al., MICCAI 2025) in our own design: frame VAE + temporal differential
diffusion (stage 1) + image-to-video latent diffusion (stage 2), all on one model grid.

Images are in [-1, 1] after scaling every frame of a sequence with the FIRST frame's min-max
(at inference only the first frame is known). Differential fields D_k = I_k - I_{k-1}
(D_0 = 0) live on the grid downsampled by `field_factor`, multiplied by `field_scale`; latents
are the VAE means multiplied by `latent_scale` (both scales are measured on the training data).
Both diffusions predict v (Salimans & Ho) under a cosine noise schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import draws
from ...nn.config_json import JsonConfig
from ...nn.layers import check_ndims
from .tddm import TemporalDifferentialUNet
from .vae import FrameVAE
from .video import LatentVideoUNet

STAGES = ("vae", "tddm", "video")


@dataclass(frozen=True)
class ModiffConfig(JsonConfig):
    label = "Mo-Diff"

    ndims: int = 2
    grid: tuple[int, ...] = (128, 128)
    spacing: tuple[float, ...] = (1.5, 1.5)
    min_frames: int = 4
    max_frames: int = 12
    vae_widths: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    field_factor: int = 4
    tddm_widths: tuple[int, ...] = (48, 96, 128)
    video_widths: tuple[int, ...] = (64, 128)
    emb: int = 128
    heads: int = 4
    timesteps: int = 1000
    prompt: str = "pal"  # "pal" | "concat" (ablation)
    fal: str = "fal"  # "fal" | "concat" (ablation: channel fusion)
    frame_count: bool = True  # False: ablation without the N condition
    field_scale: float = 1.0
    latent_scale: float = 1.0
    kl_weight: float = 1e-5

    @classmethod
    def default(cls, ndims: int) -> ModiffConfig:
        if check_ndims(ndims) == 2:
            return cls()
        return cls(ndims=3, grid=(16, 64, 64), spacing=(6.3, 3.0, 3.0), vae_widths=(24, 48, 48),
                   tddm_widths=(32, 64, 96), video_widths=(48, 96))

    def __post_init__(self):
        check_ndims(self.ndims)
        if len(self.grid) != self.ndims or len(self.spacing) != self.ndims:
            raise ValueError(f"grid and spacing need {self.ndims} values")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError("need 2 <= min_frames <= max_frames")
        down = 2 ** (len(self.vae_widths) - 1)
        for name, factor in (("latent", down * 2 ** (len(self.video_widths) - 1)),
                             ("field", self.field_factor * 2 ** (len(self.tddm_widths) - 1))):
            if any(g % factor for g in self.grid):
                raise ValueError(f"grid {self.grid} must be divisible by {factor} ({name} levels)")

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae_widths) - 1)

    @property
    def latent_grid(self) -> tuple[int, ...]:
        return tuple(g // self.latent_factor for g in self.grid)

    @property
    def field_grid(self) -> tuple[int, ...]:
        return tuple(g // self.field_factor for g in self.grid)

    def ablation(self) -> str:
        """'full' or the switched-off parts, e.g. 'no-frame-count+pal-concat'."""
        parts = [name for name, off in (("no-frame-count", not self.frame_count),
                                        ("pal-concat", self.prompt != "pal"),
                                        ("fal-concat", self.fal != "fal")) if off]
        return "+".join(parts) or "full"



def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> torch.Tensor:
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool the spatial axes of (B, C, *S) by `factor`."""
    if factor == 1:
        return x
    return (F.avg_pool2d if x.ndim == 4 else F.avg_pool3d)(x, factor)


def differential_fields(frames: torch.Tensor) -> torch.Tensor:
    """(B, N, *S) frames -> (B, N, *S) with D_0 = 0 and D_k = I_k - I_{k-1}."""
    return torch.cat([torch.zeros_like(frames[:, :1]), frames[:, 1:] - frames[:, :-1]], 1)


class MoDiff(nn.Module):
    def __init__(self, config: ModiffConfig | None = None):
        super().__init__()
        self.config = c = config or ModiffConfig()
        self.vae = FrameVAE(c.ndims, c.vae_widths, c.latent_channels)
        self.tddm = TemporalDifferentialUNet(c.ndims, c.max_frames, c.tddm_widths, c.emb, c.prompt, c.frame_count)
        self.video = LatentVideoUNet(c.ndims, c.latent_channels, c.video_widths, c.emb, c.heads, c.fal)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(c.timesteps))

    @property
    def ndims(self) -> int:
        return self.config.ndims

    def weight_device(self) -> torch.device:
        return self.alphas_cumprod.device

    # ---------------------------------------------------------------- representations
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 1, *S) frames -> (B, C, *L) scaled latent means."""
        return self.vae.encode(frames)[0] * self.config.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.config.latent_scale)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, *S) -> (B, C, N, *L)."""
        b, n = frames.shape[:2]
        z = self.encode(frames.reshape(b * n, 1, *frames.shape[2:]))
        return z.reshape(b, n, *z.shape[1:]).transpose(1, 2)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, N, *L) -> (B, N, *S)."""
        b, c, n = latents.shape[:3]
        x = self.decode(latents.transpose(1, 2).reshape(b * n, c, *latents.shape[3:]))
        return x.reshape(b, n, *x.shape[2:])

    def fields_of(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, *S) frames -> scaled differential fields (B, N, *field_grid)."""
        return differential_fields(downsample(frames, self.config.field_factor)) * self.config.field_scale

    def latent_fields(self, fields: torch.Tensor) -> torch.Tensor:
        """Scaled differential fields (B, N, *field_grid) -> accumulated, unscaled, at latent resolution:
        the change of every frame since the first."""
        factor = self.config.latent_factor // self.config.field_factor
        return downsample(fields.cumsum(1), factor) / self.config.field_scale

    def pad_fields(self, fields: torch.Tensor) -> torch.Tensor:
        m = self.config.max_frames
        return F.pad(fields, [0] * (2 * self.ndims) + [0, m - fields.shape[1]])

    # ---------------------------------------------------------------- diffusion
    def _abar(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return self.alphas_cumprod[t].reshape(-1, *([1] * (ndim - 1)))

    def noisy(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, v target) of the cosine schedule."""
        a = self._abar(t, x0.ndim)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * x0

    def vae_loss(self, frames: torch.Tensor, generator: draws.Generators = None) -> dict[str, torch.Tensor]:
        mean, logvar = self.vae.encode(frames)
        z = mean + (0.5 * logvar).exp() * draws.randn(mean.shape, generator).to(mean)
        recon = self.vae.decode(z)
        rec = (recon - frames).abs().mean() + ((recon - frames) ** 2).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return {"total": rec + self.config.kl_weight * kl, "recon": rec, "kl": kl}

    def tddm_loss(self, fields: torch.Tensor, first: torch.Tensor, counts: torch.Tensor,
                  generator: draws.Generators = None) -> dict[str, torch.Tensor]:
        """fields: (B, M, *F) padded scaled fields; first: (B, 1, *F); counts: (B,) N. Loss on k < N."""
        b, m = fields.shape[:2]
        t = draws.randint(self.config.timesteps, b, generator).to(fields.device)
        noise = draws.randn(fields.shape, generator).to(fields)
        x_t, v = self.noisy(fields, t, noise)
        pred = self.tddm(x_t, t, first, counts)
        mask = (torch.arange(m, device=fields.device)[None] < counts[:, None]).to(fields.dtype)
        mask = mask.reshape(b, m, *([1] * self.ndims))
        err = ((pred - v) ** 2 * mask).sum() / (mask.sum() * fields[0, 0].numel())
        return {"total": err, "v": err}

    def video_loss(self, latents: torch.Tensor, fields: torch.Tensor,
                   generator: draws.Generators = None) -> dict[str, torch.Tensor]:
        """latents: (B, C, N, *L) of the true frames; fields: (B, N, *F) scaled true fields."""
        b = latents.shape[0]
        t = draws.randint(self.config.timesteps, b, generator).to(latents.device)
        noise = draws.randn(latents.shape, generator).to(latents)
        x_t, v = self.noisy(latents, t, noise)
        pred = self.video(x_t, t, latents[:, :, 0], self.latent_fields(fields))
        err = ((pred - v) ** 2).mean()
        return {"total": err, "v": err}
