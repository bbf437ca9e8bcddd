"""Units written and read straight from their shards: the bytes zarr writes, the values zarr reads, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CNN

from embedcache.errors import StoreError
from embedcache.store import open_store, schema
from embedcache.store.shards import ChunkCodec, UnitArray, morton_order
from embedcache.store.writer import StoreWriter


def _layouts(c: int = 6):
    return [schema.LayerLayout("early", (c, 4, 4)),
            schema.LayerLayout("late", (2 * c, 2, 2), n_prefix=2, has_cls=True)]


def _attrs(n: int, unit: int, variants: list[str], dtype: str, codec: str) -> tuple:
    from embedcache.encoders import get_spec

    layers = _layouts()
    config = schema.StoreConfig(encoder=get_spec(TINY_CNN).to_dict(), weights_sha256=None,
                                layers=[lay.name for lay in layers], variants=variants, dtype=dtype, norm=False,
                                compute="cpu-float32", tile_shape=[8, 8], n_tiles=n, unit_tiles=unit,
                                dataset_fingerprint="f")
    attrs = schema.StoreAttrs(config=config, provenance=schema.Provenance(), layers=tuple(layers))
    specs = schema.array_specs(n, (8, 8), len(variants), layers, dtype, unit, has_labels=True, codec=codec)
    return attrs, specs


def _values(specs, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values for every array; tile 1 all zeros (zarr writes empty chunks too, here)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            v = rng.normal(size=s.shape).astype(dt)
        else:
            info = np.iinfo(dt)
            v = rng.integers(max(info.min, -1000), min(info.max, 1000), size=s.shape, dtype=dt)
        if s.shape[0] > 1:
            v[1] = 0
        out[s.path] = v
    return out


def _objects(root: Path) -> dict[str, bytes]:
    """Every object of a store but the root's metadata (which records when it was made)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p != root / "zarr.json"}


def _write_with_zarr(out: Path, attrs, specs, values):
    """The reference: the new store's metadata, every array assigned whole by plain zarr (as writers did)."""
    import zarr

    from embedcache.store.writer import _metadata_documents

    for key, data in _metadata_documents(specs, attrs).items():
        (out / key).parent.mkdir(parents=True, exist_ok=True)
        (out / key).write_bytes(data)
    group = zarr.open_group(str(out), mode="r+")
    with zarr.config.set({"array.write_empty_chunks": True}):
        for s in specs:
            group[s.path][...] = values[s.path]
        group[schema.DONE][...] = 1


def _write_units(writer: StoreWriter, values, units=None):
    n, u = writer.n_tiles, writer.unit_tiles
    for unit in (range(writer.n_units) if units is None else units):
        start, stop = schema.unit_range(unit, n, u)
        writer.write_unit(unit, {path: v[start:stop] for path, v in values.items()})


CASES = [  # tiles, unit, variants, dtype, codec: a last unit shorter than the rest, grids not powers of two
    (7, 3, ["identity", "hflip", "vflip"], "float16", "lz4"),
    (5, 2, [f"v{k}" for k in range(8)], "float32", "zstd"),
    (4, 4, ["identity"], "int8", "zstd"),
    (6, 4, ["identity", "hflip"], "int8", "lz4"),
]


@pytest.mark.parametrize("n, unit, variants, dtype, codec", CASES)
def test_units_written_directly_hold_the_bytes_zarr_writes(tmp_path, n, unit, variants, dtype, codec):
    attrs, specs = _attrs(n, unit, variants, dtype, codec)
    values = _values(specs)
    writer = StoreWriter.open(tmp_path / "direct.zarr", attrs, specs)
    assert all(writer.unit_array(s.path) is not None for s in specs)  # nothing left to zarr here
    _write_units(writer, values)
    direct = writer.finish()
    _write_with_zarr(tmp_path / "zarr.zarr", attrs, specs, values)
    ours, theirs = _objects(direct), _objects(tmp_path / "zarr.zarr")
    assert sorted(ours) == sorted(theirs)
    assert [k for k in ours if ours[k] != theirs[k]] == []
    # Plain zarr reads back what was written.
    import zarr

    group = zarr.open_group(str(direct), mode="r")
    for s in specs:
        assert np.array_equal(group[s.path][...], values[s.path]), s.path


def test_morton_order_is_zarrs():
    from zarr.core.indexing import morton_order_iter

    for grid in [(16, 8, 1, 1, 1), (3, 3), (5,), (7, 2, 3), (1, 1), (4, 1, 6)]:
        assert [tuple(int(x) for x in c) for c in morton_order(grid)] == list(morton_order_iter(grid)), grid


