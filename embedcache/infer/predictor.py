"""A trained decoder turning tiles' tokens and pixels into maps, and tiled images into nuclei.

Tiles of consecutive images share the decoder's batches; each image's
maps are stitched (:class:`~embedcache.infer.tiling.Stitcher`) and
post-processed once (:func:`embedcache.postprocess.instances_from_maps`).
With test-time augmentation a tile's maps are the mean over its variants
(:mod:`embedcache.infer.tta`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from embedcache.config import PostprocessConfig
from embedcache.errors import ConfigError
from embedcache.geometry import TiledImage
from embedcache.infer.tiling import Stitcher
from embedcache.infer.tta import to_identity
from embedcache.postprocess import instances_from_maps


class Predictor:
    """A decoder ready to turn tiles' tokens and pixels into maps, and images into nuclei.

    Parameters
    ----------
    model : NucleiDecoder
    directions : sequence of (d_row, d_col)
        Of the model's distance channels.
    batch_size : int
        Tiles per decoder pass.
    postprocess : PostprocessConfig
    tta : sequence of Variant, optional
        Test-time augmentation: features then carry one set of tokens per
        variant (``(n, V, C, h, w)``), and a tile's maps are the mean of the
        variants' maps moved back to the tile's frame.
    """

    def __init__(self, model, directions, batch_size: int = 8, postprocess: PostprocessConfig = PostprocessConfig(),
                 tta=()):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.directions = [tuple(d) for d in directions]
        self.batch_size = batch_size
        self.postprocess = postprocess
        self.device = next(model.parameters()).device
        self.tile_shape = tuple(model.tile_shape)
        self.n_types = model.n_types
        self.channels = 3 + model.n_dist + (model.n_types + 1 if model.n_types else 0)
        self.tta = tuple(tta)

    @torch.no_grad()
    def tile_maps(self, tokens: list[np.ndarray], images: np.ndarray) -> np.ndarray:
        """Maps of a batch of tiles, ``(n, channels, H, W) float32``: P(cls3), distances, P(type)."""
        was_training = self.model.training
        self.model.eval()
        out = self.model([torch.from_numpy(np.ascontiguousarray(t)).to(self.device) for t in tokens],
                         torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        self.model.train(was_training)
        parts = [out["cls3"].softmax(1), out["dist"]]
        if "types" in out:
            parts.append(out["types"].softmax(1))
        return torch.cat(parts, 1).float().cpu().numpy()

    def tta_maps(self, tokens: list[np.ndarray], images: np.ndarray) -> np.ndarray:
        """Maps of a batch of tiles averaged over :attr:`tta`; ``tokens`` per layer ``(n, V, C, h, w)``."""
        total = None
        for k, variant in enumerate(self.tta):
            maps = self.tile_maps([t[:, k] for t in tokens], variant.apply(images))
            maps = to_identity(maps, variant, self.model.n_dist, self.directions)
            total = maps if total is None else total + maps
        return total / len(self.tta)

    def nuclei(self, maps: np.ndarray) -> dict:
        """Post-process one image's stitched maps."""
        d = self.model.n_dist
        types = maps[3 + d:] if self.n_types else None
        return instances_from_maps(maps[:3], maps[3:3 + d], types, self.postprocess, self.directions)

    def run(self, images: Iterator[TiledImage], features: Callable) -> Iterator[tuple[TiledImage, dict, np.ndarray]]:
        """Predict every image: yields ``(image, nuclei, pixels)`` in the images' order.

        ``features(keys)`` gives ``(tokens, pixels)`` of a list of tile keys
        (:mod:`embedcache.infer.features`), with a variant axis when
        :attr:`tta` holds several variants.
        """
        for image, maps, pixels in self.stitched(images, features):
            yield image, self.nuclei(maps), pixels

    def stitched(self, images: Iterator[TiledImage], features: Callable
                 ) -> Iterator[tuple[TiledImage, np.ndarray, np.ndarray]]:
        """Every image's stitched maps ``(channels, H, W)`` and pixels, before post-processing (which a
        caller may run elsewhere, e.g. in worker processes beside the next image's forward)."""
        maps_of = self.tta_maps if len(self.tta) > 1 else self.tile_maps
        pending: list = []  # (entry, offset, key)
        queue: list = []  # entries in image order: [image, stitcher, tiles left]

        def flush():
            tokens, pixels = features([key for _, _, key in pending])
            for (entry, offset, _), m, px in zip(pending, maps_of(tokens, pixels), pixels):
                entry[1].add(offset, m, px)
                entry[2] -= 1
            pending.clear()

        def finished():
            while queue and queue[0][2] == 0:
                image, stitcher, _ = queue.pop(0)
                yield image, stitcher.maps, stitcher.image

        for image in images:
            entry = [image, Stitcher(image.shape, self.channels), len(image.tiles)]
            queue.append(entry)
            for offset, key in image.tiles:
                pending.append((entry, offset, key))
                if len(pending) == self.batch_size:
                    flush()
                    yield from finished()
        if pending:
            flush()
        yield from finished()
