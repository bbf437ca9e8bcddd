"""Nuclei of whole slides as files: a columnar table, QuPath GeoJSON, a thumbnail and a summary.

A region's kept nuclei become table rows (:func:`region_rows`), one per
nucleus, in level-0 pixels of the slide: centroid (px and um), area, type,
probabilities and the outline as a valid, simplified shapely polygon (WKB).
Regions are written as they finish (Parquet, one file each) and merged at
the end (:func:`finish_slide`, region by region: memory is one region's
nuclei however many the slide holds) into::

    nuclei.parquet          the table (pyarrow.parquet.read_table opens it)
    nuclei.geojson[.gz]     FeatureCollection of Polygon detections for QuPath
    thumbnail.png           the slide at low resolution with each nucleus dotted in its type's colour
    summary.json            nuclei per type, tissue area, regions, time

and, over every slide of an output folder, ``slides.csv`` (:func:`write_table`).

QuPath: File > Import objects (or drag the ``.geojson`` onto the open
slide); coordinates are level-0 pixels, as QuPath expects.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.infer.writer import _ring, colour, detection

COLUMNS = ("id", "region", "x_px", "y_px", "x_um", "y_um", "area_um2", "type_id", "type_name", "score",
           "type_score", "polygon_wkb")
SIMPLIFY_PX = 0.5  # outline simplification tolerance, working pixels


def region_rows(inst: np.ndarray, nuclei: dict, centroids: np.ndarray, owned: np.ndarray, region: int,
                origin: tuple[int, int], scale: float, mpp0: float, class_names: dict) -> dict[str, list]:
    """Table columns of the nuclei a region keeps.

    Parameters
    ----------
    inst : (H, W) ndarray of int
        Instance ids 1..K of the region's read box.
    nuclei : dict
        ``score``, ``type_id``, ``type_score`` per instance (:func:`embedcache.postprocess.instances_from_maps`).
    centroids : (K, 2) ndarray of float
        (row, col) of each instance in the read box's pixels.
    owned : (K,) ndarray of bool
        Instances the region keeps (centroid in its core).
    origin : (row, col)
        The read box's top-left corner in working pixels.
    scale : float
        Level-0 pixels per working pixel.
    mpp0 : float
        Level-0 microns per pixel.
    """
    from scipy import ndimage as ndi
    from shapely import wkb
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    out = {c: [] for c in COLUMNS}
    out["instance"] = []  # ids in ``inst`` of the rows (not a column: what a region's cells are pooled from)
    score, type_id, type_score = (np.asarray(nuclei.get(k, [])) for k in ("score", "type_id", "type_score"))
    for k, sl in enumerate(ndi.find_objects(inst), 1):
        if sl is None or not owned[k - 1]:
            continue
        mask = inst[sl] == k
        ring = _ring(mask)
        if ring is None:
            continue
        ys = (ring[:, 0] + sl[0].start + origin[0] + 0.5) * scale
        xs = (ring[:, 1] + sl[1].start + origin[1] + 0.5) * scale
        poly = Polygon(np.column_stack([xs, ys])).simplify(SIMPLIFY_PX * scale)
        if not poly.is_valid:
            poly = poly.buffer(0)
        if poly.geom_type == "MultiPolygon":
            poly = max(poly.geoms, key=lambda g: g.area)
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        poly = orient(poly, 1.0)  # counter-clockwise exterior (RFC 7946)
        cy, cx = ((centroids[k - 1] + origin + 0.5) * scale).tolist()
        t = int(type_id[k - 1]) if len(type_id) >= k else 0
        out["id"].append(0)  # numbered when the slide is finished
        out["region"].append(int(region))
        out["x_px"].append(float(cx))
        out["y_px"].append(float(cy))
        out["x_um"].append(float(cx * mpp0))
        out["y_um"].append(float(cy * mpp0))
        out["area_um2"].append(float(mask.sum() * (scale * mpp0) ** 2))
        out["type_id"].append(t)
        out["type_name"].append(class_names.get(t, f"type {t}") if t else "")
        out["score"].append(float(score[k - 1]) if len(score) >= k else float("nan"))
        out["type_score"].append(float(type_score[k - 1]) if len(type_score) >= k else float("nan"))
        out["polygon_wkb"].append(wkb.dumps(poly))
        out["instance"].append(k)
    return out


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("region", pa.int32()), ("x_px", pa.float64()), ("y_px", pa.float64()),
                      ("x_um", pa.float64()), ("y_um", pa.float64()), ("area_um2", pa.float32()),
                      ("type_id", pa.int16()), ("type_name", pa.string()), ("score", pa.float32()),
                      ("type_score", pa.float32()), ("polygon_wkb", pa.binary())])


def write_region(path: Path, rows: dict[str, list], work: dict | None = None) -> None:
    """One region's rows as a Parquet file, written under a temporary name and renamed (a progress record).

    ``work`` (tiles read from a store and encoded, seconds) goes into the
    file's metadata, so a slide finished over several runs sums the work of
    all of them (:func:`region_work`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: rows[c] for c in COLUMNS}, schema=_schema())
    if work:
        table = table.replace_schema_metadata({b"embedcache.work": json.dumps(work).encode()})
    with files.atomic_file(path) as tmp:
        pq.write_table(table, str(tmp))


