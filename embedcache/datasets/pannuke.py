"""PanNuke as its three archives unzip, and the flat layout of one folder per fold.

The release (Gamper et al., 2020; https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke,
``fold_1.zip`` .. ``fold_3.zip``) unzips to::

    Fold 1/README.md
    Fold 1/images/fold1/images.npy   (2656, 256, 256, 3) float64, RGB, whole numbers 0..255
    Fold 1/images/fold1/types.npy    (2656,) str: tissue of each tile ("Breast", "Colon", ...)
    Fold 1/masks/fold1/masks.npy     (2656, 256, 256, 6) float64
    Fold 1/masks/README.md, Fold 1/masks/by-nc-sa.md
    Fold 2/...  Fold 3/...           (2523 and 2722 tiles)

Sources of each fact:

- the three paths of each fold, read with ``mmap_mode='r'``: pathml
  ``pathml/datasets/pannuke.py`` (``_process_downloaded_pannuke``);
- the archives' URLs (``fold_1.zip`` .. ``fold_3.zip``), masks channels
  0..4 neoplastic, inflammatory, connective/soft tissue, dead, epithelial and
  channel 5 background: torch_em
  ``torch_em/data/datasets/histopathology/pannuke.py`` (``_channels_to_instances``
  drops the last channel);
- the same channel order scored (channel 4 "non-neoplastic"), ``types.npy``
  beside ``masks.npy`` in the scoring layout, the 19 tissue names as
  ``types.npy`` holds them (``Adrenal_gland``, ``Bile-duct``, ``Breast``, ...,
  ``HeadNeck``, ``Uterus``), instance ids per channel (``remap_label`` of
  each): TissueImageAnalytics/PanNuke-metrics ``run.py``;
- images as float arrays (``astype(np.uint8)`` before saving a tile):
  TIO-IKIM/CellViT ``cell_segmentation/datasets/prepare_pannuke.py``;
- the tree with its README files: qiuyukong11/icip
  ``data/split_util/panNukescripts/readme.md`` (a copy of a PanNuke
  preprocessing README); the fold's README text (the files, the channels,
  "The ``masks/`` directory and it's contents are licensed under" CC
  BY-NC-SA 4.0) is stored in the public code index, its repository not named
  there; the licence also in vqdang/hover_net ``README.md``;
  40x: the PanNuke papers (Gamper et al. 2019, 2020).

Not stated in any source read: the microns per pixel. 0.25 um/px, the usual
40x resolution (eva records the same for CoNSeP's 40x), is recorded as the
images' microns per pixel. Fold 1's 2656 tiles are in torch_em's comment
(``img.shape -> (3, 2656, 256, 256)``; the preprocessing README above says
2,657, 2,524 and 2,723); float64 and the other folds' counts are not
confirmed by a source read (uint8 images read the same). Also read: the flat layout
``fold1/{images,masks,types}.npy`` (or one folder holding the three).

A fold's number comes from its folder names (``Fold 1``, ``fold1``,
``fold_1``), so folds are ``fold1..fold3`` whichever folders the user
points at; folders without a number are numbered in path order. The
release defines three folds for cross-validation and no validation split;
its official split here is the first rotation, ``train`` folds 1 and 2,
``test`` fold 3 (what ``--val auto`` and ``--val official`` hold out, as
the Mind-the-Gap study does; ``foldK`` picks any fold). Arrays are
memory-mapped: a tile is read when asked for, never a whole fold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache.datasets.base import PANNUKE_CLASSES, TileDataset, TileIndex, check_label_map, to_uint8_rgb
from embedcache.datasets.registry import Layout, register
from embedcache.datasets.stacks import check_stack, load_npy
from embedcache.errors import DataError

FOLD_NUMBER = re.compile(r"^fold[\s_-]*(\d+)$", re.IGNORECASE)
PANNUKE_MPP = 0.25  # 40x (Gamper et al. 2020)


@dataclass(frozen=True)
class PanNukeFold:
    """The files of one fold: ``images.npy`` and ``types.npy`` may be beside ``masks.npy`` or in the
    release's ``images/foldN`` twin of its ``masks/foldN`` folder."""

    number: int | None
    images: Path
    masks: Path
    types: Path


