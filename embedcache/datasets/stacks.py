"""Readers for tile stacks stored as ``.npy``: the PanNuke and CoNIC layouts.

Arrays are memory-mapped, so opening a dataset reads no pixels.

PanNuke
    A folder with ``images.npy`` (N, 256, 256, 3), ``masks.npy``
    (N, 256, 256, 6) and ``types.npy`` (N,) tissue names, or a folder whose
    sub-folders hold such triples (the three folds; fold order by path).
    Mask channels 0..4 hold instance ids of neoplastic, inflammatory,
    connective, dead and epithelial nuclei; channel 5 is background. They
    become one instance map (ids made unique across channels) and a type map
    with ids 1..5.
CoNIC
    A folder with ``images.npy`` (N, H, W, 3) uint8 and ``labels.npy``
    (N, H, W, 2) holding [instance id, class 0..6]. Class names are the
    CoNIC ones when ``counts.csv`` names them, otherwise unknown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.base import (
    CONIC_CLASSES,
    PANNUKE_CLASSES,
    TileDataset,
    TileIndex,
    check_label_map,
    to_uint8_rgb,
)
from embedcache.errors import DataError


def _load(path: Path, required: bool = True) -> np.ndarray | None:
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


def pannuke_fold_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a PanNuke ``masks.npy``."""
    if (root / "masks.npy").exists():
        return [root]
    return sorted({p.parent for p in root.rglob("masks.npy")}, key=str)


def pannuke_masks_to_labels(masks: np.ndarray) -> np.ndarray:
    """PanNuke 6-channel masks of one tile to an instance map and a type map.

    Parameters
    ----------
    masks : (H, W, 6) ndarray
        Channels 0..4: instance ids per class; channel 5: background.

    Returns
    -------
    (H, W, 2) ndarray of int32
        Instance ids 1..K, unique across the five class channels, and type
        ids 1..5 (0 = background). A pixel claimed by two channels goes to
        the later one.
    """
    cls = np.asarray(masks)[..., :5]
    present = cls > 0
    claimed = present.any(-1)
    channel = 4 - np.argmax(present[..., ::-1], axis=-1)
    type_map = np.where(claimed, channel + 1, 0)
    ids = np.take_along_axis(cls, channel[..., None], axis=-1)[..., 0].astype(np.int64)
    key = np.where(claimed, type_map * (int(ids.max(initial=0)) + 1) + ids, 0)
    # Rank of each key among the keys present, background (0) counted present even in a tile without it.
    flat = key.ravel()
    top = int(flat.max(initial=0))
    if top < 4 * flat.size:  # the usual case: a table of the present keys (no sort; 10x quicker)
        present_keys = np.bincount(flat, minlength=top + 1) > 0
        present_keys[0] = True
        rank = np.cumsum(present_keys) - 1
        inst = rank[key]
    else:
        _, inverse = np.unique(np.concatenate([[0], flat]), return_inverse=True)
        inst = inverse[1:].reshape(key.shape)
    return np.stack([inst, type_map], axis=-1).astype(np.int32)


