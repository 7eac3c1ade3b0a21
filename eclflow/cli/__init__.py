"""The `eclflow` command line. Nothing else in the package imports this."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .. import __version__
from ._common import one_line_click_errors

# The module that defines each command. A command's module is imported only when that command
# runs (or --help lists them all), so `eclflow validate` does not pay for `run`'s imports.
_COMMANDS = {
    "graph": "graph",
    "logs": "logs",
    "pause": "run",
    "prune": "history",
    "resume": "run",
    "run": "run",
    "runs": "history",
    "serve": "serve",
    "show": "history",
    "status": "history",
    "steps": "steps",
    "validate": "validate",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in _COMMANDS:
            importlib.import_module(f"{__name__}.{_COMMANDS[name]}")
        return super().get_command(ctx, name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Click's, with a suggestion when the command name is misspelled."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            import difflib

            name = args[0] if args else ""
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            if not close or name.startswith("-") or "did you mean" in e.message.lower():
                raise
            raise click.UsageError(f"{e.message} (Did you mean '{close[0]}'?)", e.ctx) from None

    # Click prints a usage error as three lines (usage, "Try --help", error); every error we
    # print is one line, so each click error is given a one-line `show` on its way out.
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        line = list(args)
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as e:
            raise one_line_click_errors(e, line) from e.__cause__

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            sub = ctx.invoked_subcommand
            command = f"{ctx.command_path} {sub}" if sub else ctx.command_path
            fmt = (ctx.obj or {}).get("log_format")
            raise one_line_click_errors(e, command=command, fmt=fmt) from e.__cause__


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="eclflow")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Default: ECLFLOW_LOG_LEVEL, else warning (debug with -v).",
)
@click.option(
    "--log-format",
    type=click.Choice(["pretty", "json", "compact"], case_sensitive=False),
    help="Logs on stderr: pretty (rich), json (one object a line) or compact. "
    "Default: ECLFLOW_LOG_FORMAT, else pretty.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, log_level: str | None, log_format: str | None) -> None:
    """Declarative YAML workflows for LLM work: validate, draw, run, journal, resume."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    from ..errors import ConfigError
    from ..observe.logs import configure

    try:
        configure(log_level or ("debug" if verbose else None), log_format)
        from ..observe.logs import resolve

        ctx.obj["log_format"] = resolve(None, log_format)[1]
        # logs as they come by default, not as asked for (--log-level, -v, the environment)
        asked = log_level or verbose or log_format
        ctx.obj["default_logs"] = not (
            asked or os.environ.get("ECLFLOW_LOG_LEVEL") or os.environ.get("ECLFLOW_LOG_FORMAT")
        )
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def main() -> None:
    _usable_standard_streams()
    sys.exit(cli.main(standalone_mode=True))


def _usable_standard_streams() -> None:
    """A closed stdin, stdout or stderr (`eclflow … <&-`, `>&-`), which Python makes None, is
    read as empty and written to nowhere, as click's echo already does (rich and `--inputs -`
    failed with AttributeError, and a batch's results went to stderr). An output that cannot
    encode every character (PYTHONIOENCODING=latin-1, a C locale outside Python's UTF-8
    mode) writes those it cannot as escapes (`\\u2713`) instead of failing."""
    import codecs

    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        if codecs.lookup(encoding).name != "utf-8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
