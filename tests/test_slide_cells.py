"""Cell vectors of whole slides from predict's own forward: the vectors `cells` pools from a store of the slide."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_helpers import make_store, one_thread, run_and_slide  # noqa: F401 (one_thread: pytestmark)

from embedcache.cells import build_cells
from embedcache.config import CellsConfig
from embedcache.errors import ConfigError
from embedcache.infer import slide_cells
from embedcache.infer.slides import predict_slides
from embedcache.store import open_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    made = run_and_slide(tmp_path_factory.mktemp("slidecells"), (256, 320))
    tmp, slides = made["tmp"], made["slides"]
    # Every tile kept (min_tissue 0): `cells` then chooses among the same grid tiles a region holds.
    cache = make_store(slides, tmp / "slides.zarr", variants="none", format="slides", tile_size=64,
                       overlap=16, tile_mpp=0.5, min_tissue=0.0)
    return {**made, "cache": cache}


def _table(folder):
    import pyarrow.parquet as pq

    return pq.read_table(folder / "nuclei.parquet").to_pydict()


def _vectors(folder, layer):
    import zarr

    return np.asarray(zarr.open_group(str(folder / "cells.zarr"), mode="r")[f"vectors/{layer}"][:])


def _run(setup, out, monkeypatch=None, **kw):
    return predict_slides(setup["run"], setup["slides"], setup["tmp"] / out, run_mpp=0.5, region=96, margin=80,
                          progress=False, cells="all", **kw)


def test_vectors_equal_those_cells_pools_from_a_store_of_the_slide(setup, monkeypatch):
    """The regions' kept nuclei, painted into one map of the slide, given to `cells` over a store of the same
    slide and grid: the same vector for every nucleus, from tokens captured during predict's forward."""
    tmp = setup["tmp"]
    seen = []
    real = slide_cells.region_weights

    def spy(inst, instances, tiles, tile, grids):
        seen.append((inst.copy(), list(instances)))
        return real(inst, instances, tiles, tile, grids)

    monkeypatch.setattr("embedcache.infer.slides.region_weights", spy)
    res = _run(setup, "pred", store=setup["cache"])
    assert res[0].status == "done" and res[0].regions > 4
    table = _table(tmp / "pred" / "a")
    n = len(table["id"])
    assert n > 5
    # The slide's nuclei map, from the regions' own instance maps (each kept nucleus is whole in its read box).
    from embedcache.infer.slides import on_tile_grid, plan_slide

    plan = plan_slide(setup["slides"] / "a.tif", 0.5, 96, 80)
    boxes = on_tile_grid(plan.regions, plan.shape, (64, 64), 16)
    slide_map = np.zeros(plan.shape, np.int32)
    k = 0
    for r, (inst, kept) in zip(boxes, seen):
        q0, d0 = r.read[:2]
        for i in kept:
            k += 1
            rr, cc = np.nonzero(inst == i)
            slide_map[rr + q0, cc + d0] = k
    assert k == n
    labels = tmp / "labels"
    labels.mkdir()
    # The store's image runs to its last tile's end (past the slide's edge, read as background): no nuclei there.
    shape = open_store(setup["cache"]).tile_info()
    h, w = (shape["offset"] + shape["valid"]).max(axis=0)
    np.save(labels / "a_inst.npy", np.pad(slide_map, ((0, h - plan.shape[0]), (0, w - plan.shape[1]))))
    cells = build_cells(setup["cache"], tmp / "cells.zarr", CellsConfig(nuclei=str(labels)), progress=False)
    store = open_store(cells.path)
    centroid = store.table()["centroid"]  # (row, col) pixel indices; the slide table's level-0 px are +0.5
    order = np.lexsort((centroid[:, 1], centroid[:, 0]))
    mine = np.lexsort((np.asarray(table["x_px"]) - 0.5, np.asarray(table["y_px"]) - 0.5))
    np.testing.assert_allclose(centroid[order], np.column_stack([table["y_px"], table["x_px"]])[mine] - 0.5,
                               atol=1e-6)
    for layer in store.layers:
        ours = _vectors(tmp / "pred" / "a", layer)
        assert ours.shape == (n, store.dims[layer])
        np.testing.assert_allclose(ours[mine], store.vectors(layer)[order], rtol=1e-3, atol=1e-3)
        assert np.abs(ours).sum(axis=1).min() > 0  # every nucleus got tokens


