"""`eclflow logs RUN_ID`: a run's timeline from the store, also while it runs elsewhere."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from ..errors import PersistenceError
from ..observe.logs import TIME_FIELDS, aware_time, for_people, shorten
from ..store.owner import shown_state
from ..store.records import TERMINAL_STATES
from . import cli
from ._common import (
    db_option,
    handle_errors,
    json_text,
    open_store,
    resume_command,
    safe_text,
    say,
)

# seconds before each new read, with --follow, after the connection was lost
_RECONNECT = (0.3, 1.0, 3.0, 10.0)
_SKIP_FIELDS = ("level", "message", "ts", "step", "run_id", "workflow_id", "kind")


@cli.command("logs")
@click.argument("run_id")
@db_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option(
    "--level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="debug",
    show_default=True,
    help="Hide events below this level.",
)
@handle_errors
def logs_cmd(run_id: str, db: str | None, follow: bool, as_json: bool, level: str) -> None:
    """Show the events of RUN_ID (any unique prefix): steps, attempts, retries, model calls."""
    from ..store.db import connection_lost

    order = ["debug", "info", "warning", "error"]
    floor = order.index(level)
    store = open_store(db, existing=True)
    try:
        run = store.runs.find(run_id)
        last_id: int | None = None

        def print_new() -> None:
            nonlocal last_id
            for event in store.events.for_run(run.id, after_id=last_id):
                last_id = event.id
                data = dict(event.fields or {})
                lvl = str(data.get("level", "info"))
                if lvl in order and order.index(lvl) < floor:
                    continue
                click.echo(
                    _json_line(run.id, event, data)
                    if as_json
                    else safe_text(_text_line(event, data)),
                    color=True,  # (data: kept whole in a file)
                )

        lost = 0  # reads in a row that found the connection lost
        while True:
            try:
                print_new()
                if not follow:
                    break
                now = store.runs.get(run.id)
            except PersistenceError as e:
                # a server restart, a failover, a killed backend: the run goes on, and so does
                # following it, on a new connection (what was printed is not printed again)
                if not follow or not connection_lost(e.__cause__) or lost == len(_RECONNECT):
                    raise
                time.sleep(_RECONNECT[lost])
                lost += 1
                continue
            lost = 0
            gone = shown_state(now.state, now.metadata or {}) == "interrupted"
            if now.state in TERMINAL_STATES or now.state == "paused" or gone:
                # one last read: the run may have written its final events just now (its
                # --level applies to them too)
                print_new()
                if gone:  # nothing will write to it again: stop following
                    pid = now.metadata.get("pid")
                    how = (
                        f"process {pid} stopped it"
                        if now.metadata.get("released")
                        else f"process {pid} that ran it has ended"
                    )
                    say(
                        f"run {run.id[:8]} was interrupted: {how}; "
                        f"{resume_command(run.id)} continues it",
                        "warning",
                        run_id=run.id,
                    )
                break
            time.sleep(0.3)
    finally:
        store.close()


def _ts(event: Any, data: dict[str, Any]) -> float:
    ts = data.get("ts")
    if isinstance(ts, int | float):
        return float(ts)
    value = getattr(event, "ts", None)
    if isinstance(value, datetime):
        return value.timestamp()
    return time.time()


def _json_line(run_id: str, event: Any, data: dict[str, Any]) -> str:
    out = {
        "id": event.id,
        "ts": datetime.fromtimestamp(_ts(event, data)).astimezone().isoformat(),
        "run_id": run_id,
        "kind": event.kind,
        "step_id": event.step_id or data.get("step_id"),
        **{k: v for k, v in data.items() if k not in ("ts", "step_id", "run_id")},
    }
    for name in TIME_FIELDS:  # (in the zone `ts` is in, whoever's zone wrote them)
        if name in out:
            out[name] = _local_iso(out[name])
    return json_text(out)


def _local_iso(value: Any) -> Any:
    """An ISO 8601 time with its offset as `ts` is written: ISO 8601 in the local zone."""
    local = aware_time(value)
    return value if local is None else local.isoformat()


def _text_line(event: Any, data: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(_ts(event, data)).strftime("%H:%M:%S.%f")[:-3]
    lvl = str(data.get("level", "info")).upper()
    shown = for_people({"step_id": event.step_id, **data} if event.step_id else data)
    head = f"{when} {lvl:<7} {data.get('message', event.kind)}"
    if shown.get("step"):  # (its journal key, `critique#2`, as the run's lines say)
        head += f"  step={shown['step']}"
    rest = " ".join(
        f"{k}={shorten(v, 100)}"
        for k, v in shown.items()
        if k not in _SKIP_FIELDS and v is not None
    )
    return f"{head} {rest}".rstrip()
