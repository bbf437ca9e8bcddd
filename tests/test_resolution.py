"""Resolution per image: found from metadata, mpp.csv or --mpp; images resampled to one working resolution
before tiling; the run records it; live predictions mapped back to each image's own pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from decoder_helpers import disk_instances, fit_config, make_store, one_thread  # noqa: F401 (one_thread: pytestmark)
from PIL import Image

from embedcache.cli import main
from embedcache.datasets import open_dataset
from embedcache.datasets.resolution import image_mpps, mpp_from_metadata, read_mpp_table, resize_labels
from embedcache.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(seed: int, shape, discs) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = np.full((*shape, 3), 225, np.uint8)
    inst = disk_instances(shape, discs)
    rgb[inst > 0] = (90, 40, 140)
    rgb = np.clip(rgb.astype(int) + rng.integers(-12, 12, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, inst


def _folder(root, mpp_table: bool = True):
    """Two images of the same tissue scale: a at 0.5 um/px (its nuclei 5 px across), b at 0.25 (10 px)."""
    root.mkdir(parents=True, exist_ok=True)
    a = _image(0, (96, 80), [(20, 20, 5), (60, 40, 5), (30, 60, 5)])
    b = _image(1, (160, 192), [(40, 40, 10), (100, 120, 10), (50, 150, 10), (120, 40, 10)])
    for name, (rgb, inst) in (("a", a), ("b", b)):
        Image.fromarray(rgb).save(root / f"{name}.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / f"{name}_inst.png")
    if mpp_table:
        (root / "mpp.csv").write_text("image,mpp\na,0.5\nb.png,0.25\n")
    return root


def test_metadata_gives_a_resolution_only_when_it_is_a_microscopes(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "scan.png", dpi=(101600, 101600))  # 0.25 um/px in the pHYs chunk
    Image.fromarray(rgb).save(tmp_path / "screen.png", dpi=(72, 72))  # a screen default: 353 um/px
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    Image.fromarray(rgb).save(tmp_path / "scan.tif", dpi=(50800, 50800))  # 0.5 um/px in the resolution tags
    assert mpp_from_metadata(tmp_path / "scan.png") == pytest.approx(0.25, abs=1e-4)
    assert mpp_from_metadata(tmp_path / "scan.tif") == pytest.approx(0.5, abs=1e-4)
    assert mpp_from_metadata(tmp_path / "screen.png") is None and mpp_from_metadata(tmp_path / "plain.png") is None


def test_each_image_takes_metadata_then_mpp_csv_then_the_folders_value(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    for name in ("a", "b", "c"):
        Image.fromarray(rgb).save(tmp_path / f"{name}.png", **({"dpi": (101600, 101600)} if name == "a" else {}))
    (tmp_path / "mpp.csv").write_text("image,mpp\na,0.5\nb,0.3\n")
    files = [tmp_path / f"{n}.png" for n in "abc"]
    mpps, sources = image_mpps(files, ["a", "b", "c"], tmp_path, given=0.45)
    assert mpps[0] == pytest.approx(0.25, abs=1e-4) and mpps[1:] == [0.3, 0.45]
    assert sources == ["metadata", "mpp.csv", "--mpp"]
    assert image_mpps(files, ["a", "b", "c"], tmp_path)[1][2] == "unknown"


@pytest.mark.parametrize("text, message", [
    ("name,um\na,0.5\n", r"mpp.csv:1: expected the header 'image,mpp'"),
    ("image,mpp\na,half\n", r"mpp.csv:2: expected 'image,mpp' with a number"),
    ("image,mpp\na,-1\n", r"mpp.csv:2: microns per pixel must be positive"),
])
def test_a_bad_mpp_csv_is_one_line_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "mpp.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_mpp_table(tmp_path)


def test_nearest_resampling_keeps_instance_ids():
    inst = disk_instances((50, 50), [(10, 10, 4), (30, 35, 6), (40, 12, 5)])
    up = resize_labels(inst, (100, 100))
    assert set(np.unique(up)) == set(np.unique(inst)) and up.dtype == inst.dtype
    assert np.array_equal(resize_labels(up, (50, 50)), inst)  # doubling then halving is exact


def test_working_resolution_resamples_images_and_labels_before_tiling(tmp_path):
    data = _folder(tmp_path / "mixed")
    plain = open_dataset(data, tile_size=64)
    assert plain.source_mpp == [0.5, 0.25] and plain.mpp is None  # mixed: no one resolution for the tiles
    ds = open_dataset(data, tile_size=64, working_mpp=0.25)
    assert ds.mpp == 0.25 and ds.source_shape(0) == (192, 160) and ds.source_shape(1) == (160, 192)
    inst = ds.source_labels(0)[..., 0]
    assert set(np.unique(inst)) == {0, 1, 2, 3}  # ids kept
    # The nuclei of image a, 5 px across at 0.5 um/px, are 10 px across at 0.25 um/px, as in image b.
    sizes = np.bincount(inst.ravel())[1:]
    assert np.all(np.abs(sizes / (np.pi * 10 ** 2) - 1) < 0.2), sizes
    assert ds.n_tiles > plain.n_tiles and ds.fingerprint() != plain.fingerprint()
    described = ds.describe()
    assert described["working_mpp"] == 0.25 and described["source_mpp"] == [0.5, 0.25]
    assert described["source_shapes"] == [[96, 80], [160, 192]]


def test_unknown_resolution_is_refused_with_the_image_named_and_stacks_refuse_it(tmp_path):
    data = _folder(tmp_path / "unknown", mpp_table=False)
    with pytest.raises(DataError, match=r"2 image\(s\) of unknown resolution \(first: a\).*mpp.csv.*--mpp"):
        open_dataset(data, tile_size=64, working_mpp=0.25)
    assert open_dataset(data, tile_size=64, working_mpp=0.25, mpp=0.5).source_shape(0) == (192, 160)  # --mpp
    from decoder_helpers import write_conic

    with pytest.raises(ConfigError, match="tiles of fixed size"):
        open_dataset(write_conic(tmp_path / "conic", n=2), working_mpp=0.25)


def test_check_data_reports_each_images_resolution(tmp_path):
    data = _folder(tmp_path / "mixed")
    res = CliRunner().invoke(main, ["check-data", str(data), "--tile-size", "64"])
    assert res.exit_code == 0, res.output
    assert "mpp       1 at 0.25 um/px (mpp.csv), 1 at 0.5 um/px (mpp.csv)" in res.output
    assert "note: the images have different resolutions: extract --working-mpp" in res.output


def test_a_run_at_a_working_resolution_records_it_and_predicts_each_image_at_its_own_pixels(tmp_path):
    from embedcache.infer.predict import predict
    from embedcache.metrics import evaluate
    from embedcache.store import open_store
    from embedcache.train.loop import fit

    data = _folder(tmp_path / "mixed")
    store = make_store(data, tmp_path / "s.zarr", variants="none", tile_size=64, working_mpp=0.25)
    assert open_store(store).tile_mpp == 0.25
    run = fit(store, tmp_path / "run", fit_config(epochs=2, val="sources:b"), progress=False).path
    assert json.loads((run / "run.json").read_text())["store"]["mpp"] == 0.25  # whole slides need no --run-mpp
    out = predict(run, tmp_path / "pred", data=data, device="cpu", progress=False).path
    for name, shape in (("a", (96, 80)), ("b", (160, 192))):
        pred = np.asarray(Image.open(out / f"{name}_inst.png"))
        assert pred.shape == shape  # the image's own pixels, not the working resolution's
    ev = evaluate(data, out, "hovernet")
    assert ev.summary["n_images"] == 2
    with pytest.raises(DataError, match="this image records no resolution"):
        lone = tmp_path / "lone"
        lone.mkdir()
        Image.fromarray(np.asarray(Image.open(data / "a.png"))).save(lone / "a.png")
        predict(run, tmp_path / "pred-lone", data=lone / "a.png", device="cpu", progress=False)
    out = predict(run, tmp_path / "pred-given", data=lone / "a.png", device="cpu", progress=False, mpp=0.5).path
    assert np.asarray(Image.open(out / "a_inst.png")).shape == (96, 80)


def test_a_radius_in_microns_is_each_images_own_pixels(tmp_path):
    """3 um is 12 px on a 0.25 um/px image and 6 px on a 0.5 um/px one: a centroid 8 px off pairs on the
    first and not on the second, as the protocol's 40x and 20x radii would decide."""
    from embedcache.metrics import evaluate

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for d in (truth, pred):
        d.mkdir()
    for name in ("fine", "coarse"):
        t = disk_instances((64, 64), [(30, 20, 4)])
        p = disk_instances((64, 64), [(30, 28, 4)])  # 8 px to the right: no overlap, centroids 8 px apart
        Image.fromarray(t.astype(np.uint16)).save(truth / f"{name}_inst.png")
        Image.fromarray(p.astype(np.uint16)).save(pred / f"{name}_inst.png")
    (truth / "mpp.csv").write_text("image,mpp\nfine,0.25\ncoarse,0.5\n")
    ev = evaluate(truth, pred, "hovernet", radius_um=3.0)
    assert ev.summary["radius"] == [6.0, 12.0]  # rows in name order: coarse, fine
    rows = {r["name"]: r for r in ev.rows}
    assert rows["fine"]["det_tp"] == 1 and rows["coarse"]["det_tp"] == 0
    assert evaluate(truth, pred, "hovernet").summary["detection"]["tp"] == 2  # 12 px everywhere
    (truth / "mpp.csv").unlink()
    with pytest.raises(DataError, match="needs each image's microns per pixel; 2 record none"):
        evaluate(truth, pred, "hovernet", radius_um=3.0)
