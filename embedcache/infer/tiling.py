"""Images cut into tiles for the decoder, and the tiles' maps stitched back into the image's.

Live images are cut into tiles overlapping by ``overlap`` pixels (padded
white past the edge, as the folder reader pads); each pixel takes the maps
of the tile in which it lies furthest from a tile border that is not the
image's. A nucleus closer than ``overlap / 2`` to a seam is whole in both
tiles around it, so it is neither cut nor counted twice: post-processing
runs once on the whole image. Stores of large images hold a grid of tiles
without overlap (:func:`embedcache.store.images.source_images`), which the
same stitcher assembles (``overlap=0`` live gives exactly the cached result).
"""

from __future__ import annotations

import numpy as np

from embedcache.datasets.folder import PAD_VALUE
from embedcache.geometry import TiledImage, plan_tiles


def cut_tile(image: np.ndarray, offset: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
    """The ``tile``-sized window of ``image`` at ``offset``, padded white past the edge."""
    out = np.full((*tile, 3), PAD_VALUE, dtype=np.uint8)
    r, c = offset
    part = image[r:r + tile[0], c:c + tile[1]]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def tile_image(name: str, image: np.ndarray, tile: tuple[int, int], overlap: int,
               tissue: str | None = None) -> TiledImage:
    """An image cut into overlapping tiles; each tile's key is its pixels."""
    tiles = [(o, cut_tile(image, o, tile)) for o in plan_tiles(image.shape[:2], tile, overlap)]
    return TiledImage(name, tuple(image.shape[:2]), tiles, tissue)


class Stitcher:
    """Maps of one image assembled from its tiles (module docstring)."""

    def __init__(self, shape: tuple[int, int], channels: int):
        self.shape = tuple(shape)
        self.maps = np.zeros((channels, *shape), dtype=np.float32)
        self.image = np.full((*shape, 3), PAD_VALUE, dtype=np.uint8)
        self._best = np.full(shape, -1.0, dtype=np.float32)

    def _weight(self, offset, tile) -> np.ndarray:
        (r, c), (th, tw), (h, w) = offset, tile, self.shape
        far = np.float32(1e9)
        rows, cols = np.arange(th, dtype=np.float32), np.arange(tw, dtype=np.float32)
        top = rows if r > 0 else np.full(th, far)
        bottom = th - 1 - rows if r + th < h else np.full(th, far)
        left = cols if c > 0 else np.full(tw, far)
        right = tw - 1 - cols if c + tw < w else np.full(tw, far)
        return np.minimum(np.minimum(top, bottom)[:, None], np.minimum(left, right)[None, :])

    def add(self, offset: tuple[int, int], maps: np.ndarray, image: np.ndarray) -> None:
        r, c = offset
        th, tw = maps.shape[1:]
        h, w = min(th, self.shape[0] - r), min(tw, self.shape[1] - c)
        weight = self._weight(offset, (th, tw))[:h, :w]
        win = weight > self._best[r:r + h, c:c + w]
        self._best[r:r + h, c:c + w][win] = weight[win]
        self.maps[:, r:r + h, c:c + w][:, win] = maps[:, :h, :w][:, win]
        self.image[r:r + h, c:c + w][win] = image[:h, :w][win]
