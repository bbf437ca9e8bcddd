"""Whole-slide prediction: regions agree with one big region, GeoJSON for QuPath, resume, failures recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from decoder_helpers import make_store, one_thread, run_and_slide  # noqa: F401 (one_thread: pytestmark)

from embedcache.datasets.synthetic_slides import write_slide_tiff
from embedcache.errors import DataError
from embedcache.infer import slide_output
from embedcache.infer.slides import predict_slides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return run_and_slide(tmp_path_factory.mktemp("wsi"), (384, 448))


def _table(folder):
    import pyarrow.parquet as pq

    return pq.read_table(folder / "nuclei.parquet").to_pydict()


def test_small_regions_find_the_nuclei_one_big_region_finds(setup):
    """Nuclei on region seams are kept once and whole: the same table as a single region over the slide."""
    tmp = setup["tmp"]
    one = predict_slides(setup["run"], setup["slides"], tmp / "one", run_mpp=0.5, region=512, margin=80,
                         progress=False)
    many = predict_slides(setup["run"], setup["slides"], tmp / "many", run_mpp=0.5, region=96, margin=80,
                          progress=False)
    assert [r.status for r in one] == ["done"] and many[0].regions > 4 and one[0].regions == 1
    a, b = _table(tmp / "one" / "a"), _table(tmp / "many" / "a")
    assert len(a["id"]) > 5
    key = lambda t: sorted(zip(np.round(t["x_px"], 1), np.round(t["y_px"], 1), t["area_um2"]))  # noqa: E731
    assert key(a) == key(b)


def test_geojson_polygons_are_valid_and_in_level0_pixels(setup):
    from shapely.geometry import shape

    folder = setup["tmp"] / "one" / "a"
    fc = json.loads((folder / "nuclei.geojson").read_text())
    table = _table(folder)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(table["id"])
    h, w = setup["image"].shape[:2]
    for f, x, y in zip(fc["features"], table["x_px"], table["y_px"]):
        assert f["properties"]["objectType"] == "detection" and f["geometry"]["type"] == "Polygon"
        poly = shape(f["geometry"])
        assert poly.is_valid and poly.exterior.is_ccw
        minx, miny, maxx, maxy = poly.bounds
        assert 0 <= minx and maxx <= w and 0 <= miny and maxy <= h
        assert poly.buffer(1.5).contains(type(poly.centroid)(x, y))  # the table's centroid lies on its outline
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["nuclei"] == len(table["id"]) and summary["tissue_mm2"] > 0
    assert (folder / "thumbnail.png").exists()


def test_slide_and_image_geojson_carry_the_same_properties_and_every_nucleus_a_class(setup):
    """The slide GeoJSON lacked the ``type_id`` the per-image GeoJSON has, and untyped nuclei had no
    classification (QuPath showed them unclassified): both now carry the same keys, and type 0 is 'Nucleus'."""
    from embedcache.infer.writer import instances_to_geojson

    fc = json.loads((setup["tmp"] / "one" / "a" / "nuclei.geojson").read_text())
    table = _table(setup["tmp"] / "one" / "a")
    inst = np.zeros((12, 12), np.int32)
    inst[1:5, 1:5], inst[6:10, 6:10] = 1, 2
    image = instances_to_geojson(inst, type_id=[0, 2], score=[0.9, 0.8], type_score=[0.5, 0.7],
                                 class_names={2: "epithelial"})["features"]
    assert [f["properties"]["classification"]["name"] for f in image] == ["Nucleus", "epithelial"]
    for f, t in zip(fc["features"], table["type_id"]):
        props = f["properties"]
        assert set(props) == set(image[0]["properties"]), props
        assert props["type_id"] == t and props["classification"]["name"] == (
            "Nucleus" if t == 0 else table["type_name"][table["type_id"].index(t)])


def test_a_killed_run_resumes_to_the_same_outputs(setup, monkeypatch):
    tmp = setup["tmp"]
    real = slide_output.write_region
    calls = []

    def dies_on_the_third(path, rows, work=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(path, rows, work)

    monkeypatch.setattr("embedcache.infer.slides.write_region", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        predict_slides(setup["run"], setup["slides"], tmp / "killed", run_mpp=0.5, region=96, margin=80,
                       progress=False)
    monkeypatch.setattr("embedcache.infer.slides.write_region", real)
    assert len(list((tmp / "killed" / "a.partial" / "regions").glob("*.parquet"))) == 2
    res = predict_slides(setup["run"], setup["slides"], tmp / "killed", run_mpp=0.5, region=96, margin=80,
                         progress=False)
    assert res[0].status == "done"
    assert _table(tmp / "killed" / "a") == _table(tmp / "many" / "a")
    # The summary counts the work of both runs, not only the resumed part.
    summary = lambda name: json.loads((tmp / name / "a" / "summary.json").read_text())  # noqa: E731
    # Tiles a finished region shared with the rest are encoded again after the kill (their tokens went with it).
    killed, many = summary("killed")["tiles"], summary("many")["tiles"]
    assert many["encoded"] > 0 and killed["encoded"] >= many["encoded"]
    assert killed["encoded"] + killed["reused"] == many["encoded"] + many["reused"]
    assert summary("killed")["nuclei"] == summary("many")["nuclei"]
    again = predict_slides(setup["run"], setup["slides"], tmp / "killed", run_mpp=0.5, region=96, margin=80,
                           progress=False)
    assert again[0].status == "already done"


def test_unreadable_or_unusable_slides_are_recorded_and_the_others_finish(setup):
    tmp = setup["tmp"]
    mixed = tmp / "mixed"
    mixed.mkdir()
    (mixed / "a.tif").write_bytes((setup["slides"] / "a.tif").read_bytes())
    (mixed / "broken.tif").write_bytes(b"not a tiff at all")
    write_slide_tiff(mixed / "nompp.tif", setup["image"], mpp=None, levels=1, tile=128)
    write_slide_tiff(mixed / "coarse.tif", setup["image"], mpp=2.0, levels=1, tile=128)
    write_slide_tiff(mixed / "glass.tif", np.full((256, 256, 3), 245, np.uint8), mpp=0.25, levels=1, tile=128)
    res = {r.name: r for r in predict_slides(setup["run"], mixed, tmp / "mixed-out", run_mpp=0.5, region=256,
                                             margin=64, progress=False)}
    assert res["a"].status == "done" and res["a"].nuclei > 0
    assert res["broken"].status == "failed" and "cannot open slide" in res["broken"].reason
    assert res["nompp"].status == "failed" and "pass --mpp" in res["nompp"].reason
    assert res["coarse"].status == "failed" and "trained at 0.5 um/px" in res["coarse"].reason
    assert res["glass"].status == "failed" and "no tissue" in res["glass"].reason
    assert "checked at 0.25 um/px" in res["glass"].reason  # was printed as 0.2
    rows = (tmp / "mixed-out" / "slides.csv").read_text().splitlines()
    assert rows[0] == "slide,status,nuclei,regions,seconds,reason" and len(rows) == 6


def test_another_runs_partial_is_refused_and_bad_settings_say_what_to_do(setup):
    tmp = setup["tmp"]
    out = tmp / "other"
    partial = out / "a.partial"
    (partial / "regions").mkdir(parents=True)
    (partial / "plan.json").write_text(json.dumps({"run": "somewhere else"}))
    with pytest.raises(DataError, match="another run's partial results"):
        predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, region=96, progress=False)
    done = tmp / "finished"  # finished with 512-px regions: other settings are refused, not silently replaced
    predict_slides(setup["run"], setup["slides"], done, run_mpp=0.5, region=512, progress=False)
    with pytest.raises(DataError, match="holds nuclei from another run or other settings; pass --overwrite"):
        predict_slides(setup["run"], setup["slides"], done, run_mpp=0.5, region=96, progress=False)
    with pytest.raises(DataError, match="does not record the resolution it was trained at; pass --run-mpp"):
        predict_slides(setup["run"], setup["slides"], tmp / "x", progress=False)
    with pytest.raises(DataError, match="no slides found"):
        predict_slides(setup["run"], tmp / "nowhere", tmp / "y", run_mpp=0.5, progress=False)


def test_the_cli_predicts_slides_and_exits_1_when_one_failed(setup):
    from click.testing import CliRunner

    from embedcache.cli import main

    tmp = setup["tmp"]
    args = ["predict", "--run", str(setup["run"]), "--slides", str(setup["slides"]), "--run-mpp", "0.5",
            "--region", "128", "--quiet", "--gzip"]
    ok = CliRunner().invoke(main, args + ["--out", str(tmp / "cli")])
    assert ok.exit_code == 0, ok.output
    assert "a: done" in ok.output and "1 of 1 slides" in ok.output
    assert (tmp / "cli" / "a" / "nuclei.geojson.gz").exists()
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "x.tif").write_bytes(b"junk")
    res = CliRunner().invoke(main, [*args[:4], str(bad), *args[5:], "--out", str(tmp / "cli-bad")])
    assert res.exit_code == 1 and "x: failed" in res.output and "cannot open slide" in res.output
    both = CliRunner().invoke(main, args + ["--out", str(tmp / "z"), "--data", str(tmp)])
    assert both.exit_code != 0 and "give --slides alone" in both.output and "Traceback" not in both.output
    dask = CliRunner().invoke(main, ["predict", "--run", str(setup["run"]), "--data", str(tmp), "--out",
                                     str(tmp / "z"), "--workers", "2"])
    assert dask.exit_code != 0 and "--workers applies to whole slides (--slides), not to images (--data)" \
        in dask.output and not (tmp / "z").exists()


def test_peak_memory_does_not_grow_with_the_slide(setup):
    """Arrays held at once (tracemalloc sees numpy's) stay those of a region: a slide of 4x the area peaks
    within 10% of the smaller one."""
    import tracemalloc

    tmp = setup["tmp"]
    big = tmp / "big"
    big.mkdir()
    write_slide_tiff(big / "b.tif", np.tile(setup["image"], (2, 2, 1)), mpp=0.5, levels=2, tile=128)
    predict_slides(setup["run"], setup["slides"], tmp / "mem-warm", run_mpp=0.5, region=96, progress=False)
    peaks = []
    for name, folder in (("small", setup["slides"]), ("big", big)):  # one warm-up serves both
        tracemalloc.start()
        res = predict_slides(setup["run"], folder, tmp / f"mem-{name}", run_mpp=0.5, region=96, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert res[0].status == "done"
    assert peaks[1] <= 1.1 * peaks[0], peaks


def test_a_full_disk_stops_with_one_line_and_keeps_finished_slides(setup, monkeypatch):
    import errno

    tmp = setup["tmp"]
    out = tmp / "full"
    predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, region=256, progress=False)
    before = (out / "a" / "nuclei.parquet").read_bytes()

    def full(path, rows, work=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("embedcache.infer.slides.write_region", full)
    with pytest.raises(DataError, match="the disk is full; free space and run the same command again"):
        predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, region=96, overwrite=True, progress=False)
    assert (out / "a" / "nuclei.parquet").read_bytes() == before  # the finished slide is untouched


def test_a_store_of_the_slides_stands_in_for_the_encoder_and_gives_the_same_nuclei(setup):
    """Cached tokens where the store holds the tile, the encoder live for the tiles it skipped: the nuclei of
    an all-live run (the slide's level 0 is at the run's resolution, so the pixels are the same)."""
    tmp = setup["tmp"]
    slides = tmp / "half"
    slides.mkdir()
    image = np.full((384, 1024, 3), 255, np.uint8)  # glass on the right: the store skips the tiles over it,
    image[:, :448] = setup["image"]  # and prediction still meets them around the tissue's edge
    write_slide_tiff(slides / "a.tif", image, mpp=0.5, levels=2, tile=128)
    cache = make_store(slides, tmp / "slides.zarr", variants="none", format="slides", tile_size=64,
                       overlap=16, tile_mpp=0.5, min_tissue=0.5)
    live = predict_slides(setup["run"], slides, tmp / "live16", run_mpp=0.5, region=160, overlap=16,
                          progress=False)
    cached = predict_slides(setup["run"], slides, tmp / "cached16", run_mpp=0.5, region=160, store=cache,
                            progress=False)  # overlap: the store's
    assert [r.status for r in live + cached] == ["done", "done"]
    a, b = _table(tmp / "live16" / "a"), _table(tmp / "cached16" / "a")
    assert len(a["id"]) > 5
    key = lambda t: sorted(zip(np.round(t["x_px"], 3), np.round(t["y_px"], 3), t["area_um2"],  # noqa: E731
                               t["type_id"], t["score"]))
    assert key(a) == key(b)
    tiles = json.loads((tmp / "cached16" / "a" / "summary.json").read_text())["tiles"]
    assert tiles["cached"] > 0 and tiles["encoded"] > 0  # both paths were taken
    assert json.loads((tmp / "live16" / "a" / "summary.json").read_text())["tiles"]["cached"] == 0


def test_a_store_of_another_grid_or_kind_is_refused_in_one_line(setup):
    tmp = setup["tmp"]
    plain = make_store(setup["slides"], tmp / "plain.zarr", variants="none", format="slides", tile_size=64,
                       tile_mpp=0.5, min_tissue=0.6)
    with pytest.raises(DataError, match="overlap by 0 px.*--overlap 16"):
        predict_slides(setup["run"], setup["slides"], tmp / "bad", run_mpp=0.5, overlap=16, store=plain,
                       progress=False)
    with pytest.raises(DataError, match="tiles at 0.5 um/px, the run predicts at 0.25"):
        predict_slides(setup["run"], setup["slides"], tmp / "bad", run_mpp=0.25, store=plain, progress=False)


def test_slides_on_a_dask_cluster_give_the_local_outputs_and_a_failure_is_recorded(setup):
    import shutil

    tmp = setup["tmp"]
    many = tmp / "many_slides"
    many.mkdir()
    for name in ("a", "b"):
        shutil.copy(setup["slides"] / "a.tif", many / f"{name}.tif")
    (many / "c.tif").write_bytes(b"not a tiff")
    local = predict_slides(setup["run"], setup["slides"], tmp / "local", run_mpp=0.5, region=256, progress=False)
    results = predict_slides(setup["run"], many, tmp / "dask", run_mpp=0.5, region=256, workers=2, device="cpu",
                             progress=False)
    assert [(r.name, r.status) for r in results] == [("a", "done"), ("b", "done"), ("c", "failed")]
    assert "c.tif" in results[2].reason
    for name in ("a", "b"):
        assert _table(tmp / "dask" / name) == _table(tmp / "local" / "a")
    rows = (tmp / "dask" / "slides.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["a", "done"], ["b", "done"], ["c", "failed"]]
    assert local[0].nuclei == results[0].nuclei


def test_tta_geojson_and_overlays_work_on_slides(setup):
    """--tta, --no-geojson and --no-overlays change whole-slide outputs as they change tiles' and images' (they
    were silently ignored: the output was byte-identical with --tta d4)."""
    tmp = setup["tmp"]
    kw = dict(run_mpp=0.5, region=512, margin=80, progress=False)
    predict_slides(setup["run"], setup["slides"], tmp / "tta", tta="flips", geojson=False, overlays=False, **kw)
    plain, tta = _table(tmp / "one" / "a"), _table(tmp / "tta" / "a")
    assert plain["score"] != tta["score"]  # the maps were averaged over the flips
    folder = tmp / "tta" / "a"
    assert (folder / "nuclei.parquet").exists() and (folder / "summary.json").exists()
    assert not (folder / "nuclei.geojson").exists() and not (folder / "thumbnail.png").exists()
    assert json.loads((folder / "summary.json").read_text())["settings"]["tta"] == "flips"
    # Live TTA and a store's cached variants give the same nuclei, as without TTA.
    cache = make_store(setup["slides"], tmp / "flips.zarr", variants="flips", format="slides", tile_size=64,
                       overlap=16, tile_mpp=0.5, min_tissue=0.2)
    live = predict_slides(setup["run"], setup["slides"], tmp / "tta-live", tta="flips", overlap=16, **kw)
    cached = predict_slides(setup["run"], setup["slides"], tmp / "tta-cached", tta="flips", store=cache, **kw)
    assert [r.status for r in live + cached] == ["done", "done"]
    key = lambda t: sorted(zip(np.round(t["x_px"], 3), np.round(t["y_px"], 3), t["type_id"]))  # noqa: E731
    assert key(_table(tmp / "tta-live" / "a")) == key(_table(tmp / "tta-cached" / "a"))
    summary = json.loads((tmp / "tta-cached" / "a" / "summary.json").read_text())
    assert summary["tiles"]["cached"] > 0
    with pytest.raises(DataError, match="lacks the variants .* that --tta d4 needs"):
        predict_slides(setup["run"], setup["slides"], tmp / "tta-d4", tta="d4", store=cache, **kw)


def _classifier(run_dir, out):
    """A cell classifier of the run's encoder and last layer, weights made by hand."""
    from embedcache.probes.classifier import CellClassifier
    from embedcache.train.checkpoint import load_run

    run = load_run(run_dir, device="cpu")
    layer = run.store["layers"][-1]
    dim = int(run.store["shapes"][layer][0])
    return CellClassifier(layer, dim, ["a", "b"], np.zeros(dim), np.ones(dim), np.ones((1, dim)), np.zeros(1),
                          run.store["encoder"]["name"], run.store["weights_sha256"]).save(out)


def test_every_predict_option_works_for_each_input_or_is_refused_in_one_line(setup):
    """Each option of ``predict`` against tiles (--store), images (--data) and slides (--slides): where it
    applies the command runs with it, elsewhere it is refused in one line before any work."""
    from click.testing import CliRunner

    from embedcache.cli import main
    from embedcache.cli.decoder_cmds import PREDICT_OPTIONS

    tmp = setup["tmp"]
    flips = make_store(tmp / "conic", tmp / "s-flips.zarr", variants="flips")  # for --tta on a store
    inputs = {"tiles": ["--store", str(flips)], "images": ["--data", str(tmp / "conic")],
              "slides": ["--slides", str(setup["slides"])]}
    # A value other than the default for every option (the inputs and --run/--out aside).
    values = {"split": ["--split", "val"], "fmt": ["--format", "conic"], "overlap": ["--overlap", "16"],
              "magnification": ["--magnification", "20x"], "post_spec": ["--postprocess", "defaults"],
              "tta": ["--tta", "flips"], "batch_size": ["--batch-size", "3"], "device": ["--device", "cpu"],
              "overlays": ["--no-overlays"], "geojson": ["--no-geojson"], "mpp": ["--mpp", "0.5"],
              "run_mpp": ["--run-mpp", "0.5"], "region": ["--region", "200"], "margin": ["--margin", "70"],
              "post_workers": ["--post-workers", "0"], "workers": ["--workers", "0"],
              "scheduler": ["--scheduler", "tcp://127.0.0.1:1"], "gzip_geojson": ["--gzip"],
              "overwrite": ["--overwrite"], "no_wait": ["--no-wait"], "quiet": ["--quiet"], "cells": ["--cells", "all"],
              "anndata": ["--anndata"],
              "cell_classifier": ["--cell-classifier", str(_classifier(setup["run"], tmp / "clf"))]}
    command = main.commands["predict"]
    names = {p.name for p in command.params} - {"run_dir", "out", "store", "data", "slides"}
    assert names == set(values), "a new predict option: give it a value here and say where it applies"
    runner = CliRunner()
    for kind, given in inputs.items():
        usable = []
        for name in sorted(names):
            where = PREDICT_OPTIONS.get(name)
            if where is None or kind in where:
                usable.append(name)
                continue
            res = runner.invoke(main, ["predict", "--run", str(setup["run"]), *given, "--out",
                                       str(tmp / f"opt-{kind}-{name}"), *values[name]])
            err = [ln for ln in res.stderr.splitlines() if ln.strip()]
            assert res.exit_code != 0 and len(err) == 1 and "applies to" in err[0], (kind, name, res.output)
            assert not (tmp / f"opt-{kind}-{name}").exists()
        if kind == "images":  # --mpp resamples images only for a run trained at a working resolution
            res = runner.invoke(main, ["predict", "--run", str(setup["run"]), *given, "--out",
                                       str(tmp / "opt-images-mpp"), *values["mpp"]])
            assert res.exit_code != 0 and "trained on images as they are" in res.stderr, res.output
            usable.remove("mpp")
        # Everything that applies, at once (the cluster options aside: a cluster is tested on its own).
        args = [a for name in usable if name not in ("workers", "scheduler") for a in values[name]]
        res = runner.invoke(main, ["predict", "--run", str(setup["run"]), *given, "--out", str(tmp / f"all-{kind}"),
                                   *args])
        assert res.exit_code == 0, (kind, res.output)
        out = tmp / f"all-{kind}"
        assert not list(out.rglob("*.geojson*")) and not list(out.rglob("*.png")), (kind, sorted(out.rglob("*")))


@pytest.mark.parametrize("kill", [False, True])
def test_processes_share_the_regions_of_a_slide(setup, tmp_path, kill):
    from process_helpers import run_together

    from embedcache.claims import claims_place

    one = predict_slides(setup["run"], setup["slides"], tmp_path / "one", run_mpp=0.5, region=96, margin=80,
                         progress=False)
    out, log = tmp_path / "shared", tmp_path / "log"
    ran = run_together(["predict", "--run", str(setup["run"]), "--slides", str(setup["slides"]), "--run-mpp", "0.5",
                        "--region", "96", "--margin", "80", "--out", str(out), "--quiet"], 3, log, kill, after=2)
    assert sum("a: done," in s for s in ran.stdout) == 1, ran.stdout  # one process merged the slide
    assert all("a: done" in s or "a: already done" in s for s in ran.stdout), ran.stdout
    assert max(ran.units.values()) == 1, ran.units  # no region computed twice
    assert len(ran.units) >= one[0].regions - (1 if kill else 0)
    assert _table(out / "a") == _table(tmp_path / "one" / "a")
    assert not (out / "a.partial").exists() and not claims_place(out).exists()


def test_slides_csv_keeps_every_processs_rows_and_the_most_final_status(tmp_path):
    """Processes sharing --out each write the slides they saw; none drops another's rows or hides a 'done'."""
    import csv

    from embedcache.infer.slides import SlideResult
    from embedcache.infer.slide_output import write_table

    def rows():
        with open(tmp_path / "slides.csv", newline="") as fh:
            return [r[:3] for r in csv.reader(fh)][1:]

    # Process A merged a, left b to others; B merged b, found a done by another; A, ending, still says b is left.
    write_table(tmp_path, [SlideResult("a", "done", 7), SlideResult("b", "left to other processes")])
    write_table(tmp_path, [SlideResult("a", "done by another process", 7), SlideResult("b", "done", 5),
                           SlideResult("c", "failed", reason="cannot open slide")])
    write_table(tmp_path, [SlideResult("a", "done", 7), SlideResult("b", "left to other processes")])
    assert rows() == [["a", "done", "7"], ["b", "done", "5"], ["c", "failed", "0"]]
    # A rerun finds them done; a slide that failed and now succeeds replaces its failure.
    write_table(tmp_path, [SlideResult("a", "already done", 7), SlideResult("c", "done", 3)])
    assert rows() == [["a", "done", "7"], ["b", "done", "5"], ["c", "done", "3"]]
    from embedcache.claims import claims_place

    assert not claims_place(tmp_path).exists()  # the lock's claims folder is gone


@pytest.mark.parametrize("kill", [False, True])
def test_processes_sharing_slides_write_one_table_with_every_slide_done(setup, tmp_path, kill):
    import csv
    import shutil

    from process_helpers import run_together

    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(setup["slides"] / "a.tif", slides / f"{name}.tif")
    one = predict_slides(setup["run"], setup["slides"], tmp_path / "one", run_mpp=0.5, region=192, margin=80,
                         progress=False)
    out, log = tmp_path / "shared", tmp_path / "log"
    ran = run_together(["predict", "--run", str(setup["run"]), "--slides", str(slides), "--run-mpp", "0.5",
                        "--region", "192", "--margin", "80", "--out", str(out), "--quiet"], 3, log, kill, after=3)
    assert max(ran.units.values()) == 1, ran.units  # no region computed twice
    for name in ("a", "b", "c"):  # each slide merged by exactly one survivor (or by the one killed later)
        assert sum(f"{name}: done," in s for s in ran.stdout) <= 1, ran.stdout
        assert _table(out / name) == _table(tmp_path / "one" / "a")
    with open(out / "slides.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    # A process killed after swapping a slide in, before writing its row, leaves the others' view of it.
    final = ("done", "done by another process") if kill else ("done",)
    assert [r["slide"] for r in table] == ["a", "b", "c"], table
    assert all(r["status"] in final and int(r["nuclei"]) == one[0].nuclei for r in table), table
    from embedcache.claims import claims_place

    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c", "slides.csv"]
    assert not claims_place(out).exists()


def test_a_slide_merged_but_not_swapped_in_is_swapped_in_by_the_next_process(setup, tmp_path, monkeypatch):
    """A process that died between merging a slide and its swap left a complete partial: it moves in as it is."""
    from embedcache import files

    one = predict_slides(setup["run"], setup["slides"], tmp_path / "one", run_mpp=0.5, region=256, progress=False)
    real = files.swap_in

    def killed(staged, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "swap_in", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_slides(setup["run"], setup["slides"], tmp_path / "out", run_mpp=0.5, region=256, progress=False)
    monkeypatch.setattr(files, "swap_in", real)
    partial = tmp_path / "out" / "a.partial"
    assert (partial / "summary.json").exists() and not (partial / "regions").exists()
    again = predict_slides(setup["run"], setup["slides"], tmp_path / "out", run_mpp=0.5, region=256, progress=False)
    assert again[0].status == "done by another process" and again[0].nuclei == one[0].nuclei
    assert _table(tmp_path / "out" / "a") == _table(tmp_path / "one" / "a") and not partial.exists()


def test_claims_of_a_killed_process_on_finished_slides_are_cleared(setup, tmp_path):
    """A process killed after its slide was done, before releasing the claim, leaves the claim behind; the next
    process finding every slide done clears it, and the claims folder with it."""
    from process_helpers import leave_dead_claims

    from embedcache.claims import claims_place

    out = tmp_path / "out"
    first = predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, region=256, progress=False)
    leave_dead_claims(claims_place(out), "predict-slides", ["a.slide", "a.r00000"])
    assert claims_place(out).exists()
    again = predict_slides(setup["run"], setup["slides"], out, run_mpp=0.5, region=256, progress=False)
    assert [(r.status, r.nuclei) for r in again] == [("already done", first[0].nuclei)]
    assert not claims_place(out).exists()
