"""Extraction on a dask cluster: the same store as one process, even when a worker is killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from conftest import TINY_VIT
from store_helpers import assert_same_store, conic_folder

from embedcache import open_store
from embedcache.cli import main
from embedcache.config import ExtractConfig
from embedcache.extract.distributed import extract_distributed, fast_worker_start
from embedcache.errors import ConfigError, DataError
from embedcache.extract import extract
from embedcache.files import partial_path

# One tile per unit, so a run has many units and a kill lands mid-run.
CFG = ExtractConfig(encoder=TINY_VIT, weights="random", layers="1,3,5", variants="flips", batch_size=3, unit_tiles=1,
                    loader_workers=0, device="cpu")
N_TILES = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return conic_folder(tmp_path_factory.mktemp("dist"), N_TILES, seed=7)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The single-process store."""
    return open_store(extract(data, tmp_path_factory.mktemp("ref") / "ref.zarr", CFG, progress=False).path)

TRIM_BEFORE = os.environ.get("MALLOC_TRIM_THRESHOLD_")  # as the user set it (normally unset), before any cluster


@pytest.fixture(scope="module")
def cluster():
    """A running 2-process cluster to point --scheduler at."""
    from distributed import Client, LocalCluster

    with fast_worker_start(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                           host="127.0.0.1") as cl, Client(cl) as client:
        yield cl, client


def _units_done(store_dir) -> int:
    done = store_dir / "progress" / "done" / "c"
    return len(list(done.iterdir())) if done.exists() else 0


def test_two_worker_local_cluster_builds_the_single_process_store(data, reference, tmp_path):
    res = extract_distributed(data, tmp_path / "d.zarr", CFG, workers=2, progress=False)
    assert res.units_run == res.units_total == N_TILES and not partial_path(res.path).exists()
    assert len({u["worker"] for u in res.units}) == 2  # both workers took units
    assert_same_store(open_store(res.path), reference)


def test_a_worker_killed_mid_run_leaves_a_complete_identical_store(cluster, data, reference, tmp_path):
    cl, client = cluster
    out = tmp_path / "killed.zarr"
    pids = client.run(os.getpid)
    killed = {}

    def kill_one_busy_worker():
        deadline = time.time() + 120
        while _units_done(partial_path(out)) < 3 and time.time() < deadline:
            time.sleep(0.002)
        executing = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
        victim = next(a for a, keys in executing.items() if any("unit" in k for k in keys))
        os.kill(pids[victim], signal.SIGKILL)
        killed.update(worker=victim, keys=executing[victim], done=_units_done(partial_path(out)))

    killer = threading.Thread(target=kill_one_busy_worker)
    killer.start()
    res = extract_distributed(data, out, CFG, scheduler=cl.scheduler_address, progress=False)
    killer.join()
    assert 3 <= killed["done"] < N_TILES, "the worker was not killed mid-run"
    in_flight = {int(k.rsplit("-", 1)[1]) for k in killed["keys"] if "unit" in k}
    redone = [u for u in res.units if u["unit"] in in_flight]
    # The unit the killed worker was computing was run again by another worker process.
    assert redone and all(u["worker"] != killed["worker"] for u in redone)
    assert len(res.units) == N_TILES and sorted(u["unit"] for u in res.units) == list(range(N_TILES))
    assert_same_store(open_store(res.path), reference)


def test_errors_on_workers_come_back_as_one_line(cluster, tmp_path):
    cl, _ = cluster
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["extract", "--data", str(empty), "--out", str(tmp_path / "x.zarr"),
                                    "--encoder", TINY_VIT, "--weights", "random", "--scheduler",
                                    cl.scheduler_address, "--quiet"])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
    with pytest.raises(DataError):
        extract_distributed(empty, tmp_path / "x.zarr", CFG, scheduler=cl.scheduler_address, progress=False)


def test_unreachable_or_malformed_scheduler(tmp_path, data):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}"):
        extract_distributed(data, tmp_path / "x.zarr", CFG, scheduler=f"tcp://127.0.0.1:{port}", timeout=1)
    res = CliRunner().invoke(main, ["extract", "--data", str(data), "--out", str(tmp_path / "x.zarr"),
                                    "--scheduler", "http://nowhere:1"])
    assert res.exit_code == 2 and "not a dask scheduler address" in res.output and "Traceback" not in res.output
    with pytest.raises(ConfigError, match="either --workers N"):
        extract_distributed(data, tmp_path / "x.zarr", CFG, workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="pins one GPU"):
        extract_distributed(data, tmp_path / "x.zarr", CFG.__class__(**{**CFG.to_dict(), "device": "cuda:1"}),
                            workers=2)


def test_local_workers_are_pinned_one_per_gpu(monkeypatch):
    from embedcache.extract.distributed import worker_specs

    monkeypatch.setenv("AWS_PROFILE", "lab")  # the driver's environment reaches forked workers
    specs, threads = worker_specs(3, gpus=2)
    opts = [s["options"] for s in specs.values()]
    assert [o["env"]["CUDA_VISIBLE_DEVICES"] for o in opts] == ["0", "1", "0"] and threads is None
    assert all(o["nthreads"] == 2 and o["env"]["AWS_PROFILE"] == "lab" for o in opts)
    specs, threads = worker_specs(2, gpus=0)
    assert threads == max(1, (os.cpu_count() or 1) // 2)
    assert all(s["options"]["nthreads"] == 1 and s["options"]["env"]["OMP_NUM_THREADS"] == str(threads)
               for s in specs.values())


def test_workers_keep_glibc_default_memory_trimming(cluster):
    # dask's nanny would set MALLOC_TRIM_THRESHOLD_=65536 before starting workers; torch then pays page
    # faults for every activation it frees and allocates (a ViT forward ran 25-30% slower).
    _, client = cluster
    seen = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(seen) == 2 and set(seen.values()) == {TRIM_BEFORE}
    assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == TRIM_BEFORE  # nor is the driver's environment changed