class PanNukeDataset(TileDataset):
    layout = "pannuke"

    def __init__(self, path, require_images: bool = True):
        self.path = Path(path)
        dirs = pannuke_fold_dirs(self.path)
        if not dirs:
            raise DataError(f"{self.path}: no masks.npy found (PanNuke layout: images.npy, masks.npy, types.npy per fold)")
        self._images, self._masks, tissue, folds = [], [], [], []
        for k, d in enumerate(dirs):
            images = _load(d / "images.npy", required=require_images)
            masks = _load(d / "masks.npy")
            types = _load(d / "types.npy", required=False)
            if masks.ndim != 4 or masks.shape[-1] != 6:
                raise DataError(f"{d / 'masks.npy'}: expected shape (N, H, W, 6), got {masks.shape}")
            if images is not None:
                _check_stack(images, d / "images.npy")
                if images.shape[:3] != masks.shape[:3]:
                    raise DataError(
                        f"{d}: images.npy {images.shape[:3]} and masks.npy {masks.shape[:3]} disagree in (N, H, W)")
            if types is not None and len(types) != len(masks):
                raise DataError(f"{d}: types.npy has {len(types)} entries for {len(masks)} tiles")
            self._images.append(images)
            self._masks.append(masks)
            tissue.extend(str(t) for t in (types if types is not None else ["unknown"] * len(masks)))
            folds.append(np.full(len(masks), k, dtype=np.int64))
        shapes = {m.shape[1:3] for m in self._masks}
        if len(shapes) != 1:
            raise DataError(f"{self.path}: folds have different tile sizes {sorted(shapes)}")
        self.tile_shape = tuple(int(s) for s in shapes.pop())
        self._starts = np.cumsum([0] + [len(m) for m in self._masks])
        n = int(self._starts[-1])
        if n == 0:
            raise DataError(f"{self.path}: the dataset has no tiles")
        self.tiles = TileIndex.one_per_source(n, self.tile_shape)
        self.tissue = tissue
        self.folds = np.concatenate(folds)
        self.fold_names = [str(d.relative_to(self.path)) if d != self.path else "." for d in dirs]
        self.has_labels = True
        self.class_names = dict(PANNUKE_CLASSES)
        self._dirs = dirs

    def _locate(self, idx: np.ndarray):
        fold = np.searchsorted(self._starts, idx, side="right") - 1
        return fold, idx - self._starts[fold]

    def _read_images(self, idx):
        if self._images[0] is None:
            raise DataError(f"{self.path}: images.npy not found")
        fold, local = self._locate(idx)
        out = np.empty((len(idx), *self.tile_shape, 3), dtype=np.uint8)
        for j, (f, i) in enumerate(zip(fold, local)):
            out[j] = to_uint8_rgb(np.asarray(self._images[f][i]), f"{self._dirs[f] / 'images.npy'} [{i}]")
        return out

    def _read_labels(self, idx):
        fold, local = self._locate(idx)
        out = np.empty((len(idx), *self.tile_shape, 2), dtype=np.int32)
        for j, (f, i) in enumerate(zip(fold, local)):
            m = np.asarray(self._masks[f][i])
            check_label_map(m, f"{self._dirs[f] / 'masks.npy'} [{i}]")
            out[j] = pannuke_masks_to_labels(m)
        return out

    def _source_files(self):
        files = []
        for d in self._dirs:
            files += [d / n for n in ("images.npy", "masks.npy", "types.npy") if (d / n).exists()]
        return files


class ConicDataset(TileDataset):
    layout = "conic"

    def __init__(self, path, require_images: bool = True):
        self.path = Path(path)
        self._images = _load(self.path / "images.npy", required=require_images)
        self._labels = _load(self.path / "labels.npy", required=not require_images)
        if self._images is not None:
            _check_stack(self._images, self.path / "images.npy")
        if self._labels is not None:
            if self._labels.ndim != 4 or self._labels.shape[-1] != 2:
                raise DataError(f"{self.path / 'labels.npy'}: expected shape (N, H, W, 2) [instance, class], "
                                f"got {self._labels.shape}")
            if self._images is not None and self._images.shape[:3] != self._labels.shape[:3]:
                raise DataError(f"{self.path}: images.npy {self._images.shape[:3]} and labels.npy "
                                f"{self._labels.shape[:3]} disagree in (N, H, W)")
        ref = self._images if self._images is not None else self._labels
        if len(ref) == 0:
            raise DataError(f"{self.path}: the dataset has no tiles")
        self.tile_shape = tuple(int(s) for s in ref.shape[1:3])
        self.tiles = TileIndex.one_per_source(len(ref), self.tile_shape)
        self.has_labels = self._labels is not None
        self.class_names = _conic_class_names(self.path / "counts.csv")

    def _read_images(self, idx):
        if self._images is None:
            raise DataError(f"{self.path}: images.npy not found")
        out = np.empty((len(idx), *self.tile_shape, 3), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = to_uint8_rgb(np.asarray(self._images[i]), f"{self.path / 'images.npy'} [{i}]")
        return out

    def _read_labels(self, idx):
        out = np.asarray(self._labels[np.sort(idx)])[np.argsort(np.argsort(idx))]
        return check_label_map(out, f"{self.path / 'labels.npy'} [{idx.min()}..{idx.max()}]")

    def _source_files(self):
        return [self.path / n for n in ("images.npy", "labels.npy") if (self.path / n).exists()]


def _conic_class_names(counts_csv: Path) -> dict[int, str] | None:
    if not counts_csv.exists():
        return None
    header = counts_csv.read_text().splitlines()[0].lower().replace(" ", "").split(",")
    return dict(CONIC_CLASSES) if set(CONIC_CLASSES.values()) <= set(header) else None


def _check_stack(images: np.ndarray, where: Path):
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise DataError(f"{where}: expected images of shape (N, H, W, 3), got {images.shape}")
