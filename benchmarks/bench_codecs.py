"""Codecs for the store's chunks, chosen by measurement: bytes against MB/s per core.

    python benchmarks/bench_codecs.py [--data ../shared/data/cpm15-dev] [--tiles 32] [--repeats 3]

Real H&E tokens: ``efficientnet_lite0`` with its ImageNet weights over
256-px tiles of the CPM-15 images, its four default layers, one chunk per
tile-variant as the store writes them. For each candidate codec (numcodecs,
single-threaded, as one writer core runs them), prints, for float16 tokens,
int8 tokens (with their float32 scales, :mod:`embedcache.store.quant`) and
the uint8 tiles:

  * bytes per tile-variant and the ratio to raw float32 tokens (raw pixels for tiles);
  * encode and decode MB/s per core, of the raw input bytes (medians of ``--repeats``);
  * crc32c MB/s (every chunk carries one).

Then the int8 error of a scale per channel (what the store uses) against a
scale per token position, as relative RMS error and the largest error in
units of the channel's range, per layer, and the cores a GPU making 3,000
ViT-L/16 tiles/s (1.6 MB of float16 tokens each, four layers) would need
for the default codec.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def candidates():
    from numcodecs import GZip, Zstd
    from numcodecs.blosc import BITSHUFFLE, NOSHUFFLE, SHUFFLE, Blosc

    out = {"none": None}
    names = {NOSHUFFLE: "noshuffle", SHUFFLE: "shuffle", BITSHUFFLE: "bitshuffle"}
    for cname, levels in (("lz4", (1, 5)), ("zstd", (1, 3, 5)), ("lz4hc", (3,)), ("blosclz", (5,))):
        for shuffle in (NOSHUFFLE, SHUFFLE, BITSHUFFLE):
            for level in levels:
                out[f"blosc-{cname}-{level}-{names[shuffle]}"] = Blosc(cname=cname, clevel=level, shuffle=shuffle)
    out["zstd-1"] = Zstd(level=1)
    out["zstd-3"] = Zstd(level=3)
    out["gzip-1"] = GZip(level=1)
    return out


def measure(codec, chunks: list[np.ndarray], repeats: int) -> tuple[int, float, float]:
    """Compressed bytes, encode and decode MB/s (of raw bytes) over ``chunks``."""
    raw = sum(c.nbytes for c in chunks)
    if codec is None:
        return raw, float("inf"), float("inf")
    enc, dec, size = [], [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        blobs = [codec.encode(c) for c in chunks]
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        for b in blobs:
            codec.decode(b)
        dec.append(time.perf_counter() - t)
        size = sum(len(b) for b in blobs)
    return size, raw / statistics.median(enc) / 1e6, raw / statistics.median(dec) / 1e6


def crc_rate(chunks: list[np.ndarray], repeats: int) -> float:
    from google_crc32c import value as crc  # what zarr's Crc32cCodec calls

    raw = sum(c.nbytes for c in chunks)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for c in chunks:
            crc(c.tobytes())
        times.append(time.perf_counter() - t)
    return raw / statistics.median(times) / 1e6


def tokens_of(data: Path, n: int):
    from embedcache.datasets import open_dataset
    from embedcache.encoders import get_spec
    from embedcache.encoders.features import FeatureExtractor, resolve_layers
    from embedcache.encoders.load import load_encoder

    ds = open_dataset(data, tile_size=256)
    pick = np.linspace(0, ds.n_tiles - 1, min(n, ds.n_tiles)).round().astype(int)
    tiles = ds.images(pick.tolist())
    spec = get_spec("efficientnet_lite0")
    enc = load_encoder(spec, None, device="cpu")
    fx = FeatureExtractor(enc, resolve_layers(enc.model, spec.layers, "default"))
    with torch.inference_mode():
        outs = [fx(torch.from_numpy(tiles[i:i + 8])) for i in range(0, len(tiles), 8)]
    layers = {name: torch.cat([o[k][0] for o in outs]).float() for k, name in enumerate(fx.names)}
    return tiles, layers


def quant_errors(x: torch.Tensor) -> dict:
    """Relative RMS and worst error (in units of each channel's range) for per-channel and per-token scales."""
    from embedcache.store.quant import dequantize, quantize

    q, s = quantize(x)
    per_channel = torch.from_numpy(dequantize(q.numpy(), s.numpy()))
    st = x.abs().amax(dim=1, keepdim=True) / 127  # one scale per token position, over channels
    per_token = torch.round(x / st.clamp_min(1e-12)).clamp(-127, 127) * st
    rng = x.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    out = {}
    for name, y in (("channel", per_channel), ("token", per_token)):
        err = y - x
        out[name] = (float(err.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()), float((err.abs() / rng).max()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cpm15-dev")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import numcodecs.blosc

    from embedcache.store.quant import quantize

    numcodecs.blosc.use_threads = False
    torch.set_num_threads(2)
    tiles, layers = tokens_of(args.data, args.tiles)
    n = tiles.shape[0]
    torch.set_num_threads(1)
    f16 = [np.ascontiguousarray(t.half().numpy()[i]) for t in layers.values() for i in range(n)]
    q8, scales = [], []
    for t in layers.values():
        q, s = quantize(t)
        q8 += [np.ascontiguousarray(q.numpy()[i]) for i in range(n)]
        scales += [np.ascontiguousarray(s.numpy()[i]) for i in range(n)]
    images = [np.ascontiguousarray(tiles[i]) for i in range(n)]
    raw32 = sum(c.nbytes for c in f16) * 2 / n
    print(f"{n} tiles of {args.data.name}, efficientnet_lite0 (ImageNet) layers "
          f"{', '.join(f'{k} {tuple(v.shape[1:])}' for k, v in layers.items())}; raw float32 {raw32:.0f} B per "
          "tile-variant; one core per codec")
    print(f"crc32c: {crc_rate(f16, args.repeats):.0f} MB/s\n")
    rows = []
    for name, codec in candidates().items():
        b16, e16, d16 = measure(codec, f16, args.repeats)
        b8, e8, d8 = measure(codec, q8, args.repeats)
        bs, _, _ = measure(codec, scales, 1)
        bi, ei, di = measure(codec, images, args.repeats)
        rows.append((name, b16 / n, e16, d16, (b8 + bs) / n, e8, d8, bi / n, ei, di))
    print(f"{'codec':<28} {'float16 B/tv':>12} {'/f32':>5} {'enc MB/s':>8} {'dec MB/s':>8} | "
          f"{'int8 B/tv':>9} {'/f32':>5} {'enc':>6} {'dec':>6} | {'tile B':>7} {'/raw':>5} {'enc':>6} {'dec':>6}")
    raw_img = images[0].nbytes
    for name, b16, e16, d16, b8, e8, d8, bi, ei, di in rows:
        print(f"{name:<28} {b16:>12.0f} {b16 / raw32:>5.3f} {e16:>8.0f} {d16:>8.0f} | {b8:>9.0f} {b8 / raw32:>5.3f} "
              f"{e8:>6.0f} {d8:>6.0f} | {bi:>7.0f} {bi / raw_img:>5.3f} {ei:>6.0f} {di:>6.0f}")
    print("\nint8 error (relative RMS; worst error / channel range):")
    for name, x in layers.items():
        e = quant_errors(x)
        c = x.shape[1]
        print(f"  {name:<10} scale per channel {e['channel'][0]:.2e} / {e['channel'][1]:.2e} "
              f"(+{4 / (x.shape[2] * x.shape[3]):.3f} B/value)   per token position {e['token'][0]:.2e} / "
              f"{e['token'][1]:.2e} (+{4 / c:.3f} B/value)")
    from embedcache.store.schema import DEFAULT_CODEC

    # What schema.compressors builds for float16 tokens, by its codec name.
    as_measured = {"lz4": "blosc-lz4-1-noshuffle", "zstd": "zstd-1"}
    for codec, row_name in as_measured.items():
        row = next(r for r in rows if r[0] == row_name)
        need = 3000 * 1.6 / row[2]  # MB/s of tokens a GPU at 3,000 ViT-L/16 tiles/s makes, over MB/s per core
        print(f"{'default ' if codec == DEFAULT_CODEC else ''}codec {codec} ({row_name}): {row[2]:.0f} MB/s per core "
              f"of float16 tokens, {row[1] / raw32:.3f} of float32's bytes; a GPU at 3,000 ViT-L/16 tiles/s "
              f"(4.8 GB/s) needs {need:.1f} cores for it")

if __name__ == "__main__":
    main()
