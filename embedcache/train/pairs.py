"""Tile pairs from the spatial continuity of slides: near ones alike, far ones not.

Distances are between tile centres, in micrometres on the slide. Defaults
(:class:`~embedcache.config.SSLConfig`): ``d_near = 200`` um, so a 128-um
tile (256 px at 0.5 um/px) pairs with its 8 neighbours (128 and 181 um
away); ``d_far = 2000`` um on the same slide (``far_from="same"``; with
``"both"`` or ``"other"`` two tiles on two slides also count as far).

* **Near pairs** are every pair of distinct tiles on one slide closer than
  ``d_near``, enumerated exactly (k-d tree per slide); ``n`` of them are
  drawn without replacement (with replacement when fewer exist).
* **Far pairs** are drawn uniformly from every pair at least ``d_far`` apart
  on one slide and/or on two slides: a first tile with probability
  proportional to how many far partners it has, then one of those
  partners uniformly. Partners on the same slide are counted and picked
  exactly (the tiles within ``d_far`` are excluded by index), so the draw
  is exact however rare far pairs are.

Fewer than ``min_pairs`` distinct near or far pairs is a
:class:`~embedcache.errors.DataError` saying which distance to change.

>>> from embedcache.geometry import TileGeometry
>>> offsets = np.array([[r, c] for r in range(0, 1024, 256) for c in range(0, 1024, 256)] * 2)
>>> geo = TileGeometry.from_tiles(np.repeat([0, 1], 16), offsets, (256, 256), 0.5, ["a", "b"])
>>> pairs = sample_pairs(geo, n_near=8, n_far=8, d_near=200, d_far=400, seed=0)
>>> bool((pairs.distance_um[pairs.y == 0] < 200).all()), bool((pairs.distance_um[pairs.y == 1] >= 400).all())
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcache.geometry import TileGeometry, near_pairs
from embedcache.errors import DataError

MIN_PAIRS = 8  # fewer distinct pairs of a kind than this cannot train anything


@dataclass(frozen=True)
class Pairs:
    """Tile pairs and their kind.

    Attributes
    ----------
    i, j : (P,) ndarray of int
        Tile indices.
    y : (P,) ndarray of int
        0 for a near (similar) pair, 1 for a far (dissimilar) one.
    distance_um : (P,) ndarray of float
        Centre distance in micrometres; ``inf`` across slides.
    """

    i: np.ndarray
    j: np.ndarray
    y: np.ndarray
    distance_um: np.ndarray

    def __len__(self) -> int:
        return int(self.i.shape[0])


def pair_distances(geo: TileGeometry, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Centre distances in micrometres; ``inf`` for tiles on different slides."""
    d = np.linalg.norm(geo.centres_um[i] - geo.centres_um[j], axis=1)
    return np.where(geo.source[i] == geo.source[j], d, np.inf)


