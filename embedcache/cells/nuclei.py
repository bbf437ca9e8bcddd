"""Where a store's nuclei come from, as one instance map (and type map) per source image.

Three sources, each checked against the store's images (names, shapes,
extents) before any work starts:

- ``store``: the store's own label maps;
- a folder of label maps: a ``predict`` output or any layout ``evaluate``
  reads (PanNuke or CoNIC stacks of one map per tile, ``NAME_inst.png``
  [+ ``NAME_type.png``] per image);
- points: a CSV (``image,x,y,label``; or a folder of ``NAME.csv`` files
  of ``x,y,label``) or a folder of QuPath GeoJSON point files
  (``NAME.geojson``), each point a disc of ``radius`` pixels. Coordinates
  are image pixels with QuPath's convention (pixel ``(row, col)`` covers
  ``[col, col + 1) x [row, row + 1)``); where two discs meet, a pixel goes
  to the nearer point.

:func:`image_nuclei` then lists every nucleus of an image with the tile it
is pooled in: among the tiles holding it whole, the one whose centre is
nearest its centroid (the most context around it); a nucleus no tile holds
whole goes to the tile holding most of it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache.errors import DataError
from embedcache.geometry import TiledImage

POINT_SUFFIXES = (".csv", ".geojson", ".json")


def content_fingerprint(path: Path) -> str:
    """SHA-256 over the names and bytes of a file or of every file under a folder."""
    path = Path(path)
    h = hashlib.sha256()
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in paths:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class NucleiSource:
    """The nuclei of a store's images.

    Attributes
    ----------
    kind : {"labels", "prediction", "points", "outlines"}
    source : str
        ``store`` or the path given.
    fingerprint : str
    class_names : dict of int to str
    """

    kind: str
    source: str
    fingerprint: str
    class_names: dict

    def maps(self, image: TiledImage) -> tuple[np.ndarray, np.ndarray | None]:
        """Instance map ``(H, W) int`` and type map (or None) of one source image."""
        raise NotImplementedError

    def maps_of(self, images: list[TiledImage]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`maps` of several images (a source may read them in one go)."""
        return [self.maps(im) for im in images]

    def describe(self, radius: float | None = None) -> dict:
        out = {"kind": self.kind, "source": self.source, "fingerprint": self.fingerprint}
        if self.kind == "points":
            out["radius"] = radius
        return out


class StoreNuclei(NucleiSource):
    def __init__(self, store):
        if not store.has_labels:
            raise DataError(f"{store.path}: the store has no label maps and no other nuclei were given; "
                            "pass --nuclei with a prediction folder or points (CSV or GeoJSON)")
        super().__init__("labels", "store", f"store:{store.config.dataset_fingerprint}", dict(store.class_names))
        self.store = store

    def maps(self, image):
        return self.maps_of([image])[0]

    def maps_of(self, images):
        # One read of every tile of the images (a slice when they are consecutive), then assembled.
        tiles = sorted({t for im in images for _, t in im.tiles})
        inst, types = self.store.labels(tiles)
        row = {t: k for k, t in enumerate(tiles)}
        valid = self.store.tile_info()["valid"]
        out = []
        for im in images:
            if len(im.tiles) == 1 and im.tiles[0][0] == (0, 0):
                k = row[im.tiles[0][1]]
                h, w = im.shape
                out.append((inst[k, :h, :w], types[k, :h, :w]))
                continue
            a, b = np.zeros(im.shape, np.int32), np.zeros(im.shape, np.int32)
            for (r, c), t in im.tiles:
                h, w = valid[t]
                a[r:r + h, c:c + w] = inst[row[t], :h, :w]
                b[r:r + h, c:c + w] = types[row[t], :h, :w]
            out.append((a, b))
        return out


