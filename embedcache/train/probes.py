"""Tile-level probes on pooled vectors: logistic regression with an L2 sweep, and cosine kNN.

Arrays in, out-of-fold predictions out: every tile is predicted once, by a
probe fitted on the folds that do not hold it. Each probe is a scikit-learn
pipeline, so standardisation is fitted on the training split only, and the
regularisation sweep (:func:`fit_linear`) holds out part of the training
split, never the test fold. Cached variants can be added to the training
split (``augment``); tests always use the identity variant. Tile-level
probes read the pooled arrays of a store, never its token arrays.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 16)).astype(np.float32)
>>> y = (X[:, 0] > 0).astype(int)
>>> folds = make_folds(y, n_folds=5)
>>> pred = cross_validate(X, y, folds, "linear")
>>> float((pred.y_pred == y).mean()) > 0.9
True
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from embedcache.config import ProbeConfig
from embedcache.errors import ConfigError, DataError

CLASSIFICATION, REGRESSION, SEGMENTATION = "classification", "regression", "segmentation"
NO_NUCLEI = "no nuclei"
LABEL_CHUNK = 64  # tiles of label maps read at once
SMALL_PROBLEM = 1 << 20  # feature values below which fits run on one BLAS thread
# A probe needs the ranking of strengths, not the last digit of the loss: a loose
# tolerance halves the sweep's time at the same scores (benchmarks/bench_probe.py).
LOGISTIC = {"max_iter": 500, "tol": 1e-3, "class_weight": "balanced"}


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------

@dataclass
class ProbePrediction:
    """Out-of-fold predictions of one probe (store, layer, method).

    Attributes
    ----------
    store, encoder, layer, method : str
    depth : float
        Position of ``layer`` among the store's tapped layers, in (0, 1].
    task : {"classification", "regression", "segmentation"}
    y_true, y_pred : ndarray
        ``(n,)`` class codes (classification) or ``(n, T)`` targets (regression).
    proba : (n, K) ndarray of float, or None
        Class probabilities (classification).
    confusion : (n, K, K) ndarray of int64, or None
        Per-tile confusion matrices [truth, prediction] of patches (segmentation).
    names : list of str
        Class names, or regression target names.
    params : dict
        What each fold chose (``C`` or ``alpha``), and ``k``.
    """

    store: str
    encoder: str
    layer: str
    depth: float
    method: str
    task: str
    y_true: np.ndarray | None = None
    y_pred: np.ndarray | None = None
    proba: np.ndarray | None = None
    confusion: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return len(self.confusion if self.confusion is not None else self.y_true)


@dataclass(frozen=True)
class TileLabels:
    """One label per tile.

    Attributes
    ----------
    source : str
        ``tissue``, ``type``, ``counts`` or the CSV path.
    task : {"classification", "regression"}
    y : ndarray
        ``(n,)`` int class codes, or ``(n, T)`` float targets.
    names : list of str
        Class names (index = code), or target names.
    """

    source: str
    task: str
    y: np.ndarray
    names: list[str]

    def describe(self) -> dict:
        out = {"source": self.source, "task": self.task, "names": self.names}
        if self.task == CLASSIFICATION:
            out["counts"] = np.bincount(self.y, minlength=len(self.names)).tolist()
        return out


# ----------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------

def _encode(values: Sequence[str], source: str) -> TileLabels:
    names, y = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    labels = TileLabels(source, CLASSIFICATION, y.astype(np.int64), [str(n) for n in names])
    check_labels(labels)
    return labels


def check_labels(labels: TileLabels) -> None:
    """Refuse labels a probe cannot learn from: one class, or constant targets."""
    if labels.task == CLASSIFICATION:
        if len(np.unique(labels.y)) < 2:
            only = labels.names[int(labels.y[0])] if len(labels.y) else "none"
            raise DataError(f"labels {labels.source!r}: every one of the {len(labels.y)} tiles has the class "
                            f"{only!r}; a probe needs at least two classes")
    elif np.all(np.ptp(labels.y, axis=0) == 0):
        raise DataError(f"labels {labels.source!r}: the targets are the same for every tile; nothing to predict")


def nuclei_per_type(inst: np.ndarray, types: np.ndarray, n_types: int) -> np.ndarray:
    """Nuclei of each type in each tile, ``(n, n_types) ndarray of int64``.

    A nucleus takes the majority type of its pixels (type 0 = unknown is
    counted like any other).

    Parameters
    ----------
    inst, types : (n, H, W) ndarray of int
        Instance ids (0 = background) and type ids.
    """
    out = np.zeros((len(inst), n_types), dtype=np.int64)
    for t in range(len(inst)):
        fg = inst[t] > 0
        if not fg.any():
            continue
        _, ids = np.unique(inst[t][fg], return_inverse=True)
        votes = np.zeros((ids.max() + 1, n_types), dtype=np.int64)
        np.add.at(votes, (ids, np.clip(types[t][fg], 0, n_types - 1)), 1)
        out[t] = np.bincount(votes.argmax(axis=1), minlength=n_types)
    return out


def _store_counts(store) -> tuple[np.ndarray, list[str]]:
    if not store.has_labels:
        raise DataError(f"{store.path}: the store has no label maps; use --labels tissue or a CSV file")
    names = store.class_names or {}
    chunks = []
    for start in range(0, store.n_tiles, LABEL_CHUNK):
        inst, types = store.labels(slice(start, min(start + LABEL_CHUNK, store.n_tiles)))
        chunks.append(nuclei_per_type(inst, types, max(max(names, default=0), int(types.max())) + 1))
    n_types = max(c.shape[1] for c in chunks)
    counts = np.concatenate([np.pad(c, ((0, 0), (0, n_types - c.shape[1]))) for c in chunks])
    return counts, [names.get(c, f"type {c}") for c in range(n_types)]


def dominant_type(counts: np.ndarray, names: Sequence[str]) -> list[str]:
    """The most frequent nucleus type of each tile (ties: lowest id); ``no nuclei`` when it has none.

    Type 0 (unknown) is left out unless a tile has only unknown nuclei.
    """
    known = counts.copy()
    known[:, 0] = np.where(counts[:, 1:].sum(axis=1) > 0, 0, counts[:, 0])
    return [names[int(row.argmax())] if row.any() else NO_NUCLEI for row in known]


def read_csv_labels(path, n_tiles: int, tile_names: Sequence[str] | None = None) -> list[str]:
    """Labels of every tile from a CSV file with a header: tile id, then label.

    Columns named ``tile`` and ``label`` are used when present, else the first
    two. A tile id is the store's row number (0-based), or the name of the
    tile's source image when ``tile_names`` gives one per tile.

    Raises
    ------
    DataError
        Unreadable file, unknown or repeated tile ids, or tiles without a label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header and rows of 'tile,label'")
    header = [h.strip().lower() for h in rows[0]]
    i_id = header.index("tile") if "tile" in header else 0
    i_label = header.index("label") if "label" in header else (1 if i_id == 0 else 0)
    by_name = {n: k for k, n in enumerate(tile_names or [])}
    if len(by_name) != len(tile_names or []):
        by_name = {}  # names repeat (several tiles per image): row numbers only
    labels: dict[int, str] = {}
    unknown = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(i_id, i_label):
            raise DataError(f"{path}:{line}: expected {max(i_id, i_label) + 1} columns, got {len(row)}")
        key, value = row[i_id].strip(), row[i_label].strip()
        tile = int(key) if key.isdigit() and int(key) < n_tiles else by_name.get(key)
        if tile is None:
            unknown.append(key)
        elif tile in labels:
            raise DataError(f"{path}:{line}: tile {key!r} is listed twice")
        elif value:
            labels[tile] = value
    if unknown:
        raise DataError(f"{path}: {len(unknown)} unknown tile id(s), e.g. {', '.join(map(repr, unknown[:3]))}; "
                        f"ids are row numbers 0..{n_tiles - 1}" + (" or source image names" if by_name else ""))
    missing = [t for t in range(n_tiles) if t not in labels]
    if missing:
        raise DataError(f"{path}: labels missing for {len(missing)} of {n_tiles} tiles "
                        f"(e.g. {', '.join(map(str, missing[:5]))}); give every tile a label")
    return [labels[t] for t in range(n_tiles)]


