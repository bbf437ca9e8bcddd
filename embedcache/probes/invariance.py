"""How far an embedding moves across the cached variants, against how far apart different items are.

Features are standardised per channel over every item and variant, so
the measure does not depend on an encoder's scale. For item ``i`` (a cell or
a tile), its *shift* is the mean Euclidean distance between its identity
vector and each other variant's; its *spread* is the distance between its
identity vector and that of another item drawn at random (a seeded
derangement). The *ratio* ``mean(shift) / mean(spread)`` is 0 for an
encoder that ignores the variants and near 1 for one to which a rotated
cell is as different as another cell. Intervals (the report's) resample
source images.

>>> rng = np.random.default_rng(0)
>>> X = np.repeat(rng.normal(size=(100, 1, 8)), 3, axis=1)   # three identical variants
>>> float(variant_shift(X).ratio)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcache.errors import DataError


@dataclass
class VariantShift:
    """Per-item distances under the variants.

    Attributes
    ----------
    shift : (n,) ndarray of float
        Mean distance of each item's variants from its identity vector.
    per_variant : (n, V - 1) ndarray of float
        Distance of each non-identity variant from the identity.
    spread : (n,) ndarray of float
        Distance of each item from a random other item (identity vectors).
    groups : (n,) ndarray, or None
        The source image of each item, which intervals resample.
    """

    shift: np.ndarray
    per_variant: np.ndarray
    spread: np.ndarray
    groups: np.ndarray | None = None

    @property
    def ratio(self) -> float:
        return float(self.shift.mean() / max(self.spread.mean(), 1e-12))



def variant_shift(X: np.ndarray, seed: int = 0, groups: np.ndarray | None = None) -> VariantShift:
    """Shift and spread of ``(n, V, D)`` features (variant 0 the identity); see the module docstring."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[1] < 2:
        raise DataError(f"invariance needs features of several variants (n, V, D) with V >= 2, got {X.shape}")
    if len(X) < 2:
        raise DataError("invariance needs at least two items to compare")
    flat = X.reshape(-1, X.shape[-1])
    mu, sd = flat.mean(axis=0), flat.std(axis=0)
    Z = (X - mu) / np.where(sd > 0, sd, 1.0)
    per_variant = np.linalg.norm(Z[:, 1:] - Z[:, :1], axis=-1)
    order = np.random.default_rng(seed).permutation(len(X))
    partner = np.empty(len(X), dtype=np.int64)
    partner[order] = np.roll(order, 1)  # a cycle: nobody is their own partner
    spread = np.linalg.norm(Z[:, 0] - Z[partner, 0], axis=-1)
    return VariantShift(per_variant.mean(axis=1), per_variant, spread, groups)
