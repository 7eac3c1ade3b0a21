"""The calibration row of figures A, B and E: a plain asyncio loop, no engine.

The issue measures its targets against "a plain asyncio loop writing the same rows to SQLite in
WAL mode" (about 0.4 s for B's 2000 runs on its machine). This is that loop, so that every
table shows how near the floor a durable engine can get on the machine at hand: each run
sleeps LATENCY six times, and after each call writes the step row eclflow's journal writes and
waits for its commit before the next call; the run's row goes first, its end is awaited last.
The rows are those of a real eclflow run of the workload (same tables, made by eclflow's store;
same columns and content, serialised again for every write), under their own ids and times.
Nothing else: no templates, no parsing of the verdicts, no events (eclflow adds two or three
a step), no budget.

The writes go to one thread that commits everything queued at once (group commit) and wakes the
batch's waiters with a single hop to the loop; a lone run (figure A) writes on the loop's
thread, where a hop would cost more than its transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eclflow._time import utc_text
from eclflow.store.repositories import definition_sql

from .workloads import CALL_ORDER, CALLS_PER_RUN, CRITIQUE_REVISE, PG_URL, TOPIC, mock_script

_RUN_SQL = (
    "INSERT INTO workflows (id, definition_id, definition_name, definition_sha256, input, "
    "state, metadata, created_at, updated_at) VALUES ({})"
)
_STEP_SQL = (
    "INSERT INTO step_executions (run_id, step_id, key, iteration, attempt, state, input, model, "
    "started_at, outcome, output, feedback, error, retryable, duration_ms, tokens_in, "
    "tokens_out, cost, traces, prompt, completed_at) VALUES ({})"
)
_END_SQL = (
    "UPDATE workflows SET state = {0}, output = {0}, metadata = {0}, updated_at = {0}, "
    "completed_at = {0} WHERE id = {0}"
)


def _now() -> str:
    return utc_text(None, " ")  # as eclflow's journal writes it


class _Writer:
    """Group commit: everything queued while a transaction is written goes into the next."""

    def __init__(self, connect: Callable[[], Any], param: str, inline: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.inline = inline
        self.param = param
        self.sql = {
            "run": _RUN_SQL.format(", ".join([param] * 9)),
            "definition": definition_sql(param),  # (after the run, as eclflow writes it)
            "step": _STEP_SQL.format(", ".join([param] * 21)),
            "end": _END_SQL.format(param),
        }
        self._queue: list[tuple[str, tuple[Any, ...], asyncio.Future[None] | None]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._connect = connect
        if inline:
            self._conn = connect()
        else:
            self._thread = threading.Thread(target=self._work, name="plain-writer", daemon=True)
            self._thread.start()

    def put(self, kind: str, args: tuple[Any, ...], wait: bool) -> asyncio.Future[None] | None:
        future = self.loop.create_future() if wait else None
        if self.inline:
            self._queue.append((kind, args, future))
            if wait:
                batch, self._queue = self._queue, []
                self._commit(self._conn, batch)
                assert future is not None
                future.set_result(None)
            return future
        with self._cond:
            self._queue.append((kind, args, future))
            self._cond.notify()
        return future

    def _work(self) -> None:
        conn = self._connect()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                batch, self._queue = self._queue, []
            if not batch:
                break
            error: BaseException | None = None
            try:
                self._commit(conn, batch)
            except Exception as e:  # the runs waiting for this batch fail with it
                error = e
            futures = [f for _, _, f in batch if f is not None]
            if futures:
                self.loop.call_soon_threadsafe(_resolve, futures, error)
        conn.close()

    def _commit(self, conn: Any, batch: list[tuple[str, tuple[Any, ...], Any]]) -> None:
        groups: dict[str, list[tuple[Any, ...]]] = {
            "run": [], "definition": [], "step": [], "end": []
        }  # fmt: skip
        for kind, args, _ in batch:
            groups[kind].append(args)
        cur = conn.cursor()
        sqlite = self.param == "?"
        if sqlite:
            cur.execute("BEGIN")
        for kind, rows in groups.items():
            if rows and sqlite:
                cur.executemany(self.sql[kind], rows)
            elif rows:
                _pg_many(cur, kind, self.sql[kind], rows)
        if sqlite:
            cur.execute("COMMIT")
        else:
            conn.commit()

    def close(self) -> None:
        if self.inline:
            self._conn.close()
            return
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for f in futures:
        if f.done():
            continue
        if error is not None:
            f.set_exception(error)
        else:
            f.set_result(None)


def _pg_many(cur: Any, kind: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Many rows in one statement per thousand, as eclflow's journal writes them (psycopg2's
    executemany is a round trip per row)."""
    from psycopg2.extras import execute_values

    from eclflow.store.writer import _many_pages

    if kind != "end":
        _many_pages(cur, sql, rows)
        return
    execute_values(
        cur,
        "UPDATE workflows AS w SET state = v.state, output = v.output::json, "
        "metadata = v.metadata::json, updated_at = v.updated_at::timestamptz, "
        "completed_at = v.completed_at::timestamptz FROM (VALUES %s) AS v "
        "(state, output, metadata, updated_at, completed_at, id) WHERE w.id = v.id",
        rows,
        page_size=1000,
    )


@dataclass
class _Sample:
    """The rows of one real eclflow run of the workload, as objects: the plain loop writes
    the same content (serialised again for every write), under its own run ids and times."""

    run: dict[str, Any]
    steps: list[dict[str, Any]]