def _killed_mid_slide(monkeypatch, run):
    """``run()`` killed as it writes its third region (KeyboardInterrupt, as from a kill), then the writer restored."""
    from embedcache.infer import slide_output

    real, calls = slide_output.write_region, []

    def dies_on_the_third(path, rows, work=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, rows, work)

    monkeypatch.setattr("embedcache.infer.slides.write_region", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr("embedcache.infer.slides.write_region", real)


def test_live_vectors_equal_cached_ones_and_resume_is_exact(setup, monkeypatch):
    """Tokens of the live encoder give the vectors of the store's; a killed run resumes to the same files."""
    tmp = setup["tmp"]
    live = _run(setup, "live", overlap=16)
    assert live[0].status == "done"
    table = _table(tmp / "live" / "a")
    _killed_mid_slide(monkeypatch, lambda: _run(setup, "killed", overlap=16))
    assert _run(setup, "killed", overlap=16)[0].status == "done"
    assert _table(tmp / "killed" / "a") == table
    layers = open_store(setup["cache"]).layers
    for layer in layers:
        np.testing.assert_array_equal(_vectors(tmp / "killed" / "a", layer), _vectors(tmp / "live" / "a", layer))
    if (tmp / "pred" / "a").exists():  # the store's tokens: the same vectors up to the store's rounding
        np.testing.assert_allclose(_vectors(tmp / "live" / "a", layers[-1]), _vectors(tmp / "pred" / "a", layers[-1]),
                                   rtol=1e-2, atol=1e-2)


def test_post_workers_give_the_same_vectors_for_the_same_nuclei(setup):
    """Workers post-process maps sent as float16, so a few outlines may move; every nucleus found the same
    (centroid and area) gets the same vector, and the rows follow the table."""
    tmp = setup["tmp"]
    _run(setup, "workers", overlap=16, post_workers=1)
    if not (tmp / "live" / "a").exists():
        _run(setup, "live", overlap=16)
    a, b = _table(tmp / "workers" / "a"), _table(tmp / "live" / "a")
    key = lambda t: {(round(x, 6), round(y, 6), s): i  # noqa: E731
                     for i, (x, y, s) in enumerate(zip(t["x_px"], t["y_px"], t["area_um2"]))}
    ka, kb = key(a), key(b)
    same = sorted(set(ka) & set(kb))
    assert len(same) >= 3
    for layer in open_store(setup["cache"]).layers:
        va, vb = _vectors(tmp / "workers" / "a", layer), _vectors(tmp / "live" / "a", layer)
        assert len(va) == len(a["id"])
        np.testing.assert_array_equal(va[[ka[k] for k in same]], vb[[kb[k] for k in same]])


def test_a_layer_the_encoder_does_not_tap_is_refused_in_one_line(setup):
    out = setup["tmp"] / "badlayer"
    with pytest.raises(ConfigError, match="--cells.*nope"):
        predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, cells="nope", progress=False)
    assert not out.exists()


def _predicted(setup):
    if not (setup["tmp"] / "pred" / "a").exists():
        _run(setup, "pred", store=setup["cache"])
    return setup["tmp"] / "pred"


