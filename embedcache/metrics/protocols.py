"""Protocol aggregators: the numbers of published nuclei tables.

Each protocol takes the label maps of a set of images (truth and
prediction, ids arbitrary) and returns a plain dict: the dataset summary
under the keys the published tables use, and one row per image under
``"images"``. Per-class values are keyed by type id.

=========  ==================================================  ===============================
protocol   reference code followed                             published tables
=========  ==================================================  ===============================
hovernet   vqdang/hover_net ``compute_stats.py`` +             CoNSeP, Kumar, CPM-15/17,
           ``metrics/stats_utils.py``                          (HoVer-Net paper, Table 2-4)
pannuke    TissueImageAnalytics/PanNuke-metrics ``run.py``     PanNuke (Gamper et al. 2020);
                                                               ``*_images``: CellViT's tables
conic      TissueImageAnalytics/CoNIC ``compute_stats.py`` +   CoNIC challenge (Lizard, 20x)
           ``metrics/stats_utils.py``, baseline counting
=========  ==================================================  ===============================

Empty cases are set per protocol (each docstring says how); a value that
the protocol leaves undefined is NaN, never an exception.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from embedcache.datasets import CONIC_CLASSES, PANNUKE_CLASSES
from embedcache.errors import ConfigError, DataError
from embedcache.metrics.core import Instances, PQStats, as_label_map, check_same_shape, class_overlap, match, overlap
from embedcache.metrics.detection import detection_f1, pair_centroids, r2_score, type_f1
from embedcache.metrics.jaccard import aji, aji_plus, foreground_dice

PANNUKE_TYPES = (1, 2, 3, 4, 5)
"""neoplastic, inflammatory, connective, dead, epithelial."""

CONIC_TYPES = (1, 2, 3, 4, 5, 6)
"""neutrophil, epithelial, lymphocyte, plasma, eosinophil, connective."""

PUBLISHED_CLASSES = {"pannuke": PANNUKE_TYPES, "conic": CONIC_TYPES}
"""The classes each protocol's reference code scores, whatever the data holds (HoVer-Net's: the truth's)."""

DEFAULT_RADIUS = 12.0
"""Detection radius in pixels at 40x; use 6 at 20x (:func:`detection_radius`)."""

CONIC_COUNT_CROP = 224
"""CoNIC counts nuclei in the central 224x224 of each 256x256 tile."""

CONIC_DQ_EPS = 1.0e-6
"""CoNIC adds 1e-6 to the DQ denominator (so empty gives 0, not 0/0)."""

INSTANCE_METRICS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


def detection_radius(magnification: str = "40x") -> float:
    """HoVer-Net's centroid pairing radius in pixels: 12 at 40x, 6 at 20x.

    >>> detection_radius("20x")
    6.0
    """
    if magnification not in ("40x", "20x"):
        raise ConfigError(f"magnification must be 40x or 20x, not {magnification!r}")
    return DEFAULT_RADIUS if magnification == "40x" else DEFAULT_RADIUS / 2


def auto_protocol(class_names: dict | None, has_types: bool) -> str:
    """``pannuke`` or ``conic`` for exactly their classes (with types on both sides), else ``hovernet``."""

    if has_types and class_names == PANNUKE_CLASSES:
        return "pannuke"
    if has_types and class_names == CONIC_CLASSES:
        return "conic"
    return "hovernet"


def nanmean(values) -> float:
    """Mean over the values that are not NaN; NaN (no warning) if none are."""
    a = np.asarray(values, np.float64)
    if a.size == 0 or np.all(np.isnan(a)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(a))


