"""Training the DRDM recovery network on images deformed by the forward process, as a generator.

Each batch item draws an image, a light augmentation (flips, intensity jitter), a level t in
1..80 and the forward fields at t: the network sees image o DDF_t and learns the recovery of the
one-step DVF (losses.drdm_loss). Item i of a step draws from a generator seeded with (seed, step,
i) (nn.distributed), so a run is reproducible, a resumed run continues the same sequence and a batch
split over processes gives the same items.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..weights.files import read_state
from ..errors import InputError
from ..events import Progress
from ..nn.distributed import Objective, World, barrier, current_world, item_generator, shared, step_batches
from ..io.atomic import staged
from ..nn.optim_step import descend_shared, save_optimizer, saved_optimizer, training_start
from ..nn.model_grid import unit_range
from .nets import RecResACNet
from ..spatial import warp
from .forward import MAX_LEVEL, sample_forward
from .losses import drdm_loss
from .generate import model_grid_map, time_index
from .weights import DRDMMeta, load_drdm, save_drdm

PHANTOM = "phantom"
PHANTOM_CASES = 16
DEFAULT_GRID = {2: (128, 128), 3: (32, 64, 64)}


def image_on_grid(image: np.ndarray, spacing: Sequence[float], grid: Sequence[int]) -> torch.Tensor:
    """One image (any intensities) -> (1, *grid) float32 in [0, 1] on the model grid, placed as
    recovery places it (recover.model_grid_map: isotropic, the longest physical axis spans the grid)."""
    unit, _, _ = unit_range(image)
    g = model_grid_map(unit.shape, spacing, grid)
    return g.image_to_model(torch.from_numpy(unit)[None, None])[0].clamp_(0.0, 1.0)


def _frames_of(volume, ndims: int, where: str) -> list[tuple[np.ndarray, tuple[float, ...]]]:
    """Single images of `ndims` dimensions in a volume: its time frames, and for a 2D model the
    slices of a 3D volume along its first axis (short-axis stacks)."""
    spacing = tuple(volume.geometry.spacing)
    stack = volume.data if volume.has_time else volume.data[None]
    vol_ndims = volume.geometry.ndim
    if vol_ndims == ndims:
        return [(np.asarray(f), spacing) for f in stack]
    if vol_ndims == 3 and ndims == 2:
        return [(np.asarray(f[z]), spacing[1:]) for f in stack for z in range(f.shape[0])]
    raise InputError(f"{where} is {vol_ndims}D; a {ndims}D DRDM needs {ndims}D images.")


def _volumes_in(folder: Path) -> list:
    from ..io import read_volume
    from ..io.acdc import is_acdc_folder, read_acdc_patient
    from ..io.dispatch import can_read

    if is_acdc_folder(folder):
        p = read_acdc_patient(folder)
        return [p.cine] if p.cine is not None else [p.ed, p.es]
    volumes = []
    for f in sorted(folder.iterdir()):
        if f.is_dir():
            if is_acdc_folder(f):
                volumes += _volumes_in(f)
        elif can_read(f):
            v = read_volume(f)
            if not v.is_labels:
                volumes.append(v)
    return volumes


def load_training_images(data: str | Path, *, ndims: int, grid: Sequence[int],
                         seed: int = 0) -> tuple[torch.Tensor, str]:
    """(images (N, 1, *grid) in [0, 1], description) from a folder or the built-in phantom.

    A folder may hold ACDC patient folders (every frame of the 4D cine, else ED and ES) and image
    files of any readable format (label maps are skipped). "phantom" draws PHANTOM_CASES seeded
    cardiac phantom cases (seeds seed .. seed + 15, every frame).
    """
    grid = tuple(int(g) for g in grid)
    images = []
    if str(data) == PHANTOM:
        from ..phantom import cardiac_phantom

        for i in range(PHANTOM_CASES):
            case = cardiac_phantom(seed + i, frames=4, two_d=ndims == 2)
            images += [image_on_grid(f, case.spacing, grid) for f in case.images]
        return torch.stack(images), f"cardiac phantom seeds {seed}..{seed + PHANTOM_CASES - 1}"
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (give a folder of images, or '{PHANTOM}').")
    for v in _volumes_in(folder):
        for frame, spacing in _frames_of(v, ndims, v.name or str(folder)):
            if float(frame.max()) > float(frame.min()):
                images.append(image_on_grid(frame, spacing, grid))
    if not images:
        raise InputError(f"{folder} holds no {ndims}D images to train on (ACDC folders or image files).")
    return torch.stack(images), f"{len(images)} images from {folder.name}"


def augment(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips along every axis, gamma in [0.7, 1.4], contrast 0.9..1.1 and offset +-0.05."""
    for axis in range(1, image.ndim):
        if torch.rand((), generator=g) < 0.5:
            image = image.flip(axis)
    gamma, contrast, offset = torch.rand(3, generator=g).tolist()
    gamma = float(np.exp(np.log(0.7) + gamma * (np.log(1.4) - np.log(0.7))))
    out = image.clamp(0.0, 1.0) ** gamma
    return (out * (0.9 + 0.2 * contrast) + (offset - 0.5) * 0.1).contiguous()


