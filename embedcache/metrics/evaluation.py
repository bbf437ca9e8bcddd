"""Evaluate a prediction against the truth under one protocol.

Reads both sides (PanNuke, CoNIC or folder layout), pairs their images,
checks the maps agree in shape, runs the protocol and returns the summary
and per-image rows, ready for JSON and CSV.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.datasets import LabelSet, read_label_maps
from embedcache.errors import ConfigError, DataError
from embedcache.files import plain_json, write_json
from embedcache.metrics.protocols import DEFAULT_RADIUS, PROTOCOLS, PUBLISHED_CLASSES

SUMMARY_KEYS = {
    "hovernet": ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1_detection", "type_f1"),
    "pannuke": ("bpq", "mpq", "bpq_images", "mpq_images", "per_class_pq"),
    "conic": ("bpq", "mpq_plus", "per_class_pq", "r2"),
}
"""Keys each protocol's summary carries at least (the published table's)."""


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    protocol : str
    summary : dict
        Dataset values (per-class ones keyed by type id), ``classes`` (the
        type ids scored) and ``class_names`` (those the layout names).
    rows : list of dict
        One per image, in the truth's order.
    """

    protocol: str
    summary: dict
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: NaN as None, type ids as strings, rows under ``images``."""
        return plain_json({**self.summary, "images": self.rows})

    def write_json(self, path) -> Path:
        return write_json(path, self.to_dict())

    def write_csv(self, path) -> Path:
        """One row per image; NaN written as ``nan``."""
        path = Path(path)
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        return path


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def _read(side: str, source, format: str) -> LabelSet:
    if isinstance(source, LabelSet):
        return source
    try:
        return read_label_maps(source, format)
    except DataError as exc:
        raise DataError(f"{side}: {exc}") from None


def _align(truth: LabelSet, pred: LabelSet) -> list[int]:
    """Index into ``pred`` of each truth image.

    Images pair by name. When one side is a tile stack (names are row
    numbers) and no name is shared, they pair by position.
    """
    stack = not (truth.layout == pred.layout == "folder")
    if stack and len(truth) != len(pred):
        raise DataError(f"truth has {len(truth)} images, prediction {len(pred)}")
    where = {name: i for i, name in enumerate(pred.names)}
    if stack and not any(n in where for n in truth.names):
        return list(range(len(truth)))
    missing = [n for n in truth.names if n not in where]
    if missing:
        raise DataError(f"prediction lacks {len(missing)} of the {len(truth)} truth images "
                        f"(first: {missing[0]!r}); names must match, e.g. NAME_inst.png for truth NAME")
    extra = sorted(set(pred.names) - set(truth.names))
    if extra:
        raise DataError(f"prediction has {len(extra)} images that the truth lacks (first: {extra[0]!r})")
    return [where[n] for n in truth.names]


def evaluate(truth, pred, protocol: str, *, format: str = "auto", radius: float = DEFAULT_RADIUS,
             classes: Sequence[int] | None = None) -> Evaluation:
    """Score predicted label maps against the truth under a published protocol.

    Parameters
    ----------
    truth, pred : str, Path or LabelSet
        Folders in the PanNuke layout (``masks.npy`` [+ ``types.npy``]), the
        CoNIC layout (``labels.npy``) or the folder layout
        (``NAME_inst.png`` [+ ``NAME_type.png``]); the two may differ.
    protocol : {"hovernet", "pannuke", "conic"}
    format : {"auto", "pannuke", "conic", "folder"}
        Layout of both sides; ``auto`` tells each side's from its files.
    radius : float
        Detection radius in pixels for ``hovernet``: 12 at 40x, 6 at 20x.
    classes : sequence of int, optional
        Type ids to score. Default: the protocol's own, whatever the data
        holds (PanNuke's five, CoNIC's six; HoVer-Net's code scores the
        types its truth holds). Another set is scored as asked, and the
        summary says it is not the published protocol (``published``
        False, ``note``).

    Returns
    -------
    Evaluation

    Raises
    ------
    ConfigError
        Unknown protocol, bad radius or classes.
    DataError
        Missing or unreadable files, images that do not pair up, maps of
        different shapes, labels that are not non-negative integers, or type
        maps missing where the protocol needs them.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    t = _read("truth", truth, format)
    p = _read("prediction", pred, format)
    order = _align(t, p)
    p_inst = [p.instances[i] for i in order]
    p_type = None if p.types is None else [p.types[i] for i in order]
    t_type, p_type = t.types, p_type
    if protocol == "hovernet":
        # Instance-only data: a side whose type maps hold no type carries none (no type metrics).
        t_type = t_type if t_type is not None and any(np.any(m) for m in t_type) else None
        p_type = p_type if p_type is not None and any(np.any(m) for m in p_type) else None
    else:
        for side, types, ls in (("truth", t.types, t), ("prediction", p_type, p)):
            if types is None:
                raise DataError(f"the {protocol} protocol scores classes, but the {side} ({ls.layout} layout) "
                                "has no type maps")
    published = PUBLISHED_CLASSES.get(protocol)
    kwargs = {"names": t.names, "classes": list(classes) if classes is not None else published}
    if protocol == "hovernet":
        kwargs["radius"] = radius
    if protocol == "pannuke":
        kwargs["tissue"] = t.tissue
    result = PROTOCOLS[protocol](t.instances, p_inst, t_type, p_type, **kwargs)
    rows = result.pop("images")
    result["classes"] = sorted(result.get("per_class_pq") or result.get("type_f1") or [])
    result["class_names"] = {c: t.class_names[c] for c in result["classes"] if c in (t.class_names or {})}
    result["published"] = classes is None or published is None or tuple(sorted(classes)) == published
    if not result["published"]:
        result["note"] = (f"classes {', '.join(map(str, result['classes']))} were asked for: not the published "
                          f"{protocol} protocol, which scores {', '.join(map(str, published))}")
    return Evaluation(protocol, result, rows)
