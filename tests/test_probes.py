"""Tile-level probes: planted signals recovered, chance on shuffled labels, the layer
sweep, labels from stores and CSV files, folds, and one clear error per bad input.

Planted-signal tests run on arrays; store tests share one tiny store (20 tiles of
64x64, a random tiny ViT, 3 variants) built once per test session.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from embedcache.config import ProbeConfig
from embedcache.errors import ConfigError, DataError
from embedcache.report.stats import classification_scores, score_predictions
from embedcache.probes import fit as probe_fit
from embedcache.probes import labels as probe_labels
from embedcache.probes import run_probes, stores, tile
from embedcache.probes.fit import cross_validate, make_folds
from embedcache.probes.labels import TileLabels

TINY_VIT = "timm:test_vit"


# ----------------------------------------------------------------------------
# A tiny store, built once and shared with the CLI and patch-probe tests
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def tiny_store() -> Path:
    """20 demo tiles of 64x64 in 2 PanNuke folds, through a random tiny ViT (identity + flips)."""
    from embedcache.config import ExtractConfig
    from embedcache.datasets.synthetic import write_demo_data
    from embedcache.extract import extract

    root = Path(tempfile.mkdtemp(prefix="probe-store-"))
    atexit.register(shutil.rmtree, root, True)
    write_demo_data(root / "data", n_tiles=20, seed=1, folds=2, size=64)
    extract(root / "data", root / "vit.zarr", ExtractConfig(encoder=TINY_VIT, weights="random", variants="flips",
                                                            layers="all", loader_workers=0, device="cpu"),
            progress=False)
    return root / "vit.zarr"


def store_copy(dest: Path, **attrs) -> Path:
    """A copy of the tiny store with some of its embedcache attributes replaced (``config`` merged)."""
    import zarr

    shutil.copytree(tiny_store(), dest)
    group = zarr.open_group(str(dest), mode="r+")
    meta = dict(group.attrs)["embedcache"]
    meta["config"] = {**meta["config"], **attrs.pop("config", {})}
    meta.update(attrs)
    group.attrs["embedcache"] = meta
    return dest


# ----------------------------------------------------------------------------
# Planted signals (arrays)
# ----------------------------------------------------------------------------

def planted(n=300, d=32, k=3, seed=0, strength=3.0):
    """Features whose first directions carry the class linearly, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d))
    X[:, :k] += strength * np.eye(k)[y]
    return X.astype(np.float32), y


def balanced_accuracy(pred) -> float:
    return classification_scores(pred.y_true, pred.y_pred, pred.proba)["balanced_accuracy"]


@pytest.mark.parametrize("method", ["linear", "knn"])
def test_planted_signal_recovered_and_chance_when_shuffled(method):
    X, y = planted()
    folds = make_folds(y, 3)
    pred = cross_validate(X, y, folds, method)
    assert balanced_accuracy(pred) > 0.85
    assert pred.proba.shape == (len(y), 3) and np.allclose(pred.proba.sum(1), 1)
    shuffled = np.random.default_rng(1).permutation(y)
    assert abs(balanced_accuracy(cross_validate(X, shuffled, make_folds(shuffled, 3), method)) - 1 / 3) < 0.12


def test_knn_on_planted_clusters():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 64)) * 3
    y = np.repeat(np.arange(4), 40)
    X = centres[y] + rng.normal(size=(len(y), 64))
    pred = cross_validate(X, y, make_folds(y, 4), "knn", k=20)
    assert balanced_accuracy(pred) > 0.95
    assert pred.params["folds"][0] == {"k": 20}


def test_knn_k_larger_than_training_set_is_clipped():
    X, y = planted(n=30)
    pred = cross_validate(X, y, make_folds(y, 3), "knn", k=100)
    assert pred.params["folds"][0]["k"] == 20


