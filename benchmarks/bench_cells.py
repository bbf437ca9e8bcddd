"""Cells: pooling throughput (the kernel, and ``build_cells`` end to end) and the cost of a cell probe.

    python benchmarks/bench_cells.py                          # full: 2,000 tiles, 100,000 cells x 4 layers
    python benchmarks/bench_cells.py --tiles 100 --cells 5000 --images 100 --repeats 1   # quick check
    python benchmarks/bench_cells.py --only kernel,build --build-repeats 3 --trace-build --work /tmp/bench-cells
    python benchmarks/bench_cells.py --only probe --method linear --fractions 0.1,1 --n-boot 200
    python benchmarks/bench_cells.py --only probe --per-method --work /tmp/bench-cells   # kNN and linear apart
    python benchmarks/bench_cells.py --scale --work /tmp/bench-cells   # 1,000,000 cells x 1 layer x 1,536
    python benchmarks/bench_cells.py --scale --method knn --knn-slice 10000 --work /tmp/bench-cells   # its kNN, projected

1a. kernel: the pooling ``build_cells`` runs (``unit_pooling``: sparse weights
    of each unit's nuclei; ``pool_unit``: one sparse product with the unit's
    token rows) on in-memory 256x256 tiles, one layer of 16x16x384 tokens
    (a ViT-S/16 at 256 px), Poisson(30) nuclei per tile drawn as ellipses of
    8-15 px semi-axes that do not overlap. Tokens go in as float32, as
    ``Store.tokens`` hands them to the pool (it decodes the stored float16).
    ``--kernel-pool`` distinct tiles are cycled through ``--tiles`` tiles;
    the figure is the median of ``--repeats``.
1b. end to end: :func:`~embedcache.cells.build_cells` (nuclei from the
    store's labels, ``variants="identity"``, the one layer) from a local
    labelled store of ``--tiles`` such tiles, written here straight through
    the store writer (no encoder: random float16 tokens; one tile per source
    image, as in PanNuke and CoNIC; ``--store-variants`` cached variants).
    Its files are in the page cache (just written). Figures: the median of
    ``--build-repeats`` runs of ``CellsResult.cells_per_second`` (the whole
    build: nuclei, cell table, pooling, writing; imports excluded) and of the
    whole call.
2.  cell probe: :func:`~embedcache.probes.cell.run_cell_probes`, then
    :func:`~embedcache.report.cells.score_cell_probes`, timed apart, on a
    cell store written here with ``CellWriter``: ``--cells`` nuclei x
    ``--layers`` layers of ``--dim`` (float16), 5 types (imbalanced, 2%
    untyped) over ``--images`` source images, a weak type signal that grows
    with depth, and a per-image offset. ``ProbeConfig(level="cell",
    labels="type", layers="all")`` with its defaults unless ``--method``,
    ``--fractions``, ``--n-boot`` or ``--folds`` say otherwise. ``--per-method``
    times kNN and linear in runs of their own (the curve with linear), and
    the kNN's floor is printed: its floating-point operations over this
    machine's matrix product speed, measured here in float32 (NumPy's BLAS)
    and in bfloat16 (torch) where the prefilter runs in it.
    ``--scale``: 1,000,000 cells x 1 layer x 1,536 (5,000 images), each
    method apart, no curve, no traced rerun (the cell store: 3 GB of float16).
    ``--knn-slice N``: the kNN's first fold on N of its test cells (its fit,
    the N queries and the peak memory, through ``fit_knn``), the whole kNN
    probe's time projected from them; at 1,000,000 cells the whole probe
    runs for hours on two cores.

The goal for 1a and 1b: >= 1,000,000 cells per minute on this CPU.

Each part runs in a process of its own, and so does writing the stores, so
one part's memory is not another's (a child started by vfork + exec would
inherit its parent's peak as ``ru_maxrss``). Memory is reported as:

- **peak RSS** of the process during the call: Linux ``VmHWM``, reset just
  before the call through ``/proc/self/clear_refs`` (elsewhere
  ``ru_maxrss``, the process's lifetime peak), with its rise above the RSS
  just before the call; with the kNN, torch (its bfloat16 prefilter) is
  imported before the calls and the memory its import takes printed apart;
- **tracemalloc peak**: Python and NumPy allocations (zarr's codecs and
  BLAS allocate out of its sight). Tracing made a small probe 2x slower, so
  it never runs in a timed call: the probe is run once more traced (skip
  with ``--no-trace``), the build only with ``--trace-build``.

Thread settings (the BLAS and OpenMP pools threadpoolctl sees once the code
measured is imported, torch, zarr, the thread budget) are printed first;
``--threads N`` sets OMP/OPENBLAS/MKL_NUM_THREADS and the thread budget
(``EMBEDCACHE_THREADS``: the linear probe fits up to that many folds side
by side) for every part. ``--work DIR`` keeps the stores and reuses them when the
sizes match; ``--profile`` prints a cProfile of the first build.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

GOAL_PER_MIN = 1_000_000
TILE = 256
LAYER = "blocks.11"
TYPE_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
PARTS = ("kernel", "build", "probe")
# --scale: a study's worth of cells, one wide layer (a ViT-L/H's width), each method timed apart.
SCALE = {"cells": 1_000_000, "layers": 1, "dim": 1536, "images": 5000, "fractions": "", "per_method": True,
         "no_trace": True, "only": "probe"}


# ----------------------------------------------------------------------------- memory


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory of this process during a block: ``peak_mb`` and ``rise_mb`` above the start."""

    def __enter__(self):
        self.before_mb = _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.how = "VmHWM"
        except OSError:
            self.how = "ru_maxrss (process lifetime peak)"
        return self

    def __exit__(self, *exc):
        hwm = _status_mb("VmHWM") if self.how == "VmHWM" else None
        self.peak_mb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.rise_mb = self.peak_mb - self.before_mb
        return False

    def to_dict(self) -> dict:
        return {"peak_mb": round(self.peak_mb), "rise_mb": round(self.rise_mb), "before_mb": round(self.before_mb),
                "how": self.how}


