"""Where tiles lie: images made of tiles, tile centres on slides, near pairs, the held-out slide split.

Arrays in, arrays out. :class:`TiledImage` is an image and the tiles that
cover it (a store's source image, or a picture cut for live prediction);
:func:`plan_tiles` places them, the same way for the folder reader and for
live prediction, so cached and live tiles coincide.
Pair sampling (:mod:`embedcache.train.pairs`) and
retrieval (:mod:`embedcache.metrics.retrieval`) share these; a store gives
its own with :meth:`embedcache.store.reader.Store.geometry`, a slide
dataset with :meth:`embedcache.datasets.slides.SlideDataset.geometry`.

>>> geo = TileGeometry.from_tiles([0, 0, 1], [[0, 0], [0, 256], [0, 0]], (256, 256), 0.5, ["a", "b"])
>>> geo.centres_um.tolist()
[[64.0, 64.0], [64.0, 192.0], [64.0, 64.0]]
>>> near_pairs(geo.source, geo.centres_um, 200.0).tolist()
[[0, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcache.errors import ConfigError


@dataclass
class TiledImage:
    """One image and the tiles covering it.

    Attributes
    ----------
    name : str
    shape : (int, int)
        Image height and width in pixels.
    tiles : list of ((row, col), key)
        Top-left corner of each tile in the image, and what identifies the
        tile: a store tile id, or the tile's pixels.
    tissue : str or None
    """

    name: str
    shape: tuple[int, int]
    tiles: list
    tissue: str | None = None


def plan_tiles(shape: tuple[int, int], tile: tuple[int, int], overlap: int = 0) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering an image, ``overlap`` px apart from their neighbours.

    >>> plan_tiles((300, 200), (256, 256), overlap=64)
    [(0, 0), (192, 0)]
    """
    if not 0 <= overlap < min(tile):
        raise ConfigError(f"overlap must lie in 0..{min(tile) - 1} px for {tile[0]}x{tile[1]} tiles, got {overlap}")

    def starts(n, t):
        step = t - overlap
        return list(range(0, max(n - overlap, 1), step)) if n > t else [0]

    return [(r, c) for r in starts(shape[0], tile[0]) for c in starts(shape[1], tile[1])]


@dataclass(frozen=True)
class Region:
    """A block of a whole slide processed at once, for nuclei that are kept exactly once.

    Attributes
    ----------
    index : int
        Position in the plan (row-major), the region's name in progress records.
    core : (r0, c0, r1, c1)
        Half-open box of the slide (pixels at the working resolution) whose
        nuclei this region keeps: the cores of a plan tile the slide without
        overlap, so a nucleus (by its centroid) belongs to exactly one.
    read : (r0, c0, r1, c1)
        The core grown by the margin on every side and clipped to the slide:
        what is read, encoded and post-processed, so that a nucleus kept by
        the core lies whole inside it.
    """

    index: int
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    def owns(self, centroids) -> np.ndarray:
        """Which ``(n, 2)`` centroids (row, col in slide pixels) lie in the core: ``(n,) bool``."""
        c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
        r0, c0, r1, c1 = self.core
        return (c[:, 0] >= r0) & (c[:, 0] < r1) & (c[:, 1] >= c0) & (c[:, 1] < c1)


def plan_regions(shape: tuple[int, int], size: int, margin: int) -> list[Region]:
    """Regions of ``size`` x ``size`` px tiling a slide of ``shape``, each read with ``margin`` px around it.

    >>> [r.core for r in plan_regions((300, 500), 256, 32)]
    [(0, 0, 256, 256), (0, 256, 256, 500), (256, 0, 300, 256), (256, 256, 300, 500)]
    >>> plan_regions((300, 500), 256, 32)[1].read
    (0, 224, 288, 500)
    """
    if size < 1 or margin < 0:
        raise ConfigError(f"regions need a size >= 1 and a margin >= 0 px, got {size} and {margin}")
    h, w = (int(v) for v in shape)
    out = []
    for r0 in range(0, h, size):
        for c0 in range(0, w, size):
            r1, c1 = min(r0 + size, h), min(c0 + size, w)
            read = (max(0, r0 - margin), max(0, c0 - margin), min(h, r1 + margin), min(w, c1 + margin))
            out.append(Region(len(out), (r0, c0, r1, c1), read))
    return out


@dataclass(frozen=True)
class TileGeometry:
    """Where tiles lie: slide of each tile and its centre in micrometres.

    Attributes
    ----------
    source : (N,) ndarray of int
        Slide index of each tile.
    centres_um : (N, 2) ndarray of float
        Tile centre (row, col) in micrometres on its slide.
    slide_names : list of str
    mpp : float
        Microns per pixel of the tile offsets.
    """

    source: np.ndarray
    centres_um: np.ndarray
    slide_names: list[str]
    mpp: float

    @classmethod
    def from_tiles(cls, source, offset, tile_shape, mpp: float, slide_names) -> "TileGeometry":
        """From tile offsets ``(N, 2)`` (row, col) in pixels at ``mpp`` um/px and the tile shape."""
        centres = (np.asarray(offset, np.float64) + np.asarray(tile_shape, np.float64) / 2) * mpp
        return cls(np.asarray(source, np.int64), centres, list(slide_names), float(mpp))


def near_pairs(source: np.ndarray, centres_um: np.ndarray, d_near: float) -> np.ndarray:
    """Every pair of distinct tiles on the same slide with centres closer than ``d_near`` um.

    Returns
    -------
    (P, 2) ndarray of int
        Tile indices ``i < j``.
    """
    from scipy.spatial import cKDTree

    out = []
    for s in np.unique(source):
        members = np.flatnonzero(source == s)
        if len(members) < 2:
            continue
        pairs = cKDTree(centres_um[members]).query_pairs(np.nextafter(d_near, 0), output_type="ndarray")
        if len(pairs):
            out.append(members[pairs])
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def split_slides(names: list[str], holdout: float = 0.25, seed: int = 0) -> list[str]:
    """Slides held out from training, for retrieval queries: a seeded fraction, at least one.

    The same names, fraction and seed always give the same slides, so
    ``fit-ssl`` and ``retrieval`` agree without talking to each other.
    """
    if not names:
        return []
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must lie strictly between 0 and 1, got {holdout}")
    order = np.random.default_rng(seed).permutation(sorted(names))
    n = max(1, int(round(holdout * len(names))))
    if n >= len(names):
        raise ConfigError(f"holding out {holdout:.0%} of {len(names)} slide(s) leaves none to train or "
                          "compare with; use more slides or a smaller holdout")
    return sorted(order[:n].tolist())
