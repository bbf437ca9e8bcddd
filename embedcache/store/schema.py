"""The store's layout: array names, shapes and codecs, and the attributes record.

This module is the only place that knows what a store's arrays and
attributes are called; everything else asks :class:`~embedcache.store.reader.Store`
for typed properties. A store is a Zarr v3 group::

    zarr.json                       attributes["embedcache"]: the StoreAttrs record (below)
    images          (N, H, W, 3)    uint8   source tiles, stored once
    labels          (N, H, W, 2)    int32   [instance id, type id] (labelled datasets only)
    tiles/source    (N,)            int64   source image of each tile
    tiles/offset    (N, 2)          int64   (row, col) of the tile in its source
    tiles/valid     (N, 2)          int64   (height, width) not padding
    tiles/fold      (N,)            int64   fold (PanNuke folds; else 0)
    tiles/tissue    (N,)            int64   index into the tissue names (-1: none)
    tokens/<layer>  (N, V, C, h, w) float16 patch tokens per variant (float32, or int8)
    scales/<layer>  (N, V, C)       float32 int8 stores only: the scale of each channel (store.quant)
    prefix/<layer>  (N, V, P, C)    float16 class + register tokens (ViTs only; float32 in float32 stores)
    pooled/<layer>/mean (N, V, C)   float32 mean of the patch tokens
    pooled/<layer>/cls  (N, V, C)   float32 class token (models that have one)
    progress/done   (U,)            uint8   1 once unit of work u is written

Every per-tile array is sharded along tiles by *units of work* of
``unit_tiles`` tiles: a unit writes whole shards of every array and then its
own ``progress/done`` chunk, so units never share an object and any worker
can run any unit. Inside a shard one chunk holds one tile and one variant,
so a training sample reads one chunk per layer (two in int8 stores). Chunks
are compressed (:func:`compressors`: LZ4 by default, Zstandard on request)
and carry a crc32c checksum; shard indexes carry their own.

The attributes (:class:`StoreAttrs`, one JSON object under ``embedcache``):

============== ==============================================================
schema         :data:`SCHEMA_VERSION`
config         :class:`StoreConfig`: what any run adding to the store must share
provenance     :class:`Provenance`: weights source, versions, dataset, device
layer_info     per layer :class:`LayerLayout`: shape, prefix tokens, class token, stride
variant_defs   per variant: flip, quarter turns, stain
source_names   source image (or slide) of each ``tiles/source`` code
tissue_names   tissue of each ``tiles/tissue`` code
class_names    nucleus type id -> name
descriptors    layers written back by training (``fit-ssl``): name -> what made them
complete       set last, once every unit of work is written
============== ==============================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from embedcache.errors import StoreError

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
TOKEN_DTYPES = ("float16", "float32", "int8")
CODECS = ("lz4", "zstd")
DEFAULT_CODEC = "lz4"


def tokens_path(layer: str) -> str:
    return f"tokens/{layer}"


def scales_path(layer: str) -> str:
    return f"scales/{layer}"


def prefix_dtype(dtype: str) -> str:
    """Storage type of class and register tokens: int8 stores keep them in float16 (few, and unscaled)."""
    return "float16" if dtype == "int8" else dtype


def prefix_path(layer: str) -> str:
    return f"prefix/{layer}"


def pooled_path(layer: str, kind: str = "mean") -> str:
    return f"pooled/{layer}/{kind}"


@dataclass(frozen=True)
class LayerLayout:
    """What one tapped layer stores per tile and variant.

    Attributes
    ----------
    name : str
    shape : (C, h, w)
        Patch tokens of one tile and variant.
    n_prefix : int
        Class and register tokens (ViTs), stored apart.
    has_cls : bool
    stride : (float, float) or None
        Tile pixels per token along rows and columns.
    """

    name: str
    shape: tuple[int, int, int]
    n_prefix: int = 0
    has_cls: bool = False
    stride: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "prefix": self.n_prefix, "has_cls": self.has_cls,
                "stride": list(self.stride) if self.stride is not None else None}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "LayerLayout":
        stride = d.get("stride")
        return cls(name, tuple(int(v) for v in d["shape"]), int(d.get("prefix", 0)), bool(d.get("has_cls", False)),
                   tuple(float(v) for v in stride) if stride else None)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w)``."""
        return self.shape[1], self.shape[2]


