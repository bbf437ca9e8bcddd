"""``embedcache run``: a whole encoder comparison from one pipeline file."""

from __future__ import annotations

from pathlib import Path

import click

from embedcache.cli import main
from embedcache.cli.options import dask_workers_option, quiet_option, scheduler_option


@main.command("run")
@click.argument("pipeline_file", metavar="PIPELINE.yaml", type=click.Path(path_type=Path))
@click.option("--only", default="", metavar="KINDS",
              help="Run only these step kinds, comma-separated: data, extract, probe, fit, evaluate, report "
                   "(finished steps of other kinds are still reused).")
@click.option("--dry-run", is_flag=True, help="List every step as reuse, resume or run; do nothing.")
@click.option("--keep-going", is_flag=True,
              help="Skip an encoder whose step fails (the reason goes in the report) instead of stopping; "
                   "the same as 'on_error: skip' in the file.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: the file's 'out').")
@dask_workers_option
@scheduler_option
@quiet_option
def run_cmd(pipeline_file, only, dry_run, keep_going, out, workers, scheduler, quiet):
    """Run a study: extract, probe, fit-decoder and evaluate for every encoder and dataset, then the report.

    Each step's output is keyed by the content of its inputs (dataset
    fingerprint, encoder and weights, settings) under OUT/steps/; a step
    whose key is done is reused, so running again after a crash picks up
    where it stopped and adding an encoder runs only its steps. The report
    (leaderboard with 95% intervals over seeds and images, paired tests,
    plots, index.html) goes to OUT/report/.

    \b
    Example:
      embedcache run pipelines/demo.yaml
      embedcache run pipelines/demo.yaml --dry-run
    """
    import dataclasses

    from embedcache.pipeline.run import STEP_KINDS, execute, plan
    from embedcache.pipeline.run import dry_run as list_steps
    from embedcache.pipeline.spec import load_pipeline

    pipeline = load_pipeline(pipeline_file)
    if out is not None:
        pipeline = dataclasses.replace(pipeline, out=out)
    if keep_going:
        pipeline = dataclasses.replace(pipeline, on_error="skip")
    kinds = tuple(k.strip() for k in only.split(",") if k.strip())
    unknown = [k for k in kinds if k not in STEP_KINDS]
    if unknown:  # before planning, and for --dry-run too (execute checks it again)
        from embedcache.errors import ConfigError

        raise ConfigError(f"--only {unknown[0]!r}: step kinds are {', '.join(STEP_KINDS)}")
    if pipeline.threads is not None and not (click.get_current_context().obj or {}).get("threads"):
        # the file's budget, unless `embedcache --threads N run` gave one
        from embedcache.threads import set_budget

        set_budget(pipeline.threads)
    p = plan(pipeline, progress=not quiet, workers=workers, scheduler=scheduler)
    for name, why in p.failed.items():
        click.echo(f"left out {name}: {why}", err=True)
    if dry_run:
        from collections import Counter

        rows = list_steps(p, kinds)
        for state, label, where in rows:
            click.echo(f"{state:<7} {label}  ({where})")
        counts = Counter(state for state, _, _ in rows)
        click.echo(f"{len(rows)} steps: " + ", ".join(f"{counts[s]} {s}" for s in ("reuse", "resume", "run", "skip")
                                                     if counts[s]))
        return
    import time

    t0 = time.perf_counter()
    outcome = execute(p, only=kinds, progress=not quiet, echo=click.echo)
    took = time.perf_counter() - t0
    parts = [f"{len(outcome.ran)} steps run", f"{len(outcome.reused)} reused"]
    if outcome.skipped:
        parts.append(f"{len(outcome.skipped)} skipped")
    if outcome.failed:
        parts.append(f"{len(outcome.failed)} encoder(s) left out")
    click.echo(f"{pipeline.name}: {', '.join(parts)} in {took:.1f} s")
    if outcome.report is not None:
        md = outcome.report / "leaderboard.md"
        if md.is_file():
            click.echo("")
            click.echo(md.read_text().rstrip())
            click.echo("")
        how = "up to date" if outcome.report_reused else "written"
        click.echo(f"report {how}: {outcome.report / 'index.html'}")
