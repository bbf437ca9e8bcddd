"""``fit-decoder`` and ``predict``: the nuclei decoder trained from a store, and its predictions."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import (
    dask_workers_option, device_option, format_option, loader_workers_option, magnification_option, no_wait_option,
    quiet_option, refuse_options, scheduler_option,
)
from embedcache.config import DecoderConfig, FitConfig, PostprocessConfig, TargetConfig


@main.command("fit-decoder")
@click.option("--store", required=True, metavar="STORE",
              help="Store with labels (from extract): a folder or an fsspec URL (s3://...).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option("--epochs", default=FitConfig.epochs, show_default=True, type=click.IntRange(min=1), help="Most epochs.")
@click.option("--val", default="auto", show_default=True,
              help="Held-out split: auto (the release's validation split, else the last fold, else frac:0.2), "
                   "official, train, val, test (the release's own), foldK, frac:F (of the source images), "
                   "frac:F,groups=FILE.csv (of the groups FILE gives each image: image,group), frac:F,groups=tissue "
                   "(of the release's tissues or cohorts), tiles:I,J, sources:A,B.")
@click.option("--train", "train_split", default="rest", show_default=True,
              help="Training split, same syntax; rest = every tile not held out.")
@click.option("--tune", default=None, metavar="SPLIT",
              help="After training, pick post-processing thresholds by PQ on this split (same syntax; images "
                   "apart from --train and --val, e.g. sources:A,B); predict and evaluate then use them.")
@click.option("--seed", default=FitConfig.seed, show_default=True, type=int,
              help="Seed of weights, variant draws and order.")
@click.option("--batch-size", default=FitConfig.batch_size, show_default=True, type=click.IntRange(min=1),
              help="Tiles per step.")
@click.option("--lr", default=FitConfig.lr, show_default=True, type=float,
              help="AdamW learning rate (warm-up + cosine).")
@click.option("--patience", default=FitConfig.patience, show_default=True, type=click.IntRange(min=0),
              help="Stop after this many epochs without improvement (0: never).")
@click.option("--monitor", default=FitConfig.monitor, show_default=True, type=click.Choice(["loss", "pq"]),
              help="Early stopping on validation loss or validation PQ.")
@click.option("--width", default=DecoderConfig.width, show_default=True, type=int,
              help="Decoder channels at stride 4.")
@click.option("--depth", default=DecoderConfig.depth, show_default=True, type=int,
              help="Conv blocks per decoder level.")
@click.option("--distance", default=TargetConfig.distance, show_default=True, type=click.Choice(["cisca", "hovernet"]),
              help="Distance maps: 4 directions (CISCA) or horizontal/vertical (HoVer-Net).")
@click.option("--variants", default="all", show_default=True, help="Cached variants to draw from: all, or names.")
@click.option("--colour", default=FitConfig.colour, show_default=True, type=click.FloatRange(0, 0.5),
              help="HED colour jitter of the tiles the image branch sees in training (0: none).")
@loader_workers_option("the store")
@click.option("--preload", default="auto", show_default=True, type=click.Choice(["auto", "yes", "no"]),
              help="Read features into RAM first (auto: when they fit in a quarter of free memory).")
@click.option("--protocol", default="auto", show_default=True,
              type=click.Choice(["auto", "hovernet", "pannuke", "conic"]),
              help="Protocol scoring the best checkpoint on the held-out split (auto: by the store's classes).")
@magnification_option
@click.option("--tta", default="none", show_default=True, type=click.Choice(["none", "flips", "d4"]),
              help="Test-time augmentation over the store's cached variants for --tune and the held-out score "
                   "(use the TTA that predict will use: the thresholds are tuned on those maps).")
@device_option
@click.option("--overwrite", is_flag=True, help="Replace a run made with other settings (kept until the new one ends).")
@quiet_option
def fit_decoder(store, out, epochs, val, train_split, tune, seed, batch_size, lr, patience, monitor, width, depth,
                distance, variants, colour, loader_workers, preload, protocol, magnification, tta, device, overwrite,
                quiet):
    """Train the nuclei decoder on a store's cached features, then score it on the held-out split.

    Writes RUN/best.safetensors, last.safetensors, run.json (settings, store
    provenance, split), log.csv and eval.json. Running the same command again
    resumes an interrupted run.

    \b
    Example:
      embedcache fit-decoder --store demo/lite0.zarr --out demo/run --epochs 20
    """
    from embedcache.infer.evaluate import evaluate_run, pq_scorer
    from embedcache.metrics.tables import format_evaluation
    from embedcache.train.loop import fit

    config = FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, monitor=monitor, seed=seed,
                       val=val, train=train_split, variants=variants, loader_workers=loader_workers, preload=preload,
                       device=device, decoder=DecoderConfig(width=width, depth=depth),
                       targets=TargetConfig(distance=distance), colour=colour)
    from embedcache.infer.plan import check_fit_plan

    check_fit_plan(store, out, config, tune=tune, tta=tta)  # refused before training, not after
    post = PostprocessConfig.for_magnification(magnification)
    scorer = pq_scorer(config.targets.directions, post, batch_size) if monitor == "pq" else None
    result = fit(store, out, config, overwrite=overwrite, progress=not quiet, scorer=scorer)
    if result.skipped:
        click.echo(f"{result.path} is already trained with these settings; scoring it again")
    else:
        how = "stopped early" if result.stopped_early else "done"
        click.echo(f"trained {result.path}: {result.epochs_run} epochs ({how}), best epoch {result.best_epoch} "
                   f"(val {result.monitor} {result.best_value:.4f}), {result.seconds:.0f} s")
    if tune:
        from embedcache.infer.tune import tune_postprocess

        t = tune_postprocess(result.path, tune, store=store, magnification=magnification, batch_size=batch_size,
                             tta=tta)
        c = t["chosen"]
        click.echo(f"post-processing tuned on {t['images']} image(s) ({t['tried']} settings): PQ "
                   f"{t['pq_default']:.4f} with the defaults, {t['pq_tuned']:.4f} with foreground {c['foreground']}, "
                   f"marker {c['marker']}, smallest nucleus {c['min_size']} px")
    evaluation = evaluate_run(result.path, store, protocol=protocol, batch_size=batch_size, tta=tta,
                              device=device, magnification=magnification)  # the tuned thresholds if any
    click.echo(format_evaluation(evaluation))
    click.echo(f"wrote {result.path / 'eval.json'}")


# What each of predict's inputs takes besides the options every input takes.
PREDICT_INPUTS = {"tiles": "a store's tiles (--store)", "images": "images (--data)",
                  "slides": "whole slides (--slides)"}
_SLIDES = {"slides"}
PREDICT_OPTIONS = {"split": {"tiles"}, "fmt": {"images"}, "overlap": {"images", "slides"}, "mpp": {"images", "slides"},
                   "run_mpp": _SLIDES, "region": _SLIDES, "margin": _SLIDES, "post_workers": _SLIDES,
                   "workers": _SLIDES, "scheduler": _SLIDES, "gzip_geojson": _SLIDES, "overwrite": _SLIDES,
                   "cells": _SLIDES, "cell_classifier": _SLIDES,
                   "anndata": _SLIDES, "no_wait": _SLIDES}


@main.command("predict")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory (fit-decoder).")
@click.option("--store", metavar="STORE",
              help="Predict from this store's cached features (a folder or an fsspec URL). With --slides: a store "
                   "of those slides on prediction's grid (extract --format slides --overlap 64 for 256-px tiles).")
@click.option("--data", type=click.Path(path_type=Path),
              help="Or run the encoder live over a dataset folder or one image file.")
@format_option
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--split", default="all", show_default=True, type=click.Choice(["all", "val", "train"]),
              help="With --store: all tiles, or the run's held-out (val) or training tiles.")
@click.option("--overlap", default=None, type=click.IntRange(min=0),
              help="Live images larger than a tile: overlap of neighbouring tiles in px (default: tile/4).")
@magnification_option
@click.option("--postprocess", "post_spec", default="run", show_default=True, metavar="run|defaults|FILE.json",
              help="Thresholds of the watershed: the run's tuned ones (fit-decoder --tune; the magnification's "
                   "defaults if it has none), the defaults, or a JSON file of PostprocessConfig fields.")
@click.option("--tta", default="none", show_default=True, type=click.Choice(["none", "flips", "d4"]),
              help="Test-time augmentation: decode every variant of a tile, move the maps back, average them. "
                   "With --store it reads the cached variants (decoder passes only, the store must hold them); "
                   "with --data or --slides the encoder also runs once per variant (3x or 8x the encoder time; "
                   "with --slides and --store, cached variants where the store holds the tile).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Tiles per pass.")
@device_option
@click.option("--overlays/--no-overlays", default=True, show_default=True,
              help="Write overlay PNGs (slides: thumbnail.png with the nuclei dotted on it).")
@click.option("--geojson/--no-geojson", default=True, show_default=True, help="Write GeoJSON for QuPath.")
@click.option("--slides", type=click.Path(path_type=Path),
              help="Whole slides (a slide file or a folder): nuclei region by region into OUT/SLIDE/ "
                   "(nuclei.parquet, nuclei.geojson, thumbnail.png, summary.json) and OUT/slides.csv.")
@click.option("--mpp", default=None, type=float,
              help="Slides: level-0 microns per pixel, for slides that record none. Images, with a run trained at "
                   "a working resolution (extract --working-mpp): the resolution of images that record none and "
                   "are not in mpp.csv (each is resampled to the run's, its nuclei mapped back to its pixels).")
@click.option("--run-mpp", default=None, type=float,
              help="Slides: microns per pixel of the tiles the run was trained on (when the run does not record it).")
@click.option("--region", default=2048, show_default=True, type=click.IntRange(min=16),
              help="Slides: region side in px, processed at once (memory grows with its square).")
@click.option("--margin", default=None, type=click.IntRange(min=0),
              help="Slides: px read around each region (default a tile and a quarter).")
@click.option("--post-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Slides: processes post-processing regions beside the forward.")
@dask_workers_option
@scheduler_option
@click.option("--gzip", "gzip_geojson", is_flag=True, help="Slides: write nuclei.geojson.gz.")
@click.option("--overwrite", is_flag=True, help="Slides: start afresh over another run's partial results.")
@click.option("--cells", default=None, metavar="LAYERS",
              help="Slides: also a vector per nucleus (OUT/SLIDE/cells.zarr), pooled from these layers' tokens of "
                   "the same forward as `cells` pools them: 'default' or 'all' (every tapped layer), or names.")
@click.option("--cell-classifier", default=None, type=click.Path(path_type=Path), metavar="CLASSIFIER",
              help="Slides: classify every nucleus from its vector with a classifier of `probe --level cell --save` "
                   "(OUT/SLIDE/cell_classes.parquet, the GeoJSON's classes, per-class counts in summary.json).")
@click.option("--anndata", is_flag=True,
              help="Slides: also OUT/SLIDE/cells.h5ad for scanpy/squidpy (obs the cell table, obsm['spatial'] "
                   "centroids in um, obsm['X_<layer>'] the vectors of --cells); needs pip install 'embedcache[cells]'.")
@no_wait_option
@quiet_option
def predict_cmd(run_dir, store, data, fmt, out, split, overlap, magnification, post_spec, tta, batch_size, device,
                overlays, geojson, slides, mpp, run_mpp, region, margin, post_workers, workers, scheduler, gzip_geojson,
                overwrite, cells, cell_classifier, anndata, no_wait, quiet):
    """Predict nuclei instances and types with a trained decoder.

    From a store (cached features) or from raw images with the encoder run live
    through the same code; both give the same nuclei for the same tiles. Tiles
    are written as labels.npy (CoNIC layout; plus masks.npy, PanNuke layout, for
    PanNuke classes), images of any size as NAME_inst.png / NAME_type.png, with
    overlays/NAME.png and geojson/NAME.geojson (QuPath) beside them.

    With --slides, whole slides are predicted region by region (resumable;
    a slide that fails is recorded in OUT/slides.csv and the others go on);
    with --store too, the store's tokens stand in for the encoder on the
    tiles it holds.

    \b
    Examples:
      embedcache predict --run demo/run --store demo/lite0.zarr --split val --out demo/pred
      embedcache predict --run demo/run --slides slides/ --out nuclei --post-workers 2
    """
    from embedcache.errors import ConfigError
    from embedcache.infer.predict import predict
    from embedcache.infer.tune import given_postprocess

    if slides is not None and data is not None:
        raise ConfigError("give --slides alone (the encoder runs live over them) or with --store (a store of "
                          "the same slides: its tokens replace the encoder where it holds the tile), not --data")
    kind = "slides" if slides is not None else "images" if data is not None else "tiles"
    refuse_options(click.get_current_context(), kind, PREDICT_OPTIONS, PREDICT_INPUTS)
    if slides is not None:
        from embedcache.infer.slides import predict_slides

        results = predict_slides(run_dir, slides, out, mpp=mpp, run_mpp=run_mpp, region=region, margin=margin,
                                 overlap=overlap, store=store, post_workers=post_workers, workers=workers,
                                 scheduler=scheduler, device=device, batch_size=batch_size,
                                 magnification=magnification, postprocess=given_postprocess(post_spec, magnification),
                                 gzip_geojson=gzip_geojson, overwrite=overwrite, tta=tta, geojson=geojson,
                                 overlays=overlays, cells=cells, cell_classifier=cell_classifier,
                                 anndata=anndata, progress=not quiet, wait=not no_wait)
        for r in results:
            line = f"{r.name}: {r.status}, {r.nuclei} nuclei in {r.regions} regions, {r.seconds:.1f} s"
            click.echo(line + (f" ({r.reason})" if r.reason else ""))
            if r.shared:
                click.echo(f"  {r.shared}")  # beside other processes: what this one did
        failed = sum(r.status == "failed" for r in results)
        click.echo(f"wrote {out}: {len(results) - failed} of {len(results)} slides (table: {out}/slides.csv)")
        if failed:
            raise SystemExit(1)
        return
    if store is not None and data is not None:
        raise ConfigError("give --store STORE (cached features) or --data PATH (encoder run live), not both")
    if store is None and data is None:
        raise ConfigError("give --store STORE (cached features), --data PATH (encoder run live) or --slides PATH")
    result = predict(run_dir, out, store=store, data=data, format=fmt, split=split, overlap=overlap,
                     magnification=magnification, postprocess=given_postprocess(post_spec, magnification), tta=tta,
                     batch_size=batch_size, device=device, overlays=overlays,
                     geojson=geojson, progress=not quiet, mpp=mpp)
    click.echo(f"wrote {result.path}: {result.n_nuclei} nuclei in {result.n_images} images "
               f"({result.mode} features, {result.layout} layout, {result.seconds:.1f} s)")
    if result.postprocess_source == "tuned":
        click.echo(f"post-processing: tuned ({run_dir / 'postprocess.json'})")
    elif result.postprocess_source == "given":
        click.echo(f"post-processing: {post_spec}")
    else:
        click.echo(f"post-processing: the {magnification} defaults (the run has no tuned thresholds at "
                   f"{magnification}; fit-decoder --tune SPLIT picks them)")
