"""Cell probes: planted per-type signals recovered and noise at chance, folds kept by source image,
PCA, label efficiency, invariance and transfer under the variants, bootstrap scores checked against
scikit-learn resample by resample, one clear error per bad input, the CLI end to end and the
pipeline's cells steps.

Most tests read small fake cell stores written with :class:`CellWriter` from hand-made vectors
(a layer carrying each nucleus's type as one-hot * 3 + noise, layers of pure noise, variants that
copy the identity or replace it by noise). One tiny real store (a random tiny ViT over 8 synthetic
CoNIC tiles with the identity and two flips) is built once for the CLI, and one tiny pipeline runs.
"""

from __future__ import annotations

import csv
import json
import warnings
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY_CNN, TINY_VIT
from decoder_helpers import make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)

import embedcache.probes.cell as cell_module
from embedcache.cli import main
from embedcache.config import ProbeConfig
from embedcache.encoders.registry import EncoderSpec
from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.files import partial_path
from embedcache.probes.cell import CellProbeResult, run_cell_probes
from embedcache.probes.fit import ProbePrediction, subsample
from embedcache.probes.invariance import variant_shift
from embedcache.report.cells import (
    CellReport,
    cells_markdown,
    confusion_scores,
    group_confusion,
    resample_weights,
    score_cell_probes,
)
from embedcache.store.cells import CellWriter

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = {1: "tumour", 2: "lymphocyte", 3: "stroma"}
FLIPS = ("identity", "hflip", "vflip")
CHANCE = 1 / 3


# ----------------------------------------------------------------------------
# Fake cell stores from hand-made vectors
# ----------------------------------------------------------------------------

def fake_cells(out: Path, layers: dict, types, source, variants=("identity",), dataset="d" * 64,
               nuclei="n" * 64, instance=None, finish: bool = True) -> Path:
    """A cell store of ``layers`` (name -> ``(n, D)`` or ``(n, V, D)``) for cells of ``types`` in images ``source``."""
    types, source = np.asarray(types), np.asarray(source)
    n, n_images = len(types), int(source.max()) + 1
    table = {"tile": source, "source": source, "instance": np.arange(1, n + 1) if instance is None else instance,
             "centroid": np.zeros((n, 2)), "area": np.full(n, 20), "type": types,
             "coverage": np.ones(n, np.float32)}
    vectors = {k: np.asarray(v, np.float32).reshape(n, -1, np.shape(v)[-1]) for k, v in layers.items()}
    record = {"n_cells": n, "layers": {k: v.shape[-1] for k, v in vectors.items()}, "variants": list(variants),
              "class_names": {str(k): v for k, v in NAMES.items()}, "source_names": [f"im{i}" for i in range(n_images)],
              "mpp": None, "encoder": EncoderSpec("fake", "fake", "random").to_dict(),
              # a source store that is not there: no tile-level invariance
              "source_store": {"path": str(out) + ".gone", "dataset_fingerprint": dataset, "weights_sha256": None,
                               "n_tiles": n_images},
              "nuclei": {"source": "store", "kind": "labels", "fingerprint": nuclei, "radius": None},
              "config": {"unit_cells": 4096}}
    writer = CellWriter(out, record, table, record["layers"], "float32", [(0, n_images, 0, n)])
    if not finish:
        return out
    writer.write_unit(0, vectors)
    return writer.finish()


def planted(n_images: int = 12, per_image: int = 25, untyped: int = 10, dim: int = 16, seed: int = 0):
    """Types 1..3 (and some untyped 0), images drawn at random (rows of one image are not contiguous),
    and a layer carrying the type: one-hot * 3 in the first three channels plus unit noise."""
    rng = np.random.default_rng(seed)
    n = n_images * per_image
    source = rng.permutation(np.repeat(np.arange(n_images), per_image))
    types = rng.integers(1, 4, size=n)
    types[rng.choice(n, untyped, replace=False)] = 0
    signal = rng.normal(size=(n, dim))
    signal[np.arange(n), np.maximum(types, 1) - 1] += 3 * (types > 0)
    return rng, source, types, signal


