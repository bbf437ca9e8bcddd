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

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.cells.nuclei import NucleiSource, image_nuclei, nuclei_source
from embedcache.cells.pool import cell_weights, inst_to_cells, pool_cells
from embedcache.config import CellsConfig
from embedcache.datasets import resolve_variants
from embedcache.errors import DataError, StoreError
from embedcache.store.cells import TABLE, CellStore, CellWriter
from embedcache.store.images import source_images
from embedcache.store.reader import open_store


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
    seconds: float
    types: dict = field(default_factory=dict)

    @property
    def cells_per_second(self) -> float:
        return self.n_cells * self.units_run / max(1, self.units) / max(self.seconds, 1e-9)


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
                progress: bool = True) -> CellsResult:
    """Pool a vector per nucleus, layer and variant from a complete store into the cell store ``out``.

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
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    files.recover(out)
    if Path(out).exists() and not overwrite:
        raise StoreError(f"{out} exists; pass --overwrite to replace it")
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
    info = store.tile_info()
    valid = info["valid"]
    per_image = []
    for im in tqdm(images, desc="nuclei", unit="image", disable=not progress):
        inst, types = source.maps(im)
        per_image.append(image_nuclei(inst, types, im, store.tile_shape, valid))
    n_cells = sum(len(t["instance"]) for t in per_image)
    if n_cells == 0:
        raise DataError(f"{source.source}: no nuclei in any of the store's {len(images)} images; "
                        "nothing to pool (check the nuclei source)")
    table = {c: np.concatenate([t[c] for t in per_image]) for c in TABLE if c != "source"}
    table["source"] = info["source"][table["tile"]]
    bounds = np.cumsum([0] + [len(t["instance"]) for t in per_image])
    units = [(i0, i1, int(bounds[i0]), int(bounds[i1])) for i0, i1 in _units(images, config.unit_tiles)]
    source_names = _source_names(images, info["source"])
    record = {"n_cells": n_cells, "layers": {layer: store.layout(layer).shape[0] for layer in layers},
             "variants": [v.name for v in variants],
             "class_names": {str(k): v for k, v in sorted(source.class_names.items())},
             "source_names": source_names, "mpp": store.tile_mpp, "encoder": store.encoder.to_dict(),
             "source_store": {"path": str(Path(str(store.path)).absolute()) if store.location.is_local
                              else str(store.path), "dataset_fingerprint": store.config.dataset_fingerprint,
                              "weights_sha256": store.config.weights_sha256, "n_tiles": store.n_tiles},
             "nuclei": source.describe(config.radius), "config": config.to_dict()}
    dtype = store.config.dtype
    writer = CellWriter(out, record, table, record["layers"], dtype, units, overwrite=overwrite)
    done = writer.done()
    todo = [u for u in range(len(units)) if not done[u]]
    with tqdm(total=sum(units[u][3] - units[u][2] for u in todo), desc="cells", unit="cell",
              disable=not progress) as bar:
        for u in todo:
            i0, i1, c0, c1 = units[u]
            rows = {c: table[c][c0:c1] for c in ("tile", "instance")}
            writer.write_unit(u, pool_images(store, source, images[i0:i1], rows, layers, chosen, variants, valid))
            bar.update(c1 - c0)
    path = writer.finish()
    types = table["type"]
    counts = {source.class_names.get(int(t), f"type {t}") if t else "unknown": int((types == t).sum())
              for t in np.unique(types)}
    return CellsResult(Path(path), n_cells, len(images), layers, [v.name for v in variants], len(units), len(todo),
                       time.perf_counter() - t0, counts)


def _source_names(images, source: np.ndarray) -> list[str]:
    names = [""] * (int(source.max()) + 1 if len(source) else 0)
    for im in images:
        names[int(source[im.tiles[0][1]])] = im.name
    return names


def pool_images(store, source: NucleiSource, images, rows: dict, layers: list[str], chosen: list[int],
                variants, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Vectors ``(m, V, C)`` per layer of the cells ``rows`` (``tile``, ``instance``, in order) of ``images``."""
    tiles = sorted({t for im in images for _, t in im.tiles})
    position = {t: k for k, t in enumerate(tiles)}
    th, tw = store.tile_shape
    # Per tile: which rows, and each pixel's row among them.
    cells_of_tile = {}
    for im in images:
        inst, _ = source.maps(im)
        for (r, c), t in im.tiles:
            sel = np.flatnonzero(rows["tile"] == t)
            if not len(sel):
                continue
            h, w = valid[t]
            crop = np.zeros((th, tw), dtype=np.int64)
            crop[:h, :w] = inst[r:r + h, c:c + w]
            cells_of_tile[t] = (sel, inst_to_cells(crop, rows["instance"][sel]))
    out, weights = {}, {}
    for layer in layers:
        grid = store.layout(layer).grid
        tokens = store.tokens(layer, tiles, variant=None)[:, chosen]  # (n, V, C, h, w)
        for k, v in enumerate(variants):
            if not v.is_geometric_identity:
                tokens[:, k] = v.invert(tokens[:, k], spatial=(-2, -1))
        vec = np.zeros((len(rows["tile"]), len(chosen), tokens.shape[2]), dtype=np.float32)
        for t, (sel, cell_of_pixel) in cells_of_tile.items():
            if (t, grid) not in weights:
                weights[t, grid] = cell_weights(cell_of_pixel, grid, len(sel))
            vec[sel] = pool_cells(tokens[position[t]], weights[t, grid])
        out[layer] = vec
    return out
