"""`embedcache evaluate` and the evaluation driver: the three layouts on
disk, JSON and CSV outputs, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_metrics as ref  # noqa: E402
from embedcache.cli import main  # noqa: E402
from embedcache.errors import DataError  # noqa: E402
from embedcache.metrics import Evaluation, Instances, evaluate, protocols  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REQUIRED = {
    "hovernet": {"dice", "aji", "aji_plus", "dq", "sq", "pq", "f1_detection", "type_f1"},
    "pannuke": {"bpq", "mpq", "bpq_images", "mpq_images", "per_class_pq"},
    "conic": {"bpq", "mpq_plus", "per_class_pq", "r2"},
}


# ----------------------------------------------------------------------------
# Layouts written in code
# ----------------------------------------------------------------------------

def write_conic(d: Path, inst, types) -> Path:
    d.mkdir(parents=True)
    np.save(d / "labels.npy", np.stack([np.stack(inst), np.stack(types)], axis=-1).astype(np.int32))
    return d


def write_pannuke(d: Path, inst, types, tissue) -> Path:
    d.mkdir(parents=True)
    inst, types = np.stack(inst), np.stack(types)
    masks = np.zeros(inst.shape + (6,))
    for c in range(1, 6):
        masks[..., c - 1] = np.where(types == c, inst, 0)
    masks[..., 5] = inst == 0
    np.save(d / "masks.npy", masks)
    np.save(d / "types.npy", np.asarray(tissue))
    return d


def write_folder(d: Path, names, inst, types=None) -> Path:
    d.mkdir(parents=True)
    for k, name in enumerate(names):
        Image.fromarray(inst[k].astype(np.uint16)).save(d / f"{name}_inst.png")
        if types is not None:
            Image.fromarray(types[k].astype(np.uint8)).save(d / f"{name}_type.png")
    return d


@pytest.fixture(scope="module")
def tiles():
    """3 tiles of 64x64: true and predicted instance and type maps (types 1..5)."""
    ti, tt, pi, pt = ref.make_dataset(7, n_tiles=3, size=64, n_nuclei=(6, 12), n_types=5)
    return ti, pi, tt, pt


@pytest.fixture
def runner():
    return CliRunner()


def run_ok(runner, *args):
    res = runner.invoke(main, ["evaluate", *map(str, args)])
    assert res.exit_code == 0, res.output
    return res


def one_line_error(res, *fragments):
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for f in fragments:
        assert f in lines[0], lines[0]


def decoded(x):
    """A value as the JSON output holds it: NaN as None, keys as str."""
    return json.loads(json.dumps(Evaluation("any", {"v": x}).to_dict()["v"]))


# ----------------------------------------------------------------------------
# Each layout, each protocol
# ----------------------------------------------------------------------------

def test_help_says_the_radius_at_20x(runner):
    res = runner.invoke(main, ["evaluate", "--help"])
    assert res.exit_code == 0 and "6 at 20x" in res.output and "--protocol" in res.output


def test_conic_layout_json_and_csv(runner, tmp_path, tiles):
    ti, pi, tt, pt = tiles
    truth, pred = write_conic(tmp_path / "t", ti, tt), write_conic(tmp_path / "p", pi, pt)
    out_json, out_csv = tmp_path / "s.json", tmp_path / "s.csv"
    res = run_ok(runner, "--protocol", "conic", "--truth", truth, "--pred", pred, "--json", out_json, "--csv", out_csv)
    assert "mpq_plus" in res.output and "R2" in res.output
    got = json.loads(out_json.read_text())
    assert REQUIRED["conic"] <= set(got)
    # No counts.csv naming the classes: still CoNIC's six, as its own code scores them.
    want = protocols.conic(ti, pi, tt, pt, classes=protocols.CONIC_TYPES)
    assert got["published"] is True and sorted(got["per_class_pq"]) == ["1", "2", "3", "4", "5", "6"]
    for key in ("bpq", "mpq_plus", "r2", "per_class_pq"):
        assert got[key] == decoded(want[key])
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == ["0", "1", "2"]
    assert float(rows[1]["bpq"]) == want["images"][1]["bpq"]


def one_type_per_nucleus(inst_maps, type_maps):
    """PanNuke stores a nucleus in one class channel: give each its majority type."""
    out = []
    for m, t in zip(inst_maps, type_maps):
        inst = Instances.from_map(m)
        out.append(np.concatenate([[0], inst.majority_type(t)])[inst.relabelled()].astype(np.int32))
    return out


def test_pannuke_layout_with_tissues(runner, tmp_path, tiles):
    ti, pi, tt, pt = tiles
    tt, pt = one_type_per_nucleus(ti, tt), one_type_per_nucleus(pi, pt)
    tissue = ["Breast", "Colon", "Breast"]
    truth = write_pannuke(tmp_path / "t", ti, tt, tissue)
    pred = write_pannuke(tmp_path / "p", pi, pt, tissue)
    out = tmp_path / "s.json"
    res = run_ok(runner, "--protocol", "pannuke", "--truth", truth, "--pred", pred, "--json", out)
    assert "neoplastic" in res.output and "Colon" in res.output
    got = json.loads(out.read_text())
    assert REQUIRED["pannuke"] <= set(got)
    assert set(got["per_class_pq"]) == {"1", "2", "3", "4", "5"}
    assert got["class_names"]["1"] == "neoplastic"
    # the reader turns mask channels back into the same maps (ids renumbered, values unchanged)
    want = protocols.pannuke(ti, pi, tt, pt, tissue=tissue)
    for key in ("bpq", "mpq", "bpq_images", "mpq_images"):
        assert got[key] == pytest.approx(want[key], abs=1e-12)
    assert 0.1 < got["bpq"] < 0.9
    assert got["tissues"]["Colon"]["n_images"] == 1


def test_folder_layout_hovernet_and_radius(runner, tmp_path, tiles):
    ti, pi, tt, pt = tiles
    names = ["a", "b", "c"]
    truth = write_folder(tmp_path / "t", names, ti, tt)
    pred = write_folder(tmp_path / "p", names, pi, pt)
    out = tmp_path / "s.json"
    run_ok(runner, "--protocol", "hovernet", "--truth", truth, "--pred", pred, "--json", out)
    got = json.loads(out.read_text())
    assert REQUIRED["hovernet"] <= set(got)
    want = protocols.hovernet(ti, pi, tt, pt)
    assert got["pq"] == want["pq"] and got["aji_plus"] == want["aji_plus"]
    assert got["type_f1"] == decoded(want["type_f1"])
    assert [r["name"] for r in got["images"]] == names
    run_ok(runner, "--protocol", "hovernet", "--truth", truth, "--pred", pred, "--radius", "1", "--json", out)
    assert json.loads(out.read_text())["detection"]["tp"] < want["detection"]["tp"]


def test_mixed_layouts_pair_by_name(tmp_path, tiles):
    ti, pi, tt, pt = tiles
    truth = write_conic(tmp_path / "t", ti, tt)
    # a folder prediction, files named by row number, written in another order
    pred = write_folder(tmp_path / "p", ["2", "0", "1"], [pi[2], pi[0], pi[1]], [pt[2], pt[0], pt[1]])
    ev = evaluate(truth, pred, "hovernet")
    assert ev.summary["pq"] == protocols.hovernet(ti, pi, tt, pt)["pq"]
    assert ev.summary["classes"] == [1, 2, 3, 4, 5]


def test_classes_option(runner, tmp_path, tiles):
    ti, pi, tt, pt = tiles
    truth, pred = write_conic(tmp_path / "t", ti, tt), write_conic(tmp_path / "p", pi, pt)
    out = tmp_path / "s.json"
    run_ok(runner, "--protocol", "conic", "--truth", truth, "--pred", pred, "--classes", "1,2,6", "--json", out)
    got = json.loads(out.read_text())
    assert set(got["per_class_pq"]) == {"1", "2", "6"} and got["per_class_pq"]["6"] == 0.0
    res = runner.invoke(main, ["evaluate", "--protocol", "conic", "--truth", str(truth), "--pred", str(pred),
                               "--classes", "one"])
    assert res.exit_code != 0 and "type ids" in res.output


# ----------------------------------------------------------------------------
# Bad input: one line, non-zero exit
# ----------------------------------------------------------------------------

def test_shape_mismatch(runner, tmp_path, tiles):
    ti, _, tt, _ = tiles
    truth = write_conic(tmp_path / "t", ti, tt)
    pred = write_conic(tmp_path / "p", [m[:32, :48] for m in ti], [m[:32, :48] for m in tt])
    res = runner.invoke(main, ["evaluate", "--protocol", "hovernet", "--truth", str(truth), "--pred", str(pred)])
    one_line_error(res, "(64, 64) vs (32, 48)")


def test_missing_files_and_wrong_layout(runner, tmp_path, tiles):
    ti, _, tt, _ = tiles
    truth = write_conic(tmp_path / "t", ti, tt)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["evaluate", "--protocol", "hovernet", "--truth", str(truth)]
    one_line_error(runner.invoke(main, args + ["--pred", str(tmp_path / "nope")]), "no such file")
    one_line_error(runner.invoke(main, args + ["--pred", str(empty)]), "prediction")
    one_line_error(runner.invoke(main, args + ["--pred", str(truth), "--format", "pannuke"]), "masks.npy")


@pytest.mark.parametrize("bad, fragment", [(0.5, "whole numbers"), (-2, ">= 0")])
def test_non_integer_or_negative_labels(runner, tmp_path, tiles, bad, fragment):
    ti, _, tt, _ = tiles
    truth = write_conic(tmp_path / "t", ti, tt)
    labels = np.load(truth / "labels.npy").astype(np.float64)
    labels[0, 5, 5, 0] = bad
    (tmp_path / "p").mkdir()
    np.save(tmp_path / "p" / "labels.npy", labels)
    args = ["evaluate", "--protocol", "hovernet", "--truth", str(truth), "--pred", str(tmp_path / "p")]
    one_line_error(runner.invoke(main, args), fragment)


def test_class_protocols_need_type_maps(runner, tmp_path, tiles):
    ti, pi, tt, _ = tiles
    truth = write_conic(tmp_path / "t", ti, tt)
    pred = write_folder(tmp_path / "p", ["0", "1", "2"], pi)  # instance maps only
    res = runner.invoke(main, ["evaluate", "--protocol", "pannuke", "--truth", str(truth), "--pred", str(pred)])
    one_line_error(res, "no type maps")
    # hovernet still scores instances and detection, without type F1
    ev = evaluate(truth, pred, "hovernet")
    assert ev.summary["type_f1"] == {} and not math.isnan(ev.summary["pq"])


def test_images_that_do_not_pair_up(tmp_path, tiles):
    ti, pi, tt, pt = tiles
    truth = write_folder(tmp_path / "t", ["a", "b", "c"], ti, tt)
    pred = write_folder(tmp_path / "p", ["a", "b"], pi[:2], pt[:2])
    with pytest.raises(DataError, match="lacks 1 of the 3 truth images .*'c'"):
        evaluate(truth, pred, "hovernet")
    extra = write_folder(tmp_path / "x", ["a", "b", "c", "d"], pi + pi[:1], pt + pt[:1])
    with pytest.raises(DataError, match="'d'"):
        evaluate(truth, extra, "hovernet")
    stack = write_conic(tmp_path / "s", ti[:2], tt[:2])
    with pytest.raises(DataError, match="truth has 3 images, prediction 2"):
        evaluate(write_conic(tmp_path / "s3", ti, tt), stack, "conic")


def test_unknown_protocol_in_the_library():
    from embedcache.errors import ConfigError

    with pytest.raises(ConfigError, match="hovernet, pannuke, conic"):
        evaluate("x", "y", "monusac")


# ----------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------

def real(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"real data not found at {path} (shared/data is absent in a clean clone)")
    return path


def test_real_he_nuclei_against_itself(runner, tmp_path):
    path = real("he-nuclei-3")
    out = tmp_path / "s.json"
    run_ok(runner, "--protocol", "conic", "--truth", path, "--pred", path, "--json", out)
    got = json.loads(out.read_text())
    # CoNIC's six classes; 4 and 6 appear nowhere and score PQ 0, as in the challenge's own code.
    assert set(got["per_class_pq"]) == {"1", "2", "3", "4", "5", "6"}
    assert got["per_class_pq"]["4"] == got["per_class_pq"]["6"] == 0.0
    assert got["mpq_plus"] == pytest.approx(4 / 6, abs=1e-6) and got["r2"] == 1.0 and got["published"]
    # The classes present, asked for: scored, and said not to be the published protocol.
    res = run_ok(runner, "--protocol", "conic", "--truth", path, "--pred", path, "--classes", "1,2,3,5",
                 "--json", out)
    got = json.loads(out.read_text())
    assert got["mpq_plus"] == pytest.approx(1.0, abs=1e-6) and got["published"] is False
    assert "NOTE: classes 1, 2, 3, 5 were asked for: not the published conic protocol" in res.output


def test_real_cpm15_folder_layout_instance_only(tmp_path):
    path = real("cpm15-dev")
    ev = evaluate(path, path, "hovernet", radius=6)
    assert ev.summary["n_images"] == 11 and ev.summary["detection"]["tp"] == 2089
    assert ev.summary["aji"] == 1.0 and ev.summary["type_f1"] == {}
    ev.write_csv(tmp_path / "rows.csv")
    rows = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert rows[0]["name"] == "image01" and int(rows[0]["n_true"]) == 351
