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
from embedcache.datasets.base import stack_name, stack_row
from embedcache.errors import ConfigError, DataError
from embedcache.files import plain_json, write_json
from embedcache.metrics.protocols import (
    CONIC_COUNT_CROP, DEFAULT_RADIUS, PROTOCOLS, PUBLISHED_CLASSES, auto_protocol,
)

SUMMARY_KEYS = {
    "hovernet": ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1_detection", "type_f1"),
    "pannuke": ("bpq", "mpq", "bpq_images", "mpq_images", "per_class_pq"),
    "conic": ("bpq", "mpq_plus", "per_class_pq", "r2"),
}
"""Keys each protocol's summary carries at least (the published table's)."""

CONIC_PATCH = 256
"""The side of CoNIC's patches, whose central 224x224 its counts cover; a larger image is counted whole."""


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    protocol : str
    summary : dict
        Dataset values (per-class ones keyed by type id), ``classes`` (the
        type ids scored) and ``class_names`` (those the layout names).
        Also ``on`` (what was asked of :func:`evaluate`, None by default)
        and the names of the images without a counterpart on the other side
        (``truth_without_pred``, ``pred_without_truth``) with their counts
        (``n_truth_without_pred``, ``n_pred_without_truth``; 0 when the sets
        are equal).
    rows : list of dict
        One per scored image, in the truth's order.
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


ON = ("common", "truth", "pred")
"""What ``evaluate(on=...)`` scores when the two sides hold different images."""

ON_HINT = ("pass --on common (images in both), --on truth (every truth image; missing predictions count as empty) "
           "or --on pred (the predicted images; extra ones refused if truth lacks them)")


@dataclass(frozen=True)
class _Pairs:
    """Which images are scored: truth index and prediction index (None: no prediction, scored as empty)."""

    truth: list[int]
    pred: list[int | None]
    truth_without_pred: list[str]
    pred_without_truth: list[str]


def _images(names: list[str]) -> str:
    return "1 image" if len(names) == 1 else f"{len(names)} images"


def _align(truth: LabelSet, pred: LabelSet, on: str | None = None) -> _Pairs:
    """Pair the truth's images with the prediction's, in the truth's order.

    Images pair by name. When one side is a tile stack (names are row
    numbers) and no name is shared, they pair by position; two stacks pair
    row by row. ``on`` says what to score when the sets differ (see
    :func:`evaluate`); None refuses.
    """
    stack = not (truth.layout == pred.layout == "folder")
    both_stacks = truth.layout != "folder" and pred.layout != "folder"
    # Beside a stack, a folder's maps named by row (3_inst.png) are the stack's tile00003.
    alias = (lambda n: stack_name(stack_row(n)) if stack_row(n) is not None else n) if stack else (lambda n: n)
    where = {alias(name): i for i, name in enumerate(pred.names)}
    names = [alias(n) for n in truth.names]
    shared = any(n in where for n in names)
    if stack and len(truth) == len(pred) and (both_stacks or not shared):
        return _Pairs(list(range(len(truth))), list(range(len(truth))), [], [])
    if stack and len(truth) != len(pred) and (both_stacks or not shared):
        why = ("two tile stacks pair row by row; to score some rows, write the prediction as a folder of "
               "tile00000_inst.png (or 0_inst.png) named by the truth's rows and pass --on" if both_stacks else
               "and no image name in common (a stack's images are tile00000, tile00001, ...)")
        raise DataError(f"truth has {len(truth)} images, prediction {len(pred)}, {why}")
    missing = [n for n in names if n not in where]
    known = set(names)
    extra = [n for n in map(alias, pred.names) if n not in known]
    if not shared:
        raise DataError(f"truth and prediction have no image name in common (truth e.g. {names[0]!r}, "
                        f"prediction e.g. {pred.names[0]!r}); names must match, e.g. NAME_inst.png for truth NAME")
    if on is None and missing:
        raise DataError(f"prediction lacks {len(missing)} of the {len(truth)} truth images "
                        f"(first: {missing[0]!r}); names must match, e.g. NAME_inst.png for truth NAME; {ON_HINT}")
    if on is None and extra:
        raise DataError(f"prediction has {_images(extra)} that the truth lacks (first: {sorted(extra)[0]!r}); "
                        f"{ON_HINT}")
    if on == "pred" and extra:
        raise DataError(f"--on pred: prediction has {_images(extra)} that the truth lacks (first: {extra[0]!r}); "
                        "give their truth, or pass --on common to leave them out")
    if on == "truth":
        return _Pairs(list(range(len(truth))), [where.get(n) for n in names], missing, extra)
    scored = [k for k, n in enumerate(names) if n in where]
    return _Pairs(scored, [where[names[k]] for k in scored], missing, extra)


