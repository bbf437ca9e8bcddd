"""Scores with bootstrap intervals: scikit-learn's values, intervals that hold the point
estimate and narrow with more tiles, shared resamples, tables, JSON/CSV and the depth plot."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, jaccard_score, roc_auc_score

from embedcache.errors import DataError
from embedcache.report import stats
from embedcache.report.plots import plot_depth
from embedcache.probes.fit import ProbePrediction


def noisy_prediction(n: int, k: int = 3, accuracy: float = 0.8, seed: int = 0, **fields) -> ProbePrediction:
    """Class predictions right with probability ``accuracy``, probabilities peaked on the prediction."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    right = rng.random(n) < accuracy
    y_pred = np.where(right, y, (y + rng.integers(1, k, n)) % k)
    proba = 0.2 * rng.dirichlet(np.ones(k), n) + 0.8 * np.eye(k)[y_pred]
    base = dict(store="s", encoder="e", layer="blocks.1", depth=1.0, method="linear")
    return ProbePrediction(**{**base, **fields}, task="classification", y_true=y, y_pred=y_pred, proba=proba,
                           names=[str(c) for c in range(k)])


def test_scores_are_scikit_learns():
    p = noisy_prediction(300)
    s = stats.prediction_scores(p)
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(p.y_true, p.y_pred))
    assert s["macro_f1"] == pytest.approx(f1_score(p.y_true, p.y_pred, average="macro"))
    assert s["auroc"] == pytest.approx(roc_auc_score(p.y_true, p.proba, multi_class="ovr"))


def test_auroc_binary_absent_classes_and_one_class():
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    assert stats.auroc(y, proba) == pytest.approx(roc_auc_score(y, proba[:, 1]))
    y3 = np.array([0, 2, 0, 2, 0])
    p3 = np.array([[0.7, 0.1, 0.2], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2], [0.3, 0.2, 0.5], [0.2, 0.2, 0.6]])
    assert stats.auroc(y3, p3) == pytest.approx(roc_auc_score(y3 == 2, p3[:, 2]))
    y4 = np.array([0, 1, 2, 0, 1])
    p4 = np.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.2, 0.2, 0.5, 0.1],
                   [0.6, 0.1, 0.2, 0.1], [0.3, 0.4, 0.2, 0.1]])
    expected = np.mean([roc_auc_score(y4 == c, p4[:, c]) for c in range(3)])
    assert stats.auroc(y4, p4) == pytest.approx(expected)  # class 3 never occurs: left out
    assert math.isnan(stats.auroc(np.zeros(4, int), proba))


def test_intervals_hold_the_point_estimate_and_narrow_with_more_tiles():
    widths = {}
    for n in (90, 1500):
        p = noisy_prediction(n, seed=n)
        scores = stats.bootstrap_scores(p, stats.bootstrap_indices(n, 100, seed=1))
        for m, s in scores.items():
            assert s["lo"] <= s["value"] <= s["hi"], (n, m, s)
        widths[n] = {m: s["hi"] - s["lo"] for m, s in scores.items()}
    for m in widths[90]:
        # Width shrinks about as 1/sqrt(n): 1500 tiles give about a quarter of the width of 90.
        assert widths[1500][m] < 0.5 * widths[90][m], m


def test_same_resamples_for_every_encoder():
    a = stats.bootstrap_indices(50, 30, seed=7)
    assert a.shape == (30, 50) and np.array_equal(a, stats.bootstrap_indices(50, 30, seed=7))
    assert not np.array_equal(a, stats.bootstrap_indices(50, 30, seed=8))
    one = noisy_prediction(60, store="uni")
    twin = noisy_prediction(60, store="dino")  # the same predictions under another name
    other = noisy_prediction(60, seed=3, store="gigapath")
    table = stats.score_predictions([one, twin, other], n_boot=40, seed=2, n_jobs=1)
    by_store = {r["store"]: r["scores"] for r in table.rows}
    assert by_store["uni"] == by_store["dino"]
    assert by_store["uni"] != by_store["gigapath"]
    # Scoring alone, or in parallel chunks, gives the same intervals: the resamples depend on (n, B, seed) only.
    assert stats.score_predictions([one], n_boot=40, seed=2, n_jobs=1).rows[0]["scores"] == by_store["uni"]