def test_l2_sweep_is_chosen_on_the_training_split(monkeypatch):
    X, y = planted(n=200, d=256, strength=1.5)
    folds = make_folds(y, 4)
    swept = []
    real_split = probe_fit._inner_split
    monkeypatch.setattr(probe_fit, "_inner_split", lambda yy, groups, seed: swept.append(groups) or
                        real_split(yy, groups, seed))
    pred = cross_validate(X, y, folds, "linear", l2_grid=(1e-4, 1e-2, 1.0, 10.0))
    chosen = [f["l2"] for f in pred.params["folds"]]
    assert len(chosen) == 4 and set(chosen) <= {1e-4, 1e-2, 1.0, 10.0}
    # Each fold's sweep sees its training tiles only, never its test fold.
    assert [sorted(g) for g in swept] == [list(np.flatnonzero(folds != f)) for f in range(4)]
    # A single strength is used as given, without a validation split: C = 1 / (l2 x training rows).
    model = probe_fit.fit_linear(X[:150], y[:150], l2_grid=(0.5,))
    assert model.best_params == {"l2": 0.5} and model[-1].C == pytest.approx(1 / 75)


def test_standardisation_is_fitted_on_the_training_split_only():
    X, y = planted(n=120)
    model = probe_fit.fit_linear(X[:60] * 10 + 5, y[:60])
    scaler = model[0]
    assert np.allclose(scaler.mean_, (X[:60] * 10 + 5).mean(0), atol=1e-4)


def test_regression_targets_linear_and_knn():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 16))
    Y = np.stack([X[:, 0] * 3 + 5, X[:, 1] - X[:, 2]], axis=1) + 0.1 * rng.normal(size=(200, 2))
    folds = make_folds(Y, 5)
    for method, floor in (("linear", 0.95), ("knn", 0.2)):
        pred = cross_validate(X, Y, folds, method)
        assert pred.task == "regression" and pred.y_pred.shape == Y.shape
        from sklearn.metrics import r2_score
        assert r2_score(Y, pred.y_pred) > floor
    assert cross_validate(X, Y, folds, "linear").params["folds"][0]["l2"] in ProbeConfig.l2_grid


def test_variants_train_only_when_augmenting_and_tests_stay_on_identity():
    rng = np.random.default_rng(4)
    n, d = 60, 16
    y = np.arange(n) % 2
    # Variants 1..3 carry the other class's signal: they outvote the identity only if training reads them.
    centres = rng.normal(size=(2, d))
    X = np.stack([centres[c] + 0.5 * rng.normal(size=(n, d)) for c in (y, 1 - y, 1 - y, 1 - y)], axis=1)
    folds = make_folds(y, 5)
    plain = cross_validate(X[:, 0], y, folds, "linear")
    assert np.array_equal(plain.y_pred, cross_validate(X, y, folds, "linear", augment=False).y_pred)
    assert balanced_accuracy(plain) > 0.95
    for method in ("linear", "knn"):
        assert balanced_accuracy(cross_validate(X, y, folds, method, augment=True)) < 0.1


def test_layer_sweep_picks_the_planted_layer():
    X, y = planted(n=240, d=24, strength=2.5)
    rng = np.random.default_rng(5)
    features = {f"blocks.{i}": rng.normal(size=X.shape) for i in range(4)}
    features["blocks.2"] = X
    labels = TileLabels("planted", "classification", y, ["a", "b", "c"])
    config = ProbeConfig(method="both", l2_grid=(1.0, 0.01))
    preds = probe_fit.probe_features(features, labels, make_folds(y, 3), config, store="s")
    assert [(p.layer, p.method) for p in preds][:2] == [("blocks.0", "linear"), ("blocks.0", "knn")]
    assert [p.depth for p in preds[::2]] == [0.25, 0.5, 0.75, 1.0]
    best = score_predictions(preds, n_boot=20, n_jobs=1).best()
    assert {(b["method"], b["layer"]) for b in best} == {("linear", "blocks.2"), ("knn", "blocks.2")}


def test_features_read_lazily_one_layer_at_a_time():
    X, y = planted(n=60)
    calls = []
    feats = {name: (lambda name=name: calls.append(name) or X) for name in ("a", "b")}
    labels = TileLabels("planted", "classification", y, ["a", "b", "c"])
    probe_fit.probe_features(feats, labels, make_folds(y, 3), ProbeConfig(method="both", l2_grid=(0.01,)))
    assert calls == ["a", "b"]


def test_mismatched_lengths_and_shapes():
    X, y = planted(n=30)
    with pytest.raises(DataError, match=r"features \(29\), labels \(30\) and folds \(30\) disagree"):
        cross_validate(X[:29], y, make_folds(y, 3))
    with pytest.raises(DataError, match=r"must be \(n, D\) or \(n, V, D\)"):
        cross_validate(X[:, :, None, None], y, make_folds(y, 3))
    with pytest.raises(ConfigError, match="method must be linear or knn"):
        cross_validate(X, y, make_folds(y, 3), "svm")
    X[3, 1] = np.nan
    with pytest.raises(DataError, match="features hold NaN or infinite values; check the store"):
        cross_validate(X, y, make_folds(y, 3))


