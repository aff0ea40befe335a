"""The DRDM export of augment.py on a Dask cluster (dask.distributed).

scheduler "local" starts a LocalCluster of worker processes on this machine; any other value is
the address of a running scheduler (e.g. "tcp://10.0.0.5:8786"). Each task makes one unit
(case, level, sample) and writes its own files into the output folder, which therefore must be
the same path on every worker (a shared file system). Inputs found on disk (CaseFiles) are read
by the workers from their paths (each worker keeps the last few); in-memory cases (napari layers)
are scattered. Each worker process loads the weights once (a path every worker can read, a
registry name, or None for the bundled default) and resolves the device itself: "auto" or "cuda"
on a LocalCluster worker k pins GPU (k // workers_per_gpu) mod #GPUs, and GPU workers declare the
Dask resource GPU=1, one unit at a time. Tasks are retried on errors and rescheduled when a
worker dies; a rescheduled unit rewrites its files.

This process records the manifest: a row is appended as each unit finishes, and at the end the
manifest is rewritten once in plan order, identical to the manifest of an in-process run with the
same settings (the per-unit seeds do not depend on where or in which order units run).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..events import Frame, Plan, Progress
from .augment import (
    Case,
    CaseFiles,
    ExportSettings,
    Unit,
    check_case,
    check_names,
    close_output,
    load_for_export,
    plan_export,
    prepare_output,
    record_unit,
    remove_partials,
    run_unit,
    start_output,
    write_error,
)

RETRIES = 3
CASES_KEPT = 2  # per worker: units of one case are submitted together
_MODELS: dict = {}  # per worker process: (weights, mtime, ndims, device) -> (model, meta, label)
_CASES: OrderedDict = OrderedDict()  # per worker process: (CaseFiles, mtimes) -> Case


def check_inputs(cases: Sequence[Case | CaseFiles]) -> int:
    """Check every case (CaseFiles not yet checked are read one at a time); their common ndims."""
    check_names(cases)
    dims = set()
    for case in cases:
        if isinstance(case, CaseFiles) and case.ndims:
            dims.add(case.ndims)
            continue
        loaded = case.load() if isinstance(case, CaseFiles) else case
        check_case(loaded)
        dims.add(loaded.image.geometry.ndim)
    if len(dims) > 1:
        raise InputError("the inputs mix 2D and 3D images; one export uses one (2D or 3D) model.")
    return dims.pop()


def gpu_for(worker_name, workers_per_gpu: int, gpus: int) -> int | None:
    """The GPU a LocalCluster worker (named 0, 1, ...) pins; None for a worker named otherwise."""
    try:
        ordinal = int(worker_name)
    except (TypeError, ValueError):
        return None
    return ordinal // max(1, int(workers_per_gpu)) % max(1, gpus)


def worker_device(requested: str, workers_per_gpu: int = 1) -> str:
    """The device this worker process runs on (resolved here, not on the submitting machine)."""
    from ..device import choose_device_name

    name = choose_device_name(requested)
    if name != "cuda":
        return name
    import torch
    from distributed import get_worker

    index = gpu_for(get_worker().name, workers_per_gpu, torch.cuda.device_count())
    return name if index is None else f"cuda:{index}"


def _worker_model(weights, ndims: int, device: str, settings: ExportSettings):
    stamp = os.stat(weights).st_mtime_ns if weights is not None and os.path.isfile(str(weights)) else None
    key = (None if weights is None else str(weights), stamp, ndims, str(device))  # a rewritten file reloads
    if key not in _MODELS:
        _MODELS[key] = load_for_export((), settings, weights=weights, device=device, ndims=ndims)
    return _MODELS[key]


def _worker_case(ref: Case | CaseFiles) -> Case:
    if isinstance(ref, Case):
        return ref
    key = (ref, *(os.stat(p).st_mtime_ns for p in (ref.image, ref.labels) if p))
    if key not in _CASES:
        _CASES[key] = ref.load()
        while len(_CASES) > CASES_KEPT:
            _CASES.popitem(last=False)
    _CASES.move_to_end(key)
    return _CASES[key]


def run_unit_task(ref: Case | CaseFiles, unit: Unit, settings: ExportSettings, out_dir: str, weights,
                  device: str, torch_threads: int | None = None, workers_per_gpu: int = 1) -> dict:
    """Dask task: make and write one unit; returns its manifest row."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    case = _worker_case(ref)
    device = worker_device(device, workers_per_gpu)
    model, meta, label = _worker_model(weights, case.image.geometry.ndim, device, settings)
    # overwrite: the folder was checked before the run; files of this unit are from an earlier try
    events = run_unit(case, unit, settings, out_dir, model=model, meta=meta, device=device, overwrite=True,
                      weights_name=label)
    while True:
        try:
            next(events)
        except StopIteration as stop:
            row, _frame = stop.value
            return row


