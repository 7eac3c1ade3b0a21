"""Run history: `eclflow runs`, `eclflow status`, `eclflow show`, `eclflow prune`.

Every RUN_ID accepts any unique prefix (at least 4 characters) of a run id.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from . import cli
from ._common import (
    db_option,
    fail,
    handle_errors,
    json_or_format,
    json_text,
    open_store,
    restate_options,
    resume_command,
    safe_text,
    say,
    stdout_console,
)

_STATES = ("pending", "running", "paused", "completed", "failed", "cancelled")
# `interrupted` is not stored: a run still `running` whose process has ended (Ctrl-C, kill -9)
_SHOWN_STATES = (*_STATES, "interrupted")
# `retrying`: a run Restate retries (runs --engine restate); a local run is never retried whole
_LISTED_STATES = (*_SHOWN_STATES, "retrying")
_STYLE = {
    "completed": "green",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "red",
    "running": "yellow",
    "interrupted": "yellow",
    "retrying": "yellow",
    "paused": "cyan",
    "pending": "dim",
    "skipped": "dim",
}
_ICON = {
    "completed": "✓",
    "failed": "✗",
    "cancelled": "✗",
    "running": "⏳",
    "interrupted": "⚠",
    "paused": "⏸",
    "pending": "…",
}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# the largest LIMIT a database takes (a 64-bit integer): a larger -n means every run too
_MOST_ROWS = 2**63 - 1


# --- eclflow runs --------------------------------------------------------------------------------


@cli.command("runs")
@click.option(
    "--state",
    type=click.Choice(_LISTED_STATES),
    help="Only runs in this state (interrupted: running, but their process has ended; "
    "retrying: with --engine restate, a run Restate retries).",
)
@click.option("--workflow", "workflow_id", metavar="ID", help="Only runs of this workflow id.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    callback=lambda ctx, param, n: min(n, _MOST_ROWS),
    help="At most N.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of runs.")
@click.option(
    "--stats",
    is_flag=True,
    help="Totals instead: runs, calls, tokens and dollars by workflow and by model (of one "
    "workflow with --workflow; --state and -n do not go with it).",
)
@restate_options("list the runs Restate keeps (a finished one for a day by default)")
@db_option
@handle_errors
def runs_cmd(
    state: str | None,
    workflow_id: str | None,
    limit: int,
    as_json: bool,
    stats: bool,
    engine: str,
    restate_url: str | None,
    restate_admin_url: str | None,
    db: str | None,
) -> None:
    """List runs, newest first."""
    ctx = click.get_current_context()
    # what only the database has: ECLFLOW_ENGINE=restate (set for `run` and `status`) does not
    # refuse `runs --stats`, which read the database before `runs` went to Restate
    from_env = ctx.get_parameter_source("engine") != click.core.ParameterSource.COMMANDLINE
    if engine == "restate" and (stats or state == "interrupted") and from_env:
        engine = "local"
    if engine == "restate":
        if stats or state == "interrupted":
            raise click.UsageError(
                "runs --engine restate takes no --stats or --state interrupted (Restate runs "
                "are never interrupted: it continues them itself)"
            )
        _restate_runs(restate_url, restate_admin_url, limit, state, workflow_id, as_json)
        return
    if state == "retrying":
        raise click.UsageError(
            "--state retrying goes with --engine restate (Restate retries a run; a local run "
            "is never retried whole: `--state interrupted` lists those whose process ended)"
        )
    if stats:
        given = [
            flag
            for name, flag in (("state", "--state"), ("limit", "-n"))
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:  # (they were ignored: totals of every run looked like totals of a few)
            raise click.UsageError(
                f"--stats totals every run (of --workflow ID, if given): {' and '.join(given)} "
                f"{'does' if len(given) == 1 else 'do'} not go with it"
            )
        _totals(db, as_json, workflow_id)
        return
    with open_store(db, existing=True) as store:
        # (interrupted: stored running or pending, its process gone; the store tells them)
        runs = store.runs.list(state=state, definition_id=workflow_id, limit=limit)
        total = len(runs)
        if total == limit and not as_json:  # (how many more there are, said below)
            total = store.runs.count(state=state, definition_id=workflow_id)
        by_run = store.steps.stats_many(r.id for r in runs)
        # a --workflow no run has: a typo, or a name, not the file's `id:`, more often than not
        others = (
            [t["workflow"] for t in store.steps.totals("workflow")]
            if workflow_id and not runs and not store.runs.count(definition_id=workflow_id)
            else []
        )
    rows = [_run_summary(r, by_run.get(r.id)) for r in runs]
    if as_json:
        shown = [{k: v for k, v in r.items() if k != "_run"} for r in rows]
        click.echo(json_text(shown))
        return
    if not rows:
        click.echo("No runs.")
        if others:
            import difflib

            close = difflib.get_close_matches(workflow_id or "", others, n=1)
            known = sorted(others)
            listed = ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
            say(
                f"no run of workflow '{workflow_id}' at all; did you mean '{close[0]}'? "
                "(--workflow takes the file's `id:`)"
                if close
                else f"no run of workflow '{workflow_id}' at all (--workflow takes the file's "
                f"`id:`; workflows with runs: {listed})"
            )
        return
    from rich.table import Table

    cells = {
        "run": [r["id"][:8] for r in rows],
        "workflow": [r["workflow_id"] for r in rows],
        "state": [shown_state(r["_run"]) for r in rows],
        "steps": [str(r["steps"]) for r in rows],
        "tokens": [str(r["tokens"]) for r in rows],
        "cost": [f"${r['cost']:.4f}" for r in rows],
        "started": [_local(r["created_at"]) for r in rows],
        "duration": [_duration(r["duration_ms"]) for r in rows],
    }
    console = stdout_console()
    # on a narrow terminal whole columns give way, the least useful first, rather than every
    # cell being cut (an id cut to `9…` is of no use)
    width = {name: max(len(name), *(len(c) for c in column)) for name, column in cells.items()}
    for name in ("duration", "started", "cost", "tokens", "steps"):
        if sum(width.values()) + 2 * (len(width) - 1) <= console.width:
            break
        del width[name]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in width:
        justify = "right" if name in ("steps", "tokens", "cost", "duration") else "left"
        table.add_column(name, justify=justify, no_wrap=True, min_width=min(width[name], 11))  # type: ignore[arg-type]
    for i in range(len(rows)):
        table.add_row(*(_styled(cells[n][i]) if n == "state" else cells[n][i] for n in width))
    console.print(table)
    if total > len(rows):  # (on stderr: what reads the table gets the table only)
        say(
            f"the newest {len(rows)} of {total} runs; -n {total} lists them all",
            shown=len(rows),
            total=total,
        )


def _restate_runs(
    restate_url: str | None,
    admin_url: str | None,
    limit: int,
    state: str | None,
    workflow_id: str | None,
    as_json: bool,
) -> None:
    from ..restate.client import runs

    rows = runs(restate_url, admin_url, limit=limit, state=state, workflow_id=workflow_id)
    if as_json:
        click.echo(json_text(rows))
        return
    if not rows:
        click.echo("No runs.")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("run", "workflow", "state", "steps", "tokens", "started"):
        justify = "right" if name in ("steps", "tokens") else "left"
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["run_id"],  # (whole: Restate knows no prefixes)
            r["workflow"] or "?",
            _styled(r["state"]),
            str(r["steps"]),
            str(r["tokens"]),
            _local(_parse_time(r["started_at"])),
        )
    stdout_console().print(table)


def _parse_time(text: Any) -> datetime | None:
    """A time as the admin API writes it (`2026-12-06T16:27:02.438Z`)."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _totals(db: str | None, as_json: bool, workflow_id: str | None) -> None:
    with open_store(db, existing=True) as store:
        groups = {by: store.steps.totals(by, workflow_id) for by in ("workflow", "model")}
    if as_json:
        click.echo(json_text(groups))
        return
    from rich.table import Table

    console = stdout_console()
    for by, rows in groups.items():
        table = Table(title=f"by {by}", box=None, pad_edge=False, header_style="bold")
        for name in (by, "runs", "calls", "tokens in", "tokens out", "cost"):
            table.add_column(name, justify="left" if name == by else "right", no_wrap=True)
        for r in rows:
            table.add_row(
                str(r[by]),
                str(r["runs"]),
                str(r["calls"]),
                str(r["tokens_in"]),
                str(r["tokens_out"]),
                f"${r['cost']:.4f}",
            )
        if not rows:
            table.add_row("(no runs)", "", "", "", "", "")
        console.print(table)


