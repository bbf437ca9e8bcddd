"""Published datasets read as their archives unzip: PanNuke's Fold trees, CoNIC's patches grouped by source image."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner
from decoder_helpers import make_store
from release_fixtures import (
    aperio_xml, conic_patch_names, write_conic_release, write_consep_release, write_cpm17_release,
    write_cytodark0_release, write_lizard_release, write_monuseg_release, write_pannuke_release,
)
from test_datasets import same_partition

from embedcache import open_store
from embedcache.cli import main
from embedcache.datasets import CONIC_CLASSES, detect_format, formats, open_dataset, read_label_maps
from embedcache.datasets.check import check_data
from embedcache.datasets.conic import challenge_split
from embedcache.errors import ConfigError, DataError
from embedcache.train.stream import make_split


def problem_lines(output: str, root) -> list[str]:
    """The ``FILE: message`` lines check-data prints for files under ``root`` (not its summary)."""
    return [line for line in output.splitlines() if line.startswith(str(root)) and " layout, " not in line]


def assert_extract_refuses(root, tmp_path, message: str) -> None:
    """extract stops in one line holding ``message`` before it writes a store, and the release's files are as
    they were (none written, moved or changed)."""
    out = tmp_path / "s.zarr"
    before = _tree(root)
    res = run("extract", "--data", root, "--out", out, "--encoder", "timm:test_vit", "--weights", "random",
              "--variants", "none", "--workers", "0", "--quiet", "--loader-workers", "0")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output
    assert not out.exists() and not (tmp_path / "s.zarr.partial").exists()
    assert _tree(root) == before


def _tree(root) -> dict:
    """Every file under ``root``: its size and modification time (ns)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.output
    return res


# ----------------------------------------------------------------------------- registry

def test_every_layout_is_a_format_and_auto_tries_the_releases_first():
    names = formats()
    assert names[0] == "auto" and {"pannuke", "conic", "folder", "slides"} <= set(names)
    assert names.index("pannuke") < names.index("folder") and names.index("conic") < names.index("folder")


# ----------------------------------------------------------------------------- PanNuke

@pytest.fixture(scope="module")
def pannuke_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("pannuke") / "PanNuke"
    return root, write_pannuke_release(root, sizes=(2, 3, 2))


def test_pannuke_release_read_as_unzipped(pannuke_release):
    root, (images, labels, tissue) = pannuke_release
    assert detect_format(root) == "pannuke"
    ds = open_dataset(root)
    assert ds.n_tiles == 7 and ds.tile_shape == (256, 256)
    assert ds.folds.tolist() == [0, 0, 1, 1, 1, 2, 2] and ds.fold_names == ["fold1", "fold2", "fold3"]
    assert ds.splits == {"train": [0, 1], "test": [2]}
    assert ds.tissue == tissue  # types.npy sits beside images.npy in the release, not beside masks.npy
    assert ds.mpp == 0.25 and ds.protocol == "pannuke"
    assert np.array_equal(ds.images(slice(None)), images)  # float64 whole numbers become the same uint8
    got = ds.labels([6, 2, 0])
    for g, want in zip(got, labels[[6, 2, 0]]):
        assert np.array_equal(g[..., 1], want[..., 1]) and same_partition(g[..., 0], want[..., 0])


@pytest.mark.parametrize("inside", ["Fold 2", "Fold 2/images/fold2", "Fold 2/masks/fold2"])
def test_pannuke_one_fold_keeps_its_number_from_any_folder_inside(pannuke_release, inside):
    root, (images, _, _) = pannuke_release
    ds = open_dataset(root / inside)
    assert ds.layout == "pannuke" and ds.n_tiles == 3
    assert ds.folds.tolist() == [1, 1, 1] and ds.fold_names[1] == "fold2" and ds.splits == {}
    assert np.array_equal(ds.images([0]), images[[2]])


def test_pannuke_tile_reads_do_not_hold_the_fold(tmp_path):
    """A fold of float64 tiles is memory-mapped: reading 2 tiles allocates about 2 tiles, not the fold."""
    n = 40
    d = tmp_path / "Fold 1" / "images" / "fold1"
    m = tmp_path / "Fold 1" / "masks" / "fold1"
    d.mkdir(parents=True)
    m.mkdir(parents=True)
    np.save(d / "images.npy", np.full((n, 256, 256, 3), 128.0))
    np.save(d / "types.npy", np.asarray(["Colon"] * n))
    np.save(m / "masks.npy", np.zeros((n, 256, 256, 6)))
    ds = open_dataset(tmp_path)
    fold_bytes = n * 256 * 256 * 3 * 8
    tracemalloc.start()
    ds.images([10, 11])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < fold_bytes / 5


