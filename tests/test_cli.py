"""The command line: help, README coverage, one-line errors, the extract/info/verify flow."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_VIT

from embedcache.cli import main
from embedcache.store.writer import StoreWriter

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = ["--encoder", TINY_VIT, "--weights", "random", "--variants", "flips", "--workers", "0", "--quiet"]


@pytest.fixture
def runner():
    return CliRunner()


def test_every_command_has_help_and_is_in_the_readme(runner):
    readme = README.read_text()
    for name, cmd in main.commands.items():
        assert cmd.help and len(cmd.help.strip()) > 20, f"{name} has no help text"
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output
        assert f"embedcache {name}" in readme, f"README does not show `embedcache {name}`"


def test_extract_info_verify(runner, tmp_path, conic_dir):
    out = tmp_path / "s.zarr"
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    assert "6 tiles x 3 variants" in res.output
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0 and "complete" in res.output and "blocks.5" in res.output
    summary = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)
    assert summary["n_tiles"] == 6 and summary["complete"] is True
    assert summary["layers"]["blocks.5"]["tokens"] == [64, 4, 4]
    res = runner.invoke(main, ["verify", str(out), "--quiet"])
    assert res.exit_code == 0 and "OK" in res.output
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST])
    assert res.exit_code == 0 and "nothing to do" in res.output


def test_verify_fails_on_corruption(runner, tmp_path, conic_dir):
    out = tmp_path / "s.zarr"
    runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST])
    shard = next((out / "images").rglob("c/0/0/0/0"))
    shard.write_bytes(shard.read_bytes()[:-7] + b"garbage")
    res = runner.invoke(main, ["verify", str(out), "--quiet"])
    assert res.exit_code == 1 and "images" in res.output
    # verify names the damaged unit and advises the repair, not a new extraction of the whole store
    assert "images: tiles 0..5 (unit 0) cannot be read" in res.stderr and "--repair" in res.stderr
    assert "--overwrite" not in res.stderr
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST, "--repair"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"repaired {out}: computed 1 of 1 units again (unit 0, whose chunks failed their "
                                 "checksums)\n")
    assert runner.invoke(main, ["verify", str(out), "--quiet"]).exit_code == 0
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST, "--repair"])
    assert "is already complete with these settings; every chunk reads back, nothing to repair" in res.stdout
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST, "--repair",
                               "--overwrite"])
    _one_line_error(res, "--repair keeps the store")


def test_encoders_lists_the_registry(runner):
    res = runner.invoke(main, ["encoders", "--json", "--family", "pathology"])
    rows = json.loads(res.output)
    assert {"virchow2", "virchow", "uni", "uni2-h", "prov-gigapath", "h-optimus-0", "h-optimus-1", "h0-mini",
            "lunit-vits8", "phikon", "phikon-v2", "midnight", "hibou-b", "hibou-l", "conch"} <= {r["name"] for r in rows}
    assert {r["family"] for r in rows} == {"pathology"} and len(rows) == 21
    v2 = next(r for r in rows if r["name"] == "virchow2")
    assert v2["dim"] == 1280 and v2["patch_size"] == 14 and v2["layers"][-1] == "blocks.31"
    assert v2["gated"] and v2["non_commercial"] and v2["terms"] == "gated, non-commercial"
    phikon = next(r for r in rows if r["name"] == "phikon")
    assert phikon["layout"] == "transformers" and phikon["params"] == pytest.approx(86e6, rel=0.01)


def test_demo_data(runner, tmp_path):
    res = runner.invoke(main, ["demo-data", str(tmp_path / "d"), "--tiles", "4", "--folds", "2"])
    assert res.exit_code == 0 and (tmp_path / "d" / "fold2" / "masks.npy").exists()


def _one_line_error(res, *fragments):
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_inputs_give_one_line(runner, tmp_path, conic_dir):
    out = str(tmp_path / "s.zarr")
    _one_line_error(runner.invoke(main, ["extract", "--encoder", "uni2", "--data", str(conic_dir), "--out", out]),
                    "unknown encoder 'uni2'", "did you mean")
    _one_line_error(runner.invoke(main, ["extract", "--data", str(tmp_path / "none"), "--out", out, *FAST]),
                    "no such file")
    _one_line_error(runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", out, *FAST,
                                         "--variants", "rot45"]), "unknown variant")
    _one_line_error(runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", out, *FAST,
                                         "--layers", "blocks.77"]), "no layer 'blocks.77'; it has blocks.0")
    _one_line_error(runner.invoke(main, ["extract", "--encoder", TINY_VIT, "--weights", str(tmp_path / "w.pth"),
                                         "--data", str(conic_dir), "--out", out]), "not found")
    _one_line_error(runner.invoke(main, ["info", str(tmp_path / "none.zarr")]), "no such store")


def test_store_made_otherwise_is_refused(runner, tmp_path, conic_dir):
    out = str(tmp_path / "s.zarr")
    assert runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", out, *FAST]).exit_code == 0
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", out, *FAST, "--variants", "d4"])
    _one_line_error(res, "another configuration", "variants", "--overwrite")


def test_full_disk_gives_one_line_and_no_complete_store(runner, tmp_path, conic_dir, monkeypatch):
    def full(self, unit, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write_unit", full)
    out = tmp_path / "s.zarr"
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(out), *FAST])
    _one_line_error(res, "no space left on device")
    assert not out.exists()


def test_read_only_location(runner, tmp_path, conic_dir, monkeypatch):
    def read_only(self, unit, arrays):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "s.zarr.partial"))

    monkeypatch.setattr(StoreWriter, "write_unit", read_only)
    res = runner.invoke(main, ["extract", "--data", str(conic_dir), "--out", str(tmp_path / "s.zarr"), *FAST])
    _one_line_error(res, "read-only", "writable location")


def test_debug_shows_the_traceback(runner, tmp_path):
    res = runner.invoke(main, ["--debug", "info", str(tmp_path / "none.zarr")])
    assert res.exit_code != 0 and res.exception is not None


def test_bad_image_content_in_a_loader_worker_is_one_line(runner, tmp_path):
    """An error raised in a DataLoader worker reaches the user as its own line, not torch's wrapped traceback."""
    import numpy as np
    from PIL import Image

    d = tmp_path / "f"
    d.mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(d / "a.png")
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(d / "b.png")  # grayscale
    Image.fromarray(np.full((64, 64, 4), 200, np.uint8)).save(d / "c.png")  # RGBA, translucent
    res = runner.invoke(main, ["extract", "--data", str(d), "--out", str(tmp_path / "s.zarr"), *FAST,
                               "--tile-size", "64", "--loader-workers", "1"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "DataLoader worker" not in lines[0] and "Traceback" not in res.output
    assert "b.png" in lines[0] or "c.png" in lines[0]


def test_a_reader_that_goes_away_is_not_an_error(runner):
    """`embedcache info STORE | head -1`: the pipe closes early; no 'Error: Broken pipe', exit 0."""
    @main.command("emit-after-close")
    def emit_after_close():
        raise BrokenPipeError(32, "Broken pipe")

    try:
        res = runner.invoke(main, ["emit-after-close"])
    finally:
        main.commands.pop("emit-after-close")
    assert res.exit_code == 0 and "Error" not in res.output
