"""``embedcache demo-data``: synthetic tiles to try every command on; ``check-data``: a dataset's problems."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import format_option, release_options


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tiles", default=48, show_default=True, type=click.IntRange(min=1), help="Number of tiles.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; the same seed gives the same tiles.")
@click.option("--folds", default=3, show_default=True, type=click.IntRange(min=1), help="Folds (sub-folders).")
def demo_data(out: Path, tiles: int, seed: int, folds: int):
    """Write deterministic synthetic H&E-like tiles in the PanNuke layout to OUT.

    Five nucleus types that differ in size, shape, colour and texture,
    touching and overlapping nuclei, and a tissue label per tile.
    """
    from embedcache.datasets.synthetic import write_demo_data

    dirs = write_demo_data(out, n_tiles=tiles, seed=seed, folds=folds)
    click.echo(f"wrote {tiles} tiles (256x256, PanNuke layout) in {len(dirs)} folds to {out}")


@main.command("check-data")
@click.argument("path", type=click.Path(path_type=Path))
@format_option
@click.option("--pixels", is_flag=True,
              help="Decode every image and label map (catches truncated files and bad values; slower). "
                   "By default only headers are read.")
@click.option("--tile-size", default=256, show_default=True, type=int,
              help="Tile side extract will use (folder and slides layouts), for the tile count.")
@click.option("--overlap", default=None, type=click.IntRange(min=0), metavar="PX",
              help="Folder layout: overlap of neighbouring tiles, as for extract (default: a quarter of the tile).")
@click.option("--mpp", default=None, type=float,
              help="Slides: level-0 microns per pixel, overriding the files (as for extract).")
@click.option("--tile-mpp", default=0.5, show_default=True, type=float, help="Slides: microns per pixel of the tiles.")
@release_options
def check_data(path: Path, fmt: str, pixels: bool, tile_size: int, overlap, mpp, tile_mpp, release_magnification,
               classes):
    """List every problem extract would meet in a dataset, at once: unreadable images, modes that are not RGB,
    missing or mis-sized label maps, RGB-coded instance maps, stacks that disagree, slides without microns per pixel.

    Prints a summary (images, sizes, tiles extract will cut), notes (conversions that will be applied) and one
    `FILE: message` line per problem; exits 1 when there are problems. Reads headers only unless --pixels.
    """
    from embedcache.datasets.check import check_data as run_check

    report = run_check(path, fmt, pixels=pixels, tile_size=tile_size, overlap=overlap, mpp=mpp, tile_mpp=tile_mpp,
                       magnification=release_magnification, classes=classes)
    for line in report.lines():
        click.echo(line)
    if report.ok:
        click.echo("no problems found")
        return
    n = len(report.problems)
    click.echo(f"{n} problem{'s' if n != 1 else ''} in {path}; fix {'them' if n != 1 else 'it'} and run check-data "
               "again")
    raise SystemExit(1)


@main.command("datasets")
def datasets():
    """List the dataset layouts embedcache reads: for each, where to download it, its licence and the folder
    to point --data (or check-data, evaluate --truth) at. `--format auto` tries them in this order.
    """
    from embedcache.datasets.registry import LAYOUTS, get_layout

    get_layout("folder")  # loads every reader
    for layout in LAYOUTS.values():
        click.echo(f"{layout.name:<10} {layout.title}")
        for key, value in (("download", layout.url), ("licence", layout.licence), ("point at", layout.point_at),
                           ("knows", layout.note)):
            if value:
                click.echo(f"  {key:<9} {value}")
