"""Report overlays: predictions outlined as matched, spurious or missed against the truth; legends."""

from __future__ import annotations

import numpy as np
from decoder_helpers import disk_instances

from embedcache.report.overlays import FN, FP, TP, match_legend, match_overlay, type_legend


def test_matched_spurious_and_missed_nuclei_get_their_colours():
    truth = disk_instances((64, 64), [(16, 16, 6), (44, 44, 6)])  # two true nuclei
    pred = disk_instances((64, 64), [(16, 17, 6), (16, 48, 5)])  # one finds the first, one finds nothing
    image = np.full((64, 64, 3), 128, np.uint8)
    out, counts = match_overlay(image, truth, pred)
    assert counts == {"tp": 1, "fp": 1, "fn": 1}
    colours = lambda ys, xs: {tuple(out[y, x]) for y, x in zip(ys, xs)}  # noqa: E731
    assert TP in colours(*np.nonzero(pred == pred[16, 17])) and FP in colours(*np.nonzero(pred == pred[16, 48]))
    assert FN in colours(*np.nonzero(truth == truth[44, 44]))
    assert FN not in colours(*np.nonzero(truth == truth[16, 16]))  # a found nucleus is not drawn as missed
    assert np.array_equal(out[0, 0], image[0, 0])  # background untouched
    assert "matched (TP)" in match_legend() and "missed" in match_legend()
    legend = type_legend({0: "none", 1: "neoplastic", 2: "inflammatory"})
    assert "neoplastic" in legend and "inflammatory" in legend and "none" not in legend
