"""Real data: does an int8 cache cost the decoder accuracy? CPM-15, float16 against int8 tokens.

    python benchmarks/int8_cpm15.py [--data ../shared/data/cpm15-dev] [--work /tmp/int8-cpm15] [--seeds 0,1]

``efficientnet_lite0`` (ImageNet weights), d4 variants, the split of
``benchmarks/cpm15_recipe.py`` (train on 8 images, validate on image02,
image10, image14). For each seed, two decoders are trained with the same
settings, one on a float16 store and one on an int8 store, and the held-out
images are predicted from their own stores (cached, overlapping tiles, as
live prediction cuts them) and scored with the HoVer-Net protocol:

  * float16 run on float16 tokens: the reference;
  * float16 run on int8 tokens: the rounding alone, the decoder held fixed;
  * int8 run on int8 tokens: the whole int8 pipeline (training noise included).

Also prints each store's token bytes against raw float32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from embedcache import open_store
from embedcache.config import ExtractConfig, FitConfig
from embedcache.extract import extract
from embedcache.infer.predict import predict
from embedcache.metrics import evaluate
from embedcache.train.loop import fit

from cpm15_recipe import ROOT, VAL, val_folder  # the same split and held-out folder (this script's folder)


def token_ratio(store_path: Path) -> float:
    layers = open_store(store_path).summary()["layers"].values()
    return sum(lay["bytes"] for lay in layers) / sum(
        lay["raw_float32_per_tile_variant"] * lay["bytes"] / lay["bytes_per_tile_variant"] for lay in layers)


def score(run: Path, store: Path, out: Path, val: Path) -> dict:
    predict(run, out, store=store, progress=False)
    return evaluate(val, out, "hovernet", radius=12.0).summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cpm15-dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/int8-cpm15"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH/cpm15-dev")
    args.work.mkdir(parents=True, exist_ok=True)
    val = val_folder(args.data, args.work)
    stores, val_stores = {}, {}
    for dtype in ("float16", "int8"):
        cfg = ExtractConfig(encoder="efficientnet_lite0", variants="d4", dtype=dtype, loader_workers=0, device="cpu")
        stores[dtype] = extract(args.data, args.work / f"{dtype}.zarr", cfg, progress=not args.quiet).path
        val_stores[dtype] = extract(val, args.work / f"val-{dtype}.zarr",
                                    ExtractConfig(**{**cfg.to_dict(), "variants": "none"}), progress=False).path
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs = {}
        for dtype in ("float16", "int8"):
            t = time.perf_counter()
            config = FitConfig(epochs=args.epochs, batch_size=8, lr=2e-3, patience=10, val="sources:" + ",".join(VAL),
                               seed=seed, loader_workers=1, device="cpu")
            runs[dtype] = fit(stores[dtype], args.work / f"{dtype}-run-{seed}", config, progress=not args.quiet).path
            print(f"seed {seed}: trained on {dtype} in {time.perf_counter() - t:.0f} s", flush=True)
        for run_dtype, tok_dtype in (("float16", "float16"), ("float16", "int8"), ("int8", "int8")):
            s = score(runs[run_dtype], val_stores[tok_dtype], args.work / f"pred-{run_dtype}-{tok_dtype}-{seed}", val)
            rows.append({"seed": seed, "run": run_dtype, "tokens": tok_dtype, **s})
    print(f"\nCPM-15 held-out {', '.join(VAL)}; efficientnet_lite0 (ImageNet), d4; HoVer-Net protocol, radius 12 px")
    for dtype in ("float16", "int8"):
        print(f"  {dtype} store: token bytes {token_ratio(stores[dtype]):.3f} of raw float32")
    print(f"{'seed':>4} {'decoder trained on':<19} {'tokens':<8} {'PQ':>7} {'AJI':>7} {'F1 det':>7}")
    for r in rows:
        print(f"{r['seed']:>4} {r['run']:<19} {r['tokens']:<8} {r['pq']:7.4f} {r['aji']:7.4f} {r['f1_detection']:7.4f}")
    for run_dtype, tok_dtype in (("float16", "int8"), ("int8", "int8")):
        diffs = [b["pq"] - a["pq"] for a in rows for b in rows if a["seed"] == b["seed"] and
                 (a["run"], a["tokens"]) == ("float16", "float16")
                 and (b["run"], b["tokens"]) == (run_dtype, tok_dtype)]
        print(f"PQ ({run_dtype} run, {tok_dtype} tokens) - PQ (float16, float16): "
              f"{', '.join(f'{d:+.4f}' for d in diffs)}; median {statistics.median(diffs):+.4f}")


if __name__ == "__main__":
    main()