def test_parallel_and_zero_resamples(monkeypatch):
    p = noisy_prediction(40)
    serial = stats.score_predictions([p], n_boot=40, n_jobs=1).rows[0]["scores"]
    monkeypatch.setattr(stats, "RESAMPLE_CHUNK", 15)  # 3 chunks over 2 processes
    monkeypatch.setattr(stats, "PARALLEL_MIN", 40)
    assert stats.score_predictions([p], n_boot=40, n_jobs=2).rows[0]["scores"] == serial
    none = stats.score_predictions([p], n_boot=0).rows[0]["scores"]["balanced_accuracy"]
    assert math.isnan(none["lo"]) and none["value"] == serial["balanced_accuracy"]["value"]


def test_predictions_on_different_tiles_are_refused():
    with pytest.raises(DataError, match=r"predictions on different numbers of tiles \[30, 40\]"):
        stats.score_predictions([noisy_prediction(30), noisy_prediction(40)], n_boot=5)


def test_regression_r2():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    y = rng.poisson(5, size=(80, 3)).astype(float)
    y[:, 2] = 4  # a type that never varies is left out
    pred = y + rng.normal(size=y.shape)
    p = ProbePrediction("s", "e", "l", 1.0, "linear", "regression", y_true=y, y_pred=pred)
    s = stats.bootstrap_scores(p, stats.bootstrap_indices(80, 50))
    assert s["r2"]["value"] == pytest.approx(r2_score(y[:, :2], pred[:, :2]))
    assert s["r2"]["lo"] <= s["r2"]["value"] <= s["r2"]["hi"]


def test_segmentation_scores_equal_sklearn_on_every_patch():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, size=(5, 64))
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, size=truth.shape))
    pred[pred == 3] = 2  # class 3 is never predicted but is in the truth
    confusion = np.stack([np.bincount(t * 4 + p, minlength=16).reshape(4, 4) for t, p in zip(truth, pred)])
    s = stats.segmentation_scores(confusion.sum(0))
    assert s["miou"] == pytest.approx(jaccard_score(truth.ravel(), pred.ravel(), average="macro"))
    assert s["dice"] == pytest.approx(f1_score(truth.ravel(), pred.ravel(), labels=[1, 2, 3], average="macro"))
    seg = ProbePrediction("s", "e", "l", 1.0, "linear", "segmentation", confusion=confusion)
    assert seg.n_tiles == 5
    assert stats.prediction_scores(seg, np.array([0, 0, 1])) == stats.segmentation_scores(
        2 * confusion[0] + confusion[1])
    background_only = np.array([[10, 0], [0, 0]])
    assert math.isnan(stats.segmentation_scores(background_only)["dice"])


@pytest.fixture(scope="module")
def sweep_table() -> stats.ScoreTable:
    preds = [noisy_prediction(60, accuracy=a, seed=i, layer=f"blocks.{i}", depth=(i + 1) / 3, method=m)
             for m, accs in (("linear", (0.6, 0.9, 0.7)), ("knn", (0.5, 0.6, 0.8)))
             for i, a in enumerate(accs)]
    return stats.score_predictions(preds, n_boot=20, n_jobs=1,
                                   info={"labels": {"source": "tissue"}, "n_tiles": 60, "folds": "3-fold"})


def test_table_best_layers_text_json_and_csv(tmp_path, sweep_table):
    table = copy.deepcopy(sweep_table)  # altered below
    assert {(b["method"], b["layer"]) for b in table.best()} == {("linear", "blocks.1"), ("knn", "blocks.2")}
    text = table.format()
    assert text.startswith("tile-level probe of tissue labels: 60 tiles, 3-fold, 95% bootstrap intervals over 20")
    assert "best layer: s linear blocks.1 (balanced accuracy 0." in text
    row = next(line for line in text.splitlines() if line.startswith("s      blocks.1  linear"))
    assert row.rstrip().endswith("*") and "[" in row
    data = json.loads(table.write_json(tmp_path / "p.json").read_text())
    assert data["info"]["n_boot"] == 20 and len(data["rows"]) == 6 and len(data["best"]) == 2
    table.rows[0]["scores"]["auroc"]["lo"] = math.nan
    assert json.loads(json.dumps(table.to_dict()))["rows"][0]["scores"]["auroc"]["lo"] is None
    rows = list(csv.DictReader(open(table.write_csv(tmp_path / "p.csv"))))
    assert len(rows) == 6 and rows[0]["auroc_lo"] == "" and float(rows[1]["balanced_accuracy_hi"]) <= 1
    assert list(rows[0])[:8] == ["store", "encoder", "layer", "depth", "method", "balanced_accuracy",
                                 "balanced_accuracy_lo", "balanced_accuracy_hi"]