def balanced_accuracy(y, pred) -> float:
    """Mean recall over the classes in ``y``, by a plain loop."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def pred_of(result, layer, method="linear") -> ProbePrediction:
    (p,) = [p for p in result.predictions if p.layer == layer and p.method == method]
    return p


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """One probe of a fake store with variants (identity, hflip, vflip) and three layers:

    - ``signal``: the type; hflip an exact copy of the identity, vflip pure noise;
    - ``noise``: every variant independent noise;
    - ``steady``: the type, every variant the same vector.

    The folds each fit was given are recorded.
    """
    tmp = tmp_path_factory.mktemp("probed")
    rng, source, types, signal = planted()
    n, d = signal.shape
    steady = np.repeat(signal[:, None], 3, axis=1)
    layers = {"noise": rng.normal(size=(n, 3, d)),
              "signal": np.stack([signal, signal, rng.normal(size=(n, d))], axis=1),
              "steady": steady}
    path = fake_cells(tmp / "enc.zarr", layers, types, source, variants=FLIPS)
    calls = []
    real = cell_module.cross_validate

    def recording(X, y, folds, method, **kw):
        calls.append({"n": len(X), "folds": np.array(folds), "groups": np.array(kw["groups"]), "method": method,
                      "fraction": kw.get("fraction")})
        return real(X, y, folds, method, **kw)

    config = ProbeConfig(level="cell", labels="type", layers="all", n_boot=200)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cell_module, "cross_validate", recording)
        result = run_cell_probes([path], config)
    return {"path": path, "result": result, "calls": calls, "types": types, "source": source, "config": config,
            "report": score_cell_probes(result, n_boot=200, seed=0)}


# ----------------------------------------------------------------------------
# 1. A planted signal is recovered; noise and shuffled labels are at chance
# ----------------------------------------------------------------------------

def test_a_planted_type_signal_is_recovered_and_noise_is_at_chance(probed):
    result, types = probed["result"], probed["types"]
    typed = types[types > 0]
    assert result.info["n_cells"] == len(typed) and result.info["n_untyped"] == int((types == 0).sum())
    assert result.info["labels"]["names"] == ["tumour", "lymphocyte", "stroma"]
    assert result.info["labels"]["counts"] == [int((typed == t).sum()) for t in (1, 2, 3)]
    assert {(p.layer, p.method) for p in result.predictions} == {
        (layer, m) for layer in ("noise", "signal", "steady") for m in ("linear", "knn")}
    for p in result.predictions:
        np.testing.assert_array_equal(p.y_true, typed - 1)
        score = balanced_accuracy(p.y_true, p.y_pred)
        if p.layer == "noise":
            assert abs(score - CHANCE) < 0.12, (p.method, score)
        else:
            assert score > 0.9, (p.layer, p.method, score)
    rows = {(r["layer"], r["method"]): r for r in probed["report"].rows}
    assert rows["signal", "linear"]["scores"]["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy(typed - 1, pred_of(result, "signal").y_pred))
    assert {b["layer"] for b in probed["report"].best()} <= {"signal", "steady"}


def test_shuffled_labels_on_the_signal_layer_are_at_chance(tmp_path):
    rng, source, types, signal = planted(untyped=0)
    shuffled = rng.permutation(types)
    path = fake_cells(tmp_path / "shuffled.cells", {"signal": signal}, shuffled, source)
    result = run_cell_probes([path], ProbeConfig(level="cell", labels="type", fractions=()))
    for p in result.predictions:
        assert balanced_accuracy(p.y_true, p.y_pred) < CHANCE + 0.15, p.method
    assert result.curve == []  # no fractions: no curve


# ----------------------------------------------------------------------------
# 2. Folds keep each source image together
# ----------------------------------------------------------------------------

def test_folds_keep_the_cells_of_an_image_together(probed):
    calls, types, source = probed["calls"], probed["types"], probed["source"]
    groups = source[types > 0]
    assert len(calls) == 3 * 2 + len(probed["config"].fractions)
    folds = calls[0]["folds"]
    assert len(np.unique(folds)) == 5
    for c in calls:  # every layer, method and fraction on the same cells and folds
        np.testing.assert_array_equal(c["folds"], folds)
        np.testing.assert_array_equal(c["groups"], groups)
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1, f"image {g} is in several folds"
    # the images were interleaved: cells split at random would have put an image in two folds
    assert not all(np.all(np.diff(np.flatnonzero(groups == g)) == 1) for g in np.unique(groups))
    assert probed["result"].info["folds"] == "stratified 5-fold over 12 source images"
    for p in probed["result"].predictions:
        np.testing.assert_array_equal(p.groups, groups)


def test_fewer_images_than_folds_is_a_clear_error(tmp_path):
    _, source, types, signal = planted(n_images=3, per_image=30)
    path = fake_cells(tmp_path / "three.cells", {"signal": signal}, types, source)
    with pytest.raises(DataError) as info:
        run_cell_probes([path], ProbeConfig(level="cell", labels="type", folds=5))
    message = str(info.value)
    assert "5 folds for 3 source images" in message and "--folds" in message and "\n" not in message
    # as many folds as images works
    assert run_cell_probes([path], ProbeConfig(level="cell", labels="type", folds=3, fractions=(),
                                               method="linear")).info["n_folds"] == 3


# ----------------------------------------------------------------------------
# 3. PCA
# ----------------------------------------------------------------------------

def test_pca_keeps_the_signal_at_four_components_and_is_skipped_at_full_width(tmp_path):
    # 32 channels: the type in three, and 29 copies of one shared factor (with a little noise), which
    # holds most of the variance: a single component keeps only the factor, four keep the type too.
    rng, source, types, signal = planted(untyped=0)
    n = len(types)
    factor = rng.normal(size=(n, 1)) + 0.05 * rng.normal(size=(n, 29))
    X = np.concatenate([signal[:, :3], factor], axis=1)
    path = fake_cells(tmp_path / "wide.cells", {"mixed": X}, types, source)

    def probe(pca):
        return run_cell_probes([path], ProbeConfig(level="cell", labels="type", method="linear", fractions=(),
                                                   pca=pca, folds=4))

    four, one, full, wide = probe(4), probe(1), probe(None), probe(64)
    y = types - 1
    assert balanced_accuracy(y, four.predictions[0].y_pred) > 0.9
    assert abs(balanced_accuracy(y, one.predictions[0].y_pred) - CHANCE) < 0.12
    assert four.info["features"].startswith("PCA to 4 components")
    assert full.info["features"] == "full width (32)"
    # more components than channels: the features are left at full width
    np.testing.assert_array_equal(wide.predictions[0].y_pred, full.predictions[0].y_pred)
    np.testing.assert_allclose(wide.predictions[0].proba, full.predictions[0].proba)


# ----------------------------------------------------------------------------
# 4. Label efficiency
# ----------------------------------------------------------------------------

def test_subsample_takes_a_share_of_each_class_and_at_least_one():
    y = np.array([0] * 100 + [1] * 33 + [2] * 4 + [3] * 50)
    rows = np.arange(len(y))
    got = subsample(y, rows, 0.1, seed=5)
    # round(0.1 * n) of each class, at least one: 10, 3, 1 (0.4 rounds to 0), 5
    assert np.bincount(y[got], minlength=4).tolist() == [10, 3, 1, 5]
    assert np.all(np.diff(got) > 0) and np.isin(got, rows).all()
    np.testing.assert_array_equal(subsample(y, rows, 0.1, seed=5), got)  # seeded
    assert not np.array_equal(subsample(y, rows, 0.1, seed=6), got)
    # only the rows given are drawn from
    odd = np.arange(1, len(y), 2)
    got = subsample(y, odd, 0.2, seed=0)
    assert np.isin(got, odd).all()
    assert np.bincount(y[got], minlength=4).tolist() == [10, 3, 1, 5]  # of 50, 16, 2 and 25 odd rows
    np.testing.assert_array_equal(subsample(y, odd, 1.0, seed=0), odd)


def test_the_label_efficiency_curve(probed):
    result, report, config = probed["result"], probed["report"], probed["config"]
    fractions = list(config.fractions)
    assert [p.params["fraction"] for p in result.curve] == fractions == [0.01, 0.05, 0.1, 0.25, 1.0]
    assert {p.layer for p in result.curve} == {"signal"}  # the best linear layer (steady ties; first wins)
    y = result.predictions[0].y_true
    folds = probed["calls"][0]["folds"]
    for p in result.curve:
        want = []
        for f in np.unique(folds):
            counts = np.bincount(y[folds != f], minlength=3)
            want.append(int(sum(max(1, round(p.params["fraction"] * c)) for c in counts)))
        assert p.params["train_sizes"] == want, p.params["fraction"]
    sizes = [np.mean(p.params["train_sizes"]) for p in result.curve]
    assert all(a < b for a, b in pairwise(sizes))
    assert result.curve[0].params["train_sizes"] == [3] * 5  # one cell of each class
    assert result.curve[-1].params["train_sizes"] == [int((folds != f).sum()) for f in range(5)]
    np.testing.assert_array_equal(result.curve[-1].y_pred, pred_of(result, "signal").y_pred)
    assert [c["fraction"] for c in report.curve] == fractions
    assert [c["n_train"] for c in report.curve] == [int(s) for s in sizes]
    assert report.curve[-1]["balanced_accuracy"]["value"] > 0.9
    assert report.curve[-1]["balanced_accuracy"]["value"] > report.curve[0]["balanced_accuracy"]["value"]


@pytest.mark.parametrize("augment", [False, True])
def test_the_curves_full_fraction_reuses_the_probes_fits_unless_the_probe_trained_on_variants(tmp_path, augment):
    import embedcache.probes.fit as fit_module

    rng, source, types, signal = planted()
    layers = {"noise": rng.normal(size=signal.shape), "signal": signal}
    path = fake_cells(tmp_path / "two.cells", layers, types, source)
    config = ProbeConfig(level="cell", labels="type", layers="all", method="linear", fractions=(0.5, 1.0),
                         augment=augment)
    fitted, real = [], fit_module._fit_fold
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "_fit_fold", lambda *a, **kw: fitted.append(a[10]) or real(*a, **kw))
        result = run_cell_probes([path], config)
    # 5 folds for each layer and for the half fraction; the full one again only when the probe fitted variants
    assert fitted.count(1.0) == (15 if augment else 10)
    assert fitted.count(0.5) == 5
    full, probe = result.curve[-1], pred_of(result, "signal")
    assert full.params["fraction"] == 1.0 and "train_sizes" not in probe.params
    assert sum(full.params["train_sizes"]) == 4 * len(probe.y_true)  # every training row of the 5 folds
    np.testing.assert_array_equal(full.y_pred, probe.y_pred)
    np.testing.assert_array_equal(full.proba, probe.proba)
    assert full.params["folds"] == probe.params["folds"]


# ----------------------------------------------------------------------------
# 5. Invariance
# ----------------------------------------------------------------------------

def test_variant_shift_by_hand():
    # Two items, three variants, two channels: every channel is three +1 and three -1 before the
    # affine change below, so standardising gives these numbers back.
    X = np.array([[[1, 1], [1, -1], [-1, -1]],
                  [[-1, -1], [-1, 1], [1, 1]]], dtype=float)
    got = variant_shift(X * [10, 1] + [0, 7], seed=3)
    # item 0: identity (1, 1), hflip (1, -1) at 2, vflip (-1, -1) at 2 sqrt 2; item 1 the mirror image;
    # the only other item of each is the other one, at 2 sqrt 2
    np.testing.assert_allclose(got.per_variant, [[2, 2 * np.sqrt(2)]] * 2)
    np.testing.assert_allclose(got.shift, [1 + np.sqrt(2)] * 2)
    np.testing.assert_allclose(got.spread, [2 * np.sqrt(2)] * 2)
    assert got.ratio == pytest.approx((1 + np.sqrt(2)) / (2 * np.sqrt(2)))


def test_variant_shift_is_zero_for_copies_and_near_one_for_unrelated_vectors():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 1, 12)) * rng.uniform(0.5, 5, size=12)
    assert variant_shift(np.repeat(X, 4, axis=1)).ratio == 0
    assert abs(variant_shift(rng.normal(size=(400, 4, 12))).ratio - 1) < 0.15
    # an identity of the same distribution as three unrelated variants
    got = variant_shift(np.concatenate([X / X.std(axis=0), rng.normal(size=(400, 3, 12))], axis=1), seed=1)
    assert abs(got.ratio - 1) < 0.15 and got.per_variant.shape == (400, 3)
    partner_distance = np.sort(got.spread)
    assert partner_distance[0] > 0  # nobody is compared with itself
    with pytest.raises(DataError, match="V >= 2"):
        variant_shift(X)


def test_invariance_of_the_probed_layers(probed):
    shifts, report = probed["result"].shifts, probed["report"]
    assert set(shifts) == {("enc", layer, "cell") for layer in ("noise", "signal", "steady")}
    assert shifts["enc", "steady", "cell"].ratio == 0
    assert abs(shifts["enc", "noise", "cell"].ratio - 1) < 0.15
    # signal: hflip does not move, vflip moves like a random cell
    per = shifts["enc", "signal", "cell"].per_variant
    assert np.all(per[:, 0] == 0) and per[:, 1].mean() > 1
    rows = {r["layer"]: r for r in report.invariance}
    assert rows["steady"]["ratio"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert rows["noise"]["ratio"]["lo"] <= shifts["enc", "noise", "cell"].ratio <= rows["noise"]["ratio"]["hi"]
    assert rows["signal"]["per_variant"]["hflip"] == 0 and rows["signal"]["per_variant"]["vflip"] > 0.5
    assert rows["signal"]["n_items"] == probed["result"].info["n_cells"]


# ----------------------------------------------------------------------------
# 6. Transfer: the identity-trained probe on every variant
# ----------------------------------------------------------------------------

def test_transfer_to_a_copied_variant_is_exact_and_to_noise_is_chance(probed):
    result, report = probed["result"], probed["report"]
    for method in ("linear", "knn"):
        p = pred_of(result, "signal", method)
        assert p.variant_pred.shape == (len(p.y_true), 3)
        np.testing.assert_array_equal(p.variant_pred[:, 0], p.y_pred)
        np.testing.assert_array_equal(p.variant_pred[:, 1], p.y_pred)
        t = {r["variant"]: r for r in report.transfer if r["layer"] == "signal" and r["method"] == method}
        assert set(t) == set(FLIPS)
        assert t["hflip"]["balanced_accuracy"] == t["identity"]["balanced_accuracy"]
        assert t["hflip"]["drop"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
        assert abs(t["vflip"]["balanced_accuracy"]["value"] - CHANCE) < 0.15
        assert t["vflip"]["drop"]["value"] < -0.5 and t["vflip"]["drop"]["hi"] < 0
        assert t["vflip"]["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy(p.y_true,
                                                                                           p.variant_pred[:, 2]))
    text = report.format()
    assert "largest drop shown" in text and "vflip" in text


# ----------------------------------------------------------------------------
# 7. Scores from per-image confusions against scikit-learn, resample by resample
# ----------------------------------------------------------------------------

def hand_result(seed: int = 0, n_images: int = 9):
    """Predictions of three stores on 9 images of 20-60 cells, class 2 only in image 0:
    ``good`` mostly right, ``bad`` random, ``twin`` a copy of good."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20, 60, size=n_images)
    groups = np.repeat(np.arange(n_images) * 7 + 3, sizes)  # image ids need not be 0..G-1
    y = rng.integers(0, 2, size=len(groups))
    y[groups == 3] = rng.integers(0, 3, size=sizes[0])
    good = np.where(rng.random(len(y)) < 0.8, y, rng.integers(0, 3, size=len(y)))
    bad = rng.integers(0, 3, size=len(y))
    preds = [ProbePrediction(name, "e", "l", 1.0, "linear", "classification", y_true=y, y_pred=pred, groups=groups)
             for name, pred in (("good", good), ("bad", bad), ("twin", good.copy()))]
    return CellProbeResult(preds, info={"labels": {"names": ["a", "b", "c"]}, "n_units": n_images})


