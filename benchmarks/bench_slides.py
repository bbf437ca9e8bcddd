"""Whole-slide prediction: nuclei/s and tiles/s end to end, the share of the bare forward, peak memory, post-processing.

    python benchmarks/bench_slides.py [--size 8192] [--workers 2] [--work DIR]

A decoder is trained briefly on the demo tiles (efficientnet_lite0, ImageNet
weights); a synthetic slide of ``--size`` px square at 0.5 um/px is written,
and one of four times its area (the first repeated 2 x 2). Each is predicted
by ``embedcache predict --slides`` in its own process, which reports its
peak resident memory (and its workers'). Then, in this process:

  * the bare encoder + decoder forward over as many tiles as the small
    slide's prediction cut (tiles of that slide, timed on a sample of 64), and
    its ratio to the whole prediction; the rest is reading, stitching,
    post-processing and writing;
  * post-processing throughput of one region's maps on one core, and the
    speed-up of two worker processes over four regions;
  * tiles encoded against the tiles of the slide-wide grid the regions read
    (each once: 1.00 when neighbouring regions share their margins' tiles;
    the sum of every region's read box over it is what encoding each read
    box whole would cost);
  * the small slide again with ``--cells all`` (a vector per nucleus from the
    same forward): cells/s and the wall time against nuclei only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def child(args):
    """Predict one slide in this process; print JSON with the peak memory."""
    from embedcache.infer.slides import predict_slides

    t = time.perf_counter()
    res = predict_slides(args.run, args.slide, args.out, run_mpp=0.5, post_workers=args.workers, progress=False,
                         cells=args.cells)
    summary = json.loads((Path(args.out) / Path(args.slide).stem / "summary.json").read_text())
    # This process's own high-water mark: ru_maxrss would carry the parent's peak (writing the large slide)
    # across fork + exec.
    own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": time.perf_counter() - t, "nuclei": res[0].nuclei, "status": res[0].status,
                      "reason": res[0].reason, "regions": res[0].regions, "peak_mb": own, "worker_peak_mb": kids,
                      "tiles": summary["tiles"], "grid_tiles": grid_tiles(args.slide)}))


def grid_tiles(slide) -> dict:
    """Tiles of the slide-wide grid the regions read: ``distinct`` positions, and ``reads`` summed over regions."""
    from embedcache.geometry import plan_tiles
    from embedcache.infer.slides import on_tile_grid, plan_slide

    tile, overlap = (256, 256), 64
    plan = plan_slide(Path(slide), 0.5, 2048, 320)
    reads = [r.read for r in on_tile_grid(plan.regions, plan.shape, tile, overlap)]
    pos = [(q0 + o[0], d0 + o[1]) for q0, d0, q1, d1 in reads for o in plan_tiles((q1 - q0, d1 - d0), tile, overlap)]
    return {"distinct": len(set(pos)), "reads": len(pos)}


def build_run(work: Path) -> Path:
    run = work / "run"
    if (run / "run.json").exists():
        return run
    cmds = [["demo-data", str(work / "data")],
            ["extract", "--data", str(work / "data"), "--out", str(work / "s.zarr"), "--variants", "flips", "--quiet"],
            ["fit-decoder", "--store", str(work / "s.zarr"), "--out", str(run), "--epochs", "3", "--batch-size", "4",
             "--lr", "3e-3", "--quiet"]]
    for c in cmds:
        subprocess.run([sys.executable, "-m", "embedcache", *c], check=True, stdout=subprocess.DEVNULL)
    return run


def write_slides(work: Path, size: int) -> tuple[Path, Path]:
    from embedcache.datasets.synthetic_slides import make_slide, write_slide_tiff

    small, large = work / "small" / "s.tif", work / "large" / "l.tif"
    if not small.exists():
        image = make_slide((size, size), mpp=0.5, seed=3, n_tissue=2).image
        small.parent.mkdir(parents=True, exist_ok=True)
        large.parent.mkdir(parents=True, exist_ok=True)
        write_slide_tiff(small, image, mpp=0.5, levels=4)
        write_slide_tiff(large, np.tile(image, (2, 2, 1)), mpp=0.5, levels=5)
    return small, large


def predict_in_child(run: Path, slide: Path, out: Path, workers: int, cells: str | None = None) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a fresh prediction each time (a finished one is only skipped)
    cmd = [sys.executable, __file__, "--child", "--run", str(run), "--slide", str(slide), "--out", str(out),
           "--workers", str(workers)] + (["--cells", cells] if cells else [])
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    print(f"  {slide.name}: {res.stdout.strip().splitlines()[-1]}", flush=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bare_and_post(run: Path, slide: Path, workers: int) -> dict:
    import torch

    from embedcache.infer.features import LiveFeatures
    from embedcache.infer.predictor import Predictor
    from embedcache.infer.slides import on_tile_grid, plan_slide, read_box, region_nuclei
    from embedcache.datasets.wsi import open_slide
    from embedcache.geometry import plan_tiles
    from embedcache.infer.tiling import cut_tile
    from embedcache.train.checkpoint import load_run

    torch.set_grad_enabled(False)
    loaded = load_run(run)
    tile = tuple(loaded.store["tile_shape"])
    overlap, margin = tile[0] // 4, tile[0] + tile[0] // 4
    plan = plan_slide(slide, 0.5, 2048, margin)
    regions = on_tile_grid(plan.regions, plan.shape, tile, overlap)
    sizes = [(r.read[2] - r.read[0], r.read[3] - r.read[1]) for r in regions]
    n_tiles = sum(len(plan_tiles(s, tile, overlap)) for s in sizes)
    s = open_slide(slide)
    r = regions[len(regions) // 2]  # a region inside the tissue
    pixels = read_box(s, plan, r.read)
    keys = [cut_tile(pixels, o, tile) for o in plan_tiles(pixels.shape[:2], tile, overlap)][:64]
    features = LiveFeatures(loaded, "cpu", 8)
    predictor = Predictor(loaded.model, loaded.directions, 8)
    t = time.perf_counter()
    for i in range(0, len(keys), 8):
        tokens, px = features(keys[i:i + 8])
        predictor.tile_maps(tokens, px)
    per_tile = (time.perf_counter() - t) / len(keys)
    from embedcache.geometry import TiledImage

    image = TiledImage("0", pixels.shape[:2], [(o, cut_tile(pixels, o, tile))
                                                 for o in plan_tiles(pixels.shape[:2], tile, overlap)])
    _, maps, _ = next(predictor.stitched(iter([image]), features))
    args = (loaded.model.n_dist, loaded.model.n_types, predictor.postprocess, predictor.directions, r, plan.scale,
            plan.mpp0, {})
    t = time.perf_counter()
    rows = region_nuclei(maps, *args)
    one = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(4):
        region_nuclei(maps, *args)
    serial = time.perf_counter() - t
    half = maps.astype(np.float16)  # as predict_slides sends them
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(region_nuclei, [half] * 1, *([a] for a in args)))  # start the workers
        t = time.perf_counter()
        list(pool.map(region_nuclei, [half] * 4, *([a] * 4 for a in args)))
        parallel = time.perf_counter() - t
    return {"n_tiles": n_tiles, "bare_per_tile": per_tile, "region_px": maps.shape[1] * maps.shape[2],
            "post_one_s": one, "post_nuclei": len(rows["id"]), "post_speedup": serial / parallel}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--post-only", action="store_true", help="only the bare forward and post-processing figures")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cells", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-slides-"))
    work.mkdir(parents=True, exist_ok=True)
    run = build_run(work)
    small, large = write_slides(work, args.size)
    print(f"slides {args.size}^2 and {2 * args.size}^2 px at 0.5 um/px; run {run}; {args.workers} post-processing "
          "worker(s); regions 2048 px")
    m = bare_and_post(run, small, args.workers)
    print(f"post-processing on one core: {m['region_px'] / m['post_one_s'] / 1e6:.2f} Mpx/s "
          f"({m['post_nuclei'] / m['post_one_s']:.0f} nuclei/s); {args.workers} workers over 4 regions: "
          f"{m['post_speedup']:.2f}x one", flush=True)
    if args.post_only:
        return
    a = predict_in_child(run, small, work / "out-small", args.workers)
    b = predict_in_child(run, large, work / "out-large", args.workers)
    for name, r in (("small", a), ("large (4x area)", b)):
        print(f"{name:<16} {r['nuclei']:>8} nuclei in {r['seconds']:7.1f} s: {r['nuclei'] / r['seconds']:7.1f} "
              f"nuclei/s, {r['regions']} regions; peak memory {r['peak_mb']:.0f} MB "
              f"(workers {r['worker_peak_mb']:.0f} MB)")
    tiles_s = m["n_tiles"] / a["seconds"]
    bare = m["bare_per_tile"] * m["n_tiles"]
    print(f"small slide: {m['n_tiles']} tiles, {tiles_s:.1f} tiles/s end to end; bare encoder + decoder forward over "
          f"them {bare:.1f} s -> share of the whole {bare / a['seconds']:.2f}; the rest (reading, stitching, "
          f"post-processing, writing) {a['seconds'] - bare:.1f} s")
    print(f"peak memory large / small: {b['peak_mb'] / a['peak_mb']:.2f}")
    g, t = a["grid_tiles"], a["tiles"]
    print(f"small slide: {t['encoded'] + t['cached']} tiles encoded (or read), {t['reused']} reused, for "
          f"{g['distinct']} grid tiles read: {(t['encoded'] + t['cached']) / g['distinct']:.2f} (each read box "
          f"encoded whole: {g['reads'] / g['distinct']:.2f})")
    c = predict_in_child(run, small, work / "out-cells", args.workers, cells="all")
    print(f"small slide with --cells all: {c['nuclei'] / c['seconds']:.1f} cells/s, {c['seconds']:.1f} s against "
          f"{a['seconds']:.1f} s without ({c['seconds'] / a['seconds']:.2f}x); peak memory {c['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
