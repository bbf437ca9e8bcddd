"""Prediction: cached and live agree, stitching keeps every nucleus once, outputs read back, GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_VIT
from decoder_helpers import (  # noqa: F401 (one_thread: pytestmark)
    best_iou, disk_instances, fit_config, make_store, one_thread, oracle_maps, write_conic,
)
from PIL import Image

from embedcache import open_store
from embedcache.datasets import PANNUKE_CLASSES, read_label_maps
from embedcache.errors import ConfigError, DataError
from embedcache.errors import RunError
from embedcache.geometry import TiledImage
from embedcache.infer.evaluate import evaluate_run
from embedcache.infer.features import LiveFeatures, store_features
from embedcache.infer.predict import predict
from embedcache.infer.predictor import Predictor
from embedcache.infer.tiling import cut_tile, plan_tiles
from embedcache.infer.tta import tta_variants
from embedcache.infer.writer import PredictionWriter, geojson_to_instances, instances_to_geojson
from embedcache.store.images import source_images
from embedcache.train.checkpoint import load_run
from embedcache.train.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ViT decoder run on a stack store, and a pyramid one on a store of one large image."""
    tmp = tmp_path_factory.mktemp("predict")
    conic = write_conic(tmp / "conic", n=6)
    stack = make_store(conic, tmp / "stack.zarr", encoder=TINY_VIT)
    fit(stack, tmp / "run", fit_config(epochs=2, lr=3e-3), progress=False)
    folder = tmp / "folder"
    folder.mkdir()
    from embedcache.datasets.synthetic import make_tiles

    images, labels, _ = make_tiles(1, seed=9, size=160)
    Image.fromarray(images[0][:150, :140]).save(folder / "big.png")
    Image.fromarray(labels[0, :150, :140, 0].astype(np.uint16)).save(folder / "big_inst.png")
    big = make_store(folder, tmp / "big.zarr", tile_size=64, overlap=0)  # a plain grid: seams
    fit(big, tmp / "bigrun", fit_config(epochs=1, val="tiles:0"), progress=False)
    return {"tmp": tmp, "conic": conic, "stack": stack, "run": tmp / "run", "folder": folder, "big": big,
            "bigrun": tmp / "bigrun"}


def test_cached_and_live_features_give_the_same_maps_and_nuclei(trained):
    run = load_run(trained["run"])
    store = open_store(trained["stack"])
    cached_tokens, pixels = store_features(store)([3, 0])
    live_tokens, live_pixels = LiveFeatures(run)([pixels[0], pixels[1]])
    for a, b in zip(cached_tokens, live_tokens):
        np.testing.assert_array_equal(a, b)
    predictor = Predictor(run.model, run.directions)
    np.testing.assert_array_equal(predictor.tile_maps(cached_tokens, pixels),
                                  predictor.tile_maps(live_tokens, live_pixels))
    tmp = trained["tmp"]
    a = predict(trained["run"], tmp / "cached", store=trained["stack"], progress=False)
    b = predict(trained["run"], tmp / "live", data=trained["conic"], progress=False)
    assert (a.mode, b.mode, a.layout, b.layout) == ("cached", "live", "stack", "stack")
    np.testing.assert_array_equal(np.load(tmp / "cached" / "labels.npy"), np.load(tmp / "live" / "labels.npy"))


def test_large_images_cached_grid_equals_live_without_overlap(trained):
    tmp = trained["tmp"]
    a = predict(trained["bigrun"], tmp / "bigc", store=trained["big"], progress=False)
    b = predict(trained["bigrun"], tmp / "bigl", data=trained["folder"], overlap=0, progress=False)
    assert a.layout == b.layout == "folder" and a.n_images == b.n_images == 1
    inst_a = np.asarray(Image.open(tmp / "bigc" / "big_inst.png"))
    inst_b = np.asarray(Image.open(tmp / "bigl" / "big_inst.png"))
    assert inst_a.shape == (150, 140) and np.array_equal(inst_a, inst_b)
    assert (tmp / "bigc" / "overlays" / "big.png").exists()
    labels = read_label_maps(tmp / "bigc")  # what evaluate reads
    assert labels.names == ["big"] and labels.types is None


