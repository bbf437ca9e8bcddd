"""Reader for a folder of image files with per-file label maps.

Layout: ``NAME.png`` (RGB; also .tif/.tiff/.jpg/.jpeg), ``NAME_inst.png``
(instance ids, 0 = background; 16-bit PNG, TIFF or ``.npy``) and optionally
``NAME_type.png`` (type ids). Images may have any size: each one is cut into
tiles as :mod:`embedcache.datasets.images` describes (neighbours
overlapping, tiles past the edge padded white, nothing resized).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.base import check_label_map
from embedcache.datasets.images import (  # noqa: F401  (the image readers and PAD_VALUE: imported from here too)
    PAD_VALUE, ImageSetDataset, default_overlap, image_mode_problem, read_image_file, read_rgb_file,
)
from embedcache.datasets.registry import Layout, register
from embedcache.errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


def find_label_file(folder: Path, stem: str, kind: str) -> Path | None:
    """``folder/stem_kind.<suffix>`` for the first label suffix that exists."""
    for suffix in LABEL_SUFFIXES:
        p = folder / f"{stem}_{kind}{suffix}"
        if p.exists():
            return p
    return None


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder layout, label maps excluded, sorted by name."""
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith(("_inst", "_type", "_overlay"))
    )


class FolderDataset(ImageSetDataset):
    layout = "folder"

    def __init__(self, path, tile_size: int = 256, overlap: int = 0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: not a folder")
        if tile_size < 32:
            raise DataError(f"tile size {tile_size} is too small; use at least 32 px")
        if not 0 <= overlap <= tile_size // 2:
            raise DataError(f"overlap {overlap} px: use 0..{tile_size // 2} px for {tile_size}-px tiles")
        files = list_images(self.path)
        if not files:
            raise DataError(f"{self.path}: no images found ({', '.join(IMAGE_SUFFIXES)})")
        self._inst = [find_label_file(self.path, f.stem, "inst") for f in files]
        self._type = [find_label_file(self.path, f.stem, "type") for f in files]
        with_labels = sum(p is not None for p in self._inst)
        if 0 < with_labels < len(files):
            missing = next(f.name for f, p in zip(files, self._inst) if p is None)
            raise DataError(f"{self.path}: {missing} has no _inst label map while other images do; "
                            "give every image its NAME_inst.png or none")
        self.has_labels = with_labels > 0
        self.class_names = None
        self._tile_images(files, [f.stem for f in files], tile_size, overlap)

    def _load_label(self, k: int) -> np.ndarray:
        image_hw = self.original_shape(k)
        inst = check_label_map(read_image_file(self._inst[k]), str(self._inst[k]))
        maps = [inst]
        if self._type[k] is not None:
            maps.append(check_label_map(read_image_file(self._type[k]), str(self._type[k])))
        else:
            maps.append(np.zeros_like(inst))
        for m, p in zip(maps, (self._inst[k], self._type[k])):
            if m.ndim != 2 or m.shape != image_hw:
                raise DataError(f"{p}: label map of shape {m.shape} does not match its image {image_hw}")
        return np.stack(maps, axis=-1)

    def _source_files(self):
        return [p for group in (self._files, self._inst, self._type) for p in group if p is not None]

    def _files_of_source(self):
        return [[p for p in files if p is not None] for files in zip(self._files, self._inst, self._type)]


def _open_folder(path, tile_size: int = 256, overlap: int | None = None, **_) -> FolderDataset:
    return FolderDataset(path, tile_size=tile_size, overlap=default_overlap(tile_size, overlap))


def _find_folder(path: Path) -> Path | None:
    return path if path.is_dir() and list_images(path) else None


register(Layout(
    name="folder", title="Image folder", find=_find_folder, open=_open_folder,
    labels_only=lambda path: any(path.glob("*_inst.*")),
    point_at="a folder of NAME.png with NAME_inst.png (and NAME_type.png) beside each",
    note="any image size, cut into overlapping tiles",
))