def resampled(groups, W, b) -> np.ndarray:
    """Rows of resample ``b``: every cell of an image, as many times as the image was drawn."""
    codes = np.unique(groups, return_inverse=True)[1]
    return np.concatenate([np.tile(np.flatnonzero(codes == g), int(W[b, g])) for g in range(W.shape[1])])


def test_bootstrap_from_per_image_confusions_equals_sklearn_on_each_resample():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    result = hand_result()
    p = result.predictions[0]
    codes, W = resample_weights(p.groups, 300, seed=3)
    assert W.shape == (300, 9) and (W.sum(axis=1) == 9).all() and (W == np.round(W)).all()
    np.testing.assert_array_equal(resample_weights(p.groups, 300, seed=3)[1], W)
    np.testing.assert_array_equal(np.unique(p.groups)[codes], p.groups)
    fast = confusion_scores(W @ group_confusion(p.y_true, p.y_pred, codes, 3), 3)
    want = {"balanced_accuracy": [], "macro_f1": []}
    missing_class = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples without image 0 have no truth of class 2
        for b in range(len(W)):
            idx = resampled(p.groups, W, b)
            missing_class += 2 not in p.y_true[idx]
            want["balanced_accuracy"].append(balanced_accuracy_score(p.y_true[idx], p.y_pred[idx]))
            want["macro_f1"].append(f1_score(p.y_true[idx], p.y_pred[idx], average="macro"))
    assert missing_class > 50  # the case where the two definitions could part is well exercised
    for metric in ("balanced_accuracy", "macro_f1"):
        np.testing.assert_allclose(fast[metric], want[metric], rtol=1e-12, atol=1e-12)

    report = score_cell_probes(result, n_boot=300, seed=3)
    row = report.rows[0]
    for metric, fn in (("balanced_accuracy", balanced_accuracy_score),
                       ("macro_f1", lambda a, b: f1_score(a, b, average="macro"))):
        lo, hi = np.percentile(want[metric], [2.5, 97.5])
        assert row["scores"][metric]["value"] == pytest.approx(fn(p.y_true, p.y_pred), abs=1e-12)
        assert row["scores"][metric]["lo"] == pytest.approx(lo, abs=1e-12)
        assert row["scores"][metric]["hi"] == pytest.approx(hi, abs=1e-12)
    per_class = f1_score(p.y_true, p.y_pred, labels=[0, 1, 2], average=None)
    np.testing.assert_allclose(list(row["per_class"].values()), per_class)
    assert list(row["per_class"]) == ["a", "b", "c"]
    assert report.info["bootstrap_units"] == 9 and report.info["n_boot"] == 300


