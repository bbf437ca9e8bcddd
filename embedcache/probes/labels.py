"""What a probe predicts: one label per tile, from a store or a CSV file.

``tissue`` (the tissue names a store recorded, e.g. PanNuke's types.npy),
``type`` (the dominant nucleus type of each tile), ``counts`` (nuclei per
type, a regression) or a CSV file of ``tile,label`` (:func:`read_csv_labels`,
the one reader of tile labels: ``retrieval`` reads the same files).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.errors import DataError

CLASSIFICATION, REGRESSION, SEGMENTATION = "classification", "regression", "segmentation"
NO_NUCLEI = "no nuclei"
LABEL_CHUNK = 64  # tiles of label maps read at once


@dataclass(frozen=True)
class TileLabels:
    """One label per tile.

    Attributes
    ----------
    source : str
        ``tissue``, ``type``, ``counts`` or the CSV path.
    task : {"classification", "regression"}
    y : ndarray
        ``(n,)`` int class codes, or ``(n, T)`` float targets.
    names : list of str
        Class names (index = code), or target names.
    groups : list of str, or None
        The unit splits keep together, when the labels file gives one per
        tile (a ``group`` column: patient, centre); None: the source image.
    """

    source: str
    task: str
    y: np.ndarray
    names: list[str]
    groups: list[str] | None = None

    def describe(self) -> dict:
        out = {"source": self.source, "task": self.task, "names": self.names}
        if self.task == CLASSIFICATION:
            out["counts"] = np.bincount(self.y, minlength=len(self.names)).tolist()
        return out


def _encode(values: Sequence[str], source: str, groups: list[str] | None = None) -> TileLabels:
    names, y = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    labels = TileLabels(source, CLASSIFICATION, y.astype(np.int64), [str(n) for n in names], groups)
    check_labels(labels)
    return labels


def check_labels(labels: TileLabels) -> None:
    """Refuse labels a probe cannot learn from: one class, or constant targets."""
    if labels.task == CLASSIFICATION:
        if len(np.unique(labels.y)) < 2:
            only = labels.names[int(labels.y[0])] if len(labels.y) else "none"
            raise DataError(f"labels {labels.source!r}: every one of the {len(labels.y)} tiles has the class "
                            f"{only!r}; a probe needs at least two classes")
    elif np.all(np.ptp(labels.y, axis=0) == 0):
        raise DataError(f"labels {labels.source!r}: the targets are the same for every tile; nothing to predict")


def nuclei_per_type(inst: np.ndarray, types: np.ndarray, n_types: int) -> np.ndarray:
    """Nuclei of each type in each tile, ``(n, n_types) ndarray of int64``.

    A nucleus takes the majority type of its pixels (type 0 = unknown is
    counted like any other).

    Parameters
    ----------
    inst, types : (n, H, W) ndarray of int
        Instance ids (0 = background) and type ids.
    """
    out = np.zeros((len(inst), n_types), dtype=np.int64)
    for t in range(len(inst)):
        fg = inst[t] > 0
        if not fg.any():
            continue
        _, ids = np.unique(inst[t][fg], return_inverse=True)
        votes = np.zeros((ids.max() + 1, n_types), dtype=np.int64)
        np.add.at(votes, (ids, np.clip(types[t][fg], 0, n_types - 1)), 1)
        out[t] = np.bincount(votes.argmax(axis=1), minlength=n_types)
    return out


def _store_counts(store) -> tuple[np.ndarray, list[str]]:
    if not store.has_labels:
        raise DataError(f"{store.path}: the store has no label maps; use --labels tissue or a CSV file")
    names = store.class_names or {}
    chunks = []
    for start in range(0, store.n_tiles, LABEL_CHUNK):
        inst, types = store.labels(slice(start, min(start + LABEL_CHUNK, store.n_tiles)))
        chunks.append(nuclei_per_type(inst, types, max(max(names, default=0), int(types.max())) + 1))
    n_types = max(c.shape[1] for c in chunks)
    counts = np.concatenate([np.pad(c, ((0, 0), (0, n_types - c.shape[1]))) for c in chunks])
    return counts, [names.get(c, f"type {c}") for c in range(n_types)]


def dominant_type(counts: np.ndarray, names: Sequence[str]) -> list[str]:
    """The most frequent nucleus type of each tile (ties: lowest id); ``no nuclei`` when it has none.

    Type 0 (unknown) is left out unless a tile has only unknown nuclei.
    """
    known = counts.copy()
    known[:, 0] = np.where(counts[:, 1:].sum(axis=1) > 0, 0, counts[:, 0])
    return [names[int(row.argmax())] if row.any() else NO_NUCLEI for row in known]


def read_csv_labels(path, n_tiles: int, tile_names: Sequence[str] | None = None,
                    every_tile: bool = True, groups: bool = False):
    """Labels of tiles from a CSV file of tile id and label.

    The header is optional: a first row whose id is not a tile id is one.
    Columns named ``tile`` and ``label`` are used when the header has them,
    else the first two; a ``group`` column (patient, centre) may follow. A
    tile id is the store's row number (0-based), or the name of a source
    image when ``tile_names`` gives each tile's: a row naming a source labels
    (and groups) every tile of that source, e.g. all tiles cut from
    ``image02``. A number below ``n_tiles`` is always a row number. A row
    may name a tile whose source is named too when the two agree. A tile
    listed without a label, or not listed, has the label ``""``.

    Parameters
    ----------
    tile_names : sequence of str, optional
        The source image name of every tile (names repeat when an image gave
        several tiles).
    every_tile : bool
        Refuse a file that leaves any tile without a label (probes need one
        for every tile; retrieval uses the labelled ones).
    groups : bool
        Return ``(labels, groups)``, groups None without a ``group`` column.

    Raises
    ------
    DataError
        Unreadable file, unknown tile ids or names, a row number listed
        twice, a source listed twice with different labels or groups, a row
        number whose label or group differs from its source's row, or
        (``every_tile``) tiles without a label.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label file; --labels takes 'tissue' or a CSV file of tile,label")
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2:
        raise DataError(f"{path}: expected a header and rows of 'tile,label'")
    names = [str(n) for n in (tile_names or [])]
    tiles_of: dict[str, list[int]] = {}
    for t, name in enumerate(names):
        tiles_of.setdefault(name, []).append(t)

    def is_row(key: str) -> bool:
        return key.isdigit() and int(key) < n_tiles

    header = [h.strip().lower() for h in rows[0]]
    first = rows[0][0].strip()
    has_header = "tile" in header or "label" in header or (
        not first.isdigit() and first not in tiles_of)
    i_id = header.index("tile") if "tile" in header else 0
    i_label = header.index("label") if "label" in header else (1 if i_id == 0 else 0)
    i_group = header.index("group") if has_header and "group" in header else None
    by_row: dict[int, tuple[str, str, int]] = {}  # tile -> (label, group, line)
    by_source: dict[str, tuple[str, str, int]] = {}  # source name -> (label, group, line)
    unknown = []
    for line, row in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if len(row) <= max(i_id, i_label):
            raise DataError(f"{path}:{line}: expected {max(i_id, i_label) + 1} columns, got {len(row)}")
        key, value = row[i_id].strip(), row[i_label].strip()
        group = row[i_group].strip() if i_group is not None and len(row) > i_group else ""
        if is_row(key):
            if int(key) in by_row:
                raise DataError(f"{path}:{line}: tile {key!r} is listed twice")
            by_row[int(key)] = (value, group, line)
        elif key in tiles_of:
            if key in by_source and by_source[key][:2] != (value, group):
                old, old_group, old_line = by_source[key]
                what = (f"labels {old!r} (line {old_line}) and {value!r}" if old != value
                        else f"groups {old_group!r} (line {old_line}) and {group!r}")
                raise DataError(f"{path}:{line}: image {key!r} is listed twice with different {what}; "
                                "an image's tiles take one label and group: keep one row")
            by_source.setdefault(key, (value, group, line))
        else:
            unknown.append(key)
    if unknown:
        known = list(tiles_of)
        hint = ""
        if known:
            hint = (f" or source image names ({', '.join(map(repr, known[:3]))}"
                    + (f", ... {len(known)} in all)" if len(known) > 3 else ")"))
        raise DataError(f"{path}: {len(unknown)} unknown tile id(s), e.g. {', '.join(map(repr, unknown[:3]))}; "
                        f"ids are row numbers 0..{n_tiles - 1}" + hint)
    labels: dict[int, str] = {}
    group_of: dict[int, str] = {}
    for name, (value, group, _) in by_source.items():
        for t in tiles_of[name]:
            labels[t], group_of[t] = value, group
    for t, (value, group, line) in sorted(by_row.items(), key=lambda item: item[1][2]):
        if t in labels:
            name = names[t]
            source_value, source_group, source_line = by_source[name]
            if value != source_value:
                raise DataError(f"{path}:{line}: tile {t} has the label {value!r} but its image {name!r} has "
                                f"{source_value!r} (line {source_line}); give the tile or its image one label")
            if group and source_group and group != source_group:
                raise DataError(f"{path}:{line}: tile {t} is in group {group!r} but its image {name!r} is in "
                                f"{source_group!r} (line {source_line}); an image belongs to one group")
            group_of[t] = group or source_group
        else:
            labels[t], group_of[t] = value, group
    missing = [t for t in range(n_tiles) if not labels.get(t)]
    if missing and every_tile:
        raise DataError(f"{path}: labels missing for {len(missing)} of {n_tiles} tiles "
                        f"(e.g. {', '.join(map(str, missing[:5]))}); give every tile a label")
    out = [labels.get(t, "") for t in range(n_tiles)]
    if not groups:
        return out
    if i_group is None:
        return out, None
    ungrouped = [t for t in range(n_tiles) if labels.get(t) and not group_of.get(t)]
    if ungrouped:
        raise DataError(f"{path}: the group column is empty for {len(ungrouped)} labelled tile(s) "
                        f"(e.g. {ungrouped[0]}); give every tile its group or drop the column")
    return out, [group_of.get(t, "") for t in range(n_tiles)]


