"""check-data: every problem of a dataset at once, and extract refusing a bad dataset before it writes anything."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_VIT, inst, rgb, shared_data
from PIL import Image

from embedcache.cli import main
from embedcache.datasets import open_dataset
from embedcache.datasets.check import check_data
from embedcache.errors import DataError

FAST = ["--encoder", TINY_VIT, "--weights", "random", "--variants", "none", "--workers", "0", "--quiet",
        "--tile-size", "64", "--loader-workers", "0"]


def write_pair(d, name, h, w, seed=0):
    Image.fromarray(rgb(h, w, seed)).save(d / f"{name}.png")
    Image.fromarray(inst(h, w)).save(d / f"{name}_inst.png")


@pytest.fixture
def clean_folder(tmp_path):
    d = tmp_path / "clean"
    d.mkdir()
    write_pair(d, "a", 100, 150)
    write_pair(d, "b", 300, 200, seed=1)
    return d


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.output
    return res


def test_clean_folder_passes_with_the_right_counts(clean_folder):
    report = check_data(clean_folder, tile_size=64)
    assert report.ok and report.layout == "folder" and report.problems == [] and report.notes == []
    s = report.summary
    assert (s["images"], s["inst_maps"], s["type_maps"]) == (2, 2, 0)
    assert s["min_size"] == (150, 100) and s["max_size"] == (200, 300)
    assert s["pixels"] == 150 * 100 + 200 * 300
    assert s["tiles"] == open_dataset(clean_folder, tile_size=64).n_tiles
    res = run("check-data", clean_folder, "--tile-size", "64", "--pixels")
    assert res.exit_code == 0, res.output
    assert f"{clean_folder}: folder layout, pixels decoded" in res.output
    assert "images    2, 150x100 to 200x300 px (width x height)" in res.output
    assert f"tiles     {s['tiles']} of 64x64 px (overlap 16 px) for extract" in res.output
    assert res.output.rstrip().endswith("no problems found")


@pytest.fixture
def bad_folder(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    write_pair(d, "good", 64, 64)
    write_pair(d, "trunc", 80, 80, seed=2)  # truncated below: the header still reads
    raw = (d / "trunc.png").read_bytes()
    (d / "trunc.png").write_bytes(raw[:len(raw) // 2])
    Image.fromarray(rgb(64, 96)).save(d / "small.png")
    Image.fromarray(inst(64, 90)).save(d / "small_inst.png")  # 6 px too narrow
    Image.fromarray(rgb(64, 64)).save(d / "coded.png")
    Image.fromarray(rgb(64, 64, seed=5)).save(d / "coded_inst.png")  # an RGB-coded instance map
    Image.fromarray(inst(64, 64)).save(d / "ghost_inst.png")  # no ghost.png
    (d / "junk.png").write_bytes(b"this is not a picture\n")
    Image.fromarray(inst(64, 64)).save(d / "junk_inst.png")
    return d


def test_every_problem_is_listed_in_one_run(bad_folder):
    d = bad_folder
    res = run("check-data", d, "--pixels")
    assert res.exit_code == 1
    lines = res.output.splitlines()

    def line(file):
        found = [ln for ln in lines if ln.startswith(f"{d / file}: ")]
        assert len(found) == 1, (file, res.output)
        return found[0]

    assert "cannot read image (image file is truncated" in line("trunc.png")
    assert "instance map is 90x64 px but its image small.png is 96x64 px (width x height)" in line("small_inst.png")
    assert "an RGB-coded instance map (mode RGB, 3 channels); save instance ids as a single-channel 16-bit PNG" \
        in line("coded_inst.png")
    assert "label map without an image: no ghost.png" in line("ghost_inst.png")
    assert "cannot read image (cannot identify image file" in line("junk.png")
    assert not any(ln.startswith(f"{d / 'good'}") for ln in lines)
    assert lines[-1] == f"5 problems in {d}; fix them and run check-data again"
    # Without --pixels only the truncated file goes unnoticed: its header is fine.
    report = check_data(d)
    assert len(report.problems) == 4 and not report.ok
    assert {p.file for p in report.problems} == {str(d / n) for n in
                                                  ("small_inst.png", "coded_inst.png", "ghost_inst.png", "junk.png")}
    # What check-data calls a problem, the reader refuses too (one at a time).
    with pytest.raises(DataError, match="junk.png: cannot read image"):
        open_dataset(d, tile_size=64)
    (d / "junk.png").unlink()
    (d / "junk_inst.png").unlink()
    ds = open_dataset(d, tile_size=64)
    with pytest.raises(DataError, match="does not match its image"):
        ds.labels([list(ds.tiles.source).index(ds.tiles.source_names.index("coded"))])
    src = ds.tiles.source_names
    with pytest.raises(DataError, match="does not match its image"):
        ds.labels([list(ds.tiles.source).index(src.index("small"))])
    with pytest.raises(DataError, match="truncated"):
        ds.images([list(ds.tiles.source).index(src.index("trunc"))])


def test_missing_label_map_and_stray_type_map(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_pair(d, "a", 64, 64)
    Image.fromarray(rgb(64, 64)).save(d / "b.png")
    Image.fromarray(inst(64, 64).astype(np.uint8)).save(d / "b_type.png")
    report = check_data(d)
    assert [(p.file, p.message.split(" label map")[0]) for p in report.problems] == [
        (str(d / "b.png"), "no b_inst.png (or .tif, .tiff, .npy)")]
    with pytest.raises(DataError, match="b.png has no _inst label map"):
        open_dataset(d)


def test_rgba_is_a_note_grayscale_and_transparency_are_problems(tmp_path):
    d = tmp_path / "modes"
    d.mkdir()
    opaque = np.concatenate([rgb(64, 64), np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(opaque).save(d / "rgba.png")
    Image.fromarray(rgb(64, 64)).save(d / "plain.png")
    report = check_data(d, pixels=True, tile_size=64)
    assert report.ok, report.problems
    assert report.notes == ["1 RGBA image (rgba.png): converted to RGB by dropping the 4th channel; it is fully opaque"]
    res = run("check-data", d, "--tile-size", "64")
    assert res.exit_code == 0 and "note: 1 RGBA image (rgba.png): converted to RGB" in res.output
    assert open_dataset(d, tile_size=64).images(slice(None)).shape == (2, 64, 64, 3)  # the reader agrees

    # The reader refuses grayscale and palette images (it reads RGB only), so check-data reports them.
    Image.fromarray(rgb(64, 64)[..., 0]).save(d / "gray.png")
    Image.fromarray(rgb(64, 64)).convert("P").save(d / "palette.png")
    seethrough = opaque.copy()
    seethrough[:8, :8, 3] = 0
    Image.fromarray(seethrough).save(d / "rgba_clear.png")
    report = check_data(d, pixels=True)
    got = {p.file: p.message for p in report.problems}
    assert got[str(d / "gray.png")].startswith("a grayscale image (mode L); extract reads RGB")
    assert got[str(d / "palette.png")].startswith("a palette image (mode P); extract reads RGB")
    assert got[str(d / "rgba_clear.png")] == "image has a transparent alpha channel; save it as RGB"
    assert len(report.problems) == 3
    ds = open_dataset(d, tile_size=64)
    with pytest.raises(DataError, match=r"gray.png: a grayscale image \(mode L\)"):  # the diagnosis check-data gives
        ds.images([ds.tiles.source_names.index("gray")])
    # Headers only: the transparent one is noted (its pixels are not read), the other two refused.
    report = check_data(d)
    assert {p.file for p in report.problems} == {str(d / "gray.png"), str(d / "palette.png")}
    assert "2 RGBA images (rgba.png, rgba_clear.png)" in report.notes[0] and "--pixels checks" in report.notes[0]


def test_label_maps_of_other_kinds(tmp_path):
    d = tmp_path / "labels"
    d.mkdir()
    for name in ("npy", "neg", "flt", "bits"):
        Image.fromarray(rgb(32, 48)).save(d / f"{name}.png")
    np.save(d / "npy_inst.npy", inst(32, 48).astype(np.int32))
    np.save(d / "neg_inst.npy", -inst(32, 48).astype(np.int32))
    np.save(d / "flt_inst.npy", inst(32, 48).astype(np.float32) + 0.5)
    Image.fromarray(inst(32, 48) > 0).save(d / "bits_inst.png")  # a binary mask, mode 1
    report = check_data(d, pixels=True)
    got = {p.file.rsplit("/", 1)[-1]: p.message for p in report.problems}
    assert set(got) == {"neg_inst.npy", "flt_inst.npy", "bits_inst.png"}
    assert got["neg_inst.npy"].startswith("labels must be >= 0")
    assert got["flt_inst.npy"] == "labels must be whole numbers"
    assert got["bits_inst.png"].startswith("labels must be integers, got a 1-bit (black and white) image")
    assert {p.file.rsplit("/", 1)[-1] for p in check_data(d).problems} == {"bits_inst.png"}  # the rest need pixels


def test_pannuke_stack_with_mismatched_counts_fails(tmp_path):
    root = tmp_path / "pn"
    for k, (n_images, n_masks, n_types) in enumerate(((4, 4, 4), (5, 4, 3))):
        d = root / f"fold{k + 1}"
        d.mkdir(parents=True)
        np.save(d / "images.npy", np.zeros((n_images, 32, 32, 3), np.float64))
        np.save(d / "masks.npy", np.zeros((n_masks, 32, 32, 6), np.float64))
        np.save(d / "types.npy", np.asarray(["colon"] * n_types))
    report = check_data(root)
    got = [(p.file, p.message) for p in report.problems]
    assert got == [
        (str(root / "fold2"), ("images.npy holds 5 tiles of 32x32 px but masks.npy 4 tiles of 32x32 px; "
                               "they must agree tile for tile")),
        (str(root / "fold2" / "types.npy"), "3 tissue names for 4 tiles in masks.npy"),
    ]
    assert any("float64 pixels, rounded to uint8" in n for n in report.notes)
    assert report.summary["images"] == 9 and report.summary["folds"] == 2
    res = run("check-data", root)
    assert res.exit_code == 1
    assert res.output.splitlines()[-1] == f"2 problems in {root}; fix them and run check-data again"
    with pytest.raises(DataError, match="disagree"):
        open_dataset(root)


def test_stack_pixels_are_checked_only_with_pixels(tmp_path, tiny_tiles):
    images, labels, _ = tiny_tiles
    d = tmp_path / "conic"
    d.mkdir()
    scaled = images.astype(np.float32) / 255
    np.save(d / "images.npy", scaled)
    bad = labels.copy()
    bad[2, 0, 0, 0] = -1
    np.save(d / "labels.npy", bad)
    assert check_data(d).ok
    report = check_data(d, pixels=True)
    assert [(p.file, p.message) for p in report.problems] == [
        *[(str(d / "images.npy"), f"tile {i}: pixels look scaled to 0..1; embedcache expects 0..255")
          for i in range(5)],
        (str(d / "images.npy"), "1 more tiles with problems (6 in all)"),
        (str(d / "labels.npy"), "tile 2: labels must be >= 0, found -1"),
    ]


def test_conic_layout_problems_need_no_pixels(tmp_path):
    d = tmp_path / "conic"
    d.mkdir()
    np.save(d / "images.npy", np.zeros((3, 32, 32), np.uint8))
    np.save(d / "labels.npy", np.zeros((3, 32, 32, 3), np.int32))
    report = check_data(d)
    assert [p.message for p in report.problems] == [
        "expected images of shape (N, H, W, 3), got (3, 32, 32)",
        "expected shape (N, H, W, 2) [instance, class], got (3, 32, 32, 3)"]


def test_slides_open_and_record_mpp(tmp_path):
    from embedcache.datasets.synthetic_slides import write_slide_tiff

    image = np.full((512, 384, 3), 230, np.uint8)
    write_slide_tiff(tmp_path / "with.tif", image, mpp=0.25, levels=2)
    write_slide_tiff(tmp_path / "without.tif", image, mpp=None, levels=2)
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    report = check_data(tmp_path, format="slides")
    got = {p.file.rsplit("/", 1)[-1]: p.message for p in report.problems}
    assert set(got) == {"without.tif", "broken.svs"}
    assert got["without.tif"].startswith("the slide does not record its microns per pixel; pass --mpp")
    assert got["broken.svs"].startswith("cannot open slide")
    assert "with.tif: 384x512 px at level 0, 2 levels, 0.25 um/px" in report.notes
    assert report.summary["slides"] == 3 and report.summary["opened"] == 2 and report.summary["with_mpp"] == 1
    (tmp_path / "broken.svs").unlink()
    assert check_data(tmp_path, format="slides", mpp=0.5).ok


def test_nothing_there_or_unknown_layout(tmp_path):
    res = run("check-data", tmp_path / "nope")
    assert res.exit_code == 1 and f"{tmp_path / 'nope'}: no such file or folder" in res.output
    (tmp_path / "empty").mkdir()
    report = check_data(tmp_path / "empty")
    assert report.layout is None and "cannot tell the layout" in report.problems[0].message


def test_extract_refuses_a_bad_folder_in_one_line_before_writing(tmp_path, clean_folder):
    Image.fromarray(inst(100, 140)).save(clean_folder / "a_inst.png")  # a is 150 px wide
    out = tmp_path / "s.zarr"
    res = run("extract", "--data", clean_folder, "--out", out, *FAST)
    assert res.exit_code == 2
    msg = res.output.strip()
    assert msg.count("\n") == 0 and "Traceback" not in msg
    assert msg.startswith(f"Error: {clean_folder}: 1 problem in the data, the first: {clean_folder / 'a_inst.png'}: "
                          "instance map is 140x100 px but its image a.png is 150x100 px")
    assert msg.endswith(f"run `embedcache check-data {clean_folder}` to list them all")
    assert not out.exists() and not list(tmp_path.glob("s.zarr*"))


def test_extract_check_false_skips_the_check(tmp_path, clean_folder):
    from embedcache.config import ExtractConfig
    from embedcache.extract import extract

    Image.fromarray(inst(64, 64)).save(clean_folder / "stray_inst.png")  # the reader ignores it; check-data does not
    config = ExtractConfig(encoder=TINY_VIT, weights="random", variants="none", tile_size=64, loader_workers=0)
    with pytest.raises(DataError, match="1 problem in the data.*label map without an image"):
        extract(clean_folder, tmp_path / "s.zarr", config, progress=False)
    assert not (tmp_path / "s.zarr").exists()
    result = extract(clean_folder, tmp_path / "s.zarr", config, progress=False, check=False)
    assert result.n_tiles == open_dataset(clean_folder, tile_size=64).n_tiles and (tmp_path / "s.zarr").exists()


def test_real_folder_passes():
    d = shared_data("cpm15-dev")
    report = check_data(d)
    assert report.ok and report.summary["images"] == report.summary["inst_maps"] == 11
    assert report.summary["tiles"] == open_dataset(d).n_tiles


def test_padding_that_dominates_is_said_by_check_data_and_extract(tmp_path):
    """1,000 images of 8x8 px passed check-data and extracted for minutes as tiles 99.9% padding."""
    from click.testing import CliRunner

    from embedcache.cli import main

    d = tmp_path / "tiny"
    d.mkdir()
    for k in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(d / f"t{k}.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(d / "big.png")
    report = check_data(d, tile_size=64)
    assert report.ok
    note = next(n for n in report.notes if n.startswith("padding dominates"))
    # 5 tiles of 64 px holding 8x8 px of image each, 1 full tile: (5 * (1 - 1/64)) / 6 of the pixels are padding
    assert f"{5 * (1 - 1 / 64) / 6:.1%} of the pixels" in note
    assert "5 of 6 tiles are mostly padding (5 of 6 images are smaller than a 64-px tile)" in note
    res = CliRunner().invoke(main, ["extract", "--data", str(d), "--out", str(tmp_path / "s.zarr"), "--encoder",
                                    "timm:test_efficientnet", "--weights", "random", "--variants", "none",
                                    "--tile-size", "64", "--loader-workers", "0", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0 and "note: padding dominates" in res.stdout, res.output
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(big / "b.png")
    assert not any(n.startswith("padding") for n in check_data(big, tile_size=64).notes)


def _wrapped(n: int, dtype) -> np.ndarray:
    """An instance map of ``n`` small nuclei on a grid, ids 1..n, cast to ``dtype`` (uint8 wraps past 255)."""
    side = int(np.ceil(np.sqrt(n)))
    m = np.zeros((side * 12, side * 12), np.int64)
    for k in range(n):
        r, c = divmod(k, side)
        m[r * 12 + 2:r * 12 + 8, c * 12 + 2:c * 12 + 8] = k + 1
    return m.astype(dtype)


def test_an_8_bit_instance_map_whose_ids_wrapped_is_found_with_pixels(tmp_path):
    """351 nuclei saved as uint8: ids past 255 came back as 0..95, each then marking two nuclei far apart."""
    d = tmp_path / "wrapped"
    d.mkdir()
    wrapped = _wrapped(351, np.uint8)
    Image.fromarray(np.full(wrapped.shape + (3,), 120, np.uint8)).save(d / "a.png")
    Image.fromarray(wrapped).save(d / "a_inst.png")
    assert check_data(d, tile_size=64).ok  # headers cannot tell
    report = check_data(d, tile_size=64, pixels=True)
    (problem,) = report.problems
    assert problem.file.endswith("a_inst.png") and problem.message.startswith("instance map looks wrapped")
    assert "95 id(s) mark nuclei far apart" in problem.message and "16-bit" in problem.message
    # The same nuclei saved as 16-bit are fine; one id on two far nuclei in a 16-bit map is a note.
    Image.fromarray(_wrapped(351, np.uint16)).save(d / "a_inst.png")
    assert check_data(d, tile_size=64, pixels=True).ok and not check_data(d, tile_size=64, pixels=True).notes
    reused = _wrapped(351, np.uint16)
    reused[reused == 300] = 5
    Image.fromarray(reused).save(d / "a_inst.png")
    report = check_data(d, tile_size=64, pixels=True)
    assert report.ok and any("1 instance id(s) mark pieces far apart (id 5 at" in n for n in report.notes)
