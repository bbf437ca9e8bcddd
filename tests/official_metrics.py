"""Line-for-line re-implementations of the challenges' own scoring routines, for the tests.

Written from the reference code, keeping its structure (and its edge cases)
rather than rewriting it, so that embedcache's protocols can be checked
against what the published tables were computed with:

- CoNIC (TissueImageAnalytics/CoNIC): ``metrics/stats_utils.py``
  ``get_pq`` and ``get_multi_pq_info`` (six classes, 1e-6 in DQ and SQ),
  and the aggregation of ``compute_stats.py`` (bPQ averaged over images;
  mPQ+ from TP/FP/FN/IoU summed over all images, then averaged over the
  six classes).
- PanNuke (TissueImageAnalytics/PanNuke-metrics): ``utils.get_fast_pq``
  (no epsilon in DQ), ``binarize`` and the loop of ``run.py`` (a class with
  an empty true channel is NaN; mPQ and bPQ averaged per tissue, then over
  tissues with ``np.nanmean``).

Not part of the package: the package's own implementation is vectorised
and shares nothing with this file.
"""

from __future__ import annotations

import warnings

import numpy as np


def remap_label(pred):
    """Ids made contiguous in increasing order (``misc/utils.py`` ``remap_label``, by_size=False)."""
    pred_id = list(np.unique(pred))
    if 0 in pred_id:
        pred_id.remove(0)
    if len(pred_id) == 0:
        return pred
    new_pred = np.zeros(pred.shape, np.int32)
    for idx, inst_id in enumerate(pred_id):
        new_pred[pred == inst_id] = idx + 1
    return new_pred


def _pairwise_iou(true, pred):
    true_id_list = list(np.unique(true))
    pred_id_list = list(np.unique(pred))
    true_masks = [None] + [np.array(true == t, np.uint8) for t in true_id_list[1:]]
    pred_masks = [None] + [np.array(pred == p, np.uint8) for p in pred_id_list[1:]]
    pairwise_iou = np.zeros([len(true_id_list) - 1, len(pred_id_list) - 1], dtype=np.float64)
    for true_id in true_id_list[1:]:
        t_mask = true_masks[true_id]
        pred_true_overlap_id = list(np.unique(pred[t_mask > 0]))
        for pred_id in pred_true_overlap_id:
            if pred_id == 0:
                continue
            p_mask = pred_masks[pred_id]
            total = (t_mask + p_mask).sum()
            inter = (t_mask * p_mask).sum()
            pairwise_iou[true_id - 1, pred_id - 1] = inter / (total - inter)
    return true_id_list, pred_id_list, pairwise_iou


def _pairs(true_id_list, pred_id_list, pairwise_iou, match_iou=0.5):
    paired_iou = pairwise_iou[pairwise_iou > match_iou]
    pairwise_iou[pairwise_iou <= match_iou] = 0.0
    paired_true, paired_pred = np.nonzero(pairwise_iou)
    paired_iou = pairwise_iou[paired_true, paired_pred]
    paired_true += 1
    paired_pred += 1
    unpaired_true = [idx for idx in true_id_list[1:] if idx not in paired_true]
    unpaired_pred = [idx for idx in pred_id_list[1:] if idx not in paired_pred]
    return paired_iou, len(paired_true), len(unpaired_pred), len(unpaired_true)


# ----------------------------------------------------------------------------- CoNIC

def conic_get_pq(true, pred, remap=True):
    """``get_pq``: ``[dq, sq, pq], [tp, fp, fn], sum_iou``."""
    if remap:
        pred = remap_label(pred)
        true = remap_label(true)
    true = np.copy(true).astype("int32")
    pred = np.copy(pred).astype("int32")
    paired_iou, tp, fp, fn = _pairs(*_pairwise_iou(true, pred))
    dq = tp / ((tp + 0.5 * fp + 0.5 * fn) + 1.0e-6)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return [dq, sq, dq * sq], [tp, fp, fn], paired_iou.sum()


