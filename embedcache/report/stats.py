"""Scores of probe predictions with bootstrap 95% intervals over test tiles.

Every metric is scikit-learn's own function; this module only decides what
is resampled. Resamples are drawn once per set of tiles
(:func:`bootstrap_indices`, seeded), so every encoder, layer and method
tested on the same tiles is scored on the same resamples, and their
intervals are comparable. An interval is the 2.5th and 97.5th percentile
of the resampled scores (percentile bootstrap); resamples where a score is
undefined (e.g. AUROC with one class) are left out.

>>> y = np.array([0, 0, 1, 1] * 10)
>>> s = classification_scores(y, y, np.eye(2)[y])
>>> s["balanced_accuracy"], s["auroc"]
(1.0, 1.0)
"""

from __future__ import annotations

import csv
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.errors import DataError
from embedcache.files import plain_json, write_json
from embedcache.metrics.tables import table

METRICS = {
    "classification": ("balanced_accuracy", "macro_f1", "auroc"),
    "regression": ("r2",),
    "segmentation": ("miou", "dice"),
}
RESAMPLE_CHUNK = 250  # resamples per parallel task
PARALLEL_MIN = 2000  # resamples x probes below which starting worker processes costs more than it saves
LABELS = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1", "auroc": "AUROC (one-vs-rest)",
          "r2": "R2 (mean over types)", "miou": "mIoU", "dice": "Dice (mean over nucleus classes)"}


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0, groups: np.ndarray | None = None):
    """Resamples of ``n`` tiles with replacement, ``(n_boot, n) ndarray of int64``.

    With ``groups`` (the source image of each tile) the groups are
    resampled, each drawn group bringing all its tiles (a cluster
    bootstrap): tiles of one image are not independent evidence. Resamples
    then differ in length (a list of arrays); with one tile per group they
    are the tile resamples exactly. The same arguments always give the same
    resamples.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.integers(0, n, size=(n_boot, n))
    codes, members = np.unique(np.asarray(groups), return_inverse=True)
    if len(codes) == n:
        order = np.argsort(members, kind="stable")  # group k's only tile
        return order[rng.integers(0, n, size=(n_boot, n))]
    tiles = [np.flatnonzero(members == g) for g in range(len(codes))]
    draws = rng.integers(0, len(codes), size=(n_boot, len(codes)))
    return [np.concatenate([tiles[g] for g in row]) for row in draws]


@contextmanager
def _quiet():
    import sklearn

    # Resamples call the metrics thousands of times on inputs already checked;
    # undefined cases (a class absent from a resample) are expected there.
    with warnings.catch_warnings(), sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        warnings.simplefilter("ignore")
        yield


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest AUROC, macro-averaged over the classes present in ``y_true``.

    Parameters
    ----------
    y_true : (n,) ndarray of int
        Class codes 0..K-1.
    proba : (n, K) ndarray of float
        Class probabilities.

    Returns NaN when ``y_true`` holds a single class.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import label_binarize

    present = np.unique(y_true)
    if len(present) < 2:
        return math.nan
    if len(present) == 2:
        return float(roc_auc_score(y_true == present[1], proba[:, present[1]]))
    if len(present) == proba.shape[1]:
        return float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
    # A class absent from the test tiles has no one-vs-rest curve; average over the others.
    return float(roc_auc_score(label_binarize(y_true, classes=present), proba[:, present], average="macro"))


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None = None) -> dict:
    """Balanced accuracy, macro-F1 (over classes in truth or prediction) and AUROC.

    Parameters
    ----------
    y_true, y_pred : (n,) ndarray of int
    proba : (n, K) ndarray of float, optional
        AUROC is NaN without it.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score

    with _quiet():
        return {"balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
                "auroc": auroc(y_true, proba) if proba is not None else math.nan}


def regression_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """R2 of ``(n, T)`` targets, averaged over targets that vary."""
    from sklearn.metrics import r2_score

    keep = np.ptp(y_true, axis=0) > 0
    if not keep.any():
        return {"r2": math.nan}
    with _quiet():
        return {"r2": float(r2_score(y_true[:, keep], y_pred[:, keep]))}


