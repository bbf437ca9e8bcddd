"""Several `extract` processes on one --out share the work: each unit computed once, one process finishes.

Real processes (the same command started N times, as a job array does), one
killed with SIGKILL in a trial; every unit each process writes is counted
from the unit log (``EMBEDCACHE_UNIT_LOG``).
"""

from __future__ import annotations

import os

import pytest
from conftest import TINY_VIT
from process_helpers import leave_dead_claims, run_together
from store_helpers import assert_same_store, conic_folder

from embedcache import open_store
from embedcache.claims import Claims, claims_place
from embedcache.config import ExtractConfig
from embedcache.errors import ClaimedError
from embedcache.extract import ExtractionJob, extract
from embedcache.files import partial_path

N_TILES = 10
CFG = ExtractConfig(encoder=TINY_VIT, weights="random", layers="1,3", variants="flips", unit_tiles=1, batch_size=4,
                    loader_workers=0, device="cpu")
ARGS = ["--encoder", TINY_VIT, "--weights", "random", "--layers", "1,3", "--variants", "flips", "--unit-tiles", "1",
        "--batch-size", "4", "--loader-workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return conic_folder(tmp_path_factory.mktemp("shared"), N_TILES, seed=3)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return open_store(extract(data, tmp_path_factory.mktemp("ref") / "ref.zarr", CFG, progress=False).path)


def _nothing_left(out):
    assert not partial_path(out).exists() and not claims_place(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["log", out.name])


@pytest.mark.parametrize("n,kill", [(3, False), (2, True)])
def test_processes_share_one_extraction(data, reference, tmp_path, n, kill):
    out, log = tmp_path / "shared.zarr", tmp_path / "log"
    ran = run_together(["extract", "--data", str(data), "--out", str(out), *ARGS], n, log, kill, after=2)
    # Exactly one process swapped the store in; the others say so (one starting late finds it complete).
    assert sum("wrote " in s for s in ran.stdout) == 1, ran.stdout
    assert sum("was finished by another process" in s or "is already complete" in s
               for s in ran.stdout) == len(ran.pids) - 1, ran.stdout
    assert max(ran.units.values()) == 1, f"units written twice: {ran.units}"
    missing = {f"unit-{u:06d}" for u in range(N_TILES)} - set(ran.units)
    # Only the killed process can have written a unit and died before logging it.
    assert not missing if not kill else len(missing) <= 1
    # Each survivor's own tally matches the units the log has from it.
    for pid, s in zip(ran.pids, ran.stdout):
        mine = sum(p == pid for p, _ in ran.logged)
        said = f"this process computed {mine} of {N_TILES} units" in s
        # A process that computed every unit, or found the store complete, has nothing to share to report.
        assert said or (mine == N_TILES and "wrote " in s) or (mine == 0 and "already complete" in s), s
    assert_same_store(open_store(out), reference)
    _nothing_left(out)


def test_no_wait_leaves_units_claimed_by_a_live_process(data, reference, tmp_path, capsys):
    out = tmp_path / "nowait.zarr"
    job_id = ExtractionJob(data, CFG).store_id
    holder = Claims(claims_place(out), job_id)  # this test process: alive, on this host
    assert holder.acquire("unit-000002") and holder.acquire("unit-000007")
    first = extract(data, out, CFG, progress=False, wait=False)
    assert first.finished_by is None and first.units_run == N_TILES - 2
    assert "2 claimed by other processes" in first.shared
    assert not out.exists() and not open_store(out).complete
    holder.release_all()
    second = extract(data, out, CFG, progress=False, wait=False)
    assert second.finished_by == "this" and second.units_run == 2
    assert "computed 2 of 10 units, found 8 done, 0 claimed" in second.shared
    assert_same_store(open_store(out), reference)
    assert not claims_place(out).exists()


def test_claims_of_a_dead_process_are_taken_over(data, reference, tmp_path):
    out = tmp_path / "dead.zarr"
    job_id = ExtractionJob(data, CFG).store_id
    # It died holding every unit and the store itself (as if killed while finishing).
    leave_dead_claims(claims_place(out), job_id, ["store"] + [f"unit-{u:06d}" for u in range(N_TILES)])
    result = extract(data, out, CFG, progress=False)
    assert result.finished_by == "this" and result.units_run == N_TILES
    assert result.shared.endswith("; took over 11 claims left by dead processes")
    assert_same_store(open_store(out), reference)
    assert not claims_place(out).exists()


def test_claims_left_on_a_complete_store_are_cleared_by_the_next_run(data, reference, tmp_path):
    """A process killed after the store was complete (holding a unit's claim) leaves nothing for good."""
    out = tmp_path / "done.zarr"
    extract(data, out, CFG, progress=False)
    leave_dead_claims(claims_place(out), ExtractionJob(data, CFG).store_id, ["unit-000003"])
    assert claims_place(out).exists()
    assert extract(data, out, CFG, progress=False).skipped
    assert not claims_place(out).exists()
    assert_same_store(open_store(out), reference)


def test_another_configuration_at_work_on_the_same_out_is_refused(data, tmp_path):
    out = tmp_path / "other.zarr"
    other = Claims(claims_place(out), "a-store-of-other-settings")
    assert other.acquire("unit-000000")
    with pytest.raises(ClaimedError, match="being built by another process with other settings"):
        extract(data, out, CFG, progress=False, overwrite=True)
    assert not out.exists() and not partial_path(out).exists()


def test_info_and_verify_show_live_and_stale_claims(data, tmp_path):
    import json as _json

    from click.testing import CliRunner

    from embedcache.cli import main

    out = tmp_path / "watched.zarr"
    job_id = ExtractionJob(data, CFG).store_id
    live = Claims(claims_place(out), job_id)
    assert live.acquire("unit-000004")
    leave_dead_claims(claims_place(out), job_id, ["unit-000009"])
    extract(data, out, CFG, progress=False, wait=False)  # takes over unit 9, leaves unit 4
    leave_dead_claims(claims_place(out), job_id, ["unit-000005"])  # a dead one's, left behind
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert f"claim  unit-000004: live claim by pid {os.getpid()}" in info.output
    assert "claim  unit-000005: stale claim by pid" in info.output and "unit-000009" not in info.output
    assert "INCOMPLETE (9/10 units)" in info.output
    as_json = _json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).output)
    states = {c["name"]: c["state"] for c in as_json["claims"]}
    assert states == {"unit-000004": "live", "unit-000005": "stale"}
    verify = CliRunner().invoke(main, ["verify", str(out), "--quiet"])
    assert verify.exit_code == 1 and "claim unit-000004: live claim" in verify.output


