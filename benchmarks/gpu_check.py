"""One short GPU check: extraction against a bare forward, the write path, decoder steps cached vs live.

    python benchmarks/gpu_check.py [--tiles 256] [--work DIR]     # on a GPU, in under five minutes
    python benchmarks/gpu_check.py --dry-run                      # anywhere: tiny sizes on the CPU

For a ViT-S/16 and a ViT-L/16 sized encoder (random weights) at 224 and
256 px, in bf16 autocast:

1. tile-variants/s of a bare ``forward_intermediates`` loop (inputs already
   on the device, nothing kept) and of ``embedcache extract`` over the same
   tiles (read, variants, forward, cast, pinned copies, compress, checksum,
   write); their ratio, and the share of the extraction loop the device
   waits (1 - bare time / extraction time);
2. the write path alone: MB/s of raw float16 tokens written by
   ``StoreWriter.write_unit`` (arrays of a real unit, written again and again);
3. decoder training steps/s from the ViT-S store against the same steps with
   the encoder run live on every batch;
4. the read path: the same decoder steps/s streaming every batch from the
   store on disk against the same batches preloaded in RAM (same loader
   workers): the share of the I/O the loader hides.

Prints one line per figure and ratios; nothing is kept unless ``--work``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedcache import open_store
from embedcache.config import DIRECTIONS, DecoderConfig, ExtractConfig
from embedcache.datasets.synthetic import make_tiles
from embedcache.extract import Extraction, extract
from embedcache.extract.job import ExtractionJob
from embedcache.train.decoder import NucleiDecoder, NucleiLoss
from embedcache.train.stream import EpochBatches, TileStream, make_loader
from embedcache.train.targets import TargetCache

from bench_decoder import Epochs, timed_steps  # this script's folder

FULL = {"encoders": {"ViT-S/16": "timm:vit_small_patch16_224", "ViT-L/16": "timm:vit_large_patch16_224"},
        "sizes": (224, 256)}
DRY = {"encoders": {"ViT-S stand-in": "timm:test_vit", "ViT-L stand-in": "timm:test_vit"}, "sizes": (64, 96)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_stack(folder: Path, n: int, size: int) -> Path:
    if not folder.exists():
        images, labels, _ = make_tiles(n, seed=3, size=size)
        folder.mkdir(parents=True)
        np.save(folder / "images.npy", images)
        np.save(folder / "labels.npy", labels)
    return folder


def bare(ext: Extraction, tiles: np.ndarray, batch: int, repeats: int) -> float:
    """Median seconds of a bare forward over ``tiles`` and every variant, inputs on the device."""
    device = ext.device
    x = torch.from_numpy(tiles).to(device)
    inputs = [torch.stack([v.apply_torch(t, spatial=(0, 1)) for t in x]) for v in ext.variants]
    flat = torch.cat(inputs)
    prepared = [ext.fx.preprocess(flat[i:i + batch]) for i in range(0, len(flat), batch)]
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for r in range(repeats + 1):
            sync(device)
            t = time.perf_counter()
            for p in prepared:
                ext.fx.model.forward_intermediates(p, indices=ext.fx.indices, intermediates_only=True,
                                                   output_fmt="NCHW")
            sync(device)
            if r:  # the first is warm-up
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_path(job: ExtractionJob, out: Path, repeats: int) -> tuple[float, int]:
    """MB/s of raw float16 tokens through ``write_unit`` and the writer threads zarr uses."""
    import zarr

    writer = job.open_writer(out, overwrite=True)
    arrays = job.compute_unit(0)
    token_bytes = sum(a.nbytes for k, a in arrays.items() if k.startswith("tokens/"))
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        for u in range(job.n_units):
            writer.write_unit(u, arrays if u == 0 else _resized(arrays, job, u))
        if r:
            times.append(time.perf_counter() - t)
    per_unit = token_bytes * job.tiles_in(range(job.n_units)) / job.tiles_in([0])
    workers = zarr.config.get("threading.max_workers") or "default"
    return per_unit / statistics.median(times) / 1e6, workers


def _resized(arrays: dict, job: ExtractionJob, unit: int) -> dict:
    n = job.tiles_in([unit])
    return {k: v[:n] for k, v in arrays.items()}


class Step:
    """A decoder, its loss and AdamW on ``device``: one training step per call."""

    def __init__(self, store, device):
        torch.manual_seed(0)
        shapes = [store.layout(k).shape for k in store.layers]
        self.model = NucleiDecoder(shapes, store.tile_shape, 4, 5, DecoderConfig(width=32)).to(device)
        self.loss = NucleiLoss(DIRECTIONS["cisca"], 5).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.device = device

    @torch.enable_grad()
    def __call__(self, batch, tokens=None):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            total, _ = self.loss(self.model(tokens if tokens is not None else batch["tokens"], batch["image"]), batch)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()


def steps_per_second(step: Step, loader, steps: int, encoder=None) -> float:
    """Decoder steps/s (:func:`bench_decoder.timed_steps`); ``encoder``: tokens computed live in bf16 each step."""
    live = None
    if encoder is not None:
        def live(images):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=step.device.type == "cuda"):
                return [t.to(torch.float16).float() for t, _ in encoder(images)]
    return steps / timed_steps(step, loader, steps, encoder=live, device=step.device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--variants", default="flips")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--unit-tiles", type=int, default=64)
    ap.add_argument("--loader-workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks that the script runs")
    args = ap.parse_args()
    plan = DRY if args.dry_run else FULL
    if args.dry_run:
        args.tiles, args.batch_size, args.unit_tiles, args.loader_workers, args.repeats, args.steps = 4, 4, 2, 0, 1, 2
    device = "cpu" if args.dry_run else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device {name}; torch {torch.__version__}; {args.tiles} tiles x {args.variants}; batch {args.batch_size}; "
          f"unit {args.unit_tiles} tiles; {args.loader_workers} loader workers; dry run {args.dry_run}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    torch.set_grad_enabled(False)
    try:
        vits_store = None
        for label, encoder in plan["encoders"].items():
            for size in plan["sizes"]:
                data = write_stack(work / f"data-{size}", args.tiles, size)
                cfg = ExtractConfig(encoder=encoder, weights="random", variants=args.variants, device=device,
                                    batch_size=args.batch_size, unit_tiles=args.unit_tiles,
                                    loader_workers=args.loader_workers)
                job = ExtractionJob(data, cfg)
                tiles = job.dataset.images(slice(None))
                n = args.tiles * len(job.run.variants)
                t_bare = bare(job.run, tiles, args.batch_size, args.repeats)
                out = work / f"{label.replace('/', '')}-{size}.zarr".replace(" ", "-")
                loops = []
                for r in range(args.repeats):
                    res = extract(data, out, cfg, overwrite=True, progress=False)
                    loops.append(res.seconds)
                t_ext = statistics.median(loops)
                mb, workers = write_path(job, work / "write-path.zarr", args.repeats)
                per_tile = sum(int(np.prod(lay.shape)) for lay in job.run.layouts) * 2 / 1e6
                print(f"{label:<15} {size} px  bare {n / t_bare:8.1f} tile-variants/s  extract {n / t_ext:8.1f}  "
                      f"ratio {t_bare / t_ext:.3f}  device waits {max(0.0, 1 - t_bare / t_ext):.0%}  "
                      f"write path {mb:8.2f} MB/s ({per_tile:.2f} MB/tile-variant; zarr threads {workers})")
                if size == plan["sizes"][-1] and vits_store is None:
                    vits_store = (out, cfg)
                del job
        store_path, cfg = vits_store
        store = open_store(store_path)
        tiles = np.arange(store.n_tiles)
        targets = TargetCache(store, tiles)
        batches = EpochBatches(tiles, range(len(store.variants)), 8, seed=0, unit_tiles=args.unit_tiles)
        dev = torch.device(device)
        cached = make_loader(TileStream(store, tiles, targets), batches, workers=args.loader_workers)
        live = make_loader(TileStream(store, tiles, targets, with_tokens=False), batches, workers=args.loader_workers)
        ext = Extraction(ExtractConfig(**{**cfg.to_dict(), "variants": "none", "loader_workers": 0}), store.tile_shape)
        s_cached = steps_per_second(Step(store, dev), cached, args.steps)
        s_live = steps_per_second(Step(store, dev), live, args.steps, encoder=ext.fx)
        print(f"decoder steps/s (batch 8, {store.encoder.name} {store.tile_shape[0]} px): cached {s_cached:.1f}  "
              f"live {s_live:.1f}  cached/live {s_cached / s_live:.2f}")
        disk = make_loader(TileStream(store, tiles, targets), Epochs(batches), workers=args.loader_workers)
        ram = make_loader(TileStream(store, tiles, targets, preload=True), Epochs(batches),
                          workers=args.loader_workers)
        step = Step(store, dev)
        s_disk, s_ram = [], []
        for _ in range(args.repeats):  # alternating, on one decoder: the arms see the same device state
            s_ram.append(steps_per_second(step, ram, args.steps))
            s_disk.append(steps_per_second(step, disk, args.steps))
        paired = statistics.median(d / r for d, r in zip(s_disk, s_ram))
        print(f"read path (decoder steps/s, batch 8): from disk {statistics.median(s_disk):.1f}  from RAM "
              f"{statistics.median(s_ram):.1f}  disk/RAM {paired:.2f} (median of {args.repeats} paired repeats)")
        print(f"tokens stored as {store.config.dtype}, codec {cfg.codec}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