def _tiles(true_inst, pred_inst, true_type=None, pred_type=None, names=None, need_types=False):
    """Check the inputs of a protocol; yield (name, true, pred, true type, pred type)."""
    n = len(true_inst)
    if len(pred_inst) != n:
        raise DataError(f"truth has {n} images, prediction {len(pred_inst)}")
    if need_types and (true_type is None or pred_type is None):
        side = "truth" if true_type is None else "prediction"
        raise DataError(f"this protocol scores classes and the {side} has no type maps")
    for side, types in (("truth", true_type), ("prediction", pred_type)):
        if types is not None and len(types) != n:
            raise DataError(f"{side} has {n} instance maps but {len(types)} type maps")
    names = [str(i) for i in range(n)] if names is None else [str(x) for x in names]
    if len(names) != n:
        raise ConfigError(f"{len(names)} names given for {n} images")
    for i in range(n):
        t = Instances.from_map(true_inst[i], f"true instance map {names[i]!r}")
        p = Instances.from_map(pred_inst[i], f"predicted instance map {names[i]!r}")
        check_same_shape(t.shape, p.shape, f"truth and prediction of image {names[i]!r}")
        tt = None if true_type is None else as_label_map(true_type[i], f"true type map {names[i]!r}")
        pt = None if pred_type is None else as_label_map(pred_type[i], f"predicted type map {names[i]!r}")
        for what, m in (("true", tt), ("predicted", pt)):
            if m is not None:
                check_same_shape(t.shape, m.shape, f"{what} instance and type maps of image {names[i]!r}")
        yield names[i], t, p, tt, pt


def classes_present(type_maps) -> tuple[int, ...]:
    """Sorted non-zero type ids found in a sequence of type maps."""
    found: set[int] = set()
    for m in type_maps:
        found.update(int(v) for v in np.unique(np.asarray(m)) if v != 0)
    return tuple(sorted(found))


def _check_classes(classes) -> tuple[int, ...]:
    classes = tuple(int(c) for c in classes)
    if not classes or any(c <= 0 for c in classes) or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be one or more distinct positive type ids, got {list(classes)}")
    return classes


# ----------------------------------------------------------------------------
# HoVer-Net
# ----------------------------------------------------------------------------

