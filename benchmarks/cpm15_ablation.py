"""Real data: what each part of the decoder's recipe is worth on CPM-15, pretrained encoder against a random one.

The 11 CPM-15 images are split three ways, the same for every arm:

- fit (6): image01, image04, image06, image09, image11, image13, the tiles the decoder learns from;
- select (2): image05, image08, the run's validation split: the best epoch,
  the choice between recipes (``--stage select``) and the tuned post-processing;
- test (3): image02, image10, image14 (one 20x, two 40x, 484 nuclei), never
  seen by any choice, scored live (the encoder over overlapping tiles of the
  whole image) with the HoVer-Net protocol (radius 12 px).

``--stage select`` trains one candidate change at a time on the pretrained
encoder (seed 0) and prints PQ on the select images: the recipe is what
wins there. ``--stage table`` (the default) then prints, for both encoders
(``efficientnet_lite0`` with its ImageNet weights, and random) and two
seeds, PQ, AJI, detection F1, DQ and SQ on the test images for:

    baseline      the earlier defaults (30 epochs, patience 10, lr 1e-3, decoder depth 1)
    + recipe      the current defaults (embedcache.config.FitConfig)
    + tuned       + post-processing tuned on the select images (27 settings)
    + TTA         + test-time augmentation over the 8 dihedral variants
    + TTA-tuned   the same, with the thresholds tuned on the TTA-merged maps

and the time to predict one image with and without TTA, live and from the
cached store. Stores, runs and predictions are kept in ``--work`` and reused.

Usage::

    python benchmarks/cpm15_ablation.py [--stage select|table] [--data ../shared/data/cpm15-dev]
        [--work /tmp/cpm15-ablation]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from embedcache.config import DecoderConfig, ExtractConfig, FitConfig, LossConfig
from embedcache.extract import extract
from embedcache.infer.evaluate import evaluate_run
from embedcache.infer.predict import predict
from embedcache.infer.tune import tune_postprocess
from embedcache.metrics import evaluate

from cpm15_recipe import val_folder  # the held-out images in a folder of their own (this script's folder)

ROOT = Path(__file__).resolve().parents[1]
FIT = ("image01", "image04", "image06", "image09", "image11", "image13")
SELECT = ("image05", "image08")
TEST = ("image02", "image10", "image14")
METRICS = ("pq", "aji", "f1_detection", "dq", "sq")
BASELINE = {"epochs": 30, "patience": 10, "lr": 1e-3, "colour": 0.0,  # the defaults before the ablation
            "decoder": DecoderConfig(width=32, depth=1), "loss": LossConfig()}
CANDIDATES = {  # one change each from the baseline (--stage select)
    "baseline": {},
    "colour 0.05": {"colour": 0.05},
    "colour 0.2": {"colour": 0.2},
    "gradient x2": {"loss": LossConfig(gradient=2.0)},
    "60 epochs": {"epochs": 60, "patience": 20},
    "lr 2e-3": {"lr": 2e-3},
    "width 64": {"decoder": DecoderConfig(width=64, depth=1)},
    "depth 2": {"decoder": DecoderConfig(width=32, depth=2)},
    "mae distance": {"loss": LossConfig(distance_error="mae")},
    "60 ep, lr 2e-3": {"epochs": 60, "patience": 20, "lr": 2e-3},
    "60 ep, lr 2e-3, depth 2": {"epochs": 60, "patience": 20, "lr": 2e-3, "decoder": DecoderConfig(width=32, depth=2)},
    "60 ep, lr 2e-3, depth 2, width 64": {"epochs": 60, "patience": 20, "lr": 2e-3,
                                          "decoder": DecoderConfig(depth=2, width=64)},
    "60 ep, lr 2e-3, depth 2, colour 0.05": {"epochs": 60, "patience": 20, "lr": 2e-3, "colour": 0.05,
                                             "decoder": DecoderConfig(width=32, depth=2)},
}


def store(data: Path, work: Path, weights) -> Path:
    name = "random" if weights == "random" else "pretrained"
    return extract(data, work / f"{name}.zarr",
                   ExtractConfig(encoder="efficientnet_lite0", weights=weights, variants="d4", loader_workers=0,
                                 device="cpu"), progress=False).path


def config(seed: int, changes: dict, loader_workers: int) -> FitConfig:
    return dataclasses.replace(FitConfig(val="sources:" + ",".join(SELECT), train="sources:" + ",".join(FIT),
                                         seed=seed, loader_workers=loader_workers, device="cpu"), **changes)


def scores(truth: Path, pred: Path) -> dict:
    s = evaluate(truth, pred, "hovernet", radius=12.0).summary
    return {k: float(s[k]) for k in METRICS}


def timed_predict(run: Path, out: Path, **kw) -> float:
    t = time.perf_counter()
    predict(run, out, overlays=False, geojson=False, progress=False, **kw)
    return time.perf_counter() - t


def select(args, data: Path, work: Path):
    s = store(data, work, None)
    print(f"CPM-15 select stage: efficientnet_lite0 (ImageNet), seed 0, fit on {len(FIT)} images, "
          f"PQ on the select images {', '.join(SELECT)} (cached, HoVer-Net protocol)")
    print(f"{'change':<36} {'PQ':>7} {'AJI':>7} {'F1 det':>7} {'epochs':>7} {'best':>5} {'fit s':>7}")
    for name, change in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        cfg = config(0, {**BASELINE, **change}, args.loader_workers)
        t = time.perf_counter()
        from embedcache.train.loop import fit

        r = fit(s, work / "select" / name.replace(" ", "_"), cfg, progress=False)
        sec = time.perf_counter() - t
        e = evaluate_run(r.path, s, protocol="hovernet").summary
        print(f"{name:<36} {e['pq']:7.4f} {e['aji']:7.4f} {e['f1_detection']:7.4f} {r.epochs_run:7d} "
              f"{r.best_epoch:5d} {sec:7.0f}", flush=True)


ARMS = ("baseline", "+ recipe", "+ tuned", "+ TTA", "+ TTA-tuned")


def table(args, data: Path, work: Path):
    from embedcache.config import PostprocessConfig
    from embedcache.train.loop import fit

    test = val_folder(data, work, TEST)
    done = work / "ablation.json"  # finished rows and timings, kept: a rerun computes only what is missing
    saved = json.loads(done.read_text()) if done.exists() else {}
    rows = [tuple(r) for r in saved.get("rows", [])]
    times = saved.get("times") or {"plain live": [], "d4 live": [], "plain cached": [], "d4 cached": []}
    select_split = "sources:" + ",".join(SELECT)

    def have(*key) -> bool:
        return any(tuple(r[:3]) == key for r in rows)

    def add(arm, seed, name, pred):
        rows.append((arm, seed, name, scores(test, pred)))
        done.write_text(json.dumps({"rows": rows, "times": times}, indent=1))

    for weights in (None, "random"):
        s = store(data, work, weights)
        arm = "random" if weights == "random" else "pretrained"
        for seed in args.seeds:
            for recipe, changes in (("baseline", BASELINE), ("recipe", {})):
                run = work / f"{arm}-{recipe}-s{seed}"
                fit(s, run, config(seed, changes, args.loader_workers), progress=False)
                first = "baseline" if recipe == "baseline" else "+ recipe"
                if not have(arm, seed, first):
                    (run / "postprocess.json").unlink(missing_ok=True)  # the defaults first
                    timed_predict(run, work / "pred", data=test, overlap=args.overlap)
                    add(arm, seed, first, work / "pred")
                if recipe == "baseline":
                    continue
                if not have(arm, seed, "+ TTA"):
                    tune_postprocess(run, select_split, store=s, on_val=True)
                    times["plain live"].append(timed_predict(run, work / "pred", data=test,
                                                             overlap=args.overlap) / len(TEST))
                    add(arm, seed, "+ tuned", work / "pred")
                    times["d4 live"].append(timed_predict(run, work / "pred", data=test, overlap=args.overlap,
                                                          tta="d4") / len(TEST))
                    n_images = len(FIT) + len(SELECT) + len(TEST)
                    for tta in ("none", "d4"):
                        key = f"{'plain' if tta == 'none' else 'd4'} cached"
                        times[key].append(timed_predict(run, work / "pred-cached", store=s, tta=tta) / n_images)
                    add(arm, seed, "+ TTA", work / "pred")
                if not have(arm, seed, "+ TTA-tuned"):  # thresholds tuned on the TTA-merged maps
                    t = tune_postprocess(run, select_split, store=s, on_val=True, tta="d4", out=run / "tta-tuned")
                    timed_predict(run, work / "pred", data=test, overlap=args.overlap, tta="d4",
                                  postprocess=PostprocessConfig(**t["chosen"]))
                    add(arm, seed, "+ TTA-tuned", work / "pred")
                print(f"{arm} seed {seed}: " + "; ".join(f"{r[2]} PQ {r[3]['pq']:.4f}" for r in rows
                                                         if r[0] == arm and r[1] == seed), flush=True)
    print(f"\nCPM-15: fit on {len(FIT)} images, epoch and tuning chosen on {', '.join(SELECT)}, scored on "
          f"{', '.join(TEST)} (live, {args.overlap}-px overlap, HoVer-Net protocol, radius 12 px); "
          f"efficientnet_lite0, d4 variants cached; seeds {', '.join(map(str, args.seeds))}")
    print(f"{'encoder':<11} {'arm':<12} " + " ".join(f"{m.replace('f1_detection', 'F1 det').upper():>21}"
                                                     for m in METRICS))
    mean = {}
    for enc in ("pretrained", "random"):
        for a in ARMS:
            got = [r[3] for r in rows if r[0] == enc and r[2] == a and r[1] in args.seeds]
            mean[enc, a] = {m: statistics.mean(g[m] for g in got) for m in METRICS}
            cells = [f"{mean[enc, a][m]:.4f} ({'/'.join(f'{g[m]:.3f}' for g in got)})" for m in METRICS]
            print(f"{enc:<11} {a:<12} " + " ".join(f"{c:>21}" for c in cells))
    print("(mean over seeds, then each seed)")
    for a in ARMS:
        print(f"pretrained - random, {a}: PQ {mean['pretrained', a]['pq'] - mean['random', a]['pq']:+.4f}")
    print("\nprediction time per image (median over runs; live: 3 test images with overlapping tiles; "
          "cached: the store's 11 images):")
    for key, values in times.items():
        print(f"  {key:<13} {statistics.median(values):6.2f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", choices=("select", "table"), default="table")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cpm15-dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpm15-ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="*", help="select stage: these candidates only")
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--loader-workers", type=int, default=0)
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH/cpm15-dev")
    args.work.mkdir(parents=True, exist_ok=True)
    (select if args.stage == "select" else table)(args, args.data, args.work)


if __name__ == "__main__":
    main()
