"""The slide commands end to end: demo-slides, extract --format slides, fit-ssl, retrieval, one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_cli import _one_line_error
from test_slides import slides_dir

from embedcache import open_store
from embedcache.cli import main
from embedcache.datasets.synthetic_slides import write_synthetic_slides

FAST = ["--encoder", "timm:test_resnet", "--weights", "random", "--variants", "none", "--workers", "0",
        "--quiet", "--tile-size", "64"]
# Tiles of 64 px at 1 um/px are 64 um: near = 4- and diagonal neighbours (64, 91 um).
PAIRS = ["--d-near", "100", "--d-far", "150"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def store(runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "slides.zarr"
    res = runner.invoke(main, ["extract", "--data", str(slides_dir()), "--format", "slides", "--tile-mpp", "1.0",
                               "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_extract_records_positions_in_micrometres(store):
    out, output = store
    s = open_store(out)
    assert f"wrote {out}: {s.n_tiles} tiles x 1 variants" in output
    ds = s.provenance.dataset
    assert s.dataset_layout == "slides" and s.tile_mpp == 1.0 and ds["slides"][0]["mpp"] == 0.5
    assert s.source_names == ["slide_000", "slide_001", "slide_002"]
    assert {"normal", "tumour"} <= set(s.tissue) <= {"", "normal", "tumour"}  # "": tissue edge, under half labelled
    assert (s.tile_info()["offset"] % 64 == 0).all()


def test_fit_ssl_then_retrieval_table(runner, store):
    out, _ = store
    res = runner.invoke(main, ["fit-ssl", "--store", str(out), "--epochs", "3", "--pairs", "256", *PAIRS, "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("fit-ssl head: 768 pairs (") and "held out slide_002; wrote" in res.output
    res = runner.invoke(main, ["retrieval", "--store", str(out), "--layer", "last", "--layer", "ssl", "--k", "3",
                               *PAIRS])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("retrieval: ") and "queries from slide_002" in lines[0]
    assert lines[1].split()[:4] == ["descriptors", "dim", "bytes/tile", "P@3"]
    assert [ln.split()[0] for ln in lines[2:]] == ["layer4", "ssl"]
    assert lines[3].split()[1:3] == ["128", "512"]
    res = runner.invoke(main, ["retrieval", "--store", str(out), "--layer", "all", "--json", *PAIRS])
    doc = json.loads(res.output)
    assert [r["name"] for r in doc["rows"]] == ["layer1", "layer2", "layer3", "layer4", "ssl"]
    assert doc["query_slides"] == ["slide_002"] and all(r["addr"] > 0 for r in doc["rows"])


def test_demo_slides(runner, tmp_path):
    res = runner.invoke(main, ["demo-slides", str(tmp_path / "d"), "--slides", "1", "--size", "512"])
    assert res.exit_code == 0 and "wrote 1 slides (512x512 px at 0.5 um/px" in res.output
    assert (tmp_path / "d" / "slide_000.tif").exists() and (tmp_path / "d" / "slide_000.geojson").exists()


def test_slide_without_mpp(runner, tmp_path):
    write_synthetic_slides(tmp_path / "s", n_slides=1, shape=(512, 512), mpp=None, annotations=False)
    args = ["extract", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "o.zarr"), *FAST]
    _one_line_error(runner.invoke(main, args), "slide_000.tif: the slide does not record", "pass --mpp")
    res = runner.invoke(main, [*args, "--mpp", "0.5", "--tile-mpp", "1.0"])
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path / "o.zarr").provenance.dataset["slides"][0]["mpp"] == 0.5


def test_bad_input_gives_one_line(runner, store, tmp_path):
    out, _ = store
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.svs").write_bytes(b"nope")
    _one_line_error(runner.invoke(main, ["extract", "--data", str(bad), "--out", str(tmp_path / "x.zarr"), *FAST]),
                    "broken.svs: cannot open slide (OpenSlide: ")
    _one_line_error(runner.invoke(main, ["fit-ssl", "--quiet"]), "head mode needs --store")
    _one_line_error(runner.invoke(main, ["fit-ssl", "--mode", "encoder", "--quiet"]), "encoder mode needs --data")
    _one_line_error(runner.invoke(main, ["fit-ssl", "--store", str(out), "--d-far", "9000", "--quiet"]),
                    "too few far pairs", "--d-far")
    _one_line_error(runner.invoke(main, ["fit-ssl", "--store", str(out), "--d-near", "300", "--d-far", "100"]),
                    "d_far (100.0 um) must be at least d_near")
    _one_line_error(runner.invoke(main, ["retrieval", "--store", str(out), "--layer", "nope"]),
                    "no store has layer 'nope'")
    _one_line_error(runner.invoke(main, ["retrieval", "--store", str(out), "--queries", "slide_9"]),
                    "no slide 'slide_9'")
