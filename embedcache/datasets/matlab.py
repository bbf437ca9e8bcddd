"""Releases of whole images with MATLAB ``.mat`` label files, split into folders: CoNSeP and CPM-17 (as HoVer-Net
distributes them), and the ``.mat`` reading Lizard shares.

Layout: ``<root>/<Split>/Images/NAME.png`` and ``<root>/<Split>/Labels/NAME.mat``
for each of the release's split folders; pointing at ``<root>`` reads every
split (its folds, named after the splits), pointing at one split folder
reads that one. A ``.mat`` file is read with :func:`scipy.io.loadmat`;
``inst_map`` holds the instance ids (0 = background). Each image is cut into
tiles as :mod:`embedcache.datasets.images` describes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.base import check_label_map, to_uint8_rgb
from embedcache.datasets.images import ImageSetDataset, default_overlap, read_image_file
from embedcache.errors import DataError


def load_mat(path: Path, required: tuple[str, ...] = ("inst_map",)) -> dict:
    """The arrays of a ``.mat`` file (MATLAB v5/v7).

    Raises
    ------
    DataError
        Unreadable (v7.3 HDF5 files included), or without one of ``required``.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except NotImplementedError:
        raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file; the releases ship v5 .mat files, use the "
                        "release's own") from None
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError... on a damaged file
        raise DataError(f"{path}: cannot read .mat file ({exc})") from None
    for key in required:
        if key not in mat:
            raise missing_key(path, key, [k for k in mat if not k.startswith("__")])
    return mat


def missing_key(path: Path, key: str, keys) -> DataError:
    """The error for a ``.mat`` file without ``key`` (naming what it holds)."""
    return DataError(f"{path}: no {key!r} in this .mat file (it holds {', '.join(sorted(keys)) or 'nothing'}); "
                     "the release's label files hold it")


def mat_instances(mat: dict, path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """``inst_map`` as int32, checked against the image's (height, width)."""
    inst = check_label_map(np.asarray(mat["inst_map"]), f"{path} inst_map")
    if inst.shape != tuple(image_hw):
        raise DataError(f"{path}: inst_map of shape {inst.shape} does not match its image {tuple(image_hw)}")
    return inst


def mat_header_problems(mats: list[Path]) -> list[DataError]:
    """Label files without ``inst_map``, from their headers (:func:`scipy.io.whosmat`), for ``check-data``."""
    from scipy.io import whosmat

    out = []
    for mat in mats:
        try:
            names = [name for name, _, _ in whosmat(mat)]
        except NotImplementedError:
            out.append(DataError(f"{mat}: a MATLAB v7.3 (HDF5) file; the releases ship v5 .mat files"))
            continue
        except Exception as exc:  # scipy raises many kinds on a damaged file
            out.append(DataError(f"{mat}: cannot read .mat file ({exc})"))
            continue
        if "inst_map" not in names:
            out.append(missing_key(mat, "inst_map", names))
    return out


def types_from_instances(inst: np.ndarray, ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A type map from per-instance classes: instance ``ids[k]`` has type ``classes[k]`` (ids not listed: 0)."""
    ids, classes = np.asarray(ids).ravel().astype(np.int64), np.asarray(classes).ravel().astype(np.int64)
    table = np.zeros(max(int(inst.max(initial=0)), int(ids.max(initial=0))) + 1, dtype=np.int32)
    table[ids] = classes
    return table[inst]


class SplitFolderRelease(ImageSetDataset):
    """A release of ``<Split>/Images/*.png`` and ``<Split>/Labels/*.mat`` (subclasses set ``split_dirs`` and
    :meth:`_types`)."""

    split_dirs: tuple[str, ...] = ()
    images_dir, labels_dir = "Images", "Labels"

    def __init__(self, path, tile_size: int = 256, overlap: int | None = None, **_):
        self.path = Path(path)
        if self.path.name in self.split_dirs:
            root, chosen = self.path.parent, [self.path.name]
        else:
            root, chosen = self.path, [s for s in self.split_dirs if (self.path / s).is_dir()]
        if not chosen:
            raise DataError(f"{self.path}: no {' or '.join(self.split_dirs)} folder ({self.layout} layout)")
        files, labels, folds = [], [], []
        for split in chosen:
            images = sorted((root / split / self.images_dir).glob("*.png"))
            if not images:
                raise DataError(f"{root / split / self.images_dir}: no .png images")
            for f in images:
                mat = root / split / self.labels_dir / f"{f.stem}.mat"
                if not mat.exists():
                    raise DataError(f"{mat}: file not found (every {self.images_dir}/NAME.png has its "
                                    f"{self.labels_dir}/NAME.mat)")
                files.append(f)
                labels.append(mat)
                folds.append(self.split_dirs.index(split))
        self._mats = labels
        self.has_labels = True
        # Names are file names as prediction folders write them: the stem, prefixed by the split where two
        # splits hold the same stem (CPM-17's image_00 is in train and test).
        stems = [f.stem for f in files]
        names = stems if len(set(stems)) == len(stems) else [f"{f.parent.parent.name.lower()}_{f.stem}"
                                                             for f in files]
        self._tile_images(files, names, tile_size, default_overlap(tile_size, overlap))
        self.folds = np.asarray(folds, dtype=np.int64)[self.tiles.source]
        self.fold_names = [s.lower() for s in self.split_dirs]
        self.splits = {s.lower(): [k] for k, s in enumerate(self.split_dirs)}

    def _load_image(self, k: int) -> np.ndarray:
        # CoNSeP's PNGs are RGBA with an alpha channel of no meaning: the colour channels are the image.
        arr = read_image_file(self._files[k])
        return to_uint8_rgb(arr[..., :3] if arr.ndim == 3 else arr, str(self._files[k]))

    def _load_label(self, k: int) -> np.ndarray:
        path = self._mats[k]
        mat = load_mat(path)
        inst = mat_instances(mat, path, self.original_shape(k))
        return np.stack([inst, self._types(mat, inst, path)], axis=-1)

    def _types(self, mat: dict, inst: np.ndarray, path: Path) -> np.ndarray:
        return np.zeros_like(inst)

    def header_problems(self) -> list[DataError]:
        return mat_header_problems(self._mats)

    def _source_files(self):
        return [*self._files, *self._mats]

    def _files_of_source(self):
        return [[f, m] for f, m in zip(self._files, self._mats)]


def find_split_release(path: Path, split_dirs: tuple[str, ...], marker) -> Path | None:
    """``path`` when it is the release's root (a split folder inside) or one of its split folders, holding
    ``Images/*.png`` with ``Labels/*.mat`` for which ``marker(mat_path)`` holds."""
    if not path.is_dir():
        return None
    folders = [path] if path.name in split_dirs else [path / s for s in split_dirs]
    for split in folders:
        mats = sorted((split / "Labels").glob("*.mat"))[:1]
        if mats and (split / "Images").is_dir() and marker(mats[0]):
            return path
    return None