def segmentation_scores(confusion: np.ndarray) -> dict:
    """mIoU (over classes present) and Dice (over nucleus classes present) of pooled patches.

    Parameters
    ----------
    confusion : (K, K) ndarray of int
        Patch counts, [truth, prediction]; class 0 is background.

    Each cell of the matrix is passed to scikit-learn's ``jaccard_score`` and
    ``f1_score`` as one sample weighted by its count, which is the same as
    passing every patch.
    """
    from sklearn.metrics import f1_score, jaccard_score

    k = confusion.shape[0]
    truth, pred = np.divmod(np.arange(k * k), k)
    weight = np.asarray(confusion, dtype=np.float64).ravel()
    present = np.flatnonzero(confusion.sum(0) + confusion.sum(1))
    nuclei = present[present > 0]
    with _quiet():
        miou = jaccard_score(truth, pred, labels=present, average="macro", sample_weight=weight, zero_division=0)
        dice = (f1_score(truth, pred, labels=nuclei, average="macro", sample_weight=weight, zero_division=0)
                if len(nuclei) else math.nan)
    return {"miou": float(miou), "dice": float(dice)}


CHANCE_RULE = {
    "balanced_accuracy": "balanced accuracy 1/K over the K classes in the truth",
    "macro_f1": "macro-F1 1/K, from guessing in the truth's class shares (always one class gets less)",
    "auroc": "AUROC 0.5",
    "r2": "R2 0, from predicting the mean",
    "miou": "mIoU and Dice the better of always one class and guessing in the truth's class shares",
}
"""How the chance level of each metric is defined (:func:`chance_scores`), for reports."""


def chance_note(metrics: Sequence[str]) -> str:
    """One line saying what chance means for ``metrics`` and that no row at or below it is called the best."""
    said = [CHANCE_RULE[m] for m in metrics if m in CHANCE_RULE]
    return ("chance, what a guess that ignores the input scores: " + "; ".join(said)
            + ". A layer at or below chance is never called the best.")


def chance_scores(pred) -> dict[str, float]:
    """The score of each metric of ``pred`` that a guess ignoring the input reaches (:func:`chance_note`).

    Balanced accuracy averages recall over the K classes in the truth, so
    any guess independent of the input has expected recall summing to at
    most 1 over them: 1/K, reached by always saying one class. Macro-F1
    of guessing in the truth's shares p_c is mean(p_c) = 1/K; always
    saying one class gives 2p/(1+p)/K, never more. For patch segmentation
    the guesses are scored by the metric's own function: always class c
    (a confusion of the truth counts in column c) and guessing in the
    truth's shares (the expected confusion ``counts x shares``).

    Parameters
    ----------
    pred : ProbePrediction

    Returns
    -------
    dict of str to float
        One value per metric of ``METRICS[pred.task]``.
    """
    if pred.task == "classification":
        k = max(1, len(np.unique(pred.y_true)))
        return {"balanced_accuracy": 1.0 / k, "macro_f1": 1.0 / k, "auroc": 0.5}
    if pred.task == "regression":
        return {"r2": 0.0}
    counts = pred.confusion.sum(axis=0).sum(axis=1).astype(np.float64)  # (K,) patches of each true class
    k = len(counts)
    guesses = [segmentation_scores(np.outer(counts, np.eye(k)[c])) for c in np.flatnonzero(counts)]
    guesses.append(segmentation_scores(np.outer(counts, counts / max(counts.sum(), 1.0))))
    return {m: max((g[m] for g in guesses if math.isfinite(g[m])), default=math.nan) for m in METRICS["segmentation"]}


def above_chance(score: dict, chance: float | None) -> bool:
    """Whether a score's point value is above its chance level (True when the chance is not known)."""
    if chance is None or not math.isfinite(chance):
        return True
    return math.isfinite(score["value"]) and score["value"] > chance + 1e-9


def prediction_scores(pred, idx: np.ndarray | None = None) -> dict:
    """The metrics of one :class:`~embedcache.probes.fit.ProbePrediction`, on tiles ``idx`` (default all)."""
    sel = slice(None) if idx is None else idx
    if pred.task == "segmentation":
        return segmentation_scores(pred.confusion[sel].sum(axis=0))
    if pred.task == "regression":
        return regression_scores(pred.y_true[sel], pred.y_pred[sel])
    return classification_scores(pred.y_true[sel], pred.y_pred[sel],
                                 None if pred.proba is None else pred.proba[sel])


