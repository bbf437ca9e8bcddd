"""Stores on object storage, through a real S3-compatible server (moto) on loopback; no client mocks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_VIT
from decoder_helpers import one_thread  # noqa: F401 (a fixture)
from s3_helpers import BUCKET, KEY_ID, SECRET, s3  # noqa: F401 (s3: a fixture)
from store_helpers import assert_same_store, conic_folder

from embedcache import open_store
from embedcache.cli import main
from embedcache.config import ExtractConfig
from embedcache.errors import ConfigError, StoreError
from embedcache.extract import ExtractionJob, extract
from embedcache.store import verify_store
from embedcache.store.location import StoreLocation

CFG = ExtractConfig(encoder=TINY_VIT, weights="random", layers="1,3,5", variants="flips", batch_size=6, unit_tiles=2,
                    loader_workers=0, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return conic_folder(tmp_path_factory.mktemp("s3data"), 8, seed=11)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return open_store(extract(data, tmp_path_factory.mktemp("ref") / "ref.zarr", CFG, progress=False).path)


def _interrupt():
    raise KeyboardInterrupt


def stored_bytes(client, prefix: str) -> bytes:
    """Every object under ``prefix``, concatenated with its key."""
    out = b""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out += obj["Key"].encode() + client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def test_extract_to_s3_and_read_it_back(s3, data, reference, caplog, capfd):
    caplog.set_level(logging.INFO)
    url = f"s3://{BUCKET}/single.zarr"
    runner = CliRunner()
    res = runner.invoke(main, ["extract", "--data", str(data), "--out", url, "--encoder", TINY_VIT, "--weights",
                               "random", "--layers", "1,3,5", "--variants", "flips", "--batch-size", "6",
                               "--unit-tiles", "2", "--loader-workers", "0", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"wrote {url}:" in res.output
    store = open_store(url)
    assert str(store.path) == url and store.path.name == "single.zarr"
    assert_same_store(store, reference)
    # Built in place: no partial copy, no rename.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="single")["Contents"]]
    assert all(k.startswith("single.zarr/") for k in keys)
    info = runner.invoke(main, ["info", url, "--json"])
    assert info.exit_code == 0 and '"complete": true' in info.output
    assert runner.invoke(main, ["verify", url, "--quiet"]).exit_code == 0
    # Streaming reads with read-ahead give the same batches as direct reads.
    batches = [[0, 1, 2], [3, 4], [5, 6, 7]]
    got = list(store.read_ahead(lambda b: store.tokens("blocks.5", b, "hflip"), batches, depth=2))
    for b, tok in zip(batches, got):
        np.testing.assert_array_equal(tok, reference.tokens("blocks.5", b, "hflip"))
    # Credentials reach neither the output, the logs nor anything stored.
    seen = res.output + info.output + caplog.text + "".join(capfd.readouterr())
    stored = stored_bytes(s3, "single.zarr/")
    for secret in (KEY_ID, SECRET):
        assert secret not in seen and secret.encode() not in stored


def test_interrupted_store_is_incomplete_in_place_then_resumes(s3, data, reference, monkeypatch):
    url = f"s3://{BUCKET}/resumed.zarr"
    compute = ExtractionJob.unit_arrays
    # Interrupted while computing unit 1: unit 0 is written, the rest is not.
    monkeypatch.setattr(ExtractionJob, "unit_arrays",
                        lambda job, unit, *rest: compute(job, unit, *rest) if unit == 0 else _interrupt())
    with pytest.raises(KeyboardInterrupt):
        extract(data, url, CFG, progress=False)
    half = open_store(url)  # the same URL: on object storage the flag is the only truth
    assert not half.complete and half.units_done() == (1, 4)
    assert any("incomplete" in p for p in verify_store(half))
    monkeypatch.setattr(ExtractionJob, "unit_arrays", compute)
    res = extract(data, url, CFG, progress=False)
    assert res.units_run == 3
    assert_same_store(open_store(url), reference)
    again = extract(data, url, CFG, progress=False)
    assert again.skipped
    other = CFG.__class__(**{**CFG.to_dict(), "variants": "none"})
    with pytest.raises(StoreError, match="variants"):
        extract(data, url, other, progress=False)
    assert extract(data, url, other, overwrite=True, progress=False).units_run == 4
    assert open_store(url).variants == ["identity"]


def test_two_dask_workers_write_to_s3(s3, data, reference, capfd):
    from embedcache.extract.distributed import extract_distributed

    url = f"s3://{BUCKET}/dask.zarr"
    res = extract_distributed(data, url, CFG, workers=2, progress=False)
    assert len({u["worker"] for u in res.units}) == 2
    assert_same_store(open_store(url), reference)
    out, err = capfd.readouterr()  # worker processes write to the same stderr
    assert SECRET not in out + err and KEY_ID not in out + err
    assert SECRET.encode() not in stored_bytes(s3, "dask.zarr/")


def test_missing_credentials_name_the_variables(s3, data, tmp_path, monkeypatch):
    from s3fs import S3FileSystem

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(StoreError, match="no credentials.*AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
            open_store(f"s3://{BUCKET}/single.zarr")
        res = CliRunner().invoke(main, ["extract", "--data", str(data), "--out", f"s3://{BUCKET}/x.zarr",
                                        "--encoder", TINY_VIT, "--weights", "random", "--quiet"])
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "AWS_SECRET_ACCESS_KEY" in res.output
    finally:
        S3FileSystem.clear_instance_cache()


def test_bad_locations_get_one_line(s3, data):
    with pytest.raises(ConfigError, match="must not carry credentials") as exc:
        StoreLocation.parse(f"s3://{KEY_ID}:{SECRET}@{BUCKET}/x.zarr")
    assert SECRET not in str(exc.value) and KEY_ID not in str(exc.value)
    with pytest.raises(StoreError, match="unknown storage protocol 'foo'"):
        StoreLocation.parse("foo://bucket/x.zarr")
    with pytest.raises(ConfigError, match="no bucket"):
        StoreLocation.parse("s3://")
    with pytest.raises(StoreError, match="no such store"):
        open_store(f"s3://{BUCKET}/nothing.zarr")
    res = CliRunner().invoke(main, ["extract", "--data", str(data), "--out", "s3://no-such-bucket-here/x.zarr",
                                    "--encoder", TINY_VIT, "--weights", "random", "--variants", "none", "--quiet"])
    assert res.exit_code == 2 and "no such bucket" in res.output and "Traceback" not in res.output, res.output
    s3.put_object(Bucket=BUCKET, Key="notes/readme.txt", Body=b"keep me")
    with pytest.raises(StoreError, match="not an embedcache store"):
        extract(data, f"s3://{BUCKET}/notes", CFG, progress=False)
    assert s3.get_object(Bucket=BUCKET, Key="notes/readme.txt")["Body"].read() == b"keep me"


def test_decoder_and_probe_read_a_store_on_s3(s3, data, tmp_path, one_thread):
    """Training, prediction and probes stream from the object store, through the CLI as users give URLs."""
    url = f"s3://{BUCKET}/train.zarr"
    extract(data, url, CFG, progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["fit-decoder", "--store", url, "--out", str(tmp_path / "run"), "--epochs", "1",
                               "--batch-size", "4", "--width", "8", "--loader-workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "best.safetensors").is_file() and (tmp_path / "run" / "eval.json").is_file()
    res = runner.invoke(main, ["predict", "--run", str(tmp_path / "run"), "--store", url, "--out",
                               str(tmp_path / "pred"), "--quiet", "--no-overlays", "--no-geojson"])
    assert res.exit_code == 0, res.output
    assert "cached features" in res.output
    labels = tmp_path / "labels.csv"
    labels.write_text("tile,label\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(8)))
    res = runner.invoke(main, ["probe", "--store", url, "--labels", str(labels), "--folds", "2", "--bootstrap", "0",
                               "--method", "knn", "--k", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert SECRET not in res.output and KEY_ID not in res.output


def test_processes_share_an_extraction_on_s3_through_claims(s3, data, reference):
    from embedcache.claims import Claims, claims_place

    url = f"s3://{BUCKET}/shared.zarr"
    holder = Claims(claims_place(url), ExtractionJob(data, CFG).store_id)  # a live process holding unit 1
    assert holder.acquire("unit-000001")
    first = extract(data, url, CFG, progress=False, wait=False)
    assert first.finished_by is None and first.units_run == 3 and not open_store(url).complete
    holder.release_all()
    second = extract(data, url, CFG, progress=False)
    assert second.finished_by == "this" and second.units_run == 1
    assert_same_store(open_store(url), reference)
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix="shared.zarr.claims").get("Contents")


def test_processes_share_one_extraction_on_s3(s3, data, reference, tmp_path):
    """Two real processes on one s3:// store: claims are conditional writes; every unit computed once."""
    from process_helpers import run_together

    url = f"s3://{BUCKET}/together.zarr"
    ran = run_together(["extract", "--data", str(data), "--out", url, "--encoder", TINY_VIT, "--weights", "random",
                        "--layers", "1,3,5", "--variants", "flips", "--batch-size", "6", "--unit-tiles", "2",
                        "--loader-workers", "0", "--device", "cpu", "--quiet"], 2, tmp_path / "log", kill=False)
    assert sorted(ran.units) == [f"unit-{u:06d}" for u in range(4)] and max(ran.units.values()) == 1, ran.units
    # One process swaps the store in, the other finds it finished.
    said = sorted(("wrote " in s, "finished by another process" in s or "already complete" in s)
                  for s in ran.stdout)
    assert said == [(False, True), (True, False)], ran.stdout
    assert_same_store(open_store(url), reference)
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix="together.zarr.claims").get("Contents")
