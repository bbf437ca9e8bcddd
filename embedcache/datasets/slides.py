"""Whole-slide images as tiles: OpenSlide and pyramidal TIFF, tissue detection, GeoJSON labels.

A folder of slides (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.tif`` ...),
or one slide file, becomes a :class:`SlideDataset`:

1. **Reading.** ``.tif``/``.tiff`` go through tifffile (levels of a
   pyramidal TIFF, read lazily through its Zarr view); anything tifffile
   cannot decode, and every vendor format, goes through OpenSlide
   (``openslide-python`` with the ``openslide-bin`` wheel).
2. **Microns per pixel** of level 0 come from the slide (OpenSlide's
   ``openslide.mpp-x``; TIFF resolution tags or an Aperio ``MPP =`` entry).
   ``mpp=`` overrides them for every slide; a slide that records none and
   gets none is refused, asking for ``--mpp``.
3. **Tissue** is found on a low-resolution level (the coarsest level at
   most :data:`MASK_MPP` um/px): Otsu's threshold on HSV saturation,
   lightly smoothed (the threshold clipped to 0.04..0.1, so pale tissue, an
   all-tissue or an all-glass thumbnail still split sensibly); specks
   smaller than :data:`MIN_OBJECT_UM2` dropped, and holes smaller than
   :data:`MIN_HOLE_UM2` filled: pale tissue inside tissue (fat, weak
   staining) is tissue, at the price of counting small lumens as tissue too.
4. **Tiling** is a grid of ``tile_size`` px tiles at ``tile_mpp`` um/px from
   the slide's top-left corner; a tile is kept when tissue covers at least
   ``min_tissue`` of it. Pixels are read from the coarsest level at least as
   fine as ``tile_mpp`` and resampled (Lanczos) when the scales differ.
   ``tiles.offset`` is the (row, col) of each tile in pixels *at
   tile_mpp*, so positions in micrometres are ``offset * tile_mpp``
   (recorded as ``mpp`` in :meth:`SlideDataset.describe`, and so in the
   store's attributes).
5. **Labels** come from ``NAME.geojson`` (or ``NAME.json``) beside slide
   ``NAME``: a FeatureCollection of Polygon/MultiPolygon features in level-0
   pixel coordinates (x, y), as QuPath exports them, the label read from
   ``properties.classification.name``, ``classification``, ``label``,
   ``name`` or ``class``. A tile takes the label covering most of it when
   that covers at least half of it, else none (``""``); where features
   overlap, the later one wins. Labels end up as the dataset's ``tissue``
   names (one per tile).

The module also holds the tile geometry that later stages share (tile
centres in micrometres, near pairs, the held-out slide split).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from embedcache.datasets.base import TileDataset, TileIndex, to_uint8_rgb
from embedcache.errors import ConfigError, DataError

TIFF_SUFFIXES = (".tif", ".tiff")
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
SLIDE_SUFFIXES = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES
ANNOTATION_SUFFIXES = (".geojson", ".json")
MASK_MPP = 8.0  # um/px: tissue is found on the coarsest level at most this coarse
MIN_OBJECT_UM2 = 5000.0  # tissue specks smaller than this (um^2) are dropped
MIN_HOLE_UM2 = 50000.0  # holes in tissue smaller than this (um^2, ~220 um across) are filled
SMOOTH_UM = 4.0  # saturation is smoothed over this (um, Gaussian sigma) before thresholding
SATURATION_CLIP = (0.04, 0.1)  # Otsu's saturation threshold is clipped to this range
LABEL_CELLS = 8  # a tile's label is voted over LABEL_CELLS x LABEL_CELLS cells
LABEL_KEYS = ("classification", "label", "name", "class")


# ----------------------------------------------------------------------------
# One slide, two backends
# ----------------------------------------------------------------------------
class Slide:
    """A slide open for reading.

    Attributes
    ----------
    path : Path
    name : str
        File stem.
    dims : list of (int, int)
        (height, width) of every level, level 0 first.
    mpp : float or None
        Microns per pixel of level 0 recorded in the file.
    """

    path: Path
    name: str
    dims: list[tuple[int, int]]
    mpp: float | None

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level``."""
        (h0, w0), (h, w) = self.dims[0], self.dims[level]
        return (h0 / h + w0 / w) / 2

    def read(self, level: int, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Pixels ``(height, width, 3)`` uint8 of ``level`` from (row, col) in that level's pixels."""
        raise NotImplementedError  # pragma: no cover - abstract

    def close(self):  # pragma: no cover - nothing to release by default
        pass


class TiffSlide(Slide):
    """A (pyramidal) TIFF through tifffile; levels read lazily through its Zarr view."""

    def __init__(self, path: Path):
        import tifffile

        self.path, self.name = path, path.stem
        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        levels = list(series.levels)
        shape = levels[0].shape
        if len(shape) != 3 or shape[-1] not in (3, 4) or levels[0].dtype != np.uint8:
            self._tif.close()
            raise ValueError(f"not an 8-bit RGB image (shape {shape}, dtype {levels[0].dtype})")
        self.dims = [tuple(int(s) for s in lev.shape[:2]) for lev in levels]
        self.mpp = _tiff_mpp(self._tif)
        self._levels = {}
        self.read(len(levels) - 1, 0, 0, 1, 1)  # fails now, on open, if the codec is missing

    def _level(self, level: int):
        import zarr

        if level not in self._levels:
            self._levels[level] = zarr.open_array(self._tif.series[0].aszarr(level=level), mode="r")
        return self._levels[level]

    def read(self, level, row, col, height, width):
        arr = np.asarray(self._level(level)[row:row + height, col:col + width])
        return to_uint8_rgb(arr, f"{self.path} level {level}")

    def close(self):
        self._tif.close()


class OpenSlideSlide(Slide):
    """Any format OpenSlide reads; transparent (unscanned) areas come back as white glass."""

    def __init__(self, path: Path):
        import openslide

        self.path, self.name = path, path.stem
        self._slide = openslide.OpenSlide(str(path))
        self.dims = [(int(h), int(w)) for w, h in self._slide.level_dimensions]
        mpp = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = _positive(mpp)

    def downsample(self, level):
        return float(self._slide.level_downsamples[level])

    def read(self, level, row, col, height, width):
        ds = self.downsample(level)
        rgba = np.asarray(self._slide.read_region((int(round(col * ds)), int(round(row * ds))), level,
                                                  (int(width), int(height))))
        alpha = rgba[..., 3:4].astype(np.float32) / 255
        return np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)

    def close(self):
        self._slide.close()


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and np.isfinite(v) else None