def test_pannuke_labels_for_evaluate_and_check_data_counts_folds(pannuke_release):
    root, (_, labels, tissue) = pannuke_release
    truth = read_label_maps(root)
    assert truth.layout == "pannuke" and len(truth) == 7 and truth.tissue == tissue
    report = check_data(root)
    assert report.ok, report.problems
    assert report.summary["splits"] == {"fold1": 2, "fold2": 3, "fold3": 2}
    assert any(line.strip().startswith("splits    fold1 2 tiles, fold2 3 tiles") for line in report.lines())


def test_pannuke_flat_folds_still_read(pannuke_dir):
    ds = open_dataset(pannuke_dir)
    assert ds.folds.tolist() == [0, 0, 0, 0, 1, 1] and ds.fold_names == ["fold1", "fold2"]


def _copy_release(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, file, message", [
    (lambda r: __import__("shutil").rmtree(r / "Fold 2"), ".", "PanNuke fold2 is missing"),
    (lambda r: (r / "Fold 2" / "masks" / "fold2" / "masks.npy").unlink(), "Fold 2",
     "a PanNuke fold folder without masks.npy"),
    (lambda r: np.save(r / "Fold 3" / "images" / "fold3" / "images.npy", np.zeros((5, 256, 256, 3))),
     "Fold 3", "holds 5 tiles of 256x256 px but masks/fold3/masks.npy 2 tiles"),
])
def test_pannuke_bad_release_one_line_naming_the_file_nothing_written(pannuke_release, tmp_path, damage, file,
                                                                      message):
    root = _copy_release(pannuke_release[0], tmp_path / "PanNuke")
    damage(root)
    res = run("check-data", root)
    assert res.exit_code == 1
    problems = problem_lines(res.output, root)
    assert len(problems) == 1 and "Traceback" not in res.output
    where = str(root) if file == "." else str(root / file)
    assert problems[0].startswith(where + ":") and message in problems[0]
    assert_extract_refuses(root, tmp_path, message)


# ----------------------------------------------------------------------------- CoNIC

@pytest.fixture(scope="module")
def conic_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("conic") / "CoNIC Challenge Train"
    patches = conic_patch_names(images_per_cohort=5, patches_per_image=2)
    return root, patches, write_conic_release(root, patches)


def test_conic_patches_take_their_source_image_and_cohort(conic_release):
    root, patches, (images, labels) = conic_release
    ds = open_dataset(root)
    assert ds.layout == "conic" and ds.n_tiles == 50 and ds.class_names[6] == "connective"
    names = ds.tiles.source_names
    assert len(names) == 25 and [names[s] for s in ds.tiles.source[:4]] == ["consep_1", "consep_1", "consep_2",
                                                                            "consep_2"]
    assert ds.tissue[:2] == ["consep", "consep"] and ds.tissue[-1] == "pannuke"
    assert ds.mpp == 0.5 and ds.protocol == "conic"
    assert np.array_equal(ds.images([7]), images[[7]])
    assert np.array_equal(ds.labels([3]), labels[[3]].astype(np.int32))


def test_conic_challenge_split_is_over_images_stratified_by_cohort(conic_release):
    root, patches, _ = conic_release
    ds = open_dataset(root)
    assert ds.fold_names == ["train", "val"] and ds.splits == {"train": [0], "val": [1]}
    held = {ds.tiles.source_names[s] for s in ds.tiles.source[ds.folds == 1]}
    kept = {ds.tiles.source_names[s] for s in ds.tiles.source[ds.folds == 0]}
    assert not held & kept and len(held) == 5  # a fifth of the 25 images
    assert sorted(n.split("_")[0] for n in held) == ["consep", "crag", "dpath", "glas", "pannuke"]  # one each
    # The published rule, written out with scikit-learn as hover_net's generate_split.py does.
    from sklearn.model_selection import StratifiedShuffleSplit

    sources = np.unique([p.split("-")[0] for p in patches])
    _, cohorts = np.unique([s.split("_")[0] for s in sources], return_inverse=True)
    _, valid = next(StratifiedShuffleSplit(n_splits=10, train_size=0.8, test_size=0.2,
                                           random_state=5).split(sources, cohorts))
    assert held == set(sources[valid].tolist())
    assert challenge_split(list(sources)).tolist() == [int(s in held) for s in sources]


