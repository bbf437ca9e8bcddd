"""Reading published datasets as released: a full PanNuke fold into extraction, MoNuSeg XML rasterisation.

1. A fake PanNuke fold of ``--tiles`` tiles (2,656, fold 1's size, by
   default) is written twice: as released (``Fold 1/images/fold1/images.npy``
   float64, ``masks/fold1/masks.npy`` float64, 12.5 GB) and in the flat layout
   with uint8 images and int32 masks. Each is read unit by unit as extraction
   reads it (:func:`embedcache.extract.job.read_unit`, 16 tiles a unit, images
   and labels), in a fresh process: tiles/s, peak Python allocations
   (tracemalloc) and peak anonymous resident memory (``RssAnon``, sampled after
   every unit; the memory-mapped file pages are the page cache's, reclaimable,
   and reported apart as ``RssFile``). The fold must never be held in memory:
   peak allocations stay near one unit's worth.
2. MoNuSeg: ``--xml-images`` Aperio XML files of ``--nuclei`` outlines of 24
   vertices each over a 1000x1000 image, parsed and rasterised
   (:func:`embedcache.datasets.monuseg.read_regions` and ``rasterise``): images/s.

Run alone, from the repository root, on a quiet machine (writes 2 x the fold to
``--tmp``; removed at the end)::

    python benchmarks/bench_datasets.py [--tiles 2656] [--xml-images 10] [--nuclei 600] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

UNIT_TILES = 16


def write_fold(root: Path, n: int, released: bool, seed: int = 0) -> Path:
    """A fold of ``n`` tiles written block by block (never whole in memory); returns the folder to read."""
    from embedcache.datasets.synthetic import labels_to_pannuke_masks, make_tiles

    if released:
        img_dir, mask_dir = root / "Fold 1" / "images" / "fold1", root / "Fold 1" / "masks" / "fold1"
    else:
        img_dir = mask_dir = root / "fold1"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    img_dtype, mask_dtype = (np.float64, np.float64) if released else (np.uint8, np.int32)
    images = np.lib.format.open_memmap(img_dir / "images.npy", "w+", img_dtype, (n, 256, 256, 3))
    masks = np.lib.format.open_memmap(mask_dir / "masks.npy", "w+", mask_dtype, (n, 256, 256, 6))
    block = 64
    pool_images, pool_labels, tissue = make_tiles(block, seed=seed, size=256)
    pool_masks = labels_to_pannuke_masks(pool_labels)
    for start in range(0, n, block):
        stop = min(n, start + block)
        images[start:stop] = pool_images[:stop - start]
        masks[start:stop] = pool_masks[:stop - start]
    images.flush()
    masks.flush()
    del images, masks
    np.save(img_dir / "types.npy", np.asarray([tissue[i % block] for i in range(n)]))
    return root


def _rss() -> tuple[int, int]:
    """(RssAnon, RssFile) of this process in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0)


def read_all(path: str) -> dict:
    """Read every unit of the dataset at ``path`` as extraction does (run in a child process)."""
    import tracemalloc

    from embedcache.datasets import open_dataset
    from embedcache.extract.job import read_unit
    from embedcache.store import schema

    ds = open_dataset(path)
    n_units = schema.n_units(ds.n_tiles, UNIT_TILES)
    anon0, _ = _rss()
    peak_anon = peak_file = 0
    tracemalloc.start()
    t0 = time.perf_counter()
    for unit in range(n_units):
        images, labels, _ = read_unit(ds, unit, UNIT_TILES, ())
        anon, file = _rss()
        peak_anon, peak_file = max(peak_anon, anon - anon0), max(peak_file, file)
    seconds = time.perf_counter() - t0
    peak_alloc = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"layout": ds.layout, "tiles": ds.n_tiles, "seconds": seconds, "tiles_per_s": ds.n_tiles / seconds,
            "peak_alloc_mb": peak_alloc / 2**20, "peak_rss_anon_mb": peak_anon / 2**20,
            "peak_rss_file_mb": peak_file / 2**20, "unit_mb": images.nbytes * UNIT_TILES / len(images) / 2**20}


def bench_pannuke(n: int, tmp: Path) -> list[dict]:
    out = []
    for released in (True, False):
        root = tmp / ("released" if released else "flat")
        t0 = time.perf_counter()
        write_fold(root, n, released)
        written = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*.npy"))
        res = subprocess.run([sys.executable, __file__, "--read", str(root)], capture_output=True, text=True,
                             check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row.update(name="as released (float64)" if released else "flat uint8", gb_on_disk=size / 1e9,
                   write_s=written)
        out.append(row)
        shutil.rmtree(root)
    return out


def bench_monuseg(n_images: int, n_nuclei: int, tmp: Path) -> dict:
    from release_fixtures import aperio_xml

    from embedcache.datasets.monuseg import rasterise, read_regions

    rng = np.random.default_rng(0)
    files = []
    for k in range(n_images):
        outlines = []
        for _ in range(n_nuclei):
            cy, cx = rng.uniform(10, 990, 2)
            angle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            r = rng.uniform(4, 9) * (1 + 0.2 * rng.standard_normal(24))
            outlines.append(list(zip(cx + r * np.cos(angle), cy + r * np.sin(angle))))
        f = tmp / f"image{k}.xml"
        f.write_text(aperio_xml(outlines))
        files.append(f)
    t0 = time.perf_counter()
    for f in files:
        regions, _ = read_regions(f)
        rasterise(regions, (1000, 1000))
    seconds = time.perf_counter() - t0
    return {"images": n_images, "nuclei_per_image": n_nuclei, "seconds": seconds, "images_per_s": n_images / seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=2656, help="tiles of the fake PanNuke fold (fold 1: 2656)")
    ap.add_argument("--xml-images", type=int, default=10)
    ap.add_argument("--nuclei", type=int, default=600, help="outlines per MoNuSeg image (the release: ~600)")
    ap.add_argument("--tmp", type=Path, default=None, help="where to write the folds (default: the system's)")
    ap.add_argument("--read", default=None, help=argparse.SUPPRESS)  # the child process's job
    args = ap.parse_args(argv)
    if args.read:
        print(json.dumps(read_all(args.read)))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_datasets_", dir=args.tmp))
    try:
        print(f"PanNuke fold of {args.tiles} tiles, read unit by unit ({UNIT_TILES} tiles) as extraction reads it:")
        print(f"{'layout':<24}{'GB':>7}{'tiles/s':>10}{'alloc MB':>10}{'anon MB':>9}{'file MB':>9}")
        for r in bench_pannuke(args.tiles, tmp):
            print(f"{r['name']:<24}{r['gb_on_disk']:>7.2f}{r['tiles_per_s']:>10.1f}{r['peak_alloc_mb']:>10.1f}"
                  f"{r['peak_rss_anon_mb']:>9.1f}{r['peak_rss_file_mb']:>9.1f}")
        m = bench_monuseg(args.xml_images, args.nuclei, tmp)
        print(f"MoNuSeg XML: {m['images']} images of {m['nuclei_per_image']} outlines parsed and rasterised at "
              f"{m['images_per_s']:.2f} images/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
