"""Mo-Diff forecasting, streamed: first frame + frame count -> N frames (events.SequencePreview
while sampling, then events.Frame for every frame).

Stage 1 samples the differential fields, stage 2 the latent video conditioned on them. Frames
come back at the input's grid. Output "warp" (default): the first frame warped by the fields that
register the decoded first frame to each decoded frame, smoothed along time (frame_fields.py);
the frames keep the first frame's range and carry their fields. Output "additive" (the former
design, kept as an ablation): first frame + (decoded frame k - decoded frame 0). Either way,
frame 0 is the given frame itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..events import Frame, Plan, Progress, SequencePreview, run_to_end
from ..io.volume import Volume
from .nets.modiff import MoDiff, downsample
from .data import grid_map, scaling, sequence_to_model
from .frame_fields import ITERATIONS, TEMPORAL, register_to_first, smooth_along_time, velocities_to_fields, warp_first
from .sampling import SAMPLERS, sample, timestep_plan
from .weights import load_modiff


OUTPUTS = ("warp", "additive")


def check_request(first: Volume, frames: int, model: MoDiff | None, steps: int, sampler: str,
                  output: str = "warp", temporal: str = "monotone") -> None:
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}.")
    if temporal not in TEMPORAL:
        raise InputError(f"temporal smoothing must be one of {', '.join(TEMPORAL)}, not {temporal!r}.")
    if first.is_labels:
        raise InputError("the first frame is a label map; give an intensity image.")
    if first.has_time:
        raise InputError(f"the first frame has {first.data.shape[0]} time points; give a single 2D or 3D frame "
                         "(pick one with the time slider or `deformdiff convert`).")
    if model is not None:
        c = model.config
        if first.geometry.ndim != c.ndims:
            raise InputError(f"the first frame is {first.geometry.ndim}D but the Mo-Diff model is {c.ndims}D; "
                             f"pick {first.geometry.ndim}D weights (or the default).")
        if not c.min_frames <= frames <= c.max_frames:
            raise InputError(f"frame count {frames} is outside the range this model was trained for "
                             f"({c.min_frames}-{c.max_frames} frames, first frame included).")
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}.")
    if model is not None:
        timestep_plan(model.config.timesteps, steps)


def refresh_steps(steps: int, refreshes: int) -> set[int]:
    """Which of `steps` sampling steps show a preview: about `refreshes`, always the last."""
    count = max(1, min(refreshes, steps))
    if count == steps:
        return set(range(steps))
    return {int(round(x)) for x in np.linspace(steps - 1, 0, count, endpoint=False)[::-1]} | {steps - 1}


def generate_modiff(
    first: Volume,
    *,
    frames: int,
    steps: int = 25,
    sampler: str = "ddim",
    seed: int = 0,
    weights: str | Path | None = None,
    model: MoDiff | None = None,
    device: str = "cpu",
    refreshes: int = 8,
    preview_budget: float | None = 0.5,
    output: str = "warp",
    temporal: str = "monotone",
) -> Iterator[Progress | SequencePreview | Frame]:
    """Forecast `frames` frames (the first is `first`) from one image; seeded.

    `output` "warp": frames are the first frame warped by fields (in Frame.field, input voxels),
    smoothed along time by `temporal` ("monotone", "poly", "gaussian" or "none"); "additive": first frame +
    decoded change, no fields.

    `steps` sampler steps per stage; `sampler` "ddim" (deterministic) or "ancestral";
    up to `refreshes` SequencePreview events over the run (a few in stage 1, the rest in stage 2).
    Stage-2 previews decode every frame, so after the first one a preview is skipped while the
    time spent decoding previews exceeds `preview_budget` times the time spent sampling (None:
    never skip). Previews never change the forecast.
    """
    check_request(first, frames, model, steps, sampler, output, temporal)
    warping = output == "warp"
    yield Plan((("weights", 1), ("stage 1", steps), ("stage 2", steps), *((("fields", ITERATIONS),) if warping else ()),
                ("frames", frames)))
    yield Progress(0, 1, "loading weights", "weights")
    if model is None:
        model, _ = load_modiff(weights, ndims=first.geometry.ndim, device=device)
        check_request(first, frames, model, steps, sampler, output, temporal)
    run = _Forecast(model, first, frames, torch.Generator().manual_seed(seed))
    decoded = yield from run.decoded(steps, sampler, refreshes, preview_budget)
    out, fields = yield from run.outputs(decoded, output, temporal)
    info = {"method": "modiff", "steps": steps, "sampler": sampler, "seed": seed, "ablation": model.config.ablation(),
            "output": output, "temporal": temporal if warping else None}
    for k in range(frames):
        yield Frame(k, frames, out[k], None if fields is None else fields[k], info=dict(info))


def forecast_variants(first: Volume, *, frames: int, model: MoDiff, variants: dict[str, tuple[str, str]],
                      steps: int = 25, sampler: str = "ddim", seed: int = 0) -> dict[str, tuple[np.ndarray, float]]:
    """One sampling, several outputs: {name: (frames (N, *input), seconds)} for
    variants = {name: (output, temporal)}; seconds = the sampling plus that output's own time
    (the registration is done once, by the first warp variant, and counted there)."""
    check_request(first, frames, model, steps, sampler)
    t0 = time.perf_counter()
    run = _Forecast(model, first, frames, torch.Generator().manual_seed(seed))
    decoded = run_to_end(run.decoded(steps, sampler, 0, None))
    sampling = time.perf_counter() - t0
    out = {}
    for name, (output, temporal) in variants.items():
        check_request(first, frames, model, steps, sampler, output, temporal)
        t0 = time.perf_counter()
        images, _ = run_to_end(run.outputs(decoded, output, temporal))
        out[name] = (images, sampling + time.perf_counter() - t0)
    return out


class _Forecast:
    """One forecast: the model, the first frame on the model grid and the way back to the input."""

    def __init__(self, model: MoDiff, first: Volume, frames: int, generator: torch.Generator):
        self.model, self.frames, self.generator = model, frames, generator
        self.c = c = model.config
        self.device = model.weight_device()
        self.grid = grid_map(first, c)
        lo, hi = scaling(first.data)
        self.range, self.integer = (lo, hi), np.issubdtype(first.data.dtype, np.integer)
        self.x1 = sequence_to_model(first.data[None], self.grid, lo, hi, self.device)[None]  # (1, 1, *grid)
        self.first_in = torch.from_numpy(np.ascontiguousarray(first.data, np.float32)).to(self.device)
        self.counts = torch.tensor([frames], device=self.device)
        self.scale = (hi - lo) / 2.0
        self.registered = None  # (decoded frames, their velocities)

    def to_input(self, model_frames: torch.Tensor) -> np.ndarray:
        """(N, *grid) model-grid frames -> (N, *input) frames: first + change since frame 0."""
        delta = self.grid.model_to_input((model_frames - model_frames[:1])[:, None])[:, 0] * self.scale
        out = self.first_in[None] + delta
        out[0] = self.first_in
        return out.cpu().numpy()

    def decoded(self, steps: int, sampler: str, refreshes: int, preview_budget: float | None):
        """Both stages, streamed; returns the decoded frames (N, *grid)."""
        stage1_show = refresh_steps(steps, max(1, refreshes // 4)) if refreshes else set()
        stage2_show = refresh_steps(steps, max(1, refreshes - len(stage1_show))) if refreshes else set()
        with torch.inference_mode():
            fields = yield from self.differential_fields(steps, sampler, stage1_show)
            latents = yield from self.latent_video(fields, steps, sampler, stage2_show, preview_budget)
            decoded = self.model.decode_video(latents)[0]
            self.check(decoded, "decoded frames")
        return decoded

    def outputs(self, decoded: torch.Tensor, output: str, temporal: str):
        """Streamed; returns (frames (N, *input), fields (N, n, *input) or None)."""
        if output == "additive":
            with torch.inference_mode():
                return self.to_input(decoded), None
        return (yield from self.warped(decoded, temporal))

    def warped(self, decoded: torch.Tensor, temporal: str):
        """Streamed: (frames (N, *input), fields (N, n, *input) input voxels) from the decoded
        frames (N, *grid): registration on the model grid, velocities smoothed along time."""
        if self.registered is None or self.registered[0] is not decoded:  # output variants share it
            reg = register_to_first(decoded)
            while True:
                try:
                    i = next(reg)
                except StopIteration as done:
                    self.registered = (decoded, done.value)
                    break
                yield Progress(i, ITERATIONS, f"fields behind the frames {i}/{ITERATIONS}", "fields")
        velocities = self.registered[1]
        with torch.inference_mode():
            velocities = smooth_along_time(velocities, temporal)
            model_fields = velocities_to_fields(velocities, tuple(self.c.grid))
            model_fields[0] = 0
            fields = self.grid.field_to_input(model_fields)
            images = warp_first(self.first_in, fields, *self.range, self.integer)
        return images.cpu().numpy(), fields.cpu().numpy()

    def _up(self, fields: torch.Tensor) -> torch.Tensor:
        mode = "bilinear" if self.c.ndims == 2 else "trilinear"
        return torch.nn.functional.interpolate(fields, size=tuple(self.c.grid), mode=mode, align_corners=False)

    def differential_to_input(self, fields: torch.Tensor) -> np.ndarray:
        up = self._up(fields) / self.c.field_scale
        return (self.grid.model_to_input(up[0][:, None])[:, 0] * self.scale).cpu().numpy()

    @staticmethod
    def check(t: torch.Tensor, what: str) -> None:
        if not torch.isfinite(t).all():
            raise InputError(f"the model produced NaN or infinite values in the {what}; check the weights.")

    def differential_fields(self, steps: int, sampler: str, show: set[int]):
        """Stage 1, streamed; returns the sampled differential fields (1, N, *field grid), frame 0 zero."""
        model, c, frames, x1 = self.model, self.c, self.frames, self.x1
        first_f = downsample(x1, c.field_factor)
        shape1 = (1, c.max_frames, *c.field_grid)
        # Frames beyond N are zero padding in training, so the sampler sees them as noised zeros.
        pad_noise = torch.randn(shape1, generator=self.generator).to(self.device)[:, frames:]

        def padded_as_in_training(x: torch.Tensor, abar: float) -> torch.Tensor:
            x = x.clone()
            x[:, frames:] = (1.0 - abar) ** 0.5 * pad_noise
            return x

        fields = None
        for i, n, x, x0 in sample(lambda x, t: model.tddm(x, t, first_f, self.counts), shape1, model.alphas_cumprod,
                                  steps=steps, sampler=sampler, generator=self.generator, device=self.device,
                                  constrain=padded_as_in_training):
            self.check(x, "differential fields")
            yield Progress(i + 1, n, f"stage 1 (differential fields) {i + 1}/{n}", "stage 1")
            if i in show:
                est = (x if i == n - 1 else x0)[:, :frames].clone()
                est[:, 0] = 0
                up = self._up(first_f + est.cumsum(1) / c.field_scale)
                yield SequencePreview(i, n, self.to_input(up[0]), self.differential_to_input(est), "stage 1")
            fields = x
        fields = fields[:, :frames].clone()
        fields[:, 0] = 0
        return fields

    def latent_video(self, fields: torch.Tensor, steps: int, sampler: str, show: set[int],
                     preview_budget: float | None):
        """Stage 2, streamed; returns the sampled latent video. A preview is skipped while decoding
        previews took more than `preview_budget` times the sampling time (None: never skipped)."""
        model, c = self.model, self.c
        z1 = model.encode(self.x1)
        cond = model.latent_fields(fields)
        shape2 = (1, c.latent_channels, self.frames, *c.latent_grid)
        latents = None
        started, decoding, shown = time.perf_counter(), 0.0, 0
        for i, n, z, z0 in sample(lambda z, t: model.video(z, t, z1, cond), shape2, model.alphas_cumprod,
                                  steps=steps, sampler=sampler, generator=self.generator, device=self.device):
            self.check(z, "latent video")
            yield Progress(i + 1, n, f"stage 2 (latent video) {i + 1}/{n}", "stage 2")
            latents = z
            sampling = time.perf_counter() - started - decoding
            if i in show and i < n - 1 and (preview_budget is None or shown == 0 or decoding <= preview_budget * sampling):
                t0 = time.perf_counter()
                images = self.to_input(model.decode_video(z0)[0])
                decoding += time.perf_counter() - t0
                shown += 1
                yield SequencePreview(i, n, images, None, "stage 2")
        return latents
