"""Cells: pooling exact on hand-made masks, which tile each nucleus is pooled in, cell stores built
end to end from labels, label maps and points, resumed after an interruption, and one clear error
per bad input.

Two tiny real stores are built once: a CoNIC stack of 6 tiles of 64x64 with class names, and one
100x90 folder image cut into four overlapping 64-px tiles; both through a random tiny ViT with
the identity and two flips. Expected vectors are pooled here by a separate route (the mask's
pixels gathered from the token grid, grid cells of 16 px) and compared within float16 rounding.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_VIT
from decoder_helpers import make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)
from PIL import Image

from embedcache import open_store
from embedcache.cells import build_cells
from embedcache.cells.nuclei import discs, image_nuclei, read_points
from embedcache.cells.pool import cell_weights, inst_to_cells, patch_of_pixel, pool_cells
from embedcache.config import CellsConfig
from embedcache.errors import DataError, StoreError, StoreMismatchError
from embedcache.files import partial_path
from embedcache.geometry import TiledImage
from embedcache.store.cells import CellStore, CellWriter
from embedcache.store.reader import Store
from embedcache.store.verify import verify_store

pytestmark = pytest.mark.usefixtures("one_thread")

CONIC_NAMES = {1: "neutrophil", 2: "epithelial", 3: "lymphocyte", 4: "plasma", 5: "eosinophil", 6: "connective"}
BIG_SHAPE = (100, 90)
BIG_ORIGINS = [(0, 0), (0, 40), (40, 0), (40, 40)]  # 64-px tiles overlapping by 24 px


# ----------------------------------------------------------------------------
# Two tiny stores, and cell stores built from them
# ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from embedcache.datasets.synthetic import make_tiles

    tmp = tmp_path_factory.mktemp("cells")
    conic = write_conic(tmp / "conic", n=6)
    header = ",".join(CONIC_NAMES.values())
    (conic / "counts.csv").write_text(header + "\n" + "0,0,0,0,0,0\n" * 6)  # gives the store class names
    stack = make_store(conic, tmp / "stack.zarr", encoder=TINY_VIT)
    folder = tmp / "folder"
    folder.mkdir()
    images, labels, _ = make_tiles(1, seed=9, size=160)
    H, W = BIG_SHAPE
    Image.fromarray(images[0][:H, :W]).save(folder / "big.png")
    Image.fromarray(labels[0, :H, :W, 0].astype(np.uint16)).save(folder / "big_inst.png")
    Image.fromarray(labels[0, :H, :W, 1].astype(np.uint8)).save(folder / "big_type.png")
    big = make_store(folder, tmp / "big.zarr", encoder=TINY_VIT, tile_size=64, overlap=24)
    stack_cells = build_cells(stack, tmp / "stack.cells", CellsConfig(), progress=False)
    big_cells = build_cells(big, tmp / "big.cells", CellsConfig(), progress=False)
    return {"tmp": tmp, "conic": conic, "stack": stack, "big": big, "stack_cells": stack_cells,
            "big_cells": big_cells, "labels": np.load(conic / "labels.npy"),
            "big_inst": labels[0, :H, :W, 0].astype(np.int64), "big_type": labels[0, :H, :W, 1].astype(np.int64)}


def by_hand(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token of the patch under each pixel of ``mask``: tokens ``(C, h, w)``, mask ``(H, W)``."""
    _, h, w = tokens.shape
    H, W = mask.shape
    assert H % h == 0 and W % w == 0
    rows, cols = np.nonzero(mask)
    return tokens[:, rows // (H // h), cols // (W // w)].mean(axis=1)


def close(got, want):
    """Equal within the float16 rounding of the stored tokens and vectors."""
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * max(1.0, float(np.abs(want).max())))


def refused(store, out: Path, config: CellsConfig, error, *words):
    """``build_cells`` raises ``error`` naming ``words``, and writes nothing."""
    with pytest.raises(error) as info:
        build_cells(store, out, config, progress=False)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "\n" not in message
    assert not out.exists() and not partial_path(out).exists()
    return message


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ----------------------------------------------------------------------------
# Pooling on hand-made masks
# ----------------------------------------------------------------------------

