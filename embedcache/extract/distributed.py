"""Extraction on a dask.distributed cluster: units of work become tasks.

The driver (this process) never loads the encoder nor touches the store. It
submits, in order:

1. ``_prepare`` to one worker: build the encoder and dataset, create or
   resume the store (:meth:`ExtractionJob.open_writer`), list the units
   still to do; and ``_load`` to every worker, so each loads the encoder
   once before the clock starts and a worker that cannot load it says so
   at once.
2. one ``_run_unit`` task per unit: the worker reads the unit's tiles,
   computes its arrays and writes them straight into the store, then marks
   the unit done. Units never share an object, so workers write
   concurrently without locks.
3. ``_finish`` to one worker: check every unit is done, set ``complete``
   (and rename ``OUT.partial`` for a local store).

Each worker process keeps one :class:`~embedcache.extract.job.ExtractionJob`
(the loaded encoder) per job, built on first use, so a worker that joins
or restarts mid-run (a nanny replacing a killed process) loads it once too.
A worker lost mid-unit: the scheduler re-runs the unit elsewhere; the unit
rewrites whole shards, so the store ends identical to a single-process run.

One driver at a time extracts into an output: it holds the output's claim
(:func:`~embedcache.shared.sole`), so a second driver, or processes
sharing the output's units without dask (:mod:`embedcache.extract.local`),
are refused in one line while it lives, and it is refused while they do.

Workers read the dataset and the store at the same paths or URLs as the
driver gives (shared file system or object storage), with credentials
from their own environment; nothing secret travels in a task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from embedcache.config import ExtractConfig
from embedcache.errors import ConfigError
from embedcache.extract.job import ExtractResult, ExtractionJob
from embedcache.store.location import StoreLocation
from embedcache.store.writer import StoreWriter
from embedcache.threads import per_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """What a worker needs to build its extraction: plain, picklable, nothing secret."""

    data: str
    out: str
    config: ExtractConfig
    torch_threads: int | None = None  # set for local clusters, where we know the cores


class _WorkerState:
    """One worker process's loaded encoder and the store writer of the current run."""

    def __init__(self, job: _Job):
        import torch

        if job.torch_threads:
            torch.set_num_threads(job.torch_threads)
        self.job = ExtractionJob(job.data, job.config)
        self.out = job.out
        self.compute = threading.Lock()  # a worker with several threads runs the encoder one unit at a time
        self._writer = None  # (run id, StoreWriter)

    def writer(self, run_id: str, opened=None):
        """The writer of run ``run_id``: ``opened`` (by this worker's ``_prepare``), or attached on first use."""

        if opened is not None:
            self._writer = (run_id, opened)
        elif self._writer is None or self._writer[0] != run_id:
            self._writer = (run_id, StoreWriter.attach(self.out))
        return self._writer[1]


_STATES: dict[_Job, _WorkerState] = {}
_STATES_LOCK = threading.Lock()


def _state(job: _Job) -> _WorkerState:
    with _STATES_LOCK:
        if job not in _STATES:
            _STATES.clear()  # one encoder in memory per worker
            _STATES[job] = _WorkerState(job)
        return _STATES[job]


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not in a worker (tests calling tasks directly)
        return f"pid {os.getpid()}"


def _prepare(job: _Job, run_id: str, overwrite: bool, repair: bool = False) -> dict:
    state = _state(job)
    ej = state.job
    writer = ej.open_writer(job.out, overwrite, repair)
    info = {"n_tiles": ej.dataset.n_tiles, "n_variants": len(ej.run.variants), "n_units": ej.n_units,
            "layers": ej.layers, "encoder": ej.run.spec.name, "todo": None, "tiles_todo": 0}
    if writer is not None:
        state.writer(run_id, opened=writer)
        info["todo"] = writer.todo_units()
        info["tiles_todo"] = ej.tiles_in(info["todo"])
        info["redone"] = writer.redone
        info["repaired"] = writer.repaired
    return info


def _load(job: _Job) -> str:
    _state(job)
    return _worker_address()


