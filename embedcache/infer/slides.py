"""``predict --slides``: a trained decoder over whole slides, region by region, resumable, into QuPath.

For each slide:

1. **Resolution.** Tiles are cut at the microns per pixel the run was
   trained at (the run records it, or ``run_mpp``); the slide is read at its
   coarsest level at least that fine and resampled.
2. **Regions.** The slide is cut into regions (:func:`embedcache.geometry.plan_regions`)
   of ``region`` px with ``margin`` px around them (default a tile and a
   quarter); regions without tissue (found on a low-resolution level, as
   for extraction) are skipped. A region's read box, aligned to one tile
   grid over the slide (:func:`on_tile_grid`), is cut into those overlapping
   tiles, encoded live, decoded and its maps stitched; post-processing runs
   on the whole read box, and the region keeps the nuclei whose centroid
   lies in its core: every nucleus once, whole, as one region over the
   whole slide would find it. Neighbouring regions' read boxes share their
   margins' tiles, which are encoded once
   (:class:`~embedcache.infer.slide_cells.SharedTiles`: kept from their first
   region to their last, at most two read boxes of them); encoding every
   read box whole cost ~1.7 times the tissue (regions of 2048 px, 320-px
   margins, 256-px tiles). Memory is that of a few regions, whatever the
   slide's size.
3. **Progress.** Each finished region is written to
   ``OUT/SLIDE.partial/regions/NNNNN.parquet`` at once; a killed run resumes
   with the regions not yet written and ends with the same files as an
   uninterrupted one. The settings are recorded in ``plan.json``: a partial
   made with another run or settings is refused.
4. **Outputs** (:mod:`embedcache.infer.slide_output`) go to ``OUT/SLIDE/``,
   swapped in complete; with ``cells`` also ``cells.zarr``, a vector per
   nucleus pooled from the same forward's tokens
   (:mod:`embedcache.infer.slide_cells`; each region's vectors are a progress
   record beside its table). ``OUT/slides.csv`` records every slide's status,
   nuclei, time and, for a slide that failed, why; the others go on. Processes
   sharing ``out`` merge their rows into it (:func:`~embedcache.infer.slide_output.write_table`).
5. **Post-processing beside the forward**: with ``post_workers`` > 0
   regions are post-processed in that many processes while the main
   process encodes and decodes the next ones.
6. **Many slides on a dask cluster** (:mod:`embedcache.infer.slide_cluster`): with ``workers`` (a local cluster of
   that many processes) or ``scheduler`` (a running one), each slide is a
   task; ``out`` must be a folder every worker can write (a shared file
   system). A worker that dies fails its slide (recorded with the reason)
   and the others go on; the table is written here as slides finish.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.claims import Claims, claims_place
from embedcache.shared import FinishedElsewhere, SharedUnits, held, open_alone, work_through
from embedcache.config import PostprocessConfig
from embedcache.datasets.wsi import (
    box_fractions, level_for, list_slides, open_slide, read_scaled, slide_tissue, working_shape,
)
from embedcache.device import resolve_device
from embedcache.errors import ConfigError, DataError, OutputMismatchError
from embedcache.geometry import Region, TiledImage, plan_regions, plan_tiles
from embedcache.infer.features import LiveFeatures, SlideFeatures
from embedcache.infer.predictor import Predictor
from embedcache.infer.slide_cells import (
    CellLayers, SharedTiles, TokenKeeper, cell_layers, finish_vectors, kept_limit, region_cells, region_classes,
    region_weights, tile_uses, vectors_file, write_vectors,
)
from embedcache.infer.slide_output import (
    LEFT, finish_slide, region_rows, region_work, write_region, write_table,
)
from embedcache.infer.tiling import cut_tile
from embedcache.infer.tta import tta_variants
from embedcache.postprocess import instances_from_maps
from embedcache.store import open_store
from embedcache.threads import use_threads
from embedcache.train.checkpoint import load_run
from embedcache.workers import die_with_parent

PLAN_VERSION = 1
RESAMPLE_TOLERANCE = 0.1  # a slide up to 10% coarser than the run's resolution is upsampled


@dataclass
class SlideResult:
    """What happened to one slide."""

    name: str
    status: str  # "done", "already done" or "failed"
    nuclei: int = 0
    seconds: float = 0.0
    reason: str = ""
    regions: int = 0
    shared: str = ""  # beside other processes: the regions this one computed, found done, left to others


@dataclass(frozen=True)
class Outputs:
    """What a slide's prediction averages over and writes besides the table."""

    tta: str = "none"
    geojson: bool = True
    overlays: bool = True  # the thumbnail with every nucleus dotted on it
    gzip_geojson: bool = False
    cells: CellLayers | None = None  # layers pooled into a vector per nucleus (cells.zarr)
    classifier: object = None  # a CellClassifier applied to each nucleus's vector (cell_classes.parquet)
    anndata: bool = False  # cells.h5ad