@pytest.fixture(scope="module")
def conic_store(conic_release, tmp_path_factory):
    root = conic_release[0]
    return open_store(make_store(root, tmp_path_factory.mktemp("cs") / "s.zarr", variants="none"))


def test_conic_no_split_fold_or_resample_puts_one_image_on_both_sides(conic_store):
    from embedcache.probes.fit import make_folds
    from embedcache.probes.labels import split_groups, tile_labels

    store = conic_store
    source = np.asarray(store.tile_info()["source"])
    assert store.official_splits == {"train": [0], "val": [1]} and store.tile_mpp == 0.5
    for spec in ("auto", "official", "val", "frac:0.2", "frac:0.5"):
        for seed in range(3):
            split = make_split(store, spec, seed=seed)
            assert not set(source[split.val]) & set(source[split.train]), (spec, seed)
    labels = tile_labels(store, "tissue")  # the cohort, a probe label
    assert sorted(set(labels.names)) == ["consep", "crag", "dpath", "glas", "pannuke"]
    groups, unit = split_groups(store, labels)
    assert unit == "source image"
    folds = make_folds(labels.y, 5, None, 0, groups)
    for k in range(5):
        assert not set(source[folds == k]) & set(source[folds != k])


def test_conic_store_scores_each_patch_as_its_own_image(conic_store):
    from embedcache.store.images import image_truth, source_images

    images = source_images(conic_store, [0, 1, 2])
    assert [j.name for j in images] == ["tile00000", "tile00001", "tile00002"]
    truth = image_truth(conic_store, images)
    assert truth.layout == "conic" and truth.instances[1].shape == (256, 256)
    assert np.array_equal(truth.instances[1], conic_store.labels(1)[0])


def test_conic_official_split_unknown_to_a_plain_stack(conic_dir, tmp_path):
    store = open_store(make_store(conic_dir, tmp_path / "p.zarr", variants="none"))
    with pytest.raises(ConfigError, match="no official val split"):
        make_split(store, "val")


def test_conic_patch_info_of_another_length_one_line(conic_release, tmp_path):
    root = _copy_release(conic_release[0], tmp_path / "c")
    (root / "patch_info.csv").write_text("patch_info\nconsep_1-0000\n")
    with pytest.raises(DataError, match=r"patch_info.csv: 1 patches listed for 50"):
        open_dataset(root)
    res = run("check-data", root)
    assert res.exit_code == 1
    assert problem_lines(res.output, root) == [
        f"{root / 'patch_info.csv'}: 1 patches listed for 50 in images.npy/labels.npy; it must name every patch, "
        "in order (use the release's own file)"]
    assert_extract_refuses(root, tmp_path, "patch_info.csv: 1 patches listed for 50")


def test_conic_check_data_counts_sources_split_and_nuclei(conic_release):
    root, _, (_, labels) = conic_release
    report = check_data(root, pixels=True)
    assert report.ok and report.summary["sources"] == 25
    assert report.summary["splits"] == {"train": 40, "val": 10}
    want = {}
    for lab in labels:  # each nucleus once, by the class of its pixels
        for i in np.unique(lab[..., 0])[1:]:
            name = ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"][
                int(lab[..., 1][lab[..., 0] == i][0]) - 1]
            want[name] = want.get(name, 0) + 1
    assert report.summary["nuclei"] == want
    assert any(line.startswith("  nuclei    ") for line in report.lines())


def test_pannuke_check_data_counts_nuclei_per_class(pannuke_release):
    root, (_, labels, _) = pannuke_release
    report = check_data(root, pixels=True)
    names = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    want = {n: sum(len(np.unique(lab[..., 0][lab[..., 1] == c + 1])) for lab in labels) for c, n in enumerate(names)}
    assert report.ok and report.summary["nuclei"] == want


