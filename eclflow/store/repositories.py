"""Repositories over the models. Every method returns plain records (records.py), commits
before it returns (unless called inside `Store.transaction()`), and raises RunNotFound /
StepNotFound / NotFound for missing rows."""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from peewee import Case, fn

from ..errors import (
    InvalidState,
    NotFound,
    PersistenceError,
    RunNotFound,
    StepNotFound,
    UnclearRunId,
)
from .models import utcnow
from .records import (
    RUN_STATES,
    STEP_STATES,
    TERMINAL_STATES,
    ArtifactRecord,
    EventRecord,
    RunRecord,
    StepRow,
    StepStats,
)

if TYPE_CHECKING:
    from .db import Store

MIN_PREFIX = 4


# the runs' columns, in RunRecord's order (its `definition` is the text of `definitions`)
_RUN_COLUMNS = [f.name for f in fields(RunRecord) if f.name != "definition"]
_DEFINITION_AT = [f.name for f in fields(RunRecord)].index("definition")
_SHA_AT = _RUN_COLUMNS.index("definition_sha256")
_METADATA_AT = _RUN_COLUMNS.index("metadata")


def definition_sql(param: str) -> str:
    """Keep a definition's text (sha256, text) once: a second run of it, or another process
    writing it at the same time, writes nothing. Written after the run that refers to it, in
    the same transaction (see RunRepository.prune_definitions)."""
    return (
        f"INSERT INTO definitions (sha256, text) VALUES ({param}, {param}) "
        "ON CONFLICT (sha256) DO NOTHING"
    )


# The definitions no run refers to. PostgreSQL: an anti-join, one pass over the runs; its
# `NOT IN (subquery)` compared each definition with every run once the runs' hashes outgrew
# work_mem (35 s for a million runs and 600 texts, all the while holding up every worker's
# writes, whose lock_timeout is a minute). SQLite: `NOT IN` lists the runs' hashes once, where
# `NOT EXISTS` would scan the runs for each definition.
UNUSED_DEFINITIONS = {
    "postgresql": "DELETE FROM definitions AS d WHERE NOT EXISTS "
    "(SELECT 1 FROM workflows AS w WHERE w.definition_sha256 = d.sha256)",
    "sqlite": "DELETE FROM definitions WHERE sha256 NOT IN "
    "(SELECT definition_sha256 FROM workflows)",
}


# PostgreSQL: how long one try of prune waits for the runs' table (see prune_definitions)
PRUNE_LOCK_TRY_MS = 500