class PairSampler:
    """Draws near and far pairs among the tiles ``subset`` of ``geo`` (see module docstring).

    Parameters
    ----------
    geo : TileGeometry
    d_near, d_far : float
        Micrometres.
    far_from : {"both", "same", "other"}
    subset : (n,) ndarray of int, optional
        Tiles that may appear in pairs (e.g. those of the training slides).
    min_pairs : int
    """

    def __init__(self, geo: TileGeometry, d_near: float, d_far: float, far_from: str = "same",
                 subset: np.ndarray | None = None, min_pairs: int = MIN_PAIRS):
        from scipy.spatial import cKDTree

        self.geo, self.d_near, self.d_far, self.far_from = geo, float(d_near), float(d_far), far_from
        self.tiles = np.arange(len(geo.source)) if subset is None else np.asarray(subset, np.int64)
        src = geo.source[self.tiles]
        self.near = self.tiles[near_pairs(src, geo.centres_um[self.tiles], self.d_near)]
        order = np.argsort(src, kind="stable")
        self.tiles, src = self.tiles[order], src[order]  # grouped by slide
        slides, start, count = np.unique(src, return_index=True, return_counts=True)
        self._slide_of = np.searchsorted(slides, src)  # slide position of each local tile
        self._start, self._count = start, count
        n = len(self.tiles)
        self._radius = np.nextafter(self.d_far, 0)  # "at least d_far" apart = not within a hair less
        self._trees = []
        same = np.zeros(n, np.int64)
        if far_from in ("both", "same"):
            # Only counts are kept; the tiles close to a first tile are looked up when it is drawn.
            for a, c in zip(start, count):
                tree = cKDTree(geo.centres_um[self.tiles[a:a + c]])
                self._trees.append(tree)
                same[a:a + c] = c - tree.query_ball_point(tree.data, self._radius, return_length=True)
        other = n - count[self._slide_of] if far_from in ("both", "other") else np.zeros(n, np.int64)
        self._same, self._other = same, other
        self.n_far = int((same + other).sum()) // 2  # distinct unordered far pairs
        self.min_pairs = min_pairs

    def _check(self):
        dn = f"{self.d_near:g} um"
        if len(self.near) < self.min_pairs:
            raise DataError(f"too few near pairs: {len(self.near)} pairs of tiles closer than {dn} on one slide "
                            f"among {len(self.tiles)} tiles (need {self.min_pairs}); raise --d-near above the "
                            "tile spacing, or give more tissue")
        if self.n_far < self.min_pairs:
            where = {"both": "on one slide or on two", "same": "on one slide", "other": "on two slides"}
            raise DataError(f"too few far pairs: {self.n_far} pairs {self.d_far:g} um or more apart "
                            f"{where[self.far_from]} among {len(self.tiles)} tiles (need {self.min_pairs}); "
                            "lower --d-far, use --far-from both, or give more slides")

    def sample(self, n_near: int, n_far: int, rng: np.random.Generator) -> Pairs:
        """``n_near`` near pairs then ``n_far`` far pairs."""
        self._check()
        replace = n_near > len(self.near)
        pick = self.near[rng.choice(len(self.near), size=n_near, replace=replace)]
        fi, fj = self._far(n_far, rng)
        i = np.concatenate([pick[:, 0], fi]).astype(np.int64)
        j = np.concatenate([pick[:, 1], fj]).astype(np.int64)
        y = np.concatenate([np.zeros(n_near, np.int64), np.ones(n_far, np.int64)])
        return Pairs(i, j, y, pair_distances(self.geo, i, j))

    def _far(self, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        weight = (self._same + self._other).astype(np.float64)
        first = rng.choice(len(self.tiles), size=n, p=weight / weight.sum())
        same_side = rng.random(n) * weight[first] < self._same[first]
        second = np.empty(n, np.int64)
        for k, (a, use_same) in enumerate(zip(first, same_side)):
            s = self._slide_of[a]
            if use_same:  # the r-th tile of the slide that is not within d_far of a
                tree = self._trees[s]
                excl = np.sort(np.asarray(tree.query_ball_point(tree.data[a - self._start[s]], self._radius),
                                          np.int64))
                r = rng.integers(self._same[a])
                second[k] = self._start[s] + _nth_not_in(r, excl)
            else:  # uniform over the tiles of other slides
                r = rng.integers(self._other[a])
                second[k] = r if r < self._start[s] else r + self._count[s]
        return self.tiles[first], self.tiles[second]


def _nth_not_in(r: int, excluded: np.ndarray) -> int:
    """The ``r``-th non-negative integer (from 0) that is not in sorted ``excluded``."""
    # After skipping k excluded values below it, the answer is r + k where k counts e_m - m <= r.
    return int(r + np.searchsorted(excluded - np.arange(len(excluded)), r, side="right"))


def sample_pairs(geo: TileGeometry, n_near: int, n_far: int, d_near: float, d_far: float,
                 far_from: str = "same", seed: int = 0, subset: np.ndarray | None = None) -> Pairs:
    """Seeded near and far pairs (module docstring); one call of :class:`PairSampler`."""
    sampler = PairSampler(geo, d_near, d_far, far_from, subset)
    return sampler.sample(n_near, n_far, np.random.default_rng(seed))