class FieldBank:
    """Forward fields of every level for a few random draws, made once and reused (for 3D).

    One draw of v and v0 (forward.control_field's recipe and random stream) self-composed
    N_ddf(80) times passes through the DDF of every level (level t is composition N_ddf(t)), and v
    composed 1..N_dvf(80) times gives every one-step DVF. In 3D a level-t DDF costs N_ddf(t) (up to
    199) compositions on the 64^3 grid, seconds per batch item, so a bank of `chains` draws
    replaces a forward process per item; random flips
    (axis k reversed and component k negated, a symmetry of the noise) vary them further.
    Chain c is drawn from a generator seeded with seed * 7919 + c the first time it is used and
    equals sample_forward(shape, t, seed=seed * 7919 + c, with_dvf=True) at every level t.
    """

    def __init__(self, shape: Sequence[int], chains: int, *, seed: int = 0, device="cpu",
                 max_level: int = MAX_LEVEL):
        if chains < 1:
            raise InputError(f"a field bank needs at least one chain, got {chains}.")
        self.shape, self.chains, self.seed, self.device = tuple(shape), int(chains), int(seed), device
        self.max_level = int(max_level)
        self._cache: dict[int, tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]] = {}

    def chain_seed(self, c: int) -> int:
        return self.seed * 7919 + int(c)

    def _chain(self, c: int):
        if c not in self._cache:
            self._cache[c] = self._draw(self.chain_seed(c))
        return self._cache[c]

    def _draw(self, chain_seed: int):
        from . import forward
        from ..spatial import compose

        n = len(self.shape)
        g = torch.Generator().manual_seed(chain_seed)
        with torch.no_grad():
            v = (forward._multiscale_noise(1, n, forward.SIGMA, g) * forward.CONTROL_GRID).to(self.device)
            noise = forward._multiscale_noise(1, n, forward.NOISE_RATIO * forward.SIGMA, g)
            v0 = compose((noise * forward.CONTROL_GRID).to(self.device), v, padding_mode="border")
            wanted_ddf = {forward.n_ddf(t) for t in range(1, self.max_level + 1)}
            wanted_dvf = {forward.n_dvf(t) for t in range(1, self.max_level + 1)}
            ddfs, dvfs = {}, {}
            for chain, start, wanted, store in ((v0, v0, wanted_ddf, ddfs), (v, v, wanted_dvf, dvfs)):
                psi = start
                for k in range(1, max(wanted) + 1):
                    if k > 1:
                        psi = compose(psi, chain, padding_mode="border")
                    if k in wanted:
                        store[k] = forward.to_image_field(psi, self.shape)
        return ddfs, dvfs

    def fields(self, c: int, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ddf, dvf) of chain c at `level`, each (1, n, *shape) in voxels."""
        from .forward import n_ddf, n_dvf

        ddfs, dvfs = self._chain(c)
        return ddfs[n_ddf(level)], dvfs[n_dvf(level)]

    def sample(self, level: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random chain's (ddf, dvf) at `level`, randomly flipped."""
        ddf, dvf = self.fields(int(torch.randint(0, self.chains, (), generator=g)), level)
        for k in range(len(self.shape)):
            if torch.rand((), generator=g) < 0.5:
                sign = torch.ones(len(self.shape), dtype=ddf.dtype, device=ddf.device)
                sign[k] = -1
                sign = sign.view(1, -1, *([1] * len(self.shape)))
                ddf, dvf = ddf.flip(2 + k) * sign, dvf.flip(2 + k) * sign
        return ddf, dvf