def conic_multi_pq_info(true, pred, nr_classes=6):
    """``get_multi_pq_info``: per class ``[tp, fp, fn, sum_iou]`` of one image (maps (H, W, 2))."""
    true_inst, pred_inst = true[..., 0], pred[..., 0]
    true_class, pred_class = true[..., 1], pred[..., 1]
    pq = []
    for idx in range(nr_classes):
        pred_inst_oneclass = remap_label(pred_inst * (pred_class == idx + 1))
        true_inst_oneclass = remap_label(true_inst * (true_class == idx + 1))
        info = conic_get_pq(true_inst_oneclass, pred_inst_oneclass, remap=False)
        pq.append([info[1][0], info[1][1], info[1][2], info[2]])
    return pq


def conic_compute_stats(true_array, pred_array):
    """``compute_stats.py --mode=seg_class`` on two (N, H, W, 2) arrays: ``{"pq", "multi_pq+"}``."""
    pq_list, mpq_info_list = [], []
    for patch_idx in range(pred_array.shape[0]):
        pred, true = pred_array[patch_idx], true_array[patch_idx]
        pq_list.append(conic_get_pq(true[..., 0], pred[..., 0])[0][2])
        mpq_info_list.append(conic_multi_pq_info(true, pred))
    total = np.sum(np.array(mpq_info_list, dtype="float"), axis=0)
    mpq_list = []
    for cat_idx in range(total.shape[0]):
        total_tp, total_fp, total_fn, total_sum_iou = total[cat_idx]
        dq = total_tp / ((total_tp + 0.5 * total_fp + 0.5 * total_fn) + 1.0e-6)
        sq = total_sum_iou / (total_tp + 1.0e-6)
        mpq_list.append(dq * sq)
    return {"pq": np.mean(np.array(pq_list), axis=-1), "multi_pq+": np.mean(np.array(mpq_list)),
            "per_class": mpq_list}


# ----------------------------------------------------------------------------- PanNuke

def pannuke_get_fast_pq(true, pred):
    """``get_fast_pq``: ``[dq, sq, pq]`` (no epsilon in DQ: 0/0 is NaN, as there)."""
    true = np.copy(true)
    pred = np.copy(pred)
    paired_iou, tp, fp, fn = _pairs(*_pairwise_iou(true, pred))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        dq = np.float64(tp) / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return [dq, sq, dq * sq]


def binarize(x):
    """``binarize``: the five class channels of a PanNuke mask merged into one instance map."""
    out = np.zeros([x.shape[0], x.shape[1]])
    count = 1
    for i in range(x.shape[2]):
        x_ch = x[:, :, i]
        unique_vals = np.unique(x_ch).tolist()
        unique_vals.remove(0)
        for j in unique_vals:
            x_tmp = x_ch == j
            out *= 1 - x_tmp
            out += count * x_tmp
            count += 1
    return out.astype("int32")


def pannuke_run(true, pred, types):
    """The loop of ``run.py`` on masks (N, H, W, 6) and tissue names: ``{"mPQ", "bPQ", per class}``."""
    mpq_all, bpq_all = [], []
    for i in range(true.shape[0]):
        pq = []
        pred_bin = binarize(pred[i, :, :, :5])
        true_bin = binarize(true[i, :, :, :5])
        if len(np.unique(true_bin)) == 1:
            pq_bin = np.nan
        else:
            pq_bin = pannuke_get_fast_pq(true_bin, pred_bin)[2]
        for j in range(5):
            pred_tmp = remap_label(pred[i, :, :, j].astype("int32"))
            true_tmp = remap_label(true[i, :, :, j].astype("int32"))
            if len(np.unique(true_tmp)) == 1:
                pq_tmp = np.nan
            else:
                pq_tmp = pannuke_get_fast_pq(true_tmp, pred_tmp)[2]
            pq.append(pq_tmp)
        mpq_all.append(pq)
        bpq_all.append([pq_bin])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mpq_each_image = [np.nanmean(pq) for pq in mpq_all]
        bpq_each_image = [np.nanmean(pq_bin) for pq_bin in bpq_all]
        per_class = [np.nanmean([pq[k] for pq in mpq_all]) for k in range(5)]
        mpq_tissue, bpq_tissue = [], []
        for tissue_name in np.unique(types):
            indices = [i for i, x in enumerate(types) if x == tissue_name]
            mpq_tissue.append(np.nanmean([mpq_each_image[i] for i in indices]))
            bpq_tissue.append(np.nanmean([bpq_each_image[i] for i in indices]))
        return {"mPQ": np.nanmean(mpq_tissue), "bPQ": np.nanmean(bpq_tissue), "per_class": per_class}
