"""The report of an encoder comparison: leaderboard, paired tests, probes, costs, overlays.

:func:`write_study_report` reads what the steps left on disk (``eval.json``
and predictions per encoder and seed, ``probe.json`` per encoder, the
extraction records) and writes into one folder, built under a temporary
name and renamed:

- ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.json``: every
  headline metric per dataset and encoder, mean over seeds with a 95%
  interval over seeds and images (:mod:`embedcache.report.compare`), and
  the paired comparisons of every two encoders;
- ``scores_<dataset>.png`` (primary metrics with intervals),
  ``probe_<dataset>_<n>.png`` (probe score against depth), ``costs.png``
  (bytes of cache and extraction time per tile-variant);
- ``overlays/``: the same held-out images for every encoder, and
  ``index.html``, a static page with all of the above.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache.datasets import read_label_maps
from embedcache.files import staged_dir, write_json
from embedcache.infer.writer import overlay
from embedcache.report import human_bytes
from embedcache.report.cells import cell_section
from embedcache.report.compare import HEADLINE, VERDICT_RULE, ImageScores, Leaderboard, leaderboard
from embedcache.report.overlays import match_legend, match_overlay, type_legend
from embedcache.report.plots import figure, plot_depth
from embedcache.report.runs import per_image_markdown, plot_curves, settings_markdown, settings_rows
from embedcache.report.stats import LABELS, ScoreTable, chance_note
from embedcache.store import open_store
from embedcache.store.images import image_pixels, image_truth, source_images

METRIC_LABELS = {
    "pq": "PQ", "aji": "AJI", "aji_plus": "AJI+", "dice": "Dice", "dq": "DQ", "sq": "SQ",
    "f1_detection": "F1 det.", "mpq": "mPQ", "bpq": "bPQ", "mpq_images": "mPQ (image mean)",
    "bpq_images": "bPQ (image mean)", "mpq_plus": "mPQ+", "r2": "R2 counts",
}


@dataclass
class CellResult:
    """What one encoder produced on one dataset (only finished steps).

    Attributes
    ----------
    dataset, encoder : str
    store : Path or None
    extract : dict or None
        The extraction record (bytes, seconds, tiles, variants).
    evals : dict of int to Path
        Seed -> folder holding ``eval.json`` and ``pred/``.
    fits : dict of int to dict
        Seed -> training record (seconds, epochs).
    probes : dict of int to Path
        ``probe.json`` files by the probe's place in the pipeline.
    """

    dataset: str
    encoder: str
    store: Path | None = None
    extract: dict | None = None
    evals: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _interval(s: dict) -> str:
    if not math.isfinite(s["value"]):
        return "n/a"
    if not math.isfinite(s["lo"]):
        return _fmt(s["value"])
    return f"{s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


# ----------------------------------------------------------------------------- gathering


def read_evaluation(folder: Path) -> ImageScores:
    """An ``eval.json`` written by a pipeline's evaluate step, as per-image columns."""
    data = json.loads((Path(folder) / "eval.json").read_text())
    return ImageScores.from_rows(data["protocol"], data["images"], [int(c) for c in data.get("classes") or []],
                                 data.get("groups"))


def dataset_leaderboards(cells: list[CellResult], n_boot: int, seed: int) -> dict[str, Leaderboard]:
    """One leaderboard per dataset, over the encoders whose every seed was evaluated."""
    by_dataset: dict[str, dict[str, list[ImageScores]]] = {}
    for c in cells:
        if c.evals:
            by_dataset.setdefault(c.dataset, {})[c.encoder] = [read_evaluation(c.evals[s]) for s in sorted(c.evals)]
    return {ds: leaderboard(ds, evs, n_boot=n_boot, seed=seed) for ds, evs in by_dataset.items()}


def probe_tables(cells: list[CellResult]) -> dict[tuple[str, int], dict]:
    """Probe rows of every encoder, per (dataset, probe), with the store column naming the encoder."""
    tables: dict[tuple[str, int], dict] = {}
    for c in cells:
        for i, path in sorted(c.probes.items()):
            data = json.loads(Path(path).read_text())
            t = tables.setdefault((c.dataset, i), {"info": data["info"], "rows": [], "best": []})
            t["rows"] += [{**r, "store": c.encoder} for r in data["rows"]]
            t["best"] += [{**b, "store": c.encoder} for b in data["best"]]
    return tables


