"""Synthetic whole-slide images: pyramidal TIFF with microns-per-pixel, and GeoJSON outlines.

Each slide is white glass holding one or two pieces of tissue; inside the
tissue sit a few *tumour* regions, the rest is *normal*. Regions are large
(hundreds of micrometres) and their textures differ the way the real ones
do, so neighbouring tiles look alike and distant ones need not:

===========  =================================================================
region       look
===========  =================================================================
glass        near white, faint noise (no tissue)
normal       a patchwork (pieces of about 150 um) of three kinds: pink stroma
             with oriented fibres and sparse small nuclei; fat (pale cells
             with thin pink outlines); lymphoid (dense small dark nuclei)
tumour       dense large purple nuclei, lilac cytoplasm, little stroma
===========  =================================================================

Stain density varies over about 30 um (uneven sectioning), less than a
region: neighbouring tiles differ in it, tissue kinds do not.

Every slide gets its own staining (a seeded colour cast), so retrieval
across slides has to look past colour. The outlines are exact: the images
are rasterised from the same polygons that go into the GeoJSON (normal
tissue is the tissue outline with the tumours as holes).

>>> slide = make_slide((512, 512), seed=0)
>>> slide.image.shape, slide.image.dtype, sorted({label for label, _ in slide.regions})
((512, 512, 3), dtype('uint8'), ['normal', 'tumour'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage.measure import points_in_poly

GLASS = (242, 240, 244)
TUMOUR, NORMAL = "tumour", "normal"
NORMAL_KINDS = (0.5, 0.25, 0.25)  # stroma, fat, lymphoid: shares of normal tissue


@dataclass
class SyntheticSlide:
    """One synthetic slide at level 0.

    Attributes
    ----------
    image : (H, W, 3) ndarray of uint8
    mpp : float
        Microns per pixel of ``image``.
    regions : list of (str, list of (K, 2) ndarray of float)
        Label and rings (outer ring first, then holes) in (x, y) pixels.
    masks : dict of str to (H, W) ndarray of bool
        ``tissue`` and ``tumour`` as rasterised.
    """

    image: np.ndarray
    mpp: float
    regions: list
    masks: dict


def _blob(rng, cx: float, cy: float, radius: float, n: int = 72) -> np.ndarray:
    """A smooth star-shaped ring, ``(n, 2)`` (x, y), mean radius ``radius``."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0.02, 0.12) / (k / 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.stack([cx + radius * r * np.cos(theta), cy + radius * r * np.sin(theta)], axis=1)


def _mask(shape, ring: np.ndarray) -> np.ndarray:
    im = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(im).polygon([tuple(p) for p in ring.tolist()], fill=1)
    return np.asarray(im, dtype=bool)


def _layout(rng, shape, n_tissue: int, n_tumour: int):
    """Tissue rings and tumour rings, each tumour strictly inside one tissue piece."""
    h, w = shape
    tissue = []
    for k in range(n_tissue):
        # Pieces side by side along the longer axis, each within its own band.
        if w >= h:
            band = w / n_tissue
            cx, cy, radius = band * (k + 0.5), h / 2, 0.4 * min(band, h)
        else:
            band = h / n_tissue
            cx, cy, radius = w / 2, band * (k + 0.5), 0.4 * min(band, w)
        tissue.append(_blob(rng, cx + rng.uniform(-0.03, 0.03) * w, cy + rng.uniform(-0.03, 0.03) * h, radius))
    tumours: list[tuple[int, np.ndarray]] = []
    for _ in range(200):
        if len(tumours) == n_tumour:
            break
        piece = int(rng.integers(n_tissue))
        ring = tissue[piece]
        centre = ring.mean(0)
        spread = np.abs(ring - centre).max(0)
        radius = rng.uniform(0.22, 0.38) * spread.min()
        c = centre + rng.uniform(-0.45, 0.45, 2) * spread
        cand = _blob(rng, c[0], c[1], radius, n=48)
        inside = points_in_poly(cand, ring).all()
        apart = all(np.linalg.norm(cand.mean(0) - t.mean(0)) > 1.1 * (np.abs(cand - cand.mean(0)).max()
                                                                      + np.abs(t - t.mean(0)).max())
                    for _, t in tumours)
        if inside and apart:
            tumours.append((piece, cand))
    return tissue, tumours


def _nuclei(rng, shape, density: float, sigma: float, cut: float) -> np.ndarray:
    """Blob field in 0..1: random impulses blurred by ``sigma`` px and thresholded softly."""
    impulses = (rng.random(shape) < density).astype(np.float32)
    field = ndi.gaussian_filter(impulses, sigma) * (2 * np.pi * sigma ** 2)
    return np.clip((field - cut) / (1 - cut), 0, 1)