def test_a_nucleus_inside_one_patch_gets_that_patch_token():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(1, 3, 2, 2)).astype(np.float32)  # an 8x8 tile, 4-px patches
    inst = np.zeros((8, 8), int)
    inst[5:7, 6] = 4  # in patch (1, 1)
    inst[0, 1] = 9  # in patch (0, 0)
    w = cell_weights(inst_to_cells(inst, [4, 9]), (2, 2), 2)
    assert w.tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]
    vec = pool_cells(tokens, w)
    np.testing.assert_allclose(vec[0, 0], tokens[0, :, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(vec[1, 0], tokens[0, :, 0, 0], rtol=1e-6)


def test_a_nucleus_across_patch_borders_gets_the_area_weighted_mean():
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(1, 5, 2, 2)).astype(np.float32)
    t = tokens[0]
    inst = np.zeros((8, 8), int)
    inst[1:6, 2:5] = 3  # 15 px: rows 1-3 x cols 2-3 in (0,0) = 6, rows 1-3 x col 4 in (0,1) = 3,
    #                     rows 4-5 x cols 2-3 in (1,0) = 4, rows 4-5 x col 4 in (1,1) = 2
    inst[7, 7] = 1
    w = cell_weights(inst_to_cells(inst, [3, 1]), (2, 2), 2)
    np.testing.assert_allclose(w[0], np.array([6, 3, 4, 2]) / 15, rtol=1e-6)
    want = (6 * t[:, 0, 0] + 3 * t[:, 0, 1] + 4 * t[:, 1, 0] + 2 * t[:, 1, 1]) / 15
    np.testing.assert_allclose(pool_cells(tokens, w)[0, 0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)


def test_a_grid_that_does_not_divide_the_tile():
    # A 10x7 tile on a 3x2 grid: rows 0-3 / 4-6 / 7-9, cols 0-3 / 4-6.
    want_rows = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    want_cols = [0, 0, 0, 0, 1, 1, 1]
    patch = patch_of_pixel((10, 7), (3, 2))
    assert patch.shape == (10, 7)
    assert patch.tolist() == [[r * 2 + c for c in want_cols] for r in want_rows]
    inst = np.zeros((10, 7), int)
    inst[3:5, 3:5] = 2  # (3,3) in (0,0), (3,4) in (0,1), (4,3) in (1,0), (4,4) in (1,1)
    inst[5, 4] = 2  # (1,1) again
    inst[9, 0] = 6  # (2,0)
    w = cell_weights(inst_to_cells(inst, [2, 6]), (3, 2), 2)
    np.testing.assert_allclose(w[0], [0.2, 0.2, 0.2, 0.4, 0, 0], rtol=1e-6)
    assert w[1].tolist() == [0, 0, 0, 0, 1, 0]
    rng = np.random.default_rng(2)
    tokens = rng.normal(size=(1, 4, 3, 2)).astype(np.float32)
    t = tokens[0]
    want = 0.2 * (t[:, 0, 0] + t[:, 0, 1] + t[:, 1, 0]) + 0.4 * t[:, 1, 1]
    np.testing.assert_allclose(pool_cells(tokens, w)[0, 0], want, rtol=1e-5, atol=1e-6)


def test_several_variants_are_pooled_at_once_and_an_absent_cell_gets_zeros():
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(3, 6, 2, 2)).astype(np.float32)
    inst = np.zeros((4, 4), int)
    inst[0, 0:3] = 1  # 2 px in (0,0), 1 px in (0,1)
    inst[3, 3] = 2
    w = cell_weights(inst_to_cells(inst, [1, 2, 8]), (2, 2), 3)  # 8 has no pixel
    vec = pool_cells(tokens, w)
    assert vec.shape == (3, 3, 6) and vec.dtype == np.float32
    for v in range(3):
        np.testing.assert_allclose(vec[0, v], (2 * tokens[v, :, 0, 0] + tokens[v, :, 0, 1]) / 3, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(vec[1, v], tokens[v, :, 1, 1], rtol=1e-6)
    assert not w[2].any() and not vec[2].any()


def test_inst_to_cells_ignores_background_and_ids_not_listed():
    inst = np.array([[0, 3, 3],
                     [5, 7, 0],
                     [7, 5, 3]])
    got = inst_to_cells(inst, [7, 3])
    assert got.tolist() == [[-1, 1, 1],
                            [-1, 0, -1],
                            [0, -1, 1]]
    # ids beyond the map's largest are fine, and match nothing
    assert inst_to_cells(inst, [12]).tolist() == [[-1] * 3] * 3
    assert (inst_to_cells(np.zeros((2, 2), int), []) == -1).all()


# ----------------------------------------------------------------------------
# Which tile a nucleus is pooled in
# ----------------------------------------------------------------------------

def test_image_nuclei_picks_the_nearest_whole_tile_else_the_one_holding_most():
    # Two 40x40 tiles of a 40x64 image, at cols 0 and 24: tile 0 holds cols 0-39, tile 1 cols 24-63;
    # their centres are at cols 19.5 and 43.5 (pixel indices), 31.5 between them.
    image = TiledImage("im", (40, 64), [((0, 0), 0), ((0, 24), 1)])
    valid = np.array([[40, 40], [40, 40]])
    inst = np.zeros((40, 64), int)
    types = np.zeros((40, 64), int)
    inst[10:13, 26:30] = 1  # whole in both, centroid col 27.5: nearer tile 0
    inst[10:13, 34:38] = 2  # whole in both, centroid col 35.5: nearer tile 1
    types[10:13, 34:38] = 3
    inst[20, 31:33] = 5  # whole in both, centroid col (31 + 32 + 32) / 3 = 31.67, a sixth of a pixel
    inst[21, 32] = 5  #      past the middle: nearer tile 1 (the tile centres are in pixel indices too)
    inst[30, 21:42] = 7  # 21 px, whole in neither: 19 (cols 21-39) in tile 0, 18 (cols 24-41) in tile 1
    inst[2:4, 50:53] = 9  # whole in tile 1 only; 4 px of type 2, 2 of type 1: type 2
    types[2:4, 50:52] = 2
    types[2:4, 52] = 1
    got = image_nuclei(inst, types, image, (40, 40), valid)
    assert got["instance"].tolist() == [1, 7, 2, 5, 9]  # by tile, then instance
    assert got["tile"].tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_allclose(got["coverage"], [1, 19 / 21, 1, 1, 1], rtol=1e-6)
    assert got["area"].tolist() == [12, 21, 12, 3, 6]
    np.testing.assert_allclose(got["centroid"], [[11, 27.5], [30, 31], [11, 35.5], [20 + 1 / 3, 31 + 2 / 3],
                                                 [2.5, 51]], rtol=1e-9)
    assert got["type"].tolist() == [0, 0, 3, 0, 2]
    assert image_nuclei(inst, None, image, (40, 40), valid)["type"].tolist() == [0] * 5
    assert len(image_nuclei(np.zeros((40, 64), int), None, image, (40, 40), valid)["instance"]) == 0


# ----------------------------------------------------------------------------
# End to end on the tiny stores
# ----------------------------------------------------------------------------

def stack_nuclei(labels):
    """(tile, instance) -> (mask, type) of every nucleus of a stack's label maps, by a plain loop."""
    out = {}
    for t in range(len(labels)):
        for i in np.unique(labels[t, ..., 0]):
            if i:
                mask = labels[t, ..., 0] == i
                out[t, int(i)] = mask, int(np.bincount(labels[t, ..., 1][mask]).argmax())
    return out


def test_stack_cells_are_every_nucleus_with_its_table(data):
    nuclei = stack_nuclei(data["labels"])
    cells = open_store(data["tmp"] / "stack.cells")
    assert isinstance(cells, CellStore) and cells.complete
    assert cells.n_cells == len(nuclei) == data["stack_cells"].n_cells
    table = cells.table()
    keys = list(zip(table["tile"].tolist(), table["instance"].tolist()))
    assert sorted(keys) == sorted(nuclei)
    for k, (t, i) in enumerate(keys):
        mask, _ = nuclei[t, i]
        rows, cols = np.nonzero(mask)
        assert table["area"][k] == mask.sum()
        np.testing.assert_allclose(table["centroid"][k], [rows.mean(), cols.mean()], rtol=1e-9)
    assert (table["coverage"] == 1).all() and (table["source"] == table["tile"]).all()
    want = Counter(ty for _, ty in nuclei.values())
    assert Counter(table["type"].tolist()) == want
    assert data["stack_cells"].types == {CONIC_NAMES[t]: n for t, n in want.items()}
    assert cells.class_names == CONIC_NAMES
    assert cells.variants == ["identity", "hflip", "vflip"] and cells.layers == open_store(data["stack"]).layers
    assert verify_store(cells) == []


def test_stack_vectors_are_the_weighted_mean_of_the_tokens_under_each_nucleus(data):
    store, cells = open_store(data["stack"]), open_store(data["tmp"] / "stack.cells")
    table = cells.table()
    nuclei = stack_nuclei(data["labels"])
    for layer in store.layers:
        got = cells.vectors(layer, variant=None)  # (n, V, C)
        assert got.shape == (cells.n_cells, 3, store.layout(layer).shape[0])
        ident = store.tokens(layer, slice(None))
        hflip = store.tokens(layer, slice(None), variant="hflip")[..., :, ::-1]  # flipped back by hand
        vflip = store.tokens(layer, slice(None), variant="vflip")[..., ::-1, :]
        for k, (t, i) in enumerate(zip(table["tile"], table["instance"])):
            mask = nuclei[int(t), int(i)][0]
            close(got[k, 0], by_hand(ident[t], mask))
            close(got[k, 1], by_hand(hflip[t], mask))
            close(got[k, 2], by_hand(vflip[t], mask))
    # The flips are pooled in the identity's frame: pooling their raw tokens would give other vectors.
    layer = store.layers[-1]
    raw = store.tokens(layer, slice(None), variant="hflip")
    got = cells.vectors(layer, variant="hflip")
    off = [np.abs(got[k] - by_hand(raw[t], nuclei[int(t), int(i)][0])).max()
           for k, (t, i) in enumerate(zip(table["tile"], table["instance"]))]
    assert max(off) > 0.05


def test_identity_only_stores_one_variant_equal_to_the_first(data, tmp_path):
    result = build_cells(data["stack"], tmp_path / "id.cells", CellsConfig(variants="identity", layers="last"),
                         progress=False)
    cells, full = open_store(tmp_path / "id.cells"), open_store(data["tmp"] / "stack.cells")
    assert result.variants == cells.variants == ["identity"]
    assert cells.layers == [full.layers[-1]]
    got = cells.vectors("last", variant=None)
    assert got.shape[1] == 1
    np.testing.assert_array_equal(got[:, 0], full.vectors(full.layers[-1], variant=0))
    assert verify_store(cells) == []


def test_overlapping_tiles_pool_each_nucleus_once_in_a_tile_holding_it(data):
    inst = data["big_inst"]
    store, cells = open_store(data["big"]), open_store(data["tmp"] / "big.cells")
    info = store.tile_info()
    assert [tuple(o) for o in info["offset"]] == BIG_ORIGINS
    ids = [int(i) for i in np.unique(inst) if i]
    table = cells.table()
    assert sorted(table["instance"].tolist()) == ids  # once each, though the tiles overlap
    assert cells.source_names == ["big"] and (table["source"] == 0).all()
    assert verify_store(cells) == []
    tokens = {layer: store.tokens(layer, slice(None), variant=None) for layer in store.layers}
    for k, (t, i) in enumerate(zip(table["tile"].tolist(), table["instance"].tolist())):
        mask = inst == i
        inside = []
        for (r, c), (h, w) in zip(BIG_ORIGINS, info["valid"]):
            inside.append(int(mask[r:r + h, c:c + w].sum()))
        whole = [j for j, n in enumerate(inside) if n == mask.sum()]
        if whole:
            assert t in whole and table["coverage"][k] == 1
        else:
            assert inside[t] == max(inside)
            assert table["coverage"][k] == pytest.approx(inside[t] / mask.sum(), rel=1e-6)
        r, c = BIG_ORIGINS[t]
        crop = np.zeros((64, 64), bool)
        part = mask[r:r + 64, c:c + 64]
        crop[:part.shape[0], :part.shape[1]] = part
        layer = store.layers[k % len(store.layers)]
        got = cells.vectors(layer, [k], variant=None)[0]
        close(got[0], by_hand(tokens[layer][t, 0], crop))
        close(got[2], by_hand(tokens[layer][t, 2][:, ::-1, :], crop))
    types = data["big_type"]
    want = Counter(int(np.bincount(types[inst == i]).argmax()) for i in ids)
    assert Counter(table["type"].tolist()) == want


def test_a_cell_store_opens_verifies_and_is_not_taken_for_a_store(data, tmp_path):
    cells = open_store(data["tmp"] / "stack.cells")
    assert cells.summary()["n_cells"] == cells.n_cells and cells.summary()["complete"]
    refused(data["tmp"] / "stack.cells", tmp_path / "again.cells", CellsConfig(), StoreError, "is a cell store")


# ----------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------

def interrupted(monkeypatch, store, out, config, after: int = 1):
    """Run a build that fails on the ``after + 1``-th unit written."""
    real = CellWriter.write_unit
    calls = []

    def write_unit(self, unit, vectors):
        calls.append(unit)
        if len(calls) > after:
            raise RuntimeError("killed")
        return real(self, unit, vectors)

    monkeypatch.setattr(CellWriter, "write_unit", write_unit)
    with pytest.raises(RuntimeError, match="killed"):
        build_cells(store, out, config, progress=False)
    monkeypatch.setattr(CellWriter, "write_unit", real)


def test_an_interrupted_build_resumes_with_only_the_units_left(data, tmp_path, monkeypatch):
    out = tmp_path / "resumed.cells"
    config = CellsConfig(unit_tiles=2)  # 6 one-tile images: 3 units
    interrupted(monkeypatch, data["stack"], out, config)
    assert not out.exists() and partial_path(out).exists()
    part = open_store(out)
    assert isinstance(part, CellStore) and not part.complete
    assert part.units_done() == (1, 3)
    assert any("incomplete" in p for p in verify_store(part))

    real = CellWriter.write_unit
    ran = []
    monkeypatch.setattr(CellWriter, "write_unit", lambda self, u, v: (ran.append(u), real(self, u, v)))
    log = tmp_path / "log"
    monkeypatch.setenv("EMBEDCACHE_UNIT_LOG", str(log))
    result = build_cells(data["stack"], out, config, progress=False)
    assert ran == [1, 2] and result.units == 3 and result.units_run == 2
    # The units' pooling weights were left in the partial: no nucleus measured again.
    assert [line.split()[1] for line in log.read_text().splitlines()] == ["cells-000001", "cells-000002"]
    assert out.exists() and not partial_path(out).exists()
    assert_same_cells(open_store(out), open_store(data["tmp"] / "stack.cells"))


def assert_same_cells(cells, once):
    """``cells`` complete, intact, and holding the vectors and table of ``once``."""
    assert cells.complete and verify_store(cells) == []
    for layer in once.layers:
        np.testing.assert_array_equal(cells.vectors(layer, variant=None), once.vectors(layer, variant=None))
    for column, values in once.table().items():
        np.testing.assert_array_equal(cells.table()[column], values)


def test_a_partial_made_otherwise_is_refused_unless_overwrite(data, tmp_path, monkeypatch):
    out = tmp_path / "other.cells"
    interrupted(monkeypatch, data["stack"], out, CellsConfig(unit_tiles=2))
    with pytest.raises(StoreMismatchError, match="other settings") as info:
        build_cells(data["stack"], out, CellsConfig(unit_tiles=2, layers="last"), progress=False)
    assert "overwrite" in str(info.value)
    assert not out.exists() and open_store(out).units_done() == (1, 3)  # the partial is kept as it was
    result = build_cells(data["stack"], out, CellsConfig(unit_tiles=2, layers="last"), overwrite=True,
                         progress=False)
    assert result.units_run == 3 and open_store(out).layers == [open_store(data["stack"]).layers[-1]]


def test_an_existing_cell_store_is_refused_without_overwrite(data, tmp_path):
    out = tmp_path / "done.cells"
    first = build_cells(data["stack"], out, CellsConfig(layers="last", variants="identity"), progress=False)
    # The same command again does nothing and says so (it was refused as if the cells were another's).
    again = build_cells(data["stack"], out, CellsConfig(layers="last", variants="identity"), progress=False)
    assert again.skipped and again.units_run == 0 and (again.n_cells, again.types) == (first.n_cells, first.types)
    with pytest.raises(StoreError, match="exists and holds other cells .*; pass --overwrite"):
        build_cells(data["stack"], out, CellsConfig(layers="last"), progress=False)
    assert open_store(out).variants == ["identity"]
    build_cells(data["stack"], out, CellsConfig(layers="last"), overwrite=True, progress=False)
    assert open_store(out).variants == ["identity", "hflip", "vflip"]


# ----------------------------------------------------------------------------
# Bad input: one clear error, nothing written
# ----------------------------------------------------------------------------

def test_a_store_without_labels_needs_another_nuclei_source(data, tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "has_labels", property(lambda self: False))
    refused(data["stack"], tmp_path / "c", CellsConfig(), DataError, "no label maps", "--nuclei")


def test_label_maps_of_another_number_of_tiles(data, tmp_path):
    five = tmp_path / "five"
    five.mkdir()
    np.save(five / "labels.npy", data["labels"][:5])
    refused(data["stack"], tmp_path / "c", CellsConfig(nuclei=str(five)), DataError,
            "5 label maps", "6 tiles")


def test_a_label_map_of_the_wrong_shape(data, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.fromarray(data["big_inst"][:, :80].astype(np.uint16)).save(maps / "big_inst.png")
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(maps)), DataError,
            "'big'", "100x80", "100x90")


def test_label_maps_named_after_no_image_of_the_store(data, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.fromarray(data["big_inst"].astype(np.uint16)).save(maps / "small_inst.png")
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(maps)), DataError, "'small'", "no image")


