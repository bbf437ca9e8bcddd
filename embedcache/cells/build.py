"""``embedcache cells``: a cell store from a store and its nuclei, unit by unit, resumable.

Nuclei come from :mod:`embedcache.cells.nuclei`, vectors from
:mod:`embedcache.cells.pool`, and the cell store is written by
:class:`~embedcache.store.cells.CellWriter`. Every nucleus is pooled once,
in one tile (see :func:`~embedcache.cells.nuclei.image_nuclei`), for every
tapped layer and variant: a variant's tokens are first turned back into the
identity's frame (its flip and quarter turns undone), so one set of weights
serves every variant and the same nucleus is compared with itself.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.claims import Claims, claims_place
from embedcache.shared import SharedUnits, audit, done_reader, open_alone, work_through
from embedcache.cells.nuclei import image_nuclei, nuclei_source
from embedcache.cells.pool import inst_to_cells, sparse_weights
from embedcache.config import CellsConfig
from embedcache.datasets import resolve_variants
from embedcache.errors import DataError, StoreError
from embedcache.store import schema
from embedcache.store.cells import CELLS_ATTRS, TABLE, CellStore, CellWriter, table_path
from embedcache.store.images import source_images
from embedcache.store.reader import open_store
from embedcache.threads import budget


@dataclass
class CellsResult:
    """What :func:`build_cells` did."""

    path: Path
    n_cells: int
    n_images: int
    layers: list[str]
    variants: list[str]
    units: int
    units_run: int
    cells_run: int
    seconds: float
    types: dict = field(default_factory=dict)
    shared: str | None = None  # beside other processes: what this one computed, found done, left to others
    finished_by: str | None = "this"  # or "another" process swapped the cell store in; None: left unfinished
    skipped: bool = False  # the cell store was already complete with these settings

    @property
    def cells_per_second(self) -> float:
        """Cells pooled by this run (a resumed run skips finished units) per second of the whole run."""
        return self.cells_run / max(self.seconds, 1e-9)


# Threads measuring nuclei: two keep both cores of a small machine busy (reads in zarr's threads, numpy here);
# never more than the thread budget (embedcache.threads).
THREADS = 2


def _units(images, unit_tiles: int) -> list[tuple[int, int]]:
    """Runs of whole images of at most ``unit_tiles`` tiles (an image with more is a unit of its own)."""
    out, start, tiles = [], 0, 0
    for i, im in enumerate(images):
        if i > start and tiles + len(im.tiles) > unit_tiles:
            out.append((start, i))
            start, tiles = i, 0
        tiles += len(im.tiles)
    if images:
        out.append((start, len(images)))
    return out


def build_cells(store_path, out, config: CellsConfig = CellsConfig(), *, overwrite: bool = False,
                progress: bool = True, wait: bool = True, check=None) -> CellsResult:
    """Pool a vector per nucleus, layer and variant from a complete store into the cell store ``out``.

    Several processes building the same cell store share its units
    (claims in ``OUT.claims``, :mod:`embedcache.claims`): each pools the
    units no live process holds, and one of them swaps the store in;
    ``wait=False`` returns when only units held by others are left. The
    process that creates the cell store measures every image's nuclei
    (the table needs every unit's count) and leaves each unit's pooling
    weights in the partial store; the others, and a resumed build, read
    the weights of the units they pool: nuclei are measured once.
    ``check(record)``, given the cell store's settings record (classes,
    nuclei source) before anything is measured or written, may raise to
    refuse the build.

    Raises
    ------
    DataError
        Nuclei that do not match the store's images, points outside every
        tile, labels none of the store's classes, no nuclei at all, or a
        store without labels and no other nuclei source.
    StoreError
        The store is missing or incomplete; ``out`` exists without
        ``overwrite``; an interrupted cell store made with other settings.
    """
    from embedcache.progress import progress_bar

    t0 = time.perf_counter()
    store = open_store(store_path)
    if isinstance(store, CellStore):
        raise StoreError(f"{store.path} is a cell store; pass the embedding store it was pooled from")
    if not store.complete:
        raise StoreError(f"{store.path}: the store is incomplete; run the same extract command again to finish it")
    layers = store.select_layers(config.layers)
    chosen = list(range(len(store.variants))) if config.variants == "all" else [0]
    variants = resolve_variants([store.variants[i] for i in chosen])
    images = source_images(store)
    source = nuclei_source(store, images, config.nuclei, config.radius)
    source_store = {"path": str(Path(str(store.path)).absolute()) if store.location.is_local else str(store.path),
                    "dataset_fingerprint": store.config.dataset_fingerprint,
                    "weights_sha256": store.config.weights_sha256, "n_tiles": store.n_tiles}
    settings = {"layers": {layer: store.layout(layer).shape[0] for layer in layers},
                "variants": [v.name for v in variants], "encoder": store.encoder.to_dict(),
                "source_store": source_store, "nuclei": source.describe(config.radius), "config": config.to_dict()}
    if Path(out).exists() and not overwrite:
        return _already_built(Path(out), settings, len(images), t0)
    info = store.tile_info()
    valid = info["valid"]
    image_units = _units(images, config.unit_tiles)
    grids = sorted({store.layout(layer).grid for layer in layers})

    def measure(unit: int):
        """The nuclei of unit ``unit``'s images (table rows per image) and its pooling weights."""
        i0, i1 = image_units[unit]
        maps = source.maps_of(images[i0:i1])
        found = [image_nuclei(inst, types, im, store.tile_shape, valid) for im, (inst, types) in
                 zip(images[i0:i1], maps)]
        audit(f"nuclei-{unit:06d}")
        return found, unit_pooling(images[i0:i1], [m[0] for m in maps], found, grids, store.tile_shape, valid)

    def measure_all():
        """Every unit measured (by the process that creates the cell store): the table, units and weights."""
        per_image, unit_weights = [], []
        with progress_bar(total=len(images), desc="nuclei", unit="image", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=min(THREADS, budget()), thread_name_prefix="embedcache-cells") as pool:
            # Units are measured on THREADS threads (numpy and the codecs release the GIL), in order.
            for (i0, i1), (found, weights) in zip(image_units, pool.map(measure, range(len(image_units)))):
                per_image += found
                unit_weights.append(weights)
                bar.update(i1 - i0)
        n_cells = sum(len(t["instance"]) for t in per_image)
        if n_cells == 0:
            raise DataError(f"{source.source}: no nuclei in any of the store's {len(images)} images; "
                            "nothing to pool (check the nuclei source)")
        table = {c: np.concatenate([t[c] for t in per_image]) for c in TABLE if c != "source"}
        table["source"] = info["source"][table["tile"]]
        bounds = np.cumsum([0] + [len(t["instance"]) for t in per_image])
        return table, [(i0, i1, int(bounds[i0]), int(bounds[i1])) for i0, i1 in image_units], unit_weights

    # What the cell store records besides what measuring finds (n_cells): what processes sharing it agree on.
    base = {**settings, "class_names": {str(k): v for k, v in sorted(source.class_names.items())},
            "source_names": _source_names(images, info["source"]), "mpp": store.tile_mpp}
    dtype = "float32" if store.config.dtype == "float32" else "float16"  # pooled cells of int8 tokens: float16
    if check is not None:
        check(base)
    with Claims(claims_place(out), _digest(base)) as claims:
        # Nuclei are measured by the process creating the cell store (it needs every unit's count); it leaves
        # each unit's weights in the partial, so the processes joining it pool their units without measuring.
        opened = open_alone(claims, str(out), lambda joined: _open_cells(out, base, measure_all, dtype,
                                                                         overwrite and not joined))
        if opened is None:  # finished meanwhile by another process with these settings
            claims.job_done()
            built = _already_built(Path(out), settings, len(images), t0)
            built.finished_by = None
            return built
        writer, measured = opened
        units = writer.units
        done = writer.done()
        todo = [u for u in range(len(units)) if not done[u]]
        shared = SharedUnits(claims, todo, done_reader(writer.group[schema.DONE], writer.tmp),
                             name=lambda u: f"cells-{u:06d}")
        cells_run = sum(units[u][3] - units[u][2] for u in todo)

        def weights_of(u: int):
            return measured[u] if u in measured else _load_weights(writer.tmp, u, grids) or measure(u)[1]

        def run_pass():
            with progress_bar(total=cells_run, desc="cells", unit="cell", disable=not progress) as bar:
                def read(u):
                    tiles, weights = weights_of(u)
                    return u, weights, unit_tokens(store, tiles, layers, chosen, variants)

                for u, weights, tokens in store.read_ahead(read, iter(shared), depth=1):
                    vectors = pool_unit(tokens, weights)
                    with _chunks_held(claims, writer, units[u]):
                        writer.write_unit(u, vectors)
                    shared.finished(u)
                    bar.update(units[u][3] - units[u][2])

        def finish():
            files.remove(writer.tmp / WEIGHTS)  # scaffolding of the build, not part of the cell store
            writer.finish()

        types = np.asarray(writer.group[table_path("type")][:])
        finished_by = work_through(claims, shared, run_pass, lambda: not writer.tmp.exists(), finish, wait)
    counts = {source.class_names.get(int(t), f"type {t}") if t else "unknown": int((types == t).sum())
              for t in np.unique(types)}
    ran = len(shared.computed)
    return CellsResult(Path(out), len(types), len(images), layers, [v.name for v in variants], len(units), ran,
                       sum(units[u][3] - units[u][2] for u in shared.computed), time.perf_counter() - t0, counts,
                       shared=shared.summary(len(units)), finished_by=finished_by)


