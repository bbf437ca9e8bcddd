"""Checks of slides: each opens and records (or is given) its microns per pixel."""

from __future__ import annotations

from pathlib import Path

from embedcache.datasets.check.report import DataReport, _add
from embedcache.errors import ConfigError, DataError


def _check_slides(report: DataReport, path: Path, tile_size: int, mpp: float | None, tile_mpp: float) -> None:
    from embedcache.datasets.wsi import SLIDE_SUFFIXES, list_slides, open_slide, working_shape

    if mpp is not None and not mpp > 0:
        raise ConfigError(f"mpp must be positive, got {mpp}")
    if not tile_mpp > 0:
        raise ConfigError(f"tile_mpp must be positive, got {tile_mpp}")
    files = list_slides(path)
    s = report.summary
    s.update(slides=len(files), opened=0, with_mpp=0, min_size=None, max_size=None, pixels=0, tiles=0,
             tile_size=tile_size, tile_mpp=tile_mpp)
    if not files:
        report.problem(path, f"no slides found ({', '.join(SLIDE_SUFFIXES)})")
        return
    sizes = []
    for f in files:
        try:
            slide = open_slide(f)
        except DataError as exc:
            _add(report, exc, f)
            continue
        try:
            dims, recorded = list(slide.dims), slide.mpp
        finally:
            slide.close()
        s["opened"] += 1
        (h, w) = dims[0]
        sizes.append((w, h))
        used = mpp or recorded
        if recorded is not None:
            s["with_mpp"] += 1
        if used is None:
            report.problem(f, "the slide does not record its microns per pixel; pass --mpp "
                              "(level-0 um/px, e.g. 0.25 at 40x, 0.5 at 20x)")
            scale = "no microns per pixel"
        else:
            wh, ww = working_shape((h, w), used, tile_mpp)
            s["tiles"] += (wh // tile_size) * (ww // tile_size)
            scale = (f"{used:g} um/px" + (" (--mpp)" if mpp else "")
                     + (f", the file records {recorded:g}" if mpp and recorded and recorded != mpp else ""))
        report.note(f"{f.name}: {w}x{h} px at level 0, {len(dims)} level{'s' if len(dims) != 1 else ''}, {scale}")
    if sizes:
        by_area = sorted(sizes, key=lambda v: (v[0] * v[1], v))
        s.update(min_size=by_area[0], max_size=by_area[-1], pixels=sum(a * b for a, b in sizes))