def tile_labels(store, spec: str) -> TileLabels:
    """Labels of every tile of a store: ``tissue``, ``type``, ``counts`` or a CSV path."""
    if spec == "tissue":
        tissue = store.tissue
        if tissue is None:
            raise DataError(f"{store.path}: the dataset has no tissue labels (PanNuke types.npy); "
                            "use --labels type, counts or a CSV file")
        missing = [k for k, t in enumerate(tissue) if not t]
        if missing:
            raise DataError(f"{store.path}: tissue labels missing for {len(missing)} of {len(tissue)} tiles "
                            f"(e.g. {', '.join(map(str, missing[:5]))})")
        return _encode(tissue, spec)
    if spec in ("type", "counts"):
        counts, names = _store_counts(store)
        if spec == "type":
            return _encode(dominant_type(counts, names), spec)
        keep = [c for c in range(len(names)) if c > 0 or counts[:, 0].any()]
        labels = TileLabels(spec, REGRESSION, counts[:, keep].astype(np.float64), [names[c] for c in keep])
        check_labels(labels)
        return labels
    source = np.asarray(store.tile_info()["source"])
    names = [str(store.attrs.get("source_names", [])[s]) for s in source] if store.attrs.get("source_names") else None
    return _encode(read_csv_labels(spec, store.n_tiles, names), str(spec))


