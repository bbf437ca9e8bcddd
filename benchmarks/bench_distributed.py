"""Distributed extraction: parallel efficiency, per-unit overhead, object storage against local disk.

    python benchmarks/bench_distributed.py [--tiles 32] [--encoder timm:vit_small_patch16_224]
        [--variants flips] [--unit-tiles 4] [--repeats 3] [--sizes 1 2 4 8] [--parts efficiency overhead s3]

1. Parallel efficiency, same model, tiles, unit size and batch size, alternating:
   * one process with 2 torch threads: ``embedcache.extract`` (DataLoader
     reading, writer thread overlapping compute);
   * 2 single-threaded dask workers (one torch thread each) on a local
     cluster: ``extract_distributed``.
   Throughput of the unit loop (models loaded, store created, in both),
   and the median of the per-repeat ratios distributed / single, which
   cancels drift on a shared machine. On a busy machine wall-clock time
   also measures how the OS shares the cores, so the CPU seconds each
   spends per tile-variant (whole call, every process: DataLoader worker;
   dask workers, scheduler and driver) are compared too. Cluster start is
   reported apart.
2. Overhead per unit of work on the 2-worker cluster, for several unit
   sizes u (tiles): each task reports its read, compute and write seconds
   and when it started and ended; scheduling is the median time a worker
   waits between finishing one unit and starting its next. Lines fitted to
   write and read seconds against u split a fixed cost per unit from a
   cost per tile; compute per tile is c. The unit size that keeps the fixed
   costs (scheduling + fixed write + fixed read) under 2% of a unit's
   compute is fixed / (0.02 c).
3. Object storage: the single-process extraction into a moto S3 server (its
   own process, on loopback) against local disk, tiles/s of the unit
   loop; and the raw write throughput (MB/s of stored bytes) of the same
   precomputed units written with ``StoreWriter.write_unit``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distributed import Client

from embedcache.config import ExtractConfig
from embedcache.datasets.synthetic import write_demo_data
from embedcache.extract.distributed import extract_distributed, local_cluster
from embedcache.extract import ExtractionJob, extract


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tile_variants_per_s(res) -> float:
    return res.n_tiles * res.n_variants * res.units_run / res.units_total / res.seconds


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def parallel_efficiency(args, data: Path, work: Path, cfg: ExtractConfig, client, scheduler: str) -> None:
    """Wall-clock throughput of both, and CPU seconds spent per tile-variant (robust to a busy machine)."""
    single, dist, ratios, cpu_ratios = [], [], [], []
    for r in range(args.repeats):
        torch.set_num_threads(2)
        cpu0, kids0 = time.process_time(), _children_cpu()
        a = extract(data, work / f"single-{r}.zarr", cfg, progress=False)
        cpu_a = time.process_time() - cpu0 + _children_cpu() - kids0  # + the DataLoader worker
        cpu0, w0 = time.process_time(), client.run(time.process_time)
        b = extract_distributed(data, work / f"dist-{r}.zarr", cfg, scheduler=scheduler, progress=False)
        w1 = client.run(time.process_time)
        cpu_b = time.process_time() - cpu0 + sum(w1[w] - w0[w] for w in w1 if w in w0)  # driver + scheduler
        single.append(_tile_variants_per_s(a))
        dist.append(_tile_variants_per_s(b))
        ratios.append(dist[-1] / single[-1])
        cpu_ratios.append(cpu_a / cpu_b)
        n = a.n_tiles * a.n_variants
        print(f"  repeat {r}: single {single[-1]:.2f}, 2 workers {dist[-1]:.2f} tile-variants/s, ratio "
              f"{ratios[-1]:.3f}; CPU per tile-variant {1e3 * cpu_a / n:.0f} vs {1e3 * cpu_b / n:.0f} ms, "
              f"ratio {cpu_ratios[-1]:.3f}; load average {os.getloadavg()[0]:.1f}")
        shutil.rmtree(work / f"single-{r}.zarr")
        shutil.rmtree(work / f"dist-{r}.zarr")
    print(f"parallel efficiency: single process (2 threads) {statistics.median(single):.2f} tile-variants/s, "
          f"2 single-threaded workers {statistics.median(dist):.2f}; median wall ratio "
          f"{statistics.median(ratios):.3f}, median CPU-time ratio {statistics.median(cpu_ratios):.3f} "
          "(target >= 0.9)")


def _scheduling_gaps(units: list[dict]) -> list[float]:
    """Seconds each worker waited between finishing one unit and starting its next."""
    gaps = []
    for worker in {u["worker"] for u in units}:
        mine = sorted((u for u in units if u["worker"] == worker), key=lambda u: u["started"])
        gaps += [b["started"] - a["ended"] for a, b in zip(mine, mine[1:])]
    return gaps


def unit_overhead(args, data: Path, work: Path, base: ExtractConfig, scheduler: str) -> None:
    rows = []
    for u in args.sizes:
        cfg = ExtractConfig(**{**base.to_dict(), "unit_tiles": u})
        res = extract_distributed(data, work / f"u{u}.zarr", cfg, scheduler=scheduler, progress=False)
        n = len(res.units)
        gaps = _scheduling_gaps(res.units)
        sched = statistics.median(gaps) if gaps else float("nan")
        write, read, compute = (statistics.mean(x[k] for x in res.units) for k in ("write_s", "read_s", "compute_s"))
        rows.append((u, sched, write, read, compute))
        print(f"  unit {u:2d} tiles: {n:3d} units; per unit: scheduling {1e3 * sched:6.1f} ms (median gap between a "
              f"worker's units), write {1e3 * write:7.1f} ms, read {1e3 * read:6.1f} ms, "
              f"compute {1e3 * compute:8.1f} ms")
        shutil.rmtree(work / f"u{u}.zarr")
    u = np.array([r[0] for r in rows], dtype=float)
    write_b, write_a = np.polyfit(u, [r[2] for r in rows], 1)
    read_b, read_a = np.polyfit(u, [r[3] for r in rows], 1)
    sched = float(np.nanmedian([r[1] for r in rows]))
    c = float(sum(r[4] for r in rows) / u.sum())
    fixed = sched + max(0.0, write_a) + max(0.0, read_a)
    print(f"per unit, fixed: scheduling {1e3 * sched:.1f} ms + write {1e3 * max(0.0, write_a):.1f} ms + read "
          f"{1e3 * max(0.0, read_a):.1f} ms = {1e3 * fixed:.1f} ms; per tile: write {1e3 * write_b:.1f} ms, read "
          f"{1e3 * read_b:.1f} ms, compute {1e3 * c:.1f} ms")
    print(f"fixed overhead under 2% of a unit's compute from {max(1, int(np.ceil(fixed / (0.02 * c))))} tiles per "
          f"unit; writing costs {100 * write_b / c:.1f}% of compute per tile whatever the unit size (the "
          "single-process writer thread pays it too)")


def object_storage(args, data: Path, work: Path, cfg: ExtractConfig) -> None:
    import boto3
    from s3fs import S3FileSystem

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    S3FileSystem.clear_instance_cache()
    try:
        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        torch.set_num_threads(2)
        local_tps, s3_tps = [], []
        for r in range(args.repeats):
            a = extract(data, work / f"local-{r}.zarr", cfg, progress=False)
            b = extract(data, f"s3://bench/s3-{r}.zarr", cfg, progress=False)
            local_tps.append(_tile_variants_per_s(a))
            s3_tps.append(_tile_variants_per_s(b))
        print(f"extraction into the store, single process: local disk {statistics.median(local_tps):.2f}, "
              f"loopback S3 (moto) {statistics.median(s3_tps):.2f} tile-variants/s "
              f"(ratio {statistics.median(s3_tps) / statistics.median(local_tps):.3f})")

        job = ExtractionJob(data, cfg)
        arrays = [job.compute_unit(u) for u in range(job.n_units)]
        for where in (str(work / "raw.zarr"), "s3://bench/raw.zarr"):
            writer = job.open_writer(where, overwrite=True)
            t = time.perf_counter()
            for u, arr in enumerate(arrays):
                writer.write_unit(u, arr)
            seconds = time.perf_counter() - t
            stored = writer.location.building.nbytes(metadata=False)
            print(f"  write only, {where.split(':')[0] if '://' in where else 'local'}: {len(arrays)} units in "
                  f"{seconds:.2f} s, {stored / seconds / 2**20:.1f} MB/s stored, "
                  f"{1e3 * seconds / len(arrays):.0f} ms per unit")
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--encoder", default="timm:vit_small_patch16_224")
    ap.add_argument("--variants", default="flips")
    ap.add_argument("--unit-tiles", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--parts", nargs="+", default=["efficiency", "overhead", "s3"],
                    choices=["efficiency", "overhead", "s3"])
    args = ap.parse_args()
    cfg = ExtractConfig(encoder=args.encoder, weights="random", variants=args.variants, batch_size=args.batch_size,
                        unit_tiles=args.unit_tiles, device="cpu", loader_workers=1)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.encoder} (random weights), {args.tiles} tiles "
          f"256x256, variants {args.variants}, unit {args.unit_tiles} tiles, batch {args.batch_size}")
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        write_demo_data(work / "data", n_tiles=args.tiles, seed=1)
        data = work / "data"
        t = time.perf_counter()
        if {"efficiency", "overhead"} & set(args.parts):
            with local_cluster(2, "cpu") as (cluster, threads), Client(cluster, set_as_default=False) as client:
                client.run(torch.set_num_threads, threads)
                print(f"local cluster of 2 workers started in {time.perf_counter() - t:.1f} s; torch threads per "
                      f"worker {sorted(set(client.run(torch.get_num_threads).values()))}")
                extract_distributed(data, work / "warm.zarr", cfg, scheduler=cluster.scheduler_address,
                                    progress=False)  # workers load the encoder once
                if "efficiency" in args.parts:
                    parallel_efficiency(args, data, work, cfg, client, cluster.scheduler_address)
                if "overhead" in args.parts:
                    unit_overhead(args, data, work, cfg, cluster.scheduler_address)
        if "s3" in args.parts:
            object_storage(args, data, work, cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
