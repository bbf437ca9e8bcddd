"""Test-time augmentation: the decoder on a tile's variants, each output moved back and averaged.

A variant's maps are predicted in the variant's frame. Moving them back to
the tile's own frame undoes the geometry of every channel, and for the
distance maps it also permutes and negates channels: a direction of the
transformed tile is another (or the opposite) direction of the original
(:func:`embedcache.train.targets.channel_map`). Probabilities and distances
are then averaged over the variants, before post-processing.

On a store the variants' tokens are cached (only decoder passes are added);
live, the encoder runs once per variant as well.

>>> [v.name for v in tta_variants("flips")]
['identity', 'hflip', 'vflip']
"""

from __future__ import annotations

import numpy as np

from embedcache.datasets.variants import BY_NAME, SETS, Variant
from embedcache.errors import ConfigError, DataError
from embedcache.train.targets import channel_map

TTA_SETS = {"none": SETS["none"], "flips": SETS["flips"], "d4": SETS["d4"]}


def tta_variants(spec: str) -> tuple[Variant, ...]:
    """The variants of ``none``, ``flips`` or ``d4`` (identity first)."""
    if spec not in TTA_SETS:
        raise ConfigError(f"tta must be one of {', '.join(TTA_SETS)}, not {spec!r}")
    return tuple(BY_NAME[n] for n in TTA_SETS[spec])


def cached_variant_ids(store, variants: tuple[Variant, ...]) -> list[int]:
    """Indices of ``variants`` in a store's cached variants.

    Raises
    ------
    DataError
        Naming the variants the store lacks and what works instead.
    """
    names = tuple(v.name for v in variants)
    missing = [n for n in names if n not in store.variants]
    if missing:
        spec = next((k for k, v in TTA_SETS.items() if v == names), ",".join(names))
        smaller = [s for s, names in TTA_SETS.items() if s != "none" and set(names) <= set(store.variants)]
        instead = f"--tta {smaller[-1]}, " if smaller else ""
        raise DataError(f"{store.path} lacks the variants {', '.join(missing)} that --tta {spec} needs "
                        f"(it caches {', '.join(store.variants)}); use {instead}--tta none, or predict live "
                        "with --data (the encoder then runs on every variant)")
    return [store.variants.index(v.name) for v in variants]


def to_identity(maps: np.ndarray, variant: Variant, n_dist: int, directions) -> np.ndarray:
    """Maps ``(n, 3 + D + T, H, W)`` predicted in ``variant``'s frame, moved to the tile's own frame."""
    if variant.is_geometric_identity:
        return maps
    back = variant.invert(maps, spatial=(-2, -1))
    dist = back[:, 3:3 + n_dist].copy()
    for i, (j, sign) in enumerate(channel_map(variant, directions)):
        back[:, 3 + j] = dist[:, i] if sign > 0 else -dist[:, i]
    return back
