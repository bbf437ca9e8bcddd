"""Probes on features: logistic regression with an L2 sweep, and cosine kNN; arrays in, predictions out.

Every tile is predicted once, by a probe fitted on the folds that do not
hold it (out-of-fold). Each probe standardises with a scaler fitted on the
training split only (the linear probe is a scikit-learn pipeline, the kNN
a :class:`~embedcache.probes.neighbours.CosineNeighbours` holding it), and the
regularisation sweep (:func:`fit_linear`) holds out part of the training
split, never the test fold. Cached variants can be added to the training
split (``augment``); tests always use the identity variant.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 16)).astype(np.float32)
>>> y = (X[:, 0] > 0).astype(int)
>>> folds = make_folds(y, n_folds=5)
>>> pred = cross_validate(X, y, folds, "linear")
>>> float((pred.y_pred == y).mean()) > 0.9
True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from embedcache.config import ProbeConfig
from embedcache.errors import ConfigError, DataError
from embedcache.probes.labels import CLASSIFICATION, REGRESSION, TileLabels
from embedcache.probes.neighbours import CosineNeighbours, normalise
from embedcache.probes.scaling import partial_fit_rows, standardise_rows
from embedcache.threads import budget

SMALL_PROBLEM = 1 << 20  # feature values below which fits run on one BLAS thread
# A probe needs the ranking of strengths, not the last digit of the loss: a loose
# tolerance halves the sweep's time at the same scores (benchmarks/bench_probe.py).
LOGISTIC = {"max_iter": 500, "tol": 1e-3, "class_weight": "balanced"}
# Training rows per block of the scaler's fit, as float64 bytes: blocks are merged as partial_fit merges them,
# so the block size is part of the digits (the blocks are read in place; no buffer of this size is made).
SCALER_BYTES = 512 << 20
# Standardised training rows (float32) that folds fitted side by side may hold together: past this a probe of
# millions of cells runs short of memory before it runs short of cores, so its folds are fitted one at a time.
SIDE_BY_SIDE_BYTES = 1 << 30


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
    groups : (n,) ndarray of int, or None
        The independent unit of each tile (its source image): folds keep a
        group together and intervals resample groups.
    variant_pred : (n, V) ndarray of int, or None
        Predictions of the same probe (trained on identity rows) on each
        variant's features of the test rows; column 0 is ``y_pred``.
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
    groups: np.ndarray | None = None
    variant_pred: np.ndarray | None = None

    @property
    def n_tiles(self) -> int:
        return len(self.confusion if self.confusion is not None else self.y_true)


def make_folds(y: np.ndarray, n_folds: int | None = None, store_folds: np.ndarray | None = None,
               seed: int = 0, groups: np.ndarray | None = None, names: Sequence[str] | None = None) -> np.ndarray:
    """Test fold of every tile, ``(n,) ndarray of int``.

    The store's folds when ``n_folds`` is None and it has several; else a
    k-fold with ``n_folds`` (default 5), stratified for ``(n,)`` class codes
    (plain for ``(n, T)`` regression targets). With ``groups`` (the source
    image of each tile) every group falls in one fold, so no image has tiles
    on both sides of a split; stratified as far as the groups allow.

    Raises
    ------
    DataError
        Fewer tiles (or groups) than folds, a class with fewer tiles than
        folds, or a fold whose training split lacks a class (named).
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    n = len(y)
    grouped = groups is not None and len(np.unique(groups)) < n
    if n_folds is None and store_folds is not None and len(np.unique(store_folds)) > 1:
        folds = np.unique(np.asarray(store_folds), return_inverse=True)[1]
    elif grouped:
        k = n_folds or 5
        n_groups = len(np.unique(groups))
        if k > n_groups:
            raise DataError(f"{k} folds for {n_groups} source images: folds keep each image's tiles together; "
                            "use fewer --folds (at most the number of images)")
        splitter = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if y.ndim == 1 else GroupKFold(k))
        folds = np.empty(n, dtype=np.int64)
        for f, (_, test) in enumerate(splitter.split(np.zeros(n), y if y.ndim == 1 else None, groups)):
            folds[test] = f
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
        classes = np.unique(y)
        for f in np.unique(folds):
            if len(np.unique(y[folds != f])) < 2:
                raise DataError(f"the training split of fold {f} holds a single class; "
                                "use stratified folds (--folds K)")
            absent = np.setdiff1d(classes, y[folds != f])
            if grouped and absent.size:
                c = int(absent[0])
                name = names[c] if names is not None and c < len(names) else f"class {c}"
                raise DataError(f"the training split of fold {f} has no tile of {name!r}: all its tiles come from "
                                "the images of that fold; use fewer --folds or merge rare classes")
    return folds.astype(np.int64)


