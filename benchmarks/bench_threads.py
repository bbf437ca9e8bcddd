"""A shared machine: extract + fit-decoder alone and beside one competing job, before and after the thread budget.

    python benchmarks/bench_threads.py --before REV [--tiles 32] [--epochs 3] [--repeats 2]

The workload is the demo's first two steps on ``--tiles`` synthetic tiles:
``embedcache extract`` (EfficientNet-Lite0, ImageNet weights, flips, one
loader process) and ``embedcache fit-decoder`` (``--epochs``). The
competing job is another user's single-threaded compute (a torch matmul
loop on one thread), started before the workload and stopped after it.
Each is run with the code at ``--before`` (a git revision, checked out in
a temporary worktree) and with this checkout, alternating, ``--repeats``
times; the figures are medians of the paired runs and the slowdown is
loaded over alone for each version. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
              "while True:\n    a = (a @ a).tanh()\n")


def cli(code: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}
    for var in ("EMBEDCACHE_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(var, None)
    subprocess.run([sys.executable, "-m", "embedcache", *args], check=True, env=env, cwd=code,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def workload(code: Path, data: Path, work: Path, epochs: int) -> float:
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    cli(code, "extract", "--data", str(data), "--out", str(work / "s.zarr"), "--variants", "flips", "--quiet")
    cli(code, "fit-decoder", "--store", str(work / "s.zarr"), "--out", str(work / "run"), "--epochs", str(epochs),
        "--batch-size", "4", "--quiet")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision of the code before the change")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedcache-threads-"))
    before = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        data = tmp / "data"
        cli(ROOT, "demo-data", str(data), "--tiles", str(args.tiles))
        versions = {"before": before, "after": ROOT}
        times: dict[tuple[str, str], list[float]] = {}
        print(f"{os.cpu_count()} cores; {args.tiles} tiles, flips, {args.epochs} epochs; before = {args.before}",
              flush=True)
        for r in range(args.repeats):
            for load in ("alone", "beside one job"):
                for name, code in versions.items():
                    job = (subprocess.Popen([sys.executable, "-c", COMPETITOR]) if load != "alone" else None)
                    try:
                        time.sleep(1.0 if job else 0)
                        t = workload(code, data, tmp / f"w-{name}", args.epochs)
                    finally:
                        if job:
                            job.kill()
                            job.wait()
                    times.setdefault((name, load), []).append(t)
                    print(f"  repeat {r + 1}: {name:6s} {load:15s} {t:6.1f} s", flush=True)
        print("median seconds (alone / beside one job / slowdown):")
        for name in versions:
            alone = statistics.median(times[(name, "alone")])
            loaded = statistics.median(times[(name, "beside one job")])
            print(f"  {name:6s} {alone:6.1f} / {loaded:6.1f} / {loaded / alone:.2f}x")
        a, b = (statistics.median(times[("after", k)]) / statistics.median(times[("before", k)])
                for k in ("alone", "beside one job"))
        print(f"after / before: alone {a:.2f}, beside one job {b:.2f}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)


if __name__ == "__main__":
    main()
