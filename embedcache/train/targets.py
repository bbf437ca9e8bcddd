"""Training targets from instance and type maps, computed once per tile.

Three maps per tile (the CISCA family of decoders):

``cls3``  ``(H, W) uint8``
    0 background, 1 nucleus body, 2 boundary: the pixels of a nucleus that
    lie within ``boundary_width`` pixels (chessboard) of *another* nucleus.
    Boundaries are only drawn where nuclei touch, so the body class cut
    along them separates touching nuclei.
``dist``  ``(D, H, W) float16``
    Directional distance maps, each running -1..+1 across each nucleus
    along one direction: the pixel's offset from the nucleus centroid
    projected on the direction, divided by the largest such offset on the
    same side of the centroid (HoVer-Net's normalisation). ``cisca`` (the
    default) has four directions: horizontal, vertical and the two
    diagonals; ``hovernet`` has horizontal and vertical only. 0 outside
    nuclei.
``types`` ``(H, W) uint8``
    Type id of every nucleus pixel, 0 for background.
``valid`` ``(H, W) bool``
    Pixels covered by the source image (tiles cut past an image's edge are
    padded; losses ignore the padding).

Targets of a dihedral variant are those of the identity moved by the same
geometry, with the distance channels permuted and negated: projecting on a
direction of the transformed tile is projecting on another (or the opposite)
direction of the original one. :func:`transform_targets` does that, so
targets are computed once per tile, not once per variant and epoch; the
tests check it equals recomputing from the transformed labels.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from embedcache.config import DIRECTIONS, TargetConfig
from embedcache.datasets.variants import Variant
from embedcache.errors import ConfigError

BACKGROUND, BODY, BOUNDARY = 0, 1, 2  # classes of the cls3 map


def boundary_mask(inst: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a nucleus within ``width`` px (chessboard) of another nucleus.

    Parameters
    ----------
    inst : (H, W) ndarray of int
        Instance ids, 0 = background.
    width : int

    Returns
    -------
    (H, W) ndarray of bool
    """
    if width == 0:
        return np.zeros(inst.shape, dtype=bool)
    size = 2 * width + 1
    fg = inst > 0
    higher = ndi.maximum_filter(inst, size=size, mode="nearest") != inst
    # Background must not count as "another nucleus": lift it above every id.
    lifted = np.where(fg, inst, np.iinfo(inst.dtype).max)
    lower = ndi.minimum_filter(lifted, size=size, mode="nearest") != inst
    return fg & (higher | lower)


def distance_maps(inst: np.ndarray, directions=DIRECTIONS["cisca"]) -> np.ndarray:
    """Directional distance maps, -1..+1 across every nucleus (module docstring).

    Parameters
    ----------
    inst : (H, W) ndarray of int
        Instance ids, 0 = background; ids need not be contiguous.
    directions : sequence of (d_row, d_col)

    Returns
    -------
    (D, H, W) ndarray of float32

    Examples
    --------
    >>> inst = np.zeros((5, 5), int); inst[1:4, 1:4] = 7
    >>> distance_maps(inst, [(0, 1)])[0, 2]
    array([ 0., -1.,  0.,  1.,  0.], dtype=float32)
    """
    inst = _objects_once(inst)
    out = np.zeros((len(directions), *inst.shape), dtype=np.float32)
    for k, sl in enumerate(ndi.find_objects(inst), 1):
        if sl is None:
            continue
        rr, cc = np.nonzero(inst[sl] == k)
        dr, dc = rr - rr.mean(), cc - cc.mean()
        rr, cc = rr + sl[0].start, cc + sl[1].start
        for d, (ur, uc) in enumerate(directions):
            p = dr * ur + dc * uc
            hi, lo = p.max(), -p.min()
            out[d, rr, cc] = np.where(p > 0, p / (hi if hi > 0 else 1), p / (lo if lo > 0 else 1))
    return out


def _objects_once(inst: np.ndarray) -> np.ndarray:
    """Relabel to 1..K so find_objects visits every nucleus once."""
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(inst, dtype=np.int32))[0]


