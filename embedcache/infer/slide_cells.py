"""Cell vectors of whole slides from the forward that found the nuclei (``predict --slides --cells``).

The encoder's tokens of a region's tiles are kept as the decoder consumes
them (:class:`TokenKeeper`), only for the layers asked for and only until
the region's nuclei are known; every nucleus the region keeps is then pooled
with the rule of ``embedcache cells`` (:mod:`embedcache.cells.pool`: the
area-weighted mean of the patch tokens under it, in the identity's frame),
in the tile :func:`embedcache.cells.nuclei.image_nuclei` picks among the
region's tiles. Those are the tiles of the slide-wide grid holding the
nucleus (a kept nucleus's centroid lies in the region's core, and the read
box holds every grid tile meeting it), so a slide store of the same grid
(``extract --format slides --overlap``) and ``cells`` give the same vectors.

Work is split as the region's nuclei are: the pooling weights (a sparse
``cells x (tiles x patches)`` matrix per token grid) are made beside the
nuclei, in a post-processing worker when there are some
(:func:`region_weights`); the main process, which holds the tokens,
multiplies them (:func:`pool_region`). Each region's vectors are a progress
record (:func:`write_vectors`, written before the region's table, so a
region with a table has its vectors), merged at the end into
``cells.zarr`` (:func:`finish_vectors`) with rows in the order of
``nuclei.parquet``'s ids.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.cells.build import unit_pooling
from embedcache.cells.nuclei import image_nuclei
from embedcache.geometry import TiledImage

PROBA = "proba@classifier"  # a region file's cell classifier probabilities (not a layer name: '@')


@dataclass(frozen=True)
class CellLayers:
    """What a region pools: the layers (names and positions among the run's tapped layers) and their grids.

    Attributes
    ----------
    names : tuple of str
    positions : tuple of int
        Index of each layer in the features' token list.
    grids : tuple of (h, w)
        Token grid of each layer.
    dims : tuple of int
        Channels of each layer.
    """

    names: tuple
    positions: tuple
    grids: tuple
    dims: tuple


def cell_layers(spec: str, run_layers: list[str], shapes: dict) -> CellLayers:
    """The layers ``spec`` names among the run's tapped layers (``default`` and ``all``: every one of them).

    ``shapes``: ``{layer: [C, h, w]}`` as the run records them.

    Raises
    ------
    ConfigError
        A layer the encoder does not tap (the message lists those it does).
    """
    from embedcache.layers import select_layers

    where = "--cells"
    picked = select_layers(spec, run_layers, default=range(len(run_layers)), where=where)
    names = tuple(run_layers[i] for i in picked)
    return CellLayers(names, tuple(picked), tuple(tuple(shapes[n][1:]) for n in names),
                      tuple(int(shapes[n][0]) for n in names))


class TokenKeeper:
    """A feature source that keeps the tokens it serves, tile by tile, until a region takes them.

    :meth:`embedcache.infer.predictor.Predictor.stitched` asks for tiles in
    the regions' order and yields a region once all its tiles were served,
    so the first ``len(region.tiles)`` tokens kept are that region's. Memory
    is the tiles of the regions waiting for their nuclei (and one batch).
    """

    def __init__(self, features, layers: CellLayers):
        self.features, self.layers = features, layers
        self.kept: deque = deque()

    def __getattr__(self, name):  # index, store, start, counts: the wrapped source's
        return getattr(self.features, name)

    def __call__(self, keys):
        tokens, pixels = self.features(keys)
        picked = [tokens[p] for p in self.layers.positions]
        for i in range(len(keys)):
            # With test-time augmentation tokens are (n, V, C, h, w): cells are pooled in the identity (V = 0).
            self.kept.append([np.array(t[i, 0] if t.ndim == 5 else t[i], dtype=np.float32) for t in picked])
        return tokens, pixels

    def take(self, n: int) -> list[np.ndarray]:
        """The next ``n`` tiles' tokens: per layer ``(n, C, h, w)``."""
        tiles = [self.kept.popleft() for _ in range(n)]
        return [np.stack([t[j] for t in tiles]) for j in range(len(self.layers.names))]


def region_weights(inst: np.ndarray, instances: list[int], tiles: list[tuple[int, int]], tile: tuple[int, int],
                   grids: tuple) -> dict:
    """Pooling weights of a region's kept nuclei, rows in the order of ``instances``.

    Parameters
    ----------
    inst : (H, W) ndarray of int
        The region's read box instance map.
    instances : list of int
        Ids of the nuclei the region keeps, in its table's order.
    tiles : list of (row, col)
        Top-left corners of the read box's tiles, in the order their tokens come.
    tile : (th, tw)
    grids : tuple of (h, w)

    Returns
    -------
    dict of (h, w) to scipy.sparse.csr_matrix
        ``(len(instances), len(tiles) * h * w)`` shares of each nucleus's pixels in each patch.
    """
    H, W = inst.shape
    image = TiledImage("region", (H, W), [(tuple(o), k) for k, o in enumerate(tiles)])
    valid = np.array([[min(tile[0], H - r), min(tile[1], W - c)] for r, c in tiles], dtype=np.int64)
    found = image_nuclei(inst, None, image, tile, valid)
    row = {int(i): k for k, i in enumerate(found["instance"])}
    order = np.array([row[int(i)] for i in instances], dtype=np.int64)
    kept = {key: value[order] for key, value in found.items()}
    _, weights = unit_pooling([image], [inst], [kept], list(grids), tile, valid)
    return weights


def pool_region(tokens: list[np.ndarray], weights: dict, layers: CellLayers) -> dict[str, np.ndarray]:
    """Each layer's ``(m, C) float32`` vectors of a region's nuclei from its tiles' tokens ``(n, C, h, w)``."""
    out = {}
    for name, grid, t in zip(layers.names, layers.grids, tokens):
        n, C, h, w = t.shape
        rows = t.reshape(n, C, h * w).transpose(0, 2, 1).reshape(n * h * w, C)
        out[name] = np.asarray(weights[grid] @ rows, dtype=np.float32)
    return out


def region_cells(tokens: list[np.ndarray], weights: dict, layers: CellLayers, classifier=None) -> dict:
    """A region's record: each layer's vectors (:func:`pool_region`) and, with a cell classifier, its
    probabilities ``(m, K)`` under :data:`PROBA`."""
    out = pool_region(tokens, weights, layers)
    if classifier is not None:
        out[PROBA] = classifier.predict_proba(out[classifier.layer]).astype(np.float32)
    return out


def region_classes(partial: Path, classifier):
    """``cell_classes(region_file) -> (names, proba)`` of :func:`embedcache.infer.slide_output.finish_slide`."""
    return lambda region_file: (classifier.classes, np.load(vectors_file(partial, int(Path(region_file).stem)))[PROBA])


def vectors_file(partial: Path, index: int) -> Path:
    return partial / "vectors" / f"{index:05d}.npz"


def write_vectors(path: Path, vectors: dict[str, np.ndarray]) -> None:
    """A region's vectors (a progress record), written under a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **vectors)


def finish_vectors(folder: Path, partial: Path, region_files: list[Path], layers: CellLayers, record: dict,
                   classifier=None) -> dict:
    """Merge the regions' vectors into ``folder/cells.zarr`` (region by region: memory of one region).

    Layout: ``vectors/<layer>`` ``(n, C)`` float32, row ``i`` the nucleus of
    id ``i + 1`` in ``nuclei.parquet``; attributes ``embedcache_slide_cells``:
    ``record`` with the layers and their widths. With ``classifier``, also
    ``cell_classes.parquet`` (the columns of :func:`embedcache.probes.classifier.write_classes`,
    ids those of ``nuclei.parquet``), appended region by region. Returns the cells per class (``{}``
    without a classifier).
    """
    import contextlib

    from embedcache.store.slide_cells import create_slide_cells

    counts = [int(np.load(vectors_file(partial, int(p.stem)))[layers.names[0]].shape[0]) for p in region_files]
    n = sum(counts)
    arrays = create_slide_cells(folder / "cells.zarr", n, dict(zip(layers.names, layers.dims)), record)
    per_class = np.zeros(len(classifier.classes) if classifier is not None else 0, np.int64)
    with (files.atomic_file(folder / "cell_classes.parquet") if classifier is not None
          else contextlib.nullcontext()) as classes_tmp:
        writer = None
        try:
            start = 0
            for p, m in zip(region_files, counts):
                data = np.load(vectors_file(partial, int(p.stem)))
                for name in layers.names:
                    if m:
                        arrays[name][start:start + m] = data[name]
                if classifier is not None:  # the region's classes appended: memory of one region
                    proba = data[PROBA]
                    writer = append_classes(writer, classes_tmp, classifier, proba, start)
                    per_class += np.bincount(proba.argmax(axis=1), minlength=len(per_class))
                start += m
            if classifier is not None and writer is None:  # no regions: the file still has its columns
                writer = append_classes(writer, classes_tmp, classifier,
                                        np.zeros((0, len(classifier.classes)), np.float32), 0)
        finally:
            if writer is not None:
                writer.close()
    if classifier is None:
        return {}
    return {name: int(c) for name, c in zip(classifier.classes, per_class)}


def append_classes(writer, path, classifier, proba: np.ndarray, start: int):
    """Append the rows of nuclei ``start + 1 ..`` (ids) of ``proba`` to ``cell_classes.parquet``; the writer."""
    import pyarrow.parquet as pq

    from embedcache.probes.classifier import classes_table

    table = classes_table(classifier, proba.argmax(axis=1), proba, np.arange(start + 1, start + 1 + len(proba)))
    writer = writer or pq.ParquetWriter(str(path), table.schema)
    writer.write_table(table)
    return writer


class SharedTiles:
    """A feature source that encodes each tile of the slide-wide grid once, however many regions read it.

    Regions' read boxes overlap by their margins and sit on one tile grid
    (:func:`embedcache.infer.slides.on_tile_grid`), so neighbouring regions
    ask for the same tiles (at the same slide position). ``uses`` lists, per
    tile position, the regions (their order of processing) that read it; a
    tile's tokens are kept from its first request until its last, then
    dropped. At most ``limit`` tiles are kept: past it, the tile needed
    furthest ahead is dropped (and encoded again when its region comes), so
    memory stays that of a few regions on however wide a slide; with the
    default limit (two read boxes) the margin band of a row of 2048-px
    regions fits on slides up to ~12,000 px wide at 256-px tiles.

    ``keys`` are ``((row, col), pixels)`` as for
    :class:`~embedcache.infer.features.SlideFeatures`; the tokens of a kept
    tile are those its first region's pixels gave (the same pixels, where
    the slide has a level at the run's resolution).
    """

    def __init__(self, features, uses: dict, limit: int | None = None):
        self.features = features
        self.uses = {pos: list(order) for pos, order in uses.items()}
        self.limit = limit
        self.kept: dict = {}
        self.reused = 0

    def __getattr__(self, name):  # index, store, start, counts: the wrapped source's
        return getattr(self.features, name)

    def __call__(self, keys):
        pixels = np.stack([px for _, px in keys])
        positions = [tuple(pos) for pos, _ in keys]
        fresh: dict = {}
        for k, pos in enumerate(positions):
            if pos not in self.kept and pos not in fresh:
                fresh[pos] = k
        served: dict = {}
        if fresh:
            tokens, _ = self.features([keys[k] for k in fresh.values()])
            served = {pos: [t[j] for t in tokens] for j, pos in enumerate(fresh)}
        self.reused += len(keys) - len(fresh)
        out = [np.stack([(self.kept.get(pos) or served[pos])[j] for pos in positions])
               for j in range(len(self.kept.get(positions[0]) or served[positions[0]]))]
        for pos in positions:
            order = self.uses.get(pos)
            if order:
                order.pop(0)
        for pos, tok in served.items():
            self.kept[pos] = tok
        for pos in list(self.kept):
            if not self.uses.get(pos):
                del self.kept[pos]
        while self.limit is not None and len(self.kept) > self.limit:
            del self.kept[max(self.kept, key=lambda p: self.uses[p][0])]  # needed furthest ahead
        return out, pixels


def tile_uses(regions, tile: tuple[int, int], overlap: int) -> dict:
    """The regions (positions in ``regions``, on the slide-wide grid) that read each tile position ``(row, col)``."""
    from embedcache.geometry import plan_tiles

    uses: dict = {}
    for k, r in enumerate(regions):
        q0, d0, q1, d1 = r.read
        for o in plan_tiles((q1 - q0, d1 - d0), tile, overlap):
            uses.setdefault((q0 + o[0], d0 + o[1]), []).append(k)
    return uses


def kept_limit(regions, tile: tuple[int, int], overlap: int, boxes: int = 2) -> int:
    """Tiles :class:`SharedTiles` keeps at most: those of ``boxes`` of the largest read box among ``regions``."""
    from embedcache.geometry import plan_tiles

    return boxes * max((len(plan_tiles((r.read[2] - r.read[0], r.read[3] - r.read[1]), tile, overlap))
                        for r in regions), default=0)