WEIGHTS = ".unit_weights"  # in OUT.partial while it is built: each unit's pooling weights, one .npz a unit


def _save_weights(tmp: Path, unit_weights: list) -> None:
    """Each unit's ``(tiles, {grid: CSR weights})`` into ``tmp/.unit_weights/NNNNNN.npz`` (atomic files)."""
    for u, (tiles, weights) in enumerate(unit_weights):
        arrays = {"tiles": np.asarray(tiles, dtype=np.int64)}
        for (gh, gw), m in weights.items():
            key = f"g{gh}x{gw}"
            arrays.update({f"{key}_data": m.data, f"{key}_indices": m.indices, f"{key}_indptr": m.indptr,
                           f"{key}_shape": np.asarray(m.shape, dtype=np.int64)})
        with files.atomic_file(tmp / WEIGHTS / f"{u:06d}.npz") as part, open(part, "wb") as fh:
            np.savez(fh, **arrays)


def _load_weights(tmp: Path, unit: int, grids: list):
    """A unit's weights saved by :func:`_save_weights`; None when they are not there (they are measured again)."""
    from scipy.sparse import csr_matrix

    path = tmp / WEIGHTS / f"{unit:06d}.npz"
    try:
        with np.load(path) as z:
            weights = {}
            for gh, gw in grids:
                key = f"g{gh}x{gw}"
                weights[(gh, gw)] = csr_matrix((z[f"{key}_data"], z[f"{key}_indices"], z[f"{key}_indptr"]),
                                               shape=tuple(int(v) for v in z[f"{key}_shape"]))
            return z["tiles"].tolist(), weights
    except (OSError, KeyError, ValueError):
        return None