def test_cells_of_a_slide_store_from_predicted_outlines_or_a_qupath_export(setup):
    """`cells --store SLIDE_STORE --nuclei OUT` draws predict's outlines onto the store's image: the same nuclei
    (centroids within a pixel, the outlines being simplified by half a pixel) and nearly the same vectors;
    QuPath's GeoJSON export of the same detections gives the same cells."""
    import shutil

    from embedcache.errors import DataError

    tmp = setup["tmp"]
    pred = _predicted(setup)
    table = _table(pred / "a")
    cells = open_store(build_cells(setup["cache"], tmp / "from-out.zarr", CellsConfig(nuclei=str(pred)),
                                   progress=False).path)
    assert cells.n_cells == len(table["id"]) and cells.nuclei["kind"] == "outlines"
    got = cells.table()["centroid"]
    want = np.column_stack([table["y_px"], table["x_px"]]) - 0.5
    order, mine = np.lexsort(got.T[::-1]), np.lexsort(want.T[::-1])
    assert np.abs(got[order] - want[mine]).max() < 1.0
    layer = cells.layers[-1]
    a, b = cells.vectors(layer)[order], _vectors(pred / "a", layer)[mine]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95
    names = {n for n in table["type_name"] if n}
    assert {v for v in cells.class_names.values()} >= names
    qupath = tmp / "qupath"
    qupath.mkdir()
    shutil.copy(pred / "a" / "nuclei.geojson", qupath / "a.geojson")
    again = open_store(build_cells(setup["cache"], tmp / "from-qupath.zarr", CellsConfig(nuclei=str(qupath)),
                                   progress=False).path)
    np.testing.assert_array_equal(again.table()["centroid"], cells.table()["centroid"])
    np.testing.assert_allclose(again.vectors(layer), cells.vectors(layer), atol=1e-6)
    # A GeoJSON of another slide (coordinates outside this one): one line, nothing written.
    fc = __import__("json").loads((qupath / "a.geojson").read_text())
    for f in fc["features"]:
        f["geometry"]["coordinates"] = [[[x + 1000, y] for x, y in ring] for ring in f["geometry"]["coordinates"]]
    other = tmp / "other"
    other.mkdir()
    (other / "a.geojson").write_text(__import__("json").dumps(fc))
    with pytest.raises(DataError, match="outside slide 'a'"):
        build_cells(setup["cache"], tmp / "bad.zarr", CellsConfig(nuclei=str(other)), progress=False)
    assert not (tmp / "bad.zarr").exists() and not (tmp / "bad.zarr.partial").exists()


def _hand_classifier(setup, layer=None, encoder=None, classes=("tumour", "immune", "stroma")):
    """A classifier of the run's encoder made by hand (the slide is too small to train one)."""
    from embedcache.probes.classifier import CellClassifier
    from embedcache.train.checkpoint import load_run

    run = load_run(setup["run"], device="cpu")
    layer = layer or run.store["layers"][-1]
    dim = int(run.store["shapes"][layer][0])
    rng = np.random.default_rng(0)
    k = len(classes)
    return CellClassifier(layer, dim, list(classes), rng.normal(size=dim), rng.uniform(0.5, 2, dim),
                          rng.normal(size=(k, dim)), rng.normal(size=k), encoder or run.store["encoder"]["name"],
                          run.store["weights_sha256"])


def test_a_cell_classifier_types_every_nucleus_into_the_table_geojson_and_summary(setup):
    import json

    tmp = setup["tmp"]
    clf = _hand_classifier(setup)
    path = clf.save(tmp / "clf")
    res = predict_slides(setup["run"], setup["slides"], tmp / "typed", run_mpp=0.5, region=96, margin=80,
                         overlap=16, progress=False, cell_classifier=path)  # no --cells: the classifier's layer
    assert res[0].status == "done"
    folder = tmp / "typed" / "a"
    import pyarrow.parquet as pq

    classes = pq.read_table(folder / "cell_classes.parquet").to_pydict()
    table = _table(folder)
    X = _vectors(folder, clf.layer)
    p = clf.predict_proba(X)
    assert classes["id"] == table["id"]
    np.testing.assert_allclose(np.column_stack([classes[f"p_{n}"] for n in clf.classes]), p, rtol=1e-5, atol=1e-6)
    assert classes["class_name"] == [clf.classes[i] for i in p.argmax(1)]
    fc = json.loads((folder / "nuclei.geojson").read_text())
    assert [f["properties"]["classification"]["name"] for f in fc["features"]] == classes["class_name"]
    assert all(f"p_{n}" in f["properties"]["measurements"] for f in fc["features"] for n in clf.classes)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["cells_per_class"] == {n: classes["class_name"].count(n) for n in clf.classes}
    assert sum(summary["cells_per_class"].values()) == summary["nuclei"]


