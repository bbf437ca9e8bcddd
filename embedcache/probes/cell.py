"""Cell-level probes: each layer's per-nucleus vectors (cell stores) against the nuclei's types.

Every cell store compared must hold the same nuclei of the same tiles (one
nuclei source over stores of one dataset), so every encoder is tested on
the same cells, folds and resamples. Folds keep the cells of one source
image together (never on both sides of a split). Besides the out-of-fold
predictions of each layer and method, a cell probe gives:

- a label-efficiency curve: the linear probe of each store's best layer
  refitted on fractions of each fold's training cells;
- invariance: how far the cells' (and, from the source store, the tiles')
  vectors move across the cached variants (:mod:`embedcache.probes.invariance`),
  and the identity-trained probe's predictions on every variant of the
  test cells (``variant_pred``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from embedcache.config import ProbeConfig
from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.probes.fit import ProbePrediction, cross_validate, make_folds
from embedcache.probes.invariance import VariantShift, variant_shift
from embedcache.probes.labels import CLASSIFICATION
from embedcache.probes.stores import store_label
from embedcache.store.cells import CellStore
from embedcache.store.reader import open_store


@dataclass
class CellProbeResult:
    """Everything a cell probe measured; scored with intervals by :mod:`embedcache.report.cells`.

    Attributes
    ----------
    predictions : list of ProbePrediction
        One per store, layer and method (``variant_pred`` set when the stores hold variants).
    curve : list of ProbePrediction
        The label-efficiency points: ``params["fraction"]`` of the training cells.
    shifts : dict of (store, layer, level) to VariantShift
        ``level`` is ``cell`` or ``tile``.
    info : dict
    variants : list of str
    """

    predictions: list[ProbePrediction]
    curve: list[ProbePrediction] = field(default_factory=list)
    shifts: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    variants: list[str] = field(default_factory=list)


def open_cell_stores(paths: Sequence) -> list[CellStore]:
    """Cell stores to compare: complete, and holding the same nuclei of the same tiles."""
    if not paths:
        raise ConfigError("no cell store given; pass --store CELLS (made by `embedcache cells`)")
    stores = [open_store(p) for p in paths]
    for s in stores:
        if not isinstance(s, CellStore):
            raise ConfigError(f"{s.path} is an embedding store, not a cell store; make one with "
                              f"`embedcache cells --store {s.path} --out CELLS` and probe that")
        if not s.complete:
            raise StoreError(f"{s.path}: the cell store is incomplete; run the same cells command again to finish it")
    ref = stores[0]
    ref_instance = ref.table()["instance"] if len(stores) > 1 else None
    for s in stores[1:]:
        if s.same_cells_key != ref.same_cells_key or not np.array_equal(s.table()["instance"], ref_instance):
            raise DataError(f"{s.path} and {ref.path} hold different cells (another dataset or nuclei source); "
                            "cell stores compared together must pool the same nuclei of the same tiles")
    return stores


def cell_labels(store: CellStore) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(keep, y, names)``: the typed cells, their class codes 0..K-1 and the class names."""
    types = store.table()["type"]
    keep = types > 0
    classes = np.unique(types[keep])
    if len(classes) < 2:
        found = "no typed nucleus" if not len(classes) else f"only {store.class_names.get(int(classes[0]), 'one type')}"
        raise DataError(f"{store.path}: {found} among its {store.n_cells} cells; the cell probe needs at least two "
                        "types (nuclei with types: a type map, or labelled points)")
    y = np.searchsorted(classes, types[keep]).astype(np.int64)
    return keep, y, [store.class_names.get(int(c), f"type {c}") for c in classes]


