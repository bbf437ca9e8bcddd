"""What every dataset reader provides: tiles of one size, labels, provenance.

A :class:`TileDataset` is a sequence of equally sized RGB tiles, optionally
with an instance map and a type map per tile. Readers differ only in where
the pixels come from (``.npy`` stacks, image files cut into tiles, slides).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.errors import DataError

PANNUKE_CLASSES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}
CONIC_CLASSES = {1: "neutrophil", 2: "epithelial", 3: "lymphocyte", 4: "plasma", 5: "eosinophil", 6: "connective"}


@dataclass(frozen=True)
class TileIndex:
    """Where each tile comes from.

    Attributes
    ----------
    source : (N,) ndarray of int
        Index of the source image (into ``source_names``) of every tile.
    offset : (N, 2) ndarray of int
        Pixel (row, col) of the tile's top-left corner in its source image.
    valid : (N, 2) ndarray of int
        Height and width of the part of the tile covered by the source image;
        the rest is padding (see the reader's documentation).
    source_names : list of str
        One name per source image (file stem, or the stack's row number).
    """

    source: np.ndarray
    offset: np.ndarray
    valid: np.ndarray
    source_names: list[str]

    @classmethod
    def one_per_source(cls, n: int, tile_shape: tuple[int, int], names: Sequence[str] | None = None) -> "TileIndex":
        return cls(
            source=np.arange(n, dtype=np.int64),
            offset=np.zeros((n, 2), dtype=np.int64),
            valid=np.tile(np.asarray(tile_shape, dtype=np.int64), (n, 1)),
            source_names=list(names) if names is not None else [str(i) for i in range(n)],
        )


class TileDataset:
    """Base class of the readers.

    Subclasses set ``layout``, ``path``, ``tile_shape``, ``tiles``
    (:class:`TileIndex`), ``has_labels``, ``class_names``, ``tissue`` and
    ``folds``, and implement :meth:`_read_images`, :meth:`_read_labels` and
    :meth:`_source_files`. What a published release knows about itself
    travels in the remaining attributes, recorded in a store by
    :meth:`describe`, so later stages read it as data.

    Attributes
    ----------
    tissue : list of str, or None
        Per tile: the tissue (PanNuke) or cohort (CoNIC, Lizard) of its
        image; a probe label.
    folds : (N,) ndarray of int, or None
        Per tile: the fold code (0-based) of its image.
    fold_names : list of str, or None
        Name of each fold code (``fold1``, ``train``, ``test``...).
    splits : dict of str to list of int
        Named splits of the release (``train``, ``val``, ``test``): the
        fold codes each holds; ``official`` (the release's held-out split
        for validation) is ``val`` when there is one, else ``test``.
    mpp : float or None
        Microns per pixel of the images, as the release documents it.
    protocol : str or None
        The scoring protocol its authors use (``pannuke``, ``conic``,
        ``hovernet``).
    stain : str
        ``H&E`` unless the release says otherwise (CytoDArk0 is Nissl).
    stack : bool
        Every tile is a whole image (``.npy`` stacks of patches).
    """

    layout: str = ""
    path: Path
    tile_shape: tuple[int, int]
    tiles: TileIndex
    has_labels: bool = False
    class_names: dict[int, str] | None = None
    tissue: list[str] | None = None
    folds: np.ndarray | None = None
    fold_names: list[str] | None = None
    splits: dict[str, list[int]] = {}
    mpp: float | None = None
    protocol: str | None = None
    stain: str = "H&E"
    stack: bool = False

    @property
    def n_tiles(self) -> int:
        return int(self.tiles.source.shape[0])

    def __len__(self) -> int:
        return self.n_tiles

    def images(self, idx) -> np.ndarray:
        """RGB tiles, ``(n, H, W, 3) ndarray of uint8``, for indices or a slice."""
        return self._read_images(_as_indices(idx, self.n_tiles))

    def labels(self, idx) -> np.ndarray:
        """Instance and type maps, ``(n, H, W, 2) ndarray of int32``.

        Channel 0 holds instance ids (0 = background, unique within a tile),
        channel 1 type ids (0 = background or unknown type).
        """
        if not self.has_labels:
            raise DataError(f"{self.path}: this dataset has no labels")
        return self._read_labels(_as_indices(idx, self.n_tiles))

    def fingerprint(self) -> str:
        """A content hash of the source files and of how they are tiled.

        Two datasets with the same fingerprint give the same tiles; a store
        refuses to be extended from a dataset with another fingerprint.
        """
        h = hashlib.sha256()
        h.update(f"{self.layout}:{self.tile_shape}:{self.n_tiles}".encode())
        hashes = {}
        for f in self._source_files():
            h.update(f.name.encode())
            one = hashlib.sha256()  # each file's own hash, in the same pass (source_fingerprints)
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
                    one.update(block)
            hashes[Path(f)] = one.hexdigest()
        self._file_hashes = hashes
        return h.hexdigest()

    def source_fingerprints(self) -> list[str] | None:
        """A content hash of each source image's files (image and label maps), in source order; None for
        layouts whose sources share files (stacks). Read in the pass of :meth:`fingerprint` (called first when
        needed), so a store can tell which units a changed file touches."""
        files = self._files_of_source()
        if files is None:
            return None
        if getattr(self, "_file_hashes", None) is None:
            self.fingerprint()
        out = []
        for group in files:
            h = hashlib.sha256()
            for f in group:
                h.update(f"{Path(f).name}:{self._file_hashes[Path(f)]}".encode())
            out.append(h.hexdigest())
        return out

    def _files_of_source(self) -> list[list[Path]] | None:
        """Each source's files, for :meth:`source_fingerprints`; None when sources share files."""
        return None

    def describe(self) -> dict:
        """Plain-data description recorded in a store's attributes."""
        return {
            "layout": self.layout,
            "path": str(self.path),
            "n_tiles": self.n_tiles,
            "tile_shape": list(self.tile_shape),
            "n_sources": len(self.tiles.source_names),
            "has_labels": self.has_labels,
            "class_names": {str(k): v for k, v in (self.class_names or {}).items()},
            **({"fold_names": list(self.fold_names)} if self.fold_names else {}),
            **({"splits": {k: [int(f) for f in v] for k, v in self.splits.items()}} if self.splits else {}),
            **({"mpp": float(self.mpp)} if self.mpp else {}),
            **({"protocol": self.protocol} if self.protocol else {}),
            **({"stain": self.stain} if self.stain != "H&E" else {}),
            "stack": bool(self.stack),
        }

    # -- for subclasses --------------------------------------------------
    def _read_images(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_labels(self, idx: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _source_files(self) -> list[Path]:  # pragma: no cover - abstract
        raise NotImplementedError


def _as_indices(idx, n: int) -> np.ndarray:
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    arr = np.atleast_1d(np.asarray(idx, dtype=np.int64))
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise IndexError(f"tile index out of range for {n} tiles")
    return np.where(arr < 0, arr + n, arr)


def to_uint8_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """Validate RGB pixels and return them as uint8.

    Accepts uint8, or integer/float arrays holding whole numbers in 0..255
    (PanNuke ships float64); a fully opaque alpha channel is dropped.

    Parameters
    ----------
    array : (..., H, W, C) ndarray
    where : str
        File and index named in the error message.
    """
    if array.ndim < 3:
        raise DataError(f"{where}: expected an RGB image (H, W, 3), got shape {array.shape}")
    if array.shape[-1] == 4:
        if array[..., 3].min() < 255 and array.dtype == np.uint8:
            raise DataError(f"{where}: image has a transparent alpha channel; save it as RGB")
        array = array[..., :3]
    if array.shape[-1] != 3:
        raise DataError(f"{where}: expected 3 colour channels (RGB), got {array.shape[-1]} (shape {array.shape})")
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iuf":
        raise DataError(f"{where}: pixels must be numbers, got dtype {array.dtype}")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: pixel values must lie in 0..255, found {lo:g}..{hi:g}")
    if array.dtype.kind == "f" and hi <= 1.0 and hi > 0:
        raise DataError(f"{where}: pixels look scaled to 0..1; embedcache expects 0..255")
    return np.rint(array).astype(np.uint8)


def scattered_ids(inst: np.ndarray, spread: float = 3.0) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """Instance ids that mark pieces far apart: one id reused for several nuclei.

    An id whose connected pieces (8-connectivity) have centroids more than
    ``spread`` times the equivalent diameter of its largest piece apart is
    not one nucleus cut by a stray pixel line but several nuclei: what an
    8-bit map of more than 255 nuclei looks like once its ids wrapped.

    Parameters
    ----------
    inst : (H, W) ndarray of int
        Instance ids (0 = background).

    Returns
    -------
    list of (id, (row, col), (row, col))
        Each scattered id with the centroids of its two pieces farthest apart.

    >>> m = np.zeros((40, 40), int); m[2:6, 2:6] = 7; m[30:34, 30:34] = 7; m[10:14, 2:6] = 3
    >>> scattered_ids(m)
    [(7, (3, 3), (31, 31))]
    """
    from skimage.measure import label, regionprops

    pieces = label(inst, background=0, connectivity=2)
    by_id: dict[int, list] = {}
    for region in regionprops(pieces, intensity_image=inst):
        by_id.setdefault(int(region.intensity_max), []).append(region)
    out = []
    for k, regions in sorted(by_id.items()):
        if len(regions) < 2:
            continue
        size = max(r.equivalent_diameter_area for r in regions)
        c = np.array([r.centroid for r in regions])
        d = np.linalg.norm(c[:, None] - c[None], axis=-1)
        i, j = np.unravel_index(np.argmax(d), d.shape)
        if d[i, j] > spread * max(size, 1.0):
            out.append((k, tuple(int(v) for v in np.floor(c[i])), tuple(int(v) for v in np.floor(c[j]))))
    return out


def stack_name(row: int) -> str:
    """The name of a stack's tile (PanNuke, CoNIC): the one name every command gives it.

    Evaluation tables, prediction folders, cell tables and overlays all call
    row 3 of a stack ``tile00003``; a folder of label maps named by plain row
    number (``3_inst.png``) is still paired with it.

    >>> stack_name(3)
    'tile00003'
    """
    return f"tile{int(row):05d}"


def stack_row(name: str) -> int | None:
    """The row a stack tile's name (``tile00003``, or a plain ``3``) stands for; None for any other name.

    >>> stack_row("tile00003"), stack_row("3"), stack_row("image02")
    (3, 3, None)
    """
    digits = name[4:] if name.startswith("tile") else name
    return int(digits) if digits.isdigit() else None


def check_label_map(array: np.ndarray, where: str) -> np.ndarray:
    """Validate an integer label map (instance or type ids) and return int32."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.rint(array)):
            raise DataError(f"{where}: labels must be whole numbers")
    elif array.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {array.min()}")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise DataError(f"{where}: label ids exceed int32")
    return array.astype(np.int32, copy=False)


def read_table(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a release's CSV table (header required), each a dict of stripped strings.

    Raises
    ------
    DataError
        Unreadable, or without one of ``columns``.
    """
    import csv

    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    header = set(rows[0]) if rows else set()
    if not set(columns) <= header:
        raise DataError(f"{path}: needs columns {', '.join(columns)} (got {', '.join(sorted(header)) or 'no rows'})")
    return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in rows]


def image_stem(name: str) -> str:
    """A table's image name without an image suffix, if it has one (``a.png`` -> ``a``; ``a.2`` stays)."""
    for suffix in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
