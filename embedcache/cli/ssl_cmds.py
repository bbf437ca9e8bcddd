"""``demo-slides``, ``fit-ssl`` and ``retrieval``: descriptors learnt from slides, and how well they retrieve."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import device_option, json_option, quiet_option

_pair_options = [
    click.option("--d-near", default=200.0, show_default=True, type=float,
                 help="Near pairs: tile centres closer than this (micrometres) on one slide."),
    click.option("--d-far", default=2000.0, show_default=True, type=float,
                 help="Far pairs: at least this far apart (micrometres) on one slide, or on two slides."),
    click.option("--far-from", default="same", show_default=True, type=click.Choice(["both", "same", "other"]),
                 help="Far pairs from the same slide, from other slides, or both."),
    click.option("--seed", default=0, show_default=True, type=int, help="Seeds pairs, splits and training."),
]


def pair_options(f):
    for option in reversed(_pair_options):
        f = option(f)
    return f


@main.command("demo-slides")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--slides", default=4, show_default=True, type=click.IntRange(min=1), help="Number of slides.")
@click.option("--size", default=2048, show_default=True, type=click.IntRange(min=256), help="Slide side in pixels.")
@click.option("--mpp", default=0.5, show_default=True, type=float, help="Microns per pixel written into the files.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
def demo_slides(out, slides, size, mpp, seed):
    """Write synthetic pyramidal TIFF slides with tumour/normal outlines (GeoJSON) to OUT.

    Tissue on glass with tumour regions of a distinct texture, 3 pyramid
    levels, microns per pixel in the TIFF tags; for trying extract,
    fit-ssl and retrieval without real slides.
    """
    from embedcache.datasets.synthetic_slides import write_synthetic_slides

    paths = write_synthetic_slides(out, n_slides=slides, shape=(size, size), mpp=mpp, seed=seed)
    click.echo(f"wrote {len(paths)} slides ({size}x{size} px at {mpp} um/px, 3 levels) with GeoJSON outlines to {out}")


@main.command("fit-ssl")
@click.option("--mode", default="head", show_default=True, type=click.Choice(["head", "encoder"]),
              help="head: MLP on a store's pooled vectors; encoder: siamese CNN on slide tiles.")
@click.option("--store", type=click.Path(path_type=Path), help="Head: store extracted from slides.")
@click.option("--layer", default="last", show_default=True, help="Head: layer the head reads (name, index, last).")
@click.option("--kind", default="mean", show_default=True, type=click.Choice(["mean", "cls"]),
              help="Head: pooled vector read.")
@click.option("--name", default="ssl", show_default=True, help="Head: name of the descriptor layer written back.")
@click.option("--hidden", default=512, show_default=True, type=int, help="Head: hidden width.")
@click.option("--epochs", default=20, show_default=True, type=int, help="Head: epochs, each over fresh pairs.")
@click.option("--pairs", default=4096, show_default=True, type=int, help="Head: pairs per epoch (half near).")
@click.option("--no-augment", is_flag=True, help="Head: read only the identity variant (no cached rotations).")
@click.option("--data", type=click.Path(path_type=Path), help="Encoder: slides folder or file.")
@click.option("--out", type=click.Path(path_type=Path), help="Encoder: checkpoint to write (.safetensors).")
@click.option("--encoder", default="timm:resnet50", show_default=True, help="Encoder: architecture.")
@click.option("--weights", default=None, help="Encoder: starting weights (file or 'random'); default the registry's.")
@click.option("--steps", default=200, show_default=True, type=int, help="Encoder: optimisation steps.")
@click.option("--stain-norm", is_flag=True, help="Encoder: Reinhard stain normalisation in LAB space.")
@click.option("--tile-size", default=256, show_default=True, type=int, help="Encoder: tile side at --tile-mpp.")
@click.option("--tile-mpp", default=0.5, show_default=True, type=float, help="Encoder: microns per pixel of tiles.")
@click.option("--mpp", default=None, type=float, help="Encoder: level-0 microns per pixel overriding the slides.")
@click.option("--min-tissue", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Encoder: smallest tissue fraction of a tile.")
@click.option("--dim", default=128, show_default=True, type=int, help="Descriptor size.")
@click.option("--margin", default=0.5, show_default=True, type=float, help="Contrastive margin (unit descriptors).")
@click.option("--batch-size", default=None, type=int, help="Pairs per step [head 256, encoder 8].")
@click.option("--lr", default=None, type=float, help="Adam learning rate [head 1e-3, encoder 1e-4].")
@click.option("--holdout", default=0.25, show_default=True, type=float,
              help="Fraction of slides kept out of training (retrieval queries).")
@click.option("--groups", default=None, type=click.Path(dir_okay=False),
              help="CSV of slide,group (patient, centre): hold out that fraction of the groups, each whole.")
@device_option
@pair_options
@quiet_option
def fit_ssl(mode, store, layer, kind, name, hidden, epochs, pairs, no_augment, data, out, encoder, weights, steps,
            stain_norm, tile_size, tile_mpp, mpp, min_tissue, dim, margin, batch_size, lr, holdout, groups, device,
            d_near,
            d_far, far_from, seed, quiet):
    """Learn compact descriptors from the spatial continuity of slides (contrastive, no labels).

    \b
    Head mode writes descriptors back into the store as a pooled layer:
      embedcache fit-ssl --store slides.zarr --layer last --name ssl
    Encoder mode trains a siamese ResNet-50 and saves a checkpoint:
      embedcache fit-ssl --mode encoder --data slides/ --out ssl.safetensors --weights random
      embedcache extract --encoder timm:resnet50 --weights ssl.safetensors --data slides/ --out ssl.zarr
    """
    from embedcache.config import SSLConfig
    from embedcache.errors import ConfigError
    from embedcache.train.ssl import fit_encoder, fit_head

    config = SSLConfig(mode=mode, layer=layer, kind=kind, name=name, dim=dim, hidden=hidden, margin=margin,
                       d_near=d_near, d_far=d_far, far_from=far_from, pairs=pairs, epochs=epochs, steps=steps,
                       batch_size=batch_size, lr=lr, holdout=holdout, groups=groups, augment=not no_augment,
                       encoder=encoder,
                       weights=weights, stain_norm=stain_norm, device=device, seed=seed)
    if mode == "head":
        if store is None:
            raise ConfigError("head mode needs --store (a store extracted from slides)")
        res = fit_head(store, config, progress=not quiet)
        where = f"{store} as layer {res.output!r}"
    else:
        if data is None or out is None:
            raise ConfigError("encoder mode needs --data (slides) and --out (checkpoint .safetensors)")
        res = fit_encoder(data, out, config, dict(tile_size=tile_size, tile_mpp=tile_mpp, mpp=mpp,
                                                   min_tissue=min_tissue), progress=not quiet)
        where = res.output
    loss = f", loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f}" if res.losses else ""
    click.echo(f"fit-ssl {mode}: {res.pairs_seen} pairs ({res.pairs_per_second:.0f} pairs/s){loss}; "
               f"held out {', '.join(res.held_out) or 'none'}; wrote {where}")


@main.command("retrieval")
@click.option("--store", "stores", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Store extracted from slides; repeat to compare stores (same slides and tiling).")
@click.option("--layer", "layers", multiple=True, default=("last",), show_default=True,
              help="Layer to score (name, index, last, descriptors, all); repeat to compare.")
@click.option("--labels", default="tissue", show_default=True,
              help="'tissue' (labels the store recorded, e.g. from GeoJSON) or a CSV of tile,label.")
@click.option("--k", default=10, show_default=True, type=int, help="Neighbours per query.")
@click.option("--queries", default="auto", show_default=True,
              help="auto (slides fit-ssl held out, else the --holdout split), all, or slide names.")
@click.option("--holdout", default=0.25, show_default=True, type=float,
              help="Fraction of slides used as queries when nothing recorded says which.")
@click.option("--kind", default="mean", show_default=True, type=click.Choice(["mean", "cls"]),
              help="Pooled vector of extracted layers.")
@click.option("--metric", default="euclidean", show_default=True, type=click.Choice(["euclidean", "cosine"]),
              help="Descriptor distance for neighbours.")
@click.option("--far-pairs", default=20000, show_default=True, type=int, help="Far pairs drawn for ADDR.")
@pair_options
@json_option
def retrieval(stores, layers, labels, k, queries, holdout, kind, metric, far_pairs, d_near, d_far, far_from, seed,
              as_json):
    """Retrieval precision at k and ADDR of descriptors, several stores or layers in one table.

    Queries are the labelled tiles of held-out slides; neighbours come from
    other slides only; a hit shares the query's label. ADDR is the mean
    descriptor distance of far pairs over that of near pairs on the query
    slides.
    """
    from embedcache.config import RetrievalConfig
    from embedcache.report.retrieval import compare_stores

    config = RetrievalConfig(k=k, labels=labels, queries=queries, holdout=holdout, kind=kind, metric=metric,
                             d_near=d_near, d_far=d_far, far_from=far_from, far_pairs=far_pairs, seed=seed)
    report = compare_stores(stores, layers, config)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    rows = report.rows[0]
    click.echo(f"retrieval: {rows.n_queries} queries from {', '.join(report.query_slides)}; "
               f"ADDR over {rows.n_near} near and {rows.n_far} far pairs")
    click.echo(report.table())
