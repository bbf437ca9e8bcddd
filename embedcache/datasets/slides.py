"""Whole-slide images as tiles: a grid over the tissue at a fixed microns per pixel, GeoJSON labels.

A folder of slides (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.tif`` ...),
or one slide file, becomes a :class:`SlideDataset`. Slides are read by
:mod:`embedcache.datasets.wsi` (which also finds the tissue); ``mpp=``
overrides the level-0 microns per pixel of every slide, and a slide that
records none and gets none is refused, asking for ``--mpp``.

* **Tiling** is a grid of ``tile_size`` px tiles at ``tile_mpp`` um/px from
  the slide's top-left corner; a tile is kept when tissue covers at least
  ``min_tissue`` of it. By default tiles do not overlap and the grid holds
  whole tiles only (what the self-supervised method and tile probes want:
  neighbours share no pixels). With ``overlap`` > 0 the grid is
  :func:`embedcache.geometry.plan_tiles` over the slide at ``tile_mpp``,
  the very grid ``predict --slides`` cuts with that overlap, so a store of
  it serves whole-slide prediction from the cache; tiles past the slide's
  edge are padded white, as live prediction pads them. Pixels are read from the coarsest level at least as
  fine as ``tile_mpp`` and resampled (Lanczos) when the scales differ.
  ``tiles.offset`` is the (row, col) of each tile in pixels *at
  tile_mpp*, so positions in micrometres are ``offset * tile_mpp``
  (recorded as ``mpp`` in :meth:`SlideDataset.describe`, and so in the
  store's attributes).
* **Labels** come from the slide's GeoJSON (:mod:`embedcache.datasets.annotations`)
  and end up as the dataset's ``tissue`` names (one per tile).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from embedcache.datasets.annotations import ANNOTATION_SUFFIXES, read_geojson, tile_labels
from embedcache.datasets.base import TileDataset, TileIndex
from embedcache.datasets.folder import PAD_VALUE
from embedcache.datasets.registry import Layout, register
from embedcache.datasets.wsi import (
    SLIDE_SUFFIXES, Slide, box_fractions, level_for, list_slides, open_slide, read_scaled, slide_tissue,
    working_shape,
)
from embedcache.errors import ConfigError, DataError
from embedcache.geometry import TileGeometry, plan_tiles


@dataclass(frozen=True)
class SlideInfo:
    """What the dataset learnt about one slide."""

    name: str
    path: Path
    mpp: float  # level-0 microns per pixel actually used
    dims: tuple[int, int]  # level-0 (height, width)
    read_level: int  # level tiles are read from
    mask_level: int  # level tissue was found on
    tissue_fraction: float  # of the slide area
    annotations: Path | None


class SlideDataset(TileDataset):
    """Tiles of whole-slide images at a fixed microns-per-pixel (module docstring).

    Parameters
    ----------
    path : path
        A folder of slides, or one slide file.
    tile_size : int
        Tile side in pixels at ``tile_mpp``.
    tile_mpp : float
        Microns per pixel of the tiles.
    mpp : float, optional
        Level-0 microns per pixel for every slide, overriding the files.
    min_tissue : float
        Smallest tissue fraction of a kept tile (0..1).
    overlap : int
        Pixels by which neighbouring tiles overlap (0: a plain grid of whole tiles).
    """

    layout = "slides"

    def __init__(self, path, tile_size: int = 256, tile_mpp: float = 0.5, mpp: float | None = None,
                 min_tissue: float = 0.5, overlap: int = 0):
        self.path = Path(path)
        if tile_size < 16:
            raise ConfigError(f"tile size {tile_size} is too small; use at least 16 px")
        if not tile_mpp > 0:
            raise ConfigError(f"tile_mpp must be positive, got {tile_mpp}")
        if mpp is not None and not mpp > 0:
            raise ConfigError(f"mpp must be positive, got {mpp}")
        if not 0 <= min_tissue <= 1:
            raise ConfigError(f"min_tissue must lie in 0..1, got {min_tissue}")
        if not 0 <= overlap <= tile_size // 2:
            raise ConfigError(f"overlap must lie in 0..{tile_size // 2} px for {tile_size}-px tiles, got {overlap}")
        self.overlap = int(overlap)
        files = list_slides(self.path)
        if not files:
            raise DataError(f"{self.path}: no slides found ({', '.join(SLIDE_SUFFIXES)})")
        self.tile_shape = (tile_size, tile_size)
        self.tile_mpp, self.mpp_override, self.min_tissue = float(tile_mpp), mpp, float(min_tissue)
        self.has_labels, self.class_names, self.folds = False, None, None
        self._open: dict[int, Slide] = {}
        self.slides: list[SlideInfo] = []
        source, offset, tissue = [], [], []
        for k, f in enumerate(files):
            info, rows, cols, labels = self._tile_slide(f)
            self.slides.append(info)
            source += [k] * len(rows)
            offset += list(zip(rows.tolist(), cols.tolist()))
            tissue += labels
        if not source:
            raise DataError(f"{self.path}: no tissue found in {len(files)} slide(s) with at least "
                            f"{min_tissue:.0%} tissue per {tile_size}-px tile at {tile_mpp} um/px; "
                            "lower --min-tissue or check the slides")
        n = len(source)
        self.tiles = TileIndex(np.asarray(source, np.int64), np.asarray(offset, np.int64).reshape(n, 2),
                               np.tile(np.asarray(self.tile_shape, np.int64), (n, 1)),
                               [s.name for s in self.slides])
        self.tissue = tissue if any(s.annotations for s in self.slides) else None
        self._reader = lru_cache(maxsize=None)(self._read_plan)

    # -- tiling -----------------------------------------------------------
    def _slide(self, k: int) -> Slide:
        if k not in self._open:
            self._open[k] = open_slide(self.slides[k].path)
        return self._open[k]

    def _tile_slide(self, path: Path):
        slide = open_slide(path)
        try:
            mpp = self.mpp_override or slide.mpp
            if mpp is None:
                raise DataError(f"{path}: the slide does not record its microns per pixel; pass --mpp "
                                "(level-0 um/px, e.g. 0.25 at 40x, 0.5 at 20x)")
            read_level = level_for(slide, mpp, self.tile_mpp)
            mask, mask_level, mask_mpp = slide_tissue(slide, mpp)
        finally:
            slide.close()
        h0, w0 = slide.dims[0]
        t = self.tile_shape[0]
        rows, cols = self._grid(working_shape((h0, w0), mpp, self.tile_mpp))
        to_mask = self.tile_mpp / mask_mpp  # mask pixels per tile pixel
        frac = box_fractions(mask, rows * to_mask, cols * to_mask, t * to_mask) if rows.size else rows
        keep = frac >= max(self.min_tissue, 1e-9)
        rows, cols = rows[keep], cols[keep]
        notes = next((path.with_suffix(s) for s in ANNOTATION_SUFFIXES if path.with_suffix(s).is_file()), None)
        labels = [""] * len(rows)
        if notes is not None:
            labels = tile_labels(read_geojson(notes), rows, cols, t, mpp / self.tile_mpp)
        info = SlideInfo(path.stem, path, float(mpp), (h0, w0), read_level, mask_level, float(mask.mean()), notes)
        return info, rows, cols, labels

    def _grid(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the tiles' top-left corners over a slide of ``shape`` working pixels."""
        t = self.tile_shape[0]
        if self.overlap:
            corners = np.asarray(plan_tiles(shape, self.tile_shape, self.overlap), np.int64).reshape(-1, 2)
            return corners[:, 0], corners[:, 1]
        rr, cc = np.meshgrid(np.arange(shape[0] // t) * t, np.arange(shape[1] // t) * t, indexing="ij")
        return rr.ravel(), cc.ravel()

    # -- reading ----------------------------------------------------------
    def _read_plan(self, k: int) -> tuple[int, float]:
        """(level, level pixels per tile pixel) tiles of slide ``k`` are read at."""
        info = self.slides[k]
        level_mpp = info.mpp * self._slide(k).downsample(info.read_level)
        return info.read_level, self.tile_mpp / level_mpp

    def read_tile(self, i: int) -> np.ndarray:
        """Tile ``i`` as ``(H, W, 3)`` uint8, resampled to ``tile_mpp``; white past the slide's edge."""
        k = int(self.tiles.source[i])
        level, ratio = self._reader(k)
        t = self.tile_shape[0]
        r, c = (int(v) for v in self.tiles.offset[i])
        info = self.slides[k]
        h, w = working_shape(info.dims, info.mpp, self.tile_mpp)
        inside = (min(t, h - r), min(t, w - c))
        if inside == (t, t):
            return read_scaled(self._slide(k), level, ratio, r, c, t, t)
        out = np.full((t, t, 3), PAD_VALUE, np.uint8)
        out[:inside[0], :inside[1]] = read_scaled(self._slide(k), level, ratio, r, c, *inside)
        return out

    def _read_images(self, idx):
        if not len(idx):
            return np.zeros((0, *self.tile_shape, 3), np.uint8)
        return np.stack([self.read_tile(int(i)) for i in idx])

    def _read_labels(self, idx):  # pragma: no cover - has_labels is False
        raise DataError(f"{self.path}: slides have tile labels (tissue), not label maps")

    def _source_files(self):
        return [p for s in self.slides for p in (s.path, s.annotations) if p is not None]

    def _files_of_source(self):
        return [[p for p in (s.path, s.annotations) if p is not None] for s in self.slides]

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(super().fingerprint().encode())
        h.update(json.dumps([self.tile_mpp, self.mpp_override, self.min_tissue]).encode())
        if self.overlap:  # stores made before tiles could overlap keep their fingerprint
            h.update(f"overlap={self.overlap}".encode())
        h.update(np.ascontiguousarray(self.tiles.offset).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "mpp": self.tile_mpp, "tile_mpp": self.tile_mpp,
                "min_tissue": self.min_tissue, "overlap": self.overlap,
                "slides": [{"name": s.name, "mpp": s.mpp, "dims": list(s.dims), "read_level": s.read_level,
                            "tissue_fraction": round(s.tissue_fraction, 4),
                            "annotations": s.annotations.name if s.annotations else None} for s in self.slides]}

    # Open slide handles stay in the process that opened them (DataLoader workers reopen).
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}
        state.pop("_reader", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reader = lru_cache(maxsize=None)(self._read_plan)

    def close(self):
        for s in self._open.values():
            s.close()
        self._open.clear()

    def geometry(self):
        """Where the tiles lie on their slides (:class:`~embedcache.geometry.TileGeometry`)."""

        ti = self.tiles
        return TileGeometry.from_tiles(ti.source, ti.offset, self.tile_shape, self.tile_mpp, ti.source_names)


def _open_slides(path, tile_size: int = 256, tile_mpp: float = 0.5, mpp: float | None = None,
                 min_tissue: float = 0.5, overlap: int | None = None, **_) -> SlideDataset:
    return SlideDataset(path, tile_size=tile_size, tile_mpp=tile_mpp, mpp=mpp, min_tissue=min_tissue,
                        overlap=overlap or 0)


def _find_slides(path: Path) -> Path | None:
    from embedcache.datasets.wsi import looks_like_slides

    return Path(path) if looks_like_slides(path) else None


register(Layout(
    name="slides", title="Whole-slide images", find=_find_slides, open=_open_slides, has_labels=False,
    point_at="a slide file, or a folder of slides (.svs, .ndpi, .mrxs, .scn, tiled .tif), GeoJSON beside them",
    note="tiled over the tissue at --tile-mpp; labels from GeoJSON",
))
