"""``extract``, ``info``, ``verify`` and ``encoders``: build and inspect stores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import (
    dask_workers_option, device_option, format_option, json_option, loader_workers_option, no_wait_option,
    quiet_option, release_options, say_shared, scheduler_option,
)
from embedcache.report import human_bytes


@main.command()
@click.option("--encoder", default="efficientnet_lite0", show_default=True,
              help="Registry name (see `embedcache encoders`) or timm:<architecture>.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@format_option
@click.option("--out", required=True, metavar="STORE",
              help="Store to write: a .zarr folder or an fsspec URL (s3://bucket/x.zarr; credentials from the "
                   "environment).")
@click.option("--layers", default="default", show_default=True,
              help="'default', 'all', or comma-separated layer names or indices.")
@click.option("--variants", default="d4", show_default=True, help="none, flips, d4, d4+stain, or names.")
@click.option("--batch-size", default=32, show_default=True, type=int, help="Tile-variants per forward pass.")
@device_option
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32", "int8"]),
              help="Storage type of patch tokens (int8: a scale per tile, variant and channel; read as floats).")
@click.option("--codec", default="lz4", show_default=True, type=click.Choice(["lz4", "zstd"]),
              help="Chunk compressor: lz4 (fastest) or zstd (~10% smaller, ~5x slower to write).")
@click.option("--weights", default=None, help="Local checkpoint (.safetensors, .pth, .bin) or 'random'.")
@click.option("--norm", is_flag=True, help="Apply the encoder's final norm to every tapped layer.")
@click.option("--unit-tiles", default=16, show_default=True, type=int, help="Tiles per unit of work (and shard).")
@dask_workers_option
@scheduler_option
@loader_workers_option("tiles (single-process runs)")
@click.option("--tile-size", default=256, show_default=True, type=int,
              help="Tile side for the folder and slides layouts (slides: pixels at --tile-mpp).")
@click.option("--overlap", default=None, type=click.IntRange(min=0), metavar="PX",
              help="Overlap of neighbouring tiles of an image. Folder layout: default a quarter of the tile, as "
                   "live prediction cuts images (0: a plain grid, whose cached predictions have seams). Slides: "
                   "default 0; a quarter tile makes a store predict --slides --store can read.")
@click.option("--mpp", default=None, type=float,
              help="Slides: level-0 microns per pixel, overriding the files (for slides that record none). Image "
                   "folders: the microns per pixel of images that record none and are not in mpp.csv.")
@click.option("--working-mpp", default=None, type=click.FloatRange(min=0, min_open=True), metavar="UM",
              help="Image folders and releases of whole images: resample every image from its own resolution "
                   "(file metadata, mpp.csv beside the images, --mpp) to UM microns per pixel before tiling, so "
                   "the encoder sees one scale (label maps by nearest neighbour, ids kept).")
@click.option("--tile-mpp", default=0.5, show_default=True, type=float, help="Slides: microns per pixel of the tiles.")
@click.option("--min-tissue", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Slides: smallest tissue fraction of a kept tile.")
@release_options
@click.option("--overwrite", is_flag=True, help="Replace a store made with another configuration "
                                                "(the old one stays until the new one is complete).")
@click.option("--repair", is_flag=True, help="Check the store's chunks and compute again only the units whose "
                                             "chunks fail their checksums (what `verify` reports); the same "
                                             "options as the extraction that made it.")
@no_wait_option
@quiet_option
def extract(encoder, data, fmt, out, layers, variants, batch_size, device, dtype, codec, weights, norm, unit_tiles,
            workers, scheduler, loader_workers, tile_size, overlap, mpp, working_mpp, tile_mpp, min_tissue,
            release_magnification, classes, overwrite, repair, no_wait, quiet):
    """Run a frozen encoder over every tile and variant of a dataset into a Zarr store.

    An interrupted run resumes when the same command is run again. The
    same command run several times at once (a job array, two terminals)
    shares the work: each process claims units before computing them and
    one of them finishes the store. With
    --workers N or --scheduler ADDRESS, units of work run as dask tasks.
    With --repair, a store damaged on disk gets only its damaged units
    computed again.
    """
    from embedcache.config import ExtractConfig
    from embedcache.store.location import StoreLocation

    StoreLocation.parse(out)  # a bad URL fails before any model loads
    config = ExtractConfig(encoder=encoder, weights=weights, layers=layers, variants=variants,
                           batch_size=batch_size, device=device, dtype=dtype, codec=codec, norm=norm,
                           unit_tiles=unit_tiles,
                           loader_workers=loader_workers, tile_size=tile_size, overlap=overlap, format=fmt, mpp=mpp,
                           tile_mpp=tile_mpp, min_tissue=min_tissue, magnification=release_magnification,
                           classes=classes, working_mpp=working_mpp)
    from embedcache.extract import extract as run_extract

    result = run_extract(data, out, config, workers=workers, scheduler=scheduler, overwrite=overwrite,
                         progress=not quiet, repair=repair, on_note=lambda note: click.echo(f"note: {note}"),
                         wait=not no_wait)
    if result.redone is not None:
        redo, kept = result.redone
        click.echo(f"the data changed since the interrupted run: kept {kept} finished units, computed {redo} "
                   "again (those with tiles of changed files)")
    if not result.skipped and say_shared(result.path, result.shared, result.finished_by):
        return
    if result.skipped:
        intact = "; every chunk reads back, nothing to repair" if repair else "; nothing to do"
        click.echo(f"{result.path} is already complete with these settings{intact}")
    else:
        if result.repaired:
            units = ", ".join(map(str, result.repaired))
            kept = "; the others kept" if len(result.repaired) < result.units_total else ""
            click.echo(f"repaired {result.path}: computed {len(result.repaired)} of {result.units_total} units "
                       f"again (unit {units}, whose chunks failed their checksums){kept}")
        workers_seen = {u["worker"] for u in result.units if "worker" in u}
        on = f", units run by {len(workers_seen)} dask workers" if workers_seen else ""
        click.echo(f"wrote {result.path}: {result.n_tiles} tiles x {result.n_variants} variants, "
                   f"layers {', '.join(result.layers)} ({result.tiles_per_second:.2f} tiles/s{on})")
        if result.shared is not None and (result.units_run < result.units_total or "took over" in result.shared):
            click.echo(result.shared)  # resumed, or beside other processes: what this one did


@main.command()
@click.argument("store")
@json_option
def info(store, as_json):
    """Summarise a store (or a cell store, or a slide's cells.zarr): tiles, variants, layers with shapes, bytes
    on disk, complete or not."""
    from embedcache.store import open_store
    from embedcache.store.slide_cells import slide_cells_record, slide_cells_summary

    from embedcache.claims import claims_of, describe_claims

    if slide_cells_record(store) is not None:  # predict --slides --cells: whole on disk, no claims or units
        return _slide_cells_info(slide_cells_summary(store), as_json)
    s = open_store(store).summary()
    claims = claims_of(s["path"])
    if as_json:
        s["claims"] = [{"name": c.name, "state": c.state, "pid": c.record.get("pid"), "host": c.record.get("host")}
                       for c in claims]
        click.echo(json.dumps(s, indent=2))
        return
    for line in describe_claims(claims):  # processes working on it now, or claims the dead left behind
        click.echo(f"claim  {line}")
    if s.get("kind") == "cells":
        return _cells_info(s)
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['units_done'][0]}/{s['units_done'][1]} units)"
    click.echo(f"{s['path']}  [{state}]")
    click.echo(f"  encoder   {s['encoder']} ({s['arch']}), weights {s['weights']}")
    click.echo(f"  tiles     {s['n_tiles']} of {s['tile_shape'][0]}x{s['tile_shape'][1]}"
               f"{', with labels' if s['labels'] else ''}")
    click.echo(f"  variants  {len(s['variants'])}: {', '.join(s['variants'])}")
    click.echo(f"  size      {human_bytes(s['bytes'])} on disk")
    click.echo(f"  {'layer':<12} {'tokens (C, h, w)':<18} {'dtype':<8} {'on disk':>10} {'per tile-variant':>17}  "
               f"{'vs float32':>10}")
    for name, lay in s["layers"].items():
        shape = "x".join(str(d) for d in lay["tokens"])
        ratio = lay["bytes_per_tile_variant"] / lay["raw_float32_per_tile_variant"]
        click.echo(f"  {name:<12} {shape:<18} {lay['dtype']:<8} {human_bytes(lay['bytes']):>10} "
                   f"{human_bytes(lay['bytes_per_tile_variant']):>17} {ratio:>10.2f}")


def _slide_cells_info(s: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"{s['path']}  [complete] cell vectors of slide {s['slide']} (predict --slides --cells)")
    click.echo(f"  encoder   {s['encoder']}, weights {str(s['weights_sha256'])[:12]}, run {s['run']}")
    click.echo(f"  cells     {s['n_cells']}: row i is the nucleus of id i + 1 in nuclei.parquet beside it")
    click.echo("  layers    " + ", ".join(f"{k} ({v['dim']})" for k, v in s["layers"].items()))
    click.echo(f"  pooling   {s['pooling']}, tiles at {s['work_mpp']} um/px")
    click.echo(f"  size      {human_bytes(s['bytes'])} on disk")


def _cells_info(s: dict) -> None:
    state = "complete" if s["complete"] else f"INCOMPLETE ({s['units_done'][0]}/{s['units_done'][1]} units)"
    nuclei = s["nuclei"]
    click.echo(f"{s['path']}  [{state}] cell store")
    click.echo(f"  encoder   {s['encoder']}, pooled from {s['source_store']['path']}")
    click.echo(f"  cells     {s['n_cells']} from {nuclei['source']} ({nuclei['kind']})")
    click.echo("  types     " + ", ".join(f"{k} {v}" for k, v in s["types"].items()))
    click.echo(f"  variants  {len(s['variants'])}: {', '.join(s['variants'])}")
    click.echo(f"  layers    " + ", ".join(f"{k} ({v['dim']})" for k, v in s["layers"].items()))
    click.echo(f"  size      {human_bytes(s['bytes'])} on disk")


@main.command()
@click.argument("store")
@quiet_option
def verify(store, quiet):
    """Check a store is complete and every chunk decodes with a valid checksum.

    Exits 1 and lists the problems when anything is wrong.
    """
    from embedcache.progress import progress_bar

    from embedcache.store import open_store, verify_store

    from embedcache.claims import claims_of, describe_claims

    s = open_store(store)
    arrays = s.arrays()
    with progress_bar(total=len(arrays) - 1, unit="array", disable=quiet, desc="verify") as bar:
        problems = verify_store(s, progress=lambda path: bar.update(1))
    for line in describe_claims(claims_of(s.path)):
        click.echo(f"{s.path}: claim {line}")
    if problems:
        for p in problems:
            click.echo(f"{s.path}: {p}", err=True)
        raise SystemExit(1)
    items = f"{s.n_cells} cells" if hasattr(s, "n_cells") else f"{s.n_tiles} tiles"
    click.echo(f"{s.path}: OK ({len(arrays)} arrays, {items} x {len(s.variants)} variants)")


def _count(n: int) -> str:
    """Parameters as 86M or 1.1B."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


@main.command()
@json_option
@click.option("--family", type=click.Choice(["general", "pathology"]), default=None, help="Only this family.")
@click.option("--check", "check", multiple=True, metavar="NAME",
              help="Say whether NAME's weights can be had here (local file, cache, package, or a hub download "
                   "with its licence and token), without downloading; repeat for several. Exits 1 if any cannot.")
@click.option("--weights", default=None, help="With --check: a local weights file to check instead.")
def encoders(as_json, family, check, weights):
    """List the registry: names, dims, default layers, patch size, weight source; or check weights (--check)."""
    if check:
        from embedcache.encoders import get_spec
        from embedcache.encoders.load import weights_status

        results = [weights_status(get_spec(name), weights) for name in check]
        if as_json:
            click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        else:
            for r in results:
                click.echo(f"{r.name:<22} {'ok' if r.ok else 'NO':<3} {r.line}")
        if not all(r.ok for r in results):
            raise SystemExit(1)
        return
    from embedcache.encoders.catalogue import HOW_TO_LOAD, NOT_BUILT_IN, describe_registry

    rows = [r for r in describe_registry() if family is None or r["family"] == family]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<22} {'family':<10} {'params':>7} {'dim':>5} {'patch':>5} {'fit':<7} {'terms':<22} "
               f"{'default layers':<38} weights")
    for r in rows:
        click.echo(f"{r['name']:<22} {r['family']:<10} {_count(r['params']):>7} {r['dim']:>5} "
                   f"{r['patch_size'] or '-':>5} {r['fit']:<7} {r['terms']:<22} {','.join(r['layers']):<38} "
                   f"{r['weights']}")
    click.echo("\nterms: gated = accept the licence on the Hugging Face hub and set HF_TOKEN; non-commercial = "
               "the weights' licence forbids commercial use (`--json` has each licence in full)")
    if family in (None, "pathology"):
        click.echo("\nnot built in (" + HOW_TO_LOAD + "):")
        for name, repo, why in NOT_BUILT_IN:
            click.echo(f"  {name:<18} {repo:<22} {why}")
