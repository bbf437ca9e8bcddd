"""CytoDArk0 as its archive unzips: Nissl-stained brain tissue at two magnifications.

The release (Vadori et al., 2024, "CISCA and CytoDArk0", https://zenodo.org/records/13694738,
``cytoDArk0.zip``) unzips to::

    cytoDArk0/20x/1024x1024/image/NAME.png       RGB, 1024x1024, 0.548 um/px (69 images)
    cytoDArk0/20x/1024x1024/label/NAME.tiff      instance ids (0 = background)
    cytoDArk0/20x/1024x1024/graymask4/NAME.png   4-class pixel map (background, cell, boundary...): not read
    cytoDArk0/20x/1024x1024/folds.csv            img_id,fold (0 train, 1 validation, 2 test)
    cytoDArk0/40x/2048x2048/...                  the same at 40x: 2048x2048, 0.274 um/px (58 images)

with NAME as ``ID1_Aud_Cortex_Tursiops``: an id, the brain area (auditory
and visual cortex, cerebellum, hippocampus) and the species. Sources of each
fact:

- the tree, ``image/*.png`` with ``label/<stem>.tiff`` and
  ``graymask4/<stem>.png``, ``folds.csv`` read with
  ``fold.loc[fold["fold"] == i, "img_id"]`` for i = 0, 1, 2 as train, val,
  test, images asserted (H, W, 3), the archive's URL: torch_em
  ``torch_em/data/datasets/histopathology/cytodark0.py``;
- ``<dataset>/<mag>/<side>x<side>/{image,label,graymask4,folds.csv}`` and
  ``folds.csv`` grouped by ``fold`` into ``img_id`` lists (header
  ``img_id,fold``, as in its ``datasets/pannuke/40x/256x256/folds.csv``):
  vadori/cytoark ``cisca/model.py``; the image names, their species, area,
  magnification, resolution (0.548 um/px at 20x, 0.274 at 40x) and size:
  vadori/cytoark ``datasets/cytodark0/cytoDArk0_metadata.xlsx`` (sheets
  ``cytoDArk0_20x_1024`` and ``cytoDArk0_40x_2048``); the area as the
  per-tissue row of its evaluations: its ``tissue_stats_*.csv`` (Auditory
  Cortex, Cerebellum, Hippocampus, Visual Cortex);
- Nissl stain, neurons and glia: vadori/cytoark ``README.md``, torch_em's
  module docstring.

Not checked against the archive itself: its licence (the cytoark code is
CC BY-NC-SA 4.0; the Zenodo record states the dataset's), the label TIFFs'
dtype (any integer type is read), and whether it also holds the 256x256 and
512x512 crops cytoark's scripts cut (a folder of that form is read when
pointed at).

Point at the archive's root (20x is read), at ``20x`` or ``40x``, or at a
``1024x1024`` / ``2048x2048`` folder. ``folds.csv`` gives the default split
(``--val auto`` holds out its validation images; ``train``, ``val``,
``test`` by name). The stain is Nissl, not H&E: H&E stain variants and
normalisation do not describe it (the dataset says so, and ``check-data``
notes it). Each image's brain area is its tissue label.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from embedcache.datasets.base import check_label_map, image_stem, read_table
from embedcache.datasets.images import ImageSetDataset, default_overlap
from embedcache.datasets.registry import Layout, register
from embedcache.errors import DataError

MAGNIFICATIONS = {"20x": "1024x1024", "40x": "2048x2048"}
MPP = {"20x": 0.548, "40x": 0.274}  # cytoark datasets/cytodark0/cytoDArk0_metadata.xlsx, Resolution
AREAS = {"Aud_Cortex": "auditory cortex", "Visual_Cortex": "visual cortex", "Cerebellum": "cerebellum",
         "Hippocampus": "hippocampus"}
IMAGE_NAME = re.compile(r"^ID\d+_(.+)_[A-Za-z]+$")  # ID<k>_<area>_<species>
SPLITS = ("train", "val", "test")  # folds.csv fold 0, 1, 2


def cytodark0_folder(path: Path, magnification: str | None = None) -> Path | None:
    """The ``<mag>/<size>`` folder to read under ``path`` (None when ``path`` is not CytoDArk0)."""
    path = Path(path)
    if (path / "image").is_dir() and (path / "folds.csv").is_file() and (path / "label").is_dir():
        return path
    if path.name in MAGNIFICATIONS:
        return cytodark0_folder(path / MAGNIFICATIONS[path.name])
    for mag in ([magnification] if magnification else []) + list(MAGNIFICATIONS):
        if (path / mag).is_dir():
            found = cytodark0_folder(path / mag)
            if found is not None:
                return found
    return None


def brain_area(stem: str) -> str | None:
    """The brain area an image name gives (``ID57_Cerebellum_Chimpanzee`` -> ``cerebellum``), else None."""
    m = IMAGE_NAME.match(stem)
    if m is None:
        return None
    return AREAS.get(m.group(1), m.group(1).replace("_", " ").lower())


def read_folds(path: Path) -> dict[str, int]:
    """``folds.csv``: image stem -> fold 0, 1 or 2.

    Raises
    ------
    DataError
        No ``img_id`` and ``fold`` columns, a fold other than 0, 1, 2, an image listed twice.
    """
    out: dict[str, int] = {}
    for line, row in enumerate(read_table(path, ("img_id", "fold")), start=2):
        name, fold = image_stem(row["img_id"]), row["fold"]
        if fold not in ("0", "1", "2"):
            raise DataError(f"{path}:{line}: fold {fold!r} for {name!r}; folds are 0 (train), 1 (val), 2 (test)")
        if name in out:
            raise DataError(f"{path}:{line}: image {name!r} is listed twice")
        out[name] = int(fold)
    return out


class CytoDArk0Dataset(ImageSetDataset):
    layout = "cytodark0"
    stain = "Nissl"

    def __init__(self, path, tile_size: int = 256, overlap: int | None = None, magnification: str | None = None,
                 **_):
        self.path = Path(path)
        base = cytodark0_folder(self.path, magnification)
        if base is None:
            raise DataError(f"{self.path}: not CytoDArk0 (no image/, label/ and folds.csv under 20x/1024x1024 or "
                            "40x/2048x2048)")
        self.magnification = base.parent.name if base.parent.name in MAGNIFICATIONS else None
        self.mpp = MPP.get(self.magnification)
        folds = read_folds(base / "folds.csv")
        files = sorted((base / "image").glob("*.png"))
        if not files:
            raise DataError(f"{base / 'image'}: no .png images")
        stems = {f.stem for f in files}
        missing = [n for n in folds if n not in stems]
        if missing:
            raise DataError(f"{base / 'folds.csv'}: names image {missing[0]!r}, which is not in {base / 'image'} "
                            f"({len(missing)} missing); unzip the release again")
        unlisted = [f.name for f in files if f.stem not in folds]
        if unlisted:
            raise DataError(f"{base / 'image' / unlisted[0]}: not in folds.csv ({len(unlisted)} images are not); "
                            "every image needs its fold")
        self._labels = [base / "label" / f"{f.stem}.tiff" for f in files]
        absent = next((p for p in self._labels if not p.exists()), None)
        if absent is not None:
            raise DataError(f"{absent}: file not found (every image/NAME.png has its label/NAME.tiff)")
        self.base = base
        self.has_labels = True
        self.class_names = None
        self._tile_images(files, [f.stem for f in files], tile_size, default_overlap(tile_size, overlap))
        self.folds = np.asarray([folds[f.stem] for f in files], dtype=np.int64)[self.tiles.source]
        areas = [brain_area(f.stem) for f in files]
        self.source_tissue = areas if all(areas) else None
        self.tissue = [areas[s] for s in self.tiles.source] if all(areas) else None
        self.fold_names = list(SPLITS)
        self.splits = {name: [k] for k, name in enumerate(SPLITS)}

    def _load_label(self, k: int) -> np.ndarray:
        import tifffile

        path = self._labels[k]
        try:
            inst = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many kinds on a damaged file
            raise DataError(f"{path}: cannot read ({exc})") from None
        inst = check_label_map(np.squeeze(inst), str(path))
        image_hw = self.original_shape(k)
        if inst.shape != image_hw:
            raise DataError(f"{path}: label map of shape {inst.shape} does not match its image {image_hw}")
        return np.stack([inst, np.zeros_like(inst)], axis=-1)

    def _source_files(self):
        return [*self._files, *self._labels, self.base / "folds.csv"]

    def _files_of_source(self):
        return [[f, lab] for f, lab in zip(self._files, self._labels)]

    def describe(self) -> dict:
        return {**super().describe(), "magnification": self.magnification}


def find_cytodark0(path: Path) -> Path | None:
    return path if path.is_dir() and cytodark0_folder(path) is not None else None


register(Layout(
    name="cytodark0", title="CytoDArk0", find=find_cytodark0, open=CytoDArk0Dataset,
    url="https://zenodo.org/records/13694738 (cytoDArk0.zip)",
    licence="see the Zenodo record (the authors' code, vadori/cytoark, is CC BY-NC-SA 4.0)",
    point_at="cytoDArk0/ as unzipped (reads 20x), or its 20x/ or 40x/ folder",
    note="Nissl-stained brain (not H&E), neurons and glia; 20x 0.548 um/px, 40x 0.274 um/px; folds.csv 0/1/2 = "
         "train/val/test; the brain area as tissue",
))