def _crop(t: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    return t[(..., *[slice(a, a + s) for a, s in zip(start, size)])]


def training_batch(images: torch.Tensor, batch: int, g: torch.Generator, device, *,
                   crop: Sequence[int] | None = None, bank: FieldBank | None = None,
                   max_level: int = MAX_LEVEL, steps: int = MAX_LEVEL) -> tuple[torch.Tensor, ...]:
    """(deformed input (B, 1, *C), network time index (B,), one-step DVF (B, n, *C) in voxels).

    Each item: a random image (augmented), a level t uniform in 1..max_level, the forward DDF at t
    and the one-step DVF; the network's time index is recover.time_index(t, steps) as in recovery.

    Fields are drawn on the whole model grid (forward process, or `bank`); with `crop` the
    deformed image and the DVF are then cropped together at a random place (C = crop, else the grid).
    The items draw from `g` one after the other (training_item).
    """
    items = [training_item(images[i], g, device, crop=crop, bank=bank, max_level=max_level, steps=steps)
             for i in torch.randint(0, images.shape[0], (batch,), generator=g).tolist()]
    xs, ts, dvfs = zip(*items)
    return torch.cat(xs), torch.tensor(ts, device=device), torch.cat(dvfs)


def training_item(image: torch.Tensor, g: torch.Generator, device, *, crop: Sequence[int] | None = None,
                  bank: FieldBank | None = None, max_level: int = MAX_LEVEL, steps: int = MAX_LEVEL):
    """One item of training_batch from one image (1, *grid): (deformed input (1, 1, *C), time index,
    one-step DVF (1, n, *C))."""
    grid = tuple(image.shape[1:])
    image = augment(image, g).to(device)
    level = int(torch.randint(1, max_level + 1, (), generator=g))
    if bank is None:
        sample = sample_forward(grid, level, generator=g, device=device, with_dvf=True)
        ddf, dvf = sample.ddf, sample.dvf
    else:
        ddf, dvf = bank.sample(level, g)
    x = warp(image[None], ddf, padding_mode="border")
    if crop is not None:
        start = [int(torch.randint(0, s - c + 1, (), generator=g)) for s, c in zip(grid, crop)]
        x, dvf = _crop(x, start, crop), _crop(dvf, start, crop)
    return x, time_index(level, steps), dvf


class ImageItems:
    """make(step, item) of nn.distributed.step_batches: item `item` of a step's global batch, drawn by
    training_item from the item's own generator."""

    def __init__(self, images: torch.Tensor, seed: int, device, **options):
        self.images, self.seed, self.device, self.options = images, seed, device, options

    def __call__(self, step: int, item: int):
        g = item_generator(self.seed, step, item)
        image = self.images[int(torch.randint(0, self.images.shape[0], (), generator=g))]
        return training_item(image, g, self.device, **self.options)


_Z_TAPS = {3: (0.0, 1.0, 0.0), "down": (0.125, 0.375, 0.375, 0.125), "up": (0.25, 0.75, 0.75, 0.25)}


def inflate_to_3d(model2d: RecResACNet) -> RecResACNet:
    """A 3D RecResACNet that starts as the 2D network run slice by slice (a 3D start from 2D weights).

    3x3 kernels go to the central z plane; the stride-2 4-tap convolutions smooth along z with taps
    (1, 3, 3, 1)/8 going down and interpolate linearly (taps (1, 3, 3, 1)/4) going up; the 2D
    output channels (y, x) become the 3D (y, x) channels and the z channel starts at zero. Norms
    and time MLPs are copied. InstanceNorm then normalises over the volume instead of the slice.
    """
    if model2d.ndims != 2:
        raise InputError("only a 2D DRDM network can be inflated to 3D.")
    model3d = RecResACNet(3, model2d.steps, model2d.embed_dim)
    src, dst = model2d.state_dict(), model3d.state_dict()
    out = {}
    for name, target in dst.items():
        w = src[name]
        if target.shape == w.shape:
            out[name] = w.clone()
            continue
        if name == "conv_out.bias":
            out[name] = torch.cat([torch.zeros(1, dtype=w.dtype), w])
            continue
        size = w.shape[-1]
        down = name.split(".")[0].startswith("down")
        taps = torch.tensor(_Z_TAPS[3] if size == 3 else _Z_TAPS["down" if down else "up"], dtype=w.dtype)
        inflated = w.unsqueeze(2) * taps.view(1, 1, -1, 1, 1)
        if name == "conv_out.weight":
            inflated = torch.cat([torch.zeros_like(inflated[:1]), inflated])
        out[name] = inflated
    model3d.load_state_dict(out, strict=True)
    return model3d


def make_optimizer(model: RecResACNet, lr: float, output_lr_scale: float = 0.02) -> torch.optim.Adam:
    """Adam with the output convolution at output_lr_scale x lr (group key "scale" keeps the factor)."""
    head = list(model.conv_out.parameters())
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("conv_out.")]
    groups = [{"params": body, "scale": 1.0}, {"params": head, "scale": float(output_lr_scale)}]
    for group in groups:
        group["lr"] = lr * group["scale"]
    return torch.optim.Adam(groups, lr=lr)


