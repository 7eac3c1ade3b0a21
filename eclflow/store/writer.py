"""Group commit for the journal: the writes of every run in an event loop, one transaction at a
time, on one worker thread.

A step's `running` row is queued without waiting (a crash before it is committed only loses the
knowledge that a call was in flight: the step is redone either way); its result is queued and
awaited, so nothing that depends on it starts before it is committed. Whatever arrives while a
transaction is being written goes into the next one, so a thousand concurrent runs share a few
commits instead of paying one each. Statements are plain parameterised SQL: building peewee
queries cost more than the writes themselves.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from .models import _TIME_FORMAT

LINGER = 0.005  # seconds an unawaited write may wait for company
Handle = tuple[str, str, int]  # (run id, journal key, attempt)
_Op = tuple[str, tuple[Any, ...], "asyncio.Future[Any] | None"]


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str, ensure_ascii=False)


def _now() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


class JournalWriter:
    """Queues journal writes of one store from one event loop; see the module docstring."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self._pending: list[_Op] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eclflow-journal")
        # PostgreSQL is written from the worker thread, never from the event loop.
        self.inline = store.kind == "sqlite"
        p = store.db.param
        self._sql = {
            "create_run": (
                "INSERT INTO workflows (id, definition_id, definition_name, definition, "
                "definition_sha256, input, state, metadata, created_at, updated_at) "
                f"VALUES ({', '.join([p] * 10)})"
            ),
            "start": (
                "INSERT INTO step_executions (run_id, step_id, key, iteration, attempt, state, "
                f"input, model, started_at) VALUES ({', '.join([p] * 9)})"
            ),
            "finish": (
                f"UPDATE step_executions SET state = {p}, outcome = {p}, output = {p}, "
                f"feedback = {p}, error = {p}, retryable = {p}, duration_ms = {p}, "
                f"tokens_in = {p}, tokens_out = {p}, cost = {p}, traces = {p}, prompt = {p}, "
                f"completed_at = {p} WHERE run_id = {p} AND key = {p} AND attempt = {p}"
            ),
            "skip": (
                "INSERT INTO step_executions (run_id, step_id, key, iteration, attempt, state, "
                f"started_at, completed_at) VALUES ({p}, {p}, {p}, {p}, 0, 'skipped', {p}, {p})"
            ),
            "events": (
                "INSERT INTO events (run_id, ts, kind, step_id, fields) "
                f"VALUES ({p}, {p}, {p}, {p}, {p})"
            ),
        }

    # --- queueing (event loop thread) --------------------------------------------------------

    def _queue(self, kind: str, args: tuple[Any, ...], wait: bool) -> asyncio.Future[Any] | None:
        future = self.loop.create_future() if wait else None
        self._pending.append((kind, args, future))
        if not self._busy:
            if wait:
                self._busy = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self.loop.call_soon(self._launch)
            elif self._timer is None:
                # Nobody waits for this one: give it a few milliseconds to share a transaction
                # with the result that usually follows.
                self._timer = self.loop.call_later(LINGER, self._kick)
        return future

    def _kick(self) -> None:
        self._timer = None
        if not self._busy:
            self._busy = True
            self._launch()

    def _launch(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            self._busy = False
            return
        if self.inline:
            # SQLite: a local file, a transaction of tens of microseconds; a thread hop would
            # cost more than the write. The next batch is whatever arrives meanwhile.
            error: BaseException | None = None
            try:
                self._write(batch)
            except Exception as e:
                error = e
            self._resolve(batch, error)
            self.loop.call_soon(self._launch)
            return
        done = self.loop.run_in_executor(self._pool, self._write, batch)
        done.add_done_callback(lambda f: self._settle(batch, f))

    def _resolve(self, batch: list[_Op], error: BaseException | None) -> None:
        for _, _, future in batch:
            if future is not None and not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(None)

    def _settle(self, batch: list[_Op], done: asyncio.Future[Any]) -> None:
        error = done.exception()
        for _, _, future in batch:
            if future is not None and not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(None)
        # Unawaited writes (running rows, events) have nobody to tell of an error: the next
        # awaited write fails the same way, or the run's end does.
        self._launch()

    def create_run(self, **fields: Any) -> None:
        now = _now()
        self._queue(
            "create_run",
            (
                fields["run_id"],
                fields["definition_id"],
                fields.get("definition_name"),
                fields["definition"],
                fields["definition_sha256"],
                _json(fields.get("input")),
                fields.get("state", "running"),
                _json(fields.get("metadata") or {}),
                now,
                now,
            ),
            wait=False,
        )

    def start(
        self,
        run_id: str,
        step_id: str,
        key: str,
        iteration: int,
        attempt: int,
        input: Any = None,
        model: str | None = None,
    ) -> Handle:
        args = (run_id, step_id, key, iteration, attempt, "running", _json(input), model, _now())
        self._queue("start", args, wait=False)
        return (run_id, key, attempt)

    async def finish(self, handle: Handle, **f: Any) -> None:
        traces = f.get("traces")
        args = (
            f["state"],
            f.get("outcome"),
            _json(f.get("output")),
            f.get("feedback"),
            f.get("error"),
            f.get("retryable"),
            f.get("duration_ms"),
            f.get("tokens_in"),
            f.get("tokens_out"),
            f.get("cost"),
            _json([dict(t) for t in traces] if traces is not None else None),
            _json(f.get("prompt")),
            _now(),
            *handle,
        )
        future = self._queue("finish", args, wait=True)
        assert future is not None
        await future

    async def record_skipped(self, run_id: str, step_id: str, key: str, iteration: int) -> None:
        now = _now()
        future = self._queue("skip", (run_id, step_id, key, iteration, now, now), wait=True)
        assert future is not None
        await future

    def events(
        self, run_id: str, batch: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> None:
        now = _now()
        for kind, step_id, data in batch:
            self._queue("events", (run_id, now, kind, step_id, _json(dict(data))), wait=False)

    async def end_run(
        self,
        run_id: str,
        state: str,
        output: Any,
        error: str | None,
        failed_step: str | None,
        metadata: Mapping[str, Any],
    ) -> None:
        future = self._queue(
            "end_run", (run_id, state, output, error, failed_step, dict(metadata)), wait=True
        )
        assert future is not None
        await future

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        future = self._queue("noop", (), wait=True)
        assert future is not None
        await future

    # --- writing (worker thread) ---------------------------------------------------------------

    def _write(self, batch: list[_Op]) -> None:
        db = self.store.db
        with self.store.transaction():
            cursor = db.cursor()
            i = 0
            while i < len(batch):
                kind, args, _ = batch[i]
                if kind == "noop":
                    i += 1
                    continue
                if kind == "end_run":
                    self._end_run(*args)
                    i += 1
                    continue
                j = i + 1  # consecutive writes of one kind go in one executemany
                while j < len(batch) and batch[j][0] == kind:
                    j += 1
                if j - i == 1:
                    cursor.execute(self._sql[kind], args)
                else:
                    cursor.executemany(self._sql[kind], [op[1] for op in batch[i:j]])
                i = j

    def _end_run(
        self,
        run_id: str,
        state: str,
        output: Any,
        error: str | None,
        failed_step: str | None,
        metadata: Mapping[str, Any],
    ) -> None:
        db = self.store.db
        p = db.param
        lock = " FOR UPDATE" if self.store.kind != "sqlite" else ""
        row = db.execute_sql(f"SELECT metadata FROM workflows WHERE id = {p}{lock}", (run_id,))
        found = row.fetchone()
        current: dict[str, Any] = {}
        if found and found[0] is not None:
            raw = found[0]
            current = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
        current.update(metadata)
        now = _now()
        terminal = state in ("completed", "failed", "cancelled")
        db.execute_sql(
            f"UPDATE workflows SET state = {p}, output = {p}, error = {p}, failed_step = {p}, "
            f"metadata = {p}, updated_at = {p}, completed_at = {p} WHERE id = {p}",
            (
                state,
                _json(output),
                error,
                failed_step,
                _json(current),
                now,
                now if terminal else None,
                run_id,
            ),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)


_writers: weakref.WeakKeyDictionary[Any, dict[int, JournalWriter]] = weakref.WeakKeyDictionary()


def writer_for(store: Any) -> JournalWriter:
    """The group-commit writer of `store` in the running event loop."""
    loop = asyncio.get_running_loop()
    per_loop = _writers.setdefault(store, {})
    w = per_loop.get(id(loop))
    if w is None or w.loop is not loop:
        w = JournalWriter(store, loop)
        per_loop[id(loop)] = w
    return w