def spread(values, centre: str = "median") -> dict | None:
    """``{value, lo, hi, n}``: the median (or mean) and range of repeated measurements; None for fewer than two.

    A time measured once says nothing of the machine's noise (another
    process, a cold cache, clock boost), so it is not shown at all.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) < 2:
        return None
    return {"value": float(np.median(v) if centre == "median" else v.mean()), "lo": float(v.min()),
            "hi": float(v.max()), "n": int(len(v))}


def costs(cells: list[CellResult]) -> list[dict]:
    """Per dataset and encoder: cache bytes, and extraction and training time with their spread over repeats.

    Extraction ms per tile-variant is the median and range over the units of
    work (each unit timed on its own); training seconds the mean and range
    over seeds. Either is None where it was measured once (or, for stores
    extracted before units were timed, not per unit).
    """
    out = []
    for c in cells:
        if not c.extract:
            continue
        x = c.extract
        n = max(1, x["n_tiles"] * x["n_variants"])
        fit_s = [f["seconds"] for f in c.fits.values() if f]
        out.append({"dataset": c.dataset, "encoder": c.encoder, "n_tiles": x["n_tiles"],
                    "n_variants": x["n_variants"], "bytes": x["bytes"], "bytes_per_tile_variant": x["bytes"] / n,
                    "extract_seconds": x["seconds"],
                    "extract_ms_per_tile_variant": spread(x.get("unit_ms_per_tile_variant", [])),
                    "fit_seconds": spread(fit_s, centre="mean")})
    return out


def cost_ranking(rows: list[dict], key: str) -> list[str]:
    """Per dataset, which encoders are cheaper on ``key``, said only where the ranges over repeats do not overlap.

    Returns one sentence per dataset with two or more encoders measured
    repeatedly: ``a < b`` for every pair whose ranges are apart, or that
    none is ranked because every difference is within the spread.
    """
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        measured = sorted((r for r in rows if r["dataset"] == ds and r[key]), key=lambda r: r[key]["value"])
        if len(measured) < 2:
            continue
        apart = [f"{a['encoder']} < {b['encoder']}" for i, a in enumerate(measured) for b in measured[i + 1:]
                 if a[key]["hi"] < b[key]["lo"]]
        out.append(f"{ds}: " + ("; ".join(apart) + " (ranges apart); other differences are within the spread"
                                if apart else "every difference is within the spread over repeats: not ranked"))
    return out


# ----------------------------------------------------------------------------- tables


def leaderboard_markdown(lb: Leaderboard) -> str:
    seeds = lb.rows[0]["n_seeds"] if lb.rows else 0
    n_img = lb.rows[0]["n_images"] if lb.rows else 0
    lines = [f"## {lb.dataset}: {lb.protocol} protocol, {n_img} held-out images, {seeds} seed(s)", "",
             f"Mean over seeds; 95% interval over seeds and images ({lb.n_boot} bootstrap resamples). "
             f"Ranked by {METRIC_LABELS[lb.primary]}.", ""]
    if not lb.published:
        lines[-1:-1] = ["", f"**Not the published {lb.protocol} protocol**: scored on classes "
                            f"{', '.join(map(str, lb.classes))}, not the protocol's own."]
    head = ["encoder"] + [METRIC_LABELS[m] for m in lb.metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in lb.rows:
        lines.append("| " + " | ".join([r["encoder"]] + [_interval(r[m]) for m in lb.metrics]) + " |")
    pairs = [c for c in lb.comparisons if c["metric"] == lb.primary]
    if pairs:
        first = pairs[0]
        units = first["n_units"]
        how = (f"exact sign-flip test over the {units} images (all {first['patterns']} patterns)"
               if first["method"] == "exact" else
               f"sign-flip test over the {units} images ({first['patterns']} random patterns)")
        if seeds > 1:
            how += ", or the centred bootstrap over seeds and images where its p is larger"
        lines += ["", f"Paired comparisons on {METRIC_LABELS[lb.primary]} (95% interval over the same image "
                      f"resamples; p: {how}, Holm-adjusted over the {len(pairs)} pair(s)). "
                  + VERDICT_RULE.format(units="images"), ""]
        if math.isfinite(first["min_p"]) and first["min_p"] * len(pairs) >= 0.05:
            lines += [f"**{units} images: the smallest possible p is {first['min_p']:.3g}"
                      + (f" ({min(1.0, first['min_p'] * len(pairs)):.3g} after Holm)" if len(pairs) > 1 else "")
                      + "; no difference can be significant at 0.05 with so few. Evaluate on more images.**", ""]
        lines += ["| a - b | difference | 95% interval | p | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
        for c in pairs:
            lines.append(f"| {c['a']} - {c['b']} | {c['diff']:+.3f} | [{_fmt(c['lo'])}, {_fmt(c['hi'])}] | "
                         f"{_fmt(c['p'], 4)} | {_fmt(c['p_holm'], 4)} | {c['verdict']} |")
    return "\n".join(lines)


def probe_markdown(table: dict, dataset: str) -> str:
    info = table["info"]
    lines = [f"### Probe on {dataset}: {info.get('labels', {}).get('source', '?')} labels "
             f"({info.get('level', 'tile')} level, {info.get('folds', '?')})", "",
             "| encoder | method | best layer | score | 95% interval | chance |", "|---|---|---|---|---|---|"]
    metrics = dict.fromkeys(b["metric"] for b in table["best"])
    if any(b.get("chance") is not None for b in table["best"]):
        note = chance_note(list(metrics) + (["dice"] if "miou" in metrics else []))
        lines[1:1] = ["", note[0].upper() + note[1:]]
    for b in table["best"]:
        lo, hi = b.get("lo"), b.get("hi")
        ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else "n/a"
        chance = b.get("chance")
        layer = b["layer"] if b.get("above_chance", True) else f"none above chance (highest: {b['layer']})"
        lines.append(f"| {b['store']} | {b['method']} | {layer} | {LABELS.get(b['metric'], b['metric'])} "
                     f"{_fmt(b.get('value'))} | {ci} | {_fmt(chance) if chance is not None else 'n/a'} |")
    return "\n".join(lines)


def costs_markdown(rows: list[dict]) -> str:
    lines = ["## Costs", "", "Times are shown with their spread over repeats (extraction: median [min, max] over the "
                             "units of work; training: mean [min, max] over seeds) and not at all when measured "
                             "once; encoders are ranked only where the ranges of separate runs do not overlap.", "",
             "| dataset | encoder | cache | per tile-variant | extraction ms per tile-variant | "
             "decoder training s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['encoder']} | {human_bytes(r['bytes'])} | "
                     f"{human_bytes(r['bytes_per_tile_variant'])} | "
                     f"{_spread_text(r['extract_ms_per_tile_variant'], 'units')} | "
                     f"{_spread_text(r['fit_seconds'], 'seeds')} |")
    ranked = cost_ranking(rows, "fit_seconds")  # seeds are separate runs: their range holds run-to-run noise
    if ranked:
        lines += ["", "Training time: " + " ".join(ranked) + "."]
    if cost_ranking(rows, "extract_ms_per_tile_variant"):
        lines += ["", "Extraction times are not ranked: each encoder's extraction ran once, at its own time, and "
                      "the spread over its units leaves out how the machine's load changed between runs (the same "
                      "network, extracted twice, can differ by more than its units do)."]
    return "\n".join(lines)


def _spread_text(s: dict | None, over: str) -> str:
    if s is None:
        return "measured once: not shown"
    return f"{s['value']:.1f} [{s['lo']:.1f}, {s['hi']:.1f}] ({s['n']} {over})"


def write_csv(path: Path, boards: dict[str, Leaderboard]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "protocol", "encoder", "metric", "value", "lo", "hi", "n_seeds", "n_images",
                    "per_seed"])
        for ds, lb in boards.items():
            for r in lb.rows:
                for m in lb.metrics:
                    s = r[m]
                    w.writerow([ds, lb.protocol, r["encoder"], m, *(f"{s[k]:.6g}" if math.isfinite(s[k]) else ""
                                                                    for k in ("value", "lo", "hi")),
                                r["n_seeds"], r["n_images"], " ".join(f"{v:.6g}" for v in s["seeds"])])
    return path


# ----------------------------------------------------------------------------- figures


def plot_scores(lb: Leaderboard, path: Path, metrics: tuple[str, ...] | None = None) -> Path:
    """The primary metrics per encoder with their 95% intervals (one panel each)."""
    metrics = metrics or lb.metrics[:2]
    fig, axes = figure(max(3.0, 0.9 * len(lb.rows) + 1.5), 3.4, len(metrics))
    x = np.arange(len(lb.rows))
    for ax, m in zip(axes, metrics):
        v = np.array([r[m]["value"] for r in lb.rows], dtype=float)
        lo = np.array([r[m]["lo"] for r in lb.rows], dtype=float)
        hi = np.array([r[m]["hi"] for r in lb.rows], dtype=float)
        err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)])
        ax.errorbar(x, v, yerr=err, fmt="o", capsize=4, color="C0")
        for r, xi in zip(lb.rows, x):
            ax.plot([xi] * len(r[m]["seeds"]), r[m]["seeds"], "x", color="C1", alpha=0.7)
        ax.set_xticks(x, [r["encoder"] for r in lb.rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(METRIC_LABELS[m])
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{lb.dataset} ({lb.protocol}): mean over seeds (o) with 95% interval; seeds (x)", fontsize=9)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_costs(rows: list[dict], path: Path) -> Path:
    """Cache bytes and extraction time per tile-variant, per encoder."""
    fig, axes = figure(max(3.0, 0.7 * len(rows) + 1.5), 3.4, 2)
    labels = [f"{r['encoder']}\n({r['dataset']})" for r in rows]
    x = np.arange(len(rows))
    axes[0].bar(x, [r["bytes_per_tile_variant"] / 1024 for r in rows], color="C2")
    axes[0].set_ylabel("cache KB per tile-variant")
    times = [r["extract_ms_per_tile_variant"] for r in rows]
    y = np.array([t["value"] if t else np.nan for t in times])
    err = np.array([[t["value"] - t["lo"], t["hi"] - t["value"]] if t else [0.0, 0.0] for t in times]).T
    axes[1].bar(x, y, yerr=err, capsize=3, color="C3")  # measured once: no bar
    axes[1].set_ylabel("extraction ms per tile-variant\n(median, range over units)")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=110)
    return Path(path)


def write_overlays(cells: list[CellResult], dataset: str, out: Path, n: int) -> list[dict]:
    """The same ``n`` held-out images for every encoder (first seed), at full resolution: the truth outlined
    by type, and each prediction outlined as matched, spurious or missed against it (and by type).

    Images with the most true nuclei are shown. Returns one dict per image:
    ``name``, the PNG of ``truth``, and per encoder the PNGs (``pred``: matched/spurious/missed, ``types``)
    with its ``counts`` (TP, FP, FN) and its per-image ``scores`` from ``eval.json``.
    """
    from PIL import Image

    cells = [c for c in cells if c.dataset == dataset and c.evals and c.store]
    if not cells or n == 0:
        return []
    first = cells[0]
    seed0 = sorted(first.evals)[0]
    tiles = json.loads((first.evals[seed0] / "eval.json").read_text())["tiles"]
    store = open_store(first.store)
    images = source_images(store, tiles)
    truth = image_truth(store, images)
    order = np.argsort([-int(len(np.unique(t)) - 1) for t in truth.instances], kind="stable")[:n]
    (out / dataset).mkdir(parents=True, exist_ok=True)
    preds = {c.encoder: read_label_maps(c.evals[sorted(c.evals)[0]] / "pred") for c in cells}
    rows = {c.encoder: {r.get("name"): r for r in json.loads((c.evals[sorted(c.evals)[0]] / "eval.json")
                                                             .read_text()).get("images", [])} for c in cells}
    shown = []
    for k in order:
        job = images[k]
        image = image_pixels(store, job)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in job.name)
        entry = {"name": job.name, "truth": f"overlays/{dataset}/{safe}_truth.png", "pred": {}, "types": {},
                 "counts": {}, "scores": {}}
        Image.fromarray(overlay(image, truth.instances[k], truth.types[k] if truth.types else None)).save(
            out.parent / entry["truth"])
        for c in cells:
            pred = preds[c.encoder]
            idx = pred.names.index(job.name) if job.name in pred.names else int(k)
            rel = f"overlays/{dataset}/{safe}_{c.encoder}.png"
            matched, counts = match_overlay(image, truth.instances[k], pred.instances[idx])
            Image.fromarray(matched).save(out.parent / rel)
            entry["pred"][c.encoder], entry["counts"][c.encoder] = rel, counts
            typed = f"overlays/{dataset}/{safe}_{c.encoder}_types.png"
            Image.fromarray(overlay(image, pred.instances[idx], pred.types[idx] if pred.types else None)).save(
                out.parent / typed)
            entry["types"][c.encoder] = typed
            row = rows[c.encoder].get(job.name, {})
            entry["scores"][c.encoder] = {m: row[m] for m in ("pq", "bpq", "mpq", "aji", "dice") if m in row}
        shown.append(entry)
    return shown


# ----------------------------------------------------------------------------- the page


def _inline(text: str) -> str:
    """Markdown text as HTML: escaped first, then ``**x**`` as ``<strong>x</strong>`` (the only emphasis used)."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(str(text)))


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{_inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _md_table_to_html(md: str) -> str:
    """Markdown of this module (headings, paragraphs, pipe tables, ``**bold**``) as HTML."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in table if not line.startswith("|-")]
            out.append(_html_table(cells[0], cells[1:]))
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
         "margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
         "th{background:#f3f3f3}img{max-width:100%}.ov td{vertical-align:top;text-align:center}"
         ".ov img{width:220px}.legend .key{margin-right:1.2em;font-size:13px}.swatch{display:inline-block;"
         "width:12px;height:12px;margin-right:4px;vertical-align:middle;border:1px solid #888}")


def write_study_report(title: str, cells: list[CellResult], failures: dict[str, str], out: Path, key: str, *,
                       n_boot: int = 2000, seed: int = 0, overlays: int = 4, cell_probes: dict | None = None) -> Path:
    """Write the whole report into ``out`` (built as ``out.partial``, then swapped in).

    ``cell_probes``: dataset -> the folder of its cell probe (``cells.json``, from the pipeline's cellprobe step).
    """
    out = Path(out)
    with staged_dir(out) as tmp:
        _write_report(tmp, title, cells, failures, key, n_boot, seed, overlays, cell_probes or {})
    return out


def _write_report(tmp: Path, title: str, cells: list[CellResult], failures: dict[str, str], key: str, n_boot: int,
                  seed: int, overlays: int, cell_probes: dict) -> None:
    boards = dataset_leaderboards(cells, n_boot, seed)
    run_settings = settings_rows(cells)
    probes = probe_tables(cells)
    cost_rows = costs(cells)
    md = [f"# {title}: encoder comparison", ""]
    figures: dict[str, list[str]] = {}
    for ds, lb in boards.items():
        md += [leaderboard_markdown(lb), ""]
        seamed = [c.encoder for c in cells if c.dataset == ds and c.store and open_store(c.store).has_seams]
        if seamed:
            md += [f"**Seams**: the stores of {', '.join(seamed)} cut images larger than a tile into tiles that do "
                   "not overlap, so cached prediction stitches their maps along straight seams and these scores "
                   "carry them. Extract with overlapping tiles (`--overlap`, a quarter tile by default) for "
                   "seam-free scores.", ""]
        figures.setdefault(ds, []).append(plot_scores(lb, tmp / f"scores_{ds}.png").name)
        curves = plot_curves(cells, ds, tmp / f"training_{ds}.png")
        if curves is not None:
            figures[ds].append(curves.name)
        md += [per_image_markdown(cells, ds), "", settings_markdown(run_settings, ds), ""]
    for (ds, i), table in probes.items():
        md += [probe_markdown(table, ds), ""]
        figures.setdefault(ds, []).append(
            plot_depth(ScoreTable(table["rows"], table["info"]), tmp / f"probe_{ds}_{i}.png").name)
    cell_data = {}
    for ds, folder in cell_probes.items():
        md_part, names, cell_data[ds] = cell_section(Path(folder), ds, tmp)
        md += [md_part, ""]
        figures.setdefault(ds, []).extend(names)
    if cost_rows:
        md += [costs_markdown(cost_rows), ""]
        plot_costs(cost_rows, tmp / "costs.png")
    if failures:
        md += ["## Encoders left out", ""] + [f"- {name}: {why}" for name, why in failures.items()] + [""]
    shown = {ds: write_overlays(cells, ds, tmp / "overlays", overlays) for ds in boards}
    (tmp / "leaderboard.md").write_text("\n".join(md))
    write_csv(tmp / "leaderboard.csv", boards)
    data = {"title": title, "key": key, "n_boot": n_boot, "seed": seed,
            "leaderboards": {ds: {"protocol": lb.protocol, "metrics": list(lb.metrics), "rows": lb.rows,
                                  "comparisons": lb.comparisons} for ds, lb in boards.items()},
            "probes": {f"{ds}/{i}": t for (ds, i), t in probes.items()}, "cells": cell_data, "costs": cost_rows,
            "failures": failures, "overlays": shown, "settings": run_settings}
    write_json(tmp / "leaderboard.json", data)
    legends = {}
    for c in cells:
        if c.dataset in boards and c.dataset not in legends and c.store:
            names = open_store(c.store).class_names
            if names:
                legends[c.dataset] = type_legend(names)
    files = sorted(p.name for p in tmp.iterdir() if p.suffix in (".md", ".csv", ".json") and p.name != "report.json")
    _write_html(tmp / "index.html", title, md, figures, cost_rows, shown, legends, files)
    write_json(tmp / "report.json", {"key": key}, indent=None)


def _img(src: str, alt: str) -> str:
    """A thumbnail that opens the full-resolution image."""
    return f"<a href='{html.escape(src)}'><img src='{html.escape(src)}' alt='{html.escape(alt)}'></a>"


def _write_html(path: Path, title: str, md: list[str], figures: dict, cost_rows: list, shown: dict,
                legends: dict, files: list[str]) -> None:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", _md_table_to_html("\n".join(md)),
             "<p>Files: " + ", ".join(f"<a href='{html.escape(f)}'>{html.escape(f)}</a>" for f in files) + "</p>"]
    for ds, names in figures.items():
        parts.append(f"<h2>Figures: {html.escape(ds)}</h2>")
        parts += [f"<p>{_img(n, n)}</p>" for n in names]
    if cost_rows:
        parts.append("<h2>Cache and extraction cost</h2><p><img src='costs.png' alt='costs'></p>")
    for ds, entries in shown.items():
        if not entries:
            continue
        encoders = list(entries[0]["pred"])
        parts.append(f"<h2>Held-out images: {html.escape(ds)}</h2><p>Click an image for full resolution. Truth "
                     "outlined by type; each encoder's nuclei against the truth:</p>" + match_legend()
                     + (f"<p>Types (truth, and each encoder's 'types' link):</p>{legends[ds]}" if ds in legends
                        else "")
                     + "<table class='ov'><tr><th>image</th><th>truth</th>"
                     + "".join(f"<th>{html.escape(e)}</th>" for e in encoders) + "</tr>")
        for e in entries:
            cells = [f"<td>{_img(e['truth'], 'truth')}</td>"]
            for enc in encoders:
                n = e["counts"][enc]
                score = ", ".join(f"{k.upper()} {v:.3f}" for k, v in e["scores"].get(enc, {}).items()
                                  if isinstance(v, (int, float)) and math.isfinite(v))
                cells.append(f"<td>{_img(e['pred'][enc], enc)}<br>TP {n['tp']}, FP {n['fp']}, FN {n['fn']}"
                             f"{'; ' + score if score else ''}<br>"
                             f"<a href='{html.escape(e['types'][enc])}'>types</a></td>")
            parts.append(f"<tr><td>{html.escape(e['name'])}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


__all__ = ["HEADLINE", "CellResult", "write_study_report"]
