"""Fixed variants: exact, invertible, the same on numpy and torch, labels follow images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedcache.datasets.variants import BY_NAME, D4, resolve_variants
from embedcache.errors import ConfigError


@pytest.fixture
def tile():
    return np.random.default_rng(0).integers(0, 255, (2, 6, 6, 3), dtype=np.uint8)


def test_d4_has_eight_distinct_invertible_transforms(tile):
    outs = [v.apply(tile) for v in D4]
    assert len({o.tobytes() for o in outs}) == 8
    for v, o in zip(D4, outs):
        assert np.array_equal(v.invert(o), tile), v.name


def test_named_transforms_mean_what_they_say(tile):
    x = tile[0, ..., 0]
    by = {v.name: v.apply(x, spatial=(0, 1)) for v in D4}
    assert np.array_equal(by["hflip"], x[:, ::-1])
    assert np.array_equal(by["vflip"], x[::-1, :])
    assert np.array_equal(by["transpose"], x.T)
    assert np.array_equal(by["antitranspose"], x[::-1, ::-1].T)
    assert np.array_equal(by["rot90"], np.rot90(x))


def test_torch_and_numpy_agree(tile):
    t = torch.from_numpy(tile)
    for v in D4:
        assert np.array_equal(v.apply_torch(t, spatial=(1, 2)).numpy(), v.apply(tile)), v.name


def test_labels_follow_the_image_and_ignore_stain(tile):
    labels = np.random.default_rng(1).integers(0, 9, (2, 6, 6, 2))
    both = np.concatenate([tile.astype(np.int64), labels], axis=-1)
    for v in resolve_variants("d4+stain"):
        moved = v.apply(both, image=False)
        assert np.array_equal(v.apply(labels, image=False), moved[..., 3:])


def test_stain_variants_are_fixed_and_change_colour_only():
    from embedcache.datasets.synthetic import make_tiles

    tile = make_tiles(1, seed=2, size=64)[0]
    a1, a2 = BY_NAME["stain_a"].apply(tile), BY_NAME["stain_a"].apply(tile)
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, tile) and not np.array_equal(a1, BY_NAME["stain_b"].apply(tile))
    shift = np.abs(a1.astype(int) - tile).mean()
    assert 2 < shift < 25  # grey levels on H&E-like pixels: visible, not a different stain
    assert BY_NAME["stain_a"].is_geometric_identity


def test_sets_and_errors():
    assert [v.name for v in resolve_variants("none")] == ["identity"]
    assert [v.name for v in resolve_variants("flips")] == ["identity", "hflip", "vflip"]
    assert len(resolve_variants("d4")) == 8 and len(resolve_variants("d4+stain")) == 10
    assert [v.name for v in resolve_variants("identity,rot90")] == ["identity", "rot90"]
    with pytest.raises(ConfigError, match="unknown variant 'rot45'"):
        resolve_variants("identity,rot45")
    with pytest.raises(ConfigError, match="must be 'identity'"):
        resolve_variants("rot90,identity")
    with pytest.raises(ConfigError, match="twice"):
        resolve_variants("identity,rot90,rot90")