class LabelMapNuclei(NucleiSource):
    """A folder of label maps: one map per stack tile, or one ``NAME_inst.png`` per image."""

    def __init__(self, path: Path, store, images: list[TiledImage]):
        from embedcache.datasets import read_label_maps

        labels = read_label_maps(path)
        kind = "prediction" if (path / "prediction.json").is_file() else "labels"
        super().__init__(kind, str(path), content_fingerprint(path), dict(labels.class_names or store.class_names))
        stack = labels.layout in ("pannuke", "conic")
        by_name = {n: k for k, n in enumerate(labels.names)}
        wanted = {im.name for im in images}
        extra = sorted(set(by_name) - wanted)
        missing = sorted(wanted - set(by_name))
        if stack and len(labels) != store.n_tiles:
            raise DataError(f"{path}: {len(labels)} label maps for the store's {store.n_tiles} tiles; "
                            "the nuclei maps must be of the same tiles (predict them from this store)")
        if extra:
            raise DataError(f"{path}: label maps of {extra[0]!r} match no image of the store "
                            f"({len(extra)} such); the store's images are named like {sorted(wanted)[0]!r}")
        if missing:
            raise DataError(f"{path}: no label map for image {missing[0]!r} of the store ({len(missing)} missing); "
                            "predict every image of the store, or give nuclei for all of them")
        for im in images:
            shape = labels.instances[by_name[im.name]].shape
            if tuple(shape) != tuple(im.shape):
                raise DataError(f"{path}: the nuclei map of {im.name!r} is {shape[0]}x{shape[1]} pixels where the "
                                f"store's image is {im.shape[0]}x{im.shape[1]}; the maps must be of the same images")
        self.labels, self.by_name = labels, by_name

    def maps(self, image):
        k = self.by_name[image.name]
        types = self.labels.types[k] if self.labels.types is not None else None
        return np.asarray(self.labels.instances[k]), None if types is None else np.asarray(types)


class PointNuclei(NucleiSource):
    """Point annotations drawn as discs of ``radius`` pixels."""

    def __init__(self, path: Path, store, images: list[TiledImage], radius: float):
        points = read_points(path)
        known = {im.name: im for im in images}
        unknown = sorted(set(points) - set(known))
        if unknown:
            raise DataError(f"{path}: points of image {unknown[0]!r} match no image of the store "
                            f"({len(unknown)} such); the store's images are named like {sorted(known)[0]!r}")
        names = sorted({label for pts in points.values() for _, _, label in pts if label})
        class_names = dict(store.class_names)
        if class_names:
            ids = {v.lower(): k for k, v in class_names.items()}
            bad = [n for n in names if n.lower() not in ids]
            if bad:
                raise DataError(f"{path}: label {bad[0]!r} is none of the store's classes "
                                f"({', '.join(class_names.values())}); fix the label or leave it empty for unknown")
            code = {n: ids[n.lower()] for n in names}
        else:
            code = {n: i + 1 for i, n in enumerate(names)}
            class_names = {i: n for n, i in code.items()}
        for name, pts in points.items():
            h, w = known[name].shape
            for x, y, _ in pts:
                if not (0 <= x < w and 0 <= y < h):
                    raise DataError(f"{path}: point ({x:g}, {y:g}) of image {name!r} lies outside every tile "
                                    f"(the image is {w}x{h} pixels, x along columns, y along rows)")
        super().__init__("points", str(path), content_fingerprint(path), class_names)
        self.points, self.code, self.radius = points, code, float(radius)

    def maps(self, image):
        pts = self.points.get(image.name, [])
        xy = np.array([(x, y) for x, y, _ in pts], dtype=np.float64).reshape(-1, 2)
        types = np.array([self.code.get(label, 0) if label else 0 for _, _, label in pts], dtype=np.int32)
        return discs(image.shape, xy, self.radius, types)