# ----------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------

def make_folds(y: np.ndarray, n_folds: int | None = None, store_folds: np.ndarray | None = None,
               seed: int = 0) -> np.ndarray:
    """Test fold of every tile, ``(n,) ndarray of int``.

    The store's folds when ``n_folds`` is None and it has several; else a
    stratified k-fold (plain k-fold for ``(n, T)`` regression targets) with
    ``n_folds`` (default 5).

    Raises
    ------
    DataError
        A class with fewer tiles than folds, or a training split of one class.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    n = len(y)
    if n_folds is None and store_folds is not None and len(np.unique(store_folds)) > 1:
        folds = np.unique(np.asarray(store_folds), return_inverse=True)[1]
    else:
        k = n_folds or 5
        if k > n:
            raise DataError(f"{k} folds for {n} tiles; use fewer --folds")
        folds = np.empty(n, dtype=np.int64)
        if y.ndim == 1:
            smallest = np.bincount(np.unique(y, return_inverse=True)[1]).min()
            if smallest < k:
                raise DataError(f"a class has only {smallest} tile(s), fewer than the {k} folds; "
                                "use fewer --folds or merge rare classes")
            splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        else:
            splitter = KFold(k, shuffle=True, random_state=seed)
        for f, (_, test) in enumerate(splitter.split(np.zeros(n), y if y.ndim == 1 else None)):
            folds[test] = f
    if y.ndim == 1:
        for f in np.unique(folds):
            if len(np.unique(y[folds != f])) < 2:
                raise DataError(f"the training split of fold {f} holds a single class; "
                                "use stratified folds (--folds K)")
    return folds.astype(np.int64)


def _inner_split(y: np.ndarray, groups: np.ndarray, seed: int):
    """One (train, validation) split of the training rows, by tile, stratified when every class allows."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

    tiles, first = np.unique(groups, return_index=True)
    y_tile = y[first] if y.ndim == 1 else None
    n_val = math.ceil(0.2 * len(tiles))
    n_classes = len(np.unique(y_tile)) if y_tile is not None else 0
    # Stratifying needs two tiles of each class and room for every class on both sides.
    if (y_tile is not None and np.bincount(np.unique(y_tile, return_inverse=True)[1]).min() >= 2
            and n_classes <= min(n_val, len(tiles) - n_val)):
        splitter = StratifiedShuffleSplit(1, test_size=0.2, random_state=seed)
        tr, va = next(splitter.split(np.zeros(len(tiles)), y_tile))
        return [(np.flatnonzero(np.isin(groups, tiles[tr])), np.flatnonzero(np.isin(groups, tiles[va])))]
    return list(GroupShuffleSplit(1, test_size=0.2, random_state=seed).split(np.zeros(len(y)), y, groups))


