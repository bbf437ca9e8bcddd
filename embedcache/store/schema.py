"""The store's layout: the only module that knows array names, shapes and codecs.

A store is a Zarr v3 group::

    zarr.json                       attributes["embedcache"]: schema, config, provenance, complete
    images          (N, H, W, 3)    uint8   source tiles, stored once
    labels          (N, H, W, 2)    int32   [instance id, type id] (labelled datasets only)
    tiles/source    (N,)            int64   source image of each tile
    tiles/offset    (N, 2)          int64   (row, col) of the tile in its source
    tiles/valid     (N, 2)          int64   (height, width) not padding
    tiles/fold      (N,)            int64   fold (PanNuke folds; else 0)
    tiles/tissue    (N,)            int64   index into attrs["tissue_names"] (-1: none)
    tokens/<layer>  (N, V, C, h, w) float16 patch tokens per variant
    prefix/<layer>  (N, V, P, C)    float16 class + register tokens (ViTs only)
    pooled/<layer>/mean (N, V, C)   float32 mean of the patch tokens
    pooled/<layer>/cls  (N, V, C)   float32 class token (models that have one)
    progress/done   (U,)            uint8   1 once unit of work u is written

Every per-tile array is sharded along tiles by *units of work* of
``unit_tiles`` tiles: a unit writes whole shards of every array and then its
own ``progress/done`` chunk, so units never share an object and any worker
can run any unit. Inside a shard one chunk holds one tile and one variant,
so a training sample reads one chunk per layer. Chunks are compressed with
Blosc zstd (byte shuffle) and carry a crc32c checksum; shard indexes carry
their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1
ATTRS = "embedcache"

IMAGES = "images"
LABELS = "labels"
TILE_SOURCE = "tiles/source"
TILE_OFFSET = "tiles/offset"
TILE_VALID = "tiles/valid"
TILE_FOLD = "tiles/fold"
TILE_TISSUE = "tiles/tissue"
DONE = "progress/done"
POOLED_KINDS = ("mean", "cls")
TOKEN_DTYPES = ("float16", "float32")


def tokens_path(layer: str) -> str:
    return f"tokens/{layer}"


def prefix_path(layer: str) -> str:
    return f"prefix/{layer}"


def pooled_path(layer: str, kind: str = "mean") -> str:
    return f"pooled/{layer}/{kind}"


@dataclass(frozen=True)
class LayerLayout:
    """What one tapped layer stores per tile and variant."""

    name: str
    shape: tuple[int, int, int]  # (C, h, w)
    n_prefix: int = 0
    has_cls: bool = False


@dataclass(frozen=True)
class ArraySpec:
    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    compressed: str = "zstd-shuffle"  # or "zstd"


def compressors(dtype: str, kind: str):
    """Blosc zstd (with byte shuffle for multi-byte types), then a crc32c checksum."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    itemsize = np.dtype(dtype).itemsize
    shuffle = "shuffle" if (kind == "zstd-shuffle" and itemsize > 1) else "noshuffle"
    # clevel 3: float16 tokens gain little past it and it costs extraction time.
    return [BloscCodec(cname="zstd", clevel=3, shuffle=shuffle, typesize=itemsize), Crc32cCodec()]


def array_specs(n_tiles: int, tile_shape: tuple[int, int], n_variants: int, layers: list[LayerLayout],
                dtype: str, unit_tiles: int, has_labels: bool) -> list[ArraySpec]:
    """Every array of a store, with chunks and shards aligned to units of work."""
    n, u, v = n_tiles, unit_tiles, n_variants
    h, w = tile_shape
    specs = [
        ArraySpec(IMAGES, (n, h, w, 3), "uint8", (1, h, w, 3), (u, h, w, 3), "zstd"),
        ArraySpec(TILE_SOURCE, (n,), "int64", (u,), None),
        ArraySpec(TILE_OFFSET, (n, 2), "int64", (u, 2), None),
        ArraySpec(TILE_VALID, (n, 2), "int64", (u, 2), None),
        ArraySpec(TILE_FOLD, (n,), "int64", (u,), None),
        ArraySpec(TILE_TISSUE, (n,), "int64", (u,), None),
    ]
    if has_labels:
        specs.append(ArraySpec(LABELS, (n, h, w, 2), "int32", (1, h, w, 2), (u, h, w, 2)))
    for layer in layers:
        c, lh, lw = layer.shape
        specs.append(ArraySpec(tokens_path(layer.name), (n, v, c, lh, lw), dtype, (1, 1, c, lh, lw),
                               (u, v, c, lh, lw)))
        specs.append(ArraySpec(pooled_path(layer.name, "mean"), (n, v, c), "float32", (u, v, c), None))
        if layer.has_cls:
            specs.append(ArraySpec(pooled_path(layer.name, "cls"), (n, v, c), "float32", (u, v, c), None))
        if layer.n_prefix:
            specs.append(ArraySpec(prefix_path(layer.name), (n, v, layer.n_prefix, c), dtype,
                                   (u, v, layer.n_prefix, c), None))
    return specs


def n_units(n_tiles: int, unit_tiles: int) -> int:
    return -(-n_tiles // unit_tiles)


def unit_range(unit: int, n_tiles: int, unit_tiles: int) -> tuple[int, int]:
    """Tiles ``[start, stop)`` of a unit of work."""
    start = unit * unit_tiles
    return start, min(start + unit_tiles, n_tiles)