@dataclass
class SlidePlan:
    """How one slide is read: its level, scale and the regions over its tissue."""

    name: str
    path: Path
    mpp0: float  # level-0 um/px
    dims0: tuple[int, int]  # level-0 (height, width)
    work_mpp: float  # um/px of the tiles
    level: int
    shape: tuple[int, int]  # working pixels
    regions: list[Region]
    tissue_fraction: float
    mask_level: int

    @property
    def scale(self) -> float:
        """Level-0 pixels per working pixel."""
        return self.work_mpp / self.mpp0


def plan_slide(path: Path, work_mpp: float, region: int, margin: int, mpp: float | None = None) -> SlidePlan:
    """Open a slide and plan its regions; DataError naming the file for any reason it cannot be done."""
    slide = open_slide(path)
    try:
        mpp0 = mpp or slide.mpp
        if mpp0 is None:
            raise DataError(f"{path}: the slide does not record its microns per pixel; pass --mpp "
                            "(level-0 um/px, e.g. 0.25 at 40x, 0.5 at 20x)")
        if mpp0 > work_mpp * (1 + RESAMPLE_TOLERANCE):
            raise DataError(f"{path}: the run was trained at {work_mpp:g} um/px, but this slide's finest level is "
                            f"{mpp0:g} um/px; predict slides scanned at {work_mpp:g} um/px or finer")
        level = level_for(slide, mpp0, work_mpp)
        mask, mask_level, mask_mpp = slide_tissue(slide, mpp0)
        h0, w0 = slide.dims[0]
    finally:
        slide.close()
    shape = working_shape((h0, w0), mpp0, work_mpp)
    to_mask = work_mpp / mask_mpp
    regions = []
    for r in plan_regions(shape, region, margin):
        q0, d0, q1, d1 = r.read
        frac = box_fractions(mask, np.array([q0 * to_mask]), np.array([d0 * to_mask]),
                             max(q1 - q0, d1 - d0) * to_mask)
        if frac[0] > 0:
            regions.append(r)
    if not regions:
        raise DataError(f"{path}: no tissue found (checked at {mask_mpp:.3g} um/px)")
    return SlidePlan(Path(path).stem, Path(path), float(mpp0), (int(h0), int(w0)), float(work_mpp), level, shape,
                     regions, float(mask.mean()), mask_level)


