"""The Restate journal: each step execution is `ctx.run_typed(key, …)` in the run's handler.

Restate records what the action returned under the run's invocation; when the handler is
replayed (a worker died, the server restarted) `run_typed` hands back the recorded execution
without calling the action, so the orchestrator takes the same path without calling a model
again. The action itself delegates to an inner journal: the eclflow store when a database is
configured (so `runs`/`show`/`logs` see the attempts, and a step whose result reached the store
but not Restate is not called again), otherwise a `MemoryJournal`.

Restate journals entries in the order they are created, so step executions go through one lock:
the order in which concurrent branches reach the journal then depends only on journaled
results, never on timing, and a replay creates the same entries in the same order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from ..engine.journal import AttemptLog, Journal, MemoryJournal
from ..engine.result import StepExecution, TraceEvent
from ..observe.budget import Spent
from ..spec.model import RetrySpec

STATUS_STATE = "status"
"""The workflow state key holding the run's progress (read by the `status` handler)."""

InnerJournal = Callable[[], Awaitable[Journal]]


def execution_to_json(e: StepExecution) -> dict[str, Any]:
    """Everything of a step execution, as JSON Restate can keep (and give back on replay)."""
    return {
        "step_id": e.step_id,
        "key": e.key,
        "iteration": e.iteration,
        "outcome": e.outcome,
        "output": _jsonable(e.output),
        "feedback": e.feedback,
        "error": e.error,
        "retryable": e.retryable,
        "attempts": e.attempts,
        "duration_ms": e.duration_ms,
        "tokens_in": e.tokens_in,
        "tokens_out": e.tokens_out,
        "cost": e.cost,
        "calls": e.calls,
        "made": e.calls_made,
        "model": e.model,
        "input": _jsonable(e.input),
        "prompt": _jsonable(e.prompt),
        "traces": [
            {"level": t.level, "message": t.message, "fields": _jsonable(t.fields), "time": t.time}
            for t in e.traces
        ],
        "replayed": e.replayed,
    }


def execution_from_json(data: Mapping[str, Any], *, replayed: bool) -> StepExecution:
    """The StepExecution `execution_to_json` wrote."""
    return StepExecution(
        step_id=data["step_id"],
        key=data["key"],
        iteration=int(data.get("iteration", 0)),
        outcome=data["outcome"],
        output=data.get("output"),
        feedback=data.get("feedback"),
        error=data.get("error"),
        retryable=bool(data.get("retryable", False)),
        attempts=int(data.get("attempts", 0)),
        duration_ms=int(data.get("duration_ms", 0)),
        tokens_in=int(data.get("tokens_in", 0)),
        tokens_out=int(data.get("tokens_out", 0)),
        cost=float(data.get("cost", 0.0)),
        calls=int(data.get("calls", 0)),
        # (a journal written before `made` was kept: the calls that answered)
        made=int(data.get("made", data.get("calls", 0))),
        model=data.get("model"),
        input=data.get("input"),
        prompt=data.get("prompt"),
        traces=[
            TraceEvent(
                t.get("level", "info"),
                t.get("message", ""),
                dict(t.get("fields") or {}),
                float(t.get("time", 0.0)),
            )
            for t in data.get("traces") or []
        ],
        replayed=replayed or bool(data.get("replayed", False)),
    )


def run_options(retry: RetrySpec) -> Any:
    """Restate's retries of a step action, bounded by the step's own retry policy.

    The executor already retries model errors inside one action; Restate retries only what
    escapes it (the store unreachable, the process's own failures), at most as often."""
    from restate import RunOptions

    return RunOptions(
        max_attempts=max(1, retry.max_attempts),
        initial_retry_interval=timedelta(seconds=max(0.0, retry.initial_delay)),
        max_retry_interval=timedelta(seconds=max(retry.initial_delay, retry.max_delay)),
        retry_interval_factor=max(1.0, retry.multiplier),
    )


class RestateJournal:
    """The Journal protocol over a Restate workflow context (one per handler invocation)."""

    def __init__(
        self,
        ctx: Any,
        *,
        inner: InnerJournal | None = None,
        retry: Callable[[str], RetrySpec] | None = None,
        workflow_id: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.workflow_id = workflow_id  # (for `status` while the run goes on)
        self.inner = inner
        self.retry = retry or (lambda step_id: RetrySpec())
        self._lock = asyncio.Lock()
        self.progress: list[dict[str, Any]] = []
        self.executed: list[str] = []  # keys this invocation really executed (not replayed)
        # what the steps read back from Restate's journal spent: the run's budget counts it,
        # or every crash of a worker would give the run a whole budget again
        self.spent = Spent()

    async def _inner(self) -> Journal:
        if self.inner is None:
            return MemoryJournal()
        return await self.inner()

    async def step(
        self,
        key: str,
        step_id: str,
        iteration: int,
        execute: Callable[[AttemptLog], Awaitable[StepExecution]],
    ) -> StepExecution:
        from restate import TerminalError

        from ..errors import EclflowError

        ran = False

        async def action() -> dict[str, Any]:
            nonlocal ran
            ran = True
            try:
                journal = await self._inner()
                execution = await journal.step(key, step_id, iteration, execute)
            except EclflowError as e:
                if not e.retryable:
                    raise TerminalError(str(e), status_code=500) from None
                raise
            return execution_to_json(execution)

        async with self._lock:
            self._set_status(running=key)
            try:
                data = await self.ctx.run_typed(key, action, run_options(self.retry(step_id)))
                execution = execution_from_json(data, replayed=not ran)
            except TerminalError as e:
                # Restate gave up (attempts used up) or the failure cannot be retried: the step
                # failed, and the run fails the way it does on the local engine.
                execution = StepExecution(
                    step_id, key, iteration, "failed", error=e.message, attempts=1
                )
            if ran:
                self.executed.append(key)
            else:  # (a call that failed was made: the live budget counted it, so does this)
                self.spent.calls += execution.calls_made
                self.spent.tokens += execution.tokens
                self.spent.usd += execution.cost
            self._record(execution)
        return execution

    async def skip(self, key: str, step_id: str, iteration: int) -> StepExecution:
        async def action() -> dict[str, Any]:
            journal = await self._inner()
            return execution_to_json(await journal.skip(key, step_id, iteration))

        async with self._lock:
            await self.ctx.run_typed(key, action)
            execution = StepExecution(step_id, key, iteration, "skipped")
            self._record(execution)
        return execution

    def _record(self, e: StepExecution) -> None:
        self.progress.append(progress_entry(e))
        self._set_status(running=None)

    def _set_status(self, *, running: str | None) -> None:
        self.ctx.set(
            STATUS_STATE,
            {
                "state": "running",
                "running": running,
                "steps": list(self.progress),
                "workflow": self.workflow_id,
            },
        )


def progress_entry(e: StepExecution) -> dict[str, Any]:
    """A step execution as the run's progress (`eclflow status --engine restate`) shows it."""
    return {
        "key": e.key,
        "step_id": e.step_id,
        "status": e.status,
        "outcome": e.outcome,
        "attempts": e.attempts,
        "duration_ms": e.duration_ms,
        "tokens": e.tokens,
        "error": e.error,
    }


def _jsonable(value: Any) -> Any:
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))
