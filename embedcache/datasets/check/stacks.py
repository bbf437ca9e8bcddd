"""Checks of the PanNuke and CoNIC stacks: headers (shapes, dtypes, counts), or every tile's values."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from embedcache.datasets.check.report import DataReport, _add, _short
from embedcache.errors import DataError

MAX_TILE_PROBLEMS = 5  # per stack file: more bad tiles are counted in one further problem


def _npy(report: DataReport, path: Path, required: bool):
    from embedcache.datasets.stacks import load_npy

    try:
        return load_npy(path, required=required)
    except DataError as exc:
        _add(report, exc, path)
        return None


def _tiles_of(a) -> str:
    return f"{a.shape[0]} tiles of {a.shape[2]}x{a.shape[1]}" if a.ndim >= 3 else f"shape {a.shape}"


def _images_header(report: DataReport, images, file: Path) -> bool:
    """Shape and dtype of an images stack as the readers take it; False when refused."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        report.problem(file, f"expected images of shape (N, H, W, 3), got {images.shape}")
        return False
    if images.dtype.kind not in "iuf":
        report.problem(file, f"pixels must be numbers, got dtype {images.dtype}")
        return False
    if images.dtype != np.uint8:
        report.note(f"{file.name}: {images.dtype} pixels, rounded to uint8 when read"
                    + ("" if report.pixels else " (values checked with --pixels)"))
    if images.shape[-1] == 4:
        report.note(f"{file.name}: the 4th channel is dropped when read (it must be fully opaque)")
    return True


def _labels_dtype(report: DataReport, arr, file: Path) -> bool:
    if arr.dtype.kind not in "iuf":
        report.problem(file, f"labels must be integers, got dtype {arr.dtype}")
        return False
    return True


class _TileProblems:
    """Bad tiles of one stack file: the first few as problems, the rest counted in one more."""

    def __init__(self, report: DataReport, file: Path):
        self.report, self.file, self.n = report, file, 0

    def add(self, i: int, exc: DataError) -> None:
        self.n += 1
        if self.n <= MAX_TILE_PROBLEMS:
            text = str(exc)
            head = f"tile {i}: "
            self.report.problem(self.file, text if text.startswith(head) else head + text)

    def close(self) -> None:
        if self.n > MAX_TILE_PROBLEMS:
            self.report.problem(self.file, f"{self.n - MAX_TILE_PROBLEMS} more tiles with problems "
                                           f"({self.n} in all)")


def _scan(report: DataReport, arr, file: Path, check, block: int = 64) -> None:
    """Run ``check(tile, i)`` (raising DataError) over every tile of a stack, reading ``block`` tiles at a time."""
    bad = _TileProblems(report, file)
    for start in range(0, len(arr), block):
        chunk = np.asarray(arr[start:start + block])
        for j, tile in enumerate(chunk):
            try:
                check(tile, start + j)
            except DataError as exc:
                bad.add(start + j, exc)
    bad.close()


def _check_image_pixels(tile, i):
    from embedcache.datasets.base import to_uint8_rgb

    to_uint8_rgb(tile, f"tile {i}")


def _check_pannuke(report: DataReport, path: Path, pixels: bool) -> None:
    from embedcache.datasets.base import PANNUKE_CLASSES, check_label_map
    from embedcache.datasets.pannuke import pannuke_folds

    try:
        folds = pannuke_folds(path)
    except DataError as exc:
        _add(report, exc, path)
        return
    s = report.summary
    s.update(images=0, tile_shape=None, pixels=0, tiles=0, folds=len(folds), labels="masks.npy, none readable")
    if not folds:
        report.problem(path, "no masks.npy found (PanNuke: Fold N/masks/foldN/masks.npy, or images.npy, "
                             "masks.npy, types.npy per fold)")
        return
    shapes, dtypes = set(), set()
    split_tiles, nuclei = {}, {}
    for k, fold in enumerate(folds):
        images = _npy(report, fold.images, required=True)
        masks = _npy(report, fold.masks, required=True)
        types = _npy(report, fold.types, required=False)
        images_ok = images is not None and _images_header(report, images, fold.images)
        masks_ok = masks is not None
        if masks_ok and (masks.ndim != 4 or masks.shape[-1] != 6):
            report.problem(fold.masks, f"expected shape (N, H, W, 6), got {masks.shape}")
            masks_ok = False
        masks_ok = masks_ok and _labels_dtype(report, masks, fold.masks)
        if images_ok and masks_ok and images.shape[:3] != masks.shape[:3]:
            home = Path(os.path.commonpath([fold.images, fold.masks]))
            report.problem(home, f"{fold.images.relative_to(home)} holds {_tiles_of(images)} px but "
                                 f"{fold.masks.relative_to(home)} {_tiles_of(masks)} px; they must agree tile for tile")
        if types is not None and masks_ok and len(types) != len(masks):
            report.problem(fold.types, f"{len(types)} tissue names for {len(masks)} tiles in masks.npy")
        if masks_ok:
            split_tiles[f"fold{fold.number or k + 1}"] = int(masks.shape[0])
        ref = images if images_ok else (masks if masks_ok else None)
        if ref is not None:
            shapes.add(tuple(int(v) for v in ref.shape[1:3]))
            s["images"] += int(ref.shape[0])
            s["pixels"] += int(np.prod(ref.shape[:3]))
        if masks_ok:
            dtypes.add(str(masks.dtype))
        if pixels and images_ok:
            _scan(report, images, fold.images, _check_image_pixels)
        if pixels and masks_ok:
            def count(tile, i):
                check_label_map(tile, f"tile {i}")
                for c, name in PANNUKE_CLASSES.items():  # channel c - 1 holds the instances of class c
                    ids = np.unique(tile[..., c - 1])
                    nuclei[name] = nuclei.get(name, 0) + int((ids > 0).sum())

            _scan(report, masks, fold.masks, count)
    if len(shapes) > 1:
        report.problem(path, f"folds have different tile sizes {sorted(shapes)}")
    s["tile_shape"] = next(iter(shapes)) if len(shapes) == 1 else None
    s["tiles"] = s["images"]
    s["stack"] = True
    s["splits"] = split_tiles
    if pixels:
        s["nuclei"] = nuclei
    s["labels"] = f"masks.npy ({', '.join(sorted(dtypes)) or 'none readable'}), 5 PanNuke classes"
    if shapes and s["images"] == 0:
        report.problem(path, "the dataset has no tiles")


