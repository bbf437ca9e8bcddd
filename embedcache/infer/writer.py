"""Write predicted nuclei where ``evaluate``, image viewers and QuPath read them.

Layouts (what :func:`embedcache.datasets.read_label_maps` reads back):

- tiles of a stack (PanNuke or CoNIC source): ``labels.npy`` (N, H, W, 2)
  [instance, type] in the CoNIC layout, plus ``masks.npy`` (N, H, W, 6) and
  ``types.npy`` in the PanNuke layout when the classes are PanNuke's;
- images of any size: ``NAME_inst.png`` (16-bit) and ``NAME_type.png``
  (8-bit, when the decoder predicts types).

Beside them: ``overlays/NAME.png`` (nucleus outlines coloured by type over
the image), ``geojson/NAME.geojson`` (a FeatureCollection of nucleus
polygons that QuPath imports: ``objectType`` detection, ``classification``
name and colour, ``measurements`` score) and ``prediction.json`` (what was
predicted, from what, with which settings).

GeoJSON coordinates are image pixels with QuPath's convention: pixel
``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so a nucleus
outline runs along the pixel edges' midpoints, ``x = col + 0.5``.

The folder is built as ``OUT.partial`` and renamed when complete; an
existing ``OUT`` is replaced only if it is a prediction folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.datasets.synthetic import labels_to_pannuke_masks
from embedcache.errors import DataError

PREDICTION_FORMAT = "embedcache-prediction"
# Outline colours of type ids 0..: unknown grey, then a colour-blind friendly palette.
PALETTE = [(160, 160, 160), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128)]


def colour(type_id: int) -> tuple[int, int, int]:
    return PALETTE[int(type_id) % len(PALETTE)] if type_id > 0 else PALETTE[0]


# ----------------------------------------------------------------------------- GeoJSON

def _ring(mask: np.ndarray) -> np.ndarray | None:
    """Outline of a binary mask as a closed ``(n, 2)`` ring of (row, col), longest part."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    if not contours:
        return None
    ring = max(contours, key=len) - 1  # undo the padding
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring if len(ring) >= 4 else None


UNTYPED = "Nucleus"  # QuPath's class of a nucleus the decoder gave no type (QuPath shows none as unclassified)


def detection(nucleus_id: int, type_id: int, class_names: dict, measurements: dict) -> dict:
    """GeoJSON properties of one nucleus as QuPath reads them: a detection, its class and colour, measurements.

    Every nucleus has a classification (:data:`UNTYPED` when it has no type)
    and its ``type_id`` (0: untyped), the same in per-image and slide GeoJSON.

    >>> detection(3, 0, {}, {})["classification"]["name"]
    'Nucleus'
    """
    name = class_names.get(type_id, f"type {type_id}") if type_id else UNTYPED
    return {"objectType": "detection", "id": int(nucleus_id), "type_id": int(type_id),
            "classification": {"name": name, "color": list(colour(type_id))}, "measurements": measurements}