# ----------------------------------------------------------------------------
# Folds
# ----------------------------------------------------------------------------

def test_folds_from_the_store_or_stratified():
    y = np.array([0, 1] * 10)
    store_folds = np.array([3] * 10 + [7] * 10)
    assert set(make_folds(y, None, store_folds)) == {0, 1}
    assert np.array_equal(make_folds(y, None, store_folds), (store_folds == 7).astype(int))
    f = make_folds(y, 4, store_folds)  # explicit K wins over the store's folds
    assert sorted(np.bincount(f)) == [5, 5, 5, 5]
    assert all(np.bincount(y[f == k]).tolist() in ([2, 3], [3, 2]) for k in range(4))
    assert np.array_equal(make_folds(y, 4, seed=0), make_folds(y, 4, seed=0))
    assert set(make_folds(y, None, np.zeros(20))) == {0, 1, 2, 3, 4}  # one store fold: 5-fold


def test_fold_errors():
    y = np.array([0] * 10 + [1] * 2)
    with pytest.raises(DataError, match="a class has only 2 tile\\(s\\), fewer than the 5 folds"):
        make_folds(y, 5)
    with pytest.raises(DataError, match="the training split of fold 0 holds a single class"):
        make_folds(y, None, np.array([0] * 10 + [1] * 2))
    with pytest.raises(DataError, match="6 folds for 5 tiles"):
        make_folds(np.zeros((5, 1)), 6)


# ----------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------

