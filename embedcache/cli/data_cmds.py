"""``embedcache demo-data``: synthetic tiles to try every command on."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli import main


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