def test_an_overlapping_store_predicts_as_live_prediction_does(trained):
    """A store of overlapping tiles: cached prediction stitches them exactly as live prediction over them."""
    tmp = trained["tmp"]
    store = make_store(trained["folder"], tmp / "big-overlap.zarr", tile_size=64, overlap=24)
    s = open_store(store)
    assert s.tile_overlap == 24 and not s.has_seams and open_store(trained["big"]).has_seams
    assert s.n_tiles > open_store(trained["big"]).n_tiles
    offsets = sorted({tuple(o) for o in s.tile_info()["offset"].tolist()})
    assert offsets == sorted(plan_tiles((150, 140), (64, 64), 24))  # the live tiling, exactly
    run = tmp / "overlap-run"
    fit(store, run, fit_config(epochs=1, val="tiles:0"), progress=False)
    a = predict(run, tmp / "ov-cached", store=store, progress=False)
    b = predict(run, tmp / "ov-live", data=trained["folder"], overlap=24, progress=False)
    assert a.n_images == b.n_images == 1
    inst_a = np.asarray(Image.open(tmp / "ov-cached" / "big_inst.png"))
    inst_b = np.asarray(Image.open(tmp / "ov-live" / "big_inst.png"))
    assert inst_a.shape == (150, 140) and np.array_equal(inst_a, inst_b)


class Oracle(Predictor):
    """A predictor whose 'decoder' returns perfect maps of each tile's own labels."""

    def tile_maps(self, tokens, images):
        return np.stack([oracle_maps(lab, lab * 0, 0) for lab in tokens[0]])


class _Stub(torch.nn.Module):
    tile_shape, n_types, n_dist = (64, 64), 0, 4

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))


def stitched(inst, overlap):
    tile = (64, 64)
    padded = np.zeros((inst.shape[0] + 64, inst.shape[1] + 64), dtype=inst.dtype)
    padded[:inst.shape[0], :inst.shape[1]] = inst
    offsets = plan_tiles(inst.shape, tile, overlap)
    job = TiledImage("x", inst.shape, [(o, padded[o[0]:o[0] + 64, o[1]:o[1] + 64]) for o in offsets])

    def features(keys):
        return [np.stack(keys)], np.full((len(keys), 64, 64, 3), 200, np.uint8)

    (_, nuclei, _), = Oracle(_Stub(), [(0, 1), (1, 0), (1, 1), (1, -1)], batch_size=3).run(iter([job]), features)
    return nuclei["inst"], offsets


def test_stitching_keeps_every_nucleus_across_tile_borders_once():
    # Nuclei sitting on the seams of 64-px tiles that overlap by 24 px (tiles start at 0, 40, 80, ...).
    centres = [(20, 40), (20, 62), (60, 60), (60, 83), (100, 21), (100, 100), (64, 120), (30, 100)]
    inst = disk_instances((130, 135), [(r, c, 5) for r, c in centres])
    pred, offsets = stitched(inst, overlap=24)
    assert len(offsets) > 4
    assert pred.max() == inst.max() == len(centres)
    assert min(best_iou(inst, pred)) > 0.9 and min(best_iou(pred, inst)) > 0.9
    # Without overlap the same nuclei are cut at the tile borders.
    cut, _ = stitched(inst, overlap=0)
    assert cut.max() > inst.max()


def test_plan_and_cut_tiles():
    assert plan_tiles((64, 64), (64, 64)) == [(0, 0)]
    assert plan_tiles((50, 200), (64, 64), overlap=16) == [(0, 0), (0, 48), (0, 96), (0, 144)]
    with pytest.raises(ConfigError, match="overlap must lie in 0..63"):
        plan_tiles((100, 100), (64, 64), overlap=64)
    tile = cut_tile(np.zeros((10, 12, 3), np.uint8), (0, 4), (16, 16))
    assert tile.shape == (16, 16, 3) and tile[:10, :8].max() == 0 and tile[10:].min() == 255