def hovernet(true_inst: Sequence, pred_inst: Sequence, true_type: Sequence | None = None,
             pred_type: Sequence | None = None, *, radius: float | Sequence[float] = DEFAULT_RADIUS,
             classes: Sequence[int] | None = None, names: Sequence[str] | None = None) -> dict:
    """The HoVer-Net protocol (CoNSeP, Kumar, CPM tables).

    Follows ``compute_stats.py`` of vqdang/hover_net: instance ids made
    contiguous, then per image Dice (foreground), AJI, AJI+, DQ, SQ, PQ
    (match at IoU > 0.5, ``DQ = TP / (TP + FP/2 + FN/2)``,
    ``SQ = sum IoU / (TP + 1e-6)``), averaged over images. Detection:
    centroids paired per image by optimal assignment, kept within
    ``radius``; counts pooled over the dataset, ``F1_d = 2TP / (2TP + FP +
    FN)``. Types: each instance takes its majority type; per-type F1 as in
    ``run_nuclei_type_stat`` (see :func:`embedcache.metrics.core.type_f1`).

    Empty cases. An image with no instance on either side has no defined
    instance metric (the reference divides by zero): its row holds NaN and
    the means skip it (``n_images_scored`` counts the others). An image with
    instances on one side only scores 0 on every instance metric (the
    reference crashes when only the prediction is empty). Detection: an
    empty image adds nothing (the reference puts a dummy point of type 0 at
    (0, 0) in it; we do not). ``f1_detection`` is NaN when there are no
    nuclei anywhere; a type that appears nowhere has ``type_f1`` NaN.

    Parameters
    ----------
    true_inst, pred_inst : sequence of (H, W) array_like of int
        One instance map per image, ids arbitrary, 0 = background.
    true_type, pred_type : sequence of (H, W) array_like of int, optional
        Type maps; without both, ``type_f1`` is ``{}``.
    radius : float or sequence of float
        Detection radius in pixels: 12 at 40x (default), 6 at 20x; or one
        per image, for images of different resolutions (the same microns).
    classes : sequence of int, optional
        Type ids to score; default the non-zero instance types in the truth.
    names : sequence of str, optional
        Image names for the rows.

    Returns
    -------
    dict
        ``dice, aji, aji_plus, dq, sq, pq, f1_detection, type_accuracy,
        type_f1`` (dict by type id), ``detection`` (pooled tp/fp/fn),
        ``radius, n_images, n_images_scored, images`` (rows).
    """
    radii = [float(r) for r in radius] if np.ndim(radius) else [float(radius)] * len(true_inst)
    if len(radii) != len(true_inst):
        raise ConfigError(f"{len(radii)} detection radii for {len(true_inst)} images")
    if min(radii, default=1.0) <= 0:
        raise ConfigError(f"radius must be positive (pixels), got {min(radii)}")
    typed = true_type is not None and pred_type is not None
    rows = []
    paired_tt, paired_pt, unpaired_tt, unpaired_pt = [], [], [], []
    det = np.zeros(3, np.int64)
    for (name, t, p, tt, pt), r in zip(_tiles(true_inst, pred_inst, true_type, pred_type, names), radii):
        ov = overlap(t, p)
        st = match(ov).stats()
        dq, sq, pq = st.scores()
        pairs, ut, up = pair_centroids(t.centroids(), p.centroids(), r)
        det += (len(pairs), len(up), len(ut))
        rows.append({
            "name": name, "n_true": t.n, "n_pred": p.n,
            "dice": foreground_dice(ov), "aji": aji(ov), "aji_plus": aji_plus(ov),
            "dq": dq, "sq": sq, "pq": pq, "tp": st.tp, "fp": st.fp, "fn": st.fn,
            "det_tp": len(pairs), "det_fp": len(up), "det_fn": len(ut),
        })
        if typed:
            ttypes, ptypes = t.majority_type(tt), p.majority_type(pt)
            paired_tt.append(ttypes[pairs[:, 0]])
            paired_pt.append(ptypes[pairs[:, 1]])
            unpaired_tt.append(ttypes[ut])
            unpaired_pt.append(ptypes[up])
    out = {"protocol": "hovernet", "n_images": len(rows),
           "n_images_scored": sum(not np.isnan(r["pq"]) for r in rows)}
    for key in INSTANCE_METRICS:
        out[key] = nanmean([r[key] for r in rows])
    tp, fp, fn = (int(x) for x in det)
    out["f1_detection"] = detection_f1(tp, fp, fn)
    out["detection"] = {"tp": tp, "fp": fp, "fn": fn}
    out["radius"] = radii[0] if np.ndim(radius) == 0 else radii
    out["type_accuracy"] = float("nan")
    out["type_f1"] = {}
    if typed:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
        ptt, ppt, utt, upt = cat(paired_tt), cat(paired_pt), cat(unpaired_tt), cat(unpaired_pt)
        if ptt.size:
            out["type_accuracy"] = float(np.mean(ptt == ppt))
        if classes is None:
            classes = [int(c) for c in np.unique(np.concatenate([ptt, utt])) if c != 0]
        else:
            classes = _check_classes(classes)
        out["type_f1"] = {c: type_f1(ptt, ppt, utt, upt, c) for c in classes}
    out["images"] = rows
    return out


# ----------------------------------------------------------------------------
# PanNuke
# ----------------------------------------------------------------------------

