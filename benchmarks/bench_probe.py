"""Time and peak memory of the tile-level linear probe with its L2 sweep.

Cases (synthetic pooled vectors with a planted 5-class linear signal):

- ``8000x1024``: one layer, 8,000 tiles x 1,024 dims (a ViT-L).
- ``8000x4x1536``: the layer sweep over 4 layers of 1,536 dims (ConvNeXt-L, Prov-GigaPath).
- ``bootstrap``: 1,000-resample intervals of one probe's scores over 8,000 tiles (one process).

Each case runs in its own process so its peak resident memory (``ru_maxrss``)
is its own; ``numpy peak`` is the largest tracemalloc-tracked allocation
total inside the case. Out-of-fold probes use 5 stratified folds, each
sweeping 5 strengths on a held-out fifth of its training tiles and
refitting: 30 logistic-regression fits in all per layer.

    python benchmarks/bench_probe.py                 # every case
    python benchmarks/bench_probe.py --case 8000x1024 --folds 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

CASES = {"8000x1024": (8000, 1, 1024), "8000x4x1536": (8000, 4, 1536), "bootstrap": (8000, 1, 1024)}


def planted(n: int, d: int, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, :k] += 1.5 * np.eye(k, dtype=np.float32)[y]  # a signal in 5 of d dims: the sweep has work to do
    return X, y


def run_case(name: str, folds: int) -> dict:
    from embedcache.config import ProbeConfig
    from embedcache.report.stats import score_predictions
    from embedcache.probes.fit import cross_validate, make_folds, probe_features
    from embedcache.probes.labels import TileLabels

    n, layers, d = CASES[name]
    X, y = planted(n, d)
    fold_of = make_folds(y, folds)
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "bootstrap":
        pred = cross_validate(X, y, fold_of, "linear", l2_grid=(0.01,))
        t0, c0 = time.perf_counter(), time.process_time()
        table = score_predictions([pred], n_boot=1000, n_jobs=1)
        score = table.rows[0]["scores"]["balanced_accuracy"]
    else:
        feats = {f"layer{i}": (X if i == layers - 1 else planted(n, d, seed=i + 1)[0][:, ::-1].copy())
                 for i in range(layers)}
        labels = TileLabels("planted", "classification", y, [str(c) for c in range(5)])
        preds = probe_features(feats, labels, fold_of, ProbeConfig(method="linear"))
        scores = score_predictions(preds, n_boot=0).rows
        score = {"value": scores[-1]["scores"]["balanced_accuracy"]["value"],
                 "chosen_l2": [f["l2"] for f in preds[-1].params["folds"]]}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, numpy_peak = tracemalloc.get_traced_memory()
    return {"case": name, "folds": folds, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "load": round(os.getloadavg()[0], 1), "numpy_peak_mb": round(numpy_peak / 2**20),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "score": score}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=list(CASES), action="append")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.case[0], args.folds)))
        return
    print(f"{os.cpu_count()} CPUs; wall seconds depend on the machine's load (shown), CPU seconds less so")
    print(f"{'case':<13} {'folds':>5} {'wall s':>7} {'CPU s':>6} {'load':>5} {'peak RSS':>9} {'numpy peak':>11}  result")
    for name in args.case or list(CASES):
        out = subprocess.run([sys.executable, __file__, "--child", "--case", name, "--folds", str(args.folds)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{name} failed:\n{out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['case']:<13} {r['folds']:>5} {r['seconds']:>7} {r['cpu_seconds']:>6} {r['load']:>5} "
              f"{r['peak_rss_mb']:>6} MB {r['numpy_peak_mb']:>8} MB  {r['score']}")


if __name__ == "__main__":
    main()
