"""The stores a probe compares: opened together, checked to hold the same tiles, named for tables."""

from __future__ import annotations

from typing import Sequence

from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.store.cells import CellStore
from embedcache.store.reader import open_store


def open_stores(paths: Sequence) -> list:
    """Open stores to compare; they must be complete and hold the same tiles.

    Raises
    ------
    ConfigError
        A cell store (those are probed with ``--level cell``).
    DataError
        Stores made from different datasets (another ``dataset_fingerprint``).
    StoreError
        A store missing or incomplete.
    """

    if not paths:
        raise ConfigError("no store given; pass --store STORE")
    stores = [open_store(p) for p in paths]
    for s in stores:
        if isinstance(s, CellStore):
            raise ConfigError(f"{s.path} is a cell store (one vector per nucleus): probe it with --level cell, "
                              "or pass the embedding store it was pooled from")
        if not s.complete:
            raise StoreError(f"{s.path}: the store is incomplete; run the same extract command again to finish it")
    ref = stores[0]
    for s in stores[1:]:
        if s.config.dataset_fingerprint != ref.config.dataset_fingerprint:
            raise DataError(f"{s.path} and {ref.path} hold different tiles (dataset fingerprints "
                            f"{str(s.config.dataset_fingerprint)[:12]} vs "
                            f"{str(ref.config.dataset_fingerprint)[:12]}); stores compared together "
                            "must be extracted from the same dataset")
    return stores


def layer_depth(store, layer: str) -> float:
    """Position of ``layer`` among the store's tapped layers, in (0, 1]: the x axis of depth plots."""
    return (store.layers.index(layer) + 1) / len(store.layers)


def store_label(store, stores: Sequence) -> str:
    """A short name for a store in tables: its folder name without ``.zarr``."""
    name = store.path.name.removesuffix(".partial").removesuffix(".zarr")
    if sum(s.path.name == store.path.name for s in stores) > 1:
        name = str(store.path)
    return name
