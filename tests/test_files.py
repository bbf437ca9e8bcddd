"""Atomic files and staged folders: a file is always whole, an old folder survives any failure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from embedcache import files


def test_write_json_is_strict_and_leaves_no_temporary(tmp_path):
    path = files.write_json(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(1.5), "z": (1, np.int64(2))})
    assert json.loads(path.read_text()) == {"x": None, "y": 1.5, "z": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert files.plain_json({"inf": -math.inf}) == {"inf": None}


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = files.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), files.atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "report"
    with files.staged_dir(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(ValueError), files.staged_dir(out) as tmp:
        (tmp / "v").write_text("2")
        raise ValueError("stopped")
    assert (out / "v").read_text() == "1"
    with files.staged_dir(out) as tmp:  # a stale partial folder is started afresh
        assert not any(tmp.iterdir())
        (tmp / "v").write_text("3")
    assert (out / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_swap_stopped_between_its_renames_is_finished(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "w").write_text("old")
    # Stopped after moving the old folder aside, before the new one arrived: the old one comes back.
    out.rename(files.replaced_path(out))
    files.recover(out)
    assert (out / "w").read_text() == "old" and not files.replaced_path(out).exists()
    # Stopped after the new one arrived, before the old one was removed: the old one goes.
    files.replaced_path(out).mkdir()
    new = files.fresh_partial(out)
    (new / "w").write_text("new")
    files.swap_in(new, out)
    assert (out / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # Stopped between the renames with the complete new folder staged: it moves in, the old one goes.
    staged = files.fresh_partial(out)
    (staged / "w").write_text("newer")
    out.rename(files.replaced_path(out))
    files.recover(out)
    assert (out / "w").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