def test_overwrite_joins_a_live_job_of_the_same_settings_instead_of_wiping_it(data, reference, tmp_path):
    out = tmp_path / "joined.zarr"
    holder = Claims(claims_place(out), ExtractionJob(data, CFG).store_id)
    assert holder.acquire("unit-000006")  # a live process of these settings at work
    first = extract(data, out, CFG, progress=False, wait=False)
    assert first.units_run == N_TILES - 1
    again = extract(data, out, CFG, progress=False, wait=False, overwrite=True)  # the same command, --overwrite
    assert again.units_run == 0 and "found 9 done, 1 claimed" in again.shared
    holder.release_all()
    last = extract(data, out, CFG, progress=False, overwrite=True)  # alone now: --overwrite starts afresh
    assert last.units_run == N_TILES and last.finished_by == "this"
    assert_same_store(open_store(out), reference)


def test_a_dask_driver_and_processes_sharing_units_refuse_each_other_in_one_line(data, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main
    from embedcache.shared import DASK_DRIVER

    out = tmp_path / "dask.zarr"
    sharing = Claims(claims_place(out), ExtractionJob(data, CFG).store_id)
    assert sharing.acquire("unit-000003")  # a live process of the job-array kind at work
    # Refused before any cluster starts (no workers here): the driver would write units the others hold.
    res = CliRunner().invoke(main, ["extract", "--data", str(data), "--out", str(out), "--workers", "1", *ARGS])
    assert res.exit_code == 2 and f"is being written by pid {os.getpid()}" in res.stderr, res.output
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert sharing.holds("unit-000003") and not out.exists()
    sharing.release_all()
    driver = Claims(claims_place(out), DASK_DRIVER)
    assert driver.acquire(DASK_DRIVER)  # a live driver: a second driver, and processes sharing units, are refused
    with pytest.raises(ClaimedError, match=f"being written by pid {os.getpid()} on"):
        extract(data, out, CFG, workers=1, progress=False)
    with pytest.raises(ClaimedError, match="being built by another process on a dask cluster"):
        extract(data, out, CFG, progress=False)
    assert not out.exists() and not partial_path(out).exists()
    driver.release_all()
    driver.remove_if_empty()
    assert not claims_place(out).exists()


KILL_AT_SWAP = """
import os, pathlib, runpy, signal, sys
real = pathlib.Path.rename
def rename(self, target):
    moved = real(self, target)
    if str(target).endswith(".replaced"):  # the old store moved aside, the new one not yet moved in
        os.kill(os.getpid(), signal.SIGKILL)
    return moved
pathlib.Path.rename = rename
sys.argv = ["embedcache", *sys.argv[1:]]
runpy.run_module("embedcache", run_name="__main__")
"""


def test_a_process_killed_in_the_final_swap_leaves_the_old_or_the_new_store(data, reference, tmp_path):
    import dataclasses
    import subprocess
    import sys

    from embedcache.files import replaced_path

    out = tmp_path / "swapped.zarr"
    extract(data, out, dataclasses.replace(CFG, layers="1"), progress=False)  # the old store
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SWAP, "extract", "--data", str(data), "--out", str(out),
                             *ARGS, "--overwrite"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    # Killed between the two renames: the old store aside, the new one complete in its partial folder.
    assert not out.exists() and replaced_path(out).exists() and partial_path(out).exists()
    assert_same_store(open_store(out), reference)  # a reader opens the new one, whole
    again = extract(data, out, CFG, progress=False)  # the same command again (or any writer): the swap finishes
    assert again.skipped and again.units_run == 0
    assert_same_store(open_store(out), reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swapped.zarr"]


def test_damaged_claim_files_and_a_dead_jobs_claims_are_taken_over_and_said(data, reference, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main

    out = tmp_path / "claimed.zarr"
    place = claims_place(out)
    leave_dead_claims(place, "a-store-of-other-settings", ["unit-000001"])  # another job's, its process dead
    (place / "unit-000004.claim").write_bytes(b'{"store": "x", "own')  # damaged (claims are never half-written)
    res = CliRunner().invoke(main, ["extract", "--data", str(data), "--out", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    assert ("this process computed 10 of 10 units, found 0 done, 0 claimed by other processes; took over 1 claims "
            "left by dead processes; took over 1 unreadable (damaged) claim files") in res.output
    assert_same_store(open_store(out), reference)
    _nothing_left_but(out)


def _nothing_left_but(out):
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_a_read_only_claims_folder_is_one_line_and_the_store_is_kept(data, reference, tmp_path, monkeypatch):
    import errno
    import pathlib
    import shutil

    from click.testing import CliRunner

    from embedcache.cli import main

    out = tmp_path / "kept.zarr"
    shutil.copytree(reference.path, out)
    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # the folder holding the store is read-only (tests run as root: no chmod)
        if self.name.endswith(".claims"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    res = CliRunner().invoke(main, ["extract", "--data", str(data), "--out", str(out), *ARGS, "--overwrite"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.output
    assert f"cannot write claims in {claims_place(out)} (Read-only file system)" in res.stderr
    monkeypatch.setattr(pathlib.Path, "mkdir", real)
    assert_same_store(open_store(out), reference)
    _nothing_left_but(out)
