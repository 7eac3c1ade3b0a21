"""The one small interface through which the orchestrator is durable (DESIGN.md §3).

A journal runs a step execution under a deterministic key (`generate`, `critique#1`,
`revise#1`, …) or returns the execution it already recorded under that key. Loop decisions
and conditions are computed only from what it returns, so a replay takes the same path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from .result import StepExecution, TraceEvent


class AttemptLog(Protocol):
    """Where the executor writes each attempt: `running` before the call, completed after.
    It may have an `offset`: the attempts earlier executions of the key used (a resumed run's
    first attempt of a step that failed before is attempt `offset + 1`, as the journal
    numbers it); none is 0."""

    def started(self, attempt: int, input: Any, model: str | None) -> Any:
        """Note that an attempt begins (without waiting); returns a handle for `finished`."""

    async def finished(
        self, handle: Any, attempt: int, record: StepExecution, *, commit: bool = True
    ) -> None:
        """Record the attempt's result: once committed, or once queued when not `commit`."""


class Journal(Protocol):
    """Optional, looked up by the orchestrator: `recorded(key)` (how a recorded step ended, to
    take a resumed run's path) and `branch(coro)` (a parallel branch's coroutine as the journal
    wants it run: Restate's has branches take turns so that a replay creates its entries in the
    same order)."""

    def step(
        self,
        key: str,
        step_id: str,
        iteration: int,
        execute: Callable[[AttemptLog], Awaitable[StepExecution]],
    ) -> Awaitable[StepExecution]: ...

    async def skip(self, key: str, step_id: str, iteration: int) -> StepExecution: ...


class _NoLog:
    offset = 0

    def started(self, attempt: int, input: Any, model: str | None) -> None:
        return None

    async def finished(
        self, handle: Any, attempt: int, record: StepExecution, *, commit: bool = True
    ) -> None:
        return None


_NO_LOG = _NoLog()


class MemoryJournal:
    """Not durable: runs everything, remembers nothing. `seed` replays given executions."""

    def __init__(self, seed: Mapping[str, StepExecution] | None = None) -> None:
        self.seed = dict(seed or {})

    def step(
        self,
        key: str,
        step_id: str,
        iteration: int,
        execute: Callable[[AttemptLog], Awaitable[StepExecution]],
    ) -> Awaitable[StepExecution]:
        # (the executor's awaitable itself, not a coroutine awaiting it: a step that waits for
        # its model passes through every coroutine of the run twice, going to sleep and back)
        if key in self.seed:
            return _ready(_replayed(self.seed[key]))
        return execute(_NO_LOG)

    async def skip(self, key: str, step_id: str, iteration: int) -> StepExecution:
        return StepExecution(step_id, key, iteration, "skipped")

    def recorded(self, key: str) -> str | None:
        return "succeeded" if key in self.seed else None


async def _ready(execution: StepExecution) -> StepExecution:
    return execution


def _replayed(e: StepExecution) -> StepExecution:
    """A reused execution as this run records it: same results, no traces of its own, and
    nothing spent (the run it comes from paid for it: counted again, totals and `runs
    --stats` showed it spent twice)."""
    return replace(
        e,
        error=None,
        retryable=False,
        traces=[],
        replayed=True,
        tokens_in=0,
        tokens_out=0,
        cost=0.0,
        calls=0,
    )