def _resampled_scores(pred, resamples: np.ndarray) -> list[dict]:
    with _quiet():
        return [prediction_scores(pred, idx) for idx in resamples]


def _interval_of(point: dict, boots: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for m, v in point.items():
        values = np.array([b[m] for b in boots], dtype=np.float64)
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, [2.5, 97.5]) if len(values) else (math.nan, math.nan)
        out[m] = {"value": v, "lo": float(lo), "hi": float(hi)}
    return out


def bootstrap_scores(pred, resamples: np.ndarray) -> dict[str, dict[str, float]]:
    """Point estimate and 95% percentile interval of every metric of ``pred``.

    Parameters
    ----------
    pred : ProbePrediction
    resamples : (B, n) ndarray of int
        Tile resamples (:func:`bootstrap_indices`); B = 0 gives NaN intervals.

    Returns
    -------
    dict
        ``{metric: {"value": v, "lo": lo, "hi": hi}}``.
    """
    with _quiet():
        point = prediction_scores(pred)
    return _interval_of(point, _resampled_scores(pred, resamples))


# ----------------------------------------------------------------------------
# A table of scores
# ----------------------------------------------------------------------------

def _primary(task: str) -> str:
    return METRICS[task][0]


@dataclass
class ScoreTable:
    """One row per (store, layer, method): metrics with intervals, and what was chosen.

    Attributes
    ----------
    rows : list of dict
        ``store, encoder, layer, depth, method, task, scores, params``.
    info : dict
        How labels and folds were made, and the bootstrap settings.
    """

    rows: list[dict]
    info: dict = field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS[self.rows[0]["task"]] if self.rows else ()

    def best(self) -> list[dict]:
        """The highest-scoring layer of each (store, method) by the first metric (balanced accuracy, R2 or mIoU).

        Each entry carries ``chance`` and ``above_chance``: a layer at or
        below chance is reported as the highest, never starred as the best.
        """
        best: dict[tuple[str, str], dict] = {}
        for r in self.rows:
            key, v = (r["store"], r["method"]), r["scores"][_primary(r["task"])]["value"]
            if key not in best or v > best[key]["scores"][_primary(r["task"])]["value"]:
                best[key] = r
        out = []
        for r in best.values():
            m = _primary(r["task"])
            chance = r.get("chance", {}).get(m)
            out.append({"store": r["store"], "method": r["method"], "layer": r["layer"], "metric": m,
                        **r["scores"][m], "chance": chance, "above_chance": above_chance(r["scores"][m], chance)})
        return out

    def chance(self) -> dict[str, float]:
        """Chance level of each metric (:func:`chance_scores`); the rows share their tiles and labels."""
        return dict(self.rows[0].get("chance", {})) if self.rows else {}

    def format(self) -> str:
        """Text for the terminal: one row per probe, ``value [lo, hi]`` per metric with its chance level in
        the header; ``*`` marks best layers (never one at or below chance)."""

        best = {(b["store"], b["method"], b["layer"]) for b in self.best() if b["above_chance"]}
        chance = self.chance()
        headers = ["store", "layer", "method"] + [
            LABELS[m] + (f" (chance {chance[m]:.3f})" if math.isfinite(chance.get(m, math.nan)) else "")
            for m in self.metrics] + [""]
        body = [[r["store"], r["layer"], r["method"],
                 *[_interval(r["scores"][m]) for m in self.metrics],
                 "*" if (r["store"], r["method"], r["layer"]) in best and len(self._layers(r)) > 1 else ""]
                for r in self.rows]
        info = self.info
        head = (f"{info.get('level', 'tile')}-level probe of {info.get('labels', {}).get('source', '?')} labels: "
                f"{info.get('n_tiles', '?')} tiles, {info.get('folds', '?')}, "
                f"95% bootstrap intervals over {info.get('n_boot', '?')} resamples of the test "
                + (f"{'images' if info.get('unit', 'source image') == 'source image' else 'groups'} "
                   f"({info['bootstrap_units']})" if info.get("bootstrap_unit") == "source image" else "tiles"))
        lines = [head] + ([f"NOTE: {info['note']}"] if info.get("note") else []) + (
            [chance_note(self.metrics)] if chance else []) + ["", table(headers, body)]
        if any(len(self._layers(r)) > 1 for r in self.rows):
            lines.append("")
            lines += [_best_line(b) for b in self.best()]
        return "\n".join(lines)

    def _layers(self, row) -> set[str]:
        return {r["layer"] for r in self.rows if r["store"] == row["store"]}

    def to_dict(self) -> dict:
        return plain_json({"info": self.info, "rows": self.rows, "best": self.best()})

    def write_json(self, path) -> Path:
        return write_json(path, self.to_dict())

    def write_csv(self, path) -> Path:
        """One row per probe: ``store, encoder, layer, depth, method`` then ``metric, metric_lo, metric_hi``."""
        path = Path(path)
        cols = ["store", "encoder", "layer", "depth", "method"]
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols + [f"{m}{s}" for m in self.metrics for s in ("", "_lo", "_hi", "_chance")])
            for r in self.rows:
                w.writerow([r[c] for c in cols] + [_csv_num(r["scores"][m][k]) if k != "chance" else
                                                   _csv_num(r.get("chance", {}).get(m, math.nan))
                                                   for m in self.metrics for k in ("value", "lo", "hi", "chance")])
        return path