def test_datasets_command_lists_every_layout_with_licence_and_folder():
    res = run("datasets")
    assert res.exit_code == 0
    out = res.output
    for name in formats()[1:]:
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), name
    block = out[out.index("pannuke "):out.index("conic ")]
    assert "CC BY-NC-SA 4.0" in block and "Fold 1" in block and "warwick.ac.uk" in block
    assert "CC BY-NC-SA 4.0" in out[out.index("conic "):]


# ----------------------------------------------------------------------------- CytoDArk0

@pytest.fixture(scope="module")
def cytodark0_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("cyto")
    return root / "cytoDArk0", write_cytodark0_release(root)


@pytest.mark.parametrize("inside, side", [(".", 1024), ("20x", 1024), ("20x/1024x1024", 1024), ("40x", 2048)])
def test_cytodark0_read_from_the_root_or_a_magnification(cytodark0_release, inside, side):
    root, images = cytodark0_release
    path = root if inside == "." else root / inside
    assert detect_format(path) == "cytodark0"
    ds = open_dataset(path)
    assert ds.stain == "Nissl" and ds.describe()["magnification"] == ("40x" if side == 2048 else "20x")
    assert ds.mpp == (0.274 if side == 2048 else 0.548)  # cytoark's metadata: the release's own resolution
    ends = ds.tiles.offset + ds.tiles.valid
    assert ends.max() == side and ends.min() > 0  # the release's image size, whole, cut without resizing
    if side == 1024:
        stem = "ID57_Cerebellum_Chimpanzee"
        k = ds.tiles.source_names.index(stem)
        image, inst = images[stem]
        assert np.array_equal(ds.source_labels(k)[..., 0], inst)
        first = int(np.flatnonzero(ds.tiles.source == k)[0])
        assert np.array_equal(ds.images([first])[0], image[:256, :256])


def test_cytodark0_folds_csv_is_the_default_split(cytodark0_release):
    root, _ = cytodark0_release
    ds = open_dataset(root)
    fold_of = {ds.tiles.source_names[s]: int(f) for s, f in zip(ds.tiles.source, ds.folds)}
    assert fold_of == {"ID1_Aud_Cortex_Tursiops": 0, "ID2_Aud_Cortex_Tursiops": 0, "ID57_Cerebellum_Chimpanzee": 1,
                       "ID62_Visual_Cortex_Chimpanzee": 2}
    assert ds.fold_names == ["train", "val", "test"] and ds.splits == {"train": [0], "val": [1], "test": [2]}
    area_of = {ds.tiles.source_names[s]: t for s, t in zip(ds.tiles.source, ds.tissue)}
    assert area_of == {"ID1_Aud_Cortex_Tursiops": "auditory cortex", "ID2_Aud_Cortex_Tursiops": "auditory cortex",
                       "ID57_Cerebellum_Chimpanzee": "cerebellum", "ID62_Visual_Cortex_Chimpanzee": "visual cortex"}
    report = check_data(root, pixels=True)
    assert report.ok, report.problems
    assert report.summary["images"] == 4 and report.summary["nuclei"] == {"untyped": 16}
    assert any("Nissl stain, not H&E" in n for n in report.notes)
    truth = read_label_maps(root)
    assert truth.layout == "cytodark0" and truth.names[0] == "ID1_Aud_Cortex_Tursiops" and truth.types is None


def test_cytodark0_folds_csv_naming_a_missing_image_one_line(cytodark0_release, tmp_path):
    root = _copy_release(cytodark0_release[0], tmp_path / "cytoDArk0")
    (root / "20x" / "1024x1024" / "image" / "ID2_Aud_Cortex_Tursiops.png").unlink()
    res = run("check-data", root)
    assert res.exit_code == 1
    folds_csv = root / "20x" / "1024x1024" / "folds.csv"
    assert problem_lines(res.output, root) == [
        f"{folds_csv}: names image 'ID2_Aud_Cortex_Tursiops', which is not in {folds_csv.parent / 'image'} (1 missing); "
        "unzip the release again"]
    assert_extract_refuses(root, tmp_path, "names image 'ID2_Aud_Cortex_Tursiops', which is not in")


# ----------------------------------------------------------------------------- CoNSeP, CPM-17

@pytest.fixture(scope="module")
def consep_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("consep")
    return root / "CoNSeP", write_consep_release(root)