# ----------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------

def fit_linear(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
               l2_grid: Sequence[float] = ProbeConfig.l2_grid, seed: int = 0):
    """Standardise, then fit an L2 logistic regression (``(n,)`` labels) or ridge (``(n, T)`` targets).

    The sweep is scikit-learn's own (``LogisticRegressionCV``, warm-started
    from strong to weak penalties, or ``RidgeCV``): each strength is scored
    on a held-out fifth of the given rows (split by ``groups``, e.g. tiles,
    so variants or patches of a tile stay together) by balanced accuracy or
    R2, and the best is refitted on all rows. Strengths are per row:
    ``C = 1 / (l2 * n)``, ``alpha = l2 * n``.

    Parameters
    ----------
    X : (n, D) ndarray of float
    y : (n,) ndarray of int, or (n, T) ndarray of float
    groups : (n,) ndarray of int, optional
        Rows sharing a group are never split apart; default one row each.
    l2_grid : sequence of float
        One value: fitted as given, without a validation split.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Fitted; its ``best_params`` attribute holds the ``l2`` chosen.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(y)
    grid = sorted(l2_grid, reverse=True)
    sweep = len(grid) > 1
    cv = _inner_split(y, np.arange(n) if groups is None else np.asarray(groups), seed) if sweep else None
    if y.ndim == 1:
        cs = [1.0 / (lam * n) for lam in grid]
        model = (LogisticRegressionCV(Cs=cs, cv=cv, scoring="balanced_accuracy", l1_ratios=(0.0,), **LOGISTIC)
                 if sweep else LogisticRegression(C=cs[0], **LOGISTIC))
    else:
        alphas = [lam * n for lam in grid]
        model = RidgeCV(alphas=alphas, cv=cv, scoring="r2") if sweep else Ridge(alpha=alphas[0])
    pipe = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence at a loose tolerance, and API-transition notices
        pipe.fit(X, y)
    if y.ndim == 1:
        penalty = 1.0 / (n * float(np.ravel(model.C_)[0] if sweep else model.C))
    else:
        penalty = float(model.alpha_ if sweep else model.alpha) / n
    pipe.best_params = {"l2": min(grid, key=lambda lam: abs(np.log(lam / penalty)))}
    return pipe


def fit_knn(X: np.ndarray, y: np.ndarray, k: int = 20):
    """Standardise, then a cosine k-nearest-neighbour vote (or mean, for ``(n, T)`` targets)."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    knn = (KNeighborsClassifier if y.ndim == 1 else KNeighborsRegressor)(
        n_neighbors=min(k, len(y)), metric="cosine", algorithm="brute")
    pipe = make_pipeline(StandardScaler(), knn).fit(X, y)
    pipe.best_params = {"k": knn.n_neighbors}
    return pipe


