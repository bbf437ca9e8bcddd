"""The HED colour jitter of the image branch's training tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from embedcache.config import FitConfig
from embedcache.errors import ConfigError
from embedcache.train.augment import epoch_generator, hed_jitter


def tiles(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(40, 250, (n, 16, 16, 3), dtype=np.uint8))


def test_no_strength_gives_the_tiles_back_and_a_tiny_one_round_trips():
    x = tiles()
    assert hed_jitter(x, 0.0) is x
    assert torch.equal(hed_jitter(x, 1e-9, torch.Generator().manual_seed(1)), x)  # no loss in the conversion


def stained(n=8, seed=0):
    """H&E-like tiles from positive amounts of the three stains, and those amounts."""
    hed = np.random.default_rng(seed).uniform(0.02, 0.05, (n, 16, 16, 3))
    return torch.from_numpy(np.round(hed2rgb(hed) * 255).astype(np.uint8)), hed


def test_stains_are_scaled_and_shifted_within_the_strength_per_tile():
    x, h0 = stained()
    s = 0.02
    y = hed_jitter(x, s, torch.Generator().manual_seed(3))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert all(not torch.equal(a, b) for a, b in zip(x, y))  # every tile changes
    # In scikit-image's stain space, each tile's stain channel is a * h + b with |a - 1| <= s, |b| <= s.
    h1 = np.stack([rgb2hed(t.numpy()) for t in y])
    for k in range(8):
        for c in range(3):
            a, b = np.polyfit(h0[k, ..., c].ravel(), h1[k, ..., c].ravel(), 1)
            assert abs(a - 1) <= s + 0.01 and abs(b) <= s + 0.001, (k, c, a, b)
    # tiles differ in their draws
    assert np.std([np.mean(h1[k] - h0[k]) for k in range(8)]) > 1e-3


def test_the_draws_of_an_epoch_repeat_and_differ_between_epochs():
    x = tiles()
    a = hed_jitter(x, 0.1, epoch_generator(0, 4))
    assert torch.equal(a, hed_jitter(x, 0.1, epoch_generator(0, 4)))  # a resumed run draws the same
    assert not torch.equal(a, hed_jitter(x, 0.1, epoch_generator(0, 5)))
    assert not torch.equal(a, hed_jitter(x, 0.1, epoch_generator(1, 4)))


def test_the_strength_is_checked():
    assert FitConfig(colour=0.05).colour == 0.05
    with pytest.raises(ConfigError, match="colour jitter strength must lie in 0..0.5"):
        FitConfig(colour=0.9)