class StoreJournal:
    """The local durable journal: every attempt is a row in the store, written before and after
    the call; a key that already has a succeeded row is replayed without calling anything."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        seed: Mapping[str, StepExecution] | None = None,
        *,
        fresh: bool = False,
        rows: Sequence[Any] | None = None,
        seed_from: str | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.seed = dict(seed or {})  # executions reused from another run (--from)
        self.seed_from = seed_from  # that run's id
        self._writer: Any = None
        if rows is None:  # (the run's rows, when the caller has just read them)
            rows = [] if fresh else store.steps.for_run(run_id)
        # the succeeded row of each key (rows come in the order they started)
        self._done: dict[str, Any] = {r.key: r for r in rows if r.state == "succeeded"}
        self._last_attempt: dict[str, int] = {}
        self._skipped: set[str] = set()
        for r in rows:
            self._last_attempt[r.key] = max(self._last_attempt.get(r.key, 0), r.attempt)
            if r.state == "skipped":
                self._skipped.add(r.key)

    @property
    def writer(self) -> Any:
        """The store's group-commit writer for this event loop (see eclflow/store/writer.py)."""
        if self._writer is None:
            from ..store.writer import writer_for

            self._writer = writer_for(self.store)
        return self._writer

    async def step(
        self,
        key: str,
        step_id: str,
        iteration: int,
        execute: Callable[[AttemptLog], Awaitable[StepExecution]],
    ) -> StepExecution:
        row = self._done.get(key)
        if row is not None:
            return execution_from_record(row, replayed=True)
        if key in self.seed:
            reused = _replayed(self.seed.pop(key))
            if self.seed_from is not None:  # (`show` says where the result came from)
                origin = {"reused_from": self.seed_from}
                reused.traces = [TraceEvent("info", "Reused from an earlier run", origin)]
            log = _StoreAttemptLog(self, key, step_id, iteration, 0)
            handle = log.started(1, reused.input, None)  # (no model was called for it here)
            await log.finished(handle, 1, reused)
            return reused
        earlier = self._last_attempt.get(key, 0)
        execution = await execute(_StoreAttemptLog(self, key, step_id, iteration, earlier))
        # its attempts as the journal numbers them (as a replayed step's, `show`'s and the live
        # view's): a key a resumed run makes again counts the attempts made before
        execution.attempts += earlier
        return execution

    def recorded(self, key: str) -> str | None:
        """How the journal has `key`: succeeded, skipped, or not (yet): a resumed run takes
        the path it took."""
        if key in self._done:
            return "succeeded"
        return "skipped" if key in self._skipped else None

    async def skip(self, key: str, step_id: str, iteration: int) -> StepExecution:
        if key not in self._skipped:
            self._skipped.add(key)
            await self.writer.record_skipped(self.run_id, step_id, key, iteration)
        return StepExecution(step_id, key, iteration, "skipped")


class _StoreAttemptLog:
    def __init__(
        self, journal: StoreJournal, key: str, step_id: str, iteration: int, offset: int
    ) -> None:
        self.journal = journal
        self.key = key
        self.step_id = step_id
        self.iteration = iteration
        self.offset = offset  # attempts a crashed or failed earlier execution already used

    def started(self, attempt: int, input: Any, model: str | None) -> Any:
        # queued, not awaited: a crash before it is committed only loses the note that a call
        # was in flight (the step is redone either way)
        return self.journal.writer.start(
            self.journal.run_id,
            self.step_id,
            self.key,
            self.iteration,
            self.offset + attempt,
            input,
            model,
        )

    async def finished(
        self, handle: Any, attempt: int, record: StepExecution, *, commit: bool = True
    ) -> None:
        written = self.journal.writer.finish_execution(handle, record, commit)
        if written is not None:
            await written


def execution_from_record(row: Any, *, replayed: bool) -> StepExecution:
    """A StepExecution rebuilt from a store row (the succeeded attempt of a key)."""
    return StepExecution(
        step_id=row.step_id,
        key=row.key,
        iteration=row.iteration,
        outcome=row.outcome or "success",
        output=row.output,
        feedback=row.feedback,
        error=row.error,
        attempts=row.attempt,
        duration_ms=row.duration_ms or 0,
        tokens_in=row.tokens_in or 0,
        tokens_out=row.tokens_out or 0,
        cost=row.cost or 0.0,
        model=row.model,
        input=row.input,
        prompt=row.prompt,
        traces=[TraceEvent(t.get("level", "info"), t.get("message", "")) for t in row.traces or []],
        replayed=replayed,
    )
