"""Check of a published release of whole images (CoNSeP, CPM-17, Lizard, MoNuSeg, CytoDArk0): its reader opens
it (names, headers, the release's own tables); with ``pixels`` every label file is read and its nuclei counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.datasets.check.report import DataReport, _add
from embedcache.errors import DataError


def _check_release(report: DataReport, path: Path, pixels: bool, tile_size: int, overlap: int,
                   release: dict | None = None, **_) -> None:
    from embedcache.datasets.registry import get_layout

    try:
        ds = get_layout(report.layout).open(path, tile_size=tile_size, overlap=overlap, **(release or {}))
    except DataError as exc:
        _add(report, exc, path)
        return
    for problem in getattr(ds, "header_problems", lambda: [])():
        _add(report, problem, path)
    s = report.summary
    s.update(release=True, images=len(ds.tiles.source_names), tiles=ds.n_tiles, tile_size=tile_size,
             overlap=overlap, labels=_labels_line(ds))
    if ds.folds is not None and ds.fold_names:
        codes, counts = np.unique(ds.folds, return_counts=True)
        s["splits"] = {ds.fold_names[c]: int(n) for c, n in zip(codes, counts)}
    if ds.stain != "H&E":
        report.note(f"{ds.stain} stain, not H&E: stain variants and H&E stain normalisation do not apply")
    if pixels and ds.has_labels:
        nuclei: dict[str, int] = {}
        names = ds.class_names or {}
        for k in range(len(ds.tiles.source_names)):
            try:
                maps = ds.source_labels(k)
            except DataError as exc:
                _add(report, exc, path)
                continue
            inst, typ = maps[..., 0], maps[..., 1]
            ids, first = np.unique(inst, return_index=True)
            for t in typ.ravel()[first[ids > 0]]:
                key = names.get(int(t), "untyped" if t == 0 else f"type {int(t)}")
                nuclei[key] = nuclei.get(key, 0) + 1
        s["nuclei"] = nuclei


def _labels_line(ds) -> str:
    if not ds.has_labels:
        return "none"
    classes = f"{len(ds.class_names)} classes ({', '.join(ds.class_names.values())})" if ds.class_names \
        else "instances only"
    return f"{ds.layout} label files, {classes}"
