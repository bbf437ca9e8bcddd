"""Option decorators shared by commands, so a flag reads and means the same everywhere.

``--workers N`` always means dask worker processes (extraction on a local
cluster); ``--loader-workers N`` always means DataLoader processes reading
tiles or a store.
"""

from __future__ import annotations

import click

from embedcache.datasets import formats

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
format_option = click.option("--format", "fmt", type=click.Choice(formats()), default="auto", show_default=True,
                             help="Dataset layout (auto-detected by default; `embedcache datasets` lists them).")


def release_options(f):
    """``--magnification`` and ``--classes``: the part and class set of a release to read (extract, check-data)."""
    f = click.option("--classes", default=None, metavar="NAME",
                     help="Releases with several class sets (CoNSeP: hovernet, the default, or consep).")(f)
    return click.option("--magnification", "release_magnification", default=None, type=click.Choice(["20x", "40x"]),
                        help="Releases with both, read at the archive's root (CytoDArk0): which one "
                             "(default 20x).")(f)


device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
magnification_option = click.option(
    "--magnification", default="40x", show_default=True, type=click.Choice(["40x", "20x"]),
    help="Post-processing defaults (nucleus sizes) and the hovernet detection radius (12 px / 6 px).")
dask_workers_option = click.option(
    "--workers", default=0, show_default=True, type=click.IntRange(min=0), metavar="N",
    help="Run units of work on a local dask cluster of N worker processes (one per GPU when there are GPUs); "
         "0 runs them in this process.")
scheduler_option = click.option(
    "--scheduler", default=None, metavar="ADDRESS",
    help="Run units of work on the dask cluster whose scheduler is at ADDRESS (tcp://host:8786).")


def loader_workers_option(what: str):
    """``--loader-workers N``: DataLoader processes reading ``what``."""
    return click.option("--loader-workers", default=1, show_default=True, type=click.IntRange(min=0), metavar="N",
                        help=f"DataLoader worker processes reading {what} (0: in this process).")


def refuse_options(ctx: click.Context, kind: str, applies: dict[str, set[str]], kinds: dict[str, str]) -> None:
    """Refuse, in one line, an option given on the command line that does nothing for this kind of input.

    Parameters
    ----------
    kind : str
        The input this invocation has (a key of ``kinds``).
    applies : dict of str to set of str
        Parameter name -> the kinds it works for; parameters not listed work for every kind.
    kinds : dict of str to str
        Kind -> how the message names it (``"whole slides (--slides)"``).

    Raises
    ------
    ConfigError
        ``--gzip applies to whole slides (--slides), not to images (--data)``.
    """
    from click.core import ParameterSource

    from embedcache.errors import ConfigError

    for param in ctx.command.params:
        where = applies.get(param.name)
        if where is None or kind in where:
            continue
        if ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            flag = max(param.opts, key=len)
            if ctx.params.get(param.name) is False and param.secondary_opts:
                flag = max(param.secondary_opts, key=len)
            targets = " and ".join(kinds[k] for k in kinds if k in where)
            raise ConfigError(f"{flag} applies to {targets}, not to {kinds[kind]}; leave it out")


no_wait_option = click.option(
    "--no-wait", is_flag=True,
    help="When the units left are all being computed by other processes on this --out (the same command run "
         "again, a job array), exit instead of waiting to finish the output with them.")


def say_shared(path, shared: str | None, finished_by: str | None) -> bool:
    """Print what a process sharing an output did, when another finishes it; True when so (nothing more to say)."""
    if shared is None or finished_by == "this":
        return False
    click.echo(shared)
    if finished_by == "another":
        click.echo(f"{path} was finished by another process")
    else:
        click.echo(f"{path}: the units left are being computed by other processes; one of them finishes it "
                   "(--no-wait)")
    return True
