"""`eclflow run FILE --inputs items.jsonl`: many runs, a progress bar, JSON lines in order."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import aclosing, redirect_stdout
from pathlib import Path
from typing import Any

import click

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    interrupted_exit_code,
    json_logs,
    json_text,
    leave_out_what_the_end_says,
    say,
    stopping_lock_waits,
)


def read_items(path: Path, defaults: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """One JSON object a line (blank lines and `#` comments skipped) from `path`, or stdin
    when it is `-`, each with its line number; -i values are defaults."""
    items = []
    from_stdin, path = str(path) == "-", _shown(path)
    try:
        data = sys.stdin.buffer.read() if from_stdin else path.read_bytes()
    except OSError as e:
        fail(f"{path}: cannot read: {e.strerror or e}", EXIT_USAGE)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        fail(f"{path}:{line}:{col}: not UTF-8 text (byte {data[e.start]:#04x})", EXIT_USAGE)
    # (a BOM, as some editors write); JSON Lines ends a line at \n only: U+2028 and U+0085,
    # which splitlines() also breaks at, are text inside a JSON string
    lines = text.removeprefix("\ufeff").split("\n")
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            value = json.loads(line, parse_constant=_not_json)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}:{e.colno}: not valid JSON: {e.msg}", EXIT_USAGE)
        except ValueError as e:
            fail(f"{path}:{n}: not valid JSON: {e}", EXIT_USAGE)
        except RecursionError:
            fail(f"{path}:{n}: its values nest too deep", EXIT_USAGE)
        if not isinstance(value, dict):
            fail(f"{path}:{n}:1: each line must be a JSON object, not {_json_type(value)}", 2)
        items.append((n, {**defaults, **value}))
    if not items:
        fail(f"{path}: no input lines", EXIT_USAGE)
    return items


def _not_json(name: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON has not (and no schema expects)."""
    raise ValueError(f"{name} is not a JSON value")


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: null, array, string, number, boolean."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def _shown(path: Path) -> Path:
    """How messages name the items' file: `<stdin>` for `-`."""
    return Path("<stdin>") if str(path) == "-" else path


