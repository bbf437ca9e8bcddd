"""Whole-slide regions: cores tile the slide, and nuclei split across region seams are kept exactly once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from embedcache.errors import ConfigError
from embedcache.geometry import plan_regions


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 700), w=st.integers(1, 700), size=st.integers(16, 300), margin=st.integers(0, 80))
def test_cores_cover_every_pixel_once_and_reads_hold_their_cores(h, w, size, margin):
    cover = np.zeros((h, w), np.int32)
    for r in plan_regions((h, w), size, margin):
        r0, c0, r1, c1 = r.core
        cover[r0:r1, c0:c1] += 1
        q0, d0, q1, d1 = r.read
        assert 0 <= q0 <= r0 < r1 <= q1 <= h and 0 <= d0 <= c0 < c1 <= d1 <= w
        assert (r0 - q0 in (margin, r0)) and (q1 - r1 in (margin, h - r1))  # grown by the margin, or to the edge
    assert (cover == 1).all()


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.tuples(st.floats(0, 499.999), st.floats(0, 299.999)), min_size=1, max_size=50),
       size=st.integers(20, 200))
def test_every_centroid_is_owned_by_exactly_one_region(points, size):
    regions = plan_regions((500, 300), size, 16)
    owners = np.sum([r.owns(points) for r in regions], axis=0)
    assert (owners == 1).all()


def _discs(shape, n, radius, seed):
    """An instance map of ``n`` separate discs (ids 1..n) of radius up to ``radius``."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    k = 0
    while k < n:
        r, c, rad = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, radius)
        d2 = (rr - r) ** 2 + (cc - c) ** 2
        disc = d2 <= rad ** 2
        if disc.any() and not inst[d2 <= (rad + 2) ** 2].any():  # a gap: discs never touch
            k += 1
            inst[disc] = k
    return inst


@pytest.mark.parametrize("size,margin", [(64, 20), (100, 24), (37, 30)])
def test_nuclei_across_region_seams_come_back_whole_and_once(size, margin):
    """Regions segment their read box (here: the true map cut to it, renumbered, as post-processing would);
    each keeps the nuclei whose centroid lies in its core. Every true nucleus comes back once, whole."""
    truth = _discs((300, 260), 120, 12, seed=4)
    kept = []
    for region in plan_regions(truth.shape, size, margin):
        q0, d0, q1, d1 = region.read
        crop, _ = ndi.label(truth[q0:q1, d0:d1] > 0)  # renumbered inside the region (discs do not touch)
        ids = np.arange(1, crop.max() + 1)
        if not len(ids):
            continue
        centroids = np.asarray(ndi.center_of_mass(np.ones_like(crop), crop, ids)) + (q0, d0)
        for k in ids[region.owns(centroids)]:
            rows, cols = np.nonzero(crop == k)
            kept.append(frozenset(zip((rows + q0).tolist(), (cols + d0).tolist())))
    true = [frozenset(zip(*(a.tolist() for a in np.nonzero(truth == k)))) for k in range(1, truth.max() + 1)]
    assert len(kept) == len(true) and set(kept) == set(true)  # none cut, none twice, none lost


def test_regions_refuse_a_size_or_margin_that_cannot_work():
    with pytest.raises(ConfigError, match="size >= 1 and a margin >= 0"):
        plan_regions((10, 10), 0, 4)
