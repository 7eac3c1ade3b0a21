"""Group commit for the journal: the writes of every run in an event loop, one transaction at a
time (on SQLite small ones on the loop's thread, big ones and PostgreSQL's on one worker thread).

A step's `running` row is not waited for, and is held back up to HOLD_START seconds for its
result, to be written as one row with it (a crash before it is committed only loses the knowledge
that a call was in flight: the step is redone either way); its result is queued and awaited, so
nothing that depends on it starts before it is committed — except a pure step's (a template:
redoing it costs nothing), which the run does not wait for. Transactions commit in queue order
(a held row joins the queue when it is let go), so the results on disk are always a prefix of
what the runs did: a result whose input came from an uncommitted pure step is never committed
without it. Whatever arrives while a transaction is being written goes into the next one, so a
thousand concurrent runs share a few commits instead of paying one each. Statements are plain
parameterised SQL: building peewee queries cost more than the writes themselves.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from .._time import utc_text
from ..errors import JournalRefused, LockWaitStopped, PersistenceError
from .db import begin_immediate, connection_lost
from .models import json_text, read_json, store_text
from .records import TERMINAL_STATES
from .repositories import definition_sql

LINGER = 0.005  # seconds an unawaited write may wait for company
# Seconds a step's `running` row is held back for its result, so that a step that finishes
# within it is written once (one INSERT, rather than an INSERT and later an UPDATE), and the
# result's transaction is not queued behind a transaction of other steps' `running` rows. Other
# processes (`eclflow status`) see a call in flight this late at most, as they see events.
HOLD_START = 0.2
# With several runs in the loop, SQLite batches of at least this many writes go to the worker
# thread: they take milliseconds, mostly inside SQLite, which releases the GIL, so the other runs
# go on meanwhile on the other core. Smaller ones are cheaper on the loop's thread than a thread
# hop, and so is everything of a lone run (its next steps would only fight the thread for the
# GIL).
THREAD_AT = 64
# SQLite: how long a write on the event loop's thread may wait for another process's lock
# before it goes to the worker thread, which waits for as long as the store's busy timeout (the
# loop must not stall: the other runs' timers, step timeouts and Ctrl-C depend on it)
QUICK_BUSY_MS = 5
# PostgreSQL: seconds before each new try of a batch whose connection was lost
RECONNECT_AFTER = (0.1, 0.5, 2.0)
EVENTS_EVERY = 0.2  # seconds between two writes of the runs' events (`eclflow logs --follow`)
# SQLite: at most this often (seconds), a thread of its own copies what was committed from the
# WAL into the database file (a passive checkpoint; see `_checkpoint`).
CHECKPOINT_EVERY = 0.05
Handle = tuple[str, str, int]  # (run id, journal key, attempt)
_Op = tuple[str, tuple[Any, ...], "asyncio.Future[Any] | None"]


logger = logging.getLogger("eclflow.store")
_json = json_text  # (the name the repositories import)


def _now() -> str:
    return utc_text(None, " ")  # the text of models._TIME_FORMAT


class JournalWriter:
    """Queues journal writes of one store from one event loop; see the module docstring."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop
        self._pending: list[_Op] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._held: dict[Handle, tuple[_Op, float]] = {}  # `running` rows held back, in order
        self._held_timer: asyncio.TimerHandle | None = None
        # the `running` row of every attempt in flight, so that its result can write the whole
        # row: if that row was lost (an unawaited batch that failed: a lock, a timeout, a full
        # disk), the result is still kept, not silently dropped by an UPDATE of no row
        self._started: dict[Handle, tuple[Any, ...]] = {}
        self._awaited = 0  # queued writes somebody waits for
        self._recorders: set[Any] = set()
        self._events_timer: asyncio.TimerHandle | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eclflow-journal")
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_due = 0.0
        self._checkpointing = False
        # PostgreSQL is written from the worker thread, never from the event loop; SQLite
        # small batches on the loop's thread (see THREAD_AT).
        self.inline = store.kind == "sqlite"
        self._loop_thread = threading.get_ident()
        self._quick: Any = None  # SQLite: the loop thread's own connection, short busy timeout
        self._closing = False
        # runs asking whether `pause` was asked of them, answered together (pause_requested)
        self._pause_asks: list[tuple[str, asyncio.Future[bool]]] = []
        self._pause_looking = False
        p = store.db.param
        self._sql = {
            "create_run": (
                "INSERT INTO workflows (id, definition_id, definition_name, definition_sha256, "
                f"input, state, metadata, created_at, updated_at) VALUES ({', '.join([p] * 9)})"
            ),
            # its definition's text, once per database (after the run: see _PHASES)
            "definition": definition_sql(p),
            # a run whose row was written `pending` (claimed by a batch) starts
            "start_run": f"UPDATE workflows SET state = 'running', updated_at = {p} WHERE id = {p}",
            # a step row: `running`, or already with its result when that came in the same
            # batch, or `skipped` (one statement, so a batch's rows keep their queue order)
            "step": (
                "INSERT INTO step_executions (run_id, step_id, key, iteration, attempt, state, "
                "input, model, started_at, outcome, output, feedback, error, retryable, "
                "duration_ms, tokens_in, tokens_out, cost, traces, prompt, completed_at) "
                f"VALUES ({', '.join([p] * 21)})"
            ),
            "finish": (
                f"UPDATE step_executions SET state = {p}, outcome = {p}, output = {p}, "
                f"feedback = {p}, error = {p}, retryable = {p}, duration_ms = {p}, "
                f"tokens_in = {p}, tokens_out = {p}, cost = {p}, traces = {p}, prompt = {p}, "
                f"completed_at = {p} WHERE run_id = {p} AND key = {p} AND attempt = {p}"
            ),
            "events": (
                "INSERT INTO events (run_id, ts, kind, step_id, fields) "
                f"VALUES ({p}, {p}, {p}, {p}, {p})"
            ),
        }
        # a result whose `running` row went ahead of it: the whole step row again, updating it
        self._sql["upsert"] = (
            f"{self._sql['step']} ON CONFLICT (run_id, key, attempt) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c, _ in _FINISHED[:-3])
        )

    # --- queueing (event loop thread) --------------------------------------------------------

    def _queue(self, kind: str, args: tuple[Any, ...], wait: bool) -> asyncio.Future[Any] | None:
        future = self.loop.create_future() if wait else None
        self._pending.append((kind, args, future))
        if wait:
            self._awaited += 1
        if not self._busy:
            if wait:
                # (a linger timer still armed is left to fire on an empty queue: cheaper than
                # cancelling one and arming another for nearly every step)
                self._busy = True
                if self.inline and len(self._recorders) <= 1:
                    # One run in this loop: no other run's write could join the transaction,
                    # so write now rather than a loop iteration later (the caller then awaits
                    # a future that is already done, which does not suspend it).
                    self._launch()
                else:
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
        self._awaited = 0
        if not batch:
            self._busy = False
            return
        if not self._on_thread(batch):
            # SQLite: a local file, a transaction of tens of microseconds; a thread hop would
            # cost more than the write.
            error: BaseException | None = None
            try:
                self._write(batch)
            except _Busy:  # another process holds the lock: wait for it off the loop
                done = self.loop.run_in_executor(self._pool, self._write, batch)
                done.add_done_callback(lambda f: self._settle(batch, f))
                return
            except Exception as e:
                error = e
            self._resolve(batch, error)
            self._next()
            return
        done = self.loop.run_in_executor(self._pool, self._write, batch)
        done.add_done_callback(lambda f: self._settle(batch, f))

    def _on_thread(self, batch: list[_Op]) -> bool:
        """Whether `batch` is written from the worker thread (see THREAD_AT)."""
        if not self.inline:
            return True  # PostgreSQL
        if len(self._recorders) <= 1 or self.store.in_memory:
            return False
        rows = len(batch)
        if rows < THREAD_AT:  # (a flush of events is one op of many rows)
            rows += sum(len(args) - 1 for kind, args, _ in batch if kind == "events")
        return rows >= THREAD_AT

    def _next(self) -> None:
        """After a write: the next one at once if somebody waits, else after the linger."""
        self._maybe_checkpoint()
        if self._awaited:
            self.loop.call_soon(self._launch)
            return
        self._busy = False
        if self._pending and self._timer is None:
            self._timer = self.loop.call_later(LINGER, self._kick)

    def _resolve(self, batch: list[_Op], error: BaseException | None) -> None:
        failed = error.failed if isinstance(error, _SomeFailed) else None
        for at, (_, _, future) in enumerate(batch):
            if future is not None and not future.done():
                if failed is not None:
                    if at in failed:
                        future.set_exception(failed[at])
                    else:
                        future.set_result(None)
                elif error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(None)

    def _settle(self, batch: list[_Op], done: asyncio.Future[Any]) -> None:
        # Unawaited writes (running rows, events) have nobody to tell of an error: the next
        # awaited write fails the same way, or the run's end does.
        self._resolve(batch, done.exception())
        self._next()

    def _maybe_checkpoint(self) -> None:
        if not self.inline or self.store.in_memory or self._checkpointing:
            return
        now = self.loop.time()
        if now < self._checkpoint_due:
            return
        self._checkpoint_due = now + CHECKPOINT_EVERY
        self._checkpointing = True
        if self._checkpointer is None:
            self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="eclflow-checkpoint")
        self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """(checkpoint thread) Copy the pages committed to SQLite's WAL into the database file,
        and sync both, beside the commits rather than inside one of them.

        SQLite does this itself once the WAL holds `wal_autocheckpoint` pages, in the commit
        that crosses the mark: on the event loop's thread, for tens of milliseconds, mostly
        syncing tens of megabytes. A passive checkpoint waits for no lock and blocks no writer;
        the automatic one is left with the pages of the last few commits, and still restarts
        the WAL."""
        try:
            with self.store.reading():
                self.store.db.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as e:  # the automatic checkpoint still happens
            logger.debug("journal: checkpoint failed: %s", e)
        finally:
            self._checkpointing = False

    # --- pause requests of the runs in this loop ----------------------------------------------

    def pause_requested(self, run_id: str) -> asyncio.Future[bool]:
        """Whether `eclflow pause` was asked of `run_id`, read after this call. The runs that ask
        while a look is being made are answered by the next one: one thread hop and one query
        per 500 runs for all of them. (Each run asks between its steps once every few seconds:
        2000 runs at once made 2000 hops and 2000 reads of a whole run row, and as they took
        the loop's time, the runs grew longer and asked again.)"""
        future: asyncio.Future[bool] = self.loop.create_future()
        self._pause_asks.append((run_id, future))
        if not self._pause_looking:
            self._pause_looking = True
            self.loop.call_soon(self._look_for_pauses)
        return future

    def _look_for_pauses(self) -> None:
        asks, self._pause_asks = self._pause_asks, []
        if not asks:
            self._pause_looking = False
            return
        run_ids = list(dict.fromkeys(run_id for run_id, _ in asks))
        done = self.loop.run_in_executor(None, _paused, self.store, run_ids)
        done.add_done_callback(lambda f: self._answer_pauses(asks, f))

    def _answer_pauses(
        self, asks: list[tuple[str, asyncio.Future[bool]]], done: asyncio.Future[set[str]]
    ) -> None:
        for run_id, future in asks:
            if future.done():  # (its run was cancelled meanwhile)
                continue
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(run_id in done.result())
        self._look_for_pauses()  # the runs that asked meanwhile

    # --- the events of the runs in this loop, written every EVENTS_EVERY seconds -------------

    def follow(self, recorder: Any) -> None:
        """Write `recorder`'s events (see eclflow/observe/events.py) as they come, until
        `unfollow`."""
        self._recorders.add(recorder)
        if self._events_timer is None:
            self._events_timer = self.loop.call_later(EVENTS_EVERY, self._flush_events)

    def unfollow(self, recorder: Any) -> None:
        """Stop following `recorder` and queue what it still holds."""
        self._recorders.discard(recorder)
        self.events(recorder.run_id, recorder.take())

    def _flush_events(self) -> None:
        self._events_timer = None
        rows: list[tuple[Any, ...]] = []  # every run's: one write
        now = _now()
        for recorder in self._recorders:
            batch = recorder.take()
            if batch:
                rows += _event_rows(recorder.run_id, batch, now)
        if rows:
            self._queue("events", tuple(rows), wait=False)
        if self._recorders:
            self._events_timer = self.loop.call_later(EVENTS_EVERY, self._flush_events)

    def create_run(self, **fields: Any) -> None:
        now = _now()
        self._queue(
            "create_run",
            (
                fields["run_id"],
                fields["definition_id"],
                store_text(fields.get("definition_name")),
                fields["definition_sha256"],
                _json(fields.get("input")),
                fields.get("state", "running"),
                _json(fields.get("metadata") or {}),
                now,
                now,
            ),
            wait=False,
        )
        self._queue("definition", (fields["definition_sha256"], fields["definition"]), wait=False)

    def start_run(self, run_id: str) -> None:
        """A claimed (`pending`) run starts: committed with its first step's rows."""
        self._queue("start_run", (_now(), run_id), wait=False)

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
        handle = (run_id, key, attempt)
        self._held[handle] = (("start", args, None), self.loop.time())
        self._started[handle] = args
        if self._held_timer is None:
            self._held_timer = self.loop.call_later(HOLD_START, self._release_held)
        return handle

    def _release_held(self, everything: bool = False) -> None:
        """Queue the `running` rows held for HOLD_START seconds (all of them if
        `everything`), in the order they came."""
        if self._held_timer is not None:
            self._held_timer.cancel()  # (a no-op when it is the one firing)
            self._held_timer = None
        due = self.loop.time() - HOLD_START + 0.001
        released = False
        while self._held:
            handle = next(iter(self._held))  # the oldest
            op, since = self._held[handle]
            if not everything and since > due:
                self._held_timer = self.loop.call_at(since + HOLD_START, self._release_held)
                break
            del self._held[handle]
            self._pending.append(op)
            released = True
        if released and not self._busy and self._timer is None:
            self._timer = self.loop.call_later(LINGER, self._kick)

    def finish(self, handle: Handle, wait: bool = True, **f: Any) -> asyncio.Future[Any] | None:
        """Queue an attempt's result; the future resolves once it is committed (None when
        nobody waits for it)."""
        result = (
            f["state"],
            f.get("outcome"),
            _json(f.get("output")),
            store_text(f.get("feedback")),
            store_text(f.get("error")),
            f.get("retryable"),
            f.get("duration_ms"),
            f.get("tokens_in"),
            f.get("tokens_out"),
            f.get("cost"),
            _json(f.get("traces")),
            _json(f.get("prompt")),
            _now(),
        )
        return self._finished(handle, result, wait)

    def finish_execution(
        self, handle: Handle, record: Any, wait: bool = True
    ) -> asyncio.Future[Any] | None:
        """`finish` with the fields of a StepExecution (the journal's path, once a step: no
        keyword arguments gathered and looked up again)."""
        result = (
            "failed" if record.outcome == "failed" else "succeeded",
            record.outcome,
            _json(record.output),
            store_text(record.feedback),
            store_text(record.error),
            record.retryable,
            record.duration_ms,
            record.tokens_in,
            record.tokens_out,
            record.cost,
            _json([t.to_dict() for t in record.traces]),
            _json(record.prompt),
            _now(),
        )
        return self._finished(handle, result, wait)

    def _finished(
        self, handle: Handle, result: tuple[Any, ...], wait: bool
    ) -> asyncio.Future[Any] | None:
        held = self._held.pop(handle, None)
        started = self._started.pop(handle, None)
        if held is not None:  # its `running` row was held back: one row, with the result
            start = held[0][1]
            return self._queue("step", (*start[:5], result[0], *start[6:9], *result[1:]), wait)
        if started is not None:  # its `running` row went on its own: the whole row again
            row = (*started[:5], result[0], *started[6:9], *result[1:])
            return self._queue("upsert", row, wait)
        return self._queue("finish", (*result, *handle), wait)

    async def record_skipped(self, run_id: str, step_id: str, key: str, iteration: int) -> None:
        future = self._queue("skip", (run_id, step_id, key, iteration, _now()), wait=True)
        assert future is not None
        await future

    def events(
        self, run_id: str, batch: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> None:
        if batch:
            self._queue("events", _event_rows(run_id, batch), wait=False)

    def release_run(self, run_id: str) -> None:
        """Mark a run this process stopped without ending it (cancelled: Ctrl-C, a stopped
        batch, a caller's timeout) as held by nobody, so that another process may resume it at
        once. Queued, not waited for: written with the next batch, or when the store closes."""
        for handle in [h for h in self._started if h[0] == run_id]:  # attempts it left
            del self._started[handle]
        self._queue("end_run", (run_id, "running", None, None, None, {"released": True}), False)

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
        self._release_held(everything=True)
        future = self._queue("noop", (), wait=True)
        assert future is not None
        await future

    # --- writing (worker thread) ---------------------------------------------------------------

    def _write(self, batch: list[_Op]) -> None:
        """Commit `batch`; when a value in it is refused (a data error: a value the database
        or its driver cannot take), each run's writes on their own, so that only the runs
        whose writes were refused fail (_SomeFailed), each with what was refused and where
        (a lone run's too when it is a value, JournalRefused: 'OverflowError: Python int too
        large…' named neither)."""
        try:
            groups = _grouped(batch)
            self._write_groups(groups)
            self._note_created(groups)
        except Exception as e:
            if not _bad_data(e):
                raise
            parts = _by_run(batch)
            if len(parts) == 1 and not _bad_value(e):  # (one run's: it fails, as it says)
                raise
            failed = self._write_apart(parts)
            if failed:
                raise _SomeFailed(failed) from None

    def _write_apart(
        self, parts: dict[str | None, list[tuple[int, _Op]]]
    ) -> dict[int, BaseException]:
        """Write each run's ops (`_by_run`) in a transaction of its own; the error of each op
        (by its position in the batch) that could not be written. A run whose ops are refused
        still gets its row, definition and events when those are not what was refused: it is
        then kept, and ends `failed` with the error, rather than vanishing (its later writes
        then broke its events' and steps' references: 'writes were lost on close')."""
        failed: dict[int, BaseException] = {}
        for run_id, ops in parts.items():
            try:
                self._write_ops([op for _, op in ops])
            except Exception as e:
                if not _bad_data(e):
                    raise
                keys = sorted({k for _, op in ops if (k := _key_of(op)) is not None})
                where = f"run {run_id}" + (f" (step {', '.join(keys)})" if keys else "")
                why = " ".join(str(e).split()).removeprefix("Database error: ")
                why = why or type(e).__name__
                refused = (
                    JournalRefused(where, why)
                    if _bad_value(e)
                    else PersistenceError(f"the journal could not write {where}: {why}")
                )
                logger.warning("%s", refused)
                kept = [(at, op) for at, op in ops if op[0] in _KEPT_APART]
                if kept and len(kept) < len(ops):
                    try:
                        self._write_ops([op for _, op in kept])
                    except Exception as again:
                        if not _bad_data(again):
                            raise
                    else:
                        ops = [(at, op) for at, op in ops if op[0] not in _KEPT_APART]
                failed.update((at, refused) for at, _ in ops)
        return failed

    def _write_ops(self, ops: list[_Op]) -> None:
        """(`_write_apart`) `ops` in one transaction of their own."""
        groups = _grouped(ops)
        self._write_groups(groups, apart=True)
        self._note_created(groups)

    def _note_created(self, groups: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Add the runs `groups` created to the store's record of them, when one is kept."""
        created = self.store.runs_created
        if created is not None:
            for kind, rows in groups:  # (a few kinds a batch)
                if kind == "create_run":
                    created.update(args[0] for args in rows)

    def _write_groups(
        self, groups: list[tuple[str, list[tuple[Any, ...]]]], apart: bool = False
    ) -> None:
        if self.inline:  # SQLite, from either thread
            self._write_sqlite(groups, apart)
            return
        if not groups:  # (only a drain's marker: nothing to commit)
            return
        for wait in (*RECONNECT_AFTER, None):
            xid = None  # the transaction's id, once everything but the COMMIT is done
            try:
                with self.store.transaction():
                    cursor = self.store.db.cursor()
                    self._apply(cursor, groups, _many_pages)
                    cursor.execute("SELECT txid_current()")
                    xid = cursor.fetchone()[0]
                return
            except PersistenceError as e:
                # a connection PostgreSQL closed (a restart, a failover) before the COMMIT
                # rolled the batch back whole: written again on a new one, rather than losing
                # results paid for. Lost during the COMMIT, the batch may be in: the server
                # says whether it is, and only one it rolled back is written again.
                if wait is None or not connection_lost(e.__cause__):
                    raise
                if xid is not None and self._committed(xid, e):
                    return
                logger.warning("journal: %s; writing again on a new connection", e)
                time.sleep(wait)

    def _committed(self, xid: int, error: PersistenceError) -> bool:
        """(PostgreSQL, worker thread) Whether transaction `xid`, whose COMMIT lost its
        connection, was committed; `error` again when the server cannot tell."""
        for wait in (0.0, *RECONNECT_AFTER):
            time.sleep(wait)
            try:
                with self.store.reading():
                    cursor = self.store.db.cursor()
                    cursor.execute("SELECT txid_status(%s)", (xid,))
                    status = cursor.fetchone()[0]
            except PersistenceError as e:
                if not connection_lost(e.__cause__):
                    raise
                continue
            if status == "committed":
                return True
            if status == "aborted":
                return False
            if status != "in progress":  # (its backend may not have ended yet)
                raise error  # too old to tell
        raise error

    def _write_sqlite(
        self, groups: list[tuple[str, list[tuple[Any, ...]]]], apart: bool = False
    ) -> None:
        """On this thread's connection: BEGIN/COMMIT by hand, no ORM in between. On the event
        loop's thread, _Busy when another process holds the write lock (see QUICK_BUSY_MS),
        unless `apart` (a run's writes on their own: the others' may be committed already, so
        the batch must not be written again whole from the worker thread)."""
        with self.store.reading():
            quick = None if apart else self._quick_connection()
            conn = quick if quick is not None else self.store.db.connection()
            try:
                if quick is not None or self.store.in_memory:
                    conn.execute("BEGIN IMMEDIATE")
                else:  # (the worker's wait of up to a minute: said after a few seconds)
                    begin_immediate(conn, str(self.store.db.database), self.store.db.stop)
            except sqlite3.OperationalError as e:
                if quick is not None and "locked" in str(e):
                    raise _Busy from None
                raise
            try:
                self._apply(conn.cursor(), groups)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _quick_connection(self) -> Any:
        """The loop thread's connection for its writes, which waits QUICK_BUSY_MS at most for
        a lock; None elsewhere (the worker thread, closing, an in-memory store)."""
        if self._closing or self.store.in_memory or threading.get_ident() != self._loop_thread:
            return None
        if self._quick is None:
            conn = self.store.db._connect()  # the store's pragmas; closed with the store
            conn.execute(f"PRAGMA busy_timeout = {QUICK_BUSY_MS}")
            self._quick = conn
        return self._quick

    def _apply(
        self,
        cursor: Any,
        groups: list[tuple[str, list[tuple[Any, ...]]]],
        many: Any = None,
    ) -> None:
        for kind, rows in groups:
            if kind == "end_run" and many is not None:
                _end_runs_many(cursor, rows)
            elif kind == "end_run":
                for args in rows:
                    self._end_run(cursor, *args)
            elif len(rows) == 1:
                cursor.execute(self._sql[kind], rows[0])
            elif many is not None:
                many(cursor, self._sql[kind], rows)
            else:
                cursor.executemany(self._sql[kind], rows)

    def _end_run(
        self,
        cursor: Any,
        run_id: str,
        state: str,
        output: Any,
        error: str | None,
        failed_step: str | None,
        metadata: Mapping[str, Any],
    ) -> None:
        p = self.store.db.param
        lock = " FOR UPDATE" if self.store.kind != "sqlite" else ""
        cursor.execute(f"SELECT metadata FROM workflows WHERE id = {p}{lock}", (run_id,))
        found = cursor.fetchone()
        current: dict[str, Any] = {}
        if found and found[0] is not None:
            raw = found[0]
            current = read_json(raw) if isinstance(raw, str | bytes) else dict(raw)
        current.update(metadata)
        now = _now()
        terminal = state in TERMINAL_STATES
        cursor.execute(
            f"UPDATE workflows SET state = {p}, output = {p}, error = {p}, failed_step = {p}, "
            f"metadata = {p}, updated_at = {p}, completed_at = {p} WHERE id = {p}",
            (
                state,
                _json(output),
                store_text(error),
                failed_step,
                _json(current),
                now,
                now if terminal else None,
                run_id,
            ),
        )

    def close(self) -> None:
        """Stop the worker thread, writing first whatever is still queued or buffered.

        On Ctrl-C the event loop stops before the linger timer fires: without this, the
        `running` rows, the results of pure steps and the runs' last events would be lost.
        """
        self._closing = True
        # a batch in flight commits first (queue order); then each of this writer's threads
        # closes the connection it opened (a process that runs loop after loop on one store
        # would run out of file descriptors)
        for pool in (self._pool, self._checkpointer):
            if pool is not None:
                if not self.store.in_memory:  # (its one connection is every thread's)
                    with suppress(Exception):
                        pool.submit(self.store.db.close)
                pool.shutdown(wait=True)
        if self._quick is not None:
            with suppress(Exception):
                self.store.db._close(self._quick)
            self._quick = None
        self._pending.extend(op for op, _ in self._held.values())
        self._held.clear()
        for recorder in list(self._recorders):  # runs cancelled before they could unfollow
            if taken := recorder.take():
                self._pending.append(("events", _event_rows(recorder.run_id, taken), None))
        self._recorders.clear()
        batch, self._pending = self._pending, []
        if not batch:
            return
        error: BaseException | None = None
        try:
            self._write(batch)
        except _SomeFailed as e:  # the others were written; each refusal was said as it came
            error = e
        except Exception as e:  # the store is closing: say what was lost, do not raise
            # (stopped waiting for a lock: the interrupted process says so, and a crash would
            # have lost the same: what was committed is resumed)
            say = logger.debug if isinstance(e, LockWaitStopped) else logger.warning
            say("journal: %d queued writes were lost on close: %s", len(batch), e)
            error = e
        if not self.loop.is_closed():
            self._resolve(batch, error)


def _paused(store: Any, run_ids: Sequence[str]) -> set[str]:
    """(a thread of the loop's executor) Which of these runs `eclflow pause` was asked of; a run
    whose row is not committed yet was not. A database error is not the run's: none then (the
    next look opens a new connection)."""
    try:
        found = store.runs.states_and_metadata(run_ids)
    except PersistenceError as e:
        logger.warning("could not look for pause requests of %d runs: %s", len(run_ids), e)
        return set()
    return {run_id for run_id, (_, meta) in found.items() if meta.get("pause_requested")}


def _many_pages(cursor: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: psycopg2's executemany is one round trip per row. Many new rows are a `COPY`
    per thousand; rows that may be there already one statement per thousand (one parse and plan
    each): `INSERT … VALUES (…), (…) ON CONFLICT …`, and results and claimed runs that start as
    `UPDATE … FROM (VALUES …)`."""
    from psycopg2.extras import execute_values

    if sql.startswith("INSERT"):
        head, _, rest = sql.partition(" VALUES ")
        row, conflict, tail = rest.partition(" ON CONFLICT ")
        if not conflict:  # new rows only (steps, events, runs): COPY
            _copy(cursor, head.removeprefix("INSERT INTO "), rows)
            return
        execute_values(
            cursor, f"{head} VALUES %s{conflict}{tail}", rows, template=row, page_size=1000
        )
    elif sql.startswith("UPDATE step_executions SET"):
        execute_values(cursor, _PG_FINISH_MANY, rows, template=_PG_FINISH_ROW, page_size=1000)
    elif sql.startswith("UPDATE workflows SET state = 'running'"):
        execute_values(cursor, _PG_START_MANY, rows, template=_PG_START_ROW, page_size=1000)
    else:
        cursor.executemany(sql, rows)


COPY_ROWS = 1000  # PostgreSQL: rows per COPY (its text is built in memory first)


def _copy(cursor: Any, target: str, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: `rows` into `target` ("table (columns)") by `COPY … FROM STDIN`, in COPY's
    text format. Measured against `INSERT … VALUES` of the same 2000 step rows and 5000 events:
    half the server's CPU and two thirds of the client's (which holds the GIL)."""
    for at in range(0, len(rows), COPY_ROWS):
        page = rows[at : at + COPY_ROWS]
        text = "".join(["\t".join(map(_copy_text, row)) + "\n" for row in page])
        # (text, not bytes: psycopg2 encodes it in the connection's client_encoding, as it
        # does an INSERT's parameters; UTF-8 bytes under LATIN1 would be stored as 'Ã©')
        cursor.copy_expert(f"COPY {target} FROM STDIN", io.StringIO(text), 1 << 16)


def _copy_text(value: Any) -> str:
    """One value in COPY's text format: NULL is `\\N`; a backslash, tab, newline or carriage
    return in text is escaped (JSON from _json has only backslashes: it escapes the others).
    Text with a NUL is refused as psycopg2 refuses it in an INSERT."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            value = (
                value.replace("\\", "\\\\")
                .replace("\t", "\\t")
                .replace("\n", "\\n")
                .replace("\r", "\\r")
            )
        return value if value.__class__ is str else str.__str__(value)
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "t" if value else "f"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _NOT_FINITE[str(value)]
    raise TypeError(f"the journal cannot write a {type(value).__name__} to PostgreSQL")


_NOT_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _end_runs_many(cursor: Any, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: the ends of many runs in one statement per thousand, each run's metadata
    merged into the stored one by the server (the keys given replace theirs), with no read
    first. The values are merged as the JSON text they are: `jsonb ||` wrote -0.0 as 0 and
    1e308 as an integer of 309 digits."""
    from psycopg2.extras import execute_values

    now = _now()
    ends: dict[str, tuple[Any, ...]] = {}  # a run ended twice in one batch: the last end wins
    for run_id, state, output, error, failed_step, metadata in rows:
        merged = {**ends[run_id][5], **metadata} if run_id in ends else dict(metadata)
        ends[run_id] = (run_id, state, output, error, failed_step, merged)
    values = []
    for run_id, state, output, error, failed_step, meta in ends.values():
        ended = now if state in TERMINAL_STATES else None
        values.append(
            (run_id, state, _json(output), store_text(error), failed_step, _json(meta), now, ended)
        )
    execute_values(cursor, _PG_END_MANY, values, template=_PG_END_ROW, page_size=1000)


_PG_END_MANY = (
    "UPDATE workflows AS w SET state = v.state, output = v.output, error = v.error, "
    "failed_step = v.failed_step, "
    "metadata = COALESCE((SELECT json_object_agg(m.key, m.value ORDER BY m.n, m.at) FROM ("
    "SELECT 0 AS n, o.key, o.value, o.at FROM json_each(w.metadata) WITH ORDINALITY "
    "AS o (key, value, at) WHERE o.key NOT IN (SELECT json_object_keys(v.metadata)) "
    "UNION ALL SELECT 1, n.key, n.value, n.at FROM json_each(v.metadata) WITH ORDINALITY "
    "AS n (key, value, at)) AS m), '{}'), "
    "updated_at = v.updated_at, completed_at = v.completed_at "
    "FROM (VALUES %s) AS v (id, state, output, error, failed_step, metadata, updated_at, "
    "completed_at) WHERE w.id = v.id"
)
_PG_END_ROW = (
    "(%s::varchar, %s::varchar, %s::json, %s::text, %s::text, %s::json, %s::timestamptz, "
    "%s::timestamptz)"
)

# `start_run` for many claimed runs at once on PostgreSQL (a batch starts tens together)
_PG_START_MANY = (
    "UPDATE workflows AS w SET state = 'running', updated_at = v.updated_at "
    "FROM (VALUES %s) AS v (updated_at, id) WHERE w.id = v.id"
)
_PG_START_ROW = "(%s::timestamptz, %s::varchar)"

# `finish` for many rows at once on PostgreSQL; the casts type the VALUES list, whose NULLs
# would otherwise be text.
_FINISHED = (
    ("state", "varchar"),
    ("outcome", "varchar"),
    ("output", "json"),
    ("feedback", "text"),
    ("error", "text"),
    ("retryable", "boolean"),
    ("duration_ms", "bigint"),
    ("tokens_in", "bigint"),
    ("tokens_out", "bigint"),
    ("cost", "float8"),
    ("traces", "json"),
    ("prompt", "json"),
    ("completed_at", "timestamptz"),
    ("run_id", "varchar"),
    ("key", "text"),
    ("attempt", "integer"),
)
_PG_FINISH_MANY = (
    "UPDATE step_executions AS s SET "
    + ", ".join(f"{c} = v.{c}" for c, _ in _FINISHED[:-3])
    + f" FROM (VALUES %s) AS v ({', '.join(c for c, _ in _FINISHED)}) "
    "WHERE s.run_id = v.run_id AND s.key = v.key AND s.attempt = v.attempt"
)
_PG_FINISH_ROW = f"({', '.join(f'%s::{t}' for _, t in _FINISHED)})"


# The order a batch is written in: a run's row before its steps and events, a run's end after
# everything else of it; a definition's text after the run that refers to it (so that
# RunRepository.prune_definitions, which waits for the transaction, sees that run).
_PHASES = (
    "create_run", "definition", "start_run", "step", "finish", "upsert", "events", "end_run"
)  # fmt: skip

_NO_RESULT = (None,) * 12  # outcome … prompt, completed_at of a `running` row
# the ops of a run whose writes were refused that are written without the others (see
# _write_apart): its row, its definition's text, its start, its events
_KEPT_APART = frozenset({"create_run", "definition", "start_run", "events"})


class _Busy(Exception):
    """A write on the loop's thread found the SQLite file locked by another process."""


class _SomeFailed(Exception):
    """Some runs' writes of a batch were refused: the error of each op, by its position."""

    def __init__(self, failed: dict[int, BaseException]) -> None:
        super().__init__(next(iter(failed.values())))
        self.failed = failed


def _bad_data(error: BaseException) -> bool:
    """Whether `error` is a value the database or its driver refused (which another run's
    writes would not meet), not the database failing (a lock, a lost connection, a full
    disk), which fails every run alike."""
    cause = error.__cause__ if isinstance(error, PersistenceError) else error
    if isinstance(error, LockWaitStopped | _Busy) or cause is None or connection_lost(cause):
        return False
    if isinstance(cause, ValueError | TypeError | OverflowError):  # (the driver's, binding)
        return True
    if isinstance(cause, sqlite3.DataError | sqlite3.IntegrityError):
        return True
    if isinstance(cause, sqlite3.InterfaceError | sqlite3.ProgrammingError):  # (a binding)
        return True
    psycopg2 = sys.modules.get("psycopg2")
    return psycopg2 is not None and isinstance(
        cause, psycopg2.DataError | psycopg2.IntegrityError | psycopg2.ProgrammingError
    )


def _bad_value(error: BaseException) -> bool:
    """Whether `error` (a `_bad_data` one) is a value no database of this kind holds (a number
    beyond its integers, a text it cannot take), which the same write meets again; not a
    constraint (a key, a reference, a trigger), which may hold another time."""
    cause = error.__cause__ if isinstance(error, PersistenceError) else error
    if isinstance(cause, ValueError | TypeError | OverflowError):  # (the driver's, binding)
        return True
    if isinstance(cause, sqlite3.DataError | sqlite3.InterfaceError):
        return True
    psycopg2 = sys.modules.get("psycopg2")
    return psycopg2 is not None and isinstance(cause, psycopg2.DataError)


def _run_of(kind: str, args: tuple[Any, ...]) -> str | None:
    """The run whose write an op is (None: a definition's text, a drain's marker)."""
    if kind in ("definition", "noop") or not args:
        return None
    if kind == "start_run":
        return str(args[1])
    if kind == "finish":
        return str(args[-3])
    return str(args[0])


def _key_of(op: _Op) -> str | None:
    """The journal key of a step's op."""
    kind, args, _ = op
    if kind in ("step", "start", "upsert", "skip"):
        return str(args[2])
    if kind == "finish":
        return str(args[-2])
    return None


def _by_run(batch: list[_Op]) -> dict[str | None, list[tuple[int, _Op]]]:
    """The ops of `batch` (with their positions) by run, in queue order: a flush of events
    split into each run's rows, a definition's text with the run that queued it (each run
    created queues it: with the first alone, the others would lose it when that one fails)."""
    parts: dict[str | None, list[tuple[int, _Op]]] = {}
    created: dict[str, str] = {}  # definition sha256 -> the run created last with it
    for at, op in enumerate(batch):
        kind, args, future = op
        if kind == "events":
            rows: dict[str, list[tuple[Any, ...]]] = {}
            for row in args:
                rows.setdefault(row[0], []).append(row)
            for of_run, its in rows.items():
                parts.setdefault(of_run, []).append((at, ("events", tuple(its), future)))
            continue
        run_id = _run_of(kind, args)
        if kind == "create_run":
            created[args[3]] = str(args[0])  # (its definition's op comes next)
        elif kind == "definition":
            run_id = created.get(args[0])
        parts.setdefault(run_id, []).append((at, op))
    return parts


def _grouped(batch: list[_Op]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The batch's writes by kind in `_PHASES` order; new step rows in queue order, a start and
    its finish made one row."""
    by_kind: dict[str, list[tuple[Any, ...]]] = {}
    steps: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # by (run id, key, attempt)
    for kind, args, _ in batch:
        if kind == "events":  # (one op per flush: the rows of its events)
            by_kind.setdefault(kind, []).extend(args)
        elif kind == "step":  # a whole row: a held start with its result
            steps[(args[0], args[2], args[4])] = args
        elif kind == "start":
            steps[(args[0], args[2], args[4])] = (*args, *_NO_RESULT)
        elif kind == "finish" and (started := steps.get(args[-3:])) is not None:
            steps[args[-3:]] = _whole_row(started, args)
        elif kind == "skip":
            run_id, step_id, key, iteration, now = args
            steps[(run_id, key, "skip")] = (
                *(run_id, step_id, key, iteration, 0, "skipped", None, None, now),
                *_NO_RESULT[:-1],
                now,
            )
        elif kind != "noop":
            by_kind.setdefault(kind, []).append(args)
    if steps:
        by_kind["step"] = list(steps.values())
    if "definition" in by_kind:  # each once, in one order (concurrent writers never cross)
        by_kind["definition"] = sorted(dict(by_kind["definition"]).items())
    return [(kind, by_kind[kind]) for kind in _PHASES if kind in by_kind]


def _event_rows(
    run_id: str,
    batch: Sequence[tuple[str, str | None, Mapping[str, Any]]],
    now: str | None = None,
) -> tuple[tuple[Any, ...], ...]:
    """The `events` rows of one run's events (kind, step id, fields), stamped `now`."""
    now = now or _now()
    return tuple(
        (run_id, now, kind, step_id, _json(data if type(data) is dict else dict(data)))
        for kind, step_id, data in batch
    )


def _whole_row(start: tuple[Any, ...], finish: tuple[Any, ...]) -> tuple[Any, ...]:
    """A step row (the `step` INSERT's columns) from a `start`'s arguments and its `finish`'s
    (state, outcome, output, feedback, error, retryable, duration_ms, tokens_in, tokens_out,
    cost, traces, prompt, completed_at, then the handle)."""
    return (*start[:5], finish[0], *start[6:9], *finish[1:13])


def writer_for(store: Any) -> JournalWriter:
    """The group-commit writer of `store` in the running event loop (kept by the store, which
    closes it; writers of loops that have ended are let go when another loop asks)."""
    loop = asyncio.get_running_loop()
    writers = store.writers
    w = writers.get(id(loop))
    if w is None or w.loop is not loop:
        ended = []
        with _WRITERS_LOCK:  # (event loops in several threads may share the store)
            for key, old in list(writers.items()):
                if old.loop.is_closed() and writers.pop(key, None) is old:
                    ended.append(old)
            w = writers.get(id(loop))
            if w is None or w.loop is not loop:
                w = writers[id(loop)] = JournalWriter(store, loop)
        for old in ended:  # (a flush may take a while: not under the lock)
            old.close()
    return w


_WRITERS_LOCK = threading.Lock()
