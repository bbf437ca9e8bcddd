"""Encoder comparisons with honest uncertainty: leaderboard intervals and paired tests.

A decoder's score depends on the images it is tested on and on the seed it
was trained with. Each published protocol's headline values are computed
again from per-image rows (:func:`summarise`), on the original images and
on bootstrap resamples, so an interval is the protocol's own number under
resampling, pooled metrics included (detection F1 from pooled counts,
CoNIC's mPQ+ from pooled per-class sums, PanNuke's mean over tissues).

Two-stage bootstrap (:func:`resample_plan`): each resample draws the test
images with replacement and, independently for each encoder, its seeds
with replacement; the statistic is the mean over the drawn seeds of the
protocol value on the drawn images. The point estimate is the mean over
seeds of the protocol value on all images. With one seed this is the
ordinary percentile bootstrap over images. When images are patches of
larger source images (CoNIC), the evaluation records each one's source
(``groups``) and both the resamples and the sign flips take whole sources,
so the patches of one image never count as independent evidence.

Paired comparisons (:func:`compare`): every encoder is scored on the *same*
image resamples, so the difference of two encoders' resampled statistics
keeps the pairing by image (a hard image is hard for both); the 95%
interval of the difference is its percentile interval. The p-value rests
on a sign-flip (permutation) test over the images, the independent units
(:func:`sign_flip_test`): under "no difference" the two encoders' results on
an image are exchangeable, so the protocol's statistic is recomputed with
the encoders swapped on every subset of images (all ``2^n`` subsets up to
:data:`EXACT_UNITS` images, :data:`RANDOM_PATTERNS` random ones beyond),
pooled metrics included. It holds at every n: with 3 images no p can be
below 0.25, and the report says so. The test sees the images, not the
training seeds: with several seeds per encoder, ``p`` is the larger of the
sign-flip p (on the seed-averaged results) and the p of the centred
two-stage bootstrap over seeds and images, so it is never smaller than the
image count allows nor at odds with the interval beside it. Holm's step-down
correction over all pairs of a metric guards against reading one lucky pair
among many. The verdict (:func:`verdict`) reads the test and the interval
together and claims a difference only where both do; at an n too small for
the exact test ever to reach 0.05 it claims none.

>>> rows = [{"name": str(i), "pq": v, "dice": v, "aji": v, "aji_plus": v, "dq": v, "sq": v,
...          "det_tp": 1, "det_fp": 0, "det_fn": 0} for i, v in enumerate([0.5, 0.7])]
>>> s = ImageScores.from_rows("hovernet", rows)
>>> round(float(summarise(s, np.arange(2)[None])["pq"][0]), 3)
0.6
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from embedcache.errors import DataError
from embedcache.metrics.core import SQ_EPS
from embedcache.metrics.protocols import CONIC_DQ_EPS, PUBLISHED_CLASSES

EXACT_UNITS = 16  # up to this many images every sign pattern is enumerated (2^16 = 65,536)
RANDOM_PATTERNS = 10_000  # beyond it, this many random patterns (p at least 1 / 10,001)

HEADLINE = {
    "hovernet": ("pq", "aji", "aji_plus", "dice", "dq", "sq", "f1_detection"),
    "pannuke": ("mpq", "bpq", "mpq_images", "bpq_images"),
    "conic": ("mpq_plus", "bpq", "r2"),
}
"""Metrics of each protocol on the leaderboard, the primary one first."""


@dataclass
class ImageScores:
    """One evaluation (one encoder, one seed): the protocol's per-image rows as columns.

    Attributes
    ----------
    protocol : str
    names : list of str
        Image names, in the truth's order.
    columns : dict of str to (n,) ndarray of float
    tissue : (n,) ndarray of int or None
        Tissue code of each image (PanNuke); codes index ``tissues``.
    tissues : list of str
    classes : tuple of int
        Type ids scored (CoNIC's pooled mPQ+ and R2 are per class).
    groups : (n,) ndarray of int or None
        The unit each image belongs to when images are not independent (CoNIC
        patches cut from one Lizard image): resamples and sign flips take
        whole units. None: every image is its own unit.
    """

    protocol: str
    names: list[str]
    columns: dict[str, np.ndarray]
    tissue: np.ndarray | None = None
    tissues: list[str] = field(default_factory=list)
    classes: tuple[int, ...] = ()
    groups: np.ndarray | None = None

    @classmethod
    def from_rows(cls, protocol: str, rows: Sequence[Mapping], classes: Sequence[int] = (),
                  groups: Sequence[str] | None = None) -> "ImageScores":
        """From :attr:`embedcache.metrics.Evaluation.rows` (or ``eval.json``'s ``images``); ``groups``: the
        source image of each row (``eval.json``'s ``groups``)."""
        if protocol not in HEADLINE:
            raise DataError(f"unknown protocol {protocol!r}; use one of {', '.join(HEADLINE)}")
        names = [str(r.get("name", i)) for i, r in enumerate(rows)]
        keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) or v is None}
        columns = {k: np.array([np.nan if r.get(k) is None else float(r[k]) for r in rows], dtype=np.float64)
                   for k in keys}
        tissue, tissues = None, []
        if protocol == "pannuke":
            labels = [str(r.get("tissue") or "all") for r in rows]
            tissues = sorted(set(labels))
            tissue = np.array([tissues.index(t) for t in labels], dtype=np.int64)
        if protocol == "conic" and not classes:
            classes = sorted(int(k[3:]) for k in keys if k.startswith("tp_") and k[3:].isdigit())
        codes = None
        if groups is not None:
            if len(groups) != len(names):
                raise DataError(f"{len(groups)} groups for {len(names)} images; evaluate again")
            codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].astype(np.int64)
        return cls(protocol, names, columns, tissue, tissues, tuple(int(c) for c in classes), codes)

    @property
    def n(self) -> int:
        return len(self.names)

    def column(self, key: str) -> np.ndarray:
        if key not in self.columns:
            raise DataError(f"{self.protocol} rows lack {key!r}; evaluate again with this version of embedcache")
        return self.columns[key]


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def summarise(scores: ImageScores, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Headline values of ``scores.protocol`` on image resamples.

    Parameters
    ----------
    scores : ImageScores
    idx : (B, m) ndarray of int
        Each row a set of image indices (with repeats); ``np.arange(n)[None]``
        gives the protocol's own values on every image.

    Returns
    -------
    dict of str to (B,) ndarray
        One value per resample for each metric of ``HEADLINE[protocol]``;
        NaN where the protocol leaves it undefined.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"idx must be (resamples, images), got shape {idx.shape}")
    p, col = scores.protocol, scores.column
    out: dict[str, np.ndarray] = {}
    if p == "hovernet":
        for m in ("pq", "aji", "aji_plus", "dice", "dq", "sq"):
            out[m] = _nanmean(col(m)[idx], axis=1)
        tp, fp, fn = (col(k)[idx].sum(axis=1) for k in ("det_tp", "det_fp", "det_fn"))
        out["f1_detection"] = _ratio(2 * tp, 2 * tp + fp + fn)
    elif p == "pannuke":
        t = scores.tissue[idx]
        for m in ("bpq", "mpq"):
            v = col(m)[idx]
            ok = np.isfinite(v)
            per_tissue = []
            for k in range(len(scores.tissues)):
                sel = ok & (t == k)
                per_tissue.append(_ratio(np.where(sel, v, 0).sum(axis=1), sel.sum(axis=1)))
            out[m] = _nanmean(np.stack(per_tissue), axis=0)
            out[f"{m}_images"] = _nanmean(v, axis=1)
    elif p == "conic":
        out["bpq"] = col("bpq")[idx].mean(axis=1)
        pqs, r2s = [], []
        for c in scores.classes:
            tp, fp, fn, iou = (col(f"{k}_{c}")[idx].sum(axis=1) for k in ("tp", "fp", "fn", "iou"))
            pqs.append(tp / (tp + 0.5 * fp + 0.5 * fn + CONIC_DQ_EPS) * (iou / (tp + SQ_EPS)))
            yt, yp = col(f"count_true_{c}")[idx], col(f"count_pred_{c}")[idx]
            ss_res = ((yt - yp) ** 2).sum(axis=1)
            ss_tot = ((yt - yt.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                              (ss_res == 0).astype(np.float64))
            r2s.append(np.where(idx.shape[1] < 2, np.nan, r2))
        out["mpq_plus"] = np.mean(pqs, axis=0) if pqs else np.full(len(idx), np.nan)
        out["r2"] = np.mean(r2s, axis=0) if r2s else np.full(len(idx), np.nan)
    return {m: np.asarray(out[m], dtype=np.float64) for m in HEADLINE[p]}


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class ResamplePlan:
    """The image resamples every encoder shares, and how seeds are drawn.

    Attributes
    ----------
    images : (B, n) ndarray of int
        Image indices of each resample (no groups).
    seed : int
        Base seed; each encoder's seed draws come from ``(seed, crc32(name))``,
        so an encoder's interval does not depend on which others are compared.
    groups : (n,) ndarray of int or None
        With groups, each resample draws whole groups with replacement (as
        many as there are groups) and holds their images: ``rows``, of
        varying lengths, replace ``images``.
    rows : tuple of ndarray
    """

    images: np.ndarray | None
    seed: int = 0
    groups: np.ndarray | None = None
    rows: tuple = ()

    @property
    def n_boot(self) -> int:
        return len(self.rows) if self.groups is not None else len(self.images)

    @property
    def n(self) -> int:
        """Images resampled."""
        return len(self.groups) if self.groups is not None else self.images.shape[1]

    def seed_draws(self, name: str, n_seeds: int) -> np.ndarray:
        """(B, n_seeds) indices of the seeds drawn for encoder ``name`` in each resample."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        if n_seeds == 1:
            return np.zeros((self.n_boot, 1), dtype=np.int64)
        return rng.integers(0, n_seeds, size=(self.n_boot, n_seeds))

    def summarise(self, scores: ImageScores) -> dict[str, np.ndarray]:
        """:func:`summarise` on every resample, ``(B,)`` per metric (resamples of one length at a time)."""
        if self.groups is None:
            return summarise(scores, self.images)
        lengths = np.array([len(r) for r in self.rows])
        out = {m: np.empty(len(self.rows)) for m in HEADLINE[scores.protocol]}
        for length in np.unique(lengths):
            which = np.flatnonzero(lengths == length)
            values = summarise(scores, np.stack([self.rows[i] for i in which]))
            for m in out:
                out[m][which] = values[m]
        return out


def resample_plan(n_images: int, n_boot: int = 2000, seed: int = 0, groups: np.ndarray | None = None) -> ResamplePlan:
    """Image resamples with replacement, the same for every encoder (seeded); with ``groups`` (a code per
    image), whole groups are drawn, so images of one source stay together."""
    if n_images < 1:
        raise DataError("no images to resample")
    rng = np.random.default_rng(seed)
    if groups is None:
        return ResamplePlan(rng.integers(0, n_images, size=(n_boot, n_images)), seed)
    groups = np.asarray(groups, dtype=np.int64)
    if len(groups) != n_images:
        raise DataError(f"{len(groups)} groups for {n_images} images")
    codes, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(codes))]
    draws = rng.integers(0, len(codes), size=(n_boot, len(codes)))
    return ResamplePlan(None, seed, groups, tuple(np.concatenate([members[g] for g in d]) for d in draws))


@dataclass
class EncoderScores:
    """An encoder's headline values: the point estimate and the resampled statistics."""

    name: str
    protocol: str
    n_seeds: int
    n_images: int
    point: dict[str, float]
    per_seed: dict[str, list[float]]
    boot: dict[str, np.ndarray]
    mean_scores: ImageScores | None = None  # per-image columns averaged over seeds (the sign-flip test's)

    def interval(self, metric: str) -> tuple[float, float]:
        return _percentiles(self.boot[metric])


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def _check_same_images(evals: Sequence[ImageScores], ref: list[str], who: str) -> None:
    for e in evals:
        if e.names != ref:
            raise DataError(f"{who}: evaluated on other images than the rest ({len(e.names)} vs {len(ref)}); "
                            "encoders are compared on the same test images")


def score_encoder(name: str, evaluations: Sequence[ImageScores], plan: ResamplePlan) -> EncoderScores:
    """Point estimates and two-stage bootstrap statistics of one encoder over its seeds.

    Parameters
    ----------
    name : str
    evaluations : sequence of ImageScores
        One per training seed, all on the same images and protocol.
    plan : ResamplePlan
    """
    if not evaluations:
        raise DataError(f"{name}: no evaluation to score")
    ref = evaluations[0]
    _check_same_images(evaluations, ref.names, name)
    if plan.n != ref.n:
        raise DataError(f"{name}: {ref.n} images, but the resamples are of {plan.n}")
    full = np.arange(ref.n)[None]
    per_seed = [summarise(e, full) for e in evaluations]
    boots = [plan.summarise(e) for e in evaluations]  # each metric (B,)
    draws = plan.seed_draws(name, len(evaluations))
    rows = np.arange(plan.n_boot)[:, None]
    metrics = HEADLINE[ref.protocol]
    boot = {}
    for m in metrics:
        by_seed = np.stack([b[m] for b in boots], axis=1)  # (B, S)
        boot[m] = _nanmean(by_seed[rows, draws], axis=1)
    point = {m: float(_nanmean(np.array([s[m][0] for s in per_seed]), axis=0)) for m in metrics}
    keys = set.intersection(*(set(e.columns) for e in evaluations))
    mean = ImageScores(ref.protocol, ref.names,
                       {k: _nanmean(np.stack([e.columns[k] for e in evaluations]), axis=0) for k in keys},
                       ref.tissue, ref.tissues, ref.classes, ref.groups)
    return EncoderScores(name, ref.protocol, len(evaluations), ref.n, point,
                         {m: [float(s[m][0]) for s in per_seed] for m in metrics}, boot, mean)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), np.nan)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def sign_flip_test(a: ImageScores, b: ImageScores, metric: str, seed: int = 0) -> dict:
    """Two-sided sign-flip test of "no difference" between two encoders on the same images.

    The protocol's statistic (:func:`summarise`) is recomputed with ``a``
    and ``b`` swapped on each subset of images (of whole groups when the
    images have ``groups``: the patches of one source image are not
    independent): every subset when there are at most :data:`EXACT_UNITS`
    units (exact), else
    :data:`RANDOM_PATTERNS` random ones. ``p`` is the share of patterns
    whose difference is at least as large as the observed one (the
    observed pattern included, so never 0).

    Returns
    -------
    dict
        ``p``, ``n_units`` (images), ``method`` (``exact`` or ``random``),
        ``patterns`` and ``min_p``: the smallest p the test can give here
        (``2 / 2^n`` exact: a pattern and its complement tie).
    """
    n = a.n
    # The units flipped: images, or whole groups (every image of a source image swaps together).
    unit = np.unique(a.groups, return_inverse=True)[1] if a.groups is not None else np.arange(n)
    n_units = int(unit.max()) + 1 if n else 0
    both = ImageScores(a.protocol, a.names + b.names,
                       {k: np.concatenate([a.columns[k], b.columns[k]]) for k in set(a.columns) & set(b.columns)},
                       None if a.tissue is None else np.concatenate([a.tissue, b.tissue]), a.tissues, a.classes)
    if n_units <= EXACT_UNITS:
        flips = (np.arange(2 ** n_units)[:, None] >> np.arange(n_units)[None]) & 1
        method, min_p = "exact", 2.0 / 2 ** n_units if n_units else 1.0
    else:
        rng = np.random.default_rng([seed, zlib.crc32(f"{metric}".encode())])
        flips = np.concatenate([np.zeros((1, n_units), np.int64), rng.integers(0, 2, (RANDOM_PATTERNS, n_units))])
        method, min_p = "random", 1.0 / (RANDOM_PATTERNS + 1)
    flips = flips[:, unit]
    own = np.arange(n)[None]
    d = summarise(both, own + n * flips)[metric] - summarise(both, own + n * (1 - flips))[metric]
    observed = d[0]  # pattern 0 swaps nothing
    if not np.isfinite(observed):
        p = math.nan
    else:
        p = float(np.mean(np.abs(np.nan_to_num(d, nan=0.0)) >= abs(observed) - 1e-12))
    return {"p": p, "n_units": n_units, "method": method, "patterns": int(len(flips)), "min_p": float(min_p)}


