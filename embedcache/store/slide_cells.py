"""The vectors of a slide's cells written by ``predict --slides --cells``: ``OUT/SLIDE/cells.zarr``.

A Zarr v3 group::

    zarr.json            attributes["embedcache_slide_cells"]: the slide, run, encoder, weights, resolution,
                         pooling rule, n_cells and {layer: width}
    vectors/<layer>      (n, C) float32   row i: the nucleus of id i + 1 in nuclei.parquet

Written once, at the end of a slide, region by region (memory: one region);
the folder it sits in is swapped in whole, so there is no partial state here.
"""

from __future__ import annotations

SLIDE_CELLS_ATTRS = "embedcache_slide_cells"
VECTORS_DTYPE = "float32"


def create_slide_cells(path, n: int, dims: dict, record: dict) -> dict:
    """Create the group at ``path`` with its record; the empty ``(n, C)`` array of each layer of ``dims``."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    arrays = {name: group.create_array(f"vectors/{name}", shape=(n, int(dim)), dtype=VECTORS_DTYPE,
                                       chunks=(max(1, min(n, 4096)), int(dim)), fill_value=0)
              for name, dim in dims.items()}
    group.attrs.update({SLIDE_CELLS_ATTRS: {**record, "n_cells": int(n), "layers": {k: int(v) for k, v in
                                                                                     dims.items()}}})
    return arrays


def slide_cell_vectors(path) -> dict:
    """The ``vectors/<layer>`` arrays of a slide's ``cells.zarr`` (read lazily), by layer name."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    record = dict(group.attrs)[SLIDE_CELLS_ATTRS]
    return {name: group[f"vectors/{name}"] for name in record["layers"]}