def _run_summary(run: Any, stats: Any) -> dict[str, Any]:
    meta = run.metadata or {}
    return {
        # the names `run --json` uses, then the store's own
        "run_id": run.id,
        "workflow": run.definition_id,
        "status": run.state,
        "started_at": run.created_at,
        "revisions": sum((meta.get("revisions") or {}).values()),
        "model": meta.get("model"),
        "id": run.id,
        "workflow_id": run.definition_id,
        "workflow_name": run.definition_name,
        "state": run.state,
        "interrupted": shown_state(run) == "interrupted",
        "error": run.error,
        "failed_step": run.failed_step,
        "steps": stats.steps if stats else 0,
        "attempts": stats.count - stats.skipped if stats else 0,
        "tokens": stats.tokens if stats else 0,
        "cost": stats.cost if stats else 0.0,
        "created_at": run.created_at,
        "completed_at": run.completed_at,
        "duration_ms": _run_duration_ms(run),
        "_run": run,
    }


def shown_state(run: Any) -> str:
    """The run's state as `runs` and `status` show it (see store.owner.shown_state)."""
    from ..store.owner import shown_state as shown

    return shown(str(run.state), run.metadata or {})


def _run_duration_ms(run: Any) -> int | None:
    """How long the run took: its own measure when it has one, else start to end."""
    meta = run.metadata or {}
    measured = meta.get("duration_ms")
    # a resumed run measured its last part only: start to end says more
    resumed = bool(meta.get("resumed"))
    if isinstance(measured, int | float) and run.completed_at is not None and not resumed:
        return int(measured)
    if run.completed_at is None:
        return None
    return int((run.completed_at - run.created_at).total_seconds() * 1000)


