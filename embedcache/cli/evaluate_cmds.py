"""``embedcache evaluate``: score predicted label maps under a published protocol."""

from __future__ import annotations

import click

from embedcache.cli import main
from embedcache.cli.options import format_option


def _parse_classes(ctx, param, value):
    if value is None:
        return None
    try:
        ids = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise click.BadParameter(f"expected type ids separated by commas, e.g. 1,2,3; got {value!r}")
    return ids


@main.command("evaluate")
@click.option("--protocol", default="auto", show_default=True,
              type=click.Choice(["auto", "hovernet", "pannuke", "conic"]),
              help="hovernet: CoNSeP/Kumar/CPM tables; pannuke: PanNuke bPQ/mPQ; conic: CoNIC mPQ+ and R2; auto: "
                   "the truth's own (pannuke or conic for their classes, else hovernet).")
@click.option("--truth", required=True, type=click.Path(),
              help="Ground-truth folder (PanNuke, CoNIC or NAME_inst.png folder layout).")
@click.option("--pred", required=True, type=click.Path(),
              help="Prediction folder, in any of the same layouts (auto-detected for each).")
@format_option
@click.option("--radius", default=12.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="hovernet detection radius in pixels: 12 at 40x, 6 at 20x.")
@click.option("--radius-um", default=None, type=click.FloatRange(min=0, min_open=True), metavar="UM",
              help="Or the radius in microns, in pixels at each truth image's own resolution (metadata or "
                   "mpp.csv beside the truth): 3 um is 12 px at 0.25 um/px and 6 px at 0.5, for folders that mix "
                   "magnifications.")
@click.option("--classes", default=None, callback=_parse_classes,
              help="Type ids to score, e.g. 1,2,3,5. Default: the protocol's own (pannuke 1..5, conic 1..6, "
                   "hovernet the truth's types); another set is marked as not the published protocol.")
@click.option("--on", "on", default=None, type=click.Choice(["common", "truth", "pred"]),
              help="When the prediction's images are not the truth's: common scores the images in both; truth "
                   "scores every truth image, a missing prediction as empty (no nuclei); pred scores the predicted "
                   "images and refuses one whose truth is missing. Default: refuse.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, writable=True),
              help="Write the summary and per-image rows as JSON (NaN as null).")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, writable=True),
              help="Write one row per image as CSV.")
def evaluate_cmd(protocol, truth, pred, fmt, radius, radius_um, classes, on, json_out, csv_out):
    """Score predicted nuclei against the truth as the published tables do.

    Values agree with each protocol's reference code (see docs/metrics.md).
    Images pair by name (tile stacks by row number); --on says what to score
    when the two sides hold different images.

    \b
    Example:
      embedcache evaluate --protocol pannuke --truth fold3/ --pred pred/ --json scores.json
      embedcache evaluate --truth "data/pannuke/Fold 3" --pred pred/   # the release's own protocol
      embedcache evaluate --protocol hovernet --truth test/ --pred pred/ --on truth
    """
    from embedcache.metrics.evaluation import evaluate
    from embedcache.metrics.tables import format_evaluation

    result = evaluate(truth, pred, protocol, format=fmt, radius=radius, classes=classes, on=on, radius_um=radius_um)
    click.echo(format_evaluation(result))
    if json_out:
        click.echo(f"wrote {result.write_json(json_out)}")
    if csv_out:
        click.echo(f"wrote {result.write_csv(csv_out)}")