def test_label_maps_from_a_folder_give_the_store_cells(data, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.fromarray(data["big_inst"].astype(np.uint16)).save(maps / "big_inst.png")
    Image.fromarray(data["big_type"].astype(np.uint8)).save(maps / "big_type.png")
    build_cells(data["big"], tmp_path / "c", CellsConfig(nuclei=str(maps)), progress=False)
    got, want = open_store(tmp_path / "c"), open_store(data["tmp"] / "big.cells")
    assert got.nuclei["kind"] == "labels" and got.nuclei["source"] == str(maps)
    for column, values in want.table().items():
        np.testing.assert_array_equal(got.table()[column], values)
    np.testing.assert_array_equal(got.vectors("last", variant=None), want.vectors("last", variant=None))


def test_a_point_outside_the_image(data, tmp_path):
    points = write_csv(tmp_path / "p.csv", ["image", "x", "y", "label"], [["big", 10, 10, "a"], ["big", 90, 5, "a"]])
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(points)), DataError,
            "(90, 5)", "'big'", "outside", "90x100")


def test_points_with_a_label_none_of_the_store_classes(data, tmp_path):
    points = write_csv(tmp_path / "p.csv", ["image", "x", "y", "label"],
                       [["tile00000", 10, 10, "Lymphocyte"], ["tile00001", 5, 5, "Alien"]])
    refused(data["stack"], tmp_path / "c", CellsConfig(nuclei=str(points)), DataError,
            "'Alien'", "none of the store's classes", "lymphocyte")


