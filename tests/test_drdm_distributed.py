"""The DRDM export on a Dask LocalCluster (2 worker processes) gives the in-process export's files and manifest."""

from __future__ import annotations

import numpy as np
import pytest

from napari_deformdiff.core.drdm.augment import (
    ExportSettings,
    export_drdm,
    read_manifest,
)
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.io import read_volume
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
