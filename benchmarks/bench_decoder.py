"""Training from the cache: I/O hidden, cache payoff against a live encoder, post-processing speed.

    python benchmarks/bench_decoder.py [--tiles 32] [--steps 12] [--repeats 3] [--work DIR] [--only io,payoff,post]

1. I/O hidden. Decoder training steps/s streaming every batch from the store
   on disk (DataLoader worker decompressing chunks while the step runs)
   against the same steps with the same features preloaded in RAM.
   Efficientnet-lite0 store (4 layers, d4 variants), batch 8, 256-px tiles.
2. Cache payoff. One training epoch from a store of ``vit_small_patch16_224``
   features against the same epoch (same tiles, variants, batches, decoder)
   with the frozen encoder run live on every step. Then the FLOPs of one
   encoder forward (ViT-S/16 and ViT-L/16 at 256 px) and of one decoder step,
   counted by ``torch.utils.flop_counter``, scale the ratio to ViT-L: the
   live arm's encoder time grows with the encoder's FLOPs, the cached arm's
   time does not change.
3. Post-processing tiles/s on 256x256 tiles (maps of a perfect decoder,
   blurred to look like predictions; 4 distance maps and 5 types).

Arms alternate within each repeat; medians are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from embedcache import open_store
from embedcache.config import DIRECTIONS, DecoderConfig, ExtractConfig, TargetConfig
from embedcache.datasets.synthetic import make_tiles, write_demo_data
from embedcache.extract import Extraction, extract
from embedcache.postprocess import instances_from_maps
from embedcache.train.decoder import NucleiDecoder, NucleiLoss
from embedcache.train.stream import EpochBatches, TileStream, make_loader, to_device
from embedcache.train.targets import TargetCache, tile_targets

VITS = "timm:vit_small_patch16_224"


def build_store(work: Path, encoder: str, tiles: int, variants: str) -> Path:
    data = work / "data"
    if not data.exists():
        write_demo_data(data, n_tiles=tiles, seed=2, folds=1)
    out = work / f"{encoder.replace(':', '_')}-{variants}.zarr"
    weights = None if encoder == "efficientnet_lite0" else "random"
    cfg = ExtractConfig(encoder=encoder, weights=weights, variants=variants, loader_workers=0, device="cpu")
    return extract(data, out, cfg, progress=False).path


class Step:
    """A decoder, its loss and AdamW: one training step per call."""

    def __init__(self, store, width: int = 32):
        torch.manual_seed(0)
        shapes = [store.layout(k).shape for k in store.layers]
        self.model = NucleiDecoder(shapes, store.tile_shape, 4, 5, DecoderConfig(width=width))
        self.loss = NucleiLoss(DIRECTIONS["cisca"], 5)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    @torch.enable_grad()  # extraction switches gradients off in this process
    def __call__(self, batch, tokens=None):
        total, _ = self.loss(self.model(tokens if tokens is not None else batch["tokens"], batch["image"]), batch)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()


class Epochs:
    """Batches of many epochs in a row: the loader keeps prefetching across epoch ends.

    A real epoch is hundreds of steps; the benchmark's 32 tiles make 4, and a
    loader restarted every 4 steps would measure its start-up, not streaming.
    """

    def __init__(self, batches: EpochBatches, epochs: int = 1000):
        self.batches, self.epochs = batches, epochs

    def __iter__(self):
        for e in range(self.epochs):
            self.batches.set_epoch(e)
            yield from self.batches


def timed_steps(step, loader, n: int, warmup: int = 2, encoder=None, device="cpu") -> float:
    """Seconds for ``n`` steps after ``warmup`` steps (the loader cycles), the device waited on at both ends."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = iter(loader)
    t0 = None
    for k in range(warmup + n):
        if k == warmup:
            sync()
            t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = to_device(batch, device)  # as training does: compact types from the loader, converted here
        tokens = encoder(batch["image"]) if encoder is not None else None
        step(batch, tokens)
    sync()
    return time.perf_counter() - t0


def io_hidden(work: Path, args) -> dict:
    store = open_store(build_store(work, "efficientnet_lite0", args.tiles, "d4"))
    tiles = np.arange(store.n_tiles)
    targets = TargetCache(store, tiles)
    batches = EpochBatches(tiles, range(len(store.variants)), 8, seed=0, unit_tiles=16)
    disk = make_loader(TileStream(store, tiles, targets), Epochs(batches), workers=args.loader_workers)
    ram = make_loader(TileStream(store, tiles, targets, preload=True), Epochs(batches), workers=0)
    step = Step(store, args.width)
    times = {"disk": [], "ram": []}
    for _ in range(args.repeats):
        times["ram"].append(timed_steps(step, ram, args.steps))
        times["disk"].append(timed_steps(step, disk, args.steps))
    sps = {k: args.steps / statistics.median(v) for k, v in times.items()}
    paired = statistics.median(r / d for r, d in zip(times["ram"], times["disk"]))  # arms run back to back
    return {"disk_steps_s": sps["disk"], "ram_steps_s": sps["ram"], "ratio": sps["disk"] / sps["ram"],
            "paired": paired,
            "bytes_per_step": sum(np.prod(store.layout(k).shape) for k in store.layers) * 2 * 8}


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def encoder_flops(arch: str) -> int:
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        return flops(lambda: model.forward_intermediates(x, intermediates_only=True))