def _lock_not_available(error: BaseException) -> bool:
    """Whether a PostgreSQL error is a lock wait that ran out (lock_not_available)."""
    seen: BaseException | None = error
    while seen is not None:
        if getattr(seen, "pgcode", None) == "55P03":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RunRepository:
    """Runs (table `workflows`)."""

    def __init__(self, store: Store) -> None:
        self._s = store
        self._m = store.models.Run
        # definition texts by sha256, as read (a hash has one text, so this is never stale)
        self._texts: dict[str, str] = {}
        self._texts_lock = threading.Lock()

    def create(
        self,
        run_id: str,
        definition_id: str,
        definition_name: str | None,
        definition: str,
        definition_sha256: str,
        input: Any,
        state: str = "pending",
        metadata: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        _check_state(state)
        now = utcnow()
        with self._s.transaction():
            self._m.insert(
                id=run_id,
                definition_id=definition_id,
                definition_name=definition_name,
                definition_sha256=definition_sha256,
                input=input,
                state=state,
                metadata=dict(metadata or {}),
                created_at=now,
                updated_at=now,
                completed_at=now if state in TERMINAL_STATES else None,
            ).execute()
            self._s.db.execute_sql(
                definition_sql(self._s.db.param), (definition_sha256, definition)
            )
            return self.get(run_id)

    def claim_many(
        self,
        rows: Sequence[Mapping[str, Any]],
        token: str,
        *,
        returning: bool | None = None,
        stop: threading.Event | None = None,
        take_over: Iterable[str] = (),
    ) -> set[str]:
        """Write the rows of runs that do not exist yet, `pending`, each with `token` in its
        metadata; the ids this call wrote (a run another process wrote first is not claimed).
        `rows` are what `create` takes. A batch claims thousands at once before it starts:
        plain SQL, a few hundred rows a statement, told by RETURNING which it wrote (SQLite
        before 3.35 has none: the rows are read back and their token compared). Once `stop`
        is set, no further statement is made (what was claimed is returned). `take_over`: the
        tokens of claims whose process has ended: a run still `pending` under one of them is
        claimed too, its row written anew in the same statement (a batch started again after
        a crash deleted 100 000 such rows first, then wrote them again)."""
        import sqlite3

        from .models import store_text
        from .writer import _json, _now

        if returning is None:
            returning = self._s.kind != "sqlite" or sqlite3.sqlite_version_info >= (3, 35)
        M = self._m
        db = self._s.db
        now = _now()
        columns = (
            "id, definition_id, definition_name, definition_sha256, input, state, metadata, "
            "created_at, updated_at"
        )
        one = "(" + ", ".join([db.param] * 9) + ")"
        dead = builtins.list(take_over)
        conflict = "ON CONFLICT (id) DO NOTHING"
        if dead:  # (a claim's process has ended for good: its token never comes back)
            claim = (
                "json_extract(workflows.metadata, '$.claim')"
                if self._s.kind == "sqlite"
                else "(workflows.metadata ->> 'claim')"
            )
            rewritten = [c.strip() for c in columns.split(",") if c.strip() != "id"]
            conflict = (
                "ON CONFLICT (id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in rewritten)
                + f" WHERE workflows.state = 'pending' AND {claim} IN "
                + "("
                + ", ".join([db.param] * len(dead))
                + ")"
            )
        claimed: set[str] = set()
        for start in range(0, len(rows), 200):
            if stop is not None and stop.is_set():
                break
            part = rows[start : start + 200]
            params: list[Any] = []
            texts: dict[str, str] = {}
            for r in part:
                meta = {**(r.get("metadata") or {}), "claim": token}
                params += (
                    r["run_id"], r["definition_id"], store_text(r.get("definition_name")),
                    r["definition_sha256"], _json(r.get("input")), "pending", _json(meta), now,
                    now,
                )  # fmt: skip
                texts[r["definition_sha256"]] = r["definition"]
            params += dead
            sql = (
                f"INSERT INTO workflows ({columns}) VALUES {', '.join([one] * len(part))} "
                + conflict
                + (" RETURNING id" if returning else "")
            )
            with self._s.transaction():
                cursor = db.execute_sql(sql, params)
                if returning:
                    claimed |= {row[0] for row in cursor.fetchall()}
                else:
                    query = M.select(M.id, M.metadata).where(M.id.in_([r["run_id"] for r in part]))
                    claimed |= {r.id for r in query if (r.metadata or {}).get("claim") == token}
                for sha in sorted(texts):  # (in one order: two processes never wait crosswise)
                    db.execute_sql(definition_sql(db.param), (sha, texts[sha]))
        return claimed

    def _claim_many_slowly(
        self, rows: Sequence[Mapping[str, Any]], token: str, **kw: Any
    ) -> set[str]:
        """`claim_many` as on SQLite before 3.35 (no RETURNING)."""
        return self.claim_many(rows, token, returning=False, **kw)

    def unclaim(self, run_ids: Iterable[str]) -> None:
        """Delete claimed runs that never started (`pending`, no steps). The rows are found by
        id: SQLite took the (state, created_at) index for `state = 'pending'` and read every
        pending row for each chunk (a stopped batch of 100 000 items took a minute to end);
        `state || ''` is no indexed column."""
        M = self._m
        for chunk in _chunks(run_ids):
            with self._s.transaction():
                M.delete().where(M.id.in_(chunk) & (M.state.concat("") == "pending")).execute()

    def get(self, run_id: str, *, for_update: bool = False) -> RunRecord:
        """The run with exactly this id; `for_update` (inside a transaction) locks its row until
        the transaction ends, so that what is decided from it still holds when it is written."""
        M = self._m
        with self._s.reading():
            query = M.select().where(M.id == run_id)
            if for_update and self._s.kind == "postgresql":
                query = query.for_update()  # SQLite's BEGIN IMMEDIATE already holds the lock
            row = query.first()
        if row is None:
            raise RunNotFound(run_id)
        return self._record(row)

    def exists(self, run_id: str) -> bool:
        with self._s.reading():
            return self._m.select(self._m.id).where(self._m.id == run_id).exists()

    def states(self, run_ids: Iterable[str]) -> dict[str, str]:
        """The state of each of these runs that exists (one query per 500 ids)."""
        return dict(self._by_id("state", run_ids))

    def states_and_metadata(self, run_ids: Iterable[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """The state and metadata of each of these runs that exists (one query per 500 ids):
        what tells who holds a run, without reading its definition and input (a batch started
        again checks every item its last attempt claimed)."""
        read = self._m.metadata.python_value
        return {
            i: (state, dict(read(meta) or {}))
            for i, state, meta in self._by_id("state, metadata", run_ids)
        }

    def _by_id(self, columns: str, run_ids: Iterable[str]) -> list[tuple[Any, ...]]:
        """(id, *columns) of each of these runs that exists, in plain SQL: a batch asks about
        every one of its items, and peewee took longer to build each query of 500 ids than
        the database took to answer it (a third of a second for 100 000 items, not one)."""
        db = self._s.db
        out: list[tuple[Any, ...]] = []
        with self._s.reading():
            for chunk in _chunks(run_ids):
                sql = (
                    f"SELECT id, {columns} FROM workflows "
                    f"WHERE id IN ({', '.join([db.param] * len(chunk))})"
                )
                out += db.execute_sql(sql, chunk).fetchall()
        return out

    def get_many(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        """Each of these runs that exists, by id (one query per 500 ids; as tuples in
        RunRecord's order, not model objects: a batch run again reads every item's)."""
        M = self._m
        columns = [getattr(M, name) for name in _RUN_COLUMNS]
        rows: builtins.list[tuple[Any, ...]] = []
        with self._s.reading():
            for chunk in _chunks(run_ids):
                query = M.select(*columns).where(M.id.in_(chunk)).tuples()
                rows.extend(cast(Iterable[tuple[Any, ...]], query))
        texts = self.definitions(v[_SHA_AT] for v in rows)
        out: dict[str, RunRecord] = {}
        for v in rows:
            # (metadata is a dict of its own, as _run makes it)
            values = [*v[:_METADATA_AT], dict(v[_METADATA_AT] or {}), *v[_METADATA_AT + 1 :]]
            values.insert(_DEFINITION_AT, texts.get(v[_SHA_AT], ""))
            out[v[0]] = RunRecord(*values)
        return out

    def definitions(self, hashes: Iterable[str]) -> dict[str, str]:
        """The text of each of these definitions that is stored, by sha256 (read once per
        store and hash)."""
        wanted = set(hashes)
        with self._texts_lock:
            out = {h: self._texts[h] for h in wanted if h in self._texts}
        missing = builtins.list(wanted - out.keys())
        if missing:
            db = self._s.db
            with self._s.reading():
                for chunk in _chunks(missing):
                    sql = (
                        "SELECT sha256, text FROM definitions "
                        f"WHERE sha256 IN ({', '.join([db.param] * len(chunk))})"
                    )
                    out.update(db.execute_sql(sql, chunk).fetchall())
            with self._texts_lock:
                self._texts.update(out)
        return out

    def _record(self, row: Any) -> RunRecord:
        sha = row.definition_sha256
        return _run(row, self.definitions([sha]).get(sha, ""))

    def _records(self, rows: Iterable[Any]) -> builtins.list[RunRecord]:
        rows = builtins.list(rows)
        texts = self.definitions(r.definition_sha256 for r in rows)
        return [_run(r, texts.get(r.definition_sha256, "")) for r in rows]

    def find(self, prefix: str) -> RunRecord:
        """The run whose id is `prefix`, or the only one starting with it (≥ 4 characters)."""
        given = prefix.strip()
        text = given.lower()
        if not text:
            raise RunNotFound(repr(prefix))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # (bytes no UTF-8 text has, from argv): no run has them
            raise RunNotFound(prefix) from None
        M = self._m
        with self._s.reading():
            row = M.get_or_none(M.id == given)
        if row is not None:
            return self._record(row)
        with self._s.reading():
            rows = builtins.list(
                M.select(M.id, M.definition_id, M.state, M.created_at)
                .where(fn.SUBSTR(fn.LOWER(M.id), 1, len(text)) == text)
                .order_by(M.created_at.desc())
                .limit(6)
            )
        if not rows:
            raise RunNotFound(prefix)
        if len(text) < MIN_PREFIX:
            raise UnclearRunId(
                f"run id prefix '{prefix}' is too short: give at least {MIN_PREFIX} characters"
            )
        if len(rows) > 1:
            shown = ", ".join(f"{r.id} ({r.definition_id}, {r.state})" for r in rows[:5])
            more = " and more" if len(rows) > 5 else ""
            raise UnclearRunId(f"run id prefix '{prefix}' is ambiguous: {shown}{more}")
        return self.get(rows[0].id)

    def update_state(
        self,
        run_id: str,
        state: str,
        error: str | None = None,
        failed_step: str | None = None,
    ) -> None:
        """Set the state (and error, failed step); completed_at is set on terminal states and
        cleared otherwise."""
        _check_state(state)
        now = utcnow()
        with self._s.transaction():
            n = (
                self._m.update(
                    state=state,
                    error=error,
                    failed_step=failed_step,
                    updated_at=now,
                    completed_at=now if state in TERMINAL_STATES else None,
                )
                .where(self._m.id == run_id)
                .execute()
            )
        if not n:
            raise RunNotFound(run_id)

    def update_output(self, run_id: str, output: Any) -> None:
        with self._s.transaction():
            n = (
                self._m.update(output=output, updated_at=utcnow())
                .where(self._m.id == run_id)
                .execute()
            )
        if not n:
            raise RunNotFound(run_id)

    def update_metadata(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the run's metadata (read and written in one write transaction,
        so concurrent updates are not lost); returns the merged metadata."""
        M = self._m
        with self._s.transaction():
            query = M.select(M.metadata).where(M.id == run_id)
            if self._s.kind == "postgresql":
                query = query.for_update()  # SQLite's BEGIN IMMEDIATE already holds the lock
            row = query.first()
            if row is None:
                raise RunNotFound(run_id)
            merged = {**(row.metadata or {}), **fields}
            M.update(metadata=merged, updated_at=utcnow()).where(M.id == run_id).execute()
        return merged

    def list(
        self,
        state: str | None = None,
        definition_id: str | None = None,
        limit: int | None = 50,
    ) -> builtins.list[RunRecord]:
        """Runs, newest first; only those whose `status` is `state` if given: `running` and
        `pending` leave out the runs whose process has ended, which `interrupted` lists (the
        journal still holds them running or pending: see RunRecord.status)."""
        if state in _SHOWN_AS:
            query = self._shown(state, definition_id, None)
            with self._s.reading():
                rows = builtins.list(query.order_by(self._m.created_at.desc(), self._m.id.desc()))
            found = [r for r in rows if _shown_state(r) == state]
            return self._records(found if limit is None else found[:limit])
        query = self._filtered(state, definition_id, None).order_by(
            self._m.created_at.desc(), self._m.id.desc()
        )
        if limit is not None:
            query = query.limit(limit)
        with self._s.reading():
            rows = builtins.list(query)
        return self._records(rows)

    def count(
        self,
        state: str | None = None,
        definition_id: str | None = None,
        older_than: timedelta | None = None,
    ) -> int:
        """How many runs `list` gives with no limit (and created more than `older_than` ago)."""
        if state in _SHOWN_AS:
            M = self._m
            query = self._shown(state, definition_id, older_than).select(M.state, M.metadata)
            with self._s.reading():
                return sum(_shown_state(r) == state for r in query)
        with self._s.reading():
            return int(self._filtered(state, definition_id, older_than).count())

    def _shown(self, state: str, definition_id: str | None, older_than: timedelta | None) -> Any:
        """The runs stored in a state that `state` is shown for (running, pending: and
        interrupted, when their process has ended)."""
        query = self._filtered(None, definition_id, older_than)
        return query.where(self._m.state.in_(_SHOWN_AS[state]))

    def delete(self, run_id: str) -> None:
        """Delete the run and (cascading) its steps, artifacts and events."""
        with self._s.transaction():
            n = self._m.delete().where(self._m.id == run_id).execute()
        if not n:
            raise RunNotFound(run_id)

    def prune(self, older_than: timedelta | None, state: str | None = None) -> tuple[int, int]:
        """Delete runs created more than `older_than` ago (all when None), only in `state` if
        given, except those a process may still be running (decided in the same transaction,
        so that a resume cannot take one in between); returns (deleted, kept)."""
        ids = self._filtered(state, None, older_than).select(self._m.id)
        with self._s.transaction():
            live = self.live(older_than, state)
            query = self._m.delete().where(self._m.id.in_(ids))
            if live:
                query = query.where(self._m.id.not_in(live))
            deleted = int(query.execute())
        self.prune_definitions()  # (those of the runs `delete` and `unclaim` took, too)
        return deleted, len(live)

    def prune_definitions(self) -> int:
        """Delete the definitions no run refers to any more; how many. A writer inserts a
        definition after the run that refers to it, in one transaction, so none is deleted
        from under a run being written: on SQLite every write transaction is serialised, and
        on PostgreSQL this one first waits for those writing runs (SHARE on `workflows`
        conflicts with their ROW EXCLUSIVE) and holds off new ones until it commits.

        PostgreSQL waits for that lock in tries of PRUNE_LOCK_TRY_MS: a lock request waiting
        queues every later write to the table behind it, so one waiting a minute for a
        session left in a transaction would stall every worker's journal for that minute."""
        if self._s.kind != "postgresql":
            with self._s.transaction():
                return int(self._s.db.execute_sql(UNUSED_DEFINITIONS["sqlite"]).rowcount)
        from .db import LOCK_TIMEOUT_MS

        db = self._s.db
        deadline = time.monotonic() + LOCK_TIMEOUT_MS / 1000
        while True:
            try:
                with self._s.transaction():
                    (before,) = db.execute_sql("SELECT current_setting('lock_timeout')").fetchone()
                    db.execute_sql(
                        "SELECT set_config('lock_timeout', %s, true)", (str(PRUNE_LOCK_TRY_MS),)
                    )
                    db.execute_sql("LOCK TABLE workflows IN SHARE MODE")
                    db.execute_sql("SELECT set_config('lock_timeout', %s, true)", (before,))
                    return int(db.execute_sql(UNUSED_DEFINITIONS["postgresql"]).rowcount)
            except PersistenceError as e:
                if not _lock_not_available(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(PRUNE_LOCK_TRY_MS / 1000)  # (the writers queued behind it go first)

    def live(
        self, older_than: timedelta | None = None, state: str | None = None
    ) -> builtins.list[str]:
        """Ids of the runs recorded running whose process may still be running them (alive, or
        on another host): deleting one would break it mid-run."""
        from .owner import holder

        if state not in (None, "running", "pending"):
            return []
        M = self._m
        query = self._filtered(state, None, older_than).select(M.id, M.metadata, M.state)
        query = query.where(M.state.in_(["running", "pending"]))
        if self._s.kind == "postgresql" and self._s.db.in_transaction():
            query = query.for_update()  # (held until the caller's delete)
        with self._s.reading():
            return [r.id for r in query if holder(r.metadata or {}) != "gone"]

    def _filtered(
        self, state: str | None, definition_id: str | None, older_than: timedelta | None
    ) -> Any:
        M = self._m
        query = M.select()
        if state is not None:
            _check_state(state)
            query = query.where(M.state == state)
        if definition_id is not None:
            query = query.where(M.definition_id == definition_id)
        if older_than is not None:
            query = query.where(M.created_at < datetime.now(UTC) - older_than)
        return query


class StepRepository:
    """Step executions: one row per attempt of a journal key, written before and after."""

    def __init__(self, store: Store) -> None:
        self._s = store
        self._m = store.models.StepExecution

    def start(
        self,
        run_id: str,
        step_id: str,
        key: str,
        iteration: int,
        attempt: int,
        input: Any = None,
        model: str | None = None,
    ) -> int:
        """Insert a `running` row and commit it; returns the handle for `finish`."""
        with self._s.transaction():
            return int(
                self._m.insert(
                    run=run_id,
                    step_id=step_id,
                    key=key,
                    iteration=iteration,
                    attempt=attempt,
                    state="running",
                    input=input,
                    model=model,
                    started_at=utcnow(),
                ).execute()
            )

    def finish(
        self,
        handle: int,
        state: str,
        outcome: str | None = None,
        output: Any = None,
        feedback: str | None = None,
        error: str | None = None,
        retryable: bool | None = None,
        duration_ms: int | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        cost: float | None = None,
        traces: Sequence[Mapping[str, Any]] | None = None,
        prompt: Any = None,
    ) -> None:
        """Complete the attempt `handle` in one transaction."""
        if state not in STEP_STATES:
            raise InvalidState(f"unknown step state '{state}' (one of {', '.join(STEP_STATES)})")
        with self._s.transaction():
            n = (
                self._m.update(
                    state=state,
                    outcome=outcome,
                    output=output,
                    feedback=feedback,
                    error=error,
                    retryable=retryable,
                    duration_ms=duration_ms,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    cost=cost,
                    traces=[dict(t) for t in traces] if traces is not None else None,
                    prompt=prompt,
                    completed_at=utcnow(),
                )
                .where(self._m.id == handle)
                .execute()
            )
        if not n:
            raise StepNotFound(f"execution {handle}")

    def record_skipped(self, run_id: str, step_id: str, key: str, iteration: int) -> int:
        """Mark `key` as skipped (attempt 0); idempotent. Returns the row id."""
        M = self._m
        now = utcnow()
        with self._s.transaction():
            row = (
                M.select(M.id)
                .where((M.run == run_id) & (M.key == key) & (M.state == "skipped"))
                .first()
            )
            if row is not None:
                return int(row.id)
            return int(
                M.insert(
                    run=run_id,
                    step_id=step_id,
                    key=key,
                    iteration=iteration,
                    attempt=0,
                    state="skipped",
                    outcome="skipped",
                    started_at=now,
                    completed_at=now,
                    duration_ms=0,
                ).execute()
            )

    def get(self, id: int) -> StepRow:
        with self._s.reading():
            row = self._m.get_or_none(self._m.id == id)
        if row is None:
            raise StepNotFound(f"execution {id}")
        return _step(row)

    def for_run(self, run_id: str) -> list[StepRow]:
        """Every row of the run, in the order they started."""
        M = self._m
        with self._s.reading():
            return [
                _step(r) for r in M.select().where(M.run == run_id).order_by(M.started_at, M.id)
            ]

    def for_step(self, run_id: str, step_id: str) -> list[StepRow]:
        """Every row of one step (all its keys), by attempt then start."""
        M = self._m
        with self._s.reading():
            return [
                _step(r)
                for r in M.select()
                .where((M.run == run_id) & (M.step_id == step_id))
                .order_by(M.attempt, M.started_at, M.id)
            ]

    def succeeded(self, run_id: str) -> dict[str, StepRow]:
        """The succeeded row of each key, in the order they started."""
        M = self._m
        with self._s.reading():
            rows = (
                M.select()
                .where((M.run == run_id) & (M.state == "succeeded"))
                .order_by(M.started_at, M.id)
            )
            return {r.key: _step(r) for r in rows}

    def succeeded_many(self, run_ids: Iterable[str]) -> dict[str, dict[str, StepRow]]:
        """`succeeded` of several runs (one query per 500 ids; runs without rows left out)."""
        M = self._m
        out: dict[str, dict[str, StepRow]] = {}
        # as tuples in StepRow's order, not model objects: a batch run again reads the steps
        # of every item, and making a model object of each row took most of the time
        columns = [getattr(M, "run" if f.name == "run_id" else f.name) for f in fields(StepRow)]
        with self._s.reading():
            for chunk in _chunks(run_ids):
                rows = (
                    M.select(*columns)
                    .where(M.run.in_(chunk) & (M.state == "succeeded"))
                    .order_by(M.run, M.started_at, M.id)
                    .tuples()
                )
                for values in cast(Iterable[tuple[Any, ...]], rows):
                    r = StepRow(*(*values[:-1], list(values[-1] or [])))
                    out.setdefault(r.run_id, {})[r.key] = r
        return out

    def stats(self, run_id: str) -> StepStats:
        return self.stats_many([run_id]).get(run_id, StepStats())

    def stats_many(self, run_ids: Iterable[str]) -> dict[str, StepStats]:
        """StepStats of several runs in one query (runs without rows are left out)."""
        ids = builtins.list(run_ids)
        if not ids:
            return {}
        M = self._m

        def count_state(state: str) -> Any:
            return fn.SUM(Case(None, ((M.state == state, 1),), 0))

        query = (
            M.select(
                M.run.alias("run_id"),
                fn.COUNT(M.id).alias("count"),
                count_state("succeeded").alias("succeeded"),
                count_state("failed").alias("failed"),
                count_state("running").alias("running"),
                count_state("skipped").alias("skipped"),
                fn.COUNT(fn.DISTINCT(Case(None, ((M.state != "skipped", M.key),), None))).alias(
                    "steps"
                ),
                fn.COALESCE(fn.SUM(M.duration_ms), 0).alias("duration_ms"),
                fn.COALESCE(fn.SUM(M.tokens_in), 0).alias("tokens_in"),
                fn.COALESCE(fn.SUM(M.tokens_out), 0).alias("tokens_out"),
                fn.COALESCE(fn.SUM(M.cost), 0).alias("cost"),
            )
            .where(M.run.in_(ids))
            .group_by(M.run)
            .dicts()
        )
        with self._s.reading():
            return {
                r["run_id"]: StepStats(
                    count=int(r["count"]),
                    succeeded=int(r["succeeded"] or 0),
                    failed=int(r["failed"] or 0),
                    duration_ms=int(r["duration_ms"]),
                    tokens_in=int(r["tokens_in"]),
                    tokens_out=int(r["tokens_out"]),
                    cost=float(r["cost"]),
                    running=int(r["running"] or 0),
                    skipped=int(r["skipped"] or 0),
                    steps=int(r["steps"]),
                )
                for r in query
            }

    def totals(self, by: str, definition_id: str | None = None) -> list[dict[str, Any]]:
        """Runs, model calls (attempts with a model), tokens and dollars grouped by `workflow`
        (definition id) or by `model`, largest cost first; of one workflow's runs if given."""
        M = self._m
        R = self._s.models.Run
        key = R.definition_id if by == "workflow" else M.model
        query = (
            M.select(
                key.alias("key"),
                fn.COUNT(fn.DISTINCT(M.run)).alias("runs"),
                fn.SUM(Case(None, ((M.model.is_null(False), 1),), 0)).alias("calls"),
                fn.COALESCE(fn.SUM(M.tokens_in), 0).alias("tokens_in"),
                fn.COALESCE(fn.SUM(M.tokens_out), 0).alias("tokens_out"),
                fn.COALESCE(fn.SUM(M.cost), 0).alias("cost"),
            )
            .join(R, on=(M.run == R.id))
            .where(M.state != "skipped")
            .group_by(key)
            .dicts()
        )
        if definition_id is not None:
            query = query.where(R.definition_id == definition_id)
        with self._s.reading():
            rows = [
                {
                    by: r["key"] if r["key"] is not None else "(no model)",
                    "runs": int(r["runs"]),
                    "calls": int(r["calls"] or 0),
                    "tokens_in": int(r["tokens_in"]),
                    "tokens_out": int(r["tokens_out"]),
                    "cost": float(r["cost"]),
                }
                for r in query
            ]
        return sorted(rows, key=lambda r: (-r["cost"], -r["tokens_in"] - r["tokens_out"]))


class ArtifactRepository:
    """Named content a step produced: inline text, or the path of a file."""

    def __init__(self, store: Store) -> None:
        self._s = store
        self._m = store.models.Artifact

    def create(
        self,
        run_id: str,
        name: str,
        *,
        step_id: str | None = None,
        content: str | None = None,
        content_type: str = "text/plain",
        path: str | None = None,
        size: int | None = None,
    ) -> ArtifactRecord:
        if size is None and content is not None:
            size = len(content.encode("utf-8", "surrogatepass"))  # (a lone one: 3 bytes)
        with self._s.transaction():
            id = self._m.insert(
                run=run_id,
                step_id=step_id,
                name=name,
                content_type=content_type,
                content=content,
                path=path,
                size=size,
                created_at=utcnow(),
            ).execute()
            return self.get(int(id))

    def get(self, id: int) -> ArtifactRecord:
        with self._s.reading():
            row = self._m.get_or_none(self._m.id == id)
        if row is None:
            raise NotFound(f"Artifact not found: {id}")
        return _artifact(row)

    def for_run(self, run_id: str, step_id: str | None = None) -> list[ArtifactRecord]:
        M = self._m
        query = M.select().where(M.run == run_id)
        if step_id is not None:
            query = query.where(M.step_id == step_id)
        with self._s.reading():
            return [_artifact(r) for r in query.order_by(M.id)]

    def delete(self, id: int) -> None:
        with self._s.transaction():
            n = self._m.delete().where(self._m.id == id).execute()
        if not n:
            raise NotFound(f"Artifact not found: {id}")


class EventRepository:
    """A run's timeline: the standard events of eclflow.observe.events, in order."""

    def __init__(self, store: Store) -> None:
        self._s = store
        self._m = store.models.Event

    def append(self, run_id: str, kind: str, fields: Mapping[str, Any] | None = None) -> int:
        data = dict(fields or {})
        with self._s.transaction():
            return int(
                self._m.insert(
                    run=run_id,
                    ts=_event_time(data),
                    kind=kind,
                    step_id=data.get("step_id"),
                    fields=data,
                ).execute()
            )

    def append_many(
        self, run_id: str, batch: Sequence[tuple[str, str | None, Mapping[str, Any]]]
    ) -> None:
        """Write `(kind, step_id, fields)` events in one transaction."""
        rows = [
            {
                "run": run_id,
                "ts": _event_time(data),
                "kind": kind,
                "step_id": step_id,
                "fields": {"step_id": step_id, **data} if step_id else dict(data),
            }
            for kind, step_id, data in batch
        ]
        if not rows:
            return
        with self._s.transaction():
            for chunk in range(0, len(rows), 200):
                self._m.insert_many(rows[chunk : chunk + 200]).execute()

    def last_time(self, run_id: str) -> datetime | None:
        """The time of the run's last event written, None if it has none."""
        M = self._m
        query = M.select(M.ts).where(M.run == run_id).order_by(M.id.desc()).limit(1)
        with self._s.reading():
            row = query.first()
        return row.ts if row is not None else None

    def for_run(
        self, run_id: str, after_id: int | None = None, limit: int | None = None
    ) -> list[EventRecord]:
        """The run's events in the order they were written (after `after_id` if given)."""
        M = self._m
        query = M.select().where(M.run == run_id)
        if after_id is not None:
            query = query.where(M.id > after_id)
        query = query.order_by(M.id)
        if limit is not None:
            query = query.limit(limit)
        with self._s.reading():
            return [
                EventRecord(
                    id=r.id,
                    run_id=r.run_id,
                    ts=r.ts,
                    kind=r.kind,
                    step_id=r.step_id,
                    fields=r.fields or {},
                )
                for r in query
            ]


def _chunks(ids: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    """`ids` in lists of `size`: one query each keeps the statement's parameters bounded."""
    ids = builtins.list(ids)
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


# the states a run's status may be that are not its stored state only: what each is stored as
_SHOWN_AS = {
    "running": ("running",),
    "pending": ("pending",),
    "interrupted": ("running", "pending"),
}


def _shown_state(row: Any) -> str:
    """A run row's `RunRecord.status`."""
    from .owner import shown_state

    return shown_state(row.state, row.metadata or {})


def _check_state(state: str) -> None:
    if state not in RUN_STATES:
        raise InvalidState(f"unknown run state '{state}' (one of {', '.join(RUN_STATES)})")


def _event_time(data: Mapping[str, Any]) -> datetime:
    ts = data.get("ts")
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts, UTC)
    return utcnow()


def _run(r: Any, definition: str) -> RunRecord:
    return RunRecord(
        id=r.id,
        definition_id=r.definition_id,
        definition_name=r.definition_name,
        definition=definition,
        definition_sha256=r.definition_sha256,
        input=r.input,
        state=r.state,
        output=r.output,
        error=r.error,
        failed_step=r.failed_step,
        metadata=dict(r.metadata or {}),
        created_at=r.created_at,
        updated_at=r.updated_at,
        completed_at=r.completed_at,
    )


def _step(r: Any) -> StepRow:
    return StepRow(
        id=r.id,
        run_id=r.run_id,
        step_id=r.step_id,
        key=r.key,
        iteration=r.iteration,
        attempt=r.attempt,
        state=r.state,
        outcome=r.outcome,
        input=r.input,
        output=r.output,
        feedback=r.feedback,
        error=r.error,
        retryable=r.retryable,
        model=r.model,
        prompt=r.prompt,
        started_at=r.started_at,
        completed_at=r.completed_at,
        duration_ms=r.duration_ms,
        tokens_in=r.tokens_in,
        tokens_out=r.tokens_out,
        cost=r.cost,
        traces=list(r.traces or []),
    )


def _artifact(r: Any) -> ArtifactRecord:
    return ArtifactRecord(
        id=r.id,
        run_id=r.run_id,
        step_id=r.step_id,
        name=r.name,
        content_type=r.content_type,
        content=r.content,
        path=r.path,
        size=r.size,
        created_at=r.created_at,
    )


__all__ = [
    "ArtifactRepository",
    "EventRepository",
    "RunRepository",
    "StepRepository",
]