def _radii(truth, names: list[str], radius_um: float) -> list[float]:
    """The detection radius in pixels of each truth image: ``radius_um`` at the image's own resolution."""
    from embedcache.datasets.folder import IMAGE_SUFFIXES, LABEL_SUFFIXES
    from embedcache.datasets.resolution import image_mpps

    if isinstance(truth, LabelSet) or not Path(truth).is_dir():
        raise ConfigError("a radius in microns needs the truth as a folder (its images' resolutions)")
    folder = Path(truth)
    files = []
    for name in names:  # the image if it is there, else its instance map (either may record the resolution)
        found = [folder / f"{name}{s}" for s in IMAGE_SUFFIXES] + [folder / f"{name}_inst{s}" for s in LABEL_SUFFIXES]
        files.append(next((f for f in found if f.is_file()), folder / name))
    mpps, _ = image_mpps(files, names, folder)
    unknown = [n for n, m in zip(names, mpps) if m is None]
    if unknown:
        raise DataError(f"{folder}: a radius of {radius_um:g} um needs each image's microns per pixel; "
                        f"{len(unknown)} record none (first: {unknown[0]}): give them in {folder / 'mpp.csv'}")
    return [radius_um / m for m in mpps]


def evaluate(truth, pred, protocol: str, *, format: str = "auto", radius: float = DEFAULT_RADIUS,
             classes: Sequence[int] | None = None, on: str | None = None,
             radius_um: float | None = None) -> Evaluation:
    """Score predicted label maps against the truth under a published protocol.

    Parameters
    ----------
    truth, pred : str, Path or LabelSet
        Folders in the PanNuke layout (``masks.npy`` [+ ``types.npy``]), the
        CoNIC layout (``labels.npy``) or the folder layout
        (``NAME_inst.png`` [+ ``NAME_type.png``]); the two may differ.
    protocol : {"auto", "hovernet", "pannuke", "conic"}
        ``auto``: the truth's own, by its classes (PanNuke's five: pannuke;
        CoNIC's six, CoNIC and Lizard: conic; anything else, instances
        only or CoNSeP's classes: hovernet), as ``fit-decoder`` picks it.
        ``conic`` counts nuclei for R2 in the central 224x224 of its
        256x256 patches, and whole images (Lizard's) whole; the summary's
        ``count_crop`` says which (224 or None).
    format : {"auto", "pannuke", "conic", "folder"}
        Layout of both sides; ``auto`` tells each side's from its files.
    radius : float
        Detection radius in pixels for ``hovernet``: 12 at 40x, 6 at 20x.
    radius_um : float, optional
        Or the radius in microns, turned into pixels for each truth image
        by its own resolution (:func:`~embedcache.datasets.resolution.image_mpps`:
        file metadata, ``mpp.csv``): 3 um is 12 px at 0.25 um/px and 6 px
        at 0.5, the protocol's own radii at 40x and 20x. Truth given as a
        folder only.
    classes : sequence of int, optional
        Type ids to score. Default: the protocol's own, whatever the data
        holds (PanNuke's five, CoNIC's six; HoVer-Net's code scores the
        types its truth holds). Another set is scored as asked, and the
        summary says it is not the published protocol (``published``
        False, ``note``).
    on : {None, "common", "truth", "pred"}
        What to score when the prediction's images are not the truth's.
        None (default): refuse. ``common``: the images both sides hold.
        ``truth``: every truth image; one without a prediction is scored as
        an empty prediction (no nuclei), as the challenges' own code scores a
        missing prediction; predictions the truth lacks are ignored.
        ``pred``: the predicted images; a prediction whose truth is missing
        is refused. Each image is scored exactly as when the sets are equal;
        the summary records ``on`` and the names and counts left out
        (``truth_without_pred``, ``pred_without_truth``, ``n_...``). Two tile
        stacks pair row by row and must hold the same number of rows.

    Returns
    -------
    Evaluation

    Raises
    ------
    ConfigError
        Unknown protocol, bad radius or classes.
    DataError
        Missing or unreadable files, images that do not pair up (with
        ``on`` None, or a prediction without truth with ``on="pred"``, or no
        image in common), maps of
        different shapes, labels that are not non-negative integers, or type
        maps missing where the protocol needs them.
    """
    if protocol != "auto" and protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; use auto or one of {', '.join(PROTOCOLS)}")
    if on not in (None, *ON):
        raise ConfigError(f"unknown on={on!r}; use common, truth or pred (or None to refuse unpaired images)")
    t = _read("truth", truth, format)
    p = _read("prediction", pred, format)
    if protocol == "auto":
        protocol = auto_protocol(t.class_names, t.types is not None and p.types is not None)
    pairs = _align(t, p, on)
    t_inst = [t.instances[k] for k in pairs.truth]
    t_type = None if t.types is None else [t.types[k] for k in pairs.truth]
    t_names = [t.names[k] for k in pairs.truth]
    t_tissue = None if t.tissue is None else [t.tissue[k] for k in pairs.truth]
    # A truth image without a prediction (on="truth") is scored as an empty prediction: no nuclei, no types.
    p_inst = [np.zeros_like(t.instances[k], dtype=np.int32) if i is None else p.instances[i]
              for k, i in zip(pairs.truth, pairs.pred)]
    p_type = None if p.types is None else [np.zeros_like(t.instances[k], dtype=np.int32) if i is None
                                           else p.types[i] for k, i in zip(pairs.truth, pairs.pred)]
    if protocol == "hovernet":
        # Instance-only data: a side whose type maps hold no type carries none (no type metrics).
        t_type = t_type if t_type is not None and any(np.any(m) for m in t_type) else None
        p_type = p_type if p_type is not None and any(np.any(m) for m in p_type) else None
    else:
        for side, types, ls in (("truth", t_type, t), ("prediction", p_type, p)):
            if types is None:
                raise DataError(f"the {protocol} protocol scores classes, but the {side} ({ls.layout} layout) "
                                "has no type maps")
    published = PUBLISHED_CLASSES.get(protocol)
    kwargs = {"names": t_names, "classes": list(classes) if classes is not None else published}
    if protocol == "hovernet":
        kwargs["radius"] = radius if radius_um is None else _radii(truth, t_names, radius_um)
    if protocol == "pannuke":
        kwargs["tissue"] = t_tissue
    if protocol == "conic":
        # CoNIC counts the central 224x224 of its 256x256 patches so that nuclei cut by a patch's edge are not
        # counted; whole images larger than a patch (Lizard's) are counted whole, or R2 would see a corner.
        whole = any(max(np.shape(m)) > CONIC_PATCH for m in t_inst)
        kwargs["count_crop"] = None if whole else CONIC_COUNT_CROP
    result = PROTOCOLS[protocol](t_inst, p_inst, t_type, p_type, **kwargs)
    if protocol == "conic":
        result["count_crop"] = kwargs["count_crop"]
    rows = result.pop("images")
    result["classes"] = sorted(result.get("per_class_pq") or result.get("type_f1") or [])
    result["class_names"] = {c: t.class_names[c] for c in result["classes"] if c in (t.class_names or {})}
    result["published"] = classes is None or published is None or tuple(sorted(classes)) == published
    if not result["published"]:
        result["note"] = (f"classes {', '.join(map(str, result['classes']))} were asked for: not the published "
                          f"{protocol} protocol, which scores {', '.join(map(str, published))}")
    result["on"] = on
    result["n_truth_without_pred"] = len(pairs.truth_without_pred)
    result["n_pred_without_truth"] = len(pairs.pred_without_truth)
    result["truth_without_pred"] = pairs.truth_without_pred
    result["pred_without_truth"] = pairs.pred_without_truth
    return Evaluation(protocol, result, rows)