def cache_payoff(work: Path, args) -> dict:
    store = open_store(build_store(work, VITS, args.tiles, "flips"))
    tiles = np.arange(store.n_tiles)
    targets = TargetCache(store, tiles)
    batches = EpochBatches(tiles, range(len(store.variants)), 8, seed=0, unit_tiles=16)
    cached = make_loader(TileStream(store, tiles, targets), batches, workers=args.loader_workers)
    live = make_loader(TileStream(store, tiles, targets, with_tokens=False), batches, workers=args.loader_workers)
    known = {f.name for f in fields(ExtractConfig)}
    cfg = {k: v for k, v in store.extract_config.items() if k in known}
    ext = Extraction(ExtractConfig(**{**cfg, "variants": "none", "loader_workers": 0, "device": "cpu"}),
                     store.tile_shape)

    def encode(images):  # what extraction stores, computed on the fly
        return [tok.to(torch.float16).float() for tok, _ in ext.fx(images)]

    step = Step(store, args.width)
    n = len(batches)
    times = {"cached": [], "live": []}
    for _ in range(args.repeats):
        times["cached"].append(timed_steps(step, cached, n, warmup=1))
        times["live"].append(timed_steps(step, live, n, warmup=1, encoder=encode))
    med = {k: statistics.median(v) for k, v in times.items()}
    # FLOPs per tile: encoder forward, decoder forward + backward.
    b = to_device(next(iter(cached)), "cpu")
    one = {k: (v[:1] if k != "tokens" else [t[:1] for t in v]) for k, v in b.items()}
    dec = flops(lambda: Step(store, args.width)(one))
    vit_s, vit_l = encoder_flops("vit_small_patch16_224"), encoder_flops("vit_large_patch16_224")
    ratio = med["live"] / med["cached"]
    return {"tiles": len(tiles), "steps": n, "cached_s": med["cached"], "live_s": med["live"], "ratio": ratio,
            "flops_vits": vit_s, "flops_vitl": vit_l, "flops_decoder_step": dec,
            "ratio_vitl": 1 + (ratio - 1) * vit_l / vit_s}


def postprocess_speed(args) -> dict:
    from scipy import ndimage as ndi

    images, labels, _ = make_tiles(args.post_tiles, seed=4, size=256)
    maps = []
    for lab in labels:
        t = tile_targets(lab[..., 0], lab[..., 1], TargetConfig())
        m = np.concatenate([np.eye(3, dtype=np.float32)[t["cls3"]].transpose(2, 0, 1), t["dist"].astype(np.float32),
                            np.eye(6, dtype=np.float32)[t["types"]].transpose(2, 0, 1)])
        maps.append(ndi.gaussian_filter(m, (0, 1, 1)))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n = sum(int(instances_from_maps(m[:3], m[3:7], m[7:])["inst"].max()) for m in maps)
        times.append(time.perf_counter() - t0)
    truth = sum(int(lab[..., 0].max()) for lab in labels)
    return {"tiles_s": len(maps) / statistics.median(times), "nuclei": n, "truth_nuclei": truth}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=32, help="tiles in each benchmark store")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per arm (I/O benchmark)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--post-tiles", type=int, default=32)
    ap.add_argument("--width", type=int, default=32, help="decoder width (fit-decoder --width)")
    ap.add_argument("--work", type=Path, default=None, help="keep stores here (default: a temporary folder)")
    ap.add_argument("--only", default="io,payoff,post")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-decoder-"))
    work.mkdir(parents=True, exist_ok=True)
    which = set(args.only.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, decoder width {args.width}, batch 8, "
          f"256-px tiles, "
          f"{args.loader_workers} loader worker(s), repeats {args.repeats}")
    if "io" in which:
        r = io_hidden(work, args)
        print(f"I/O hidden   efficientnet_lite0 d4: streaming from disk {r['disk_steps_s']:.3f} steps/s, "
              f"preloaded in RAM {r['ram_steps_s']:.3f} steps/s -> ratio {r['ratio']:.2f}, "
              f"median of paired ratios {r['paired']:.2f} "
              f"({r['bytes_per_step'] / 1e6:.1f} MB of float16 tokens per step)")
    if "payoff" in which:
        r = cache_payoff(work, args)
        print(f"cache payoff vit_small_patch16_224, one epoch of {r['tiles']} tiles ({r['steps']} steps): "
              f"cached {r['cached_s']:.1f} s, live encoder {r['live_s']:.1f} s -> {r['ratio']:.2f}x")
        print(f"             FLOPs per 256-px tile: ViT-S/16 forward {r['flops_vits'] / 1e9:.1f} G, ViT-L/16 "
              f"forward {r['flops_vitl'] / 1e9:.1f} G ({r['flops_vitl'] / r['flops_vits']:.1f}x), decoder step "
              f"(fwd+bwd) {r['flops_decoder_step'] / 1e9:.1f} G; ViT-L by FLOPs: ~{r['ratio_vitl']:.0f}x")
    if "post" in which:
        r = postprocess_speed(args)
        print(f"post-process 256x256 tiles: {r['tiles_s']:.1f} tiles/s ({r['nuclei']} nuclei found, "
              f"{r['truth_nuclei']} drawn)")


if __name__ == "__main__":
    main()