def tile_targets(inst: np.ndarray, types: np.ndarray, config: TargetConfig = TargetConfig(),
                 valid: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """All targets of one tile.

    Parameters
    ----------
    inst, types : (H, W) ndarray of int
        Instance and type ids (0 = background).
    config : TargetConfig
    valid : (height, width), optional
        The part of the tile covered by its source image (the rest is padding).

    Returns
    -------
    dict
        ``cls3`` (H, W) uint8, ``dist`` (D, H, W) float16, ``types``
        (H, W) uint8, ``valid`` (H, W) bool.
    """
    inst = _objects_once(inst)
    cls3 = np.where(inst > 0, BODY, BACKGROUND).astype(np.uint8)
    cls3[boundary_mask(inst, config.boundary_width)] = BOUNDARY
    mask = np.ones(inst.shape, dtype=bool)
    if valid is not None:
        mask[:] = False
        mask[: int(valid[0]), : int(valid[1])] = True
    return {
        "cls3": cls3,
        "dist": distance_maps(inst, config.directions).astype(np.float16),
        "types": np.where(inst > 0, types, 0).astype(np.uint8),
        "valid": mask,
    }


def channel_map(variant: Variant, directions) -> list[tuple[int, int]]:
    """For each distance channel of a variant's frame: (source channel, sign).

    Read off the variant itself by moving a 3x3 field of (row, col) offsets,
    so it holds for any dihedral transform the variant module defines.
    Remembered per (variant, directions): the training loader asks for it
    once per sample, and working it out costs more than moving the maps.
    """
    return list(_channel_map(variant, tuple(tuple(np.asarray(u).tolist()) for u in directions)))


@functools.lru_cache(maxsize=256)
def _channel_map(variant: Variant, directions: tuple) -> tuple[tuple[int, int], ...]:
    r, c = np.mgrid[-1:2, -1:2]
    moved = variant.apply(np.stack([r, c], axis=-1), spatial=(0, 1), image=False)
    # Original offset of the pixels one row down and one column right, in the new frame.
    a = np.stack([moved[2, 1], moved[1, 2]], axis=1)  # columns: images of e_row, e_col
    dirs = [np.asarray(u) for u in directions]
    out = []
    for u in dirs:
        w = a @ u
        for j, v in enumerate(dirs):
            if np.array_equal(w, v):
                out.append((j, 1))
                break
            if np.array_equal(w, -v):
                out.append((j, -1))
                break
        else:
            raise ConfigError(f"distance directions {list(directions)} are not closed under variant "
                              f"{variant.name}; use the cisca or hovernet set")
    return tuple(out)


def transform_targets(targets: dict[str, np.ndarray], variant: Variant, directions) -> dict[str, np.ndarray]:
    """Targets of a tile seen through a variant's geometry (module docstring).

    ``targets`` holds one tile's maps as returned by :func:`tile_targets`;
    moved distance maps come back as float32.
    """
    if variant.is_geometric_identity:
        return targets
    out = {k: variant.apply(v, spatial=(-2, -1), image=False) for k, v in targets.items()}
    # float32: numpy computes float16 in software, and this ran once per sample of every batch.
    dist = out["dist"].astype(np.float32)
    out["dist"] = np.stack([dist[j] if s > 0 else -dist[j] for j, s in channel_map(variant, directions)])
    return out


class TargetCache:
    """Targets of a set of tiles of a store, computed once and held in memory.

    Parameters
    ----------
    store : Store
        A store with labels.
    tiles : sequence of int
        Tiles to compute (others raise KeyError).
    config : TargetConfig
    progress : bool
        Show a progress bar.

    Each tile costs about 0.7 MB for 256x256 tiles with four distance maps.
    DataLoader workers forked after construction share the arrays.
    """

    def __init__(self, store, tiles, config: TargetConfig = TargetConfig(), progress: bool = False):
        from embedcache.progress import progress_bar

        self.config = config
        self.tiles = np.asarray(sorted(set(int(t) for t in tiles)), dtype=np.int64)
        self._row = {int(t): i for i, t in enumerate(self.tiles)}
        h, w = store.tile_shape
        n, d = len(self.tiles), len(config.directions)
        self.cls3 = np.zeros((n, h, w), dtype=np.uint8)
        self.dist = np.zeros((n, d, h, w), dtype=np.float16)
        self.types = np.zeros((n, h, w), dtype=np.uint8)
        self.valid = np.zeros((n, h, w), dtype=bool)
        valid = store.tile_info()["valid"]
        step = max(1, int(store.config.unit_tiles))
        with progress_bar(total=n, unit="tile", desc="targets", disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, n, step):
                idx = self.tiles[start:start + step]
                inst, types = store.labels(idx)
                for j, t in enumerate(idx):
                    tt = tile_targets(inst[j], types[j], config, valid[t])
                    row = start + j
                    self.cls3[row], self.dist[row], self.types[row], self.valid[row] = (
                        tt["cls3"], tt["dist"], tt["types"], tt["valid"])
                bar.update(len(idx))

    def __len__(self) -> int:
        return len(self.tiles)

    def get(self, tile: int, variant: Variant | None = None) -> dict[str, np.ndarray]:
        """Targets of ``tile``, moved by ``variant`` when given."""
        i = self._row[int(tile)]
        t = {"cls3": self.cls3[i], "dist": self.dist[i], "types": self.types[i], "valid": self.valid[i]}
        return transform_targets(t, variant, self.config.directions) if variant is not None else t

    def type_frequencies(self, n_classes: int) -> np.ndarray:
        """Pixel count of each type id 0..n_classes-1 over the valid pixels."""
        return np.bincount(self.types[self.valid].ravel(), minlength=n_classes)[:n_classes].astype(np.float64)
