"""Scores of a cell probe with intervals over source images, paired tests, and its figures.

Every interval here comes from one set of resamples of the source images
(a cluster bootstrap: a drawn image brings all its cells), shared by every
encoder, layer, fraction and variant, so differences are paired. Scores
are computed from per-image confusion matrices: a resample's confusion is
a weighted sum of them, so 1,000 resamples of 100,000 cells cost
milliseconds. Point estimates are scikit-learn's (balanced accuracy,
macro-F1 over the classes in truth or prediction, per-class F1).

:func:`score_cell_probes` turns a :class:`~embedcache.probes.cell.CellProbeResult`
into a :class:`CellReport`: the leaderboard (every store, layer, method),
per-class F1, paired differences of the stores' best layers, the
label-efficiency curve, the invariance ratios (cells and tiles) and the
identity-trained probe's scores on every variant.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from embedcache.files import plain_json, write_json
from embedcache.metrics.tables import table
from embedcache.report.compare import EXACT_UNITS, RANDOM_PATTERNS, VERDICT_RULE, holm, verdict
from embedcache.report.plots import draw_figures, figure
from embedcache.report.stats import above_chance, chance_note, chance_scores

CELL_METRICS = ("balanced_accuracy", "macro_f1")


def resample_weights(groups: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, W)``: each item's image code and ``(n_boot, G)`` counts of each image in each resample."""
    _, codes = np.unique(groups, return_inverse=True)
    G = int(codes.max()) + 1 if len(codes) else 0
    draws = np.random.default_rng(seed).integers(0, G, size=(n_boot, G))
    W = np.stack([np.bincount(row, minlength=G) for row in draws]) if n_boot else np.zeros((0, G), int)
    return codes, W.astype(np.float64)


def group_confusion(y: np.ndarray, pred: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Per-image confusion matrices ``(G, k * k)`` [truth * k + prediction]."""
    G = int(codes.max()) + 1
    return np.bincount((codes * k + y) * k + pred, minlength=G * k * k).reshape(G, k * k).astype(np.float64)


def confusion_scores(conf: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Balanced accuracy and macro-F1 of ``(..., k * k)`` confusion counts (as scikit-learn defines them)."""
    c = conf.reshape(*conf.shape[:-1], k, k)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    truth, said = c.sum(axis=-1), c.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(truth > 0, tp / truth, np.nan)
        f1 = np.where(truth + said > 0, 2 * tp / (truth + said), np.nan)
    return {"balanced_accuracy": np.nanmean(recall, axis=-1), "macro_f1": np.nanmean(f1, axis=-1)}


def _interval(value: float, boots: np.ndarray) -> dict:
    boots = boots[np.isfinite(boots)]
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if len(boots) else (math.nan, math.nan))
    return {"value": float(value), "lo": float(lo), "hi": float(hi)}


