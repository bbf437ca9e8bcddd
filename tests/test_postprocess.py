"""Post-processing: hand-drawn touching nuclei come back one by one, with their types."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_helpers import best_iou, disk_instances, oracle_maps
from scipy import ndimage as ndi

from embedcache.errors import ConfigError, DataError
from embedcache.config import DIRECTIONS, PostprocessConfig
from embedcache.postprocess import edge_map, instances_from_maps

# Three nuclei in a touching chain, one overlapped by another, one alone, one tiny speck.
DISCS = [(20, 18, 9), (20, 34, 8), (36, 26, 9), (48, 48, 6), (6, 56, 1)]


def nuclei():
    inst = disk_instances((64, 64), DISCS)
    types = np.select([inst == k for k in range(1, 6)], [1, 2, 3, 2, 1], 0)
    return inst, types


def split(maps, n_types=3):
    return maps[:3], maps[3:7], maps[7:] if n_types else None


@pytest.mark.parametrize("blur", [0.0, 1.0, 1.5])
def test_touching_nuclei_are_recovered_one_by_one(blur):
    inst, types = nuclei()
    maps = oracle_maps(inst, types, 3)
    if blur:  # a decoder's maps are soft: blur them
        maps = ndi.gaussian_filter(maps, (0, blur, blur))
    out = instances_from_maps(*split(maps))
    big = np.where(np.isin(inst, [1, 2, 3, 4]), inst, 0)
    assert out["inst"].max() == 4  # the speck (3 px) is below min_size
    assert min(best_iou(big, out["inst"])) > 0.85
    # Each instance's type is the majority of its pixels'.
    for k in range(1, 5):
        pred = np.bincount(out["inst"][big == k]).argmax()
        assert out["type_id"][pred - 1] == types[big == k][0]
    assert np.all((out["types"] > 0) == (out["inst"] > 0))
    assert out["score"].shape == (4,) and np.all((out["score"] > 0.5) & (out["score"] <= 1.0001))


def test_hovernet_distance_maps_work_too():
    inst, types = nuclei()
    maps = oracle_maps(inst, types, 0, distance="hovernet")
    out = instances_from_maps(maps[:3], maps[3:5], None, directions=DIRECTIONS["hovernet"])
    assert out["inst"].max() == 4 and not out["types"].any() and out["type_id"].tolist() == [0] * 4


def test_without_boundaries_the_distance_maps_still_split_touching_nuclei():
    inst, types = nuclei()
    maps = oracle_maps(inst, types, 0)
    cls3 = maps[:3].copy()
    cls3[1] += cls3[2]  # no boundary class: body everywhere inside nuclei
    cls3[2] = 0
    out = instances_from_maps(cls3, maps[3:7])
    assert out["inst"].max() == 4


def test_types_vote_by_majority_against_noise():
    inst, _ = nuclei()
    rng = np.random.default_rng(0)
    types = np.where(inst > 0, 2, 0)
    maps = oracle_maps(inst, types, 3)
    noisy = maps[7:] + rng.random(maps[7:].shape) * 1.6  # many pixels vote wrong, the majority does not
    out = instances_from_maps(maps[:3], maps[3:7], noisy)
    assert set(out["type_id"].tolist()) == {2} and np.all(out["type_score"] < 0.97) and out["type_score"].mean() < 0.92


def test_edge_map_is_high_between_nuclei_only():
    inst = disk_instances((40, 60), [(20, 18, 10), (20, 38, 10)])
    maps = oracle_maps(inst, inst * 0, 0)
    edge = edge_map(maps[3:7], DIRECTIONS["cisca"])
    assert edge.max() == 1 and edge[20, 28] > 0.5 and edge[20, 18] < 0.1


def test_presets_and_validation():
    assert PostprocessConfig.for_magnification("20x").min_size < PostprocessConfig().min_size
    assert PostprocessConfig.for_magnification("40x", min_size=30).min_size == 30
    with pytest.raises(ConfigError, match="40x or 20x"):
        PostprocessConfig.for_magnification("10x")
    with pytest.raises(ConfigError, match="foreground"):
        PostprocessConfig(foreground=1.5)
    cls3 = np.zeros((3, 8, 8))
    with pytest.raises(DataError, match=r"distance maps \(4, 8, 9\) do not match cls3"):
        instances_from_maps(cls3, np.zeros((4, 8, 9)))
    with pytest.raises(DataError, match=r"cls3 probabilities must be \(3, H, W\)"):
        instances_from_maps(np.zeros((2, 8, 8)), np.zeros((4, 8, 8)))
    empty = instances_from_maps(cls3 + [[[1]], [[0]], [[0]]], np.zeros((4, 8, 8)), np.zeros((3, 8, 8)))
    assert empty["inst"].max() == 0 and empty["score"].shape == (0,)
