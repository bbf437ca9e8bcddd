"""Slow, obvious nuclei metrics, and synthetic tiles to check the fast ones on.

Not part of the package: the tests compare ``embedcache.metrics`` with these
on random label maps, and ``benchmarks/bench_metrics.py`` times both.

Written the way the published reference codes work (HoVer-Net
``stats_utils.py``, PanNuke ``run.py``, CoNIC ``compute_stats.py``): ids
relabelled one instance at a time, a full-image boolean mask per instance, a
loop over the instances each one touches. Same definitions and empty-case
rules as :mod:`embedcache.metrics` (documented there), independently coded.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

NAN = float("nan")


# ----------------------------------------------------------------------------
# Per-tile metrics, one instance at a time
# ----------------------------------------------------------------------------

def slow_relabel(label_map):
    label_map = np.asarray(label_map)
    out = np.zeros(label_map.shape, np.int64)
    for new, old in enumerate(i for i in np.unique(label_map) if i != 0):
        out[label_map == old] = new + 1
    return out


def slow_tables(true, pred):
    """Dense (T, P) intersection and union tables, and instance areas."""
    true, pred = slow_relabel(true), slow_relabel(pred)
    n_true, n_pred = int(true.max(initial=0)), int(pred.max(initial=0))
    inter = np.zeros((n_true, n_pred))
    union = np.zeros((n_true, n_pred))
    true_area = np.array([(true == i).sum() for i in range(1, n_true + 1)], dtype=np.int64)
    pred_area = np.array([(pred == j).sum() for j in range(1, n_pred + 1)], dtype=np.int64)
    for i in range(1, n_true + 1):
        t_mask = true == i
        for j in np.unique(pred[t_mask]):
            if j == 0:
                continue
            p_mask = pred == j
            inter[i - 1, j - 1] = np.logical_and(t_mask, p_mask).sum()
            union[i - 1, j - 1] = np.logical_or(t_mask, p_mask).sum()
    return inter, union, true_area, pred_area


def slow_pq_counts(true, pred):
    """(tp, fp, fn, iou_sum) at IoU > 0.5."""
    inter, union, true_area, pred_area = slow_tables(true, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = np.nonzero(iou > 0.5)
    tp = len(rows)
    return tp, len(pred_area) - tp, len(true_area) - tp, float(np.sum(iou[rows, cols]))


def slow_pq_scores(tp, fp, fn, iou_sum, dq_eps=0.0):
    denom = (tp + 0.5 * fp + 0.5 * fn) + dq_eps
    if denom == 0:
        return NAN, NAN, NAN
    dq = tp / denom
    sq = iou_sum / (tp + 1.0e-6)
    return dq, sq, dq * sq


def _aji_from_pairs(inter, union, true_area, pred_area, pairs):
    if len(true_area) == 0 and len(pred_area) == 0:
        return NAN
    total_inter, total_union = 0.0, 0.0
    used_true, used_pred = set(), set()
    for i, j in pairs:
        total_inter += inter[i, j]
        total_union += union[i, j]
        used_true.add(i)
        used_pred.add(j)
    for i, area in enumerate(true_area):
        if i not in used_true:
            total_union += area
    for j, area in enumerate(pred_area):
        if j not in used_pred:
            total_union += area
    return total_inter / total_union


def slow_aji(true, pred):
    inter, union, true_area, pred_area = slow_tables(true, pred)
    ranking = inter / (union + 1.0e-6)
    pairs = []
    for i in range(len(true_area)):
        if len(pred_area) and ranking[i].max() > 0:
            pairs.append((i, int(np.argmax(ranking[i]))))
    return _aji_from_pairs(inter, union, true_area, pred_area, pairs)


def slow_aji_plus(true, pred):
    inter, union, true_area, pred_area = slow_tables(true, pred)
    ranking = inter / (union + 1.0e-6)
    rows, cols = linear_sum_assignment(-ranking)
    pairs = [(i, j) for i, j in zip(rows, cols) if ranking[i, j] > 0]
    return _aji_from_pairs(inter, union, true_area, pred_area, pairs)


def slow_dice(true, pred):
    t, p = np.asarray(true) > 0, np.asarray(pred) > 0
    total = t.sum() + p.sum()
    return NAN if total == 0 else float(2.0 * np.logical_and(t, p).sum() / total)


def slow_centroids(label_map):
    label_map = slow_relabel(label_map)
    out = []
    for i in range(1, int(label_map.max(initial=0)) + 1):
        rows, cols = np.nonzero(label_map == i)
        out.append((rows.mean(), cols.mean()))
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def slow_majority_types(label_map, type_map):
    label_map, type_map = slow_relabel(label_map), np.asarray(type_map)
    out = []
    for i in range(1, int(label_map.max(initial=0)) + 1):
        kinds, counts = np.unique(type_map[label_map == i], return_counts=True)
        ranked = sorted(zip(kinds.tolist(), counts.tolist()), key=lambda kc: -kc[1])
        nonzero = [k for k, _ in ranked if k != 0]
        out.append(nonzero[0] if nonzero else 0)
    return np.array(out, dtype=np.int64)


def slow_pair_points(a, b, radius):
    if len(a) == 0 or len(b) == 0:
        return [], list(range(len(a))), list(range(len(b)))
    dist = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            dist[i, j] = np.sqrt(((a[i] - b[j]) ** 2).sum())
    rows, cols = linear_sum_assignment(dist)
    pairs = [(i, j) for i, j in zip(rows, cols) if dist[i, j] <= radius]
    unpaired_a = [i for i in range(len(a)) if i not in {p[0] for p in pairs}]
    unpaired_b = [j for j in range(len(b)) if j not in {p[1] for p in pairs}]
    return pairs, unpaired_a, unpaired_b


def slow_r2(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if len(y_true) < 2:
        return NAN
    ss_res = np.sum((y_true - y_pred) ** 2)
    ss_tot = np.sum((y_true - np.mean(y_true)) ** 2)
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return float(1.0 - ss_res / ss_tot)


def _nanmean(values):
    values = [v for v in values if not np.isnan(v)]
    return NAN if not values else float(np.mean(values))


def _class_map(inst, types, c):
    return np.where(np.asarray(types) == c, np.asarray(inst), 0)


# ----------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------

def slow_hovernet(true_inst, pred_inst, true_type=None, pred_type=None, radius=12.0, classes=None):
    rows = []
    paired_t, paired_p, lone_t, lone_p = [], [], [], []
    for k, (t, p) in enumerate(zip(true_inst, pred_inst)):
        tp, fp, fn, iou_sum = slow_pq_counts(t, p)
        dq, sq, pq = slow_pq_scores(tp, fp, fn, iou_sum)
        pairs, ut, up = slow_pair_points(slow_centroids(t), slow_centroids(p), radius)
        rows.append({"dice": slow_dice(t, p), "aji": slow_aji(t, p), "aji_plus": slow_aji_plus(t, p),
                     "dq": dq, "sq": sq, "pq": pq, "tp": tp, "fp": fp, "fn": fn,
                     "det_tp": len(pairs), "det_fp": len(up), "det_fn": len(ut)})
        if true_type is not None:
            tt, pt = slow_majority_types(t, true_type[k]), slow_majority_types(p, pred_type[k])
            paired_t += [tt[i] for i, _ in pairs]
            paired_p += [pt[j] for _, j in pairs]
            lone_t += [tt[i] for i in ut]
            lone_p += [pt[j] for j in up]
    out = {key: _nanmean([r[key] for r in rows]) for key in ("dice", "aji", "aji_plus", "dq", "sq", "pq")}
    tp_d, fp_d, fn_d = (sum(r[k] for r in rows) for k in ("det_tp", "det_fp", "det_fn"))
    out["f1_detection"] = NAN if 2 * tp_d + fp_d + fn_d == 0 else 2 * tp_d / (2 * tp_d + fp_d + fn_d)
    out["type_f1"] = {}
    if true_type is not None:
        if classes is None:
            classes = sorted({int(x) for x in paired_t + lone_t} - {0})
        for c in classes:
            tp_c = sum(1 for a, b in zip(paired_t, paired_p) if a == c and b == c)
            fp_c = sum(1 for a, b in zip(paired_t, paired_p) if a != c and b == c)
            fn_c = sum(1 for a, b in zip(paired_t, paired_p) if a == c and b != c)
            denom = 2 * tp_c + 2 * fp_c + 2 * fn_c + lone_p.count(c) + lone_t.count(c)
            out["type_f1"][c] = NAN if denom == 0 else 2 * tp_c / denom
    out["images"] = rows
    return out


def slow_pannuke(true_inst, pred_inst, true_type, pred_type, tissue=None, classes=(1, 2, 3, 4, 5)):
    rows = []
    for k, (t, p) in enumerate(zip(true_inst, pred_inst)):
        bpq = NAN if not np.any(t) else slow_pq_scores(*slow_pq_counts(t, p))[2]
        row = {"bpq": bpq}
        for c in classes:
            tc, pc = _class_map(t, true_type[k], c), _class_map(p, pred_type[k], c)
            row[f"pq_{c}"] = NAN if not np.any(tc) else slow_pq_scores(*slow_pq_counts(tc, pc))[2]
        row["mpq"] = _nanmean([row[f"pq_{c}"] for c in classes])
        row["tissue"] = "all" if tissue is None else tissue[k]
        rows.append(row)
    tissues = sorted({r["tissue"] for r in rows})
    by_tissue = {name: [r for r in rows if r["tissue"] == name] for name in tissues}
    return {
        "bpq": _nanmean([_nanmean([r["bpq"] for r in rs]) for rs in by_tissue.values()]),
        "mpq": _nanmean([_nanmean([r["mpq"] for r in rs]) for rs in by_tissue.values()]),
        "bpq_images": _nanmean([r["bpq"] for r in rows]),
        "mpq_images": _nanmean([r["mpq"] for r in rows]),
        "per_class_pq": {c: _nanmean([r[f"pq_{c}"] for r in rows]) for c in classes},
        "images": rows,
    }


def slow_count(inst, types, classes, crop=224):
    inst, types = np.asarray(inst), np.asarray(types)
    h, w = inst.shape
    sh, sw = min(crop, h), min(crop, w)
    r0, c0 = int((h - sh) * 0.5), int((w - sw) * 0.5)
    inst, types = inst[r0:r0 + sh, c0:c0 + sw], types[r0:r0 + sh, c0:c0 + sw]
    found = slow_majority_types(inst, types)
    return {c: int(sum(1 for x in found if x == c)) for c in classes}


def slow_conic(true_inst, pred_inst, true_type, pred_type, classes=(1, 2, 3, 4, 5, 6)):
    rows, stats = [], []
    for k, (t, p) in enumerate(zip(true_inst, pred_inst)):
        row = {"bpq": slow_pq_scores(*slow_pq_counts(t, p), dq_eps=1.0e-6)[2]}
        stats.append([list(slow_pq_counts(_class_map(t, true_type[k], c), _class_map(p, pred_type[k], c)))
                      for c in classes])
        for side, inst, types in (("true", t, true_type[k]), ("pred", p, pred_type[k])):
            for c, n in slow_count(inst, types, classes).items():
                row[f"count_{side}_{c}"] = n
        rows.append(row)
    totals = np.sum(np.array(stats, dtype=float), axis=0)
    per_class_pq = {c: slow_pq_scores(*tot, dq_eps=1.0e-6)[2] for c, tot in zip(classes, totals)}
    r2 = {c: slow_r2([r[f"count_true_{c}"] for r in rows], [r[f"count_pred_{c}"] for r in rows]) for c in classes}
    return {
        "bpq": float(np.mean([r["bpq"] for r in rows])),
        "mpq_plus": float(np.mean(list(per_class_pq.values()))),
        "per_class_pq": per_class_pq,
        "r2": float(np.mean(list(r2.values()))),
        "r2_per_class": r2,
        "images": rows,
    }


SLOW_PROTOCOLS = {"hovernet": slow_hovernet, "pannuke": slow_pannuke, "conic": slow_conic}


# ----------------------------------------------------------------------------
# Synthetic tiles
# ----------------------------------------------------------------------------

def _disc(canvas, centre, radius, value):
    h, w = canvas.shape
    r0, r1 = max(0, int(centre[0] - radius)), min(h, int(centre[0] + radius) + 2)
    c0, c1 = max(0, int(centre[1] - radius)), min(w, int(centre[1] + radius) + 2)
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    inside = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2
    canvas[r0:r1, c0:c1][inside] = value


def make_tile_pair(rng, size=256, n_nuclei=(50, 100), n_types=5, max_id=5000):
    """A true and a predicted tile with sparse ids and per-pixel types.

    Nuclei are discs (radius 4-9 px) that may touch and occlude each other;
    a few carry a second type on part of their pixels. The prediction shifts
    and resizes most nuclei, drops some, merges some neighbours, and adds
    false positives, with a type error on one nucleus in five.

    Returns
    -------
    true_inst, true_type, pred_inst, pred_type : (size, size) ndarray of int32
    """
    n = int(rng.integers(n_nuclei[0], n_nuclei[1] + 1))
    centres = rng.uniform(0, size, (n, 2))
    radii = rng.uniform(4, 9, n)
    types = rng.integers(1, n_types + 1, n)
    true_ids = rng.choice(np.arange(1, max_id), n, replace=False)
    true_inst = np.zeros((size, size), np.int32)
    true_type = np.zeros((size, size), np.int32)
    for k in range(n):
        _disc(true_inst, centres[k], radii[k], true_ids[k])
        _disc(true_type, centres[k], radii[k], types[k])
        if rng.random() < 0.1:  # part of the nucleus with another type
            _disc(true_type, centres[k] + radii[k] / 2, radii[k] / 2, rng.integers(1, n_types + 1))
    true_type[true_inst == 0] = 0
    pred_inst = np.zeros_like(true_inst)
    pred_type = np.zeros_like(true_type)
    pred_ids = rng.choice(np.arange(1, max_id), n + 20, replace=False)
    for k in range(n):
        if rng.random() < 0.1:
            continue
        pid = pred_ids[k - 1] if k and rng.random() < 0.08 else pred_ids[k]  # merged with the previous
        centre = centres[k] + rng.normal(0, 1.5, 2)
        radius = max(2.0, radii[k] + rng.normal(0, 1.2))
        kind = types[k] if rng.random() < 0.8 else rng.integers(1, n_types + 1)
        _disc(pred_inst, centre, radius, pid)
        _disc(pred_type, centre, radius, kind)
    for k in range(n, n + int(rng.integers(3, 15))):
        centre, radius = rng.uniform(0, size, 2), rng.uniform(3, 8)
        _disc(pred_inst, centre, radius, pred_ids[k])
        _disc(pred_type, centre, radius, rng.integers(1, n_types + 1))
    pred_type[pred_inst == 0] = 0
    return true_inst, true_type, pred_inst, pred_type


def make_dataset(seed, n_tiles, size=256, n_nuclei=(50, 100), n_types=5):
    """Lists (true_inst, true_type, pred_inst, pred_type) of ``n_tiles`` tiles."""
    rng = np.random.default_rng(seed)
    tiles = [make_tile_pair(rng, size, n_nuclei, n_types) for _ in range(n_tiles)]
    return tuple(list(x) for x in zip(*tiles))


def differences(fast, slow, path="") -> list[str]:
    """Where two results differ: every key of ``slow`` is looked up in ``fast``.

    Floats must be equal to the last bit (NaN equals NaN).
    """
    if isinstance(slow, dict):
        out = []
        for key, value in slow.items():
            if key not in fast:
                out.append(f"{path}.{key}: missing")
            else:
                out += differences(fast[key], value, f"{path}.{key}")
        return out
    if isinstance(slow, list):
        if len(fast) != len(slow):
            return [f"{path}: {len(fast)} items vs {len(slow)}"]
        return [d for i, (a, b) in enumerate(zip(fast, slow)) for d in differences(a, b, f"{path}[{i}]")]
    both_nan = isinstance(fast, float) and isinstance(slow, float) and np.isnan(fast) and np.isnan(slow)
    return [] if both_nan or fast == slow else [f"{path}: {fast!r} vs {slow!r}"]


def degrade(inst_maps, type_maps, seed=0, shift=(2, -1), drop=8):
    """A prediction made from true maps: shifted by ``shift`` px, one nucleus in ``drop`` removed."""
    rng = np.random.default_rng(seed)
    pred, pred_types = [], []
    for m, t in zip(inst_maps, type_maps):
        p = np.roll(m, shift, axis=(0, 1)).copy()
        ids = [i for i in np.unique(p) if i]
        p[np.isin(p, rng.choice(ids, len(ids) // drop, replace=False))] = 0
        pred.append(p)
        pred_types.append(np.where(p > 0, np.roll(t, shift, axis=(0, 1)), 0))
    return pred, pred_types