def run_cell_probes(paths: Sequence, config: ProbeConfig = ProbeConfig(level="cell", labels="type"),
                    progress: Callable[[str], None] | None = None, tiles: bool = True,
                    names: Sequence[str] | None = None) -> CellProbeResult:
    """Probe every cell store, layer and method of ``config`` on the same cells and folds.

    ``tiles``: also measure the tiles' invariance, from the stores the cells were pooled from (when they
    are there). ``names``: what to call each store in tables (default its folder name).
    """
    from sklearn.metrics import balanced_accuracy_score

    stores = open_cell_stores(paths)
    keep, y, classes = cell_labels(stores[0])
    table = stores[0].table()
    groups, unit = table["source"][keep], "source image"
    if config.groups:
        from embedcache.train.stream import read_groups

        groups, unit = read_groups(config.groups, stores[0])[groups], "group"
        if len(np.unique(groups)) < 2:
            raise DataError(f"{config.groups}: every cell is in one group; folds need at least two groups")
    folds = make_folds(y, config.folds, None, config.seed, groups, classes)
    # Stores may cache different variants (an encoder's own extract settings): invariance and transfer
    # compare every store on the variants they all hold (the identity first in each).
    variants = [v for v in stores[0].variants if all(v in s.variants for s in stores)]
    n_var = len(variants)
    result = CellProbeResult([], variants=variants)
    for j, s in enumerate(stores):
        label = names[j] if names else store_label(s, stores)
        layers = s.select_layers(config.layers)
        shared = [s.variants.index(v) for v in variants]
        best, best_score, best_fits = None, -np.inf, None
        for i, layer in enumerate(layers):
            X = None  # one layer's vectors in memory at a time
            X = read_cells(s, layer, shared, keep)
            for method in config.methods:
                fits = {} if method == "linear" and not config.augment else None
                pred = cross_validate(X, y, folds, method, k=config.k, l2_grid=config.l2_grid, augment=config.augment,
                                      seed=config.seed, groups=groups, pca=config.pca, transfer=n_var > 1, fitted=fits)
                _name(pred, label, s, layer, (i + 1) / len(layers), classes)
                result.predictions.append(pred)
                score = balanced_accuracy_score(y, pred.y_pred)
                if method == "linear" and score > best_score:
                    best, best_score, best_fits = layer, score, fits  # the curve refits on it
                if progress:
                    progress(f"{label} {layer} {method}")
            if n_var > 1:
                result.shifts[label, layer, "cell"] = variant_shift(X, config.seed, groups)
        if tiles and n_var > 1:
            result.shifts.update(_tile_shifts(s, label, layers, config.seed, variants))
        X = None
        if best is not None and config.fractions:
            best_X = read_cells(s, best, shared[:1], keep)[:, 0]
            for f in config.fractions:
                # The full fraction fits what the probe of the layer fitted (its identity rows, unless augmented):
                # its fits are reused, not repeated.
                pred = cross_validate(best_X, y, folds, "linear", l2_grid=config.l2_grid, seed=config.seed,
                                      groups=groups, pca=config.pca, fraction=f, fitted=best_fits if f == 1 else None)
                _name(pred, label, s, best, 1.0, classes)
                pred.params["fraction"] = f
                result.curve.append(pred)
            if progress:
                progress(f"{label} {best} label efficiency")
    n_images = int(len(np.unique(groups)))
    widths = sorted({s.dims[layer] for s in stores for layer in s.select_layers(config.layers)})
    result.info = {
        "level": "cell", "labels": {"source": "type", "task": CLASSIFICATION, "names": classes,
                                    "counts": np.bincount(y, minlength=len(classes)).tolist()},
        "n_tiles": int(len(y)), "n_cells": int(len(y)), "n_untyped": int((~keep).sum()),
        "folds": f"stratified {config.folds or 5}-fold over {n_images} {unit}s",
        "n_folds": int(len(np.unique(folds))), "unit": unit, "n_units": n_images,
        "features": _features(config.pca, widths),
        "variants": variants, "nuclei": stores[0].nuclei, "config": config.to_dict()}
    return result


def read_cells(store: CellStore, layer: str, variants: list[int], keep: np.ndarray,
               block: int = 1 << 16) -> np.ndarray:
    """The kept cells' vectors of one layer, ``(keep.sum(), V, C) float32``, read ``block`` cells at a time.

    Nothing of the size of all cells is made besides the result (a read of all rows, then the selection,
    would hold the layer twice)."""
    out = np.empty((int(keep.sum()), len(variants), store.dims[store.resolve_layer(layer)]), dtype=np.float32)
    at = 0
    for a in range(0, len(keep), block):
        rows = keep[a:a + block]
        if rows.any():
            got = store.vectors(layer, slice(a, a + len(rows)), variant=variants)[rows]
            out[at:at + len(got)] = got
            at += len(got)
    return out


def _features(pca: int | None, widths: list[int]) -> str:
    """What the probes were fitted on: PCA to one dimension, or each layer's full width."""
    if pca is None:
        return f"full width ({', '.join(map(str, widths))})"
    narrow = [w for w in widths if w <= pca]
    return (f"PCA to {pca} components (fitted on each fold's training cells)"
            + (f"; layers of width {', '.join(map(str, narrow))} kept at full width (not more than {pca})"
               if narrow else ""))


def _name(pred: ProbePrediction, label: str, store: CellStore, layer: str, depth: float, names: list[str]) -> None:
    pred.store, pred.encoder, pred.layer, pred.depth, pred.names = label, store.encoder.name, layer, depth, names


def _tile_shifts(cells: CellStore, label: str, layers: list[str], seed: int, variants: list[str]) -> dict:
    """Tile-level shifts over ``variants`` from the store the cells came from (nothing when it has moved)."""
    try:
        store = open_store(cells.source_store["path"])
    except StoreError:
        return {}
    if isinstance(store, CellStore) or store.config.dataset_fingerprint != cells.source_store["dataset_fingerprint"]:
        return {}
    if not all(v in store.variants for v in variants):
        return {}
    out, source = {}, store.tile_info()["source"]
    for layer in layers:
        if layer in store.layers and len(variants) > 1:
            X = np.stack([store.pooled(layer, slice(None), v) for v in variants], axis=1)
            if len(X) >= 2:
                out[label, layer, "tile"] = variant_shift(X, seed, source)
    return out


__all__ = ["CellProbeResult", "VariantShift", "cell_labels", "open_cell_stores", "run_cell_probes"]
