"""Label maps alone, at each image's own size: what ``evaluate`` compares.

Truth and predictions are read the same way. Tile stacks (PanNuke, CoNIC)
give one map per tile; the folder layout gives one map per file, whole,
at its own size (no tiling), with or without the images beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.datasets.base import check_label_map, stack_name
from embedcache.datasets.folder import LABEL_SUFFIXES, find_label_file, read_image_file
from embedcache.errors import DataError


@dataclass(frozen=True)
class LabelSet:
    """Instance and type maps of a set of images.

    Attributes
    ----------
    layout : str
        The layout read (``"pannuke"``, ``"conic"``, ``"folder"``, a release of whole images).
    names : list of str
        One per image: the tile's name in a stack (``tile00003``, :func:`~embedcache.datasets.base.stack_name`),
        or the file stem.
    instances : sequence of (H, W) ndarray of int32
        Instance ids, 0 = background; ids are as stored (not relabelled).
    types : sequence of (H, W) ndarray of int32, or None
        Type ids, 0 = background; None when the layout has no types.
    tissue : list of str, or None
        Tissue name per image (PanNuke ``types.npy``).
    class_names : dict of int to str, or None
        Type id to name when the layout defines it.
    """

    layout: str
    names: list[str]
    instances: Sequence[np.ndarray]
    types: Sequence[np.ndarray] | None
    tissue: list[str] | None
    class_names: dict[int, str] | None

    def __len__(self) -> int:
        return len(self.names)


def read_label_maps(path, format: str = "auto") -> LabelSet:
    """Read the label maps of a dataset or of a prediction folder.

    Parameters
    ----------
    path : str or Path
        A dataset as its release unzips (PanNuke, CoNIC, ...), or a folder
        of ``NAME_inst.png`` [+ ``NAME_type.png``] files (with or without
        the images).
    format : str
        ``auto`` or a registered layout.

    Examples
    --------
    >>> labels = read_label_maps("predictions/")          # doctest: +SKIP
    >>> labels.instances[0].shape                         # doctest: +SKIP
    (256, 256)
    """
    from embedcache.datasets.registry import detect_layout, get_layout

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    layout, root = detect_layout(path, labels_only=True) if format == "auto" else (get_layout(format), path)
    if not layout.has_labels:
        raise DataError(f"{path}: the {layout.name} layout holds no label maps to score against")
    if layout.name == "folder":  # also prediction folders: label maps without their images
        return _read_folder_labels(root)
    ds = layout.open(root, require_images=False) if layout.stack else layout.open(root)
    if not ds.has_labels:
        raise DataError(f"{root}: no label maps found ({layout.title} layout)")
    if layout.stack:
        maps = ds.labels(slice(None))
        # Stacks carry a type for every pixel: tiles without nuclei have types too (all 0).
        return LabelSet(layout=layout.name, names=[stack_name(i) for i in range(len(maps))],
                        instances=[m for m in maps[..., 0]], types=[m for m in maps[..., 1]],
                        tissue=ds.tissue, class_names=ds.class_names)
    maps = [ds.source_labels(k) for k in range(len(ds.tiles.source_names))]
    tissue = getattr(ds, "source_tissue", None)
    return LabelSet(layout=layout.name, names=list(ds.tiles.source_names), instances=[m[..., 0] for m in maps],
                    types=[m[..., 1] for m in maps] if ds.class_names else None, tissue=tissue,
                    class_names=ds.class_names)


def _read_folder_labels(path: Path) -> LabelSet:
    inst_files = sorted(p for p in path.iterdir() if p.suffix in LABEL_SUFFIXES and p.stem.endswith("_inst"))
    if not inst_files:
        raise DataError(f"{path}: no NAME_inst.png label maps found")
    names = [p.stem[: -len("_inst")] for p in inst_files]
    type_files = [find_label_file(path, n, "type") for n in names]
    if any(t is not None for t in type_files) and not all(t is not None for t in type_files):
        missing = next(n for n, t in zip(names, type_files) if t is None)
        raise DataError(f"{path}: {missing}_type.png is missing while other images have type maps")
    instances, types = [], []
    for p, t in zip(inst_files, type_files):
        inst = check_label_map(read_image_file(p), str(p))
        if inst.ndim != 2:
            raise DataError(f"{p}: an instance map must be 2-D (H, W), got shape {inst.shape}")
        instances.append(inst)
        if t is not None:
            tm = check_label_map(read_image_file(t), str(t))
            if tm.shape != inst.shape:
                raise DataError(f"{t}: type map of shape {tm.shape} does not match {p.name} {inst.shape}")
            types.append(tm)
    return LabelSet("folder", names, instances, types if types else None, None, None)
