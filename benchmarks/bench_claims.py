"""Claims: two processes sharing one extraction against one process, and the cost of a claim per unit.

    python benchmarks/bench_claims.py [--tiles 128] [--size 224] [--encoder timm:vit_small_patch16_224]
        [--variants flips] [--unit-tiles 4] [--repeats 2] [--cycles 200] [--parts share overhead]

1. Sharing (``share``): the same ``embedcache extract`` command, same model,
   tiles, unit size and batch size, run
   * once, with a thread budget of 2 (``EMBEDCACHE_THREADS=2``), and
   * twice at once on the same ``--out``, each with a budget of 1,
   alternating, ``--repeats`` times. Wall time from the first start to the
   last exit (model loading included in both: a job array pays it in each
   process), the units each process computed (from the unit log,
   ``EMBEDCACHE_UNIT_LOG``), and how many units were computed twice. The
   median of the per-repeat ratios two / one cancels drift on a shared
   machine. Each process's fixed cost (imports, the dataset, the model) is
   measured too, as a run of the same command on the finished store (it
   loads everything, then finds nothing to do): the defaults (a ViT-S/16 of
   random weights over 128 tiles of 224 px, three variants) give each
   process tens of seconds of work against a few seconds of it, so the
   ratio measures sharing, not loading.
2. Overhead (``overhead``): one claim cycle as extraction does it per unit
   (claim, read the unit's done marker again, release), ``--cycles`` times,
   on local disk and on a moto S3 server in its own process on loopback;
   milliseconds per unit, median of 3 runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _data(root: Path, n: int, size: int) -> Path:
    from embedcache.datasets.synthetic import make_tiles

    images, labels, _ = make_tiles(n, seed=1, size=size)
    folder = root / "data"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    return folder


def _extract(args, data: Path, out: Path, log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "EMBEDCACHE_THREADS": str(threads), "EMBEDCACHE_UNIT_LOG": str(log)}
    env.pop("OMP_NUM_THREADS", None)  # the budget sizes torch
    cmd = [sys.executable, "-m", "embedcache", "extract", "--data", str(data), "--out", str(out),
           "--encoder", args.encoder, "--weights", "random", "--variants", args.variants,
           "--unit-tiles", str(args.unit_tiles), "--batch-size", "8", "--loader-workers", "0", "--device", "cpu",
           "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _timed(args, data: Path, root: Path, n_procs: int, threads: int, keep: bool = False) -> tuple[float, list[int], int]:
    """Wall seconds of ``n_procs`` processes on one store, the units each computed (most first), and how many
    units were computed more than once. ``keep``: run on the store left by the last run (nothing to compute)."""
    out, log = root / f"s{n_procs}.zarr", root / f"log{n_procs}"
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    procs = [_extract(args, data, out, log, threads) for _ in range(n_procs)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(err)
    seconds = time.perf_counter() - t0
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    per_pid = Counter(pid for pid, _ in lines)
    per_process = sorted([per_pid.get(str(p.pid), 0) for p in procs], reverse=True)
    twice = sum(c > 1 for c in Counter(unit for _, unit in lines).values())
    return seconds, per_process, twice


def share(args, root: Path) -> None:
    data = _data(root, args.tiles, args.size)
    _timed(args, data, root, 1, 2)  # warm the file cache and imports
    startup = _timed(args, data, root, 1, 2, keep=True)[0]
    ratios = []
    n_units = -(-args.tiles // args.unit_tiles)
    print(f"{args.tiles} tiles of {args.size} px in {n_units} units of {args.unit_tiles}, {args.encoder}, "
          f"variants {args.variants}; a process's fixed cost (imports, dataset, model): {startup:.1f} s")
    for r in range(args.repeats):
        one = _timed(args, data, root, 1, 2)
        two = _timed(args, data, root, 2, 1)
        ratios.append(two[0] / one[0])
        print(f"repeat {r + 1}: one process, 2 threads: {one[0]:.1f} s ({one[1][0]} units); "
              f"two processes, 1 thread each: {two[0]:.1f} s (units computed per process {two[1]}, "
              f"computed twice: {two[2]})")
    print(f"median wall time two / one: {statistics.median(ratios):.2f}")
    if startup > 0.25 * one[0]:
        print(f"note: the fixed cost is {startup / one[0]:.0%} of one process's wall time; give more --tiles "
              "(or a larger --size) to measure sharing rather than loading")


def _cycles(place, n: int) -> float:
    from embedcache.claims import Claims

    claims = Claims(place, "bench")
    done = np.zeros(n, dtype=bool)
    t0 = time.perf_counter()
    for u in range(n):
        name = f"unit-{u:06d}"
        assert claims.acquire(name)
        _ = done[u]
        claims.release(name)
    return (time.perf_counter() - t0) / n * 1e3


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", f"from moto.server import ThreadedMotoServer as S; "
                             f"s = S(ip_address='127.0.0.1', port={port}, verbose=False); s.start(); "
                             "import time; time.sleep(1e9)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import boto3

    for _ in range(100):
        try:
            boto3.client("s3").create_bucket(Bucket="bench-claims")
            break
        except Exception:
            time.sleep(0.1)
    return proc, "s3://bench-claims/out.zarr.claims"


def overhead(args, root: Path) -> None:
    local = statistics.median(_cycles(root / f"c{k}", args.cycles) for k in range(3))
    print(f"claim + done check + release per unit, local disk: {local:.3f} ms")
    proc, url = _moto()
    try:
        remote = statistics.median(_cycles(f"{url}{k}", args.cycles) for k in range(3))
        print(f"claim + done check + release per unit, S3 (moto on loopback): {remote:.2f} ms")
    finally:
        proc.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=int, default=128)
    ap.add_argument("--size", type=int, default=224, help="tile side, px")
    ap.add_argument("--encoder", default="timm:vit_small_patch16_224")
    ap.add_argument("--variants", default="flips")
    ap.add_argument("--unit-tiles", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--parts", nargs="+", default=["share", "overhead"], choices=["share", "overhead"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "share" in args.parts:
            share(args, Path(tmp))
        if "overhead" in args.parts:
            overhead(args, Path(tmp))


if __name__ == "__main__":
    main()