def test_paired_comparisons_of_a_better_and_of_identical_stores():
    from sklearn.metrics import balanced_accuracy_score

    result = hand_result(1)
    report = score_cell_probes(result, n_boot=400, seed=0)
    c = {(x["a"], x["b"]): x for x in report.comparisons}
    assert set(c) == {("good", "bad"), ("good", "twin"), ("bad", "twin")}
    y, good, bad = (result.predictions[0].y_true, result.predictions[0].y_pred, result.predictions[1].y_pred)
    better = c["good", "bad"]
    assert better["diff"] == pytest.approx(balanced_accuracy_score(y, good) - balanced_accuracy_score(y, bad))
    assert better["diff"] > 0.3 and 0 < better["lo"] < better["diff"] < better["hi"]
    assert better["p"] < 0.05 and better["p_holm"] < 0.05
    assert c["bad", "twin"]["diff"] < 0 and c["bad", "twin"]["hi"] < 0 and c["bad", "twin"]["p"] < 0.05
    same = c["good", "twin"]
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0 and same["p"] == 1 and same["p_holm"] == 1
    assert report.rows[0]["scores"] == report.rows[2]["scores"]
    # One verdict from the test and the interval together, in the JSON, the terminal and the markdown.
    assert better["verdict"] == "good better" and c["bad", "twin"]["verdict"] == "twin better"
    assert same["verdict"] == "no clear difference"
    assert "At small n the test decides" in report.format() and "| good better |" in cells_markdown(report, "d")
    # Three source images: the exact test cannot go below 0.25, so no difference is claimed at all.
    few = score_cell_probes(hand_result(1, n_images=3), n_boot=400, seed=0)
    for x in few.comparisons:
        assert x["verdict"].startswith("too few source images to tell (3: p cannot go below"), x


