"""A run killed with SIGKILL mid-extraction, then restarted, equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import TINY_VIT

from embedcache import open_store
from embedcache.config import ExtractConfig
from embedcache.extract import extract
from embedcache.datasets.synthetic import make_tiles
from embedcache.files import partial_path

ARGS = ["--encoder", TINY_VIT, "--weights", "random", "--variants", "d4", "--unit-tiles", "1",
        "--batch-size", "2", "--workers", "0", "--device", "cpu", "--quiet"]


def _extract(data, out, wait=True):
    cmd = [sys.executable, "-m", "embedcache", "extract", "--data", str(data), "--out", str(out), *ARGS]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _units_done(store):
    done = store / "progress" / "done" / "c"
    return len(list(done.iterdir())) if done.exists() else 0


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    images, labels, _ = make_tiles(24, seed=5, size=64)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "images.npy", images)
    np.save(data / "labels.npy", labels)
    out = tmp_path / "killed.zarr"
    proc = _extract(data, out, wait=False)
    deadline = time.time() + 240
    while _units_done(partial_path(out)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    workers = _children(proc.pid)  # the DataLoader worker reading tiles
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The worker dies with its parent instead of living on (what the out-of-memory killer would leave).
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert workers and not any(_alive(w) for w in workers), f"workers {workers} outlived the killed extraction"
    killed_at = _units_done(partial_path(out))
    assert 2 <= killed_at < 24, f"the run was not killed mid-extraction ({killed_at} of 24 units)"
    assert not out.exists() and partial_path(out).exists()
    assert not open_store(out).complete  # the partial is opened and reported incomplete

    resumed = _extract(data, out)
    assert resumed.returncode == 0, resumed.stderr
    # The uninterrupted reference runs in this process: the same code and thread count.
    extract(data, tmp_path / "reference.zarr", ExtractConfig(
        encoder=TINY_VIT, weights="random", variants="d4", unit_tiles=1, batch_size=2, loader_workers=0, device="cpu"),
        progress=False)
    a, b = open_store(out), open_store(tmp_path / "reference.zarr")
    assert a.complete and not partial_path(out).exists()
    assert a.arrays() == b.arrays()
    for path in a.arrays():
        assert np.array_equal(a.group[path][:], b.group[path][:]), path
    assert a.config == b.config