def _best_line(b: dict) -> str:
    """``best layer: ...`` for the terminal, or why there is none above chance."""
    score = f"{LABELS[b['metric']]} {_interval(b)}"
    if b["above_chance"]:
        return f"best layer: {b['store']} {b['method']} {b['layer']} ({score})"
    return (f"no layer above chance: {b['store']} {b['method']} scores at most {score} at {b['layer']}, "
            f"chance {b['chance']:.3f}")


def _interval(s: dict) -> str:
    if not math.isfinite(s["value"]):
        return "n/a"
    if not math.isfinite(s["lo"]):
        return f"{s['value']:.3f}"
    return f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def _csv_num(v: float) -> str:
    return f"{v:.6g}" if math.isfinite(v) else ""


def score_predictions(predictions: Sequence, n_boot: int = 1000, seed: int = 0, info: dict | None = None,
                      n_jobs: int = -1) -> ScoreTable:
    """Score every prediction with bootstrap intervals, on shared resamples of the test tiles.

    Parameters
    ----------
    predictions : sequence of ProbePrediction
        All on the same tiles (as :func:`~embedcache.probes.run_probes` gives them).
    n_boot : int
        Resamples; 0 gives point estimates only.
    n_jobs : int
        Processes scoring resamples (joblib; -1: one per core). scikit-learn's
        metrics cost about 10 ms a resample, mostly input checks, so 1,000
        resamples of many probes are worth spreading over the cores.
    """
    from joblib import Parallel, delayed

    sizes = {p.n_tiles for p in predictions}
    if len(sizes) > 1:
        raise DataError(f"predictions on different numbers of tiles {sorted(sizes)}: they cannot share resamples")
    groups = predictions[0].groups if predictions and getattr(predictions[0], "groups", None) is not None else None
    resamples = bootstrap_indices(sizes.pop() if sizes else 0, n_boot, seed, groups)
    chunks = [resamples[i:i + RESAMPLE_CHUNK] for i in range(0, len(resamples), RESAMPLE_CHUNK)]
    jobs = [(k, c) for k in range(len(predictions)) for c in chunks]
    with _quiet():
        points = [prediction_scores(p) for p in predictions]
    parallel = len(jobs) > 1 and len(resamples) * len(predictions) >= PARALLEL_MIN
    done = Parallel(n_jobs=n_jobs if parallel else 1)(
        delayed(_resampled_scores)(predictions[k], c) for k, c in jobs)
    boots: list[list[dict]] = [[] for _ in predictions]
    for (k, _), scores in zip(jobs, done):
        boots[k] += scores
    rows = [{"store": p.store, "encoder": p.encoder, "layer": p.layer, "depth": p.depth, "method": p.method,
             "task": p.task, "scores": _interval_of(point, b), "chance": chance_scores(p), "params": p.params}
            for p, point, b in zip(predictions, points, boots)]
    n_tiles = predictions[0].n_tiles if predictions else 0
    n_units = len(np.unique(groups)) if groups is not None else n_tiles
    return ScoreTable(rows, {**(info or {}), "n_boot": n_boot, "bootstrap_seed": seed,
                             "bootstrap_unit": "source image" if n_units < n_tiles else "tile",
                             "bootstrap_units": int(n_units)})
