"""Standardisation of float32 rows read in place: scikit-learn's ``StandardScaler``, to the last bit, without
its float64 copies.

``StandardScaler.partial_fit`` on float32 rows makes a NaN mask, a float32
copy of it, and a float64 copy of the centred rows (8 bytes a value, and
about seven passes over them); on 100,000 cells x 384 that was a fifth of
the linear probe's time. :func:`partial_fit_rows` computes the same sums in
the same order, a few hundred rows at a time in a buffer that stays in
cache: NumPy sums a C-ordered array over its first axis row after row
(``s = x0; s = s + x1; ...``), so the sum of a run of rows continues from
the last by adding the running sum into the run's first row. The formulas
after the sums (Chan, Golub and LeVeque's update, as
``sklearn.utils.extmath._incremental_mean_and_var`` writes them) are
repeated operation for operation; ``tests/test_probe_scaling.py`` checks
every fitted attribute bit for bit against scikit-learn.
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 1 << 20  # float64 rows summed at a time: a buffer that stays in a core's L2 cache


def _chunks(n: int, width: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_BYTES // (8 * max(width, 1)))
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _column_sums(X: np.ndarray, rows: np.ndarray, shift: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """``sum(X[rows], axis=0, dtype=float64)`` (``shift`` None), or the sums of ``X[rows] - shift`` and of its
    squares, in NumPy's order, without making ``X[rows]``: ``(D,) float64`` each."""
    width = X.shape[1]
    buf = np.empty((min(len(rows), _chunks(len(rows), width)[0][1]), width), dtype=np.float64)
    sums = [None] if shift is None else [None, None]
    for a, b in _chunks(len(rows), width):
        block = buf[:b - a]
        if shift is None:
            block[...] = X[rows[a:b]]
            if sums[0] is not None:
                block[0] += sums[0]
            sums[0] = block.sum(axis=0)
            continue
        np.subtract(X[rows[a:b]], shift, out=block)
        first = block[0].copy()
        if sums[0] is not None:
            block[0] += sums[0]
        sums[0] = block.sum(axis=0)
        block[0] = first
        block **= 2
        if sums[1] is not None:
            block[0] += sums[1]
        sums[1] = block.sum(axis=0)
    return tuple(sums)


def partial_fit_rows(scaler, X: np.ndarray, rows: np.ndarray):
    """``scaler.partial_fit(X[rows])`` for finite float rows of a 2-d ``X``, without copying them.

    Parameters
    ----------
    scaler : sklearn.preprocessing.StandardScaler
        Fresh (``with_mean`` and ``with_std``, no sample weights) or partially
        fitted by this function; updated in place.
    X : (n, D) ndarray of float32 or float64
        Finite (the caller checks): NaNs, which scikit-learn skips, are not looked for.
    rows : (m,) ndarray of int, m >= 1

    Returns
    -------
    StandardScaler
        ``scaler``, with ``mean_``, ``var_``, ``scale_``, ``n_samples_seen_`` and
        ``n_features_in_`` equal to scikit-learn's to the bit.
    """
    from sklearn.preprocessing._data import _handle_zeros_in_scale, _is_constant_feature

    n_features, first = X.shape[1], not hasattr(scaler, "n_samples_seen_")
    if first:
        scaler.n_features_in_ = n_features
        last_mean, last_variance, seen = 0.0, 0.0, np.zeros(n_features, dtype=np.int64)
    else:
        last_mean, last_variance, seen = scaler.mean_, scaler.var_, scaler.n_samples_seen_
        if np.size(seen) == 1:
            seen = np.repeat(seen, n_features).astype(np.int64, copy=False)
    # sklearn.utils.extmath._incremental_mean_and_var, dense rows, no NaN, no weights.
    last_sample_count = np.asarray(seen, dtype=np.float64)
    last_sum = last_mean * last_sample_count
    (new_sum,) = _column_sums(X, rows)
    new_sample_count = len(rows) - np.zeros(n_features, dtype=np.float64)
    updated_sample_count = last_sample_count + new_sample_count
    updated_mean = (last_sum + new_sum) / updated_sample_count
    T = new_sum / new_sample_count
    correction, new_unnormalized_variance = _column_sums(X, rows, T)
    new_unnormalized_variance -= correction**2 / new_sample_count
    last_unnormalized_variance = last_variance * last_sample_count
    with np.errstate(divide="ignore", invalid="ignore"):
        last_over_new_count = last_sample_count / new_sample_count
        updated_unnormalized_variance = (
            last_unnormalized_variance + new_unnormalized_variance
            + last_over_new_count / updated_sample_count * (last_sum / last_over_new_count - new_sum) ** 2)
    zeros = last_sample_count == 0
    updated_unnormalized_variance[zeros] = new_unnormalized_variance[zeros]
    # StandardScaler.partial_fit from here on.
    scaler.mean_, scaler.var_ = updated_mean, updated_unnormalized_variance / updated_sample_count
    scaler.n_samples_seen_ = updated_sample_count
    if np.max(scaler.n_samples_seen_) == np.min(scaler.n_samples_seen_):
        scaler.n_samples_seen_ = scaler.n_samples_seen_[0]
    constant = _is_constant_feature(scaler.var_, scaler.mean_, scaler.n_samples_seen_)
    scaler.scale_ = _handle_zeros_in_scale(np.sqrt(scaler.var_), copy=False, constant_mask=constant)
    return scaler


def standardise_rows(scaler, X: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[:] = scaler.transform(X[rows])`` for float32 ``X`` and ``out``: ``(len(rows), D)``.

    The float32 operations of ``StandardScaler.transform`` (subtract the mean,
    divide by the scale, each cast to float32), a cache-sized run of rows at
    a time, in ``out`` instead of two copies of the rows.
    """
    mean, scale = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
    for a, b in _chunks(len(rows), X.shape[1] // 2):  # float32 rows: the chunks of twice as many
        block = out[a:b]
        block[...] = X[rows[a:b]]
        block -= mean
        block /= scale
    return out
