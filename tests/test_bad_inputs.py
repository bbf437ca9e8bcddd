"""Bad input, command by command: one clear line, a non-zero exit, no traceback, nothing of the user's changed.

The product's rule: bad input gets ONE line (what is wrong, where, what to do) starting with ``Error:`` on
stderr, a non-zero exit, no traceback (unless --debug), and nothing the user already has is lost or damaged.
click's own usage errors keep click's standard form (``Usage:``, ``Try ...``, then one ``Error:`` line).
``check-data`` and ``encoders --check`` are reports by design: one line per problem on stdout, exit 1; their
cases (marked [report]) check that the problem gets exactly one line naming the file.

Every case runs against one set of inputs built once per module (a CoNIC folder, stores with and without
labels, an instance-only store, a decoder run, two slides and their store, a cell store, broken image
folders, pipeline files); every file of it is hashed before and after each case, so a refusal that writes
into the user's data, store or run fails the case.

Cases (pytest ids):

extract
    extract-missing-data, extract-data-is-a-file, extract-unknown-encoder, extract-dtype-typo,
    extract-format-typo, extract-unknown-variant, extract-unknown-layer, extract-missing-weights,
    extract-weights-of-another-size, extract-weights-unknown-transformers-key,
    extract-batch-size-zero, extract-batch-size-negative, extract-unit-tiles-zero, extract-tile-size-too-small,
    extract-overlap-over-half-tile, extract-grayscale-png, extract-rgba-transparent, extract-cmyk-jpeg,
    extract-truncated-png, extract-mask-wrong-size, extract-rgb-coded-mask, extract-out-under-a-file, extract-store-made-otherwise,
    global-threads-zero
info / verify
    info-missing-store, info-folder-not-a-store, info-file-not-a-store, info-run-dir-not-a-store,
    verify-missing-store, verify-folder-not-a-store
check-data
    check-data-grayscale-png [report], check-data-cmyk-jpeg [report], check-data-rgba-transparent [report],
    check-data-truncated-png [report],
    check-data-mask-wrong-size [report], check-data-rgb-coded-mask [report], check-data-missing-path [report],
    check-data-tile-size-too-small, check-data-overlap-over-half-tile
evaluate
    evaluate-mismatched-images, evaluate-truth-without-label-maps, evaluate-missing-truth,
    evaluate-protocol-typo, evaluate-classes-not-numbers, evaluate-radius-zero, evaluate-json-under-a-file,
    evaluate-csv-is-a-folder
fit-decoder
    fit-decoder-store-without-labels, fit-decoder-not-a-store, fit-decoder-epochs-zero,
    fit-decoder-batch-size-zero, fit-decoder-empty-val-fold, fit-decoder-val-typo,
    fit-decoder-val-fraction-out-of-range, fit-decoder-width-zero, fit-decoder-device-typo,
    fit-decoder-out-under-a-file, fit-decoder-run-made-otherwise
predict
    predict-run-not-a-run, predict-run-missing, predict-store-and-data, predict-no-source,
    predict-tta-typo, predict-tta-variants-not-cached, predict-batch-size-zero, predict-out-is-a-dataset,
    predict-out-under-a-file, predict-data-missing, predict-data-grayscale, predict-data-cmyk-jpeg,
    predict-data-overlap-too-large,
    predict-slides-folder-without-slides, predict-slides-with-data
probe
    probe-missing-store, probe-type-on-instance-only-store, probe-csv-unknown-tile, probe-labels-typo,
    probe-missing-label-file, probe-unknown-layer, probe-folds-one, probe-groups-single-group
cells
    cells-store-without-labels, cells-missing-nuclei, cells-out-is-a-store, cells-radius-zero
fit-ssl
    fit-ssl-no-store, fit-ssl-non-slide-store, fit-ssl-name-of-extracted-layer, fit-ssl-pairs-zero
retrieval
    retrieval-unknown-query-slide, retrieval-non-slide-store, retrieval-k-zero, retrieval-csv-unknown-tile
run (pipeline YAML)
    run-yaml-syntax-error, run-unknown-key, run-unknown-encoder, run-missing-file, run-missing-data-path,
    run-only-typo, run-workers-negative
encoders
    encoders-check-unknown-encoder, encoders-check-missing-weights [report], encoders-family-typo
demo-data
    demo-data-tiles-zero, demo-data-fewer-tiles-than-folds, demo-data-into-a-dataset, demo-data-out-under-a-file
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_CNN, inst, rgb
from decoder_helpers import make_store, one_thread, write_conic  # noqa: F401
from PIL import Image

from embedcache.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

# Extraction settings that run in a blink on a CPU (random weights, no workers, one variant).
FAST = ["--encoder", TINY_CNN, "--weights", "random", "--variants", "none", "--loader-workers", "0",
        "--device", "cpu", "--quiet"]
FOLDER = [*FAST, "--tile-size", "64"]  # image folders: 64-px tiles
FIT = ["--epochs", "1", "--val", "tiles:5", "--width", "8", "--loader-workers", "0", "--batch-size", "2",
       "--device", "cpu", "--quiet"]
PAIRS = ["--d-near", "100", "--d-far", "150"]  # 64-px tiles at 1 um/px


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


def _invoke(*args):
    return _runner().invoke(main, [str(a) for a in args])


# ----------------------------------------------------------------------------- the user's files


def _folder(root: Path, name: str) -> Path:
    """A folder dataset with one good image and its instance map."""
    d = root / name
    d.mkdir(parents=True)
    Image.fromarray(rgb(64, 64)).save(d / "ok.png")
    Image.fromarray(inst(64, 64)).save(d / "ok_inst.png")
    return d


def _bad_folders(root: Path) -> SimpleNamespace:
    gray = _folder(root, "gray")
    Image.fromarray(rgb(64, 64)[..., 0]).save(gray / "g.png")
    Image.fromarray(inst(64, 64)).save(gray / "g_inst.png")
    rgba = _folder(root, "rgba")
    see_through = np.dstack([rgb(64, 64), np.full((64, 64), 255, np.uint8)])
    see_through[:8, :8, 3] = 0
    Image.fromarray(see_through, "RGBA").save(rgba / "t.png")
    Image.fromarray(inst(64, 64)).save(rgba / "t_inst.png")
    trunc = _folder(root, "trunc")
    Image.fromarray(rgb(80, 80, seed=2)).save(trunc / "tr.png")
    raw = (trunc / "tr.png").read_bytes()
    (trunc / "tr.png").write_bytes(raw[:len(raw) // 2])  # the header still reads
    Image.fromarray(inst(80, 80)).save(trunc / "tr_inst.png")
    size = _folder(root, "size")
    Image.fromarray(rgb(64, 96)).save(size / "w.png")
    Image.fromarray(inst(64, 90)).save(size / "w_inst.png")  # 6 px too narrow
    coded = _folder(root, "coded")
    Image.fromarray(rgb(64, 64)).save(coded / "c.png")
    Image.fromarray(rgb(64, 64, seed=5)).save(coded / "c_inst.png")  # instance ids coded as RGB colours
    noslides = _folder(root, "noslides")
    cmyk = _folder(root, "cmyk")  # a press JPEG: 4 channels that are not RGB and alpha
    Image.fromarray(rgb(64, 64)).convert("CMYK").save(cmyk / "press.jpg")
    Image.fromarray(inst(64, 64)).save(cmyk / "press_inst.png")
    return SimpleNamespace(gray=gray, rgba=rgba, trunc=trunc, size=size, coded=coded, noslides=noslides, cmyk=cmyk)


def _evaluate_folders(root: Path) -> SimpleNamespace:
    def maps(d: Path, names):
        d.mkdir(parents=True)
        for k, name in enumerate(names):
            m = np.zeros((32, 32), np.uint16)
            m[2:9, 3:11] = k + 1
            Image.fromarray(m).save(d / f"{name}_inst.png")
        return d

    empty = root / "ev_empty"
    empty.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(empty / "a.png")  # an image, no label maps
    return SimpleNamespace(truth=maps(root / "ev_truth", ["im0", "im1", "im2"]),
                           other=maps(root / "ev_other", ["im5", "im6"]), empty=empty)


def _pipelines(root: Path, scratch: Path) -> SimpleNamespace:
    enc = "encoders:\n  cnn: {encoder: timm:test_efficientnet, weights: random}\n"
    out = f"out: {scratch / 'pipeline-out'}\n"
    files = {
        "good": "datasets:\n  d: {synthetic: {tiles: 6}}\n" + enc + out,
        "syntax": "datasets:\n  d: {synthetic: {tiles: 6}\n" + enc + out,  # the '}' is missing on line 2
        "unknown_key": "datasets:\n  d: {synthetic: {tiles: 6}}\n" + enc + "fit:\n  epoch: 3\n" + out,
        "unknown_encoder": "datasets:\n  d: {synthetic: {tiles: 6}}\nencoders:\n  cnn: {encoder: uni2}\n" + out,
        "no_data": f"datasets:\n  d: {{path: {scratch / 'no-such-data'}}}\n" + enc + out,
    }
    paths = {}
    for name, text in files.items():
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(text)
    return SimpleNamespace(**paths)


def _transformers_checkpoints(root: Path) -> tuple[Path, Path]:
    """Checkpoints with transformers' DINOv2 key names: one 8 wide (not Hibou-B's 768), one with a key of no
    known layout."""
    import torch
    from safetensors.torch import save_file

    small = {"embeddings.cls_token": torch.zeros(1, 1, 8), "embeddings.register_tokens": torch.zeros(1, 4, 8),
             "embeddings.position_embeddings": torch.zeros(1, 257, 8),
             "embeddings.patch_embeddings.projection.weight": torch.zeros(8, 3, 14, 14)}
    save_file(small, str(root / "hf_small.safetensors"))
    odd = {**small, "encoder.layer.0.attention.attention.rotary.weight": torch.zeros(4)}
    save_file(odd, str(root / "hf_odd.safetensors"))
    return root / "hf_small.safetensors", root / "hf_odd.safetensors"


@pytest.fixture(scope="module")
def w(tmp_path_factory, one_thread):  # noqa: F811
    """Everything a user could already have, under ``w.root`` (hashed around every case); ``w.scratch`` is
    elsewhere, for paths that must not exist."""
    from embedcache import open_store
    from embedcache.datasets.synthetic_slides import write_synthetic_slides

    base = tmp_path_factory.mktemp("bad-inputs")
    root, scratch = base / "user", base / "scratch"
    root.mkdir()
    scratch.mkdir()
    conic = write_conic(root / "conic", n=6)
    store = make_store(conic, root / "s.zarr")  # identity + flips, with labels
    bare = make_store(write_conic(root / "unlabelled", n=2, labels=False), root / "u.zarr", variants="none")
    inst = root / "inst"
    inst.mkdir()
    images, labels = np.load(conic / "images.npy"), np.load(conic / "labels.npy")
    for k in range(2):
        Image.fromarray(images[k]).save(inst / f"t{k}.png")
        Image.fromarray(labels[k, ..., 0].astype(np.uint16)).save(inst / f"t{k}_inst.png")
    inst_store = make_store(inst, root / "inst.zarr", variants="none", tile_size=64, overlap=0)
    slides = root / "slides"
    write_synthetic_slides(slides, n_slides=2, shape=(512, 512), mpp=0.5, seed=1)
    slide_store = root / "slides.zarr"
    res = _invoke("extract", "--data", slides, "--format", "slides", "--tile-mpp", "1.0", "--out", slide_store,
                  "--encoder", "timm:test_resnet", "--weights", "random", "--variants", "none", "--tile-size", "64",
                  "--loader-workers", "0", "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    run = root / "run"
    res = _invoke("fit-decoder", "--store", store, "--out", run, *FIT)
    assert res.exit_code == 0, res.output
    cells = root / "s.cells.zarr"
    res = _invoke("cells", "--store", store, "--out", cells, "--quiet")
    assert res.exit_code == 0, res.output

    unknown_tile = root / "unknown_tile.csv"
    unknown_tile.write_text("tile,label\n" + "".join(f"{t},{'ab'[t % 2]}\n" for t in range(6)) + "99,a\n")
    one_group = root / "one_group.csv"
    one_group.write_text("image,group\n" + "".join(f"{s},g\n" for s in open_store(cells).source_names))
    a_file = conic / "images.npy"  # a regular file, for outputs asked for under it
    hf_small, hf_odd = _transformers_checkpoints(root)
    return SimpleNamespace(root=root, scratch=scratch, conic=conic, store=store, bare=bare, inst=inst,
                           hf_small=hf_small, hf_odd=hf_odd,
                           inst_store=inst_store, slides=slides, slide_store=slide_store, run=run, cells=cells,
                           unknown_tile=unknown_tile, one_group=one_group, a_file=a_file,
                           bad=_bad_folders(root), ev=_evaluate_folders(root), yaml=_pipelines(root, scratch))


# ----------------------------------------------------------------------------- the cases

# (id, argv builder (w, tmp) -> list, fragment the one error line must hold)
CASES = [
    # extract
    ("extract-missing-data", lambda w, t: ["extract", "--data", w.scratch / "nowhere", "--out", t / "x.zarr", *FAST],
     "nowhere: no such file or folder"),
    ("extract-data-is-a-file", lambda w, t: ["extract", "--data", w.conic / "labels.npy", "--out", t / "x.zarr",
                                             *FAST], "labels.npy: expected a folder"),
    ("extract-unknown-encoder", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", "--encoder", "uni2"],
     "unknown encoder 'uni2'; did you mean 'uni'"),
    ("extract-dtype-typo", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                         "--dtype", "float8"], "'float8' is not one of"),
    ("extract-format-typo", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                          "--format", "pannuk"], "'pannuk' is not one of"),
    ("extract-unknown-variant", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                              "--variants", "rot45"], "unknown variant 'rot45'"),
    ("extract-unknown-layer", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                            "--layers", "blocks.77"], "no layer 'blocks.77'; it has blocks.0"),
    ("extract-missing-weights", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                              "--weights", w.scratch / "w.pth"], "w.pth not found"),
    ("extract-weights-of-another-size", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                                      "--encoder", "hibou-b", "--weights", w.hf_small],
     "cls_token: file (1, 1, 8), model (1, 1, 768)"),
    ("extract-weights-unknown-transformers-key", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr",
                                                               *FAST, "--encoder", "hibou-b", "--weights", w.hf_odd],
     "1 key(s) of no known transformers ViT/DINOv2 layout (e.g. encoder.layer.0.attention.attention.rotary.weight)"),
    ("extract-batch-size-zero", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                              "--batch-size", "0"], "batch size must be at least 1, got 0"),
    ("extract-batch-size-negative", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                                  "--batch-size", "-3"], "got -3"),
    ("extract-unit-tiles-zero", lambda w, t: ["extract", "--data", w.conic, "--out", t / "x.zarr", *FAST,
                                              "--unit-tiles", "0"], "unit_tiles must be at least 1, got 0"),
    ("extract-tile-size-too-small", lambda w, t: ["extract", "--data", w.inst, "--out", t / "x.zarr", *FAST,
                                                  "--tile-size", "8"], "tile size 8 is too small"),
    ("extract-overlap-over-half-tile", lambda w, t: ["extract", "--data", w.inst, "--out", t / "x.zarr", *FOLDER,
                                                     "--overlap", "40"],
     "overlap must lie in 0..32 px for 64-px tiles, got 40"),
    ("extract-grayscale-png", lambda w, t: ["extract", "--data", w.bad.gray, "--out", t / "x.zarr", *FOLDER],
     "g.png: a grayscale image (mode L)"),
    ("extract-rgba-transparent", lambda w, t: ["extract", "--data", w.bad.rgba, "--out", t / "x.zarr", *FOLDER],
     "t.png: image has a transparent alpha channel"),
    ("extract-cmyk-jpeg", lambda w, t: ["extract", "--data", w.bad.cmyk, "--out", t / "x.zarr", *FOLDER],
     "press.jpg: CMYK colours would be read as RGB"),
    ("extract-truncated-png", lambda w, t: ["extract", "--data", w.bad.trunc, "--out", t / "x.zarr", *FOLDER],
     "tr.png: cannot read image (image file is truncated)"),
    ("extract-mask-wrong-size", lambda w, t: ["extract", "--data", w.bad.size, "--out", t / "x.zarr", *FOLDER],
     "w_inst.png: instance map is 90x64 px but its image w.png is 96x64 px"),
    ("extract-rgb-coded-mask", lambda w, t: ["extract", "--data", w.bad.coded, "--out", t / "x.zarr", *FOLDER],
     "c_inst.png: an RGB-coded instance map"),
    ("extract-out-under-a-file", lambda w, t: ["extract", "--data", w.conic, "--out", w.a_file / "x.zarr", *FAST],
     "images.npy/x.zarr"),
    ("extract-store-made-otherwise", lambda w, t: ["extract", "--data", w.conic, "--out", w.store, *FAST,
                                                   "--variants", "d4"],
     "s.zarr was made with another configuration (variants"),
    ("global-threads-zero", lambda w, t: ["--threads", "0", "info", w.store], "'--threads': 0 is not in the range"),
    # info / verify
    ("info-missing-store", lambda w, t: ["info", w.scratch / "none.zarr"], "none.zarr: no such store"),
    ("info-folder-not-a-store", lambda w, t: ["info", w.conic], "conic: not a Zarr store"),
    ("info-file-not-a-store", lambda w, t: ["info", w.a_file], "images.npy: not a Zarr store"),
    ("info-run-dir-not-a-store", lambda w, t: ["info", w.run], "run: not a Zarr store"),
    ("verify-missing-store", lambda w, t: ["verify", w.scratch / "none.zarr", "--quiet"], "none.zarr: no such store"),
    ("verify-folder-not-a-store", lambda w, t: ["verify", w.conic, "--quiet"], "conic: not a Zarr store"),
    # check-data: a report, one line per problem
    ("check-data-grayscale-png", lambda w, t: ["check-data", w.bad.gray, "--tile-size", "64"],
     "g.png: a grayscale image (mode L)"),
    ("check-data-cmyk-jpeg", lambda w, t: ["check-data", w.bad.cmyk, "--tile-size", "64", "--pixels"],
     "press.jpg: CMYK colours would be read as RGB"),
    ("check-data-rgba-transparent", lambda w, t: ["check-data", w.bad.rgba, "--tile-size", "64", "--pixels"],
     "t.png: image has a transparent alpha channel"),
    ("check-data-truncated-png", lambda w, t: ["check-data", w.bad.trunc, "--tile-size", "64", "--pixels"],
     "tr.png: cannot read image (image file is truncated)"),
    ("check-data-mask-wrong-size", lambda w, t: ["check-data", w.bad.size, "--tile-size", "64"],
     "w_inst.png: instance map is 90x64 px but its image w.png is 96x64 px"),
    ("check-data-rgb-coded-mask", lambda w, t: ["check-data", w.bad.coded, "--tile-size", "64"],
     "c_inst.png: an RGB-coded instance map"),
    ("check-data-missing-path", lambda w, t: ["check-data", w.scratch / "nowhere"], "nowhere: no such file or folder"),
    ("check-data-tile-size-too-small", lambda w, t: ["check-data", w.inst, "--tile-size", "8"],
     "tile size 8 is too small"),
    ("check-data-overlap-over-half-tile", lambda w, t: ["check-data", w.inst, "--tile-size", "64", "--overlap", "50"],
     "overlap 50 px: use 0..32 px for 64-px tiles"),
    # evaluate
    ("evaluate-mismatched-images", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.ev.truth,
                                                 "--pred", w.ev.other],
     "no image name in common (truth e.g. 'im0', prediction e.g. 'im5')"),
    ("evaluate-truth-without-label-maps", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.ev.empty,
                                                        "--pred", w.ev.truth], "ev_empty: no NAME_inst.png label maps"),
    ("evaluate-missing-truth", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.scratch / "nothere",
                                             "--pred", w.ev.truth], "nothere: no such file or folder"),
    ("evaluate-protocol-typo", lambda w, t: ["evaluate", "--protocol", "hovernt", "--truth", w.ev.truth,
                                             "--pred", w.ev.truth], "'hovernt' is not one of"),
    ("evaluate-classes-not-numbers", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.ev.truth,
                                                   "--pred", w.ev.truth, "--classes", "1,x"], "got '1,x'"),
    ("evaluate-radius-zero", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.ev.truth,
                                           "--pred", w.ev.truth, "--radius", "0"],
     "'--radius': 0.0 is not in the range"),
    ("evaluate-json-under-a-file", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.ev.truth,
                                                 "--pred", w.ev.truth, "--json", w.a_file / "s.json"],
     "images.npy): a file of that name is in the way"),
    ("evaluate-csv-is-a-folder", lambda w, t: ["evaluate", "--protocol", "hovernet", "--truth", w.ev.truth,
                                               "--pred", w.ev.truth, "--csv", w.conic], "conic' is a directory"),
    # fit-decoder
    ("fit-decoder-store-without-labels", lambda w, t: ["fit-decoder", "--store", w.bare, "--out", t / "r", *FIT],
     "u.zarr: the store has no labels"),
    ("fit-decoder-not-a-store", lambda w, t: ["fit-decoder", "--store", w.conic, "--out", t / "r", *FIT],
     "conic: not a Zarr store"),
    ("fit-decoder-epochs-zero", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r", *FIT,
                                              "--epochs", "0"], "'--epochs': 0 is not in the range x>=1"),
    ("fit-decoder-batch-size-zero", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r", *FIT,
                                                  "--batch-size", "0"], "'--batch-size': 0 is not in the range"),
    ("fit-decoder-empty-val-fold", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r", *FIT,
                                                 "--val", "fold9"], "the validation split 'fold9' holds no tiles"),
    ("fit-decoder-val-typo", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r", *FIT,
                                           "--val", "banana"], "validation split 'banana' not understood"),
    ("fit-decoder-val-fraction-out-of-range", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r",
                                                            *FIT, "--val", "frac:2"],
     "'frac:2': the fraction must lie strictly between 0 and 1"),
    ("fit-decoder-width-zero", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r", *FIT,
                                             "--width", "0"], "decoder width must lie in 8..1024, got 0"),
    ("fit-decoder-device-typo", lambda w, t: ["fit-decoder", "--store", w.store, "--out", t / "r", *FIT,
                                              "--device", "cdua"], "got 'cdua'"),
    ("fit-decoder-out-under-a-file", lambda w, t: ["fit-decoder", "--store", w.store, "--out", w.a_file / "r",
                                                   *FIT], "images.npy/r"),
    ("fit-decoder-run-made-otherwise", lambda w, t: ["fit-decoder", "--store", w.store, "--out", w.run, *FIT,
                                                     "--width", "16"], "run holds a run made with other settings"),
    # predict
    ("predict-run-not-a-run", lambda w, t: ["predict", "--run", w.conic, "--store", w.store, "--out", t / "p",
                                            "--quiet"], "conic: not a decoder run (no run.json)"),
    ("predict-run-missing", lambda w, t: ["predict", "--run", w.scratch / "norun", "--store", w.store,
                                          "--out", t / "p", "--quiet"], "norun: not a decoder run"),
    ("predict-store-and-data", lambda w, t: ["predict", "--run", w.run, "--store", w.store, "--data", w.conic,
                                             "--out", t / "p", "--quiet"], "not both"),
    ("predict-no-source", lambda w, t: ["predict", "--run", w.run, "--out", t / "p", "--quiet"],
     "give --store STORE"),
    ("predict-tta-typo", lambda w, t: ["predict", "--run", w.run, "--store", w.store, "--out", t / "p",
                                       "--tta", "d8"], "'d8' is not one of"),
    ("predict-tta-variants-not-cached", lambda w, t: ["predict", "--run", w.run, "--store", w.store,
                                                      "--out", t / "p", "--tta", "d4", "--quiet"],
     "s.zarr lacks the variants rot90"),
    ("predict-batch-size-zero", lambda w, t: ["predict", "--run", w.run, "--store", w.store, "--out", t / "p",
                                              "--batch-size", "0"], "'--batch-size': 0 is not in the range"),
    ("predict-out-is-a-dataset", lambda w, t: ["predict", "--run", w.run, "--store", w.store, "--out", w.conic,
                                               "--quiet"], "conic exists and is not a prediction folder"),
    ("predict-out-under-a-file", lambda w, t: ["predict", "--run", w.run, "--store", w.store,
                                               "--out", w.a_file / "p", "--quiet"], "images.npy/p"),
    ("predict-data-missing", lambda w, t: ["predict", "--run", w.run, "--data", w.scratch / "nowhere",
                                           "--out", t / "p", "--quiet"], "nowhere: no such file or folder"),
    ("predict-data-grayscale", lambda w, t: ["predict", "--run", w.run, "--data", w.bad.gray / "g.png",
                                             "--out", t / "p", "--device", "cpu", "--quiet"],
     "g.png: a grayscale image (mode L)"),
    ("predict-data-cmyk-jpeg", lambda w, t: ["predict", "--run", w.run, "--data", w.bad.cmyk / "press.jpg",
                                             "--out", t / "p", "--device", "cpu", "--quiet"],
     "press.jpg: CMYK colours would be read as RGB"),
    ("predict-data-overlap-too-large", lambda w, t: ["predict", "--run", w.run, "--data", w.inst, "--out", t / "p",
                                                     "--overlap", "200", "--device", "cpu", "--quiet"],
     "overlap must lie in 0..63 px for 64x64 tiles, got 200"),
    ("predict-slides-folder-without-slides", lambda w, t: ["predict", "--run", w.run, "--slides", w.bad.noslides,
                                                           "--out", t / "p", "--quiet"], "noslides: no slides found"),
    ("predict-slides-with-data", lambda w, t: ["predict", "--run", w.run, "--slides", w.slides, "--data", w.conic,
                                               "--out", t / "p", "--quiet"], "not --data"),
    # probe
    ("probe-missing-store", lambda w, t: ["probe", "--store", w.scratch / "none.zarr", "--quiet"],
     "none.zarr: no such store"),
    ("probe-type-on-instance-only-store", lambda w, t: ["probe", "--store", w.inst_store, "--labels", "type",
                                                        "--bootstrap", "10", "--quiet"],
     "inst.zarr: the store's nuclei have no types"),
    ("probe-csv-unknown-tile", lambda w, t: ["probe", "--store", w.store, "--labels", w.unknown_tile,
                                             "--bootstrap", "10", "--quiet"],
     "unknown_tile.csv: 1 unknown tile id(s), e.g. '99'"),
    ("probe-labels-typo", lambda w, t: ["probe", "--store", w.store, "--labels", "tisue", "--quiet"],
     "not 'tisue'"),
    ("probe-missing-label-file", lambda w, t: ["probe", "--store", w.store, "--labels", w.scratch / "labels.csv",
                                               "--quiet"], "labels.csv: no such label file"),
    ("probe-unknown-layer", lambda w, t: ["probe", "--store", w.store, "--layers", "blocks.99", "--quiet"],
     "no layer 'blocks.99'"),
    ("probe-folds-one", lambda w, t: ["probe", "--store", w.store, "--folds", "1", "--quiet"],
     "'--folds': 1 is not in the range x>=2"),
    ("probe-groups-single-group", lambda w, t: ["probe", "--store", w.cells, "--groups", w.one_group,
                                                "--bootstrap", "10", "--quiet"],
     "one_group.csv: every cell is in one group"),
    # cells
    ("cells-store-without-labels", lambda w, t: ["cells", "--store", w.bare, "--out", t / "c.zarr", "--quiet"],
     "u.zarr: the store has no label maps"),
    ("cells-missing-nuclei", lambda w, t: ["cells", "--store", w.store, "--out", t / "c.zarr",
                                           "--nuclei", w.scratch / "nonuclei", "--quiet"],
     "nonuclei: no such nuclei file or folder"),
    ("cells-out-is-a-store", lambda w, t: ["cells", "--store", w.store, "--out", w.store, "--quiet"],
     "s.zarr exists and holds other cells"),
    ("cells-radius-zero", lambda w, t: ["cells", "--store", w.store, "--out", t / "c.zarr", "--radius", "0"],
     "'--radius': 0.0 is not in the range"),
    # fit-ssl
    ("fit-ssl-no-store", lambda w, t: ["fit-ssl", "--quiet"], "head mode needs --store"),
    ("fit-ssl-non-slide-store", lambda w, t: ["fit-ssl", "--store", w.store, "--epochs", "1", "--device", "cpu",
                                              "--quiet"], "s.zarr: the store does not record microns per pixel"),
    ("fit-ssl-name-of-extracted-layer", lambda w, t: ["fit-ssl", "--store", w.slide_store, "--name", "layer4",
                                                      "--epochs", "1", "--pairs", "64", *PAIRS, "--device", "cpu",
                                                      "--quiet"], "'layer4' is an extracted layer of"),
    ("fit-ssl-pairs-zero", lambda w, t: ["fit-ssl", "--store", w.slide_store, "--pairs", "0", *PAIRS,
                                         "--device", "cpu", "--quiet"], "pairs must be at least 1, got 0"),
    # retrieval
    ("retrieval-unknown-query-slide", lambda w, t: ["retrieval", "--store", w.slide_store, "--queries", "slide_9",
                                                    *PAIRS], "no slide 'slide_9' in the store; slides: slide_000"),
    ("retrieval-non-slide-store", lambda w, t: ["retrieval", "--store", w.store],
     "s.zarr: the store does not record microns per pixel"),
    ("retrieval-k-zero", lambda w, t: ["retrieval", "--store", w.slide_store, "--k", "0", *PAIRS],
     "k must be at least 1, got 0"),
    ("retrieval-csv-unknown-tile", lambda w, t: ["retrieval", "--store", w.slide_store, "--labels", w.unknown_tile,
                                                 *PAIRS], "unknown_tile.csv: 1 unknown tile id(s), e.g. '99'"),
    # run (pipeline YAML)
    ("run-yaml-syntax-error", lambda w, t: ["run", w.yaml.syntax, "--dry-run"], "syntax.yaml:3: not valid YAML"),
    ("run-unknown-key", lambda w, t: ["run", w.yaml.unknown_key, "--dry-run"],
     "unknown_key.yaml:6: unknown key 'epoch' in fit; did you mean 'epochs'?"),
    ("run-unknown-encoder", lambda w, t: ["run", w.yaml.unknown_encoder, "--dry-run"],
     "unknown_encoder.yaml:4: encoder cnn: unknown encoder 'uni2'; did you mean 'uni'"),
    ("run-missing-file", lambda w, t: ["run", w.scratch / "absent.yaml"], "absent.yaml: no such pipeline file"),
    ("run-missing-data-path", lambda w, t: ["run", w.yaml.no_data, "--dry-run"],
     "no_data.yaml: datasets.d: "),
    ("run-only-typo", lambda w, t: ["run", w.yaml.good, "--only", "extrct", "--dry-run"],
     "--only 'extrct': step kinds are data, extract"),
    ("run-workers-negative", lambda w, t: ["run", w.yaml.good, "--workers", "-1", "--dry-run"],
     "'--workers': -1 is not in the range x>=0"),
    # encoders
    ("encoders-check-unknown-encoder", lambda w, t: ["encoders", "--check", "uni2"], "unknown encoder 'uni2'"),
    ("encoders-check-missing-weights", lambda w, t: ["encoders", "--check", "timm:test_vit", "--weights",
                                                     w.scratch / "no.pth"], "no.pth: no such weights file"),
    ("encoders-family-typo", lambda w, t: ["encoders", "--family", "patho"], "'patho' is not one of"),
    # demo-data
    ("demo-data-tiles-zero", lambda w, t: ["demo-data", t / "d", "--tiles", "0"], "'--tiles': 0 is not in the range"),
    ("demo-data-fewer-tiles-than-folds", lambda w, t: ["demo-data", t / "d", "--tiles", "2", "--folds", "3"],
     "--tiles 2 is fewer than the 3 folds"),
    ("demo-data-into-a-dataset", lambda w, t: ["demo-data", w.conic, "--tiles", "2", "--folds", "2"],
     "conic already holds images.npy, which demo-data did not write"),
    ("demo-data-out-under-a-file", lambda w, t: ["demo-data", w.a_file / "demo", "--tiles", "2", "--folds", "2"],
     "images.npy/demo"),
]

# Reports by design (a table of problems on stdout, exit 1), not one `Error:` line.
REPORTS = {"check-data-grayscale-png", "check-data-cmyk-jpeg", "check-data-rgba-transparent", "check-data-truncated-png",
           "check-data-mask-wrong-size", "check-data-rgb-coded-mask", "check-data-missing-path",
           "encoders-check-missing-weights"}
# Outputs under a regular file: the line must also say which part of the path is a file.
UNDER_A_FILE = "is a file, not a folder"


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: a digest of each file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def _changes(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@pytest.mark.parametrize("build, fragment", [pytest.param(b, f, id=i) for i, b, f in CASES])
def test_bad_input(w, tmp_path, request, build, fragment):
    case = request.node.callspec.id
    before = _snapshot(w.root)
    res = _invoke(*build(w, tmp_path))
    shown = f"exit {res.exit_code}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    assert res.exit_code != 0, shown
    assert res.exception is None or isinstance(res.exception, SystemExit), shown  # not an internal crash
    assert "Traceback" not in res.output and "Traceback" not in res.stderr, shown
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if case in REPORTS:
        assert res.exit_code == 1 and not err, shown
        hits = [ln for ln in res.stdout.splitlines() if fragment in ln]
        assert len(hits) == 1, shown
        if case.startswith("check-data"):
            last = res.stdout.splitlines()[-1]
            assert re.fullmatch(r"1 problem in .+; fix it and run check-data again", last), shown
    else:
        if err and err[0].startswith("Usage:"):  # click's own usage error: Usage, Try, Error
            assert len(err) == 3 and err[1].startswith("Try ") and err[2].startswith("Error: "), shown
        else:
            assert len(err) == 1 and err[0].startswith("Error: "), shown
        assert fragment in err[-1], shown
        assert "Error" not in res.stdout, shown
        if "under-a-file" in case:
            assert UNDER_A_FILE in err[-1] or "a file of that name is in the way" in err[-1], shown
            assert ".partial" not in err[-1], shown  # the user's path, not the work-in-progress name
    changed = _changes(before, _snapshot(w.root))
    assert not changed, f"{case} changed the user's files: {changed[:5]}\n{shown}"


def test_the_docstring_lists_every_case():
    ids = [i for i, _, _ in CASES]
    assert len(ids) == len(set(ids)) >= 35
    cases = __doc__.split("Cases (pytest ids):", 1)[1]
    listed = [name.replace(" [report]", "").strip() for line in cases.splitlines() if line.startswith("    ")
              for name in line.split(",") if name.strip()]
    assert sorted(listed) == sorted(ids)
    assert {n.strip().replace(" [report]", "") for line in cases.splitlines() for n in line.split(",")
            if "[report]" in n} == REPORTS