def test_chance_is_printed_beside_every_score_and_a_row_at_chance_is_never_the_best(tmp_path):
    result = hand_result(2)
    bad = result.predictions[1]
    bad.y_pred = np.zeros_like(bad.y_true)  # always one class: balanced accuracy exactly 1/K
    report = score_cell_probes(result, n_boot=50, seed=0)
    assert all(r["chance"] == {"balanced_accuracy": pytest.approx(CHANCE), "macro_f1": pytest.approx(CHANCE)}
               for r in report.rows)
    best = {b["store"]: b for b in report.best()}
    assert best["good"]["above_chance"] and not best["bad"]["above_chance"]
    assert best["bad"]["value"] == pytest.approx(CHANCE)
    text = report.format()
    assert "balanced accuracy (chance 0.333)" in text and "macro-F1 (chance 0.333)" in text
    assert "chance, what a guess that ignores the input scores: balanced accuracy 1/K" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:3] in
            (["good", "l", "linear"], ["bad", "l", "linear"])}
    assert rows["good"].rstrip().endswith("*") and not rows["bad"].rstrip().endswith("*")
    assert "no layer above chance: bad linear scores at most balanced accuracy 0.333" in text
    md = cells_markdown(report, "d")
    assert "| bad | linear | none above chance (highest: l) |" in md and "| good | linear | l |" in md
    report.write(tmp_path)
    with open(tmp_path / "cells.csv") as fh:
        assert [float(r["balanced_accuracy_chance"]) for r in csv.DictReader(fh)] == pytest.approx([CHANCE] * 3)


