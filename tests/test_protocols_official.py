"""``evaluate`` gives the challenges' own numbers whatever the data holds: absent classes, empty tiles.

Truth and prediction go through the files users score (CoNIC ``labels.npy``
without ``counts.csv``, PanNuke ``masks.npy`` + ``types.npy``) and are
compared with line-for-line re-implementations of the official routines
(``tests/official_metrics.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import official_metrics as official  # noqa: E402
import reference_metrics as ref  # noqa: E402

from embedcache.metrics import evaluate  # noqa: E402
from embedcache.metrics.protocols import CONIC_TYPES, PANNUKE_TYPES  # noqa: E402


def edge_case_tiles(n_types: int, absent: int):
    """Four 64x64 tiles: a typical one without class ``absent``; empty truth; empty prediction; both empty."""
    ti, tt, pi, pt = ref.make_dataset(3, n_tiles=2, size=64, n_nuclei=(8, 14), n_types=n_types)
    for types in (tt, pt):
        for m in types:
            m[m == absent] = 1  # the class appears nowhere, on either side
    empty = np.zeros((64, 64), np.int32)
    true_inst = [ti[0], empty, ti[1], empty]
    true_type = [tt[0], empty, tt[1], empty]
    pred_inst = [pi[0], pi[1], empty, empty]
    pred_type = [pt[0], pt[1], empty, empty]
    return true_inst, true_type, pred_inst, pred_type


def conic_folder(d: Path, inst, types) -> Path:
    d.mkdir(parents=True)
    np.save(d / "labels.npy", np.stack([np.stack(inst), np.stack(types)], axis=-1).astype(np.int32))
    return d


def pannuke_masks(inst, types) -> np.ndarray:
    inst, types = np.stack(inst), np.stack(types)
    masks = np.zeros(inst.shape + (6,))
    for c in range(1, 6):
        masks[..., c - 1] = np.where(types == c, inst, 0)
    masks[..., 5] = inst == 0
    return masks


def pannuke_folder(d: Path, masks, tissue) -> Path:
    d.mkdir(parents=True)
    np.save(d / "masks.npy", masks)
    np.save(d / "types.npy", np.asarray(tissue))
    return d


def same(a, b) -> bool:
    a, b = (np.nan if v is None else float(v) for v in (a, b))
    return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_conic_scores_its_six_classes_and_empty_tiles_as_its_own_code(tmp_path):
    ti, tt, pi, pt = edge_case_tiles(n_types=5, absent=4)  # classes 4 and 6 absent
    truth, pred = conic_folder(tmp_path / "t", ti, tt), conic_folder(tmp_path / "p", pi, pt)
    ev = evaluate(truth, pred, "conic").summary
    want = official.conic_compute_stats(np.load(truth / "labels.npy"), np.load(pred / "labels.npy"))
    assert ev["classes"] == list(CONIC_TYPES) and ev["published"]
    assert same(ev["bpq"], want["pq"]) and same(ev["mpq_plus"], want["multi_pq+"])
    assert all(same(ev["per_class_pq"][c], want["per_class"][c - 1]) for c in CONIC_TYPES)
    assert ev["per_class_pq"][4] == ev["per_class_pq"][6] == 0.0  # absent: PQ 0, still in the mean
    # Empty tiles are scored (bPQ 0 from the 1e-6), not refused.
    rows = evaluate(truth, pred, "conic").rows
    assert [r["bpq"] for r in rows[1:]] == [0.0, 0.0, 0.0]


def test_conic_all_empty(tmp_path):
    empty = [np.zeros((32, 32), np.int32)] * 2
    truth, pred = conic_folder(tmp_path / "t", empty, empty), conic_folder(tmp_path / "p", empty, empty)
    ev = evaluate(truth, pred, "conic").summary
    want = official.conic_compute_stats(np.load(truth / "labels.npy"), np.load(pred / "labels.npy"))
    assert ev["bpq"] == want["pq"] == 0.0 and ev["mpq_plus"] == want["multi_pq+"] == 0.0


def test_pannuke_scores_its_five_classes_over_its_tissues(tmp_path):
    ti, tt, pi, pt = edge_case_tiles(n_types=5, absent=4)  # "dead" (4) absent everywhere
    tissue = ["Breast", "Colon", "Breast", "Colon"]
    t_masks, p_masks = pannuke_masks(ti, tt), pannuke_masks(pi, pt)
    truth = pannuke_folder(tmp_path / "t", t_masks, tissue)
    pred = pannuke_folder(tmp_path / "p", p_masks, tissue)
    ev = evaluate(truth, pred, "pannuke").summary
    want = official.pannuke_run(t_masks, p_masks, np.asarray(tissue))
    assert ev["classes"] == list(PANNUKE_TYPES) and ev["published"]
    assert same(ev["mpq"], want["mPQ"]) and same(ev["bpq"], want["bPQ"])
    assert all(same(ev["per_class_pq"][c], want["per_class"][c - 1]) for c in PANNUKE_TYPES)
    assert np.isnan(ev["per_class_pq"][4])  # no true nucleus of the class anywhere: undefined, as there


def test_pannuke_classes_do_not_follow_the_truth_layout(tmp_path):
    """A CoNIC-layout truth scored under the PanNuke protocol still gets PanNuke's five classes."""
    ti, tt, pi, pt = edge_case_tiles(n_types=3, absent=2)
    ev = evaluate(conic_folder(tmp_path / "t", ti, tt), conic_folder(tmp_path / "p", pi, pt), "pannuke")
    assert ev.summary["classes"] == list(PANNUKE_TYPES) and ev.summary["published"]
    asked = evaluate(tmp_path / "t", tmp_path / "p", "pannuke", classes=[1, 3]).summary
    assert asked["classes"] == [1, 3] and not asked["published"] and "not the published pannuke" in asked["note"]
