"""``embedcache run`` end to end on a tiny study: steps keyed by content, reused, resumed and left out.

One finished run (one tiny encoder, synthetic tiles, two seeds, one epoch)
is made once per module; tests that change the study work on a copy of its
output folder, so only the steps they add actually run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
import yaml
from click.testing import CliRunner
from browser import page_state
from conftest import TINY_CNN, TINY_VIT

from embedcache.cli import main
from embedcache.errors import ConfigError, DataError
from embedcache.errors import PipelineError
from embedcache.pipeline.run import dry_run, execute, plan
from embedcache.pipeline.spec import load_pipeline
from embedcache.pipeline.steps import STEP_RECORD

pytestmark = pytest.mark.slow

CNN = {"encoder": TINY_CNN, "weights": "random"}
VIT = {"encoder": TINY_VIT, "weights": "random"}
SEEDS = (0, 1)


def study(out, encoders=None, **over) -> dict:
    """The tiny study as a mapping (written to YAML by :func:`write`)."""
    s = {
        "name": "tiny",
        "out": str(out),
        "datasets": {"syn": {"synthetic": {"tiles": 12, "folds": 3, "size": 64}}},
        "encoders": encoders or {"cnn": dict(CNN)},
        "extract": {"variants": "none", "batch_size": 8, "unit_tiles": 4, "device": "cpu"},
        "fit": {"epochs": 1, "batch_size": 4, "device": "cpu", "decoder": {"width": 8}},
        "seeds": list(SEEDS),
        "report": {"n_boot": 100, "overlays": 1},
    }
    s.update(over)
    return s


def write(folder, data: dict):
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path, lines=None, **kw):
    p = plan(load_pipeline(path), progress=False)
    return p, execute(p, progress=False, echo=(lines.append if lines is not None else (lambda _: None)), **kw)


def cell_labels(encoder: str) -> set[str]:
    """Labels of one encoder's steps on the dataset."""
    out = {f"extract {encoder} on syn"}
    for s in SEEDS:
        out |= {f"fit decoder {encoder} on syn (seed {s})", f"evaluate {encoder} on syn (seed {s})"}
    return out


def fit_eval_labels(encoder: str) -> set[str]:
    return cell_labels(encoder) - {f"extract {encoder} on syn"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny tensors gain nothing from two, and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished run of the one-encoder study: (folder, outcome of the first run, echoed lines)."""
    folder = tmp_path_factory.mktemp("base")
    lines: list[str] = []
    _, outcome = run(write(folder, study(folder / "out")), lines)
    return folder, outcome, lines


@pytest.fixture
def copy(base, tmp_path):
    """A copy of the finished run's output folder under ``tmp_path / 'out'``."""
    shutil.copytree(base[0] / "out", tmp_path / "out")
    return tmp_path / "out"


def leaderboard(out) -> dict:
    return json.loads((out / "report" / "leaderboard.json").read_text())


# ----------------------------------------------------------------------------- run, then reuse


def test_first_run_runs_every_step_and_writes_the_report(base):
    folder, outcome, lines = base
    out = folder / "out"
    assert set(outcome.ran) == {"make synthetic tiles for syn"} | cell_labels("cnn")
    assert len(outcome.ran) == 6 and outcome.reused == [] and outcome.skipped == [] and outcome.failed == {}
    assert outcome.report == out / "report" and outcome.report_reused is False
    assert any(line.startswith("run ") for line in lines) and any(line.startswith("report") for line in lines)
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "index.html", "scores_syn.png",
                 "report.json"):
        assert (out / "report" / name).is_file(), name
    steps = sorted((out / "steps").iterdir())
    assert len(steps) == 6 and all((d / STEP_RECORD).is_file() for d in steps)
    assert {d.name.split("-")[0] for d in steps} == {"data", "extract", "fit", "evaluate"}
    assert all(len(d.name.split("-")[1]) == 16 for d in steps)

    lb = leaderboard(out)
    board = lb["leaderboards"]["syn"]
    assert board["protocol"] == "pannuke" and lb["failures"] == {} and lb["n_boot"] == 100
    (row,) = board["rows"]
    assert row["encoder"] == "cnn" and row["n_seeds"] == 2 and row["n_images"] == 4
    assert len(row["mpq"]["seeds"]) == 2
    md = (out / "report" / "leaderboard.md").read_text()
    assert "| cnn |" in md and "2 seed(s)" in md
    csv = (out / "report" / "leaderboard.csv").read_text().splitlines()
    assert csv[0].startswith("dataset,protocol,encoder,metric") and len(csv) == 1 + len(board["metrics"])
    page = (out / "report" / "index.html").read_text()
    assert "<table>" in page and "<h1>" in page
    # every image the page shows is in the report folder
    shown = re.findall(r"<img src='([^']+)'", page)
    assert "scores_syn.png" in shown and any(s.startswith("overlays/") for s in shown)
    assert all((out / "report" / s).is_file() for s in shown)
    links = re.findall(r"<a href='([^']+)'", page)  # click-to-enlarge images, the types overlays, the files
    assert "leaderboard.csv" in links and "leaderboard.json" in links and any(s.endswith("_types.png") for s in links)
    assert all((out / "report" / s).is_file() for s in links)
    assert "training_syn.png" in shown and "matched (TP)" in page and "neoplastic" in page  # match and type legends
    tp_fp_fn = re.findall(r"TP (\d+), FP (\d+), FN (\d+)", page)
    assert tp_fp_fn and all(int(tp) + int(fn) > 0 for tp, _, fn in tp_fp_fn)  # shown images hold true nuclei
    assert "Per-image bPQ: syn" in md and "Settings and provenance: syn" in md
    (setting,) = lb["settings"]
    assert setting["encoder"] == "cnn" and setting["seeds"] == "0, 1" and setting["weights"] == "random"
    (cost,) = lb["costs"]  # two seeds: training time with its range; extraction per unit
    assert cost["fit_seconds"]["n"] == 2 and cost["fit_seconds"]["lo"] <= cost["fit_seconds"]["hi"]
    extract_record = json.loads(next((out / "steps").glob("extract-*/step.json")).read_text())["result"]
    assert len(extract_record["unit_ms_per_tile_variant"]) >= 1
    assert "**" not in page  # the markdown's emphasis is rendered, not shown


