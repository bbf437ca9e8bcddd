"""The pair sampler: distances, exact enumeration and uniform far pairs, seeds, subsets, too few pairs."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.geometry import TileGeometry, near_pairs, split_slides
from embedcache.errors import ConfigError, DataError
from embedcache.train.pairs import PairSampler, pair_distances, sample_pairs


def grid(n_slides: int = 3, side: int = 12, tile: int = 64, mpp: float = 0.5, drop: float = 0.0, seed: int = 0):
    """Tiles on a ``side`` x ``side`` grid per slide (32 um apart), some dropped at random."""
    rng = np.random.default_rng(seed)
    offsets = np.array([[r, c] for r in range(side) for c in range(side)]) * tile
    keep = [np.flatnonzero(rng.random(len(offsets)) >= drop) for _ in range(n_slides)]
    source = np.concatenate([np.full(len(k), s) for s, k in enumerate(keep)])
    offset = np.concatenate([offsets[k] for k in keep])
    return TileGeometry.from_tiles(source, offset, (tile, tile), mpp, [f"s{s}" for s in range(n_slides)])


def brute_near(geo: TileGeometry, d_near: float) -> set:
    n = len(geo.source)
    i, j = np.triu_indices(n, 1)
    d = pair_distances(geo, i, j)
    return set(zip(i[d < d_near].tolist(), j[d < d_near].tolist()))


def test_near_pairs_are_exactly_the_close_ones():
    geo = grid(drop=0.3)
    got = {tuple(p) for p in near_pairs(geo.source, geo.centres_um, 50.0).tolist()}
    assert got == brute_near(geo, 50.0)
    # 32-um spacing: 4 neighbours at 32 um, 4 diagonal at 45 um, nothing else under 50 um.
    full = grid(n_slides=1, side=5)
    assert len(near_pairs(full.source, full.centres_um, 50.0)) == 2 * 5 * 4 + 2 * 4 * 4


@pytest.mark.parametrize("far_from", ["both", "same", "other"])
def test_sampled_distances_are_right(far_from):
    geo = grid(drop=0.2)
    pairs = sample_pairs(geo, n_near=500, n_far=500, d_near=50, d_far=200, far_from=far_from, seed=1)
    near, far = pairs.y == 0, pairs.y == 1
    assert near.sum() == far.sum() == 500 and len(pairs) == 1000
    assert np.all(pairs.distance_um[near] < 50) and np.all(pairs.i[near] != pairs.j[near])
    assert np.all(pairs.distance_um == pair_distances(geo, pairs.i, pairs.j))
    same = geo.source[pairs.i[far]] == geo.source[pairs.j[far]]
    assert np.all(pairs.distance_um[far][same] >= 200)
    if far_from == "same":
        assert same.all()
    elif far_from == "other":
        assert not same.any()
    else:  # most far pairs join two slides (2/3 of the partners are on other slides)
        assert 0.55 < (~same).mean() < 0.85 and same.any()


def test_far_pairs_are_uniform_over_all_far_pairs():
    # One row of 6 tiles 32 um apart; at least 96 um apart: (0,3) (0,4) (0,5) (1,4) (1,5) (2,5).
    geo = TileGeometry.from_tiles(np.zeros(6, int), np.array([[0, 64 * c] for c in range(6)]), (64, 64), 0.5, ["a"])
    sampler = PairSampler(geo, d_near=40, d_far=96, far_from="same", min_pairs=1)
    assert sampler.n_far == 6 and len(sampler.near) == 5
    pairs = sampler.sample(1, 30000, np.random.default_rng(0))
    far = np.sort(np.stack([pairs.i[1:], pairs.j[1:]], 1), 1)
    kinds, counts = np.unique(far, axis=0, return_counts=True)
    assert kinds.tolist() == [[0, 3], [0, 4], [0, 5], [1, 4], [1, 5], [2, 5]]
    assert np.all(np.abs(counts / counts.sum() - 1 / 6) < 0.015)


def test_seeded_and_limited_to_the_subset():
    geo = grid()
    a = sample_pairs(geo, 100, 100, 50, 200, seed=3)
    b = sample_pairs(geo, 100, 100, 50, 200, seed=3)
    c = sample_pairs(geo, 100, 100, 50, 200, seed=4)
    assert np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j)
    assert not np.array_equal(a.i, c.i)
    subset = np.flatnonzero(geo.source != 1)
    p = sample_pairs(geo, 200, 200, 50, 200, subset=subset)
    assert np.isin(p.i, subset).all() and np.isin(p.j, subset).all()


def test_too_few_pairs_say_which_distance_to_change():
    geo = grid(n_slides=1, side=4)  # 4x4 tiles, 32 um apart: at most 96*sqrt(2) = 136 um
    with pytest.raises(DataError, match=r"too few near pairs: 0 pairs of tiles closer than 20 um .* --d-near"):
        sample_pairs(geo, 10, 10, d_near=20, d_far=100)
    with pytest.raises(DataError, match=r"too few far pairs: 0 pairs 150 um or more apart on one slide .* --d-far"):
        sample_pairs(geo, 10, 10, d_near=50, d_far=150, far_from="same")
    with pytest.raises(DataError, match="too few far pairs: 0 pairs .* on two slides"):
        sample_pairs(geo, 10, 10, d_near=50, d_far=100, far_from="other")


def test_held_out_split_is_deterministic():
    names = [f"s{i}" for i in range(8)]
    held = split_slides(names, 0.25, seed=0)
    assert len(held) == 2 and held == split_slides(list(reversed(names)), 0.25, seed=0)
    assert split_slides(names[:2], 0.25) and len(split_slides(names[:2], 0.25)) == 1
    with pytest.raises(ConfigError, match="leaves none"):
        split_slides(["only"], 0.5)
