"""Cells from the cache: a vector per nucleus, pooled from a store's tokens under each nucleus.

``nuclei`` (where nuclei come from: the store's labels, label maps or a
prediction, points), ``pool`` (the area-weighted segment sum over the token
grid) and ``build`` (:func:`build_cells`, the resumable run that writes a
cell store, :mod:`embedcache.store.cells`).
"""

from embedcache.cells.build import CellsResult, build_cells

__all__ = ["CellsResult", "build_cells"]