def _run_unit(job: _Job, run_id: str, unit: int) -> dict:
    state = _state(job)
    started = time.time()
    t0 = time.perf_counter()
    images, labels, stained = state.job.read_unit(unit)
    t1 = time.perf_counter()
    with state.compute:
        arrays = state.job.unit_arrays(unit, images, labels, stained)
    t2 = time.perf_counter()
    state.writer(run_id).write_unit(unit, arrays)
    t3 = time.perf_counter()
    return {"unit": unit, "tiles": int(images.shape[0]), "worker": _worker_address(), "started": started,
            "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2, "ended": time.time()}


def _finish(job: _Job):
    return StoreWriter.attach(job.out).finish()  # no encoder needed: any worker can finish


def _forget():
    with _STATES_LOCK:
        _STATES.clear()


@contextlib.contextmanager
def fast_worker_start():
    """Start worker processes by forking a server that has imported torch, timm and embedcache once.

    dask spawns each worker process fresh, and each then imports torch
    (seconds, more on a busy machine), again whenever a nanny restarts a
    lost worker. Under this context a forkserver does the imports once and
    forks every worker (and restart) from it; CUDA is not initialised
    there, so each child can still be pinned to its own GPU.
    """
    import dask
    from distributed.utils import get_mp_context

    # dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 before starting workers, so glibc hands freed memory
    # back to the OS at once; torch frees and allocates activations every layer, and paid page faults for
    # it: a ViT-S forward ran 25-30% slower in such a worker than in a plain process.
    spawn_env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
                 if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver",
                          "distributed.nanny.pre-spawn-environ": spawn_env}):
        ctx = get_mp_context()  # lets distributed add its own preloads first
        ctx.set_forkserver_preload(["distributed", "embedcache.extract.distributed"])
        yield


def worker_specs(n_workers: int, gpus: int) -> tuple[dict, int | None]:
    """Options of each local worker (dask ``SpecCluster`` style, without the class) and its torch threads.

    >>> specs, threads = worker_specs(2, gpus=2)
    >>> [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()], threads
    (['0', '1'], None)
    """
    threads = None if gpus else per_worker(n_workers)
    base = {"nthreads": 2 if gpus else 1, "host": "127.0.0.1", "dashboard": False, "dashboard_address": None,
            "silence_logs": logging.WARNING}
    specs = {}
    for i in range(n_workers):
        pin = ({"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus
               else {"OMP_NUM_THREADS": str(threads), "EMBEDCACHE_THREADS": str(threads)})
        # Workers forked from the server see the environment it started with; give them ours as it is
        # now (credentials included: process memory, never a task, a log line or the store).
        specs[f"embedcache-{i}"] = {"options": {**base, "env": {**os.environ, **pin}, "name": f"embedcache-{i}"}}
    return specs, threads


@contextlib.contextmanager
def local_cluster(n_workers: int, device: str = "auto"):
    """A dask cluster on this machine: ``n_workers`` processes, each pinned to a GPU when there are GPUs.

    With GPUs (and ``device`` auto or cuda), worker ``i`` sees only GPU
    ``i mod n_gpus`` (``CUDA_VISIBLE_DEVICES``) and has 2 threads, so
    writing one unit overlaps computing the next. On CPU each worker has
    one thread and its share of the thread budget in torch threads
    (:func:`embedcache.threads.per_worker`).

    Yields
    ------
    (distributed.SpecCluster, int or None)
        The running cluster, closed on exit, and the torch threads each
        worker should use (None on GPU).
    """
    import torch
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    if n_workers < 1:
        raise ConfigError(f"--workers must be at least 1 for a local cluster, got {n_workers}")
    if device.startswith("cuda:"):
        raise ConfigError(f"--device {device} pins one GPU; with --workers each worker is pinned to its own GPU, "
                          "so use --device cuda or auto")
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and not gpus:
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available here; use --device cpu")
    workers, threads = worker_specs(n_workers, gpus)
    for spec in workers.values():
        spec["cls"] = Nanny
        spec["options"]["memory_limit"] = MEMORY_LIMIT // n_workers
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False,
                                               "dashboard_address": None}}
    with fast_worker_start(), SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING,
                                          name="embedcache") as cluster:
        yield cluster, threads


def _probe(address: str, timeout: float | None):
    """Fail with one line when no scheduler answers at ``address`` (a failed Client would print tracebacks at exit)."""
    import asyncio

    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect

    seconds = parse_timedelta(timeout if timeout is not None else dask.config.get("distributed.comm.timeouts.connect"))

    async def knock():
        comm = await connect(address, timeout=seconds)
        await comm.close()

    try:
        asyncio.run(knock())
    except ValueError as exc:
        raise ConfigError(f"--scheduler {address}: not a dask scheduler address ({exc}); "
                          "expected tcp://host:port") from None
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address} ({exc}); is it running and reachable "
                          "from here? (start one with `dask scheduler`)") from None


@contextlib.contextmanager
def connect_cluster(workers: int | None, scheduler: str | None, device: str, timeout: float | None):
    """A client on a new local cluster or on the scheduler at ``scheduler``; and the torch threads to use."""
    from distributed import Client

    if scheduler is None:
        with local_cluster(workers, device) as (cluster, threads), Client(cluster, set_as_default=False) as client:
            yield client, threads
        return
    _probe(scheduler, timeout)
    client = Client(scheduler, set_as_default=False, **({} if timeout is None else {"timeout": timeout}))
    with client:
        try:
            yield client, None
        finally:
            with contextlib.suppress(Exception):
                client.run(_forget)  # give the encoder's memory back on a cluster that outlives us