def _as_variants(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2:
        return X[:, None]
    if X.ndim != 3:
        raise DataError(f"features must be (n, D) or (n, V, D), got shape {X.shape}")
    return X


def cross_validate(X: np.ndarray, y: np.ndarray, folds: np.ndarray, method: str = "linear", *,
                   k: int = 20, l2_grid: Sequence[float] = ProbeConfig.l2_grid, augment: bool = False,
                   seed: int = 0) -> ProbePrediction:
    """Out-of-fold predictions of one probe on one set of features.

    Parameters
    ----------
    X : (n, D) or (n, V, D) ndarray of float
        Pooled vectors; with a variant axis, index 0 is the identity.
    y : (n,) ndarray of int (class codes 0..K-1), or (n, T) ndarray of float
    folds : (n,) ndarray of int
        Test fold of each tile (:func:`make_folds`).
    method : {"linear", "knn"}
    augment : bool
        Train on every variant of the training tiles; tests use variant 0.

    Returns
    -------
    ProbePrediction
        With ``y_true``, ``y_pred``, ``proba`` (classification) and the
        strength chosen in each fold; store, layer and depth left blank.
    """
    X, y, folds = _as_variants(X), np.asarray(y), np.asarray(folds)
    if not len(X) == len(y) == len(folds):
        raise DataError(f"features ({len(X)}), labels ({len(y)}) and folds ({len(folds)}) disagree in length")
    if method not in ("linear", "knn"):
        raise ConfigError(f"method must be linear or knn, not {method!r}")
    if not np.isfinite(X).all():
        raise DataError("features hold NaN or infinite values; check the store with `embedcache verify`")
    classify = y.ndim == 1
    n_classes = int(y.max()) + 1 if classify else 0
    n_var = X.shape[1] if augment else 1
    y_pred = np.zeros_like(y, dtype=np.int64 if classify else np.float64)
    proba = np.zeros((len(y), n_classes)) if classify else None
    chosen = []
    # BLAS threads only slow small fits down (and fight other processes for the cores).
    with threadpool_limits(1 if X.size < SMALL_PROBLEM else None):
        for f in np.unique(folds):
            chosen.append(_fit_fold(X, y, folds == f, method, y_pred, proba, n_var, k, l2_grid, seed))
    return ProbePrediction(store="", encoder="", layer="", depth=1.0, method=method,
                           task=CLASSIFICATION if classify else REGRESSION, y_true=y, y_pred=y_pred, proba=proba,
                           params={"folds": chosen})


def _fit_fold(X, y, is_test, method, y_pred, proba, n_var, k, l2_grid, seed) -> dict:
    """Fit one fold's probe on its training tiles (and their variants); fill its test rows."""
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    X_tr = X[train, :n_var].reshape(len(train) * n_var, -1)
    y_tr = np.repeat(y[train], n_var, axis=0)
    if method == "linear":
        model = fit_linear(X_tr, y_tr, np.repeat(train, n_var), l2_grid, seed)
    else:
        model = fit_knn(X_tr, y_tr, k)
    y_pred[test] = model.predict(X[test, 0])
    if proba is not None:
        proba[np.ix_(test, model.classes_)] = model.predict_proba(X[test, 0])
    return model.best_params


def probe_features(features: Mapping[str, np.ndarray], labels: TileLabels, folds: np.ndarray,
                   config: ProbeConfig = ProbeConfig(), store: str = "", encoder: str = "",
                   depths: Mapping[str, float] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[ProbePrediction]:
    """Every method of ``config`` on every layer of ``features`` (shallow to deep).

    Parameters
    ----------
    features : mapping of layer name to (n, D) or (n, V, D) ndarray
        Or to a function returning it, so layers are read one at a time.
    depths : mapping of layer name to float, optional
        Relative depth of each layer (:func:`layer_depth`); default its
        position among ``features``.
    """
    out = []
    layers = list(features)
    for i, layer in enumerate(layers):
        X = features[layer]
        X = X() if callable(X) else X
        for method in config.methods:
            pred = cross_validate(X, labels.y, folds, method, k=config.k, l2_grid=config.l2_grid,
                                  augment=config.augment, seed=config.seed)
            depth = depths[layer] if depths else (i + 1) / len(layers)
            pred.store, pred.encoder, pred.layer, pred.depth = store, encoder, layer, depth
            pred.names = labels.names
            out.append(pred)
            if progress:
                progress(f"{store} {layer} {method}")
    return out


# ----------------------------------------------------------------------------
# Stores
# ----------------------------------------------------------------------------

def open_stores(paths: Sequence) -> list:
    """Open stores to compare; they must be complete and hold the same tiles.

    Raises
    ------
    DataError
        Stores made from different datasets (another ``dataset_fingerprint``).
    StoreError
        A store missing or incomplete.
    """
    from embedcache.errors import StoreError
    from embedcache.store.reader import open_store

    if not paths:
        raise ConfigError("no store given; pass --store STORE")
    stores = [open_store(p) for p in paths]
    for s in stores:
        if not s.complete:
            raise StoreError(f"{s.path}: the store is incomplete; run the same extract command again to finish it")
    ref = stores[0]
    for s in stores[1:]:
        if s.config.get("dataset_fingerprint") != ref.config.get("dataset_fingerprint"):
            raise DataError(f"{s.path} and {ref.path} hold different tiles (dataset fingerprints "
                            f"{str(s.config.get('dataset_fingerprint'))[:12]} vs "
                            f"{str(ref.config.get('dataset_fingerprint'))[:12]}); stores compared together "
                            "must be extracted from the same dataset")
    return stores


def resolve_layers(store, spec: str) -> list[str]:
    """``last``, ``all`` or comma-separated names or indices -> layer names, shallow to deep."""
    if spec == "all":
        return list(store.layers)
    if spec == "last":
        return [store.layers[-1]]
    names = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.lstrip("-").isdigit() and -len(store.layers) <= int(item) < len(store.layers):
            item = store.layers[int(item)]
        if item not in store.layers:
            raise ConfigError(f"{store.path}: no layer {item!r}; it has {', '.join(store.layers)}")
        names.append(item)
    if not names:
        raise ConfigError(f"no layer named in {spec!r}; use last, all or names such as {store.layers[-1]}")
    return sorted(set(names), key=store.layers.index)


def layer_depth(store, layer: str) -> float:
    """Position of ``layer`` among the store's tapped layers, in (0, 1]: the x axis of depth plots."""
    return (store.layers.index(layer) + 1) / len(store.layers)


def store_label(store, stores: Sequence) -> str:
    """A short name for a store in tables: its folder name without ``.zarr``."""
    name = store.path.name.removesuffix(".partial").removesuffix(".zarr")
    if sum(s.path.name == store.path.name for s in stores) > 1:
        name = str(store.path)
    return name


def pooled_features(store, layer: str, kind: str = "mean", augment: bool = False) -> np.ndarray:
    """Pooled vectors of every tile: ``(n, D)``, or ``(n, V, D)`` over all variants when ``augment``."""
    info = store.attrs.get("layer_info", {}).get(layer, {})
    if kind in ("cls", "both") and not info.get("has_cls", False):
        raise ConfigError(f"{store.path}: encoder {store.encoder['name']} has no class token at {layer}; "
                          "use --pooled mean")
    variants = range(len(store.variants)) if augment else [0]
    return np.stack([store.pooled(layer, slice(None), v, kind) for v in variants], axis=1)


def run_probes(paths: Sequence, config: ProbeConfig = ProbeConfig(),
               progress: Callable[[str], None] | None = None) -> tuple[list[ProbePrediction], dict]:
    """Probe every store, layer and method of ``config`` on the same tiles and folds.

    Labels and folds come from the first store; every store holds the same
    tiles, so every encoder is tested on the same tiles.

    Returns
    -------
    predictions : list of ProbePrediction
    info : dict
        ``labels`` (:meth:`TileLabels.describe`), ``folds`` (how split) and ``config``.
    """
    if config.level == "patch":
        from embedcache.train.patch_probe import run_patch_probes

        return run_patch_probes(paths, config, progress)
    stores = open_stores(paths)
    layers = {id(s): resolve_layers(s, config.layers) for s in stores}
    labels = tile_labels(stores[0], config.labels)
    store_folds = stores[0].tile_info()["fold"]
    folds = make_folds(labels.y, config.folds, store_folds, config.seed)
    predictions = []
    for s in stores:
        feats = {layer: (lambda layer=layer, s=s: pooled_features(s, layer, config.pooled, config.augment))
                 for layer in layers[id(s)]}
        predictions += probe_features(feats, labels, folds, config, store_label(s, stores), s.encoder["name"],
                                      {layer: layer_depth(s, layer) for layer in feats}, progress)
    split = "store folds" if config.folds is None and len(np.unique(store_folds)) > 1 else (
        f"{'stratified ' if labels.task == CLASSIFICATION else ''}{config.folds or 5}-fold")
    info = {"level": "tile", "labels": labels.describe(), "n_tiles": len(labels.y), "folds": split,
            "n_folds": int(len(np.unique(folds))), "config": config.to_dict()}
    return predictions, info
