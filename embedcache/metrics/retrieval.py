"""Tile retrieval and ADDR: how well descriptors find tissue like the query's.

* **Precision at k** (:func:`precision_at_k`): each query (a labelled tile
  of a held-out slide) retrieves its ``k`` nearest descriptors among the
  labelled tiles of *other* slides (a tile's own slide would reward
  spatial memory, not similarity); a neighbour is a hit when it shares the
  query's label. Reported over all queries and per label (tumour-tile
  retrieval is the tumour row).
* **ADDR** (:func:`addr`), the average distant/near descriptor distance
  ratio: mean distance of far pairs over mean distance of near pairs,
  pooled over slides (one global ratio) on the query slides. Above 1 means
  the descriptors keep near tiles closer than far ones. Near pairs: every
  pair closer than ``d_near`` um on a slide; far pairs: a seeded uniform
  sample of pairs at least ``d_far`` um apart on a slide (and/or pairs on
  two slides, ``far_from``) (:func:`addr_pairs`).

Arrays in, numbers out (numpy; the k-d tree of scipy for near pairs);
:mod:`embedcache.report.retrieval` scores stores' layers with these.
Neighbours are exact: one matrix product per block of queries against all
candidates, then only the few columns under a per-row bound are sorted
(``benchmarks/bench_ssl.py`` times 25,000 queries against 100,000
descriptors).

>>> desc = np.array([[0.], [1.], [10.], [11.]])
>>> float(addr(desc, np.array([[0, 1], [2, 3]]), np.array([[0, 2], [1, 3]])))
10.0
"""

from __future__ import annotations

import numpy as np

from embedcache.errors import ConfigError, DataError
from embedcache.geometry import TileGeometry, near_pairs

QUERY_BLOCK = 1024  # queries per matrix product
PROBE_COLUMNS = 4096  # columns whose k-th smallest distance bounds which columns are sorted


# ----------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------
def _check(desc: np.ndarray, n: int, what: str):
    if desc.ndim != 2 or desc.shape[0] != n:
        raise DataError(f"descriptors of shape {desc.shape} do not match {n} {what}")


