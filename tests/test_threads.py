"""The thread budget: torch, BLAS and the processes a command starts are sized so that their sum fits."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CNN
from decoder_helpers import write_conic

from embedcache import threads
from embedcache.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch):
    for var in (threads.ENV, *threads.POOL_VARS, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_OURS", set())
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_the_budget_is_the_cores_or_what_was_asked(clean_env):
    assert threads.budget() == threads.available_cores() == len(os.sched_getaffinity(0))
    clean_env.setenv("MKL_NUM_THREADS", "7")  # the user's own setting stays
    assert threads.set_budget(3) == 3 == threads.budget() and torch.get_num_threads() == 3
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["MKL_NUM_THREADS"] == "7"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    threads.set_budget(2)  # ours are updated when the budget changes
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["OPENBLAS_NUM_THREADS"] == "2"
    for beside in range(4):
        assert threads.compute_threads(beside) == max(1, 2 - beside)
    assert threads.per_worker(2) == 1 and threads.per_worker(1) == 2 and threads.per_worker(5) == 1
    clean_env.setenv(threads.ENV, "many")
    with pytest.raises(ConfigError, match="EMBEDCACHE_THREADS='many'"):
        threads.budget()
    with pytest.raises(ConfigError, match="at least 1"):
        threads.set_budget(0)


def test_extraction_gives_the_loader_its_share_and_restores_torch(clean_env, tmp_path):
    """With a budget of 2 and one loader process decoding image files the forward runs on one torch thread, two
    without a loader; a loader that only slices memory-mapped stacks takes no core of its own."""
    import numpy as np
    from PIL import Image

    from embedcache.config import ExtractConfig
    from embedcache.extract import extract
    from embedcache.extract.job import Extraction

    seen = []
    run_unit = Extraction.run_unit
    clean_env.setattr(Extraction, "run_unit", lambda self, *a, **k: (seen.append(torch.get_num_threads()),
                                                                     run_unit(self, *a, **k))[1])
    clean_env.setenv(threads.ENV, "2")
    torch.set_num_threads(2)
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"im{k}.png")
    stacks = write_conic(tmp_path / "conic", n=4)
    for data, loader, expected in ((folder, 1, 1), (folder, 0, 2), (stacks, 1, 2)):
        cfg = ExtractConfig(encoder=TINY_CNN, weights="random", variants="none", loader_workers=loader,
                            device="cpu", unit_tiles=2, tile_size=64)
        extract(data, tmp_path / f"s{data.name}{loader}.zarr", cfg, progress=False)
        assert set(seen) == {expected} and torch.get_num_threads() == 2, (data.name, loader)
        seen.clear()


def test_local_dask_workers_share_the_budget(clean_env):
    from embedcache.extract.distributed import worker_specs

    clean_env.setenv(threads.ENV, "4")
    specs, per = worker_specs(2, gpus=0)
    assert per == 2 and {s["options"]["env"]["EMBEDCACHE_THREADS"] for s in specs.values()} == {"2"}
    assert {s["options"]["env"]["OMP_NUM_THREADS"] for s in specs.values()} == {"2"}


def test_the_cli_and_pipeline_files_take_a_budget(clean_env, tmp_path):
    from embedcache.cli import main
    from embedcache.pipeline.spec import load_pipeline

    res = CliRunner().invoke(main, ["--threads", "1", "encoders", "--family", "general"])
    assert res.exit_code == 0 and os.environ[threads.ENV] == "1" and os.environ["OMP_NUM_THREADS"] == "1"
    bad = CliRunner().invoke(main, ["--threads", "0", "encoders"])
    assert bad.exit_code == 2 and "--threads" in bad.output and "Traceback" not in bad.output
    def text(value):
        return ("name: t\ndatasets:\n  syn:\n    synthetic: {tiles: 4}\nencoders:\n"
                "  cnn: {encoder: 'timm:test_efficientnet', weights: random}\n" f"threads: {value}\n")

    good = tmp_path / "good.yaml"
    good.write_text(text(1))
    assert load_pipeline(good).threads == 1
    for value in ("0", "two"):
        path = tmp_path / f"bad{value}.yaml"
        path.write_text(text(value))
        with pytest.raises(ConfigError, match=rf"{path}:7: threads must be a whole number of at least 1"):
            load_pipeline(path)