def pannuke(true_inst: Sequence, pred_inst: Sequence, true_type: Sequence, pred_type: Sequence, *,
            tissue: Sequence[str] | None = None, classes: Sequence[int] = PANNUKE_TYPES,
            names: Sequence[str] | None = None) -> dict:
    """The PanNuke protocol (TissueImageAnalytics/PanNuke-metrics ``run.py``).

    Per image: bPQ on all nuclei; PQ of each class on the class's pieces of
    instances (a PanNuke mask channel). ``DQ = TP / (TP + FP/2 + FN/2)``,
    ``SQ = sum IoU / (TP + 1e-6)``. Per-image mPQ: mean of the class PQs
    that are defined. Dataset ``bpq``/``mpq``: mean over the images of each
    tissue, then over tissues (the paper's numbers); ``bpq_images`` /
    ``mpq_images``: mean over images without the tissue step (what CellViT
    and others report). ``per_class_pq``: mean over images.

    Empty cases (the reference's): a class with no true nucleus in an image
    is NaN there, whatever was predicted (its false positives are ignored);
    an image with no true nucleus has bPQ and mPQ NaN. NaNs are skipped by
    every mean; a mean over nothing is NaN (a class absent everywhere).
    Predictions empty where truth is not score 0. Without ``tissue`` all
    images form one group and ``bpq == bpq_images``.

    Parameters
    ----------
    true_inst, pred_inst, true_type, pred_type : sequence of (H, W) array_like of int
        Instance maps (ids unique across classes, arbitrary) and type maps.
    tissue : sequence of str, optional
        Tissue of each image (``types.npy``).
    classes : sequence of int
        Default the five PanNuke types 1..5.
    names : sequence of str, optional

    Returns
    -------
    dict
        ``bpq, mpq, bpq_images, mpq_images, per_class_pq`` (dict by type
        id), ``tissues`` (per tissue bpq, mpq, n_images), ``n_images,
        images`` (rows).
    """
    classes = _check_classes(classes)
    n = len(true_inst)
    if tissue is not None and len(tissue) != n:
        raise DataError(f"{len(tissue)} tissue names for {n} images")
    rows = []
    for name, t, p, tt, pt in _tiles(true_inst, pred_inst, true_type, pred_type, names, need_types=True):
        bpq = float("nan") if t.n == 0 else match(overlap(t, p)).stats().scores()[2]
        stats = class_overlap(t, tt, p, pt).stats(classes)
        row = {"name": name, "tissue": None, "n_true": t.n, "n_pred": p.n, "bpq": bpq}
        per_class = {c: (s.scores()[2] if s.tp + s.fn else float("nan")) for c, s in stats.items()}
        row["mpq"] = nanmean(list(per_class.values()))
        row.update({f"pq_{c}": v for c, v in per_class.items()})
        rows.append(row)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        row["tissue"] = "all" if tissue is None else str(tissue[i])
        groups.setdefault(row["tissue"], []).append(i)
    tissues = {
        name: {"bpq": nanmean([rows[i]["bpq"] for i in idx]),
               "mpq": nanmean([rows[i]["mpq"] for i in idx]), "n_images": len(idx)}
        for name, idx in sorted(groups.items())
    }
    return {
        "protocol": "pannuke", "n_images": len(rows),
        "bpq": nanmean([v["bpq"] for v in tissues.values()]),
        "mpq": nanmean([v["mpq"] for v in tissues.values()]),
        "bpq_images": nanmean([r["bpq"] for r in rows]),
        "mpq_images": nanmean([r["mpq"] for r in rows]),
        "per_class_pq": {c: nanmean([r[f"pq_{c}"] for r in rows]) for c in classes},
        "tissues": tissues,
        "images": rows,
    }


# ----------------------------------------------------------------------------
# CoNIC
# ----------------------------------------------------------------------------

def _central(shape, size):
    if size is None:
        return slice(None), slice(None)
    out = []
    for n in shape:
        s = min(size, n)
        start = int((n - s) * 0.5)
        out.append(slice(start, start + s))
    return tuple(out)


def count_nuclei(inst, type_map, classes, crop: int | None = CONIC_COUNT_CROP) -> dict[int, int]:
    """Nuclei of each class in the central ``crop`` x ``crop`` of a tile.

    An instance counts once, for its majority type, if any of its pixels is
    inside the crop (CoNIC baseline ``process_composition`` with
    ``cropping_center``). A tile smaller than ``crop`` is counted whole.

    Parameters
    ----------
    inst : (H, W) array_like of int, or Instances
    type_map : (H, W) array_like of int
    classes : sequence of int
    crop : int or None
        None counts the whole tile.

    Returns
    -------
    dict of int to int
    """
    inst = Instances.from_map(inst)
    types = inst.majority_type(type_map, window=_central(inst.shape, crop))
    return {c: int(np.sum(types == c)) for c in classes}


