"""Post-processing tuned on images apart from training and validation, recorded in the run and used after."""

from __future__ import annotations

import json

import pytest
from decoder_helpers import fit_config, make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)

from embedcache.config import PostprocessConfig
from embedcache.errors import ConfigError
from embedcache.infer.evaluate import evaluate_run
from embedcache.infer.tune import TUNED, grid, run_postprocess, tune_postprocess
from embedcache.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    store = make_store(write_conic(tmp / "conic", n=8), tmp / "s.zarr", variants="none")
    fit(store, tmp / "run", fit_config(epochs=3, lr=3e-3, train="tiles:0,1,2,3"), progress=False)
    return tmp / "run", store


def test_the_defaults_come_first_and_the_grid_varies_what_the_watershed_depends_on():
    base = PostprocessConfig.for_magnification("40x")
    g = grid(base)
    assert g[0] == base and len(g) == len(set(g)) > 20
    assert {c.foreground for c in g} >= {0.4, 0.5, 0.6} and len({c.min_size for c in g}) == 3


def test_tuning_picks_the_best_pq_on_its_images_and_evaluation_uses_it(run):
    path, store = run
    assert run_postprocess(path, "40x") == (PostprocessConfig.for_magnification("40x"), "default")  # not tuned yet
    result = tune_postprocess(path, "tiles:6,7", store=store)
    assert result["pq_tuned"] >= result["pq_default"] and result["tiles"] == [6, 7] and result["tried"] > 20
    assert json.loads((path / TUNED).read_text()) == result
    chosen = PostprocessConfig(**result["chosen"])
    assert run_postprocess(path, "40x") == (chosen, "tuned")
    assert run_postprocess(path, "20x")[1] == "default"  # tuned at 40x only
    given = PostprocessConfig(foreground=0.7)
    assert run_postprocess(path, "40x", given) == (given, "given")
    evaluate_run(path, store)
    ev = json.loads((path / "eval.json").read_text())
    assert ev["postprocess_source"] == "tuned" and ev["postprocess"] == chosen.to_dict()
    (path / TUNED).unlink()
    evaluate_run(path, store)
    assert json.loads((path / "eval.json").read_text())["postprocess_source"] == "default"


def test_tuning_on_training_or_held_out_tiles_is_refused(run):
    path, store = run
    with pytest.raises(ConfigError, match="run trained on"):
        tune_postprocess(path, "tiles:0,6", store=store)
    with pytest.raises(ConfigError, match="run scored on"):
        tune_postprocess(path, "tiles:4", store=store)
    assert not (path / TUNED).exists()


def test_tuning_on_the_validation_split_is_allowed_only_when_asked(run, tmp_path):
    path, store = run
    with pytest.raises(ConfigError, match="run scored on"):
        tune_postprocess(path, "tiles:4,5", store=store, out=tmp_path)
    result = tune_postprocess(path, "tiles:4,5", store=store, out=tmp_path, on_val=True)
    assert result["tiles"] == [4, 5] and (tmp_path / TUNED).is_file() and not (path / TUNED).exists()
    with pytest.raises(ConfigError, match="run trained on"):  # training tiles stay refused
        tune_postprocess(path, "tiles:0,4", store=store, out=tmp_path, on_val=True)


def test_tuning_with_tta_scores_the_merged_maps_and_needs_the_variants(run, tmp_path):
    from embedcache.errors import DataError

    path, bare = run
    with pytest.raises(DataError, match="lacks the variants .* that --tta flips needs"):  # identity-only store
        tune_postprocess(path, "tiles:6,7", store=bare, out=tmp_path, tta="flips")
    store = make_store(write_conic(tmp_path / "conic", n=8), tmp_path / "flips.zarr")  # identity + flips
    fit(store, tmp_path / "r", fit_config(epochs=8, lr=1e-2, train="tiles:0,1,2,3"), progress=False)  # finds nuclei
    plain = tune_postprocess(tmp_path / "r", "tiles:6,7", store=store, out=tmp_path / "plain")
    merged = tune_postprocess(tmp_path / "r", "tiles:6,7", store=store, out=tmp_path / "merged", tta="flips")
    assert plain["tta"] == "none" and merged["tta"] == "flips"
    assert plain["pq_default"] > 0 and merged["pq_default"] > 0
    assert merged["pq_default"] != plain["pq_default"]  # other maps: the flips' average, not the identity's
    assert json.loads((tmp_path / "merged" / TUNED).read_text())["tta"] == "flips"


