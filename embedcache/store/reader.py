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

from embedcache.errors import StoreError
from embedcache.store import schema
from embedcache.store.location import StoreLocation


def _index(idx, n: int):
    """int, slice or sequence of ints -> (selection for zarr, squeeze flag)."""
    if isinstance(idx, (int, np.integer)):
        i = int(idx) + (n if idx < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"tile {idx} out of range for {n} tiles")
        return [i], True
    if isinstance(idx, slice):
        return idx, False
    arr = np.asarray(idx, dtype=np.int64).ravel()
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"tile index out of range for {n} tiles")
    return (np.where(arr < 0, arr + n, arr)).tolist(), False


class Store:
    """A read view of an embedding store.

    Attributes
    ----------
    path : Path or StoreLocation
        A :class:`~pathlib.Path` for local stores; the location (``str()`` is
        the URL, ``.name`` its last part) for object storage.
    n_tiles : int
    layers : list of str
        Tapped layer names, shallow to deep.
    variants : list of str
        Variant names; index 0 is the identity.
    encoder : dict
        The encoder spec the store was made with.
    complete : bool
    """

    def __init__(self, path, group, attrs: dict, location: StoreLocation | None = None):
        self.location = location or StoreLocation.parse(path)
        self.path = self.location.path
        self.group = group
        self.attrs = attrs
        cfg = attrs["config"]
        self.config = cfg
        self.n_tiles = int(cfg["n_tiles"])
        self.layers = list(cfg["layers"])
        self.variants = list(cfg["variants"])
        self.encoder = dict(cfg["encoder"])
        self.complete = bool(attrs.get("complete"))
        self.tile_shape = tuple(cfg["tile_shape"])
        self.tissue_names = list(attrs.get("tissue_names") or [])
        self.class_names = {int(k): v for k, v in (attrs.get("class_names") or {}).items()}
        self._cache = {}

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"<Store {self.path} {self.encoder['name']} {self.n_tiles} tiles x {len(self.variants)} "
                f"variants, layers {', '.join(self.layers)} ({state})>")

    def _array(self, path: str):
        if path not in self._cache:
            try:
                self._cache[path] = self.group[path]
            except KeyError:
                raise StoreError(f"{self.path}: has no array {path!r}") from None
        return self._cache[path]

    def _variant(self, variant) -> int:
        if isinstance(variant, str):
            if variant not in self.variants:
                raise StoreError(f"{self.path}: no variant {variant!r}; it has {', '.join(self.variants)}")
            return self.variants.index(variant)
        if not 0 <= int(variant) < len(self.variants):
            raise StoreError(f"{self.path}: variant {variant} out of range (0..{len(self.variants) - 1})")
        return int(variant)

    def _layer(self, layer) -> str:
        if isinstance(layer, (int, np.integer)):
            return self.layers[int(layer)]
        if layer not in self.layers and layer not in self.descriptor_layers:
            raise StoreError(f"{self.path}: no layer {layer!r}; it has "
                             f"{', '.join(self.layers + self.descriptor_layers)}")
        return layer

    @property
    def descriptor_layers(self) -> list[str]:
        """Layers written back by training (``fit-ssl``): pooled vectors only, no tokens."""
        return list(self.attrs.get("descriptors") or {})

    def resolve_layer(self, layer) -> str:
        """A layer name from a name, an index (int or digits, negative from the end) or ``last``."""
        if layer == "last":
            return self.layers[-1]
        if isinstance(layer, str) and layer.lstrip("-").isdigit():
            layer = int(layer)
        if isinstance(layer, int) and not -len(self.layers) <= layer < len(self.layers):
            raise StoreError(f"{self.path}: layer index {layer} out of range ({len(self.layers)} layers)")
        return self._layer(layer)

    def _read(self, path: str, idx, *rest):
        sel, squeeze = _index(idx, self.n_tiles)
        try:
            out = self._array(path).get_orthogonal_selection((sel, *rest))
        except (IndexError, StoreError):
            raise
        except Exception as exc:  # a chunk that does not decode: corruption
            raise StoreError(f"{self.path}: cannot read {path} ({type(exc).__name__}: {exc}); the store may be "
                             "corrupted: run `embedcache verify` and re-extract with --overwrite") from exc
        return out[0] if squeeze else out

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

    def tokens(self, layer, idx=slice(None), variant=0) -> np.ndarray:
        """Patch tokens of one variant, ``(n, C, h, w) ndarray of float32``."""
        return self._read(schema.tokens_path(self._layer(layer)), idx, self._variant(variant)).astype(np.float32)

    def samples(self, pairs, layers) -> tuple[list[np.ndarray], np.ndarray]:
        """Tokens and images of ``(tile, variant)`` pairs, every chunk read concurrently.

        One sample is one chunk per layer (and one image chunk): reading a
        batch chunk by chunk pays zarr's per-call cost for each; here one
        event-loop round trip fetches and decodes them all (a training batch of
        8 tiles x 4 layers came 3.4 times quicker).

        Returns
        -------
        tokens : list of (n, C, h, w) ndarray of float32, one per layer
        images : (n, H, W, 3) ndarray of uint8
        """
        import asyncio

        from zarr.core.sync import sync

        layers = [self._layer(layer) for layer in layers]
        pairs = [(int(t), self._variant(v)) for t, v in pairs]
        token_arrays = [self._array(schema.tokens_path(layer)).async_array for layer in layers]
        image_array = self._array(schema.IMAGES).async_array

        async def read_all():
            reads = [a.getitem((t, v)) for a in token_arrays for t, v in pairs]
            reads += [image_array.getitem((t,)) for t, _ in pairs]
            return await asyncio.gather(*reads)

        try:
            chunks = sync(read_all())
        except Exception as exc:  # a chunk that does not decode: corruption
            raise StoreError(f"{self.path}: cannot read tokens ({type(exc).__name__}: {exc}); the store may be "
                             "corrupted: run `embedcache verify` and re-extract with --overwrite") from exc
        n = len(pairs)
        tokens = [np.stack(chunks[k * n:(k + 1) * n]).astype(np.float32) for k in range(len(layers))]
        return tokens, np.stack(chunks[len(layers) * n:])

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
            raise StoreError(f"{self.path}: encoder {self.encoder['name']} has no class token; use kind='mean'")
        return np.asarray(self._read(path, idx, self._variant(variant)), dtype=np.float32)

    def prefix(self, layer, idx=slice(None), variant=0) -> np.ndarray:
        """Class and register tokens, ``(n, P, C) ndarray of float32`` (ViTs)."""
        return self._read(schema.prefix_path(self._layer(layer)), idx, self._variant(variant)).astype(np.float32)

    def tile_info(self) -> dict[str, np.ndarray]:
        """Per-tile ``source``, ``offset``, ``valid``, ``fold`` and ``tissue`` arrays."""
        return {k.split("/")[1]: np.asarray(self._array(k)[:]) for k in
                (schema.TILE_SOURCE, schema.TILE_OFFSET, schema.TILE_VALID, schema.TILE_FOLD, schema.TILE_TISSUE)}

    @property
    def tissue(self) -> list[str] | None:
        codes = np.asarray(self._array(schema.TILE_TISSUE)[:])
        if not self.tissue_names:
            return None
        return [self.tissue_names[c] if c >= 0 else "" for c in codes]

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
            layers[layer] = {
                "tokens": list(arr.shape[2:]),
                "dtype": str(arr.dtype),
                "bytes": self.nbytes(schema.tokens_path(layer)),
                "bytes_per_tile_variant": self.nbytes(schema.tokens_path(layer)) / max(1, self.n_tiles * len(self.variants)),
                "raw_float32_per_tile_variant": int(np.prod(arr.shape[2:])) * 4,
                "cls": schema.pooled_path(layer, "cls") in self.group,
            }
        total = self.location.nbytes()
        return {
            "path": str(self.path),
            "encoder": self.encoder["name"],
            "arch": self.encoder["arch"],
            "weights": self.attrs["provenance"].get("weights"),
            "weights_sha256": self.config.get("weights_sha256"),
            "n_tiles": self.n_tiles,
            "tile_shape": list(self.tile_shape),
            "variants": self.variants,
            "labels": self.has_labels,
            "layers": layers,
            "bytes": total,
            "complete": self.complete and done == units,
            "units_done": [done, units],
            "dataset": self.attrs["provenance"].get("dataset"),
            "created": self.attrs["provenance"].get("created"),
        }