def test_consep_read_as_unzipped_rgba_as_rgb_types_merged(consep_release):
    from embedcache.datasets.consep import HOVERNET_CLASSES

    root, images = consep_release
    assert detect_format(root) == "consep"
    ds = open_dataset(root)
    assert ds.tiles.source_names == ["train_1", "train_2", "test_1"]
    assert ds.fold_names == ["train", "test"] and ds.splits == {"train": [0], "test": [1]}
    assert sorted(set(ds.folds.tolist())) == [0, 1] and ds.class_names == HOVERNET_CLASSES and ds.mpp == 0.25
    rgba, inst, types = images["Train/train_2"]
    maps = ds.source_labels(1)
    assert np.array_equal(maps[..., 0], inst)
    # HoVer-Net's merge, written out: 3, 4 -> 3 epithelial; 5, 6, 7 -> 4 spindle-shaped.
    merged = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}
    assert np.array_equal(maps[..., 1], np.vectorize(merged.get)(types))
    first = int(np.flatnonzero(ds.tiles.source == 1)[0])
    assert np.array_equal(ds.images([first])[0], rgba[:256, :256, :3])
    seven = open_dataset(root, classes="consep")
    assert np.array_equal(seven.source_labels(1)[..., 1], types) and len(seven.class_names) == 7
    one = open_dataset(root / "Test")
    assert one.tiles.source_names == ["test_1"] and one.folds.tolist() == [1] * one.n_tiles


def test_consep_evaluated_against_itself_and_checked(consep_release):
    from embedcache.metrics.evaluation import evaluate

    root, _ = consep_release
    ev = evaluate(root, root, "hovernet")
    assert ev.summary["pq"] == pytest.approx(1.0)
    report = check_data(root, pixels=True)
    assert report.ok, report.problems
    assert report.summary["images"] == 3 and report.summary["splits"]["test"] > 0
    assert sum(report.summary["nuclei"].values()) == 42 and set(report.summary["nuclei"]) == {
        "other", "inflammatory", "epithelial", "spindle-shaped"}


def test_consep_mat_without_inst_map_one_line_nothing_written(consep_release, tmp_path):
    from scipy.io import savemat

    root = _copy_release(consep_release[0], tmp_path / "CoNSeP")
    bad = root / "Train" / "Labels" / "train_2.mat"
    savemat(bad, {"type_map": np.zeros((1000, 1000))})
    res = run("check-data", root)
    assert res.exit_code == 1
    assert problem_lines(res.output, root) == [
        f"{bad}: no 'inst_map' in this .mat file (it holds type_map); the release's label files hold it"]
    with pytest.raises(DataError, match="no 'inst_map'"):
        open_dataset(root).source_labels(1)
    assert_extract_refuses(root, tmp_path, "no 'inst_map'")


@pytest.fixture(scope="module")
def cpm17_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpm17")
    return root / "cpm17", write_cpm17_release(root)


def test_cpm17_read_as_unzipped(cpm17_release):
    root, images = cpm17_release
    assert detect_format(root) == "cpm17" and detect_format(root / "test") == "cpm17"
    ds = open_dataset(root)
    assert ds.tiles.source_names == ["train_image_00", "train_image_01", "test_image_00"]
    assert ds.class_names is None and ds.splits == {"train": [0], "test": [1]}
    rgb, inst = images["train/image_01"]
    assert np.array_equal(ds.source_labels(1)[..., 0], inst) and not ds.source_labels(1)[..., 1].any()
    ends = ds.tiles.offset[ds.tiles.source == 1] + ds.tiles.valid[ds.tiles.source == 1]
    assert tuple(ends.max(0)) == (600, 600)
    truth = read_label_maps(root)
    assert truth.layout == "cpm17" and truth.types is None and truth.instances[1].shape == (600, 600)
    from embedcache.infer.predict import data_images

    live, layout, n, _, _ = data_images(root, "auto", (256, 256), 64)  # what predict --data cuts
    live = list(live)
    assert layout == "folder" and n == 3 and [j.name for j in live] == truth.names
    assert [j.shape for j in live] == [(500, 500), (600, 600), (500, 500)]


# ----------------------------------------------------------------------------- Lizard

@pytest.fixture(scope="module")
def lizard_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("lizard")
    return root, write_lizard_release(root)