def conic(true_inst: Sequence, pred_inst: Sequence, true_type: Sequence, pred_type: Sequence, *,
          classes: Sequence[int] = CONIC_TYPES, names: Sequence[str] | None = None,
          count_crop: int | None = CONIC_COUNT_CROP) -> dict:
    """The CoNIC challenge protocol (TissueImageAnalytics/CoNIC).

    ``bpq``: PQ of each image (``get_pq``: ``DQ = TP / (TP + FP/2 + FN/2 +
    1e-6)``, ``SQ = sum IoU / (TP + 1e-6)``), plain mean over images.
    ``mpq_plus``: per class, TP, FP, FN and summed IoU of the class's pieces
    of instances added up over all images, PQ computed once from the sums
    with the same 1e-6 terms, then a plain mean over ``classes``.
    ``r2``: per class, R2 (scikit-learn's ``r2_score``) of per-image nucleus
    counts in the central 224x224 (:func:`count_nuclei`), mean over classes.

    Empty cases (the reference's, thanks to its 1e-6): an image with nothing
    on either side has bPQ 0, and so does either side alone; a class absent
    everywhere has PQ 0 and still counts in the mean. R2 of a class whose
    true count is the same in every image is 1 if predicted exactly, else
    0; with fewer than two images R2 is NaN (scikit-learn's rules).

    Parameters
    ----------
    true_inst, pred_inst, true_type, pred_type : sequence of (H, W) array_like of int
    classes : sequence of int
        Default the six CoNIC types 1..6.
    names : sequence of str, optional
    count_crop : int or None
        Side of the central window counted for R2; None counts whole tiles.

    Returns
    -------
    dict
        ``bpq, mpq_plus, per_class_pq`` (dict by type id), ``per_class``
        (pooled tp/fp/fn/iou_sum), ``r2, r2_per_class, n_images, images``.
    """
    classes = _check_classes(classes)
    rows, per_image = [], []
    for name, t, p, tt, pt in _tiles(true_inst, pred_inst, true_type, pred_type, names, need_types=True):
        st = match(overlap(t, p)).stats()
        stats = class_overlap(t, tt, p, pt).stats(classes)
        per_image.append([[s.tp, s.fp, s.fn, s.iou_sum] for s in stats.values()])
        row = {"name": name, "n_true": t.n, "n_pred": p.n, "bpq": st.scores(CONIC_DQ_EPS)[2],
               "tp": st.tp, "fp": st.fp, "fn": st.fn}
        true_counts = count_nuclei(t, tt, classes, count_crop)
        pred_counts = count_nuclei(p, pt, classes, count_crop)
        for c, s in stats.items():  # the pooled mPQ+ is a sum of these over images
            row.update({f"tp_{c}": s.tp, f"fp_{c}": s.fp, f"fn_{c}": s.fn, f"iou_{c}": s.iou_sum})
        row.update({f"count_true_{c}": v for c, v in true_counts.items()})
        row.update({f"count_pred_{c}": v for c, v in pred_counts.items()})
        rows.append(row)
    # Pooled like the reference: a float array summed over its image axis.
    totals = np.sum(np.array(per_image, dtype=float).reshape(-1, len(classes), 4), axis=0)
    per_class = {c: PQStats(int(tot[0]), int(tot[1]), int(tot[2]), float(tot[3])) for c, tot in zip(classes, totals)}
    per_class_pq = {c: s.scores(CONIC_DQ_EPS)[2] for c, s in per_class.items()}
    r2_per_class = {c: r2_score([r[f"count_true_{c}"] for r in rows], [r[f"count_pred_{c}"] for r in rows])
                    for c in classes}
    return {
        "protocol": "conic", "n_images": len(rows),
        "bpq": float(np.mean([r["bpq"] for r in rows])) if rows else float("nan"),
        "mpq_plus": float(np.mean(list(per_class_pq.values()))),
        "per_class_pq": per_class_pq,
        "per_class": {c: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "iou_sum": s.iou_sum} for c, s in per_class.items()},
        "r2": float(np.mean(list(r2_per_class.values()))),
        "r2_per_class": r2_per_class,
        "count_crop": count_crop,
        "images": rows,
    }


PROTOCOLS = {"hovernet": hovernet, "pannuke": pannuke, "conic": conic}