@dataclass
class CellReport:
    """What a cell probe measured, with intervals; rows are plain data.

    Attributes
    ----------
    rows : list of dict
        ``store, encoder, layer, depth, method, scores{metric: {value, lo, hi}}, per_class{name: f1}``.
    comparisons : list of dict
        Best layers of two stores: ``a, b, layer_a, layer_b, diff, lo, hi, p, p_holm``.
    curve : list of dict
        ``store, layer, fraction, n_train, balanced_accuracy{value, lo, hi}``.
    invariance : list of dict
        ``store, layer, level, ratio{value, lo, hi}, per_variant{name: ratio}``.
    transfer : list of dict
        ``store, layer, method, variant, balanced_accuracy{...}, drop{...}``.
    info : dict
    """

    rows: list[dict]
    comparisons: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    invariance: list[dict] = field(default_factory=list)
    transfer: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def best(self) -> list[dict]:
        """The highest layer of each (store, method) by balanced accuracy, with ``chance`` and ``above_chance``
        (one at or below chance is never starred or called the best)."""
        best: dict = {}
        for r in self.rows:
            key = (r["store"], r["method"])
            if key not in best or r["scores"]["balanced_accuracy"]["value"] > \
                    best[key]["scores"]["balanced_accuracy"]["value"]:
                best[key] = r
        out = []
        for r in best.values():
            chance = r.get("chance", {}).get("balanced_accuracy")
            out.append({"store": r["store"], "method": r["method"], "layer": r["layer"], "metric": "balanced_accuracy",
                        **r["scores"]["balanced_accuracy"], "chance": chance,
                        "above_chance": above_chance(r["scores"]["balanced_accuracy"], chance)})
        return out

    def chance(self) -> dict[str, float]:
        """Chance level of balanced accuracy and macro-F1 (the rows share their cells and labels)."""
        return dict(self.rows[0].get("chance", {})) if self.rows else {}

    def to_dict(self) -> dict:
        return plain_json({"info": self.info, "rows": self.rows, "best": self.best(),
                           "comparisons": self.comparisons, "curve": self.curve, "invariance": self.invariance,
                           "transfer": self.transfer})

    @classmethod
    def from_dict(cls, d: dict) -> "CellReport":
        return cls(d["rows"], d.get("comparisons", []), d.get("curve", []), d.get("invariance", []),
                   d.get("transfer", []), d.get("info", {}))

    def format(self) -> str:
        """Text for the terminal: the leaderboard, paired differences, curve, invariance and transfer."""
        info = self.info
        names = info.get("labels", {}).get("names", [])
        head = (f"cell-level probe of nucleus types ({', '.join(names)}): {info.get('n_cells', '?')} cells, "
                f"{info.get('folds', '?')}; features {info.get('features', '?')}; 95% intervals over "
                f"{info.get('n_boot', '?')} resamples of the {info.get('n_units', '?')} "
                f"{info.get('unit', 'source image')}s")
        best = {(b["store"], b["method"], b["layer"]) for b in self.best() if b["above_chance"]}
        few = _few_images(info)
        chance = self.chance()
        body = [[r["store"], r["layer"], r["method"], *[_text(r["scores"][m]) for m in CELL_METRICS],
                 " ".join(f"{n}:{v:.2f}" for n, v in r["per_class"].items()),
                 "*" if (r["store"], r["method"], r["layer"]) in best else ""] for r in self.rows]
        out = [head] + ([f"NOTE: {few}"] if few else []) + ([chance_note(CELL_METRICS)] if chance else []) + [
            "", table(["store", "layer", "method", *[_with_chance(m, chance) for m in CELL_METRICS],
                       "per-class F1", ""], body)]
        out += [f"no layer above chance: {b['store']} {b['method']} scores at most balanced accuracy {_text(b)} at "
                f"{b['layer']}, "
                f"chance {b['chance']:.3f}" for b in self.best() if not b["above_chance"]]
        if self.comparisons:
            out += ["", "paired differences of balanced accuracy (best linear layers; interval over the same resamples, "
                        "p from swapping the two probes' predictions per image, exact up to "
                        f"{EXACT_UNITS} images).", VERDICT_RULE.format(units="source images"),
                    table(["a - b", "layers", "diff", "95% interval", "p", "p (Holm)", "verdict"],
                          [[f"{c['a']} - {c['b']}", f"{c['layer_a']} / {c['layer_b']}", f"{c['diff']:+.3f}",
                            f"[{c['lo']:+.3f}, {c['hi']:+.3f}]", f"{c['p']:.4f}", f"{c['p_holm']:.4f}",
                            _verdict_of(c, len(self.comparisons))] for c in self.comparisons])]
        if self.curve:
            out += ["", "label efficiency (linear probe of the best layer, share of each fold's training cells):",
                    table(["store", "layer", "fraction", "training cells", "balanced accuracy"],
                          [[c["store"], c["layer"], f"{c['fraction']:g}", str(c["n_train"]),
                            _text(c["balanced_accuracy"])] for c in self.curve])]
        if self.invariance:
            out += ["", "invariance: shift across variants / distance between different items (0: invariant):",
                    table(["store", "layer", "level", "ratio", "most moving variant"],
                          [[r["store"], r["layer"], r["level"], _text(r["ratio"]),
                            max(r["per_variant"], key=r["per_variant"].get) if r["per_variant"] else ""]
                           for r in self.invariance])]
        if self.transfer:
            worst = {}
            for t in self.transfer:
                key = (t["store"], t["layer"], t["method"])
                if t["variant"] != self.info.get("variants", ["identity"])[0] and \
                        (key not in worst or t["drop"]["value"] < worst[key]["drop"]["value"]):
                    worst[key] = t
            out += ["", "probe trained on identity cells, tested on each variant (largest drop shown):",
                    table(["store", "layer", "method", "variant", "balanced accuracy", "drop vs identity"],
                          [[t["store"], t["layer"], t["method"], t["variant"], _text(t["balanced_accuracy"]),
                            _text(t["drop"], signed=True)] for t in worst.values()])]
        return "\n".join(out)

    def map_layers(self) -> dict[str, str]:
        """The layer to map per store: its best linear layer, else its best layer of any method (kNN only)."""
        best = sorted(self.best(), key=lambda b: b["method"] != "linear")
        layers: dict[str, str] = {}
        for b in best:
            layers.setdefault(b["store"], b["layer"])
        return layers

    def write(self, out, stores: list | None = None, seed: int = 0) -> tuple[list[Path], list[str]]:
        """``cells.json`` and ``cells.csv`` into ``out``, then the figures.

        The tables are written first; a figure that cannot be drawn is a
        warning line (returned), never the loss of the tables.

        Parameters
        ----------
        out : str or Path
        stores : list of (label, CellStore), optional
            Stores to draw the cell map of (``cells_map.png``); none: no map.
        seed : int
            Seeds the cells the map samples.

        Returns
        -------
        written : list of Path
        warnings : list of str
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [write_json(out / "cells.json", self.to_dict()), self.write_csv(out / "cells.csv")]
        figures = {}
        if self.curve:
            figures[out / "cells_label_efficiency.png"] = lambda p: plot_label_efficiency(self, p)
        if self.invariance:
            figures[out / "cells_invariance.png"] = lambda p: plot_invariance(self, p)
        if stores:
            figures[out / "cells_map.png"] = lambda p: plot_cell_map(stores, self.map_layers(), p, seed=seed)
        drawn, warnings = draw_figures(figures)
        return written + drawn, warnings

    def write_csv(self, path) -> Path:
        path = Path(path)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["store", "encoder", "layer", "depth", "method"]
                       + [f"{m}{s}" for m in CELL_METRICS for s in ("", "_lo", "_hi", "_chance")])
            for r in self.rows:
                chance = r.get("chance", {})
                w.writerow([r["store"], r["encoder"], r["layer"], r["depth"], r["method"]]
                           + [f"{r['scores'][m][k]:.6g}" if k != "chance" else f"{chance.get(m, math.nan):.6g}"
                              for m in CELL_METRICS for k in ("value", "lo", "hi", "chance")])
        return path


FEW_IMAGES = 10


def _few_images(info: dict) -> str:
    """A warning when the cells come from too few images for intervals over images to mean much."""
    n = info.get("n_units") or 0
    if n >= FEW_IMAGES:
        return ""
    unit = info.get("unit", "source image")
    return (f"the cells come from only {n} {unit}s: folds and intervals are over them, so scores swing "
            f"with which {unit} is held out and the intervals are rough; use more {unit}s for a comparison")


def _with_chance(metric: str, chance: dict) -> str:
    """A column header: the metric and its chance level."""
    name = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}[metric]
    return f"{name} (chance {chance[metric]:.3f})" if metric in chance else name


def _verdict_of(c: dict, n_pairs: int) -> str:
    """The comparison's verdict (reports written before verdicts were stored get one computed)."""
    return c.get("verdict") or verdict(c, n_pairs, units="source images")


