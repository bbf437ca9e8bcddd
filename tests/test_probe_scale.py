"""Probes that scale: the blocked exact cosine kNN gives scikit-learn's neighbours, votes and means, whatever
the block sizes; ties follow the documented rule.

The reference is the pipeline the probe used before: ``StandardScaler`` then
``KNeighborsClassifier`` / ``KNeighborsRegressor`` (``metric="cosine", algorithm="brute"``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from embedcache.config import ProbeConfig
from embedcache.probes import fit as probe_fit
from embedcache.probes import neighbours
from embedcache.probes.fit import cross_validate, make_folds
from embedcache.probes.neighbours import CosineNeighbours


def blobs(n=600, d=24, k=5, seed=0, sizes=None):
    """Imbalanced classes around random centres, offset from the origin (so the scaler matters)."""
    rng = np.random.default_rng(seed)
    k = len(sizes) if sizes else k
    p = np.asarray(sizes or 0.6 ** np.arange(k), dtype=float)
    y = rng.choice(k, size=n, p=p / p.sum())
    X = 1.5 * rng.normal(size=(k, d))[y] + rng.normal(size=(n, d)) + 3.0
    return X.astype(np.float32), y


def sklearn_knn(X, y, folds, k, regression=False):
    """Out-of-fold predictions (and probabilities) of the reference pipeline."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.zeros(y.shape, dtype=np.float64 if regression else np.int64)
    proba = None if regression else np.zeros((len(y), int(y.max()) + 1))
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        est = (KNeighborsRegressor if regression else KNeighborsClassifier)(
            n_neighbors=min(k, int(tr.sum())), metric="cosine", algorithm="brute")
        pipe = make_pipeline(StandardScaler(), est).fit(X[tr], y[tr])
        pred[te] = pipe.predict(X[te])
        if proba is not None:
            proba[np.ix_(te, pipe.classes_)] = pipe.predict_proba(X[te])
    return pred, proba


@pytest.fixture
def small_groups(monkeypatch):
    """Few column groups and small blocks, so small sets exercise the grouped candidate search and chunks."""
    monkeypatch.setattr(neighbours, "GROUPS", 8)


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("block,chunk", [(None, None), (7, 50), (1, 23), (64, 1000)])
def test_neighbours_are_sklearns_for_any_block_and_chunk(k, block, chunk, small_groups):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(k)
    train = rng.normal(size=(400, 16)).astype(np.float32)
    queries = rng.normal(size=(90, 16)).astype(np.float32)
    want = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(train).kneighbors(
        queries, return_distance=False)
    got = CosineNeighbours(k, block=block, chunk=chunk).fit(train, np.zeros(400, int)).kneighbors(queries)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("k", [3, 20, 60])
def test_cross_validated_knn_equals_the_sklearn_pipeline(k, small_groups):
    # The smallest class holds 8 cells: with k = 20 or 60 every neighbourhood is larger than it.
    X, y = blobs(sizes=[300, 150, 80, 40, 8], seed=k)
    folds = make_folds(y, 4)
    pred = cross_validate(X, y, folds, "knn", k=k)
    want, want_proba = sklearn_knn(X, y, folds, k)
    np.testing.assert_array_equal(pred.y_pred, want)
    np.testing.assert_array_equal(pred.proba, want_proba)
    assert pred.params["folds"][0] == {"k": k}


def test_regression_means_equal_the_sklearn_regressor(small_groups):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    Y = np.stack([X[:, 0] * 3 + 5, X[:, 1] - X[:, 2]], axis=1)
    folds = make_folds(Y, 5)
    pred = cross_validate(X, Y, folds, "knn", k=7)
    want, _ = sklearn_knn(X, Y, folds, 7, regression=True)
    np.testing.assert_array_equal(pred.y_pred, want)


def test_block_sizes_do_not_change_the_probe(monkeypatch):
    X, y = blobs(n=500, seed=5)
    folds = make_folds(y, 5)
    ref = cross_validate(X, y, folds, "knn", k=10)
    monkeypatch.setattr(neighbours, "BLOCK_BYTES", 4 * 64 * 16)  # 64 similarities a block: many blocks, chunks
    monkeypatch.setattr(neighbours, "GROUPS", 16)
    monkeypatch.setattr(probe_fit, "SCALER_BYTES", 1)  # the scaler fitted over blocks of 4,096 rows: one here
    small = cross_validate(X, y, folds, "knn", k=10)
    np.testing.assert_array_equal(small.y_pred, ref.y_pred)
    np.testing.assert_array_equal(small.proba, ref.proba)


