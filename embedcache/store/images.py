"""A store's tiles put back together into the source images they were cut from, with their labels.

Stores of large images hold a grid of tiles without overlap: each source
image (a folder image, or one tile of a PanNuke/CoNIC stack) is a
:class:`~embedcache.geometry.TiledImage` whose keys are store tile ids.
Prediction, scoring and the report read held-out images through here.
"""

from __future__ import annotations

import numpy as np

from embedcache.datasets import LabelSet
from embedcache.datasets.base import stack_name
from embedcache.geometry import TiledImage

WHITE = 255  # padding past an image's edge, as the folder reader pads


def source_images(store, tiles=None) -> list[TiledImage]:
    """One image per source image holding any of ``tiles`` (all tiles when None), in source order."""
    info = store.tile_info()
    names = store.source_names
    tissue = store.tissue
    chosen = np.arange(store.n_tiles) if tiles is None else np.asarray(tiles, dtype=np.int64)
    out = []
    if store.tiles_are_images:  # patches of a stack: each its own image (CoNIC patches share a source image)
        for i in np.unique(chosen).tolist():
            shape = tuple(int(v) for v in info["valid"][i])
            out.append(TiledImage(stack_name(i), shape, [((0, 0), int(i))], tissue[i] if tissue else None))
        return out
    for src in sorted(set(info["source"][chosen].tolist())):
        ids = np.flatnonzero(info["source"] == src)
        ends = info["offset"][ids] + info["valid"][ids]
        shape = (int(ends[:, 0].max()), int(ends[:, 1].max()))
        name = names[src] if src < len(names) else stack_name(int(ids[0]))
        out.append(TiledImage(name, shape, [(tuple(int(v) for v in info["offset"][i]), int(i)) for i in ids],
                              tissue[ids[0]] if tissue else None))
    return out


def image_pixels(store, image: TiledImage) -> np.ndarray:
    """The pixels of an image, ``(H, W, 3) uint8``, assembled from its tiles."""
    out = np.full((*image.shape, 3), WHITE, dtype=np.uint8)
    valid = store.tile_info()["valid"]
    for (r, c), tile in image.tiles:
        h, w = valid[tile]
        out[r:r + h, c:c + w] = store.images(tile)[:h, :w]
    return out


def image_truth(store, images: list[TiledImage]):
    """The labels of each image assembled from its tiles, as a :class:`~embedcache.datasets.LabelSet`."""

    insts, types = [], []
    valid = store.tile_info()["valid"]
    for image in images:
        inst = np.zeros(image.shape, dtype=np.int32)
        typ = np.zeros(image.shape, dtype=np.int32)
        for (r, c), tile in image.tiles:
            i, t = store.labels(tile)
            h, w = valid[tile]
            inst[r:r + h, c:c + w] = i[:h, :w]
            typ[r:r + h, c:c + w] = t[:h, :w]
        insts.append(inst)
        types.append(typ)
    layout = store.dataset_layout or "folder"
    has_types = any(t.any() for t in types)
    return LabelSet(layout if store.tiles_are_images else "folder", [j.name for j in images], insts,
                    types if has_types else None, [j.tissue or "" for j in images] if store.tissue else None,
                    dict(store.class_names) or None)


def image_groups(store, images: list[TiledImage]) -> list[str] | None:
    """The source image of each image when some share one (CoNIC patches of one Lizard image), else None.

    Statistics over images resample and permute whole sources with it
    (:mod:`embedcache.report.compare`).
    """
    info, names = store.tile_info(), store.source_names
    source = [int(info["source"][image.tiles[0][1]]) for image in images]
    if len(set(source)) == len(source):
        return None
    return [str(names[s]) if s < len(names) else str(s) for s in source]
