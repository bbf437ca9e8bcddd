"""`embedcache probe`: table on screen, JSON/CSV/PNG in --out, several stores on the same
tiles, and one line (exit 2) for every bad input."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_probes import store_copy, tiny_store  # noqa: E402

from embedcache.cli import main  # noqa: E402

FAST = ["--bootstrap", "20"]


@pytest.fixture
def runner():
    return CliRunner()


def probe(runner, *args, code=0):
    res = runner.invoke(main, ["probe", *map(str, args)])
    assert res.exit_code == code, res.output
    return res


def test_table_and_files(runner, tmp_path):
    out = tmp_path / "probe"
    res = probe(runner, "--store", tiny_store(), "--labels", "tissue", "--layers", "all", "--out", out, *FAST)
    text = res.stdout
    assert "tile-level probe of tissue labels: 20 tiles, store folds, 95% bootstrap intervals over 20" in text
    assert "balanced accuracy" in text and "macro-F1" in text and "AUROC (one-vs-rest)" in text
    assert len(re.findall(r"^vit +blocks\.\d +linear ", text, re.M)) == 6
    assert len(re.findall(r"^vit +blocks\.\d +knn ", text, re.M)) == 6
    assert "best layer: vit linear blocks." in text
    # Chance beside every score, and the kNN probe, below chance on these labels, is not called the best.
    assert "balanced accuracy (chance 0.200)" in text and "AUROC (one-vs-rest) (chance 0.500)" in text
    assert "chance, what a guess that ignores the input scores: balanced accuracy 1/K" in text
    knn = [line for line in text.splitlines() if re.match(r"^vit +blocks\.\d +knn ", line)]
    assert all(float(line.split()[3]) <= 0.2 and not line.rstrip().endswith("*") for line in knn)
    assert re.search(r"^no layer above chance: vit knn scores at most balanced accuracy 0\.\d+ .* chance 0\.200$",
                     text, re.M)
    assert "best layer: vit knn" not in text
    assert "probed vit blocks.0 linear" in res.stderr
    data = json.loads((out / "probe.json").read_text())
    assert len(data["rows"]) == 12 and data["info"]["labels"]["source"] == "tissue"
    assert data["info"]["config"]["layers"] == "all"
    table = list(csv.DictReader(open(out / "probe.csv")))
    assert len(table) == 12 and {r["balanced_accuracy_chance"] for r in table} == {"0.2"}
    assert {(b["method"], b["above_chance"]) for b in data["best"]} == {("linear", True), ("knn", False)}
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"


def test_two_encoders_json_and_csv_labels(runner, tmp_path):
    twin = store_copy(tmp_path / "twin.zarr")
    labels = tmp_path / "labels.csv"
    labels.write_text("tile,label\n" + "".join(f"{t},{'a' if t < 10 else 'b'}\n" for t in range(20)))
    res = probe(runner, "--store", tiny_store(), "--store", twin, "--labels", labels, "--method", "linear",
                "--folds", "2", "--json", "--quiet", *FAST)
    data = json.loads(res.stdout)
    assert [r["store"] for r in data["rows"]] == ["vit", "twin"]
    # The same tiles, folds and resamples: a copy of a store scores exactly the same.
    assert data["rows"][0]["scores"] == data["rows"][1]["scores"]
    assert data["info"]["folds"] == "stratified 2-fold"


def test_patch_level(runner):
    res = probe(runner, "--store", tiny_store(), "--level", "patch", "--labels", "nuclei", *FAST)
    assert "patch-level probe of nuclei labels" in res.stdout and "mIoU" in res.stdout and "Dice" in res.stdout


@pytest.mark.parametrize("make_args,message", [
    (lambda tmp: ["--layers", "blocks.9"], "no layer 'blocks.9'; it has blocks.0, blocks.1"),
    (lambda tmp: ["--labels", _csv(tmp, range(5))], "labels missing for 15 of 20 tiles (e.g. 5, 6, 7, 8, 9)"),
    (lambda tmp: ["--labels", _csv(tmp, [*range(20), 31])], "1 unknown tile id(s), e.g. '31'"),
    (lambda tmp: ["--labels", _csv(tmp, range(20), lambda t: "same")],
     "every one of the 20 tiles has the class 'same'; a probe needs at least two classes"),
    (lambda tmp: ["--store", store_copy(tmp / "other.zarr", config={"dataset_fingerprint": "0" * 64})],
     "hold different tiles"),
    (lambda tmp: ["--labels", "organ"], "labels must be tissue, type, counts or a .csv file"),
    (lambda tmp: ["--level", "patch", "--labels", "nuclei", "--method", "knn"],
     "the patch-level probe is linear only"),
    (lambda tmp: ["--folds", "12"], "a class has only"),
])
def test_bad_input_is_one_line(runner, tmp_path, make_args, message):
    res = probe(runner, "--store", tiny_store(), *make_args(tmp_path), *FAST, code=2)
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], res.stderr
    assert "Traceback" not in res.output


def _csv(tmp: Path, tiles, label=lambda t: "ab"[t % 2]) -> Path:
    path = tmp / "labels.csv"
    path.write_text("tile,label\n" + "".join(f"{t},{label(t)}\n" for t in tiles))
    return path


def test_missing_store_and_help(runner, tmp_path):
    res = probe(runner, "--store", tmp_path / "nope.zarr", code=2)
    assert "nope.zarr: no such store" in res.stderr
    res = probe(runner, "--help")
    assert "--layers" in res.stdout and "--bootstrap" in res.stdout and "Examples" in res.stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "embedcache probe" in readme


def _cell_store(tmp: Path) -> Path:
    """A small fake cell store (12 images, three types, a layer carrying the type and one of noise)."""
    from test_cell_probes import fake_cells, planted

    rng, source, types, signal = planted()
    return fake_cells(tmp / "enc.cells", {"noise": rng.normal(size=signal.shape), "signal": signal}, types, source)


OUTPUTS = {"tile": ("probe.json", "probe.csv"), "patch": ("probe.json", "probe.csv"),
           "cell": ("cells.json", "cells.csv")}


@pytest.mark.parametrize("level", ["tile", "patch", "cell"])
@pytest.mark.parametrize("method", ["linear", "knn", "both"])
def test_every_method_writes_its_tables_at_every_level(runner, tmp_path, level, method):
    """Every --method with --out either writes its scores (and figures) or is refused in one line before any
    work; a kNN-only cell probe once computed everything and then lost it to the cell map."""
    store = _cell_store(tmp_path) if level == "cell" else tiny_store()
    labels = {"tile": "tissue", "patch": "nuclei", "cell": "type"}[level]
    out = tmp_path / "out"
    args = ["--store", store, "--level", level, "--labels", labels, "--method", method, "--layers", "all",
            "--folds", "2", "--out", out, *FAST]
    if level == "patch" and method != "linear":
        res = probe(runner, *args, code=2)
        assert res.stderr.strip().splitlines()[-1].startswith("Error: ") and "linear only" in res.stderr
        assert not out.exists()
        return
    res = probe(runner, *args)
    assert "Traceback" not in res.output and "warning" not in res.stderr.lower(), res.stderr
    for name in OUTPUTS[level]:
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / OUTPUTS[level][0]).read_text())["rows"]
    assert {r["method"] for r in rows} == ({"linear", "knn"} if method == "both" else {method})
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    if level == "cell":
        assert "cells_map.png" in pngs


def test_a_figure_that_cannot_be_drawn_is_a_warning_and_the_tables_stay(runner, tmp_path, monkeypatch):
    import embedcache.report.cells as cells_report

    def broken(*args, **kwargs):
        raise ValueError("no room on the canvas")

    monkeypatch.setattr(cells_report, "plot_cell_map", broken)
    out = tmp_path / "out"
    res = probe(runner, "--store", _cell_store(tmp_path), "--method", "knn", "--folds", "2", "--out", out, *FAST)
    assert "warning: cells_map.png was not drawn (ValueError: no room on the canvas)" in res.stderr
    assert json.loads((out / "cells.json").read_text())["rows"] and (out / "cells.csv").is_file()
    assert not (out / "cells_map.png").exists()