def is_simple(ring):
    """No two non-adjacent edges of a closed ring cross."""
    def cross(a, b, c, d):
        def orient(p, q, r):
            return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))
        return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0
    edges = list(zip(ring[:-1], ring[1:]))
    return not any(cross(*edges[i], *edges[j]) for i in range(len(edges)) for j in range(i + 2, len(edges))
                   if not (i == 0 and j == len(edges) - 1))


def test_geojson_is_valid_and_round_trips():
    inst = disk_instances((48, 60), [(12, 12, 8), (14, 28, 7), (34, 40, 9)])
    inst[30:44, 4:8] = 4
    inst[40:44, 4:20] = 4  # an L shape
    fc = json.loads(json.dumps(instances_to_geojson(inst, np.array([1, 2, 3, 1]), np.array([.9, .8, .7, .6]),
                                                    PANNUKE_CLASSES)))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    for f in fc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = np.asarray(f["geometry"]["coordinates"][0])
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1]) and np.isfinite(ring).all()
        x, y = ring[:, 0], ring[:, 1]
        assert np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0  # counter-clockwise exterior (RFC 7946)
        assert is_simple(ring)
        props = f["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] in PANNUKE_CLASSES.values()
        assert 0 < props["measurements"]["score"] <= 1
    back, types = geojson_to_instances(fc, inst.shape)
    assert np.array_equal(back, inst)
    assert types[12, 12] == 1 and types[34, 40] == 3


def test_writer_layouts_read_back_and_guard_the_folder(tmp_path):
    inst = disk_instances((32, 32), [(10, 10, 5), (20, 22, 6)])
    pred = {"inst": inst, "types": np.where(inst > 0, inst + 1, 0), "score": np.ones(2), "type_id": np.array([2, 3])}
    w = PredictionWriter(tmp_path / "p", "stack", 2, PANNUKE_CLASSES, pannuke=True)
    w.add("tile00000", pred, np.zeros((32, 32, 3), np.uint8), "breast")
    w.add("tile00001", pred, None, "skin")
    w.close({"run": "r"})
    pan = read_label_maps(tmp_path / "p")
    assert pan.layout == "pannuke" and pan.tissue == ["breast", "skin"]
    assert np.array_equal(pan.types[0], pred["types"]) and pan.instances[1].max() == 2
    assert (tmp_path / "p" / "geojson" / "tile00000.geojson").exists()
    # Writing again replaces a prediction folder, but never a folder of other things.
    w = PredictionWriter(tmp_path / "p", "folder", 1, {}, overlays=False, geojson=False, with_types=False)
    w.add("a", pred)
    w.close({})
    assert read_label_maps(tmp_path / "p").names == ["a"] and not (tmp_path / "p" / "labels.npy").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a prediction folder"):
        PredictionWriter(tmp_path / "mine", "folder", 1, {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_refusals(trained, tmp_path):
    with pytest.raises(RunError, match="differs in encoder.name"):
        predict(trained["run"], tmp_path / "x", store=trained["big"], progress=False)
    other = make_store(write_conic(tmp_path / "o", n=2, seed=8), tmp_path / "o.zarr", encoder=TINY_VIT)
    with pytest.raises(ConfigError, match="holds another dataset: use --split all"):
        predict(trained["run"], tmp_path / "x", store=other, split="val", progress=False)
    with pytest.raises(ConfigError, match="either a store"):
        predict(trained["run"], tmp_path / "x", store=other, data=trained["conic"], progress=False)
    with pytest.raises(RunError, match="not a decoder run"):
        predict(tmp_path, tmp_path / "x", store=other, progress=False)
    assert not (tmp_path / "x").exists()


def test_evaluate_run_scores_the_held_out_split(trained):
    ev = evaluate_run(trained["run"])
    assert ev.protocol == "hovernet" and ev.summary["n_images"] == 2
    saved = json.loads((trained["run"] / "eval.json").read_text())
    assert saved["protocol"] == "hovernet" and len(saved["images"]) == 2
    jobs = source_images(open_store(trained["big"]))
    assert len(jobs) == 1 and jobs[0].shape == (150, 140) and len(jobs[0].tiles) == 9


# ----------------------------------------------------------------------------- test-time augmentation

def test_tta_moves_every_variant_back_exactly():
    """A perfect decoder seen through each d4 variant, moved back and averaged, is the perfect decoder itself."""
    inst = disk_instances((64, 64), [(12, 20, 6), (18, 30, 5), (40, 44, 8), (50, 15, 4)])  # two touch
    variants = tta_variants("d4")

    class Perfect(Predictor):
        def tile_maps(self, tokens, images):  # tokens: the tile's own labels, as the variant shows them
            return np.stack([oracle_maps(lab, lab * 0, 0) for lab in tokens[0]])

    seen = [np.stack([v.apply(inst, spatial=(0, 1), image=False) for v in variants])[None]]  # (1, V, H, W)
    predictor = Perfect(_Stub(), [(0, 1), (1, 0), (1, 1), (1, -1)], tta=variants)
    merged = predictor.tta_maps(seen, np.zeros((1, 64, 64, 3), np.uint8))
    np.testing.assert_allclose(merged[0], oracle_maps(inst, inst * 0, 0), atol=1e-6)
    # The distance channels really are permuted and negated: moving pixels back alone is wrong.
    rot = variants[1]
    pixels_only = rot.invert(oracle_maps(seen[0][0, 1], inst * 0, 0), spatial=(-2, -1))
    assert np.abs(pixels_only[3:] - oracle_maps(inst, inst * 0, 0)[3:]).max() > 0.5


def test_cached_and_live_tta_agree_and_differ_from_plain(trained):
    run = load_run(trained["run"])
    store = open_store(trained["stack"])
    flips = tta_variants("flips")
    cached_tokens, pixels = store_features(store, flips)([3, 0])
    live_tokens, _ = LiveFeatures(run, variants=flips)([pixels[0], pixels[1]])
    assert cached_tokens[0].shape[1] == 3
    for a, b in zip(cached_tokens, live_tokens):
        np.testing.assert_array_equal(a, b)
    predictor = Predictor(run.model, run.directions, tta=flips)
    merged = predictor.tta_maps(cached_tokens, pixels)
    np.testing.assert_array_equal(merged, predictor.tta_maps(live_tokens, pixels))
    plain = Predictor(run.model, run.directions).tile_maps([t[:, 0] for t in cached_tokens], pixels)
    assert merged.shape == plain.shape and not np.allclose(merged, plain)
    tmp = trained["tmp"]
    a = predict(trained["run"], tmp / "tta_cached", store=trained["stack"], tta="flips", progress=False)
    b = predict(trained["run"], tmp / "tta_live", data=trained["conic"], tta="flips", progress=False)
    np.testing.assert_array_equal(np.load(tmp / "tta_cached" / "labels.npy"), np.load(tmp / "tta_live" / "labels.npy"))
    assert json.loads((a.path / "prediction.json").read_text())["tta"] == "flips" and b.mode == "live"


def test_tta_refuses_variants_the_store_lacks(trained, tmp_path):
    with pytest.raises(DataError, match=r"lacks the variants rot90, rot180, rot270, transpose, antitranspose that "
                                         r"--tta d4 needs \(it caches identity, hflip, vflip\); use --tta flips"):
        predict(trained["run"], tmp_path / "x", store=trained["stack"], tta="d4", progress=False)
    with pytest.raises(ConfigError, match="tta must be one of none, flips, d4"):
        predict(trained["run"], tmp_path / "x", store=trained["stack"], tta="rot", progress=False)
    assert not (tmp_path / "x").exists()


def test_the_report_says_when_cached_scores_carry_seams(trained, tmp_path):
    from embedcache.report.study import CellResult, write_study_report

    ev = tmp_path / "ev"
    ev.mkdir()
    evaluate_run(trained["bigrun"], trained["big"], out=ev, predictions=ev / "pred")
    cell = CellResult("big", "cnn", store=trained["big"], evals={0: ev})
    write_study_report("t", [cell], {}, tmp_path / "report", "key", n_boot=100, overlays=0)
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "**Seams**: the stores of cnn cut images larger than a tile into tiles that do not overlap" in md
