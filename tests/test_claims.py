"""Claims on units of work: one owner per unit across processes, dead owners taken over, on disk and on S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from process_helpers import leave_dead_claims
from s3_helpers import BUCKET, s3  # noqa: F401 (a fixture)

from embedcache.claims import SUFFIX, Claims, claims_place


def test_claims_place_is_beside_the_output(tmp_path):
    assert claims_place(tmp_path / "a.zarr") == tmp_path / "a.zarr.claims"
    assert claims_place("s3://bucket/cache/a.zarr/") == "s3://bucket/cache/a.zarr.claims"


def test_one_owner_and_release(tmp_path):
    a, b = Claims(tmp_path / "c", "job"), Claims(tmp_path / "c", "job")
    assert a.acquire("u1") and not b.acquire("u1") and b.acquire("u2")
    assert a.state("u1").state == "mine" and b.state("u1").state == "live"
    b.release("u1")  # not b's: nothing happens
    assert (tmp_path / "c" / ("u1" + SUFFIX)).exists()
    a.release("u1")
    assert not (tmp_path / "c" / ("u1" + SUFFIX)).exists() and b.acquire("u1")
    b.release_all()
    b.remove_if_empty()
    assert not (tmp_path / "c").exists()


CLAIM_MANY = """
import sys
from embedcache.claims import Claims
c = Claims(sys.argv[1], "job")
got = [u for u in range(int(sys.argv[2])) if c.acquire(f"u{u}")]
print(" ".join(map(str, got)), flush=True)
sys.stdin.read()  # alive (holding its claims) until the test has every answer
"""


def test_processes_racing_for_units_each_get_distinct_ones(tmp_path):
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_MANY, str(tmp_path / "c"), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    got = [p.stdout.readline().split() for p in procs]
    for p in procs:
        p.communicate(timeout=60)
    flat = [int(u) for g in got for u in g]
    # All alive while racing, so every unit went to exactly one of them.
    assert sorted(flat) == list(range(n))


def test_a_dead_owner_is_taken_over(tmp_path):
    place = tmp_path / "c"
    leave_dead_claims(place, "job", ["u"])
    me = Claims(place, "job")
    assert me.state("u").state == "stale"
    assert me.acquire("u") and json.loads((place / ("u" + SUFFIX)).read_text())["pid"] == os.getpid()


def test_a_recycled_pid_does_not_keep_a_claim(tmp_path):
    me = Claims(tmp_path / "c", "job")
    # A claim naming this very pid, but a process started at another time: its owner is gone.
    record = {**me.me, "owner": "someone-else", "start": (me.me["start"] or 0) + 12345, "beat": 0, "name": "u"}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ("u" + SUFFIX)).write_text(json.dumps(record))
    assert me.state("u").state == "stale" and me.acquire("u")


def test_another_hosts_claim_goes_stale_only_when_its_heartbeat_stops(tmp_path):
    me = Claims(tmp_path / "c", "job", stale_s=0.3)
    path = tmp_path / "c" / ("u" + SUFFIX)
    path.parent.mkdir()
    # Its clock is a day off: nothing of it is compared with ours.
    record = {"store": "job", "owner": "x", "pid": 1, "host": "elsewhere", "boot": "b", "start": 1, "beat": 0,
              "time": time.time() + 86400}
    path.write_text(json.dumps(record))
    assert not me.acquire("u")  # first seen now: live
    time.sleep(0.4)
    path.write_text(json.dumps({**record, "beat": 1}))  # it beat: live again, the wait starts anew
    assert me.state("u").state == "live" and not me.acquire("u")
    time.sleep(0.4)
    assert me.state("u").state == "stale" and me.acquire("u")


def test_heartbeats_keep_claims_and_notice_a_take_over(tmp_path):
    a = Claims(tmp_path / "c", "job", heartbeat_s=0.05)
    path = tmp_path / "c" / ("u" + SUFFIX)
    with a:
        assert a.acquire("u")
        time.sleep(0.3)
        assert json.loads(path.read_text())["beat"] >= 2
        path.write_text(json.dumps({"store": "job", "owner": "thief", "pid": 1, "host": "h", "beat": 0}))
        time.sleep(0.2)
        assert not a.holds("u")
    assert json.loads(path.read_text())["owner"] == "thief"  # leaving releases only what is still a's


def test_corrupt_and_foreign_claims(tmp_path):
    me = Claims(tmp_path / "c", "job")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ("u" + SUFFIX)).write_bytes(b"\x00garbage")
    assert me.state("u").state == "corrupt" and "unreadable" in me.state("u").describe()
    assert me.acquire("u") and me.taken == {"corrupt": 1}
    other = Claims(tmp_path / "c", "another-store")
    assert other.acquire("v") and me.foreign().record["store"] == "another-store"
    assert not me.acquire("v")  # alive: not ours to take


def test_two_takers_of_one_stale_claim_one_wins(tmp_path):
    a, b = Claims(tmp_path / "c", "job"), Claims(tmp_path / "c", "job")
    (tmp_path / "c").mkdir()
    stale = b"not json"
    (tmp_path / "c" / ("u" + SUFFIX)).write_bytes(stale)
    won = [a.folder.take_over("u" + SUFFIX, b"A", stale), b.folder.take_over("u" + SUFFIX, b"B", stale)]
    assert won == [b"A", None] and (tmp_path / "c" / ("u" + SUFFIX)).read_bytes() == b"A"
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["u" + SUFFIX]  # no temporary file left


def test_claims_on_s3_are_conditional_writes(s3):  # noqa: F811
    place = f"s3://{BUCKET}/job.zarr.claims"
    a, b = Claims(place, "job", heartbeat_s=0.05), Claims(place, "job")
    assert a.acquire("u") and not b.acquire("u") and b.state("u").state == "live"
    with a:
        time.sleep(0.3)
    # Leaving released the claim after several beats.
    assert b.state("u") is None and b.acquire("u")
    key = f"job.zarr.claims/u{SUFFIX}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"broken")
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    # Two takers judged the same claim stale: the server lets one through.
    won = [a.folder.take_over("u" + SUFFIX, b"A", etag), b.folder.take_over("u" + SUFFIX, b"B", etag)]
    assert won[0] is not None and won[1] is None
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"A"
    b.release("u")  # b's claim was replaced: the release leaves a's alone
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"A"
    assert [c.name for c in a.all()] == ["u"]


def test_clearing_stale_claims_keeps_live_ones(tmp_path):
    place = tmp_path / "c"
    leave_dead_claims(place, "job", ["dead"])
    live = Claims(place, "job")
    assert live.acquire("alive")
    (place / ("broken" + SUFFIX)).write_bytes(b"{")
    Claims(place, "job").clear_stale()
    assert sorted(p.name for p in place.iterdir()) == ["alive" + SUFFIX]
