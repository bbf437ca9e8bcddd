"""Nuclei metrics on integer label maps: one overlap table per tile, then
matching and PQ (AJI, AJI+ and Dice are in :mod:`embedcache.metrics.jaccard`,
detection in :mod:`embedcache.metrics.detection`).

Everything starts from :class:`Instances` (an instance map with its ids made
contiguous, 1..N in the order of the stored ids) and :func:`overlap`, the
sparse table of pixel intersections between every true and every predicted
instance, counted in one ``bincount`` over the tile's pixels. The metrics are
then a few array operations on that table: no loop over instances.

Values follow the reference code of HoVer-Net (``metrics/stats_utils.py``:
``get_fast_pq``, ``remap_label``), including its ``1e-6`` in the SQ
denominator, so that values agree with theirs to the last bit where the reference defines them. Where the
reference divides by zero or crashes (no instance on either side), the
functions here return NaN; each protocol in :mod:`embedcache.metrics.protocols`
says what it does with that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcache.datasets.base import check_label_map
from embedcache.errors import ConfigError, DataError

MATCH_IOU = 0.5
"""Pairs with IoU strictly above this are matches (unique above 0.5)."""

SQ_EPS = 1.0e-6
"""Added to TP in the SQ denominator by all three reference codes."""

# Largest dense table (cells) counted with one bincount; past it the pairs
# are counted by sorting. 4M int64 cells is 32 MB.
_DENSE_CELLS = 1 << 22


# ----------------------------------------------------------------------------
# Input checks and relabelling
# ----------------------------------------------------------------------------

def as_label_map(label_map, name: str = "label map") -> np.ndarray:
    """Check a label map and return it as an integer array.

    Parameters
    ----------
    label_map : (H, W) array_like of int, bool, or float holding whole numbers
        0 = background. Floats are accepted because PanNuke stores its
        masks as float64.
    name : str
        What to call the map in error messages.

    Returns
    -------
    (H, W) ndarray of int32

    Raises
    ------
    DataError
        Not 2-D, not whole numbers, negative, or past int32.

    Examples
    --------
    >>> as_label_map([[0, 3], [3, 0]]).dtype
    dtype('int32')
    """
    a = np.asarray(label_map)
    if a.ndim != 2:
        raise DataError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    return check_label_map(a.astype(np.uint8) if a.dtype == bool else a, name)


def check_same_shape(shape_a, shape_b, what: str = "truth and prediction") -> None:
    """Raise :class:`DataError` naming both shapes when they differ.

    Parameters
    ----------
    shape_a, shape_b : tuple of int
    what : str
        The two things compared, for the message.
    """
    if tuple(shape_a) != tuple(shape_b):
        raise DataError(f"{what} differ in shape: {tuple(shape_a)} vs {tuple(shape_b)}")


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous ids for a flat non-negative int array.

    Returns ``(index, ids, area)``: ``index`` (same length, intp) is 0 on
    background and 1..N elsewhere, in increasing order of the stored ids;
    ``ids`` (N,) the stored ids; ``area`` (N,) their pixel counts.
    """
    if flat.size == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.intp), empty, empty
    top = int(flat.max())
    if top < 4 * flat.size + 65536:
        # Small ids: a lookup table beats sorting the pixels.
        counts = np.bincount(flat, minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids.astype(np.int64), counts[ids].astype(np.int64)
    ids, index, area = np.unique(flat, return_inverse=True, return_counts=True)
    index = index.reshape(-1).astype(np.intp)
    if ids[0] == 0:
        return index, ids[1:].astype(np.int64), area[1:].astype(np.int64)
    return index + 1, ids.astype(np.int64), area.astype(np.int64)


@dataclass(frozen=True)
class Instances:
    """An instance map with contiguous ids: what every metric starts from.

    Attributes
    ----------
    index : (H*W,) ndarray of intp
        The map flattened (row-major), 0 = background, 1..N = instances in
        increasing order of their stored ids (HoVer-Net's ``remap_label``).
    ids : (N,) ndarray of int64
        Stored id of each instance.
    area : (N,) ndarray of int64
        Pixel count of each instance.
    shape : tuple of int
        (H, W) of the map.
    """

    index: np.ndarray
    ids: np.ndarray
    area: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_map(cls, label_map, name: str = "instance map") -> "Instances":
        """Relabel an (H, W) instance map with arbitrary (sparse) ids."""
        if isinstance(label_map, Instances):
            return label_map
        a = as_label_map(label_map, name)
        index, ids, area = _compact(a.ravel())
        return cls(index, ids, area, a.shape)

    @property
    def n(self) -> int:
        """Number of instances."""
        return int(self.ids.size)

    def relabelled(self) -> np.ndarray:
        """(H, W) ndarray of int64 with ids 1..N."""
        return self.index.reshape(self.shape).astype(np.int64)

    def centroids(self) -> np.ndarray:
        """Centre of mass of each instance.

        Returns
        -------
        (N, 2) ndarray of float64
            (row, column) in pixels: the mean pixel coordinate, as
            ``cv2.moments`` gives for a filled mask.
        """
        if self.n == 0:
            return np.zeros((0, 2))
        h, w = self.shape
        n = self.n + 1
        area = self.area.astype(np.float64)
        r = np.bincount(self.index, weights=np.repeat(np.arange(h, dtype=np.float64), w), minlength=n)[1:] / area
        c = np.bincount(self.index, weights=np.tile(np.arange(w, dtype=np.float64), h), minlength=n)[1:] / area
        return np.stack([r, c], axis=1)

    def majority_type(self, type_map, name: str = "type map", window=None) -> np.ndarray:
        """Type of each instance: its most frequent non-zero type pixel.

        Ties go to the smaller type id; an instance with only type-0 pixels
        is type 0. This is HoVer-Net's rule (most frequent type, or the
        second most frequent when the first is background).

        Parameters
        ----------
        type_map : (H, W) array_like of int
            0 = background / unknown.
        name : str
            What to call the map in error messages.
        window : tuple of slice, optional
            Only look at these pixels; instances with none there get type 0.

        Returns
        -------
        (N,) ndarray of int64
        """
        t = as_label_map(type_map, name)
        check_same_shape(self.shape, t.shape, f"instance map and {name}")
        if self.n == 0:
            return np.zeros(0, np.int64)
        index = self.index
        if window is not None:
            index, t = index.reshape(self.shape)[window], t[window]
        index, t = index.ravel(), t.ravel()
        top = int(t.max(initial=0))
        if top < 1024:
            kinds, tcode = np.arange(top + 1), t
        else:
            kinds, tcode = np.unique(t, return_inverse=True)
        k = kinds.size
        counts = np.bincount(index * k + tcode.reshape(-1), minlength=(self.n + 1) * k).reshape(self.n + 1, k)[1:]
        if kinds[0] == 0:
            counts[:, 0] = 0
        best = np.argmax(counts, axis=1)
        return np.where(counts[np.arange(self.n), best] > 0, kinds[best], 0).astype(np.int64)


def relabel(label_map) -> np.ndarray:
    """Make instance ids contiguous (1..N), keeping their order.

    Parameters
    ----------
    label_map : (H, W) array_like of int
        0 = background, ids arbitrary.

    Returns
    -------
    (H, W) ndarray of int64

    Examples
    --------
    >>> relabel([[0, 7], [40, 7]]).tolist()
    [[0, 1], [2, 1]]
    """
    return Instances.from_map(label_map).relabelled()


# ----------------------------------------------------------------------------
# The overlap table
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Overlap:
    """Sparse intersection table between true and predicted instances.

    Only pairs that share at least one pixel are stored, sorted by
    (true index, predicted index).

    Attributes
    ----------
    true_area : (T,) ndarray of int64
    pred_area : (P,) ndarray of int64
    true_index : (K,) ndarray of intp
        0-based index of the true instance of each overlapping pair.
    pred_index : (K,) ndarray of intp
    inter : (K,) ndarray of int64
        Shared pixels of each pair.
    """

    true_area: np.ndarray
    pred_area: np.ndarray
    true_index: np.ndarray
    pred_index: np.ndarray
    inter: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_area.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_area.size)

    @property
    def union(self) -> np.ndarray:
        """(K,) ndarray of int64: pixels in either instance of each pair."""
        return self.true_area[self.true_index] + self.pred_area[self.pred_index] - self.inter

    @property
    def iou(self) -> np.ndarray:
        """(K,) ndarray of float64: intersection over union of each pair."""
        return self.inter / self.union


