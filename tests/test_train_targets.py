"""Training targets on hand-made instances: 3-class map, distance maps, types, variants."""

from __future__ import annotations

import numpy as np
import pytest
from decoder_helpers import disk_instances, make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)

from embedcache import open_store
from embedcache.datasets.variants import D4, resolve_variants
from embedcache.errors import ConfigError
from embedcache.config import DIRECTIONS, TargetConfig
from embedcache.train.targets import (
    BODY, BOUNDARY, TargetCache, boundary_mask, channel_map, distance_maps, tile_targets, transform_targets,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def two_touching_squares():
    inst = np.zeros((12, 16), dtype=np.int32)
    inst[2:9, 2:8] = 5  # sparse ids on purpose
    inst[2:9, 8:14] = 9
    inst[10, 0] = 3  # a lone pixel nucleus
    return inst


def test_boundary_is_drawn_only_where_nuclei_touch():
    inst = two_touching_squares()
    b = boundary_mask(inst, width=1)
    # Columns 7 (last of the left square) and 8 (first of the right one) form the boundary.
    assert np.array_equal(np.flatnonzero(b.any(0)), [7, 8])
    assert b[2:9, 7].all() and b[2:9, 8].all()
    # Borders with background are body, not boundary; the lone nucleus has no neighbour.
    assert not b[1].any() and not b[:, 2].any() and not b[10, 0]
    wide = boundary_mask(inst, width=2)
    assert np.array_equal(np.flatnonzero(wide[2:8].any(0)), [6, 7, 8, 9])
    assert wide[10, 0] and wide[8, 2]  # two px apart: nearly touching counts at width 2
    assert not boundary_mask(inst, width=0).any()


def test_distance_maps_run_minus_one_to_one_across_each_nucleus():
    inst = two_touching_squares()
    h, v, d1, d2 = distance_maps(inst, DIRECTIONS["cisca"])
    # Left square, columns 2..7 around centre 4.5: -1 at the left edge, +1 at the right edge.
    np.testing.assert_allclose(h[5, 2:8], [-1, -0.6, -0.2, 0.2, 0.6, 1], atol=1e-6)
    np.testing.assert_allclose(v[2:9, 3], np.linspace(-1, 1, 7), atol=1e-6)
    # Each nucleus has its own centre: the right square restarts at -1.
    assert h[5, 8] == -1 and h[5, 13] == 1
    # Diagonals: +1 at the bottom-right corner, -1 at the top-left; the other diagonal crosses.
    assert d1[8, 7] == 1 and d1[2, 2] == -1 and d2[8, 2] == 1 and d2[2, 7] == -1
    assert np.all(h[inst == 0] == 0) and h[10, 0] == 0  # background and a one-pixel nucleus
    assert distance_maps(inst, DIRECTIONS["hovernet"]).shape == (2, 12, 16)


def test_tile_targets_classes_types_and_padding():
    inst = two_touching_squares()
    types = np.where(inst == 5, 2, np.where(inst > 0, 4, 0))
    t = tile_targets(inst, types, TargetConfig(), valid=(12, 10))
    assert t["cls3"][5, 4] == BODY and t["cls3"][5, 7] == BOUNDARY and t["cls3"][0, 0] == 0
    assert t["types"][5, 4] == 2 and t["types"][5, 12] == 4 and t["types"][0, 0] == 0
    assert t["dist"].dtype == np.float16 and t["dist"].shape == (4, 12, 16)
    assert t["valid"][:, :10].all() and not t["valid"][:, 10:].any()


@pytest.mark.parametrize("distance", ["cisca", "hovernet"])
def test_targets_of_a_variant_equal_targets_of_the_transformed_labels(distance):
    cfg = TargetConfig(distance=distance)
    inst = disk_instances((40, 48), [(12, 12, 7), (14, 24, 6), (28, 20, 8), (30, 38, 5)])
    types = (inst % 3) + (inst > 0)
    base = tile_targets(inst, types, cfg)
    for v in D4:
        moved = transform_targets(base, v, cfg.directions)
        labels = v.apply(np.stack([inst, types], -1), image=False)
        direct = tile_targets(labels[..., 0], labels[..., 1], cfg)
        for key in ("cls3", "types", "valid"):
            assert np.array_equal(moved[key], direct[key]), (v.name, key)
        np.testing.assert_allclose(moved["dist"].astype(np.float32), direct["dist"].astype(np.float32),
                                   atol=1e-3, err_msg=v.name)


def test_channel_map_is_a_signed_permutation():
    rot90 = resolve_variants("identity,rot90")[1]
    # A quarter turn counter-clockwise: new horizontal = old vertical, new vertical = -old horizontal.
    assert channel_map(rot90, DIRECTIONS["hovernet"]) == [(1, 1), (0, -1)]
    with pytest.raises(ConfigError, match="not closed"):
        channel_map(rot90, [(0, 1), (1, 1)])
    with pytest.raises(ConfigError, match="cisca, hovernet"):
        TargetConfig(distance="sobel")


def test_cache_computes_each_tile_once_and_moves_it_per_variant(tmp_path):
    store = open_store(make_store(write_conic(tmp_path / "d", n=3), tmp_path / "s.zarr"))
    cache = TargetCache(store, [2, 0])
    assert len(cache) == 2 and cache.cls3.shape == (2, 64, 64)
    inst, types = store.labels(2)
    hflip = D4[4]
    expected = tile_targets(*[hflip.apply(m, spatial=(0, 1), image=False) for m in (inst, types)])
    got = cache.get(2, hflip)
    assert np.array_equal(got["cls3"], expected["cls3"])
    np.testing.assert_allclose(got["dist"].astype(float), expected["dist"].astype(float), atol=1e-3)
    with pytest.raises(KeyError):
        cache.get(1)
    freq = cache.type_frequencies(6)
    assert freq.sum() == 2 * 64 * 64 and freq[0] > 0
