"""Detection and counting: centroids paired within a radius, detection and
per-type F1 (HoVer-Net), and R2 of counts (CoNIC).

Follows HoVer-Net's ``pair_coordinates`` and ``run_nuclei_type_stat``, and
scikit-learn's ``r2_score`` as CoNIC uses it.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from embedcache.errors import ConfigError
from embedcache.metrics.core import check_same_shape


# ----------------------------------------------------------------------------
# Detection: centroids paired within a radius
# ----------------------------------------------------------------------------

def pair_centroids(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float):
    """Pair two point sets by optimal assignment on Euclidean distance.

    The assignment is solved on all distances, then pairs farther apart
    than ``radius`` are dropped (HoVer-Net's ``pair_coordinates``).

    Parameters
    ----------
    true_xy : (N, 2) ndarray of float
    pred_xy : (M, 2) ndarray of float
    radius : float
        Pixels; 12 at 40x, 6 at 20x in the published tables.

    Returns
    -------
    paired : (K, 2) ndarray of intp
        (true index, predicted index) of each pair.
    unpaired_true : (N - K,) ndarray of intp
    unpaired_pred : (M - K,) ndarray of intp

    Examples
    --------
    >>> p, ut, up = pair_centroids(np.array([[0., 0], [50, 50]]), np.array([[3., 4]]), 12)
    >>> p.tolist(), ut.tolist(), up.tolist()
    ([[0, 0]], [1], [])
    """
    if radius <= 0:
        raise ConfigError(f"radius must be positive (pixels), got {radius}")
    true_xy = np.asarray(true_xy, np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return np.zeros((0, 2), np.intp), np.arange(len(true_xy)), np.arange(len(pred_xy))
    dist = np.sqrt(((true_xy[:, None, :] - pred_xy[None, :, :]) ** 2).sum(-1))
    a, b = linear_sum_assignment(dist)
    keep = dist[a, b] <= radius
    a, b = a[keep], b[keep]
    unpaired_true = np.setdiff1d(np.arange(len(true_xy)), a)
    unpaired_pred = np.setdiff1d(np.arange(len(pred_xy)), b)
    return np.stack([a, b], axis=1).astype(np.intp), unpaired_true, unpaired_pred


def detection_f1(tp: int, fp: int, fn: int) -> float:
    """F1 of detection, 2TP / (2TP + FP + FN); NaN when all three are 0."""
    denom = 2 * tp + fp + fn
    return float("nan") if denom == 0 else 2 * tp / denom


def type_f1(paired_true_type, paired_pred_type, unpaired_true_type, unpaired_pred_type, type_id: int) -> float:
    """HoVer-Net's per-type F1 over detected pairs.

    Among pairs where either side has type c, TP_c both do, FP_c only the
    prediction, FN_c only the truth; FP_d and FN_d are the unpaired
    predictions and truths of type c::

        F1_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d + FN_d)

    Parameters
    ----------
    paired_true_type, paired_pred_type : (K,) array_like of int
        Types of the two sides of each detected pair.
    unpaired_true_type, unpaired_pred_type : array_like of int
    type_id : int

    Returns
    -------
    float
        NaN when type c appears nowhere (0 / 0 in the reference).
    """
    pt, pp = np.asarray(paired_true_type), np.asarray(paired_pred_type)
    tp = int(np.sum((pt == type_id) & (pp == type_id)))
    fp = int(np.sum((pt != type_id) & (pp == type_id)))
    fn = int(np.sum((pt == type_id) & (pp != type_id)))
    fp_d = int(np.sum(np.asarray(unpaired_pred_type) == type_id))
    fn_d = int(np.sum(np.asarray(unpaired_true_type) == type_id))
    denom = 2 * tp + 2 * fp + 2 * fn + fp_d + fn_d
    return float("nan") if denom == 0 else 2 * tp / denom


# ----------------------------------------------------------------------------
# Counts and R2 (CoNIC composition)
# ----------------------------------------------------------------------------

def r2_score(y_true, y_pred) -> float:
    """Coefficient of determination, as ``sklearn.metrics.r2_score``.

    1 - SS_res / SS_tot. A constant truth gives 1.0 when predicted exactly
    and 0.0 otherwise (scikit-learn's ``force_finite``); fewer than two
    samples give NaN (scikit-learn warns and returns NaN).

    Parameters
    ----------
    y_true, y_pred : (N,) array_like of float
    """
    yt = np.asarray(y_true, np.float64)
    yp = np.asarray(y_pred, np.float64)
    check_same_shape(yt.shape, yp.shape, "true and predicted counts")
    if yt.size < 2:
        return float("nan")
    ss_res = np.sum((yt - yp) ** 2)
    ss_tot = np.sum((yt - np.mean(yt)) ** 2)
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return float(1.0 - ss_res / ss_tot)
