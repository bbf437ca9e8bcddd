"""Per-nucleus vectors from a token grid: each nucleus's tokens, weighted by the share of it each patch covers.

Pixel ``(r, c)`` of an ``(H, W)`` tile falls in patch ``(r * h // H, c * w // W)``
of an ``(h, w)`` token grid (the rule of the patch probe). A nucleus of
``a`` pixels, ``a_p`` of them in patch ``p``, gets ``sum_p (a_p / a) * token_p``:
a nucleus inside one patch gets that patch's token, one across a border the
area-weighted mean of the patches it covers. It is a segment sum over the
grid: one ``bincount`` for the weights, one matrix product per variant.

>>> inst = np.zeros((4, 4), int); inst[0, 0] = 1; inst[1:3, 1:3] = 2
>>> w = cell_weights(inst_to_cells(inst, [1, 2]), (2, 2), 2)
>>> w.tolist()
[[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def patch_of_pixel(shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Flat patch index of every pixel, ``(H, W) ndarray of int64``."""
    H, W = shape
    h, w = grid
    rows, cols = np.arange(H) * h // H, np.arange(W) * w // W
    return rows[:, None] * w + cols[None, :]


def inst_to_cells(inst: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """The row of each pixel's nucleus among ``ids`` (-1: background or a nucleus not listed), ``(H, W)``."""
    inst = np.asarray(inst)
    ids = np.asarray(ids, dtype=np.int64)
    top = int(max(inst.max(initial=0), ids.max(initial=0)))
    lookup = np.full(top + 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    out = lookup[inst]
    out[inst <= 0] = -1
    return out


def sparse_weights(cell_of_pixel: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero weights of each cell: ``(cell, patch, share)`` arrays, one entry per (cell, patch) it covers.

    ``share`` is the fraction of the cell's pixels in that patch; a cell's shares sum to 1.

    Parameters
    ----------
    cell_of_pixel : (H, W) ndarray of int
        Row of the cell each pixel belongs to, -1 for none (:func:`inst_to_cells`).
    grid : (h, w)
    """
    h, w = grid
    H, W = cell_of_pixel.shape
    where = np.flatnonzero(cell_of_pixel.ravel() >= 0)  # only nucleus pixels: a fraction of the tile
    cell = cell_of_pixel.ravel()[where].astype(np.int64)
    patch = (where // W) * h // H * w + (where % W) * w // W
    keys, counts = np.unique(cell * (h * w) + patch, return_counts=True)
    cells = keys // (h * w)
    area = np.bincount(cells, weights=counts)
    return cells, keys % (h * w), (counts / area[cells]).astype(np.float32)


def cell_weights(cell_of_pixel: np.ndarray, grid: tuple[int, int], n_cells: int) -> np.ndarray:
    """Share of each cell's pixels in each patch, ``(n_cells, h * w) ndarray of float32``; rows sum to 1.

    The dense form of :func:`sparse_weights`; a cell with no pixel gets a row of zeros.
    """
    h, w = grid
    out = np.zeros((n_cells, h * w), dtype=np.float32)
    cells, patches, shares = sparse_weights(cell_of_pixel, grid)
    out[cells, patches] = shares
    return out


def pool_cells(tokens: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted token sums, ``(n_cells, V, C) ndarray of float32``.

    Parameters
    ----------
    tokens : (V, C, h, w) ndarray of float
        The tile's tokens for each variant, in the identity's frame.
    weights : (n_cells, h * w) ndarray of float
        :func:`cell_weights`.
    """
    V, C = tokens.shape[:2]
    grid = np.asarray(tokens, dtype=np.float32).reshape(V, C, -1)  # (V, C, hw)
    return np.einsum("mp,vcp->mvc", weights, grid, optimize=True)
