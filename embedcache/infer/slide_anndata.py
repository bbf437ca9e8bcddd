"""A slide's cells as AnnData (``cells.h5ad``) for scanpy and squidpy.

scverse's conventions (anndata's on-disk format 0.1.0, checked against the
element writers of anndata 0.12, ``anndata/_io/specs/methods.py``:
``write_anndata``, ``write_dataframe``, ``write_categorical``,
``write_vlen_string_array``; squidpy reads centroids from ``obsm["spatial"]``):

- ``obs``: the cell table, one row per nucleus of ``nuclei.parquet`` (its
  columns but the outline; index the nucleus id as a string), with a cell
  classifier's ``class_name``, ``class_score`` and ``p_<class>`` columns;
  ``type_name`` and ``class_name`` categorical;
- ``obsm["spatial"]``: ``(n, 2)`` centroids ``(x, y)`` in microns;
- ``obsm["X_<layer>"]``: ``(n, C)`` float32 vectors of each pooled layer;
- ``uns["embedcache"]``: provenance (slide, run, encoder, weights, layers,
  resolution, classifier) as JSON text; ``X`` is absent (no genes).

Everything is streamed: the file's elements are created at their full
length with the encoding attributes anndata gives them, then filled a block
of rows at a time from ``nuclei.parquet``, ``cell_classes.parquet`` and
``cells.zarr``, so memory is one block whatever the number of cells (only
the small elements, ``var``, ``uns`` and the empty mappings, are written by
anndata itself). The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.errors import ConfigError

BLOCK = 65536  # rows per copy
EXTRA = "pip install 'embedcache[cells]'"
CATEGORICAL = ("type_name", "class_name")


def require_anndata() -> None:
    """Raise ConfigError naming the extra when anndata is not installed."""
    try:
        import anndata  # noqa: F401
        import h5py  # noqa: F401
    except ImportError:
        raise ConfigError(f"AnnData output (--anndata) needs the anndata package: {EXTRA}") from None


def _write_elem():
    try:
        from anndata.io import write_elem  # anndata >= 0.11
    except ImportError:  # pragma: no cover - anndata 0.10
        from anndata.experimental import write_elem
    return write_elem


def _encode(node, kind: str, version: str = "0.2.0", **more) -> None:
    """Mark an HDF5 group or dataset as anndata marks an element of ``kind`` (plus ``more`` attributes)."""
    node.attrs.update({"encoding-type": kind, "encoding-version": version, **more})


def _column(group, name: str, n: int, dtype):
    """An ``(n,)`` dataset of ``dtype`` under ``group`` (chunked, so it is filled a block at a time)."""
    return group.create_dataset(name, shape=(n,), dtype=dtype, chunks=(min(n, BLOCK),) if n else None)


def _distinct(table, column: str, block: int) -> list[str]:
    """The sorted distinct strings of one Parquet column, read a block at a time (as pandas orders categories)."""
    seen: set = set()
    for batch in table.iter_batches(batch_size=block, columns=[column]):
        seen.update(v for v in batch.column(0).unique().to_pylist() if v is not None)
    return sorted(seen)


def write_anndata(folder: Path, provenance: dict, block: int = BLOCK) -> Path:
    """``folder/cells.h5ad`` from the slide's ``nuclei.parquet``, ``cells.zarr`` and ``cell_classes.parquet``
    (those present), ``block`` rows at a time; returns its path."""
    import h5py
    import pandas as pd
    import pyarrow.parquet as pq

    write_elem = _write_elem()
    tables = [pq.ParquetFile(folder / "nuclei.parquet")]
    if (folder / "cell_classes.parquet").exists():
        tables.append(pq.ParquetFile(folder / "cell_classes.parquet"))
    n = tables[0].metadata.num_rows
    columns = [[c for c in t.schema_arrow.names if c not in ("polygon_wkb", "id")] for t in tables]
    columns[0].insert(0, "id")
    categories = {"type_name": _distinct(tables[0], "type_name", block)}
    if len(tables) > 1:  # the classifier's classes, in its own order (that of the p_<class> columns)
        categories["class_name"] = [c[2:] for c in columns[1] if c.startswith("p_")]
    vectors = {}
    if (folder / "cells.zarr").exists():
        from embedcache.store.slide_cells import slide_cell_vectors

        vectors = slide_cell_vectors(folder / "cells.zarr")
    text = h5py.string_dtype()
    out = folder / "cells.h5ad"
    with files.atomic_file(out) as tmp, h5py.File(tmp, "w") as h5:
        _encode(h5, "anndata", "0.1.0")
        obs = h5.create_group("obs")
        _encode(obs, "dataframe", **{"_index": "_index", "column-order": [c for cols in columns for c in cols]})
        _encode(_column(obs, "_index", n, text), "string-array")
        for t, cols in zip(tables, columns):
            for c in cols:
                if c in categories:
                    group = obs.create_group(c)
                    _encode(group, "categorical", ordered=False)
                    codes = np.int8 if len(categories[c]) < 127 else np.int32
                    _encode(_column(group, "codes", n, codes), "array")
                    names = group.create_dataset("categories", data=np.array(categories[c], dtype=object),
                                                 dtype=text)
                    _encode(names, "string-array")
                else:
                    _encode(_column(obs, c, n, t.schema_arrow.field(c).type.to_pandas_dtype()), "array")
        obsm = h5.create_group("obsm")
        _encode(obsm, "dict", "0.1.0")
        spatial = obsm.create_dataset("spatial", shape=(n, 2), dtype=np.float64,
                                      chunks=(min(n, BLOCK), 2) if n else None)
        _encode(spatial, "array")
        for t, cols in zip(tables, columns):
            start = 0
            for batch in t.iter_batches(batch_size=block, columns=cols):
                stop = start + batch.num_rows
                for c in cols:
                    values = batch.column(c).to_numpy(zero_copy_only=False)
                    if c in categories:
                        obs[c]["codes"][start:stop] = pd.Categorical(values, categories=categories[c]).codes
                    else:
                        obs[c][start:stop] = values
                if t is tables[0]:
                    obs["_index"][start:stop] = batch.column("id").to_numpy().astype(str).astype(object)
                    spatial[start:stop] = np.column_stack([batch.column("x_um").to_numpy(),
                                                           batch.column("y_um").to_numpy()])
                start = stop
        for name, src in vectors.items():
            rows, width = src.shape
            dst = obsm.create_dataset(f"X_{name}", shape=(rows, width), dtype="float32",
                                      chunks=(max(1, min(rows, 4096)), width) if rows else None)
            _encode(dst, "array")
            for s in range(0, rows, block):
                dst[s:s + block] = src[s:min(rows, s + block)]
        write_elem(h5, "var", pd.DataFrame(index=pd.Index([], dtype=object)))
        for name in ("varm", "obsp", "varp", "layers"):
            write_elem(h5, name, {})
        write_elem(h5, "uns", {"embedcache": json.dumps(provenance, default=str)})
    return out
