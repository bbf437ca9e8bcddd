"""Extraction efficiency, storage and fidelity.

    python benchmarks/bench_extract.py [--tiles 64] [--variants d4] [--repeats 3] [--encoders ...]

For each encoder, in one run, alternating:
  * bare: a loop of ``forward_intermediates`` over the same tile-variants,
    same batch size and threads, inputs prepared in advance, nothing stored;
  * ours: ``embedcache.extract`` end to end (read, variants, forward,
    float16, compress, checksum, write, mark done), measured two ways:
    the extraction loop, and the whole call including model load and
    dataset fingerprint.
Prints tile-variants/s (medians over repeats), the ratio ours/bare, bytes
per tile-variant per layer against raw float32, and the largest difference
between stored tokens and a live forward (float16 rounding expected).

With ``--breakdown``, where each millisecond per tile-variant goes, every
piece run alone and in turn in this process (nothing overlapped): reading a
unit (tiles, labels), the forward, the rest of ``run_unit`` (variants,
casts or int8 quantisation, pooling, overflow check, copies) and
``write_unit`` (compression, checksums, shard writes, for each ``--dtype``).

With ``--process``, each arm is also timed as a whole process, start to
exit, alternating: ``embedcache extract`` on the command line against a bare
process that imports the same libraries, builds the same encoder, reads the
same tiles from the dataset and runs the forward loop, storing nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedcache import open_store
from embedcache.config import ExtractConfig
from embedcache.datasets import open_dataset, resolve_variants
from embedcache.datasets.synthetic import write_demo_data
from embedcache.encoders import get_spec
from embedcache.encoders.features import FeatureExtractor, resolve_layers
from embedcache.encoders.load import load_encoder
from embedcache.extract import extract


def bare_loop(fx: FeatureExtractor, inputs: list[torch.Tensor]) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            fx.model.forward_intermediates(x, indices=fx.indices, intermediates_only=True, output_fmt="NCHW")
    return time.perf_counter() - t


def bare_process(data: str, encoder: str, variants: str, batch: int) -> None:
    """The bare arm of ``--process``: read, forward, keep nothing (run as ``--bare-process DATA``)."""
    torch.set_grad_enabled(False)
    spec = get_spec(encoder)
    weights = "random" if spec.weights.startswith("hf-hub:") else None
    enc = load_encoder(spec, weights, device="cpu")
    fx = FeatureExtractor(enc, resolve_layers(enc.model, spec.layers, "default"))
    tiles = torch.from_numpy(open_dataset(data).images(slice(None)))
    for v in resolve_variants(variants):
        moved = v.apply_torch(tiles, spatial=(1, 2))
        for i in range(0, len(moved), batch):
            fx.model.forward_intermediates(fx.preprocess(moved[i:i + batch]), indices=fx.indices,
                                           intermediates_only=True, output_fmt="NCHW")


def breakdown(data: Path, work: Path, name: str, args) -> None:
    """Milliseconds per tile-variant of each piece of a unit, run one after another (medians over units)."""
    from embedcache.extract.job import ExtractionJob

    for dtype in ("float16", "int8"):
        spec = get_spec(name)
        cfg = ExtractConfig(encoder=name, weights="random" if spec.weights.startswith("hf-hub:") else None,
                            variants=args.variants, batch_size=args.batch_size, device="cpu", dtype=dtype)
        job = ExtractionJob(data, cfg)
        writer = job.open_writer(work / f"breakdown-{dtype}.zarr", overwrite=True)
        parts = {"read": [], "forward": [], "rest of run_unit": [], "write_unit": []}
        forward = job.run._forward
        spent = []

        def timed_forward(x):
            t = time.perf_counter()
            out = forward(x)
            spent.append(time.perf_counter() - t)
            return out

        job.run._forward = timed_forward
        for unit in range(job.n_units):
            t = time.perf_counter()
            images, labels, stained = job.read_unit(unit)
            t1 = time.perf_counter()
            spent.clear()
            arrays = job.unit_arrays(unit, images, labels, stained)
            t2 = time.perf_counter()
            writer.write_unit(unit, arrays)
            t3 = time.perf_counter()
            n = images.shape[0] * len(job.run.variants)
            parts["read"].append((t1 - t) / n)
            parts["forward"].append(sum(spent) / n)
            parts["rest of run_unit"].append((t2 - t1 - sum(spent)) / n)
            parts["write_unit"].append((t3 - t2) / n)
        print(f"  breakdown, {dtype}, ms per tile-variant (median over {job.n_units} units, pieces in turn): "
              + "  ".join(f"{k} {1e3 * statistics.median(v):.2f}" for k, v in parts.items()))


def whole_processes(data: Path, work: Path, name: str, args) -> None:
    """Paired wall-clock times of ``embedcache extract`` and the bare process, as processes."""
    ours = [sys.executable, "-m", "embedcache", "extract", "--data", str(data), "--encoder", name,
            "--variants", args.variants, "--batch-size", str(args.batch_size), "--device", "cpu", "--quiet",
            "--overwrite"]
    if get_spec(name).weights.startswith("hf-hub:"):
        ours += ["--weights", "random"]
    bare = [sys.executable, __file__, "--bare-process", str(data), "--encoders", name, "--variants", args.variants,
            "--batch-size", str(args.batch_size)]
    times = {"bare": [], "ours": []}
    for r in range(args.repeats):
        for arm, cmd in (("bare", bare), ("ours", ours + ["--out", str(work / f"process-{r}.zarr")])):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[arm].append(time.perf_counter() - t)
    paired = statistics.median(b / o for b, o in zip(times["bare"], times["ours"]))
    print(f"  whole process, seconds start to exit: bare {[round(x, 1) for x in times['bare']]}  "
          f"embedcache extract {[round(x, 1) for x in times['ours']]}  -> bare/extract, median of "
          f"{args.repeats} paired ratios: {paired:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--variants", default="d4")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "timm:vit_small_patch16_224"])
    ap.add_argument("--loader-workers", type=int, default=ExtractConfig.loader_workers,
                    help="extraction's DataLoader workers (torch gets the thread budget less these)")
    ap.add_argument("--process", action="store_true", help="also time both arms as whole processes")
    ap.add_argument("--breakdown", action="store_true", help="also time each piece of a unit alone")
    ap.add_argument("--bare-process", default=None, metavar="DATA", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_process:
        return bare_process(args.bare_process, args.encoders[0], args.variants, args.batch_size)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (bare), tiles {args.tiles}, "
          f"variants {args.variants}, batch {args.batch_size}, extraction's loader workers {args.loader_workers}")
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        write_demo_data(work / "data", n_tiles=args.tiles, seed=1)
        ds = open_dataset(work / "data")
        variants = resolve_variants(args.variants)
        tiles = torch.from_numpy(ds.images(slice(None)))
        for name in args.encoders:
            spec = get_spec(name)
            weights = "random" if spec.weights.startswith("hf-hub:") else None
            cfg = ExtractConfig(encoder=name, weights=weights, variants=args.variants, batch_size=args.batch_size,
                                device="cpu", loader_workers=args.loader_workers)
            enc = load_encoder(spec, weights, device="cpu")
            fx = FeatureExtractor(enc, resolve_layers(enc.model, spec.layers, "default"))
            images = torch.stack([v.apply_torch(t, spatial=(0, 1)) for v in variants for t in tiles])
            inputs = [fx.preprocess(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)]
            n_img = len(images)
            bare, loop, whole = [], [], []
            bare_loop(fx, inputs[:1])  # warm-up
            for r in range(args.repeats):
                bare.append(n_img / bare_loop(fx, inputs))
                out = work / f"{name.replace(':', '_')}-{r}.zarr"
                t = time.perf_counter()
                res = extract(work / "data", out, cfg, progress=False)
                whole.append(n_img / (time.perf_counter() - t))
                loop.append(n_img / res.seconds)
                if r < args.repeats - 1:
                    shutil.rmtree(out)
            b, lo, wh = statistics.median(bare), statistics.median(loop), statistics.median(whole)
            # Each repeat runs bare then ours back to back: the ratio within a repeat cancels slow drift
            # of a shared machine, so the median of those paired ratios is the figure to quote.
            paired_loop = statistics.median(x / y for x, y in zip(loop, bare))
            paired_whole = statistics.median(x / y for x, y in zip(whole, bare))
            print(f"\n{name}: tile-variants/s  bare {b:.2f}  extract-loop {lo:.2f}  extract-whole-call {wh:.2f}")
            print(f"  efficiency, median of {args.repeats} paired ratios: loop {paired_loop:.3f}   "
                  f"whole call {paired_whole:.3f}")
            print(f"  per repeat: bare {[round(x, 2) for x in bare]}  loop {[round(x, 2) for x in loop]}")
            store = open_store(out)
            s = store.summary()
            print(f"  {'layer':<12} {'C x h x w':<14} {'bytes/tile-variant':>19} {'raw float32':>12} {'ratio':>6}")
            for lname, lay in s["layers"].items():
                print(f"  {lname:<12} {'x'.join(map(str, lay['tokens'])):<14} {lay['bytes_per_tile_variant']:>19.0f} "
                      f"{lay['raw_float32_per_tile_variant']:>12} "
                      f"{lay['bytes_per_tile_variant'] / lay['raw_float32_per_tile_variant']:>6.3f}")
            # Fidelity: stored tokens of every variant against a live forward of the transformed tile.
            worst = 0.0
            idx = [0, args.tiles - 1]
            for vi, v in enumerate(variants):
                live = fx(v.apply_torch(tiles[idx], spatial=(1, 2)))
                for lname, (tok, _) in zip(fx.names, live):
                    stored = store.tokens(lname, idx, vi)
                    ref = tok.numpy()
                    rel = np.abs(stored - ref).max() / max(1e-6, np.abs(ref).max())
                    worst = max(worst, float(rel))
            print(f"  fidelity: max |stored - live| / max|live| over layers and variants = {worst:.2e} "
                  f"(float16 rounding is ~4.9e-4)")
            if args.breakdown:
                breakdown(work / "data", work, name, args)
            if args.process:
                whole_processes(work / "data", work, name, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