def _check_conic(report: DataReport, path: Path, pixels: bool) -> None:
    from embedcache.datasets.base import check_label_map
    from embedcache.datasets.conic import conic_class_names as _conic_class_names

    images = _npy(report, path / "images.npy", required=True)
    labels = _npy(report, path / "labels.npy", required=False)
    s = report.summary
    images_ok = images is not None and _images_header(report, images, path / "images.npy")
    labels_ok = labels is not None
    if labels_ok and (labels.ndim != 4 or labels.shape[-1] != 2):
        report.problem(path / "labels.npy", f"expected shape (N, H, W, 2) [instance, class], got {labels.shape}")
        labels_ok = False
    labels_ok = labels_ok and _labels_dtype(report, labels, path / "labels.npy")
    if images_ok and labels_ok and images.shape[:3] != labels.shape[:3]:
        report.problem(path, f"images.npy holds {_tiles_of(images)} px but labels.npy {_tiles_of(labels)} px; "
                             "they must agree tile for tile")
    _check_patch_info(report, path, images if images_ok else (labels if labels_ok else None))
    try:
        classes = _conic_class_names(path / "counts.csv")
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        report.problem(path / "counts.csv", f"cannot read ({_short(exc)})")
        classes = None
    ref = images if images_ok else None
    s.update(images=int(ref.shape[0]) if ref is not None else 0,
             tile_shape=tuple(int(v) for v in ref.shape[1:3]) if ref is not None else None,
             pixels=int(np.prod(ref.shape[:3])) if ref is not None else 0, folds=1,
             labels=(f"labels.npy ({labels.dtype}), " + (f"{len(classes)} CoNIC classes" if classes
                                                         else "class names unknown (no counts.csv naming them)"))
             if labels_ok else "none (no labels.npy)")
    s["tiles"] = s["images"]
    s["stack"] = True
    if ref is not None and len(ref) == 0:
        report.problem(path, "the dataset has no tiles")
    if pixels and images_ok:
        _scan(report, images, path / "images.npy", _check_image_pixels)
    if pixels and labels_ok:
        top = max(classes) if classes else None
        found: set[int] = set()

        nuclei: dict[str, int] = {}

        def check(tile, i):
            m = check_label_map(tile, f"tile {i}")
            used = set(np.unique(m[..., 1]).tolist())
            found.update(used)
            if top is not None and max(used) > top:
                raise DataError(f"tile {i}: type id {max(used)} outside the classes 0..{top}")
            ids, first = np.unique(m[..., 0], return_index=True)
            for t in m[..., 1].ravel()[first[ids > 0]].tolist():
                name = (classes or {}).get(t, f"type {t}" if t else "untyped")
                nuclei[name] = nuclei.get(name, 0) + 1

        _scan(report, labels, path / "labels.npy", check)
        s["nuclei"] = nuclei
        if found:
            report.note(f"labels.npy: type ids used: {', '.join(str(t) for t in sorted(found))}")


def _check_patch_info(report: DataReport, path: Path, ref) -> None:
    """CoNIC ``patch_info.csv``: one name per patch; the summary gets the source images and the challenge split."""
    from embedcache.datasets.conic import challenge_split, patch_image, read_patch_info

    info = path / "patch_info.csv"
    if ref is None or not info.exists():
        return
    try:
        images = [patch_image(p) for p in read_patch_info(info, len(ref))]
    except DataError as exc:
        _add(report, exc, info)
        return
    names, source = np.unique(np.asarray(images), return_inverse=True)
    report.summary["sources"] = len(names)
    try:
        folds = challenge_split(list(names))[source]
    except ValueError:
        report.note("patch_info.csv: too few images per cohort for the challenge's split")
        return
    report.summary["splits"] = {"train": int((folds == 0).sum()), "val": int((folds == 1).sum())}
