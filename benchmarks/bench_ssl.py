"""Self-supervised descriptors: size, retrieval speed, head throughput, ADDR and precision at k.

    python benchmarks/bench_ssl.py [--slides 6] [--size 2048] [--tile 128] [--encoder efficientnet_lite0]

1. Writes synthetic slides (tumour regions in a patchwork of normal tissue,
   uneven staining, a colour cast per slide) and extracts them with a
   frozen encoder (EfficientNet-Lite0 with its ImageNet weights by default:
   offline, the "ImageNet features" baseline of the paper).
2. Trains a head (fit-ssl head mode) on the last layer's pooled vectors,
   and writes two controls beside it: the same head untrained, and a
   Gaussian random projection of the raw vectors to the same size.
3. Prints, on the same queries (held-out slides) and pairs: precision at k
   (overall and per label) and ADDR for the raw vectors, the trained head,
   the untrained head and the random projection; descriptor bytes per tile
   against the full cached embedding; head training pairs/s.
4. Times retrieval over ``--n-desc`` random 128-d descriptors (100,000 by
   default) on ``--n-slides`` slides, a quarter of them queries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedcache import open_store
from embedcache.config import ExtractConfig, RetrievalConfig, SSLConfig
from embedcache.datasets.synthetic_slides import write_synthetic_slides
from embedcache.extract import extract
from embedcache.metrics import retrieval
from embedcache.store.writer import add_pooled_layer
from embedcache.train.ssl import fit_head


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def retrieval_speed(n: int, n_slides: int, dim: int, k: int, seed: int = 0) -> tuple[float, float, int]:
    """Wall and CPU seconds of precision at k over ``n`` random descriptors (a quarter of the slides as queries)."""
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    source = rng.integers(0, n_slides, n)
    labels = np.where(rng.random(n) < 0.2, "tumour", "normal")
    queries = np.flatnonzero(source < n_slides // 4)
    t, c = time.perf_counter(), time.process_time()
    retrieval.precision_at_k(desc, labels, source, queries, k=k)
    return time.perf_counter() - t, time.process_time() - c, len(queries)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", type=int, default=2048, help="slide side in pixels at 0.5 um/px")
    ap.add_argument("--tile", type=int, default=128, help="tile side in pixels at 0.5 um/px")
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--variants", default="flips")
    ap.add_argument("--d-near", type=float, default=100.0)
    ap.add_argument("--d-far", type=float, default=300.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-desc", type=int, default=100_000)
    ap.add_argument("--n-slides", type=int, default=200, help="slides of the timed retrieval")
    ap.add_argument("--keep", type=Path, default=None, help="keep the slides and store in this folder")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-ssl-"))
    try:
        t = time.perf_counter()
        if not (work / "slides").exists():  # --keep: a second run reuses slides and store
            write_synthetic_slides(work / "slides", n_slides=args.slides, shape=(args.size, args.size), mpp=0.5)
        print(f"{args.slides} synthetic slides of {args.size}x{args.size} px at 0.5 um/px "
              f"({time.perf_counter() - t:.1f} s)")
        config = ExtractConfig(encoder=args.encoder, variants=args.variants, tile_size=args.tile, format="slides",
                               loader_workers=0, device="cpu")
        res = extract(work / "slides", work / "slides.zarr", config, progress=False)
        store = open_store(res.path)
        print(f"extracted {res.n_tiles} tiles x {res.n_variants} variants with {args.encoder} "
              + ("(kept from an earlier run)" if res.skipped else f"({res.tiles_per_second:.1f} tiles/s)"))

        pairs = dict(d_near=args.d_near, d_far=args.d_far)
        head = fit_head(res.path, SSLConfig(epochs=args.epochs, pairs=args.pairs, **pairs), progress=False)
        fit_head(res.path, SSLConfig(epochs=0, name="untrained", **pairs), progress=False)
        last = store.layers[-1]
        rng = np.random.default_rng(0)
        raw = np.stack([store.pooled(last, slice(None), variant=v) for v in range(len(store.variants))], 1)
        proj = rng.normal(size=(raw.shape[-1], 128)).astype(np.float32) / np.sqrt(128)
        add_pooled_layer(store, "random-projection", raw @ proj, {"source_layer": last, "held_out": head.held_out})
        print(f"head: {head.pairs_seen} pairs in {head.seconds:.1f} s = {head.pairs_per_second:,.0f} pairs/s "
              f"(loss {head.losses[0]:.4f} -> {head.losses[-1]:.4f}; {head.n_near} near, {head.n_far} far pairs "
              f"available; held out {', '.join(head.held_out)})")

        report = retrieval.compare_stores([res.path], [last, "ssl", "untrained", "random-projection"],
                                          RetrievalConfig(k=args.k, **pairs))
        row = report.rows[0]
        print(f"\nretrieval on {row.n_queries} queries from {', '.join(report.query_slides)}; "
              f"ADDR over {row.n_near} near and {row.n_far} far pairs (d_near {args.d_near:g} um, "
              f"d_far {args.d_far:g} um, same slide)")
        print(report.table())

        summary = open_store(res.path).summary()
        full_disk = sum(lay["bytes_per_tile_variant"] for lay in summary["layers"].values())
        full_raw = sum(np.prod(lay["tokens"]) * np.dtype(lay["dtype"]).itemsize for lay in summary["layers"].values())
        desc_disk = open_store(res.path).nbytes("pooled/ssl/mean") / (store.n_tiles * len(store.variants))
        print(f"\nbytes per tile (one variant): descriptor {128 * 4} B float32 ({_human(desc_disk)} on disk) vs "
              f"full cached embedding {_human(full_raw)} as stored ({_human(full_disk)} on disk, "
              f"{len(summary['layers'])} layers of tokens): {full_raw / 512:,.0f}x smaller "
              f"({full_disk / max(desc_disk, 1):,.0f}x on disk)")

        seconds, cpu, n_queries = retrieval_speed(args.n_desc, args.n_slides, 128, args.k)
        print(f"retrieval over {args.n_desc:,} descriptors (128-d, {args.n_slides} slides): {n_queries:,} queries, "
              f"k={args.k}, {seconds:.2f} s ({n_queries / seconds:,.0f} queries/s; {cpu:.1f} s of CPU), "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
