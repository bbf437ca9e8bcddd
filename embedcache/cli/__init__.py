"""The ``embedcache`` command line: thin click commands over the library.

Each command parses its options, calls one library function and prints the
result. Errors are turned into one line here, in one place
(:class:`_Group`): library errors and OS errors (read-only or full disk) give
``Error: ...`` on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from embedcache import __version__
from embedcache.errors import EmbedcacheError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            # The reader went away (`embedcache info STORE | head -1`): not an error of ours. Point stdout at
            # nothing so the interpreter's final flush does not fail again.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):  # stdout is not a file (tests capture it)
                pass
            sys.exit(0)
        except EmbedcacheError as exc:
            self._fail(ctx, str(exc), exc.exit_code, exc)
        except OSError as exc:
            self._fail(ctx, _describe_os_error(exc), 1, exc)
        except KeyboardInterrupt as exc:
            self._fail(ctx, "interrupted; run the same command again to resume where it stopped", 130, exc)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int, exc: BaseException):
        if ctx.obj and ctx.obj.get("debug"):
            raise exc
        click.echo(f"Error: {message}", err=True)
        sys.exit(code)


def _user_path(name) -> str:
    """The path as the user gave it: work in progress goes to ``NAME.partial`` first (embedcache.files)."""
    from pathlib import PurePath

    parts = [p[:-len(".partial")] if p.endswith(".partial") else p for p in PurePath(os.fsdecode(name)).parts]
    return str(PurePath(*parts)) if parts else os.fsdecode(name)


def _file_in_the_way(path: str) -> str | None:
    """The first ancestor of ``path`` that exists and is not a folder."""
    from pathlib import Path

    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return str(parent)
    return None


def _describe_os_error(exc: OSError) -> str:
    name = getattr(exc, "filename", None)
    where = f" ({_user_path(name)})" if name else ""
    if exc.errno == errno.ENOTDIR and name:
        blocker = _file_in_the_way(os.fsdecode(name))
        if blocker:
            return f"{_user_path(name)}: {blocker} is a file, not a folder; choose another path"
    if exc.errno == errno.ENOSPC:
        return f"no space left on device{where}; free some space or choose another --out, then run again to resume"
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write{where}: permission denied or read-only file system; choose a writable location"
    if exc.errno == errno.ENOENT:
        return f"no such file or directory{where}"
    if exc.errno == errno.ENOTDIR:
        return f"not a directory{where}: a part of that path is a file, not a folder; choose another path"
    if exc.errno == errno.EEXIST and exc.filename and os.path.isfile(exc.filename):
        return f"cannot create a folder{where}: a file of that name is in the way; move it or choose another path"
    return f"{exc.strerror or exc}{where}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="Threads the command may use in all: torch, BLAS, loader and worker processes are sized so "
                   "their sum fits (default: this machine's cores, or EMBEDCACHE_THREADS). Lower it on a "
                   "shared machine.")
@click.version_option(__version__, prog_name="embedcache")
@click.pass_context
def main(ctx: click.Context, debug: bool, threads: int | None):
    """Frozen encoders over pathology tiles, cached once; decoders, probes and
    nuclei metrics trained and scored from the cache."""
    from embedcache.errors import ConfigError
    from embedcache.threads import set_budget

    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["threads"] = threads
    try:
        set_budget(threads)  # before torch loads: its OpenMP pool reads the environment once
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


# One module per group of commands; each registers its commands on `main` when imported.
COMMAND_MODULES = ("data_cmds", "extract_cmds", "cells_cmds", "evaluate_cmds", "ssl_cmds", "decoder_cmds", "probe_cmds",
                   "pipeline_cmds")


def _register():
    # Command modules import heavy libraries (torch, timm) inside the commands,
    # so `embedcache --help` stays fast.
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"embedcache.cli.{name}")


_register()
