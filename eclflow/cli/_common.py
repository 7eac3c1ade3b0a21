"""What every command shares: error handling, exit codes, the --db option, the consoles."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_terminated = False  # SIGTERM came (see stop_on_sigterm)


def stop_on_sigterm() -> None:
    """SIGTERM (`docker stop`, systemd, `timeout`) stops a run as Ctrl-C does: the steps in
    flight are cancelled, what was committed is kept, the way to go on is said; the exit
    status is then 143 (128 + SIGTERM), as a shell reports a process SIGTERM ended."""

    def on_sigterm(signum: int, frame: Any) -> None:
        global _terminated
        _terminated = True
        ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(ctrl_c):  # asyncio's (it cancels the main task), or Python's default
            ctrl_c(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job): stop all the same
            raise KeyboardInterrupt

    # (not in the main thread, ValueError: a host program's signals stay its own)
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGTERM, on_sigterm)


async def stopping_lock_waits(work: Awaitable[T], store: Any) -> T:
    """Await `work` (in `asyncio.run`), with Ctrl-C and SIGTERM also ending a wait for the
    database's write lock that another process holds (`Store.stop_waiting`): asyncio
    cancels the run at once, but the end of `asyncio.run` and closing the store wait for
    their threads, which could wait out a minute's busy timeout. Each signal is wrapped on its
    own: a background job's SIGINT is ignored, and its SIGTERM must end the wait all the same."""
    if store is None:
        return await work
    wrapped: dict[signal.Signals, tuple[Any, Any]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):  # (ignored, or the default: nothing runs to stop the wait)
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            store.stop_waiting()
            previous(signum, frame)  # asyncio's (it cancels the run), or stop_on_sigterm's

        with contextlib.suppress(ValueError):  # (not in the main thread: nothing to do)
            signal.signal(sig, handler)
            wrapped[sig] = (handler, previous)
    try:
        return await work
    finally:
        for wrapped_sig, (ours, theirs) in wrapped.items():
            if signal.getsignal(wrapped_sig) is ours:
                with contextlib.suppress(ValueError):
                    signal.signal(wrapped_sig, theirs)


def json_or_format(as_json: bool, fmt: str, param: str) -> str:
    """The output format of a command that has both `--json` and a format option (`param`,
    the option's parameter name): `--json` is that option's `json`, and given beside another
    format it is a usage error, not one of the two chosen silently."""
    if not as_json:
        return fmt
    ctx = click.get_current_context()
    given = ctx.get_parameter_source(param) not in (None, click.core.ParameterSource.DEFAULT)
    if given and fmt != "json":
        option = next(p for p in ctx.command.params if p.name == param)
        name = max(option.opts, key=len)
        raise click.UsageError(
            f"--json and {name} {fmt} do not go together (--json means {name} json)"
        )
    return "json"