def test_exact_ties_within_a_class_give_sklearns_votes(small_groups):
    """Every training cell twice (same class): the k-th and (k+1)-th distances are exactly equal
    everywhere, and whichever copy is taken, the votes are the same."""
    X, y = blobs(n=200, seed=6)
    X2, y2 = np.concatenate([X, X]), np.concatenate([y, y])
    folds = np.concatenate([make_folds(y, 4)] * 2)
    for k in (1, 4, 9):
        pred = cross_validate(X2, y2, folds, "knn", k=k)
        want, want_proba = sklearn_knn(X2, y2, folds, k)
        np.testing.assert_array_equal(pred.y_pred, want)
        np.testing.assert_array_equal(pred.proba, want_proba)


def test_equal_distances_go_to_the_lower_training_index():
    """The documented tie rule: of equal distances the lower training index comes first, whatever the order."""
    train = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float32)  # rows 0 and 3 the same
    query = np.array([[1, 1, 1]], np.float32)  # equally far from every training row
    for k in (1, 2, 3, 4):
        assert CosineNeighbours(k).fit(train, [0, 1, 2, 3]).kneighbors(query).tolist() == [list(range(k))]
    reordered = train[::-1].copy()
    assert CosineNeighbours(2).fit(reordered, [3, 2, 1, 0]).kneighbors(query).tolist() == [[0, 1]]
    # A nearer row still wins over lower indices; copies of one row tie and go in index order.
    near = np.array([[1, 1, 1.1]], np.float32)
    assert CosineNeighbours(3).fit(train, [0, 1, 2, 3]).kneighbors(near).tolist() == [[1, 0, 2]]
    assert CosineNeighbours(4).fit(train, [0, 1, 2, 3]).kneighbors(np.array([[0, 1, 0]], np.float32)).tolist()[0][
        :2] == [0, 3]


def test_votes_break_ties_to_the_smallest_class_and_k_is_clipped():
    train = np.array([[1, 0], [0, 1], [1, 0.01], [0.01, 1]], np.float32)
    knn = CosineNeighbours(10).fit(train, np.array([7, 3, 7, 3]))
    label, proba = knn.predict_with_proba(np.array([[1, 1]], np.float32))
    assert knn.k_ == 4 and label.tolist() == [3] and proba.tolist() == [[0.5, 0.5]]


def test_zero_rows_and_far_rows_are_neighbours_like_any_other():
    """Zero vectors have distance 1 to everything; rows at distance 2 (opposite) are still ranked, never dropped."""
    train = np.array([[0, 0], [-1, 0], [-2, 0]], np.float32)
    got = CosineNeighbours(3).fit(train, [0, 1, 2]).kneighbors(np.array([[1, 0]], np.float32))
    assert got.tolist() == [[0, 1, 2]]  # distance 1, then 2 and 2 (both clip to 2: the lower index first)


def brute_force(train, queries, k):
    """Every similarity by the defining dot product (``exact_similarities``), a full stable sort per row."""
    T, Q = neighbours.normalise(train), neighbours.normalise(queries)
    r, c = np.divmod(np.arange(len(Q) * len(T)), len(T))
    d = np.clip(np.float32(1) - neighbours.exact_similarities(Q, T, r, c), 0, 2).reshape(len(Q), len(T))
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def near_ties(seed=0, n=500, d=48):
    """Rows that a bfloat16 product cannot tell apart: clusters of copies moved by 1e-4 to 1e-6, exact
    copies, a zero row and opposite rows; queries among them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    train = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, d)) * 10.0 ** rng.integers(-6, -3, (n, 1))
    train[::37] = train[1::37][: len(train[::37])]  # exact copies at other indices
    train[5] = 0
    train[7] = -train[8]
    queries = np.concatenate([centres + rng.normal(size=centres.shape) * 1e-5, train[:40]])
    return train.astype(np.float32), queries.astype(np.float32)


def graded(seed=0, n=400, d=64):
    """Training rows at cosine similarities 0.30, 0.3001, ... 0.34 to a query (then shuffled): finer
    steps than bfloat16's rounding of the inputs can order, so the approximate order is wrong and only the
    margin keeps the true neighbours."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=d)
    q /= np.linalg.norm(q)
    w = rng.normal(size=(n, d))
    w -= np.outer(w @ q, q)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    sims = rng.permutation(0.30 + 1e-4 * np.arange(n))
    train = sims[:, None] * q + np.sqrt(1 - sims ** 2)[:, None] * w
    return train.astype(np.float32), q[None].astype(np.float32)


