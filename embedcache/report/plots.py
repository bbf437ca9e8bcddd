"""Plots of probe scores: score against depth, one line per encoder (matplotlib, Agg).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so no
window opens and no global backend is switched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.report.stats import LABELS, ScoreTable

LINESTYLES = {"linear": "-", "knn": "--"}


def figure(width: float, height: float, n: int = 1):
    """An Agg figure of ``n`` panels side by side, each ``width`` x ``height`` inches: ``(fig, axes)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n, squeeze=False)[0]


def draw_figures(figures: dict[Path, Callable[[Path], Path]]) -> tuple[list[Path], list[str]]:
    """Draw each figure into its path; one that cannot be drawn becomes a warning line instead of an error.

    Figures come last, after the scores and tables they show are written:
    a figure that fails (an unexpected shape of result, a missing font, a
    full disk) must never cost a run its scores.

    Parameters
    ----------
    figures : dict of Path to callable
        Output ``.png`` -> function drawing it there and returning its path.

    Returns
    -------
    written : list of Path
    warnings : list of str
        One line per figure left out: which, and why.
    """
    written, warnings = [], []
    for path, draw in figures.items():
        try:
            written.append(draw(Path(path)))
        except Exception as e:  # noqa: BLE001 - any failure of a figure is reported, never raised
            warnings.append(f"warning: {Path(path).name} was not drawn ({type(e).__name__}: {e}); "
                            "the scores and tables are written")
    return written, warnings


def plot_depth(scores: ScoreTable, path, metrics: tuple[str, ...] | None = None, dpi: int = 120) -> Path:
    """Write a PNG of each metric against relative depth, one line per (store, method).

    Depth is the layer's position among its store's tapped layers, in
    (0, 1], so encoders with different numbers of layers share the axis.
    Shaded bands are the 95% bootstrap intervals; layer names label points.

    Parameters
    ----------
    scores : ScoreTable
    path : str or Path
        Output ``.png``.
    metrics : tuple of str, optional
        Metrics to draw, one panel each; default every metric of the table.

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = metrics or scores.metrics
    fig = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    stores = list(dict.fromkeys(r["store"] for r in scores.rows))
    colours = {s: f"C{i % 10}" for i, s in enumerate(stores)}
    for ax, metric in zip(axes, metrics):
        for (store, method), rows in _lines(scores.rows).items():
            x = np.array([r["depth"] for r in rows])
            s = [r["scores"][metric] for r in rows]
            y, lo, hi = (np.array([v[k] for v in s], dtype=float) for k in ("value", "lo", "hi"))
            label = store if len(_methods(scores.rows)) == 1 else f"{store} ({method})"
            ax.plot(x, y, LINESTYLES.get(method, "-"), marker="o", color=colours[store], label=label)
            ax.fill_between(x, lo, hi, color=colours[store], alpha=0.15, linewidth=0)
            if len(stores) == 1 and method == scores.rows[0]["method"]:
                for xi, yi, r in zip(x, y, rows):
                    ax.annotate(r["layer"], (xi, yi), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=7)
        ax.set_xlabel("relative depth (tapped layer / layers)")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.set_xlim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    source = scores.info.get("labels", {}).get("source", "")
    fig.suptitle(f"{scores.info.get('level', 'tile')}-level probe: {Path(str(source)).name}", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def _lines(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    lines: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        lines.setdefault((r["store"], r["method"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["depth"]) for k, v in lines.items()}


def _methods(rows: list[dict]) -> set[str]:
    return {r["method"] for r in rows}
