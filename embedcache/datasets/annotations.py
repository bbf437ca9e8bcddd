"""Region annotations of slides: QuPath-style GeoJSON polygons, and the label each tile takes.

``NAME.geojson`` (or ``NAME.json``) beside slide ``NAME``: a
FeatureCollection of Polygon/MultiPolygon features in level-0 pixel
coordinates (x, y), as QuPath exports them, the label read from
``properties.classification.name``, ``classification``, ``label``, ``name``
or ``class``. A tile takes the label covering most of it when that covers
at least half of it, else none (``""``); where features overlap, the later
one wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedcache.errors import DataError

ANNOTATION_SUFFIXES = (".geojson", ".json")
LABEL_CELLS = 8  # a tile's label is voted over LABEL_CELLS x LABEL_CELLS cells
LABEL_KEYS = ("classification", "label", "name", "class")


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