def compare(a: EncoderScores, b: EncoderScores, metric: str) -> dict:
    """Paired comparison of ``a - b`` on ``metric``: bootstrap interval, sign-flip p (module docstring).

    Returns
    -------
    dict
        ``a, b, metric, diff`` (point), ``lo, hi`` (95% percentile
        interval over the shared image resamples), ``p`` (two-sided) with
        ``test`` (how it was made), ``n_units``, ``method``, ``patterns``
        and ``min_p`` of the sign-flip test, and ``p_bootstrap``.
    """
    d = a.point[metric] - b.point[metric]
    db = a.boot[metric] - b.boot[metric]
    db = db[np.isfinite(db)]
    lo, hi = _percentiles(db)
    p_boot = math.nan
    if math.isfinite(d) and db.size:
        p_boot = float((1 + np.sum(np.abs(db - db.mean()) >= abs(d) - 1e-12)) / (db.size + 1))
    flip = {"p": math.nan, "n_units": a.n_images, "method": "n/a", "patterns": 0, "min_p": math.nan}
    if math.isfinite(d) and a.mean_scores is not None and b.mean_scores is not None:
        flip = sign_flip_test(a.mean_scores, b.mean_scores, metric)
    seeds = max(a.n_seeds, b.n_seeds) > 1
    p = max(flip["p"], p_boot) if seeds and math.isfinite(flip["p"]) and math.isfinite(p_boot) else flip["p"]
    test = "sign-flip over images and seed-and-image bootstrap, the larger" if seeds else "sign-flip over images"
    return {"a": a.name, "b": b.name, "metric": metric, "diff": d, "lo": lo, "hi": hi, **flip, "p": p,
            "p_sign_flip": flip["p"], "p_bootstrap": p_boot, "test": test}