def pair_counts(true_index: np.ndarray, pred_index: np.ndarray, n_true: int, n_pred: int,
                where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count pixels of every (true, predicted) label pair in one pass.

    Parameters
    ----------
    true_index, pred_index : (H*W,) ndarray of intp
        Contiguous labels, 0 = background.
    n_true, n_pred : int
    where : (H*W,) ndarray of bool, optional
        Only count these pixels.

    Returns
    -------
    ti, pi : (K,) ndarray of intp
        0-based indices of the pairs that share a pixel, sorted.
    inter : (K,) ndarray of int64
    """
    if n_true == 0 or n_pred == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty, np.zeros(0, np.int64)
    both = (true_index > 0) & (pred_index > 0)
    if where is not None:
        both &= where
    code = (true_index[both] - 1) * n_pred + (pred_index[both] - 1)
    cells = n_true * n_pred
    if cells <= _DENSE_CELLS:
        counts = np.bincount(code, minlength=cells)
        nz = np.flatnonzero(counts)
        inter = counts[nz]
    else:
        nz, inter = np.unique(code, return_counts=True)
    ti, pi = np.divmod(nz, n_pred)
    return ti.astype(np.intp), pi.astype(np.intp), inter.astype(np.int64)


def overlap(true, pred) -> Overlap:
    """The overlap table of one tile.

    Parameters
    ----------
    true, pred : (H, W) array_like of int, or Instances
        Instance maps of the same shape; ids arbitrary, 0 = background.

    Returns
    -------
    Overlap

    Examples
    --------
    >>> ov = overlap([[1, 1, 0]], [[5, 5, 5]])
    >>> ov.inter.tolist(), ov.union.tolist()
    ([2], [3])
    """
    t = Instances.from_map(true, "true instance map")
    p = Instances.from_map(pred, "predicted instance map")
    check_same_shape(t.shape, p.shape, "true and predicted instance maps")
    ti, pi, inter = pair_counts(t.index, p.index, t.n, p.n)
    return Overlap(t.area, p.area, ti, pi, inter)


@dataclass(frozen=True)
class ClassOverlap:
    """Overlap table between the per-class pieces of two typed maps.

    A piece is the pixels of one instance that carry one type, as in the
    references (CoNIC ``get_multi_pq_info``: ``inst * (type == c)``;
    PanNuke: one mask channel per class). Pieces of different classes never
    intersect, so one table serves every class.

    Attributes
    ----------
    overlap : Overlap
        Between true pieces and predicted pieces.
    true_class, pred_class : (T,), (P,) ndarray of int64
        Type id of each piece.
    """

    overlap: Overlap
    true_class: np.ndarray
    pred_class: np.ndarray

    def stats(self, classes) -> dict[int, "PQStats"]:
        """PQ counts of each class in ``classes`` (absent classes: all 0)."""
        m = match(self.overlap)
        paired_class = self.true_class[m.true_index]
        out = {}
        for c in classes:
            hit = paired_class == c
            tp = int(hit.sum())
            out[c] = PQStats(tp, int((self.pred_class == c).sum()) - tp,
                             int((self.true_class == c).sum()) - tp, float(np.sum(m.iou[hit])))
        return out


def _pieces(inst: Instances, types: np.ndarray, width: int) -> Instances:
    key = inst.index * width + types
    key[(inst.index == 0) | (types == 0)] = 0
    index, ids, area = _compact(key)
    return Instances(index, ids, area, inst.shape)


def class_overlap(true_inst, true_type, pred_inst, pred_type) -> ClassOverlap:
    """The per-class overlap table of one tile, from one pass over pixels.

    Parameters
    ----------
    true_inst, true_type, pred_inst, pred_type : (H, W) array_like of int
        Instance maps (ids arbitrary) and type maps (0 = background); all
        four the same shape.

    Returns
    -------
    ClassOverlap
    """
    t = Instances.from_map(true_inst, "true instance map")
    p = Instances.from_map(pred_inst, "predicted instance map")
    tt = as_label_map(true_type, "true type map")
    pt = as_label_map(pred_type, "predicted type map")
    check_same_shape(t.shape, p.shape, "true and predicted instance maps")
    check_same_shape(t.shape, tt.shape, "true instance and type maps")
    check_same_shape(p.shape, pt.shape, "predicted instance and type maps")
    tt, pt = tt.ravel(), pt.ravel()
    width = int(max(tt.max(initial=0), pt.max(initial=0))) + 1
    tp_, pp_ = _pieces(t, tt, width), _pieces(p, pt, width)
    ti, pi, inter = pair_counts(tp_.index, pp_.index, tp_.n, pp_.n, where=tt == pt)
    ov = Overlap(tp_.area, pp_.area, ti, pi, inter)
    return ClassOverlap(ov, tp_.ids % width, pp_.ids % width)


# ----------------------------------------------------------------------------
# Matching and panoptic quality
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Matching:
    """True and predicted instances paired at IoU > 0.5.

    Attributes
    ----------
    true_index, pred_index : (TP,) ndarray of intp
        0-based indices of the pairs, in increasing true index (the order
        the reference code sums IoU in).
    iou : (TP,) ndarray of float64
    n_true, n_pred : int
    """

    true_index: np.ndarray
    pred_index: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int

    @property
    def tp(self) -> int:
        return int(self.true_index.size)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    def stats(self) -> "PQStats":
        """TP, FP, FN and summed IoU (summed as ``np.sum`` does)."""
        return PQStats(self.tp, self.fp, self.fn, float(np.sum(self.iou)))


def match(ov: Overlap, threshold: float = MATCH_IOU) -> Matching:
    """Pair instances whose IoU is strictly above ``threshold``.

    Above 0.5 each instance can take part in at most one such pair, so the
    pairing is unique without an assignment solver.

    Raises
    ------
    ConfigError
        ``threshold`` below 0.5 (pairs would no longer be unique).
    """
    if threshold < 0.5:
        raise ConfigError(f"match threshold must be >= 0.5 for unique pairing, got {threshold}")
    iou = ov.iou
    keep = iou > threshold
    return Matching(ov.true_index[keep], ov.pred_index[keep], iou[keep], ov.n_true, ov.n_pred)


@dataclass(frozen=True)
class PQStats:
    """What PQ is computed from; adds up over images (CoNIC's mPQ+).

    Attributes
    ----------
    tp, fp, fn : int
    iou_sum : float
        Sum of IoU over the TP pairs.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: "PQStats") -> "PQStats":
        return PQStats(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum)

    def scores(self, dq_eps: float = 0.0) -> tuple[float, float, float]:
        """(DQ, SQ, PQ).

        DQ = TP / (TP + FP/2 + FN/2 + dq_eps), SQ = iou_sum / (TP + 1e-6),
        PQ = DQ * SQ. HoVer-Net and PanNuke use ``dq_eps=0``, CoNIC
        ``1e-6``. With ``dq_eps=0`` and nothing on either side, all three are
        NaN (the reference divides by zero).
        """
        denom = (self.tp + 0.5 * self.fp + 0.5 * self.fn) + dq_eps
        if denom == 0:
            return float("nan"), float("nan"), float("nan")
        dq = self.tp / denom
        sq = self.iou_sum / (self.tp + SQ_EPS)
        return dq, sq, dq * sq


def panoptic_quality(true, pred, dq_eps: float = 0.0) -> dict:
    """DQ, SQ and PQ of one tile with the counts behind them.

    Parameters
    ----------
    true, pred : (H, W) array_like of int
        Instance maps; ids arbitrary.
    dq_eps : float
        0 (HoVer-Net, PanNuke) or 1e-6 (CoNIC).

    Returns
    -------
    dict
        ``dq, sq, pq, tp, fp, fn, iou_sum``.

    Examples
    --------
    >>> r = panoptic_quality([[1, 1, 0, 2]], [[3, 3, 3, 0]])
    >>> r["tp"], r["fn"], round(r["pq"], 4)    # IoU 2/3; DQ = 1 / 1.5
    (1, 1, 0.4444)
    """
    st = match(overlap(true, pred)).stats()
    dq, sq, pq = st.scores(dq_eps)
    return {"dq": dq, "sq": sq, "pq": pq, "tp": st.tp, "fp": st.fp, "fn": st.fn, "iou_sum": st.iou_sum}