def _smooth(rng, shape, sigma: float, coarse: bool = False) -> np.ndarray:
    """Gaussian noise blurred by ``sigma`` px, unit spread; made at 1/8 resolution (it is smooth anyway).

    ``coarse`` returns the 1/8-resolution field itself.
    """
    h, w = shape
    field = ndi.gaussian_filter(rng.normal(size=(h // 8 + 2, w // 8 + 2)).astype(np.float32), sigma / 8)
    field /= field.std()
    return field if coarse else ndi.zoom(field, 8, order=1)[:h, :w]


def _fibres(rng, shape, wavelength: float) -> np.ndarray:
    """Wavy oriented streaks in 0..1."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    phase = (xx * np.cos(angle) + yy * np.sin(angle) + 8 * _smooth(rng, shape, 12)) * (2 * np.pi / wavelength)
    return (0.5 + 0.5 * np.sin(phase)) ** 3


def _membranes(rng, shape, radius: float) -> np.ndarray:
    """Thin outlines of packed round cells of about ``radius`` px (fat), in 0..1."""
    impulses = (rng.random(shape) < 1 / (np.pi * radius ** 2)).astype(np.float32)
    _, (iy, ix) = ndi.distance_transform_edt(impulses == 0, return_indices=True)
    seed_id = iy * shape[1] + ix
    edge = (seed_id != np.roll(seed_id, 1, 0)) | (seed_id != np.roll(seed_id, 1, 1))
    return ndi.gaussian_filter(edge.astype(np.float32), 0.8) * 2.5


def _patchwork(rng, shape, cell: float, weights) -> np.ndarray:
    """Kinds 0..len(weights)-1 over the slide in warped Voronoi cells about ``cell`` px across."""
    h, w = shape
    gh, gw = h // 8 + 2, w // 8 + 2
    n = max(2, int(round(gh * gw * 64 / cell ** 2)))
    seeds = rng.uniform(0, 1, (n, 2)) * (gh, gw)
    kinds = rng.choice(len(weights), size=n, p=np.asarray(weights) / np.sum(weights))
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    yy += 0.15 * cell / 8 * _smooth(rng, shape, cell / 3, coarse=True)
    xx += 0.15 * cell / 8 * _smooth(rng, shape, cell / 3, coarse=True)
    nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    return np.repeat(np.repeat(kinds[nearest], 8, 0), 8, 1)[:h, :w]


def _paint(base, colour, weight) -> np.ndarray:
    return base + weight[..., None] * (np.asarray(colour, np.float32) - base)


def make_slide(shape: tuple[int, int] = (1536, 1536), mpp: float = 0.5, seed: int = 0,
               n_tissue: int = 1, n_tumour: int = 2, unevenness: float = 0.2) -> SyntheticSlide:
    """One synthetic slide.

    Parameters
    ----------
    shape : (int, int)
        Height and width of level 0 in pixels.
    mpp : float
        Microns per pixel of level 0 (texture scales assume about 0.5).
    seed : int
    n_tissue : int
        Pieces of tissue on the glass.
    n_tumour : int
        Tumour regions (fewer when they do not fit).
    unevenness : float
        Spread (standard deviation) of the local stain density, which
        varies over about 30 um: neighbouring tiles differ in it, regions
        do not, so it is what a descriptor should learn to ignore.

    Returns
    -------
    SyntheticSlide
    """
    rng = np.random.default_rng(seed)
    tissue_rings, tumour_rings = _layout(rng, shape, n_tissue, n_tumour)
    tissue = np.zeros(shape, bool)
    for ring in tissue_rings:
        tissue |= _mask(shape, ring)
    tumour = np.zeros(shape, bool)
    for _, ring in tumour_rings:
        tumour |= _mask(shape, ring)

    cast = rng.uniform(0.88, 1.08, 3).astype(np.float32)  # this slide's staining
    noise = rng.normal(0, 1, (*shape, 1)).astype(np.float32)
    img = np.full((*shape, 3), GLASS, np.float32) + 2.5 * noise
    scale = 0.5 / mpp  # texture sizes below are in pixels at 0.5 um/px
    # Normal tissue: a patchwork of stroma, fat and lymphoid cells (about 150 um pieces).
    kind = _patchwork(rng, shape, 300 * scale, NORMAL_KINDS)
    stroma = _paint(np.full((*shape, 3), (236, 168, 200), np.float32), (196, 112, 160),
                    0.8 * _fibres(rng, shape, wavelength=14 * scale))
    stroma = _paint(stroma, (70, 40, 110), _nuclei(rng, shape, 0.0006 / scale ** 2, 2.2 * scale, 0.25))
    fat = _paint(np.full((*shape, 3), (222, 168, 200), np.float32), (196, 112, 160),
                 np.clip(_membranes(rng, shape, 22 * scale), 0, 1))
    lymph = _paint(np.full((*shape, 3), (222, 170, 205), np.float32), (52, 28, 96),
                   _nuclei(rng, shape, 0.012 / scale ** 2, 1.6 * scale, 0.3))
    normal = np.select([kind[..., None] == 0, kind[..., None] == 1], [stroma, fat], lymph)
    # Tumour: lilac cytoplasm, dense large nuclei.
    tum = _paint(np.full((*shape, 3), (205, 160, 215), np.float32), (88, 52, 138),
                 _nuclei(rng, shape, 0.006 / scale ** 2, 4.0 * scale, 0.45))
    tex = np.where(tumour[..., None], tum, normal) + 6 * noise
    # Uneven staining (section thickness): stain density varies over ~30 um, less than a region.
    density = 1 + unevenness * _smooth(rng, shape, 32 * scale)[..., None]
    stained = 255 - (255 - tex * cast) * np.clip(density, 0.75, 1.5)
    img = np.where(tissue[..., None], stained, img)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    regions = [(TUMOUR, [ring]) for _, ring in tumour_rings]
    for k, ring in enumerate(tissue_rings):
        regions.append((NORMAL, [ring] + [t for piece, t in tumour_rings if piece == k]))
    return SyntheticSlide(image, mpp, regions, {"tissue": tissue, "tumour": tumour})


def _pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [image]
    for _ in range(1, levels):
        prev = out[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        half = prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
        out.append(np.rint(half).astype(np.uint8))
    return out


def write_slide_tiff(path, image: np.ndarray, mpp: float | None, levels: int = 3, tile: int = 256,
                     compression: str = "zlib") -> Path:
    """Write a tiled pyramidal TIFF that tifffile and OpenSlide both read.

    Levels are halvings of ``image``, one page each (level 0 first, the
    others marked as reduced images), tiled ``tile`` x ``tile``, deflate
    compressed (``compression="jpeg"``: JPEG tiles at quality 90, the most
    common generic whole-slide TIFF, decoded through imagecodecs). ``mpp`` goes into the resolution tags (pixels per
    centimetre); ``None`` writes no resolution, like a slide whose scanner
    did not record it.
    """
    import tifffile

    path = Path(path)
    with tifffile.TiffWriter(path) as tw:
        for k, level in enumerate(_pyramid(image, levels)):
            res = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2 ** k)
                res = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            args = {"level": 1} if compression == "zlib" else {"level": 90}
            tw.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                     compressionargs=args, subfiletype=1 if k else 0, metadata=None, **res)
    return path


def geojson(regions) -> dict:
    """A GeoJSON FeatureCollection of the regions, QuPath style (``classification.name``)."""
    features = []
    for label, rings in regions:
        coords = [[[round(float(x), 2), round(float(y), 2)] for x, y in np.vstack([r, r[:1]])] for r in rings]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": coords},
                         "properties": {"objectType": "annotation", "classification": {"name": label}}})
    return {"type": "FeatureCollection", "features": features}


def write_synthetic_slides(out, n_slides: int = 3, shape: tuple[int, int] = (1536, 1536), mpp: float | None = 0.5,
                           seed: int = 0, levels: int = 3, n_tissue: int = 1, n_tumour: int = 2,
                           annotations: bool = True) -> list[Path]:
    """Write ``n_slides`` slides ``slide_000.tif`` ... with ``slide_000.geojson`` beside each.

    Parameters
    ----------
    out : path
        Folder (created).
    mpp : float or None
        Written into the TIFF tags; None leaves it out (textures still at 0.5).
    annotations : bool
        Write the GeoJSON outlines.

    Returns
    -------
    list of Path
        The slide files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_slides):
        slide = make_slide(shape, mpp or 0.5, seed=seed * 1000 + s, n_tissue=n_tissue, n_tumour=n_tumour)
        path = write_slide_tiff(out / f"slide_{s:03d}.tif", slide.image, mpp, levels=levels)
        if annotations:
            (out / f"slide_{s:03d}.geojson").write_text(json.dumps(geojson(slide.regions)))
        paths.append(path)
    return paths
