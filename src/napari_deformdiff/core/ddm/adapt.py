"""Adapting DDM to one pair: a residual stationary velocity field fitted coarse-to-fine.

frame(gamma) = S o (phi_net(gamma c) - phi_net(0)) o exp(gamma v)

The networks and their latent code c stay as trained (c keeps its meaning at every gamma); what is
fitted is v, a stationary velocity on the image's own grid (at most `max_voxels`), integrated by
scaling and squaring, so every gamma * v gives a diffeomorphism and gamma = 0 gives the source
itself. v is fitted to S o phi_net(c) (the network's frame at gamma = 1) against T: loss =
mse * mean squared difference - local NCC (window 9) + smooth * |grad v|^2 (v and the gradient
in mm), v a Gaussian-smoothed parameter field, images jointly scaled to [0, 1], Adam with
cosine-decayed steps, a pyramid of `levels` levels (shrink 4-2-1 on the finest axes, less on coarser ones), each level stopped after
`iterations` steps or when the loss stops improving. The coarsest level is fitted from both the
source and the network's frame; the network's field is kept only if its fit ends with the lower data
term, else it is left out and v alone carries the motion.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import spatial
from ..errors import InputError
from ..events import Progress
from .demons import joint_unit, shrink_factors

SQUARINGS = 6


@dataclass(frozen=True)
class AdaptSettings:
    iterations: int = 50  # steps at the finest level (at most); each coarser level gets twice as many
    levels: int = 3
    lr: float = 0.1  # Adam step, voxels of the level (cosine decay to 5 % per level)
    smooth: float = 10.0  # weight of |grad v|^2 (mm / mm)
    mse: float = 3000.0  # weight of the mean squared intensity difference (images jointly in [0, 1])
    window: int = 9
    eps: float = 1e-4  # Adam's epsilon: keeps flat regions (air, background) from random-walking
    plateau: float = 0.01  # stop a level when 10 steps gain less than this part of the level's gain so far
    max_voxels: int = 256 * 256  # the finest working grid, 2D
    max_voxels_3d: int = 2**19  # and 3D (128 x 128 x 32 fits whole)
    sigma: float = 1.0  # Gaussian smoothing of the fitted parameter field (voxels of the level)
    ncc: float = 1.0  # weight of the local NCC term
    ncc_eps: float = 1e-8  # in the local NCC denominator; 1e-5 rewarded warps that raise local contrast
    compare_levels: int = 1  # coarsest levels (at least 1) fitted from both starts (source, network's frame)

    def steps(self, level: int) -> int:
        return self.iterations * 2 ** (self.levels - 1 - level)

    @property
    def total(self) -> int:
        return sum(self.steps(k) for k in range(self.levels))


def settings_for(adapt, shape: Sequence[int]) -> AdaptSettings | None:
    """`adapt`: "auto", 0 (none), K (steps per level) or AdaptSettings."""
    if isinstance(adapt, AdaptSettings):
        return adapt
    if isinstance(adapt, str):
        if adapt.strip().lower() == "auto":
            return auto_settings(shape)
        try:
            adapt = int(adapt)
        except ValueError:
            raise InputError(f"adapt must be 'auto', 0 or a number of steps, got {adapt!r}.") from None
    if isinstance(adapt, bool) or not isinstance(adapt, (int, np.integer)) or adapt < 0:
        raise InputError(f"adapt must be 'auto', 0 or a positive number of steps, got {adapt!r}.")
    return AdaptSettings(iterations=int(adapt)) if adapt else None


def auto_settings(shape: Sequence[int]) -> AdaptSettings:
    """Fixed step counts (deterministic, unlike a time budget), chosen so a 256^2 pair takes about
    5 s and 128^2 x 32 about 60 s on two CPU cores. In 3D a smoother parameter field (sigma 2), a
    10x stronger |grad v|^2 weight (100: the image match at gamma = 1 no longer buys a rougher field
    that misses the intermediate frames) and K from the voxel count: 30 steps at 2^19 voxels, more
    on smaller volumes (at most 60)."""
    if len(shape) == 2:
        return AdaptSettings(iterations=50)
    base = AdaptSettings(sigma=2.0, smooth=100.0)
    voxels = min(int(np.prod(shape)), base.max_voxels_3d)
    return AdaptSettings(iterations=int(np.clip(30 * base.max_voxels_3d // voxels, 30, 60)), sigma=base.sigma,
                         smooth=base.smooth)


def working_shape(shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The finest grid the fit runs on and its spacing: the image's own grid if it has at most
    `max_voxels`, else the finest axes coarsened first (towards isotropic voxels)."""
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if np.prod(shape) <= max_voxels:
        return shape, spacing
    extent = [sp * (s - 1) for sp, s in zip(spacing, shape)]

    def sizes(step):
        return tuple(min(s, max(2, int(e / step) + 1)) for s, e in zip(shape, extent))

    lo, hi = min(spacing), max(extent)
    for _ in range(60):  # the smallest voxel size whose grid fits
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if np.prod(sizes(mid)) <= max_voxels else (mid, hi)
    out = sizes(hi)
    return out, tuple(e / (o - 1) for e, o in zip(extent, out))


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a window^n box around each voxel (zero outside), by cumulative sums."""
    n = x.ndim - 2
    r = window // 2
    for axis in range(n):
        dim = 2 + axis
        size = x.shape[dim]
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)], pad[2 * (n - 1 - axis) + 1] = r + 1, r
        c = torch.cumsum(F.pad(x, pad), dim=dim)
        x = c.narrow(dim, window, size) - c.narrow(dim, 0, size)
    return x


def local_ncc_fast(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """nn.losses.local_ncc (mean squared local correlation, border windows cut to the image), with
    the five box means done at once by cumulative sums."""
    sums = _box_sum(torch.cat([a, b, a * a, b * b, a * b], dim=1), window)
    count = _box_sum(torch.ones((1, 1, *a.shape[2:]), dtype=a.dtype, device=a.device), window)
    ma, mb, maa, mbb, mab = (sums / count).unbind(1)
    cross = mab - ma * mb
    var_a = (maa - ma * ma).clamp_min(0)
    var_b = (mbb - mb * mb).clamp_min(0)
    return (cross * cross / (var_a * var_b + eps)).mean()


def _resample(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Linear resampling on the align_corners grid the fields use; Gaussian anti-aliasing first
    along axes that shrink (sigma = half the shrink ratio)."""
    old = tuple(image.shape[2:])
    if old == tuple(shape):
        return image
    ratios = [(o - 1) / max(s - 1, 1) for o, s in zip(old, shape)]
    sigmas = [0.5 * r if r > 1.2 else 0.0 for r in ratios]
    if any(sigmas):
        image = _gaussian(image, sigmas)
    return F.interpolate(image, size=tuple(shape), mode="bilinear" if image.ndim == 4 else "trilinear",
                         align_corners=True)


