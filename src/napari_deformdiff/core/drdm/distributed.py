"""The DRDM export of augment.py on a Dask cluster (dask.distributed).

scheduler "local" starts a LocalCluster of worker processes on this machine; any other value is
the address of a running scheduler (e.g. "tcp://10.0.0.5:8786"). Each task makes one unit
(case, level, sample) and writes its own files into the output folder, which therefore must be
the same path on every worker (a shared file system). Each worker process loads the weights once
(a path every worker can read, a registry name, or None for the bundled default). This process
records the manifest: it is rewritten atomically as units finish, in plan order, so it always
lists exactly the complete units and ends up identical to the manifest of an in-process run
with the same settings (the per-unit seeds do not depend on where or in which order units run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..events import Frame, Plan, Progress
from .augment import (
    Case,
    ExportSettings,
    Unit,
    check_cases,
    load_for_export,
    plan_export,
    prepare_output,
    record_unit,
    run_unit,
    start_output,
    write_error,
)

_MODELS: dict = {}  # per worker process: (weights, mtime, ndims, device) -> (model, meta, label)


def _worker_model(weights, ndims: int, device: str, settings: ExportSettings, case: Case):
    stamp = os.stat(weights).st_mtime_ns if weights is not None and os.path.isfile(str(weights)) else None
    key = (None if weights is None else str(weights), stamp, ndims, str(device))  # a rewritten file reloads
    if key not in _MODELS:
        _MODELS[key] = load_for_export([case], settings, weights=weights, device=device)
    return _MODELS[key]


def run_unit_task(case: Case, unit: Unit, settings: ExportSettings, out_dir: str, weights, device: str,
                  overwrite: bool, torch_threads: int | None = None) -> dict:
    """Dask task: make and write one unit; returns its manifest row."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    model, meta, label = _worker_model(weights, case.image.geometry.ndim, device, settings, case)
    events = run_unit(case, unit, settings, out_dir, model=model, meta=meta, device=device, overwrite=overwrite,
                      weights_name=label)
    while True:
        try:
            next(events)
        except StopIteration as stop:
            row, _frame = stop.value
            return row


def connect(scheduler: str, *, workers: int | None = None, threads_per_worker: int = 1, timeout: str = "20s"):
    """(client, cluster or None): a LocalCluster of processes for "local", else a client of `scheduler`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "running on a Dask cluster needs the 'distributed' package: pip install 'napari-deformdiff[cluster]'."
        ) from None
    if scheduler == "local":
        n = workers or max(1, min(4, (os.cpu_count() or 1) // max(1, threads_per_worker)))
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=None, env={"OMP_NUM_THREADS": str(threads_per_worker)})
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=timeout), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"could not connect to the Dask scheduler at {scheduler!r}: {exc}") from exc


def export_drdm_distributed(
    cases: Sequence[Case],
    out_dir: str | Path,
    settings: ExportSettings,
    *,
    scheduler: str = "local",
    weights: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    resume: bool = False,
    workers: int | None = None,
    threads_per_worker: int = 1,
) -> Iterator[Progress | Frame]:
    """Run augment.export_drdm's units as Dask tasks; yields Progress per finished unit.

    Stopping the generator cancels the tasks that have not finished; the manifest keeps listing
    exactly the units whose files were complete when their row was recorded.
    """
    check_cases(cases)
    units = plan_export(cases, settings)
    out = Path(out_dir).resolve()
    rows = prepare_output(out, units, settings, overwrite=overwrite, resume=resume)
    load_for_export(cases, settings, weights=weights, device="cpu")  # bad weights fail here, before any write
    manifest = start_output(out, rows, settings, units)
    if weights is not None and Path(str(weights)).exists():
        weights = str(Path(weights).resolve())
    done_ids = {r["id"] for r in rows}
    todo = [u for u in units if u.id not in done_ids]
    order = {u.id: k for k, u in enumerate(units)}
    yield Plan((("samples", len(units)),))
    yield Progress(len(rows), len(units), f"starting Dask ({scheduler})", "samples")
    client, cluster = connect(scheduler, workers=workers, threads_per_worker=threads_per_worker)
    futures = []
    try:
        from distributed import as_completed

        by_name = {c.name: c for c in cases}
        shared = {name: client.scatter(case, broadcast=False) for name, case in by_name.items() if
                  any(u.case == name for u in todo)}
        threads = threads_per_worker if scheduler == "local" else None
        futures = [client.submit(run_unit_task, shared[u.case], u, settings, str(out), weights, str(device),
                                 overwrite or resume, threads, key=f"drdm-unit-{u.id}-{os.getpid()}", pure=False)
                   for u in todo]
        for future in as_completed(futures):
            try:
                row = future.result()
            except OutputExistsError:
                raise
            except OSError as exc:
                raise write_error(exc, out, len(rows), manifest) from exc
            rows = record_unit(out, rows, row, settings, order, manifest)
            yield Progress(len(rows), len(units), f"{row['id']} done ({len(rows)}/{len(units)})", "samples")
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
        client.close()
        if cluster is not None:
            cluster.close()