def test_depth_plot_is_a_png(tmp_path, sweep_table):
    path = plot_depth(sweep_table, tmp_path / "depth.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    width, height = Image.open(path).size
    assert width > 2.5 * height  # one panel per metric, side by side


def test_chance_levels_are_what_guesses_ignoring_the_input_score():
    """Chance of each metric against guesses actually scored: constant and shuffled predictions."""
    rng = np.random.default_rng(5)
    y = rng.choice(4, size=4000, p=[0.55, 0.25, 0.15, 0.05])
    p = noisy_prediction(10)
    p.y_true, p.y_pred = y, y
    chance = stats.chance_scores(p)
    assert chance == {"balanced_accuracy": 0.25, "macro_f1": 0.25, "auroc": 0.5}
    for c in range(4):  # always one class: balanced accuracy exactly 1/K, macro-F1 below it
        assert balanced_accuracy_score(y, np.full_like(y, c)) == pytest.approx(chance["balanced_accuracy"])
        assert f1_score(y, np.full_like(y, c), average="macro") < chance["macro_f1"]
    shuffled = rng.permutation(y)  # guessing in the truth's shares
    assert balanced_accuracy_score(y, shuffled) == pytest.approx(0.25, abs=0.03)
    assert f1_score(y, shuffled, average="macro") == pytest.approx(0.25, abs=0.03)
    reg = ProbePrediction("s", "e", "l", 1.0, "linear", "regression", y_true=np.ones((3, 2)), y_pred=np.ones((3, 2)))
    assert stats.chance_scores(reg) == {"r2": 0.0}
    # Patches: 80% background, 15% and 5% two nucleus classes. Always background: mIoU 0.8 / 3, Dice 0;
    # always class 1: Dice (2 * 0.15 / 1.15) / 2; guessing in the shares: mIoU mean p / (2 - p), Dice mean p.
    counts = np.array([800, 150, 50])
    seg = ProbePrediction("s", "e", "l", 1.0, "linear", "segmentation",
                          confusion=np.diag(counts)[None].astype(np.int64))
    shares = counts / counts.sum()
    miou = max(0.8 / 3, float(np.mean(shares / (2 - shares))))
    dice = max(0.15 / 1.15, 0.05 / 1.05, float(np.mean(shares[1:])))
    assert stats.chance_scores(seg) == {"miou": pytest.approx(miou), "dice": pytest.approx(dice)}


def test_a_layer_at_or_below_chance_is_never_called_the_best():
    preds = [noisy_prediction(90, accuracy=a, seed=i, layer=f"blocks.{i}", depth=(i + 1) / 2, method=m)
             for m, accs in (("linear", (0.5, 0.9)), ("knn", (0.2, 0.3))) for i, a in enumerate(accs)]
    for p in preds[2:]:  # kNN: always class 0, or worse than that
        p.y_pred = np.zeros_like(p.y_true) if p.layer == "blocks.0" else (p.y_true + 1) % 3
    table = stats.score_predictions(preds, n_boot=20, n_jobs=1, info={"labels": {"source": "tissue"}})
    best = {b["method"]: b for b in table.best()}
    assert best["linear"]["above_chance"] and best["linear"]["chance"] == pytest.approx(1 / 3)
    assert best["knn"]["layer"] == "blocks.0" and best["knn"]["value"] == pytest.approx(1 / 3)
    assert not best["knn"]["above_chance"]  # exactly at chance is not above it
    text = table.format()
    assert "balanced accuracy (chance 0.333)" in text and "macro-F1 (chance 0.333)" in text
    assert "best layer: s linear blocks.1" in text and "best layer: s knn" not in text
    assert "no layer above chance: s knn scores at most balanced accuracy 0.333" in text
    starred = [line for line in text.splitlines() if line.rstrip().endswith("*")]
    assert len(starred) == 1 and " linear " in starred[0]
