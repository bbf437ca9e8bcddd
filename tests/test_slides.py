"""Slides as a data source: backends, microns per pixel, tissue, tiling, GeoJSON labels, bad input.

Also the shared helpers other test modules use: :func:`slides_dir` (tiny
synthetic slides, made once per process) and :func:`slides_store` (one
extraction of them with a tiny encoder).
"""

from __future__ import annotations

import atexit
import functools
import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from embedcache.datasets import detect_format, open_dataset
from embedcache.datasets.annotations import read_geojson, tile_labels
from embedcache.datasets.slides import SlideDataset
from embedcache.datasets.wsi import OpenSlideSlide, TiffSlide, box_fractions, open_slide, tissue_mask
from embedcache.datasets.synthetic_slides import make_slide, write_slide_tiff, write_synthetic_slides
from embedcache.errors import ConfigError, DataError

SIZE, MPP, TILE, SEED = 1024, 0.5, 64, 7


def _tempdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


@functools.lru_cache(maxsize=None)
def slides_dir() -> Path:
    """Three 1024x1024 synthetic slides at 0.5 um/px, 3 levels, with GeoJSON (made once)."""
    d = _tempdir("embedcache-slides-") / "slides"
    write_synthetic_slides(d, n_slides=3, shape=(SIZE, SIZE), mpp=MPP, seed=SEED)
    return d


@functools.lru_cache(maxsize=None)
def slides_store() -> Path:
    """``slides_dir()`` extracted with timm:test_resnet (random weights), 64-px tiles, flips (made once)."""
    from embedcache.config import ExtractConfig
    from embedcache.extract import extract

    out = _tempdir("embedcache-slides-store-") / "slides.zarr"
    config = ExtractConfig(encoder="timm:test_resnet", weights="random", variants="none", tile_size=TILE,
                           loader_workers=0, unit_tiles=64, batch_size=96, format="slides")
    extract(slides_dir(), out, config, progress=False)
    return out


@functools.lru_cache(maxsize=None)
def truth(k: int):
    """The synthetic slide behind ``slide_00k.tif``, with its masks."""
    return make_slide((SIZE, SIZE), MPP, seed=SEED * 1000 + k)


@pytest.fixture(scope="module")
def dataset():
    return SlideDataset(slides_dir(), tile_size=TILE, tile_mpp=MPP, min_tissue=0.5)


def _mask_fraction(mask: np.ndarray, r: int, c: int, side: int) -> float:
    return float(mask[r:r + side, c:c + side].mean())


