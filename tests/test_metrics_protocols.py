"""embedcache.metrics.protocols: hand-computed datasets, empty cases,
agreement with the slow reference, and the real he-nuclei-3 tiles."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_metrics as ref  # noqa: E402
from embedcache.errors import ConfigError, DataError  # noqa: E402
from embedcache.metrics.protocols import conic, count_nuclei, hovernet, pannuke  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EPS = 1.0e-6
S = 1 / (1 + EPS)  # SQ (and PQ) of one perfect match: 1 / (TP + 1e-6)


def square(canvas, r, c, value, side=2):
    canvas[r:r + side, c:c + side] = value
    return canvas


def blank(n=8):
    return np.zeros((n, n), np.int32)


def is_nan(x):
    return isinstance(x, float) and math.isnan(x)


# ----------------------------------------------------------------------------
# HoVer-Net
# ----------------------------------------------------------------------------

def hovernet_dataset():
    # image a: two nuclei found exactly, the second with the wrong type
    ta, tta = square(square(blank(), 0, 0, 11), 4, 4, 30), square(square(blank(), 0, 0, 1), 4, 4, 2)
    pa, pta = square(square(blank(), 0, 0, 7), 4, 4, 9), square(square(blank(), 0, 0, 1), 4, 4, 1)
    # image b: one nucleus (type 2), nothing predicted
    tb, ttb = square(blank(), 2, 2, 5), square(blank(), 2, 2, 2)
    pb, ptb = blank(), blank()
    # image c: nothing on either side
    return [ta, tb, blank()], [pa, pb, blank()], [tta, ttb, blank()], [pta, ptb, blank()]


def test_hovernet_by_hand():
    ti, pi, tt, pt = hovernet_dataset()
    r = hovernet(ti, pi, tt, pt, names=["a", "b", "c"])
    # per image: a scores 1 (SQ 2 / (2 + 1e-6)), b scores 0, c has no nuclei: NaN, skipped
    assert r["n_images"] == 3 and r["n_images_scored"] == 2
    assert r["dice"] == r["aji"] == r["aji_plus"] == r["dq"] == (1 + 0) / 2
    assert r["sq"] == r["pq"] == (2 / (2 + EPS) + 0) / 2
    assert [row["name"] for row in r["images"]] == ["a", "b", "c"]
    assert is_nan(r["images"][2]["pq"]) and is_nan(r["images"][2]["aji"])
    # detection pooled: a 2 pairs, b 1 unpaired truth: F1 = 4 / (4 + 0 + 1)
    assert r["detection"] == {"tp": 2, "fp": 0, "fn": 1}
    assert r["f1_detection"] == 4 / 5
    # pairs (true, pred) types: (1, 1), (2, 1); unpaired truth: [2]
    # type 1: TP 1, FP 1 -> 2 / (2 + 2) ; type 2: FN 1, FN_d 1 -> 0 / (2 + 1)
    assert r["type_f1"] == {1: 0.5, 2: 0.0}
    assert r["type_accuracy"] == 0.5


def test_hovernet_radius_and_classes():
    t = [square(blank(32), 0, 0, 1)]
    p = [square(blank(32), 8, 0, 1)]  # centroid 8 px away, no overlap
    assert hovernet(t, p, radius=12)["f1_detection"] == 1.0
    assert hovernet(t, p, radius=6)["f1_detection"] == 0.0
    typed = hovernet(t, p, t, p, classes=[1, 4])
    assert typed["type_f1"][1] == 1.0 and is_nan(typed["type_f1"][4])  # type 4 appears nowhere
    assert hovernet(t, p)["type_f1"] == {}  # no type maps


def test_hovernet_empty_cases():
    e = [blank(), blank()]
    r = hovernet(e, e, e, e)
    assert r["n_images_scored"] == 0
    assert all(is_nan(r[k]) for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1_detection"))
    assert r["type_f1"] == {}
    nuc = [square(blank(), 1, 1, 4)]
    for t, p in ((nuc, [blank()]), ([blank()], nuc)):
        one_sided = hovernet(t, p)
        assert all(one_sided[k] == 0.0 for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "f1_detection"))


# ----------------------------------------------------------------------------
# PanNuke
# ----------------------------------------------------------------------------

def pannuke_dataset():
    imgs = []
    # 1 (Breast): class 1 found, class 2 missed, a class 3 false positive
    t, tt = square(square(blank(), 0, 0, 1), 4, 4, 2), square(square(blank(), 0, 0, 1), 4, 4, 2)
    p, pt = square(square(blank(), 0, 0, 5), 4, 0, 6), square(square(blank(), 0, 0, 1), 4, 0, 3)
    imgs.append((t, tt, p, pt))
    # 2 (Breast) and 4 (Colon): one class 1 nucleus found exactly
    one = (square(blank(), 2, 2, 9), square(blank(), 2, 2, 1))
    imgs.append(one + one)
    # 3 (Colon): no true nucleus, one predicted
    imgs.append((blank(), blank(), square(blank(), 1, 1, 3), square(blank(), 1, 1, 4)))
    imgs.append(one + one)
    ti, tt, pi, pt = (list(x) for x in zip(*imgs))
    return ti, pi, tt, pt, ["Breast", "Breast", "Colon", "Colon"]


def test_pannuke_by_hand():
    ti, pi, tt, pt, tissue = pannuke_dataset()
    r = pannuke(ti, pi, tt, pt, tissue=tissue)
    rows = r["images"]
    # image 1: bPQ: TP 1, FP 1, FN 1 -> DQ 1/2, SQ S; class 1 PQ S, class 2 PQ 0, class 3 NaN (no truth)
    assert rows[0]["bpq"] == 0.5 * S
    assert (rows[0]["pq_1"], rows[0]["pq_2"]) == (S, 0.0) and is_nan(rows[0]["pq_3"])
    assert rows[0]["mpq"] == S / 2
    # image 3: no true nucleus: everything NaN, its false positive ignored
    assert is_nan(rows[2]["bpq"]) and is_nan(rows[2]["mpq"]) and is_nan(rows[2]["pq_4"])
    # Breast: bPQ (S/2 + S) / 2 = 0.75 S; Colon: S (image 3 skipped); then over tissues
    assert r["tissues"]["Breast"]["bpq"] == pytest.approx(0.75 * S, abs=1e-15)
    assert r["tissues"]["Colon"] == {"bpq": S, "mpq": S, "n_images": 2}
    assert r["bpq"] == pytest.approx((0.75 * S + S) / 2, abs=1e-15)
    assert r["mpq"] == pytest.approx((0.75 * S + S) / 2, abs=1e-15)
    # without the tissue step: (S/2 + S + S) / 3 over the three images with truth
    assert r["bpq_images"] == pytest.approx(2.5 * S / 3, abs=1e-15)
    assert r["mpq_images"] == pytest.approx(2.5 * S / 3, abs=1e-15)
    # per class, mean over images: class 1 S in images 1, 2, 4; class 2 only image 1 (0)
    assert r["per_class_pq"][1] == S and r["per_class_pq"][2] == 0.0
    assert all(is_nan(r["per_class_pq"][c]) for c in (3, 4, 5))


def test_pannuke_without_tissue_is_one_group():
    ti, pi, tt, pt, _ = pannuke_dataset()
    r = pannuke(ti, pi, tt, pt)
    assert list(r["tissues"]) == ["all"]
    assert r["bpq"] == r["bpq_images"] and r["mpq"] == r["mpq_images"]


def test_pannuke_empty_cases():
    e = [blank()]
    r = pannuke(e, e, e, e)
    assert all(is_nan(r[k]) for k in ("bpq", "mpq", "bpq_images", "mpq_images"))
    nuc, typ = [square(blank(), 1, 1, 4)], [square(blank(), 1, 1, 2)]
    truth_empty = pannuke(e, nuc, e, typ)  # predictions where there is no truth: ignored
    assert is_nan(truth_empty["bpq"]) and is_nan(truth_empty["per_class_pq"][2])
    pred_empty = pannuke(nuc, e, typ, e)
    assert pred_empty["bpq"] == 0.0 and pred_empty["mpq"] == 0.0 and pred_empty["per_class_pq"][2] == 0.0


# ----------------------------------------------------------------------------
# CoNIC
# ----------------------------------------------------------------------------

def conic_dataset():
    t1, tt1, p1, pt1 = blank(256), blank(256), blank(256), blank(256)
    square(t1, 100, 100, 40, 4), square(tt1, 100, 100, 1, 4)      # A, class 1, found
    square(p1, 100, 100, 2, 4), square(pt1, 100, 100, 1, 4)
    square(t1, 150, 150, 41, 4), square(tt1, 150, 150, 2, 4)      # B, class 2, found as class 1
    square(p1, 150, 150, 3, 4), square(pt1, 150, 150, 1, 4)
    square(t1, 0, 0, 42, 4), square(tt1, 0, 0, 1, 4)              # C, class 1, in the margin, missed
    t2, tt2 = square(blank(256), 60, 60, 7, 4), square(blank(256), 60, 60, 1, 4)
    return [t1, t2], [p1, t2.copy()], [tt1, tt2], [pt1, tt2.copy()]


def test_conic_by_hand():
    ti, pi, tt, pt = conic_dataset()
    r = conic(ti, pi, tt, pt)
    # bPQ image 1: TP 2 (A, B), FN 1 (C): DQ 2 / (2.5 + 1e-6), SQ 2 / (2 + 1e-6)
    bpq1 = 2 / ((2 + 0.5 * 0 + 0.5 * 1) + EPS) * (2 / (2 + EPS))
    bpq2 = 1 / (1 + EPS) * (1 / (1 + EPS))
    assert r["images"][0]["bpq"] == bpq1 and r["bpq"] == (bpq1 + bpq2) / 2
    # class 1 pooled: image 1 TP 1 (A), FP 1 (B as class 1), FN 1 (C); image 2 TP 1
    assert r["per_class"][1] == {"tp": 2, "fp": 1, "fn": 1, "iou_sum": 2.0}
    pq1 = 2 / ((2 + 0.5 + 0.5) + EPS) * (2 / (2 + EPS))
    assert r["per_class_pq"][1] == pq1
    assert r["per_class_pq"][2] == 0.0  # B missed as class 2
    assert all(r["per_class_pq"][c] == 0.0 for c in (3, 4, 5, 6))  # absent everywhere: 0, still averaged
    assert r["mpq_plus"] == pytest.approx(pq1 / 6, abs=1e-15)
    # counts in the central 224x224 (C lies in the 16 px margin, not counted)
    assert [r["images"][i]["count_true_1"] for i in (0, 1)] == [1, 1]
    assert [r["images"][i]["count_pred_1"] for i in (0, 1)] == [2, 1]
    # R2 class 1: truth constant [1, 1], predicted [2, 1] -> 0; class 2: truth [1, 0], pred [0, 0]:
    # SS_tot 0.5, SS_res 1 -> -1; classes 3..6: all zero, exact -> 1
    assert r["r2_per_class"] == {1: 0.0, 2: -1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0}
    assert r["r2"] == (0 - 1 + 4) / 6


def test_conic_empty_cases():
    e = [blank(), blank()]
    r = conic(e, e, e, e)
    # the reference's 1e-6 makes empty score 0, not NaN
    assert r["bpq"] == 0.0 and r["mpq_plus"] == 0.0
    assert r["r2"] == 1.0  # counts all 0 and predicted so
    nuc, typ = [square(blank(), 1, 1, 4)] * 2, [square(blank(), 1, 1, 3)] * 2
    for t, p, tty, pty in ((e, nuc, e, typ), (nuc, e, typ, e)):
        one_sided = conic(t, p, tty, pty)
        assert one_sided["bpq"] == 0.0 and one_sided["mpq_plus"] == 0.0


def test_count_nuclei_crop():
    inst, types = blank(256), blank(256)
    square(inst, 10, 10, 1, 4), square(types, 10, 10, 2, 4)      # rows 10-13: outside 16..239
    square(inst, 14, 100, 2, 4), square(types, 14, 100, 2, 4)    # rows 14-17: reaches inside
    square(inst, 120, 120, 3, 4), square(types, 120, 120, 5, 4)
    assert count_nuclei(inst, types, [2, 5]) == {2: 1, 5: 1}
    assert count_nuclei(inst, types, [2, 5], crop=None) == {2: 2, 5: 1}
    assert count_nuclei(inst[:100, :100], types[:100, :100], [2]) == {2: 1}  # smaller than 224: whole


# ----------------------------------------------------------------------------
# Agreement with the slow reference
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_protocols_equal_slow_reference_on_synthetic_data(seed):
    ti, tt, pi, pt = ref.make_dataset(seed, n_tiles=3, size=128, n_nuclei=(15, 35), n_types=6)
    tissue = ["Colon", "Lung", "Colon"]
    checks = [
        (hovernet(ti, pi, tt, pt), ref.slow_hovernet(ti, pi, tt, pt)),
        (hovernet(ti, pi, tt, pt, radius=6), ref.slow_hovernet(ti, pi, tt, pt, radius=6)),
        (pannuke(ti, pi, tt, pt, tissue=tissue), ref.slow_pannuke(ti, pi, tt, pt, tissue=tissue)),
        (conic(ti, pi, tt, pt), ref.slow_conic(ti, pi, tt, pt)),
    ]
    for fast, slow in checks:
        assert ref.differences(fast, slow) == []


# ----------------------------------------------------------------------------
# Real tiles
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def he_nuclei():
    path = DATA / "he-nuclei-3" / "labels.npy"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (shared/data is absent in a clean clone)")
    labels = np.load(path)
    return [m for m in labels[..., 0]], [m for m in labels[..., 1]]


def test_real_tiles_against_themselves_score_one(he_nuclei):
    inst, types = he_nuclei
    assert max(int(m.max()) for m in inst) > sum(len(np.unique(m)) for m in inst)  # ids really are sparse
    h = hovernet(inst, inst, types, types)
    assert h["aji"] == h["aji_plus"] == h["dice"] == h["dq"] == h["f1_detection"] == 1.0
    assert h["pq"] == pytest.approx(1.0, abs=1e-6)
    assert sorted(h["type_f1"]) == [1, 2, 3, 5] and set(h["type_f1"].values()) == {1.0}
    c = conic(inst, inst, types, types, classes=[1, 2, 3, 5])
    assert c["mpq_plus"] == pytest.approx(1.0, abs=1e-6) and c["r2"] == 1.0
    assert sum(h["images"][i]["n_true"] for i in range(3)) == 125


def test_real_tiles_fast_equals_slow_on_a_degraded_prediction(he_nuclei):
    inst, types = he_nuclei
    pred, ptypes = ref.degrade(inst, types)
    classes = [1, 2, 3, 5]
    assert ref.differences(hovernet(inst, pred, types, ptypes), ref.slow_hovernet(inst, pred, types, ptypes)) == []
    assert ref.differences(pannuke(inst, pred, types, ptypes, classes=classes),
                           ref.slow_pannuke(inst, pred, types, ptypes, classes=classes)) == []
    fast = conic(inst, pred, types, ptypes, classes=classes)
    assert ref.differences(fast, ref.slow_conic(inst, pred, types, ptypes, classes=classes)) == []
    assert 0.3 < fast["bpq"] < 0.95


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

def test_protocol_input_errors():
    a, b = [blank(8)], [blank(9)]
    with pytest.raises(DataError, match="truth has 1 images, prediction 2"):
        hovernet(a, a + a)
    with pytest.raises(DataError, match=r"\(8, 8\) vs \(9, 9\)"):
        hovernet(a, b)
    with pytest.raises(DataError, match="type map"):
        conic(a, a, a, [blank(9)])
    with pytest.raises(DataError, match="no type maps"):
        pannuke(a, a, a, None)
    with pytest.raises(ConfigError, match="positive type ids"):
        conic(a, a, a, a, classes=[0, 1])
    with pytest.raises(ConfigError, match="positive type ids"):
        pannuke(a, a, a, a, classes=[1, 1])
    with pytest.raises(ConfigError, match="one or more"):
        conic(a, a, a, a, classes=[])
    with pytest.raises(DataError, match="tissue"):
        pannuke(a, a, a, a, tissue=["Colon", "Lung"])
    with pytest.raises(ConfigError, match="radius"):
        hovernet(a, a, radius=0)
    with pytest.raises(DataError, match="negative|>= 0"):
        hovernet([np.full((2, 2), -1)], [blank(2)])
