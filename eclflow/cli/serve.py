"""`eclflow serve`: a Restate worker that runs any eclflow workflow (the `restate` extra)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from . import cli
from ._common import handle_errors


def _duration(value: str, option: str) -> timedelta:
    from ..spec.loader import parse_duration

    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError):
        raise click.BadParameter(
            f"expected a duration such as 30s, 10m or 1h, got {value!r}", param_hint=option
        ) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive", param_hint=option)
    return timedelta(seconds=seconds)


@cli.command("serve")
@click.option(
    "--bind",
    default="127.0.0.1:9080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where Restate reaches this worker (HTTP/2 cleartext). Several workers may share it.",
)
@click.option(
    "--register",
    "register_with",
    is_flag=False,
    flag_value="http://127.0.0.1:9070",
    default=None,
    metavar="ADMIN_URL",
    help="Register this worker with Restate's admin API once it listens "
    "(alone: http://127.0.0.1:9070).",
)
@click.option(
    "--advertise",
    metavar="URL",
    help="The URL Restate calls, when not http://BIND (a load balancer in front of workers).",
)
@click.option(
    "--db",
    "db",
    metavar="URL",
    envvar="ECLFLOW_DATABASE_URL",
    help="Also write runs and step attempts to this eclflow database (point every worker at "
    "the same PostgreSQL). Default: ECLFLOW_DATABASE_URL, else Restate only.",
)
@click.option(
    "--model",
    "-m",
    metavar="MODEL",
    help="Model for runs whose request and workflow name none.",
)
@click.option(
    "--mock-responses",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Replies for `mock/…` models (a script shared by every run this worker executes).",
)
@click.option(
    "--inactivity-timeout",
    default="30m",
    show_default=True,
    metavar="DURATION",
    help="How long a step may run without journaling before Restate asks the worker to stop "
    "(Restate's own default, 1m, would cut long model calls).",
)
@click.option(
    "--abort-timeout",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="How long after that Restate aborts the attempt and retries it.",
)
@handle_errors
def serve_cmd(
    bind: str,
    register_with: str | None,
    advertise: str | None,
    db: str | None,
    model: str | None,
    mock_responses: Path | None,
    inactivity_timeout: str,
    abort_timeout: str,
) -> None:
    """Serve eclflow workflows to a Restate server until stopped (SIGTERM or Ctrl-C).

    Runs submitted with `eclflow run FILE --engine restate` execute on whichever worker
    Restate picks; each step's result is journaled by Restate, so a worker that dies is
    replaced without calling a finished step again.
    """
    import asyncio

    from ..restate import require

    for module in ("restate", "hypercorn"):
        require(module)
    from ..restate.service import Worker, WorkerSettings
    from ..restate.worker import serve
    from .run import _quiet_stamina

    settings = WorkerSettings(
        db=db or None,
        model=model,
        mock_responses=mock_responses,
        inactivity_timeout=_duration(inactivity_timeout, "--inactivity-timeout"),
        abort_timeout=_duration(abort_timeout, "--abort-timeout"),
    )
    worker = Worker(settings)
    worker.open()
    _quiet_stamina()

    def ready(uri: str, deployment: str | None) -> None:
        where = f" · registered with {register_with}" if register_with else ""
        store = " · store " + _redact(db) if db else ""
        click.echo(f"eclflow worker serving {uri}{where}{store}", err=True)

    try:
        asyncio.run(
            serve(worker, bind, register_with=register_with, advertise=advertise, on_ready=ready)
        )
    finally:
        worker.close()


def _redact(url: Any) -> str:
    """A database URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return text