def test_a_classifier_of_another_encoder_or_layer_is_refused_and_nothing_written(setup):
    from click.testing import CliRunner

    from embedcache.cli import main

    tmp = setup["tmp"]
    other = _hand_classifier(setup, encoder="uni").save(tmp / "clf-uni")
    out = tmp / "refused"
    res = CliRunner().invoke(main, ["predict", "--run", str(setup["run"]), "--slides", str(setup["slides"]),
                                    "--run-mpp", "0.5", "--out", str(out), "--cell-classifier", str(other)])
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(err) == 1 and "trained on uni" in err[0], res.output
    assert not out.exists()
    cells_out = tmp / "refused.cells.zarr"
    res = CliRunner().invoke(main, ["cells", "--store", str(setup["cache"]), "--out", str(cells_out),
                                    "--nuclei", str(_predicted(setup)), "--classify", str(other)])
    assert res.exit_code != 0 and "trained on uni" in res.stderr and not cells_out.exists()


def test_cells_classify_writes_each_cells_class_and_probabilities(setup):
    from click.testing import CliRunner

    from embedcache.cli import main
    import pyarrow.parquet as pq

    tmp = setup["tmp"]
    clf = _hand_classifier(setup)
    path = clf.save(tmp / "clf2")
    out = tmp / "classified.cells.zarr"
    res = CliRunner().invoke(main, ["cells", "--store", str(setup["cache"]), "--out", str(out), "--nuclei",
                                    str(_predicted(setup)), "--classify", str(path)])
    assert res.exit_code == 0, res.output
    got = pq.read_table(out / "cell_classes.parquet").to_pydict()
    X = open_store(out).vectors(clf.layer)
    np.testing.assert_allclose(np.column_stack([got[f"p_{n}"] for n in clf.classes]), clf.predict_proba(X),
                               rtol=1e-5, atol=1e-6)
    assert got["id"] == list(range(len(X)))


def test_anndata_holds_the_table_centroids_in_microns_and_every_layers_vectors(setup):
    """cells.h5ad read back by anndata: obs the nuclei table and classes, obsm['spatial'] the centroids in um,
    obsm['X_<layer>'] the vectors of cells.zarr, row for row."""
    import json

    import anndata as ad
    import pyarrow.parquet as pq

    tmp = setup["tmp"]
    clf = _hand_classifier(setup).save(tmp / "clf-ad")
    res = predict_slides(setup["run"], setup["slides"], tmp / "ad", run_mpp=0.5, region=96, margin=80, overlap=16,
                         progress=False, cells="all", cell_classifier=clf, anndata=True)
    assert res[0].status == "done"
    folder = tmp / "ad" / "a"
    adata = ad.read_h5ad(folder / "cells.h5ad")
    table = _table(folder)
    assert adata.n_obs == len(table["id"]) and list(adata.obs_names) == [str(i) for i in table["id"]]
    np.testing.assert_allclose(adata.obsm["spatial"], np.column_stack([table["x_um"], table["y_um"]]))
    np.testing.assert_allclose(adata.obsm["spatial"], np.column_stack([table["x_px"], table["y_px"]]) * 0.5)
    for layer in open_store(setup["cache"]).layers:
        np.testing.assert_array_equal(adata.obsm[f"X_{layer}"], _vectors(folder, layer))
    classes = pq.read_table(folder / "cell_classes.parquet").to_pydict()
    assert list(adata.obs["class_name"]) == classes["class_name"]
    assert json.loads(adata.uns["embedcache"])["slide"] == "a.tif"


def test_anndata_without_the_package_names_the_extra_and_writes_nothing(setup, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_anndata(name, *a, **kw):
        if name == "anndata":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_anndata)
    out = setup["tmp"] / "no-anndata"
    with pytest.raises(ConfigError, match=r"embedcache\[cells\]"):
        predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, cells="all", anndata=True, progress=False)
    assert not out.exists()