def fold_number(folder: Path, root: Path) -> int | None:
    """The fold number of the first folder from ``folder`` up to ``root`` named like ``Fold 1``/``fold1``."""
    for d in [folder, *folder.parents]:
        m = FOLD_NUMBER.match(d.name)
        if m:
            return int(m.group(1))
        if d == root:
            break
    return None


def pannuke_folds(root: Path) -> list[PanNukeFold]:
    """The folds under ``root`` (itself included), in fold-number order (path order for unnumbered ones).

    Raises
    ------
    DataError
        A numbered fold folder without ``masks.npy``, or a gap in the fold numbers.
    """
    root = Path(root)
    masks = [root / "masks.npy"] if (root / "masks.npy").exists() else sorted(root.rglob("masks.npy"), key=str)
    folds = []
    for m in masks:
        d = m.parent
        twin = d.parent.parent / "images" / d.name
        image_dir = twin if d.parent.name.lower() == "masks" and not (d / "images.npy").exists() else d
        types = image_dir / "types.npy" if (image_dir / "types.npy").exists() else d / "types.npy"
        folds.append(PanNukeFold(fold_number(d, root), image_dir / "images.npy", m, types))
    numbered = {f.number for f in folds if f.number is not None}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        m = FOLD_NUMBER.match(sub.name)
        if m and int(m.group(1)) not in numbered and folds:
            raise DataError(f"{sub}: a PanNuke fold folder without masks.npy (expected {sub.name}/masks/"
                            f"fold{int(m.group(1))}/masks.npy); unzip its archive again or move the folder away")
    if numbered and len(numbered) == len(folds):
        missing = sorted(set(range(min(numbered), max(numbered) + 1)) - numbered)
        if missing:
            raise DataError(f"{root}: PanNuke fold{missing[0]} is missing (found "
                            f"{', '.join(f'fold{n}' for n in sorted(numbered))}); unzip fold_{missing[0]}.zip "
                            "beside the others, or point at one fold's folder")
        return sorted(folds, key=lambda f: f.number)
    return [PanNukeFold(None, f.images, f.masks, f.types) for f in folds]


