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


def slide_cells_record(path) -> dict | None:
    """The record of a slide's ``cells.zarr`` at ``path``; None when ``path`` is not one (or not a local folder)."""
    import json
    from pathlib import Path

    meta = Path(str(path)) / "zarr.json"
    try:
        record = json.loads(meta.read_text()).get("attributes", {}).get(SLIDE_CELLS_ATTRS)
    except (OSError, ValueError, AttributeError):
        return None
    return dict(record) if isinstance(record, dict) else None


def slide_cells_summary(path) -> dict:
    """Plain data: what ``embedcache info`` prints for a slide's ``cells.zarr``."""
    from pathlib import Path

    record = slide_cells_record(path)
    path = Path(path)
    encoder = record.get("encoder") or {}
    return {"path": str(path), "kind": "slide cells", "slide": record.get("slide"),
            "encoder": encoder.get("name") if isinstance(encoder, dict) else encoder,
            "weights_sha256": record.get("weights_sha256"), "n_cells": int(record["n_cells"]),
            "layers": {name: {"dim": int(dim)} for name, dim in record["layers"].items()},
            "mpp0": record.get("mpp0"), "work_mpp": record.get("work_mpp"), "run": record.get("run"),
            "pooling": record.get("pooling"),
            "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file())}


def not_a_cell_store(where, attrs: dict) -> str | None:
    """One line for a command given a slide's ``cells.zarr`` where it needs a cell store: what it is and what
    to give instead; None when the group's ``attrs`` are not a slide's cells."""
    from pathlib import Path

    record = attrs.get(SLIDE_CELLS_ATTRS)
    if not isinstance(record, dict):
        return None
    out = Path(str(where)).parent.parent
    return (f"{where}: the cell vectors of slide {record.get('slide')} written by predict --slides --cells, not a "
            f"cell store; `embedcache info` describes it and anndata reads them with the table (--anndata: "
            f"cells.h5ad); to probe or classify these nuclei, pool a cell store: embedcache cells --store "
            f"SLIDE_STORE --nuclei {out} --out CELLS")