def test_predict_says_which_thresholds_it_used_and_takes_others(run, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main

    path, store = run
    (path / TUNED).unlink(missing_ok=True)
    base = ["predict", "--run", str(path), "--store", str(store), "--split", "val", "--no-overlays",
            "--no-geojson", "--quiet", "--out"]
    res = CliRunner().invoke(main, [*base, str(tmp_path / "p0")])
    assert res.exit_code == 0, res.output
    assert "the 40x defaults (the run has no tuned thresholds" in res.output
    assert json.loads((tmp_path / "p0" / "prediction.json").read_text())["postprocess_source"] == "default"

    tune_postprocess(path, "tiles:6,7", store=store)
    res = CliRunner().invoke(main, [*base, str(tmp_path / "p1")])
    assert res.exit_code == 0 and "post-processing: tuned" in res.output, res.output
    info = json.loads((tmp_path / "p1" / "prediction.json").read_text())
    assert info["postprocess_source"] == "tuned"
    assert info["postprocess"] == json.loads((path / TUNED).read_text())["chosen"]

    res = CliRunner().invoke(main, [*base, str(tmp_path / "p2"), "--postprocess", "defaults"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "p2" / "prediction.json").read_text())
    assert info["postprocess_source"] == "given"
    assert info["postprocess"] == PostprocessConfig.for_magnification("40x").to_dict()

    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"foreground": 0.65, "min_size": 30}))
    res = CliRunner().invoke(main, [*base, str(tmp_path / "p3"), "--postprocess", str(mine)])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "p3" / "prediction.json").read_text())["postprocess"]
    assert got["foreground"] == 0.65 and got["min_size"] == 30 and got["marker"] == 0.4

    for text, message in (('{"foregrund": 0.6}', "foregrund: a post-processing file holds"),
                          ("{oops", "not valid JSON (line 1"), ('{"foreground": 1.5}', "strictly between 0 and 1")):
        mine.write_text(text)
        res = CliRunner().invoke(main, [*base, str(tmp_path / "bad"), "--postprocess", str(mine)])
        assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "bad").exists()
    res = CliRunner().invoke(main, [*base, str(tmp_path / "bad"), "--postprocess", "tuned-please"])
    assert res.exit_code != 0 and "not run, defaults or a JSON file" in res.output


