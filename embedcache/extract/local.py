"""Extraction in this process: a loader worker reads units, the encoder runs, a writer thread writes.

A DataLoader worker reads each unit's tiles (and applies stain variants,
which are pixel-wise); the main thread applies the dihedral variants on the
device, runs ``forward_intermediates`` in batches of ``batch_size``
tile-variants, and hands the unit's arrays to a writer thread, which
compresses and writes them while the next unit computes. A unit is marked
done only after all its arrays are written.

Several processes may run this on one output at once: the loader's
sampler claims each unit before it is read (:class:`~embedcache.shared.SharedUnits`),
passes over units done or claimed by live processes, and a process with
nothing left to claim waits for the others (or, without ``wait``, returns);
creating, resuming and swapping the store in happen one process at a
time, under the ``store`` claim.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import torch

from embedcache.claims import Claims, claims_place
from embedcache.shared import SharedUnits, done_reader, open_alone, work_through
from embedcache.config import ExtractConfig
from embedcache.datasets import TileDataset
from embedcache.datasets.variants import Variant
from embedcache.extract.job import ExtractionJob, ExtractResult, read_unit
from embedcache.store import schema
from embedcache.store.location import StoreLocation
from embedcache.threads import compute_threads, use_threads
from embedcache.workers import die_with_parent


class _Units(torch.utils.data.Dataset):
    """Unit number -> its number, tiles, labels and pixel-wise (stain) variants (the sampler picks the units)."""

    def __init__(self, dataset: TileDataset, unit_tiles: int, variants: tuple[Variant, ...]):
        self.dataset, self.unit_tiles, self.variants = dataset, unit_tiles, variants

    def __len__(self):
        return schema.n_units(self.dataset.n_tiles, self.unit_tiles)

    def __getitem__(self, unit):
        # As tensors, a unit leaves a worker through shared memory instead of being pickled down a pipe
        # (11 MB a unit of 256-px tiles with labels: the main thread waited ~60 ms a unit unpickling them).
        images, labels, stained = read_unit(self.dataset, unit, self.unit_tiles, self.variants)
        return (unit, torch.from_numpy(images), None if labels is None else torch.from_numpy(labels),
                {name: torch.from_numpy(a) for name, a in stained.items()})


def _collate(batch):
    return batch[0]


def _arrays(unit, images, labels, stained):
    """A unit from the loader as numpy arrays again (views of the shared tensors, no copy)."""
    return (unit, images.numpy(), None if labels is None else labels.numpy(),
            {name: t.numpy() for name, t in stained.items()})


def _worker_init(parent: int):
    def init(_):
        die_with_parent(parent)

    return init


def extract_local(data, out, config: ExtractConfig = ExtractConfig(), overwrite: bool = False,
                  progress: bool = True, repair: bool = False, wait: bool = True) -> ExtractResult:
    """:func:`embedcache.extract.extract` in this process (``workers`` and ``scheduler`` unset); torch's
    threads and the loader processes share the thread budget (:mod:`embedcache.threads`)."""
    with use_threads(beside=config.loader_workers):
        return _extract_local(data, out, config, overwrite, progress, repair, wait)


def _extract_local(data, out, config: ExtractConfig, overwrite: bool, progress: bool,
                   repair: bool = False, wait: bool = True) -> ExtractResult:
    t0 = time.perf_counter()
    torch.set_grad_enabled(False)
    job = ExtractionJob(data, config)
    run, dataset = job.run, job.dataset
    if dataset.stack:  # the loader only slices memory-mapped stacks: no core of its own
        torch.set_num_threads(compute_threads(0))
    with Claims(claims_place(out), job.store_id) as claims:
        with StoreLocation.parse(out).errors():  # the first request to object storage: credentials, network
            # --overwrite starts again only when no live process of these settings works on it: the same
            # command run N times joins the first one instead of wiping its work.
            writer = open_alone(claims, str(out), lambda joined: job.open_writer(out, overwrite and not joined,
                                                                                  repair))
        if writer is None:  # complete
            claims.job_done()
            return ExtractResult(StoreLocation.parse(out).path, dataset.n_tiles, len(run.variants), 0, job.n_units,
                                 time.perf_counter() - t0, skipped=True, layers=job.layers)
        building = Path(str(writer.path)) if writer.location.is_local else None
        units = SharedUnits(claims, writer.todo_units(), done_reader(writer.array(schema.DONE), building))
        t_run = time.perf_counter()
        timings: list[dict] = []  # compute seconds of each unit: the repeats a cost's spread is measured over
        finished_by = work_through(claims, units, lambda: _run_pass(job, writer, units, timings, progress),
                                   lambda: _finished(writer), writer.finish, wait)
        seconds = time.perf_counter() - t_run
    return ExtractResult(writer.out, dataset.n_tiles, len(run.variants), len(units.computed), job.n_units, seconds,
                         layers=job.layers, units=timings, redone=writer.redone, repaired=writer.repaired,
                         shared=units.summary(job.n_units), finished_by=finished_by)


def _finished(writer) -> bool:
    """Whether another process has finished the store this one writes into."""
    if writer.location.is_local:
        return not Path(str(writer.path)).exists()
    from embedcache.store.writer import read_attrs

    return bool((read_attrs(writer.location) or {}).get("complete"))


def _run_pass(job: ExtractionJob, writer, units: SharedUnits, timings: list, progress: bool) -> None:
    """One pass over the units this process can claim: a loader reads them, the encoder runs, a thread writes."""
    from embedcache.progress import progress_bar

    config, run, dataset = job.config, job.run, job.dataset
    loader = torch.utils.data.DataLoader(
        _Units(dataset, config.unit_tiles, run.variants), batch_size=1, sampler=iter(units),
        num_workers=config.loader_workers, collate_fn=_collate,
        prefetch_factor=2 if config.loader_workers else None, persistent_workers=False,
        worker_init_fn=_worker_init(os.getpid()) if config.loader_workers else None)
    todo = units.pending
    bar = progress_bar(total=dataset.n_tiles, initial=dataset.n_tiles - job.tiles_in(todo), unit="tile",
                       disable=not progress, dynamic_ncols=True,
                       desc=f"extract {run.spec.name} x{len(run.variants)} variants")
    pending: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def write_loop():
        while (item := pending.get()) is not None:
            unit, arrays = item
            if failure:
                continue
            try:
                writer.write_unit(unit, arrays)
                units.finished(unit)
                bar.update(next(iter(arrays.values())).shape[0])
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

    thread = threading.Thread(target=write_loop, name="embedcache-writer", daemon=True)
    thread.start()
    try:
        for item in loader:
            if failure:
                break
            unit, images, labels, stained = _arrays(*item)
            t_unit = time.perf_counter()
            arrays = job.unit_arrays(unit, images, labels, stained)
            timings.append({"unit": int(unit), "tiles": int(images.shape[0]),
                            "compute_s": time.perf_counter() - t_unit})
            pending.put((unit, arrays))
    finally:
        pending.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
