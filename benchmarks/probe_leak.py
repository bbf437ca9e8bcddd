"""Real data: a label that is random per image, probed on CPM-15 tiles, with tile folds and with image folds.

Every tile of an image gets its image's label (A or B, drawn at random per
image). The label means nothing, so an honest probe scores chance. Folds over
tiles put tiles of one image on both sides of a split (they share stain,
scanner and tissue) and score above chance; folds over source images, with
intervals resampling images (embedcache's default), do not.

Usage::

    python benchmarks/probe_leak.py [--data ../shared/data/cpm15-dev] [--work /tmp/cpm15-leak] [--draws 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from embedcache import open_store
from embedcache.config import ExtractConfig, ProbeConfig
from embedcache.extract import extract
from embedcache.probes import run_probes
from embedcache.probes.fit import cross_validate, make_folds
from embedcache.report.stats import bootstrap_scores, bootstrap_indices, score_predictions

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cpm15-dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cpm15-leak"))
    ap.add_argument("--draws", type=int, default=5, help="random labelings (seeds 0..draws-1)")
    ap.add_argument("--layer", default="blocks.6")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data PATH/cpm15-dev")
    args.work.mkdir(parents=True, exist_ok=True)
    store = extract(args.data, args.work / "lite0.zarr",
                    ExtractConfig(variants="none", loader_workers=0, device="cpu"), progress=False).path
    s = open_store(store)
    source = s.tile_info()["source"]
    X = s.pooled(args.layer)
    print(f"CPM-15: {s.n_tiles} tiles of {len(np.unique(source))} images; efficientnet_lite0 {args.layer}, "
          "linear probe, 5 folds, 1000 resamples")
    print(f"{'draw':>4}  {'tile folds, tile bootstrap':>34}  {'image folds, image bootstrap':>34}")
    for draw in range(args.draws):
        per_image = np.random.default_rng(draw).permutation(["A", "B"] * 6)[:len(np.unique(source))]
        csv = args.work / f"labels{draw}.csv"
        csv.write_text("tile,label\n" + "".join(f"{t},{per_image[g]}\n" for t, g in enumerate(source)))
        y = np.unique(per_image[source], return_inverse=True)[1]
        leaky = cross_validate(X, y, make_folds(y, 5, seed=0), "linear")
        before = bootstrap_scores(leaky, bootstrap_indices(len(y), 1000, 0))["balanced_accuracy"]
        preds, info = run_probes([store], ProbeConfig(labels=str(csv), layers=args.layer, method="linear",
                                                      folds=5, n_boot=1000))
        after = score_predictions(preds, n_boot=1000, info=info).rows[0]["scores"]["balanced_accuracy"]
        fmt = lambda b: f"{b['value']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}]"  # noqa: E731
        print(f"{draw:>4}  {fmt(before):>34}  {fmt(after):>34}")


if __name__ == "__main__":
    main()
