"""Exact cosine k-nearest neighbours by blocked matrix products: the kNN probe over millions of cells.

The probe's neighbours are scikit-learn's (``KNeighborsClassifier(metric="cosine",
algorithm="brute")`` after the scaler): rows are L2-normalised the way
:func:`sklearn.preprocessing.normalize` does, a block of queries meets a
chunk of training rows in one float32 matrix product (the cosine
similarity ``S``), and the distance is ``1 - S`` clipped to [0, 2] in
float32, as :func:`sklearn.metrics.pairwise.cosine_distances` computes it.
What changes is the work around the product: the training rows are
normalised once (scikit-learn normalises them again for every chunk of
queries), nothing of size (queries x training rows) is kept beyond one
block, and the k smallest distances of a row are found without sorting or
partitioning the whole row:

- the columns of a chunk fall in ``G`` strided groups; the k-th largest of
  the ``G`` group maxima, ``t``, is a lower bound of the row's k-th largest
  similarity (k elements, one per group, reach it);
- only the groups whose maximum reaches the bound (about k of them) are
  read again, and only their elements within ``EPS`` below it are kept;
  ``EPS`` covers the float32 rounding of ``1 - S``, so every element whose
  distance could equal or beat the k-th is a candidate, and the choice is
  exact, not approximate.

Ties: of equal distances the lower training index comes first (a stable
rule). scikit-learn selects with ``np.argpartition`` (introselect), which
promises no order among equal values, so the two can differ only where the
k-th and (k+1)-th distances of a row are exactly equal and their classes
differ; on data without such exact ties both give the same neighbours,
votes and means (``tests/test_probe_scale.py`` checks it against
scikit-learn).

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(50, 8)).astype(np.float32)
>>> nn = CosineNeighbours(3).fit(X, np.arange(50) % 2)
>>> nn.kneighbors(X[:2])[:, 0].tolist()  # each row is its own nearest neighbour
[0, 1]
"""

from __future__ import annotations

import numpy as np

# Two float32 ulps of the distances (all in [0, 2]): similarities further than this below the bound map to
# strictly larger distances, so they cannot tie with the k-th.
EPS = 2.0 ** -21
BLOCK_BYTES = 128 << 20  # one block of similarities (queries x training rows of a chunk), float32
GROUPS = 512  # strided column groups per chunk: enough that the k nearest rarely share one