def _gaussian(v: torch.Tensor, sigma: float | Sequence[float] = 1.0) -> torch.Tensor:
    """Separable Gaussian smoothing per channel (replicated borders); sigma in voxels, per axis or one."""
    n = v.ndim - 2
    sigmas = [float(sigma)] * n if np.isscalar(sigma) else [float(s) for s in sigma]
    conv = F.conv2d if n == 2 else F.conv3d
    c = v.shape[1]
    for axis, sg in enumerate(sigmas):
        r = int(np.ceil(2 * sg))
        if sg <= 0 or v.shape[2 + axis] <= r:
            continue
        x = torch.arange(-r, r + 1, dtype=v.dtype, device=v.device)
        k = torch.exp(-0.5 * (x / sg) ** 2)
        k = k / k.sum()
        shape = [1] * n
        shape[axis] = 2 * r + 1
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = r
        v = conv(F.pad(v, pad, mode="replicate"), k.view(1, 1, *shape).repeat(c, 1, *([1] * n)), groups=c)
    return v


def _data_loss(moving: torch.Tensor, target: torch.Tensor, settings: AdaptSettings) -> torch.Tensor:
    return (settings.mse * torch.mean((moving - target) ** 2)
            - settings.ncc * local_ncc_fast(moving, target, settings.window, settings.ncc_eps))


