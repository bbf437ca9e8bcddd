"""Overlays a reader can judge: nuclei outlined as matched, missed or spurious against the truth, and a legend.

:func:`match_overlay` pairs predicted and true nuclei as the protocols do
(IoU above 0.5, :func:`embedcache.metrics.core.match`) and outlines the
predictions that found a true nucleus in green (TP), those that found none
in red (FP), and the true nuclei no prediction found in blue (FN). Type
overlays (:func:`embedcache.infer.writer.overlay`) colour outlines by type;
:func:`type_legend` names the colours.
"""

from __future__ import annotations

import html

import numpy as np

from embedcache.infer.writer import colour
from embedcache.metrics.core import Instances, match, overlap

TP, FP, FN = (0, 200, 0), (230, 0, 0), (30, 110, 255)


def match_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, dict]:
    """``image`` with matched predictions green, unmatched ones red, missed true nuclei blue; and the counts.

    Returns
    -------
    (H, W, 3) ndarray of uint8, dict
        The overlay, and ``{"tp": ..., "fp": ..., "fn": ...}``.
    """
    from skimage.segmentation import find_boundaries

    t, p = Instances.from_map(truth), Instances.from_map(pred)
    m = match(overlap(t, p))
    matched_pred = np.zeros(p.n + 1, bool)
    matched_pred[m.pred_index + 1] = True
    matched_true = np.zeros(t.n + 1, bool)
    matched_true[m.true_index + 1] = True
    t_map, p_map = t.index.reshape(t.shape), p.index.reshape(p.shape)
    out = image.copy()
    missed = find_boundaries(np.where(matched_true[t_map], 0, t_map), mode="inner")
    out[missed] = FN
    edge = find_boundaries(p_map, mode="inner")
    out[edge & matched_pred[p_map]] = TP
    out[edge & ~matched_pred[p_map]] = FP
    return out, {"tp": m.tp, "fp": m.fp, "fn": m.fn}


def match_legend() -> str:
    """HTML naming the colours of :func:`match_overlay`."""
    return _legend([("matched (TP)", TP), ("spurious prediction (FP)", FP), ("missed true nucleus (FN)", FN)])


def type_legend(class_names: dict) -> str:
    """HTML naming the outline colour of each type (the colours of the type overlays)."""
    return _legend([(name, colour(int(k))) for k, name in sorted(class_names.items(), key=lambda kv: int(kv[0]))
                    if int(k) > 0])


def _legend(items) -> str:
    spans = [f"<span class='key'><span class='swatch' style='background:rgb{tuple(c)}'></span>"
             f"{html.escape(str(name))}</span>" for name, c in items]
    return "<p class='legend'>" + " ".join(spans) + "</p>"
