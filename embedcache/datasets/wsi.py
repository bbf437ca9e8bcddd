"""Whole-slide images: OpenSlide and pyramidal TIFF readers, microns per pixel, tissue detection.

1. **Reading.** ``.tif``/``.tiff`` go through tifffile (levels of a
   pyramidal TIFF, read lazily through its Zarr view); anything tifffile
   cannot decode, and every vendor format, goes through OpenSlide
   (``openslide-python`` with the ``openslide-bin`` wheel).
2. **Microns per pixel** of level 0 come from the slide (OpenSlide's
   ``openslide.mpp-x``; TIFF resolution tags or an Aperio ``MPP =`` entry).
3. **Tissue** is found on a low-resolution level (the coarsest level at
   most :data:`MASK_MPP` um/px): Otsu's threshold on HSV saturation,
   lightly smoothed (the threshold clipped to 0.04..0.1, so pale tissue, an
   all-tissue or an all-glass thumbnail still split sensibly); specks
   smaller than :data:`MIN_OBJECT_UM2` dropped, and holes smaller than
   :data:`MIN_HOLE_UM2` filled: pale tissue inside tissue (fat, weak
   staining) is tissue, at the price of counting small lumens as tissue too.

:class:`~embedcache.datasets.slides.SlideDataset` tiles slides with these.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from embedcache.datasets.base import to_uint8_rgb
from embedcache.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff")
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
SLIDE_SUFFIXES = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES
MASK_MPP = 8.0  # um/px: tissue is found on the coarsest level at most this coarse
MIN_OBJECT_UM2 = 5000.0  # tissue specks smaller than this (um^2) are dropped
MIN_HOLE_UM2 = 50000.0  # holes in tissue smaller than this (um^2, ~220 um across) are filled
SMOOTH_UM = 4.0  # saturation is smoothed over this (um, Gaussian sigma) before thresholding
SATURATION_CLIP = (0.04, 0.1)  # Otsu's saturation threshold is clipped to this range


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


def level_for(slide: Slide, mpp0: float, mpp: float, tolerance: float = 1e-3) -> int:
    """The coarsest level at least as fine as ``mpp`` um/px, give or take ``tolerance`` (a fraction; level 0
    when none is), for level-0 ``mpp0``."""
    fine = [lv for lv in range(len(slide.dims)) if mpp0 * slide.downsample(lv) <= mpp * (1 + tolerance)]
    return max(fine) if fine else 0


def slide_tissue(slide: Slide, mpp0: float) -> tuple[np.ndarray, int, float]:
    """Tissue of a slide found on its coarsest level at most :data:`MASK_MPP` um/px.

    Returns
    -------
    mask : (h, w) ndarray of bool
    level : int
        The level it was found on.
    mpp : float
        Microns per pixel of ``mask``.
    """
    level = level_for(slide, mpp0, MASK_MPP, tolerance=0)
    h, w = slide.dims[level]
    mpp = mpp0 * slide.downsample(level)
    return tissue_mask(slide.read(level, 0, 0, h, w), mpp), level, mpp


def working_shape(dims0: tuple[int, int], mpp0: float, mpp: float) -> tuple[int, int]:
    """``(height, width)`` in pixels at ``mpp`` of a slide whose level 0 is ``dims0`` px at ``mpp0``.

    >>> working_shape((1000, 600), 0.25, 0.5)
    (500, 300)
    """
    return int(dims0[0] * mpp0 / mpp), int(dims0[1] * mpp0 / mpp)


def read_scaled(slide: Slide, level: int, ratio: float, row: float, col: float, height: int,
                width: int) -> np.ndarray:
    """A box of ``(height, width)`` output pixels from ``(row, col)`` (output pixels), ``(h, w, 3)`` uint8.

    ``ratio`` is level pixels per output pixel: the box is read from
    ``level`` and resampled (Lanczos), or read as it is when the ratio is 1.
    Extraction's slide tiles and whole-slide prediction's regions both read
    through here, so they see the same pixels.
    """
    from PIL import Image

    r, c = row * ratio, col * ratio
    if abs(ratio - 1) < 1e-6:
        return slide.read(level, int(round(r)), int(round(c)), height, width)
    lh, lw = slide.dims[level]
    r0, c0 = max(0, int(np.floor(r)) - 1), max(0, int(np.floor(c)) - 1)
    r1, c1 = min(lh, int(np.ceil(r + height * ratio)) + 1), min(lw, int(np.ceil(c + width * ratio)) + 1)
    part = Image.fromarray(slide.read(level, r0, c0, r1 - r0, c1 - c0))
    box = (c - c0, r - r0, c - c0 + width * ratio, r - r0 + height * ratio)
    return np.asarray(part.resize((width, height), Image.Resampling.LANCZOS, box=box))


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
