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
    assert [r["name"] for r in rows] == ["tile00000", "tile00001", "tile00002"]  # as predict and cells name them
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


def test_stack_tiles_have_one_name_in_evaluate_predict_and_cells(tmp_path, tiles):
    """Stack tiles were '0, 1, ...' in evaluate but 'tile00000' in predict's folders and cells' point CSVs; now
    'tile00000' everywhere, and a folder named either way pairs with the stack."""
    from embedcache.datasets import read_label_maps
    from embedcache.datasets.base import stack_name

    ti, pi, tt, pt = tiles
    truth = write_conic(tmp_path / "t", ti, tt)
    assert read_label_maps(truth).names == [stack_name(k) for k in range(3)] == ["tile00000", "tile00001",
                                                                                   "tile00002"]
    pred = write_folder(tmp_path / "p", ["tile00002", "tile00000", "tile00001"], [pi[2], pi[0], pi[1]],
                        [pt[2], pt[0], pt[1]])
    ev = evaluate(truth, pred, "hovernet")
    assert ev.summary["pq"] == protocols.hovernet(ti, pi, tt, pt)["pq"]
    assert [r["name"] for r in ev.rows] == ["tile00000", "tile00001", "tile00002"]


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


def test_unpaired_images_refused_by_default_with_the_on_hint(runner, tmp_path, tiles):
    ti, pi, tt, pt = tiles
    truth = write_folder(tmp_path / "t", ["a", "b", "c"], ti, tt)
    pred = write_folder(tmp_path / "p", ["a", "b"], pi[:2], pt[:2])
    res = runner.invoke(main, ["evaluate", "--protocol", "hovernet", "--truth", str(truth), "--pred", str(pred)])
    one_line_error(res, "lacks 1 of the 3 truth images", "'c'", "pass --on common (images in both), --on truth "
                   "(every truth image; missing predictions count as empty) or --on pred")


# ----------------------------------------------------------------------------
# --on: scoring when the two sides hold different images
# ----------------------------------------------------------------------------

UNPAIRED = ("on", "n_truth_without_pred", "n_pred_without_truth", "truth_without_pred", "pred_without_truth")


@pytest.fixture(scope="module")
def five():
    """5 tiles of 64x64, true and predicted maps, and names for them."""
    ti, tt, pi, pt = ref.make_dataset(11, n_tiles=5, size=64, n_nuclei=(4, 10), n_types=5)
    return ti, pi, tt, pt


def scores(path: Path) -> dict:
    """A JSON output without what says which images were left out."""
    got = json.loads(path.read_text())
    return {k: v for k, v in got.items() if k not in UNPAIRED}


@pytest.mark.parametrize("protocol", ["hovernet", "pannuke", "conic"])
def test_on_common_scores_the_common_images_as_if_alone(runner, tmp_path, five, protocol):
    ti, pi, tt, pt = five
    # truth a..d; the prediction lacks d and has an extra e
    truth = write_folder(tmp_path / "t", ["a", "b", "c", "d"], ti[:4], tt[:4])
    pred = write_folder(tmp_path / "p", ["a", "b", "c", "e"], pi[:3] + pi[4:], pt[:3] + pt[4:])
    out = tmp_path / "on.json"
    res = run_ok(runner, "--protocol", protocol, "--truth", truth, "--pred", pred, "--on", "common", "--json", out)
    assert "scored on 3 common images (1 truth image without a prediction, 1 prediction without truth left out)" \
        in res.output
    # the same common images, copied alone, scored with equal sets
    alone_t = write_folder(tmp_path / "t3", ["a", "b", "c"], ti[:3], tt[:3])
    alone_p = write_folder(tmp_path / "p3", ["a", "b", "c"], pi[:3], pt[:3])
    want = tmp_path / "alone.json"
    run_ok(runner, "--protocol", protocol, "--truth", alone_t, "--pred", alone_p, "--json", want)
    assert scores(out) == scores(want)
    assert [r["name"] for r in scores(out)["images"]] == ["a", "b", "c"]
    got = json.loads(out.read_text())
    assert got["on"] == "common" and got["truth_without_pred"] == ["d"] and got["pred_without_truth"] == ["e"]
    assert got["n_truth_without_pred"] == got["n_pred_without_truth"] == 1
    # without --on the same folders are refused, and the equal sets record nothing left out
    assert runner.invoke(main, ["evaluate", "--protocol", protocol, "--truth", str(truth), "--pred", str(pred)]
                         ).exit_code == 2
    assert json.loads(want.read_text())["on"] is None and json.loads(want.read_text())["n_truth_without_pred"] == 0


@pytest.mark.parametrize("protocol", ["hovernet", "pannuke", "conic"])
def test_on_truth_scores_a_missing_prediction_as_an_empty_map(runner, tmp_path, five, protocol):
    ti, pi, tt, pt = five
    names = ["a", "b", "c", "d"]
    truth = write_folder(tmp_path / "t", names, ti[:4], tt[:4])
    # b has no prediction; z is a prediction the truth lacks (ignored)
    pred = write_folder(tmp_path / "p", ["a", "c", "d", "z"], [pi[0], pi[2], pi[3], pi[4]],
                        [pt[0], pt[2], pt[3], pt[4]])
    out = tmp_path / "on.json"
    res = run_ok(runner, "--protocol", protocol, "--truth", truth, "--pred", pred, "--on", "truth", "--json", out)
    assert ("scored on 4 truth images (1 without a prediction, scored as empty; 1 prediction without truth ignored)"
            in res.output)
    zero = np.zeros_like(pi[1])
    zeros = write_folder(tmp_path / "z", names, [pi[0], zero, pi[2], pi[3]], [pt[0], zero, pt[2], pt[3]])
    want = tmp_path / "zeros.json"
    run_ok(runner, "--protocol", protocol, "--truth", truth, "--pred", zeros, "--json", want)
    assert scores(out) == scores(want)
    rows = scores(out)["images"]
    assert [r["name"] for r in rows] == names and rows[1]["n_pred"] == 0 and rows[1]["n_true"] > 0
    got = json.loads(out.read_text())
    assert got["truth_without_pred"] == ["b"] and got["pred_without_truth"] == ["z"]