def _diffusion(v: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Mean squared spatial gradient of v in mm per mm."""
    n = v.ndim - 2
    sp = torch.tensor(spacing, dtype=v.dtype, device=v.device).view(1, n, *([1] * n))
    v_mm = v * sp
    return sum(torch.diff(v_mm, dim=2 + j).div(spacing[j]).pow(2).mean() for j in range(n)) / n


def residual_field(velocity: torch.Tensor, gamma: float, shape: Sequence[int]) -> torch.Tensor:
    """exp(gamma v) on the working grid, brought to `shape` (voxels of that grid): (1, n, *shape)."""
    with torch.no_grad():
        u = spatial.integrate_velocity(velocity * float(gamma), steps=SQUARINGS)
        return u if tuple(u.shape[2:]) == tuple(shape) else spatial.resize_field(u, shape)


def _grad_on():
    """Autograd on, whatever the calling thread's mode: a GUI worker thread may still be in the
    inference mode of a generator it ran before."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    return stack


def fit_velocity(moving: torch.Tensor, target: torch.Tensor, spacing: Sequence[float],
                 settings: AdaptSettings, *, levels: Sequence[int] | None = None, velocity: torch.Tensor | None = None,
                 done: int = 0, total: int | None = None, label: str = "") -> Iterator[Progress]:
    """Fit v with moving o exp(v) ~ target; both (1, 1, *S) in [0, 1] on the working grid.

    `levels` (default all) are run in order, starting from `velocity` (any grid; default 0).
    A generator: yields Progress per step (counted from `done` out of `total`) and returns the
    velocity (1, n, *S) in voxels of its last level. Raises InputError if the loss stops being finite.
    """
    n = moving.ndim - 2
    full = tuple(moving.shape[2:])
    total = settings.total if total is None else total
    v = velocity
    for level in range(settings.levels) if levels is None else levels:
        factor = 2 ** (settings.levels - 1 - level)
        f = shrink_factors(spacing, factor)
        shape = tuple(max(2, -(-s // k)) for s, k in zip(full, f))
        sp = tuple(s0 * (s - 1) / (o - 1) for s0, s, o in zip(spacing, full, shape))
        with _grad_on():
            m_l, t_l = _resample(moving, shape).clone(), _resample(target, shape).clone()
            w0 = torch.zeros((1, n, *shape), dtype=moving.dtype) if v is None else spatial.resize_field(v, shape)
            w = w0.clone().requires_grad_(True)
        optim = torch.optim.Adam([w], lr=settings.lr, eps=settings.eps)
        steps = settings.steps(level)
        # cosine decay to 5 %: large steps find the motion, small ones settle it
        sched = torch.optim.lr_scheduler.LambdaLR(
            optim, lambda k: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * k / max(steps, 1))))
        history: list[float] = []

        def objective():
            vel = _gaussian(w, settings.sigma)
            u = spatial.integrate_velocity(vel, steps=SQUARINGS)
            warped = spatial.warp(m_l, u, padding_mode="border")
            ncc = local_ncc_fast(warped, t_l, settings.window, settings.ncc_eps)
            loss = (settings.mse * torch.mean((warped - t_l) ** 2) - settings.ncc * ncc
                    + settings.smooth * _diffusion(vel, sp))
            return loss, ncc

        def check(loss, k):
            if not torch.isfinite(loss):
                raise InputError(
                    f"adaptation diverged (loss {float(loss.detach())} at level {level + 1}, step {k + 1}); "
                    "the pair may not be registrable, or try fewer adaptation steps.")

        for k in range(steps):
            with _grad_on():
                loss, ncc = objective()
                check(loss, k)
                optim.zero_grad(set_to_none=True)
                loss.backward()
            optim.step()
            sched.step()
            history.append(float(loss.detach()))
            yield Progress(min(done + k + 1, total), total, f"adapting level {level + 1}/{settings.levels}, "
                                                             f"step {k + 1}: ncc {float(ncc.detach()):.3f}{label}", "adapt")
            if len(history) >= 20 and k % 10 == 9:
                before, now = np.mean(history[-20:-10]), np.mean(history[-10:])
                if before - now < settings.plateau * max(history[0] - now, 1e-12):
                    break
        with torch.no_grad():
            v = _gaussian(w.detach(), settings.sigma)
        if not torch.isfinite(v).all():
            raise InputError("adaptation diverged (the velocity field is not finite).")
        done += steps
    return v


@dataclass
class Residual:
    """What adaptation found: v on the working grid, and whether the network's field is kept."""
    velocity: torch.Tensor
    use_network: bool
    loss_source: float  # the fit's data term for the source as it is
    loss_network: float  # and for the network's gamma = 1 frame
    fitted_source: float = float("nan")  # the data term after the coarse level(s) fitted from the source
    fitted_network: float = float("nan")  # and from the network's frame

    def compose(self, net_field: torch.Tensor | None, gamma: float) -> torch.Tensor:
        """Total field (1, n, *S) in input voxels: (net_field) then exp(gamma v)."""
        shape = tuple(net_field.shape[2:])
        res = residual_field(self.velocity, gamma, shape).to(net_field)
        if not self.use_network:
            return res
        return spatial.compose(net_field, res)


def _fitted_loss(moving: torch.Tensor, target: torch.Tensor, velocity: torch.Tensor, settings: AdaptSettings) -> float:
    """The data term of moving o exp(velocity) against target on their (working) grid."""
    with torch.no_grad():
        u = residual_field(velocity, 1.0, tuple(moving.shape[2:]))
        return float(_data_loss(spatial.warp(moving, u, padding_mode="border"), target, settings))


def adapt_pair(source: np.ndarray, target: np.ndarray, spacing: Sequence[float], net_field: torch.Tensor,
               settings: AdaptSettings) -> Iterator[Progress]:
    """Fit the residual for `net_field` (1, n, *S), the network's gamma = 1 field minus its gamma = 0
    field on the input grid (input voxels). Generator returning a Residual.

    The coarsest `settings.compare_levels` levels are fitted from both starts, the source as it is
    and the network's frame; the start whose fit reaches the lower data term on the working grid
    continues (ties keep the source). The initial data terms do not decide: a network frame closer
    to the target can still be a worse start (lung2 CT: 51.3 dB kept against 53.4 from the source).
    Progress counts each start's coarse steps as half a step, so the total stays settings.total.
    """
    s, t = (torch.from_numpy(a)[None, None] for a in joint_unit(source, target))
    ndim = source.ndim
    cap = settings.max_voxels if ndim == 2 else settings.max_voxels_3d
    shape, sp = working_shape(source.shape, spacing, cap)
    with torch.no_grad():
        by_net = spatial.warp(s, net_field.to(s), padding_mode="border")
        s_w, n_w, t_w = _resample(s, shape), _resample(by_net, shape), _resample(t, shape)
        loss_source = float(_data_loss(s_w, t_w, settings))
        loss_net = float(_data_loss(n_w, t_w, settings))
    coarse = list(range(min(max(settings.compare_levels, 1), settings.levels)))
    span = sum(settings.steps(k) for k in coarse)
    total = settings.total
    fits = {}
    for use_net, moving, name in ((False, s_w, "source"), (True, n_w, "network's frame")):
        if use_net and not np.isfinite(loss_net):
            continue
        first = len(fits) * span // 2
        v = yield from _paced(fit_velocity(moving, t_w, sp, settings, levels=coarse, total=total,
                                           label=f" (from the {name})"), first, span, total)
        fits[use_net] = (_fitted_loss(moving, t_w, v, settings), v)
    use_net = len(fits) == 2 and fits[True][0] < fits[False][0]
    moving = n_w if use_net else s_w
    velocity = yield from fit_velocity(moving, t_w, sp, settings, levels=range(len(coarse), settings.levels),
                                       velocity=fits[use_net][1], done=span, total=total)
    return Residual(velocity, use_net, loss_source, loss_net, fits[False][0], fits.get(True, (np.nan,))[0])


def _paced(fit: Iterator[Progress], first: int, span: int, total: int) -> Iterator[Progress]:
    """Runs `fit` (its Progress counted from 0), reporting its steps as half steps from `first`;
    returns what it returns."""
    while True:
        try:
            event = next(fit)
        except StopIteration as stop:
            return stop.value
        yield Progress(min(first + event.index // 2, first + span // 2, total), total, event.message, event.stage)
