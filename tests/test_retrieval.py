"""Retrieval precision at k and ADDR: hand-computed cases, brute-force agreement, queries and labels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from embedcache.config import RetrievalConfig
from embedcache.errors import ConfigError, DataError
from embedcache.geometry import TileGeometry
from embedcache.metrics import retrieval as R
from embedcache.report import retrieval as PR


def test_precision_at_k_hand_computed():
    # slide 0: tiles 0-2 (queries), slide 1: tiles 3-5, slide 2: tile 6 (unlabelled, never retrieved).
    desc = np.array([[0.0], [0.1], [5.0], [0.2], [4.0], [0.3], [0.05]])
    labels = ["a", "b", "b", "a", "b", "b", ""]
    source = np.array([0, 0, 0, 1, 1, 1, 2])
    p, per_label, n = R.precision_at_k(desc, labels, source, np.array([0, 1, 2, 6]), k=2)
    # 0 -> 3 (a), 5 (b): 1/2 (its own slide's tile 1 is closer but excluded); 1 -> 3, 5: 1/2; 2 -> 4, 5: 2/2.
    assert n == 3
    assert p == pytest.approx(2 / 3) and per_label == pytest.approx({"a": 0.5, "b": 0.75})


def test_fewer_candidates_than_k_count_as_misses():
    desc = np.array([[0.0], [1.0], [2.0]])
    p, _, _ = R.precision_at_k(desc, ["a", "a", "a"], np.array([0, 0, 1]), np.array([0]), k=3)
    assert p == pytest.approx(1 / 3)  # one candidate on another slide, a hit; two empty slots
    nn = R.nearest_other_slide(desc, np.array([0, 0, 1]), np.array([0]), np.arange(3), k=3)
    assert nn.tolist() == [[2, -1, -1]]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbours_match_brute_force(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    source = rng.integers(0, 5, 700)
    queries, candidates = np.arange(0, 700, 3), np.arange(1, 700)
    got = R.nearest_other_slide(x, source, queries, candidates, k=7, metric=metric)
    y = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    for row, q in zip(got, queries):
        d = np.linalg.norm(y[candidates] - y[q], axis=1)
        d[source[candidates] == source[q]] = np.inf
        assert row.tolist() == candidates[np.argsort(d, kind="stable")[:7]].tolist()


def test_addr_hand_computed():
    desc = np.array([[0, 0], [3, 4], [6, 8], [3, 24]], float)
    # near: |x0 - x1| = 5; far: |x0 - x2| = 10, |x1 - x3| = 20 -> mean 15; ADDR = 15 / 5.
    assert R.addr(desc, np.array([[0, 1]]), np.array([[0, 2], [1, 3]])) == pytest.approx(3.0)
    with pytest.raises(DataError, match="ADDR needs near and far pairs"):
        R.addr(desc, np.zeros((0, 2), int), np.array([[0, 2]]))


def test_addr_pairs_are_near_and_far():
    offsets = np.array([[r, c] for r in range(8) for c in range(8)]) * 64
    geo = TileGeometry.from_tiles(np.repeat([0, 1], 64), np.tile(offsets, (2, 1)), (64, 64), 0.5, ["a", "b"])
    tiles = np.arange(128)
    near, far = R.addr_pairs(geo, tiles, d_near=40, d_far=150, far_from="same", n_far=500, seed=0)
    assert len(near) == 2 * 2 * 8 * 7  # 4-neighbours (32 um) of two 8x8 grids
    d = np.linalg.norm(geo.centres_um[far[:, 0]] - geo.centres_um[far[:, 1]], axis=1)
    assert len(far) == 500 and np.all(d >= 150) and np.all(geo.source[far[:, 0]] == geo.source[far[:, 1]])
    _, far_other = R.addr_pairs(geo, tiles, 40, 150, far_from="other", n_far=100, seed=0)
    assert np.all(geo.source[far_other[:, 0]] != geo.source[far_other[:, 1]])
    # Descriptors equal to the tile positions: ADDR is the ratio of mean distances in um.
    assert R.addr(geo.centres_um, near, far) == pytest.approx(d.mean() / 32)
    with pytest.raises(DataError, match="too few pairs for ADDR"):
        R.addr_pairs(geo, np.arange(64), 40, 1000, far_from="same", n_far=10)


def _fake_store(n: int, tissue=None, held=None):
    described = {"ssl": {"held_out": held}} if held else {}
    return SimpleNamespace(path="fake.zarr", n_tiles=n, tissue=tissue, source_names=[],
                           descriptor_layers=list(described), descriptor=described.get)


def test_labels_from_the_store_or_a_csv(tmp_path):
    assert PR.read_labels(_fake_store(2, ["x", ""]), "tissue") == ["x", ""]
    with pytest.raises(DataError, match="no tile labels; put NAME.geojson"):
        PR.read_labels(_fake_store(2), "tissue")
    f = tmp_path / "labels.csv"
    f.write_text("tile,label\n0,tumour\n2,normal\n")
    assert PR.read_labels(_fake_store(3), str(f)) == ["tumour", "", "normal"]
    f.write_text("0,tumour\n2,normal\n")  # the header is optional
    assert PR.read_labels(_fake_store(3), str(f)) == ["tumour", "", "normal"]
    f.write_text("0,tumour\n9,normal\n")
    with pytest.raises(DataError, match=r"labels\.csv: 1 unknown tile id\(s\), e.g. '9'; ids are row numbers 0..2"):
        PR.read_labels(_fake_store(3), str(f))
    f.write_text("0\n")
    with pytest.raises(DataError, match=r"labels\.csv: expected a header and rows of 'tile,label'"):
        PR.read_labels(_fake_store(3), str(f))
    with pytest.raises(DataError, match="no such label file; --labels takes 'tissue' or a CSV"):
        PR.read_labels(_fake_store(3), str(tmp_path / "missing.csv"))


def test_queries_follow_what_fit_ssl_recorded():
    geo = TileGeometry.from_tiles(np.arange(4), np.zeros((4, 2)), (64, 64), 0.5, ["a", "b", "c", "d"])
    cfg = RetrievalConfig()
    assert PR.query_slides([_fake_store(4, held=["c"])], geo, cfg) == ["c"]
    assert PR.query_slides([_fake_store(4)], geo, cfg) == PR.query_slides([_fake_store(4)], geo, cfg)
    assert PR.query_slides([_fake_store(4)], geo, RetrievalConfig(queries="b,d")) == ["b", "d"]
    assert PR.query_slides([_fake_store(4)], geo, RetrievalConfig(queries="all")) == ["a", "b", "c", "d"]
    with pytest.raises(ConfigError, match="different held-out slides"):
        PR.query_slides([_fake_store(4, held=["a"]), _fake_store(4, held=["b"])], geo, cfg)
    with pytest.raises(ConfigError, match="no slide 'z'"):
        PR.query_slides([_fake_store(4)], geo, RetrievalConfig(queries="z"))


def test_table_lists_every_row():
    report = PR.RetrievalReport(5, ["s"], [PR.RetrievalRow("raw", 96, 384, 0.5, {"tumour": 0.25}, 1.2, 10, 4, 8),
                                          PR.RetrievalRow("ssl", 128, 512, 0.75, {"tumour": 0.5}, 1.5, 10, 4, 8)])
    lines = report.table().splitlines()
    assert lines[0].split() == ["descriptors", "dim", "bytes/tile", "P@5", "P@5", "tumour", "ADDR"]
    assert lines[2].split() == ["ssl", "128", "512", "0.7500", "0.5000", "1.5000"]
    assert report.to_dict()["rows"][0]["addr"] == 1.2