@dataclass
class Leaderboard:
    """Encoders of one dataset ranked by the protocol's primary metric, and their paired comparisons.

    Attributes
    ----------
    dataset, protocol : str
    rows : list of dict
        One per encoder, best first: ``encoder, n_seeds, n_images`` and for
        each metric ``{value, lo, hi, seeds}``.
    comparisons : list of dict
        Every pair on every metric: :func:`compare`'s fields plus ``p_holm``
        (over the pairs of that metric) and ``verdict``.
    n_boot : int
    classes : tuple of int
        The classes scored (every evaluation scored the same ones).
    """

    dataset: str
    protocol: str
    rows: list[dict]
    comparisons: list[dict]
    n_boot: int
    classes: tuple[int, ...] = ()

    @property
    def published(self) -> bool:
        """Whether the classes are the published protocol's (always, unless a class set was asked for)."""
        want = PUBLISHED_CLASSES.get(self.protocol)
        return want is None or not self.classes or tuple(sorted(self.classes)) == want

    @property
    def metrics(self) -> tuple[str, ...]:
        return HEADLINE[self.protocol]

    @property
    def primary(self) -> str:
        return self.metrics[0]


ALPHA = 0.05

VERDICT_RULE = (
    "Verdict: a difference is claimed only when the paired test and the interval agree (p after Holm below "
    "0.05 and the 95% interval excluding 0 on the same side); 'no clear difference' when neither finds one; "
    "'unclear' when they disagree. At small n the test decides: with too few {units} for the exact test ever "
    "to reach 0.05 (the smallest p is 2 / 2^n, times the number of pairs after Holm), no difference is claimed "
    "whatever the interval, which over so few {units} cannot be trusted as a 95% interval.")
