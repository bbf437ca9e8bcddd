"""Option decorators shared by commands, so flags read the same everywhere."""

from __future__ import annotations

import click

from embedcache.datasets import FORMATS

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                             help="Dataset layout (auto-detected by default).")
