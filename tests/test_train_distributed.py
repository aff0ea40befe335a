"""Training on 2 CPU processes (gloo, DistributedDataParallel) follows one process with the doubled batch.

Two processes are spawned once for the module; each runs DDM, DRDM and Mo-Diff with a tiny
configuration and batch 1 per process. The same runs in this process with batch 2 must give the
same loss curve (the messages print 4 decimals) and the same final weights within float tolerance.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_deformdiff.core.ddm.weights import load_ddm
from napari_deformdiff.core.drdm.train import training_batch
from napari_deformdiff.core.drdm.weights import load_drdm
from napari_deformdiff.core.events import Progress
from napari_deformdiff.core.io.pairs import Pair
from napari_deformdiff.core.modiff.batches import ClipItems, stage_loss
from napari_deformdiff.core.modiff.data import find_sequences, model_sequences
from napari_deformdiff.core.modiff.weights import load_modiff
from napari_deformdiff.core.nn.distributed import loss_generators
from napari_deformdiff.core.nn.model_grid import GridMap, to_model
from napari_deformdiff.core.weights.files import read_state

from .ddm_helpers import pair_volumes
from .ddm_helpers import tiny_config as tiny_ddm
from .modiff_helpers import phantom_sequences
from .modiff_helpers import tiny_config as tiny_modiff

GRID = (16, 16)
DDM_STEPS, DRDM_STEPS = 3, 3
MODIFF_STEPS = {"vae": 2, "tddm": 3, "video": 2}


def ddm_pairs():
    return [Pair(f"case{i}", *pair_volumes(shape=(24, 26), shift=(3.0 + i, -2.0))) for i in range(3)]


def drdm_images():
    from napari_deformdiff.core.drdm.train import image_on_grid
    from napari_deformdiff.core.phantom import cardiac_phantom

    case = cardiac_phantom(3, frames=4, two_d=True, noise=False)
    return torch.stack([image_on_grid(f, case.spacing, GRID) for f in case.images])


def run_all(folder: Path, data: Path, batch: int, **kw) -> dict[str, list[float]]:
    """Train each method into `folder`; the loss curve of each (from the progress messages)."""
    from napari_deformdiff.core.ddm.train import train_ddm
    from napari_deformdiff.core.drdm.train import train_drdm
    from napari_deformdiff.core.modiff.data import find_sequences
    from napari_deformdiff.core.modiff.train import train_modiff

    folder.mkdir(parents=True, exist_ok=True)
    runs = {
        "ddm": train_ddm(ddm_pairs(), folder / "ddm.safetensors", steps=DDM_STEPS, config=tiny_ddm(2), lr=1e-3,
                         seed=4, batch=batch, **kw),
        "drdm": train_drdm("test", folder / "drdm.safetensors", ndims=2, grid=GRID, steps=DRDM_STEPS, batch=batch,
                           lr=1e-3, seed=3, warmup=1, images=drdm_images(), **kw),
        "modiff": train_modiff(find_sequences([data]), folder / "modiff.safetensors", steps=MODIFF_STEPS,
                               config=tiny_modiff(), seed=2, batch=dict.fromkeys(MODIFF_STEPS, batch), **kw),
    }
    return {name: [float(re.search(r"loss (\S+)", e.message).group(1)) for e in events
                   if isinstance(e, Progress) and e.index > 0] for name, events in runs.items()}


def _rank(rank: int, folder: str, data: str, port: int) -> None:
    """One of two spawned training processes, set up as torchrun sets up its processes."""
    from napari_deformdiff.core.ddm.train import train_ddm
    from napari_deformdiff.core.nn.distributed import process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = Path(folder) / f"rank{rank}"
    with process_group("cpu") as (world, device):
        assert (world.rank, world.size, device) == (rank, 2, "cpu")
        losses = run_all(out, Path(data), batch=1)
        # resume under two processes: 2 steps, then on to 3 from rank 0's checkpoint
        shared = Path(folder) / "resume.safetensors"
        list(train_ddm(ddm_pairs(), shared, steps=2, config=tiny_ddm(2), lr=1e-3, seed=4, batch=1))
        list(train_ddm(ddm_pairs(), shared, steps=DDM_STEPS, resume=shared, lr=1e-3, seed=4, batch=1))
    (Path(folder) / f"losses{rank}.json").write_text(json.dumps(losses))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(folder of the 2-process runs, folder of the 1-process runs with the doubled batch)."""
    root = tmp_path_factory.mktemp("ddp")
    data = phantom_sequences(root / "sequences", cases=3)
    two = root / "two"
    two.mkdir()
    torch.multiprocessing.spawn(_rank, args=(str(two), str(data), free_port()), nprocs=2, join=True)
    one = root / "one"
    losses = run_all(one, data, batch=2)
    (one / "losses.json").write_text(json.dumps(losses))
    return two, one


def assert_same_weights(a: Path, b: Path):
    sa, sb = read_state(a)[0], read_state(b)[0]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-7, msg=k)