def test_the_report_page_loads_in_a_browser_with_every_image_and_link(base, tmp_path):
    out = base[0] / "out" / "report"
    state = page_state(out / "index.html", screenshot=tmp_path / "page.png")
    assert state["ready"] == "complete" and state["title"]
    assert state["errors"] == []  # no failed load, no script error
    assert len(state["images"]) >= 3  # scores, training curves, overlays
    broken = [i["src"] for i in state["images"] if not i["loaded"]]
    assert broken == [], broken
    targets = [Path(unquote(urlparse(h).path)) for h in state["links"] if h.startswith("file:")]
    assert targets and all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    assert (tmp_path / "page.png").stat().st_size > 10_000  # a rendered page, not a blank one


def test_second_run_reuses_every_step_and_the_report(base):
    folder, first, _ = base
    out = folder / "out"
    stamp = (out / "report" / "leaderboard.json").stat().st_mtime_ns
    p, outcome = run(folder / "study.yaml")
    assert outcome.ran == [] and sorted(outcome.reused) == sorted(first.ran)
    assert outcome.report == out / "report" and outcome.report_reused is True
    assert (out / "report" / "leaderboard.json").stat().st_mtime_ns == stamp
    rows = dry_run(p)
    assert len(rows) == 6 and {state for state, _, _ in rows} == {"reuse"}
    assert {d for _, _, d in rows} == {d for d in (out / "steps").iterdir()}

    res = CliRunner().invoke(main, ["run", str(folder / "study.yaml"), "--dry-run", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "6 steps: 6 reuse" in res.output


# ----------------------------------------------------------------------------- changing the study


def test_adding_an_encoder_runs_only_its_steps(copy):
    out = copy
    path = write(out.parent, study(out, {"cnn": dict(CNN), "vit": dict(VIT)}))
    p = plan(load_pipeline(path), progress=False)
    states = {label: state for state, label, _ in dry_run(p)}
    assert {label for label, s in states.items() if s == "run"} == cell_labels("vit")
    _, outcome = run(path)
    assert set(outcome.ran) == cell_labels("vit") and len(outcome.ran) == 5
    assert "make synthetic tiles for syn" in outcome.reused and set(outcome.reused) >= cell_labels("cnn")
    assert outcome.report_reused is False
    board = leaderboard(out)["leaderboards"]["syn"]
    assert {r["encoder"] for r in board["rows"]} == {"cnn", "vit"}
    pairs = [c for c in board["comparisons"] if c["metric"] == "mpq"]
    assert len(pairs) == 1 and {pairs[0]["a"], pairs[0]["b"]} == {"cnn", "vit"}
    assert "verdict" in pairs[0] and "p_holm" in pairs[0]
    md = (out / "report" / "leaderboard.md").read_text()
    assert "| cnn |" in md and "| vit |" in md and "Paired comparisons" in md


def test_a_new_fit_setting_reuses_the_extraction(copy):
    out = copy
    fit = dict(study(out)["fit"], lr=5e-3)  # not the default
    _, outcome = run(write(out.parent, study(out, fit=fit)))
    assert set(outcome.ran) == fit_eval_labels("cnn")
    assert set(outcome.reused) == {"make synthetic tiles for syn", "extract cnn on syn"}
    assert outcome.report_reused is False
    assert len(list((out / "steps").glob("fit-*"))) == 4  # old and new fits side by side
    assert len(list((out / "steps").glob("extract-*"))) == 1
    # A runtime-only setting (batch size of extraction, fit device) changes no key.
    xt = dict(study(out)["extract"], batch_size=2)
    _, outcome = run(write(out.parent, study(out, fit=fit, extract=xt)))
    assert outcome.ran == [] and outcome.report_reused is True


def test_tta_is_a_new_evaluation_of_the_same_fits(copy):
    """Evaluating with TTA re-runs only the evaluations; a store without the variants stops with one line."""
    out = copy
    p, _ = run(write(out.parent, study(out)))
    plain_keys = {s.key for s in p.steps if s.kind == "evaluate"}
    with pytest.raises(PipelineError, match=r"evaluate cnn on syn \(seed 0\): .* lacks the variants hflip, vflip "
                                            r"that --tta flips needs \(it caches identity\)"):
        run(write(out.parent, study(out, evaluate={"tta": "flips"})))
    p2 = plan(load_pipeline(out.parent / "study.yaml"), progress=False)
    assert {s.kind for s in p2.steps if not s.done} == {"evaluate"}
    assert not plain_keys & {s.key for s in p2.steps if s.kind == "evaluate"}


# ----------------------------------------------------------------------------- interruptions


def test_an_interrupted_step_is_run_again_and_finished_ones_are_not(tmp_path, monkeypatch):
    import embedcache.train.loop as loop

    real_fit, calls = loop.fit, []

    def crashing_fit(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise DataError("simulated crash in the middle of training")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(loop, "fit", crashing_fit)
    out = tmp_path / "out"
    path = write(tmp_path, study(out))
    p = plan(load_pipeline(path), progress=False)
    with pytest.raises(PipelineError) as info:
        execute(p, progress=False, echo=lambda _: None)
    message = str(info.value)
    assert "fit decoder cnn on syn (seed 1)" in message and "simulated crash" in message and "run again" in message
    fit1 = p.cells[0].fits[1]
    assert fit1.dir.is_dir() and not fit1.done  # started, never recorded
    assert not (out / "report").exists()
    states = {label: state for state, label, _ in dry_run(plan(load_pipeline(path), progress=False))}
    assert states["fit decoder cnn on syn (seed 1)"] == "resume"
    assert states["evaluate cnn on syn (seed 1)"] == "run"
    assert {label for label, s in states.items() if s == "reuse"} == \
        {"make synthetic tiles for syn", "extract cnn on syn", "fit decoder cnn on syn (seed 0)",
         "evaluate cnn on syn (seed 0)"}
    extract_record = (p.cells[0].extract.dir / STEP_RECORD).read_text()

    monkeypatch.setattr(loop, "fit", real_fit)
    lines: list[str] = []
    _, outcome = run(path, lines)
    assert outcome.ran == ["fit decoder cnn on syn (seed 1)", "evaluate cnn on syn (seed 1)"]
    assert any(line.startswith("resume") and "seed 1" in line for line in lines)
    assert fit1.done and (fit1.dir / "run").is_dir()
    assert (p.cells[0].extract.dir / STEP_RECORD).read_text() == extract_record  # not run again
    assert outcome.report_reused is False and (out / "report" / "leaderboard.json").is_file()
    assert leaderboard(out)["leaderboards"]["syn"]["rows"][0]["n_seeds"] == 2


def test_a_step_folder_without_its_record_is_redone(copy):
    out = copy
    evals = sorted(out.glob("steps/evaluate-*"))
    (evals[0] / STEP_RECORD).unlink()
    (evals[0] / "eval.json").unlink()  # half written
    _, outcome = run(write(out.parent, study(out)))
    assert len(outcome.ran) == 1 and outcome.ran[0].startswith("evaluate cnn on syn")
    assert (evals[0] / STEP_RECORD).is_file() and (evals[0] / "eval.json").is_file()


# ----------------------------------------------------------------------------- failing encoders


def test_unloadable_encoders_are_left_out_with_their_reason(copy, tmp_path):
    out = copy
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not a checkpoint")
    encoders = {"garbage": {"encoder": TINY_CNN, "weights": str(garbage)},  # fails when extracting
                "missing": {"encoder": TINY_CNN, "weights": "/nonexistent.safetensors"},  # fails when planning
                "nosuch": {"encoder": "no-such-encoder"},
                "cnn": dict(CNN)}
    fit = dict(study(out)["fit"], lr=5e-3)  # not the default  # cnn's fits and evaluations have to run
    path = write(tmp_path, study(out, encoders, fit=fit, on_error="skip"))
    p = plan(load_pipeline(path), progress=False)
    assert set(p.failed) == {"missing", "nosuch"}
    assert "/nonexistent.safetensors" in p.failed["missing"] and "no-such-encoder" in p.failed["nosuch"]
    lines: list[str] = []
    outcome = execute(p, progress=False, echo=lines.append)
    assert set(outcome.failed) == {"garbage", "missing", "nosuch"}
    assert "extract garbage on syn" in outcome.failed["garbage"]
    assert set(outcome.skipped) == fit_eval_labels("garbage")
    assert set(outcome.ran) == fit_eval_labels("cnn")  # the other encoder goes on
    lb = leaderboard(out)
    assert [r["encoder"] for r in lb["leaderboards"]["syn"]["rows"]] == ["cnn"]
    assert set(lb["failures"]) == {"garbage", "missing", "nosuch"}
    assert "does not exist" in lb["failures"]["missing"] and "not a readable checkpoint" in lb["failures"]["garbage"]
    md = (out / "report" / "leaderboard.md").read_text()
    assert "Encoders left out" in md and "- missing:" in md and "- garbage:" in md and "- nosuch:" in md

    # Without on_error: skip, planning stops at the first encoder it cannot plan ...
    path = write(tmp_path, study(out, encoders, fit=fit))
    with pytest.raises(PipelineError, match=r"encoder missing: weights file /nonexistent.safetensors does not"):
        plan(load_pipeline(path), progress=False)
    # ... and a failing step stops the run, naming the step.
    path = write(tmp_path, study(out, {"cnn": dict(CNN), "garbage": encoders["garbage"]}, fit=fit))
    p = plan(load_pipeline(path), progress=False)
    with pytest.raises(PipelineError, match="extract garbage on syn: .*not a readable checkpoint"):
        execute(p, progress=False, echo=lambda _: None)


def test_weights_are_checked_before_any_step(copy, monkeypatch):
    """A gated model without a token stops the plan, or with on_error: skip is left out with the reason."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(copy.parent / "hf"))  # an empty hub cache, no stored token
    out = copy
    encoders = {"cnn": dict(CNN), "uni": {"encoder": "uni"}}
    with pytest.raises(PipelineError, match=r"encoder uni: weights cannot be had here: MahmoodLab/UNI is gated: "
                                            r"accept its terms .* and set HF_TOKEN"):
        plan(load_pipeline(write(out.parent, study(out, encoders=encoders))), progress=False)
    p = plan(load_pipeline(write(out.parent, study(out, encoders=encoders, on_error="skip"))), progress=False)
    assert list(p.failed) == ["uni"] and "is gated" in p.failed["uni"]
    assert {c.encoder for c in p.cells} == {"cnn"}


def test_cli_keep_going(copy, tmp_path):
    out = copy
    encoders = {"cnn": dict(CNN), "missing": {"encoder": TINY_CNN, "weights": "/nonexistent.safetensors"}}
    path = write(tmp_path, study(out, encoders))
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(path), "--quiet"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert re.search(r"Error: \S+study\.yaml:\d+: encoder missing: weights file /nonexistent\.safetensors does "
                     "not exist", res.output), res.output  # the file and line of the encoder's entry
    res = runner.invoke(main, ["run", str(path), "--keep-going", "--dry-run", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "left out missing:" in res.output and "6 steps: 6 reuse" in res.output
    res = runner.invoke(main, ["run", str(path), "--keep-going", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "0 steps run, 6 reused" in res.output and "1 encoder(s) left out" in res.output
    assert "report written" in res.output and "- missing:" in res.output
    assert set(leaderboard(out)["failures"]) == {"missing"}


def test_only_runs_the_named_kinds(copy):
    out = copy
    fit = dict(study(out)["fit"], lr=5e-3)  # not the default
    path = write(out.parent, study(out, fit=fit))
    _, outcome = run(path, only=("fit",))
    assert set(outcome.ran) == {f"fit decoder cnn on syn (seed {s})" for s in SEEDS}
    assert {f"evaluate cnn on syn (seed {s})" for s in SEEDS} <= set(outcome.skipped)
    assert outcome.report is None
    with pytest.raises(ConfigError, match="step kinds are"):
        run(path, only=("train",))


def test_a_report_made_before_every_evaluation_finished_is_rebuilt_after(copy):
    out = copy
    path = write(out.parent, study(out, {"cnn": dict(CNN), "vit": dict(VIT)}))
    _, outcome = run(path, only=("extract", "fit", "report"))
    assert set(outcome.ran) == cell_labels("vit") - {f"evaluate vit on syn (seed {s})" for s in SEEDS}
    assert outcome.report_reused is False  # cnn alone: vit has no evaluation yet
    assert [r["encoder"] for r in leaderboard(out)["leaderboards"]["syn"]["rows"]] == ["cnn"]
    _, outcome = run(path)
    assert set(outcome.ran) == {f"evaluate vit on syn (seed {s})" for s in SEEDS}
    assert outcome.report_reused is False
    assert {r["encoder"] for r in leaderboard(out)["leaderboards"]["syn"]["rows"]} == {"cnn", "vit"}


def test_a_seeded_split_holds_out_the_same_images_for_every_seed(copy):
    out = copy
    fit = dict(study(out)["fit"], val="frac:0.3")  # drawn with a seed: the same draw for every training seed
    p, outcome = run(write(out.parent, study(out, fit=fit)))
    assert set(outcome.ran) == fit_eval_labels("cnn") and outcome.report_reused is False
    tiles = [json.loads((p.cells[0].evals[s].dir / "eval.json").read_text())["tiles"] for s in SEEDS]
    assert tiles[0] == tiles[1] and len(tiles[0]) == 4
    assert [p.cells[0].fits[s].inputs["fit"]["split_seed"] for s in SEEDS] == [0, 0]
    (row,) = leaderboard(out)["leaderboards"]["syn"]["rows"]
    assert row["n_seeds"] == 2 and row["n_images"] == 4


def test_a_step_another_process_computes_is_waited_for_and_the_others_run_meanwhile(tmp_path):
    import threading
    import time

    from embedcache.claims import Claims, claims_place

    out = tmp_path / "out"
    path = write(tmp_path, study(out, seeds=[0]))
    p = plan(load_pipeline(path), progress=False)
    fit0, eval0 = p.cells[0].fits[0], p.cells[0].evals[0]
    other = Claims(claims_place(out / "steps"), "pipeline")  # a second `embedcache run`, alive, computing the fit
    assert other.acquire(fit0.dir.name)
    lines: list[str] = []

    def the_other_run():
        while not any(line.startswith("wait") for line in lines):
            time.sleep(0.05)
        fit0.run()  # the other process finishes its step, then lets go
        other.release(fit0.dir.name)

    helper = threading.Thread(target=the_other_run)
    helper.start()
    outcome = execute(p, progress=False, echo=lines.append)
    helper.join()
    assert f"wait  {fit0.label}: another process is computing it" in lines
    assert f"wait  {eval0.label}: another process is computing {fit0.label}" in lines
    assert fit0.label in outcome.reused and fit0.label not in outcome.ran  # computed once, by the other
    assert eval0.label in outcome.ran and eval0.done and p.cells[0].extract.label in outcome.ran
    assert lines.index(f"wait  {fit0.label}: another process is computing it") < \
        next(k for k, line in enumerate(lines) if line.startswith(f"run   {eval0.label}"))
    assert not claims_place(out / "steps").exists()