_JSON_RUN = ("input", "metadata", "output")
_JSON_STEP = ("input", "output", "traces", "prompt")


async def _sample(workdir: Path) -> _Sample:
    """Run the workload once with eclflow into a scratch SQLite file and read its rows back."""
    from eclflow.engine.runner import run
    from eclflow.llm import MockProvider
    from eclflow.store import open_store

    path = workdir / "sample.db"
    store = open_store(f"sqlite:///{path}")
    try:
        result = await run(
            CRITIQUE_REVISE,
            {"topic": TOPIC},
            model="mock/bench",
            mock_responses=MockProvider(mock_script(0.0)),
            store=store,
        )
    finally:
        store.close()
    if result.status != "completed":
        raise RuntimeError(f"the sample run {result.status}: {result.error}")
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        run_row = dict(
            conn.execute(
                "SELECT w.*, d.text AS definition FROM workflows AS w "
                "JOIN definitions AS d ON d.sha256 = w.definition_sha256"
            ).fetchone()
        )
        steps = [dict(r) for r in conn.execute("SELECT * FROM step_executions ORDER BY id")]
    finally:
        conn.close()
    for name in _JSON_RUN:
        run_row[name] = json.loads(run_row[name]) if run_row[name] is not None else None
    for step in steps:
        for name in _JSON_STEP:
            step[name] = json.loads(step[name]) if step[name] is not None else None
    if [s["key"] for s in steps] != CALL_ORDER:
        raise RuntimeError(f"the sample run did not do the workload: {[s['key'] for s in steps]}")
    return _Sample(run_row, steps)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


async def _one_run(writer: _Writer, n: int, latency: float, sample: _Sample) -> None:
    run_id = f"plain-{n}-{time.monotonic_ns()}"
    r = sample.run
    now = _now()
    writer.put(
        "run",
        (
            run_id,
            r["definition_id"],
            r["definition_name"],
            r["definition_sha256"],
            _dumps(r["input"]),
            "running",
            _dumps(r["metadata"]),
            now,
            now,
        ),
        wait=False,
    )
    writer.put("definition", (r["definition_sha256"], r["definition"]), wait=False)
    for s in sample.steps:
        started = _now()
        await asyncio.sleep(latency)
        future = writer.put(
            "step",
            (
                run_id,
                s["step_id"],
                s["key"],
                s["iteration"],
                s["attempt"],
                s["state"],
                _dumps(s["input"]),
                s["model"],
                started,
                s["outcome"],
                _dumps(s["output"]),
                s["feedback"],
                s["error"],
                None if s["retryable"] is None else bool(s["retryable"]),
                s["duration_ms"],
                s["tokens_in"],
                s["tokens_out"],
                s["cost"],
                _dumps(s["traces"]),
                _dumps(s["prompt"]),
                _now(),
            ),
            wait=True,
        )
        assert future is not None
        await future
    now = _now()
    end = writer.put(
        "end", ("completed", _dumps(r["output"]), _dumps(r["metadata"]), now, now, run_id), True
    )
    assert end is not None
    await end


@contextmanager
def _connector(kind: str, workdir: Path) -> Iterator[tuple[Callable[[], Any], str]]:
    """How to connect to the journal's tables (made by eclflow's store), and the SQL
    parameter; a PostgreSQL schema is dropped afterwards."""
    from eclflow.store import open_store

    if kind == "sqlite":
        path = workdir / "plain.db"
        open_store(f"sqlite:///{path}").close()

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = wal")
            conn.execute("PRAGMA synchronous = normal")
            return conn

        yield connect, "?"
    elif kind == "postgres":
        import psycopg2

        from .pg import temporary_schema

        with temporary_schema("bench_plain") as schema:
            open_store(f"{PG_URL}?schema={schema}").close()
            yield (lambda: psycopg2.connect(PG_URL, options=f"-c search_path={schema}")), "%s"
    else:
        raise ValueError(f"the plain loop writes to sqlite or postgres, not {kind!r}")


async def _batch(
    runs: int,
    latency: float,
    kind: str,
    workdir: Path,
    inline: bool,
    on_ready: Callable[[], None] | None = None,
) -> float:
    sample = await _sample(workdir)
    with _connector(kind, workdir) as (connect, param):
        writer = _Writer(connect, param, inline)
        try:
            await _one_run(writer, -1, latency, sample)  # warm-up
            if on_ready is not None:
                on_ready()
            start = time.perf_counter()
            if inline:
                for n in range(runs):
                    await _one_run(writer, n, latency, sample)
            else:
                await asyncio.gather(*(_one_run(writer, n, latency, sample) for n in range(runs)))
            return time.perf_counter() - start
        finally:
            writer.close()


async def sequential(runs: int, kind: str, workdir: Path) -> dict[str, Any]:
    """Figure A's calibration: `runs` runs one after another, latency 0."""
    seconds = await _batch(runs, 0.0, kind, workdir, inline=True)
    return {"seconds": seconds, "runs": runs, "steps": runs * CALLS_PER_RUN}


async def concurrent(
    runs: int, latency: float, kind: str, workdir: Path, on_ready: Callable[[], None]
) -> dict[str, Any]:
    """Figures B and E's calibration: `runs` runs at once."""
    seconds = await _batch(runs, latency, kind, workdir, inline=False, on_ready=on_ready)
    return {"seconds": seconds, "runs": runs, "steps": runs * CALLS_PER_RUN}
