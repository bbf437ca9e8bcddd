"""Lizard as its three archives unzip: colon tissue at 20x, every nucleus of six classes.

The release (Graham et al., 2021, https://warwick.ac.uk/fac/cross_fac/tia/data/lizard/,
``lizard_images1.zip``, ``lizard_images2.zip``, ``lizard_labels.zip``) unzips to::

    Lizard_Images1/consep_1.png ...            RGB, of any size (dpath_1 is 1190x928)
    Lizard_Images2/...
    Lizard_Labels/Labels/consep_1.mat          inst_map (H, W) int32, id (N, 1), class (N, 1) 1..6,
                                               bbox (N, 4) y1, y2, x1, x2, centroid (N, 2) x, y
    Lizard_Labels/info.csv                     Filename,Source,Split: dpath_1,<original file>,3
    Lizard_Labels/read_label.py                the publishers' example reader: not read

(the Kaggle copy torch_em downloads wraps each in a lower-case folder,
``lizard_images1/Lizard_Images1``, and adds ``overlay/Overlay``: both are
read). Sources of each fact:

- the tree, ``info.csv`` read as ``df['Split']`` / ``df['Filename']``,
  ``loadmat(...)["inst_map"]`` and ``["class"]``, images (H, W, 3): torch_em
  ``torch_em/data/datasets/histopathology/lizard.py``;
- the ``.mat`` keys, shapes and meanings (``inst_map`` int32 0..N; ``id``
  maps ``class``, ``bbox`` and ``centroid`` rows to instance ids; bbox order
  y1, y2, x1, x2; centroid x, y): the release's own
  ``Lizard_Labels/read_label.py`` (a copy in marekfejda/ZNEUS_data_zadanie_2
  ``lizard_labels/Lizard_Labels/read_label.py``), and TissueImageAnalytics/CoNIC
  ``extract_patches.py`` (``np.squeeze(ann["class"])`` indexed by
  ``np.squeeze(ann["id"])``);
- ``info.csv`` itself (the same copy, ``lizard_labels/Lizard_Labels/info.csv``):
  header ``Filename,Source,Split``; ``Source`` is the image's name in the
  dataset it was taken from (``test_14``, ``train_105``, ``testB_10``,
  ``None`` for the PanNuke images), not a cohort; the cohort is the prefix
  of ``Filename`` (consep, crag, dpath, glas, pannuke: 16, 64, 69, 61 and 28
  images, 238 in all), as CoNIC's ``patch_info`` names use it;
- the six classes (neutrophil, epithelial, lymphocyte, plasma, eosinophil,
  connective), 20x and 0.5 um/px: CoNIC ``notebooks/data.ipynb`` and the
  CoNIC baseline (``process_segmentation``: "the evaluation is at 0.5mpp").
- the licence, CC BY-NC-SA 4.0 for research "as the release's README
  states": the saahilw/nuclei-lizard dataset card on the Hugging Face hub (a
  converted copy; the README itself is not in the sources read).

Not checked against the release itself: the dtypes of ``id``, ``class``,
``bbox`` and ``centroid`` (any numeric type is read).

The type of instance ``id[k]`` is ``class[k]``. ``Split`` gives folds
``fold1..fold3`` (the release's cross-validation folds; official split:
train folds 1 and 2, test fold 3); the cohort is each image's tissue
label (a probe label and a group for ``groups=tissue``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.base import CONIC_CLASSES, image_stem, read_table
from embedcache.datasets.images import ImageSetDataset, default_overlap
from embedcache.datasets.matlab import (
    load_mat, mat_header_problems, mat_instances, missing_key, types_from_instances,
)
from embedcache.datasets.registry import Layout, register
from embedcache.errors import DataError

LIZARD_MPP = 0.5


def lizard_root(path: Path) -> Path | None:
    """The folder holding the unzipped archives, from it or any folder inside that identifies Lizard."""
    path = Path(path)
    for root in (path, path.parent, path.parent.parent):
        if _info_csv(root) is not None and _image_dirs(root):
            return root
    return None


def _info_csv(root: Path) -> Path | None:
    for p in (root / "Lizard_Labels" / "info.csv", root / "lizard_labels" / "Lizard_Labels" / "info.csv"):
        if p.is_file():
            return p
    return None


def _image_dirs(root: Path) -> list[Path]:
    return sorted(d for pattern in ("Lizard_Images*", "lizard_images*/Lizard_Images*") for d in root.glob(pattern)
                  if d.is_dir())


def read_info(path: Path) -> dict[str, int]:
    """``info.csv``: image stem -> split 1..3 (its ``Source`` column, the image's name in its original dataset,
    is not needed)."""
    out = {}
    for line, row in enumerate(read_table(path, ("Filename", "Source", "Split")), start=2):
        split = row["Split"]
        if split not in ("1", "2", "3"):
            raise DataError(f"{path}:{line}: Split {split!r}; Lizard's splits are 1, 2, 3")
        out[image_stem(row["Filename"])] = int(split)
    return out


def lizard_cohort(name: str) -> str:
    """The cohort of a Lizard image, the prefix of its name (``crag_12`` -> ``crag``)."""
    return name.split("_")[0]


class LizardDataset(ImageSetDataset):
    layout = "lizard"
    mpp = LIZARD_MPP
    protocol = "conic"  # CoNIC's patches are Lizard's images; the same six classes, scored the same way

    def __init__(self, path, tile_size: int = 256, overlap: int | None = None, **_):
        self.path = Path(path)
        root = lizard_root(self.path)
        if root is None:
            raise DataError(f"{self.path}: not Lizard (no Lizard_Labels/info.csv beside Lizard_Images1/2)")
        info_csv = _info_csv(root)
        info = read_info(info_csv)
        files = sorted((f for d in _image_dirs(root) for f in d.glob("*.png")), key=lambda f: f.stem)
        if not files:
            raise DataError(f"{root}: no .png images in Lizard_Images1 or Lizard_Images2")
        missing = [n for n in info if n not in {f.stem for f in files}]
        if missing:
            raise DataError(f"{info_csv}: names image {missing[0]!r}, which is in neither Lizard_Images folder "
                            f"({len(missing)} missing); unzip lizard_images1.zip and lizard_images2.zip beside it")
        unlisted = next((f for f in files if f.stem not in info), None)
        if unlisted is not None:
            raise DataError(f"{unlisted}: not in {info_csv}; every image needs its row (Filename,Source,Split)")
        labels_dir = info_csv.parent / "Labels"
        self._mats = [labels_dir / f"{f.stem}.mat" for f in files]
        absent = next((m for m in self._mats if not m.exists()), None)
        if absent is not None:
            raise DataError(f"{absent}: file not found (every image has its Labels/NAME.mat)")
        self.has_labels = True
        self.class_names = dict(CONIC_CLASSES)
        self._tile_images(files, [f.stem for f in files], tile_size, default_overlap(tile_size, overlap))
        source = self.tiles.source
        self.source_tissue = [lizard_cohort(f.stem) for f in files]
        self.tissue = [self.source_tissue[s] for s in source]
        self.folds = np.asarray([info[f.stem] - 1 for f in files], dtype=np.int64)[source]
        self.fold_names = ["fold1", "fold2", "fold3"]
        self.splits = {"train": [0, 1], "test": [2]}
        self._info = info_csv

    def _load_label(self, k: int) -> np.ndarray:
        path = self._mats[k]
        mat = load_mat(path, ("inst_map",))
        inst = mat_instances(mat, path, self.original_shape(k))
        for key in ("id", "class"):
            if key not in mat:
                raise missing_key(path, key, [k for k in mat if not k.startswith("__")])
        ids, classes = np.asarray(mat["id"]).ravel(), np.asarray(mat["class"]).ravel()
        if len(ids) != len(classes):
            raise DataError(f"{path}: {len(ids)} ids but {len(classes)} classes")
        if classes.size and (classes.min() < 1 or classes.max() > 6):
            raise DataError(f"{path}: class {int(classes.max())} outside Lizard's 1..6")
        return np.stack([inst, types_from_instances(inst, ids, classes)], axis=-1)

    def header_problems(self) -> list[DataError]:
        return mat_header_problems(self._mats)

    def _source_files(self):
        return [*self._files, *self._mats, self._info]

    def _files_of_source(self):
        return [[f, m] for f, m in zip(self._files, self._mats)]


def find_lizard(path: Path) -> Path | None:
    return path if path.is_dir() and lizard_root(path) is not None else None


register(Layout(
    name="lizard", title="Lizard", find=find_lizard, open=LizardDataset,
    url="https://warwick.ac.uk/fac/cross_fac/tia/data/lizard/ (lizard_images1.zip, lizard_images2.zip, "
        "lizard_labels.zip)",
    licence="CC BY-NC-SA 4.0 (non-commercial)",
    point_at="the folder holding Lizard_Images1, Lizard_Images2 and Lizard_Labels as unzipped",
    note="colon, CoNIC's 6 classes, 20x (0.5 um/px); info.csv Split 1..3 as fold1..fold3, the file name's "
         "prefix (consep, crag, dpath, glas, pannuke) as cohort",
))