def zero_output(model: RecResACNet) -> RecResACNet:
    """Start from the zero field (the targets are a few voxels at most)."""
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()
    return model


def _check_grid(grid: Sequence[int], ndims: int) -> tuple[int, ...]:
    grid = tuple(int(g) for g in grid)
    if len(grid) != ndims or any(g < 8 or g % 8 for g in grid):
        raise InputError(f"the model grid needs {ndims} sizes that are multiples of 8 (at least 8), got {grid}.")
    return grid


def train_drdm(
    data: str | Path,
    out: str | Path,
    *,
    ndims: int,
    grid: Sequence[int],
    steps: int,
    batch: int = 4,
    lr: float = 1e-4,
    seed: int = 0,
    resume: str | Path | None = None,
    save_every: int = 100,
    device: str = "cpu",
    overwrite: bool = False,
    crop: Sequence[int] | None = None,
    field_bank: int | None = None,
    warmup: int = 50,
    output_lr_scale: float = 0.02,
    max_level: int = MAX_LEVEL,
    init: str | Path | None = None,
    images: torch.Tensor | None = None,
    workers: int = 0,
    world: World | None = None,
) -> Iterator[Progress]:
    """Train (or continue training) a RecResACNet, saving `out` (.safetensors) as it goes.

    data: a folder (see load_training_images) or "phantom"; `images` (N, 1, *grid) in [0, 1]
    replaces loading when given. `crop`: train on random crops of the model grid (multiples of
    8; the network is fully convolutional), a large saving on a CPU. `field_bank`: reuse the
    fields of that many forward draws (FieldBank) instead of a forward process per item. The
    learning rate rises linearly over the first `warmup` steps (the output starts at zero and the
    targets are fractions of a percent of the image: full-size Adam steps overshoot), and the
    output convolution learns at `output_lr_scale` times `lr` (each Adam step moves a weight by
    about the learning rate whatever the gradient, which at the output layer is larger than the
    whole target field in these units). Levels are
    drawn in 1..max_level (80, the whole process, unless told otherwise). `init`: weights to
    start a new run from (a DRDM file of the same dimensionality, or a 2D one for a 3D model,
    inflated with inflate_to_3d). `steps` is the total number of optimisation steps (a resumed run
    continues up to it). With `resume`, weights and the step count come from that checkpoint and
    the Adam state from its side file `<name>.optim.pt` (read with weights_only=True).
    Yields a Plan, then Progress(step, steps, "loss ...", "train") after every step.
    `batch` images per step and process: each item of a step's batch draws from its own generator
    seeded with (seed, step, item), so under torchrun (`world`, default: the initialised process
    group) N processes of `batch` give the run of one process with N * batch (nn/distributed.py);
    rank 0 saves. `workers` DataLoader processes assemble the batches (0: in this process).
    """
    out = Path(out)
    grid, crop = _check_arguments(out, ndims, grid, crop, steps, batch, save_every, resume, overwrite)
    torch.manual_seed(seed)
    model, start, extra = _starting_model(ndims, grid, resume, init, device)
    seconds_before = float(extra.get("seconds", 0.0))
    optim = make_optimizer(model, lr, output_lr_scale)
    optim_path = out.with_name(out.name + ".optim.pt")
    if resume is not None and (saved := saved_optimizer(resume, device)) is not None:
        optim.load_state_dict(saved)

    images, description = _training_images(data, images, ndims, grid, seed, max_level)
    world = world or current_world()
    item_device = device if workers == 0 else "cpu"
    run_notes = {"data": description, "seed": str(seed), "lr": str(lr), "output_lr_scale": str(output_lr_scale),
                 "warmup": str(warmup), "batch": str(batch * world.size), "images": str(images.shape[0]),
                 "crop": "none" if crop is None else ",".join(map(str, crop)), "field_bank": str(field_bank or 0),
                 "init": extra.get("init", "none") if resume is not None else (Path(init).name if init else "none")}
    bank = None if not field_bank else FieldBank(grid, field_bank, seed=seed, device=item_device, max_level=max_level)
    started = time.perf_counter()
    history: list[float] = []

    def save(step: int) -> None:
        with staged():  # the checkpoint and its optimizer state appear together
            meta = DRDMMeta(ndims=ndims, grid=grid, steps=model.steps, name=out.stem, source=description)
            save_drdm(model, out, meta=meta, overwrite=True, **run_notes, train_steps=str(step),
                      seconds=f"{seconds_before + time.perf_counter() - started:.0f}",
                      last_loss=f"{np.mean(history[-50:]) if history else float('nan'):.5f}")
            save_optimizer(optim.state_dict(), optim_path)

    objective = shared(Objective(model, lambda x, t, dvf: drdm_loss(model(x, t), dvf)), world, device)
    items = ImageItems(images, seed, item_device, crop=crop, bank=bank, max_level=max_level,
                       steps=model.steps)
    batches = step_batches(items, start, steps, world=world, batch=batch, workers=workers, seed=seed, device=device)
    yield from training_start(start, steps)
    for step, (x, t, dvf) in enumerate(batches, start):
        for group in optim.param_groups:
            group["lr"] = lr * group["scale"] * min(1.0, (step + 1) / max(int(warmup), 1))
        total, message = _step(objective, optim, x, t, dvf, step, world)
        history.append(total)
        if world.main and ((step + 1) % save_every == 0 or step + 1 == steps):
            save(step + 1)
        yield Progress(step + 1, steps, message, "train")
    barrier(world)
    model.eval()