def test_on_pred_scores_the_predicted_images_and_refuses_one_without_truth(runner, tmp_path, five):
    ti, pi, tt, pt = five
    truth = write_folder(tmp_path / "t", ["a", "b", "c", "d"], ti[:4], tt[:4])
    pred = write_folder(tmp_path / "p", ["b", "d"], [pi[1], pi[3]], [pt[1], pt[3]])
    out = tmp_path / "on.json"
    res = run_ok(runner, "--protocol", "hovernet", "--truth", truth, "--pred", pred, "--on", "pred", "--json", out)
    assert "scored on 2 predicted images (2 truth images without a prediction left out)" in res.output
    alone = write_folder(tmp_path / "t2", ["b", "d"], [ti[1], ti[3]], [tt[1], tt[3]])
    want = tmp_path / "alone.json"
    run_ok(runner, "--protocol", "hovernet", "--truth", alone, "--pred", pred, "--json", want)
    assert scores(out) == scores(want)
    assert json.loads(out.read_text())["truth_without_pred"] == ["a", "c"]
    # a prediction whose truth is missing: one line naming it, exit 1, no traceback
    extra = write_folder(tmp_path / "x", ["b", "d", "q"], [pi[1], pi[3], pi[4]], [pt[1], pt[3], pt[4]])
    res = runner.invoke(main, ["evaluate", "--protocol", "hovernet", "--truth", str(truth), "--pred", str(extra),
                               "--on", "pred"])
    # exit 2: the CLI's status for every data error (embedcache.errors.EmbedcacheError)
    assert res.exit_code == 2 and "Traceback" not in res.output and res.exception.__class__ is SystemExit
    one_line_error(res, "--on pred", "has 1 image that the truth lacks", "'q'", "--on common")


@pytest.mark.parametrize("on", ["common", "truth", "pred"])
def test_no_image_in_common_is_refused_whatever_on(runner, tmp_path, tiles, on):
    ti, pi, tt, pt = tiles
    truth = write_folder(tmp_path / "t", ["a", "b", "c"], ti, tt)
    pred = write_folder(tmp_path / "p", ["x", "y"], pi[:2], pt[:2])
    res = runner.invoke(main, ["evaluate", "--protocol", "hovernet", "--truth", str(truth), "--pred", str(pred),
                               "--on", on])
    assert res.exit_code == 2
    one_line_error(res, "no image name in common", "'a'", "'x'")


def test_on_with_stacks_pairs_by_row_number(runner, tmp_path, five):
    ti, pi, tt, pt = five
    ti, pi, tt, pt = ti[:3], pi[:3], one_type_per_nucleus(ti[:3], tt[:3]), one_type_per_nucleus(pi[:3], pt[:3])
    tissue = ["Breast", "Colon", "Colon"]
    truth = write_pannuke(tmp_path / "t", ti, tt, tissue)
    # a folder prediction of rows 0 and 2, named by row number
    pred = write_folder(tmp_path / "p", ["0", "2"], [pi[0], pi[2]], [pt[0], pt[2]])
    ev = evaluate(truth, pred, "pannuke", on="common")
    want = protocols.pannuke([ti[0], ti[2]], [pi[0], pi[2]], [tt[0], tt[2]], [pt[0], pt[2]],
                             tissue=["Breast", "Colon"], names=["tile00000", "tile00002"])
    assert [r["name"] for r in ev.rows] == ["tile00000", "tile00002"] and [r["tissue"] for r in ev.rows] == ["Breast", "Colon"]
    for key in ("bpq", "mpq", "bpq_images", "mpq_images"):
        assert ev.summary[key] == pytest.approx(want[key], abs=1e-12)
    assert ev.summary["tissues"]["Colon"]["n_images"] == 1 and ev.summary["truth_without_pred"] == ["tile00001"]
    # --on truth: row 1, with no prediction, is scored as empty
    ev = evaluate(truth, pred, "hovernet", on="truth")
    assert [r["n_pred"] for r in ev.rows][1] == 0 and ev.summary["n_images"] == 3
    # a folder named otherwise, as many images as rows: still paired by position
    named = write_folder(tmp_path / "n", ["x", "y", "z"], pi, pt)
    ev = evaluate(truth, named, "hovernet", on="common")
    assert ev.summary["pq"] == protocols.hovernet(ti, pi, tt, pt)["pq"] and ev.summary["n_truth_without_pred"] == 0
    # two stacks of different lengths cannot pair up, whatever --on says
    short = write_conic(tmp_path / "s", [pi[0], pi[2]], [pt[0], pt[2]])
    res = runner.invoke(main, ["evaluate", "--protocol", "hovernet", "--truth", str(truth), "--pred", str(short),
                               "--on", "common"])
    one_line_error(res, "truth has 3 images, prediction 2", "row by row")


def test_on_unknown_value():
    from embedcache.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown on='both'; use common, truth or pred"):
        evaluate("x", "y", "hovernet", on="both")


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