def open_store(path, mode: str = "r") -> Store:
    """Open a store for reading.

    ``path`` is a local folder or an fsspec URL (``s3://...``). It may be a
    finished store or an interrupted one: locally, when only ``OUT.partial``
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
            raise StoreError(f"{loc}: not a Zarr store ({type(exc).__name__}: {exc})") from None
        attrs = dict(group.attrs).get(schema.ATTRS)
    if not attrs or attrs.get("schema") != schema.SCHEMA_VERSION:
        raise StoreError(f"{loc}: not an embedcache store of schema {schema.SCHEMA_VERSION}")
    return Store(loc.path, group, attrs, location=loc)


def verify_store(store: Store, progress=None) -> list[str]:
    """Check completeness and decode every chunk (checksums); return the problems found.

    ``progress`` is called with each array's path once it is checked. An
    empty list means the store is complete and intact.
    """
    problems = []
    done, units = store.units_done()
    if done < units:
        problems.append(f"incomplete: {units - done} of {units} units of work not written "
                        "(run the same extract command again to resume)")
    elif not store.complete:
        problems.append("all units written but the store was never marked complete")
    step = int(store.config["unit_tiles"])
    for path in store.arrays():
        if path == schema.DONE:
            continue
        arr = store._array(path)
        for start in range(0, arr.shape[0], step):
            stop = min(start + step, arr.shape[0])
            try:
                block = arr[start:stop]
            except Exception as exc:
                problems.append(f"{path}: tiles {start}..{stop - 1} cannot be read "
                                f"({type(exc).__name__}: {exc}); re-extract with --overwrite")
                continue
            if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
                problems.append(f"{path}: tiles {start}..{stop - 1} hold NaN or infinite values")
        if progress:
            progress(path)
    return problems