def outputs(method: str, path: Path, data: Path) -> list[torch.Tensor]:
    """What a trained model computes on fixed inputs (DDM: the registration field of a pair; DRDM: the
    recovery fields of a fixed batch; Mo-Diff: the VAE's reconstruction and each stage's loss on a
    fixed batch with fixed noise)."""
    with torch.no_grad():
        if method == "ddm":
            model, _ = load_ddm(path, ndims=2)
            p, cfg = ddm_pairs()[0], model.config
            grid = GridMap(p.source.spatial_shape, p.source.geometry.spacing, cfg.grid, cfg.spacing)
            s, t = to_model(p.source.data, grid), to_model(p.target.data, grid)
            return [model.field(s, model.code(s, t))]
        if method == "drdm":
            model, _ = load_drdm(path, ndims=2)
            x, t, _ = training_batch(drdm_images(), 2, torch.Generator().manual_seed(0), "cpu")
            return [model(x, t)]
        model, _ = load_modiff(path)
        seqs = model_sequences(find_sequences([data]), model.config)
        out = [model.vae.decode(model.vae.encode(torch.stack([s[0] for s in seqs])[:, None])[0])]
        for stage in ("vae", "tddm", "video"):
            items = ClipItems(seqs, model.config, stage, seed=0, size=2)
            clips, counts = (torch.cat([c for c, _ in (items(0, i) for i in range(2))]),
                             torch.tensor([n for _, n in (items(0, i) for i in range(2))]))
            out.append(stage_loss(model, stage, clips, counts, loss_generators(0, 0, range(2))))
        return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ddm", "drdm", "modiff"])
def test_two_processes_follow_one_with_the_doubled_batch(runs, method):
    two, one = runs
    curve_two = json.loads((two / "losses0.json").read_text())[method]
    curve_one = json.loads((one / "losses.json").read_text())[method]
    assert curve_two == json.loads((two / "losses1.json").read_text())[method]  # every rank logs the global loss
    assert len(curve_two) == {"ddm": DDM_STEPS, "drdm": DRDM_STEPS, "modiff": sum(MODIFF_STEPS.values())}[method]
    assert curve_two == pytest.approx(curve_one, abs=1.5e-4)  # the messages' last digit may round apart
    # Not the weights themselves: a bias followed by a normalisation has a zero gradient up to
    # rounding, and Adam (g / sqrt(v)) turns that rounding into steps of lr either way.
    data = two.parent / "sequences"
    for a, b in zip(outputs(method, two / "rank0" / f"{method}.safetensors", data),
                    outputs(method, one / f"{method}.safetensors", data)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    # the weights did move: the curves are not those of an untrained model
    assert len(set(curve_one)) > 1


@pytest.mark.slow
def test_only_rank_0_writes_and_a_resumed_two_process_run_continues_exactly(runs):
    two, one = runs
    assert sorted(p.name for p in (two / "rank0").iterdir()) == sorted(
        f"{m}.safetensors{s}" for m in ("ddm", "drdm", "modiff") for s in ("", ".optim.pt"))
    assert list((two / "rank1").iterdir()) == []
    assert_same_weights(two / "resume.safetensors", two / "rank0" / "ddm.safetensors")
    assert read_state(two / "resume.safetensors")[1]["batch"] == "2"  # the global batch


@pytest.mark.slow
def test_dataloader_workers_assemble_the_same_batches(runs, tmp_path):
    _, one = runs
    losses = run_all(tmp_path, one.parent / "sequences", batch=2, workers=2)
    assert losses == json.loads((one / "losses.json").read_text())
    for method in ("ddm", "drdm", "modiff"):
        assert_same_weights(tmp_path / f"{method}.safetensors", one / f"{method}.safetensors")


@pytest.mark.slow
def test_torchrun_trains_from_the_command_line_and_rank_0_alone_reports(tmp_path):
    from napari_deformdiff.cli import main
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "data", cases=1, seed=2, two_d=True, frames=2))
    args = ["train", "drdm", "--data", str(tmp_path / "data"), "--grid", "16,16", "--steps", "3", "--lr", "1e-3",
            "--seed", "1"]
    two, one = tmp_path / "two.safetensors", tmp_path / "one.safetensors"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "napari_deformdiff.cli", *args, "--batch", "1", "--out", str(two)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         encoding="utf-8", errors="replace", timeout=600)  # tqdm's bar is not ASCII
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 1 and run.stderr.count("on cpu, 2 processes") == 1
    assert main(args + ["--batch", "2", "--out", str(one)]) == 0
    assert read_state(two)[1]["batch"] == read_state(one)[1]["batch"] == "2"
    for a, b in zip(outputs("drdm", two, tmp_path), outputs("drdm", one, tmp_path)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_item_draws_do_not_depend_on_the_rest_of_the_batch():
    from napari_deformdiff.core.nn import draws
    from napari_deformdiff.core.nn.distributed import World

    def gens(items):
        return loss_generators(7, 3, items)

    whole, t_whole = draws.randn((4, 2, 5), gens(range(4))), draws.randint(100, 4, gens(range(4)))
    for rank in (0, 1):
        mine = World(rank, 2).items(2)
        assert list(mine) == [2 * rank, 2 * rank + 1]
        assert torch.equal(draws.randn((2, 2, 5), gens(mine)), whole[2 * rank:2 * rank + 2])
        assert torch.equal(draws.randint(100, 2, gens(mine)), t_whole[2 * rank:2 * rank + 2])
    assert not torch.equal(whole[0], whole[1])
    g = torch.Generator().manual_seed(1)  # one generator: torch's own draws, as before
    assert torch.equal(draws.randn((4, 2, 5), g), torch.randn((4, 2, 5), generator=torch.Generator().manual_seed(1)))


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    from napari_deformdiff.core.errors import InputError
    from napari_deformdiff.core.nn.distributed import World, torchrun_world

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_world() == World(1, 3, 1) and not torchrun_world().main
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(InputError, match="rank 3 is not among WORLD_SIZE=3"):
        torchrun_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="must be integers"):
        torchrun_world()
