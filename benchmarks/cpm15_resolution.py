"""Real data of mixed magnification: CPM-15's 20x and 40x images with and without one working resolution.

CPM-15 mixes 20x images (01, 02, 04, 05, 06) and 40x images (08 to 14)
(../shared/data/README.md). Both arms run the CPM-15 dev recipe
(``cpm15_recipe.py``: efficientnet_lite0 with its ImageNet weights, d4
variants, the default ``FitConfig``, train on 8 images, the epoch chosen
on image02, image10 and image14, which are then predicted live and scored):

* **as they are**: every image tiled at its own resolution (what embedcache
  did before it knew an image's resolution);
* **working 0.25 um/px**: ``extract --working-mpp 0.25`` resamples the
  20x images to the 40x scale before tiling (``mpp.csv`` beside the
  images says which is which); the run records the resolution, live
  prediction resamples each held-out image the same way and maps its
  nuclei back to the image's own pixels.

Both are scored on each image's own pixels with the HoVer-Net protocol, the
detection radius 3 um (12 px on the 40x images, 6 px on the 20x one:
``evaluate --radius-um 3``), per image and by magnification.

Usage::

    python benchmarks/cpm15_resolution.py [--data ../shared/data/cpm15-dev] [--work /tmp/cpm15-res]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from embedcache.config import ExtractConfig, FitConfig
from embedcache.extract import extract
from embedcache.infer.predict import predict
from embedcache.metrics import evaluate
from embedcache.train.loop import fit

from cpm15_recipe import VAL, val_folder  # this script's folder

ROOT = Path(__file__).resolve().parents[1]
MPP = {"20x": 0.5, "40x": 0.25}
MAGNIFICATION = {**{f"image{k:02d}": "20x" for k in (1, 2, 4, 5, 6)},
                 **{f"image{k:02d}": "40x" for k in (8, 9, 10, 11, 13, 14)}}


def with_mpp_table(data: Path, work: Path) -> Path:
    """A copy of the images with ``mpp.csv`` beside them (the shared folder is left as it is)."""
    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(data.iterdir()):
        if f.suffix == ".png" and not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    rows = [f"{name},{MPP[mag]}" for name, mag in sorted(MAGNIFICATION.items()) if (out / f"{name}.png").exists()]
    (out / "mpp.csv").write_text("image,mpp\n" + "\n".join(rows) + "\n")
    return out


def arm(name: str, working_mpp, data: Path, work: Path, val: Path, args) -> dict:
    t0 = time.perf_counter()
    store = extract(data, work / f"{name}.zarr",
                    ExtractConfig(encoder="efficientnet_lite0", variants="d4", loader_workers=0, device="cpu",
                                  working_mpp=working_mpp), progress=not args.quiet).path
    t1 = time.perf_counter()
    config = FitConfig(epochs=args.epochs, val="sources:" + ",".join(VAL), seed=args.seed, loader_workers=0,
                       device="cpu")
    result = fit(store, work / f"{name}-run", config, progress=not args.quiet)
    t2 = time.perf_counter()
    predict(result.path, work / f"{name}-pred", data=val, overlap=64, progress=False)
    ev = evaluate(val, work / f"{name}-pred", "hovernet", radius_um=3.0)
    per_image = {r["name"]: r for r in ev.rows}
    by_mag = {}
    for mag in ("20x", "40x"):
        rows = [per_image[n] for n in VAL if MAGNIFICATION[n] == mag]
        by_mag[mag] = sum(r["pq"] for r in rows) / len(rows)
    return {"arm": name, "pq": ev.summary["pq"], "f1": ev.summary["f1_detection"], "images": per_image,
            "by_mag": by_mag, "epochs": result.epochs_run, "best": result.best_epoch, "extract_s": t1 - t0,
            "fit_s": t2 - t1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cpm15-dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpm15-res"))
    ap.add_argument("--epochs", type=int, default=FitConfig.epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", choices=("as-they-are", "working-0.25"), default=None,
                    help="run one arm (the other's saved result is printed beside it when there is one)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH/cpm15-dev")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    data = with_mpp_table(args.data, args.work)
    val = val_folder(data, args.work)
    (val / "mpp.csv").write_text("\n".join(ln for ln in (data / "mpp.csv").read_text().splitlines()
                                           if ln.startswith("image,") or ln.split(",")[0] in VAL) + "\n")
    rows = []
    for name, working in (("as-they-are", None), ("working-0.25", 0.25)):
        done = args.work / f"{name}.json"
        if args.only and name != args.only:
            if done.exists():  # the other arm, run in another process
                rows.append(json.loads(done.read_text()))
            continue
        rows.append(arm(name, working, data, args.work, val, args))
        done.write_text(json.dumps(rows[-1]))
    print(f"\nCPM-15, mixed 20x/40x: train on 8 images, score {', '.join(VAL)} "
          f"({', '.join(MAGNIFICATION[n] for n in VAL)}) on their own pixels; efficientnet_lite0, d4, "
          f"{args.epochs} epochs at most, HoVer-Net protocol, detection radius 3 um")
    print(f"{'arm':<14} {'PQ':>7} {'F1 det':>7} " + " ".join(f"{n:>9}" for n in VAL)
          + f" {'PQ 20x':>7} {'PQ 40x':>7} {'epochs':>6} {'best':>5} {'extract s':>9} {'fit s':>6}")
    for r in rows:
        print(f"{r['arm']:<14} {r['pq']:7.4f} {r['f1']:7.4f} "
              + " ".join(f"{r['images'][n]['pq']:9.4f}" for n in VAL)
              + f" {r['by_mag']['20x']:7.4f} {r['by_mag']['40x']:7.4f} {r['epochs']:6d} {r['best']:5d} "
                f"{r['extract_s']:9.0f} {r['fit_s']:6.0f}")


if __name__ == "__main__":
    main()
