"""Shared fixtures: tiny datasets made in code, and the path of the real data when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (it lives beside the repository in shared/data)")
    return path


def rgb(h, w, seed=0) -> np.ndarray:
    """A random RGB image of ``h x w`` pixels."""
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def inst(h, w) -> np.ndarray:
    """An instance map of ``h x w`` pixels with two nuclei, ids 7 and 700 (above 255: uint16)."""
    m = np.zeros((h, w), np.uint16)
    m[2:9, 3:11] = 7
    m[h - 6:h - 1, w - 7:w - 2] = 700
    return m


@pytest.fixture(scope="session")
def tiny_tiles():
    """6 synthetic 64x64 tiles with labels and tissue names."""
    from embedcache.datasets.synthetic import make_tiles

    return make_tiles(6, seed=3, size=64)


@pytest.fixture
def conic_dir(tmp_path, tiny_tiles):
    """A CoNIC-layout folder of 6 tiles of 64x64."""
    images, labels, _ = tiny_tiles
    d = tmp_path / "conic"
    d.mkdir()
    np.save(d / "images.npy", images)
    np.save(d / "labels.npy", labels)
    return d


@pytest.fixture
def pannuke_dir(tmp_path, tiny_tiles):
    """A PanNuke-layout folder with two folds, float64 arrays as in the real release."""
    from embedcache.datasets.synthetic import labels_to_pannuke_masks

    images, labels, tissue = tiny_tiles
    root = tmp_path / "pannuke"
    for f, sel in enumerate((slice(0, 4), slice(4, 6))):
        d = root / f"Fold {f + 1}"
        d.mkdir(parents=True)
        np.save(d / "images.npy", images[sel].astype(np.float64))
        np.save(d / "masks.npy", labels_to_pannuke_masks(labels[sel]).astype(np.float64))
        np.save(d / "types.npy", np.asarray(tissue[sel]))
    return root


# A tiny ViT from timm's test models: fast to build, real forward_intermediates.
TINY_VIT = "timm:test_vit"
TINY_CNN = "timm:test_efficientnet"
