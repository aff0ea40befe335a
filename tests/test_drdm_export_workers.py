"""DRDM export with several units made at once (one single-threaded torch thread per unit):
the same files and manifest as one unit after the other, units listed in plan order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from napari_deformdiff.core.drdm.augment import (
    ExportSettings,
    export_drdm,
    export_workers,
    made_in_order,
    read_manifest,
)
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame, Progress
from napari_deformdiff.core.io import read_volume
from napari_deformdiff.core.io.fields import read_displacement

from .drdm_export_helpers import case_2d, case_3d, tiny_drdm


def _export(case, out, model_meta, settings, workers):
    model, meta = model_meta
    events = list(export_drdm([case], out, settings, model=model, meta=meta, workers=workers))
    return events, read_manifest(out / settings.manifest_name)


@pytest.mark.parametrize("mode", ["augment", "pairs"])
def test_units_made_at_once_write_the_same_files_as_one_after_the_other(tmp_path, mode):
    case = case_2d()
    settings = ExportSettings(levels="3,6", samples=3, seed=11, mode=mode)
    before = torch.get_num_threads()
    one, rows_one = _export(case, tmp_path / "one", tiny_drdm(2), settings, 1)
    three, rows_three = _export(case, tmp_path / "three", tiny_drdm(2), settings, 3)
    assert torch.get_num_threads() == before  # the workers' single thread does not leak
    ids = [r["id"] for r in rows_one]
    assert ids == [f"heart_L{lv:02d}_s{s:03d}" for lv in (3, 6) for s in range(3)]
    assert [r["id"] for r in rows_three] == ids  # plan order
    assert [f.info["id"] for f in three if isinstance(f, Frame)] == ids
    for a, b in zip(rows_one, rows_three):
        for role in ("image", "labels", "moving", "fixed", "moving_labels", "fixed_labels", "field"):
            if not a.get(role):
                continue
            read = (lambda p: read_displacement(p)[0]) if role == "field" else (lambda p: read_volume(p).data)
            x, y = read(tmp_path / "one" / a[role]), read(tmp_path / "three" / b[role])
            if "labels" in role:
                np.testing.assert_array_equal(x, y)
            else:  # float rounding at most (one torch thread against the caller's)
                gap = float(np.abs(np.asarray(x, np.float64) - y).max())
                assert gap <= 1e-4 * float(np.abs(x).max()), (a["id"], role)
        assert abs(float(a["mean_mm"]) - float(b["mean_mm"])) <= 1e-4 * float(a["mean_mm"])
    # every unit's recovery reported its steps
    assert {e.index for e in three if isinstance(e, Progress) and "step " in e.message} == set(range(6))


def test_one_thread_per_worker_gives_bit_identical_files(tmp_path):
    # with the caller on one torch thread too, each unit is computed exactly as by a worker
    case = case_3d()
    settings = ExportSettings(levels="2", samples=3, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, rows_one = _export(case, tmp_path / "one", tiny_drdm(3, grid=(8, 16, 16)), settings, 1)
    finally:
        torch.set_num_threads(before)
    _, rows_two = _export(case, tmp_path / "two", tiny_drdm(3, grid=(8, 16, 16)), settings, 2)
    sums = [{k: v for k, v in r.items() if k.endswith("sha256")} for r in rows_one]
    assert sums and all(sums)
    assert sums == [{k: v for k, v in r.items() if k.endswith("sha256")} for r in rows_two]


def test_jobs_are_yielded_in_order_and_an_error_comes_at_its_turn():
    release = threading.Event()

    def job(i):
        def run():
            if i == 0:
                release.wait(5)  # job 0 finishes last
            yield f"event {i}"
            if i == 2:
                raise InputError("job 2 failed")
            if i == 1:
                release.set()
            return i * 10
        return run

    seen, made = [], []
    with pytest.raises(InputError, match="job 2 failed"):
        for kind, i, payload in made_in_order([job(i) for i in range(5)], 3):
            (seen if kind == "event" else made).append((i, payload))
    assert made == [(0, 0), (1, 10)]  # 0 before 1 although 1 finished first; 2 raised at its turn
    assert (1, "event 1") in seen and (0, "event 0") in seen


def test_closing_stops_the_workers_at_their_next_event():
    steps = []

    def job(i):
        def run():
            for k in range(1000):  # 10 s each if never stopped
                time.sleep(0.01)
                steps.append((i, k))
                yield k
        return run

    runs = made_in_order([job(i) for i in range(4)], 2)
    for _ in range(5):
        next(runs)
    t0 = time.perf_counter()
    runs.close()
    assert time.perf_counter() - t0 < 1.0
    assert not any(t.name.startswith("drdm-export-") for t in threading.enumerate())
    done = len(steps)
    time.sleep(0.1)
    assert len(steps) == done < 100
    assert {i for i, _ in steps} == {0, 1}  # two workers, jobs taken in order


def test_worker_count():
    assert export_workers("cpu", "float32", 8) == min(torch.get_num_threads(), 4)
    assert export_workers("cpu", "float32", 1) == 1
    assert export_workers("cpu", "bfloat16", 8) == 1
    with pytest.raises(InputError, match="workers"):
        list(export_drdm([case_2d()], "unused-folder", ExportSettings(levels="3"), model=tiny_drdm(2)[0],
                         meta=tiny_drdm(2)[1], workers=0))