def region_work(paths: list[Path]) -> dict[str, float]:
    """The work recorded in region files (:func:`write_region`), summed: ``cached``, ``encoded``, ``reused``
    (tiles served from a neighbouring region's encoding), ``seconds``."""
    import pyarrow.parquet as pq

    total = {"cached": 0, "encoded": 0, "reused": 0, "seconds": 0.0}
    for path in paths:
        meta = pq.read_schema(path).metadata or {}
        work = json.loads(meta.get(b"embedcache.work", b"{}"))
        for key in total:
            total[key] += work.get(key, 0)
    return total


def features(table, class_names: dict, classes: tuple | None = None) -> list[dict]:
    """GeoJSON Features (QuPath detections, level-0 pixel coordinates) of a table's nuclei.

    ``classes``: ``(names, proba (n, K))`` of a cell classifier: each detection's classification is then its
    most probable class (coloured from the classifier's own table, by class position) and the probabilities
    are measurements ``p_<class>``; the decoder's type stays in ``type_id``.
    """
    from shapely import wkb
    from shapely.geometry import mapping

    cols = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        props = detection(cols["id"][i], int(cols["type_id"][i]), class_names,
                          {"area_um2": round(float(cols["area_um2"][i]), 2), "score": round(float(cols["score"][i]), 4),
                           "type_score": round(float(cols["type_score"][i]), 4)})
        if classes is not None:
            names, proba = classes
            best = int(np.argmax(proba[i]))
            props["classification"] = {"name": names[best], "color": list(colour(best + 1))}
            props["measurements"].update({f"p_{n}": round(float(p), 4) for n, p in zip(names, proba[i])})
        geom = mapping(wkb.loads(cols["polygon_wkb"][i]))
        geom["coordinates"] = [[[round(x, 2), round(y, 2)] for x, y in ring] for ring in geom["coordinates"]]
        out.append({"type": "Feature", "geometry": geom, "properties": props})
    return out


def draw_nuclei(draw, table, scale: float) -> None:
    """Dot each nucleus of ``table`` in its type's colour on a thumbnail (``scale`` level-0 px per its px)."""
    cols = table.select(["x_px", "y_px", "type_id"]).to_pydict()
    for x, y, t in zip(cols["x_px"], cols["y_px"], cols["type_id"]):
        draw.point((x / scale, y / scale), fill=colour(int(t)) if t else (20, 20, 20))