# --- eclflow status ------------------------------------------------------------------------------


@cli.command("status")
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@restate_options("ask Restate (give the full run id)")
@click.option("--json", "as_json", is_flag=True, help="The same as -o json.")
@db_option
@handle_errors
def status_cmd(
    run_id: str,
    fmt: str,
    engine: str,
    restate_url: str | None,
    restate_admin_url: str | None,
    as_json: bool,
    db: str | None,
) -> None:
    """The state of RUN_ID (any unique prefix) and of each of its steps."""
    fmt = json_or_format(as_json, fmt, "fmt")
    if engine == "restate":
        from ..restate.client import status

        st = status(run_id, restate_url, restate_admin_url)
        click.echo(json_text(st.to_dict(), indent=2) if fmt == "json" else st.to_text())
        return
    with open_store(db, existing=True) as store:
        run = store.runs.find(run_id)
        rows = store.steps.for_run(run.id)
    keys = _by_key(rows)
    tokens = sum(r.tokens for r in rows)
    cost = sum(r.cost or 0.0 for r in rows)
    if fmt == "json":
        data = {
            **_run_fields(run),
            "interrupted": shown_state(run) == "interrupted",
            "updated_at": run.updated_at,
            "completed_at": run.completed_at,
            "duration_ms": _run_duration_ms(run),
            "tokens": tokens,
            "cost": cost,
            "input": run.input,
            "output": run.output,
            "steps": keys,
        }
        click.echo(json_text(data, indent=2))
        return
    shown = shown_state(run)
    lines = [
        ("Workflow ID", run.id),
        ("Workflow", _workflow_label(run)),
        ("Status", f"{_ICON.get(shown, '')} {shown.capitalize()}".strip()),
        ("Started", _local(run.created_at)),
    ]
    if run.completed_at is not None:
        lines.append(("Completed", _local(run.completed_at)))
        lines.append(("Duration", _duration(_run_duration_ms(run))))
    lines.append(("Total Steps", str(len([k for k in keys if k["state"] != "skipped"]))))
    lines.append(("Tokens", f"{tokens} (${cost:.4f})"))
    if shown in ("running", "interrupted"):
        current = next((r for r in reversed(rows) if r.state == "running"), None)
        if current is not None:
            lines.append(("Current Step", current.key))
            lines.append(("Attempt", str(current.attempt)))
    if run.failed_step:
        lines.append(("Failed Step", run.failed_step))
    if run.error:
        lines.append(("Error", run.error))
    if shown == "paused":
        before = (run.metadata or {}).get("paused_at")
        where = f" before step {before}" if before else ""
        lines.append(("Note", f"paused{where}, as asked; {resume_command(run.id)} continues it"))
    if shown == "interrupted":
        lines.append(("Note", _interrupted_note(run)))
    width = max(len(k) for k, _ in lines) + 1
    for label, value in lines:
        click.echo(safe_text(f"{label + ':':<{width}} {value}"), color=True)
    if run.state == "completed" and run.output is not None:
        shown_output = json.dumps(run.output, indent=2, ensure_ascii=False, default=str)
        lines_out = "\n".join("  " + line for line in shown_output.splitlines())
        click.echo(safe_text("Output:\n" + lines_out), color=True)
    if not keys:
        return
    click.echo()
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("step", "state", "attempts", "duration", "tokens"):
        table.add_column(
            name,
            justify="right" if name != "step" and name != "state" else "left",
            min_width=min(max((len(k["key"]) for k in keys), default=4), 24)
            if name == "step"
            else None,
        )
    for k in keys:
        state = _styled(
            "interrupted" if shown == "interrupted" and k["state"] == "running" else k["state"]
        )
        if k["outcome"] == "needs_revision":
            state += " (revise)"
        table.add_row(
            k["key"], state, str(k["attempts"]), _duration(k["duration_ms"]), str(k["tokens"])
        )
    stdout_console().print(table)