def test_tiles_are_level0_crops_on_tissue(dataset):
    ti = dataset.tiles
    assert dataset.n_tiles > 200 and ti.source_names == ["slide_000", "slide_001", "slide_002"]
    assert np.all(ti.offset % TILE == 0) and np.all(ti.offset + TILE <= SIZE)
    assert np.all(ti.valid == TILE)
    for k in range(3):
        tissue = truth(k).masks["tissue"]
        kept = {tuple(o) for o in ti.offset[ti.source == k]}
        grid = [(r, c) for r in range(0, SIZE, TILE) for c in range(0, SIZE, TILE)]
        frac = {rc: _mask_fraction(tissue, *rc, TILE) for rc in grid}
        # Tissue is found on the 2 um/px level, pale edges less surely: slack around the 50% boundary.
        assert all(frac[rc] >= 0.4 for rc in kept)
        assert all(rc in kept for rc in grid if frac[rc] >= 0.75)
        assert not any(rc in kept for rc in grid if frac[rc] == 0)
    # tile_mpp equals the slide's mpp: tiles are exact crops of level 0.
    for i in (0, dataset.n_tiles // 2, dataset.n_tiles - 1):
        (r, c), k = ti.offset[i], ti.source[i]
        assert np.array_equal(dataset.images([i])[0], truth(k).image[r:r + TILE, c:c + TILE])


def test_overlapping_tiles_lie_on_the_prediction_grid_and_pad_past_the_edge(tmp_path, dataset):
    from embedcache.geometry import plan_tiles

    ov = SlideDataset(slides_dir(), tile_size=TILE, tile_mpp=MPP, min_tissue=0.5, overlap=20)
    grid = set(plan_tiles((SIZE, SIZE), (TILE, TILE), 20))  # what predict --slides cuts with --overlap 20
    assert {tuple(o) for o in ov.tiles.offset} <= grid and ov.n_tiles > dataset.n_tiles
    assert ov.describe()["overlap"] == 20 and dataset.describe()["overlap"] == 0
    assert ov.fingerprint() != dataset.fingerprint()
    # Tissue up to the slide's edge: the grid's last tiles run past it and are padded white.
    image = truth(0).image[400:600, 400:600]
    write_slide_tiff(tmp_path / "crop.tif", image, mpp=MPP, levels=1)
    crop = SlideDataset(tmp_path / "crop.tif", tile_size=TILE, tile_mpp=MPP, min_tissue=0.01, overlap=20)
    (r, c) = max(map(tuple, crop.tiles.offset))
    assert (r, c) == (176, 176)
    tile = crop.images([crop.n_tiles - 1])[0]
    assert np.array_equal(tile[:24, :24], image[176:, 176:])
    assert np.all(tile[24:] == 255) and np.all(tile[:, 24:] == 255)


def test_tiling_at_coarser_mpp_reads_the_matching_level():
    ds = SlideDataset(slides_dir(), tile_size=TILE, tile_mpp=1.0, min_tissue=0.5)
    assert ds.slides[0].read_level == 1 and ds.describe()["mpp"] == 1.0
    i = ds.n_tiles // 3
    (r, c), k = ds.tiles.offset[i], ds.tiles.source[i]
    # Offsets are pixels at 1 um/px: the tile covers level-0 rows 2r..2r+128.
    crop = truth(k).image[2 * r:2 * r + 2 * TILE, 2 * c:2 * c + 2 * TILE].astype(np.float64)
    expect = np.rint(crop.reshape(TILE, 2, TILE, 2, 3).mean((1, 3)))
    assert np.abs(ds.images([i])[0] - expect).max() <= 1
    # Positions in micrometres agree between tilings: same slide area, a quarter of the tiles.
    full = SlideDataset(slides_dir(), tile_size=TILE, tile_mpp=MPP, min_tissue=0.5)
    assert 0.18 < ds.n_tiles / full.n_tiles < 0.32


def test_tiling_between_levels_resamples():
    ds = SlideDataset(slides_dir(), tile_size=TILE, tile_mpp=0.75, min_tissue=0.9)
    from skimage.transform import resize

    assert ds.slides[0].read_level == 0
    i = ds.n_tiles // 2
    (r, c), k = ds.tiles.offset[i], ds.tiles.source[i]
    side = int(TILE * 1.5)
    r0, c0 = int(r * 1.5), int(c * 1.5)
    expect = resize(truth(k).image[r0:r0 + side, c0:c0 + side], (TILE, TILE), anti_aliasing=True) * 255
    got = ds.images([i])[0].astype(np.float64)
    assert np.abs(got.mean((0, 1)) - expect.mean((0, 1))).max() < 3
    assert np.corrcoef(got.ravel(), expect.ravel())[0, 1] > 0.8


def test_min_tissue_orders_tile_counts():
    counts = [SlideDataset(slides_dir(), tile_size=TILE, min_tissue=m).n_tiles for m in (0.05, 0.5, 1.0)]
    assert counts[0] > counts[1] > counts[2] > 0


def test_labels_follow_the_polygons(dataset):
    assert sorted(set(dataset.tissue)) == ["normal", "tumour"]
    labels = np.asarray(dataset.tissue)
    for k in range(3):
        tum = truth(k).masks["tumour"]
        sel = np.flatnonzero(dataset.tiles.source == k)
        frac = np.array([_mask_fraction(tum, *dataset.tiles.offset[i], TILE) for i in sel])
        assert np.all(frac[labels[sel] == "tumour"] >= 0.4)
        assert np.all(labels[sel][frac >= 0.6] == "tumour")
        assert np.all(labels[sel][frac <= 0.4] == "normal")


def test_geometry_is_in_micrometres(dataset):
    geo = dataset.geometry()
    i = 5
    assert np.allclose(geo.centres_um[i], (dataset.tiles.offset[i] + TILE / 2) * MPP)


def test_tifffile_and_openslide_agree():
    path = slides_dir() / "slide_001.tif"
    a, b = TiffSlide(path), OpenSlideSlide(path)
    try:
        assert a.dims == b.dims == [(SIZE, SIZE), (SIZE // 2, SIZE // 2), (SIZE // 4, SIZE // 4)]
        assert a.mpp == pytest.approx(MPP) and b.mpp == pytest.approx(MPP)
        for level in (0, 2):
            assert np.array_equal(a.read(level, 37, 101, 50, 60), b.read(level, 37, 101, 50, 60))
    finally:
        a.close()
        b.close()
    assert isinstance(open_slide(path), TiffSlide)


def test_openslide_backend_tiles_the_same(tmp_path, dataset):
    # A vendor suffix goes straight to OpenSlide (which reads this file as a generic tiled TIFF).
    shutil.copy(slides_dir() / "slide_001.tif", tmp_path / "slide_001.svs")
    shutil.copy(slides_dir() / "slide_001.geojson", tmp_path / "slide_001.geojson")
    ds = SlideDataset(tmp_path, tile_size=TILE)
    assert isinstance(ds._slide(0), OpenSlideSlide)
    ref = np.flatnonzero(dataset.tiles.source == 1)
    assert np.array_equal(ds.tiles.offset, dataset.tiles.offset[ref])
    assert ds.tissue == [dataset.tissue[i] for i in ref]
    assert np.array_equal(ds.images([0, 7]), dataset.images(ref[[0, 7]]))


def test_format_detection_and_pickling(tmp_path):
    assert detect_format(slides_dir()) == "slides"
    assert detect_format(slides_dir() / "slide_000.tif") == "slides"
    ds = open_dataset(slides_dir(), tile_size=TILE)
    assert isinstance(ds, SlideDataset)
    ds.images([0])  # opens a handle, which must not travel to a DataLoader worker
    copy = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(copy.images([3]), ds.images([3]))
    one = open_dataset(slides_dir() / "slide_002.tif", tile_size=TILE)
    assert one.tiles.source_names == ["slide_002"]


def test_tissue_mask_drops_specks_and_fills_holes():
    rgb = np.full((100, 100, 3), 240, np.uint8)
    rgb[20:80, 20:80] = (200, 110, 170)
    rgb[45:48, 45:48] = 240  # a 3x3 hole
    rgb[5:7, 90:92] = (200, 110, 170)  # a 2x2 speck
    mask = tissue_mask(rgb, mpp=8.0, min_object_um2=20 * 64)  # 20 px
    assert mask[20:80, 20:80].all() and mask.sum() == 3600
    assert not tissue_mask(np.full((50, 50, 3), 240, np.uint8), mpp=8.0).any()


def test_box_fractions_hand_values():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    frac = box_fractions(mask, np.array([0, 0, 2]), np.array([0, 1, 2]), 2)
    assert frac.tolist() == [1.0, 0.5, 0.0]


def test_tile_labels_hand_made_polygons(tmp_path):
    # Level-0 pixels at half the tile scale (scale 0.5): a 64-px square of "a" with a 32-px "b" hole.
    ring = np.array([[0, 0], [128, 0], [128, 128], [0, 128]], float)
    hole = np.array([[64, 64], [128, 64], [128, 128], [64, 128]], float)
    over = np.array([[0, 0], [40, 0], [40, 40], [0, 40]], float)  # a later feature paints over the first
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "a"}},
         "geometry": {"type": "Polygon", "coordinates": [ring.tolist(), hole.tolist()]}},
        {"type": "Feature", "properties": {"label": "c"},
         "geometry": {"type": "MultiPolygon", "coordinates": [[over.tolist()]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]}},
        {"type": "Feature", "properties": {"name": "p"}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
    ]}
    f = tmp_path / "s.geojson"
    f.write_text(json.dumps(doc))
    polys = read_geojson(f)
    assert [lab for lab, _ in polys] == ["a", "c"]
    rows, cols = np.array([0, 0, 32, 32, 64]), np.array([0, 32, 0, 32, 64])
    assert tile_labels(polys, rows, cols, 32, 0.5) == ["c", "a", "a", "", ""]


