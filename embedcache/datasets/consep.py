"""CoNSeP as HoVer-Net's authors distribute it (``consep.zip``): 41 H&E images of colorectal tissue.

The release (Graham et al., 2019, https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/)
unzips to::

    CoNSeP/README.txt                                   the description quoted below
    CoNSeP/Train/Images/train_1.png ... train_27.png   1000x1000 RGBA (the alpha channel carries nothing)
    CoNSeP/Train/Labels/train_1.mat                     inst_map (1000, 1000) 0..N, type_map (1000, 1000) 0..7,
                                                        inst_type (N, 1), inst_centroid (N, 2) x, y
    CoNSeP/Train/Overlay/train_1.png                    drawings of the labels: not read
    CoNSeP/Test/Images/test_1.png ... test_14.png, Test/Labels/, Test/Overlay/

Sources of each fact:

- the four keys, their shapes and meanings, the seven classes and the merge
  into four ("In our paper we combine classes 3 & 4 into the epithelial
  class and 5,6 & 7 into the spindle-shaped class"): the release's
  ``README.txt`` (its text is stored in the public code index; found by its
  opening line, its repository is not named there);
- ``sio.loadmat(path)["inst_map"]`` and ``["type_map"]``, the merge as code
  (``ann_type[(ann_type == 3) | (ann_type == 4)] = 3``; 5, 6, 7 -> 4):
  vqdang/hover_net ``dataset.py`` (``__CoNSeP.load_ann``);
- the tree (``Train``/``Test`` with ``Images``, ``Labels``, ``Overlay``;
  ``README.txt`` at the root), 27 train and 14 test images, 40x at
  0.25 um/px (``overwrite_mpp=0.25``), the four class names other,
  inflammatory, epithelial, spindle-shaped: kaiko-ai/eva
  ``docs/datasets/consep.md`` and ``src/eva/vision/data/datasets/segmentation/consep.py``;
- RGBA images whose colour is the first three channels:
  JohnsonLee98/hover_1 ``src/transform_data.py`` (``img[..., :3]``), while
  hover_net reads them with ``cv2.imread``, which drops the alpha channel.

Not checked against the release itself: the dtypes inside the ``.mat``
files (hover_net casts with ``astype("int32")``; any numeric type is read).

HoVer-Net scores four classes (``classes="hovernet"``, the default, as its
authors score CoNSeP): 3 and 4 become 3 epithelial, 5, 6 and 7 become 4
spindle-shaped; ``classes="consep"`` keeps the seven. The splits are the
release's ``train`` and ``test`` (``--val official``: test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.base import check_label_map
from embedcache.datasets.matlab import SplitFolderRelease, find_split_release, types_from_instances
from embedcache.datasets.registry import Layout, register
from embedcache.errors import DataError

CONSEP_CLASSES = {1: "other", 2: "inflammatory", 3: "healthy epithelial", 4: "dysplastic/malignant epithelial",
                  5: "fibroblast", 6: "muscle", 7: "endothelial"}
HOVERNET_CLASSES = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle-shaped"}
HOVERNET_MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4], dtype=np.int32)  # CoNSeP type -> HoVer-Net's four
CLASS_SETS = {"hovernet": HOVERNET_CLASSES, "consep": CONSEP_CLASSES}
CONSEP_MPP = 0.25  # 40x (eva's CoNSeP dataset: overwrite_mpp=0.25)


def merge_consep_types(types: np.ndarray) -> np.ndarray:
    """CoNSeP's seven types (0..7) as HoVer-Net's four: 3, 4 -> 3 epithelial; 5, 6, 7 -> 4 spindle-shaped."""
    return HOVERNET_MERGE[np.asarray(types)]


class ConsepDataset(SplitFolderRelease):
    layout = "consep"
    protocol = "hovernet"
    mpp = CONSEP_MPP
    split_dirs = ("Train", "Test")

    def __init__(self, path, tile_size: int = 256, overlap: int | None = None, classes: str | None = None, **_):
        classes = classes or "hovernet"
        if classes not in CLASS_SETS:
            raise DataError(f"CoNSeP classes {classes!r}: use hovernet (the four HoVer-Net scores) or consep "
                            "(the release's seven)")
        self.classes = classes
        self.class_names = dict(CLASS_SETS[classes])
        super().__init__(path, tile_size, overlap)

    def _types(self, mat: dict, inst: np.ndarray, path: Path) -> np.ndarray:
        if "type_map" in mat:
            types = check_label_map(np.asarray(mat["type_map"]), f"{path} type_map")
            if types.shape != inst.shape:
                raise DataError(f"{path}: type_map of shape {types.shape} does not match inst_map {inst.shape}")
        elif "inst_type" in mat:
            ids = np.arange(1, len(np.asarray(mat["inst_type"]).ravel()) + 1)
            types = types_from_instances(inst, ids, mat["inst_type"])
        else:
            raise DataError(f"{path}: neither type_map nor inst_type in this .mat file; CoNSeP labels carry types")
        if types.max(initial=0) > 7:
            raise DataError(f"{path}: type {int(types.max())} outside CoNSeP's 0..7")
        return merge_consep_types(types) if self.classes == "hovernet" else types

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes}


def _has_types(mat: Path) -> bool:
    from scipy.io import whosmat

    try:
        return any(name == "type_map" for name, _, _ in whosmat(mat))
    except Exception:  # not a readable .mat: let the reader say so, if this layout is asked for
        return False


def find_consep(path: Path) -> Path | None:
    return find_split_release(path, ConsepDataset.split_dirs, _has_types)


register(Layout(
    name="consep", title="CoNSeP", find=find_consep, open=ConsepDataset,
    url="https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/ (consep.zip)",
    licence="the publisher's terms (eva's documentation gives Apache 2.0); cite the HoVer-Net paper",
    point_at="CoNSeP/ as unzipped (Train/ and Test/), or one of them",
    note="40x (0.25 um/px); 7 classes merged to HoVer-Net's 4 by default (classes consep: the 7); splits train, "
         "test. The page has been offline at times (hover_net issue 267)",
))