def test_a_report_round_trips_and_reads_as_markdown(probed):
    report = probed["report"]
    data = json.loads(json.dumps(report.to_dict()))
    again = CellReport.from_dict(data)
    assert again.to_dict() == data
    assert again.format() == report.format()
    assert [b["layer"] for b in data["best"]] == [b["layer"] for b in report.best()]
    md = cells_markdown(report, "syn")
    assert md.startswith("## syn: cell types from the cache")
    assert "| enc | linear |" in md and "Label efficiency" in md and "Invariance" in md
    # 12 images are enough not to be warned about; 9 are not
    assert "**Note**" not in md and "NOTE" not in report.format()
    few = score_cell_probes(hand_result(), n_boot=20)
    assert "NOTE: the cells come from only 9 source images" in few.format()


# ----------------------------------------------------------------------------
# 8. Bad input
# ----------------------------------------------------------------------------

def one_line_error(error, fn, *words) -> str:
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    return message


def test_cell_stores_of_other_nuclei_are_refused(tmp_path):
    _, source, types, signal = planted(n_images=4, per_image=10)
    a = fake_cells(tmp_path / "a.cells", {"l": signal}, types, source)
    b = fake_cells(tmp_path / "b.cells", {"l": signal}, types, source, nuclei="m" * 64)
    c = fake_cells(tmp_path / "c.cells", {"l": signal}, types, source, instance=np.arange(len(types))[::-1] + 1)
    d = fake_cells(tmp_path / "d.cells", {"l": signal}, types, source, dataset="e" * 64)
    config = ProbeConfig(level="cell", labels="type", folds=2)
    for other in (b, c, d):
        one_line_error(DataError, lambda other=other: run_cell_probes([a, other], config), "hold different cells",
                       str(other), str(a))


def test_a_store_with_one_type_or_none_typed_is_refused(tmp_path):
    _, source, types, signal = planted(n_images=4, per_image=10)
    one = fake_cells(tmp_path / "one.cells", {"l": signal}, np.where(types > 0, 2, 0), source)
    none = fake_cells(tmp_path / "none.cells", {"l": signal}, np.zeros_like(types), source)
    config = ProbeConfig(level="cell", labels="type", folds=2)
    one_line_error(DataError, lambda: run_cell_probes([one], config), "only lymphocyte", "at least two types")
    one_line_error(DataError, lambda: run_cell_probes([none], config), "no typed nucleus", "40 cells")


def test_an_incomplete_cell_store_is_refused(tmp_path):
    _, source, types, signal = planted(n_images=4, per_image=10)
    out = fake_cells(tmp_path / "half.cells", {"l": signal}, types, source, finish=False)
    assert not out.exists() and partial_path(out).exists()
    one_line_error(StoreError, lambda: run_cell_probes([out], ProbeConfig(level="cell", labels="type", folds=2)),
                   "incomplete", "run the same cells command again")


def test_stores_of_other_variants_are_compared_on_the_variants_they_share(tmp_path):
    # An encoder's own extract settings may cache other variants: invariance and transfer are measured
    # on the variants every store holds (this failed with "invariance needs ... V >= 2" before).
    rng, source, types, signal = planted(n_images=8, per_image=20)
    n, d = signal.shape
    flips = np.stack([signal, signal, rng.normal(size=(n, d))], axis=1)  # identity, hflip, vflip
    turns = np.stack([signal, rng.normal(size=(n, d)), signal], axis=1)  # identity, rot90, vflip
    paths = [fake_cells(tmp_path / "flips.zarr", {"l": flips}, types, source, variants=FLIPS),
             fake_cells(tmp_path / "turns.zarr", {"l": turns}, types, source, variants=("identity", "rot90", "vflip")),
             fake_cells(tmp_path / "plain.zarr", {"l": signal}, types, source)]
    config = ProbeConfig(level="cell", labels="type", method="linear", fractions=(), folds=4)
    result = run_cell_probes(paths[:2], config)
    assert result.variants == result.info["variants"] == ["identity", "vflip"]
    # vflip is noise in flips and a copy in turns
    assert result.shifts["flips", "l", "cell"].ratio > 0.5 and result.shifts["turns", "l", "cell"].ratio == 0
    flips_pred, turns_pred = result.predictions
    assert flips_pred.variant_pred.shape[1] == turns_pred.variant_pred.shape[1] == 2
    np.testing.assert_array_equal(turns_pred.variant_pred[:, 1], turns_pred.y_pred)
    report = score_cell_probes(result, n_boot=50)
    assert {(t["store"], t["variant"]) for t in report.transfer} == {
        (s, v) for s in ("flips", "turns") for v in ("identity", "vflip")}
    for order in (paths, paths[::-1]):  # with an identity-only store there is nothing to compare
        result = run_cell_probes(order, config)
        assert result.variants == ["identity"] and result.shifts == {}
        assert all(p.variant_pred is None for p in result.predictions)
        assert score_cell_probes(result, n_boot=20).transfer == []