def test_each_tile_of_the_grid_is_encoded_once_and_the_outputs_are_those_of_encoding_every_read(setup, monkeypatch):
    """Regions share their margins' tiles: each tile position is encoded once per slide; a run that encodes
    every region's read box whole gives the same nuclei and vectors."""
    import json

    from embedcache.infer.slides import on_tile_grid, plan_slide
    from embedcache.geometry import plan_tiles

    tmp = setup["tmp"]
    calls = {"n": 0}

    class EveryRead:  # what prediction did before: every region encodes its whole read box
        def __init__(self, features, uses, limit=None):
            self.features, self.reused = features, 0

        def __getattr__(self, name):
            return getattr(self.features, name)

        def __call__(self, keys):
            calls["n"] += len(keys)
            return self.features(keys)

    _run(setup, "shared", overlap=16)
    monkeypatch.setattr("embedcache.infer.slides.SharedTiles", EveryRead)
    _run(setup, "every-read", overlap=16)
    assert _table(tmp / "shared" / "a") == _table(tmp / "every-read" / "a")
    for layer in open_store(setup["cache"]).layers:
        np.testing.assert_array_equal(_vectors(tmp / "shared" / "a", layer), _vectors(tmp / "every-read" / "a", layer))
    plan = plan_slide(setup["slides"] / "a.tif", 0.5, 96, 80)
    reads = [r.read for r in on_tile_grid(plan.regions, plan.shape, (64, 64), 16)]
    positions = [(q0 + o[0], d0 + o[1]) for q0, d0, q1, d1 in reads
                 for o in plan_tiles((q1 - q0, d1 - d0), (64, 64), 16)]
    tiles = lambda name: json.loads((tmp / name / "a" / "summary.json").read_text())["tiles"]  # noqa: E731
    assert tiles("shared")["encoded"] == len(set(positions)) < len(positions)
    assert tiles("shared")["encoded"] + tiles("shared")["reused"] == len(positions)
    assert tiles("every-read")["encoded"] == calls["n"] == len(positions)



def test_a_limit_on_kept_tiles_bounds_memory_and_keeps_the_outputs(setup, monkeypatch):
    """With room for a few tiles only, the tiles needed furthest ahead are dropped and encoded again: more
    encodes, never more tiles kept than the limit, the same nuclei and vectors."""
    import json

    from embedcache.infer import slide_cells as sc

    tmp = setup["tmp"]
    if not (tmp / "shared" / "a").exists():
        _run(setup, "shared", overlap=16)
    most = []
    real_call = sc.SharedTiles.__call__

    def watched(self, keys):
        out = real_call(self, keys)
        most.append(len(self.kept))
        return out

    monkeypatch.setattr("embedcache.infer.slides.kept_limit", lambda *a: 6)
    monkeypatch.setattr(sc.SharedTiles, "__call__", watched)
    _run(setup, "limited", overlap=16)
    assert max(most) <= 6
    assert _table(tmp / "limited" / "a") == _table(tmp / "shared" / "a")
    for layer in open_store(setup["cache"]).layers:
        np.testing.assert_array_equal(_vectors(tmp / "limited" / "a", layer), _vectors(tmp / "shared" / "a", layer))
    tiles = lambda name: json.loads((tmp / name / "a" / "summary.json").read_text())["tiles"]  # noqa: E731
    limited, shared = tiles("limited"), tiles("shared")
    assert limited["encoded"] > shared["encoded"] and limited["reused"] > 0
    assert limited["encoded"] + limited["reused"] == shared["encoded"] + shared["reused"]


def test_a_slides_cells_zarr_is_described_by_info_and_probe_says_what_to_give_instead(setup):
    """cells.zarr of predict --slides --cells is not a cell store (no tiles, variants or labels of its own):
    `info` describes it, `probe --level cell` refuses it in one line naming the command that makes a cell store
    of those nuclei, and writes nothing."""
    import json

    from click.testing import CliRunner

    from embedcache.cli import main

    pred = _predicted(setup)
    zarr_path = pred / "a" / "cells.zarr"
    n = len(_table(pred / "a")["id"])
    res = CliRunner().invoke(main, ["info", str(zarr_path)])
    assert res.exit_code == 0, res.output
    assert f"cells     {n}:" in res.output and "slide a.tif" in res.output
    for layer in open_store(setup["cache"]).layers:
        assert f"{layer} (" in res.output
    data = json.loads(CliRunner().invoke(main, ["info", str(zarr_path), "--json"]).output)
    assert data["kind"] == "slide cells" and data["n_cells"] == n and data["slide"] == "a.tif"
    out = setup["tmp"] / "probe-slide-cells"
    res = CliRunner().invoke(main, ["probe", "--level", "cell", "--store", str(zarr_path), "--out", str(out)])
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(err) == 1, res.output
    assert "not a cell store" in err[0] and f"embedcache cells --store SLIDE_STORE --nuclei {pred}" in err[0]
    assert "Traceback" not in res.output and not out.exists()


