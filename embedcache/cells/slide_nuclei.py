"""Nuclei of whole slides as outlines: a ``predict --slides`` output, or QuPath detections exported as GeoJSON.

For ``cells --store SLIDE_STORE --nuclei DIR``, a second encoder's vectors
of the nuclei another run found. ``DIR`` is either

- a ``predict --slides`` output: ``OUT/SLIDE/nuclei.parquet`` for each
  slide (``OUT``, or one slide's folder ``OUT/SLIDE``), outlines as WKB
  polygons in level-0 pixels (:mod:`embedcache.infer.slide_output`); or
- QuPath exports: ``SLIDE.geojson`` (File > Export objects as GeoJSON, or
  ``nuclei.geojson`` of ``predict --slides`` renamed), Polygon features in
  level-0 pixels, each feature's ``classification.name`` its type
  (``Nucleus``, QuPath's unclassified nucleus, is untyped).

Each outline is drawn onto the store's image of its slide at the store's
resolution: a pixel belongs to a nucleus when its centre lies inside the
outline (``skimage.draw.polygon``), a later nucleus over an earlier one.
The outlines ``predict --slides`` writes are its instance masks' contours
simplified by half a pixel, so a redrawn mask can differ from the decoder's
along the edge (``predict --slides --cells`` pools the decoder's own masks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedcache.cells.nuclei import NucleiSource, content_fingerprint
from embedcache.errors import DataError

UNTYPED = "Nucleus"  # QuPath's class of an untyped nucleus (as embedcache.infer.writer writes it)

TABLE = "nuclei.parquet"


def is_slide_nuclei(path: Path) -> bool:
    """Whether ``path`` holds slide nuclei: a ``predict --slides`` output (or one slide's folder of it)."""
    path = Path(path)
    return path.is_dir() and ((path / TABLE).is_file() or any(path.glob(f"*/{TABLE}")))


def _outlines(path: Path) -> dict[str, Path]:
    """Slide name -> the file holding its outlines."""
    if (path / TABLE).is_file():
        summary = path / "summary.json"
        name = Path(json.loads(summary.read_text())["slide"]).stem if summary.is_file() else path.name
        return {name: path / TABLE}
    found = {p.parent.name: p for p in sorted(path.glob(f"*/{TABLE}"))}
    found.update({p.stem: p for p in sorted(path.glob("*.geojson"))})
    return found


def _read_outlines(path: Path) -> tuple[list, list[str]]:
    """``(polygons, type names)`` of one slide's file: shapely polygons in level-0 px, '' for untyped."""
    from shapely import wkb
    from shapely.geometry import shape

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        cols = pq.read_table(path, columns=["polygon_wkb", "type_id", "type_name"]).to_pydict()
        return [wkb.loads(b) for b in cols["polygon_wkb"]], [n if t else "" for t, n in
                                                              zip(cols["type_id"], cols["type_name"])]
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    features = data.get("features", []) if isinstance(data, dict) else data
    polys, names = [], []
    for f in features:
        geom = (f or {}).get("geometry") or {}
        if geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        poly = shape(geom)
        if poly.geom_type == "MultiPolygon":
            poly = max(poly.geoms, key=lambda g: g.area)
        klass = (f.get("properties") or {}).get("classification") or {}
        name = klass.get("name", "") if isinstance(klass, dict) else str(klass)
        polys.append(poly)
        names.append("" if name in ("", UNTYPED) else name)
    if not polys:
        raise DataError(f"{path}: no Polygon features (export the detections from QuPath as GeoJSON)")
    return polys, names


class SlideOutlineNuclei(NucleiSource):
    """Outlines of nuclei on whole slides, drawn onto a slide store's images (module docstring)."""

    def __init__(self, path: Path, store, images):
        path = Path(path)
        found = _outlines(path)
        slides = {s["name"]: s for s in store.provenance.dataset.get("slides", [])}
        by_image = {}
        for im in images:
            src = int(store.tile_info()["source"][im.tiles[0][1]])
            by_image[im.name] = store.source_names[src]
        unknown = sorted(set(found) - set(slides))
        if unknown:
            raise DataError(f"{path}: nuclei of slide {unknown[0]!r} match no slide of {store.path} "
                            f"(it holds {', '.join(sorted(slides))}); give the nuclei of its slides")
        missing = sorted(set(by_image.values()) - set(found))
        if missing:
            raise DataError(f"{path}: no nuclei for slide {missing[0]!r} of {store.path} ({len(missing)} missing); "
                            "predict every slide of the store, or give nuclei for all of them")
        self.outlines = {name: _read_outlines(p) for name, p in found.items()}
        names = sorted({n for _, types in self.outlines.values() for n in types if n})
        class_names = dict(store.class_names)
        ids = {v.lower(): k for k, v in class_names.items()}
        code = {n: ids.get(n.lower(), 0) for n in names}
        if not class_names or any(v == 0 for v in code.values()):
            code = {n: i + 1 for i, n in enumerate(names)}
            class_names = {i: n for n, i in code.items()}
        self.code, self.by_image, self.store_mpp = code, by_image, store.tile_mpp
        self.slides = slides
        for name, (polys, _) in self.outlines.items():
            rec = slides[name]
            h0, w0 = rec["dims"]
            minx = min((p.bounds[0] for p in polys), default=0)
            miny = min((p.bounds[1] for p in polys), default=0)
            maxx = max((p.bounds[2] for p in polys), default=0)
            maxy = max((p.bounds[3] for p in polys), default=0)
            if minx < 0 or miny < 0 or maxx > w0 or maxy > h0:
                raise DataError(f"{found[name]}: outlines reach ({maxx:g}, {maxy:g}) level-0 px, outside slide "
                                f"{name!r} ({w0}x{h0} px): nuclei of another slide or scale? give that slide's "
                                "nuclei in its level-0 pixels")
        super().__init__("outlines", str(path), content_fingerprint(path), class_names)

    def maps(self, image):
        from skimage.draw import polygon

        name = self.by_image[image.name]
        polys, types = self.outlines[name]
        scale = self.store_mpp / self.slides[name]["mpp"]  # level-0 px per store px
        inst = np.zeros(image.shape, np.int32)
        kind = np.zeros(image.shape, np.int32)
        for k, (poly, t) in enumerate(zip(polys, types), 1):
            xy = np.asarray(poly.exterior.coords)
            # A pixel (row, col) has its centre at level-0 ((col + 0.5) * scale, (row + 0.5) * scale).
            rr, cc = polygon(xy[:, 1] / scale - 0.5, xy[:, 0] / scale - 0.5, image.shape)
            inst[rr, cc] = k
            kind[rr, cc] = self.code.get(t, 0)
        return inst, kind