def test_bad_slides_say_which_and_why(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all")
    with pytest.raises(DataError, match=r"broken\.svs: cannot open slide \(OpenSlide: "):
        open_slide(bad)
    tif = tmp_path / "broken.tif"
    tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=r"broken\.tif: cannot open slide \(tifffile: .*; OpenSlide: "):
        SlideDataset(tif)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no slides found"):
        SlideDataset(tmp_path / "empty")


def test_slide_without_mpp_asks_for_it(tmp_path):
    write_synthetic_slides(tmp_path, n_slides=1, shape=(512, 512), mpp=None, seed=1, annotations=False)
    with pytest.raises(DataError, match=r"slide_000\.tif: the slide does not record its microns per pixel; "
                                        r"pass --mpp"):
        SlideDataset(tmp_path, tile_size=TILE)
    ds = SlideDataset(tmp_path, tile_size=TILE, mpp=0.5)
    assert ds.n_tiles > 0 and ds.slides[0].mpp == 0.5 and ds.tissue is None


def test_no_tissue_is_refused(tmp_path):
    write_slide_tiff(tmp_path / "glass.tif", np.full((512, 512, 3), 242, np.uint8), mpp=0.5)
    with pytest.raises(DataError, match="no tissue found in 1 slide"):
        SlideDataset(tmp_path, tile_size=TILE)


