"""The Restate journal: each step execution is `ctx.run_typed(key, …)` in the run's handler.

Restate records what the action returned under the run's invocation; when the handler is
replayed (a worker died, the server restarted) `run_typed` hands back the recorded execution
without calling the action, so the orchestrator takes the same path without calling a model
again. The action itself delegates to an inner journal: the eclflow store when a database is
configured (so `runs`/`show`/`logs` see the attempts, and a step whose result reached the store
but not Restate is not called again), otherwise a `MemoryJournal`.

Restate requires a replay to create the same entries in the same order, and to wait for
completions in the same order. So parallel branches take turns running the handler's code
(one at a time, in the order they were made), and one driver task waits for every step in
flight with `restate.wait_completed`, waking the branch of the step that completed first only
once every branch is waiting again. A branch's steps then run while the others' do, and which
entry comes next depends only on the order of completions Restate journaled, never on timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

from ..engine.journal import AttemptLog, Journal, MemoryJournal
from ..engine.result import StepExecution, TraceEvent
from ..observe.budget import Spent
from ..spec.model import RetrySpec
from ..steps.base import RetryPolicy

STATUS_STATE = "status"
"""The workflow state key holding the run's progress (read by the `status` handler)."""

InnerJournal = Callable[[], Awaitable[Journal]]
T = TypeVar("T")
logger = logging.getLogger("eclflow.restate")


class _Branch:
    """One branch of a run (a token: whose turn it is to run the handler's code)."""

    __slots__ = ()


_BRANCH: ContextVar[_Branch | None] = ContextVar("eclflow_restate_branch", default=None)


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

    The executor already retries model errors inside one action, and the action retries a
    store that fails; Restate retries only what escapes it (the process's own failures)."""
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
        self.running: list[str] = []  # the keys of the steps in flight
        self.progress: list[dict[str, Any]] = []
        self.executed: list[str] = []  # keys this invocation really executed (not replayed)
        # what the steps read back from Restate's journal spent: the run's budget counts it,
        # or every crash of a worker would give the run a whole budget again
        self.spent = Spent()
        self._turn: _Branch | None = None  # the branch running the handler's code now
        self._queue: deque[tuple[_Branch, asyncio.Future[None]]] = deque()  # the next ones
        # the steps in flight, in the order they were created: (ctx.run future, waiter, branch)
        self._waiting: list[tuple[Any, asyncio.Future[None], _Branch | None]] = []
        self._quiet = asyncio.Event()  # set when no branch runs or waits for its turn
        self._driver: asyncio.Task[None] | None = None
        self._broken: BaseException | None = None  # what stopped the driver (a suspension)

    def branch(self, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        """`coro` (a branch of the run) run in its turn: it queues now, when it is made, so
        branches made in one turn run in the order they were made, each until it waits."""
        me = _Branch()
        ticket: asyncio.Future[None] | None = None
        if self._turn is None and not self._queue:
            self._turn = me
        else:
            ticket = asyncio.get_running_loop().create_future()
            self._queue.append((me, ticket))
        self._quiet.clear()
        return self._run_branch(me, ticket, coro)

    async def _run_branch(
        self, me: _Branch, ticket: asyncio.Future[None] | None, coro: Coroutine[Any, Any, T]
    ) -> T:
        try:
            if ticket is not None:
                await ticket
        except BaseException:  # (cancelled: the run is ending)
            coro.close()
            self._pass_turn(me)
            raise
        token = _BRANCH.set(me)
        try:
            return await coro
        finally:
            _BRANCH.reset(token)
            self._pass_turn(me)

    def _pass_turn(self, me: _Branch | None) -> None:
        """`me` waits or has ended: the next branch in the queue runs, else the driver may."""
        if me is None or self._turn is not me:
            return
        self._turn = None
        while self._queue:
            nxt, ticket = self._queue.popleft()
            if not ticket.done():  # (a branch cancelled in the queue)
                self._turn = nxt
                ticket.set_result(None)
                return
        self._quiet.set()

    async def _wait(self, future: Any) -> None:
        """Until `future` (a `ctx.run`) has completed, as the driver sees it: this branch's
        turn passes on meanwhile, and is given back to it with the completion."""
        if self._broken is not None:
            raise self._broken
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        me = _BRANCH.get()
        self._waiting.append((future, waiter, me))
        self._pass_turn(me)
        if self._turn is None and not self._queue:
            self._quiet.set()
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await waiter

    async def _drive(self) -> None:
        """Wait for the steps in flight, all at once, whenever no branch runs; wake the branch
        of the first one completed (in the order Restate journaled the completions)."""
        import restate

        cancelled: BaseException | None = None  # (the run was cancelled: every step fails)
        try:
            while True:
                while self._turn is not None or self._queue:
                    self._quiet.clear()
                    await self._quiet.wait()
                self._waiting = [w for w in self._waiting if not w[1].done()]
                if not self._waiting:
                    return
                first = 0
                if cancelled is None:
                    try:
                        done, _ = await restate.wait_completed(*(w[0] for w in self._waiting))
                        first = next(i for i, w in enumerate(self._waiting) if w[0] is done[0])
                    except restate.TerminalError as e:
                        cancelled = e
                _, waiter, who = self._waiting.pop(first)
                self._turn = who
                if cancelled is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(cancelled)
        except asyncio.CancelledError:
            for _, waiter, _ in self._waiting:
                waiter.cancel()
            raise
        except BaseException as e:  # (suspended, disconnected: the invocation ends)
            self._broken = e
            for _, waiter, _ in self._waiting:
                if not waiter.done():
                    waiter.set_exception(e)
            self._waiting.clear()

    def close(self) -> None:
        """The handler has ended: stop the driver if it still waits."""
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()

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
            policy = RetryPolicy.from_spec(self.retry(step_id))
            attempt = 1
            while True:
                try:
                    journal = await self._inner()
                    execution = await journal.step(key, step_id, iteration, execute)
                    return execution_to_json(execution)
                except EclflowError as e:
                    if not e.retryable or attempt >= policy.max_attempts:
                        raise TerminalError(str(e), status_code=500) from None
                    # (retried here: Restate would retry the whole invocation, cutting short
                    # the steps of the other branches in flight, whose calls are made again)
                    delay = policy.delay_for_attempt(attempt)
                    logger.warning(
                        "step %s: %s; trying again in %gs (attempt %d of %d)",
                        key,
                        e,
                        delay,
                        attempt + 1,
                        policy.max_attempts,
                    )
                    await asyncio.sleep(delay)
                    attempt += 1

        self.running.append(key)
        self._set_status()
        future = self.ctx.run_typed(key, action, run_options(self.retry(step_id)))
        try:
            await self._wait(future)
            data = await future
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
        self.running.remove(key)
        self._record(execution)
        return execution

    async def skip(self, key: str, step_id: str, iteration: int) -> StepExecution:
        async def action() -> dict[str, Any]:
            journal = await self._inner()
            return execution_to_json(await journal.skip(key, step_id, iteration))

        future = self.ctx.run_typed(key, action)
        await self._wait(future)
        await future
        execution = StepExecution(step_id, key, iteration, "skipped")
        self._record(execution)
        return execution

    def _record(self, e: StepExecution) -> None:
        self.progress.append(progress_entry(e))
        self._set_status()

    def _set_status(self) -> None:
        self.ctx.set(
            STATUS_STATE,
            {
                "state": "running",
                "running": ", ".join(self.running) or None,
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