@contextlib.contextmanager
def _chunks_held(claims, writer: CellWriter, unit: tuple):
    """Hold the vector chunks a unit's cells fall in while it is written.

    Units are runs of whole images, chunks runs of ``unit_cells`` cells, so
    two units may share a chunk; zarr writes part of a chunk by reading,
    merging and rewriting it, so two processes writing one chunk at once
    would lose one's cells. Chunks are claimed in ascending order: no two
    processes wait on each other.
    """
    _, _, c0, c1 = unit
    rows = writer.chunk_rows
    names = [f"chunk-{k:06d}" for k in range(c0 // rows, (c1 - 1) // rows + 1)] if c1 > c0 else []
    for name in names:
        claims.acquire_waiting(name, poll_s=0.05)
    try:
        yield
    finally:
        for name in names:
            claims.release(name)


def _digest(record: dict) -> str:
    """What identifies a cell store's settings among the processes building it."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cells_record(out) -> dict | None:
    """The record of the cell store at ``out`` (None when there is none or it cannot be read)."""
    import zarr

    try:
        return dict(zarr.open_group(str(out), mode="r").attrs).get(CELLS_ATTRS)
    except Exception:
        return None


def _open_cells(out, base: dict, measure_all, dtype: str, overwrite: bool):
    """Create or resume the cell store: ``(writer, {unit: weights} measured here)``; None when ``out`` is
    already complete with these settings.

    A partial of these settings is resumed as it is (nothing measured);
    otherwise ``measure_all()`` gives the table, units and weights, the
    store is created and the weights saved beside its arrays.
    """
    files.recover(out)  # under the claim: a process killed in the swap left the new cell store staged
    same = lambda record: record is not None and files.plain_json(base) == {  # noqa: E731
        k: v for k, v in record.items() if k not in ("n_cells", "complete", "created", "format", "units")}
    if Path(out).exists() and not overwrite:
        old = _cells_record(out)
        if old is not None and old.get("complete") and same(old):
            return None
    old = _cells_record(files.partial_path(out)) if not overwrite else None
    if old is not None and "units" in old:
        # Resumed (CellWriter refuses it, naming what differs, when made with other settings): nothing measured.
        return CellWriter(out, {"n_cells": old.get("n_cells"), **base}, None, base["layers"], dtype, old["units"]), {}
    table, units, unit_weights = measure_all()
    writer = CellWriter(out, {"n_cells": len(table["tile"]), **base}, table, base["layers"], dtype, units,
                        overwrite=overwrite)
    _save_weights(writer.tmp, unit_weights)
    return writer, dict(enumerate(unit_weights))


def _already_built(out: Path, settings: dict, n_images: int, t0: float) -> CellsResult:
    """The result of a cell store already built with these settings (running again does nothing).

    Raises
    ------
    StoreError
        ``out`` is not a complete cell store of the same store, nuclei and settings.
    """
    from embedcache.store.cells import CellStore

    try:
        old = open_store(out)
    except StoreError:
        old = None
    same = isinstance(old, CellStore) and old.complete and \
        old.built_from(settings) == files.plain_json(settings)
    if not same:
        raise StoreError(f"{out} exists and holds other cells (another store, nuclei or settings); pass "
                         "--overwrite to replace it, or choose another --out")
    types = np.asarray(old.table()["type"]) if old.n_cells else np.zeros(0, np.int64)
    counts = {old.class_names.get(int(t), f"type {t}") if t else "unknown": int((types == t).sum())
              for t in np.unique(types)}
    return CellsResult(out, old.n_cells, n_images, old.layers, old.variants, old.n_units, 0, 0,
                       time.perf_counter() - t0, counts, skipped=True)


def _source_names(images, source: np.ndarray) -> list[str]:
    names = [""] * (int(source.max()) + 1 if len(source) else 0)
    for im in images:
        names[int(source[im.tiles[0][1]])] = im.name
    return names


def unit_pooling(images, instances: list[np.ndarray], found: list[dict], grids: list, tile_shape,
                 valid: np.ndarray):
    """``(tiles, {grid: weights})`` of a unit: its tiles in order and, per token grid, the sparse
    ``(cells of the unit) x (tiles x patches)`` matrix of each cell's shares of the patches it covers."""
    from scipy.sparse import csr_matrix

    tiles = sorted({t for im in images for _, t in im.tiles})
    position = {t: k for k, t in enumerate(tiles)}
    th, tw = tile_shape
    parts = {grid: ([], [], []) for grid in grids}
    offset = 0
    for im, inst, nuclei in zip(images, instances, found):
        if len(nuclei["instance"]):
            for (r, c), t in im.tiles:
                sel = np.flatnonzero(nuclei["tile"] == t)
                if not len(sel):
                    continue
                h, w = valid[t]
                crop = np.zeros((th, tw), dtype=np.int64)
                crop[:h, :w] = inst[r:r + h, c:c + w]
                cell_of_pixel = inst_to_cells(crop, nuclei["instance"][sel])
                for grid in grids:
                    cells, patches, shares = sparse_weights(cell_of_pixel, grid)
                    rows, cols, vals = parts[grid]
                    rows.append(offset + sel[cells])
                    cols.append(position[t] * grid[0] * grid[1] + patches)
                    vals.append(shares)
        offset += len(nuclei["instance"])
    weights = {}
    for grid, (rows, cols, vals) in parts.items():
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))  # noqa: E731
        weights[grid] = csr_matrix((cat(vals, np.float32), (cat(rows, np.int64), cat(cols, np.int64))),
                                   shape=(offset, len(tiles) * grid[0] * grid[1]))
    return tiles, weights


def unit_tokens(store, tiles: list[int], layers: list[str], chosen: list[int], variants) -> dict[str, np.ndarray]:
    """Each layer's tokens of ``tiles`` as ``(tiles x patches, V x C)`` rows, every variant in the identity's frame."""
    out = {}
    for layer in layers:
        tokens = store.tokens(layer, tiles, variant=chosen)  # (n, V, C, h, w)
        for k, v in enumerate(variants):
            if not v.is_geometric_identity:
                tokens[:, k] = v.invert(tokens[:, k], spatial=(-2, -1))
        n, V, C, h, w = tokens.shape
        out[layer] = (tokens.reshape(n, V * C, h * w).transpose(0, 2, 1).reshape(n * h * w, V * C), (h, w), V, C)
    return out


def pool_unit(tokens: dict, weights: dict) -> dict[str, np.ndarray]:
    """Vectors ``(m, V, C)`` per layer of a unit's cells: one sparse product of its weights with its tokens."""
    return {layer: np.asarray(weights[grid] @ rows, dtype=np.float32).reshape(-1, V, C)
            for layer, (rows, grid, V, C) in tokens.items()}
