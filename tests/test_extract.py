"""Extraction into a store: contents, fidelity to a live forward, resume, refusal, verify."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_CNN, TINY_VIT

from embedcache import open_store
from embedcache.config import ExtractConfig
from embedcache.datasets import resolve_variants
from embedcache.encoders import get_spec
from embedcache.encoders.features import FeatureExtractor, resolve_layers
from embedcache.encoders.load import load_encoder
from embedcache.errors import ConfigError, DataError, StoreError, StoreMismatchError
from embedcache.extract import extract
from embedcache.store import verify_store
from embedcache.files import partial_path
from embedcache.store.writer import StoreWriter

VIT = ExtractConfig(encoder=TINY_VIT, weights="random", layers="1,3,5", variants="d4", batch_size=5,
                    unit_tiles=4, loader_workers=0, device="cpu")


@pytest.fixture
def vit_store(tmp_path, conic_dir):
    res = extract(conic_dir, tmp_path / "vit.zarr", VIT, progress=False)
    return res, open_store(res.path)


def live_features(config, tiles_uint8, variant):
    spec = get_spec(config.encoder)
    enc = load_encoder(spec, config.weights, seed=config.seed)
    fx = FeatureExtractor(enc, resolve_layers(enc.model, spec.layers, config.layers))
    return fx, fx(torch.from_numpy(variant.apply(tiles_uint8)))


def test_store_holds_tiles_labels_and_every_variant(vit_store, conic_dir, tiny_tiles):
    res, store = vit_store
    images, labels, _ = tiny_tiles
    assert store.complete and res.units_run == res.units_total == 2
    assert store.n_tiles == 6 and store.variants == [v.name for v in resolve_variants("d4")]
    assert store.layers == ["blocks.1", "blocks.3", "blocks.5"]
    assert np.array_equal(store.images(), images)
    inst, types = store.labels([5, 0])
    assert np.array_equal(inst, labels[[5, 0], ..., 0]) and np.array_equal(types, labels[[5, 0], ..., 1])
    assert store.tokens("blocks.3", [0, 1]).shape == (2, 64, 4, 4)
    assert store.tokens("blocks.3", 2).shape == (64, 4, 4)
    assert store.pooled("blocks.5", slice(None), variant="rot90").shape == (6, 64)
    assert store.pooled("blocks.5", [1], kind="both").shape == (1, 128)
    assert store.encoder.name == TINY_VIT
    prov = store.provenance
    assert prov.versions["torch"] == torch.__version__ and prov.weights == "random"
    assert len(store.config.dataset_fingerprint) == 64
    # Each unit is timed on its own: the repeats a cost's spread is measured over.
    assert [u["unit"] for u in res.units] == [0, 1] and [u["tiles"] for u in res.units] == [4, 2]
    assert all(0 < u["compute_s"] < res.seconds for u in res.units)


def test_stored_tokens_equal_a_live_forward_of_each_variant(vit_store, tiny_tiles):
    _, store = vit_store
    images = tiny_tiles[0]
    for vi, variant in enumerate(resolve_variants("d4")):
        fx, live = live_features(VIT, images, variant)
        for name, (tok, pre) in zip(fx.names, live):
            stored = store.tokens(name, slice(None), vi)
            # float16 storage: relative rounding 2**-11.
            np.testing.assert_allclose(stored, tok.numpy(), rtol=2e-3, atol=2e-3 * np.abs(tok.numpy()).max())
            np.testing.assert_allclose(store.pooled(name, slice(None), vi), tok.mean((-2, -1)).numpy(),
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(store.pooled(name, slice(None), vi, "cls"), pre[:, 0].numpy(),
                                       rtol=1e-5, atol=1e-5)
    # A variant's features are not those of the identity (the transform really happened).
    assert not np.allclose(store.tokens("blocks.5", 0, 0), store.tokens("blocks.5", 0, 1))


def test_pyramid_encoder_and_float32(tmp_path, conic_dir, tiny_tiles):
    cfg = ExtractConfig(encoder=TINY_CNN, weights="random", variants="flips", dtype="float32", unit_tiles=3,
                        loader_workers=1, device="cpu")
    store = open_store(extract(conic_dir, tmp_path / "cnn.zarr", cfg, progress=False).path)
    assert [store.tokens(n, 0).shape[1:] for n in store.layers] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert store.group["tokens/" + store.layers[0]].dtype == np.float32
    fx, live = live_features(cfg, tiny_tiles[0], resolve_variants("flips")[2])
    for name, (tok, _) in zip(fx.names, live):
        np.testing.assert_allclose(store.tokens(name, slice(None), "vflip"), tok.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(StoreError, match="no class token"):
        store.pooled(store.layers[0], 0, kind="cls")


def test_stain_variants_are_extracted(tmp_path, conic_dir, tiny_tiles):
    cfg = VIT.__class__(**{**VIT.to_dict(), "variants": "identity,stain_a"})
    store = open_store(extract(conic_dir, tmp_path / "s.zarr", cfg, progress=False).path)
    fx, live = live_features(cfg, tiny_tiles[0], resolve_variants("identity,stain_a")[1])
    np.testing.assert_allclose(store.pooled("blocks.5", slice(None), "stain_a"), live[2][0].mean((-2, -1)).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_running_again_does_nothing(vit_store, conic_dir):
    res, _ = vit_store
    again = extract(conic_dir, res.path, VIT, progress=False)
    assert again.skipped and again.units_run == 0


def test_another_configuration_is_refused_naming_the_field(vit_store, conic_dir):
    res, _ = vit_store
    other = VIT.__class__(**{**VIT.to_dict(), "variants": "flips"})
    with pytest.raises(StoreMismatchError, match=r"variants.*--overwrite"):
        extract(conic_dir, res.path, other, progress=False)
    other = VIT.__class__(**{**VIT.to_dict(), "seed": 3})
    with pytest.raises(StoreMismatchError, match="weights_sha256"):
        extract(conic_dir, res.path, other, progress=False)
    assert open_store(res.path).complete


def test_another_dataset_is_refused(vit_store, tmp_path, tiny_tiles):
    res, _ = vit_store
    d = tmp_path / "other"
    d.mkdir()
    np.save(d / "images.npy", tiny_tiles[0][::-1].copy())
    with pytest.raises(StoreMismatchError, match="dataset_fingerprint"):
        extract(d, res.path, VIT, progress=False)


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(vit_store, conic_dir, monkeypatch):
    res, _ = vit_store
    before = open_store(res.path).tokens("blocks.5", slice(None))
    other = VIT.__class__(**{**VIT.to_dict(), "variants": "flips"})
    calls = {"n": 0}
    real = StoreWriter.write_unit

    def fail_second(self, unit, arrays):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, unit, arrays)

    monkeypatch.setattr(StoreWriter, "write_unit", fail_second)
    with pytest.raises(OSError):
        extract(conic_dir, res.path, other, overwrite=True, progress=False)
    old = open_store(res.path)
    assert old.complete and old.variants[1] == "rot90"
    np.testing.assert_array_equal(old.tokens("blocks.5", slice(None)), before)
    partial = open_store(partial_path(res.path))
    assert not partial.complete and partial.units_done() == (1, 2)
    monkeypatch.setattr(StoreWriter, "write_unit", real)
    done = extract(conic_dir, res.path, other, overwrite=True, progress=False)
    assert open_store(done.path).variants == ["identity", "hflip", "vflip"]
    assert not partial_path(res.path).exists()


def test_interrupted_run_resumes_to_the_same_store(tmp_path, conic_dir, monkeypatch):
    full = open_store(extract(conic_dir, tmp_path / "full.zarr", VIT, progress=False).path)
    real = StoreWriter.write_unit

    def stop_after_first(self, unit, arrays):
        if self.done_units().sum() >= 1:
            raise KeyboardInterrupt
        return real(self, unit, arrays)

    monkeypatch.setattr(StoreWriter, "write_unit", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        extract(conic_dir, tmp_path / "resumed.zarr", VIT, progress=False)
    assert not (tmp_path / "resumed.zarr").exists()
    monkeypatch.setattr(StoreWriter, "write_unit", real)
    res = extract(conic_dir, tmp_path / "resumed.zarr", VIT, progress=False)
    assert res.units_run == 1
    resumed = open_store(res.path)
    for path in full.arrays():
        assert np.array_equal(full.group[path][:], resumed.group[path][:]), path


def test_verify_passes_then_catches_a_corrupted_chunk(vit_store):
    res, store = vit_store
    assert verify_store(store) == []
    shard = next((res.path / "tokens" / "blocks.3").rglob("c/*/0/0/0/0"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    problems = verify_store(open_store(res.path))
    assert len(problems) == 1 and "tokens/blocks.3" in problems[0] and "tiles 0..3" in problems[0]
    # Reading the damaged tiles says so in one line; the other units still read.
    damaged = open_store(res.path)
    with pytest.raises(StoreError, match="corrupted"):
        for v in range(len(damaged.variants)):
            damaged.tokens("blocks.3", [0, 1, 2, 3], v)
    assert open_store(res.path).tokens("blocks.3", [5]).shape == (1, 64, 4, 4)


def _flip_a_byte(shard) -> None:
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))


def test_repair_computes_only_the_damaged_unit_again_into_the_bytes_of_a_clean_store(vit_store, tmp_path,
                                                                                     conic_dir):
    from store_helpers import assert_same_store

    res, _ = vit_store
    clean = open_store(extract(conic_dir, tmp_path / "clean.zarr", VIT, progress=False).path)
    _flip_a_byte(res.path / "tokens" / "blocks.3" / "c" / "1" / "0" / "0" / "0" / "0")  # unit 1: tiles 4..5
    (problem,) = verify_store(open_store(res.path))
    assert problem.startswith("tokens/blocks.3: tiles 4..5 (unit 1) cannot be read")
    assert problem.endswith("run the same extract command with --repair to compute only the damaged units again")

    repaired = extract(conic_dir, res.path, VIT, progress=False, repair=True)
    assert repaired.repaired == [1] and repaired.units_run == 1 and [u["unit"] for u in repaired.units] == [1]
    assert not partial_path(res.path).exists()
    store = open_store(res.path)
    assert verify_store(store) == []
    assert_same_store(store, clean)  # every array, byte for byte
    again = extract(conic_dir, res.path, VIT, progress=False, repair=True)
    assert again.skipped and again.units_run == 0


def test_repair_of_an_interrupted_repair_resumes_and_what_cannot_be_repaired_is_refused(vit_store, tmp_path,
                                                                                        conic_dir, monkeypatch):
    from store_helpers import assert_same_store

    res, _ = vit_store
    clean = open_store(extract(conic_dir, tmp_path / "clean.zarr", VIT, progress=False).path)
    for unit in (0, 1):
        _flip_a_byte(res.path / "images" / "c" / str(unit) / "0" / "0" / "0")

    def interrupt(self, unit, arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "write_unit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(conic_dir, res.path, VIT, progress=False, repair=True)
    monkeypatch.undo()
    # The store waits as an interrupted extraction with both damaged units to do; running again finishes it.
    assert not res.path.exists() and open_store(res.path).units_done() == (0, 2)
    again = extract(conic_dir, res.path, VIT, progress=False, repair=True)
    assert again.units_run == 2
    assert_same_store(open_store(res.path), clean)

    with pytest.raises(ConfigError, match="give one of them"):
        extract(conic_dir, res.path, VIT, progress=False, repair=True, overwrite=True)
    with pytest.raises(StoreError, match="no store of this configuration to repair"):
        extract(conic_dir, tmp_path / "none.zarr", VIT, progress=False, repair=True)
    with pytest.raises(StoreMismatchError, match="another configuration"):
        extract(conic_dir, res.path, ExtractConfig(**{**VIT.to_dict(), "variants": "flips"}), progress=False,
                repair=True)


def test_verify_reports_an_incomplete_store(tmp_path, conic_dir, monkeypatch):
    def interrupt(self, unit, arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "write_unit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(conic_dir, tmp_path / "x.zarr", VIT, progress=False)
    store = open_store(tmp_path / "x.zarr")  # finds the partial
    assert not store.complete
    assert any("incomplete" in p for p in verify_store(store))


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                              "attributes": {}}))
    with pytest.raises(StoreError, match="not an embedcache store"):
        open_store(tmp_path / "plain")


def test_out_that_is_not_a_store_is_left_alone(tmp_path, conic_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an embedcache store"):
        extract(conic_dir, out, VIT, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_config_validation():
    with pytest.raises(ConfigError, match="batch size"):
        ExtractConfig(batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        ExtractConfig(dtype="bfloat16")
    with pytest.raises(ConfigError, match="unknown ExtractConfig field 'layer'"):
        ExtractConfig.from_dict({"layer": "all"})


def test_cuda_requested_without_gpu(tmp_path, conic_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = VIT.__class__(**{**VIT.to_dict(), "device": "cuda"})
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        extract(conic_dir, tmp_path / "g.zarr", cfg, progress=False)


def test_folder_dataset_records_tile_positions(tmp_path):
    from PIL import Image

    d = tmp_path / "f"
    d.mkdir()
    Image.fromarray(np.full((70, 40, 3), 200, np.uint8)).save(d / "a.png")
    cfg = VIT.__class__(**{**VIT.to_dict(), "tile_size": 32, "variants": "none", "overlap": 0})
    store = open_store(extract(d, tmp_path / "f.zarr", cfg, progress=False).path)
    info = store.tile_info()
    assert store.n_tiles == 6 and not store.has_labels
    assert info["offset"].tolist() == [[0, 0], [0, 32], [32, 0], [32, 32], [64, 0], [64, 32]]
    assert info["valid"][-1].tolist() == [6, 8]
    with pytest.raises(StoreError, match="no labels"):
        store.labels(0)
    shutil.rmtree(tmp_path / "f.zarr")


def test_attributes_are_one_typed_record(vit_store):
    """What the store writes reads back into StoreAttrs and out again unchanged; properties read it."""
    import zarr

    from embedcache.store.schema import StoreAttrs

    _, store = vit_store
    raw = dict(zarr.open_group(str(store.path), mode="r").attrs)["embedcache"]
    assert StoreAttrs.from_dict(raw).to_dict() == raw
    lay = store.layout("blocks.3")
    assert lay.shape == (64, 4, 4) and lay.stride == (16.0, 16.0) and lay.has_cls and lay.n_prefix == 1
    assert store.layout(-1).name == "blocks.5" and store.dataset_layout == "conic" and store.tile_mpp is None
    assert store.config.unit_tiles == 4 and store.extract_config["layers"] == "1,3,5"
    with pytest.raises(DataError, match="does not record microns per pixel"):
        store.geometry()


def _folder(path, n=4, size=128, seed=0):
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path / f"im{k}.png")
    return path


def test_a_fixed_source_file_recomputes_only_its_units_and_keeps_the_rest(tmp_path):
    """A truncated image last in a folder fails extraction at its unit; after the fix the rerun keeps the
    finished units. A finished image changed since is computed again; the store equals a fresh one."""
    data = _folder(tmp_path / "data")
    good = (data / "im3.png").read_bytes()
    (data / "im3.png").write_bytes(good[: len(good) // 2])  # the header still reads; the pixels do not
    cfg = ExtractConfig(encoder=TINY_CNN, weights="random", variants="none", loader_workers=0, device="cpu",
                        unit_tiles=4, tile_size=64, overlap=0)  # one 128-px image = one unit of 4 tiles
    out = tmp_path / "s.zarr"
    with pytest.raises(DataError, match="im3.png"):
        extract(data, out, cfg, progress=False)
    assert open_store(partial_path(out)).units_done() == (3, 4)
    (data / "im3.png").write_bytes(good)  # fixed
    from PIL import Image

    changed = np.asarray(Image.open(data / "im1.png")).copy()
    changed[:8] = 0
    Image.fromarray(changed).save(data / "im1.png")  # and a finished image edited since
    res = extract(data, out, cfg, progress=False)
    assert res.redone == (1, 2) and res.units_run == 2  # unit 1 again, unit 3 for the first time
    fresh = open_store(extract(data, tmp_path / "fresh.zarr", cfg, progress=False).path)
    store = open_store(res.path)
    assert store.complete and store.config.dataset_fingerprint == fresh.config.dataset_fingerprint
    for path in fresh.arrays():
        assert np.array_equal(fresh.group[path][:], store.group[path][:]), path
    assert verify_store(store) == []


def test_a_fix_that_moves_tiles_is_refused_with_what_to_do(tmp_path):
    data = _folder(tmp_path / "data")
    cfg = ExtractConfig(encoder=TINY_CNN, weights="random", variants="none", loader_workers=0, device="cpu",
                        unit_tiles=4, tile_size=64, overlap=0)
    real = StoreWriter.write_unit
    calls = []

    def stop_after_two(self, unit, arrays):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(unit)
        return real(self, unit, arrays)

    out = tmp_path / "s.zarr"
    import unittest.mock

    with unittest.mock.patch.object(StoreWriter, "write_unit", stop_after_two), pytest.raises(KeyboardInterrupt):
        extract(data, out, cfg, progress=False)
    problems = verify_store(open_store(partial_path(out)))
    assert "units with its tiles are computed again" in problems[0]
    from PIL import Image

    Image.fromarray(np.zeros((192, 128, 3), np.uint8)).save(data / "im0.png")  # another size: tiles move
    with pytest.raises(StoreMismatchError, match="--overwrite"):
        extract(data, out, cfg, progress=False)
    assert open_store(partial_path(out)).units_done() == (2, 4)  # nothing lost by the refusal


@pytest.mark.parametrize("where", ["under", "is"])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, conic_dir, monkeypatch, where):
    """``extract`` loaded the model (about 17 s for a large one) before finding ``--out`` under a file."""
    from embedcache.errors import OutputError

    def no_model(*args, **kwargs):
        raise AssertionError("the encoder was built")

    monkeypatch.setattr("embedcache.extract.job.Extraction", no_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    out = blocker / "x.zarr" if where == "under" else blocker
    with pytest.raises(OutputError, match="a-file is a file, not a folder"):
        extract(conic_dir, out, ExtractConfig(encoder=TINY_CNN, weights="random"))
    assert blocker.read_text() == "mine"