def extract_distributed(data, out, config: ExtractConfig = ExtractConfig(), *, workers: int | None = None,
                        scheduler: str | None = None, overwrite: bool = False, progress: bool = True,
                        timeout: float | None = None, worker_wait: float = 120,
                        repair: bool = False) -> ExtractResult:
    """:func:`embedcache.extract.extract` with units of work run as dask tasks (what ``workers=`` or ``scheduler=`` runs).

    Parameters
    ----------
    data, out, config, overwrite, progress
        As for :func:`~embedcache.extract.extract`. ``data`` and ``out``
        must be reachable from every worker at the same path or URL.
    workers : int
        Start a local cluster of this many worker processes (one per GPU
        when there are GPUs), closed at the end.
    scheduler : str
        Address of a running dask scheduler (``tcp://host:8786``) instead.
    timeout : float
        Seconds to wait to connect to ``scheduler`` (dask's default: 30).
    worker_wait : float
        Seconds to wait for a first worker to join ``scheduler``.

    Returns
    -------
    ExtractResult
        With ``units``: one record per unit run (worker, read/compute/write seconds).

    Raises
    ------
    ConfigError
        Both or neither of ``workers`` and ``scheduler``; an unreachable
        scheduler; a cluster with no workers; a unit that keeps killing workers.
    """
    if (workers is None) == (scheduler is None):
        raise ConfigError("give either --workers N (a local cluster) or --scheduler ADDRESS (a running one)")
    from embedcache.shared import DASK_DRIVER, sole

    location = StoreLocation.parse(out)
    t0 = time.perf_counter()
    # The workers write units without claims: one driver at a time holds the output, and processes sharing it
    # through claims (the same command without dask) refuse it, or are refused, in one line.
    with sole(out, DASK_DRIVER, alone=True), \
            connect_cluster(workers, scheduler, config.device, timeout) as (client, threads):
        job = _Job(str(Path(data).absolute()), location.absolute().url, config, threads)
        return _drive(client, job, location, overwrite, progress, worker_wait, scheduler or "local cluster", t0,
                      repair)


def _drive(client, job: _Job, location: StoreLocation, overwrite: bool, progress: bool, worker_wait: float,
           where: str, t0: float, repair: bool = False) -> ExtractResult:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from embedcache.progress import progress_bar

    try:
        client.wait_for_workers(1, timeout=worker_wait)
    except (TimeoutError, OSError):
        raise ConfigError(f"no dask worker joined {where} within {worker_wait:.0f} s; start workers "
                          "(`dask worker ADDRESS`) and run again") from None
    run_id = uuid.uuid4().hex[:12]
    addresses = list(client.scheduler_info(n_workers=-1)["workers"])
    prepared = client.submit(_prepare, job, run_id, overwrite, repair, key=f"embedcache-prepare-{run_id}",
                             pure=False)
    loads = [client.submit(_load, job, key=f"embedcache-load-{run_id}-{i}", workers=[a], allow_other_workers=True,
                           pure=False) for i, a in enumerate(addresses)]
    info = prepared.result()
    log.info("store prepared on a worker in %.1f s", time.perf_counter() - t0)
    layers, n_tiles, n_units = info["layers"], info["n_tiles"], info["n_units"]
    if info["todo"] is None:
        client.cancel(loads)
        return ExtractResult(location.path, n_tiles, info["n_variants"], 0, n_units, time.perf_counter() - t0,
                             skipped=True, layers=layers)
    for f in loads:
        f.result()
    log.info("encoder loaded on %d workers after %.1f s", len(loads), time.perf_counter() - t0)
    todo = info["todo"]
    bar = progress_bar(total=n_tiles, initial=n_tiles - info["tiles_todo"], unit="tile", disable=not progress,
               dynamic_ncols=True, desc=f"extract {info['encoder']} x{info['n_variants']} variants "
                                        f"on {len(addresses)} workers")
    t_run = time.perf_counter()
    futures = [client.submit(_run_unit, job, run_id, u, key=f"embedcache-unit-{run_id}-{u}", pure=False)
               for u in todo]
    records = []
    try:
        for future in as_completed(futures, loop=client.loop):  # ours, not the default client's
            record = future.result()
            records.append(record)
            bar.update(record["tiles"])
    except KilledWorker as exc:
        client.cancel(futures)
        unit = str(exc.task).rsplit("-", 1)[-1]
        raise ConfigError(f"unit {unit} killed {exc.allowed_failures + 1} workers in a row (out of memory, or a crash "
                          "in the encoder); lower --batch-size or --unit-tiles and run again to resume") from None
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - t_run
    log.info("%d units in %.1f s", len(records), seconds)
    client.submit(_finish, job, key=f"embedcache-finish-{run_id}", pure=False).result()
    records.sort(key=lambda r: r["unit"])
    return ExtractResult(location.path, n_tiles, info["n_variants"], len(todo), n_units, seconds, layers=layers,
                         units=records, redone=info.get("redone"), repaired=info.get("repaired"))
