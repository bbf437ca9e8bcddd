"""Checks of the folder layout: images and their label maps, from headers (or pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.check.report import DataReport, _add, _short
from embedcache.errors import DataError

PADDING_WARN = 0.5  # share of the encoded pixels that is padding beyond which check-data and extract warn


def _label_header(path: Path):
    """(mode or None, shape (h, w[, c]), dtype or None) of a label map without decoding it."""
    from PIL import Image

    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return None, tuple(int(s) for s in arr.shape), arr.dtype
    with Image.open(path) as im:
        w, h = im.size
        bands = len(im.getbands())
        return im.mode, (h, w) if bands == 1 else (h, w, bands), None


def _check_label(report: DataReport, p: Path, kind: str, image: Path, image_hw, pixels: bool) -> None:
    from embedcache.datasets.base import check_label_map
    from embedcache.datasets.folder import read_image_file

    what = "instance" if kind == "inst" else "type"
    ids = "instance ids" if kind == "inst" else "type ids"
    try:
        mode, shape, dtype = _label_header(p)
    except Exception as exc:  # PIL, numpy and the OS raise many types for a bad file
        report.problem(p, f"cannot read label map ({_short(exc)})")
        return
    if len(shape) == 3 and shape[-1] in (3, 4):
        coded = f"mode {mode}" if mode else f"shape {shape}"
        report.problem(p, f"an RGB-coded {what} map ({coded}, {shape[-1]} channels); save {ids} as a "
                          "single-channel 16-bit PNG (0 = background)")
        return
    if len(shape) != 2:
        coded = f"mode {mode}, " if mode else ""
        report.problem(p, f"{what} map of shape {shape} ({coded}expected height x width, one channel); save "
                          f"{ids} as a single-channel 16-bit PNG")
        return
    if mode == "1" or (dtype is not None and dtype.kind not in "iuf"):
        got = "a 1-bit (black and white) image" if mode == "1" else f"dtype {dtype}"
        report.problem(p, f"labels must be integers, got {got}; save {ids} as a single-channel 16-bit PNG")
        return
    if image_hw is not None and shape != tuple(image_hw):
        report.problem(p, f"{what} map is {shape[1]}x{shape[0]} px but its image {image.name} is "
                          f"{image_hw[1]}x{image_hw[0]} px (width x height); they must be the same size")
        return
    if pixels:
        try:
            raw = read_image_file(p)
            m = check_label_map(raw, str(p))
        except DataError as exc:
            _add(report, exc, p)
            return
        if kind == "inst" and m.size and not m.any():
            report.note(f"{p.name}: no nuclei (every instance id is 0)")
        elif kind == "inst":
            _check_scattered(report, p, m, raw.dtype)


def _check_scattered(report: DataReport, p: Path, inst: np.ndarray, dtype) -> None:
    """Ids reused for nuclei far apart: an 8-bit map whose ids wrapped past 255 is a problem, else a note."""
    from embedcache.datasets.base import scattered_ids

    reused = scattered_ids(inst)
    if not reused:
        return
    k, (r0, c0), (r1, c1) = reused[0]
    example = f"id {k} at x={c0}, y={r0} and at x={c1}, y={r1}"
    if dtype == np.uint8:
        report.problem(p, f"instance map looks wrapped: it is 8-bit and {len(reused)} id(s) mark nuclei far "
                          f"apart ({example}), as when more than 255 nuclei are saved in 8 bits; save the ids "
                          "as a single-channel 16-bit PNG")
    else:
        report.note(f"{p.name}: {len(reused)} instance id(s) mark pieces far apart ({example}); give each "
                    "nucleus its own id")


def _check_resolution(report: DataReport, path: Path, files: list[Path], mpp: float | None) -> None:
    """Each image's microns per pixel and where it comes from, for the summary (``resolution``)."""
    from embedcache.datasets.resolution import TABLE, image_mpps

    try:
        mpps, sources = image_mpps(files, [f.stem for f in files], path, mpp)
    except DataError as exc:
        report.problem(path / TABLE, str(exc).split(": ", 1)[-1])
        return
    groups: dict[tuple, int] = {}
    for m, source in zip(mpps, sources):
        groups[(m, source)] = groups.get((m, source), 0) + 1
    report.summary["resolution"] = [(m, source, n) for (m, source), n in sorted(groups.items(), key=str)]
    if len({m for m in mpps if m is not None}) > 1:
        report.note("the images have different resolutions: extract --working-mpp UM resamples them to one, so "
                    "the encoder sees one scale")