def test_nuclei_per_type_and_dominant_type():
    inst = np.zeros((3, 8, 8), int)
    types = np.zeros((3, 8, 8), int)
    inst[0, :2, :2], types[0, :2, :2] = 1, 2
    inst[0, 4:, 4:], types[0, 4:, 4:] = 7, 3
    types[0, 4, 4] = 1  # a stray pixel: the nucleus keeps its majority type 3
    inst[0, :2, 6:], types[0, :2, 6:] = 9, 3
    inst[1, :3, :3] = 2  # one nucleus of unknown type 0
    counts = probe_labels.nuclei_per_type(inst, types, 4)
    assert counts.tolist() == [[0, 0, 1, 2], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert probe_labels.dominant_type(counts, ["unknown", "a", "b", "c"]) == ["c", "unknown", probe_labels.NO_NUCLEI]


def test_csv_labels(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("label,tile\nA,0\nB,1\nA,img2\n")
    assert probe_labels.read_csv_labels(f, 3, ["img0", "img1", "img2"]) == ["A", "B", "A"]
    f.write_text("tile,label\n0,A\n1,B\n")
    with pytest.raises(DataError, match=r"labels missing for 1 of 3 tiles \(e.g. 2\); give every tile a label"):
        probe_labels.read_csv_labels(f, 3)
    f.write_text("tile,label\n0,A\n1,B\n2,A\n7,B\nfoo,A\n")
    with pytest.raises(DataError, match=r"2 unknown tile id\(s\), e.g. '7', 'foo'; ids are row numbers 0..2"):
        probe_labels.read_csv_labels(f, 3)
    f.write_text("tile,label\n0,A\n0,B\n")
    with pytest.raises(DataError, match=":3: tile '0' is listed twice"):
        probe_labels.read_csv_labels(f, 3)
    f.write_text("just one column\n")
    with pytest.raises(DataError, match="expected a header and rows of 'tile,label'"):
        probe_labels.read_csv_labels(f, 3)
    with pytest.raises(DataError, match="no such label file"):
        probe_labels.read_csv_labels(tmp_path / "nope.csv", 3)


def test_csv_labels_by_source_name_label_every_tile_of_the_source(tmp_path):
    read = probe_labels.read_csv_labels
    names = ["image01", "image01", "image02", "image02", "image02", "image03"]  # several tiles per image
    f = tmp_path / "labels.csv"
    f.write_text("tile,label\nimage01,tumour\nimage02,stroma\n5,tumour\n")
    assert read(f, 6, names) == ["tumour", "tumour", "stroma", "stroma", "stroma", "tumour"]
    # No header, names first; a row number and its own image agreeing; an image listed twice the same way.
    f.write_text("image02,b\nimage01,a\n3,b\nimage03,c\nimage02,b\n")
    assert read(f, 6, names) == ["a", "a", "b", "b", "b", "c"]
    # A group given by image groups all of its tiles; a tile row may leave the group to its image.
    f.write_text("tile,label,group\nimage01,a,p1\nimage02,b,p2\nimage03,a,p1\n4,b,\n")
    assert read(f, 6, names, groups=True) == (["a", "a", "b", "b", "b", "a"], ["p1", "p1", "p2", "p2", "p2", "p1"])
    # A number below the tile count is a row number, even where an image has that name; above, a name.
    f.write_text("tile,label\n0,x\n1,x\n2,z\n3,z\n")
    assert read(f, 4, ["1", "1", "0", "0"]) == ["x", "x", "z", "z"]
    f.write_text("tile,label\n7,y\n2,z\n3,z\n")
    assert read(f, 4, ["7", "7", "0", "0"]) == ["y", "y", "z", "z"]


@pytest.mark.parametrize("text, fragments", [
    ("tile,label\nimage01,a\nimage02,b\nimage01,c\n",
     [":4: image 'image01' is listed twice with different labels 'a' (line 2) and 'c'"]),
    ("tile,label,group\nimage01,a,p1\nimage01,a,p2\n", [":3: image 'image01'", "groups 'p1' (line 2) and 'p2'"]),
    ("tile,label\nimage01,a\nimage02,b\n3,a\n",
     [":4: tile 3 has the label 'a' but its image 'image02' has 'b' (line 3)"]),
    ("tile,label,group\nimage02,b,p1\n2,b,p2\n", [":3: tile 2 is in group 'p2' but its image 'image02' is in 'p1'"]),
    ("tile,label\nimage01,a\nimage9,b\n",
     ["1 unknown tile id(s), e.g. 'image9'; ids are row numbers 0..5 or source image names "
      "('image01', 'image02', 'image03')"]),
])
def test_csv_labels_by_name_refused_in_one_line(tmp_path, text, fragments):
    f = tmp_path / "labels.csv"
    f.write_text(text)
    names = ["image01", "image01", "image02", "image02", "image02", "image03"]
    with pytest.raises(DataError) as err:
        probe_labels.read_csv_labels(f, 6, names, every_tile=False, groups=True)
    message = str(err.value)
    assert "\n" not in message and str(f) in message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_names_list_a_few_of_many(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("tile,label\nslide-x,a\n")
    names = [f"slide-{k}" for k in range(5) for _ in range(2)]
    with pytest.raises(DataError, match=r"source image names \('slide-0', 'slide-1', 'slide-2', \.\.\. 5 in all\)"):
        probe_labels.read_csv_labels(f, 10, names)


def test_single_class_and_constant_targets():
    with pytest.raises(DataError, match="every one of the 4 tiles has the class 'x'; a probe needs at least two"):
        probe_labels._encode(["x"] * 4, "f.csv")
    with pytest.raises(DataError, match="the targets are the same for every tile"):
        probe_labels.check_labels(TileLabels("counts", "regression", np.ones((5, 2)), ["a", "b"]))


# ----------------------------------------------------------------------------
# Stores
# ----------------------------------------------------------------------------

def test_store_labels_tissue_type_counts_and_csv(tmp_path):
    from embedcache.store.reader import open_store

    store = open_store(tiny_store())
    tissue = probe_labels.tile_labels(store, "tissue")
    assert tissue.task == "classification" and len(tissue.y) == 20
    assert [tissue.names[c] for c in tissue.y] == store.tissue
    counts = probe_labels.tile_labels(store, "counts")
    inst, types = store.labels([3])
    assert counts.task == "regression" and counts.names[0] == "neoplastic"
    assert counts.y[3].sum() == len(np.unique(inst[0][inst[0] > 0]))
    kind = probe_labels.tile_labels(store, "type")
    assert kind.names[kind.y[3]] == counts.names[int(np.argmax(counts.y[3]))]
    f = tmp_path / "l.csv"
    f.write_text("tile,label\n" + "".join(f"{t},{'odd' if t % 2 else 'even'}\n" for t in range(20)))
    assert probe_labels.tile_labels(store, str(f)).names == ["even", "odd"]


def test_run_probes_reads_only_pooled_arrays(monkeypatch):
    from embedcache.store.reader import Store

    def forbidden(*a, **k):
        raise AssertionError("a tile-level probe read token arrays")

    monkeypatch.setattr(Store, "tokens", forbidden)
    monkeypatch.setattr(Store, "prefix", forbidden)
    preds, info = run_probes([tiny_store()], ProbeConfig(layers="0,blocks.5", l2_grid=(0.01,)))
    assert [(p.layer, p.method) for p in preds] == [("blocks.0", "linear"), ("blocks.0", "knn"),
                                                    ("blocks.5", "linear"), ("blocks.5", "knn")]
    assert info["folds"] == "store folds" and info["n_folds"] == 2 and info["level"] == "tile"
    assert all(p.store == "vit" and p.encoder == TINY_VIT and len(p.y_true) == 20 for p in preds)
    assert [p.depth for p in preds[::2]] == [1 / 6, 1.0]


def test_pooled_kinds_and_augmentation():
    from embedcache.store.reader import open_store

    store = open_store(tiny_store())
    assert tile.pooled_features(store, "blocks.1").shape == (20, 1, 64)
    assert tile.pooled_features(store, "blocks.1", "both", augment=True).shape == (20, 3, 128)
    preds, _ = run_probes([tiny_store()], ProbeConfig(pooled="cls", augment=True, folds=2, l2_grid=(0.01,)))
    assert len(preds) == 2


def test_stores_of_different_tiles_are_refused(tmp_path):
    other = store_copy(tmp_path / "other.zarr", config={"dataset_fingerprint": "f" * 64})
    with pytest.raises(DataError, match=r"other.zarr and .*vit.zarr hold different tiles \(dataset fingerprints "
                                        r"ffffffffffff vs [0-9a-f]{12}\); stores compared together must be"):
        stores.open_stores([tiny_store(), other])
    same = store_copy(tmp_path / "same.zarr")
    assert [s.path.name for s in stores.open_stores([tiny_store(), same])] == ["vit.zarr", "same.zarr"]


def test_store_errors(tmp_path):
    from embedcache.errors import StoreError
    from embedcache.store.reader import open_store

    store = open_store(tiny_store())
    with pytest.raises(ConfigError, match=r"vit.zarr: no layer 'blocks.9'; it has blocks.0, blocks.1, "):
        store.select_layers("blocks.9")
    with pytest.raises(ConfigError, match="no layer named in ','"):
        store.select_layers(",")
    untissued = open_store(store_copy(tmp_path / "conic.zarr", tissue_names=[]))
    with pytest.raises(DataError, match="the dataset has no tissue labels .* use --labels type, counts or a CSV"):
        probe_labels.tile_labels(untissued, "tissue")
    incomplete = store_copy(tmp_path / "half.zarr", complete=False)
    with pytest.raises(StoreError, match="half.zarr: the store is incomplete"):
        stores.open_stores([incomplete])
    with pytest.raises(ConfigError, match="no store given"):
        stores.open_stores([])


def test_probe_config_validation():
    assert ProbeConfig.from_dict(ProbeConfig(l2_grid=[1, 2]).to_dict()).l2_grid == (1.0, 2.0)
    for kwargs, message in [
        ({"method": "svm"}, "method must be linear, knn or both"),
        ({"labels": "organ"}, "labels must be tissue, type, counts or a .csv file"),
        ({"level": "patch", "labels": "tissue", "method": "linear"}, "patch-level labels must be nuclei or type"),
        ({"level": "patch", "labels": "nuclei"}, "the patch-level probe is linear only"),
        ({"folds": 1}, "folds must be at least 2"),
        ({"k": 0}, "k must be at least 1"),
        ({"l2_grid": (0.0,)}, "l2_grid needs positive values"),
        ({"pooled": "max"}, "pooled must be mean, cls or both"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ProbeConfig(**kwargs)


def test_sweep_on_few_tiles_of_many_classes():
    # 15 tiles of 5 classes: a stratified fifth (3 tiles) cannot hold every class,
    # so the inner split must fall back to a plain one rather than fail.
    X, y = planted(n=15, d=8, k=5, seed=3)
    model = probe_fit.fit_linear(X, y, l2_grid=(1.0, 0.1, 0.01))
    assert model.best_params["l2"] in (1.0, 0.1, 0.01)
    assert model.predict(X).shape == (15,)


# ----------------------------------------------------------------------------
# Splits over source images
# ----------------------------------------------------------------------------

def test_folds_keep_every_image_whole():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), 4)  # 12 images of 4 tiles
    y = np.repeat(rng.permutation([0, 1] * 6), 4)
    folds = make_folds(y, 4, groups=groups)
    assert all(len(np.unique(folds[groups == g])) == 1 for g in range(12))
    assert sorted(np.bincount(folds)) == [12, 12, 12, 12]  # 3 images per fold
    with pytest.raises(DataError, match="5 folds for 4 source images: folds keep each image's tiles together"):
        make_folds(np.repeat([0, 1, 0, 1], 3), 5, groups=np.repeat(np.arange(4), 3))
    # A class that lives in one image only cannot be on both sides of a split: named.
    y3 = y.copy()
    y3[groups == 0] = 2
    with pytest.raises(DataError, match="training split of fold . has no tile of 'rare'"):
        make_folds(y3, 4, groups=groups, names=["a", "b", "rare"])
    # One tile per image: the tile folds as before, exactly.
    assert np.array_equal(make_folds(y, 4, groups=np.arange(len(y))), make_folds(y, 4))


def test_a_label_random_per_image_scores_at_chance(tmp_path):
    """Tiles of one image share stain and tissue: tile folds would reward memory, image folds do not."""
    from PIL import Image

    from embedcache.config import ExtractConfig
    from embedcache.datasets.synthetic import make_tiles
    from embedcache.extract import extract

    (tmp_path / "data").mkdir()
    images, labels, _ = make_tiles(12, seed=3, size=128)
    for k in range(12):
        Image.fromarray(images[k]).save(tmp_path / "data" / f"img{k:02d}.png")
        Image.fromarray(labels[k, ..., 0].astype(np.uint16)).save(tmp_path / "data" / f"img{k:02d}_inst.png")
    store = extract(tmp_path / "data", tmp_path / "s.zarr",
                    ExtractConfig(encoder=TINY_VIT, weights="random", variants="none", tile_size=64,
                                  loader_workers=0, device="cpu"), progress=False).path
    from embedcache.store.reader import open_store

    source = open_store(store).tile_info()["source"]
    label = np.random.default_rng(0).permutation(["A", "B"] * 6)
    f = tmp_path / "labels.csv"
    f.write_text("tile,label\n" + "".join(f"{t},{label[s]}\n" for t, s in enumerate(source)))
    preds, info = run_probes([store], ProbeConfig(labels=str(f), method="knn", folds=4, n_boot=300))
    table = score_predictions(preds, n_boot=300, info=info)
    assert info["folds"] == "stratified 4-fold over 12 source images" and info["n_units"] == 12
    assert table.info["bootstrap_unit"] == "source image" and table.info["bootstrap_units"] == 12
    ba = table.rows[0]["scores"]["balanced_accuracy"]
    assert ba["lo"] < 0.5 < ba["hi"] and abs(ba["value"] - 0.5) < 0.2
    assert all(len(np.unique(preds[0].groups[source == s])) == 1 for s in range(12))
    # The same labels keyed by image name: every tile of an image takes its row's label.
    by_name = tmp_path / "by_name.csv"
    by_name.write_text("tile,label\n" + "".join(f"img{s:02d},{label[s]}\n" for s in range(12)))
    got = probe_labels.tile_labels(open_store(store), str(by_name))
    assert len(source) > 12 and [got.names[c] for c in got.y] == [label[s] for s in source]
    # A group column that splits an image is refused, naming the image.
    split = ["x" if (s == 0 and k % 2) else f"p{s}" for k, s in enumerate(source)]
    f.write_text("tile,label,group\n" + "".join(f"{t},{label[s]},{g}\n" for t, (s, g) in enumerate(zip(source, split))))
    with pytest.raises(DataError, match="the tiles of image 'img00' are in groups 'p0' and 'x'"):
        run_probes([store], ProbeConfig(labels=str(f), method="knn", folds=4, n_boot=10))


def test_a_group_column_keeps_patients_whole(tmp_path):
    store = store_copy(tmp_path / "s.zarr")
    from embedcache.store.reader import open_store

    n = open_store(store).n_tiles  # 20 tiles, each its own source image
    patient = [f"p{t // 4}" for t in range(n)]  # 5 patients of 4 tiles
    f = tmp_path / "labels.csv"
    f.write_text("tile,label,group\n" + "".join(f"{t},{'ab'[t // 4 % 2]},{patient[t]}\n" for t in range(n)))
    preds, info = run_probes([store], ProbeConfig(labels=str(f), method="linear", folds=2, n_boot=50))
    assert info["unit"] == "group" and info["n_units"] == 5 and info["folds"] == "stratified 2-fold over 5 groups"
    folds = preds[0].params  # each patient's tiles were predicted by one fold's probe
    assert len(folds["folds"]) == 2
    assert all(len(np.unique(preds[0].groups[np.asarray(patient) == p])) == 1 for p in set(patient))
    assert "resamples of the test groups (5)" in score_predictions(preds, n_boot=50, info=info).format()
    f.write_text("tile,label,group\n" + "".join(f"{t},{'ab'[t % 2]},p0\n" for t in range(n)))
    with pytest.raises(DataError, match="the group column holds one group \\('p0'\\): nothing to split on"):
        run_probes([store], ProbeConfig(labels=str(f), method="linear", folds=2))
    f.write_text("tile,label,group\n" + "".join(f"{t},{'ab'[t % 2]},{'p' if t else ''}\n" for t in range(n)))
    with pytest.raises(DataError, match="the group column is empty for 1 labelled tile"):
        run_probes([store], ProbeConfig(labels=str(f), method="linear", folds=2))


def test_folds_that_cannot_be_stratified_are_said_to_be():
    from embedcache.probes.tile import _unstratified

    labels = TileLabels("f.csv", "classification", np.array([0, 0, 0, 1, 0, 0]), ["common", "rare"])
    assert _unstratified(labels, np.array([0, 0, 0, 0, 1, 1])) == (
        "the folds could not be stratified: test fold 1 holds no tile of 'rare' (too few images of it to spread "
        "over the folds)")
    both = TileLabels("f.csv", "classification", np.array([0, 0, 1, 1, 0, 0]), ["common", "rare"])
    assert _unstratified(both, np.array([0, 1, 0, 1, 0, 1])) == ""


def test_instance_only_stores_probe_counts_and_patches_and_refuse_types(tmp_path):
    """Labels without types: nuclei per tile is a regression, patches a nucleus map; 'type' has nothing to probe."""
    from PIL import Image

    from embedcache.config import ExtractConfig
    from embedcache.datasets.synthetic import make_tiles
    from embedcache.extract import extract

    (tmp_path / "data").mkdir()
    images, labels, _ = make_tiles(6, seed=4, size=70)  # 70 px at 64-px tiles: edge tiles 6 px wide
    for k in range(6):
        Image.fromarray(images[k]).save(tmp_path / "data" / f"img{k}.png")
        Image.fromarray(labels[k, ..., 0].astype(np.uint16)).save(tmp_path / "data" / f"img{k}_inst.png")
    store = extract(tmp_path / "data", tmp_path / "s.zarr",
                    ExtractConfig(encoder=TINY_VIT, weights="random", variants="none", tile_size=64, overlap=0,
                                  loader_workers=0, device="cpu"), progress=False).path
    preds, info = run_probes([store], ProbeConfig(labels="counts", method="linear", folds=3, n_boot=20))
    assert info["labels"]["task"] == "regression" and info["labels"]["names"] == ["type 0"]
    assert preds[0].y_pred.shape == preds[0].y_true.shape == (24, 1)
    with pytest.raises(DataError, match="no types \\(instance labels only\\), so --labels type has nothing"):
        run_probes([store], ProbeConfig(labels="type", method="linear", folds=3))
    patch, _ = run_probes([store], ProbeConfig(level="patch", labels="nuclei", method="linear", folds=3, n_boot=20))
    assert patch[0].confusion.shape == (24, 2, 2) and patch[0].confusion.sum() > 0


def test_a_training_split_of_one_source_image_is_a_clear_error_not_a_traceback():
    """The L2 sweep holds out whole images; with one image in a fold's training split scikit-learn failed."""
    from embedcache.errors import DataError
    from embedcache.probes.fit import fit_linear

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.tile([0, 1], 20)
    with pytest.raises(DataError, match="single source image"):
        fit_linear(X, y, np.zeros(40, int))