@pytest.mark.parametrize("inside", [".", "Lizard_Labels", "Lizard_Images2"])
def test_lizard_read_as_unzipped_with_its_splits_and_cohorts(lizard_release, inside):
    root, images = lizard_release
    path = root if inside == "." else root / inside
    assert detect_format(path) == "lizard"
    ds = open_dataset(path)
    assert ds.tiles.source_names == ["consep_1", "crag_1", "glas_2"]  # from both image folders
    assert ds.class_names[1] == "neutrophil" and ds.class_names[6] == "connective" and ds.mpp == 0.5
    fold_of = {ds.tiles.source_names[s]: (int(f), t) for s, f, t in zip(ds.tiles.source, ds.folds, ds.tissue)}
    assert fold_of == {"consep_1": (0, "consep"), "crag_1": (1, "crag"), "glas_2": (2, "glas")}
    rgb, inst, types = images["crag_1"]
    maps = ds.source_labels(1)
    assert np.array_equal(maps[..., 0], inst) and np.array_equal(maps[..., 1], types)
    assert np.array_equal(ds.images([int(np.flatnonzero(ds.tiles.source == 1)[0])])[0], rgb[:256, :256])


def test_lizard_evaluated_against_itself(lizard_release):
    from embedcache.metrics.evaluation import evaluate

    root, _ = lizard_release
    truth = read_label_maps(root)
    assert truth.layout == "lizard" and truth.tissue == ["consep", "crag", "glas"]
    assert evaluate(truth, truth, "hovernet").summary["pq"] == pytest.approx(1.0)


