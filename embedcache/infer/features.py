"""Where a tile's tokens come from for the decoder: a store (cached) or the encoder run live.

Both give ``features(keys) -> (tokens, pixels)``: tokens a list (one per
layer) of ``(n, C, h, w)`` float32 arrays, pixels ``(n, H, W, 3)`` uint8.
With test-time augmentation variants, tokens are ``(n, V, C, h, w)``: one
set per variant of the tile (cached, or the encoder run on each).
Live tokens are :meth:`embedcache.extract.job.Extraction.run_unit`, the
very computation that filled the store, rounded to the store's dtype; so
the same tiles give the same nuclei either way.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable

import numpy as np

from embedcache.config import ExtractConfig
from embedcache.errors import RunError
from embedcache.extract import Extraction
from embedcache.infer.tta import cached_variant_ids
from embedcache.store import quant, schema


def store_features(store, variants=()) -> Callable:
    """Cached features: ``keys`` are store tile ids; tokens of the identity, or of each of ``variants``.

    Raises
    ------
    DataError
        The store lacks some of ``variants``.
    """
    many = len(variants) > 1
    ids_v = cached_variant_ids(store, tuple(variants)) if many else [0]

    def features(keys):
        ids = np.asarray(keys, dtype=np.int64)
        order = np.argsort(ids)
        back = np.argsort(order)
        ids = ids[order].tolist()
        if many:
            tokens = [np.stack([store.tokens(layer, ids, v) for v in ids_v], axis=1)[back] for layer in store.layers]
        else:
            tokens = [store.tokens(layer, ids, 0)[back] for layer in store.layers]
        return tokens, store.images(ids)[back]

    return features


class LiveFeatures:
    """The run's encoder, rebuilt as the store's extraction had it; ``keys`` are tiles' pixels.

    Raises
    ------
    RunError
        The encoder built here differs from the one the run was trained on
        (other weights, layers or token shapes).
    """

    def __init__(self, run, device: str = "cpu", batch_size: int = 8, variants=()):
        known = {f.name for f in fields(ExtractConfig)}
        cfg = {k: v for k, v in run.store.get("extract_config", {}).items() if k in known}
        self.many = len(variants) > 1
        names = ",".join(v.name for v in variants) if self.many else "none"
        cfg.update(variants=names, device=device, loader_workers=0, batch_size=batch_size)
        self.extraction = Extraction(ExtractConfig(**cfg), tuple(run.store["tile_shape"]))
        self.layers = [lay.name for lay in self.extraction.layouts]
        shapes = {lay.name: list(lay.shape) for lay in self.extraction.layouts}
        if self.layers != run.store["layers"] or shapes != run.store["shapes"]:
            raise RunError(f"{run.path}: the encoder rebuilt for live prediction taps {shapes}, the run was "
                           f"trained on {run.store['shapes']}")
        sha = self.extraction.encoder.weights_sha256
        if sha != run.store["weights_sha256"]:
            trained = run.store["weights_sha256"][:12]
            raise RunError(f"{run.path}: the run was trained on features of weights {trained}…, but the encoder "
                           f"loads {sha[:12]}… here ({self.extraction.encoder.weights}); "
                           "give the same weights (extract --weights) or predict from a store")

    def __call__(self, keys):
        pixels = np.stack(keys)
        arrays = self.extraction.run_unit(pixels)
        pick = slice(None) if self.many else 0
        scales = lambda layer: (arrays[schema.scales_path(layer)][:, pick]  # noqa: E731
                                if schema.scales_path(layer) in arrays else None)
        return [quant.to_float(arrays[schema.tokens_path(layer)][:, pick], scales(layer))
                for layer in self.layers], pixels
