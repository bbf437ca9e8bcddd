"""Tiny stores and settings shared by the decoder tests (fit-decoder, predict, post-processing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CNN

from embedcache.config import ExtractConfig
from embedcache.extract import extract
from embedcache.config import DecoderConfig, FitConfig


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny tensors gain nothing from two, and lose much on a busy machine (a thread budget
    of 1, so extraction and training keep to it too)."""
    import os

    before, budget = torch.get_num_threads(), os.environ.get("EMBEDCACHE_THREADS")
    torch.set_num_threads(1)
    os.environ["EMBEDCACHE_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if budget is None:
        os.environ.pop("EMBEDCACHE_THREADS", None)
    else:
        os.environ["EMBEDCACHE_THREADS"] = budget


def write_conic(folder: Path, n: int = 6, size: int = 64, seed: int = 3, labels: bool = True) -> Path:
    """A CoNIC-layout folder of synthetic tiles."""
    from embedcache.datasets.synthetic import make_tiles

    images, lab, _ = make_tiles(n, seed=seed, size=size)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    if labels:
        np.save(folder / "labels.npy", lab)
    return folder


def make_store(data: Path, out: Path, encoder: str = TINY_CNN, variants: str = "flips", **kw) -> Path:
    """Extract a tiny store (random weights, CPU, no workers)."""
    cfg = ExtractConfig(encoder=encoder, weights="random", variants=variants, loader_workers=0, device="cpu",
                        unit_tiles=4, **kw)
    return extract(data, out, cfg, progress=False).path


def fit_config(**overrides) -> FitConfig:
    """Small, fast settings: 2 epochs, width 8, depth 1, the last two tiles held out."""
    base = dict(epochs=2, batch_size=2, loader_workers=0, preload="no", device="cpu", val="tiles:4,5",
                decoder=DecoderConfig(width=8, depth=1), warmup_epochs=0)
    return FitConfig(**{**base, **overrides})


def run_and_slide(tmp: Path, shape: tuple[int, int]) -> dict:
    """A decoder trained briefly on six CoNIC-like tiles (``tmp/run``) and one synthetic slide of ``shape`` px at
    0.5 um/px (``tmp/slides/a.tif``, two levels): what whole-slide tests predict with."""
    from embedcache.datasets.synthetic_slides import make_slide, write_slide_tiff
    from embedcache.train.loop import fit

    store = make_store(write_conic(tmp / "conic", n=6), tmp / "s.zarr", variants="none")
    fit(store, tmp / "run", fit_config(epochs=2, lr=3e-3), progress=False)
    slides = tmp / "slides"
    slides.mkdir()
    image = make_slide(shape, mpp=0.5, seed=1).image
    write_slide_tiff(slides / "a.tif", image, mpp=0.5, levels=2, tile=128)
    return {"tmp": tmp, "run": tmp / "run", "slides": slides, "image": image}


def disk_instances(shape, discs) -> np.ndarray:
    """An instance map of discs ``(row, col, radius)``, ids 1.. in order (later ones on top)."""
    from skimage.draw import disk

    inst = np.zeros(shape, dtype=np.int32)
    for k, (r, c, rad) in enumerate(discs, 1):
        rr, cc = disk((r, c), rad, shape=shape)
        inst[rr, cc] = k
    return inst


def oracle_maps(inst: np.ndarray, types: np.ndarray, n_types: int, distance: str = "cisca") -> np.ndarray:
    """The maps a perfect decoder would give: one-hot cls3, exact distances, one-hot types."""
    from embedcache.config import TargetConfig
    from embedcache.train.targets import tile_targets

    t = tile_targets(inst, types, TargetConfig(distance=distance))
    parts = [np.eye(3, dtype=np.float32)[t["cls3"]].transpose(2, 0, 1), t["dist"].astype(np.float32)]
    if n_types:
        parts.append(np.eye(n_types + 1, dtype=np.float32)[t["types"]].transpose(2, 0, 1))
    return np.concatenate(parts)


def best_iou(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """For each truth instance, its best IoU with a predicted instance."""
    out = []
    for k in np.unique(truth[truth > 0]):
        t = truth == k
        ids, counts = np.unique(pred[t], return_counts=True)
        best = 0.0
        for j, c in zip(ids, counts):
            if j:
                best = max(best, c / np.sum(t | (pred == j)))
        out.append(best)
    return out
