"""AJI, AJI+ and foreground Dice of a tile, from its overlap table.

Follows HoVer-Net's ``metrics/stats_utils.py`` (``get_fast_aji``,
``get_fast_aji_plus``, ``get_dice_1``), including the ``1e-6`` added to
each union before pairs are ranked by IoU, so that ties resolve as there.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from embedcache.metrics.core import Overlap

AJI_EPS = 1.0e-6
"""Added to each union before AJI / AJI+ rank pairs by IoU (HoVer-Net)."""

# Largest dense (T, P) table given to the assignment solver, as the reference
# does; past it each connected block of overlapping instances is solved alone.
_DENSE_CELLS = 1 << 22


# ----------------------------------------------------------------------------

def _aji_total(ov: Overlap, sel: np.ndarray) -> float:
    """AJI from the chosen pairs ``sel`` (positions in the table)."""
    if ov.n_true == 0 and ov.n_pred == 0:
        return float("nan")
    inter = ov.inter[sel].sum()
    union = ov.union[sel].sum()
    true_used = np.zeros(ov.n_true, bool)
    true_used[ov.true_index[sel]] = True
    pred_used = np.zeros(ov.n_pred, bool)
    pred_used[ov.pred_index[sel]] = True
    union += ov.true_area[~true_used].sum() + ov.pred_area[~pred_used].sum()
    return float(inter / union)


def _ranking_iou(ov: Overlap) -> np.ndarray:
    # HoVer-Net ranks pairs by inter / (union + 1e-6); ties resolve on it.
    return ov.inter / (ov.union + AJI_EPS)


def aji(ov: Overlap) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017).

    Each true instance takes the predicted instance of largest IoU (ties:
    the lower predicted index); a predicted instance may be taken by
    several true ones. Predicted instances taken by none, and true
    instances touching none, add their area to the union. Follows
    HoVer-Net's ``get_fast_aji``.

    Parameters
    ----------
    ov : Overlap

    Returns
    -------
    float
        In [0, 1]; 0 when only one side has instances, NaN when neither
        has (the reference divides by zero).
    """
    if ov.inter.size == 0:
        return _aji_total(ov, np.zeros(0, np.intp))
    order = np.lexsort((ov.pred_index, -_ranking_iou(ov), ov.true_index))
    ti = ov.true_index[order]
    first = np.ones(ti.size, bool)
    first[1:] = ti[1:] != ti[:-1]
    return _aji_total(ov, order[first])


def _max_weight_pairs(ov: Overlap, weight: np.ndarray) -> np.ndarray:
    """Positions (in the table) of the pairs of a maximum-weight one-to-one
    assignment, pairs of weight 0 left out.

    Solved on the dense (T, P) table like the reference, or, past
    ``_DENSE_CELLS``, on each connected block of overlapping instances (same
    optimum; ties may then resolve differently).
    """
    T, P = ov.n_true, ov.n_pred
    if ov.inter.size == 0:
        return np.zeros(0, np.intp)
    if T * P <= _DENSE_CELLS:
        blocks = [(np.arange(ov.inter.size), np.arange(T), np.arange(P))]
    else:
        graph = coo_matrix((np.ones(ov.inter.size), (ov.true_index, T + ov.pred_index)), shape=(T + P, T + P))
        _, comp = connected_components(graph, directed=False)
        pair_comp = comp[ov.true_index]
        order = np.argsort(pair_comp, kind="stable")
        cuts = np.flatnonzero(np.diff(pair_comp[order])) + 1
        blocks = [(pos, np.unique(ov.true_index[pos]), np.unique(ov.pred_index[pos])) for pos in np.split(order, cuts)]
    table_code = ov.true_index * P + ov.pred_index  # sorted, as the table is
    chosen = []
    for pos, rows, cols in blocks:
        dense = np.zeros((rows.size, cols.size))
        dense[np.searchsorted(rows, ov.true_index[pos]), np.searchsorted(cols, ov.pred_index[pos])] = weight[pos]
        r, c = linear_sum_assignment(-dense)
        good = dense[r, c] > 0
        chosen.append(np.searchsorted(table_code, rows[r[good]] * P + cols[c[good]]))
    return np.concatenate(chosen)


def aji_plus(ov: Overlap) -> float:
    """AJI+: AJI with a one-to-one pairing (Graham et al. 2019).

    True and predicted instances are paired by a maximum-sum assignment of
    IoU (``linear_sum_assignment``), so no predicted instance counts twice;
    pairs with no shared pixel are dropped. Follows HoVer-Net's
    ``get_fast_aji_plus``. Empty cases as :func:`aji`.

    Returns
    -------
    float
    """
    return _aji_total(ov, _max_weight_pairs(ov, _ranking_iou(ov)))


def foreground_dice(ov: Overlap) -> float:
    """Dice of the two foregrounds (every labelled pixel counts as 1).

    HoVer-Net's ``get_dice_1``: 2 |T ∩ P| / (|T| + |P|) over pixels. The
    overlap table holds all it needs: instance areas sum to the foreground.

    Returns
    -------
    float
        NaN when neither map has a labelled pixel.
    """
    total = ov.true_area.sum() + ov.pred_area.sum()
    if total == 0:
        return float("nan")
    return float(2.0 * ov.inter.sum() / total)