def _check_arguments(out: Path, ndims: int, grid, crop, steps: int, batch: int, save_every: int, resume,
                     overwrite: bool):
    """(grid, crop) as tuples, or InputError for arguments no run can use."""
    if ndims not in (2, 3):
        raise InputError(f"ndims must be 2 or 3, got {ndims}.")
    grid = _check_grid(grid, ndims)
    if crop is not None:
        crop = _check_grid(crop, ndims)
        if any(c > s for c, s in zip(crop, grid)):
            raise InputError(f"the crop {crop} is larger than the model grid {grid}.")
    if steps < 1 or batch < 1 or save_every < 1:
        raise InputError("steps, batch and save-every must be at least 1.")
    if out.suffix != ".safetensors":
        raise InputError(f"{out.name}: the checkpoint must be a .safetensors file.")
    same = resume is not None and out.exists() and Path(resume).resolve() == out.resolve()
    if out.exists() and not overwrite and not same:
        raise InputError(f"{out} exists; choose a new name, resume from it, or allow overwriting.")
    return grid, crop


def _starting_model(ndims: int, grid, resume, init, device):
    """(network in train mode, first step, the resumed file's metadata): resumed, from `init`, or new."""
    start, extra = 0, {}
    if resume is not None:
        model, meta = load_drdm(resume, ndims=ndims, device=device)
        if tuple(meta.grid) != grid:
            raise InputError(f"{Path(resume).name} was trained on grid {tuple(meta.grid)}, not {grid}.")
        _, extra = read_state(resume)
        start = int(extra.get("train_steps", 0))
    elif init is not None:
        start_from = load_drdm(init, ndims=None)[0].cpu()
        if start_from.ndims == 2 and ndims == 3:
            start_from = inflate_to_3d(start_from)
        elif start_from.ndims != ndims:
            raise InputError(f"{Path(init).name} is a {start_from.ndims}D network; a {ndims}D run cannot start from it.")
        model = start_from.to(device)
    else:
        model = zero_output(RecResACNet(ndims)).to(device)
    return model.train(), start, extra


def _training_images(data, images, ndims: int, grid, seed: int, max_level: int):
    """(images (N, 1, *grid), description): loaded from `data`, or the given ones checked."""
    if not 1 <= max_level <= MAX_LEVEL:
        raise InputError(f"max_level must be in 1..{MAX_LEVEL}, got {max_level}.")
    if images is None:
        return load_training_images(data, ndims=ndims, grid=grid, seed=seed)
    if tuple(images.shape[2:]) != grid:
        raise InputError(f"images of shape {tuple(images.shape[2:])} do not match the grid {grid}.")
    return images, str(data)


def _step(objective, optim, x, t, dvf, step: int, world: World) -> tuple[float, str]:
    """One optimisation step: (total loss, the progress message), averaged over the ranks."""
    losses = objective(x, t, dvf)
    total, distance, angle, folding = descend_shared(optim, losses["total"], step, world,
                                                     [losses[k] for k in ("distance", "angle", "folding")])
    return total, f"loss {total:.4f} (distance {distance:.3f}, angle {angle:.3f}, folding {folding:.2g})"