def test_lizard_scored_as_conic_counts_whole_images_not_a_patch_centre():
    """CoNIC's R2 counts the central 224x224 of a 256x256 patch; on Lizard's whole images a nucleus in a corner
    counts too: the prediction that misses one is not perfect."""
    from embedcache.datasets import LabelSet
    from embedcache.metrics.evaluation import evaluate

    def image(corner: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
        inst = np.zeros((512, 512), np.int32)
        inst[250:262, 250:262] = 1  # the centre
        inst[100 + 20 * seed:110 + 20 * seed, 300:310] = 2
        if corner:
            inst[5:15, 5:15] = 3  # far outside the central 224x224
        return inst, np.where(inst > 0, 2, 0).astype(np.int32)

    def labels(corners):
        maps = [image(c, k) for k, c in enumerate(corners)]
        return LabelSet("lizard", [f"crag_{k}" for k in range(len(maps))], [m[0] for m in maps],
                        [m[1] for m in maps], None, dict(CONIC_CLASSES))

    truth, pred = labels([True, False, True]), labels([False, False, True])
    ev = evaluate(truth, pred, "auto")
    assert ev.protocol == "conic" and ev.summary["count_crop"] is None
    assert ev.summary["r2_per_class"][2] < 1  # epithelial counts 3, 2, 3 against 2, 2, 3
    tiles = LabelSet("conic", truth.names, [m[200:456, 200:456] for m in truth.instances],
                     [m[200:456, 200:456] for m in truth.types], None, dict(CONIC_CLASSES))
    assert evaluate(tiles, tiles, "auto").summary["count_crop"] == 224  # CoNIC's own patches


# ----------------------------------------------------------------------------- MoNuSeg

@pytest.fixture(scope="module")
def monuseg_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("monuseg")
    return root, write_monuseg_release(root)


def test_monuseg_outlines_rasterised_later_region_on_top(monuseg_release):
    from skimage.draw import polygon

    root, images = monuseg_release
    assert detect_format(root) == "monuseg"
    ds = open_dataset(root)
    assert ds.tiles.source_names == ["TCGA-A7-A13E-01Z-00-DX1", "TCGA-B0-5711-01Z-00-DX1", "TCGA-2Z-A9J9-01A-01-TS1"]
    assert ds.fold_names == ["train", "test"] and ds.splits == {"train": [0], "test": [1]}
    assert ds.mpp == pytest.approx(0.2521) and ds.tissue is None  # the test images' organs are not published
    inst = ds.source_labels(0)[..., 0]
    assert inst[105, 105] == 1 and inst[135, 135] == 2 and inst[165, 165] == 2 and inst[150, 120] == 0
    tri = np.asarray(images["TCGA-A7-A13E-01Z-00-DX1"][1][2])
    rr, cc = polygon(tri[:, 1], tri[:, 0], shape=inst.shape)
    assert set(np.unique(inst[rr, cc])) == {3} and (inst == 3).sum() == len(rr)
    train = open_dataset(root / "MoNuSeg 2018 Training Data")
    assert train.tissue[0] == "breast" and train.tissue[-1] == "kidney" and set(train.folds.tolist()) == {0}
    rgb = images["TCGA-2Z-A9J9-01A-01-TS1"][0]
    test = open_dataset(root / "MoNuSegTestData")
    assert np.array_equal(test.images([0])[0], rgb[:256, :256]) and set(test.folds.tolist()) == {1}


def test_monuseg_polygon_of_two_vertices_one_line_nothing_written(monuseg_release, tmp_path):
    root = _copy_release(monuseg_release[0], tmp_path / "m")
    bad = root / "MoNuSegTestData" / "TCGA-2Z-A9J9-01A-01-TS1.xml"
    bad.write_text(aperio_xml([[(10, 10), (20, 20), (10, 30)], [(50, 50), (60, 60)]]))
    res = run("check-data", root)
    assert res.exit_code == 1
    assert problem_lines(res.output, root) == [
        f"{bad}: Region 2 has 2 vertices; an outline needs at least three"]
    assert_extract_refuses(root, tmp_path, "Region 2 has 2 vertices")


def test_cpm17_extracted_and_put_back_together_by_image(tmp_path):
    from embedcache.store.images import image_truth, source_images

    images = write_cpm17_release(tmp_path, sizes=((300, 340),), test=1)
    store = open_store(make_store(tmp_path / "cpm17", tmp_path / "s.zarr", variants="none"))
    assert store.dataset_layout == "cpm17" and not store.tiles_are_images
    assert store.official_splits == {"train": [0], "test": [1]}
    whole = source_images(store)
    assert [j.name for j in whole] == ["train_image_00", "test_image_00"] and whole[0].shape == (300, 340)
    truth = image_truth(store, whole)
    assert np.array_equal(truth.instances[0], images["train/image_00"][1])
    val = make_split(store, "official")
    assert set(np.asarray(store.tile_info()["source"])[val.val].tolist()) == {1}


def test_stain_variants_refused_on_nissl(cytodark0_release, tmp_path):
    root, _ = cytodark0_release
    out = tmp_path / "s.zarr"
    res = run("extract", "--data", root / "20x", "--out", out, "--encoder", "timm:test_vit", "--weights", "random",
              "--variants", "d4+stain", "--workers", "0", "--quiet", "--loader-workers", "0")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1  # one error line (the check's notes go to stdout)
    assert "Nissl-stained, not H&E" in res.stderr and "stain_a, stain_b" in res.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- every release, end to end

RELEASES = {  # fixture, folder under the fixture's root, the release's official held-out split
    "pannuke": ("pannuke_release", ".", "test"),
    "conic": ("conic_release", ".", "val"),
    "cytodark0": ("cytodark0_release", "20x", "val"),
    "consep": ("consep_release", ".", "test"),
    "lizard": ("lizard_release", ".", "test"),
    "monuseg": ("monuseg_release", ".", "test"),
}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_every_release_scores_itself_perfectly(request, name):
    from embedcache.metrics.evaluation import evaluate

    fixture, inside, _ = RELEASES[name]
    root = request.getfixturevalue(fixture)[0]
    truth = read_label_maps(root / inside)
    assert truth.layout == name and len(truth) > 0
    ev = evaluate(truth, truth, "hovernet")
    assert ev.summary["pq"] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["cytodark0", "consep", "lizard", "monuseg"])
def test_whole_image_releases_extract_with_what_they_know(request, tmp_path, name):
    fixture, inside, held = RELEASES[name]
    root = request.getfixturevalue(fixture)[0] / inside
    ds = open_dataset(root, tile_size=512, overlap=0)
    store = open_store(make_store(root, tmp_path / "s.zarr", encoder="timm:test_vit", variants="none",
                                  tile_size=512, overlap=0))
    assert store.n_tiles == ds.n_tiles and store.dataset_layout == name
    assert list(store.source_names) == ds.tiles.source_names
    assert store.official_splits == ds.splits and store.fold_names == ds.fold_names
    assert store.tile_mpp == ds.mpp and dict(store.class_names or {}) == dict(ds.class_names or {})
    split = make_split(store, "official")
    assert set(np.asarray(store.tile_info()["fold"])[split.val].tolist()) == set(ds.splits[held])
    k = int(np.flatnonzero(ds.tiles.source == 0)[0])
    assert np.array_equal(store.labels(k)[0], ds.labels([k])[0, ..., 0])