def test_a_classifier_of_another_class_set_is_refused_and_nothing_written(setup):
    """Cells a person labelled (points with labels, over the slide store) in other classes than the classifier's:
    refused before the cell store is built. A classifier of their classes is applied."""
    import csv

    from click.testing import CliRunner

    from embedcache.cli import main

    tmp = setup["tmp"]
    table = _table(_predicted(setup) / "a")
    points = tmp / "labelled-points.csv"
    with open(points, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "x", "y", "label"])
        for k, (x, y) in enumerate(zip(table["x_px"][:12], table["y_px"][:12])):
            w.writerow(["a", round(x - 0.5, 2), round(y - 0.5, 2), ("epithelial", "lymphocyte")[k % 2]])
    other = _hand_classifier(setup).save(tmp / "clf-classes")
    out = tmp / "labelled.cells.zarr"
    args = ["cells", "--quiet", "--store", str(setup["cache"]), "--out", str(out), "--nuclei", str(points),
            "--classify"]
    res = CliRunner().invoke(main, [*args, str(other)])
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(err) == 1, res.output
    assert "predicts tumour, immune, stroma, but these cells are labelled epithelial, lymphocyte" in err[0]
    assert not out.exists() and not files_partial(out).exists()
    same = _hand_classifier(setup, classes=("epithelial", "lymphocyte")).save(tmp / "clf-points")
    res = CliRunner().invoke(main, [*args, str(same)])
    assert res.exit_code == 0, res.output
    assert len(pq_rows(out / "cell_classes.parquet")) == open_store(out).n_cells > 0
    # The store built, a classifier of other classes applied to it later: refused, its classes left as they are.
    before = (out / "cell_classes.parquet").read_bytes()
    from embedcache.probes.classifier import classify_cells

    with pytest.raises(ConfigError, match="predicts tumour, immune, stroma"):
        classify_cells(out, other)
    assert (out / "cell_classes.parquet").read_bytes() == before


def pq_rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()["id"]


def files_partial(path):
    from embedcache.files import partial_path

    return partial_path(path)


def test_a_slide_half_classified_by_one_classifier_is_not_finished_by_one_of_other_classes(setup, monkeypatch):
    """The classifier's folder rewritten with other classes between a kill and the resume: refused in one line
    (the classes both ways), the partial left as it was; --overwrite starts afresh with the new classifier."""
    from click.testing import CliRunner

    from embedcache.cli import main
    from embedcache.errors import OutputMismatchError

    tmp = setup["tmp"]
    clf = tmp / "clf-changed"
    _hand_classifier(setup).save(clf)
    _killed_mid_slide(monkeypatch, lambda: predict_slides(setup["run"], setup["slides"], tmp / "changed", run_mpp=0.5,
                                                          region=96, margin=80, overlap=16, progress=False,
                                                          cell_classifier=clf))
    _hand_classifier(setup, classes=("a", "b")).save(clf)
    partial = tmp / "changed" / "a.partial"
    before = sorted((p.relative_to(partial), p.read_bytes()) for p in partial.rglob("*") if p.is_file())
    with pytest.raises(OutputMismatchError, match="classified into tumour, immune, stroma, .* predicts a, b"):
        predict_slides(setup["run"], setup["slides"], tmp / "changed", run_mpp=0.5, region=96, margin=80,
                       overlap=16, progress=False, cell_classifier=clf)
    res = CliRunner().invoke(main, ["predict", "--run", str(setup["run"]), "--slides", str(setup["slides"]),
                                    "--run-mpp", "0.5", "--region", "96", "--margin", "80", "--overlap", "16",
                                    "--out", str(tmp / "changed"), "--cell-classifier", str(clf)])
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(err) == 1 and "predicts a, b" in err[0], res.output
    assert sorted((p.relative_to(partial), p.read_bytes()) for p in partial.rglob("*") if p.is_file()) == before


