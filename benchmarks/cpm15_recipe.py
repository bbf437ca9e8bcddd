"""Real data: the nuclei decoder on CPM-15 (11 H&E images), pretrained encoder against a random one.

Train on 8 images, validate on 3 (held out by name), with ``efficientnet_lite0``
and its real ImageNet weights, and the same run with the encoder's weights
random (a control: what the decoder and its image branch manage alone).
Both arms see the same tiles, variants, split, seed and settings. Each arm:

    embedcache extract --data cpm15-dev --out ARM.zarr [--weights random]
    embedcache fit-decoder --store ARM.zarr --out ARM-run --val sources:image02,image10,image14
    embedcache predict --run ARM-run --data val/ --out ARM-pred      (live, overlapping tiles)
    embedcache evaluate --protocol hovernet --truth val/ --pred ARM-pred

and prints PQ, AJI and detection F1 (HoVer-Net protocol, radius 12 px) of
both arms, trained with the default recipe (``FitConfig``). The epoch is
chosen on the three images it scores; ``benchmarks/cpm15_ablation.py`` keeps
them apart from every choice. Stores and runs are kept in ``--work`` and reused when the same
command runs again (extraction and training resume).

Usage::

    python benchmarks/cpm15_recipe.py [--data ../shared/data/cpm15-dev] [--work /tmp/cpm15] [--epochs N]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from embedcache.config import ExtractConfig, FitConfig
from embedcache.extract import extract
from embedcache.infer.predict import predict
from embedcache.metrics import evaluate
from embedcache.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
VAL = ("image02", "image10", "image14")  # one 20x and two 40x images, 484 nuclei


def val_folder(data: Path, work: Path, names=VAL) -> Path:
    """The named (default: held-out) images and their instance maps, alone in a folder (truth for evaluate,
    input of live prediction)."""
    out = work / ("val" if tuple(names) == VAL else "-".join(names))
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".png", "_inst.png"):
            if not (out / f"{name}{suffix}").exists():
                shutil.copy(data / f"{name}{suffix}", out / f"{name}{suffix}")
    return out


def arm(name: str, weights, data: Path, work: Path, val: Path, args) -> dict:
    t0 = time.perf_counter()
    store = extract(data, work / f"{name}.zarr",
                    ExtractConfig(encoder="efficientnet_lite0", weights=weights, variants="d4",
                                  loader_workers=0, device="cpu"), progress=not args.quiet).path
    t1 = time.perf_counter()
    config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                       val="sources:" + ",".join(VAL), seed=args.seed, loader_workers=args.loader_workers, device="cpu")
    result = fit(store, work / f"{name}-run", config, progress=not args.quiet)
    t2 = time.perf_counter()
    predict(result.path, work / f"{name}-pred", data=val, overlap=args.overlap, progress=False)
    scores = evaluate(val, work / f"{name}-pred", "hovernet", radius=12.0).summary
    return {"arm": name, "pq": scores["pq"], "aji": scores["aji"], "f1": scores["f1_detection"],
            "dq": scores["dq"], "sq": scores["sq"], "dice": scores["dice"], "epochs": result.epochs_run,
            "best_epoch": result.best_epoch, "extract_s": t1 - t0, "fit_s": t2 - t1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cpm15-dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpm15"))
    ap.add_argument("--epochs", type=int, default=FitConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=FitConfig.batch_size)
    ap.add_argument("--lr", type=float, default=FitConfig.lr)
    ap.add_argument("--patience", type=int, default=FitConfig.patience)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH/cpm15-dev")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    val = val_folder(args.data, args.work)
    rows = [arm("pretrained", None, args.data, args.work, val, args),
            arm("random", "random", args.data, args.work, val, args)]
    print(f"\nCPM-15: train on 8 images, validate on {', '.join(VAL)}; efficientnet_lite0, d4 variants, "
          f"{args.epochs} epochs at most, HoVer-Net protocol (radius 12 px), live prediction with "
          f"{args.overlap}-px overlap")
    print(f"{'encoder weights':<16} {'PQ':>7} {'AJI':>7} {'F1 det':>7} {'DQ':>7} {'SQ':>7} {'Dice':>7} "
          f"{'epochs':>7} {'best':>5} {'fit s':>7}")
    for r in rows:
        print(f"{r['arm']:<16} {r['pq']:7.4f} {r['aji']:7.4f} {r['f1']:7.4f} {r['dq']:7.4f} {r['sq']:7.4f} "
              f"{r['dice']:7.4f} {r['epochs']:7d} {r['best_epoch']:5d} {r['fit_s']:7.0f}")
    a, b = rows
    print(f"pretrained - random: PQ {a['pq'] - b['pq']:+.4f}, AJI {a['aji'] - b['aji']:+.4f}, "
          f"F1 {a['f1'] - b['f1']:+.4f}")


if __name__ == "__main__":
    main()
