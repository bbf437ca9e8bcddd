"""The store's write and read paths alone, on pinned cores: write_unit per tile-variant and a training batch's read.

    python benchmarks/bench_store_io.py [--encoder efficientnet_lite0] [--tiles 32] [--variants d4]
                                        [--repeats 5] [--cores 1] [--profile]

1. Write. The arrays of real units (the encoder's tokens and pooled vectors,
   tiles, labels, tile records), computed once, written again and again by
   ``StoreWriter.write_unit`` (each unit's shard encoded in one call,
   :mod:`embedcache.store.shards`) and by zarr's own pipeline (every array
   of the unit assigned through zarr in one concurrent batch, as
   ``write_unit`` did before), the arms alternating; ms per tile-variant and
   MB/s of raw bytes (every array, and tokens alone) per core.
2. Read. A training batch (8 random ``(tile, variant)`` pairs of one window
   of units, every layer and the image) through ``Store.samples`` (straight
   from the shards) and through zarr (each chunk an ``AsyncArray.getitem``,
   all in one concurrent batch, as ``samples`` did before), alternating; ms
   per batch and chunks/s.

The process is pinned to ``--cores`` cores (``os.sched_setaffinity``), so
zarr's codec threads share them too. With ``--profile``, a cProfile of each
arm (top functions by own time) follows the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from embedcache import open_store
from embedcache.config import ExtractConfig
from embedcache.datasets.synthetic import write_demo_data
from embedcache.encoders import get_spec
from embedcache.extract.job import ExtractionJob
from embedcache.store import schema


def zarr_write_unit(writer, unit: int, arrays: dict) -> None:
    """A unit written through zarr's pipeline: every array assigned in one concurrent batch, then marked done."""
    import zarr
    from zarr.core.sync import sync

    start, stop = schema.unit_range(unit, writer.n_tiles, writer.unit_tiles)
    with zarr.config.set({"array.write_empty_chunks": True, "codec_pipeline.batch_size": 256}):
        targets = [(writer.group[path].async_array, data) for path, data in arrays.items()]

        async def write_all():
            await asyncio.gather(*(a.setitem(slice(start, stop), data) for a, data in targets))

        sync(write_all())
    writer.array(schema.DONE)[unit] = 1


def zarr_samples(store, pairs, layers) -> list:
    """A batch's chunks through zarr: one ``getitem`` per chunk, all in one concurrent batch."""
    from zarr.core.sync import sync

    arrays = [store.group[schema.tokens_path(layer)].async_array for layer in layers]
    images = store.group[schema.IMAGES].async_array

    async def read_all():
        reads = [a.getitem((t, v)) for a in arrays for t, v in pairs]
        reads += [images.getitem((t,)) for t, _ in pairs]
        return await asyncio.gather(*reads)

    return sync(read_all())


def timed(fn, repeats: int, profile: cProfile.Profile | None = None) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        if profile is not None:
            profile.enable()
        fn()
        if profile is not None:
            profile.disable()
        times.append(time.perf_counter() - t)
    return times


def show_profile(name: str, profile: cProfile.Profile, top: int = 12) -> None:
    print(f"\n--- profile: {name} (own time, top {top}) ---")
    pstats.Stats(profile).sort_stats("tottime").print_stats(top)


def write_bench(job: ExtractionJob, work: Path, args, profiles: dict) -> dict:
    units = [job.compute_unit(u) for u in range(job.n_units)]
    tile_variants = job.dataset.n_tiles * len(job.run.variants)
    raw = sum(a.nbytes for arrays in units for a in arrays.values())
    raw_tokens = sum(a.nbytes for arrays in units for k, a in arrays.items() if k.startswith("tokens/"))
    arms = {"direct": lambda w, u, a: w.write_unit(u, a), "zarr": zarr_write_unit}
    writers = {name: job.open_writer(work / f"write-{name}.zarr", overwrite=True) for name in arms}
    times = {name: [] for name in arms}
    for r in range(args.repeats + 1):
        for name, write in arms.items():
            prof = profiles.get(f"write {name}") if r else None
            t = timed(lambda: [write(writers[name], u, a) for u, a in enumerate(units)], 1, prof)[0]
            if r:  # the first round is warm-up
                times[name].append(t)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"ms_per_tile_variant": 1e3 * med / tile_variants, "mb_s": raw / med / 1e6,
                     "token_mb_s": raw_tokens / med / 1e6}
    out["speedup"] = statistics.median(z / d for z, d in zip(times["zarr"], times["direct"]))
    out["raw_mb_per_tile_variant"] = raw / tile_variants / 1e6
    # Same bytes either way (the tests check every object; here the last unit written by each arm).
    a, b = (Path(str(writers[name].path)) for name in ("direct", "zarr"))
    out["same_bytes"] = all((b / f.relative_to(a)).read_bytes() == f.read_bytes()
                            for f in a.rglob("*") if f.is_file() and f.name != "zarr.json")
    for w in writers.values():
        w.finish()
    return out


