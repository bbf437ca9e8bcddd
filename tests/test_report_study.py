"""The study report's own pieces: costs with their spread over repeats (never one measurement, never a
ranking within the spread) and the page rendering the markdown's emphasis."""

from __future__ import annotations

import math

import pytest

from embedcache.report.study import (
    CellResult,
    _md_table_to_html,
    cost_ranking,
    costs,
    costs_markdown,
    spread,
)


def _cell(encoder: str, unit_ms: list[float], fit_s: list[float], dataset: str = "d") -> CellResult:
    extract = {"n_tiles": 100, "n_variants": 2, "bytes": 2_000_000, "seconds": 9.0,
               "unit_ms_per_tile_variant": unit_ms}
    return CellResult(dataset, encoder, extract=extract, fits={i: {"seconds": s} for i, s in enumerate(fit_s)})


def test_spread_is_the_median_and_range_of_repeats_and_nothing_for_one():
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"value": 2.5, "lo": 1.0, "hi": 10.0, "n": 4}
    assert spread([1.0, 3.0], centre="mean")["value"] == 2.0
    assert spread([49.4]) is None and spread([]) is None and spread([math.nan, 2.0]) is None


def test_costs_show_their_spread_or_nothing_and_rank_only_apart():
    """The same network measured twice at 49.4 and 35.5 ms is noise: no ranking; ranges apart are ranked."""
    rows = costs([_cell("a", [49.4, 30.0, 52.0], [10.0, 12.0]), _cell("a-again", [35.5, 33.0, 40.0], [11.0]),
                  _cell("slow", [90.0, 95.0, 99.0], [30.0, 31.0]), _cell("once", [20.0], [])])
    by = {r["encoder"]: r for r in rows}
    assert by["a"]["extract_ms_per_tile_variant"] == {"value": 49.4, "lo": 30.0, "hi": 52.0, "n": 3}
    assert by["once"]["extract_ms_per_tile_variant"] is None and by["a-again"]["fit_seconds"] is None
    assert by["a"]["fit_seconds"] == {"value": 11.0, "lo": 10.0, "hi": 12.0, "n": 2}
    assert by["a"]["bytes_per_tile_variant"] == pytest.approx(10_000)
    (line,) = cost_ranking(rows, "extract_ms_per_tile_variant")
    assert line == "d: a-again < slow; a < slow (ranges apart); other differences are within the spread"
    noise = costs([_cell("a", [49.4, 30.0, 52.0], []), _cell("a-again", [35.5, 33.0, 40.0], [])])
    assert cost_ranking(noise, "extract_ms_per_tile_variant") == [
        "d: every difference is within the spread over repeats: not ranked"]
    md = costs_markdown(rows)
    assert "| d | a | 1.9 MB | 9.8 KB | 49.4 [30.0, 52.0] (3 units) | 11.0 [10.0, 12.0] (2 seeds) |" in md
    assert "| d | once | 1.9 MB | 9.8 KB | measured once: not shown | measured once: not shown |" in md
    assert "not at all when measured once" in md
    assert "Training time: d: a < slow (ranges apart)" in md  # 'a-again' trained once: not ranked
    # One extraction per encoder: units of one run do not hold the load between runs, so no ranking at all.
    assert "Extraction times are not ranked" in md and "a-again < slow" not in md


def test_costs_of_a_store_extracted_before_units_were_timed_are_not_shown():
    cell = _cell("old", [], [5.0, 6.0])
    del cell.extract["unit_ms_per_tile_variant"]
    (row,) = costs([cell])
    assert row["extract_ms_per_tile_variant"] is None and "measured once: not shown" in costs_markdown([row])


def test_the_page_renders_the_markdowns_emphasis_and_escapes_the_rest():
    md = "# t\n\n**3 images: the smallest possible p is 0.25** & <b>raw</b>\n\n| a | **b** |\n|---|---|\n| 1 | x<y |"
    page = _md_table_to_html(md)
    assert "<p><strong>3 images: the smallest possible p is 0.25</strong> &amp; &lt;b&gt;raw&lt;/b&gt;</p>" in page
    assert "<th><strong>b</strong></th>" in page and "<td>x&lt;y</td>" in page
    assert "**" not in page
    # An unpaired marker stays as it is, and markup inside emphasis is still escaped.
    assert _md_table_to_html("a ** b") == "<p>a ** b</p>"
    assert _md_table_to_html("**<i>**") == "<p><strong>&lt;i&gt;</strong></p>"
