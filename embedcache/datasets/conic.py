"""CoNIC as its challenge release unzips: patches of 256x256 cut from the Lizard images.

The release (Graham et al., 2024, https://conic-challenge.grand-challenge.org/,
"CoNIC Challenge Train" folder) holds::

    images.npy       (4981, 256, 256, 3) uint8, RGB
    labels.npy       (4981, 256, 256, 2) uint16 [instance id 0..n per patch, class 0..6]
    counts.csv       header neutrophil,epithelial,lymphocyte,plasma,eosinophil,connective; one row per patch,
                     nuclei of each class in the central 224x224
    patch_info.csv   one column, header patch_info: the patch's Lizard image and number, "crag_1-0003"

Sources of each fact (TissueImageAnalytics/CoNIC unless named):

- dtypes, channel order, headers: ``extract_patches.py``, the publishers'
  script that made the release (images ``astype("uint8")``; instance and
  class maps ``astype("uint16")`` stacked as [instance, class];
  ``remap_label`` so ids run 0..n in each patch; counts over the central
  224x224 written with ``index=False`` under the six class names; patch
  names ``"%s-%04d" % (basename, idx)`` under the header ``patch_info``);
- shapes (4981 patches), class ids 0 background, 1 neutrophil .. 6
  connective, ``patch_info.csv`` as printed (``consep_1-0000``):
  ``notebooks/data.ipynb``; the counts.csv columns again: ``README.md``;
- the split: hover_net's ``conic`` branch ``generate_split.py`` (and the
  same cell in CoNIC ``notebooks/baseline.ipynb``): ``pd.read_csv`` then
  ``np.squeeze(info.to_numpy())``, the image as the part before ``-``, the
  cohort (consep, crag, dpath, glas, pannuke) as the part before ``_``;
  torch_em ``torch_em/data/datasets/histopathology/conic.py`` takes its
  ``FOLD_IDX = 0``;
- 20x, 0.5 um/px: the CoNIC baseline notebook ("the result for evaluation is
  at 0.5mpp").
- the licence, CC BY-NC-SA 4.0: the saahilw/nuclei-conic dataset card on the
  Hugging Face hub (a converted copy); the first rows of ``counts.csv`` and
  ``patch_info.csv`` as the MedOtter/CoNIC2022 viewer shows them
  (``consep_1-0000``: 0,117,0,0,0,0, as ``notebooks/data.ipynb`` prints).

Not checked: any file of the release beside these four (the challenge site
is not in the sources read).

Every patch records its Lizard image as its source image, so every split,
fold and resample of embedcache (``frac:F``, probe folds, bootstrap
intervals) keeps the patches of one image on one side; the cohort is the
tissue label. The challenge's split is over source images, stratified by
cohort: scikit-learn's ``StratifiedShuffleSplit(n_splits=10,
train_size=0.8, test_size=0.2, random_state=5)`` over the sorted image
names with the cohort codes as classes, its first split; folds ``train`` and
``val`` (``--val official``). Without ``patch_info.csv`` (a plain stack in
this layout) each patch is its own source and there is no official split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from embedcache.datasets.base import CONIC_CLASSES, TileDataset, TileIndex, check_label_map, to_uint8_rgb
from embedcache.datasets.registry import Layout, register
from embedcache.datasets.stacks import check_stack, load_npy
from embedcache.errors import DataError

CONIC_MPP = 0.5  # 20x (Graham et al. 2021, Lizard)
CHALLENGE_SEED = 5  # hover_net conic branch, generate_split.py


def read_patch_info(path: Path, n: int) -> list[str]:
    """The patch names of ``patch_info.csv`` (first column), one per patch.

    Raises
    ------
    DataError
        Unreadable, or not ``n`` rows.
    """
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    names = [r[0].strip() for r in rows[1:]]
    if len(names) != n:
        raise DataError(f"{path}: {len(names)} patches listed for {n} in images.npy/labels.npy; it must name "
                        "every patch, in order (use the release's own file)")
    return names


def patch_image(name: str) -> str:
    """The Lizard image of a patch name (``crag_1-0003`` -> ``crag_1``)."""
    return name.split("-")[0]


def patch_cohort(image: str) -> str:
    """The cohort of a Lizard image (``crag_1`` -> ``crag``)."""
    return image.split("_")[0]


def challenge_split(images: list[str]) -> np.ndarray:
    """Fold code (0 train, 1 validation) of each source image of the CoNIC challenge's split.

    Parameters
    ----------
    images : list of str
        Distinct Lizard image names.

    Returns
    -------
    (len(images),) ndarray of int64
        In the order of ``images``.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    names = np.unique(np.asarray(images))
    _, cohort = np.unique([patch_cohort(n) for n in names], return_inverse=True)
    splitter = StratifiedShuffleSplit(n_splits=10, train_size=0.8, test_size=0.2, random_state=CHALLENGE_SEED)
    _, valid = next(splitter.split(names, cohort))
    held = set(names[valid].tolist())
    return np.asarray([1 if n in held else 0 for n in images], dtype=np.int64)


