"""Exact cosine k-nearest neighbours by blocked matrix products: the kNN probe over millions of cells.

The probe's neighbours are scikit-learn's (``KNeighborsClassifier(metric="cosine",
algorithm="brute")`` after the scaler): rows are L2-normalised the way
:func:`sklearn.preprocessing.normalize` does, the cosine similarity ``s`` of a
query and a training row is their float32 dot product, and the distance is
``1 - s`` clipped to [0, 2] in float32, as
:func:`sklearn.metrics.pairwise.cosine_distances` computes it. What changes
is the work around it. Nothing of size (queries x training rows) is kept
beyond one block, and most of the products are not computed exactly at all:

- **Prefilter.** A block of queries meets a chunk of training rows in one
  matrix product at low precision: bfloat16 where the CPU multiplies it
  natively (AVX512-BF16, AMX; 394 against 189 GFLOP/s for float32 on the
  2-core machine the benchmarks ran on), else float32. Every approximate similarity ``a`` is within a bound
  of the exact one: the bfloat16 rounding of the query and of the training
  rows (their residual norms, by Cauchy-Schwarz), float32 accumulation
  (``gamma_D``, Higham's bound, for the product and for the exact dot
  products), and the one rounding of the bfloat16 result.
- **Candidates.** The columns of a chunk fall in ``G`` strided groups; the
  k-th largest of the ``G`` group maxima is a lower bound of the row's k-th
  largest approximate similarity (k elements, one per group, reach it).
  From it and the error bound follows a similarity below which no element
  can reach the k nearest (or tie with the k-th distance after float32
  rounding: ``EPS``); only the groups whose maximum reaches it (about k of
  them) are read again, and only their elements above it are kept.
- **Exact re-rank.** The candidates' similarities are computed exactly (one
  float32 dot product each, the same function for every precision of the
  prefilter), and the k smallest distances are chosen among them. Since the
  candidates hold every element that could be chosen, the result is the
  exact one, whatever the prefilter's precision, block or chunk.

Ties: of equal distances the lower training index comes first (a stable
rule). scikit-learn selects with ``np.argpartition`` (introselect), which
promises no order among equal values, so the two can differ only where the
k-th and (k+1)-th distances of a row are exactly equal and their classes
differ; on data without such exact ties both give the same neighbours,
votes and means (``tests/test_probe_scale.py`` checks it against
scikit-learn). Every similarity that decides comes from one function
(:func:`exact_similarities`), so two distances within float32 rounding of
each other may come in the other order than a float32 matrix product would
put them: in a 20,000 x 80,000 x 384 search, 14 rows swapped two of their 20
neighbours against the blocked float32 products used before, no row had
another set, and float64 sided with the new order in 9 and the old in 5.

>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(50, 8)).astype(np.float32)
>>> nn = CosineNeighbours(3).fit(X, np.arange(50) % 2)
>>> nn.kneighbors(X[:2])[:, 0].tolist()  # each row is its own nearest neighbour
[0, 1]
"""

from __future__ import annotations

import functools

import numpy as np

# Two float32 ulps of the distances (all in [0, 2]): similarities further than this below the k-th map to
# strictly larger distances, so they cannot tie with it.
EPS = 2.0 ** -21
BLOCK_BYTES = 128 << 20  # one block of similarities (queries x training rows of a chunk), float32
GROUPS = 512  # strided column groups per chunk: enough that the k nearest rarely share one
RERANK_ROWS = 1 << 16  # candidate pairs gathered at a time for their exact dot products
PRECISIONS = ("bfloat16", "float32")
_BF16_UNIT = 2.0 ** -9  # bfloat16's unit roundoff (8 significant bits): the relative error of one rounding


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


@functools.cache
def default_precision() -> str:
    """``"bfloat16"`` where torch multiplies bfloat16 matrices natively on this CPU (oneDNN), else ``"float32"``."""
    import torch

    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return "bfloat16" if native is not None and native() else "float32"


def _gamma(n: int) -> float:
    """Higham's ``gamma_n``: the relative error bound of a float32 sum of ``n`` products."""
    u = 2.0 ** -24
    return n * u / (1 - n * u)


def _float32(X) -> np.ndarray:
    """A float32 NumPy array of a float32 or bfloat16 tensor (a view of float32)."""
    import torch

    return X.numpy() if X.dtype == torch.float32 else _widen(X.view(torch.int16).numpy())