def interrupted_exit_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM."""
    return 143 if _terminated else 130


@functools.cache
def _console_class() -> Any:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own exits 1, which says the run failed: the reader going away is
            # `handle_errors`' to report, with 141 as for every other command
            raise BrokenPipeError

    return _Console


def stderr_console() -> Any:
    return _console_class()(stderr=True, highlight=False)


def stdout_console() -> Any:
    """Rich on stdout; wide when stdout is not a terminal, so piped tables are not cut."""
    return _console_class()(highlight=False, width=None if sys.stdout.isatty() else 200)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F)}
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})


def safe_text(text: str, err: bool = False) -> str:
    """`text` (a model's reply, a prompt, a run's input) as it may be shown on a terminal:
    control characters other than newline and tab are written as `\\x1b`, so a reply cannot
    set the window title, recolour the screen or rewrite a line. Written to a file or a pipe
    (`err`: stderr, else stdout), it is left exactly as it is, but for a lone surrogate
    (`\\ud800` in a JSON input or reply), which no UTF-8 holds: written as that escape."""
    if not text.isascii():
        from ..spec.model import printable

        text = printable(text)
    stream = sys.stderr if err else sys.stdout
    try:
        terminal = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file
        terminal = False
    return text.translate(_CONTROL) if terminal else text


def json_text(value: Any, indent: int | None = None) -> str:
    """`value` as JSON any JSON reader takes (what --json prints): a float JSON has no number
    for (NaN, Infinity: a model's JSON reply may hold one) is null, as JavaScript's
    JSON.stringify writes it, and a lone surrogate (`\\ud800` in a reply or an input) is kept
    escaped, as no UTF-8 output could hold it; so is every character but ASCII when the
    output is not UTF-8 (PYTHONIOENCODING=latin-1), where `main` has what the output cannot
    hold written as Python's escapes (`\\U0001f600`), which no JSON reader takes. A time is
    ISO 8601 with its offset (`2026-12-07T02:27:41.802000+00:00`, as the traces' and the logs'
    `ts`), not str()'s text with a space, which RFC 3339 parsers (Go's, a browser's Date)
    refuse."""
    import json

    try:
        text = json.dumps(
            value, indent=indent, ensure_ascii=False, default=_json_default, allow_nan=False
        )
    except ValueError:
        text = json.dumps(_finite(value), indent=indent, ensure_ascii=False, default=_json_default)
    if not text.isascii() and (_SURROGATE.search(text) is not None or not _utf8_output()):
        return json.dumps(json.loads(text), indent=indent)
    return text


def _utf8_output() -> bool:
    """Whether stdout and stderr (where JSON logs go) are UTF-8."""
    import codecs

    streams = (sys.stdout, sys.stderr)
    return all(
        codecs.lookup(getattr(s, "encoding", None) or "utf-8").name == "utf-8" for s in streams
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_default(value: Any) -> str:
    """What JSON has no value for, as text: a time (the store's datetimes) in ISO 8601."""
    import datetime

    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def _finite(value: Any) -> Any:
    """`value` with None for each float that is not finite."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def fail(message: str, code: int = EXIT_FAILED) -> None:
    """Print one line to stderr (a JSON object when the logs are JSON) and exit."""
    say(message, "error", prefix="error: ", exit_code=code)
    sys.exit(code)


def say(message: str, level: str = "info", *, prefix: str = "", **fields: Any) -> None:
    """One line to stderr: `prefix` and `message` for a person, or, when the logs are JSON
    (which nothing else may interleave with), an object with the message and `fields`."""
    _emit(message, level, prefix, json_logs(), fields)


def _emit(message: str, level: str, prefix: str, as_json: bool, fields: dict[str, Any]) -> None:
    if as_json:
        line = {"level": level, "event": message, **fields}
        click.echo(json_text(line), err=True)
    else:
        click.echo(f"{prefix}{message}", err=True)


def one_line_click_errors(
    error: click.ClickException,
    args: list[str] | None = None,
    command: str | None = None,
    fmt: str | None = None,
) -> click.ClickException:
    """Make click show `error` as one line (a JSON object when the logs are JSON) instead of
    its usage block; the exception keeps its type and exit code. `args` are the command line,
    when the error came before its options were read; `command` the command path, when the
    error does not know it; `fmt` the log format, when known. Returns `error`."""
    if not isinstance(error, click.exceptions.NoArgsIsHelpError):  # (that one *is* the help)
        fmt = fmt or _log_format_in(args or [])
        show = functools.partial(_show_one_line, error, fmt, command)
        error.show = show  # type: ignore[method-assign]
    return error


def _log_format_in(args: list[str]) -> str | None:
    """The value of --log-format among the global options at the start of `args`."""
    for i, arg in enumerate(args):
        if arg.startswith("--log-format="):
            return arg.partition("=")[2].lower()
        if arg == "--log-format" and i + 1 < len(args):
            return args[i + 1].lower()
    return None


def _show_one_line(
    error: click.ClickException, fmt: str | None, command: str | None, file: Any = None
) -> None:
    message = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    misplaced = _global_option_after_the_command(error, ctx)
    if misplaced:
        message = misplaced
    else:
        message += _input_written_another_way(error, ctx)
    fields: dict[str, Any] = {"exit_code": error.exit_code}
    see = ""
    command = ctx.command_path if ctx is not None else command
    if isinstance(error, click.UsageError) and command:
        fields["help"] = f"{command} --help"
        see = f" (see {fields['help']})"
    fmt = _log_format_of(ctx) or fmt or os.environ.get("ECLFLOW_LOG_FORMAT", "").lower()
    if fmt == "json":
        _emit(message, "error", "", True, fields)
    else:
        _emit(message + see, "error", "error: ", False, fields)


def _global_option_after_the_command(
    error: click.ClickException, ctx: click.Context | None
) -> str | None:
    """What to say when an option of `eclflow` itself (`-v`, `--log-level`, `--log-format`)
    was written after the command (`eclflow run FILE -v`): where it goes, not just "no such
    option". None for any other error."""
    if not isinstance(error, click.NoSuchOption) or ctx is None or ctx.parent is None:
        return None
    root = ctx.find_root()
    name = error.option_name
    param = next((p for p in root.command.params if name in (*p.opts, *p.secondary_opts)), None)
    if not isinstance(param, click.Option):
        return None
    prog = root.command_path
    written = name if param.is_flag else f"{name} {name.rsplit('-', 1)[-1].upper()}"
    return (
        f"{name} is an option of {prog} itself, not of {ctx.info_name}: "
        f"put it before the command ({prog} {written} {ctx.info_name} …)"
    )


def _input_written_another_way(error: click.ClickException, ctx: click.Context | None) -> str:
    """For a command that takes inputs as `-i KEY=VALUE` (`run`): a hint when one was written
    as an option of its own (`--topic x`) or as a bare `topic=x`, else ""."""
    if ctx is None or not any("-i" in p.opts for p in ctx.command.params):
        return ""
    if isinstance(error, click.NoSuchOption) and not error.possibilities:
        key = error.option_name.lstrip("-")
        if key.replace("_", "").replace("-", "").isalnum():
            return f" (an input of the workflow is given as -i {key}=VALUE)"
    message = error.format_message()
    if message.startswith("Got unexpected extra argument") and "=" in message:
        # (the words of the arguments, as click joins them: a value may hold spaces)
        words = message.partition("(")[2].rstrip(")").split()
        keys = [w.partition("=")[0] for w in words if "=" in w.strip("=")]
        given = " ".join(f"-i {k}=…" for k in keys)
        return f" (an input of the workflow is given as {given})" if keys else ""
    return ""


def _log_format_of(ctx: click.Context | None) -> str | None:
    """--log-format as far as the command line was read before an error."""
    root = ctx
    while ctx is not None:
        if ctx.obj and "log_format" in ctx.obj:
            return str(ctx.obj["log_format"])
        root, ctx = ctx, ctx.parent
    if root is not None and root.params.get("log_format"):
        return str(root.params["log_format"]).lower()
    return None


def _global(name: str) -> Any:
    """A global option (`eclflow -v --log-format … COMMAND`) seen from inside a command."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.obj and name in ctx.obj:
            return ctx.obj[name]
        ctx = ctx.parent
    return None


def json_logs() -> bool:
    """Whether stderr carries JSON log lines, which nothing else may interleave with."""
    return bool(_global("log_format") == "json")


# A run's failure as the command line prints it itself (the step's line, the `error:` line):
# with the logs as they come by default, the log lines that only say the same again are left
# out. A retry's warning stays (it says why, before the step's line); logs asked for (a level,
# a format, -v) keep every record.
_SAID_AGAIN = frozenset(
    {
        "llm_request_failed",
        "validation_failed",
        "step_failed",
        "step_failed_after_retries",
        "budget_exceeded",
    }
)


def leave_out_what_the_end_says(*, batch: bool = False) -> None:
    """For `run` and `resume` of one run: no log line for what its `error:` line says. In a
    batch, one line for each failed item (its run's failure), not four."""
    if not _global("default_logs"):
        return
    import logging

    from ..observe.logs import LOGGER_NAME

    # (a batch started again resumes every run a crash cut short: their timelines say so)
    left_out = _SAID_AGAIN | ({"workflow_interrupted"} if batch else {"workflow_failed"})

    def said_at_the_end(record: logging.LogRecord) -> bool:
        return getattr(record, "kind", None) not in left_out

    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.addFilter(said_at_the_end)


def exit_code_for(error: BaseException) -> int:
    """2 when what the user typed is wrong (bad input or configuration, a run or step that
    does not exist, a database that cannot be opened), else 1."""
    from ..errors import ConfigError, InvalidInput, NotFound, StoreUnavailable

    if isinstance(error, InvalidInput | ConfigError | NotFound | StoreUnavailable):
        return EXIT_USAGE
    return EXIT_FAILED


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # (no file descriptor behind sys.stdout)
        pass


def handle_errors(fn: F) -> F:
    """Turn every error a user can cause into one line and an exit code; tracebacks only
    with --verbose."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import EclflowError, WorkflowInvalid

        try:
            return fn(*args, **kwargs)
        except WorkflowInvalid as e:
            for d in e.diagnostics:
                click.echo(str(d), err=True)
            sys.exit(EXIT_FAILED)
        except EclflowError as e:
            if _verbose():
                raise
            fail(str(e), exit_code_for(e))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(interrupted_exit_code())
        except BrokenPipeError:
            # whoever read stdout has gone (`eclflow … | head`): stop without a word, as other
            # tools do, with the status a shell gives a process SIGPIPE ended (128 + 13)
            _stdout_to_devnull()
            sys.exit(141)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:
            if _verbose():
                raise
            fail(f"{type(e).__name__}: {e} (run with --verbose for the traceback)")

    return wrapper  # type: ignore[return-value]


def _verbose() -> bool:
    return bool(_global("verbose"))


def not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An option given as '' (an unset variable in a script, say) is a mistake, not a default."""
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return value


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        "db",
        metavar="URL",
        envvar="ECLFLOW_DATABASE_URL",
        callback=not_empty,
        help="Database URL (sqlite:///file.db, postgresql://…). "
        "Default: ECLFLOW_DATABASE_URL, else a SQLite file in your data directory.",
    )(fn)


ENGINE_ENV = "ECLFLOW_ENGINE"


def restate_options(what: str) -> Callable[[F], F]:
    """--engine (local or restate; `what` Restate does with the run), --restate-url and
    --restate-admin-url."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--restate-admin-url",
            metavar="URL",
            help="Restate's admin API, which tells a paused run (default: "
            "ECLFLOW_RESTATE_ADMIN_URL, else port 9070 of the ingress's host).",
        )(fn)
        fn = click.option(
            "--restate-url",
            metavar="URL",
            help="Restate's ingress (default: ECLFLOW_RESTATE_URL, else http://127.0.0.1:8080).",
        )(fn)
        return click.option(
            "--engine",
            type=click.Choice(["local", "restate"]),
            default="local",
            envvar=ENGINE_ENV,
            help=f"restate: {what}. Default: ECLFLOW_ENGINE, else local.",
        )(fn)

    return decorate


def resume_command(run_id: str, *args: str) -> str:
    """`eclflow resume SHORT_ID …`, with the --db this command was given (without it, the
    command would look in the default database; ECLFLOW_DATABASE_URL finds the same one), and
    `--engine local` when ECLFLOW_ENGINE would send a bare `resume` to Restate."""
    import os
    import shlex

    db = _given_db()
    parts = ["eclflow resume", run_id[:8], *args]
    if os.environ.get(ENGINE_ENV, "local") != "local":
        parts.append("--engine local")
    if db:
        from ..store.db import parse_url

        try:
            shown = parse_url(db).url
        except Exception:
            shown = db
        # a password is not echoed: then the command says which --db, not its text
        parts.append(f"--db {shlex.quote(shown)}" if shown == db else "--db <the same URL>")
    return "`" + " ".join(parts) + "`"


def _given_db() -> str | None:
    """The --db given on this command line (not from ECLFLOW_DATABASE_URL), if any."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.get_parameter_source("db") == click.core.ParameterSource.COMMANDLINE:
            return ctx.params.get("db")
        ctx = ctx.parent
    return None


def open_store(db: str | None, *, existing: bool = False) -> Any:
    """The store at `db` (--db or ECLFLOW_DATABASE_URL), else the default file. `existing`:
    for commands that only read, a --db given on the command line must hold a store already
    (a typo is an error, not a new empty database)."""
    from ..store import open_store as _open

    return _open(db, create=not (existing and db is not None and _given_db() == db))