def local_gpus(device: str) -> int:
    """GPUs a LocalCluster spreads its workers over: those torch sees here, when `device` may use them."""
    from ..device import choose_device_name

    if choose_device_name(device) != "cuda":
        return 0
    import torch

    return torch.cuda.device_count()


def connect(scheduler: str, *, workers: int | None = None, threads_per_worker: int = 1, timeout: str = "20s",
            gpus: int = 0, workers_per_gpu: int = 1):
    """(client, cluster or None): a LocalCluster of processes for "local" (with `gpus`, `workers_per_gpu`
    workers per GPU, each declaring the resource GPU=1), else a client of `scheduler`."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(
            "running on a Dask cluster needs the 'distributed' package: pip install 'napari-deformdiff[cluster]'."
        ) from None
    if scheduler == "local":
        if gpus:
            n = workers or gpus * max(1, workers_per_gpu)
            extra = {"resources": {"GPU": 1}}
        else:
            n = workers or max(1, min(4, (os.cpu_count() or 1) // max(1, threads_per_worker)))
            extra = {}
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=None, env={"OMP_NUM_THREADS": str(threads_per_worker)}, **extra)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=timeout), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"could not connect to the Dask scheduler at {scheduler!r}: {exc}") from exc


def _gpu_resources(client, device: str) -> dict | None:
    """{"GPU": 1} when the workers declare GPUs and the device may be one (one unit per GPU slot)."""
    if device == "cpu":
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any("GPU" in (w.get("resources") or {}) for w in workers) else None


def export_drdm_distributed(
    cases: Sequence[Case | CaseFiles],
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
    workers_per_gpu: int = 1,
    retries: int = RETRIES,
) -> Iterator[Progress | Frame]:
    """Run augment.export_drdm's units as Dask tasks; yields Progress per finished unit.

    `device` ("auto", "cpu", "cuda", ...) is resolved on each worker. Stopping the generator cancels
    the tasks that have not finished; the manifest keeps listing exactly the units whose files were
    complete when their row was recorded.
    """
    if not 1 <= int(workers_per_gpu) <= 64:
        raise InputError(f"workers per GPU must be between 1 and 64, got {workers_per_gpu}.")
    ndims = check_inputs(cases)
    units = plan_export(cases, settings)
    out = Path(out_dir).resolve()
    rows = prepare_output(out, units, settings, overwrite=overwrite, resume=resume)
    # bad weights fail here, before any write
    load_for_export((), settings, weights=weights, device="cpu", ndims=ndims)
    created = not out.exists()
    manifest = start_output(out, rows, settings, units)
    if weights is not None and Path(str(weights)).exists():
        weights = str(Path(weights).resolve())
    done_ids = {r["id"] for r in rows}
    todo = [u for u in units if u.id not in done_ids]
    order = {u.id: k for k, u in enumerate(units)}
    finished = False
    client = cluster = None
    futures = []
    try:
        yield Plan((("samples", len(units)),))
        yield Progress(len(rows), len(units), f"starting Dask ({scheduler})", "samples")
        gpus = local_gpus(device) if scheduler == "local" else 0
        client, cluster = connect(scheduler, workers=workers, threads_per_worker=threads_per_worker, gpus=gpus,
                                  workers_per_gpu=workers_per_gpu)
        from distributed import as_completed

        needed = {u.case for u in todo}
        refs = {c.name: (client.scatter(c, broadcast=False) if isinstance(c, Case) else c.absolute())
                for c in cases if c.name in needed}
        threads = threads_per_worker if scheduler == "local" else None
        resources = _gpu_resources(client, device)
        futures = [client.submit(run_unit_task, refs[u.case], u, settings, str(out), weights, str(device), threads,
                                 workers_per_gpu, key=f"drdm-unit-{u.id}-{os.getpid()}", pure=False,
                                 retries=retries, resources=resources)
                   for u in todo]
        for future in as_completed(futures):
            try:
                row = future.result()
            except OutputExistsError:
                raise
            except OSError as exc:
                raise write_error(exc, out, len(rows), manifest) from exc
            rows = record_unit(out, rows, row, settings, manifest)
            yield Progress(len(rows), len(units), f"{row['id']} done ({len(rows)}/{len(units)})", "samples")
        finished = True
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        if finished:
            remove_partials(out, units)  # left by a worker that died while writing
        close_output(out, rows, settings, order, finished=finished, created=created)
