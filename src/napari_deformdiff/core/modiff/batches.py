"""The batches of Mo-Diff's training stages, item by item, and the stage losses on them.

A step's global batch is planned from the generator of (seed, stage, step): which sequence each
item takes and its frame count (stage 1: one per item; stage 2: one for the whole batch, the
sequences' shortest bound). Item i is then drawn from its own generator (nn.distributed), so that
any rank or DataLoader worker assembles the same item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..nn.distributed import item_generator
from .data import draw_clip
from .nets.modiff import STAGES, MoDiff, ModiffConfig, downsample


def stage_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + STAGES.index(stage)) * 1_000_003 + step)


def _frame_count(lengths: Sequence[int], config: ModiffConfig, g: torch.Generator) -> int:
    hi = min(config.max_frames, *lengths)
    return int(torch.randint(config.min_frames, hi + 1, (), generator=g))


def step_plan(seed: int, stage: str, step: int, lengths: Sequence[int], size: int,
              config: ModiffConfig) -> tuple[list[int], list[int]]:
    """(sequence of each item, frame count of each item) of a step's global batch of `size` items."""
    g = stage_generator(seed, stage, step)
    picks = [int(i) for i in torch.randint(0, len(lengths), (size,), generator=g)]
    if stage == "vae":
        return picks, [1] * size
    if stage == "tddm":
        return picks, [_frame_count([lengths[i]], config, g) for i in picks]
    return picks, [_frame_count([lengths[i] for i in picks], config, g)] * size


def _crop(x: torch.Tensor, size: Sequence[int], g: torch.Generator) -> torch.Tensor:
    index = []
    for n, c in zip(x.shape[-len(size):], size):
        start = int(torch.randint(0, n - c + 1, (), generator=g))
        index.append(slice(start, start + c))
    return x[(..., *index)]


class ClipItems:
    """make(step, item) of nn.distributed.step_batches for one stage: (clip (1, frames, *S), frame count).

    vae: one random frame, cropped (frames = 1); tddm: the item's frame count, padded with zero
    frames to max_frames; video: the batch's frame count.
    """

    def __init__(self, data: list[torch.Tensor], config: ModiffConfig, stage: str, seed: int, size: int):
        self.data, self.config, self.stage, self.seed, self.size = data, config, stage, seed, size
        self.lengths = [s.shape[0] for s in data]

    def __call__(self, step: int, item: int) -> tuple[torch.Tensor, int]:
        picks, counts = step_plan(self.seed, self.stage, step, self.lengths, self.size, self.config)
        seq, n = self.data[picks[item]], counts[item]
        g = item_generator(self.seed, step, item, self.stage)
        if self.stage == "vae":
            c = self.config
            crop = tuple(max(c.latent_factor * 4, s // 2) for s in c.grid)
            frame = seq[int(torch.randint(0, seq.shape[0], (), generator=g))][None]
            return _crop(draw_clip(frame, 1, g), crop, g)[None], 1
        clip = draw_clip(seq, n, g)
        if self.stage == "tddm":
            clip = F.pad(clip, [0] * (2 * (clip.ndim - 1)) + [0, self.config.max_frames - n])
        return clip[None], n


def stage_loss(model: MoDiff, stage: str, clips: torch.Tensor, counts: torch.Tensor, generators,
               weight: float = 1.0) -> torch.Tensor:
    """The stage's loss on a batch of ClipItems, each item's draws from its generator, times `weight`."""
    if stage == "vae":
        return weight * model.vae_loss(clips, generator=generators)["total"]
    if stage == "tddm":
        fields = torch.cat([model.pad_fields(model.fields_of(clip[None, :n])) for clip, n in
                            zip(clips, counts.tolist())])
        firsts = downsample(clips[:, :1], model.config.field_factor)
        return weight * model.tddm_loss(fields, firsts, counts, generator=generators)["total"]
    with torch.no_grad():
        latents = model.encode_video(clips)
    return weight * model.video_loss(latents, model.fields_of(clips), generator=generators)["total"]
