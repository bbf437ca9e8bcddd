"""Tile stacks stored as ``.npy`` (the PanNuke and CoNIC releases): loading and checking the arrays.

Arrays are memory-mapped, so opening a dataset reads no pixels and reading
a tile reads only that tile (a PanNuke fold is 2 GB of float64 pixels).
The readers are :mod:`embedcache.datasets.pannuke` and
:mod:`embedcache.datasets.conic`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.errors import DataError


def load_npy(path: Path, required: bool = True) -> np.ndarray | None:
    if not path.exists():
        if required:
            raise DataError(f"{path}: file not found")
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        # Object arrays (e.g. tissue names saved as dtype=object) need pickle;
        # only types.npy is read that way, and only names are kept from it.
        if path.name != "types.npy":
            raise DataError(f"{path}: not a plain numeric .npy array (pickled objects are not read)")
        return np.load(path, allow_pickle=True)
    except Exception as exc:  # corrupted header, truncated file
        raise DataError(f"{path}: cannot read .npy file ({exc})") from None


def check_stack(images: np.ndarray, where: Path):
    """Refuse an images stack that is not (N, H, W, 3 or 4)."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise DataError(f"{where}: expected images of shape (N, H, W, 3), got {images.shape}")