def _widen(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values, given as their int16 bit patterns, as float32 (the upper half of a float32's bits)."""
    return (bits.astype(np.int32) << 16).view(np.float32)


def _row_starts(r: np.ndarray, m: int) -> np.ndarray:
    """Where each of ``m`` rows begins among candidates sorted by row ``r``: ``(m,)``."""
    return np.concatenate(([0], np.cumsum(np.bincount(r, minlength=m))[:-1]))


def _norms(D: int):
    """Row norms of a float32 array, as float64 upper bounds: the float32 sum of squares and square root,
    enlarged by their error bound (``gamma_(D+2)``)."""
    grow = 1 + 2 * _gamma(D + 2)
    return lambda X: np.sqrt(np.einsum("ij,ij->i", X, X)).astype(np.float64) * grow


def exact_similarities(Q: np.ndarray, T: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The float32 dot products ``Q[rows[i]] . T[cols[i]]``, a bounded number of pairs gathered at a time.

    One function for every similarity that decides a neighbour, so the result depends on neither the
    prefilter nor the block sizes. ``(len(rows),)`` float32."""
    out = np.empty(len(rows), dtype=np.float32)
    for a in range(0, len(rows), RERANK_ROWS):
        b = a + RERANK_ROWS
        np.einsum("ij,ij->i", Q[rows[a:b]], T[cols[a:b]], out=out[a:b])
    return out


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
    precision : {"bfloat16", "float32"}, optional
        The prefilter's products (default :func:`default_precision`).
        Results do not depend on it; only the speed does.
    workers : int, optional
        Blocks of queries searched side by side, one thread each (default
        torch's threads). Results do not depend on it.

    Attributes (after ``fit``)
    --------------------------
    train_ : (N, D) ndarray of float32
        The training rows, L2-normalised.
    classes_ : (K,) ndarray
        Sorted class labels (classification).
    """

    def __init__(self, n_neighbors: int = 20, block: int | None = None, chunk: int | None = None,
                 transform=None, precision: str | None = None, workers: int | None = None):
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.n_neighbors = n_neighbors
        self.block = block
        self.chunk = chunk
        self.transform = transform
        self.precision = precision
        self.workers = workers

    def fit(self, X: np.ndarray, y: np.ndarray, normalised: bool = False) -> "CosineNeighbours":
        """Keep the training rows (normalised; ``normalised``: already, kept without a copy) and labels.

        ``y``: ``(N,)`` labels, or ``(N, T)`` float targets (regression). ``transform`` is not applied
        to ``X``: the caller standardised it already."""
        import torch

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
        self.precision_ = self.precision or default_precision()
        self._low, self._train_err = None, 0.0
        if self.precision_ == "bfloat16":
            T = torch.from_numpy(self.train_)
            # Zero rows after the last, so a chunk's product always fills whole column groups in place (the
            # columns past the training rows are then set apart, like the last chunk's empty places).
            self._low = torch.zeros((len(T) + max(GROUPS, self.k_), T.shape[1]), dtype=torch.bfloat16)
            self._low[:len(T)] = T
            # The largest distance of a training row from its bfloat16 copy (residual norm), by blocks.
            norm, bits = _norms(T.shape[1]), self._low.view(torch.int16).numpy()
            for a in range(0, len(T), 1 << 16):  # a float32 less its bfloat16 rounding: exact
                diff = self.train_[a:a + (1 << 16)] - _widen(bits[a:min(a + (1 << 16), len(T))])
                self._train_err = max(self._train_err, float(norm(diff).max()))
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
        import torch
        from threadpoolctl import threadpool_limits

        n = len(X)
        block, _ = self._sizes(n)
        out = np.empty((n, self.k_), dtype=np.int64)

        def one(q0: int) -> None:
            Q = X[q0:q0 + block]
            if not normalised:
                Q = normalise(self.transform(Q) if self.transform is not None else Q)
            out[q0:q0 + block] = self._block(np.ascontiguousarray(Q, dtype=np.float32))

        starts = range(0, n, block)
        workers = min(self.workers or torch.get_num_threads(), len(starts))
        if workers <= 1:
            for q0 in starts:
                one(q0)
            return out
        # Blocks side by side, one thread each (a product on one core, then its candidates): the selection,
        # a third of a block's time, runs on one core anyway, and threaded products would wait for it.
        from concurrent.futures import ThreadPoolExecutor

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, starts))
        finally:
            torch.set_num_threads(before)
        return out

    def _margins(self, Q: np.ndarray, low_bits: np.ndarray | None) -> np.ndarray:
        """Per query row: the bound of ``|approximate - exact similarity|`` (float64, ``(m,)``), given the
        queries' bfloat16 copy as int16 bits (``None``: a float32 prefilter)."""
        D = Q.shape[1]
        norm = _norms(D)
        q_norm = norm(Q)
        t_norm = 1 + 2 * _gamma(D)  # a normalised training row's norm, at most (zero rows: 0)
        if low_bits is None:  # float32 products: the accumulation of the prefilter's and of the exact ones
            return 2 * _gamma(D + 1) * q_norm * t_norm * (1 + 2.0 ** -20)
        low_f = _widen(low_bits)
        q_err, low_norm = norm(Q - low_f), norm(low_f)  # a float32 less its bfloat16 rounding: exact
        # |q.t - q'.t'| <= |q - q'| |t| + |q'| |t - t'|; then the float32 sums of both products.
        bound = q_err * t_norm + low_norm * self._train_err
        bound += _gamma(D + 1) * (low_norm * (t_norm + self._train_err) + q_norm * t_norm)
        return bound * (1 + 2.0 ** -20)  # the float64 rounding of this bound's own terms

    def _threshold(self, t: np.ndarray, margin: np.ndarray) -> np.ndarray:
        """The approximate similarity from which elements are candidates, given a lower bound ``t`` of the
        row's k-th largest approximate similarity and the rows' ``margin`` (float32, rounded down).

        An element of the k nearest has an exact similarity at least the k-th largest's less ``EPS`` (or
        ties it in distance, clipped at 0 or 2); the k-th largest exact is at least the k-th approximate's
        lower bound less the margin; the element's approximate value is at least its exact value less the
        margin. bfloat16 results also carry one rounding of relative size ``_BF16_UNIT``."""
        t = t.astype(np.float64)
        bf16 = self._low is not None
        if bf16:  # the float32 sums behind the k elements reaching t: at least t less one rounding
            t = np.where(t >= 0, t / (1 + _BF16_UNIT), t / (1 - _BF16_UNIT))
        exact_kth = np.minimum(t - margin, 1.0)  # at or above 1 everything clips to distance 0
        low = exact_kth - EPS - margin
        if bf16:  # rounding is monotone: an element's result is at least the rounding of its lower bound
            low = np.where(low >= 0, low * (1 - _BF16_UNIT), low * (1 + _BF16_UNIT))
        # At or below -1 everything may clip to 2: take all. The bound, rounded down to float32.
        thr = np.where(exact_kth - EPS > -1, low, -np.inf)
        return np.nextafter(thr.astype(np.float32), np.float32(-np.inf))

    def _block(self, Q: np.ndarray) -> np.ndarray:
        """The k nearest of each row of one block of normalised queries ``(m, D)``: ``(m, k)`` indices."""
        import torch

        m, k, T = len(Q), self.k_, self.train_
        N = len(T)
        _, chunk = self._sizes(m)
        G = max(GROUPS, k) if chunk >= max(GROUPS, k) else chunk
        g = -(-chunk // G)
        Ql = torch.from_numpy(Q).bfloat16() if self._low is not None else None
        margin = self._margins(Q, None if Ql is None else Ql.view(torch.int16).numpy())
        dtype = torch.bfloat16 if Ql is not None else torch.float32
        buf = torch.empty(m * g * G, dtype=dtype)
        running = np.full(m, -np.inf, dtype=np.float32)
        rows, cols, sims = [], [], []
        for c0 in range(0, N, chunk):
            nc = min(chunk, N - c0)
            gc = -(-nc // G)
            S = buf[:m * gc * G].view(m, gc * G)
            if Ql is not None:
                torch.matmul(Ql, self._low[c0:c0 + gc * G].T, out=S)
            else:
                np.matmul(Q, T[c0:c0 + nc].T, out=S.numpy()[:, :nc])
            S[:, nc:] = -np.inf  # the last chunk's empty places: never a candidate
            # group j holds columns j, j + G, j + 2G, ...; its maxima by torch (bfloat16's order), the rest
            # by NumPy on float32 (bfloat16 bits widened), several times faster than torch's small operations
            top = _float32(S.view(m, gc, G).amax(dim=1))  # (m, G)
            grouped = _float32(S).reshape(m, gc, G) if Ql is None else S.view(torch.int16).numpy().reshape(m, gc, G)
            if G >= k:
                running = np.maximum(running, np.partition(top, G - k, axis=1)[:, G - k])
            bound = self._threshold(running, margin)
            r, j = np.nonzero(top >= bound[:, None])
            vals = grouped[r, :, j]  # (pairs, gc)
            vals = vals if Ql is None else _widen(vals)
            keep = vals >= bound[r, None]
            if nc < gc * G:
                keep &= vals > -np.inf  # not the last chunk's empty places
            pr, pp = np.nonzero(keep)
            rows.append(r[pr])
            cols.append(c0 + pp * G + j[pr])
            sims.append(vals[pr, pp])
        r, c, s = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
        # The candidates hold every approximate similarity at or above the running bound, so the row's k-th
        # largest approximate one among them is the k-th of all: the tightest bound, applied once more.
        by_row = np.lexsort((-s, r))
        kth = s[by_row[_row_starts(r, m) + k - 1]]
        final = by_row[s[by_row] >= self._threshold(kth, margin)[r[by_row]]]
        r, c = r[final], c[final]
        d = np.clip(np.float32(1) - exact_similarities(Q, T, r, c), 0, 2)  # scikit-learn's cosine distance
        order = np.lexsort((c, d, r))
        return c[order][_row_starts(r, m)[:, None] + np.arange(k)]

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


__all__ = ["CosineNeighbours", "default_precision", "exact_similarities", "normalise"]