def _tiff_mpp(tif) -> float | None:
    """Level-0 microns per pixel from an Aperio description or the resolution tags."""
    page = tif.pages[0]
    found = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
    if found and _positive(found.group(1)):
        return float(found.group(1))
    unit = int(page.resolutionunit)
    xres = page.resolution[0]
    if unit not in (2, 3) or not xres or xres <= 1:  # 1 = no unit; (1, 1) is tifffile's default
        return None
    return (25400.0 if unit == 2 else 10000.0) / xres


def open_slide(path) -> Slide:
    """Open ``path`` with tifffile (``.tif``/``.tiff``) or OpenSlide.

    Raises
    ------
    DataError
        Naming the file and why it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: slide file not found")
    reasons = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            return TiffSlide(path)
        except Exception as exc:  # tifffile raises many types for a bad or exotic file
            reasons.append(f"tifffile: {_reason(exc)}")
    try:
        return OpenSlideSlide(path)
    except ImportError:
        reasons.append("OpenSlide: not installed (pip install openslide-python openslide-bin)")
    except Exception as exc:
        reasons.append(f"OpenSlide: {_reason(exc)}")
    raise DataError(f"{path}: cannot open slide ({'; '.join(reasons)})")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------
# Tissue and labels: arrays in, arrays out
# ----------------------------------------------------------------------------
def tissue_mask(rgb: np.ndarray, mpp: float, min_object_um2: float = MIN_OBJECT_UM2,
                min_hole_um2: float = MIN_HOLE_UM2) -> np.ndarray:
    """Tissue in a low-resolution RGB image.

    Parameters
    ----------
    rgb : (H, W, 3) ndarray of uint8
    mpp : float
        Microns per pixel of ``rgb`` (sets the smallest object kept).
    min_object_um2 : float
        Tissue objects smaller than this area are removed.
    min_hole_um2 : float
        Holes in tissue smaller than this area are filled.

    Returns
    -------
    (H, W) ndarray of bool

    Examples
    --------
    >>> rgb = np.full((64, 64, 3), 240, np.uint8); rgb[16:48, 16:48] = (200, 120, 180)
    >>> int(tissue_mask(rgb, mpp=8.0).sum())
    1024
    """
    from scipy import ndimage as ndi
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    sat = ndi.gaussian_filter(rgb2hsv(rgb)[..., 1], SMOOTH_UM / mpp)
    lo, hi = SATURATION_CLIP
    if sat.max() <= lo:
        return np.zeros(sat.shape, bool)
    threshold = float(np.clip(threshold_otsu(sat), lo, hi)) if np.ptp(sat) > 0 else lo
    mask = _drop_small(sat > threshold, int(round(min_object_um2 / mpp ** 2)))
    return ~_drop_small(~mask, int(round(min_hole_um2 / mpp ** 2)))  # fill small holes


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_px`` pixels."""
    from scipy import ndimage as ndi

    if min_px <= 1 or not mask.any():
        return mask
    lab, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def box_fractions(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: float) -> np.ndarray:
    """Fraction of ``mask`` inside each square box, ``(n,) ndarray of float``.

    Boxes start at (rows, cols) (floats, in mask pixels) and have side
    ``size`` mask pixels; edges round to the nearest pixel (at least one).
    """
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, 0), 1)
    r0 = np.clip(np.rint(rows).astype(np.int64), 0, mask.shape[0] - 1)
    c0 = np.clip(np.rint(cols).astype(np.int64), 0, mask.shape[1] - 1)
    r1 = np.clip(np.maximum(np.rint(rows + size).astype(np.int64), r0 + 1), 1, mask.shape[0])
    c1 = np.clip(np.maximum(np.rint(cols + size).astype(np.int64), c0 + 1), 1, mask.shape[1])
    inside = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    return inside / ((r1 - r0) * (c1 - c0))