def _outputs(folder):
    """Everything a slide's cells outputs hold, as comparable values."""
    import anndata as ad
    import pyarrow.parquet as pq
    import zarr

    group = zarr.open_group(str(folder / "cells.zarr"), mode="r")
    adata = ad.read_h5ad(folder / "cells.h5ad")
    return {"table": _table(folder), "classes": pq.read_table(folder / "cell_classes.parquet").to_pydict(),
            "vectors": {k: np.asarray(v[:]) for k, v in group["vectors"].arrays()},
            "obs": adata.obs, "obsm": {k: np.asarray(v) for k, v in adata.obsm.items()}, "uns": dict(adata.uns)}


def _same_outputs(a, b):
    assert a["table"] == b["table"] and a["classes"] == b["classes"] and a["uns"] == b["uns"]
    assert sorted(a["vectors"]) == sorted(b["vectors"]) and sorted(a["obsm"]) == sorted(b["obsm"])
    for k in a["vectors"]:
        np.testing.assert_array_equal(a["vectors"][k], b["vectors"][k])
    for k in a["obsm"]:
        np.testing.assert_array_equal(a["obsm"][k], b["obsm"][k])
    import pandas as pd

    pd.testing.assert_frame_equal(a["obs"], b["obs"])


def test_runs_killed_in_a_region_or_while_writing_anndata_resume_to_identical_cells(setup, monkeypatch):
    """Cell table, classes, vectors and cells.h5ad after a kill mid-slide, and after a kill while the slide's
    outputs were being merged, are those of an uninterrupted run."""
    from embedcache.infer import slide_anndata

    tmp = setup["tmp"]
    clf = _hand_classifier(setup).save(tmp / "clf-resume")
    kw = dict(run_mpp=0.5, region=96, margin=80, overlap=16, progress=False, cells="all", cell_classifier=clf,
              anndata=True)
    assert predict_slides(setup["run"], setup["slides"], tmp / "whole", **kw)[0].status == "done"
    want = _outputs(tmp / "whole" / "a")
    assert len(want["table"]["id"]) > 5

    _killed_mid_slide(monkeypatch, lambda: predict_slides(setup["run"], setup["slides"], tmp / "cut", **kw))
    assert predict_slides(setup["run"], setup["slides"], tmp / "cut", **kw)[0].status == "done"
    _same_outputs(_outputs(tmp / "cut" / "a"), want)

    def dies_writing(folder, provenance, block=slide_anndata.BLOCK):
        raise KeyboardInterrupt

    monkeypatch.setattr(slide_anndata, "write_anndata", dies_writing)
    with pytest.raises(KeyboardInterrupt):
        predict_slides(setup["run"], setup["slides"], tmp / "merging", **kw)
    assert (tmp / "merging" / "a.partial" / "cells.zarr").exists() and not (tmp / "merging" / "a").exists()
    monkeypatch.undo()
    assert predict_slides(setup["run"], setup["slides"], tmp / "merging", **kw)[0].status == "done"
    _same_outputs(_outputs(tmp / "merging" / "a"), want)
    assert not (tmp / "merging" / "a.partial").exists()


def test_a_slide_that_fails_is_recorded_and_the_others_get_their_cells(setup):
    import shutil

    import anndata as ad

    tmp = setup["tmp"]
    mixed = tmp / "mixed-cells"
    mixed.mkdir()
    shutil.copy(setup["slides"] / "a.tif", mixed / "a.tif")
    (mixed / "broken.tif").write_bytes(b"not a tiff at all")
    res = {r.name: r for r in predict_slides(setup["run"], mixed, tmp / "mixed-cells-out", run_mpp=0.5, region=96,
                                             margin=80, overlap=16, progress=False, cells="all", anndata=True)}
    assert res["broken"].status == "failed" and "cannot open slide" in res["broken"].reason
    assert res["a"].status == "done" and res["a"].nuclei > 0
    folder = tmp / "mixed-cells-out" / "a"
    assert ad.read_h5ad(folder / "cells.h5ad").n_obs == res["a"].nuclei == len(_table(folder)["id"])
    assert not (tmp / "mixed-cells-out" / "broken").exists()
    rows = (tmp / "mixed-cells-out" / "slides.csv").read_text().splitlines()
    assert any(r.startswith("broken,failed,") for r in rows) and any(r.startswith("a,done,") for r in rows)