def test_fit_decoder_tune_prints_the_choice(run, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main

    _, store = run
    args = ["fit-decoder", "--store", str(store), "--out", str(tmp_path / "r"), "--epochs", "1", "--width", "8",
            "--val", "tiles:4,5", "--train", "tiles:0,1,2,3", "--tune", "tiles:6,7", "--device", "cpu", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "post-processing tuned on 2 image(s)" in res.output and (tmp_path / "r" / TUNED).is_file()
    bad = CliRunner().invoke(main, [*args[:-5], "--tune", "tiles:4", "--device", "cpu", "--quiet", "--overwrite"])
    assert bad.exit_code != 0 and "run scored on" in bad.output and "Traceback" not in bad.output
    res = CliRunner().invoke(main, [*args[:4], str(tmp_path / "r2"), *args[5:], "--tta", "d4"])
    assert res.exit_code != 0 and "lacks the variants" in res.output and "that --tta d4 needs" in res.output
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r2.partial").exists()  # refused before training


def test_a_pipeline_tunes_on_its_own_split_before_evaluating(tmp_path):
    import yaml

    from embedcache.pipeline.run import execute, plan
    from embedcache.pipeline.spec import load_pipeline

    study = {"name": "t", "out": str(tmp_path / "out"),
             "datasets": {"syn": {"synthetic": {"tiles": 12, "folds": 3, "size": 64},
                                  "fit": {"val": "fold3", "train": "fold1"}, "evaluate": {"tune": "fold2"}}},
             "encoders": {"cnn": {"encoder": "timm:test_efficientnet", "weights": "random"}},
             "extract": {"variants": "none", "batch_size": 8, "unit_tiles": 4, "device": "cpu"},
             "fit": {"epochs": 1, "batch_size": 4, "device": "cpu", "decoder": {"width": 8}},
             "seeds": [0], "report": {"n_boot": 100, "overlays": 0}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    p = plan(load_pipeline(path), progress=False)
    outcome = execute(p, progress=False, echo=lambda _: None)
    assert outcome.failed == {}
    step = p.cells[0].evals[0]
    tuned = json.loads((step.dir / TUNED).read_text())
    ev = json.loads((step.dir / "eval.json").read_text())
    assert ev["postprocess_source"] == "tuned" and ev["postprocess"] == tuned["chosen"]
    assert step.inputs["tune"] == "fold2" and not (p.cells[0].fits[0].dir / "run" / TUNED).exists()
    bad = dict(study, datasets={"syn": {**study["datasets"]["syn"], "evaluate": {"tune": ""}}})
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ConfigError, match="tune is a split"):
        load_pipeline(path)


@pytest.mark.parametrize("extra, message", [
    (["--val", "tiles:4,5", "--tune", "tiles:4,5"], "holds 2 tile(s) the run scored on (its val split)"),
    (["--val", "tiles:4,5", "--train", "tiles:0,1,2,3", "--tune", "tiles:3,6"],
     "holds 1 tile(s) the run trained on"),
    (["--val", "tiles:4,5", "--tune", "tiles:99"], "tile 99 does not exist (the store has 0..7)"),
    (["--val", "tiles:4,5", "--tune", "tiles:6,7", "--tta", "flips"], "lacks the variants hflip, vflip"),
])
def test_fit_decoder_refuses_a_plan_that_would_fail_before_any_epoch(run, tmp_path, monkeypatch, extra, message):
    """A tuning split inside the run's own split used to be refused after the whole training (20 minutes on
    CPM-15); the plan is checked first, so training never starts and nothing is written."""
    from click.testing import CliRunner

    from embedcache.cli import main

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("embedcache.train.loop.fit", no_training)
    res = CliRunner().invoke(main, ["fit-decoder", "--store", str(run[1]), "--out", str(tmp_path / "r"),
                                    "--device", "cpu", "--quiet", *extra])
    assert res.exit_code != 0 and message in res.stderr and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_a_pipeline_refuses_a_tuning_split_inside_validation_before_training(tmp_path, monkeypatch):
    from embedcache.errors import PipelineError
    from embedcache.pipeline.run import execute, plan
    from embedcache.pipeline.spec import parse_pipeline

    started = []
    monkeypatch.setattr("embedcache.train.loop.fit", lambda *a, **k: started.append(1))
    spec = parse_pipeline({"out": str(tmp_path / "out"),
                           "datasets": {"d": {"synthetic": {"tiles": 6, "folds": 3, "size": 64},
                                              "evaluate": {"tune": "fold1"}}},
                           "encoders": {"cnn": {"encoder": "timm:test_efficientnet", "weights": "random",
                                                "variants": "none", "unit_tiles": 2, "loader_workers": 0,
                                                "device": "cpu"}},
                           "fit": {"val": "fold1", "epochs": 1}}, "study.yaml")
    with pytest.raises(PipelineError, match="the tuning split 'fold1' holds 2 tile.s. the run scored on"):
        execute(plan(spec, progress=False), progress=False, echo=lambda line: None)
    assert not started