@pytest.mark.parametrize("precision", neighbours.PRECISIONS)
@pytest.mark.parametrize("k", [1, 7, 30])
@pytest.mark.parametrize("block,chunk,workers", [(None, None, 1), (5, 64, 3), (64, 37, 1), (7, 100, 2)])
def test_the_prefilter_never_loses_a_neighbour(precision, k, block, chunk, workers, small_groups):
    """Whatever the prefilter's precision, blocks and threads, the k nearest are those of the full exact
    computation, in the same order, on near ties a bfloat16 product cannot separate."""
    for train, queries in [near_ties(0), near_ties(1), graded(0), graded(1)]:
        got = CosineNeighbours(k, block=block, chunk=chunk, precision=precision, workers=workers).fit(
            train, np.zeros(len(train), int)).kneighbors(queries)
        np.testing.assert_array_equal(got, brute_force(train, queries, k))


def test_the_bfloat16_error_bound_holds(small_groups):
    """The margin bounds |bfloat16 product - exact dot product| for every pair, rounding of the result included
    (on rows of mixed scales, where relative rounding matters most), and is not vacuous."""
    import torch

    rng = np.random.default_rng(9)
    X = rng.normal(size=(300, 96)) * rng.choice([1e-3, 1.0, 1e3], size=(300, 96))
    T = neighbours.normalise(X[:200])
    Q = neighbours.normalise(X[200:])
    nn = CosineNeighbours(5, precision="bfloat16").fit(T, np.zeros(200, int), normalised=True)
    low = torch.from_numpy(Q).bfloat16()
    approx = (low @ nn._low[:200].T).double().numpy()  # past 200: zero padding
    margin = nn._margins(Q, low.view(torch.int16).numpy())
    exact = Q.astype(np.float64) @ T.astype(np.float64).T
    # the exact float32 dot products differ from float64 by at most gamma; the margin covers both
    err = np.abs(approx - exact)
    rounding = 2.0 ** -9 * np.abs(exact)  # the result's own rounding, handled apart by the threshold
    assert (err <= margin[:, None] + rounding + 1e-6).all()
    assert np.median(margin) < 0.02  # tight enough to prune: a few hundredths of the similarity


# ----------------------------------------------------------------------------
# The linear probe: LogisticRegressionCV's sweep, run on float32
# ----------------------------------------------------------------------------

