"""Datasets: tiles, label maps, fixed variants and synthetic demo data.

Readers give a :class:`TileDataset`; each layout is a module registered in
:mod:`embedcache.datasets.registry` (the published releases PanNuke and
CoNIC, whole-slide images, image folders), and :func:`open_dataset` picks
one by looking at the folder (``--format auto``: one loop over the
registry). ``labels`` reads label maps for scoring, ``variants`` defines
the cached augmentations.
"""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.base import CONIC_CLASSES, PANNUKE_CLASSES, TileDataset, TileIndex
from embedcache.datasets.images import OVERLAP_DIVISOR as FOLDER_OVERLAP
from embedcache.datasets.labels import LabelSet, read_label_maps
from embedcache.datasets.registry import LAYOUTS, detect_layout, get_layout, is_stack
from embedcache.datasets.variants import Variant, resolve_variants
from embedcache.errors import ConfigError, DataError


def formats() -> tuple[str, ...]:
    """``auto`` and the name of every registered layout, in detection order."""
    get_layout("folder")  # loads the registry
    return ("auto", *LAYOUTS)


def detect_format(path: Path, labels_only: bool = False) -> str:
    """The name of the first registered layout that recognises ``path``.

    ``labels_only`` accepts prediction folders that hold labels without
    images.
    """
    return detect_layout(Path(path), labels_only)[0].name


def open_dataset(path, format: str = "auto", tile_size: int = 256, mpp: float | None = None,
                 tile_mpp: float = 0.5, min_tissue: float = 0.5, overlap: int | None = None,
                 magnification: str | None = None, classes: str | None = None,
                 working_mpp: float | None = None) -> TileDataset:
    """Open a dataset for extraction.

    Parameters
    ----------
    path : str or Path
        A dataset folder as its release unzips (or a folder inside it that
        still identifies it), an image folder, or slides.
    format : str
        ``auto`` or a registered layout (:func:`formats`).
    tile_size : int
        Tile side for layouts of whole images and slides (stacks keep their own tile size).
    overlap : int, optional
        Overlap of neighbouring tiles of an image in px. Whole images, None:
        a quarter of the tile (:data:`FOLDER_OVERLAP`), what live prediction
        uses. Slides, None: 0 (a plain grid, for the self-supervised method
        and tile probes; give the overlap of ``predict --slides`` for a store
        that serves it).
    mpp, tile_mpp, min_tissue
        Slides: level-0 microns per pixel overriding the files, microns
        per pixel of the tiles, smallest tissue fraction of a kept tile
        (:class:`~embedcache.datasets.slides.SlideDataset`). Whole images:
        ``mpp`` is the resolution of images that record none and are not in
        an ``mpp.csv`` (:mod:`embedcache.datasets.resolution`).
    working_mpp : float, optional
        Whole images: resample each image from its own resolution to this
        one before tiling (images of unknown resolution are refused).
    magnification : {"20x", "40x"}, optional
        Releases with both (CytoDArk0) read at the archive's root: which one
        (default 20x); pointing at the magnification's folder does the same.
    classes : str, optional
        Releases with more than one class set (CoNSeP: ``hovernet``, the
        default, or ``consep``): which one.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if format == "auto":
        layout, root = detect_layout(path)
    else:
        layout, root = get_layout(format), path
    options = dict(tile_size=tile_size, mpp=mpp, tile_mpp=tile_mpp, min_tissue=min_tissue, overlap=overlap)
    for key, value in (("magnification", magnification), ("classes", classes)):
        if value is not None:
            options[key] = value
    ds = layout.open(root, **options)
    from embedcache.datasets.images import ImageSetDataset

    if isinstance(ds, ImageSetDataset):
        ds.set_resolution(mpp, working_mpp)
    elif working_mpp is not None:
        raise ConfigError(f"{path}: --working-mpp resamples datasets of whole images (image folders, CoNSeP, "
                          f"CPM-17, Lizard, MoNuSeg, CytoDArk0); the {layout.name} layout has tiles of fixed size"
                          + ("; slides take --tile-mpp" if layout.name == "slides" else ""))
    return ds


__all__ = [
    "CONIC_CLASSES", "FOLDER_OVERLAP", "PANNUKE_CLASSES", "LabelSet", "TileDataset", "TileIndex", "Variant",
    "detect_format", "formats", "is_stack", "open_dataset", "read_label_maps", "resolve_variants",
]
