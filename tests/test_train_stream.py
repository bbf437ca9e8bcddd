"""Streaming samples from a store: splits, seeded variant draws, samples aligned with their variant."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_helpers import make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)

from embedcache import open_store
from embedcache.datasets.variants import BY_NAME
from embedcache.errors import ConfigError, DataError
from embedcache.train.stream import EpochBatches, TileStream, check_trainable, make_loader, make_split
from embedcache.train.targets import TargetCache, tile_targets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    labelled = open_store(make_store(write_conic(tmp / "d", n=6), tmp / "s.zarr"))
    bare = open_store(make_store(write_conic(tmp / "u", n=2, labels=False), tmp / "u.zarr", variants="none"))
    return labelled, bare


def test_splits_by_spec(stores):
    store, _ = stores
    s = make_split(store, "tiles:4,5")
    assert s.val.tolist() == [4, 5] and s.train.tolist() == [0, 1, 2, 3]
    frac = make_split(store, "frac:0.34", seed=1)
    assert len(frac.val) == 2 and set(frac.val) | set(frac.train) == set(range(6))
    assert make_split(store, "frac:0.34", seed=1).val.tolist() == frac.val.tolist()  # seeded
    assert make_split(store, "sources:1,3").val.tolist() == [1, 3]
    assert make_split(store, "tiles:0", train="tiles:1,2").train.tolist() == [1, 2]
    assert make_split(store, "auto").val.size == 1  # one fold: a fifth of the sources
    assert make_split(store, "tiles:4,5").to_dict()["val_spec"] == "tiles:4,5"


@pytest.mark.parametrize("spec, message", [
    ("fold2", "holds no tiles"),
    ("fold0", "K from 1"),
    ("frac:1.5", "strictly between"),
    ("tiles:9", "does not exist"),
    ("sources:nope", "no source image 'nope'"),
    ("everything", "not understood"),
])
def test_bad_or_empty_splits_say_what_to_do(stores, spec, message):
    with pytest.raises(ConfigError, match=message):
        make_split(stores[0], spec)


def test_empty_training_split(stores):
    with pytest.raises(ConfigError, match="training split .* holds no tiles"):
        make_split(stores[0], "tiles:0,1,2,3,4,5")


def test_variant_draws_are_seeded_per_epoch_and_cover_every_tile(stores):
    store, _ = stores
    b = EpochBatches(np.arange(6), [0, 1, 2], batch_size=4, seed=5, unit_tiles=4)
    first = b.pairs()
    assert sorted(p for p, _ in first) == list(range(6)) and len(list(b)) == 2 == len(b)
    assert EpochBatches(np.arange(6), [0, 1, 2], 4, seed=5, unit_tiles=4).pairs() == first
    draws = set()
    for epoch in range(6):
        b.set_epoch(epoch)
        draws.add(tuple(v for _, v in sorted(b.pairs())))
    assert len(draws) > 1  # variants change between epochs
    # Unit order: the first window's tiles come before any other.
    units = [p // 4 for p, _ in EpochBatches(np.arange(12), [0], 3, seed=0, unit_tiles=4, window=1).pairs()]
    assert units == sorted(units, key=lambda u: units.index(u))
    val = EpochBatches(np.arange(3), [0, 1], 2, shuffle=False)
    assert val.pairs() == [(0, 0), (1, 0), (2, 0)]


@pytest.mark.parametrize("preload", [False, True])
def test_a_sample_is_the_cached_variant_with_its_image_and_targets_moved(stores, preload):
    store, _ = stores
    tiles = np.asarray([1, 4])
    ds = TileStream(store, tiles, TargetCache(store, tiles), preload=preload)
    vflip = store.variants.index("vflip")
    batch = ds[[(1, vflip), (0, 0)]]
    assert batch["tile"].tolist() == [4, 1] and batch["variant"].tolist() == [vflip, 0]
    for k, layer in enumerate(store.layers):
        np.testing.assert_array_equal(batch["tokens"][k][0].numpy(), store.tokens(layer, 4, vflip))
    v = BY_NAME["vflip"]
    np.testing.assert_array_equal(batch["image"][0].numpy(), v.apply(store.images(4)))
    inst, types = (v.apply(m, spatial=(0, 1), image=False) for m in store.labels(4))
    expected = tile_targets(inst, types)
    np.testing.assert_array_equal(batch["cls3"][0].numpy(), expected["cls3"])
    np.testing.assert_allclose(batch["dist"][0].numpy(), expected["dist"].astype(np.float32), atol=1e-3)
    assert batch["valid"].all() and batch["dist"].dtype.is_floating_point


def test_worker_processes_read_the_same_batches(stores):
    store, _ = stores
    tiles = np.arange(4)
    ds = TileStream(store, tiles, TargetCache(store, tiles))
    batches = EpochBatches(tiles, [0, 1, 2], 2, seed=3, unit_tiles=4)
    here = [b["tokens"][0].numpy() for b in make_loader(ds, batches, workers=0)]
    there = [b["tokens"][0].numpy() for b in make_loader(ds, batches, workers=1)]
    assert len(here) == 2 and all(np.array_equal(a, b) for a, b in zip(here, there))


def test_a_store_without_labels_cannot_train(stores):
    with pytest.raises(DataError, match="has no labels .* extract a dataset with instance maps"):
        check_trainable(stores[1])


def _groups_file(path, rows):
    path.write_text("image,group\n" + "".join(f"{i},{g}\n" for i, g in rows))
    return path


def test_a_drawn_split_keeps_the_images_of_a_group_together(stores, tmp_path):
    store, _ = stores
    names = store.source_names
    groups = {names[0]: "A", names[1]: "A", names[2]: "B", names[3]: "B", names[4]: "C", names[5]: "C"}
    path = _groups_file(tmp_path / "groups.csv", groups.items())
    source = store.tile_info()["source"]
    seen = set()
    for seed in range(12):
        s = make_split(store, f"frac:0.34,groups={path}", seed=seed)
        val_groups = {groups[names[source[t]]] for t in s.val}
        train_groups = {groups[names[source[t]]] for t in s.train}
        assert len(val_groups) == 1 and not val_groups & train_groups  # one whole group held out
        assert len(s.val) == 2 and s.to_dict()["val_spec"] == f"frac:0.34,groups={path}"
        seen |= val_groups
    assert seen == {"A", "B", "C"}  # the draw is over groups, seeded


@pytest.mark.parametrize("rows, message", [
    ([(n, "A") for n in "012345"], "a single group; nothing to split"),
    ([("0", "A"), ("0", "B")] + [(n, "A") for n in "12345"], "in two groups"),
    ([("nope", "A")] + [(n, "A") for n in "012345"], "'nope' is not a source image"),
    ([(n, "A") for n in "0123"], "no group for 2 source image"),
    ([("0", "")] + [(n, "B") for n in "12345"], "has no group"),
])
def test_bad_groups_files_are_refused_in_one_line(stores, tmp_path, rows, message):
    store, _ = stores
    assert store.source_names[:6] == list("012345")
    path = _groups_file(tmp_path / "g.csv", rows)
    with pytest.raises(DataError, match=message):
        make_split(store, f"frac:0.3,groups={path}")
    (tmp_path / "h.csv").write_text("tile,patient\n0,A\n")
    with pytest.raises(DataError, match="columns image,group"):
        make_split(store, f"frac:0.3,groups={tmp_path / 'h.csv'}")