def discs(shape: tuple[int, int], xy: np.ndarray, radius: float,
          types: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Instance map (ids 1..P in point order) and type map of discs around points.

    A pixel belongs to the nearest point whose disc holds its centre.

    >>> inst, _ = discs((5, 5), np.array([[2.5, 2.5]]), 1.0)
    >>> int(inst.sum())
    5
    """
    H, W = shape
    inst = np.zeros((H, W), dtype=np.int32)
    best = np.full((H, W), np.inf)
    r = float(radius)
    for k, (x, y) in enumerate(np.asarray(xy, dtype=np.float64)):
        r0, r1 = max(0, int(np.floor(y - r))), min(H, int(np.ceil(y + r)) + 1)
        c0, c1 = max(0, int(np.floor(x - r))), min(W, int(np.ceil(x + r)) + 1)
        rr, cc = np.mgrid[r0:r1, c0:c1]
        d2 = (rr + 0.5 - y) ** 2 + (cc + 0.5 - x) ** 2
        take = (d2 <= r * r) & (d2 < best[r0:r1, c0:c1])
        inst[r0:r1, c0:c1][take] = k + 1
        best[r0:r1, c0:c1][take] = d2[take]
    type_map = np.zeros((H, W), dtype=np.int32)
    if types is not None and len(types):
        lookup = np.concatenate([[0], np.asarray(types, dtype=np.int32)])
        type_map = lookup[inst]
    return inst, type_map


def read_points(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """Points per image name: ``(x, y, label)``, from a CSV file or a folder of CSV / GeoJSON files."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: a points file is a CSV with columns image,x,y,label "
                            "(or give a folder of NAME.csv / NAME.geojson files)")
        return _read_csv(path, None)
    out: dict[str, list] = {}
    for p in sorted(path.iterdir()):
        if p.suffix.lower() == ".csv":
            for name, pts in _read_csv(p, p.stem).items():
                out.setdefault(name, []).extend(pts)
        elif p.suffix.lower() in (".geojson", ".json"):
            out.setdefault(p.stem, []).extend(_read_geojson(p))
    if not out:
        raise DataError(f"{path}: no points found (NAME.csv with x,y,label or NAME.geojson point files)")
    return out


def _read_csv(path: Path, image: str | None) -> dict[str, list]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = ("x", "y") if image is not None else ("image", "x", "y")
    header = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    if not rows or any(c not in header for c in need):
        raise DataError(f"{path}: needs a header with columns {','.join(need)}[,label]; got "
                        f"{','.join(header) or 'no rows'}")
    out: dict[str, list] = {}
    for i, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        try:
            x, y = float(row["x"]), float(row["y"])
        except ValueError:
            raise DataError(f"{path}:{i}: x and y must be numbers, got {row['x']!r}, {row['y']!r}") from None
        out.setdefault(image if image is not None else row["image"], []).append((x, y, row.get("label", "")))
    return out


def _read_geojson(path: Path) -> list:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    features = data.get("features", []) if isinstance(data, dict) and data.get("type") == "FeatureCollection" \
        else (data if isinstance(data, list) else [data])
    out = []
    for f in features:
        geom = (f or {}).get("geometry") or {}
        coords = [geom.get("coordinates")] if geom.get("type") == "Point" else \
            (geom.get("coordinates") if geom.get("type") == "MultiPoint" else None)
        if coords is None:
            continue  # outlines and other shapes are not points
        klass = ((f.get("properties") or {}).get("classification") or {})
        label = klass.get("name", "") if isinstance(klass, dict) else str(klass)
        out += [(float(c[0]), float(c[1]), label or "") for c in coords]
    if not out:
        raise DataError(f"{path}: no Point features (export detections or points from QuPath as GeoJSON)")
    return out


def nuclei_source(store, images: list[TiledImage], nuclei: str = "store", radius: float = 8.0) -> NucleiSource:
    """The nuclei named by ``nuclei`` (``store`` or a path), checked against the store's images."""
    if nuclei == "store":
        return StoreNuclei(store)
    path = Path(nuclei)
    if not path.exists():
        raise DataError(f"{path}: no such nuclei file or folder (give 'store', label maps or points)")
    if getattr(store, "dataset_layout", None) == "slides":
        from embedcache.cells.slide_nuclei import SlideOutlineNuclei, is_slide_nuclei

        if is_slide_nuclei(path) or (path.is_dir() and any(path.glob("*.geojson"))):
            return SlideOutlineNuclei(path, store, images)
    if path.is_file() or _holds_points(path):
        return PointNuclei(path, store, images, radius)
    return LabelMapNuclei(path, store, images)


def _holds_points(path: Path) -> bool:
    from embedcache.datasets.folder import LABEL_SUFFIXES

    entries = [p for p in path.iterdir() if p.is_file()]
    has_maps = any(p.suffix in LABEL_SUFFIXES and p.stem.endswith("_inst") for p in entries) or \
        any(p.name in ("labels.npy", "masks.npy") for p in entries)
    return not has_maps and any(p.suffix.lower() in POINT_SUFFIXES for p in entries)


