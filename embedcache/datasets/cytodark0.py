"""CytoDArk0 as its archive unzips: Nissl-stained brain tissue at two magnifications.

The release (Vadori et al., 2024, "CISCA and CytoDArk0", https://zenodo.org/records/13694738,
``cytoDArk0.zip``) unzips to::

    cytoDArk0/20x/1024x1024/image/NAME.png       RGB
    cytoDArk0/20x/1024x1024/label/NAME.tiff      instance ids (0 = background)
    cytoDArk0/20x/1024x1024/graymask4/NAME.png   4-class pixel map (background, cell, boundary...): not read
    cytoDArk0/20x/1024x1024/folds.csv            columns img_id, fold (0 train, 1 validation, 2 test)
    cytoDArk0/40x/2048x2048/...                  the same at 40x

Checked against torch_em ``torch_em/data/datasets/histopathology/cytodark0.py``
(the tree, ``image/*.png`` with ``label/<stem>.tiff`` and ``graymask4/<stem>.png``,
``folds.csv`` read with ``fold.loc[fold["fold"] == i, "img_id"]`` for
i = 0, 1, 2 as train, val, test; images asserted (H, W, 3)) and the paper
(Nissl stain, neurons and glia). Point at the archive's root (20x is read),
at ``20x`` or ``40x``, or at a ``1024x1024`` / ``2048x2048`` folder.
``folds.csv`` gives the default split (``--val auto`` holds out its
validation images; ``train``, ``val``, ``test`` by name). The stain is Nissl,
not H&E: H&E stain variants and normalisation do not describe it (the
dataset says so, and ``check-data`` notes it). The release gives
magnifications, not microns per pixel, so none is recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.base import check_label_map, image_stem, read_table
from embedcache.datasets.images import ImageSetDataset, default_overlap
from embedcache.datasets.registry import Layout, register
from embedcache.errors import DataError

MAGNIFICATIONS = {"20x": "1024x1024", "40x": "2048x2048"}
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
    licence="see the Zenodo record",
    point_at="cytoDArk0/ as unzipped (reads 20x), or its 20x/ or 40x/ folder",
    note="Nissl-stained brain (not H&E), neurons and glia; folds.csv 0/1/2 = train/val/test",
))
