"""Tiles per second of each metrics protocol: embedcache vs the slow obvious way.

The slow implementation (``tests/reference_metrics.py``) works like the
published reference codes: a full-image mask per instance and a loop over
the instances each one touches. The fast one builds one overlap table per
tile. Both must give identical values.

Run from the repository root::

    python benchmarks/bench_metrics.py [--tiles 20] [--repeats 5] [--seed 0]

Synthetic 256x256 tiles with 50-100 nuclei are made here; the real
he-nuclei-3 tiles (shared/data) are added when present.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import reference_metrics as ref  # noqa: E402
from embedcache.metrics.protocols import PROTOCOLS  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "he-nuclei-3" / "labels.npy"


def timed(fn, repeats):
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def datasets(n_tiles, seed):
    ti, tt, pi, pt = ref.make_dataset(seed, n_tiles, size=256, n_nuclei=(50, 100), n_types=6)
    out = [(f"synthetic {n_tiles}x256^2, 50-100 nuclei", ti, pi, tt, pt, None)]
    if DATA.exists():
        labels = np.load(DATA)
        inst, types = list(labels[..., 0]), list(labels[..., 1])
        pred, ptypes = ref.degrade(inst, types)
        out.append(("he-nuclei-3 (3 real tiles), shifted 2 px, 1/8 dropped", inst, pred, types, ptypes, [1, 2, 3, 5]))
    else:
        print(f"(he-nuclei-3 not found at {DATA}; synthetic tiles only)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5, help="fast repeats; the slow side runs max(1, repeats // 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    all_same = True
    header = f"{'protocol':<9} {'fast tiles/s':>12} {'slow tiles/s':>12} {'ratio':>7}  identical"
    for label, ti, pi, tt, pt, classes in datasets(args.tiles, args.seed):
        print(f"\n{label}: median over repeats")
        print(header)
        for name, fast_fn in PROTOCOLS.items():
            kw = {} if classes is None or name == "hovernet" else {"classes": classes}
            fast_s, fast = timed(lambda: fast_fn(ti, pi, tt, pt, **kw), args.repeats)
            slow_s, slow = timed(lambda: ref.SLOW_PROTOCOLS[name](ti, pi, tt, pt, **kw), max(1, args.repeats // 2))
            diffs = ref.differences(fast, slow)
            all_same &= not diffs
            n = len(ti)
            print(f"{name:<9} {n / fast_s:12.1f} {n / slow_s:12.1f} {slow_s / fast_s:6.1f}x  "
                  f"{'yes' if not diffs else 'NO: ' + '; '.join(diffs[:3])}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
