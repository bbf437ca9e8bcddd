"""``embedcache cells``: a vector per nucleus from a store, for cell-level probes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import json_option, no_wait_option, quiet_option, say_shared


@main.command("cells")
@click.option("--store", required=True, metavar="STORE", help="The embedding store to pool from (read, not changed).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The cell store to write (built as OUT.partial, renamed when complete).")
@click.option("--nuclei", default="store", show_default=True, metavar="SOURCE",
              help="'store' (its label maps), a folder of label maps or a predict output, a points CSV "
                   "(image,x,y,label), or a folder of NAME.csv (x,y,label) or QuPath NAME.geojson point files. "
                   "A store of slides: a predict --slides output folder, or QuPath detections exported as "
                   "SLIDE.geojson (outlines in level-0 px).")
@click.option("--radius", default=8.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Points: radius in pixels of the disc that stands for each nucleus.")
@click.option("--layers", default="all", show_default=True, help="'all', 'last', or layer names or indices.")
@click.option("--variants", default="all", show_default=True, type=click.Choice(["all", "identity"]),
              help="Pool every cached variant (invariance needs them), or the identity only.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cell store (or start an interrupted one afresh).")
@click.option("--classify", default=None, type=click.Path(path_type=Path), metavar="CLASSIFIER",
              help="Classify every cell with a classifier of `probe --level cell --save` (of this store's encoder "
                   "and one of --layers): OUT/cell_classes.parquet, class and probabilities per cell.")
@click.option("--unit-tiles", default=64, show_default=True, type=click.IntRange(min=1),
              help="Tiles pooled per unit of work: what an interrupted run keeps, and what processes sharing "
                   "the build claim one at a time.")
@json_option
@no_wait_option
@quiet_option
def cells(store, out, nuclei, radius, layers, variants, overwrite, classify, unit_tiles, as_json, no_wait, quiet):
    """Pool one vector per nucleus, layer and variant from a store's tokens:
    each patch token weighted by the share of the nucleus it covers. Each
    cell keeps its tile, source image, centroid (pixels; microns when the
    store records them), area and type.

    Interrupted runs resume where they stopped when run again.

    \b
    Examples:
      embedcache cells --store lite0.zarr --out lite0.cells.zarr
      embedcache cells --store uni.zarr --out uni.cells.zarr --nuclei predictions/
      embedcache cells --store uni.zarr --out uni.cells.zarr --nuclei points.csv --radius 6
      embedcache probe --level cell --store lite0.cells.zarr --store uni.cells.zarr --out cells/
    """
    from embedcache.cells import build_cells
    from embedcache.config import CellsConfig

    config = CellsConfig(nuclei=nuclei, radius=radius, layers=layers, variants=variants, unit_tiles=unit_tiles)
    check = None
    if classify is not None:
        from embedcache.probes.classifier import check_for_store

        classifier = check_for_store(classify, store, layers)
        check = lambda record: classifier.check_labels(  # noqa: E731 (cells labelled in another class set)
            {int(k): v for k, v in record["class_names"].items()}, record["nuclei"]["kind"], str(classify))
    r = build_cells(store, out, config, overwrite=overwrite, progress=not (quiet or as_json), wait=not no_wait,
                    check=check)
    if classify is not None and r.finished_by is not None:
        from embedcache.probes.classifier import classify_cells

        classes, counts = classify_cells(r.path, classify)
    data = {"path": str(r.path), "n_cells": r.n_cells, "n_images": r.n_images, "layers": r.layers,
            "variants": r.variants, "types": r.types, "units_run": r.units_run, "units": r.units,
            "seconds": round(r.seconds, 2), "finished_by": r.finished_by}
    if classify is not None and r.finished_by is not None:
        data.update(classes=str(classes), cells_per_class=counts)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if r.skipped:
        click.echo(f"{r.path} is already complete with these settings; nothing to do")
        return
    if say_shared(r.path, r.shared, r.finished_by):
        return
    resumed = f", {r.units - r.units_run} of {r.units} units already done" if r.units_run < r.units else ""
    click.echo(f"wrote {r.path}: {r.n_cells} cells of {r.n_images} images x {len(r.layers)} layers x "
               f"{len(r.variants)} variants in {r.seconds:.1f} s{resumed}")
    click.echo("  types: " + ", ".join(f"{k} {v}" for k, v in r.types.items()))
    if r.shared is not None and (r.units_run < r.units or "took over" in r.shared):
        click.echo(r.shared)  # resumed, or beside other processes: what this one did
    if classify is not None and r.finished_by is not None:
        click.echo(f"wrote {classes}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