# ----------------------------------------------------------------------------- synthetic nuclei


def type_probabilities(k: int) -> np.ndarray:
    p = 0.7 ** np.arange(k)
    return p / p.sum()


def draw_nuclei(rng: np.random.Generator, mean: float, radii: tuple[float, float], n_types: int,
                size: int = TILE) -> tuple[np.ndarray, np.ndarray]:
    """Instance and type maps ``(size, size) int32`` of Poisson(``mean``) ellipses that do not overlap."""
    inst = np.zeros((size, size), np.int32)
    types = np.zeros((size, size), np.int32)
    want, k = rng.poisson(mean), 0
    p = type_probabilities(n_types)
    for _ in range(4 * want):
        if k == want:
            break
        cy, cx = rng.uniform(0, size, 2)
        if inst[int(cy), int(cx)]:
            continue  # a centre inside an earlier nucleus would leave this one nothing
        ry, rx = rng.uniform(*radii, 2)
        r0, r1 = max(0, int(cy - ry)), min(size, int(np.ceil(cy + ry)) + 1)
        c0, c1 = max(0, int(cx - rx)), min(size, int(np.ceil(cx + rx)) + 1)
        rr, cc = np.ogrid[r0:r1, c0:c1]
        mask = (((rr + 0.5 - cy) / ry) ** 2 + ((cc + 0.5 - cx) / rx) ** 2 <= 1) & (inst[r0:r1, c0:c1] == 0)
        if not mask.any():
            continue
        k += 1
        inst[r0:r1, c0:c1][mask] = k
        types[r0:r1, c0:c1][mask] = 1 + rng.choice(n_types, p=p)
    return inst, types


def radii(args) -> tuple[float, float]:
    lo, hi = (float(v) for v in args.radius.split(","))
    return lo, hi


# ----------------------------------------------------------------------------- 1a kernel


