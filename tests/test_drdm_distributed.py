"""The DRDM export on a Dask LocalCluster (2 worker processes) gives the in-process export's files and manifest,
also when a worker is killed mid-run; workers read inputs by path and pin GPUs by their number."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from napari_deformdiff.core.drdm.augment import (
    CaseFiles,
    ExportSettings,
    export_drdm,
    find_cases,
    read_manifest,
)
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.io import Volume, read_volume, write_volume
from napari_deformdiff.core.events import Progress

from .drdm_export_helpers import case_2d, tiny_drdm

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


def test_local_cluster_writes_the_same_samples_and_manifest_as_one_process(tmp_path):
    from napari_deformdiff.core.drdm.distributed import export_drdm_distributed
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=6)
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    cases = [case_2d("a"), case_2d("b", shape=(36, 40), labels=False)]
    settings = ExportSettings(levels="4:6:2", samples=2, seed=11)
    list(export_drdm(cases, tmp_path / "one", settings, weights=weights))
    events = list(export_drdm_distributed(cases, tmp_path / "dask", settings, scheduler="local", weights=weights,
                                          workers=2, threads_per_worker=1))
    assert events[-1].index == events[-1].total == 8
    one = (tmp_path / "one" / "manifest.csv").read_text()
    dask = (tmp_path / "dask" / "manifest.csv").read_text()
    rows_one, rows_dask = read_manifest(tmp_path / "one" / "manifest.csv"), read_manifest(tmp_path / "dask" /
                                                                                         "manifest.csv")
    assert [r["id"] for r in rows_dask] == [r["id"] for r in rows_one] and len(rows_one) == 8
    for a, b in zip(rows_one, rows_dask):  # thread counts may change float rounding in the last digit
        for key, value in a.items():
            assert b[key] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value), key
    for row in rows_one:
        np.testing.assert_allclose(read_volume(tmp_path / "dask" / row["image"]).data,
                                   read_volume(tmp_path / "one" / row["image"]).data, atol=1e-4)
    assert one == dask  # identical text: same seeds, same numbers


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    from napari_deformdiff.core.drdm.distributed import connect

    with pytest.raises(InputError, match="could not connect to the Dask scheduler"):
        connect("tcp://127.0.0.1:9", timeout="2s")


def test_stopping_a_cluster_export_keeps_a_consistent_manifest_and_resume_on_a_running_scheduler_completes_it(tmp_path):
    from napari_deformdiff.core.drdm.distributed import export_drdm_distributed
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=6)
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    cases = [case_2d("a")]
    settings = ExportSettings(levels="4:8:2", samples=2, seed=11)
    out = tmp_path / "dask"
    events = export_drdm_distributed(cases, out, settings, scheduler="local", weights=weights, workers=2)
    for event in events:
        if isinstance(event, Progress) and "done" in event.message:
            break
    events.close()
    rows = read_manifest(out / "manifest.csv")
    assert 1 <= len(rows) < 6
    visible = {p.name for p in out.iterdir()}
    for row in rows:
        assert {row["image"], row["labels"], row["field"]} <= visible
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as running:
        # a running scheduler, reached by its address as --scheduler tcp://... does
        list(export_drdm_distributed(cases, out, settings, scheduler=running.scheduler_address, weights=weights,
                                     resume=True))
    list(export_drdm(cases, tmp_path / "one", settings, weights=weights))
    assert (out / "manifest.csv").read_text() == (tmp_path / "one" / "manifest.csv").read_text()


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same float rounding, so the same bytes and checksums
    yield
    torch.set_num_threads(before)


def write_folder(folder):
    folder.mkdir()
    a, b = case_2d("a"), case_2d("b", shape=(36, 40))
    write_volume(a.image, folder / "p1.nii.gz")
    write_volume(a.labels, folder / "p1_gt.nii.gz")
    write_volume(Volume(b.image.data[::-1].copy(), b.image.geometry, False), folder / "p2.nrrd")
    return folder


def test_a_worker_killed_mid_run_is_replaced_and_the_manifest_is_exact(tmp_path, one_thread):
    from distributed import Client, LocalCluster

    from napari_deformdiff.core.drdm.distributed import export_drdm_distributed
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=6)
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    folder = write_folder(tmp_path / "in")
    files, _ = find_cases(folder, keep_data=False)
    assert all(isinstance(f, CaseFiles) and f.ndims == 2 for f in files)  # workers read the files themselves
    assert [f.labels is not None for f in files] == [True, False]
    settings = ExportSettings(levels="4:8:2", samples=2, seed=11, shard_size=5)
    out = tmp_path / "dask"
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        assert len(pids) == 2
        events = export_drdm_distributed(files, out, settings, scheduler=cluster.scheduler_address, weights=weights)
        for event in events:
            if not killed and isinstance(event, Progress) and "done" in event.message:
                victim = sorted(pids.values())[0]
                os.kill(victim, signal.SIGKILL)  # both workers are busy: a unit is lost mid-way
                killed.append(victim)
        assert killed and event.index == event.total == 12
    cases, _ = find_cases(folder)
    list(export_drdm(cases, tmp_path / "one", settings, weights=weights))
    rows = read_manifest(out / "manifest.csv")
    assert rows == read_manifest(tmp_path / "one" / "manifest.csv")  # ids, files, sizes, sha256, statistics
    assert [r["image"].split("/")[0] for r in rows] == ["000"] * 5 + ["001"] * 5 + ["002"] * 2
    assert (out / "manifest.csv").read_text() == (tmp_path / "one" / "manifest.csv").read_text()
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    listed = sorted(r[c] for r in rows for c in ("image", "labels", "field") if r[c])
    assert on_disk == sorted([*listed, "manifest.csv"])  # no leftover of the killed worker, hidden or not


def test_gpus_are_pinned_by_worker_number():
    from napari_deformdiff.core.drdm.distributed import gpu_for

    assert [gpu_for(k, 1, 2) for k in range(4)] == [0, 1, 0, 1]
    assert [gpu_for(k, 2, 2) for k in range(4)] == [0, 0, 1, 1]
    assert [gpu_for(str(k), 3, 1) for k in range(3)] == [0, 0, 0]
    assert gpu_for("tcp://10.0.0.5:4567", 1, 4) is None  # a worker of a running cluster: its own device


def test_the_cli_on_a_local_cluster_writes_the_in_process_manifest(tmp_path, one_thread, capsys):
    from napari_deformdiff.cli import main
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2, seed=6)
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    folder = write_folder(tmp_path / "in")
    args = ["generate", "drdm", "--image", str(folder), "--levels", "4:6:2", "--samples", "1", "--seed", "2",
            "--weights", str(weights), "--shard-size", "3", "--manifest", "json"]
    assert main([*args, "--out-dir", str(tmp_path / "dask"), "--scheduler", "local", "--workers", "1"]) == 0
    assert main([*args, "--out-dir", str(tmp_path / "one"), "--device", "cpu"]) == 0
    dask, one = (tmp_path / "dask" / "manifest.json").read_text(), (tmp_path / "one" / "manifest.json").read_text()
    assert dask == one
    rows = read_manifest(tmp_path / "dask" / "manifest.json")
    assert [r["field"].split("/")[0] for r in rows] == ["000", "000", "000", "001"]