def _inner_split(y: np.ndarray, groups: np.ndarray, seed: int):
    """One (train, validation) split of the training rows, by tile, stratified when every class allows."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

    tiles, first = np.unique(groups, return_index=True)
    if len(tiles) < 2:  # scikit-learn would fail with an empty training split
        raise DataError("a training split holds the cells or tiles of a single source image: the L2 sweep holds "
                        "out whole images; use more --folds (one image per fold at most) or more images")
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


def _scaler(n: int, width: int, pca: int | None, seed: int) -> list:
    """Standardisation, then (``pca``) a projection onto that many principal components, for ``n`` rows of
    ``width`` features (unfitted)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()]
    if pca is not None and pca < width:
        steps.append(PCA(n_components=min(pca, n), random_state=seed))
    return steps


def fit_linear(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
               l2_grid: Sequence[float] = ProbeConfig.l2_grid, seed: int = 0, pca: int | None = None,
               rows: np.ndarray | None = None):
    """Standardise, then fit an L2 logistic regression (``(n,)`` labels) or ridge (``(n, T)`` targets).

    Each strength is scored on a held-out fifth of the given rows (split by
    ``groups``, e.g. tiles, so variants or patches of a tile stay together)
    by balanced accuracy or R2, and the best is refitted on all rows.
    Strengths are per row: ``C = 1 / (l2 * n)``, ``alpha = l2 * n``. The
    logistic sweep is ``LogisticRegressionCV``'s (L-BFGS from strong to weak
    penalties, each warm-started from the last; balanced class weights of all
    rows; the refit warm-started from the chosen strength's coefficients),
    run by :func:`_logistic_sweep` on float32 features standardised once,
    which ``LogisticRegressionCV`` would copy to float64 and split again.
    Ridge is scikit-learn's ``RidgeCV``.

    Parameters
    ----------
    X : (n, D) ndarray of float
    y : (n,) ndarray of int, or (n, T) ndarray of float
    groups : (n,) ndarray of int, optional
        Rows sharing a group are never split apart; default one row each.
    l2_grid : sequence of float
        One value: fitted as given, without a validation split.
    pca : int, optional
        Project the standardised features onto this many principal
        components first (fitted on ``X``: the training rows).
    rows : (n,) ndarray of int, optional
        The training rows of ``X`` when it holds more (``y`` and ``groups``
        are theirs), read without gathering a copy.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Fitted; its ``best_params`` attribute holds the ``l2`` chosen.
    """
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline

    n = len(y)
    grid = sorted(l2_grid, reverse=True)
    sweep = len(grid) > 1
    cv = _inner_split(y, np.arange(n) if groups is None else np.asarray(groups), seed) if sweep else None
    if y.ndim == 1:
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        steps = _fit_scaler(X, rows, pca, seed)
        # The validation rows last: the sweep fits on a leading view, not a copy.
        order = np.concatenate(cv[0]) if sweep else np.arange(n)
        Z = _standardised(steps, X, rows[order])
        model, c = _logistic_sweep(Z, y[order], [1.0 / (lam * n) for lam in grid], len(cv[0][0]) if sweep else n)
        pipe = make_pipeline(*(step for _, step in steps.steps), model)
        penalty = 1.0 / (n * c)
    else:
        X = X if rows is None else X[rows]
        alphas = [lam * n for lam in grid]
        model = RidgeCV(alphas=alphas, cv=cv, scoring="r2") if sweep else Ridge(alpha=alphas[0])
        pipe = make_pipeline(*_scaler(len(X), X.shape[1], pca, seed), model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # API-transition notices
            pipe.fit(X, y)
        penalty = float(model.alpha_ if sweep else model.alpha) / n
    pipe.best_params = {"l2": min(grid, key=lambda lam: abs(np.log(lam / penalty)))}
    return pipe


def _standardised(steps, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``steps.transform(X[rows])`` as float32, a block of rows at a time: ``(len(rows), D')``."""
    out = np.empty((len(rows), steps.transform(X[rows[:1]]).shape[1]), dtype=np.float32)
    if len(steps) == 1 and X.dtype == np.float32:  # the scaler alone: the same float32 steps, in place
        return standardise_rows(steps[0], X, rows, out)
    for a, b in _row_blocks(len(rows), X.shape[1]):
        out[a:b] = steps.transform(X[rows[a:b]])
    return out


def _logistic_sweep(Z: np.ndarray, y: np.ndarray, cs: Sequence[float], n_fit: int):
    """``LogisticRegressionCV``'s sweep on float32 rows: ``(fitted LogisticRegression, C chosen)``.

    Parameters
    ----------
    Z : (n, D) ndarray of float32
        Standardised rows: the first ``n_fit`` fit each strength, the rest
        score it (balanced accuracy); with ``n_fit == n``, ``cs`` holds one
        strength, fitted on all rows.
    y : (n,) ndarray of int
    cs : sequence of float
        Inverse strengths, strong penalty (small C) first: each fit starts
        from the last one's coefficients.
    """
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.unique(y)
    # Weights of all rows, for the sweep's fits too (as LogisticRegressionCV passes them down).
    weights = dict(zip(classes, compute_class_weight("balanced", classes=classes, y=y)))
    settings = {**LOGISTIC, "class_weight": weights, "warm_start": True}
    # One BLAS thread: the gradient's products are (classes x rows) by (rows x features), a shape whose
    # threaded OpenBLAS kernel ran 10-50x slower than one thread on two busy cores (0.4-1.7 s against
    # 0.03 s at 64,000 x 384); one thread also keeps the digits independent of the machine's cores.
    with threadpool_limits(1, user_api="blas"):
        return _sweep(Z, y, cs, n_fit, settings)


def _sweep(Z: np.ndarray, y: np.ndarray, cs: Sequence[float], n_fit: int, settings: dict):
    """:func:`_logistic_sweep` under its thread limit; ``settings``: LogisticRegression's."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    classes = np.unique(y)
    best, scores, start = 0, [], []
    if len(cs) > 1:
        est = LogisticRegression(C=cs[0], **settings)
        # A class missing from the fitted rows still gets coefficients, as in LogisticRegressionCV: all rows
        # go in, the validation rows with weight 0 (the same objective, a fifth more work).
        fit = ((Z[:n_fit], y[:n_fit]) if len(np.unique(y[:n_fit])) == len(classes)
               else (Z, y, (np.arange(len(y)) < n_fit).astype(Z.dtype)))
        for C in cs:
            est.set_params(C=C)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence at a loose tolerance
                est.fit(*fit)
            scores.append(balanced_accuracy_score(y[n_fit:], est.predict(Z[n_fit:])))
            start.append((est.coef_.copy(), est.intercept_.copy()))
        best = int(np.argmax(scores))  # the strongest penalty of equal scores
    model = LogisticRegression(C=cs[best], **settings)
    if start:
        model.coef_, model.intercept_ = start[best]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(Z, y)
    # Fitted on float32, applied in float64 as LogisticRegressionCV's coefficients are (and as a saved
    # classifier applies them).
    model.coef_, model.intercept_ = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    model.warm_start = False
    return model, cs[best]


def fit_knn(X: np.ndarray, y: np.ndarray, k: int = 20, pca: int | None = None, seed: int = 0,
            rows: np.ndarray | None = None):
    """Standardise (and ``pca``), then an exact cosine k-nearest-neighbour vote (or mean, for ``(n, T)`` targets).

    The neighbours, votes and means are scikit-learn's ``KNeighborsClassifier``
    (``KNeighborsRegressor``) with ``metric="cosine", algorithm="brute"``
    after the same scaler; the search is :class:`~embedcache.probes.neighbours.CosineNeighbours`
    (a bfloat16 prefilter with a proven error bound, then exact float32 distances of the candidates;
    no distance matrix kept). The scaler is
    fitted, and the training rows standardised and normalised, a block of
    rows at a time, so the only copy of the features is the normalised one.

    Parameters
    ----------
    X : (n, D) ndarray of float
    y : (len(rows),) ndarray of int, or (len(rows), T) ndarray of float
    rows : (m,) ndarray of int, optional
        The training rows of ``X`` (default all), read without gathering a copy.

    Returns
    -------
    CosineNeighbours
        Fitted, with ``transform`` the fitted scaler (queries go in raw);
        its ``best_params`` attribute holds ``k``.
    """
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    steps = _fit_scaler(X, rows, pca, seed)
    train = _standardised(steps, X, rows)
    for a, b in _row_blocks(len(rows), train.shape[1]):
        train[a:b] = normalise(train[a:b])
    knn = CosineNeighbours(k, transform=steps.transform).fit(train, y, normalised=True)
    knn.best_params = {"k": knn.k_}
    return knn


def _row_blocks(n: int, width: int) -> list[tuple[int, int]]:
    """Runs of rows whose float64 work buffers take about ``SCALER_BYTES``."""
    step = max(4096, SCALER_BYTES // (8 * max(width, 1)))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _fit_scaler(X: np.ndarray, rows: np.ndarray, pca: int | None, seed: int):
    """The scaler of :func:`_scaler` fitted on ``X[rows]``, reading a block of rows at a time.

    One block (every set of fewer rows than ``SCALER_BYTES`` holds) fits exactly as ``fit`` on all rows
    does; more are accumulated as by ``partial_fit``, the same mean and variance to float64 rounding. Each
    block is read in place (:func:`~embedcache.probes.scaling.partial_fit_rows`: ``partial_fit``'s digits
    without its float64 copies). PCA, when asked for, is fitted on all standardised rows at once."""
    from sklearn.pipeline import make_pipeline

    steps = _scaler(len(rows), X.shape[1], pca, seed)
    for a, b in _row_blocks(len(rows), X.shape[1]):
        partial_fit_rows(steps[0], X, rows[a:b])
    if len(steps) > 1:
        steps[1].fit(steps[0].transform(X[rows]))
    return make_pipeline(*steps)


def _as_variants(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 2:
        return X[:, None]
    if X.ndim != 3:
        raise DataError(f"features must be (n, D) or (n, V, D), got shape {X.shape}")
    return X


def cross_validate(X: np.ndarray, y: np.ndarray, folds: np.ndarray, method: str = "linear", *,
                   k: int = 20, l2_grid: Sequence[float] = ProbeConfig.l2_grid, augment: bool = False,
                   seed: int = 0, groups: np.ndarray | None = None, pca: int | None = None,
                   fraction: float | None = None, transfer: bool = False,
                   fitted: dict | None = None) -> ProbePrediction:
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
    groups : (n,) ndarray of int, optional
        Source image of each tile: the L2 sweep's validation split keeps an
        image's tiles together too. Default: each tile its own group.
    pca : int, optional
        Principal components kept (fitted on each fold's training rows).
    fraction : float, optional
        Train on this share of each fold's training rows (classification:
        of each class, at least one row each; seeded): a label-efficiency
        point. The rows each fold trained on are recorded (``train_sizes``).
    transfer : bool
        Also predict every variant of the test rows (``variant_pred``).
    fitted : dict, optional
        Fitted probes by fold: a fold found in it is predicted without
        refitting, and every fold fitted here is put in it. Share one dict
        only between calls whose fits are the same (the same training rows
        of the same features, labels, method and settings), as the
        label-efficiency curve's full fraction and the probe itself are.

    Returns
    -------
    ProbePrediction
        With ``y_true``, ``y_pred``, ``proba`` (classification), the strength
        chosen in each fold and ``groups``; store, layer and depth left blank.
    """
    X, y, folds = _as_variants(X), np.asarray(y), np.asarray(folds)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if not len(X) == len(y) == len(folds) == len(groups):
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
    chosen, sizes = [], []
    variant_pred = np.zeros((len(y), X.shape[1]), dtype=np.int64) if transfer and classify else None
    # BLAS threads only slow small fits down (and fight other processes for the cores).
    # Counted on what is fitted (not the variants only predicted), so a probe's threads, and so its digits,
    # do not depend on how many variants the features carry.
    with threadpool_limits(1 if len(X) * n_var * X.shape[2] < SMALL_PROBLEM else None):
        models = _fit_folds(X, y, folds, method, n_var, k, l2_grid, seed, groups, pca,
                            1.0 if fraction is None else fraction, fitted)
        for f, model in models:
            test = np.flatnonzero(folds == f)
            if proba is not None and isinstance(model, CosineNeighbours):  # votes and label from one search
                labels, proba[np.ix_(test, model.classes_)] = model.predict_with_proba(X[test, 0])
            elif proba is not None and hasattr(model, "steps"):  # a pipeline: the test rows standardised once
                Z, final = model[:-1].transform(X[test, 0]), model[-1]
                labels, proba[np.ix_(test, model.classes_)] = final.predict(Z), final.predict_proba(Z)
            else:
                labels = model.predict(X[test, 0])
                if proba is not None:
                    proba[np.ix_(test, model.classes_)] = model.predict_proba(X[test, 0])
            y_pred[test] = np.asarray(labels).reshape(y_pred[test].shape)  # (n,): one target
            if variant_pred is not None:
                variant_pred[test, 0] = y_pred[test]
                for v in range(1, X.shape[1]):
                    variant_pred[test, v] = model.predict(X[test, v])
            chosen.append(model.best_params)
            sizes.append(model.n_train)
    params = {"folds": chosen, **({"train_sizes": sizes} if fraction is not None else {})}
    return ProbePrediction(store="", encoder="", layer="", depth=1.0, method=method,
                           task=CLASSIFICATION if classify else REGRESSION, y_true=y, y_pred=y_pred, proba=proba,
                           params=params, groups=groups, variant_pred=variant_pred)


def subsample(y: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of ``rows``: of each class (at least one row of each) for ``(n,)`` labels.

    >>> subsample(np.array([0] * 90 + [1] * 10), np.arange(100), 0.1, 0).size
    10
    """
    if fraction >= 1:
        return rows
    rng = np.random.default_rng(seed)
    if y.ndim != 1:
        return np.sort(rng.choice(rows, size=max(1, round(fraction * len(rows))), replace=False))
    keep = [rng.choice(of, size=max(1, round(fraction * len(of))), replace=False)
            for c in np.unique(y[rows]) for of in [rows[y[rows] == c]]]
    return np.sort(np.concatenate(keep))


def _fit_folds(X, y, folds, method, n_var, k, l2_grid, seed, groups, pca, fraction, fitted):
    """``(fold, probe)`` of every fold in fold order (a generator): from ``fitted`` where it is there, else
    fitted (and put in it).

    Logistic fits on the identity rows without PCA run side by side, one a core of the thread budget
    (:func:`embedcache.threads.budget`), as many as hold their standardised rows in ``SIDE_BY_SIDE_BYTES``:
    each is one BLAS thread's (the sweep keeps to one) and NumPy's own loops, so its digits are the same
    whatever runs beside it, and a fitted one is a few vectors.
    The rest are fitted one fold at a time, each handed over before the next is fitted (a kNN holds its
    training rows), with the caller's BLAS threads (the digits of ridge and PCA may follow them).
    """
    def fit(f):
        return _fit_fold(X, y, folds == f, method, n_var, k, l2_grid, seed, groups, pca, fraction, f)

    ids = [int(f) for f in np.unique(folds)]
    todo = [f for f in ids if fitted is None or f not in fitted]
    done = dict(fitted) if fitted is not None else {}
    side_by_side = method == "linear" and y.ndim == 1 and n_var == 1 and pca is None
    rows_bytes = 4 * len(X) * X.shape[-1]  # a fold's standardised training rows hold fewer
    workers = min(len(todo), budget(), max(1, SIDE_BY_SIDE_BYTES // rows_bytes)) if side_by_side else 1
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        # One BLAS thread for all of them: a fit leaving its own limit must not lift another's.
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            done.update(zip(todo, pool.map(fit, todo)))
    for f in ids:
        model = done.pop(f) if f in done else fit(f)
        if fitted is not None:
            fitted[f] = model
        yield f, model


def _fit_fold(X, y, is_test, method, n_var, k, l2_grid, seed, groups, pca=None, fraction=1.0, fold=0):
    """Fit one fold's probe on its training tiles (and their variants)."""
    train = subsample(y, np.flatnonzero(~is_test), fraction, seed + fold)
    # A few labelled rows cannot spare a fifth for the sweep: the middle strength, fitted as is.
    small = fraction < 1 and len(train) < 50 and len(l2_grid) > 1
    grid = (sorted(l2_grid)[len(l2_grid) // 2],) if small else l2_grid
    if n_var == 1:  # the training rows read in place: the standardised ones are the only copy
        X_tr, y_tr, g_tr, rows = X[:, 0], y[train], groups[train], train
    else:
        X_tr, rows = X[train, :n_var].reshape(len(train) * n_var, -1), None
        y_tr, g_tr = np.repeat(y[train], n_var, axis=0), np.repeat(groups[train], n_var)
    model = (fit_linear(X_tr, y_tr, g_tr, grid, seed, pca, rows=rows) if method == "linear"
             else fit_knn(X_tr, y_tr, k, pca, seed, rows=rows))
    model.n_train = len(train)
    return model


def probe_features(features: Mapping[str, np.ndarray], labels: TileLabels, folds: np.ndarray,
                   config: ProbeConfig = ProbeConfig(), store: str = "", encoder: str = "",
                   depths: Mapping[str, float] | None = None,
                   progress: Callable[[str], None] | None = None,
                   groups: np.ndarray | None = None) -> list[ProbePrediction]:
    """Every method of ``config`` on every layer of ``features`` (shallow to deep).

    Parameters
    ----------
    features : mapping of layer name to (n, D) or (n, V, D) ndarray
        Or to a function returning it, so layers are read one at a time.
    depths : mapping of layer name to float, optional
        Relative depth of each layer (:func:`layer_depth`); default its
        position among ``features``.
    groups : (n,) ndarray of int, optional
        Source image of each tile (:func:`cross_validate`).
    """
    out = []
    layers = list(features)
    for i, layer in enumerate(layers):
        X = features[layer]
        X = X() if callable(X) else X
        for method in config.methods:
            pred = cross_validate(X, labels.y, folds, method, k=config.k, l2_grid=config.l2_grid,
                                  augment=config.augment, seed=config.seed, groups=groups)
            depth = depths[layer] if depths else (i + 1) / len(layers)
            pred.store, pred.encoder, pred.layer, pred.depth = store, encoder, layer, depth
            pred.names = labels.names
            out.append(pred)
            if progress:
                progress(f"{store} {layer} {method}")
    return out
