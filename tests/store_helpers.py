"""Helpers shared by the distributed and object-storage tests: a dataset on disk, store equality."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def conic_folder(root: Path, n_tiles: int, seed: int) -> Path:
    """``root/conic``: ``n_tiles`` synthetic 64x64 tiles with labels, in the CoNIC layout."""
    from embedcache.datasets.synthetic import make_tiles

    images, labels, _ = make_tiles(n_tiles, seed=seed, size=64)
    folder = root / "conic"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    return folder


def assert_same_store(a, b):
    """Both complete, the same arrays holding the same bytes, the same configuration."""
    assert a.complete and b.complete
    assert a.arrays() == b.arrays() and a.config == b.config
    for path in a.arrays():
        assert np.array_equal(a.group[path][:], b.group[path][:]), path