def pannuke_fold_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a PanNuke ``masks.npy``."""
    return [f.masks.parent for f in pannuke_folds(root)]


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


def read_blocks(arrays, fold: np.ndarray, local: np.ndarray, read_one) -> list:
    """``read_one(block_row, fold, local_index)`` for every requested tile, slicing each fold's
    memory-mapped array once over the span of its requested rows (extraction asks for runs of tiles)."""
    out = [None] * len(local)
    for f in np.unique(fold):
        where = np.flatnonzero(fold == f)
        rows = local[where]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 2 * len(rows):
            block, at = np.asarray(arrays[f][lo:hi]), rows - lo
        else:
            block, at = np.asarray(arrays[f][np.sort(rows)]), np.searchsorted(np.sort(rows), rows)
        for j, r, i in zip(where, at, rows):
            out[j] = read_one(block[r], f, int(i))
    return out


class PanNukeDataset(TileDataset):
    layout = "pannuke"
    stack = True
    protocol = "pannuke"
    mpp = PANNUKE_MPP

    def __init__(self, path, require_images: bool = True, **_):
        self.path = Path(path)
        folds = pannuke_folds(self.path)
        if not folds:
            raise DataError(f"{self.path}: no masks.npy found (PanNuke: Fold N/masks/foldN/masks.npy, or "
                            "images.npy, masks.npy, types.npy per fold)")
        self._images, self._masks, tissue, codes = [], [], [], []
        for k, fold in enumerate(folds):
            images = load_npy(fold.images, required=require_images)
            masks = load_npy(fold.masks)
            types = load_npy(fold.types, required=False)
            if masks.ndim != 4 or masks.shape[-1] != 6:
                raise DataError(f"{fold.masks}: expected shape (N, H, W, 6), got {masks.shape}")
            if images is not None:
                check_stack(images, fold.images)
                if images.shape[:3] != masks.shape[:3]:
                    raise DataError(f"{fold.images}: {images.shape[0]} tiles of {images.shape[1:3]} but "
                                    f"{fold.masks} holds {masks.shape[0]} of {masks.shape[1:3]}; the two "
                                    "disagree")
            if types is not None and len(types) != len(masks):
                raise DataError(f"{fold.types}: {len(types)} tissue names for {len(masks)} tiles in masks.npy")
            self._images.append(images)
            self._masks.append(masks)
            tissue.extend(str(t) for t in (types if types is not None else ["unknown"] * len(masks)))
            code = k if fold.number is None else fold.number - 1
            codes.append(np.full(len(masks), code, dtype=np.int64))
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
        self.folds = np.concatenate(codes)
        self.fold_names = [f"fold{k + 1}" for k in range(int(self.folds.max()) + 1)]
        present = set(np.unique(self.folds).tolist())
        self.splits = {"train": [0, 1], "test": [2]} if present == {0, 1, 2} else {}
        self.has_labels = True
        self.class_names = dict(PANNUKE_CLASSES)
        self._folds = folds

    def _locate(self, idx: np.ndarray):
        fold = np.searchsorted(self._starts, idx, side="right") - 1
        return fold, idx - self._starts[fold]

    def _read_images(self, idx):
        if any(a is None for a in self._images):
            missing = next(f.images for f, a in zip(self._folds, self._images) if a is None)
            raise DataError(f"{missing}: file not found")
        fold, local = self._locate(idx)
        tiles = read_blocks(self._images, fold, local,
                            lambda t, f, i: to_uint8_rgb(t, f"{self._folds[f].images} [{i}]"))
        return np.stack(tiles) if tiles else np.empty((0, *self.tile_shape, 3), np.uint8)

    def _read_labels(self, idx):
        fold, local = self._locate(idx)

        def one(m, f, i):
            check_label_map(m, f"{self._folds[f].masks} [{i}]")
            return pannuke_masks_to_labels(m)

        tiles = read_blocks(self._masks, fold, local, one)
        return np.stack(tiles) if tiles else np.empty((0, *self.tile_shape, 2), np.int32)

    def _source_files(self):
        return [p for f in self._folds for p in (f.images, f.masks, f.types) if p.exists()]


def find_pannuke(path: Path) -> Path | None:
    """``path`` when it holds PanNuke masks (itself or below); the fold's root when ``path`` is the release's
    ``images/foldN`` folder (whose masks sit in ``masks/foldN``)."""
    if not path.is_dir():
        return None
    if (path / "masks.npy").exists():
        return path
    if path.parent.name.lower() == "images" and (path.parent.parent / "masks" / path.name / "masks.npy").exists():
        return path.parent.parent
    if (path / "labels.npy").exists() or (path / "images.npy").exists():
        return None  # a CoNIC stack
    return path if next(path.rglob("masks.npy"), None) is not None else None


register(Layout(
    name="pannuke", title="PanNuke", find=find_pannuke, open=PanNukeDataset, stack=True,
    url="https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke (fold_1.zip, fold_2.zip, fold_3.zip)",
    licence="CC BY-NC-SA 4.0 (non-commercial)",
    point_at="the folder holding 'Fold 1', 'Fold 2', 'Fold 3' as unzipped (or one of them)",
    note="19 tissues, 5 classes, 256x256 tiles at 40x (0.25 um/px); folds fold1..fold3, official: test fold3",
))