def read_geojson(path) -> list[tuple[str, list[np.ndarray]]]:
    """Labelled polygons of a GeoJSON file.

    Returns
    -------
    list of (label, rings)
        One entry per polygon (MultiPolygons are split); ``rings`` is a list
        of ``(K, 2)`` float arrays of (x, y) level-0 pixels, outer ring
        first, then holes. Features without a label or polygon are skipped.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable GeoJSON ({exc})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        raise DataError(f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of features")
    out = []
    for k, feat in enumerate(features):
        if not isinstance(feat, dict):
            raise DataError(f"{path}: feature {k} is not an object")
        label = _feature_label(feat.get("properties") or {})
        geom = feat.get("geometry") or {}
        if not label or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        polys = geom.get("coordinates") or []
        for poly in (polys if geom["type"] == "MultiPolygon" else [polys]):
            try:
                rings = [np.asarray(r, dtype=np.float64)[:, :2] for r in poly]
            except (ValueError, IndexError, TypeError):
                raise DataError(f"{path}: feature {k} ({label}) has malformed coordinates") from None
            if rings and all(r.ndim == 2 and len(r) >= 3 for r in rings):
                out.append((label, rings))
    return out


def _feature_label(props: dict) -> str:
    for key in LABEL_KEYS:
        value = props.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def polygon_raster(shape: tuple[int, int], polygons, scale: float) -> tuple[np.ndarray, list[str]]:
    """Rasterise labelled polygons; later polygons paint over earlier ones.

    Parameters
    ----------
    shape : (int, int)
        Raster (rows, cols).
    polygons : list of (label, rings)
        As :func:`read_geojson` gives them.
    scale : float
        Raster pixels per polygon coordinate unit.

    Returns
    -------
    codes : (rows, cols) ndarray of int16
        0 = no label, k = ``names[k - 1]``.
    names : list of str
    """
    from PIL import Image, ImageDraw

    names = sorted({label for label, _ in polygons})
    raster = np.zeros(shape, np.int16)
    for label, rings in polygons:
        im = Image.new("L", (shape[1], shape[0]), 0)
        draw = ImageDraw.Draw(im)
        for k, ring in enumerate(rings):
            pts = [tuple(p) for p in (ring * scale).tolist()]
            draw.polygon(pts, fill=0 if k else 1)  # holes are cleared
        raster[np.asarray(im, dtype=bool)] = names.index(label) + 1
    return raster, names


def tile_labels(polygons, rows: np.ndarray, cols: np.ndarray, tile: int, scale: float) -> list[str]:
    """Label of each tile: the one covering most of it if it covers at least half.

    Parameters
    ----------
    polygons : list of (label, rings)
        In level-0 pixels.
    rows, cols : (n,) ndarray of int
        Tile offsets in tile pixels (at tile_mpp).
    tile : int
        Tile side in tile pixels.
    scale : float
        Tile pixels per level-0 pixel (``mpp0 / tile_mpp``).
    """
    if not len(rows):
        return []
    cells = LABEL_CELLS / tile  # raster cells per tile pixel
    shape = (int(np.ceil((rows.max() + tile) * cells)), int(np.ceil((cols.max() + tile) * cells)))
    raster, names = polygon_raster(shape, polygons, scale * cells)
    labels = []
    for r, c in zip(rows, cols):
        r0, c0 = int(round(r * cells)), int(round(c * cells))
        counts = np.bincount(raster[r0:r0 + LABEL_CELLS, c0:c0 + LABEL_CELLS].ravel(), minlength=len(names) + 1)
        best = int(np.argmax(counts[1:])) + 1 if len(names) else 0
        labels.append(names[best - 1] if best and counts[best] * 2 >= LABEL_CELLS ** 2 else "")
    return labels


# ----------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------
def list_slides(path: Path) -> list[Path]:
    """Slide files of a folder (or the file itself), sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix.lower() in SLIDE_SUFFIXES else []
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)