def normalise(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` scaled to unit L2 norm in float32 (zero rows stay zero), as scikit-learn's ``normalize``.

    Parameters
    ----------
    X : (n, D) ndarray of float

    Returns
    -------
    (n, D) ndarray of float32
    """
    from sklearn.preprocessing import normalize

    return normalize(np.asarray(X, dtype=np.float32), copy=True)


def _bound(t: np.ndarray) -> np.ndarray:
    """The similarity from which elements are candidates, for a lower bound ``t`` of the k-th largest.

    Below 1 - EPS nothing clips to distance 0, and at or below -1 everything may clip to 2: take all."""
    return np.where(t > -1 + 2 * EPS, np.minimum(t, 1.0) - EPS, -np.inf).astype(np.float32)


class CosineNeighbours:
    """Exact cosine k-nearest neighbours of float32 rows; a uniform vote (classes) or mean (targets).

    Parameters
    ----------
    n_neighbors : int
    block : int, optional
        Queries per matrix product; default so that one block of
        similarities takes about ``BLOCK_BYTES``. Results do not depend on it.
    chunk : int, optional
        Training rows per matrix product (default: as many as fit the block).
    transform : callable, optional
        Applied to each block of queries before normalising (the probe's
        fitted scaler), so no standardised copy of all queries is made.

    Attributes (after ``fit``)
    --------------------------
    train_ : (N, D) ndarray of float32
        The training rows, L2-normalised.
    classes_ : (K,) ndarray
        Sorted class labels (classification).
    """

    def __init__(self, n_neighbors: int = 20, block: int | None = None, chunk: int | None = None,
                 transform=None):
        self.n_neighbors = n_neighbors
        self.block = block
        self.chunk = chunk
        self.transform = transform

    def fit(self, X: np.ndarray, y: np.ndarray, normalised: bool = False) -> "CosineNeighbours":
        """Keep the training rows (normalised; ``normalised``: already, kept without a copy) and labels.

        ``y``: ``(N,)`` labels, or ``(N, T)`` float targets (regression). ``transform`` is not applied
        to ``X``: the caller standardised it already."""
        self.train_ = np.asarray(X, dtype=np.float32) if normalised else normalise(X)
        y = np.asarray(y)
        if len(y) != len(self.train_):
            raise ValueError(f"{len(self.train_)} training rows but {len(y)} labels")
        self.classify_ = y.ndim == 1
        if self.classify_:
            self.classes_, self.codes_ = np.unique(y, return_inverse=True)
        else:
            self.targets_ = y  # means in its own dtype, as KNeighborsRegressor takes them
        self.k_ = min(self.n_neighbors, len(self.train_))
        return self

    def _sizes(self, n_queries: int) -> tuple[int, int]:
        N = len(self.train_)
        chunk = self.chunk or max(GROUPS, min(N, (BLOCK_BYTES // 4) // 1024))
        block = self.block or max(1, (BLOCK_BYTES // 4) // min(N, chunk))
        return min(block, max(n_queries, 1)), max(min(chunk, N), 1)

    def kneighbors(self, X: np.ndarray, normalised: bool = False) -> np.ndarray:
        """Indices of the k nearest training rows of each query, nearest first (ties: lower index first).

        Parameters
        ----------
        X : (n, D) ndarray of float
            Queries (``normalised``: already transformed and L2-normalised float32).

        Returns
        -------
        (n, k) ndarray of int64
        """
        n = len(X)
        block, _ = self._sizes(n)
        out = np.empty((n, self.k_), dtype=np.int64)
        for q0 in range(0, n, block):
            Q = X[q0:q0 + block]
            if not normalised:
                Q = normalise(self.transform(Q) if self.transform is not None else Q)
            out[q0:q0 + block] = self._block(np.asarray(Q, dtype=np.float32))
        return out

    def _block(self, Q: np.ndarray) -> np.ndarray:
        """The k nearest of each row of one block of normalised queries ``(m, D)``: ``(m, k)`` indices."""
        m, k, T = len(Q), self.k_, self.train_
        N = len(T)
        _, chunk = self._sizes(m)
        G = max(GROUPS, k) if chunk >= max(GROUPS, k) else chunk
        g = -(-chunk // G)
        buf = np.empty(m * g * G, dtype=np.float32)
        running = np.full(m, -np.inf, dtype=np.float32)
        rows, cols, sims = [], [], []
        for c0 in range(0, N, chunk):
            nc = min(chunk, N - c0)
            gc = -(-nc // G)
            S = buf[:m * gc * G].reshape(m, gc * G)
            np.matmul(Q, T[c0:c0 + nc].T, out=S[:, :nc])
            S[:, nc:] = -np.inf  # the last chunk's empty places: never a candidate
            grouped = S.reshape(m, gc, G)  # group j holds columns j, j + G, j + 2G, ...
            top = grouped.max(axis=1)  # (m, G)
            if G >= k:
                running = np.maximum(running, np.partition(top, G - k, axis=1)[:, G - k])
            bound = _bound(running)
            r, j = np.nonzero(top >= bound[:, None])
            vals = grouped[r, :, j]  # (pairs, gc)
            keep = (vals >= bound[r, None]) & (vals > -np.inf)  # not the last chunk's empty places
            pr, pp = np.nonzero(keep)
            rows.append(r[pr])
            cols.append(c0 + pp * G + j[pr])
            sims.append(vals[pr, pp])
        r, c, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
        final = s >= _bound(running)[r]  # earlier chunks kept more, against a lower bound
        r, c, s = r[final], c[final], s[final]
        d = np.clip(np.float32(1) - s, 0, 2)  # scikit-learn's cosine distance, rounded the same way
        order = np.lexsort((c, d, r))
        starts = np.concatenate(([0], np.cumsum(np.bincount(r, minlength=m))[:-1]))
        return c[order][starts[:, None] + np.arange(k)]

    def predict_with_proba(self, X: np.ndarray, normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(labels (n,), probabilities (n, K) float64)`` from one neighbour search (classification).

        The probabilities are vote fractions of the k neighbours; the label is the class with most votes
        (the smallest class of a tie), as ``KNeighborsClassifier`` with uniform weights gives."""
        ind = self.kneighbors(X, normalised)
        K = len(self.classes_)
        votes = self.codes_[ind] + K * np.arange(len(ind))[:, None]
        counts = np.bincount(votes.ravel(), minlength=K * len(ind)).reshape(len(ind), K).astype(np.float64)
        proba = counts / counts.sum(axis=1, keepdims=True)
        return self.classes_[np.argmax(proba, axis=1)], proba

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_proba(X)[1]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels (classification) or ``(n, T)`` neighbour means of the targets (regression)."""
        if self.classify_:
            return self.predict_with_proba(X)[0]
        return np.mean(self.targets_[self.kneighbors(X)], axis=1)


__all__ = ["CosineNeighbours", "normalise"]
