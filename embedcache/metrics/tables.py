"""Plain-text tables of an evaluation, for the terminal."""

from __future__ import annotations

import math

import numpy as np

from embedcache.metrics.evaluation import SUMMARY_KEYS, Evaluation


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    """Left-aligned text columns, two spaces apart.

    Examples
    --------
    >>> print(table(["metric", "value"], [["pq", 0.5]]))
    metric  value
    pq      0.5000
    """
    cells = [headers] + [[_num(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def scored_on(s: dict) -> str | None:
    """The line saying which images were scored when ``evaluate(on=...)`` was asked; None without ``on``."""
    on, n = s.get("on"), s["n_images"]
    no_pred = _count(s.get("n_truth_without_pred", 0), "truth image without a prediction",
                     "truth images without a prediction")
    no_truth = _count(s.get("n_pred_without_truth", 0), "prediction without truth", "predictions without truth")
    if on == "common":
        return f"scored on {_count(n, 'common image', 'common images')} ({no_pred}, {no_truth} left out)"
    if on == "truth":
        return (f"scored on {_count(n, 'truth image', 'truth images')} ({s.get('n_truth_without_pred', 0)} "
                f"without a prediction, scored as empty; {no_truth} ignored)")
    if on == "pred":
        return f"scored on {_count(n, 'predicted image', 'predicted images')} ({no_pred} left out)"
    return None


def format_evaluation(ev: Evaluation) -> str:
    """The summary of an evaluation as text: headline metrics, then per class."""
    s = ev.summary
    head = f"{ev.protocol} protocol: {s['n_images']} images"
    if ev.protocol == "hovernet":
        det = s["detection"]
        r = s["radius"]
        radius = f"{r:g} px" if np.ndim(r) == 0 else f"{min(r):g} to {max(r):g} px by each image's resolution"
        head += f" ({s['n_images_scored']} with nuclei), detection radius {radius}"
    scalar = [k for k in SUMMARY_KEYS[ev.protocol] if not isinstance(s[k], dict)]
    if ev.protocol == "hovernet":
        scalar.append("type_accuracy")
    lines = [head, "", table(["metric", "value"], [[k, s[k]] for k in scalar])]
    if not s.get("published", True):
        lines.insert(1, f"NOTE: {s['note']}")
    if scored_on(s):
        lines.insert(1, scored_on(s))
    if ev.protocol == "hovernet":
        lines.append(f"(detection pooled: TP {det['tp']}, FP {det['fp']}, FN {det['fn']})")
    names = s.get("class_names", {})
    if ev.protocol == "hovernet" and s["type_f1"]:
        rows = [[c, names.get(c, ""), v] for c, v in s["type_f1"].items()]
        lines += ["", table(["type", "name", "F1"], rows)]
    if ev.protocol == "pannuke":
        rows = [[c, names.get(c, ""), v] for c, v in s["per_class_pq"].items()]
        lines += ["", table(["type", "name", "PQ (mean over images)"], rows)]
        if len(s["tissues"]) > 1:
            rows = [[t, v["n_images"], v["bpq"], v["mpq"]] for t, v in s["tissues"].items()]
            lines += ["", table(["tissue", "images", "bPQ", "mPQ"], rows)]
        lines.append("(bpq, mpq: mean per tissue then over tissues; *_images: mean over images)")
    if ev.protocol == "conic":
        rows = [[c, names.get(c, ""), s["per_class_pq"][c], st["tp"], st["fp"], st["fn"], s["r2_per_class"][c]]
                for c, st in s["per_class"].items()]
        lines += ["", table(["type", "name", "PQ+", "TP", "FP", "FN", "R2"], rows)]
    return "\n".join(lines)