def conic_class_names(counts_csv: Path) -> dict[int, str] | None:
    """The CoNIC classes when ``counts.csv`` names them in its header, else None."""
    if not counts_csv.exists():
        return None
    header = counts_csv.read_text().splitlines()[0].lower().replace(" ", "").split(",")
    return dict(CONIC_CLASSES) if set(CONIC_CLASSES.values()) <= set(header) else None


class ConicDataset(TileDataset):
    layout = "conic"
    stack = True
    protocol = "conic"

    def __init__(self, path, require_images: bool = True, **_):
        self.path = Path(path)
        self._images = load_npy(self.path / "images.npy", required=require_images)
        self._labels = load_npy(self.path / "labels.npy", required=not require_images)
        if self._images is not None:
            check_stack(self._images, self.path / "images.npy")
        if self._labels is not None:
            if self._labels.ndim != 4 or self._labels.shape[-1] != 2:
                raise DataError(f"{self.path / 'labels.npy'}: expected shape (N, H, W, 2) [instance, class], "
                                f"got {self._labels.shape}")
            if self._images is not None and self._images.shape[:3] != self._labels.shape[:3]:
                raise DataError(f"{self.path / 'labels.npy'}: {self._labels.shape[0]} tiles of "
                                f"{self._labels.shape[1:3]} but images.npy holds {self._images.shape[0]} of "
                                f"{self._images.shape[1:3]}; the two disagree")
        ref = self._images if self._images is not None else self._labels
        if len(ref) == 0:
            raise DataError(f"{self.path}: the dataset has no tiles")
        self.tile_shape = tuple(int(s) for s in ref.shape[1:3])
        self.has_labels = self._labels is not None
        self.class_names = conic_class_names(self.path / "counts.csv")
        info = self.path / "patch_info.csv"
        if info.exists():
            patches = read_patch_info(info, len(ref))
            images = [patch_image(p) for p in patches]
            names, source = np.unique(np.asarray(images), return_inverse=True)
            n = len(ref)
            self.tiles = TileIndex(source=source.astype(np.int64), offset=np.zeros((n, 2), np.int64),
                                   valid=np.tile(np.asarray(self.tile_shape, np.int64), (n, 1)),
                                   source_names=[str(s) for s in names])
            self.tissue = [patch_cohort(s) for s in images]
            try:
                self.folds = challenge_split(list(names))[source]
                self.fold_names, self.splits = ["train", "val"], {"train": [0], "val": [1]}
            except ValueError:  # too few images per cohort to stratify (a subset of the release)
                self.folds = None
            self.mpp = CONIC_MPP
        else:
            self.tiles = TileIndex.one_per_source(len(ref), self.tile_shape)

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
        return [self.path / n for n in ("images.npy", "labels.npy", "patch_info.csv") if (self.path / n).exists()]


def find_conic(path: Path) -> Path | None:
    """``path`` when it holds a CoNIC stack (``labels.npy`` or ``images.npy``, no PanNuke ``masks.npy``)."""
    if path.is_dir() and not (path / "masks.npy").exists() and (
            (path / "labels.npy").exists() or (path / "images.npy").exists()):
        return path
    return None


register(Layout(
    name="conic", title="CoNIC", find=find_conic, open=ConicDataset, stack=True,
    url="https://conic-challenge.grand-challenge.org/ (the 'CoNIC Challenge Train' folder)",
    licence="CC BY-NC-SA 4.0 (non-commercial)",
    point_at="the folder holding images.npy, labels.npy, counts.csv, patch_info.csv",
    note="6 classes, 256x256 patches of Lizard images at 20x (0.5 um/px); splits grouped by source image, "
         "challenge split by name (val, official)",
))