def part_kernel(args) -> dict:
    """The pooling ``build_cells`` runs, in units of 64 tiles: the sparse weights of a unit's nuclei
    (:func:`~embedcache.cells.build.unit_pooling`), its tokens laid out as rows (as
    :func:`~embedcache.cells.build.unit_tokens` does after reading), and the sparse product
    (:func:`~embedcache.cells.build.pool_unit`)."""
    from embedcache.cells.build import pool_unit, unit_pooling
    from embedcache.geometry import TiledImage

    rng = np.random.default_rng(args.seed)
    pool = max(1, min(args.tiles, args.kernel_pool))
    grid = (args.grid, args.grid)
    maps = [draw_nuclei(rng, args.nuclei, radii(args), len(TYPE_NAMES))[0].astype(np.int64) for _ in range(pool)]
    ids = [np.unique(m)[1:] for m in maps]  # build_cells takes them from the cell table
    tokens = [rng.standard_normal((1, args.dim, *grid), dtype=np.float32).astype(np.float16).astype(np.float32)
              for _ in range(pool)]
    cells = sum(len(ids[i % pool]) for i in range(args.tiles))
    unit = 64
    valid = np.full((args.tiles, 2), TILE, np.int64)

    def once(n_tiles: int) -> tuple[float, np.ndarray]:
        stage = np.zeros(3)
        t_start = time.perf_counter()
        for u0 in range(0, n_tiles, unit):
            tiles = list(range(u0, min(u0 + unit, n_tiles)))
            images = [TiledImage(f"t{t}", (TILE, TILE), [((0, 0), t)]) for t in tiles]
            found = [{"instance": ids[t % pool], "tile": np.full(len(ids[t % pool]), t)} for t in tiles]
            t0 = time.perf_counter()
            _, weights = unit_pooling(images, [maps[t % pool] for t in tiles], found, [grid], (TILE, TILE), valid)
            t1 = time.perf_counter()
            tok = np.concatenate([tokens[t % pool] for t in tiles])  # (n, C, h, w), one variant
            n, C = tok.shape[:2]
            rows = tok.reshape(n, C, -1).transpose(0, 2, 1).reshape(-1, C)
            t2 = time.perf_counter()
            pool_unit({LAYER: (rows, grid, 1, C)}, weights)
            t3 = time.perf_counter()
            stage += (t1 - t0, t2 - t1, t3 - t2)
        return time.perf_counter() - t_start, stage

    once(min(args.tiles, 2 * unit))  # warm-up: imports and page faults
    runs = [once(args.tiles) for _ in range(args.repeats)]
    seconds = [s for s, _ in runs]
    stage = runs[int(np.argsort(seconds)[len(seconds) // 2])][1]  # the stages of the median run
    median = statistics.median(seconds)
    return {"tiles": args.tiles, "distinct": pool, "cells": cells, "per_min": cells / median * 60,
            "per_min_runs": [cells / s * 60 for s in seconds],
            "ms_per_tile": {"weights": 1e3 * stage[0] / args.tiles, "token rows": 1e3 * stage[1] / args.tiles,
                            "product": 1e3 * stage[2] / args.tiles}}


# ----------------------------------------------------------------------------- stores written directly


def tile_store_key(args) -> str:
    return (f"bench-cells:{args.tiles}t:{args.nuclei}n:{args.radius}r:{args.dim}x{args.grid}:"
            f"{args.store_variants}v:{args.seed}")


def tile_store_path(args) -> Path:
    return Path(args.work) / f"tiles-{args.tiles}t-{args.store_variants}v-s{args.seed}.zarr"


def write_tile_store(args) -> dict:
    """A labelled store of ``--tiles`` 256-px tiles and one layer of tokens, through ``StoreWriter``."""
    from embedcache import open_store
    from embedcache.datasets.variants import D4
    from embedcache.encoders import get_spec
    from embedcache.errors import StoreError
    from embedcache.store import schema
    from embedcache.store.writer import StoreWriter

    path, key = tile_store_path(args), tile_store_key(args)
    try:
        old = open_store(path)
        if old.complete and old.config.dataset_fingerprint == key:
            return {"path": str(path), "reused": True, "seconds": 0.0}
    except StoreError:
        pass
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed + 1)
    n, unit, g = args.tiles, 16, args.grid
    variants = D4[:args.store_variants]
    layout = schema.LayerLayout(LAYER, (args.dim, g, g), stride=(TILE / g, TILE / g))
    spec = get_spec("lunit-vits16")
    config = schema.StoreConfig(encoder=spec.to_dict(), weights_sha256=None, layers=[LAYER],
                                variants=[v.name for v in variants], dtype="float16", norm=False,
                                compute="cpu-float32", tile_shape=[TILE, TILE], n_tiles=n, unit_tiles=unit,
                                dataset_fingerprint=key)
    provenance = schema.Provenance(weights="random", dataset={"layout": "conic"})  # a stack: one tile per image
    attrs = schema.StoreAttrs(config=config, provenance=provenance, layers=(layout,),
                              variant_defs={v.name: {"flip": v.flip, "k": v.k, "stain": None} for v in variants},
                              class_names=dict(enumerate(TYPE_NAMES, start=1)))
    specs = schema.array_specs(n, (TILE, TILE), len(variants), [layout], "float16", unit, has_labels=True)
    writer = StoreWriter.open(path, attrs, specs, overwrite=True)
    cells = 0
    for u in range(writer.n_units):
        start, stop = schema.unit_range(u, n, unit)
        m = stop - start
        labels = np.zeros((m, TILE, TILE, 2), np.int32)
        for i in range(m):
            labels[i, ..., 0], labels[i, ..., 1] = draw_nuclei(rng, args.nuclei, radii(args), len(TYPE_NAMES))
            cells += int(labels[i, ..., 0].max())
        tokens = rng.standard_normal((m, len(variants), args.dim, g, g), dtype=np.float32).astype(np.float16)
        writer.write_unit(u, {
            schema.IMAGES: np.zeros((m, TILE, TILE, 3), np.uint8), schema.LABELS: labels,
            schema.tokens_path(LAYER): tokens,
            schema.pooled_path(LAYER, "mean"): tokens.astype(np.float32).mean(axis=(-2, -1)),
            schema.TILE_SOURCE: np.arange(start, stop, dtype=np.int64),
            schema.TILE_OFFSET: np.zeros((m, 2), np.int64), schema.TILE_VALID: np.full((m, 2), TILE, np.int64),
            schema.TILE_FOLD: np.zeros(m, np.int64), schema.TILE_TISSUE: np.full(m, -1, np.int64)})
    writer.finish()
    return {"path": str(path), "reused": False, "seconds": time.perf_counter() - t0, "cells": cells}


def cell_store_key(args) -> str:
    return (f"bench-cells:{args.cells}c:{args.images}i:{args.layers}x{args.dim}:{args.probe_variants}v:"
            f"{args.signal}:{args.seed}")


def cell_store_path(args) -> Path:
    return Path(args.work) / f"cells-{args.cells}c-{args.layers}x{args.dim}-{args.probe_variants}v-s{args.seed}.cells"


def write_cell_store(args) -> dict:
    """A cell store of ``--cells`` nuclei with a weak planted type signal, through ``CellWriter``."""
    from embedcache import open_store
    from embedcache.config import CellsConfig
    from embedcache.datasets.variants import D4
    from embedcache.encoders import get_spec
    from embedcache.errors import StoreError
    from embedcache.store.cells import CellWriter

    path, key = cell_store_path(args), cell_store_key(args)
    try:
        old = open_store(path)
        if old.complete and old.source_store.get("dataset_fingerprint") == key:
            return {"path": str(path), "reused": True, "seconds": 0.0}
    except StoreError:
        pass
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed + 2)
    n, k, L, D, V = args.cells, len(TYPE_NAMES), args.layers, args.dim, args.probe_variants
    image = np.sort(np.concatenate([np.arange(args.images), rng.integers(0, args.images, n - args.images)]))
    types = 1 + rng.choice(k, size=n, p=type_probabilities(k))
    types[rng.random(n) < 0.02] = 0
    instance = np.concatenate([np.arange(1, c + 1) for c in np.bincount(image, minlength=args.images)])
    area = np.round(np.pi * rng.uniform(8, 15, n) * rng.uniform(8, 15, n)).astype(np.int64)
    table = {"tile": image, "source": image, "instance": instance, "centroid": rng.uniform(0, TILE, (n, 2)),
             "area": area, "type": types, "coverage": np.ones(n, np.float32)}
    # Per layer: a random unit direction per type, scaled by a strength growing with depth, over N(0, 1)
    # noise; plus a per-image offset the folds over images must not learn.
    means = rng.standard_normal((L, k + 1, D)).astype(np.float32)
    means /= np.linalg.norm(means, axis=-1, keepdims=True)
    means[:, 0] = 0
    means *= (args.signal * np.arange(1, L + 1) / L)[:, None, None].astype(np.float32)
    offsets = 0.2 * rng.standard_normal((L, args.images, D)).astype(np.float32)
    layers = {f"blocks.{2 + 3 * i}" if L == 4 else f"layer{i}": D for i in range(L)}
    bounds = np.searchsorted(image, np.arange(0, args.images + 64, 64).clip(max=args.images))
    bounds = np.unique(np.append(bounds, n))
    units = [(int(image[a]), int(image[b - 1]) + 1, int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    spec = get_spec("lunit-vits16")
    config = CellsConfig(variants="all" if V > 1 else "identity")
    record = {"n_cells": n, "layers": layers, "variants": [v.name for v in D4[:V]],
              "class_names": {str(i): name for i, name in enumerate(TYPE_NAMES, start=1)},
              "source_names": [f"tile{i:05d}" for i in range(args.images)], "mpp": 0.5, "encoder": spec.to_dict(),
              "source_store": {"path": str(Path(args.work) / "absent.zarr"), "dataset_fingerprint": key,
                               "weights_sha256": None, "n_tiles": args.images},
              "nuclei": {"kind": "labels", "source": "store", "fingerprint": key}, "config": config.to_dict()}
    writer = CellWriter(path, record, table, layers, "float16", units, overwrite=True)
    for u, (_, _, c0, c1) in enumerate(units):
        t, img = types[c0:c1], image[c0:c1]
        out = {}
        for li, name in enumerate(layers):
            x = rng.standard_normal((c1 - c0, 1, D), dtype=np.float32) + (means[li, t] + offsets[li, img])[:, None]
            if V > 1:  # the variants: the same cell, moved a little
                x = x + 0.3 * rng.standard_normal((c1 - c0, V, D), dtype=np.float32) * (np.arange(V) > 0)[:, None]
            out[name] = x.astype(np.float16)
        writer.write_unit(u, out)
    writer.finish()
    return {"path": str(path), "reused": False, "seconds": time.perf_counter() - t0}


def part_make(args) -> dict:
    out = {}
    if "build" in args.parts:
        out["tile"] = write_tile_store(args)
    if "probe" in args.parts:
        out["cell"] = write_cell_store(args)
    return out


# ----------------------------------------------------------------------------- 1b build_cells


def part_build(args) -> dict:
    import scipy.ndimage  # build_cells imports these on its first call: not part of the figure
    import tqdm.auto

    from embedcache.cells import build_cells
    from embedcache.config import CellsConfig

    del scipy, tqdm
    store = tile_store_path(args)
    out = Path(args.work) / "built.cells"
    config = CellsConfig(nuclei="store", layers="all", variants="identity")
    runs = []
    n_runs = args.build_repeats + (1 if args.trace_build else 0)
    for r in range(n_runs):
        shutil.rmtree(out, ignore_errors=True)
        traced = args.trace_build and r == n_runs - 1  # an extra run, so tracing slows no timed one
        if traced:
            tracemalloc.start()
        profile = cProfile.Profile() if args.profile and r == 0 else None
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            if profile:
                profile.enable()
            res = build_cells(store, out, config, progress=False)
            if profile:
                profile.disable()
            whole = time.perf_counter() - t0
        run = {"seconds": res.seconds, "whole": whole, "per_min": res.cells_per_second * 60,
               "whole_per_min": res.n_cells / whole * 60, "mem": mem.to_dict(), "n_cells": res.n_cells,
               "units": res.units, "layers": res.layers, "variants": res.variants}
        if traced:
            run["tracemalloc_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        if profile:
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(30)
            print(f"--- cProfile of the first build_cells run (cumulative) ---\n{text.getvalue()}", file=sys.stderr)
        runs.append(run)
    timed = runs[:args.build_repeats]
    return {"n_cells": timed[0]["n_cells"], "tiles": args.tiles, "units": timed[0]["units"],
            "layers": timed[0]["layers"], "variants": timed[0]["variants"],
            "per_min": statistics.median(r["per_min"] for r in timed),
            "whole_per_min": statistics.median(r["whole_per_min"] for r in timed),
            "seconds": statistics.median(r["seconds"] for r in timed),
            "per_min_runs": [r["per_min"] for r in timed],
            "peak_mb": max(r["mem"]["peak_mb"] for r in timed), "rise_mb": max(r["mem"]["rise_mb"] for r in timed),
            "before_mb": timed[0]["mem"]["before_mb"], "mem_how": timed[0]["mem"]["how"],
            "tracemalloc_mb": runs[-1]["tracemalloc_mb"] if args.trace_build else None,
            "traced_seconds": runs[-1]["whole"] if args.trace_build else None,
            "store_variants": args.store_variants}


# ----------------------------------------------------------------------------- 2 cell probe


def probe_config(args):
    from embedcache.config import ProbeConfig

    return ProbeConfig(level="cell", labels="type", layers="all", method=args.method,
                       fractions=tuple(float(f) for f in args.fractions.split(",") if f.strip()),
                       n_boot=args.n_boot, folds=args.folds)


def part_probe(args) -> dict:
    import sklearn.decomposition  # the probe imports these on its first call: not part of the figure
    import sklearn.linear_model
    import sklearn.metrics
    import sklearn.model_selection
    import sklearn.neighbors
    import sklearn.pipeline
    import sklearn.preprocessing

    from embedcache.probes.cell import run_cell_probes
    from embedcache.report.cells import score_cell_probes

    del sklearn
    libraries_mb = None
    if "knn" in probe_config(args).methods:  # the prefilter's torch: imported before the figure, counted apart
        before = _status_mb("VmRSS")
        import torch  # noqa: F401

        after = _status_mb("VmRSS")
        libraries_mb = None if before is None or after is None else round(after - before)

    config = probe_config(args)
    path = cell_store_path(args)
    out = {"config": {k: v for k, v in config.to_dict().items()
                      if k in ("method", "fractions", "n_boot", "folds", "l2_grid", "k")},
           "torch_libraries_mb": libraries_mb}

    def measured(call, *a, traced=False, **kw):
        if traced:
            tracemalloc.start()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            value = call(*a, **kw)
            seconds = time.perf_counter() - t0
        got = {"seconds": seconds, "mem": mem.to_dict()}
        if traced:
            got["tracemalloc_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        return value, got

    # Timed untraced (tracemalloc made a small probe 2x slower), then once more traced for the Python peak.
    if args.per_method:  # each method in a run of its own: its own time and peak (the curve with linear)
        from dataclasses import replace

        from embedcache.probes.cell import CellProbeResult

        out["methods"], parts = {}, []
        for m in config.methods:
            one = replace(config, method=m, fractions=config.fractions if m == "linear" else ())
            got, out["methods"][m] = measured(run_cell_probes, [path], one)
            parts.append(got)
        result = CellProbeResult([p for r in parts for p in r.predictions], [c for r in parts for c in r.curve],
                                 parts[0].shifts, parts[0].info, parts[0].variants)
        out["probe"] = {"seconds": sum(m["seconds"] for m in out["methods"].values()),
                        "mem": max((m["mem"] for m in out["methods"].values()), key=lambda m: m["peak_mb"])}
    else:
        result, out["probe"] = measured(run_cell_probes, [path], config)
    report, out["score"] = measured(score_cell_probes, result, n_boot=config.n_boot, seed=config.seed)
    if not args.no_trace:
        _, out["probe_traced"] = measured(run_cell_probes, [path], config, traced=True)
        _, out["score_traced"] = measured(score_cell_probes, result, n_boot=config.n_boot, seed=config.seed,
                                          traced=True)
    if "knn" in config.methods:
        out["floor"] = knn_floor(result.info, args)
    out["fits"] = {"predictions": len(result.predictions), "curve": len(result.curve), "shifts": len(result.shifts)}
    out["info"] = {k: result.info[k] for k in ("n_cells", "n_untyped", "folds", "n_folds")}
    out["rows"] = [{"layer": r["layer"], "method": r["method"], "ba": r["scores"]["balanced_accuracy"]}
                   for r in report.rows]
    out["curve"] = [{"fraction": c["fraction"], "n_train": c["n_train"], "ba": c["balanced_accuracy"]}
                    for c in report.curve]
    return out


def gemm_gflops(dim: int, precision: str = "float32", rows: int = 1024, cols: int = 32768,
                repeats: int = 5) -> float:
    """This machine's matrix product as the kNN probe runs it, best of ``repeats``: a block of ``rows``
    queries against ``cols`` training rows of width ``dim``; float32 through NumPy's BLAS, bfloat16
    through torch (oneDNN), the prefilter's two precisions."""
    import torch

    rng = np.random.default_rng(0)
    A = rng.standard_normal((rows, dim), dtype=np.float32)
    B = rng.standard_normal((cols, dim), dtype=np.float32)
    if precision == "float32":
        C = np.empty((rows, cols), np.float32)
        product = lambda: np.matmul(A, B.T, out=C)  # noqa: E731
    else:
        A16, B16 = torch.from_numpy(A).bfloat16(), torch.from_numpy(B).bfloat16()
        C = torch.empty((rows, cols), dtype=torch.bfloat16)
        product = lambda: torch.matmul(A16, B16.T, out=C)  # noqa: E731
    product()  # warm-up: page faults, thread start
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        product()
        seconds.append(time.perf_counter() - t0)
    return 2 * rows * cols * dim / min(seconds) / 1e9


def knn_floor(info: dict, args) -> dict:
    """The exact kNN's arithmetic and the least time the matrix products alone take at this machine's speed,
    in float32 and in the precision the prefilter runs here.

    Every cell is a query once (out of fold), against the training rows of its fold: 2 D n_test n_train
    floating-point operations per fold and layer, about 2 D n^2 (1 - 1/F) for F even folds."""
    from embedcache.probes.neighbours import default_precision

    n, F = info["n_cells"], info["n_folds"]
    flop = 2.0 * args.dim * n * n * (1 - 1 / F) * args.layers
    out = {"flop": flop, "precision": default_precision()}
    for precision in sorted({"float32", out["precision"]}):
        gflops = gemm_gflops(args.dim, precision)
        out[precision] = {"gflops": gflops, "seconds": flop / gflops / 1e9}
    return out


def part_slice(args) -> dict:
    """The kNN probe's first fold on ``--knn-slice`` of its test cells: the fit (scaler, normalised training
    rows, the prefilter's copy) and that many queries, timed apart, with the process's peak memory; the
    whole probe's time projected from them (every fold fits once; every cell is a query once)."""
    import torch  # noqa: F401  (the prefilter's; imported before the figures, as in the probe part)

    from embedcache.probes.cell import cell_labels, open_cell_stores, read_cells
    from embedcache.probes.fit import fit_knn, make_folds

    store = open_cell_stores([cell_store_path(args)])[0]
    keep, y, classes = cell_labels(store)
    groups = store.table()["source"][keep]
    folds = make_folds(y, args.folds, None, args.seed, groups, classes)
    layer = store.select_layers("all")[-1]
    t0 = time.perf_counter()
    X = read_cells(store, layer, [0], keep)[:, 0]
    read = time.perf_counter() - t0
    test, train = np.flatnonzero(folds == folds.min()), np.flatnonzero(folds != folds.min())
    queries = test[:args.knn_slice]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        knn = fit_knn(X, y[train], k=20, rows=train)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        knn.predict_with_proba(X[queries])
        search = time.perf_counter() - t0
    n_folds = len(np.unique(folds))
    return {"n_cells": len(y), "n_train": len(train), "n_test": len(test), "queries": len(queries), "layer": layer,
            "read_s": read, "fit_s": fit, "search_s": search, "n_folds": n_folds, "mem": mem.to_dict(),
            "projected_s": read + n_folds * fit + search * len(y) / len(queries)}


# ----------------------------------------------------------------------------- threads


def part_info(args) -> dict:
    # The code measured, imported first: the BLAS and OpenMP pools it loads are what threadpoolctl lists.
    import scipy.linalg
    import sklearn.linear_model
    import zarr
    from threadpoolctl import threadpool_info

    import embedcache.cells.build
    import embedcache.probes.cell
    import embedcache.report.cells
    from embedcache.threads import budget

    del embedcache, scipy, sklearn
    pools = [{"lib": Path(p["filepath"]).name, "api": p["user_api"], "impl": p["internal_api"],
              "version": p.get("version"), "threads": p["num_threads"]} for p in threadpool_info()]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out = {"cpus": os.cpu_count(), "usable": usable,
           "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                  "EMBEDCACHE_THREADS")},
           "budget": budget(),
           "pools": pools, "zarr": {"version": zarr.__version__,
                                    "threading.max_workers": zarr.config.get("threading.max_workers", None),
                                    "async.concurrency": zarr.config.get("async.concurrency", None)},
           "load": os.getloadavg()[0]}
    out["torch_loaded_by_cells"] = "torch" in sys.modules
    try:
        import torch

        out["torch"] = {"version": torch.__version__, "intra_op": torch.get_num_threads(),
                        "inter_op": torch.get_num_interop_threads()}
    except ImportError:
        out["torch"] = None
    return out


# ----------------------------------------------------------------------------- the runner


def child(name: str, argv: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--child", name], stdout=subprocess.PIPE, text=True,
                         env=env, check=False)  # stderr passes through: tracebacks and --profile
    if out.returncode:
        sys.exit(f"part {name!r} failed (exit {out.returncode}); its error is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def goal(per_min: float) -> str:
    verdict = "met" if per_min >= GOAL_PER_MIN else f"NOT met, {per_min / GOAL_PER_MIN:.2f}x of it"
    return f"goal >= {GOAL_PER_MIN:,}/min: {verdict}"


def interval(s: dict) -> str:
    return f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def print_info(r: dict) -> None:
    print(f"CPUs: {r['cpus']} ({r['usable']} usable by this process); load average {r['load']:.1f} at the start")
    print("thread env: " + ", ".join(f"{k}={v or 'unset'}" for k, v in r["env"].items()))
    print(f"  thread budget {r['budget']}: the linear probe fits up to that many folds side by side")
    for p in r["pools"]:
        print(f"  threadpoolctl: {p['api']:<6} {p['impl']:<9} {p['version'] or '':<13} {p['threads']} threads  "
              f"({p['lib']})")
    t = r["torch"]
    torch_line = (f"torch {t['version']}: {t['intra_op']} intra-op, {t['inter_op']} inter-op threads"
                  if t else "torch not installed")
    print(f"  {torch_line}; the code measured "
          f"{'imports' if r['torch_loaded_by_cells'] else 'does not import'} torch")
    z = r["zarr"]
    print(f"  zarr {z['version']}: threading.max_workers={z['threading.max_workers']}, "
          f"async.concurrency={z['async.concurrency']}")


def main():
    from embedcache.config import ProbeConfig

    default = ProbeConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: kernel, build, probe")
    ap.add_argument("--tiles", type=int, default=2000, help="tiles pooled (kernel and build)")
    ap.add_argument("--nuclei", type=float, default=30.0, help="mean nuclei per 256-px tile (Poisson)")
    ap.add_argument("--radius", default="8,15", help="semi-axes of the nuclei, min,max pixels")
    ap.add_argument("--dim", type=int, default=384, help="token / vector width")
    ap.add_argument("--grid", type=int, default=16, help="token grid side (16: ViT-S/16 at 256 px)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the kernel (median)")
    ap.add_argument("--kernel-pool", type=int, default=200, help="distinct in-memory tiles the kernel cycles")
    ap.add_argument("--store-variants", type=int, default=1,
                    help="variants cached in the tile store (first N of d4); the build pools the identity only")
    ap.add_argument("--build-repeats", type=int, default=1, help="timed build_cells runs (median)")
    ap.add_argument("--trace-build", action="store_true",
                    help="one more build_cells run under tracemalloc, for its Python / NumPy peak")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the first build_cells run")
    ap.add_argument("--cells", type=int, default=100_000, help="cells in the probed cell store")
    ap.add_argument("--layers", type=int, default=4, help="layers in the probed cell store")
    ap.add_argument("--images", type=int, default=500, help="source images of the probed cells")
    ap.add_argument("--probe-variants", type=int, default=1, help="variants in the probed cell store")
    ap.add_argument("--signal", type=float, default=1.0, help="strength of the planted type signal, deepest layer")
    ap.add_argument("--method", default=default.method, choices=("linear", "knn", "both"))
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in default.fractions),
                    help="label-efficiency fractions, comma-separated ('' for none)")
    ap.add_argument("--n-boot", type=int, default=default.n_boot)
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--per-method", action="store_true",
                    help="time each probe method in a run of its own (time and peak memory of kNN and linear)")
    ap.add_argument("--scale", action="store_true",
                    help=f"the large case: {SCALE['cells']:,} cells x {SCALE['layers']} layer x {SCALE['dim']} "
                         "synthetic vectors, each method timed apart, no curve, no traced rerun")
    ap.add_argument("--knn-slice", type=int, default=None, metavar="N",
                    help="with --scale: time the kNN's first fold on N test cells instead of the whole kNN "
                         "probe (its fit, the N queries, the peak memory) and project the whole probe's time")
    ap.add_argument("--no-trace", action="store_true",
                    help="skip the probe's traced rerun (no tracemalloc peak; halves the probe's time)")
    ap.add_argument("--threads", type=int, default=None, help="cap BLAS / OpenMP threads of every part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the stores here and reuse them when the sizes match (default: a temporary folder)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale:
        for name, value in SCALE.items():
            setattr(args, name, value)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    if args.images > args.cells:
        ap.error(f"--images {args.images} is more than --cells {args.cells}")
    if args.knn_slice is not None and (args.knn_slice < 1 or args.method == "linear"):
        ap.error("--knn-slice N times the kNN probe on N >= 1 test cells; give --method knn (or both)")
    if args.child:
        part = {"info": part_info, "kernel": part_kernel, "make": part_make, "build": part_build,
                "probe": part_probe, "slice": part_slice}[args.child]
        out = part(args)
        out["load"] = os.getloadavg()[0]  # the machine's load over the last minute, as the part ends
        print(json.dumps(out))
        return

    # The parent stays small: a child started by vfork + exec inherits its peak RSS as ru_maxrss.
    temp = args.work is None
    work = Path(tempfile.mkdtemp(prefix="bench-cells-")) if temp else args.work
    work.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv[1:])
    while "--work" in argv:  # "--work DIR"; "--work=DIR" below
        i = argv.index("--work")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--work=")] + ["--work", str(work)]
    env = dict(os.environ)
    if args.threads:
        env.update({k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "EMBEDCACHE_THREADS")})
    try:
        print_info(child("info", argv, env))
        if "kernel" in args.parts:
            r = child("kernel", argv, env)
            ms = r["ms_per_tile"]
            print(f"\n1a. pooling kernel, one layer of {args.grid}x{args.grid}x{args.dim} tokens: {r['tiles']} tiles "
                  f"({r['distinct']} distinct, cycled), {r['cells'] / r['tiles']:.1f} nuclei per tile, "
                  f"semi-axes {args.radius} px")
            print(f"    {r['per_min']:,.0f} cells/min, median of {args.repeats}   [{goal(r['per_min'])}]")
            print(f"    per repeat: {[f'{x:,.0f}' for x in r['per_min_runs']]}; "
                  f"load average {r['load']:.1f} at the end")
            print("    ms per tile: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()))
        if "build" in args.parts or "probe" in args.parts:
            made = child("make", argv, env)
            for what, m in ((w, m) for w, m in made.items() if w in ("tile", "cell")):
                how = "reused" if m["reused"] else f"written in {m['seconds']:.1f} s"
                print(f"\n({what} store {how}: {m['path']})")
        if "build" in args.parts:
            r = child("build", argv, env)
            print(f"\n1b. build_cells end to end from a local store: {r['tiles']} tiles, {r['n_cells']:,} cells, "
                  f"layer {', '.join(r['layers'])}, variants {', '.join(r['variants'])} "
                  f"(the store caches {r['store_variants']}), {r['units']} units of work")
            print(f"    {r['per_min']:,.0f} cells/min (CellsResult.cells_per_second), median of {args.build_repeats}"
                  f"   [{goal(r['per_min'])}]")
            print(f"    {r['whole_per_min']:,.0f} cells/min counting the whole call; {r['seconds']:.2f} s per build "
                  f"({1e3 * r['seconds'] / r['tiles']:.1f} ms per tile); per repeat: "
                  f"{[f'{x:,.0f}' for x in r['per_min_runs']]}; load average {r['load']:.1f} at the end")
            traced = "tracemalloc: not run (--trace-build)"
            if r["tracemalloc_mb"] is not None:
                traced = (f"tracemalloc peak {r['tracemalloc_mb']:.0f} MB "
                          f"(an extra traced run, {r['traced_seconds']:.1f} s)")
            print(f"    peak RSS during the call {r['peak_mb']} MB ({r['rise_mb']:+d} MB above the {r['before_mb']} MB "
                  f"before it; {r['mem_how']}); {traced}")
        if "probe" in args.parts and args.knn_slice:
            r = child("slice", argv, env)
            print(f"\n2. kNN probe, first fold, {r['queries']:,} of its {r['n_test']:,} test cells against its "
                  f"{r['n_train']:,} training cells ({r['n_cells']:,} typed cells, layer {r['layer']}, {args.dim} "
                  f"dims); load average {r['load']:.1f} at the end")
            print(f"   read the layer {r['read_s']:.1f} s; fit (scaler, normalised rows, prefilter copy) "
                  f"{r['fit_s']:.1f} s; {r['queries']:,} queries {r['search_s']:.1f} s; peak RSS {r['mem']['peak_mb']} MB "
                  f"({r['mem']['rise_mb']:+d} MB)")
            print(f"   the whole kNN probe ({r['n_folds']} folds, every cell a query once), projected: "
                  f"{r['projected_s']:,.0f} s ({r['projected_s'] / 3600:.1f} h)")
        elif "probe" in args.parts:
            r = child("probe", argv, env)
            c = r["config"]
            info = r["info"]
            print(f"\n2. cell probe: {info['n_cells']:,} typed cells ({info['n_untyped']} untyped left out) x "
                  f"{args.layers} layers x {args.dim} dims x {args.probe_variants} variant(s), {args.images} images, "
                  f"{info['folds']}; load average {r['load']:.1f} at the end")
            print(f"   method {c['method']}, fractions {c['fractions']}, n_boot {c['n_boot']}, l2 grid {c['l2_grid']}: "
                  f"{r['fits']['predictions']} layer probes, {r['fits']['curve']} curve points, "
                  f"{r['fits']['shifts']} invariance shifts")
            for name, what in (("probe", "run_cell_probes"), ("score", "score_cell_probes")):
                p, t = r[name], r.get(name + "_traced")
                traced = (f"tracemalloc peak {t['tracemalloc_mb']:.0f} MB (a traced rerun, {t['seconds']:.1f} s)"
                          if t else "tracemalloc: not run (--no-trace)")
                print(f"   {what:<18} {p['seconds']:8.1f} s wall   peak RSS {p['mem']['peak_mb']} MB "
                      f"({p['mem']['rise_mb']:+d} MB; {p['mem']['how']}); {traced}")
            if r.get("torch_libraries_mb") is not None:
                print(f"   (torch, imported before the calls for the kNN's prefilter: {r['torch_libraries_mb']} MB "
                      "resident, libraries and all, in every peak below)")
            for m, p in r.get("methods", {}).items():
                print(f"     {m:<16} {p['seconds']:8.1f} s wall   peak RSS {p['mem']['peak_mb']} MB "
                      f"({p['mem']['rise_mb']:+d} MB)")
            if "floor" in r:
                fl = r["floor"]
                speeds = "; ".join(f"{p} {fl[p]['gflops']:.0f} GFLOP/s, floor {fl[p]['seconds']:.1f} s"
                                   for p in ("float32", "bfloat16") if p in fl)
                print(f"   kNN products: {fl['flop']:.3g} FLOP (the probe's threads): {speeds}; "
                      f"the prefilter runs in {fl['precision']} here")
            print("   balanced accuracy [95% interval]: " + "; ".join(
                f"{x['layer']} {x['method']} {interval(x['ba'])}" for x in r["rows"]))
            if r["curve"]:
                print("   label efficiency: " + "; ".join(
                    f"{x['fraction']:g} ({x['n_train']} cells) {x['ba']['value']:.3f}" for x in r["curve"]))
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