def _check_folder(report: DataReport, path: Path, pixels: bool, tile_size: int, overlap: int,
                  mpp: float | None = None) -> None:
    from PIL import Image

    from embedcache.datasets.folder import (IMAGE_SUFFIXES, LABEL_SUFFIXES, find_label_file, image_mode_problem,
                                            list_images, read_rgb_file)
    from embedcache.geometry import plan_tiles

    files = list_images(path)
    summary = report.summary
    summary.update(images=len(files), inst_maps=0, type_maps=0, min_size=None, max_size=None, pixels=0, tiles=0,
                   tile_size=tile_size, overlap=overlap)
    if not files:
        report.problem(path, f"no images found ({', '.join(IMAGE_SUFFIXES)})")
    inst = [find_label_file(path, f.stem, "inst") for f in files]
    types = [find_label_file(path, f.stem, "type") for f in files]
    labelled = sum(p is not None for p in inst)
    summary.update(inst_maps=labelled, type_maps=sum(t is not None and i is not None for i, t in zip(inst, types)))
    sizes, conversions = [], {}
    padded = {"pixels": 0.0, "mostly": 0}  # padding in tiles' worth of pixels; tiles mostly padding
    for f, inst_path, type_path in zip(files, inst, types):
        hw = None
        try:
            with Image.open(f) as im:
                mode, (w, h) = im.mode, im.size
                frames = getattr(im, "n_frames", 1)
        except Exception as exc:  # PIL, numpy and the OS raise many types for a bad file
            report.problem(f, f"cannot read image ({_short(exc)})")
        else:
            hw = (h, w)
            sizes.append((w, h))
            offsets = plan_tiles(hw, (tile_size, tile_size), overlap)
            summary["tiles"] += len(offsets)
            for r, c in offsets:  # what share of each tile is image, not padding
                share = min(tile_size, h - r) * min(tile_size, w - c) / tile_size ** 2
                padded["pixels"] += 1 - share
                padded["mostly"] += share < 0.5
            problem, conversion = image_mode_problem(mode)
            if frames > 1:
                report.note(f"{f.name}: holds {frames} frames (pages); only the first is read")
            if problem:
                report.problem(f, problem)
                conversion = None
            elif pixels:
                try:
                    read_rgb_file(f)
                except DataError as exc:
                    _add(report, exc, f)
                    conversion = None
            if conversion:
                conversions.setdefault(conversion, []).append(f.name)
        if inst_path is None and 0 < labelled:
            others = f"{labelled} other image{' has' if labelled == 1 else 's have'} one"
            report.problem(f, f"no {f.stem}_inst.png (or .tif, .tiff, .npy) label map while {others}; give every "
                              "image its NAME_inst.png, or none")
        for p, kind in ((inst_path, "inst"), (type_path, "type")):
            if p is not None and (kind == "inst" or inst_path is not None):
                _check_label(report, p, kind, f, hw, pixels)
    if labelled == 0 and any(p is not None for p in types):
        report.note("type maps without instance maps are ignored: the dataset is read without labels")
    for mode, names in conversions.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        many = len(names) != 1
        checked = (f"{'all are' if many else 'it is'} fully opaque" if pixels else
                   f"{'they' if many else 'it'} must be fully opaque (transparent pixels are refused; --pixels checks)")
        report.note(f"{len(names)} {mode} image{'s' if many else ''} ({shown}): converted to RGB by dropping the "
                    f"4th channel; {checked}")
    if summary["tiles"] and padded["pixels"] > PADDING_WARN * summary["tiles"]:
        small = sum(w < tile_size or h < tile_size for w, h in sizes)
        report.note(f"padding dominates: {padded['pixels'] / summary['tiles']:.1%} of the pixels extract will "
                    f"encode are padding, {padded['mostly']} of {summary['tiles']} tiles are mostly padding "
                    f"({small} of {len(sizes)} images are smaller than a {tile_size}-px tile); give a smaller "
                    "--tile-size, or larger images")
    if sizes:
        by_area = sorted(sizes, key=lambda s: (s[0] * s[1], s))
        summary.update(min_size=by_area[0], max_size=by_area[-1], pixels=sum(w * h for w, h in sizes))
    _check_resolution(report, path, files, mpp)

    # Label maps the reader never reads: beside no image, or shadowed by another suffix.
    stems = {f.stem for f in files}
    seen: dict[str, list[Path]] = {}
    for p in sorted(path.iterdir()):
        if not p.is_file() or not p.stem.endswith(("_inst", "_type")):
            continue
        if p.suffix not in LABEL_SUFFIXES:
            if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",):
                report.note(f"{p.name} is not read: label maps are {', '.join(LABEL_SUFFIXES)} (lower case)"
                            + ("; JPEG changes the ids" if p.suffix.lower() in (".jpg", ".jpeg") else ""))
            continue
        base = p.stem[:-5]
        seen.setdefault(p.stem, []).append(p)
        if base not in stems:
            report.problem(p, f"label map without an image: no {base}.png (or .tif, .tiff, .jpg, .jpeg) beside it")
    for stem, group in seen.items():
        if len(group) > 1 and stem[:-5] in stems:
            used = min(group, key=lambda q: LABEL_SUFFIXES.index(q.suffix))
            others = ", ".join(q.name for q in group if q != used)
            report.note(f"{used.name} is read; {others} ignored")