def looks_like_slides(path: Path) -> bool:
    """Whether ``--format auto`` should read ``path`` as slides.

    A slide file; or a folder without ``*_inst.*`` label maps (those make
    the folder layout) holding a vendor slide format or a tiled multi-level
    TIFF.
    """
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in SLIDE_SUFFIXES
    if not path.is_dir() or any(path.glob("*_inst.*")):
        return False
    files = list_slides(path)
    if any(p.suffix.lower() in OPENSLIDE_SUFFIXES for p in files):
        return True
    for p in files[:3]:
        try:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                if tif.pages[0].is_tiled and len(tif.series[0].levels) > 1:
                    return True
        except Exception:
            continue
    return False


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
    """

    layout = "slides"

    def __init__(self, path, tile_size: int = 256, tile_mpp: float = 0.5, mpp: float | None = None,
                 min_tissue: float = 0.5):
        self.path = Path(path)
        if tile_size < 16:
            raise ConfigError(f"tile size {tile_size} is too small; use at least 16 px")
        if not tile_mpp > 0:
            raise ConfigError(f"tile_mpp must be positive, got {tile_mpp}")
        if mpp is not None and not mpp > 0:
            raise ConfigError(f"mpp must be positive, got {mpp}")
        if not 0 <= min_tissue <= 1:
            raise ConfigError(f"min_tissue must lie in 0..1, got {min_tissue}")
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
            levels = range(len(slide.dims))
            coarse = [lv for lv in levels if mpp * slide.downsample(lv) <= MASK_MPP]
            mask_level = max(coarse) if coarse else 0
            fine = [lv for lv in levels if mpp * slide.downsample(lv) <= self.tile_mpp * (1 + 1e-3)]
            read_level = max(fine) if fine else 0
            mh, mw = slide.dims[mask_level]
            mask_mpp = mpp * slide.downsample(mask_level)
            mask = tissue_mask(slide.read(mask_level, 0, 0, mh, mw), mask_mpp)
        finally:
            slide.close()
        h0, w0 = slide.dims[0]
        t = self.tile_shape[0]
        grid_h, grid_w = int(h0 * mpp / self.tile_mpp) // t, int(w0 * mpp / self.tile_mpp) // t
        rr, cc = np.meshgrid(np.arange(grid_h) * t, np.arange(grid_w) * t, indexing="ij")
        rows, cols = rr.ravel(), cc.ravel()
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

    # -- reading ----------------------------------------------------------
    def _read_plan(self, k: int) -> tuple[int, float]:
        """(level, level pixels per tile pixel) tiles of slide ``k`` are read at."""
        info = self.slides[k]
        level_mpp = info.mpp * self._slide(k).downsample(info.read_level)
        return info.read_level, self.tile_mpp / level_mpp

    def read_tile(self, i: int) -> np.ndarray:
        """Tile ``i`` as ``(H, W, 3)`` uint8, resampled to ``tile_mpp``."""
        from PIL import Image

        k = int(self.tiles.source[i])
        slide = self._slide(k)
        level, ratio = self._reader(k)
        t = self.tile_shape[0]
        r, c = (float(v) * ratio for v in self.tiles.offset[i])
        size = t * ratio
        if abs(ratio - 1) < 1e-6:
            return slide.read(level, int(round(r)), int(round(c)), t, t)
        lh, lw = slide.dims[level]
        r0, c0 = max(0, int(np.floor(r)) - 1), max(0, int(np.floor(c)) - 1)
        r1, c1 = min(lh, int(np.ceil(r + size)) + 1), min(lw, int(np.ceil(c + size)) + 1)
        region = Image.fromarray(slide.read(level, r0, c0, r1 - r0, c1 - c0))
        box = (c - c0, r - r0, c - c0 + size, r - r0 + size)
        return np.asarray(region.resize((t, t), Image.Resampling.LANCZOS, box=box))

    def _read_images(self, idx):
        if not len(idx):
            return np.zeros((0, *self.tile_shape, 3), np.uint8)
        return np.stack([self.read_tile(int(i)) for i in idx])

    def _read_labels(self, idx):  # pragma: no cover - has_labels is False
        raise DataError(f"{self.path}: slides have tile labels (tissue), not label maps")

    def _source_files(self):
        return [p for s in self.slides for p in (s.path, s.annotations) if p is not None]

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(super().fingerprint().encode())
        h.update(json.dumps([self.tile_mpp, self.mpp_override, self.min_tissue]).encode())
        h.update(np.ascontiguousarray(self.tiles.offset).tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {**super().describe(), "mpp": self.tile_mpp, "tile_mpp": self.tile_mpp,
                "min_tissue": self.min_tissue,
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


# ----------------------------------------------------------------------------
# Tile geometry shared by pair sampling and retrieval
# ----------------------------------------------------------------------------
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
        centres = (np.asarray(offset, np.float64) + np.asarray(tile_shape, np.float64) / 2) * mpp
        return cls(np.asarray(source, np.int64), centres, list(slide_names), float(mpp))

    @classmethod
    def from_dataset(cls, dataset: SlideDataset) -> "TileGeometry":
        ti = dataset.tiles
        return cls.from_tiles(ti.source, ti.offset, dataset.tile_shape, dataset.tile_mpp, ti.source_names)

    @classmethod
    def from_store(cls, store) -> "TileGeometry":
        """From a store extracted from slides (reads ``tiles/*`` and the recorded ``mpp``)."""
        ds = (store.attrs.get("provenance") or {}).get("dataset") or {}
        if ds.get("mpp") is None:
            raise DataError(f"{store.path}: the store does not record microns per pixel (extracted from "
                            f"{ds.get('layout', 'an unknown')} layout, not slides); tile distances need slides")
        info = store.tile_info()
        return cls.from_tiles(info["source"], info["offset"], store.tile_shape, ds["mpp"],
                              store.attrs.get("source_names") or [])


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