def run_batch_command(
    workflow: Any,
    defaults: dict[str, Any],
    inputs_file: Path,
    *,
    concurrency: int,
    model: str | None,
    mock_responses: Path | None,
    db: str | None,
    journal: bool,
    providers: Any = None,
    budget: Any,
    as_json: bool,
    quiet: bool,
) -> None:
    from ..engine.batch import BatchProgress, _iter_batch, one_call_at_a_time
    from ..engine.runner import (
        _limits,
        as_budget,
        check_env,
        check_models,
        default_model,
        validate_input,
        warn_unplayed_keys,
    )
    from ..errors import InvalidInput, JournalRefused
    from ..graph.plan import compile_plan
    from ..llm import Providers, load_script
    from ..llm.own import own_providers

    numbered = read_items(inputs_file, defaults)
    inputs_file = _shown(inputs_file)
    bad = []
    for line, item in numbered:
        try:
            validate_input(workflow, item)
        except InvalidInput as e:
            bad.append(f"{inputs_file}:{line}: {e}")
    if bad:  # every bad line (the first 10) is named, not only the first: one pass mends them
        shown = bad[:10]
        for message in shown[:-1]:
            say(message, "error", prefix="error: ")
        extra = f" (and {len(bad) - 10} more lines)" if len(bad) > 10 else ""
        fail(shown[-1] + extra, EXIT_USAGE)
    items = [item for _, item in numbered]
    mock = load_script(mock_responses) if mock_responses is not None else None
    # what would fail every run (no model, a model that cannot be called, an unset env:
    # variable) fails the batch now, as it fails a single run, rather than each of its items
    check_env(workflow)
    warn_unplayed_keys(workflow, mock)  # (once, before the progress starts)
    check_models(
        compile_plan(workflow),
        Providers(mock=mock, own=own_providers(providers)),
        default_model(workflow, model),
        _limits(workflow, as_budget(budget)),
    )
    leave_out_what_the_end_says(batch=True)
    at_once = one_call_at_a_time(workflow, model)
    if at_once is not None and min(concurrency, len(items)) > at_once:
        say(
            f"{'the local model answers' if at_once == 1 else 'each local model answers'} one "
            f"call at a time: {at_once} item{'s' * (at_once != 1)} at a time, not {concurrency}",
            "info",
            prefix="note: ",
        )
    store = None
    if journal:
        from ..store import open_store

        store = open_store(db)
    started = time.monotonic()
    # the live view: a bar on a terminal, else a line of counts every 2 s; neither with --quiet
    # or when stderr carries JSON logs
    live = not quiet and not json_logs()
    bar = _Bar(len(items), enabled=live and sys.stderr.isatty())
    plain = live and not sys.stderr.isatty()
    last_print = [0.0]

    def on_update(p: BatchProgress) -> None:
        bar.update(p)
        if plain and time.monotonic() - last_print[0] > 2:
            last_print[0] = time.monotonic()
            click.echo(_counts(p), err=True)

    progress = BatchProgress(total=len(items))
    first_failed: tuple[int, Any] | None = None  # (line in the items file, result)
    journal_failed = 0  # items stopped by a database error (what they committed is kept)
    refused = 0  # items stopped by a value the database refused (again would stop them again)

    def keep(p: BatchProgress) -> None:
        nonlocal progress
        progress = p
        on_update(p)

    async def go() -> None:
        # each result line as soon as it and those before it are in: in input order, and what
        # is printed stays printed if the batch is interrupted; what steps print goes to
        # stderr (a plugin's debugging would break the lines a pipe reads)
        out = sys.stdout
        with redirect_stdout(sys.stderr):
            await results_to(out)

    async def results_to(out: Any) -> None:
        async with aclosing(
            _iter_batch(
                workflow,
                items,
                concurrency=concurrency,
                model=model,
                mock_responses=mock,
                providers=providers,
                store=store,
                budget=budget,
                on_update=keep,
                checked=True,  # (every line was checked above)
            )
        ) as results:
            nonlocal first_failed, journal_failed, refused
            index = 0
            async for r in results:
                number = numbered[index][0]  # (its line in the file: blank ones are skipped)
                if r.status not in ("completed", "paused") and first_failed is None:
                    first_failed = (number, r)
                if r.status == "failed" and JournalRefused.said_in(r.error):
                    refused += 1
                elif r.status == "failed" and (r.error or "").startswith("Database error:"):
                    journal_failed += 1
                index += 1
                line = {"line": number, **(r.to_dict() if as_json else _line(r))}
                click.echo(json_text(line), file=out)

    interrupted = False
    try:
        with bar:
            asyncio.run(stopping_lock_waits(go(), store))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if store is not None:
            store.close()
    if interrupted:
        unfinished = progress.total - progress.done - progress.failed - progress.paused
        then = (
            "run the same command again to finish the batch"
            if journal
            else "nothing was kept (--no-journal), so running it again starts over"
        )
        say(
            f"interrupted: {progress.done} completed, {progress.failed} failed, {unfinished} "
            f"unfinished; {then}",
            "warning",
            **_fields(progress),
            unfinished=unfinished,
            exit_code=interrupted_exit_code(),
        )
        sys.exit(interrupted_exit_code())
    # the summary, also with --quiet (which only hides the live view), on stderr: stdout is
    # the results
    elapsed = time.monotonic() - started
    say(
        f"{_counts(progress)} in {elapsed:.1f}s"
        + (f" ({progress.reused} from an earlier attempt)" if progress.reused else ""),
        **_fields(progress),
        seconds=round(elapsed, 3),
    )
    if first_failed is not None:  # why, without digging through the result lines
        n, first = first_failed
        more = f" (and {progress.failed - 1} more failed)" if progress.failed > 1 else ""
        if store is not None and progress.failed > journal_failed + refused:
            # (what they committed is kept: a failed step is called again, nothing before it)
            one = progress.failed == 1
            more += f"; the same command again retries the failed item{'' if one else 's'}"
        say(
            f"{inputs_file}:{n}: {first.error or first.status}{more}",
            "error",
            line=n,
            run_id=first.run_id,
            failed_items=progress.failed,
        )
    if journal_failed and store is not None:
        say(
            f"{journal_failed} stopped by a database error: once it is back, run the same "
            f"command again to continue {'them' if journal_failed > 1 else 'it'}",
            "warning",
            journal_failed=journal_failed,
        )
    if refused and store is not None:
        one = refused == 1
        say(
            f"{refused} stopped by a value the database cannot hold, not by a database failure "
            f"(its line says which): what {'it' if one else 'they'} did before is kept, and the "
            f"same command again stops {'it' if one else 'them'} there again if the step gives "
            "the same value",
            "warning",
            refused=refused,
        )
    if progress.paused:
        say(
            f"{progress.paused} paused (eclflow pause): run the same command again to continue "
            f"{'them' if progress.paused > 1 else 'it'}",
            "warning",
            paused=progress.paused,
        )
    sys.exit(EXIT_FAILED if first_failed is not None or progress.paused else EXIT_OK)