def instances_to_geojson(inst: np.ndarray, type_id=None, score=None, class_names: dict | None = None,
                         type_score=None, offset=(0, 0)) -> dict:
    """A GeoJSON FeatureCollection with one polygon per nucleus.

    Parameters
    ----------
    inst : (H, W) ndarray of int
        Instance ids 1..K (0 = background).
    type_id, score, type_score : (K,) array_like, optional
        Per instance, in id order.
    class_names : dict of int to str, optional
    offset : (row, col)
        Added to every coordinate (an image cut from a larger one).

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...]}``; each feature's
        exterior ring is closed and counter-clockwise (RFC 7946).
    """
    from scipy import ndimage as ndi

    names = class_names or {}
    features = []
    for k, sl in enumerate(ndi.find_objects(inst), 1):
        if sl is None:
            continue
        ring = _ring(inst[sl] == k)
        if ring is None:
            continue
        xs = ring[:, 1] + sl[1].start + offset[1] + 0.5
        ys = ring[:, 0] + sl[0].start + offset[0] + 0.5
        if np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1]) < 0:
            xs, ys = xs[::-1], ys[::-1]
        t = int(type_id[k - 1]) if type_id is not None and len(type_id) >= k else 0
        measured = {"score": round(float(score[k - 1]), 4) if score is not None else None}
        if type_score is not None:
            measured["type_score"] = round(float(type_score[k - 1]), 4)
        props = detection(k, t, names, measured)
        coords = [[round(float(x), 2), round(float(y), 2)] for x, y in zip(xs, ys)]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def geojson_to_instances(collection: dict, shape: tuple[int, int], offset=(0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a FeatureCollection written by :func:`instances_to_geojson`.

    Returns the instance map ``(H, W) int32`` (ids as in the features) and the
    type map ``(H, W) int32``.
    """
    from skimage.draw import polygon

    inst = np.zeros(shape, dtype=np.int32)
    types = np.zeros(shape, dtype=np.int32)
    for f in collection.get("features", []):
        ring = np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64)
        rr, cc = polygon(ring[:, 1] - 0.5 - offset[0], ring[:, 0] - 0.5 - offset[1], shape=shape)
        inst[rr, cc] = int(f["properties"]["id"])
        types[rr, cc] = int(f["properties"].get("type_id", 0))
    return inst, types


# ----------------------------------------------------------------------------- overlays

def overlay(image: np.ndarray, inst: np.ndarray, types: np.ndarray | None = None) -> np.ndarray:
    """The image with each nucleus outlined in its type's colour, ``(H, W, 3) uint8``."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    edge = find_boundaries(inst, mode="inner")
    if types is None or not types.any():
        out[edge] = (255, 255, 0)
        return out
    lut = np.asarray([colour(t) for t in range(int(types.max()) + 1)], dtype=np.uint8)
    out[edge] = lut[types[edge]]
    return out


# ----------------------------------------------------------------------------- the folder

def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


class PredictionWriter:
    """Collect predictions image by image into ``OUT.partial``; :meth:`close` renames it.

    Parameters
    ----------
    out : Path
    layout : {"stack", "folder"}
        ``stack``: every image is a tile of one shape (written as ``.npy``).
    n_images : int
        Images to come (stack layout).
    class_names : dict of int to str
    pannuke : bool
        Also write the PanNuke layout (stack layout only).
    overlays, geojson : bool
    with_types : bool
        The decoder predicts types (``NAME_type.png`` written).
    """

    def __init__(self, out, layout: str, n_images: int, class_names: dict, pannuke: bool = False,
                 overlays: bool = True, geojson: bool = True, with_types: bool = True):
        self.out = Path(out)
        files.recover(self.out)
        if self.out.exists() and not (self.out / "prediction.json").exists() and any(self.out.iterdir()):
            raise DataError(f"{self.out} exists and is not a prediction folder; choose another --out")
        self.partial = files.fresh_partial(self.out)
        self.layout, self.n, self.class_names = layout, n_images, class_names
        self.pannuke, self.overlays, self.geojson, self.with_types = pannuke, overlays, geojson, with_types
        self._labels = None
        self.rows: list[dict] = []
        self.tissue: list[str] = []
        for sub, on in (("overlays", overlays), ("geojson", geojson)):
            if on:
                (self.partial / sub).mkdir()

    def add(self, name: str, pred: dict, image: np.ndarray | None = None, tissue: str | None = None) -> None:
        inst, types = pred["inst"], pred["types"]
        if self.layout == "stack":
            if self._labels is None:
                self._labels = np.lib.format.open_memmap(self.partial / "labels.npy", mode="w+", dtype=np.int32,
                                                         shape=(self.n, *inst.shape, 2))
            i = len(self.rows)
            self._labels[i, ..., 0] = inst
            self._labels[i, ..., 1] = types
            self.tissue.append(tissue or "unknown")
        else:
            if inst.max() > np.iinfo(np.uint16).max:
                raise DataError(f"{name}: {inst.max()} nuclei do not fit a 16-bit PNG; predict smaller images")
            _save_png(self.partial / f"{name}_inst.png", inst.astype(np.uint16))
            if self.with_types:
                _save_png(self.partial / f"{name}_type.png", types.astype(np.uint8))
        if self.overlays and image is not None:
            _save_png(self.partial / "overlays" / f"{name}.png", overlay(image, inst, types))
        if self.geojson:
            fc = instances_to_geojson(inst, pred.get("type_id"), pred.get("score"), self.class_names,
                                      pred.get("type_score"))
            (self.partial / "geojson" / f"{name}.geojson").write_text(json.dumps(fc))
        self.rows.append({"name": name, "shape": list(inst.shape), "nuclei": int(inst.max())})

    def close(self, info: dict) -> Path:
        if self.layout == "stack":
            if len(self.rows) != self.n:
                raise DataError(f"expected {self.n} images, got {len(self.rows)}")
            if self._labels is not None:
                self._labels.flush()
                if self.pannuke:
                    np.save(self.partial / "masks.npy", labels_to_pannuke_masks(np.asarray(self._labels)))
                    np.save(self.partial / "types.npy", np.asarray(self.tissue))
                del self._labels
        info = {"format": PREDICTION_FORMAT, "layout": self.layout, **info, "images": self.rows}
        files.write_json(self.partial / "prediction.json", info)
        return files.swap_in(self.partial, self.out)
