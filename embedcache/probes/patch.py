"""Patch-level linear probe: does each patch token know what its patch holds?

Every patch token of a layer predicts its patch's content at patch
resolution: background vs nucleus (``nuclei``) or the majority nucleus type
(``type``, 0 = background). A patch's target is the majority class of its
pixels (ties go to the lower class, background first). The probe is a
standardised logistic regression (:func:`~embedcache.probes.fit.fit_linear`,
L2 swept on the training tiles) fitted on patches sampled evenly over the
training tiles; every patch of every test tile is predicted, and scored per
tile as a confusion matrix, so intervals resample tiles, not patches.

>>> inst = np.zeros((1, 4, 4), int); inst[0, :2, :2] = 1
>>> patch_targets(inst, inst, (2, 2), "nuclei")[0]
array([[1, 0],
       [0, 0]])
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from embedcache.config import ProbeConfig
from embedcache.errors import DataError
from embedcache.probes.fit import ProbePrediction, fit_linear, make_folds
from embedcache.probes.labels import SEGMENTATION
from embedcache.probes.stores import layer_depth, open_stores, store_label

TILE_CHUNK = 32  # tiles of tokens read at once
IGNORE = -1  # target of a patch that lies in a tile's padding


def patch_targets(inst: np.ndarray, types: np.ndarray, grid: tuple[int, int], labels: str = "nuclei",
                  valid: np.ndarray | None = None) -> np.ndarray:
    """Majority class of the pixels under each patch, ``(n, h, w) ndarray of int64``.

    Parameters
    ----------
    inst, types : (n, H, W) ndarray of int
        Instance ids (0 = background) and type ids.
    grid : (h, w)
        The token grid; pixel (r, c) falls in patch (r * h // H, c * w // W).
    labels : {"nuclei", "type"}
        Classes 0 background / 1 nucleus, or 0 background / type id.
    valid : (n, 2) ndarray of int, optional
        Height and width of each tile that is not padding; patches whose
        centre lies beyond get :data:`IGNORE`.
    """
    n, H, W = inst.shape
    h, w = grid
    pixel = (inst > 0).astype(np.int64) if labels == "nuclei" else np.where(inst > 0, types, 0).astype(np.int64)
    k = int(pixel.max()) + 1
    rows, cols = np.arange(H) * h // H, np.arange(W) * w // W
    patch = (rows[:, None] * w + cols[None, :])[None]  # (1, H, W)
    key = (np.arange(n)[:, None, None] * (h * w) + patch) * k + pixel
    votes = np.bincount(key.ravel(), minlength=n * h * w * k).reshape(n, h, w, k)
    out = votes.argmax(axis=-1)
    if valid is not None:
        centre_r, centre_c = (np.arange(h) + 0.5) * H / h, (np.arange(w) + 0.5) * W / w
        inside = (centre_r[None, :, None] < valid[:, 0, None, None]) & (centre_c[None, None, :] < valid[:, 1, None, None])
        out = np.where(inside, out, IGNORE)
    return out


def _chunks(store, layer: str, labels: str, valid: np.ndarray):
    """(tiles, tokens (n, h*w, C), targets (n, h*w)) over the store, TILE_CHUNK tiles at a time."""
    grid = store.layout(layer).grid
    for start in range(0, store.n_tiles, TILE_CHUNK):
        tiles = np.arange(start, min(start + TILE_CHUNK, store.n_tiles))
        tokens = store.tokens(layer, tiles)
        inst, types = store.labels(tiles)
        targets = patch_targets(inst, types, grid, labels, valid[tiles])
        yield tiles, tokens.reshape(len(tiles), tokens.shape[1], -1).transpose(0, 2, 1), targets.reshape(len(tiles), -1)


def probe_layer(store, layer: str, folds: np.ndarray, config: ProbeConfig = ProbeConfig(level="patch",
                labels="nuclei", method="linear"), groups: np.ndarray | None = None) -> tuple[np.ndarray, list[dict], int]:
    """Out-of-fold patch predictions of one layer, as per-tile confusion matrices.

    Two passes over the layer's tokens: one samples training patches of
    every tile, one predicts every patch with the probe of its tile's fold.
    ``groups`` (the source image of each tile) keeps an image's patches on
    one side of the L2 sweep's validation split; default the tile.

    Returns
    -------
    confusion : (n, K, K) ndarray of int64
        [truth, prediction] patch counts per tile.
    chosen : list of dict
        The L2 strength chosen in each fold.
    n_classes : int
    """
    valid = store.tile_info()["valid"]
    rng = np.random.default_rng(config.seed)
    h, w = store.layout(layer).grid
    per_tile = max(1, min(h * w, config.max_patches // store.n_tiles))
    X, y, tile_of, n_classes = [], [], [], 2
    for tiles, tokens, targets in _chunks(store, layer, config.labels, valid):
        n_classes = max(n_classes, int(targets.max()) + 1)
        for j, t in enumerate(tiles):
            usable = np.flatnonzero(targets[j] != IGNORE)
            pick = rng.choice(usable, size=min(per_tile, len(usable)), replace=False)
            X.append(tokens[j, pick])
            y.append(targets[j, pick])
            tile_of.append(np.full(len(pick), t))
    X, y, tile_of = np.concatenate(X), np.concatenate(y), np.concatenate(tile_of)
    if len(np.unique(y)) < 2:
        raise DataError(f"{store.path}: no sampled patch of {layer} holds a nucleus; "
                        "the patch probe needs both background and nuclei")
    models, chosen = {}, []
    for f in np.unique(folds):
        rows = folds[tile_of] != f
        if len(np.unique(y[rows])) < 2:
            raise DataError(f"{store.path}: the training tiles of fold {f} hold a single patch class at {layer}")
        unit = tile_of if groups is None else np.asarray(groups)[tile_of]
        models[f] = fit_linear(X[rows], y[rows], unit[rows], config.l2_grid, config.seed)
        chosen.append(models[f].best_params)
    del X, y, tile_of
    confusion = np.zeros((store.n_tiles, n_classes, n_classes), dtype=np.int64)
    for tiles, tokens, targets in _chunks(store, layer, config.labels, valid):
        for j, t in enumerate(tiles):
            keep = targets[j] != IGNORE
            if not keep.any():  # an edge tile whose every patch centre lies in the padding
                continue
            pred = models[folds[t]].predict(tokens[j, keep])
            confusion[t] = np.bincount(targets[j, keep] * n_classes + pred,
                                       minlength=n_classes ** 2).reshape(n_classes, n_classes)
    return confusion, chosen, n_classes


def _class_names(store, labels: str, n_classes: int) -> list[str]:
    if labels == "nuclei":
        return ["background", "nucleus"]
    return ["background"] + [store.class_names.get(c, f"type {c}") for c in range(1, n_classes)]


def run_patch_probes(paths: Sequence, config: ProbeConfig,
                     progress: Callable[[str], None] | None = None) -> tuple[list[ProbePrediction], dict]:
    """The patch probe on every store and layer of ``config``, on the same tiles and folds.

    Folds: the store's when it has several and ``config.folds`` is None, else
    a k-fold over tiles. Returns predictions and an info dict, as
    :func:`~embedcache.probes.tile.run_tile_probes`.
    """
    stores = open_stores(paths)
    for s in stores:
        if not s.has_labels:
            raise DataError(f"{s.path}: the store has no label maps; the patch probe needs them")
    layers = {id(s): s.select_layers(config.layers) for s in stores}
    info = stores[0].tile_info()
    store_folds, groups = info["fold"], info.get("source")
    # No tile-level class to stratify on: a plain k-fold, over source images (regression-style targets).
    folds = make_folds(np.zeros((stores[0].n_tiles, 1)), config.folds, store_folds, config.seed, groups)
    predictions = []
    for s in stores:
        for layer in layers[id(s)]:
            confusion, chosen, k = probe_layer(s, layer, folds, config, groups)
            predictions.append(ProbePrediction(
                store=store_label(s, stores), encoder=s.encoder.name, layer=layer,
                depth=layer_depth(s, layer), method="linear", task=SEGMENTATION, confusion=confusion,
                names=_class_names(stores[0], config.labels, k),
                params={"folds": chosen}, groups=None if groups is None else np.asarray(groups)))
            if progress:
                progress(f"{s.path.name} {layer}")
    n_images = stores[0].n_tiles if groups is None else int(len(np.unique(groups)))
    over = f" over {n_images} source images" if n_images < stores[0].n_tiles else ""
    split = ("store folds" if config.folds is None and len(np.unique(store_folds)) > 1
             else f"{config.folds or 5}-fold{over}")
    names = max((p.names for p in predictions), key=len)
    info = {"level": "patch", "labels": {"source": config.labels, "task": SEGMENTATION, "names": names},
            "n_tiles": stores[0].n_tiles, "folds": split, "n_folds": int(len(np.unique(folds))),
            "unit": "source image", "n_units": n_images, "config": config.to_dict()}
    return predictions, info
