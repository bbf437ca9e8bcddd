"""Patch-level probe: targets at patch resolution, planted tokens recovered (noise at
chance), a real tiny store end to end, and its errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_probes import store_copy, tiny_store  # noqa: E402

from embedcache.config import ProbeConfig  # noqa: E402
from embedcache.errors import ConfigError, DataError  # noqa: E402
from embedcache.report.stats import prediction_scores  # noqa: E402
from embedcache.store.schema import LayerLayout  # noqa: E402
from embedcache.probes import patch as patch_probe  # noqa: E402
from embedcache.probes import run_probes  # noqa: E402
from embedcache.probes.patch import IGNORE, patch_targets  # noqa: E402

NUCLEI = ProbeConfig(level="patch", labels="nuclei", method="linear", l2_grid=(0.1, 0.001))


def test_patch_targets_majority_ties_types_and_padding():
    inst = np.zeros((1, 4, 6), int)
    types = np.zeros((1, 4, 6), int)
    inst[0, :2, :3] = [[1, 1, 1], [1, 0, 0]]  # 4 of 6 pixels: nucleus
    types[0, :2, :3] = 2
    inst[0, 2:, :3] = [[3, 3, 3], [0, 0, 0]]  # 3 of 6: a tie goes to background
    types[0, 2:, :3] = 1
    inst[0, :, 3:] = 5
    types[0, :, 3:] = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]  # type 2 holds 8 of 12
    types[0, 3, 0] = 4  # a type pixel outside any nucleus counts as background
    assert patch_targets(inst, types, (2, 2), "nuclei").tolist() == [[[1, 1], [0, 1]]]
    assert patch_targets(inst, types, (2, 2), "type").tolist() == [[[2, 1], [0, 2]]]
    # Only the top half and left third of the tile are real: patches centred beyond are ignored.
    out = patch_targets(inst, types, (2, 2), "type", valid=np.array([[2, 6]]))
    assert out.tolist() == [[[2, 1], [IGNORE, IGNORE]]]
    # A grid that does not divide the tile (7 px into 3 patches: 3, 2, 2 rows).
    odd = np.zeros((1, 7, 7), int)
    odd[0, :3] = 1
    assert patch_targets(odd, odd, (3, 3), "nuclei")[0, :, 0].tolist() == [1, 0, 0]


class PlantedStore:
    """A stand-in store: squares of nuclei, tokens that carry the patch class (layer 'good') or not ('bad')."""

    def __init__(self, n=24, size=32, grid=8, seed=0, nuclei=True):
        rng = np.random.default_rng(seed)
        self.path, self.n_tiles, self.layers, self.has_labels = Path("planted.zarr"), n, ["bad", "good"], True
        self.class_names = {1: "neoplastic", 2: "inflammatory", 3: "connective"}
        self.inst = np.zeros((n, size, size), np.int32)
        self.types = np.zeros_like(self.inst)
        cell = size // grid
        for t in range(n):
            for k, (r, c) in enumerate(rng.integers(0, grid - 1, size=(6 * nuclei, 2))):
                self.inst[t, r * cell:(r + 2) * cell, c * cell:(c + 2) * cell] = k + 1
                self.types[t, r * cell:(r + 2) * cell, c * cell:(c + 2) * cell] = 1 + k % 3
        targets = patch_targets(self.inst, self.types, (grid, grid), "type")
        good = 3 * np.eye(8)[targets] + rng.normal(size=(n, grid, grid, 8))
        self._tokens = {"good": good.transpose(0, 3, 1, 2), "bad": rng.normal(size=(n, 8, grid, grid))}
        self._layouts = {k: LayerLayout(k, (8, grid, grid)) for k in self._tokens}

    def layout(self, layer):
        return self._layouts[layer]

    def tokens(self, layer, idx, variant=0):
        return self._tokens[layer][idx].astype(np.float32)

    def labels(self, idx):
        return self.inst[idx], self.types[idx]

    def tile_info(self):
        return {"valid": np.full((self.n_tiles, 2), self.inst.shape[1])}


@pytest.mark.parametrize("labels,classes", [("nuclei", 2), ("type", 4)])
def test_planted_tokens_recovered_and_noise_at_chance(labels, classes):
    store = PlantedStore()
    folds = np.arange(store.n_tiles) % 3
    config = ProbeConfig(level="patch", labels=labels, method="linear", l2_grid=(0.1, 0.001))
    scores = {}
    for layer in store.layers:
        confusion, chosen, k = patch_probe.probe_layer(store, layer, folds, config)
        assert k == classes and confusion.shape == (24, k, k) and len(chosen) == 3
        assert confusion.sum() == 24 * 64  # every patch of every tile predicted once
        scores[layer] = prediction_scores(type("P", (), {"task": "segmentation", "confusion": confusion})())
    assert scores["good"]["miou"] > 0.8 and scores["good"]["dice"] > 0.8
    assert scores["bad"]["miou"] < 0.5 and scores["bad"]["dice"] < 0.5


def test_training_patches_are_capped():
    store = PlantedStore(n=12)
    config = ProbeConfig(level="patch", labels="nuclei", method="linear", l2_grid=(0.01,), max_patches=120)
    seen = []
    real_fit = patch_probe.fit_linear
    patch_probe.fit_linear = lambda X, y, groups, *a: seen.append(len(X)) or real_fit(X, y, groups, *a)
    try:
        patch_probe.probe_layer(store, "good", np.arange(12) % 2, config)
    finally:
        patch_probe.fit_linear = real_fit
    assert seen == [60, 60]  # 10 patches from each of the 6 training tiles of each fold


def test_tiles_without_nuclei_are_refused():
    with pytest.raises(DataError, match="no sampled patch of good holds a nucleus; the patch probe needs both"):
        patch_probe.probe_layer(PlantedStore(n=6, nuclei=False), "good", np.arange(6) % 2, NUCLEI)


def test_on_a_real_store_every_patch_is_scored_once():
    preds, info = run_probes([tiny_store()], ProbeConfig(level="patch", labels="type", method="linear",
                                                         layers="last", l2_grid=(0.01,)))
    (p,) = preds
    assert p.task == "segmentation" and p.layer == "blocks.5" and p.depth == 1.0 and p.method == "linear"
    assert p.confusion.sum() == 20 * 4 * 4  # 64-px tiles, 16-px patches
    assert p.names[0] == "background" and set(p.names[1:]) <= {"neoplastic", "inflammatory", "connective",
                                                                 "dead", "epithelial"}
    assert info["level"] == "patch" and info["folds"] == "store folds"


def test_patch_level_errors(tmp_path, monkeypatch):
    from embedcache.store.reader import Store

    unlabelled = store_copy(tmp_path / "unlabelled.zarr")
    monkeypatch.setattr(Store, "has_labels", property(lambda self: self.path != unlabelled))
    with pytest.raises(DataError, match="unlabelled.zarr: the store has no label maps; the patch probe needs them"):
        run_probes([tiny_store(), unlabelled], NUCLEI)
    with pytest.raises(ConfigError, match="the patch-level probe is linear only"):
        ProbeConfig(level="patch", labels="nuclei", method="knn")