def read_bench(store_path: Path, args, profiles: dict) -> dict:
    store = open_store(store_path)
    rng = np.random.default_rng(0)
    n, v, unit = store.n_tiles, len(store.variants), int(store.config.unit_tiles)
    batches = []
    for _ in range(args.batches):
        first = int(rng.integers(0, max(1, -(-n // unit) - 3))) * unit
        tiles = rng.integers(first, min(n, first + 4 * unit), size=8)  # one window of four units, as training
        batches.append([(int(t), int(rng.integers(v))) for t in tiles])
    arms = {"direct": lambda b: store.samples(b, store.layers, stored=True),
            "zarr": lambda b: zarr_samples(store, b, store.layers)}
    for b in batches[:2]:
        for read in arms.values():
            read(b)  # warm-up: the page cache, and the shard indexes of a complete store
    times = {name: [] for name in arms}
    for r in range(args.repeats):
        for name, read in arms.items():
            times[name].append(timed(lambda: [read(b) for b in batches], 1, profiles.get(f"read {name}"))[0])
    chunks = len(batches) * 8 * (len(store.layers) + 1)
    return {name: {"ms_per_batch": 1e3 * statistics.median(ts) / len(batches),
                   "chunks_s": chunks / statistics.median(ts)} for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--variants", default="d4")
    ap.add_argument("--unit-tiles", type=int, default=16)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=20, help="batches per timed read")
    ap.add_argument("--cores", type=int, default=1, help="pin the process to this many cores (0: leave as is)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of each arm")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-store-io-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data").exists():
        write_demo_data(work / "data", n_tiles=args.tiles, seed=1, folds=1)
    spec = get_spec(args.encoder)
    cfg = ExtractConfig(encoder=args.encoder, weights="random" if spec.weights.startswith("hf-hub:") else None,
                        variants=args.variants, unit_tiles=args.unit_tiles, dtype=args.dtype, device="cpu",
                        loader_workers=0)
    job = ExtractionJob(work / "data", cfg)
    profiles = {f"{what} {arm}": cProfile.Profile() for what in ("write", "read") for arm in ("direct", "zarr")} \
        if args.profile else {}
    print(f"{args.encoder} {args.dtype} {args.variants}: {args.tiles} tiles in units of {args.unit_tiles}, "
          f"{len(os.sched_getaffinity(0))} core(s), repeats {args.repeats}")
    w = write_bench(job, work, args, profiles)
    print(f"write_unit  raw {w['raw_mb_per_tile_variant']:.3f} MB per tile-variant; identical objects: "
          f"{w['same_bytes']}")
    for name in ("direct", "zarr"):
        r = w[name]
        print(f"  {name:<6} {r['ms_per_tile_variant']:7.3f} ms per tile-variant  {r['mb_s']:8.1f} MB/s raw "
              f"({r['token_mb_s']:8.1f} MB/s of tokens)")
    print(f"  zarr / direct time, median of paired repeats: {w['speedup']:.2f}x")
    r = read_bench(work / "write-direct.zarr", args, profiles)
    print(f"read batch  8 samples x {len(job.layers)} layers + image, one window of units")
    for name in ("direct", "zarr"):
        print(f"  {name:<6} {r[name]['ms_per_batch']:7.2f} ms per batch  {r[name]['chunks_s']:9.0f} chunks/s")
    for name, prof in profiles.items():
        show_profile(name, prof)


if __name__ == "__main__":
    main()
