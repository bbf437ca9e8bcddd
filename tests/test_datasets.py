"""Readers (PanNuke, CoNIC, folder), label maps, synthetic data, real data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from embedcache.datasets import detect_format, open_dataset, read_label_maps
from embedcache.datasets.pannuke import pannuke_masks_to_labels
from embedcache.datasets.synthetic import make_tiles, write_demo_data
from embedcache.errors import DataError


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two instance maps describe the same nuclei, whatever their ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])) and \
        bool(np.all((a == 0) == (b == 0)))


def test_conic_reader(conic_dir, tiny_tiles):
    images, labels, _ = tiny_tiles
    ds = open_dataset(conic_dir)
    assert ds.layout == "conic" and ds.n_tiles == 6 and ds.tile_shape == (64, 64)
    assert np.array_equal(ds.images([4, 1]), images[[4, 1]])
    assert np.array_equal(ds.labels(slice(None)), labels)
    assert np.array_equal(ds.labels([3, 0]), labels[[3, 0]])


def test_pannuke_reader_folds_float64_and_types(pannuke_dir, tiny_tiles):
    images, labels, tissue = tiny_tiles
    ds = open_dataset(pannuke_dir)
    assert ds.layout == "pannuke" and ds.n_tiles == 6
    assert list(ds.folds) == [0, 0, 0, 0, 1, 1]
    assert ds.tissue == list(tissue)
    assert ds.images(slice(None)).dtype == np.uint8
    assert np.array_equal(ds.images(slice(None)), images)
    got = ds.labels(slice(None))
    assert np.array_equal(got[..., 1], labels[..., 1])
    for i in range(6):
        assert same_partition(got[i, ..., 0], labels[i, ..., 0])
    assert ds.class_names[1] == "neoplastic" and ds.class_names[5] == "epithelial"


def test_pannuke_masks_with_ids_repeated_across_channels_become_unique():
    masks = np.zeros((8, 8, 6))
    masks[0:2, 0:2, 0] = 1  # neoplastic nucleus id 1
    masks[5:7, 5:7, 1] = 1  # inflammatory nucleus, also id 1
    masks[3, 3, 4] = 7      # epithelial id 7
    lab = pannuke_masks_to_labels(masks)
    assert sorted(np.unique(lab[..., 0])) == [0, 1, 2, 3]
    assert lab[0, 0, 0] != lab[5, 5, 0]
    assert (lab[0, 0, 1], lab[5, 5, 1], lab[3, 3, 1], lab[4, 4, 1]) == (1, 2, 5, 0)


def test_pannuke_tile_without_background_keeps_every_nucleus():
    masks = np.zeros((4, 4, 6))
    masks[:2, :, 2] = 3
    masks[2:, :, 2] = 9
    lab = pannuke_masks_to_labels(masks)
    assert sorted(np.unique(lab[..., 0])) == [1, 2]


def _write_folder(d, sizes):
    d.mkdir()
    rng = np.random.default_rng(0)
    out = []
    for k, (h, w) in enumerate(sizes):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        inst = np.zeros((h, w), np.uint16)
        inst[2:10, 3:12] = 5
        inst[h - 6:h - 1, w - 7:w - 2] = 900
        Image.fromarray(img).save(d / f"img{k}.png")
        Image.fromarray(inst).save(d / f"img{k}_inst.png")
        out.append((img, inst))
    return out


def test_folder_reader_tiles_any_size_with_padding(tmp_path):
    files = _write_folder(tmp_path / "f", [(100, 150), (64, 64)])
    ds = open_dataset(tmp_path / "f", tile_size=64, overlap=0)
    assert ds.layout == "folder"
    # 100x150 -> 2 rows x 3 cols; 64x64 -> 1 tile.
    assert ds.n_tiles == 7
    assert ds.tiles.valid[:6].tolist() == [[64, 64], [64, 64], [64, 22], [36, 64], [36, 64], [36, 22]]
    assert ds.tiles.offset[5].tolist() == [64, 128]
    tiles, labels = ds.images(slice(0, 6)), ds.labels(slice(0, 6))
    img, inst = files[0]
    full = np.zeros((128, 192, 3), np.uint8)
    full_lab = np.zeros((128, 192), np.int32)
    for t in range(6):
        r, c = ds.tiles.offset[t]
        full[r:r + 64, c:c + 64] = tiles[t]
        full_lab[r:r + 64, c:c + 64] = labels[t, ..., 0]
    assert np.array_equal(full[:100, :150], img)
    assert np.all(full[100:] == 255) and np.all(full[:, 150:] == 255)
    assert np.array_equal(full_lab[:100, :150], inst) and not full_lab[100:].any()
    assert ds.tiles.source_names == ["img0", "img1"]


def test_label_maps_of_a_folder_are_whole_images(tmp_path):
    files = _write_folder(tmp_path / "f", [(100, 150)])
    ls = read_label_maps(tmp_path / "f")
    assert ls.layout == "folder" and ls.names == ["img0"] and ls.types is None
    assert np.array_equal(ls.instances[0], files[0][1])


def test_label_maps_of_prediction_folder_without_images(tmp_path):
    d = tmp_path / "pred"
    d.mkdir()
    Image.fromarray(np.ones((5, 6), np.uint16)).save(d / "a_inst.png")
    Image.fromarray(np.full((5, 6), 2, np.uint8)).save(d / "a_type.png")
    ls = read_label_maps(d)
    assert ls.layout == "folder" and ls.types[0].max() == 2


def test_label_maps_of_conic_without_images(tmp_path, tiny_tiles):
    d = tmp_path / "c"
    d.mkdir()
    np.save(d / "labels.npy", tiny_tiles[1])
    ls = read_label_maps(d)
    assert ls.layout == "conic" and len(ls) == 6 and np.array_equal(ls.types[2], tiny_tiles[1][2, ..., 1])


# --- bad input --------------------------------------------------------------------------------
def test_wrong_channel_count_names_file_and_index(tmp_path, tiny_tiles):
    d = tmp_path / "c"
    d.mkdir()
    np.save(d / "images.npy", np.zeros((2, 16, 16, 2), np.uint8))
    with pytest.raises(DataError, match=r"images\.npy.*\(N, H, W, 3\)"):
        open_dataset(d)


def test_out_of_range_pixels_name_the_tile(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    images = np.zeros((3, 16, 16, 3), np.float64)
    images[2, 0, 0, 0] = 300
    np.save(d / "images.npy", images)
    ds = open_dataset(d)
    with pytest.raises(DataError, match=r"images\.npy \[2\].*0\.\.255"):
        ds.images([2])


def test_mismatched_image_and_label_counts(tmp_path, tiny_tiles):
    d = tmp_path / "c"
    d.mkdir()
    np.save(d / "images.npy", tiny_tiles[0])
    np.save(d / "labels.npy", tiny_tiles[1][:4])
    with pytest.raises(DataError, match="disagree"):
        open_dataset(d)


def test_empty_dataset(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    np.save(d / "images.npy", np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="no tiles"):
        open_dataset(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the layout"):
        open_dataset(tmp_path / "empty")


def test_negative_or_fractional_labels(tmp_path, tiny_tiles):
    d = tmp_path / "c"
    d.mkdir()
    lab = tiny_tiles[1].astype(np.float64)
    lab[0, 0, 0, 0] = 0.5
    np.save(d / "labels.npy", lab)
    with pytest.raises(DataError, match="whole numbers"):
        read_label_maps(d)
    np.save(d / "labels.npy", -tiny_tiles[1])
    with pytest.raises(DataError, match=">= 0"):
        read_label_maps(d)


def test_folder_with_some_label_maps_missing(tmp_path):
    _write_folder(tmp_path / "f", [(20, 20), (20, 20)])
    (tmp_path / "f" / "img1_inst.png").unlink()
    with pytest.raises(DataError, match="img1.png has no _inst"):
        open_dataset(tmp_path / "f")


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown format"):
        open_dataset(tmp_path, format="tiff")


def test_detect_format(pannuke_dir, conic_dir):
    assert detect_format(pannuke_dir) == "pannuke"
    assert detect_format(conic_dir) == "conic"


# --- synthetic ---------------------------------------------------------------------------------
def test_synthetic_tiles_are_deterministic_and_varied():
    a = make_tiles(5, seed=7, size=128)
    b = make_tiles(5, seed=7, size=128)
    c = make_tiles(5, seed=8, size=128)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    images, labels, tissue = make_tiles(20, seed=0)
    assert set(np.unique(labels[..., 1])) == {0, 1, 2, 3, 4, 5}
    assert len(set(tissue)) == 5
    inst = labels[..., 0]
    # Touching nuclei: neighbouring pixels that belong to two different nuclei.
    touching = (inst[:, :, 1:] > 0) & (inst[:, :, :-1] > 0) & (inst[:, :, 1:] != inst[:, :, :-1])
    assert touching.any()
    # Nuclei are darker than the background.
    fg = inst > 0
    assert images[fg].mean() < images[~fg].mean() - 40


def test_write_demo_data_is_pannuke_layout(tmp_path):
    write_demo_data(tmp_path / "d", n_tiles=7, seed=1, folds=3)
    ds = open_dataset(tmp_path / "d")
    assert ds.layout == "pannuke" and ds.n_tiles == 7 and sorted(set(ds.folds)) == [0, 1, 2]
    assert not list((tmp_path / "d").rglob(".*tmp*"))


# --- real data -----------------------------------------------------------------------------------
def test_real_conic_tiles_with_sparse_ids():
    ds = open_dataset(shared_data("he-nuclei-3"))
    lab = ds.labels(slice(None))
    counts = [len(np.unique(lab[i, ..., 0])) - 1 for i in range(3)]
    assert counts == [20, 47, 58]
    assert lab[..., 0].max() > 125  # sparse ids, as the data's README warns


def test_real_folder_images_of_odd_sizes():
    ds = open_dataset(shared_data("cpm15-dev"), overlap=0)
    ls = read_label_maps(shared_data("cpm15-dev"))
    assert len(ls) == 11
    assert len(np.unique(ls.instances[ls.names.index("image01")])) - 1 == 351
    assert ds.n_tiles == sum(-(-m.shape[0] // 256) * -(-m.shape[1] // 256) for m in ls.instances)
    # By default neighbouring tiles overlap by a quarter tile, as live prediction cuts the images.
    from embedcache.geometry import plan_tiles

    default = open_dataset(shared_data("cpm15-dev"))
    assert default.overlap == 64 and default.describe()["overlap"] == 64
    assert default.n_tiles == sum(len(plan_tiles(m.shape, (256, 256), 64)) for m in ls.instances) > ds.n_tiles
    assert default.fingerprint() != ds.fingerprint()
