"""The probes' scaler read in place equals scikit-learn's ``StandardScaler`` bit for bit: fitted in one call or
over several, on float32 or float64 rows, whatever the run of rows summed at a time, and so does standardising."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from embedcache.probes import scaling
from embedcache.probes.scaling import partial_fit_rows, standardise_rows

ATTRS = ("mean_", "var_", "scale_", "n_samples_seen_", "n_features_in_")


def rows_of(n=3000, d=37, seed=0, dtype=np.float32):
    """Features far from zero with unequal spreads, two constant columns, one column of huge values."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * rng.uniform(0.01, 30, size=d) + rng.uniform(-50, 50, size=d)).astype(dtype)
    X[:, 3] = 7.25
    X[:, 5] = 0
    X[:, 8] *= 1e6
    return X


def assert_same_scaler(got, want):
    for name in ATTRS:
        a, b = getattr(got, name), getattr(want, name)
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b), name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("chunk_bytes", [1, 8 * 37 * 5, 8 * 37 * 64 + 8, 1 << 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_fit_is_sklearns_bit_for_bit_whatever_the_chunks(monkeypatch, chunk_bytes, dtype):
    monkeypatch.setattr(scaling, "CHUNK_BYTES", chunk_bytes)  # 1: a row at a time
    X = rows_of(dtype=dtype)
    rows = np.sort(np.random.default_rng(1).choice(len(X), 2001, replace=False))
    got = partial_fit_rows(StandardScaler(), X, rows)
    want = StandardScaler().fit(X[rows])
    assert_same_scaler(got, want)
    assert got.scale_[3] == got.scale_[5] == 1.0  # constant columns: scale 1, as scikit-learn sets


@pytest.mark.parametrize("seed", range(6))
def test_fits_over_several_blocks_are_sklearns_partial_fits_bit_for_bit(monkeypatch, seed):
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(scaling, "CHUNK_BYTES", int(rng.integers(1, 20_000)))
    X = rows_of(n=int(rng.integers(50, 5000)), d=int(rng.integers(9, 70)), seed=seed)
    rows = rng.permutation(len(X))[: int(rng.integers(3, len(X)))]  # any order, not only sorted
    cuts = np.sort(rng.choice(np.arange(1, len(rows)), size=min(3, len(rows) - 1), replace=False))
    got, want = StandardScaler(), StandardScaler()
    for part in np.split(rows, cuts):
        partial_fit_rows(got, X, part)
        want.partial_fit(X[part])
        assert_same_scaler(got, want)


def test_standardised_rows_are_sklearns_transform_bit_for_bit(monkeypatch):
    monkeypatch.setattr(scaling, "CHUNK_BYTES", 8 * 37 * 7)
    X = rows_of()
    rows = np.random.default_rng(2).permutation(len(X))[:2500]
    scaler = StandardScaler().fit(X[rows])
    out = np.full((len(rows), X.shape[1]), np.nan, dtype=np.float32)
    got = standardise_rows(scaler, X, rows, out)
    assert got is out
    want = scaler.transform(X[rows])
    assert want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
