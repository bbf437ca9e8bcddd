"""embedcache.metrics.core, .jaccard and .detection: hand-computed cases, properties, and agreement
with the slow per-instance reference in tests/reference_metrics.py."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_metrics as ref  # noqa: E402
from embedcache.errors import ConfigError, DataError  # noqa: E402
from embedcache.metrics import core, detection, jaccard  # noqa: E402

EPS = 1.0e-6


def label_maps(max_side=12, max_id=6):
    return st.integers(3, max_side).flatmap(
        lambda h: arrays(np.int32, (h, h + 1), elements=st.integers(0, max_id)))


def pair_of_maps(max_side=12, max_id=6):
    return st.integers(3, max_side).flatmap(
        lambda h: st.tuples(arrays(np.int32, (h, h + 1), elements=st.integers(0, max_id)),
                            arrays(np.int32, (h, h + 1), elements=st.integers(0, max_id))))


def nan_equal(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


# ----------------------------------------------------------------------------
# Relabelling and the overlap table
# ----------------------------------------------------------------------------

def test_relabel_keeps_order_of_sparse_ids():
    m = np.array([[0, 1039, 1039], [7, 0, 250]])
    # sorted ids 7 < 250 < 1039 become 1, 2, 3
    assert core.relabel(m).tolist() == [[0, 3, 3], [1, 0, 2]]


def test_relabel_huge_ids_take_the_sorting_path():
    m = np.array([[0, 2_000_000_000], [5, 2_000_000_000]])
    inst = core.Instances.from_map(m)
    assert inst.ids.tolist() == [5, 2_000_000_000]
    assert inst.area.tolist() == [1, 2]
    assert core.relabel(m).tolist() == [[0, 2], [1, 2]]


def test_overlap_table_by_hand():
    true = np.array([[1, 1, 1, 0],
                     [1, 2, 2, 0]])
    pred = np.array([[9, 9, 0, 0],
                     [9, 9, 4, 4]])
    ov = core.overlap(true, pred)
    # true 1 (4 px) meets pred 4? no; pred 9 (4 px): 3 shared px.
    # true 2 (2 px) meets pred 9 at (1,1) and pred 4 at (1,2).
    # pred ids 4 < 9 become indices 0, 1.
    assert ov.true_area.tolist() == [4, 2]
    assert ov.pred_area.tolist() == [2, 4]
    assert list(zip(ov.true_index, ov.pred_index, ov.inter)) == [(0, 1, 3), (1, 0, 1), (1, 1, 1)]
    # unions: 4 + 4 - 3 = 5; 2 + 2 - 1 = 3; 2 + 4 - 1 = 5
    assert ov.union.tolist() == [5, 3, 5]
    np.testing.assert_array_equal(ov.iou, [3 / 5, 1 / 3, 1 / 5])


def test_sparse_and_dense_counting_agree(monkeypatch):
    rng = np.random.default_rng(3)
    t, _, p, _ = ref.make_tile_pair(rng, size=64, n_nuclei=(10, 20))
    dense = core.overlap(t, p)
    monkeypatch.setattr(core, "_DENSE_CELLS", 1)
    monkeypatch.setattr(jaccard, "_DENSE_CELLS", 1)
    sparse = core.overlap(t, p)
    for field in ("true_index", "pred_index", "inter"):
        np.testing.assert_array_equal(getattr(dense, field), getattr(sparse, field))
    # the per-component assignment gives the same AJI+ here (no ties)
    assert jaccard.aji_plus(sparse) == pytest.approx(jaccard.aji_plus(dense), abs=1e-12)


# ----------------------------------------------------------------------------
# PQ
# ----------------------------------------------------------------------------

def test_pq_by_hand():
    true = np.array([[1, 1, 0, 0, 5, 5],
                     [1, 1, 0, 0, 0, 0]])
    pred = np.array([[3, 3, 3, 0, 0, 8],
                     [3, 3, 0, 0, 0, 0]])
    # true 1 (4 px) vs pred 3 (5 px): inter 4, union 5, IoU 0.8 > 0.5 -> TP
    # true 5 (2 px) vs pred 8 (1 px): inter 1, union 2, IoU 0.5, not > 0.5
    # TP 1, FP 1 (pred 8), FN 1 (true 5)
    r = core.panoptic_quality(true, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["iou_sum"] == 0.8
    assert r["dq"] == 1 / (1 + 0.5 + 0.5)
    assert r["sq"] == 0.8 / (1 + EPS)
    assert r["pq"] == r["dq"] * r["sq"]
    # CoNIC adds 1e-6 to the DQ denominator
    assert core.panoptic_quality(true, pred, dq_eps=EPS)["dq"] == 1 / (2 + EPS)


def test_iou_of_exactly_half_is_not_a_match():
    true = np.array([[1, 1, 0, 0]])
    pred = np.array([[2, 0, 0, 0]])  # IoU 1/2
    assert core.panoptic_quality(true, pred)["tp"] == 0


def test_pq_empty_cases():
    empty = np.zeros((4, 4), int)
    nuc = np.zeros((4, 4), int)
    nuc[1:3, 1:3] = 7
    # nothing on either side: 0/0 in HoVer-Net's formula -> NaN; CoNIC's 1e-6 -> 0
    assert all(math.isnan(core.panoptic_quality(empty, empty)[k]) for k in ("dq", "sq", "pq"))
    assert core.panoptic_quality(empty, empty, dq_eps=EPS)["pq"] == 0.0
    # one side only: DQ = 0 / (0.5 * 1) = 0, SQ = 0 / 1e-6 = 0
    for t, p in ((empty, nuc), (nuc, empty)):
        r = core.panoptic_quality(t, p)
        assert (r["dq"], r["sq"], r["pq"]) == (0.0, 0.0, 0.0)


def test_match_threshold_below_half_is_refused():
    ov = core.overlap(np.ones((2, 2), int), np.ones((2, 2), int))
    with pytest.raises(ConfigError, match="0.5"):
        core.match(ov, threshold=0.3)


# ----------------------------------------------------------------------------
# AJI, AJI+, Dice
# ----------------------------------------------------------------------------

def test_aji_and_aji_plus_by_hand_with_a_merge():
    true = np.array([[1, 1, 2, 2],
                     [1, 1, 2, 2],
                     [0, 0, 0, 3]])
    pred = np.array([[6, 6, 6, 6],
                     [6, 6, 6, 6],
                     [0, 0, 9, 0]])
    ov = core.overlap(true, pred)
    # true 1 and true 2 (4 px each) both take pred 6 (8 px): inter 4, union 8 each.
    # true 3 (1 px) touches nothing; pred 9 (1 px) is taken by nobody.
    # AJI = (4 + 4) / (8 + 8 + 1 + 1) = 8 / 18
    assert jaccard.aji(ov) == 8 / 18
    # AJI+: pred 6 pairs once (true 1, the first of the tie); true 2 and 3 and
    # pred 9 are unpaired: (4) / (8 + 4 + 1 + 1) = 4 / 14
    assert jaccard.aji_plus(ov) == 4 / 14


def test_aji_reuses_a_prediction_aji_plus_does_not():
    true = np.array([[1, 1, 1, 2]])
    pred = np.array([[5, 5, 5, 5]])
    ov = core.overlap(true, pred)
    # AJI: (3 + 1) / (4 + 4) = 0.5 ; AJI+: true 1 takes pred 5 (IoU 3/4): 3 / (4 + 1) = 0.6
    assert jaccard.aji(ov) == 0.5
    assert jaccard.aji_plus(ov) == 0.6


def test_dice_by_hand():
    true = np.array([[1, 1, 0, 2]])
    pred = np.array([[0, 4, 4, 4]])
    # foreground: true 3 px, pred 3 px, shared 2 -> 2 * 2 / 6
    assert jaccard.foreground_dice(core.overlap(true, pred)) == 4 / 6


def test_aji_and_dice_empty_cases():
    empty = np.zeros((3, 3), int)
    nuc = np.eye(3, dtype=int)
    both = core.overlap(empty, empty)
    assert math.isnan(jaccard.aji(both)) and math.isnan(jaccard.aji_plus(both)) and math.isnan(jaccard.foreground_dice(both))
    for t, p in ((empty, nuc), (nuc, empty)):
        ov = core.overlap(t, p)
        assert (jaccard.aji(ov), jaccard.aji_plus(ov), jaccard.foreground_dice(ov)) == (0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------
# Centroids, types, detection
# ----------------------------------------------------------------------------

def test_centroids_and_majority_type_by_hand():
    inst = np.array([[4, 4, 0],
                     [4, 0, 9],
                     [0, 0, 9]])
    types = np.array([[2, 3, 0],
                      [0, 0, 1],
                      [0, 0, 1]])
    i = core.Instances.from_map(inst)
    # id 4: pixels (0,0), (0,1), (1,0) -> mean row 1/3, mean col 1/3
    np.testing.assert_allclose(i.centroids(), [[1 / 3, 1 / 3], [1.5, 2.0]])
    # id 4 has types 2, 3, 0 once each: background skipped, tie -> smaller id 2
    assert i.majority_type(types).tolist() == [2, 1]
    assert core.Instances.from_map(inst).majority_type(np.zeros_like(types)).tolist() == [0, 0]


def test_pair_centroids_radius_is_inclusive():
    true = np.array([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0]])
    pred = np.array([[3.0, 4.0], [112.0, 100.0], [213.0, 200.0]])
    # distances 5, 12 (kept: <= 12) and 13 (dropped)
    pairs, ut, up = detection.pair_centroids(true, pred, 12)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    assert ut.tolist() == [2] and up.tolist() == [2]
    with pytest.raises(ConfigError):
        detection.pair_centroids(true, pred, 0)


def test_pair_centroids_assignment_is_optimal_not_greedy():
    # greedy nearest would pair true 0 with pred 0 (distance 1) and leave
    # true 1 unpaired; the assignment minimises the total: 2 + 2 < 1 + 20
    true = np.array([[0.0, 0.0], [0.0, 4.0]])
    pred = np.array([[0.0, 2.0], [0.0, -2.0]])
    pairs, _, _ = detection.pair_centroids(true, pred, 12)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 0)]


def test_detection_and_type_f1_by_hand():
    assert detection.detection_f1(8, 2, 4) == 16 / (16 + 2 + 4)
    assert math.isnan(detection.detection_f1(0, 0, 0))
    # pairs (true, pred): (1,1) (1,2) (2,1) (2,2) (3,3); unpaired true: 1; unpaired pred: 1, 2
    pt, pp = [1, 1, 2, 2, 3], [1, 2, 1, 2, 3]
    # type 1: TP 1, FP 1 (2->1), FN 1 (1->2), FP_d 1, FN_d 1: 2 / (2 + 2 + 2 + 1 + 1)
    assert detection.type_f1(pt, pp, [1], [1, 2], 1) == 2 / 8
    assert detection.type_f1(pt, pp, [1], [1, 2], 3) == 1.0
    assert math.isnan(detection.type_f1(pt, pp, [1], [1, 2], 4))


def test_r2_by_hand_and_against_scikit_learn():
    # mean 2, SS_tot = 1 + 0 + 1 = 2, SS_res = 0 + 1 + 0 = 1 -> 1 - 1/2
    assert detection.r2_score([1, 2, 3], [1, 3, 3]) == 0.5
    assert detection.r2_score([2, 2, 2], [2, 2, 2]) == 1.0
    assert detection.r2_score([2, 2, 2], [2, 2, 3]) == 0.0
    assert math.isnan(detection.r2_score([4], [4]))
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, yhat = rng.integers(0, 20, 30), rng.integers(0, 20, 30)
    assert detection.r2_score(y, yhat) == pytest.approx(sklearn.r2_score(y, yhat), abs=1e-12)


def test_class_overlap_splits_instances_by_pixel_type():
    inst = np.array([[1, 1, 1, 1]])
    tt = np.array([[2, 2, 2, 5]])
    pred = np.array([[8, 8, 8, 0]])
    pt = np.array([[2, 2, 2, 0]])
    stats = core.class_overlap(inst, tt, pred, pt).stats([2, 5, 6])
    # type 2 piece (3 px) matches pred exactly; type 5 piece (1 px) is a FN
    assert (stats[2].tp, stats[2].fp, stats[2].fn, stats[2].iou_sum) == (1, 0, 0, 1.0)
    assert (stats[5].tp, stats[5].fn) == (0, 1)
    assert (stats[6].tp, stats[6].fp, stats[6].fn) == (0, 0, 0)


# ----------------------------------------------------------------------------
# Input errors
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 2, 2), int), "2-D"),
    (np.array([[0.0, 1.5]]), "whole numbers"),
    (np.array([[0, -3]]), ">= 0"),
    (np.array([["a", "b"]]), "integers"),
    (np.array([[np.nan, 1.0]]), "whole numbers"),
])
def test_bad_label_maps_raise_data_error(bad, message):
    with pytest.raises(DataError, match=message):
        core.as_label_map(bad, "my map")


def test_float_labels_holding_whole_numbers_are_accepted():
    assert core.as_label_map(np.array([[0.0, 3.0]])).tolist() == [[0, 3]]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(DataError, match=r"\(2, 3\) vs \(3, 2\)"):
        core.overlap(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(DataError, match="type map"):
        core.Instances.from_map(np.zeros((2, 3), int)).majority_type(np.zeros((2, 2), int))


# ----------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(label_maps())
def test_prediction_equal_to_truth_scores_one(true):
    assume(true.any())
    ov = core.overlap(true, true)
    n = ov.n_true
    st_ = core.match(ov).stats()
    assert (st_.tp, st_.fp, st_.fn) == (n, 0, 0)
    dq, sq, pq = st_.scores()
    assert dq == 1.0
    assert sq == pytest.approx(1.0, abs=1e-6)  # n / (n + 1e-6)
    assert jaccard.aji(ov) == 1.0 and jaccard.aji_plus(ov) == 1.0 and jaccard.foreground_dice(ov) == 1.0


@settings(max_examples=60, deadline=None)
@given(pair_of_maps(), st.randoms(use_true_random=False))
def test_relabelling_either_map_changes_nothing(maps, rnd):
    true, pred = maps
    base = core.overlap(true, pred)

    def shuffled_ids(m, keep_order):
        ids = [i for i in np.unique(m) if i != 0]
        new = sorted(rnd.sample(range(1, 10_000), len(ids)))
        if not keep_order:
            rnd.shuffle(new)
        lut = dict(zip(ids, new))
        return np.vectorize(lambda v: lut.get(v, 0))(m) if ids else m

    for keep_order in (True, False):
        ov = core.overlap(shuffled_ids(true, keep_order), shuffled_ids(pred, keep_order))
        a, b = core.match(base).stats(), core.match(ov).stats()
        assert (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn)
        assert a.iou_sum == pytest.approx(b.iou_sum, abs=1e-12)
        assert nan_equal(jaccard.foreground_dice(ov), jaccard.foreground_dice(base))
        if keep_order:
            # AJI breaks ties between equally good predictions by id order,
            # as the reference does; ids renamed in order change nothing.
            assert nan_equal(jaccard.aji(ov), jaccard.aji(base))
            assert nan_equal(jaccard.aji_plus(ov), jaccard.aji_plus(base))


@settings(max_examples=40, deadline=None)
@given(label_maps())
def test_prediction_shifted_far_away_scores_zero(true):
    assume(true.any())
    h, w = true.shape
    t = np.zeros((h, 3 * w), np.int32)
    p = np.zeros_like(t)
    t[:, :w] = true
    p[:, 2 * w:] = true
    ov = core.overlap(t, p)
    assert core.match(ov).stats().scores()[2] == 0.0
    assert (jaccard.aji(ov), jaccard.aji_plus(ov), jaccard.foreground_dice(ov)) == (0.0, 0.0, 0.0)
    centres = [core.Instances.from_map(m).centroids() for m in (t, p)]
    pairs, _, _ = detection.pair_centroids(*centres, 1.0)
    assert len(pairs) == 0


@settings(max_examples=60, deadline=None)
@given(label_maps(max_id=8), st.data())
def test_merging_two_true_nuclei_costs_what_the_formula_says(true, data):
    ids = [int(i) for i in np.unique(true) if i != 0]
    assume(len(ids) >= 2)
    a, b = data.draw(st.lists(st.sampled_from(ids), min_size=2, max_size=2, unique=True))
    pred = np.where(true == b, a, true)
    area_a, area_b = int((true == a).sum()), int((true == b).sum())
    merged = area_a + area_b
    n = len(ids)
    others = int((true > 0).sum()) - merged
    ov = core.overlap(true, pred)
    # the merged prediction matches the bigger nucleus only if it is more than half of it
    matched = max(area_a, area_b) / merged > 0.5
    s = core.match(ov).stats()
    assert s.tp == n - 2 + matched
    assert s.fp == (n - 1) - s.tp and s.fn == n - s.tp
    assert s.iou_sum == pytest.approx(n - 2 + (max(area_a, area_b) / merged if matched else 0), abs=1e-12)
    # AJI: both true nuclei take the merged prediction: inter a + b, union 2 (a + b)
    assert jaccard.aji(ov) == pytest.approx((others + merged) / (others + 2 * merged))
    # AJI+: the merged prediction pairs once, with the bigger; the other adds its area
    assert jaccard.aji_plus(ov) == pytest.approx((others + max(area_a, area_b)) / (others + merged + min(area_a, area_b)))


@settings(max_examples=80, deadline=None)
@given(pair_of_maps(max_side=10, max_id=7), arrays(np.int32, (10, 11), elements=st.integers(0, 3)))
def test_fast_agrees_with_slow_reference_on_random_maps(maps, types):
    true, pred = maps
    ov = core.overlap(true, pred)
    s = core.match(ov).stats()
    assert (s.tp, s.fp, s.fn, s.iou_sum) == ref.slow_pq_counts(true, pred)
    assert nan_equal(jaccard.aji(ov), ref.slow_aji(true, pred))
    assert nan_equal(jaccard.aji_plus(ov), ref.slow_aji_plus(true, pred))
    assert nan_equal(jaccard.foreground_dice(ov), ref.slow_dice(true, pred))
    inst = core.Instances.from_map(true)
    np.testing.assert_array_equal(inst.centroids(), ref.slow_centroids(true))
    tmap = types[: true.shape[0], : true.shape[1]]
    np.testing.assert_array_equal(inst.majority_type(tmap), ref.slow_majority_types(true, tmap))


def test_fast_agrees_with_slow_reference_on_synthetic_tiles():
    rng = np.random.default_rng(11)
    for _ in range(3):
        t, tt, p, pt = ref.make_tile_pair(rng, size=128, n_nuclei=(20, 40))
        ov = core.overlap(t, p)
        s = core.match(ov).stats()
        assert (s.tp, s.fp, s.fn, s.iou_sum) == ref.slow_pq_counts(t, p)
        assert jaccard.aji(ov) == ref.slow_aji(t, p)
        assert jaccard.aji_plus(ov) == ref.slow_aji_plus(t, p)
        a = detection.pair_centroids(core.Instances.from_map(t).centroids(), core.Instances.from_map(p).centroids(), 12)
        b = ref.slow_pair_points(ref.slow_centroids(t), ref.slow_centroids(p), 12)
        assert a[0].tolist() == [list(x) for x in b[0]]
        for c in range(1, 6):
            want = ref.slow_pq_counts(np.where(tt == c, t, 0), np.where(pt == c, p, 0))
            got = core.class_overlap(t, tt, p, pt).stats([c])[c]
            assert (got.tp, got.fp, got.fn, got.iou_sum) == want
