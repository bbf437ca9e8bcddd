"""Cell stores: one vector per nucleus and layer, pooled from a store's tokens, with the nucleus's table.

A cell store is a Zarr v3 group beside the store it was pooled from (that
store is read, never changed)::

    zarr.json                        attributes["embedcache_cells"]: the record below
    cells/tile       (n,)            int64    store tile the nucleus was pooled in
    cells/source     (n,)            int64    source image (index into source_names)
    cells/instance   (n,)            int64    its id in the nuclei map of its image
    cells/centroid   (n, 2)          float64  (row, col) in image pixels (pixel indices: QuPath's x = col + 0.5)
    cells/area       (n,)            int64    pixels of the whole nucleus
    cells/type       (n,)            int64    type id (0: unknown)
    cells/coverage   (n,)            float32  share of its pixels inside its tile
    vectors/<layer>  (n, V, C)       float16  pooled tokens per variant (the store's dtype)
    progress/done    (U,)            uint8    1 once unit of work u is written

A unit of work is a run of tiles; its cells are contiguous rows. The
table is written when the store is created, the vectors unit by unit, and
``complete`` is set last; locally the store is built as ``OUT.partial``
and renamed when complete, so ``OUT`` is always a whole store. The record
(``embedcache_cells``) holds the layers and their widths, the variants,
class and source names, microns per pixel, the source store (path,
encoder, dataset fingerprint, weights) and the nuclei source (what, its
fingerprint, the disc radius of points). :func:`~embedcache.store.open_store`
opens a cell store as a :class:`CellStore`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.encoders.registry import EncoderSpec
from embedcache.errors import StoreError, StoreMismatchError
from embedcache.store import schema

CELLS_ATTRS = "embedcache_cells"
CELLS_FORMAT = 1
TABLE = ("tile", "source", "instance", "centroid", "area", "type", "coverage")
TABLE_DTYPES = {"tile": "int64", "source": "int64", "instance": "int64", "centroid": "float64", "area": "int64",
                "type": "int64", "coverage": "float32"}


def table_path(column: str) -> str:
    return f"cells/{column}"


def vectors_path(layer: str) -> str:
    return f"vectors/{layer}"


class CellStore:
    """A read view of a cell store.

    Attributes
    ----------
    path : Path
    attrs : dict
        The ``embedcache_cells`` record.
    n_cells : int
    layers : list of str
        Pooled layers, shallow to deep.
    dims : dict of str to int
        Vector width of each layer.
    variants : list of str
        Index 0 is the identity.
    encoder : EncoderSpec
    class_names : dict of int to str
    source_names : list of str
    mpp : float or None
        Microns per pixel of the images, when the store records it.
    source_store : dict
        ``path``, ``dataset_fingerprint``, ``weights_sha256``, ``n_tiles`` of the store pooled from.
    nuclei : dict
        ``source``, ``kind`` (labels, prediction, points), ``fingerprint``, ``radius``.
    complete : bool
    """

    def __init__(self, path, group, attrs: dict):
        self.path = Path(path)
        self.group = group
        self.attrs = attrs
        self.n_cells = int(attrs["n_cells"])
        self.layers = list(attrs["layers"])
        self.dims = {name: int(d) for name, d in attrs["layers"].items()}
        self.variants = list(attrs["variants"])
        self.encoder = EncoderSpec.from_dict(attrs["encoder"])
        self.class_names = {int(k): v for k, v in (attrs.get("class_names") or {}).items()}
        self.source_names = list(attrs.get("source_names") or [])
        self.mpp = attrs.get("mpp")
        self.source_store = dict(attrs["source_store"])
        self.nuclei = dict(attrs["nuclei"])
        self.complete = bool(attrs.get("complete"))
        self.verify_rows = int(attrs["config"]["unit_cells"])
        self._blocks = {}  # vector array path -> its chunks read directly (store.shards), or None

    def built_from(self, keys) -> dict:
        """The record's entries ``keys`` (``layers``, ``variants``, ``encoder``, ``source_store``, ``nuclei``,
        ``config``): what a build with the same settings would record."""
        return {k: self.attrs.get(k) for k in keys}

    @property
    def n_units(self) -> int:
        return len(self.attrs.get("units", []))

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"<CellStore {self.path} {self.encoder.name} {self.n_cells} cells x {len(self.variants)} variants, "
                f"layers {', '.join(self.layers)} ({state})>")

    @property
    def same_cells_key(self) -> tuple:
        """What two cell stores share when they hold the same nuclei of the same tiles."""
        return (self.source_store["dataset_fingerprint"], self.nuclei["fingerprint"], self.n_cells)

    def _array(self, path: str):
        try:
            return self.group[path]
        except KeyError:
            raise StoreError(f"{self.path}: has no array {path!r}") from None

    def resolve_layer(self, layer) -> str:
        from embedcache.layers import select_layers

        names = [self.layers[i] for i in select_layers(layer, self.layers, where=str(self.path))]
        if len(names) != 1:
            raise StoreError(f"{self.path}: {layer!r} names {len(names)} layers; name one")
        return names[0]

    def select_layers(self, spec) -> list[str]:
        from embedcache.layers import select_layers

        return [self.layers[i] for i in select_layers(spec, self.layers, where=str(self.path))]

    def vectors(self, layer, idx=slice(None), variant=0) -> np.ndarray:
        """Cell vectors of one layer: ``(n, C)`` for one variant, ``(n, V, C)`` for a list of them or all (None)."""
        arr = self._array(vectors_path(self.resolve_layer(layer)))
        sel = schema.variant_selection(self.variants, variant, self.path)
        try:
            out = self._read_blocks(arr, idx, sel)
            if out is None:
                out = arr.get_orthogonal_selection((idx if isinstance(idx, slice) else np.asarray(idx), sel))
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot read {vectors_path(layer)} ({type(exc).__name__}: {exc}); "
                             "run `embedcache verify` and rebuild with --overwrite") from exc
        return np.asarray(out, dtype=np.float32)

    def _read_blocks(self, arr, idx, sel):
        """A run of cells, every chunk of it read in one concurrent batch and decoded directly
        (:func:`embedcache.store.shards.read_rows`); None for a selection or array left to zarr."""
        from embedcache.store.shards import UnitArray, read_rows, rows_of, second_axis

        rows, along = rows_of(idx, self.n_cells), second_axis(sel, len(self.variants))
        if rows is None or along is None:
            return None
        if arr.path not in self._blocks:
            self._blocks[arr.path] = UnitArray.of(arr)
        ua = self._blocks[arr.path]
        if ua is None:
            return None
        out = read_rows(self.group.store, ua, *rows, along[0])
        return out[:, 0] if along[1] else out

    def table(self) -> dict[str, np.ndarray]:
        """Every column of the cell table: ``tile``, ``source``, ``instance``, ``centroid`` (n, 2) pixels,
        ``centroid_um`` (NaN without microns per pixel), ``area``, ``type``, ``coverage``."""
        out = {c: np.asarray(self._array(table_path(c))[:]) for c in TABLE}
        out["centroid_um"] = out["centroid"] * (self.mpp if self.mpp else np.nan)
        return out

    def units_done(self) -> tuple[int, int]:
        done = np.asarray(self._array(schema.DONE)[:])
        return int(done.sum()), int(done.size)

    def arrays(self) -> list[str]:
        return sorted([table_path(c) for c in TABLE] + [vectors_path(layer) for layer in self.layers] + [schema.DONE])

    def summary(self) -> dict:
        """Plain data: what ``embedcache info`` prints for a cell store."""
        done, units = self.units_done()
        types = np.asarray(self._array(table_path("type"))[:])
        counts = {self.class_names.get(int(t), f"type {t}") if t else "unknown": int((types == t).sum())
                  for t in np.unique(types)}
        return {"path": str(self.path), "kind": "cells", "encoder": self.encoder.name, "n_cells": self.n_cells,
                "layers": {name: {"dim": self.dims[name]} for name in self.layers},
                "variants": self.variants, "types": counts, "nuclei": self.nuclei, "source_store": self.source_store,
                "complete": self.complete and done == units, "units_done": [done, units],
                "bytes": sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())}


def not_zarr_reason(exc: Exception) -> str:
    """Why a path did not open as a Zarr group, in a few words (zarr's own message repeats the location)."""
    from zarr.errors import GroupNotFoundError

    if isinstance(exc, GroupNotFoundError):
        return "no Zarr group metadata there"
    return f"{type(exc).__name__}: {exc}"


def open_cells(path, group=None, attrs=None) -> CellStore:
    """Open a cell store (``OUT.partial`` when only an interrupted one is there)."""
    import zarr

    path = Path(path)
    if group is None:
        if not path.exists() and files.partial_path(path).exists():
            path = files.partial_path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such cell store")
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:
            raise StoreError(f"{path}: not a Zarr store ({not_zarr_reason(exc)}); give a cell store written by "
                             "`embedcache cells`") from None
        attrs = dict(group.attrs).get(CELLS_ATTRS)
    if not attrs or attrs.get("format") != CELLS_FORMAT:
        raise StoreError(f"{path}: not an embedcache cell store (format {CELLS_FORMAT})")
    return CellStore(path, group, attrs)


class CellWriter:
    """Create or resume a cell store in ``OUT.partial``, write units of cells, then swap it in.

    Parameters
    ----------
    out : path
    attrs : dict
        The record (without ``complete``/``created``); a partial store with
        another record is refused, naming what differs.
    table : dict of str to ndarray
        Every column of :data:`TABLE`, one row per cell, in unit order.
    dims : dict of str to int
        Vector width of each layer.
    dtype : str
    units : list of (tile_start, tile_stop, cell_start, cell_stop)
    """

    def __init__(self, out, attrs: dict, table: dict, dims: dict, dtype: str, units: list, overwrite: bool = False):
        import zarr

        self.out = Path(out)
        self.units = [tuple(int(v) for v in u) for u in units]
        files.recover(self.out)
        if self.out.exists() and not overwrite:
            raise StoreError(f"{self.out} exists; pass --overwrite to replace it")
        tmp = files.partial_path(self.out)
        record = {**attrs, "format": CELLS_FORMAT, "units": [list(u) for u in self.units]}
        old = None
        if tmp.exists():
            try:
                old = dict(zarr.open_group(str(tmp), mode="r").attrs).get(CELLS_ATTRS)
            except Exception:
                old = None
        if old is not None and not overwrite:
            from embedcache.store.writer import config_difference

            kept = {k: v for k, v in old.items() if k not in ("complete", "created")}
            diff = config_difference(kept, record)
            if diff:
                raise StoreMismatchError(f"{tmp}: an interrupted cell store made with other settings ({diff}); "
                                         "pass --overwrite to start afresh")
            self.group = zarr.open_group(str(tmp), mode="r+")
        else:
            files.fresh_partial(self.out)
            self.group = self._create(tmp, record, table, dims, dtype)
        self.tmp = tmp

    def _create(self, tmp: Path, record: dict, table: dict, dims: dict, dtype: str):
        import zarr

        n = len(table["tile"])
        rows = max(1, int(record["config"]["unit_cells"]))
        group = zarr.open_group(str(tmp), mode="w")
        for col in TABLE:
            values = np.asarray(table[col], dtype=TABLE_DTYPES[col])
            arr = group.create_array(table_path(col), shape=values.shape, dtype=values.dtype,
                                     chunks=(rows, *values.shape[1:]),
                                     compressors=schema.compressors(TABLE_DTYPES[col]))
            if n:
                arr[...] = values
        n_var = len(record["variants"])
        for layer, dim in dims.items():
            group.create_array(vectors_path(layer), shape=(n, n_var, int(dim)), dtype=dtype,
                               chunks=(rows, 1, int(dim)), compressors=schema.compressors(dtype),
                               fill_value=0)
        group.create_array(schema.DONE, shape=(len(self.units),), dtype="uint8", chunks=(1,), fill_value=0)
        group.attrs[CELLS_ATTRS] = {**record, "complete": False,
                                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        return group

    def done(self) -> np.ndarray:
        return np.asarray(self.group[schema.DONE][:]).astype(bool)

    @property
    def chunk_rows(self) -> int:
        """Cells per chunk of the vector arrays (units of work do not line up with them)."""
        return max(1, int(self.group.attrs[CELLS_ATTRS]["config"]["unit_cells"]))

    def write_unit(self, unit: int, vectors: dict[str, np.ndarray]) -> None:
        """Write a unit's ``(m, V, C)`` vectors of every layer, then mark it done."""
        _, _, c0, c1 = self.units[unit]
        for layer, values in vectors.items():
            if values.shape[0] != c1 - c0:
                raise StoreError(f"unit {unit}: {values.shape[0]} vectors for {c1 - c0} cells")
            if c1 > c0:
                self.group[vectors_path(layer)][c0:c1] = values
        self.group[schema.DONE][unit] = 1

    def finish(self) -> Path:
        """Mark complete (every unit done) and move ``OUT.partial`` to ``OUT``."""
        if not self.done().all():
            raise StoreError(f"{self.tmp}: {int((~self.done()).sum())} units not written; run again to finish")
        attrs = dict(self.group.attrs[CELLS_ATTRS])
        attrs["complete"] = True
        self.group.attrs[CELLS_ATTRS] = attrs
        return files.swap_in(self.tmp, self.out)