def test_conic_whole_cohorts_held_out_by_name(conic_store, conic_dir, tmp_path):
    cohort = np.asarray(conic_store.tissue)
    for seed in range(3):
        split = make_split(conic_store, "frac:0.4,groups=tissue", seed=seed)
        held = set(cohort[split.val])
        assert len(held) == 2 and not held & set(cohort[split.train])
    plain = open_store(make_store(conic_dir, tmp_path / "p.zarr", variants="none"))
    with pytest.raises(DataError, match="gives no tissue or cohort"):
        make_split(plain, "frac:0.4,groups=tissue")


def test_conic_evaluation_records_each_patch_source_for_the_report(conic_store):
    from embedcache.store.images import image_groups, source_images

    val = make_split(conic_store, "official").val
    images = source_images(conic_store, val)
    groups = image_groups(conic_store, images)
    source = np.asarray(conic_store.tile_info()["source"])
    assert groups == [conic_store.source_names[source[t]] for t in val]
    assert len(set(groups)) == 5 and len(groups) == 10  # five held-out Lizard images, two patches each


def test_magnification_and_classes_chosen_from_the_command_line(cytodark0_release, consep_release, tmp_path):
    from embedcache.config import ExtractConfig

    assert "magnification" not in ExtractConfig().to_dict() and "classes" not in ExtractConfig().to_dict()
    cfg = ExtractConfig(magnification="40x", classes="consep")
    assert ExtractConfig.from_dict(cfg.to_dict()) == cfg
    root = cytodark0_release[0]
    res = run("check-data", root, "--magnification", "40x")
    assert res.exit_code == 0 and "  images    1" in res.output
    fast = ["--encoder", "timm:test_vit", "--weights", "random", "--variants", "none", "--workers", "0", "--quiet",
            "--loader-workers", "0", "--tile-size", "512", "--overlap", "0"]
    res = run("extract", "--data", root, "--out", tmp_path / "c.zarr", "--magnification", "40x", *fast)
    assert res.exit_code == 0, res.output
    store = open_store(tmp_path / "c.zarr")
    assert store.n_tiles == 16 and list(store.source_names) == ["ID54_Cerebellum_Bovine"]  # one 2048x2048 image
    res = run("extract", "--data", consep_release[0] / "Test", "--out", tmp_path / "s.zarr", "--classes", "consep",
              *fast)
    assert res.exit_code == 0, res.output
    assert len(open_store(tmp_path / "s.zarr").class_names) == 7


def test_a_pipeline_runs_on_pannuke_as_unzipped_with_its_official_split(tmp_path):
    """The seed study's first dataset straight from its archives: extract, fit holding out the official fold,
    score with the protocol the release names, report; no conversion step."""
    import json

    from embedcache.pipeline.run import execute, plan
    from embedcache.pipeline.spec import parse_pipeline

    root = tmp_path / "pannuke"
    write_pannuke_release(root, sizes=(2, 2, 2))
    spec = parse_pipeline({
        "out": str(tmp_path / "study"),
        "datasets": {"pannuke": {"path": str(root), "fit": {"val": "official"}}},
        "encoders": {"cnn": {"encoder": "timm:test_efficientnet", "weights": "random", "variants": "none",
                             "unit_tiles": 2, "loader_workers": 0, "device": "cpu"}},
        "fit": {"epochs": 1, "batch_size": 2, "loader_workers": 0, "preload": "no", "device": "cpu",
                "decoder": {"width": 8, "depth": 1}},
        "report": {"n_boot": 200, "overlays": 0}}, "study.yaml")
    p = plan(spec, progress=False)
    outcome = execute(p, progress=False, echo=lambda line: None)
    assert outcome.report is not None and not outcome.failed
    run = json.loads(next(tmp_path.glob("study/steps/fit-*/run/run.json")).read_text())
    assert len(run["split"]["val"]) == 2 and sorted(run["split"]["val"]) == [4, 5]  # fold 3's tiles, as released
    ev = json.loads(next(tmp_path.glob("study/steps/evaluate-*/eval.json")).read_text())
    assert ev["protocol"] == "pannuke"
