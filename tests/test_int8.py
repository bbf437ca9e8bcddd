"""int8 stores and codecs: tokens within a half step of their scale, read as floats by every consumer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_VIT
from decoder_helpers import fit_config, make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)

from embedcache import open_store
from embedcache.config import CellsConfig, ExtractConfig
from embedcache.errors import ConfigError
from embedcache.extract import extract
from embedcache.infer.features import LiveFeatures, store_features
from embedcache.infer.predict import predict
from embedcache.store import verify_store
from embedcache.store.quant import dequantize, quantize
from embedcache.store.writer import StoreWriter
from embedcache.train.checkpoint import load_run
from embedcache.train.loop import fit
from embedcache.train.stream import TileStream, to_device
from embedcache.train.targets import TargetCache

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quantisation_error_is_at_most_half_a_step_of_each_channel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32) * np.array([0.01, 1, 50, 0, 3])[None, :, None, None]
    q, s = quantize(torch.from_numpy(x))
    q, s = q.numpy(), s.numpy()
    assert q.dtype == np.int8 and s.shape == (3, 5) and np.abs(q).max() == 127
    step = np.abs(x).max(axis=(-2, -1)) / 127  # computed here from the definition, not by the module
    np.testing.assert_allclose(s, step, rtol=1e-6)
    err = np.abs(dequantize(q, s) - x)
    assert (err <= step[..., None, None] / 2 + 1e-7).all()
    assert not dequantize(q, s)[:, 3].any()  # an all-zero channel stays zero (scale 0, no division by it)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    conic = write_conic(tmp / "conic", n=6)
    paths = {dtype: make_store(conic, tmp / f"{dtype}.zarr", encoder=TINY_VIT, dtype=dtype)
             for dtype in ("float32", "int8")}
    return {"tmp": tmp, "conic": conic, **paths}


def test_int8_tokens_read_as_floats_within_rounding_of_float32(stores):
    a, b = open_store(stores["float32"]), open_store(stores["int8"])
    assert b.quantized and not a.quantized and b.config.dtype == "int8"
    for layer in a.layers:
        ref = a.tokens(layer, slice(None), variant=None)
        got = b.tokens(layer, slice(None), variant=None)
        assert got.dtype == np.float32 and got.shape == ref.shape
        half_step = np.abs(ref).max(axis=(-2, -1), keepdims=True) / 127 / 2
        assert (np.abs(got - ref) <= half_step * 1.001 + 1e-6).all(), layer
        values, scales = b.stored_tokens(layer, [0, 2], variant=1)
        assert values.dtype == np.int8 and scales.shape == values.shape[:2]
        np.testing.assert_array_equal(b.tokens(layer, [0, 2], 1), dequantize(values, scales))
        # Pooled vectors are computed before quantisation: as in the float32 store.
        np.testing.assert_allclose(b.pooled(layer), a.pooled(layer), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.prefix(layer), a.prefix(layer), rtol=1e-3, atol=1e-3)  # float16 prefix


def test_an_int8_store_takes_a_byte_per_value_plus_its_scales_and_verifies(stores):
    b = open_store(stores["int8"])
    assert verify_store(b) == []
    n = b.n_tiles * len(b.variants)
    for layer, info in b.summary()["layers"].items():
        c, h, w = b.layout(layer).shape
        # One byte per value and four per channel scale; 10% for shard indexes and checksums of this tiny store.
        assert info["dtype"] == "int8" and info["bytes"] <= 1.1 * n * (c * h * w + 4 * c), (layer, info)


def test_an_interrupted_int8_extraction_resumes_to_the_same_bytes(stores, monkeypatch):
    cfg = ExtractConfig(encoder=TINY_VIT, weights="random", variants="flips", loader_workers=0, device="cpu",
                        unit_tiles=2, dtype="int8")
    out = stores["tmp"] / "resumed.zarr"
    real = StoreWriter.write_unit
    calls = []

    def dies_on_the_second(self, unit, arrays):
        calls.append(unit)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self, unit, arrays)

    monkeypatch.setattr(StoreWriter, "write_unit", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        extract(stores["conic"], out, cfg, progress=False)
    monkeypatch.setattr(StoreWriter, "write_unit", real)
    assert not open_store(out).complete
    res = extract(stores["conic"], out, cfg, progress=False)
    assert res.units_run == 2 and res.units_total == 3  # the unit written before the interruption is kept
    ref = extract(stores["conic"], stores["tmp"] / "straight.zarr", cfg, progress=False)
    x, y = open_store(out), open_store(ref.path)
    assert x.complete and x.arrays() == y.arrays()
    for path in x.arrays():
        assert np.array_equal(x.group[path][:], y.group[path][:]), path


def test_training_batches_and_live_prediction_see_the_same_floats_as_the_store(stores):
    store = open_store(stores["int8"])
    tiles = np.arange(4)
    for preload in (False, True):
        ds = TileStream(store, tiles, TargetCache(store, tiles), preload=preload)
        raw = ds[[(2, 1), (0, 0)]]
        assert raw["tokens"][0].dtype == torch.int8 and raw["cls3"].dtype == torch.uint8  # compact from a worker
        batch = to_device(raw, "cpu")
        assert batch["cls3"].dtype == torch.int64 and batch["dist"].dtype == torch.float32
        for k, layer in enumerate(store.layers):
            np.testing.assert_array_equal(batch["tokens"][k][0].numpy(), store.tokens(layer, 2, 1))
            np.testing.assert_array_equal(batch["tokens"][k][1].numpy(), store.tokens(layer, 0, 0))
    run_dir = stores["tmp"] / "run"
    fit(stores["int8"], run_dir, fit_config(epochs=1), progress=False)
    run = load_run(run_dir)
    cached, pixels = store_features(store)([3, 0])
    live, _ = LiveFeatures(run)([pixels[0], pixels[1]])
    for a, b in zip(cached, live):
        np.testing.assert_array_equal(a, b)  # the same quantisation, live and cached
    tmp = stores["tmp"]
    predict(run_dir, tmp / "cached", store=stores["int8"], progress=False)
    predict(run_dir, tmp / "live", data=stores["conic"], progress=False)
    np.testing.assert_array_equal(np.load(tmp / "cached" / "labels.npy"), np.load(tmp / "live" / "labels.npy"))


def test_cells_of_an_int8_store_are_float16_pooled_from_its_floats(stores):
    from embedcache.cells.build import build_cells

    res = build_cells(stores["int8"], stores["tmp"] / "int8.cells", CellsConfig(), progress=False)
    cells, store = open_store(res.path), open_store(stores["int8"])
    layer = store.layers[-1]
    vec = cells.vectors(layer, slice(None), variant=0)
    assert vec.dtype == np.float32 and len(vec) == res.n_cells > 0
    assert str(cells.group[f"vectors/{layer}"].dtype) == "float16"


def test_zstd_stores_hold_the_same_values_with_their_codec_recorded(stores):
    out = make_store(stores["conic"], stores["tmp"] / "zstd.zarr", encoder=TINY_VIT, dtype="float32", codec="zstd")
    a, b = open_store(stores["float32"]), open_store(out)
    for path in a.arrays():
        assert np.array_equal(a.group[path][:], b.group[path][:]), path
    meta = json.loads((out / "images" / "zarr.json").read_text())
    names = json.dumps(meta["codecs"])
    assert '"zstd"' in names and "crc32c" in names
    with pytest.raises(ConfigError, match="codec must be lz4 or zstd"):
        ExtractConfig(codec="gzip")
    with pytest.raises(ConfigError, match="dtype must be float16, float32 or int8"):
        ExtractConfig(dtype="uint8")