def test_unknown_codecs_are_left_to_zarr(tmp_path):
    import zarr
    from zarr.codecs import GzipCodec

    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 3), chunks=(2, 3), dtype="float32",
                            compressors=[GzipCodec()])
    assert UnitArray.of(arr) is None
    split = zarr.create_array(str(tmp_path / "b.zarr"), shape=(4, 3, 2), chunks=(2, 3, 1), dtype="float32")
    assert UnitArray.of(split) is None  # an object must span every axis past the second
    by_variant = zarr.create_array(str(tmp_path / "c.zarr"), shape=(4, 3), chunks=(2, 1), dtype="float32")
    assert not UnitArray.of(by_variant).whole_rows  # read, never written, here
    assert ChunkCodec.parse([{"name": "bytes", "configuration": {"endian": "big"}}], "float32") is None


def test_an_interrupted_unit_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    """A run killed while a unit's objects go out (some written, one cut short), resumed: the bytes of an
    uninterrupted run, and only the unfinished units computed again."""
    attrs, specs = _attrs(7, 3, ["identity", "hflip", "vflip"], "float16", "lz4")
    values = _values(specs, seed=1)
    out = tmp_path / "resumed.zarr"
    writer = StoreWriter.open(out, attrs, specs)
    _write_units(writer, values, [0])
    store = writer.group.store
    real_set, puts = type(store).set, []

    async def dying_set(self, key, value):
        if key.startswith("progress/"):
            return await real_set(self, key, value)
        puts.append(key)
        if len(puts) == 4:  # the kill: this object is left cut short, the ones after it never written
            await real_set(self, key, value[: len(value) // 2])
            raise OSError("killed")
        if len(puts) < 4:
            await real_set(self, key, value)

    monkeypatch.setattr(type(store), "set", dying_set)
    with pytest.raises(OSError, match="killed"):
        _write_units(writer, values, [1])
    monkeypatch.undo()
    assert len(puts) == len(specs)  # every object of the unit was on its way

    resumed = StoreWriter.open(out, attrs, specs)
    assert resumed.todo_units() == [1, 2]
    _write_units(resumed, values, resumed.todo_units())
    resumed.finish()
    reference = StoreWriter.open(tmp_path / "reference.zarr", attrs, specs)
    _write_units(reference, values)
    assert _objects(out) == _objects(reference.finish())
    from embedcache.store.verify import verify_store

    assert verify_store(open_store(out)) == []


def test_samples_read_from_shards_equal_zarrs_and_fail_loudly_on_damage(tmp_path):
    attrs, specs = _attrs(7, 3, ["identity", "hflip", "vflip"], "int8", "lz4")
    values = _values(specs, seed=2)
    writer = StoreWriter.open(tmp_path / "s.zarr", attrs, specs)
    _write_units(writer, values)
    store = open_store(writer.finish())
    pairs = [(6, 2), (0, 1), (1, 0), (4, 2), (6, 0), (3, 1)]  # tile 1 all zeros, tile 6 in the short unit
    assert store._unit_array(schema.tokens_path("late")).sharding is not None
    tokens, images = store.samples(pairs, ["early", "late"], stored=True)
    for k, (t, v) in enumerate(pairs):
        assert np.array_equal(images[k], values[schema.IMAGES][t])
        for j, layer in enumerate(["early", "late"]):
            got_values, got_scales = tokens[j]
            assert np.array_equal(got_values[k], values[schema.tokens_path(layer)][t, v])
            assert np.array_equal(got_scales[k], values[schema.scales_path(layer)][t, v])
    floats, _ = store.samples(pairs, ["late"])
    assert np.allclose(floats[0][:1], store.tokens("late", [6], 2))
    # A flipped byte in a chunk fails its checksum: an error naming the cure, not wrong values.
    shard = tmp_path / "s.zarr" / "tokens" / "early" / "c" / "2" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="embedcache verify"):
        open_store(tmp_path / "s.zarr").samples([(6, 0)], ["early"])


def test_local_reads_are_zarrs_reads(tmp_path):
    """A local store is read in this thread; every kind of request gives zarr's LocalStore bytes (absent: None),
    and a sample read through zarr's event loop (any other store) is the same."""
    import asyncio

    from zarr.abc.store import RangeByteRequest, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import LocalStore, MemoryStore

    from embedcache.store import shards

    attrs, specs = _attrs(7, 3, ["identity", "hflip", "vflip"], "float16", "lz4")
    values = _values(specs, seed=3)
    writer = StoreWriter.open(tmp_path / "s.zarr", attrs, specs)
    _write_units(writer, values)
    path = writer.finish()
    local = LocalStore(path)
    key = "tokens/early/c/0/0/0/0/0"
    requests = [(key, None), (key, RangeByteRequest(3, 40)), (key, SuffixByteRequest(16)),
                ("tokens/early/c/9/0/0/0/0", None), ("no/such/key", RangeByteRequest(0, 4))]

    Buffer = default_buffer_prototype().buffer

    async def through_zarr():
        got = [await local.get(k, prototype=default_buffer_prototype(), byte_range=r) for k, r in requests]
        return [None if b is None else b.to_bytes() for b in got]

    want = asyncio.run(through_zarr())
    got = shards.fetch(local, requests)
    assert [None if g is None else g.tobytes() for g in got] == want
    assert want[0] is not None and want[3] is None and want[4] is None
    # the same samples through an in-memory copy of the store (zarr's event loop)
    memory = MemoryStore()
    for file in Path(path).rglob("*"):
        if file.is_file():
            memory._store_dict[file.relative_to(path).as_posix()] = Buffer.from_bytes(file.read_bytes())
    ua = UnitArray.of(open_store(path)._array(schema.tokens_path("late")))
    pairs = [(ua, (6, 2)), (ua, (0, 1)), (ua, (3, 0))]
    from_disk, from_memory = shards.read_chunks(local, pairs), shards.read_chunks(memory, pairs)
    for (_, (t, v)), a, b in zip(pairs, from_disk, from_memory):
        assert np.array_equal(a, b)
        assert np.array_equal(a.reshape(values[schema.tokens_path("late")][t, v].shape),
                              values[schema.tokens_path("late")][t, v])


def test_training_reads_the_same_batches_from_shards_as_through_zarr(tmp_path, monkeypatch):
    """The loss curve and weights of a fit streaming from disk do not change with the read path."""
    import torch
    from decoder_helpers import fit_config, make_store, write_conic

    from embedcache.store.reader import Store
    from embedcache.train.loop import fit

    store = make_store(write_conic(tmp_path / "d", n=6), tmp_path / "s.zarr")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    from embedcache.store import shards

    real, calls = shards.read_chunks, []
    monkeypatch.setattr(shards, "read_chunks", lambda *a, **k: calls.append(1) or real(*a, **k))
    try:
        direct = fit(store, tmp_path / "direct", fit_config(epochs=2), progress=False)
        assert calls  # the batches came straight from the shards
        monkeypatch.setattr(Store, "_unit_array", lambda self, path: None)
        through_zarr = fit(store, tmp_path / "zarr", fit_config(epochs=2), progress=False)
    finally:
        torch.set_num_threads(before)
    losses = [[h["train_loss"] for h in r.history] for r in (direct, through_zarr)]
    assert losses[0] == losses[1] and len(losses[0]) == 2


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_rows_read_by_unit_equal_what_was_written(tmp_path, dtype):
    attrs, specs = _attrs(7, 3, ["identity", "hflip", "vflip"], dtype, "lz4")
    values = _values(specs, seed=3)
    writer = StoreWriter.open(tmp_path / "s.zarr", attrs, specs)
    _write_units(writer, values)
    store = open_store(writer.finish())
    for idx in (slice(None), slice(2, 7), [4, 5, 6], 6, [0]):
        rows = np.arange(7)[idx]
        assert np.array_equal(store.images(idx), values[schema.IMAGES][rows])
        inst, types = store.labels(idx)
        assert np.array_equal(inst, values[schema.LABELS][rows][..., 0])
        for variant, pick in ((None, slice(None)), (2, 2), (["vflip", "identity"], [2, 0]), ([1, 2], slice(1, 3))):
            got, scales = store.stored_tokens("late", idx, variant)
            assert np.array_equal(got, values[schema.tokens_path("late")][rows][..., pick, :, :, :] if np.ndim(rows)
                                  else values[schema.tokens_path("late")][rows][pick])
        assert np.array_equal(store.pooled("late", idx, 1), values[schema.pooled_path("late")][rows][..., 1, :])
        assert np.array_equal(store.prefix("late", idx, 2), values[schema.prefix_path("late")][rows][..., 2, :, :])


def test_blocks_of_cells_read_directly_equal_zarrs(tmp_path):
    """Cell vectors: plain chunks of 1024 cells and one variant, read a run of cells at a time."""
    import zarr

    from embedcache.store.shards import read_rows

    values = np.random.default_rng(4).normal(size=(2500, 3, 5)).astype("float16")
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=values.shape, dtype="float16", chunks=(1024, 1, 5),
                            compressors=schema.compressors("float16"), fill_value=0)
    arr[:2100] = values[:2100]  # the last chunk never written: the fill value
    values[2100:] = 0
    ua = UnitArray.of(arr)
    assert ua is not None and not ua.whole_rows
    for start, stop in ((0, 2500), (1000, 1030), (2047, 2049), (2200, 2500), (5, 5)):
        for along in (None, [2], [2, 0]):
            want = values[start:stop] if along is None else values[start:stop][:, along]
            assert np.array_equal(read_rows(arr.store, ua, start, stop, along), want), (start, stop, along)