def finish_slide(folder: Path, region_files: list[Path], class_names: dict, summary: dict, thumb: np.ndarray,
                 thumb_scale: float, gzip_geojson: bool = False, geojson: bool = True,
                 overlays: bool = True, cell_classes=None) -> dict:
    """Merge a slide's regions into the table, GeoJSON, thumbnail and summary inside ``folder``.

    Region by region: the table is appended to and the GeoJSON streamed,
    so memory is that of one region's nuclei, however many the slide holds.
    Nuclei are numbered 1..N in region order. ``geojson=False`` and
    ``overlays=False`` leave out the GeoJSON and the thumbnail. ``cell_classes(region_file)``: a cell
    classifier's ``(names, proba)`` of that region's nuclei, written into the GeoJSON (:func:`features`).
    """
    import contextlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    image = Image.fromarray(thumb)
    draw = ImageDraw.Draw(image)
    counts: dict[int, int] = {}
    n = 0
    name = "nuclei.geojson.gz" if gzip_geojson else "nuclei.geojson"
    geo = files.atomic_file(folder / name) if geojson else contextlib.nullcontext(os.devnull)
    with files.atomic_file(folder / "nuclei.parquet") as table_tmp, geo as geo_tmp:
        raw = open(geo_tmp, "wb")
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gzip_geojson else raw
        writer = pq.ParquetWriter(str(table_tmp), _schema())
        try:
            out.write(b'{"type": "FeatureCollection", "features": [')
            first = True
            for path in sorted(region_files):
                table = pq.read_table(path)
                table = table.set_column(0, "id", pa.array(np.arange(n + 1, n + 1 + table.num_rows), pa.int64()))
                n += table.num_rows
                writer.write_table(table)
                classes = cell_classes(path) if cell_classes is not None and geojson else None
                for f in features(table, class_names, classes) if geojson else ():
                    out.write((b"" if first else b", ") + json.dumps(f).encode())
                    first = False
                if overlays:
                    draw_nuclei(draw, table, thumb_scale)
                for t in table.column("type_id").to_numpy():
                    counts[int(t)] = counts.get(int(t), 0) + 1
            out.write(b"]}")
        finally:
            writer.close()
            if out is not raw:
                out.close()
            raw.close()
    if overlays:
        image.save(folder / "thumbnail.png")
    summary = {**summary, "nuclei": n,
               "nuclei_per_type": {class_names.get(t, f"type {t}") if t else "untyped": c
                                   for t, c in sorted(counts.items())}}
    files.write_json(folder / "summary.json", summary)
    return summary


TABLE = ["slide", "status", "nuclei", "regions", "seconds", "reason"]
# How final a slide's status is. Several processes share one output folder and each writes what it saw of a
# slide: one merged it ("done"), the others found it "done by another process" or left it to the others.
# A row is replaced only by one at least as final, so no process's view hides what another did.
LEFT = "left to other processes"
STATUS_RANK = {LEFT: 0, "done by another process": 1, "already done": 1}


def write_table(out: Path, results, claims=None) -> None:
    """``OUT/slides.csv``: each slide's status, nuclei, regions, time and, for a failure, why.

    A read, merge and atomic write under the claim ``slides.csv`` (one
    process at a time): rows of slides not in ``results`` (written by
    other processes sharing ``out``, or by earlier runs) are kept, and a
    slide's row is replaced only by a status at least as final
    (:data:`STATUS_RANK`; ``done`` and ``failed`` rank highest). Rows are
    sorted by slide name.

    Parameters
    ----------
    out : Path
        The output folder.
    results : list of SlideResult
    claims : Claims, optional
        This process's claims on ``out``; None: made for the write (and their folder removed when empty).
    """
    from embedcache.claims import Claims, claims_place
    from embedcache.shared import held

    own = claims is None
    claims = Claims(claims_place(out), "predict-slides") if own else claims
    path = Path(out) / "slides.csv"
    with held(claims, "slides.csv"):
        rows: dict[str, list[str]] = {}
        if path.exists():
            with open(path, newline="") as fh:
                reader = csv.reader(fh)
                if next(reader, None) == TABLE:  # a table of another layout is written afresh
                    rows = {r[0]: r for r in reader if len(r) == len(TABLE)}
        for r in results:
            old = rows.get(r.name)
            if old is None or STATUS_RANK.get(r.status, 2) >= STATUS_RANK.get(old[1], 2):
                rows[r.name] = [r.name, r.status, str(r.nuclei), str(r.regions), f"{r.seconds:.1f}", r.reason]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(TABLE)
        w.writerows(rows[name] for name in sorted(rows))  # whichever process writes, and slides finish in any order
        files.write_text(path, buf.getvalue())
    if own:
        claims.remove_if_empty()