def sklearn_linear(X, y, groups, grid, seed=0):
    """The reference: StandardScaler then LogisticRegressionCV on the same inner split and strengths."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(y)
    grid = sorted(grid, reverse=True)
    cs = [1.0 / (lam * n) for lam in grid]
    cv = probe_fit._inner_split(y, groups, seed)
    model = LogisticRegressionCV(Cs=cs, cv=cv, scoring="balanced_accuracy", l1_ratios=(0.0,), **probe_fit.LOGISTIC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = make_pipeline(StandardScaler(), model).fit(X, y)
    return pipe, grid[cs.index(float(np.ravel(model.C_)[0]))]


@pytest.mark.parametrize("case", ["three classes", "five imbalanced", "a class missing from the sweep's fit"])
def test_linear_probe_chooses_and_predicts_as_logistic_regression_cv(case):
    grid = (1.0, 0.1, 0.01, 1e-3, 1e-4)
    if case == "three classes":
        X, y = blobs(n=400, d=32, k=3, seed=7)
        groups = np.arange(len(y))
    else:
        X, y = blobs(n=500, d=48, sizes=[300, 120, 50, 25, 5], seed=8)
        X += np.random.default_rng(9).normal(scale=2.0, size=X.shape).astype(np.float32)  # not separable
        groups = np.arange(len(y)) // 10
        if case != "five imbalanced":  # the rarest class in one image, which the split holds out
            groups[y == 4] = 2
    ref, ref_l2 = sklearn_linear(X, y, groups, grid)
    got = probe_fit.fit_linear(X, y, groups, grid)
    if case == "a class missing from the sweep's fit":
        tr, _ = probe_fit._inner_split(y, groups, 0)[0]
        assert 4 not in y[tr]  # the sweep fits without it; the refit has it
    assert got.best_params["l2"] == ref_l2
    test = np.random.default_rng(10).normal(size=(300, X.shape[1])).astype(np.float32) + X.mean(0)
    for Q in (X, test):
        np.testing.assert_array_equal(got.predict(Q), ref.predict(Q))
        np.testing.assert_allclose(got.predict_proba(Q), ref.predict_proba(Q), atol=2e-3)


def test_cross_validated_linear_probe_matches_per_fold_and_reads_rows_in_place():
    X, y = blobs(n=600, d=32, sizes=[300, 150, 100, 50], seed=11)
    X += np.random.default_rng(12).normal(scale=1.5, size=X.shape).astype(np.float32)
    groups = np.arange(len(y)) // 5
    folds = make_folds(y, 4, groups=groups)
    pred = cross_validate(X, y, folds, "linear", groups=groups)
    for f in range(4):
        tr, te = folds != f, folds == f
        ref, l2 = sklearn_linear(X[tr], y[tr], groups[tr], ProbeConfig.l2_grid)
        assert pred.params["folds"][f]["l2"] == l2
        np.testing.assert_array_equal(pred.y_pred[te], ref.predict(X[te]))
        np.testing.assert_allclose(pred.proba[te], ref.predict_proba(X[te]), atol=2e-3)
    # Variants carried but not trained on (augment off): the same probe.
    X3 = np.stack([X, X + 1, X - 1], axis=1)
    again = cross_validate(X3, y, folds, "linear", groups=groups)
    np.testing.assert_array_equal(again.y_pred, pred.y_pred)


def test_scaler_blocks_do_not_change_the_linear_probe(monkeypatch):
    X, y = blobs(n=9000, d=8, k=3, seed=13)
    X += np.random.default_rng(14).normal(scale=2.0, size=X.shape).astype(np.float32)
    ref = probe_fit.fit_linear(X, y, np.arange(len(y)) // 30)
    monkeypatch.setattr(probe_fit, "SCALER_BYTES", 1)  # blocks of 4,096 rows: three here
    got = probe_fit.fit_linear(X, y, np.arange(len(y)) // 30)
    np.testing.assert_allclose(got[0].mean_, ref[0].mean_, rtol=1e-12)
    np.testing.assert_allclose(got[0].scale_, ref[0].scale_, rtol=1e-12)
    assert got.best_params == ref.best_params
    np.testing.assert_array_equal(got.predict(X), ref.predict(X))


def test_logistic_folds_fitted_side_by_side_give_the_probe_of_one_fold_at_a_time(monkeypatch):
    import threading

    X, y = blobs(n=1500, d=16, k=4, seed=21)
    groups = np.arange(len(y)) // 3
    folds = make_folds(y, 5, groups=groups)
    threads, real = [], probe_fit._fit_fold
    monkeypatch.setattr(probe_fit, "_fit_fold",
                        lambda *a, **kw: threads.append(threading.get_ident()) or real(*a, **kw))
    monkeypatch.setenv("EMBEDCACHE_THREADS", "1")
    one = cross_validate(X, y, folds, "linear", groups=groups, fraction=0.5)
    assert len(set(threads)) == 1
    threads.clear()
    monkeypatch.setenv("EMBEDCACHE_THREADS", "3")
    fitted = {}
    three = cross_validate(X, y, folds, "linear", groups=groups, fraction=0.5, fitted=fitted)
    assert len(threads) == 5 and len(set(threads)) > 1  # fitted on the pool's threads
    for got in (three, cross_validate(X, y, folds, "linear", groups=groups, fraction=0.5, fitted=fitted)):
        np.testing.assert_array_equal(got.y_pred, one.y_pred)
        np.testing.assert_array_equal(got.proba, one.proba)
        assert got.params == one.params
    assert len(threads) == 5 and sorted(fitted) == list(range(5))  # the second call refitted nothing
    threads.clear()
    monkeypatch.setattr(probe_fit, "SIDE_BY_SIDE_BYTES", 4 * X.size - 1)  # not room for two folds' rows
    alone = cross_validate(X, y, folds, "linear", groups=groups, fraction=0.5)
    assert len(threads) == 5 and len(set(threads)) == 1
    np.testing.assert_array_equal(alone.proba, one.proba)
