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


class SlideFeatures:
    """Tokens of a whole slide's tiles: from a store of that slide where it holds the tile, else live.

    ``keys`` are ``((row, col), pixels)``: a tile's top-left corner on the
    slide, in pixels at the run's resolution, and its pixels. A store serves
    a slide when it was extracted from the slides layout at the same
    microns per pixel, tile size and overlap (``extract --overlap``, the
    grid ``predict --slides`` cuts), from a slide of that name, size and
    resolution; tiles it skipped (too little tissue) are encoded live, so
    the nuclei are those of an all-live run. With test-time augmentation
    (``variants``), the store's cached variants are read (it must hold
    them) and ``live`` encodes every variant. Pixels are the same either
    way when no resampling is needed (a slide level at the run's resolution);
    otherwise they agree up to the resampling of a tile against a region.

    Raises
    ------
    RunError
        The store's features are not those the run was trained on.
    DataError
        The store is not of slides, or of another geometry; or (:meth:`start`)
        it holds a slide of this name that is not this slide.
    """

    def __init__(self, live: LiveFeatures, store=None, *, run=None, work_mpp: float = 0.0, overlap: int = 0,
                 variants=()):
        self.live, self.store = live, store
        self.index: dict[tuple[int, int], int] = {}
        self.cached = self.computed = 0
        self.many = len(variants) > 1  # test-time augmentation: tokens (n, V, C, h, w), as ``live`` gives them
        if store is None:
            return
        self.variant_ids = cached_variant_ids(store, tuple(variants)) if self.many else [0]
        from embedcache.errors import DataError
        from embedcache.train.checkpoint import check_features

        check_features(run.store, store, run.path)
        if store.dataset_layout != "slides":
            raise DataError(f"{store.path} was extracted from the {store.dataset_layout} layout; predict --slides "
                            "reads a store of the same slides (extract --format slides)")
        if store.tile_mpp is None or abs(store.tile_mpp - work_mpp) > 1e-6 * work_mpp:
            raise DataError(f"{store.path} holds tiles at {store.tile_mpp} um/px, the run predicts at {work_mpp:g}; "
                            f"extract the slides with --tile-mpp {work_mpp:g}")
        if store.tile_overlap != overlap:
            raise DataError(f"{store.path}: its tiles overlap by {store.tile_overlap} px, prediction cuts them "
                            f"{overlap} px apart; extract with --overlap {overlap} or predict with --overlap "
                            f"{store.tile_overlap}")

    def start(self, name: str, dims0: tuple[int, int], mpp0: float) -> int:
        """Serve slide ``name`` next (counts of cached and encoded tiles start again); the number of its tiles the
        store holds (0 without a store or the slide)."""
        from embedcache.errors import DataError

        self.index = {}
        self.cached = self.computed = 0
        if self.store is None:
            return 0
        slides = {s["name"]: s for s in self.store.provenance.dataset.get("slides", [])}
        if name not in slides:
            return 0
        rec = slides[name]
        if tuple(rec["dims"]) != tuple(dims0) or abs(rec["mpp"] - mpp0) > 1e-6 * mpp0:
            raise DataError(f"{self.store.path} holds a slide {name} of {rec['dims']} px at {rec['mpp']:g} um/px, "
                            f"not this one ({list(dims0)} px at {mpp0:g} um/px); predict without --store")
        code = list(self.store.source_names).index(name)
        info = self.store.tile_info()
        ids = np.flatnonzero(np.asarray(info["source"]) == code)
        offsets = np.asarray(info["offset"])[ids]
        self.index = {(int(r), int(c)): int(i) for (r, c), i in zip(offsets, ids)}
        return len(self.index)

    def __call__(self, keys):
        pixels = np.stack([px for _, px in keys])
        hit = [self.index.get(tuple(pos)) for pos, _ in keys]
        have = [k for k, i in enumerate(hit) if i is not None]
        miss = [k for k, i in enumerate(hit) if i is None]
        self.cached += len(have)
        self.computed += len(miss)
        if not have:
            return self.live(list(pixels))[0], pixels
        order = sorted(have, key=lambda k: hit[k])
        ids = [hit[k] for k in order]
        cached = [np.stack([self.store.tokens(layer, ids, v) for v in self.variant_ids], axis=1) if self.many
                  else self.store.tokens(layer, ids, 0) for layer in self.store.layers]
        live = self.live(list(pixels[miss]))[0] if miss else None
        tokens = []
        for j, c in enumerate(cached):
            out = np.empty((len(keys), *c.shape[1:]), np.float32)
            out[order] = c
            if miss:
                out[miss] = live[j]
            tokens.append(out)
        return tokens, pixels
