"""What each encoder's runs did, for the study report: settings and provenance, training curves, per-image scores.

Read from what the steps left on disk: a decoder run's ``run.json``
(settings, the store's encoder and weight checksum, versions, date) and
``log.csv`` (losses per epoch), and each evaluation's ``eval.json`` rows.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from embedcache.report.plots import figure


def _first_run(cell) -> Path | None:
    if not cell.fits:
        return None
    run = cell.fits[sorted(cell.fits)[0]].get("run")
    return Path(run) if run and (Path(run) / "run.json").is_file() else None


def _short_sha(sha: str | None) -> str:
    """The first 12 hex digits of a checksum; random weights' identity (``random:...``) whole."""
    return "" if not sha else sha if not all(c in "0123456789abcdef" for c in sha) else sha[:12]


def settings_rows(cells) -> list[dict]:
    """One row per dataset and encoder: what its first seed's decoder run recorded."""
    rows = []
    for c in cells:
        run = _first_run(c)
        if run is None:
            continue
        meta = json.loads((run / "run.json").read_text())
        cfg, store, state = meta.get("config", {}), meta.get("store", {}), meta.get("state", {})
        versions = meta.get("versions", {})
        rows.append({
            "dataset": c.dataset, "encoder": c.encoder, "weights": store.get("weights") or "registry",
            "weights_sha256": _short_sha(store.get("weights_sha256")), "layers": ", ".join(store.get("layers", [])),
            "dtype": store.get("dtype"), "variants": len(store.get("variants", [])),
            "seeds": ", ".join(str(s) for s in sorted(c.fits)),
            "epochs": f"{state.get('epoch')} (best {state.get('best_epoch')})", "lr": cfg.get("lr"),
            "decoder": f"width {cfg.get('decoder', {}).get('width')}, depth {cfg.get('decoder', {}).get('depth')}",
            "versions": f"embedcache {versions.get('embedcache')}, torch {versions.get('torch')}",
            "date": meta.get("created"), "run": str(run)})
    return rows


SETTINGS_COLUMNS = ("encoder", "weights", "weights_sha256", "layers", "dtype", "variants", "seeds", "epochs", "lr",
                    "decoder", "versions", "date")


def settings_markdown(rows: list[dict], dataset: str) -> str:
    mine = [r for r in rows if r["dataset"] == dataset]
    if not mine:
        return ""
    lines = [f"### Settings and provenance: {dataset}", "", "| " + " | ".join(SETTINGS_COLUMNS) + " |",
             "|" + "---|" * len(SETTINGS_COLUMNS)]
    lines += ["| " + " | ".join(str(r[k]) for k in SETTINGS_COLUMNS) + " |" for r in mine]
    return "\n".join(lines)


def plot_curves(cells, dataset: str, path: Path) -> Path | None:
    """Training and validation loss per epoch of every encoder's first seed (one line each)."""
    runs = [(c.encoder, _first_run(c)) for c in cells if c.dataset == dataset]
    runs = [(e, r) for e, r in runs if r is not None and (r / "log.csv").is_file()]
    if not runs:
        return None
    fig, axes = figure(7.0, 3.2, 2)
    for k, (encoder, run) in enumerate(runs):
        with open(run / "log.csv", newline="") as fh:
            log = list(csv.DictReader(fh))
        epochs = [int(r["epoch"]) for r in log]
        for ax, col in zip(axes, ("train_loss", "val_loss")):
            ax.plot(epochs, [float(r[col]) for r in log], marker=".", color=f"C{k}", label=encoder)
    for ax, title in zip(axes, ("training loss", "validation loss")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{dataset}: decoder training (first seed)", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)


PER_IMAGE = ("pq", "bpq", "mpq")  # the first of these a protocol's per-image rows hold is shown


def per_image_markdown(cells, dataset: str) -> str:
    """Every held-out image's PQ (bPQ for PanNuke) per encoder (first seed), worst first for the first encoder."""
    cs = [c for c in cells if c.dataset == dataset and c.evals]
    if not cs:
        return ""
    scores, names = {}, []
    for c in cs:
        rows = json.loads((c.evals[sorted(c.evals)[0]] / "eval.json").read_text()).get("images", [])
        metric = next((m for m in PER_IMAGE if rows and m in rows[0]), None)
        if metric is None:
            return ""
        scores[c.encoder] = {r.get("name"): r.get(metric) for r in rows}
        names += [r.get("name") for r in rows if r.get("name") not in names]
    if not any(v is not None for s in scores.values() for v in s.values()):
        return ""
    first = scores[cs[0].encoder]
    order = sorted(names, key=lambda n: (first.get(n) is None, first.get(n) if first.get(n) is not None else 0))
    fmt = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
    label = {"pq": "PQ", "bpq": "bPQ", "mpq": "mPQ"}[metric]
    lines = [f"### Per-image {label}: {dataset} (first seed, worst first)", "",
             "| image | " + " | ".join(scores) + " |", "|---|" + "---|" * len(scores)]
    lines += [f"| {n} | " + " | ".join(fmt(scores[e].get(n)) for e in scores) + " |" for n in order]
    return "\n".join(lines)