def nearest_other_slide(desc: np.ndarray, source: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                        k: int, metric: str = "euclidean") -> np.ndarray:
    """The ``k`` nearest candidates of each query that lie on another slide.

    Parameters
    ----------
    desc : (N, D) ndarray of float
    source : (N,) ndarray of int
        Slide of each tile.
    queries, candidates : ndarray of int
        Tile indices.
    k : int
    metric : {"euclidean", "cosine"}

    Returns
    -------
    (len(queries), k) ndarray of int
        Candidate tile indices, nearest first; -1 where fewer than ``k``
        candidates lie on other slides.
    """
    x = np.asarray(desc, np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    elif metric != "euclidean":
        raise ConfigError(f"metric must be euclidean or cosine, not {metric!r}")
    candidates = np.asarray(candidates, np.int64)
    candidates = candidates[np.argsort(source[candidates], kind="stable")]  # each slide a run of columns
    n = len(candidates)
    cand = np.ascontiguousarray(x[candidates].T)  # (D, n)
    cand_sq = (x[candidates].astype(np.float64) ** 2).sum(1).astype(np.float32)
    slides, first = np.unique(source[candidates], return_index=True)
    last = np.append(first[1:], n)
    kk = min(k, n)
    # The kk-th smallest distance among a fixed spread of columns bounds the row's kk-th smallest from
    # above, so only the few columns under it are gathered and sorted: exact, and far cheaper than
    # partitioning every row.
    probe = np.unique(np.linspace(0, n - 1, min(n, PROBE_COLUMNS)).astype(np.int64))
    block = min(QUERY_BLOCK, len(queries))
    dist = np.empty((block, n), np.float32)
    under = np.zeros(-(-block * n // 8) * 8, bool)  # whole 8-byte words: scanned as uint64 below
    out = np.full((len(queries), k), -1, np.int64)
    for b in range(0, len(queries), block):
        q = queries[b:b + block]
        d = dist[:len(q)]
        # Squared distance up to the query's own norm, which does not change the ranking.
        np.matmul(x[q], cand, out=d)
        d *= -2
        d += cand_sq
        at = np.searchsorted(slides, source[q])
        for r, a in enumerate(at):
            if a < len(slides) and slides[a] == source[q[r]]:
                d[r, first[a]:last[a]] = np.inf
        bound = np.full(len(q), np.inf, np.float32)
        if kk < len(probe):
            bound = np.partition(d[:, probe], kk - 1, axis=1)[:, kk - 1]
        mask = under[:d.size].reshape(d.shape)
        np.less_equal(d, bound[:, None], out=mask)
        under[d.size:] = False
        # Few entries pass: find the 8-byte words holding any, then the bytes within them.
        words = np.flatnonzero(under.view(np.uint64))
        flat = (words[:, None] * 8 + np.arange(8)).ravel()
        flat = flat[under[flat]]
        rows, cols = np.divmod(flat, n)
        vals = d[rows, cols]
        order = np.lexsort((candidates[cols], vals, rows))  # ties: the lower tile index first
        rows, cols, vals = rows[order], cols[order], vals[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        keep = (rank < kk) & np.isfinite(vals)
        out[b + rows[keep], rank[keep]] = candidates[cols[keep]]
    return out


def precision_at_k(desc: np.ndarray, labels, source: np.ndarray, queries: np.ndarray, k: int = 10,
                   metric: str = "euclidean") -> tuple[float, dict[str, float], int]:
    """Retrieval precision at ``k`` with neighbours from other slides only.

    Parameters
    ----------
    desc : (N, D) ndarray of float
    labels : (N,) sequence of str
        ``""`` for an unlabelled tile (never a query nor a candidate).
    source : (N,) ndarray of int
    queries : ndarray of int
        Query tiles (unlabelled ones are dropped).
    k : int
    metric : {"euclidean", "cosine"}

    Returns
    -------
    precision : float
        Mean over queries of the fraction of hits among the ``k`` neighbours.
    per_label : dict of str to float
        The same over the queries of each label.
    n_queries : int

    Examples
    --------
    >>> desc = np.array([[0.], [0.1], [5.], [5.1]])
    >>> p, per, n = precision_at_k(desc, ["a", "a", "b", "b"], np.array([0, 1, 0, 1]), np.array([0, 2]), k=1)
    >>> p, per, n
    (1.0, {'a': 1.0, 'b': 1.0}, 2)
    """
    labels = np.asarray(labels, dtype=object)
    source = np.asarray(source)
    _check(np.asarray(desc), len(labels), "labels")
    labelled = labels != ""
    queries = np.asarray(queries, np.int64)
    queries = queries[labelled[queries]]
    if not len(queries):
        raise DataError("no labelled query tiles: label tiles (GeoJSON beside the slides, or a CSV) "
                        "or choose other query slides")
    candidates = np.flatnonzero(labelled)
    nn = nearest_other_slide(desc, source, queries, candidates, k, metric)
    hits = np.where(nn >= 0, labels[np.maximum(nn, 0)] == labels[queries][:, None], False)
    per_query = hits.sum(1) / k
    per_label = {str(lab): float(per_query[labels[queries] == lab].mean()) for lab in sorted(set(labels[queries]))}
    return float(per_query.mean()), per_label, int(len(queries))


def addr(desc: np.ndarray, near: np.ndarray, far: np.ndarray) -> float:
    """Average distant/near distance ratio: mean far-pair distance over mean near-pair distance.

    Parameters
    ----------
    desc : (N, D) ndarray of float
    near, far : (P, 2) ndarray of int
        Tile index pairs.
    """
    if not len(near) or not len(far):
        raise DataError(f"ADDR needs near and far pairs; got {len(near)} near and {len(far)} far")
    x = np.asarray(desc, np.float64)
    mean_near = np.linalg.norm(x[near[:, 0]] - x[near[:, 1]], axis=1).mean()
    mean_far = np.linalg.norm(x[far[:, 0]] - x[far[:, 1]], axis=1).mean()
    return float(mean_far / mean_near) if mean_near > 0 else float("inf")


def addr_pairs(geo: TileGeometry, tiles: np.ndarray, d_near: float, d_far: float, far_from: str = "same",
               n_far: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Near and far pairs among ``tiles`` for :func:`addr`.

    Near: every pair closer than ``d_near`` um on one slide. Far: ``n_far``
    pairs drawn (seeded, with replacement) uniformly among the pairs at
    least ``d_far`` um apart on one slide (``far_from`` same or both) or on
    two slides (other or both), by rejection from uniform pairs.

    Returns
    -------
    near, far : (P, 2) ndarray of int
    """
    tiles = np.asarray(tiles, np.int64)
    near = tiles[near_pairs(geo.source[tiles], geo.centres_um[tiles], d_near)]
    rng = np.random.default_rng(seed)
    found, drawn = [], 0
    while sum(len(f) for f in found) < n_far and drawn < 200 * n_far:
        m = 4 * n_far
        a, b = tiles[rng.integers(len(tiles), size=m)], tiles[rng.integers(len(tiles), size=m)]
        same = geo.source[a] == geo.source[b]
        apart = np.linalg.norm(geo.centres_um[a] - geo.centres_um[b], axis=1) >= d_far
        ok = {"both": ~same | apart, "same": same & apart, "other": ~same}[far_from]
        found.append(np.stack([a[ok], b[ok]], 1))
        drawn += m
    far = np.concatenate(found)[:n_far] if found else np.zeros((0, 2), np.int64)
    if not len(near) or not len(far):
        raise DataError(f"too few pairs for ADDR among {len(tiles)} tiles: {len(near)} near (< {d_near:g} um), "
                        f"{len(far)} far (>= {d_far:g} um, far_from={far_from}); change --d-near/--d-far")
    return near, far