def store_tile_names(store) -> list[str] | None:
    """The source image name of every tile (what a CSV may name tiles by), or None if not recorded."""
    if not store.source_names:
        return None
    return [str(store.source_names[s]) for s in np.asarray(store.tile_info()["source"])]


def tile_labels(store, spec: str) -> TileLabels:
    """Labels of every tile of a store: ``tissue``, ``type``, ``counts`` or a CSV path."""
    if spec == "tissue":
        tissue = store.tissue
        if tissue is None:
            raise DataError(f"{store.path}: the dataset has no tissue labels (PanNuke types.npy); "
                            "use --labels type, counts or a CSV file")
        missing = [k for k, t in enumerate(tissue) if not t]
        if missing:
            raise DataError(f"{store.path}: tissue labels missing for {len(missing)} of {len(tissue)} tiles "
                            f"(e.g. {', '.join(map(str, missing[:5]))})")
        return _encode(tissue, spec)
    if spec in ("type", "counts"):
        counts, names = _store_counts(store)
        if spec == "type":
            if counts[:, 1:].sum() == 0:
                raise DataError(f"{store.path}: the store's nuclei have no types (instance labels only), so "
                                "--labels type has nothing to tell apart; use --labels counts (nuclei per tile) "
                                "or a CSV file")
            return _encode(dominant_type(counts, names), spec)
        keep = [c for c in range(len(names)) if c > 0 or counts[:, 0].any()]
        labels = TileLabels(spec, REGRESSION, counts[:, keep].astype(np.float64), [names[c] for c in keep])
        check_labels(labels)
        return labels
    labels, groups = read_csv_labels(spec, store.n_tiles, store_tile_names(store), groups=True)
    return _encode(labels, str(spec), groups)


def split_groups(store, labels: TileLabels) -> tuple[np.ndarray, str]:
    """The unit every split keeps whole, one code per tile, and its name.

    The labels file's ``group`` column when it has one (tiles of one source
    image must share a group), else the source image.

    Raises
    ------
    DataError
        A group column with a single group, or one that splits an image.
    """
    source = np.asarray(store.tile_info()["source"])
    if labels.groups is None:
        return source, "source image"
    names, codes = np.unique(np.asarray(labels.groups, dtype=str), return_inverse=True)
    names = [str(n) for n in names]
    if len(names) < 2:
        raise DataError(f"{labels.source}: the group column holds one group ({names[0]!r}): nothing to split "
                        "on; give each patient or centre its own group, or drop the column")
    for s in np.unique(source):
        found = np.unique(codes[source == s])
        if len(found) > 1:
            image = store.source_names[s] if s < len(store.source_names) else str(s)
            raise DataError(f"{labels.source}: the tiles of image {image!r} are in groups {names[found[0]]!r} and "
                            f"{names[found[1]]!r}; an image belongs to one group (patient, centre)")
    return codes.astype(np.int64), "group"