def _record(cls, d: dict, what: str):
    """A dataclass from a mapping, naming the first missing field (a store from an older format)."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in names})
    except TypeError as exc:
        raise StoreError(f"the store's {what} attributes are incomplete ({exc}); re-create the store with "
                         "`embedcache extract ... --overwrite`") from None


@dataclass(frozen=True)
class StoreConfig:
    """The fields a store must share with any run that adds to it (compared field by field)."""

    encoder: dict
    weights_sha256: str | None
    layers: list
    variants: list
    dtype: str
    norm: bool
    compute: str
    tile_shape: list
    n_tiles: int
    unit_tiles: int
    dataset_fingerprint: str

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"], d["variants"], d["tile_shape"] = list(self.layers), list(self.variants), list(self.tile_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StoreConfig":
        return _record(cls, d, "config")


@dataclass(frozen=True)
class Provenance:
    """How a store was made: weights source, library versions, the dataset described, device."""

    weights: str | None = None
    versions: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    device: str | None = None
    batch_size: int | None = None
    extract_config: dict = field(default_factory=dict)
    created: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Provenance":
        return _record(cls, d, "provenance")


@dataclass(frozen=True)
class StoreAttrs:
    """Everything a store records about itself (module docstring): the one shape of its attributes.

    ``from_dict(to_dict())`` is the identity; stores of schema 1 written by
    any earlier version read back into it.
    """

    config: StoreConfig
    provenance: Provenance
    layers: tuple[LayerLayout, ...] = ()
    variant_defs: dict = field(default_factory=dict)
    source_names: tuple[str, ...] = ()
    tissue_names: tuple[str, ...] = ()
    class_names: dict = field(default_factory=dict)  # int -> str
    descriptors: dict = field(default_factory=dict)  # name -> dict
    complete: bool = False
    finished: str | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = {"schema": self.schema, "config": self.config.to_dict(), "provenance": self.provenance.to_dict(),
             "complete": self.complete,
             "tissue_names": list(self.tissue_names),
             "class_names": {str(k): v for k, v in self.class_names.items()},
             "source_names": list(self.source_names),
             "layer_info": {lay.name: lay.to_dict() for lay in self.layers},
             "variant_defs": dict(self.variant_defs)}
        if self.descriptors:
            d["descriptors"] = dict(self.descriptors)
        if self.finished is not None:
            d["finished"] = self.finished
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StoreAttrs":
        if d.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"not an embedcache store of schema {SCHEMA_VERSION} (it records schema "
                             f"{d.get('schema')!r})")
        config = StoreConfig.from_dict(d.get("config") or {})
        info = d.get("layer_info") or {}
        layers = tuple(LayerLayout.from_dict(name, info[name]) for name in config.layers if name in info)
        return cls(config=config, provenance=Provenance.from_dict(d.get("provenance") or {}), layers=layers,
                   variant_defs=dict(d.get("variant_defs") or {}),
                   source_names=tuple(d.get("source_names") or ()),
                   tissue_names=tuple(d.get("tissue_names") or ()),
                   class_names={int(k): v for k, v in (d.get("class_names") or {}).items()},
                   descriptors=dict(d.get("descriptors") or {}), complete=bool(d.get("complete")),
                   finished=d.get("finished"), schema=int(d["schema"]))

    def replace(self, **changes) -> "StoreAttrs":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ArraySpec:
    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    codec: str = DEFAULT_CODEC


def compressors(dtype: str, codec: str = DEFAULT_CODEC):
    """The codecs of an array's chunks: a compressor, then a crc32c checksum.

    Chosen by ``benchmarks/bench_codecs.py`` on real H&E tokens (float16,
    one core): ``lz4`` (Blosc LZ4, level 1) writes ~4.5 GB/s and reads
    ~10 GB/s at 0.44 of float32's bytes; ``zstd`` (Zstandard level 1) writes
    ~0.8 GB/s at 0.40. Higher levels and bit shuffle cost several times the
    time for a few percent (Blosc zstd level 3, the earlier default: 0.33 GB/s
    at 0.40). Byte shuffle helps types of 4 bytes or more (labels, tile
    records, pooled vectors) and not float16, int8 or pixels.
    """
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    if codec not in CODECS:
        raise StoreError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    itemsize = np.dtype(dtype).itemsize
    shuffle = "shuffle" if itemsize >= 4 else "noshuffle"
    if codec == "lz4":
        first = BloscCodec(cname="lz4", clevel=1, shuffle=shuffle, typesize=itemsize)
    elif itemsize >= 4:
        first = BloscCodec(cname="zstd", clevel=1, shuffle=shuffle, typesize=itemsize)
    else:
        first = ZstdCodec(level=1)
    return [first, Crc32cCodec()]


def array_specs(n_tiles: int, tile_shape: tuple[int, int], n_variants: int, layers: list[LayerLayout],
                dtype: str, unit_tiles: int, has_labels: bool, codec: str = DEFAULT_CODEC) -> list[ArraySpec]:
    """Every array of a store, with chunks and shards aligned to units of work."""
    n, u, v = n_tiles, unit_tiles, n_variants
    h, w = tile_shape
    specs = [
        ArraySpec(IMAGES, (n, h, w, 3), "uint8", (1, h, w, 3), (u, h, w, 3), codec),
        *(ArraySpec(path, (n, *shape), "int64", (u, *shape), None, codec)
          for path, shape in ((TILE_SOURCE, ()), (TILE_OFFSET, (2,)), (TILE_VALID, (2,)), (TILE_FOLD, ()),
                              (TILE_TISSUE, ()))),
    ]
    if has_labels:
        specs.append(ArraySpec(LABELS, (n, h, w, 2), "int32", (1, h, w, 2), (u, h, w, 2), codec))
    for layer in layers:
        c, lh, lw = layer.shape
        specs.append(ArraySpec(tokens_path(layer.name), (n, v, c, lh, lw), dtype, (1, 1, c, lh, lw),
                               (u, v, c, lh, lw), codec))
        if dtype == "int8":
            specs.append(ArraySpec(scales_path(layer.name), (n, v, c), "float32", (1, 1, c), (u, v, c), codec))
        specs.append(ArraySpec(pooled_path(layer.name, "mean"), (n, v, c), "float32", (u, v, c), None, codec))
        if layer.has_cls:
            specs.append(ArraySpec(pooled_path(layer.name, "cls"), (n, v, c), "float32", (u, v, c), None, codec))
        if layer.n_prefix:
            specs.append(ArraySpec(prefix_path(layer.name), (n, v, layer.n_prefix, c), prefix_dtype(dtype),
                                   (u, v, layer.n_prefix, c), None, codec))
    return specs


def variant_index(variants: list[str], variant, where) -> int:
    """The position of a variant given by name or index among a store's ``variants``."""
    if isinstance(variant, str):
        if variant not in variants:
            raise StoreError(f"{where}: no variant {variant!r}; it has {', '.join(variants)}")
        return variants.index(variant)
    if not 0 <= int(variant) < len(variants):
        raise StoreError(f"{where}: variant {variant} out of range (0..{len(variants) - 1})")
    return int(variant)


def variant_selection(variants: list[str], variant, where):
    """Variants for a zarr selection: one index; every variant (None) or a consecutive run as a slice; a list.

    ``variant`` is a name or index, a list of them, or None.
    """
    if variant is None:
        return slice(None)
    if isinstance(variant, (list, tuple)):
        which = [variant_index(variants, v, where) for v in variant]
        if which == list(range(which[0], which[0] + len(which))):
            return slice(which[0], which[0] + len(which))
        return which
    return variant_index(variants, variant, where)


def n_units(n_tiles: int, unit_tiles: int) -> int:
    return -(-n_tiles // unit_tiles)


def unit_range(unit: int, n_tiles: int, unit_tiles: int) -> tuple[int, int]:
    """Tiles ``[start, stop)`` of a unit of work."""
    start = unit * unit_tiles
    return start, min(start + unit_tiles, n_tiles)
