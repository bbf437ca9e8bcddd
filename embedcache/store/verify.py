"""Check a store: completeness and every chunk decoded against its checksum (``embedcache verify``), and the
units of work whose chunks fail (what ``extract --repair`` computes again).

Reads through plain zarr, not the store's own shard reads, so it is an
independent check of what the writer put down.
"""

from __future__ import annotations

import numpy as np

from embedcache.store import schema


def verify_store(store, progress=None) -> list[str]:
    """Check completeness and decode every chunk (checksums); return the problems found.

    ``progress`` is called with each array's path once it is checked. An
    empty list means the store is complete and intact.
    """
    return _scan(store, progress)[0]


def damaged_units(store, progress=None) -> list[int]:
    """Units of work of an embedding store whose chunks cannot be read back (a failed checksum, a truncated
    file): what ``extract --repair`` computes again. NaN values are not counted (the encoder wrote them, and
    would again)."""
    return _scan(store, progress)[1]


def _scan(store, progress=None) -> tuple[list[str], list[int]]:
    """The problems of a store and the units (embedding stores) whose chunks cannot be read."""
    problems = []
    done, units = store.units_done()
    if done < units:
        provenance = getattr(store, "provenance", None)  # cell stores record none
        if "source_fingerprints" in (getattr(provenance, "dataset", None) or {}):
            fix = ("; after fixing a source file, the units with its tiles are computed again and the others "
                   "kept, unless the fix moves tiles (another image size): then --overwrite")
        else:
            fix = "; if the data changed since, it starts again only with --overwrite"
        problems.append(f"incomplete: {units - done} of {units} units of work not written "
                        f"(run the same extract or cells command again to resume{fix})")
    elif not store.complete:
        problems.append("all units written but the store was never marked complete")
    cells = hasattr(store, "n_cells")  # cell stores are rebuilt whole; embedding stores repaired by unit
    fix = ("run the same cells command with --overwrite" if cells else
           "run the same extract command with --repair to compute only the damaged units again")
    step = int(store.verify_rows)
    damaged: set[int] = set()
    for path in store.arrays():
        if path == schema.DONE:
            continue
        arr = store._array(path)
        for start in range(0, arr.shape[0], step):
            stop = min(start + step, arr.shape[0])
            try:
                block = arr[start:stop]
            except Exception as exc:
                unit = "" if cells else f" (unit {start // step})"
                rows = f"tile {start}" if stop - start == 1 else f"tiles {start}..{stop - 1}"
                problems.append(f"{path}: {rows}{unit} cannot be read "
                                f"({type(exc).__name__}: {exc}); {fix}")
                damaged.add(start // step)
                continue
            if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
                problems.append(f"{path}: tiles {start}..{stop - 1} hold NaN or infinite values")
        if progress:
            progress(path)
    return problems, [] if cells else sorted(damaged)
