"""A kept cell classifier: the probe's best linear layer refitted and saved; its predictions are scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_helpers import one_thread  # noqa: F401 (one_thread: pytestmark)
from test_cell_probes import fake_cells, planted

from embedcache.config import ProbeConfig
from embedcache.errors import ConfigError, DataError
from embedcache.probes.cell import cell_labels, run_cell_probes
from embedcache.probes.classifier import keep_classifier, load_classifier
from embedcache.probes.fit import fit_linear
from embedcache.store import open_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classifier")
    rng, source, types, signal = planted()
    path = fake_cells(tmp / "enc.zarr", {"noise": rng.normal(size=signal.shape), "signal": signal}, types, source)
    return tmp, path, signal, types, source


@pytest.mark.parametrize("pca", [None, 4])
def test_the_saved_classifier_predicts_what_the_fitted_probe_does(cells, pca):
    tmp, path, signal, types, source = cells
    config = ProbeConfig(level="cell", labels="type", layers="all", method="linear", fractions=(), pca=pca)
    result = run_cell_probes([path], config)
    clf = keep_classifier(path, result, config)
    assert clf.layer == "signal" and clf.classes == ["tumour", "lymphocyte", "stroma"]
    assert clf.scores["balanced_accuracy_oof"] > 0.8 and clf.scores["per_layer"]["noise"] < 0.6
    saved = load_classifier(clf.save(tmp / f"clf-{pca}"))
    keep = types > 0
    y = types[keep] - 1
    pipe = fit_linear(signal[keep].astype(np.float32), y, source[keep], config.l2_grid, config.seed, pca)
    X = open_store(path).vectors("signal")
    np.testing.assert_allclose(saved.predict_proba(X), pipe.predict_proba(X), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(saved.predict(X), pipe.predict(X))
    assert saved.scores == clf.scores and saved.trained_on["cells"] == str(path)


def test_two_classes_use_the_logistic_rule(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    source = rng.integers(0, 8, n)
    types = rng.integers(1, 3, n)
    X = rng.normal(size=(n, 6))
    X[:, 0] += 2 * (types == 2)
    path = fake_cells(tmp_path / "two.zarr", {"x": X}, types, source)
    config = ProbeConfig(level="cell", labels="type", layers="all", method="linear", fractions=())
    clf = keep_classifier(path, run_cell_probes([path], config), config)
    assert clf.weight.shape == (1, 6)
    _, y, _ = cell_labels(open_store(path))
    pipe = fit_linear(X.astype(np.float32), y, source, config.l2_grid, config.seed)
    np.testing.assert_allclose(clf.predict_proba(X), pipe.predict_proba(X), rtol=1e-6, atol=1e-9)


def test_vectors_of_another_encoder_or_layer_are_refused_in_one_line(cells):
    tmp, path, *_ = cells
    config = ProbeConfig(level="cell", labels="type", layers="all", method="linear", fractions=())
    clf = keep_classifier(path, run_cell_probes([path], config), config)
    with pytest.raises(ConfigError, match="trained on fake") as exc:
        clf.check("uni", clf.weights_sha256, {"signal": 16}, "x")
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="reads layer signal"):
        clf.check(clf.encoder, clf.weights_sha256, {"noise": 16}, "x")
    with pytest.raises(DataError, match="not a cell classifier"):
        load_classifier(tmp)


def test_probe_save_on_the_command_line(cells):
    from click.testing import CliRunner

    from embedcache.cli import main

    tmp, path, *_ = cells
    res = CliRunner().invoke(main, ["probe", "--store", str(path), "--level", "cell", "--layers", "all", "--method",
                                    "linear", "--fractions", "", "--bootstrap", "50", "--save", str(tmp / "kept")])
    assert res.exit_code == 0, res.output
    assert load_classifier(tmp / "kept").layer == "signal" and "wrote classifier" in res.output
    res = CliRunner().invoke(main, ["probe", "--store", str(path), "--store", str(path), "--level", "cell",
                                    "--save", str(tmp / "two")])
    assert res.exit_code != 0 and "one --store" in res.stderr and not (tmp / "two").exists()


def test_a_classifier_of_another_class_set_is_refused_in_one_line(cells):
    """Its JSON naming other classes than its weights hold (two classifiers' files mixed); cells annotated in
    other classes; and the same checks passing where the classes agree or the types are a decoder's."""
    import json
    import shutil

    tmp, path, *_ = cells
    config = ProbeConfig(level="cell", labels="type", layers="all", method="linear", fractions=())
    clf = keep_classifier(path, run_cell_probes([path], config), config)
    saved = clf.save(tmp / "mixed")
    assert load_classifier(saved).sha256  # its content is known to outputs that record it
    meta = json.loads((saved / "classifier.json").read_text())
    meta["classes"] = ["tumour", "lymphocyte", "stroma", "necrosis"]
    (saved / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="names 4 classes .* holds weights \\(3, 16\\)") as exc:
        load_classifier(saved)
    assert "\n" not in str(exc.value)
    named = {1: "tumour", 2: "lymphocyte", 3: "stroma"}
    clf.check_labels(named, "labels", "x")  # its own classes
    clf.check_labels({0: "background", **named, 4: "necrosis"}, "points", "x")  # a superset
    with pytest.raises(ConfigError, match="predicts tumour, lymphocyte, stroma, but these cells are labelled "
                                          "epithelial, lymphocyte, stroma \\(no tumour\\)") as exc:
        clf.check_labels({1: "epithelial", 2: "lymphocyte", 3: "stroma"}, "labels", "x")
    assert "\n" not in str(exc.value)
    clf.check_labels({1: "epithelial"}, "outlines", "x")  # a decoder's types: the classifier refines them
    clf.check_labels({}, "labels", "x")  # no names
    shutil.rmtree(saved)
