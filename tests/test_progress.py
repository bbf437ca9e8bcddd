"""Progress: a redrawn tqdm bar on a terminal, plain lines (one per step, at most one every few seconds)
in a log, and the commands' bars going through it."""

from __future__ import annotations

import io
import re

from click.testing import CliRunner
from conftest import TINY_VIT

from embedcache import progress
from embedcache.cli import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_plain_line_per_step_and_a_terminal_a_bar(monkeypatch):
    monkeypatch.setenv("EMBEDCACHE_PROGRESS_SECONDS", "0")
    log = io.StringIO()
    with progress.progress_bar(total=3, desc="extract", unit="tile", file=log, dynamic_ncols=True) as bar:
        assert isinstance(bar, progress.LogLines)
        for _ in range(3):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3  # the closing line is not written twice
    assert [re.match(r"extract: (\d)/3 tile \((\d+)%\), \d+ s", ln).groups() for ln in lines] == [
        ("1", "33"), ("2", "67"), ("3", "100")]
    from tqdm.auto import tqdm

    term = Terminal()
    bar = progress.progress_bar(total=3, desc="extract", file=term)
    assert isinstance(bar, tqdm)
    bar.close()
    assert progress.progress_bar(range(2), disable=True, file=io.StringIO()).disable


def test_lines_come_at_most_every_few_seconds_and_the_last_always(monkeypatch):
    monkeypatch.setenv("EMBEDCACHE_PROGRESS_SECONDS", "3600")
    log = io.StringIO()
    items = list(progress.progress_bar(range(1000), desc="cells", unit="cell", file=log))
    assert items == list(range(1000))
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("cells: 1/1000 cell (0%)")
    assert lines[1].startswith("cells: 1000/1000 cell (100%)")
    # An epoch's bar (leave=False) writes no closing line; a resumed one counts from where it starts.
    log = io.StringIO()
    bar = progress.progress_bar(total=10, initial=8, desc="epoch 1/2", leave=False, file=log)
    bar.set_postfix(loss=0.5)
    bar.update(1)
    bar.update(1)
    bar.close()
    (line,) = log.getvalue().splitlines()
    assert re.fullmatch(r"epoch 1/2: 9/10 it \(90%\), 0 s, [^,]+ it/s, loss=0\.5", line), line


def test_extract_into_a_log_writes_lines_not_a_redrawn_bar(tmp_path, conic_dir, monkeypatch):
    monkeypatch.setenv("EMBEDCACHE_PROGRESS_SECONDS", "0")
    res = CliRunner().invoke(main, ["extract", "--data", str(conic_dir), "--out", str(tmp_path / "s.zarr"),
                                    "--encoder", TINY_VIT, "--weights", "random", "--variants", "flips",
                                    "--unit-tiles", "4", "--loader-workers", "0"])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.stderr
    steps = [ln for ln in res.stderr.splitlines() if ln.startswith("extract ")]
    assert [re.search(r": (\d)/6 tile", ln).group(1) for ln in steps] == ["4", "6"], res.stderr