def test_points_of_an_image_the_store_does_not_have(data, tmp_path):
    points = write_csv(tmp_path / "p.csv", ["image", "x", "y"], [["big", 10, 10], ["elsewhere", 5, 5]])
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(points)), DataError,
            "'elsewhere'", "no image of the store", "'big'")


def test_a_points_csv_without_x_and_y(data, tmp_path):
    points = write_csv(tmp_path / "p.csv", ["image", "col", "row"], [["big", 10, 10]])
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(points)), DataError,
            "image,x,y", "col,row")
    points = write_csv(tmp_path / "q.csv", ["image", "x", "y"], [["big", "ten", 10]])
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(points)), DataError, "q.csv:2", "numbers")


def test_a_source_with_no_nuclei(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(empty / "labels.npy", np.zeros_like(data["labels"]))
    refused(data["stack"], tmp_path / "c", CellsConfig(nuclei=str(empty)), DataError,
            "no nuclei", "6 images")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "big.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]}}]}))
    refused(data["big"], tmp_path / "c", CellsConfig(nuclei=str(nothing)), DataError, "no Point features")


# ----------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------

def disc_by_hand(shape, x, y, r):
    """Pixels whose centre (col + 0.5, row + 0.5) lies within ``r`` of (x, y), by a plain loop."""
    out = np.zeros(shape, bool)
    for row in range(shape[0]):
        for col in range(shape[1]):
            out[row, col] = (col + 0.5 - x) ** 2 + (row + 0.5 - y) ** 2 <= r * r
    return out


def test_points_become_discs_of_the_radius():
    inst, types = discs((30, 30), np.array([[10.5, 20.5], [22.3, 7.8]]), 3.0, np.array([2, 0]))
    # a point at a pixel's centre: offsets with dr^2 + dc^2 <= 9: 7 + 2 * 5 + 2 * 5 + 2 * 1
    assert (inst == 1).sum() == 29
    assert inst[20, 10] == 1 and inst[10, 20] == 0  # x is along columns, y along rows
    np.testing.assert_array_equal(inst == 2, disc_by_hand((30, 30), 22.3, 7.8, 3.0))
    np.testing.assert_array_equal(types, np.where(inst == 1, 2, 0))
    # Where two discs meet, each pixel goes to the nearer point.
    a, b = (10.5, 10.5), (14.0, 11.0)
    inst, _ = discs((24, 24), np.array([a, b]), 3.0)
    da, db = disc_by_hand((24, 24), *a, 3.0), disc_by_hand((24, 24), *b, 3.0)
    rows, cols = np.indices((24, 24)) + 0.5
    nearer_a = (cols - a[0]) ** 2 + (rows - a[1]) ** 2 <= (cols - b[0]) ** 2 + (rows - b[1]) ** 2
    want = np.where(da & (nearer_a | ~db), 1, np.where(db, 2, 0))
    np.testing.assert_array_equal(inst, want)


def test_points_cells_take_disc_areas_and_the_store_class_ids(data, tmp_path):
    points = write_csv(tmp_path / "p.csv", ["image", "x", "y", "label"],
                       [["tile00000", 10.5, 10.5, "Neutrophil"], ["tile00000", 40.5, 44.5, "lymphocyte"],
                        ["tile00000", 30.5, 12.5, ""], ["tile00003", 20.0, 50.2, "Connective"]])
    result = build_cells(data["stack"], tmp_path / "p.cells", CellsConfig(nuclei=str(points), radius=3.0),
                         progress=False)
    cells = open_store(tmp_path / "p.cells")
    table = cells.table()
    assert result.n_cells == 4
    assert table["tile"].tolist() == [0, 0, 0, 3] and table["instance"].tolist() == [1, 2, 3, 1]
    assert table["type"].tolist() == [1, 3, 0, 6]
    assert result.types == {"neutrophil": 1, "lymphocyte": 1, "unknown": 1, "connective": 1}
    last = disc_by_hand((64, 64), 20.0, 50.2, 3.0)
    assert table["area"].tolist() == [29, 29, 29, int(last.sum())]
    np.testing.assert_allclose(table["centroid"][0], [10.0, 10.0])
    np.testing.assert_allclose(table["centroid"][1], [44.0, 40.0])
    assert cells.nuclei["kind"] == "points" and cells.nuclei["radius"] == 3.0
    store = open_store(data["stack"])
    layer = store.layers[1]
    close(cells.vectors(layer, [3])[0], by_hand(store.tokens(layer, 3), last))
    close(cells.vectors(layer, [1], variant="vflip")[0],
          by_hand(store.tokens(layer, 0, variant="vflip")[:, ::-1, :], disc_by_hand((64, 64), 40.5, 44.5, 3.0)))


def test_qupath_geojson_points_read_as_the_same_csv(data, tmp_path):
    pts = [(12.5, 8.5, "Tumor"), (60.0, 30.25, "Lymphocyte"), (45.5, 70.5, ""), (85.0, 95.0, "Tumor")]
    table = write_csv(tmp_path / "p.csv", ["image", "x", "y", "label"], [["big", *p] for p in pts])
    per_image = tmp_path / "csvs"
    per_image.mkdir()
    write_csv(per_image / "big.csv", ["x", "y", "label"], pts)
    qupath = tmp_path / "qupath"
    qupath.mkdir()
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
                 "properties": {"objectType": "annotation",
                                **({"classification": {"name": label, "color": [200, 0, 0]}} if label else {})}}
                for x, y, label in pts]
    features.append({"type": "Feature", "geometry": {"type": "Polygon",
                                                     "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
                     "properties": {"objectType": "annotation"}})  # an outline: not a point
    (qupath / "big.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    want = {"big": [(float(x), float(y), label) for x, y, label in pts]}
    assert read_points(table) == read_points(per_image) == read_points(qupath) == want

    built = {}
    for name, source in (("csv", table), ("geojson", qupath)):
        build_cells(data["big"], tmp_path / f"{name}.cells", CellsConfig(nuclei=str(source), radius=4.0),
                    progress=False)
        built[name] = open_store(tmp_path / f"{name}.cells")
    a, b = built["csv"], built["geojson"]
    assert a.n_cells == 4 and a.class_names == b.class_names == {1: "Lymphocyte", 2: "Tumor"}
    assert sorted(a.table()["type"].tolist()) == [0, 1, 2, 2]
    for column, values in a.table().items():
        np.testing.assert_array_equal(b.table()[column], values)
    np.testing.assert_array_equal(a.vectors("last", variant=None), b.vectors("last", variant=None))
    # the disc at (85, 95) lies 5 px from the image's right and bottom edges: whole in the last tile only
    k = int(np.flatnonzero(a.table()["instance"] == 4)[0])
    assert a.table()["tile"][k] == 3 and a.table()["area"][k] == disc_by_hand(BIG_SHAPE, 85.0, 95.0, 4.0).sum()


# ----------------------------------------------------------------------------
# Several processes building one cell store
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kill", [False, True])
def test_processes_share_one_cell_build(data, tmp_path, kill):
    from process_helpers import run_together

    from embedcache.claims import claims_place

    out, log = tmp_path / "shared.cells", tmp_path / "log"
    ran = run_together(["cells", "--store", str(data["stack"]), "--out", str(out), "--unit-tiles", "1", "--quiet"],
                       3, log, kill)
    assert sum("wrote " in s for s in ran.stdout) == 1, ran.stdout
    pooled = {n: c for n, c in ran.units.items() if n.startswith("cells-")}
    measured = {n: c for n, c in ran.units.items() if n.startswith("nuclei-")}
    assert max(pooled.values()) == 1, pooled  # no unit pooled twice
    assert len(pooled) >= (5 if kill else 6)  # the killed process may die between its last write and its log line
    # Nuclei are measured once, by the process creating the cell store; the others read its units' weights. Killed
    # while measuring, its units are measured again by the process that creates the store after it.
    assert sorted(measured) == [f"nuclei-{u:06d}" for u in range(6)], measured
    assert max(measured.values()) <= (2 if kill else 1), measured
    assert_same_cells(open_store(out), open_store(data["tmp"] / "stack.cells"))
    assert not partial_path(out).exists() and not claims_place(out).exists()
