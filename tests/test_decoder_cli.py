"""``fit-decoder`` and ``predict`` from the command line: the demo chain and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_VIT
from decoder_helpers import make_store, one_thread, write_conic  # noqa: F401

from embedcache.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--width", "8", "--loader-workers", "0", "--batch-size", "2", "--device", "cpu", "--quiet"]


@pytest.fixture
def runner():
    return CliRunner()


def test_fit_predict_evaluate_chain_on_pannuke_folds(runner, tmp_path, pannuke_dir):
    store = make_store(pannuke_dir, tmp_path / "s.zarr")
    run, pred = tmp_path / "run", tmp_path / "pred"
    res = runner.invoke(main, ["fit-decoder", "--store", str(store), "--out", str(run), "--epochs", "2", *FAST])
    assert res.exit_code == 0, res.output
    assert "trained" in res.output and "pannuke protocol: 2 images" in res.output and "eval.json" in res.output
    assert json.loads((run / "run.json").read_text())["split"]["val"] == [4, 5]  # auto: the last fold
    res = runner.invoke(main, ["predict", "--run", str(run), "--store", str(store), "--split", "val",
                               "--out", str(pred), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "2 images (cached features, stack layout" in res.output
    assert {"labels.npy", "masks.npy", "types.npy", "prediction.json", "overlays", "geojson"} <= \
        {p.name for p in pred.iterdir()}
    assert np.load(pred / "masks.npy").shape == (2, 64, 64, 6)
    res = runner.invoke(main, ["evaluate", "--protocol", "pannuke", "--truth", str(pannuke_dir / "Fold 2"),
                               "--pred", str(pred)])
    assert res.exit_code == 0, res.output
    assert "pannuke protocol: 2 images" in res.output
    # The same command again: nothing to train, scored again.
    res = runner.invoke(main, ["fit-decoder", "--store", str(store), "--out", str(run), "--epochs", "2", *FAST])
    assert res.exit_code == 0 and "already trained" in res.output


def test_live_prediction_on_one_image_file(runner, tmp_path, conic_dir):
    store = make_store(conic_dir, tmp_path / "s.zarr")
    run = tmp_path / "run"
    assert runner.invoke(main, ["fit-decoder", "--store", str(store), "--out", str(run), "--epochs", "1",
                                "--val", "tiles:5", "--distance", "hovernet", *FAST]).exit_code == 0
    from PIL import Image

    Image.fromarray(np.load(conic_dir / "images.npy")[0]).save(tmp_path / "one.png")
    res = runner.invoke(main, ["predict", "--run", str(run), "--data", str(tmp_path / "one.png"), "--out",
                               str(tmp_path / "pred"), "--no-overlays", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "1 images (live features, folder layout" in res.output
    assert (tmp_path / "pred" / "one_inst.png").exists() and not (tmp_path / "pred" / "overlays").exists()


def test_bad_input_gets_one_line(runner, tmp_path, conic_dir):
    store = make_store(conic_dir, tmp_path / "s.zarr")
    bare = make_store(write_conic(tmp_path / "u", n=2, labels=False), tmp_path / "u.zarr", variants="none")
    vit = make_store(conic_dir, tmp_path / "vit.zarr", encoder=TINY_VIT)
    run = tmp_path / "run"
    assert runner.invoke(main, ["fit-decoder", "--store", str(store), "--out", str(run), "--epochs", "1",
                                "--val", "tiles:5", *FAST]).exit_code == 0
    cases = [
        (["fit-decoder", "--store", str(bare), "--out", str(tmp_path / "r2"), *FAST], "has no labels"),
        (["fit-decoder", "--store", str(store), "--out", str(tmp_path / "r3"), "--val", "fold4", *FAST],
         "validation split 'fold4' holds no tiles"),
        (["fit-decoder", "--store", str(vit), "--out", str(run), *FAST], "holds a run made with other settings"),
        (["predict", "--run", str(run), "--store", str(vit), "--out", str(tmp_path / "p")], "differs in encoder"),
        (["predict", "--run", str(run), "--out", str(tmp_path / "p")], "give --store STORE"),
        (["predict", "--run", str(tmp_path), "--store", str(store), "--out", str(tmp_path / "p")],
         "not a decoder run"),
    ]
    for args, message in cases:
        res = runner.invoke(main, args)
        assert res.exit_code != 0, args
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "r2").exists()
