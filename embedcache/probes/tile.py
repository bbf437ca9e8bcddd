"""Tile-level probes of stores: each layer's pooled vectors against one label per tile.

Tile-level probes read the pooled arrays of a store, never its token
arrays; labels and folds come from the first store, and every store holds
the same tiles, so every encoder is tested on the same tiles and folds.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from embedcache.config import ProbeConfig
from embedcache.errors import ConfigError
from embedcache.probes.fit import ProbePrediction, make_folds, probe_features
from embedcache.probes.labels import CLASSIFICATION, split_groups, tile_labels
from embedcache.probes.stores import layer_depth, open_stores, store_label


def pooled_features(store, layer: str, kind: str = "mean", augment: bool = False) -> np.ndarray:
    """Pooled vectors of every tile: ``(n, D)``, or ``(n, V, D)`` over all variants when ``augment``."""
    if kind in ("cls", "both") and not store.layout(layer).has_cls:
        raise ConfigError(f"{store.path}: encoder {store.encoder.name} has no class token at {layer}; "
                          "use --pooled mean")
    variants = range(len(store.variants)) if augment else [0]
    return np.stack([store.pooled(layer, slice(None), v, kind) for v in variants], axis=1)


def run_tile_probes(paths: Sequence, config: ProbeConfig = ProbeConfig(),
                    progress: Callable[[str], None] | None = None) -> tuple[list[ProbePrediction], dict]:
    """Probe every store, layer and method of ``config`` on the same tiles and folds.

    Returns
    -------
    predictions : list of ProbePrediction
    info : dict
        ``labels`` (:meth:`TileLabels.describe`), ``folds`` (how split) and ``config``.
    """
    stores = open_stores(paths)
    layers = {id(s): s.select_layers(config.layers) for s in stores}
    labels = tile_labels(stores[0], config.labels)
    store_folds = stores[0].tile_info()["fold"]
    groups, unit = split_groups(stores[0], labels)
    folds = make_folds(labels.y, config.folds, store_folds, config.seed, groups,
                       labels.names if labels.task == CLASSIFICATION else None)
    predictions = []
    for s in stores:
        feats = {layer: (lambda layer=layer, s=s: pooled_features(s, layer, config.pooled, config.augment))
                 for layer in layers[id(s)]}
        predictions += probe_features(feats, labels, folds, config, store_label(s, stores), s.encoder.name,
                                      {layer: layer_depth(s, layer) for layer in feats}, progress, groups)
    n_images = int(len(np.unique(groups)))
    over = f" over {n_images} {unit}s" if n_images < len(groups) else ""
    split = "store folds" if config.folds is None and len(np.unique(store_folds)) > 1 else (
        f"{'stratified ' if labels.task == CLASSIFICATION else ''}{config.folds or 5}-fold{over}")
    info = {"level": "tile", "labels": labels.describe(), "n_tiles": len(labels.y), "folds": split,
            "n_folds": int(len(np.unique(folds))), "unit": unit, "n_units": n_images,
            "config": config.to_dict()}
    unstratified = _unstratified(labels, folds)
    if unstratified:
        info["note"] = unstratified
    return predictions, info


def _unstratified(labels, folds: np.ndarray) -> str:
    """What keeps the folds from being stratified (a class missing from a test fold), or ``""``."""
    if labels.task != CLASSIFICATION:
        return ""
    for f in np.unique(folds):
        absent = np.setdiff1d(np.unique(labels.y), labels.y[folds == f])
        if absent.size:
            return (f"the folds could not be stratified: test fold {int(f)} holds no tile of "
                    f"{labels.names[int(absent[0])]!r} (too few images of it to spread over the folds)")
    return ""