# ----------------------------------------------------------------------------
# 9. The CLI on a tiny real store
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny ViT store of 8 synthetic CoNIC tiles (8 source images) with the identity and two flips,
    and its cell store made by ``embedcache cells``."""
    tmp = tmp_path_factory.mktemp("real")
    store = make_store(write_conic(tmp / "conic", n=8, seed=5), tmp / "vit.zarr", encoder=TINY_VIT)
    res = CliRunner().invoke(main, ["cells", "--store", str(store), "--out", str(tmp / "vit.cells"), "--quiet"])
    assert res.exit_code == 0, res.output
    return {"tmp": tmp, "store": store, "cells": tmp / "vit.cells", "cells_output": res.output}


def cli(*args, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert (res.exit_code == code) if code is not None else res.exit_code != 0, res.output
    return res


def cli_error(*args, words=()) -> str:
    res = cli(*args, code=None)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_cli_cells_then_probe_writes_the_report(real, tmp_path):
    from embedcache import open_store

    cells = open_store(real["cells"])
    assert cells.complete and cells.variants == list(FLIPS) and "cells" in real["cells_output"]
    out = tmp_path / "probe"
    res = cli("probe", "--store", real["cells"], "--layers", "all", "--folds", "2", "--bootstrap", "50",
              "--fractions", "0.1,1", "--out", out)
    assert res.stdout.startswith("cell-level probe of nucleus types (")
    assert "stratified 2-fold over 8 source images" in res.stdout and "label efficiency" in res.stdout
    for name in ("cells.json", "cells.csv", "cells_label_efficiency.png", "cells_invariance.png", "cells_map.png"):
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "cells.json").read_text())
    n_layers = len(cells.layers)
    assert len(data["rows"]) == 2 * n_layers and data["info"]["n_units"] == 8
    assert {(r["layer"], r["method"]) for r in data["rows"]} == {(l, m) for l in cells.layers
                                                                 for m in ("linear", "knn")}
    assert [c["fraction"] for c in data["curve"]] == [0.1, 1.0]
    levels = [r["level"] for r in data["invariance"]]
    # cells from the cell store, tiles from the store it was pooled from (still there)
    assert levels.count("cell") == n_layers and levels.count("tile") == n_layers
    with open(out / "cells.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + 2 * n_layers

    res = cli("probe", "--store", real["cells"], "--method", "linear", "--folds", "2", "--bootstrap", "20",
              "--fractions", "", "--json")
    data = json.loads(res.stdout)
    assert [r["layer"] for r in data["rows"]] == [cells.layers[-1]] and data["curve"] == []
    assert data["info"]["level"] == "cell" and data["info"]["n_boot"] == 20


def test_cli_bad_input_is_one_line(real, tmp_path):
    store, cells = real["store"], real["cells"]
    # an embedding store probed at cell level, alone or beside a cell store
    for args in (["--store", store, "--level", "cell"], ["--store", cells, "--store", store]):
        cli_error("probe", *args, "--folds", "2", words=("is an embedding store", "embedcache cells"))
    # a cell store probed at tile or patch level
    for level, labels in (("tile", "tissue"), ("patch", "nuclei")):
        cli_error("probe", "--store", cells, "--level", level, "--labels", labels,
                  words=("is a cell store", "--level cell"))
    _, source, types, signal = planted(n_images=4, per_image=10)
    one = fake_cells(tmp_path / "one.cells", {"l": signal}, np.where(types > 0, 1, 0), source)
    cli_error("probe", "--store", one, "--folds", "2", words=("only tumour",))
    other = fake_cells(tmp_path / "other.cells", {"l": signal}, types, source)
    cli_error("probe", "--store", cells, "--store", other, "--folds", "2", words=("hold different cells",))
    half = fake_cells(tmp_path / "half.cells", {"l": signal}, types, source, finish=False)
    cli_error("probe", "--store", half, "--folds", "2", words=("incomplete",))
    cli_error("probe", "--store", cells, "--folds", "9", words=("9 folds for 8 source images",))


# ----------------------------------------------------------------------------
# 10. Pipelines: the cells and cellprobe steps
# ----------------------------------------------------------------------------

def study(out, **over) -> dict:
    s = {"name": "tiny", "out": str(out),
         "datasets": {"syn": {"synthetic": {"tiles": 12, "folds": 3, "size": 64}}},
         "encoders": {"cnn": {"encoder": TINY_CNN, "weights": "random"}},
         "extract": {"variants": "none", "batch_size": 8, "unit_tiles": 4, "device": "cpu"},
         "fit": {"epochs": 1, "batch_size": 4, "device": "cpu", "decoder": {"width": 8}},
         "seeds": [0], "report": {"n_boot": 100, "overlays": 0},
         "cells": {"probe": {"n_boot": 100, "folds": 2}}}
    s.update(over)
    return s


def write_study(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_pipeline_pools_cells_probes_them_and_reports_then_reuses_everything(tmp_path):
    from embedcache.pipeline.run import execute, plan
    from embedcache.pipeline.spec import load_pipeline

    path = write_study(tmp_path / "study.yaml", study(tmp_path / "out"))
    p = plan(load_pipeline(path), progress=False)
    kinds = [s.kind for s in p.steps]
    assert kinds.count("cells") == 1 and kinds.count("cellprobe") == 1
    assert kinds.index("extract") < kinds.index("cells") < kinds.index("cellprobe")
    outcome = execute(p, progress=False, echo=lambda _: None)
    assert "pool nuclei cnn on syn" in outcome.ran and "cell probe of types on syn (cnn)" in outcome.ran
    assert outcome.failed == {} and outcome.skipped == []
    probe_dir = p.cell_probes["syn"].dir
    data = json.loads((probe_dir / "cells.json").read_text())
    assert data["info"]["n_folds"] == 2 and data["info"]["n_boot"] == 100
    assert data["info"]["config"]["layers"] == "all"  # the pipeline's default for cells
    assert {r["store"] for r in data["rows"]} == {"cnn"}
    report = tmp_path / "out" / "report"
    md = (report / "leaderboard.md").read_text()
    assert "## syn: cell types from the cache" in md and "| cnn | linear |" in md
    lb = json.loads((report / "leaderboard.json").read_text())
    assert lb["cells"]["syn"]["rows"] == data["rows"]

    again = execute(plan(load_pipeline(path), progress=False), progress=False, echo=lambda _: None)
    assert again.ran == [] and len(again.reused) == len(p.steps) and again.report_reused


def test_pipeline_cells_sections_are_checked_and_can_be_turned_off(tmp_path):
    from embedcache.pipeline.run import plan
    from embedcache.pipeline.spec import load_pipeline

    for cells, key in (({"radius": 4, "raduis": 3}, "raduis"), ({"probe": {"folds": 2, "fold": 3}}, "fold"),
                       ({"probe": {"level": "tile"}}, "level")):
        text = yaml.safe_dump(study(tmp_path / "out", cells=cells), sort_keys=False)
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        line = next(i + 1 for i, s in enumerate(text.splitlines()) if s.strip().startswith(f"{key}:"))
        message = one_line_error(ConfigError, lambda path=path: load_pipeline(path), f"unknown key {key!r}")
        assert message.startswith(f"{path}:{line}: "), message
    message = one_line_error(ConfigError, lambda: load_pipeline(
        write_study(tmp_path / "v.yaml", study(tmp_path / "out", cells={"variants": "some"}))), "variants")
    assert "cells of syn" in message

    off = study(tmp_path / "out")
    off["datasets"]["syn"]["cells"] = False
    p = plan(load_pipeline(write_study(tmp_path / "off.yaml", off)), progress=False)
    assert not {"cells", "cellprobe"} & {s.kind for s in p.steps} and p.cell_probes == {}
    # a dataset's own cells settings replace the file's
    own = study(tmp_path / "out")
    own["datasets"]["syn"]["cells"] = {"layers": "last", "probe": {"pca": 8}}
    pipeline = load_pipeline(write_study(tmp_path / "own.yaml", own))
    cells_config, probe_config = pipeline.cells_configs(pipeline.datasets[0])
    assert cells_config.layers == "last" and probe_config.pca == 8 and probe_config.folds is None
    assert probe_config.level == "cell" and probe_config.labels == "type" and probe_config.layers == "all"


def test_a_groups_file_folds_and_resamples_over_patients(tmp_path):
    _, source, types, signal = planted()
    path = fake_cells(tmp_path / "g.cells", {"signal": signal}, types, source)
    n_images = int(source.max()) + 1
    groups = tmp_path / "patients.csv"
    groups.write_text("image,group\n" + "".join(f"im{i},p{i // 2}\n" for i in range(n_images)))
    result = run_cell_probes([path], ProbeConfig(level="cell", labels="type", fractions=(), groups=str(groups)))
    patient = (source // 2)[types > 0]
    assert result.info["unit"] == "group" and result.info["n_units"] == n_images // 2
    assert result.info["folds"] == f"stratified 5-fold over {n_images // 2} groups"
    for p in result.predictions:
        _, codes = np.unique(p.groups, return_inverse=True)
        _, truth = np.unique(patient, return_inverse=True)
        np.testing.assert_array_equal(codes, truth)  # the patients, not the images
    report = score_cell_probes(result, n_boot=100, seed=0)
    assert report.info["bootstrap_unit"] == "group" and report.info["bootstrap_units"] == n_images // 2
    one = tmp_path / "one.csv"
    one.write_text("image,group\n" + "".join(f"im{i},all\n" for i in range(n_images)))
    with pytest.raises(DataError, match="every cell is in one group"):
        run_cell_probes([path], ProbeConfig(level="cell", labels="type", groups=str(one)))


def test_a_pipelines_cell_probe_takes_a_groups_file_keyed_by_its_content(tmp_path):
    """cells.probe.groups in a pipeline file reaches the probe, and editing the file runs the probe again
    (its step key changes) while the steps before it stay."""
    from embedcache.pipeline.run import plan
    from embedcache.pipeline.spec import load_pipeline

    groups = tmp_path / "patients.csv"
    groups.write_text("image,group\n" + "".join(f"syn_{i:03d},p{i // 4}\n" for i in range(12)))
    data = study(tmp_path / "out", cells={"probe": {"n_boot": 100, "folds": 2, "groups": str(groups)}})
    path = write_study(tmp_path / "g.yaml", data)
    first = plan(load_pipeline(path), progress=False)
    assert first.cell_probes["syn"].inputs["probe"]["groups"] == str(groups)
    groups.write_text("image,group\n" + "".join(f"syn_{i:03d},p{i // 3}\n" for i in range(12)))
    second = plan(load_pipeline(path), progress=False)
    assert second.cell_probes["syn"].key != first.cell_probes["syn"].key
    assert [c.nuclei.key for c in second.cells] == [c.nuclei.key for c in first.cells]
    groups.unlink()
    message = one_line_error(ConfigError, lambda: plan(load_pipeline(path), progress=False), "groups file")
    assert str(groups) in message