def on_tile_grid(regions: list[Region], shape: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[Region]:
    """Regions whose read box is the union of the slide-wide tile grid's tiles meeting it.

    Every region then cuts the same tiles where they meet, so the stitched
    maps agree everywhere but within a tile of a read box's edge: with a
    margin of at least a tile and a nucleus, a nucleus a core keeps sees the
    maps a single region over the whole slide would, and regions never
    disagree about it.
    """
    import dataclasses

    starts = [sorted({o[k] for o in plan_tiles(shape, tile, overlap)}) for k in (0, 1)]
    out = []
    for r in regions:
        box = []
        for k, (lo, hi) in enumerate(((r.read[0], r.read[2]), (r.read[1], r.read[3]))):
            met = [s for s in starts[k] if s < hi and s + tile[k] > lo]
            box.append((met[0], min(shape[k], met[-1] + tile[k])))
        out.append(dataclasses.replace(r, read=(box[0][0], box[1][0], box[0][1], box[1][1])))
    return out


def read_box(slide, plan: SlidePlan, box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of a box ``(r0, c0, r1, c1)`` in working pixels, ``(h, w, 3)`` uint8, resampled from the plan's level."""
    r0, c0, r1, c1 = box
    ratio = plan.work_mpp / (plan.mpp0 * slide.downsample(plan.level))  # level px per working px
    return read_scaled(slide, plan.level, ratio, r0, c0, r1 - r0, c1 - c0)


def region_nuclei(maps: np.ndarray, n_dist: int, n_types: int, post: PostprocessConfig, directions, region: Region,
                  scale: float, mpp0: float, class_names: dict, cells: tuple | None = None) -> dict:
    """Post-process a region's stitched maps and keep its own nuclei: table columns (runs in a worker).

    ``cells``: ``(tiles, tile, grids)`` of :func:`~embedcache.infer.slide_cells.region_weights`; the kept
    nuclei's pooling weights are then returned too, under ``weights``.
    """
    maps = maps.astype(np.float32, copy=False)
    types = maps[3 + n_dist:] if n_types else None
    nuclei = instances_from_maps(maps[:3], maps[3:3 + n_dist], types, post, directions)
    inst = nuclei["inst"]
    q0, d0 = region.read[:2]
    k = int(inst.max())
    centroids = np.zeros((0, 2))
    if k:
        from scipy import ndimage as ndi

        centroids = np.asarray(ndi.center_of_mass(np.ones_like(inst), inst, np.arange(1, k + 1)))
    owned = region.owns(centroids + (q0, d0))
    rows = region_rows(inst, nuclei, centroids, owned, region.index, np.array([q0, d0]), scale, mpp0, class_names)
    if cells is not None:
        rows["weights"] = region_weights(inst, rows["instance"], *cells)
    return rows


def _init_worker(parent: int):
    import torch

    torch.set_num_threads(1)
    die_with_parent(parent)


def _settings(run, plan: SlidePlan, region: int, margin: int, post: PostprocessConfig, overlap: int,
              store=None, tta: str = "none", outputs: tuple[bool, bool] = (True, True),
              cells: CellLayers | None = None, classifier=None, anndata: bool = False) -> dict:
    st = plan.path.stat()
    meta = Path(run.path) / "run.json"
    settings = {"version": PLAN_VERSION, "run": str(Path(run.path).resolve()),
                "run_mtime_ns": meta.stat().st_mtime_ns, "slide": plan.path.name, "slide_size": st.st_size,
                "slide_mtime_ns": st.st_mtime_ns, "mpp0": plan.mpp0, "work_mpp": plan.work_mpp, "region": region,
                "margin": margin, "overlap": overlap, "postprocess": post.to_dict()}
    # Settings added later are recorded only away from their defaults, so partials made before them resume.
    if store is not None:
        settings["store"] = str(store.path)
    if tta != "none":
        settings["tta"] = tta
    if outputs != (True, True):
        settings["geojson"], settings["overlays"] = outputs
    if cells is not None:
        settings["cells"] = list(cells.names)
    if classifier is not None:  # its path, layer, classes and content: a classifier changed in place is another
        settings["cell_classifier"] = classifier.describe()
    if anndata:
        settings["anndata"] = True
    return settings


def predict_slides(run, slides, out, *, mpp: float | None = None, run_mpp: float | None = None, region: int = 2048,
                   margin: int | None = None, overlap: int | None = None, store=None, post_workers: int = 0,
                   workers: int = 0, scheduler: str | None = None, device: str = "auto",
                   batch_size: int = 8, magnification: str = "40x", postprocess: PostprocessConfig | None = None,
                   gzip_geojson: bool = False, overwrite: bool = False, progress: bool = True,
                   table: bool = True, tta: str = "none", geojson: bool = True,
                   overlays: bool = True, cells: str | None = None,
                   cell_classifier=None, anndata: bool = False, wait: bool = True) -> list[SlideResult]:
    """Nuclei of every slide of ``slides`` (a slide file or a folder) into ``out`` (module docstring).

    ``tta`` (``flips``, ``d4``) averages the decoder's maps over the
    variants of each tile, as ``predict`` does (the encoder runs once per
    variant, or a store's cached variants are read); ``geojson=False`` and
    ``overlays=False`` leave out ``nuclei.geojson`` and the thumbnail with
    the nuclei dotted on it. ``cells`` (``default``, ``all`` or layer names):
    a vector per nucleus pooled from those layers' tokens of the same
    forward, into ``cells.zarr`` (:mod:`embedcache.infer.slide_cells`).
    ``cell_classifier`` (``probe --level cell --save``): each nucleus's class
    and probabilities from its vector (``cell_classes.parquet``, the GeoJSON's
    classifications and the summary's ``cells_per_class``); its layer is
    pooled whether ``cells`` names it or not. ``anndata``: also ``cells.h5ad``
    (:mod:`embedcache.infer.slide_anndata`; needs the ``cells`` extra).

    Several processes predicting into the same ``out`` share the work
    (claims in ``OUT.claims``, :mod:`embedcache.claims`): each claims a
    region before computing it, and the process that finds a slide's last
    region written merges the slide; a process first goes through every
    slide taking what no live process holds, then (unless ``wait`` is
    False) waits for the regions others hold and finishes those slides
    with them. A slide left to others has the status ``"left to other
    processes"``; one another process merged, ``"done by another process"``.

    ``store``: a store extracted from these slides on prediction's grid
    (``extract --format slides --overlap`` a quarter tile, at the run's
    resolution): its tokens replace the encoder for the tiles it holds
    (:class:`~embedcache.infer.features.SlideFeatures`); ``overlap``
    defaults to the store's.

    Raises
    ------
    DataError
        No slides, an unknown resolution for the run, a partial made by
        another run or with other settings (without ``overwrite``), or a full disk.
    """
    if anndata:
        from embedcache.infer.slide_anndata import require_anndata

        require_anndata()
    paths = list_slides(Path(slides)) if Path(slides).exists() else []
    if not paths:
        raise DataError(f"{slides}: no slides found (a slide file or a folder of .tif, .svs, .ndpi, ...)")
    if workers or scheduler:
        options = dict(mpp=mpp, run_mpp=run_mpp, region=region, margin=margin, overlap=overlap, store=store,
                       post_workers=post_workers, device=device, batch_size=batch_size, magnification=magnification,
                       postprocess=postprocess, gzip_geojson=gzip_geojson, overwrite=overwrite, tta=tta,
                       geojson=geojson, overlays=overlays, cells=cells, cell_classifier=cell_classifier,
                       anndata=anndata)
        from embedcache.infer.slide_cluster import predict_on_cluster

        return predict_on_cluster(run, paths, Path(out), options, workers, scheduler, progress)
    loaded = load_run(run, device=str(resolve_device(device)))
    work_mpp = run_mpp or loaded.store.get("mpp")
    if not work_mpp:
        raise DataError(f"{loaded.path}: the run does not record the resolution it was trained at; pass --run-mpp "
                        "(microns per pixel of its tiles, e.g. 0.25 for PanNuke at 40x)")
    tile = tuple(loaded.store["tile_shape"])
    cache = open_store(store) if store is not None else None
    if overlap is None:
        overlap = cache.tile_overlap if cache is not None else min(tile) // 4
    margin = min(tile) + min(tile) // 4 if margin is None else margin
    if region < min(tile):
        raise ConfigError(f"regions of {region} px are smaller than the run's {tile[0]}-px tiles")
    from embedcache.infer.tune import run_postprocess

    post, _ = run_postprocess(loaded.path, magnification, postprocess)  # the run's tuned thresholds if any
    variants = tta_variants(tta)
    predictor = Predictor(loaded.model, loaded.directions, batch_size, post, variants)
    features = SlideFeatures(LiveFeatures(loaded, str(resolve_device(device)), batch_size, variants), cache,
                             run=loaded, work_mpp=float(work_mpp), overlap=overlap, variants=variants)
    classifier = None
    if cell_classifier is not None:
        from embedcache.probes.classifier import load_classifier

        classifier = load_classifier(cell_classifier)
        shapes = loaded.store["shapes"]
        classifier.check(loaded.store["encoder"]["name"], loaded.store["weights_sha256"],
                         {n: int(s[0]) for n, s in shapes.items()}, str(cell_classifier))
        named = [] if cells is None else [n for n in cells.split(",") if n.strip()] if cells not in (
            "default", "all") else list(loaded.store["layers"])
        cells = ",".join(dict.fromkeys([*named, classifier.layer]))
    layers = (cell_layers(cells, list(loaded.store["layers"]), loaded.store["shapes"])
              if cells is not None else None)
    outputs = Outputs(tta, geojson, overlays, gzip_geojson, layers, classifier, anndata)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with use_threads(beside=post_workers):  # the post-processing processes share the thread budget
        with Claims(claims_place(out), "predict-slides") as claims:
            args = (loaded, predictor, features, out, float(work_mpp), mpp, region, margin, overlap, post,
                    post_workers, outputs, overwrite, progress, table, claims)
            # First every slide's regions no live process holds; then, waiting, the slides left to others.
            results = _predict_paths(paths, *args, wait=False)
            left = [k for k, r in enumerate(results) if r.status == LEFT]
            if wait and left:
                for k, r in zip(left, _predict_paths([paths[k] for k in left], *args, wait=True)):
                    results[k] = r
                if table:
                    write_table(out, results, claims)
            if all(r.status != LEFT for r in results):  # every slide finished, here or by another
                claims.job_done()
        return results


def _predict_paths(paths, loaded, predictor, features, out: Path, work_mpp: float, mpp, region: int, margin: int,
                   overlap: int, post, post_workers: int, outputs: Outputs, overwrite: bool, progress: bool,
                   table: bool, claims: Claims, wait: bool) -> list[SlideResult]:
    from embedcache.progress import progress_bar

    results: list[SlideResult] = []
    # Spawned, not forked: the parent holds torch's threads, which a fork would copy mid-flight.
    pool = (ProcessPoolExecutor(post_workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init_worker, initargs=(os.getpid(),))
            if post_workers else None)
    try:
        for path in progress_bar(paths, desc="slides", unit="slide", disable=not progress or len(paths) < 2):
            t0 = time.perf_counter()
            try:
                plan = plan_slide(path, float(work_mpp), region, margin, mpp)
                result = _predict_slide(loaded, plan, predictor, features, out, pool, post_workers, region, margin,
                                        overlap, post, outputs, overwrite, progress, claims, wait)
            except OutputMismatchError:
                raise
            except DataError as exc:
                result = SlideResult(Path(path).stem, "failed", reason=str(exc))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DataError(f"{out}: the disk is full; free space and run the same command again to "
                                    "resume (finished regions and slides are kept)") from None
                result = SlideResult(Path(path).stem, "failed", reason=f"{type(exc).__name__}: {exc}")
            result.seconds = result.seconds or time.perf_counter() - t0
            results.append(result)
            if table:
                write_table(out, results, claims)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def _predict_slide(run, plan: SlidePlan, predictor: Predictor, features, out: Path, pool, workers: int, region: int,
                   margin: int, overlap: int, post, outputs: Outputs, overwrite: bool, progress: bool,
                   claims: Claims, wait: bool = True):
    from embedcache.progress import progress_bar

    settings = _settings(run, plan, region, margin, post, overlap, features.store, outputs.tta,
                         (outputs.geojson, outputs.overlays), outputs.cells,
                         outputs.classifier, outputs.anndata)
    final = out / plan.name
    done = final / "summary.json"
    if done.exists() and not overwrite:
        return _finished_slide(plan, final, settings, "already done")
    partial = files.partial_path(final)
    plan_file = partial / "plan.json"

    def open_partial(joined: bool) -> bool:
        """Create or resume the slide's partial (one process at a time); False when another finished the slide."""
        files.recover(final)  # a process killed in the slide's swap left it complete: it moves in
        if done.exists() and (joined or not overwrite):
            return False
        if partial.exists() and not (overwrite and not joined):
            old = json.loads(plan_file.read_text()) if plan_file.exists() else None
            if old != settings:
                raise OutputMismatchError(f"{partial} holds another run's partial results (or other settings"
                                          f"{_classified(old, settings)}); pass --overwrite to start that slide "
                                          "afresh, or choose another --out")
        else:
            files.remove(partial)
            (partial / "regions").mkdir(parents=True)
            files.write_json(plan_file, settings)
        return True

    if not open_alone(claims, str(final), open_partial, name=f"{plan.name}.slide"):
        return _finished_slide(plan, final, settings, "done by another process")
    region_file = lambda r: partial / "regions" / f"{r:05d}.parquet"  # noqa: E731
    tile = tuple(run.store["tile_shape"])
    left = {r.index: r for r in on_tile_grid([r for r in plan.regions if not region_file(r.index).exists()],
                                             plan.shape, tile, overlap)}

    def region_done(index: int) -> bool:
        value = region_file(index).exists()
        # Read first: a finishing process merges the regions away only after writing the partial's summary.
        if not partial.exists() or (partial / "summary.json").exists():
            raise FinishedElsewhere
        return value

    shared = SharedUnits(claims, sorted(left), region_done, name=lambda i: f"{plan.name}.r{i:05d}")
    class_names = {int(k): v for k, v in run.store.get("class_names", {}).items()}
    features.start(plan.name, plan.dims0, plan.mpp0)
    clock = [time.perf_counter()]
    # Margins encoded once: the tiles regions share are kept between them (bounded), over the regions left in
    # order; another process's regions only keep a tile longer, and a tile kept or encoded again is the same.
    order = [left[i] for i in sorted(left)]
    tiles_shared = SharedTiles(features, tile_uses(order, tile, overlap), kept_limit(order, tile, overlap))
    counted = [0, 0, 0]  # tiles read from the store, encoded and reused, at the last region written

    def run_pass():
        slide = open_slide(plan.path)
        try:
            def images():
                for index in shared:
                    q0, d0, q1, d1 = left[index].read
                    pixels = read_box(slide, plan, left[index].read)
                    tiles = [(o, ((q0 + o[0], d0 + o[1]), cut_tile(pixels, o, tile)))
                             for o in plan_tiles((q1 - q0, d1 - d0), tile, overlap)]
                    yield TiledImage(f"{index}", (q1 - q0, d1 - d0), tiles)

            def write(r, rows, tokens=None):
                """A finished region, with the work it took (time since the last region was written)."""
                if tokens is not None:  # its vectors first: a region with a table has its vectors
                    write_vectors(vectors_file(partial, r.index),
                                  region_cells(tokens, rows.pop("weights"), outputs.cells, outputs.classifier))
                now = time.perf_counter()
                # The work since the last region written (batches span regions; a slide's sums are exact).
                count = [features.cached, features.computed, tiles_shared.reused]
                work = dict(zip(("cached", "encoded", "reused"), (c - c0 for c, c0 in zip(count, counted))))
                write_region(region_file(r.index), rows, {**work, "seconds": round(now - clock[0], 3)})
                shared.finished(r.index)
                counted[:], clock[0] = count, now
                bar.update(1)

            model = predictor.model
            args = (model.n_dist, model.n_types, post, predictor.directions)
            pending = []
            bar = progress_bar(total=len(plan.regions), initial=len(plan.regions) - len(shared.pending),
                               unit="region", desc=plan.name, disable=not progress, dynamic_ncols=True)

            def settle(block: bool):
                while pending and (block or pending[0][1].done()):
                    r, fut, tokens = pending.pop(0)
                    write(r, fut.result(), tokens)

            keeper = TokenKeeper(tiles_shared, outputs.cells) if outputs.cells is not None else None
            for image, maps, _ in predictor.stitched(images(), keeper or tiles_shared):
                r = left[int(image.name)]
                tokens = keeper.take(len(image.tiles)) if keeper is not None else None
                cells = ([o for o, _ in image.tiles], tile, outputs.cells.grids) if keeper is not None else None
                if pool is None:
                    write(r, region_nuclei(maps, *args, r, plan.scale, plan.mpp0, class_names, cells), tokens)
                    continue
                pending.append((r, pool.submit(region_nuclei, maps.astype(np.float16), *args, r, plan.scale,
                                               plan.mpp0, class_names, cells), tokens))
                settle(block=len(pending) > workers)
            settle(block=True)
            bar.close()
        finally:
            slide.close()

    result: list[float] = []

    def finish():
        slide = open_slide(plan.path)
        try:
            th, tw = slide.dims[plan.mask_level]
            thumb = slide.read(plan.mask_level, 0, 0, th, tw)
            thumb_scale = slide.downsample(plan.mask_level)
        finally:
            slide.close()
        region_files = sorted((partial / "regions").glob("*.parquet"))
        # The work of every run that wrote a region of this slide, not only this one's (a resumed slide).
        work = region_work(region_files)
        seconds = work["seconds"] + time.perf_counter() - clock[0]
        area_mm2 = plan.tissue_fraction * plan.shape[0] * plan.shape[1] * plan.work_mpp ** 2 / 1e6
        summary = {"slide": plan.path.name, "settings": settings, "regions": len(plan.regions),
                   "tissue_mm2": round(area_mm2, 3), "seconds": round(seconds, 2), "mpp0": plan.mpp0,
                   "work_mpp": plan.work_mpp, "level": plan.level,
                   "tiles": {"cached": int(work["cached"]), "encoded": int(work["encoded"]),
                             "reused": int(work["reused"])}}
        classes = region_classes(partial, outputs.classifier) if outputs.classifier is not None else None
        summary = finish_slide(partial, region_files, class_names, summary, thumb, thumb_scale,
                               outputs.gzip_geojson, outputs.geojson, outputs.overlays, classes)
        if outputs.cells is not None:
            record = {"slide": plan.path.name, "mpp0": plan.mpp0, "work_mpp": plan.work_mpp,
                      "encoder": run.store.get("encoder"), "weights_sha256": run.store.get("weights_sha256"),
                      "run": settings["run"], "pooling": "area-weighted patch tokens, identity frame"}
            per_class = finish_vectors(partial, partial, region_files, outputs.cells, record, outputs.classifier)
            if outputs.classifier is not None:
                summary = {**summary, "cells_per_class": per_class}
                files.write_json(partial / "summary.json", summary)
        if outputs.anndata:
            from embedcache.infer.slide_anndata import write_anndata

            write_anndata(partial, {k: summary.get(k) for k in ("slide", "settings", "mpp0", "work_mpp")})
        # Merged into nuclei.parquet and cells.zarr. The regions go first: a run killed between the two
        # computes the regions again, where vectors gone before their regions could never be merged.
        files.remove(partial / "regions")
        files.remove(partial / "vectors")
        files.swap_in(partial, final)
        result[:] = [summary["nuclei"], seconds]

    finished_by = work_through(claims, shared, run_pass, lambda: done.exists(), finish, wait,
                               name=f"{plan.name}.slide")
    if finished_by == "another" and not done.exists():
        # Another process was merging the slide: wait until it is done with it; a dead one's merge is finished.
        with held(claims, f"{plan.name}.slide"):
            files.recover(final)
            if not done.exists() and (partial / "regions").exists():
                finish()  # it died merging: every region is written, merged again here
                finished_by = "this"
            elif not done.exists() and partial.exists():
                files.swap_in(partial, final)  # it died between merging and the swap: the partial is complete
    said = shared.summary(len(plan.regions)).replace("units", "regions")
    said = said if len(shared.computed) < len(plan.regions) or "took over" in said else ""
    if finished_by == "this":
        return SlideResult(plan.name, "done", int(result[0]), result[1], regions=len(plan.regions), shared=said)
    if finished_by == "another":
        found = _finished_slide(plan, final, settings, "done by another process")
        found.shared = said
        return found
    return SlideResult(plan.name, LEFT, regions=len(plan.regions),
                       reason=shared.summary(len(plan.regions)).replace("units", "regions"))



def _finished_slide(plan: SlidePlan, final: Path, settings: dict, status: str) -> SlideResult:
    """A slide found finished (by an earlier run or another process); refused when made otherwise."""
    summary = json.loads((final / "summary.json").read_text())
    if summary.get("settings") == settings:
        return SlideResult(plan.name, status, summary["nuclei"], summary.get("seconds", 0.0),
                           regions=len(plan.regions))
    raise OutputMismatchError(f"{final} holds nuclei from another run or other settings"
                              f"{_classified(summary.get('settings') or {}, settings)}; pass --overwrite to "
                              "replace them (they stay until the new ones are complete), or choose another --out")


def _classified(old: dict, new: dict) -> str:
    """Why two slides' settings differ when it is the cell classifier: its classes, or the classifier itself."""
    a, b = old.get("cell_classifier"), new.get("cell_classifier")
    if a == b or not (isinstance(a, dict) and b):
        return ""
    if a.get("classes") != b["classes"]:
        return (f": its cells were classified into {', '.join(a.get('classes', []))}, "
                f"{b['path']} predicts {', '.join(b['classes'])}")
    return f": its cells were classified by another classifier than {b['path']}"