def _workflow_label(run: Any) -> str:
    name = run.definition_name
    return (
        f"{run.definition_id} ({name})" if name and name != run.definition_id else run.definition_id
    )


def _by_key(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """One entry per journal key, in the order the keys started; state of the last attempt."""
    keys: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = keys.setdefault(
            r.key,
            {
                "key": r.key,
                "step_id": r.step_id,
                "iteration": r.iteration,
                "state": r.state,
                "outcome": r.outcome,
                "attempts": 0,
                "duration_ms": 0,
                "tokens": 0,
                "cost": 0.0,
                "error": None,
                "_last": -1,
            },
        )
        if r.state != "skipped":
            k["attempts"] += 1
        k["duration_ms"] += r.duration_ms or 0
        k["tokens"] += r.tokens
        k["cost"] += r.cost or 0.0
        if r.attempt >= k["_last"]:
            k["_last"] = r.attempt
            k["state"], k["outcome"], k["error"] = r.state, r.outcome, r.error
    for k in keys.values():
        del k["_last"]
    return list(keys.values())


# --- eclflow show --------------------------------------------------------------------------------


@cli.command("show")
@click.argument("run_id")
@click.option(
    "--step",
    "step",
    metavar="STEP",
    help="Only this step's executions: a step id (`critique`) or a journal key (`critique#2`).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@db_option
@handle_errors
def show_cmd(run_id: str, step: str | None, as_json: bool, db: str | None) -> None:
    """Everything recorded about RUN_ID (any unique prefix): input, output, and every step
    execution with its rendered input, output, feedback, error and traces."""
    with open_store(db, existing=True) as store:
        run = store.runs.find(run_id)
        rows = store.steps.for_run(run.id)
    if step is not None:
        chosen = [r for r in rows if step in (r.step_id, r.key)]
        if not chosen:
            from ..errors import StepNotFound

            known = sorted({r.step_id for r in rows} | {r.key for r in rows})
            hint = f" (this run has: {', '.join(known)})" if known else " (this run has no steps)"
            raise StepNotFound(f"{step}{hint}")
        rows = chosen
    executions = [_execution(r) for r in rows]
    if as_json:
        data: dict[str, Any] = {"executions": executions}
        if step is None:
            data = {
                **_run_fields(run),
                "interrupted": shown_state(run) == "interrupted",
                "completed_at": run.completed_at,
                "metadata": run.metadata,
                "input": run.input,
                "output": run.output,
                "executions": executions,
            }
        click.echo(json_text(data, indent=2))
        return
    out: list[str] = []
    if step is None:
        shown = shown_state(run)
        out.append(f"Run {run.id} · {run.definition_id} · {shown}")
        if shown == "interrupted":
            out.append(f"note: {_interrupted_note(run)}")
        if run.error:
            where = f" at step {run.failed_step}" if run.failed_step else ""
            out.append(f"error{where}: {run.error}")
        out += ["", "== input", _pretty(run.input), "", "== output", _pretty(run.output)]
    for e in executions:
        out += ["", _execution_heading(e)]
        if e["error"]:
            out.append(f"error: {e['error']}")
        out += ["-- input", _pretty(e["input"])]
        if e["prompt"]:
            out += ["-- prompt", _messages(e["prompt"])]
        if e["state"] != "skipped":
            out += ["-- output", _pretty(e["output"])]
        if e["feedback"]:
            out += ["-- feedback", str(e["feedback"])]
        if e["traces"]:
            out.append("-- traces")
            out += [_trace(t) for t in e["traces"]]
    click.echo(safe_text("\n".join(out).lstrip("\n")), color=True)


def _interrupted_note(run: Any) -> str:
    """Why a run shows as interrupted, and the command that continues it."""
    meta = run.metadata or {}
    how = (
        "was stopped (cancelled) by process {}"
        if meta.get("released")
        else "was running in process {}, which has ended"
    ).format(meta.get("pid"))
    return f"it {how}; {resume_command(run.id)} continues it"


def _run_fields(run: Any) -> dict[str, Any]:
    """What `status` and `show` both print of a run, as JSON."""
    return {
        "id": run.id,
        "workflow_id": run.definition_id,
        "workflow_name": run.definition_name,
        "state": run.state,
        "error": run.error,
        "failed_step": run.failed_step,
        "created_at": run.created_at,
    }


def _execution(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "key": r.key,
        "step_id": r.step_id,
        "iteration": r.iteration,
        "attempt": r.attempt,
        "state": r.state,
        "outcome": r.outcome,
        "model": r.model,
        "started_at": r.started_at,
        "completed_at": r.completed_at,
        "duration_ms": r.duration_ms,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "cost": r.cost,
        "input": r.input,
        "prompt": r.prompt,
        "output": r.output,
        "feedback": r.feedback,
        "error": r.error,
        "retryable": r.retryable,
        "traces": r.traces,
    }


def _execution_heading(e: Mapping[str, Any]) -> str:
    parts = [f"== {e['key']}", f"attempt {e['attempt']}" if e["attempt"] else "", e["state"]]
    if e["outcome"] == "needs_revision":
        parts[-1] += " (revise)"
    origin = next((t["reused_from"] for t in e["traces"] or () if "reused_from" in t), None)
    if origin:  # (a `run --from` result, neither called nor paid for in this run)
        parts.append(f"reused from run {str(origin)[:8]}")
    if e["model"]:
        parts.append(e["model"])
    if e["duration_ms"] is not None and e["state"] != "skipped" and not origin:
        parts.append(_duration(e["duration_ms"]))
    if e["tokens_in"] or e["tokens_out"]:
        parts.append(f"{(e['tokens_in'] or 0) + (e['tokens_out'] or 0)} tokens")
    return " · ".join(p for p in parts if p)


def _pretty(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _messages(prompt: Any) -> str:
    if isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
        return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in prompt)
    return _pretty(prompt)


def _trace(t: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in t.items() if k not in ("ts", "level", "message")}
    extra = " " + " ".join(f"{k}={_short(v)}" for k, v in rest.items()) if rest else ""
    when = str(t.get("ts", ""))[11:23]
    return f"{when} {str(t.get('level', 'info')).upper():<5} {t.get('message', '')}{extra}".strip()


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- eclflow prune -------------------------------------------------------------------------------


_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNIT_NAMES = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}
_OLDEST = timedelta(days=365 * 1000)  # (older dates overflow the database's arithmetic)


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` (a bare number is days; `0` means every run). Units
    are lowercase: `M` is months to some tools and minutes to others, so it is refused."""
    m = _AGE.fullmatch(text)
    if m is None:
        raise click.BadParameter(
            f"{text!r} is not an age: use e.g. 30d, 12h, 90m (minutes), 45s, 2w (units lowercase)",
            param_hint="--older-than",
        )
    try:
        age = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "d"])
    except OverflowError:
        age = _OLDEST
    if age >= _OLDEST:
        raise click.BadParameter(
            f"{text!r} is longer than any run can be old", param_hint="--older-than"
        )
    return age


def _age_in_words(text: str) -> str:
    """`90m` as `90 minutes`, for the question before deleting."""
    m = _AGE.fullmatch(text)
    if m is None:
        return text
    number, unit = m.group(1), _UNIT_NAMES[m.group(2) or "d"]
    return f"{number} {unit}{'' if number == '1' else 's'}"


@cli.command("prune")
@click.option(
    "--older-than",
    "older_than",
    default="30d",
    show_default=True,
    metavar="AGE",
    help="Delete runs started more than AGE ago: 30d, 12h, 90m, 45s, 2w (units lowercase: 90m "
    "is minutes; a bare number is days; 0 is every run).",
)
@click.option(
    "--state",
    type=click.Choice(_SHOWN_STATES),
    help="Only runs in this state (interrupted: running, but their process has ended).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
@handle_errors
def prune_cmd(older_than: str, state: str | None, yes: bool, db: str | None) -> None:
    """Delete old runs with their steps, artifacts and events; print how many."""
    age = parse_age(older_than)
    # interrupted runs are stored running (or pending), and a live one is never deleted
    states: tuple[str | None, ...] = ("running", "pending") if state == "interrupted" else (state,)
    with open_store(db, existing=True) as store:
        # a run going on is never deleted under its feet (decided again when deleting)
        live = [r for s in states for r in store.runs.live(age, s)]
        count = store.runs.count(state=state, older_than=age) - (len(live) if not state else 0)
        if state in ("running", "pending"):
            # those going on are kept; those whose process ended are `interrupted`, as `runs`
            # shows them, and deleted only when asked for by that name
            count = 0
        if count <= 0:
            click.echo("Deleted 0 runs." + (f" (kept {len(live)} still running)" if live else ""))
            return
        if not yes:
            what = f"{count} {state + ' ' if state else ''}run{'s' if count != 1 else ''}"
            when = f" started more than {_age_in_words(older_than)} ago" if age else ""
            try:
                sure = click.confirm(f"Delete {what}{when}?", default=False, err=True)
            except click.Abort:  # stdin at its end (a script, CI): no answer
                sure = False
            if not sure:
                if not sys.stdin.isatty():  # (a terminal echoed the answer and its newline)
                    click.echo(err=True)
                fail("nothing deleted (--yes deletes without asking)", 1)
        deleted = kept = 0
        for s in states:
            d, k = store.runs.prune(age, state=s)
            deleted, kept = deleted + d, kept + k
    still = f" (kept {kept} still running)" if kept else ""
    click.echo(f"Deleted {deleted} run{'s' if deleted != 1 else ''}.{still}")


# --- shared ---------------------------------------------------------------------------------------


def _styled(state: str) -> str:
    style = _STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _local(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
