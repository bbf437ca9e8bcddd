"""A slide's cells as AnnData (``cells.h5ad``) for scanpy and squidpy.

scverse's conventions (anndata's on-disk format, checked against files
``anndata.AnnData.write_h5ad`` 0.12 writes; squidpy reads centroids from
``obsm["spatial"]``):

- ``obs``: the cell table, one row per nucleus of ``nuclei.parquet`` (its
  columns but the outline; index the nucleus id as a string), with a cell
  classifier's ``class_name``, ``class_score`` and ``p_<class>`` columns;
  ``type_name`` and ``class_name`` categorical;
- ``obsm["spatial"]``: ``(n, 2)`` centroids ``(x, y)`` in microns;
- ``obsm["X_<layer>"]``: ``(n, C)`` float32 vectors of each pooled layer;
- ``uns["embedcache"]``: provenance (slide, run, encoder, weights, layers,
  resolution, classifier) as JSON text; ``X`` is empty (no genes).

The table and centroids are written by anndata; the vectors, which can be
millions of rows, are then filled into their HDF5 datasets a block at a
time from ``cells.zarr`` (memory: the table and one block), with the array
encoding anndata itself gives a dense ``obsm`` entry. The file is written
under a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.errors import ConfigError

BLOCK = 65536  # rows of vectors per copy
EXTRA = "pip install 'embedcache[cells]'"


def require_anndata() -> None:
    """Raise ConfigError naming the extra when anndata is not installed."""
    try:
        import anndata  # noqa: F401
        import h5py  # noqa: F401
    except ImportError:
        raise ConfigError(f"AnnData output (--anndata) needs the anndata package: {EXTRA}") from None


def write_anndata(folder: Path, provenance: dict) -> Path:
    """``folder/cells.h5ad`` from the slide's ``nuclei.parquet``, ``cells.zarr`` and ``cell_classes.parquet``
    (those present); returns its path."""
    import anndata as ad
    import h5py
    import pandas as pd
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "nuclei.parquet").drop(["polygon_wkb"]).to_pandas()
    if (folder / "cell_classes.parquet").exists():
        classes = pq.read_table(folder / "cell_classes.parquet").to_pandas().drop(columns=["id"])
        table = pd.concat([table, classes], axis=1)
        table["class_name"] = table["class_name"].astype("category")
    table["type_name"] = table["type_name"].astype("category")
    table.index = pd.Index(table["id"].astype(str).to_numpy(), name=None)
    spatial = table[["x_um", "y_um"]].to_numpy(np.float64)
    vectors = None
    if (folder / "cells.zarr").exists():
        from embedcache.store.slide_cells import slide_cell_vectors

        vectors = slide_cell_vectors(folder / "cells.zarr")
    adata = ad.AnnData(obs=table, obsm={"spatial": spatial},
                       uns={"embedcache": json.dumps(provenance, default=str)})
    out = folder / "cells.h5ad"
    with files.atomic_file(out) as tmp:
        adata.write_h5ad(tmp)
        if vectors is not None:
            with h5py.File(tmp, "r+") as h5:
                for name, src in vectors.items():
                    n, c = src.shape
                    dst = h5["obsm"].create_dataset(f"X_{name}", shape=(n, c), dtype="float32",
                                                    chunks=(max(1, min(n, 4096)), c) if n else None)
                    dst.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})  # anndata's
                    for s in range(0, n, BLOCK):
                        dst[s:s + BLOCK] = src[s:min(n, s + BLOCK)]
    return out