"""How :func:`verdict` reads a comparison, for reports (format with ``units``, e.g. ``"images"``)."""


def verdict(c: Mapping, n_pairs: int = 1, alpha: float = ALPHA, units: str = "images") -> str:
    """One verdict of a paired comparison, from the test and the interval together (:data:`VERDICT_RULE`).

    Parameters
    ----------
    c : mapping
        ``a, b, diff, lo, hi, p_holm`` and ``min_p`` (the smallest p the
        test can give at this n, before Holm), ``n_units``.
    n_pairs : int
        Pairs in the Holm family: the smallest adjusted p is ``n_pairs * min_p``.
    alpha : float
    units : str
        What the test's units are called (``images``, ``source images``).

    Returns
    -------
    str
        ``"<a> better"``, ``"<b> better"``, ``"no clear difference"``,
        ``"too few <units> to tell (...)"``, ``"unclear: ..."`` or ``"n/a"``.
        Never a difference that the interval or the test contradicts, and
        never "no clear difference" beside an interval that excludes 0.

    Examples
    --------
    >>> verdict({"a": "A", "b": "B", "diff": 0.1, "lo": 0.05, "hi": 0.15, "p_holm": 0.25, "min_p": 0.25,
    ...          "n_units": 3})
    'too few images to tell (3: p cannot go below 0.25)'
    """
    d, lo, hi, p = (float(c[k]) for k in ("diff", "lo", "hi", "p_holm"))
    if not (math.isfinite(d) and math.isfinite(p)):
        return "n/a"
    floor = min(1.0, float(c.get("min_p", math.nan)) * max(1, n_pairs))
    if math.isfinite(floor) and floor >= alpha:
        return f"too few {units} to tell ({c.get('n_units', '?')}: p cannot go below {floor:.3g})"
    excludes = math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)
    if p < alpha and excludes and (lo > 0) == (d > 0):
        return f"{c['a']} better" if d > 0 else f"{c['b']} better"
    if p >= alpha and not excludes:
        return "no clear difference"
    if p < alpha:
        return f"unclear: p (Holm) {p:.3g} but the interval includes 0"
    return f"unclear: the interval excludes 0 but p (Holm) is {p:.3g}"