def _fields(p: Any) -> dict[str, Any]:
    """The counts, as fields of a JSON summary."""
    return {
        "total": p.total,
        "completed": p.done,
        "failed": p.failed,
        "running": p.running,
        "reused": p.reused,
        "paused": p.paused,
        "tokens": p.tokens,
        "cost": p.cost,
    }


def _line(r: Any) -> dict[str, Any]:
    """A result's JSON line."""
    return {
        "run_id": r.run_id,
        "status": r.status,
        "output": r.output,
        "error": r.error,
        "failed_step": r.failed_step,
        "tokens": r.tokens,
        "cost": r.cost,
    }


def _counts(p: Any) -> str:
    return (
        f"{p.done}/{p.total} completed, {p.failed} failed, "
        + (f"{p.paused} paused, " if p.paused else "")
        + f"{p.running} running, {p.tokens} tokens, ${p.cost:.4f}"
    )


class _Bar:
    """A rich progress bar on stderr: done / failed / running, tokens, cost, ETA, on one line
    that fits an 80-column terminal (the bar takes what the counts leave)."""

    def __init__(self, total: int, *, enabled: bool, console: Any = None) -> None:
        self.total = total
        self.enabled = enabled
        self.console = console
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                BarColumn(bar_width=None),
                MofNCompleteColumn(),
                TextColumn(
                    "[green]{task.fields[done]} done[/] [red]{task.fields[failed]} failed[/] "
                    "[cyan]{task.fields[running]} running[/] {task.fields[tokens]} tok "
                    "${task.fields[cost]:.4f}"
                ),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console or Console(stderr=True),
                transient=False,
                expand=True,
                # result lines printed meanwhile: above the bar when stdout is the same
                # terminal, untouched when it is a file or a pipe
                redirect_stdout=sys.stdout.isatty(),
            )
            self.progress.__enter__()
            self.task = self.progress.add_task(
                "runs", total=self.total, done=0, failed=0, running=0, tokens="0", cost=0.0
            )
        return self

    def update(self, p: Any) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=p.done + p.failed + p.paused,
                done=p.done,
                failed=p.failed,
                running=p.running,
                tokens=_short(p.tokens),
                cost=p.cost,
            )

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)


def _short(n: int) -> str:
    """A count in at most five characters: 950, 12.3k, 456k, 1.2M."""
    value, unit = float(n), ""
    for larger in "kMG":
        if round(value) < 1000:
            break
        value, unit = value / 1000, larger
    if not unit:
        return str(n)
    return f"{value:.1f}{unit}" if round(value, 1) < 100 else f"{value:.0f}{unit}"