def image_nuclei(inst: np.ndarray, types: np.ndarray | None, image: TiledImage, tile_shape: tuple[int, int],
                 valid: np.ndarray) -> dict[str, np.ndarray]:
    """Every nucleus of one image with the tile it is pooled in.

    Returns
    -------
    dict of str to ndarray
        ``instance``, ``tile``, ``centroid`` (n, 2) (row, col), ``area``,
        ``type`` (majority type of its pixels, 0 unknown) and ``coverage``
        (share of its pixels inside the tile), ordered by tile then instance.
    """
    from scipy import ndimage

    inst = np.asarray(inst, dtype=np.int64)
    top = int(inst.max(initial=0))
    empty = {"instance": np.zeros(0, np.int64), "tile": np.zeros(0, np.int64), "centroid": np.zeros((0, 2)),
             "area": np.zeros(0, np.int64), "type": np.zeros(0, np.int64), "coverage": np.zeros(0, np.float32)}
    if top == 0:
        return empty
    where = np.flatnonzero(inst.ravel())  # only nucleus pixels: a fraction of the image
    label = inst.ravel()[where]
    area = np.bincount(label, minlength=top + 1)
    width = inst.shape[1]
    cy = np.bincount(label, weights=where // width, minlength=top + 1)
    cx = np.bincount(label, weights=where % width, minlength=top + 1)
    ids = np.flatnonzero(area[1:]) + 1
    centroid = np.stack([cy[ids], cx[ids]], axis=1) / area[ids, None]
    if types is not None:
        t = np.asarray(types, dtype=np.int64).ravel()[where]
        k = int(t.max(initial=0)) + 1
        votes = np.bincount(label * k + t, minlength=(top + 1) * k).reshape(top + 1, k)
        votes[:, 0] = 0  # a nucleus with any typed pixel takes its majority type
        kind = np.where(votes[ids].sum(axis=1) > 0, votes[ids].argmax(axis=1), 0)
    else:
        kind = np.zeros(len(ids), dtype=np.int64)
    if len(image.tiles) == 1:  # a stack tile: every nucleus lies whole in it
        order = np.argsort(ids, kind="stable")
        return {"instance": ids[order], "tile": np.full(len(ids), image.tiles[0][1], np.int64),
                "centroid": centroid[order], "area": area[ids][order], "type": kind[order].astype(np.int64),
                "coverage": np.ones(len(ids), np.float32)}
    boxes = ndimage.find_objects(inst)
    origins = np.array([rc for rc, _ in image.tiles], dtype=np.int64).reshape(-1, 2)
    tile_ids = np.array([t for _, t in image.tiles], dtype=np.int64)
    ends = origins + valid[tile_ids]
    centres = origins + (np.asarray(tile_shape) - 1) / 2.0  # pixel indices, as the centroid is
    tile_of, coverage = np.empty(len(ids), np.int64), np.empty(len(ids), np.float32)
    for j, i in enumerate(ids):
        box = boxes[i - 1]
        (r0, r1), (c0, c1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
        whole = (origins[:, 0] <= r0) & (origins[:, 1] <= c0) & (ends[:, 0] >= r1) & (ends[:, 1] >= c1)
        dist = ((centres - centroid[j]) ** 2).sum(axis=1)
        if whole.any():
            pick = int(np.flatnonzero(whole)[np.argmin(dist[whole])])
            tile_of[j], coverage[j] = tile_ids[pick], 1.0
            continue
        mask = inst[box] == i
        inside = []
        for (orow, ocol), end in zip(origins, ends):
            rs = slice(max(r0, orow) - r0, max(min(r1, end[0]) - r0, 0))
            cs = slice(max(c0, ocol) - c0, max(min(c1, end[1]) - c0, 0))
            inside.append(int(mask[rs, cs].sum()))
        inside = np.array(inside)
        best = np.flatnonzero(inside == inside.max())
        pick = int(best[np.argmin(dist[best])])
        tile_of[j], coverage[j] = tile_ids[pick], inside[pick] / area[i]
    order = np.lexsort((ids, tile_of))
    return {"instance": ids[order], "tile": tile_of[order], "centroid": centroid[order], "area": area[ids][order],
            "type": kind[order].astype(np.int64), "coverage": coverage[order]}