def leaderboard(dataset: str, evaluations: Mapping[str, Sequence[ImageScores]], n_boot: int = 2000,
                seed: int = 0) -> Leaderboard:
    """Score every encoder of one dataset and compare every pair on the same resamples.

    Parameters
    ----------
    dataset : str
    evaluations : mapping of encoder name to its per-seed ImageScores
        All on the same images under the same protocol.
    n_boot : int
    seed : int
    """
    if not evaluations:
        raise DataError(f"{dataset}: no evaluations to rank")
    first = next(iter(evaluations.values()))[0]
    protocols = {e.protocol for evs in evaluations.values() for e in evs}
    if len(protocols) > 1:
        raise DataError(f"{dataset}: evaluations under several protocols {sorted(protocols)}")
    for name, evs in evaluations.items():
        _check_same_images(evs, first.names, name)
        for e in evs:
            if first.protocol in PUBLISHED_CLASSES and e.classes != first.classes:
                raise DataError(f"{dataset}: {name} was scored on classes {list(e.classes)}, another evaluation "
                                f"on {list(first.classes)}; evaluate every encoder on the same classes")
    for name, evs in evaluations.items():
        if any((e.groups is None) != (first.groups is None) or
               (e.groups is not None and not np.array_equal(e.groups, first.groups)) for e in evs):
            raise DataError(f"{dataset}: {name}'s images are grouped by source otherwise than the rest; "
                            "evaluate every encoder on the same store")
    plan = resample_plan(first.n, n_boot, seed, first.groups)
    scored = [score_encoder(name, evs, plan) for name, evs in evaluations.items()]
    primary = HEADLINE[first.protocol][0]
    scored.sort(key=lambda s: -s.point[primary] if math.isfinite(s.point[primary]) else math.inf)
    rows = []
    for s in scored:
        row = {"encoder": s.name, "n_seeds": s.n_seeds, "n_images": s.n_images}
        for m in HEADLINE[first.protocol]:
            lo, hi = s.interval(m)
            row[m] = {"value": s.point[m], "lo": lo, "hi": hi, "seeds": s.per_seed[m]}
        rows.append(row)
    comparisons = []
    for m in HEADLINE[first.protocol]:
        pairs = [compare(a, b, m) for i, a in enumerate(scored) for b in scored[i + 1:]]
        for c, ph in zip(pairs, holm([c["p"] for c in pairs])):
            c["p_holm"] = ph
            c["verdict"] = verdict(c, len(pairs))
        comparisons += pairs
    return Leaderboard(dataset, first.protocol, rows, comparisons, n_boot, tuple(first.classes))
