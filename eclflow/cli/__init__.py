"""The `eclflow` command line. Nothing else in the package imports this."""

from __future__ import annotations

import sys

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="eclflow")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Declarative YAML workflows for LLM work: validate, draw, run, journal, resume."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def main() -> None:
    from . import commands  # noqa: F401  (registers the subcommands)

    sys.exit(cli.main(standalone_mode=True))
