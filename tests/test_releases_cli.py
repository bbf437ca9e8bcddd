"""Every published release through the command line, as a user runs it on the folder its archives unzip to:
check-data, extract, evaluate against itself with the release's own protocol, cells; splits as published."""

from __future__ import annotations

import json

import numpy as np
import pytest
from release_fixtures import write_conic_release
from test_releases import (  # noqa: F401  (pytest fixtures: each release's faithful tree, made once per module)
    consep_release, cpm17_release, cytodark0_release, lizard_release, monuseg_release, pannuke_release, run,
)

from embedcache import open_store
from embedcache.datasets import open_dataset, read_label_maps
from embedcache.datasets.registry import is_stack
from embedcache.train.stream import make_split

# fixture, the protocol `evaluate --protocol auto` takes for it (its authors'), the split `--val auto` holds out
RELEASES = {
    "pannuke": ("pannuke_release", "pannuke", "test"),    # fold3
    "conic": ("conic_subset", "conic", "val"),            # the challenge's split over Lizard images
    "lizard": ("lizard_release", "conic", "test"),        # info.csv Split 3
    "cytodark0": ("cytodark0_release", "hovernet", "val"),  # folds.csv 1
    "consep": ("consep_release", "hovernet", "test"),
    "cpm17": ("cpm17_release", "hovernet", "test"),
    "monuseg": ("monuseg_release", "hovernet", "test"),
}
HEADLINE = {"pannuke": ("bpq", "mpq"), "conic": ("bpq", "mpq_plus", "r2"), "hovernet": ("pq", "aji", "dice")}
FAST = ("--encoder", "timm:test_vit", "--weights", "random", "--variants", "none", "--workers", "0", "--quiet",
        "--loader-workers", "0")


@pytest.fixture(scope="module")
def conic_subset(tmp_path_factory):
    """The CoNIC release's files for 15 patches of 10 Lizard images of two cohorts: the fewest for which the
    challenge's stratified split (a fifth of the images, at least one per cohort) exists, so a case runs in
    seconds."""
    root = tmp_path_factory.mktemp("conic") / "CoNIC Challenge Train"
    patches = [f"{cohort}_{k}-{p:04d}" for cohort in ("crag", "glas") for k in range(1, 6) for p in range(1 + k % 2)]
    return root, write_conic_release(root, patches)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_a_release_as_unzipped_through_the_cli(request, tmp_path, name):
    fixture, protocol, held = RELEASES[name]
    root = request.getfixturevalue(fixture)[0]

    res = run("check-data", root)
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{root}: {name} layout")

    store_path = tmp_path / "s.zarr"
    whole = () if is_stack(name) else ("--tile-size", "512", "--overlap", "0")
    res = run("extract", "--data", root, "--out", store_path, *FAST, *whole)
    assert res.exit_code == 0, res.output
    store = open_store(store_path)
    ds = open_dataset(root)
    assert store.dataset_layout == name and store.official_splits == ds.splits
    # --val auto (what fit-decoder and pipelines default to) holds out the release's own split.
    fold = np.asarray(store.tile_info()["fold"])
    held_out = make_split(store, "auto").val
    assert {store.fold_names[f] for f in fold[held_out]} == {store.fold_names[k] for k in ds.splits[held]}
    source = np.asarray(store.tile_info()["source"])
    assert not set(source[held_out]) & set(np.delete(source, held_out))  # no image on both sides

    res = run("evaluate", "--truth", root, "--pred", root, "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{protocol} protocol: ")
    summary = json.loads((tmp_path / "e.json").read_text())
    for key in HEADLINE[protocol]:
        assert summary[key] == pytest.approx(1.0), key

    res = run("cells", "--store", store_path, "--out", tmp_path / "c.zarr", "--layers", "last", "--variants",
              "identity", "--json")
    assert res.exit_code == 0, res.output
    cells = json.loads(res.output[res.output.index("{"):])
    truth = read_label_maps(root)  # each image whole, from the release's own files
    assert cells["n_images"] == len(truth)
    assert cells["n_cells"] == sum(len(np.unique(m)) - 1 for m in truth.instances)
    assert sum(cells["types"].values()) == cells["n_cells"]