def _text(s: dict, signed: bool = False) -> str:
    if s is None or not math.isfinite(s["value"]):
        return "n/a"
    f = "+.3f" if signed else ".3f"
    if not math.isfinite(s["lo"]):
        return format(s["value"], f)
    return f"{s['value']:{f}} [{s['lo']:{f}}, {s['hi']:{f}}]"


def score_cell_probes(result, n_boot: int = 1000, seed: int = 0) -> CellReport:
    """Score a :class:`~embedcache.probes.cell.CellProbeResult` on shared resamples of its source images."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    preds = result.predictions
    names = result.info["labels"]["names"]
    k = len(names)
    codes, W = resample_weights(preds[0].groups, n_boot, seed)

    def boots(y, pred) -> dict[str, np.ndarray]:
        return confusion_scores(W @ group_confusion(y, pred, codes, k), k)

    rows, best_boot = [], {}
    for p in preds:
        b = boots(p.y_true, p.y_pred)
        point = {"balanced_accuracy": float(balanced_accuracy_score(p.y_true, p.y_pred)),
                 "macro_f1": float(f1_score(p.y_true, p.y_pred, average="macro", zero_division=0))}
        per_class = f1_score(p.y_true, p.y_pred, labels=range(k), average=None, zero_division=0)
        chance = chance_scores(p)
        rows.append({"store": p.store, "encoder": p.encoder, "layer": p.layer, "depth": p.depth, "method": p.method,
                     "task": "classification", "scores": {m: _interval(point[m], b[m]) for m in CELL_METRICS},
                     "chance": {m: chance[m] for m in CELL_METRICS},
                     "per_class": {n: float(v) for n, v in zip(names, per_class)}, "params": p.params})
        key = p.store
        if p.method == "linear" and (key not in best_boot or point["balanced_accuracy"] > best_boot[key][0]):
            best_boot[key] = (point["balanced_accuracy"], b["balanced_accuracy"], p.layer,
                              group_confusion(p.y_true, p.y_pred, codes, k))
    report = CellReport(rows, info={**result.info, "n_boot": n_boot, "bootstrap_seed": seed,
                                    "bootstrap_unit": result.info.get("unit", "source image"),
                                    "bootstrap_units": int(W.shape[1])})
    report.comparisons = _comparisons(best_boot, k, seed)
    for p in result.curve:
        b = boots(p.y_true, p.y_pred)["balanced_accuracy"]
        report.curve.append({"store": p.store, "layer": p.layer, "fraction": p.params["fraction"],
                             "n_train": _training_cells(p), "balanced_accuracy": _interval(
                                 balanced_accuracy_score(p.y_true, p.y_pred), b)})
    for (store, layer, level), shift in result.shifts.items():
        report.invariance.append(_invariance_row(store, layer, level, shift, result, n_boot, seed, codes, W))
    for p in preds:
        if p.variant_pred is None:
            continue
        identity = boots(p.y_true, p.variant_pred[:, 0])["balanced_accuracy"]
        base = balanced_accuracy_score(p.y_true, p.variant_pred[:, 0])
        for v, name in enumerate(result.variants):
            b = boots(p.y_true, p.variant_pred[:, v])["balanced_accuracy"]
            value = balanced_accuracy_score(p.y_true, p.variant_pred[:, v])
            report.transfer.append({"store": p.store, "layer": p.layer, "method": p.method, "variant": name,
                                    "balanced_accuracy": _interval(value, b),
                                    "drop": _interval(value - base, b - identity)})
    return report


def _training_cells(p) -> int:
    """Mean training cells per fold at this fraction (what the fits saw)."""
    counts = p.params.get("train_sizes")
    return int(np.mean(counts)) if counts else -1


def swap_test(conf_a: np.ndarray, conf_b: np.ndarray, k: int, seed: int = 0) -> dict:
    """Two-sided paired randomisation test of "no difference in balanced accuracy" between two probes.

    Under the null hypothesis the two probes' predictions of an image are
    exchangeable, so each image's confusion matrices (``(G, k * k)``) are
    swapped between them on every subset of images (up to
    :data:`~embedcache.report.compare.EXACT_UNITS` images, else
    :data:`~embedcache.report.compare.RANDOM_PATTERNS` random subsets) and
    the pooled difference recomputed; ``p`` is the share of patterns at
    least as far from 0 as the observed one (never below ``2 / 2^G``: 3
    images cannot give less than 0.25).
    """
    G = len(conf_a)
    if G <= EXACT_UNITS:
        swaps = ((np.arange(2 ** G)[:, None] >> np.arange(G)[None]) & 1).astype(np.float64)
        method, min_p = "exact", 2.0 / 2 ** G
    else:
        rng = np.random.default_rng(seed)
        swaps = np.concatenate([np.zeros((1, G)), rng.integers(0, 2, (RANDOM_PATTERNS, G))]).astype(np.float64)
        method, min_p = "random", 1.0 / (RANDOM_PATTERNS + 1)
    a = (1 - swaps) @ conf_a + swaps @ conf_b
    b = swaps @ conf_a + (1 - swaps) @ conf_b
    d = confusion_scores(a, k)["balanced_accuracy"] - confusion_scores(b, k)["balanced_accuracy"]
    p = float(np.mean(np.abs(d) >= abs(d[0]) - 1e-12))
    return {"p": p, "method": method, "patterns": int(len(swaps)), "min_p": float(min_p), "n_units": int(G)}


def _comparisons(best: dict, k: int, seed: int) -> list[dict]:
    out = []
    for a, b in combinations(best, 2):
        (va, ba, la, ca), (vb, bb, lb, cb) = best[a], best[b]
        d = ba - bb
        d = d[np.isfinite(d)]
        lo, hi = np.percentile(d, [2.5, 97.5]) if len(d) else (math.nan, math.nan)
        test = swap_test(ca, cb, k, seed)
        out.append({"a": a, "b": b, "layer_a": la, "layer_b": lb, "diff": float(va - vb), "lo": float(lo),
                    "hi": float(hi), **test})
    for c, ph in zip(out, holm([c["p"] for c in out])):
        c["p_holm"] = ph
        c["verdict"] = verdict(c, len(out), units="source images")
    return out


def _invariance_row(store, layer, level, shift, result, n_boot, seed, codes, W) -> dict:
    if level == "cell":
        g, weights = codes, W
    else:  # tiles resample by their own source images
        g, weights = resample_weights(np.arange(len(shift.shift)) if shift.groups is None else shift.groups,
                                      n_boot, seed)
    G = weights.shape[1]
    num = np.bincount(g, weights=shift.shift, minlength=G)
    den = np.bincount(g, weights=shift.spread, minlength=G)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = (weights @ num) / (weights @ den)
    per_variant = {name: float(shift.per_variant[:, v - 1].mean() / max(shift.spread.mean(), 1e-12))
                   for v, name in enumerate(result.variants) if v > 0}
    return {"store": store, "layer": layer, "level": level, "ratio": _interval(shift.ratio, boots),
            "per_variant": per_variant, "n_items": int(len(shift.shift))}


# ----------------------------------------------------------------------------- the study report


def cells_markdown(report: CellReport, dataset: str) -> str:
    """The cell probe's section of a study report: leaderboard, paired tests, label efficiency, invariance."""
    info = report.info
    names = info.get("labels", {}).get("names", [])
    counts = info.get("labels", {}).get("counts", [])
    lines = [f"## {dataset}: cell types from the cache", "",
             f"Linear and kNN probes on one vector per nucleus ({info.get('n_cells')} typed cells: "
             + ", ".join(f"{n} {c}" for n, c in zip(names, counts)) + f"), {info.get('folds')}; features "
             f"{info.get('features')}. 95% intervals over {info.get('n_boot')} resamples of the "
             f"{info.get('unit', 'source image')}s."
             + (f" **Note**: {_few_images(info)}." if _few_images(info) else ""), "",
             "| encoder | method | best layer | " + " | ".join(_with_chance(m, report.chance()) for m in CELL_METRICS)
             + " | per-class F1 |", "|---|---|---|---|---|---|"]
    if report.chance():
        note = chance_note(CELL_METRICS)
        lines[-2:-2] = [note[0].upper() + note[1:], ""]
    rows = {(r["store"], r["method"], r["layer"]): r for r in report.rows}
    for b in sorted(report.best(), key=lambda b: -b["value"]):
        r = rows[b["store"], b["method"], b["layer"]]
        layer = b["layer"] if b["above_chance"] else f"none above chance (highest: {b['layer']})"
        lines.append(f"| {b['store']} | {b['method']} | {layer} | {_text(r['scores']['balanced_accuracy'])} | "
                     f"{_text(r['scores']['macro_f1'])} | "
                     + ", ".join(f"{n} {v:.2f}" for n, v in r["per_class"].items()) + " |")
    if report.comparisons:
        lines += ["", "Paired differences of the best linear layers (interval over the same image resamples; p from "
                      "swapping the two encoders' predictions per image, exact up to "
                      f"{EXACT_UNITS} images, Holm-adjusted over the pairs). "
                  + VERDICT_RULE.format(units="source images"), "",
                  "| a - b (best linear layers) | difference in balanced accuracy | 95% interval | p | p (Holm) | "
                  "verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['a']} - {c['b']} | {c['diff']:+.3f} | [{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['p']:.4f} | "
                  f"{c['p_holm']:.4f} | {_verdict_of(c, len(report.comparisons))} |" for c in report.comparisons]
    if report.curve:
        fractions = sorted({c["fraction"] for c in report.curve})
        lines += ["", "Label efficiency (balanced accuracy of the best layer's linear probe on a share of each "
                      "fold's training cells):", "",
                  "| encoder | " + " | ".join(f"{f:g}" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for store in dict.fromkeys(c["store"] for c in report.curve):
            got = {c["fraction"]: c for c in report.curve if c["store"] == store}
            lines.append(f"| {store} | " + " | ".join(_text(got[f]["balanced_accuracy"]) if f in got else ""
                                                      for f in fractions) + " |")
    if report.invariance:
        best = {b["store"]: b["layer"] for b in report.best() if b["method"] == "linear"}
        lines += ["", "Invariance at each encoder's best layer: how far a cell (or tile) moves across the cached "
                      "variants against how far apart two different ones are (0: unmoved), and the linear probe "
                      "trained on identity cells scored on the variant where it drops most.", "",
                  "| encoder | layer | cells | tiles | worst variant | balanced accuracy there | change |",
                  "|---|---|---|---|---|---|---|"]
        for store, layer in best.items():
            inv = {r["level"]: r for r in report.invariance if r["store"] == store and r["layer"] == layer}
            moves = [t for t in report.transfer if t["store"] == store and t["layer"] == layer
                     and t["method"] == "linear" and t["variant"] != info.get("variants", ["identity"])[0]]
            worst = min(moves, key=lambda t: t["drop"]["value"]) if moves else None
            lines.append(f"| {store} | {layer} | {_text(inv['cell']['ratio']) if 'cell' in inv else 'n/a'} | "
                         f"{_text(inv['tile']['ratio']) if 'tile' in inv else 'n/a'} | "
                         f"{worst['variant'] if worst else ''} | "
                         f"{_text(worst['balanced_accuracy']) if worst else ''} | "
                         f"{_text(worst['drop'], signed=True) if worst else ''} |")
    return "\n".join(lines)


def cell_section(folder: Path, dataset: str, out: Path) -> tuple[str, list[str], dict]:
    """Markdown, figure names written into ``out`` and the data of the cell probe in ``folder``."""
    import json

    from embedcache.errors import EmbedcacheError
    from embedcache.store import open_store

    report = CellReport.from_dict(json.loads((folder / "cells.json").read_text()))
    figures = []
    if report.curve:
        figures.append(plot_label_efficiency(report, out / f"cells_efficiency_{dataset}.png").name)
    if report.invariance:
        figures.append(plot_invariance(report, out / f"cells_invariance_{dataset}.png").name)
    record = folder / "step.json"
    stores = json.loads(record.read_text())["result"].get("stores", {}) if record.is_file() else {}
    try:
        opened = [(name, open_store(path)) for name, path in stores.items()]
    except EmbedcacheError:
        opened = []  # the cell stores have moved: the map is left out, the tables stay
    if opened:
        drawn, _ = draw_figures({out / f"cells_map_{dataset}.png":
                                 lambda p: plot_cell_map(opened, report.map_layers(), p)})
        figures += [p.name for p in drawn]
    return cells_markdown(report, dataset), figures, report.to_dict()


# ----------------------------------------------------------------------------- figures


def plot_label_efficiency(report: CellReport, path) -> Path:
    """Balanced accuracy against the share of training cells (log axis), one line per store, 95% bands."""
    fig, (ax,) = figure(5.0, 3.6)
    stores = list(dict.fromkeys(c["store"] for c in report.curve))
    for i, s in enumerate(stores):
        pts = sorted((c for c in report.curve if c["store"] == s), key=lambda c: c["fraction"])
        x = [c["fraction"] for c in pts]
        y, lo, hi = (np.array([c["balanced_accuracy"][k] for c in pts], dtype=float) for k in ("value", "lo", "hi"))
        ax.plot(x, y, marker="o", color=f"C{i % 10}", label=f"{s} ({pts[0]['layer']})")
        ax.fill_between(x, lo, hi, color=f"C{i % 10}", alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("share of training cells")
    ax.set_ylabel("balanced accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("cell types: label efficiency", fontsize=10)
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_invariance(report: CellReport, path) -> Path:
    """Invariance ratio against depth per store (cells solid, tiles dashed), and accuracy on each variant."""
    fig, axes = figure(4.6, 3.6, 2)
    stores = list(dict.fromkeys(r["store"] for r in report.invariance))
    depth = {(r["store"], r["layer"]): r["depth"] for r in report.rows}
    for i, s in enumerate(stores):
        for level, style in (("cell", "-"), ("tile", "--")):
            pts = sorted((r for r in report.invariance if r["store"] == s and r["level"] == level),
                         key=lambda r: depth.get((s, r["layer"]), 0))
            if not pts:
                continue
            x = [depth.get((s, r["layer"]), 0) for r in pts]
            y, lo, hi = (np.array([r["ratio"][k] for r in pts], dtype=float) for k in ("value", "lo", "hi"))
            axes[0].plot(x, y, style, marker="o", color=f"C{i % 10}", label=f"{s} {level}s")
            axes[0].fill_between(x, lo, hi, color=f"C{i % 10}", alpha=0.15, linewidth=0)
    axes[0].set_xlabel("relative depth")
    axes[0].set_ylabel("shift / spread")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    best = {(b["store"], b["layer"]) for b in report.best() if b["method"] == "linear"}
    rows = [t for t in report.transfer if (t["store"], t["layer"]) in best and t["method"] == "linear"]
    variants = list(dict.fromkeys(t["variant"] for t in rows))
    width = 0.8 / max(1, len(stores))
    for i, s in enumerate(stores):
        vals = {t["variant"]: t["balanced_accuracy"] for t in rows if t["store"] == s}
        x = np.arange(len(variants)) + i * width
        y = np.array([vals[v]["value"] if v in vals else np.nan for v in variants])
        err = np.array([[y[j] - vals[v]["lo"], vals[v]["hi"] - y[j]] if v in vals else [0, 0]
                        for j, v in enumerate(variants)]).T
        axes[1].bar(x, y, width, yerr=err if len(variants) else None, color=f"C{i % 10}", label=s, capsize=2)
    axes[1].set_xticks(np.arange(len(variants)) + width * (len(stores) - 1) / 2, variants, rotation=45, fontsize=7)
    axes[1].set_ylabel("balanced accuracy (trained on identity)")
    axes[1].grid(alpha=0.3, axis="y")
    if stores:
        axes[1].legend(fontsize=7)
    fig.suptitle("cell embeddings under the cached variants", fontsize=10)
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_cell_map(stores: list, layers: dict, path, max_cells: int = 3000, seed: int = 0) -> Path:
    """A 2-D PCA map of the identity cell vectors per store (at ``layers[store label]``), coloured by type."""
    from sklearn.decomposition import PCA

    from embedcache.probes.cell import cell_labels

    fig, axes = figure(3.6, 3.4, len(stores))
    for ax, (label, store) in zip(axes, stores):
        keep, y, names = cell_labels(store)
        X = store.vectors(layers[label], variant=0)[keep]
        pick = np.random.default_rng(seed).permutation(len(X))[:max_cells]
        X, y = X[pick], y[pick]
        Z = PCA(n_components=2, random_state=seed).fit_transform((X - X.mean(0)) / (X.std(0) + 1e-6))
        for c, name in enumerate(names):
            ax.scatter(Z[y == c, 0], Z[y == c, 1], s=4, alpha=0.6, color=f"C{c % 10}", label=name)
        ax.set_title(f"{label} ({layers[label]})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, markerscale=3)
    fig.suptitle("cell embeddings (PCA of standardised identity vectors), coloured by type", fontsize=10)
    fig.savefig(path, dpi=120)
    return Path(path)
