"""The orchestrator: runs a compiled plan — concurrency, conditions, revision loops, output.

Every step execution goes through the journal under a deterministic key; decisions are taken
only from what the journal returns, so a replayed run takes exactly the same path.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import expr
from ..errors import EclflowError, MaxRevisionsExceeded, TemplateError
from ..graph.plan import Loop, Plan
from ..steps.base import LoopState, Step
from ..steps.registry import StepRegistry, default_registry
from .executor import Executor
from .journal import Journal
from .result import RunResult, StepExecution

# (event, payload) callbacks for live views and logs: step_started, step_finished, loop_revision
Listener = Callable[[str, Mapping[str, Any]], None]


class _RunFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(error)
        self.step = step
        self.error = error


@dataclass(slots=True)
class _State:
    input: Mapping[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    versions: dict[str, list[Any]] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    executions: list[StepExecution] = field(default_factory=list)

    def context(self, loop: LoopState | None = None) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "input": self.input,
            "steps": {
                sid: {
                    "output": self.outputs.get(sid),
                    "status": status,
                    "versions": list(self.versions.get(sid, ())),
                }
                for sid, status in self.statuses.items()
            },
            "loops": {v: {"revisions": n} for v, n in self.revisions.items()},
            "env": self.env,
        }
        if loop is not None:
            ctx["loop"] = loop.as_context()
        return ctx


class Orchestrator:
    """Runs one workflow run. Create one per run."""

    def __init__(
        self,
        plan: Plan,
        executor: Executor,
        journal: Journal,
        *,
        registry: StepRegistry | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.plan = plan
        self.executor = executor
        self.journal = journal
        self.registry = registry or default_registry()
        self.listener = listener
        if listener is not None and executor.on_attempt is None:
            executor.on_attempt = lambda key, n, m: self._emit(
                "step_attempt", key=key, attempt=n, max_attempts=m
            )
        wf = plan.workflow
        self.steps: dict[str, Step] = {s.id: self.registry.get(s.type)(s, wf) for s in wf.steps}

    def _emit(self, event: str, **payload: Any) -> None:
        if self.listener is not None:
            self.listener(event, payload)

    async def run(self, run_id: str, input: Mapping[str, Any]) -> RunResult:
        wf = self.plan.workflow
        started = time.perf_counter()
        state = _State(
            input=input,
            statuses={s.id: "pending" for s in wf.steps},
            env={k: os.environ[k] for k in wf.env if k in os.environ},
        )
        result = RunResult(run_id, wf.id, "running")
        try:
            await self._linear_pass(state)
        except _RunFailed as f:
            result.status = "failed"
            result.error = f.error
            result.failed_step = f.step
        result.steps = state.executions
        result.revisions = dict(state.revisions)
        if result.status == "running" or (
            result.failed_step is not None and result.error and "max revisions" in result.error
        ):
            try:
                result.output = expr.render_value(dict(wf.output), state.context())
            except EclflowError as e:
                if result.status == "running":
                    result.status = "failed"
                    result.error = f"output: {e}"
        if result.status == "running":
            result.status = "completed"
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        return result

    async def _linear_pass(self, state: _State) -> None:
        plan = self.plan
        settled: dict[str, asyncio.Future[str]] = {
            s: asyncio.get_running_loop().create_future() for s in plan.linear
        }
        failure: list[_RunFailed] = []

        async def run_one(sid: str) -> None:
            try:
                statuses = [await settled[w] for w in plan.waits[sid]]
                if failure or "aborted" in statuses:
                    settled[sid].set_result("aborted")
                    return
                if not self._is_active(sid, state):
                    await self._skip(sid, state)
                    settled[sid].set_result("skipped")
                    return
                await self._run_step(sid, state, loop=self._first_pass_loop(sid))
                if sid in plan.loops:
                    await self._run_loop(plan.loops[sid], state)
                settled[sid].set_result("succeeded")
            except _RunFailed as f:
                failure.append(f)
                settled[sid].set_result("aborted")
            except BaseException:
                if not settled[sid].done():
                    settled[sid].set_result("aborted")
                raise

        await asyncio.gather(*(run_one(s) for s in plan.linear))
        if failure:
            raise failure[0]

    def _is_active(self, sid: str, state: _State) -> bool:
        preds = list(self.plan.dag.predecessors(sid))
        if not preds:
            return True
        for p in preds:
            if state.statuses.get(p) != "succeeded":
                continue
            when = self.plan.conditions.get((p, sid))
            if when is None:
                return True
            try:
                if expr.evaluate(when, state.context()):
                    return True
            except TemplateError as e:
                raise _RunFailed(sid, f"condition on {p} -> {sid} failed: {e}") from None
        return False

    def _first_pass_loop(self, sid: str) -> LoopState | None:
        """Body steps of a loop see `loop.*` from their first run (iteration 0, no feedback)."""
        validator = self.plan.loop_of.get(sid)
        if validator is None:
            return None
        return LoopState(iteration=0, max_iterations=self.plan.loops[validator].max_iterations)

    async def _skip(self, sid: str, state: _State) -> None:
        state.statuses[sid] = "skipped"
        execution = await self.journal.skip(first_key(self.plan, sid), sid, 0)
        state.executions.append(execution)
        self._emit("step_finished", execution=execution)

    async def _run_step(
        self,
        sid: str,
        state: _State,
        *,
        key: str | None = None,
        iteration: int = 0,
        loop: LoopState | None = None,
    ) -> StepExecution:
        step = self.steps[sid]
        key = key or first_key(self.plan, sid)
        try:
            rendered = expr.render_value(dict(step.spec.with_), state.context(loop))
        except EclflowError as e:
            raise _RunFailed(sid, f"Step {sid} failed: input: {e}") from None
        if not isinstance(rendered, dict):
            rendered = {}
        state.statuses[sid] = "running"
        self._emit("step_started", step_id=sid, key=key, iteration=iteration)

        async def execute(attempts_log: Any) -> StepExecution:
            return await self.executor.run(step, key, iteration, rendered, attempts_log, loop)

        execution = await self.journal.step(key, sid, iteration, execute)
        state.executions.append(execution)
        self._emit("step_finished", execution=execution)
        if execution.outcome == "failed":
            state.statuses[sid] = "failed"
            raise _RunFailed(sid, f"Step {sid} failed: {execution.error}")
        state.statuses[sid] = "succeeded"
        state.outputs[sid] = execution.output
        state.versions.setdefault(sid, []).append(execution.output)
        return execution

    async def _run_loop(self, loop: Loop, state: _State) -> None:
        """The validator has run once; revise and re-validate until it passes or the bound."""
        last = _last(state, loop.validator)
        revisions = 0
        state.revisions[loop.validator] = 0
        history: list[dict[str, Any]] = []
        while last.outcome == "needs_revision":
            history.append(
                {"iteration": revisions, "output": last.output, "feedback": last.feedback}
            )
            if revisions >= loop.max_iterations:
                if loop.spec.on_exhausted == "accept":
                    return
                err = MaxRevisionsExceeded(loop.max_iterations)
                raise _RunFailed(loop.validator, f"Revision loop failed: {err}")
            revisions += 1
            state.revisions[loop.validator] = revisions
            loop_state = LoopState(
                iteration=revisions,
                max_iterations=loop.max_iterations,
                feedback=last.feedback,
                history=tuple(history),
            )
            self._emit(
                "loop_revision",
                validator=loop.validator,
                iteration=revisions,
                max_iterations=loop.max_iterations,
            )
            revised = await self._run_step(
                loop.reviser,
                state,
                key=f"{loop.reviser}#{revisions}",
                iteration=revisions,
                loop=loop_state,
            )
            # The reviser's output is the new version of the target's output.
            state.outputs[loop.target] = revised.output
            state.versions.setdefault(loop.target, []).append(revised.output)
            for sid in loop.rerun:
                last = await self._run_step(
                    sid,
                    state,
                    key=f"{sid}#{revisions + 1}",
                    iteration=revisions,
                    loop=loop_state,
                )


def _last(state: _State, sid: str) -> StepExecution:
    for e in reversed(state.executions):
        if e.step_id == sid:
            return e
    raise LookupError(sid)


def first_key(plan: Plan, sid: str) -> str:
    """The journal key of a step's first execution (`critique#1` inside a loop body)."""
    loop = plan.loop_of.get(sid)
    if loop is not None and sid != plan.loops[loop].target:
        return f"{sid}#1"
    return sid


def new_run_id() -> str:
    import uuid

    return str(uuid.uuid4())
