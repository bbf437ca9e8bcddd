"""``embedcache probe``: linear and kNN probes on cached embeddings, layer by layer."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import json_option, quiet_option


@main.command("probe")
@click.option("--store", "stores", required=True, multiple=True, metavar="STORE",
              help="Store to probe (a folder or an fsspec URL); repeat to compare encoders (stores of the same tiles). "
                   "Cell level: cell stores (`embedcache cells`) of the same nuclei.")
@click.option("--labels", default=None,
              help="Tile level (default tissue): tissue, type (dominant nucleus type), counts (nuclei per type) or "
                   "FILE.csv (tile,label). Patch level: nuclei or type. Cell level: type.")
@click.option("--level", default=None, type=click.Choice(["tile", "patch", "cell"]),
              help="Probe pooled vectors per tile, every patch token (reads the token arrays), or the vectors of "
                   "each nucleus (cell stores). Default: cell for cell stores, else tile.")
@click.option("--layers", default="last", show_default=True,
              help="'last', 'all' (the layer sweep), or comma-separated layer names or indices.")
@click.option("--method", default=None, type=click.Choice(["linear", "knn", "both"]),
              help="Probe(s) to fit; default both at tile level, linear at patch level.")
@click.option("--pooled", default="mean", show_default=True, type=click.Choice(["mean", "cls", "both"]),
              help="Tile vector: mean of patch tokens, class token (ViTs), or both concatenated.")
@click.option("--folds", default=None, type=click.IntRange(min=2),
              help="Stratified k-fold with K folds. Default: the store's folds when it has several, else 5.")
@click.option("--k", "k", default=20, show_default=True, type=click.IntRange(min=1), help="kNN neighbours.")
@click.option("--augment", is_flag=True, help="Train tile-level probes on every cached variant (test: identity).")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Bootstrap resamples of the test tiles for 95% intervals (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds folds, the sweep split and resamples.")
@click.option("--fractions", default="0.01,0.05,0.1,0.25,1", show_default=True, metavar="F,F,...",
              help="Cell level: the label-efficiency curve's shares of training cells ('' for none).")
@click.option("--pca", default=None, type=click.IntRange(min=1), metavar="N",
              help="Cell level: project features onto N principal components (fitted on training cells), "
                   "so encoders of different widths compare at one dimension.")
@click.option("--groups", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.csv",
              help="Cell level: a CSV of image,group (patient, centre); folds and intervals keep a group together.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for probe.json, probe.csv and probe.png (score against depth).")
@click.option("--save", default=None, type=click.Path(file_okay=False, path_type=Path), metavar="CLASSIFIER",
              help="Cell level, one store: keep the best layer's linear probe, refitted on every typed cell, as a "
                   "classifier folder (safetensors + JSON) for `predict --slides --cell-classifier` and "
                   "`cells --classify`.")
@json_option
@quiet_option
def probe(stores, labels, level, layers, method, pooled, folds, k, augment, n_boot, seed, fractions, pca, groups,
          out, save, as_json, quiet):
    """Probe what each cached layer holds: logistic regression (L2 swept on the
    training split) and cosine kNN on pooled tile vectors, or a linear probe
    on patch tokens scored by Dice and mIoU.

    Scores come with bootstrap 95% intervals over the test tiles; several
    stores are scored on the same tiles and resamples.

    \b
    Examples:
      embedcache probe --store lite0.zarr --labels tissue --layers all --out probe/
      embedcache probe --store uni.zarr --store dinov2.zarr --labels labels.csv --method linear
      embedcache probe --store lite0.zarr --level patch --labels nuclei --layers all
      embedcache probe --store lite0.cells.zarr --store uni.cells.zarr --layers all --pca 64 --out cells/
    """
    from embedcache.config import ProbeConfig
    from embedcache.report.stats import score_predictions
    from embedcache.probes import run_probes

    level = level or _default_level(stores[0])
    labels = labels or ("type" if level == "cell" else "tissue")
    try:
        fractions = tuple(float(f) for f in fractions.split(",") if f.strip())
    except ValueError:
        raise click.BadParameter(f"{fractions!r}: give shares of training cells like 0.01,0.1,1",
                                 param_hint="--fractions") from None
    if save is not None and (level != "cell" or len(stores) != 1):
        from embedcache.errors import ConfigError

        raise ConfigError("--save keeps the classifier of one cell store: give --level cell and one --store")
    if level == "cell":
        return _cell_probe(list(stores), ProbeConfig(labels=labels, level=level, layers=layers, method=method or "both",
                                                     folds=folds, k=k, augment=augment, n_boot=n_boot, seed=seed,
                                                     fractions=fractions, pca=pca,
                                                     groups=str(groups) if groups else None), out, as_json, quiet,
                           save)
    config = ProbeConfig(labels=labels, level=level, layers=layers,
                         method=method or ("linear" if level == "patch" else "both"), pooled=pooled, folds=folds,
                         k=k, augment=augment, n_boot=n_boot, seed=seed)
    progress = None if quiet or as_json else (lambda what: click.echo(f"probed {what}", err=True))
    predictions, info = run_probes(list(stores), config, progress=progress)
    scores = score_predictions(predictions, n_boot=n_boot, seed=seed, info=info)
    if as_json:
        click.echo(json.dumps(scores.to_dict(), indent=2))
    else:
        click.echo(scores.format())
    if out:
        from embedcache.report.plots import draw_figures, plot_depth

        out.mkdir(parents=True, exist_ok=True)
        written = [scores.write_json(out / "probe.json"), scores.write_csv(out / "probe.csv")]
        drawn, warnings = draw_figures({out / "probe.png": lambda p: plot_depth(scores, p)})
        _wrote(written + drawn, warnings, as_json)


def _wrote(written: list, warnings: list[str], as_json: bool) -> None:
    """Say what was written (stderr under --json) and why a figure is missing (always stderr)."""
    for w in warnings:
        click.echo(w, err=True)
    click.echo(f"wrote {', '.join(str(p) for p in written)}", err=as_json)


def _default_level(path: str) -> str:
    from embedcache.store import open_store
    from embedcache.store.cells import CellStore

    return "cell" if isinstance(open_store(path), CellStore) else "tile"


def _cell_probe(stores: list, config, out, as_json: bool, quiet: bool, save=None) -> None:
    from embedcache.probes.cell import open_cell_stores, run_cell_probes
    from embedcache.probes.stores import store_label
    from embedcache.report.cells import score_cell_probes

    progress = None if quiet or as_json else (lambda what: click.echo(f"probed {what}", err=True))
    result = run_cell_probes(stores, config, progress=progress)
    report = score_cell_probes(result, n_boot=config.n_boot, seed=config.seed)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if out:
        opened = open_cell_stores(stores)
        written, warnings = report.write(out, [(store_label(s, opened), s) for s in opened], seed=config.seed)
        _wrote(written, warnings, as_json)
    if save is not None:
        from embedcache.probes.classifier import keep_classifier

        clf = keep_classifier(stores[0], result, config)
        clf.save(save)
        click.echo(f"wrote classifier {save}: layer {clf.layer}, {len(clf.classes)} classes, balanced accuracy "
                   f"{clf.scores['balanced_accuracy_oof']:.3f} out of fold", err=as_json)
