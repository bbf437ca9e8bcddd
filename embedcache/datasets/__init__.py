"""Datasets: tiles, label maps, fixed variants and synthetic demo data.

Readers give a :class:`TileDataset`; :func:`open_dataset` picks one by
looking at the folder (``--format auto``): ``stacks`` (PanNuke, CoNIC),
``folder`` (images with ``NAME_inst.png``), ``slides`` (whole-slide images,
read by ``wsi`` with their GeoJSON ``annotations``). ``labels`` reads label
maps for scoring, ``variants`` defines the cached augmentations.
"""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.base import CONIC_CLASSES, PANNUKE_CLASSES, TileDataset, TileIndex
from embedcache.datasets.labels import LabelSet, read_label_maps
from embedcache.datasets.variants import Variant, resolve_variants
from embedcache.errors import DataError

FORMATS = ("auto", "pannuke", "conic", "folder", "slides")


FOLDER_OVERLAP = 4  # folder images are tiled with neighbours overlapping by tile_size // 4 px by default


def detect_format(path: Path, labels_only: bool = False) -> str:
    """The layout of ``path``: pannuke, conic or folder.

    ``labels_only`` accepts prediction folders that hold labels without
    images.
    """
    from embedcache.datasets.folder import list_images
    from embedcache.datasets.wsi import looks_like_slides
    from embedcache.datasets.stacks import pannuke_fold_dirs

    path = Path(path)
    if not labels_only and looks_like_slides(path):
        return "slides"
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder (PanNuke, CoNIC or image folder layout)")
    if (path / "masks.npy").exists():
        return "pannuke"
    if (path / "labels.npy").exists() or (path / "images.npy").exists():
        return "conic"
    if list_images(path) or (labels_only and any(path.glob("*_inst.*"))):
        return "folder"
    if pannuke_fold_dirs(path):
        return "pannuke"
    raise DataError(f"{path}: cannot tell the layout (no masks.npy, labels.npy, images.npy or image files); "
                    "see `embedcache extract --help` for the layouts, or pass --format")


def open_dataset(path, format: str = "auto", tile_size: int = 256, mpp: float | None = None,
                 tile_mpp: float = 0.5, min_tissue: float = 0.5, overlap: int | None = None) -> TileDataset:
    """Open a dataset for extraction.

    Parameters
    ----------
    path : str or Path
    format : {"auto", "pannuke", "conic", "folder", "slides"}
    tile_size : int
        Tile side for the folder and slides layouts (stacks keep their own tile size).
    overlap : int, optional
        Overlap of neighbouring tiles of an image in px. Folder layout, None:
        a quarter of the tile (:data:`FOLDER_OVERLAP`), what live prediction
        uses. Slides, None: 0 (a plain grid, for the self-supervised method
        and tile probes; give the overlap of ``predict --slides`` for a store
        that serves it).
    mpp, tile_mpp, min_tissue
        Slides only: level-0 microns per pixel overriding the files, microns
        per pixel of the tiles, smallest tissue fraction of a kept tile
        (:class:`~embedcache.datasets.slides.SlideDataset`).
    """
    from embedcache.datasets.folder import FolderDataset
    from embedcache.datasets.stacks import ConicDataset, PanNukeDataset

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    layout = detect_format(path) if format == "auto" else format
    if layout == "pannuke":
        return PanNukeDataset(path)
    if layout == "conic":
        return ConicDataset(path)
    if layout == "slides":
        from embedcache.datasets.slides import SlideDataset

        return SlideDataset(path, tile_size=tile_size, tile_mpp=tile_mpp, mpp=mpp, min_tissue=min_tissue,
                            overlap=overlap or 0)
    return FolderDataset(path, tile_size=tile_size,
                         overlap=tile_size // FOLDER_OVERLAP if overlap is None else overlap)


__all__ = [
    "CONIC_CLASSES", "FORMATS", "PANNUKE_CLASSES", "LabelSet", "TileDataset", "TileIndex", "Variant",
    "detect_format", "open_dataset", "read_label_maps", "resolve_variants",
]