def test_bad_settings_and_geojson(tmp_path):
    with pytest.raises(ConfigError, match="min_tissue"):
        SlideDataset(slides_dir(), min_tissue=1.5)
    with pytest.raises(ConfigError, match="tile_mpp"):
        SlideDataset(slides_dir(), tile_mpp=0)
    f = tmp_path / "x.geojson"
    f.write_text("{not json")
    with pytest.raises(DataError, match=r"x\.geojson: not readable GeoJSON"):
        read_geojson(f)


def test_a_jpeg_tiled_pyramidal_tiff_is_read(tmp_path):
    """JPEG tiles are the most common generic whole-slide TIFF; tifffile decodes them only through imagecodecs
    (a dependency for this reason). Both backends read the same pixels, close to the written ones."""
    import tifffile

    slide = make_slide((768, 768), MPP, seed=3)
    path = write_slide_tiff(tmp_path / "jpeg.tif", slide.image, MPP, levels=2, compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG and tif.pages[0].is_tiled
    a = open_slide(path)
    b = OpenSlideSlide(path)
    try:
        assert isinstance(a, TiffSlide) and a.mpp == pytest.approx(MPP)
        assert a.dims == [(768, 768), (384, 384)]
        region = a.read(0, 100, 200, 128, 160)
        assert region.shape == (128, 160, 3) and region.dtype == np.uint8
        truth = slide.image[100:228, 200:360].astype(float)
        assert np.abs(region - truth).mean() < 8  # JPEG at quality 90 of a noisy texture, not garbage or zeros
        assert np.corrcoef(region.ravel(), truth.ravel())[0, 1] > 0.95
        assert np.abs(region.astype(int) - b.read(0, 100, 200, 128, 160).astype(int)).max() <= 2
    finally:
        a.close()
        b.close()
    ds = SlideDataset(tmp_path, tile_size=TILE, tile_mpp=MPP)
    assert len(ds) > 0 and ds.read_tile(0).shape == (TILE, TILE, 3)
