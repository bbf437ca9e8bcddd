"""Read a store: tiles, labels, tokens and pooled vectors, and check it.

Stores may be local folders or fsspec URLs (``s3://bucket/cache/uni.zarr``,
credentials from the environment, see :mod:`embedcache.store.location`).
Over a network, :meth:`Store.read_ahead` keeps the next batches' reads in
flight while the current one is used.

>>> store = open_store("demo.zarr")                     # doctest: +SKIP
>>> store.tokens(store.layers[-1], [0, 1]).shape        # doctest: +SKIP
(2, 320, 8, 8)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedcache.encoders.registry import EncoderSpec
from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.geometry import TileGeometry
from embedcache.layers import select_layers
from embedcache.store import quant, schema
from embedcache.store.cells import CELLS_ATTRS, not_zarr_reason, open_cells
from embedcache.store.location import StoreLocation
from embedcache.store.slide_cells import not_a_cell_store


def _index(idx, n: int):
    """int, slice or sequence of ints -> (selection for zarr, squeeze flag)."""
    if isinstance(idx, (int, np.integer)):
        i = int(idx) + (n if idx < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"tile {idx} out of range for {n} tiles")
        return slice(i, i + 1), True
    if isinstance(idx, slice):
        return idx, False
    arr = np.asarray(idx, dtype=np.int64).ravel()
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"tile index out of range for {n} tiles")
    arr = np.where(arr < 0, arr + n, arr)
    # A run of consecutive tiles reads as a slice: zarr's integer-array selection of a sharded array
    # is several times slower and holds far more memory than the block it returns.
    if arr.size and np.array_equal(arr, np.arange(arr[0], arr[0] + arr.size)):
        return slice(int(arr[0]), int(arr[0]) + arr.size), False
    return arr.tolist(), False


class Store:
    """A read view of an embedding store.

    Attributes
    ----------
    path : Path or StoreLocation
        A :class:`~pathlib.Path` for local stores; the location (``str()`` is
        the URL, ``.name`` its last part) for object storage.
    attrs : StoreAttrs
        Everything the store records (:mod:`embedcache.store.schema`); the
        properties below are the way to read it.
    config : StoreConfig
        What any run adding to the store must share (dataset fingerprint,
        dtype, unit of work, ...).
    provenance : Provenance
        Weights source, versions, the dataset described, device.
    n_tiles : int
    layers : list of str
        Tapped layer names, shallow to deep.
    variants : list of str
        Variant names; index 0 is the identity.
    encoder : EncoderSpec
        The encoder spec the store was made with.
    tile_shape : (int, int)
    tissue_names, source_names : list of str
    class_names : dict of int to str
    complete : bool
    """

    def __init__(self, path, group, attrs: schema.StoreAttrs, location: StoreLocation | None = None):
        self.location = location or StoreLocation.parse(path)
        self.path = self.location.path
        self.group = group
        self.attrs = attrs
        self.config = attrs.config
        self.provenance = attrs.provenance
        self.n_tiles = int(self.config.n_tiles)
        self.layers = list(self.config.layers)
        self.variants = list(self.config.variants)
        self.encoder = EncoderSpec.from_dict(self.config.encoder)
        self.complete = attrs.complete
        self.tile_shape = tuple(self.config.tile_shape)
        self.tissue_names = list(attrs.tissue_names)
        self.source_names = list(attrs.source_names)
        self.class_names = dict(attrs.class_names)
        self._layouts = {lay.name: lay for lay in attrs.layers}
        self._cache = {}
        self._indexes = {}  # (path, unit) -> shard index, read once (store.shards)
        self._tile_info = None

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"<Store {self.path} {self.encoder.name} {self.n_tiles} tiles x {len(self.variants)} "
                f"variants, layers {', '.join(self.layers)} ({state})>")

    # -- what the store records -----------------------------------------------------------------

    def layout(self, layer) -> schema.LayerLayout:
        """Shape, stride and prefix tokens of an extracted layer (name or index)."""
        name = self.resolve_layer(layer)
        if name not in self._layouts:
            raise StoreError(f"{self.path}: {name!r} is a descriptor layer (pooled vectors only, no tokens)")
        return self._layouts[name]

    @property
    def dataset_layout(self) -> str | None:
        """The layout the store was extracted from (``pannuke``, ``conic``, ``folder``, ``slides``, a release)."""
        return self.provenance.dataset.get("layout")

    @property
    def tiles_are_images(self) -> bool:
        """Every tile is a whole image of its own (``.npy`` stacks of patches), not a piece of a larger one."""
        recorded = self.provenance.dataset.get("stack")
        if recorded is not None:
            return bool(recorded)
        return self.dataset_layout in ("pannuke", "conic")  # stores made before the layout recorded it

    @property
    def official_splits(self) -> dict[str, list[int]]:
        """The release's named splits (``train``, ``val``, ``test``) as fold codes; empty when it has none."""
        return {k: [int(f) for f in v] for k, v in (self.provenance.dataset.get("splits") or {}).items()}

    @property
    def fold_names(self) -> list[str]:
        """Name of each fold code (``fold1``, ``train``...); empty when the dataset named none."""
        return list(self.provenance.dataset.get("fold_names") or [])

    @property
    def tile_mpp(self) -> float | None:
        """Microns per pixel of the tiles (stores extracted from slides); None when not recorded."""
        mpp = self.provenance.dataset.get("mpp")
        return float(mpp) if mpp is not None else None

    @property
    def tile_overlap(self) -> int:
        """Pixels by which neighbouring tiles of an image overlap (0 for stacks and stores made without)."""
        return int(self.provenance.dataset.get("overlap") or 0)

    @property
    def has_seams(self) -> bool:
        """Whether source images larger than a tile were cut into tiles without overlap (cached maps meet
        at straight seams there)."""
        if self.tile_overlap:
            return False
        source = self.tile_info()["source"]
        return len(np.unique(source)) < len(source)

    @property
    def extract_config(self) -> dict:
        """The extraction settings recorded (``ExtractConfig`` fields of the run that made the store)."""
        return dict(self.provenance.extract_config or {})

    @property
    def descriptor_layers(self) -> list[str]:
        """Layers written back by training (``fit-ssl``): pooled vectors only, no tokens."""
        return list(self.attrs.descriptors)

    def descriptor(self, name: str) -> dict:
        """What made a descriptor layer: source layer, settings, held-out slides, dimension."""
        if name not in self.attrs.descriptors:
            raise StoreError(f"{self.path}: no descriptor layer {name!r}; it has "
                             f"{', '.join(self.descriptor_layers) or 'none'}")
        return dict(self.attrs.descriptors[name])

    def geometry(self):
        """Where the tiles lie on their slides (:class:`~embedcache.geometry.TileGeometry`).

        Raises
        ------
        DataError
            The store was not extracted from slides (no microns per pixel recorded).
        """

        if self.tile_mpp is None:
            raise DataError(f"{self.path}: the store does not record microns per pixel (extracted from "
                            f"{self.dataset_layout or 'an unknown'} layout, not slides); tile distances need slides")
        info = self.tile_info()
        return TileGeometry.from_tiles(info["source"], info["offset"], self.tile_shape, self.tile_mpp,
                                       self.source_names)

    # -- layers and variants ----------------------------------------------------------------------

    def _array(self, path: str):
        if path not in self._cache:
            try:
                self._cache[path] = self.group[path]
            except KeyError:
                raise StoreError(f"{self.path}: has no array {path!r}") from None
        return self._cache[path]

    def _variant(self, variant) -> int:
        return schema.variant_index(self.variants, variant, self.path)

    def _layer(self, layer) -> str:
        if isinstance(layer, (int, np.integer)):
            return self.layers[int(layer)]
        if layer not in self.layers and layer not in self.descriptor_layers:
            raise StoreError(f"{self.path}: no layer {layer!r}; it has "
                             f"{', '.join(self.layers + self.descriptor_layers)}")
        return layer

    def resolve_layer(self, layer) -> str:
        """One layer name from a name (extracted or descriptor), an index (negative from the end) or ``last``."""
        if isinstance(layer, str) and layer in self.descriptor_layers:
            return layer
        names = self.select_layers(layer)
        if len(names) != 1:
            raise ConfigError(f"{self.path}: {layer!r} names {len(names)} layers; name one")
        return names[0]

    def select_layers(self, spec) -> list[str]:
        """Extracted layers named by ``last``, ``all`` or comma-separated names or indices, shallow to deep.

        Raises
        ------
        ConfigError
            An unknown name or an index out of range (the message lists the layers).
        """
        return [self.layers[i] for i in select_layers(spec, self.layers, where=str(self.path))]

    def _read(self, path: str, idx, *rest):
        sel, squeeze = _index(idx, self.n_tiles)
        try:
            out = self._read_units(path, sel, rest)
            if out is None:
                out = self._array(path).get_orthogonal_selection((sel, *rest))
        except (IndexError, StoreError):
            raise
        except Exception as exc:  # a chunk that does not decode: corruption
            raise StoreError(f"{self.path}: cannot read {path} ({type(exc).__name__}: {exc}); the store may be "
                             "corrupted: run `embedcache verify` and re-extract with --overwrite") from exc
        return out[0] if squeeze else out

    @property
    def verify_rows(self) -> int:
        """Tiles read at once by :func:`verify_store` (a unit of work)."""
        return int(self.config.unit_tiles)

    @property
    def has_labels(self) -> bool:
        return schema.LABELS in self.group

    def images(self, idx=slice(None)) -> np.ndarray:
        """Source tiles, ``(n, H, W, 3) ndarray of uint8``."""
        return self._read(schema.IMAGES, idx)

    def labels(self, idx=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Instance and type maps, each ``(n, H, W) ndarray of int32``."""
        if not self.has_labels:
            raise StoreError(f"{self.path}: this store has no labels (extracted from an unlabelled dataset)")
        lab = self._read(schema.LABELS, idx)
        return lab[..., 0], lab[..., 1]

    @property
    def quantized(self) -> bool:
        """Tokens are stored as int8 with a scale per tile, variant and channel (:mod:`embedcache.store.quant`)."""
        return self.config.dtype == "int8"

    def stored_tokens(self, layer, idx=slice(None), variant=0) -> tuple[np.ndarray, np.ndarray | None]:
        """Patch tokens as stored: ``values`` ``(n, C, h, w)`` (float16, float32 or int8) and, in int8
        stores, their ``scales`` ``(n, C)`` float32 (else None); :func:`embedcache.store.quant.to_float`
        turns them into floats. ``variant`` as in :meth:`tokens`.
        """
        layer, which = self._layer(layer), schema.variant_selection(self.variants, variant, self.path)
        values = self._read(schema.tokens_path(layer), idx, which)
        scales = self._read(schema.scales_path(layer), idx, which) if self.quantized else None
        return values, scales

    def tokens(self, layer, idx=slice(None), variant=0) -> np.ndarray:
        """Patch tokens of one variant, ``(n, C, h, w) ndarray of float32``.

        ``variant=None`` reads every variant, a list of variants those: ``(n, V, C, h, w)``.
        int8 tokens come back scaled (:mod:`embedcache.store.quant`).
        """
        return quant.to_float(*self.stored_tokens(layer, idx, variant))

    def samples(self, pairs, layers, stored: bool = False) -> tuple[list, np.ndarray]:
        """Tokens and images of ``(tile, variant)`` pairs, every chunk read concurrently.

        One sample is one chunk per layer (two in int8 stores: values and
        scales) and one image chunk: reading a batch chunk by chunk pays
        zarr's per-call cost for each; here their byte ranges are read
        together (:func:`~embedcache.store.shards.read_chunks`: in this
        thread from a local store, all in flight at once from object
        storage) and decoded directly.

        Returns
        -------
        tokens : list of (n, C, h, w) ndarray of float32, one per layer
            With ``stored=True``, ``(values, scales)`` pairs as stored instead
            (:meth:`stored_tokens`), for a reader that converts elsewhere.
        images : (n, H, W, 3) ndarray of uint8
        """
        layers = [self._layer(layer) for layer in layers]
        pairs = [(int(t), self._variant(v)) for t, v in pairs]
        paths = [schema.tokens_path(layer) for layer in layers]
        if self.quantized:
            paths += [schema.scales_path(layer) for layer in layers]
        try:
            chunks = self._read_samples(paths, pairs)
        except Exception as exc:  # a chunk that does not decode: corruption
            raise StoreError(f"{self.path}: cannot read tokens ({type(exc).__name__}: {exc}); the store may be "
                             "corrupted: run `embedcache verify` and re-extract with --overwrite") from exc
        n, k = len(pairs), len(layers)
        read = [np.stack(chunks[j * n:(j + 1) * n]) for j in range(len(paths))]
        tokens = [(read[j], read[k + j] if self.quantized else None) for j in range(k)]
        if not stored:
            tokens = [quant.to_float(*t) for t in tokens]
        return tokens, np.stack(chunks[len(paths) * n:])

    def _unit_array(self, path: str):
        """The array's units read directly (:mod:`embedcache.store.shards`); None: through zarr."""
        key = ("units", path)
        if key not in self._cache:
            from embedcache.store.shards import UnitArray

            self._cache[key] = UnitArray.of(self._array(path))
        return self._cache[key]

    def _read_units(self, path: str, sel, rest: tuple):
        """Tiles ``sel`` (a slice), variants ``rest`` (none, or one index, slice or list), every unit's object
        read whole and decoded directly; None when the selection or the array is left to zarr."""
        from embedcache.store.shards import read_rows, rows_of, second_axis

        ua, rows = self._unit_array(path), rows_of(sel, self.n_tiles)
        if ua is None or rows is None or len(rest) > 1:
            return None
        along = second_axis(rest[0], ua.shape[1]) if rest else (None, False)
        if along is None:
            return None
        out = read_rows(self.group.store, ua, *rows, along[0])
        return out[:, 0] if along[1] else out

    def _read_samples(self, paths: list[str], pairs: list[tuple[int, int]]) -> list[np.ndarray]:
        """The chunk of each ``(tile, variant)`` pair in each of ``paths``, then each tile's image, in that order.

        Read straight from the shards (each shard index once, kept for a
        complete store; one ranged read per chunk, all in flight together)
        when every array allows; else through zarr, one concurrent batch.
        """
        direct = [self._unit_array(p) for p in paths + [schema.IMAGES]]
        # Directly when inner chunks hold one tile and variant (tokens, scales) or one tile (images).
        if all(d is not None and d.sharding is not None and d.sharding.inner[:k] == (1,) * k
               for d, k in zip(direct, [2] * len(paths) + [1])):
            from embedcache.store.shards import read_chunks

            requests = [(d, (t, v)) for d in direct[:-1] for t, v in pairs]
            requests += [(direct[-1], (t,)) for t, _ in pairs]
            if len(self._indexes) > 8192:  # a bound for very large stores; a window of units needs far fewer
                self._indexes.clear()
            chunks = read_chunks(self.group.store, requests, self._indexes if self.complete else None)
            n = len(paths) * len(pairs)
            return [c[0, 0] for c in chunks[:n]] + [c[0] for c in chunks[n:]]
        import asyncio

        from zarr.core.sync import sync

        arrays = [self._array(path).async_array for path in paths]
        image_array = self._array(schema.IMAGES).async_array

        async def read_all():
            reads = [a.getitem((t, v)) for a in arrays for t, v in pairs]
            reads += [image_array.getitem((t,)) for t, _ in pairs]
            return await asyncio.gather(*reads)

        return sync(read_all())

    def pooled(self, layer, idx=slice(None), variant=0, kind: str = "mean") -> np.ndarray:
        """Pooled vectors of one variant, ``(n, D) ndarray of float32``.

        ``kind`` is ``"mean"`` (mean of patch tokens), ``"cls"`` (class
        token, ViTs) or ``"both"`` (the two concatenated).
        """
        layer = self._layer(layer)
        if kind == "both":
            return np.concatenate([self.pooled(layer, idx, variant, "mean"),
                                   self.pooled(layer, idx, variant, "cls")], axis=-1)
        if kind not in schema.POOLED_KINDS:
            raise StoreError(f"pooled kind must be mean, cls or both, not {kind!r}")
        path = schema.pooled_path(layer, kind)
        if path not in self.group:
            raise StoreError(f"{self.path}: encoder {self.encoder.name} has no class token; use kind='mean'")
        return np.asarray(self._read(path, idx, self._variant(variant)), dtype=np.float32)

    def prefix(self, layer, idx=slice(None), variant=0) -> np.ndarray:
        """Class and register tokens, ``(n, P, C) ndarray of float32`` (ViTs)."""
        return self._read(schema.prefix_path(self._layer(layer)), idx, self._variant(variant)).astype(np.float32)

    def tile_info(self) -> dict[str, np.ndarray]:
        """Per-tile ``source``, ``offset``, ``valid``, ``fold`` and ``tissue`` arrays.

        Read once for a complete store (its tile records no longer change); callers get their own copies.
        """
        info = self._tile_info
        if info is None:
            info = {k.split("/")[1]: np.asarray(self._array(k)[:]) for k in
                    (schema.TILE_SOURCE, schema.TILE_OFFSET, schema.TILE_VALID, schema.TILE_FOLD, schema.TILE_TISSUE)}
            if self.complete:
                self._tile_info = info
        return {k: v.copy() for k, v in info.items()}

    @property
    def tissue(self) -> list[str] | None:
        if not self.tissue_names:
            return None
        return [self.tissue_names[c] if c >= 0 else "" for c in self.tile_info()["tissue"]]

    def units_done(self) -> tuple[int, int]:
        done = np.asarray(self._array(schema.DONE)[:])
        return int(done.sum()), int(done.size)

    def arrays(self) -> list[str]:
        """Paths of every array in the store."""
        out = []

        def walk(group, prefix=""):
            for name, node in group.members():
                path = f"{prefix}{name}"
                if hasattr(node, "shape"):
                    out.append(path)
                else:
                    walk(node, path + "/")

        walk(self.group)
        return sorted(out)

    def nbytes(self, path: str) -> int:
        """Bytes stored for one array (chunks and shard indexes, not its metadata)."""
        return self.location.nbytes(path, metadata=False)

    def read_ahead(self, read: Callable, items: Iterable, depth: int = 2) -> Iterator:
        """Yield ``read(item)`` for each item in order, with up to ``depth`` reads in flight.

        For streaming from object storage: while the caller uses one batch,
        the next ``depth`` are being fetched (zarr fetches the chunks of each
        read concurrently too).

        Examples
        --------
        >>> batches = [range(i, i + 8) for i in range(0, store.n_tiles, 8)]   # doctest: +SKIP
        >>> for tok in store.read_ahead(lambda b: store.tokens("blocks.5", list(b)), batches):  # doctest: +SKIP
        ...     train_step(tok)
        """
        if depth < 1:
            yield from map(read, items)
            return
        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="embedcache-read-ahead") as pool:
            pending = deque()
            for item in items:
                pending.append(pool.submit(read, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def summary(self) -> dict:
        """Plain-data summary: what ``embedcache info`` prints."""
        done, units = self.units_done()
        layers = {}
        for layer in self.layers:
            arr = self._array(schema.tokens_path(layer))
            size = self.nbytes(schema.tokens_path(layer))
            if self.quantized:
                size += self.nbytes(schema.scales_path(layer))
            layers[layer] = {
                "tokens": list(arr.shape[2:]),
                "dtype": str(arr.dtype),
                "bytes": size,  # int8: with the scales
                "bytes_per_tile_variant": size / max(1, self.n_tiles * len(self.variants)),
                "raw_float32_per_tile_variant": int(np.prod(arr.shape[2:])) * 4,
                "cls": schema.pooled_path(layer, "cls") in self.group,
            }
        total = self.location.nbytes()
        return {
            "path": str(self.path),
            "encoder": self.encoder.name,
            "arch": self.encoder.arch,
            "weights": self.provenance.weights,
            "weights_sha256": self.config.weights_sha256,
            "n_tiles": self.n_tiles,
            "tile_shape": list(self.tile_shape),
            "variants": self.variants,
            "labels": self.has_labels,
            "layers": layers,
            "bytes": total,
            "complete": self.complete and done == units,
            "units_done": [done, units],
            "dataset": self.provenance.dataset,
            "created": self.provenance.created,
        }


def open_store(path, mode: str = "r") -> Store:
    """Open a store for reading.

    ``path`` is a local folder or an fsspec URL (``s3://...``); a local cell
    store (``embedcache cells``) opens as a :class:`~embedcache.store.cells.CellStore`.
    It may be a finished store or an interrupted one: locally, when only ``OUT.partial``
    exists it is opened; on object storage the store is unfinished in place.
    Either way ``complete`` is False.

    Raises
    ------
    StoreError
        No store at ``path``, not an embedcache store, or storage that
        cannot be reached (missing credentials name the variables to set).
    """
    loc = StoreLocation.parse(path)
    with loc.errors():
        if loc.is_local and not loc.exists() and loc.building.exists():
            loc = loc.building
        if not loc.exists():
            raise StoreError(f"{loc}: no such store")
        try:
            group = loc.open_group(mode)
        except Exception as exc:
            from zarr.errors import BaseZarrError

            if not (loc.is_local or isinstance(exc, BaseZarrError)):
                raise
            raise StoreError(f"{loc}: not a Zarr store ({not_zarr_reason(exc)}); give a store written by "
                             "`embedcache extract`") from None
        attrs = dict(group.attrs).get(schema.ATTRS)
        cell_attrs = None if attrs else dict(group.attrs).get(CELLS_ATTRS)
    if cell_attrs and loc.is_local:
        return open_cells(loc.path, group, cell_attrs)
    if not attrs:  # a slide's cells.zarr is named as such, with what to give instead
        raise StoreError(not_a_cell_store(loc, dict(group.attrs)) or f"{loc}: not an embedcache store of schema "
                         f"{schema.SCHEMA_VERSION}")
    try:
        record = schema.StoreAttrs.from_dict(attrs)
    except StoreError as exc:
        raise StoreError(f"{loc}: {exc}") from None
    return Store(loc.path, group, record, location=loc)
