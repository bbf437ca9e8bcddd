"""Extraction: a frozen encoder over every tile and variant of a dataset, into a store.

One entry point, :func:`extract`, runs the units of work in this process
(:mod:`embedcache.extract.local`) or as dask tasks on a local or running
cluster (:mod:`embedcache.extract.distributed`); both compute every unit
with :class:`~embedcache.extract.job.ExtractionJob`, so the store is the
same bytes either way.
"""

from __future__ import annotations

from embedcache.config import ExtractConfig
from embedcache.extract.distributed import extract_distributed
from embedcache.extract.job import ExtractResult, Extraction, ExtractionJob
from embedcache.extract.local import extract_local


def extract(data, out, config: ExtractConfig = ExtractConfig(), *, workers: int | None = None,
            scheduler: str | None = None, overwrite: bool = False, progress: bool = True,
            timeout: float | None = None, check: bool = True, repair: bool = False,
            on_note=None, wait: bool = True) -> ExtractResult:
    """Run ``config.encoder`` over every tile and variant of ``data`` into a store at ``out``.

    Parameters
    ----------
    data : str or Path
        A dataset folder (PanNuke, CoNIC, image-folder or slides layout) or one slide.
    out : str or Path
        The store: a local path, or an fsspec URL such as ``s3://bucket/x.zarr``
        (credentials from the environment). A local store is built as
        ``out.partial`` and renamed when complete; on object storage it is
        built in place, its ``complete`` attribute set last. An interrupted
        run is resumed by running again with the same settings.
    config : ExtractConfig
    workers : int, optional
        Run the units of work on a local dask cluster of this many worker
        processes (one per GPU when there are GPUs). None or 0: in this process.
    scheduler : str, optional
        Or on the running dask cluster whose scheduler is at this address
        (``tcp://host:8786``); ``data`` and ``out`` must be reachable from
        every worker at the same path or URL.
    overwrite : bool
        Replace a store (or partial store) made with another configuration.
        A local old store stays in place until the new one is complete.
    progress : bool
        Show a progress bar.
    timeout : float, optional
        Seconds to wait to connect to ``scheduler``.
    repair : bool
        Check an existing store of this configuration chunk by chunk and
        compute again only the finished units whose chunks cannot be read
        back (failed checksums, truncated files); the rest are kept and the
        repaired store holds the bytes a clean extraction writes
        (``ExtractResult.repaired`` lists the units). Nothing to do when
        every chunk reads; refused when there is no such store.
    check : bool
        First check the dataset's headers
        (:func:`~embedcache.datasets.check.require_clean_data`, cheap: no
        pixels decoded) and refuse, before any model loads or store is
        created, with the number of problems and the first; False skips it.
    on_note : callable, optional
        Called with each of the check's notes (conversions it will make,
        padding that dominates the tiles) before the work starts.
    wait : bool
        In this process (no dask): when the units left are all being
        computed by other processes on the same ``out``, wait for them and
        finish the store (True), or return at once, leaving the store for
        them to finish (False; ``ExtractResult.finished_by`` is None).

    Several processes running this on the same ``out`` with the same
    settings share the work (a job array, a second terminal, a rerun
    while a lost node may still be alive): each claims a unit before
    computing it (:mod:`embedcache.claims`, claims kept in ``OUT.claims``
    beside the store), skips units done or claimed by a live process,
    takes over the claims of dead ones, and exactly one of them swaps the
    finished store in (``ExtractResult.finished_by`` is ``"this"`` for it,
    ``"another"`` for the others). Set the environment variable
    ``EMBEDCACHE_UNIT_LOG`` to a file to have each process append
    ``<pid> unit-<number>`` to it for every unit it writes.

    Returns
    -------
    ExtractResult
        ``units``: the timings of each unit run (and its worker, for dask runs).
    """
    if repair and overwrite:
        from embedcache.errors import ConfigError

        raise ConfigError("--repair keeps the store and recomputes its damaged units; --overwrite replaces it: "
                          "give one of them")
    from embedcache.files import check_writable

    check_writable(out)  # before the dataset is read or any model loads
    if check:
        from embedcache.datasets.check import require_clean_data

        report = require_clean_data(data, config.format, tile_size=config.tile_size, overlap=config.overlap,
                                    mpp=config.mpp, tile_mpp=config.tile_mpp, magnification=config.magnification,
                                    classes=config.classes)
        for note in report.notes if on_note else ():
            on_note(note)
    if workers or scheduler:
        return extract_distributed(data, out, config, workers=workers or None, scheduler=scheduler,
                                   overwrite=overwrite, progress=progress, timeout=timeout, repair=repair)

    return extract_local(data, out, config, overwrite=overwrite, progress=progress, repair=repair, wait=wait)


__all__ = ["ExtractResult", "Extraction", "ExtractionJob", "extract"]
