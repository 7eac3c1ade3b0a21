"""The orchestrator: runs a compiled plan — concurrency, conditions, revision loops, output.

Every step execution goes through the journal under a deterministic key; decisions are taken
only from what the journal returns, so a replayed run takes exactly the same path.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import expr
from ..errors import EclflowError, MaxRevisionsExceeded, TemplateError
from ..graph.plan import Loop, Plan
from ..observe.events import emit
from ..steps.base import LoopState, Step
from ..steps.registry import StepRegistry, default_registry
from .executor import Executor
from .journal import Journal
from .result import RunResult, StepExecution

# (event, payload) callbacks for live views and logs: step_started, step_finished, loop_revision
# (and run_already_completed, from `resume` of a run that has nothing left to do)
Listener = Callable[[str, Mapping[str, Any]], None]
# Whether somebody asked for the run to pause (`eclflow pause`): asked between steps, at most
# once every PAUSE_POLL seconds, so that short runs never pay for it
PauseCheck = Callable[[], Awaitable[bool]]
PAUSE_POLL = 3.0


class _RunFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(error)
        self.step = step
        self.error = error


class _Stopped(Exception):
    """Another branch failed the run: nothing new starts (what is in flight finishes)."""


class _RunPaused(Exception):
    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


class _State:
    """What a run knows so far, and the template context built from it.

    The context is kept up to date as steps finish instead of being rebuilt for every template
    (templates only read it: the sandbox is immutable).
    """

    __slots__ = (
        "_ctx",
        "_loops",
        "_steps",
        "executions",
        "input",
    )

    def __init__(
        self,
        input: Mapping[str, Any],
        step_ids: Sequence[str],
        env: dict[str, str],
        loops: Sequence[str] = (),
    ):
        self.input = input
        self.executions: list[StepExecution] = []
        self._steps: dict[str, dict[str, Any]] = {
            sid: {"output": None, "status": "pending", "versions": []} for sid in step_ids
        }
        self._loops: dict[str, dict[str, int]] = {}  # the loops that ran
        self._ctx: dict[str, Any] = {
            "input": input,
            "steps": self._steps,
            # every loop, 0 revisions until it runs: a loop a condition skipped made none
            "loops": {v: {"revisions": 0} for v in loops},
            "env": env,
        }

    def status(self, sid: str) -> str:
        return str(self._steps[sid]["status"])

    def set_status(self, sid: str, status: str) -> None:
        self._steps[sid]["status"] = status

    def set_output(self, sid: str, output: Any) -> None:
        """A new version of a step's output (a reviser's output is a new version of its
        target's)."""
        entry = self._steps[sid]
        entry["output"] = output
        entry["versions"] = [*entry["versions"], output]  # copied: earlier lookups keep theirs

    def clear_output(self, sid: str) -> None:
        """A skipped step's output is null (its versions stay)."""
        self._steps[sid]["output"] = None

    def revisions(self) -> dict[str, int]:
        """Revisions so far, by loop validator."""
        return {v: loop["revisions"] for v, loop in self._loops.items()}

    def set_revisions(self, validator: str, n: int) -> None:
        self._loops[validator] = self._ctx["loops"][validator] = {"revisions": n}

    def context(self, loop: dict[str, Any] | None = None) -> dict[str, Any]:
        if loop is None:
            return self._ctx
        return {**self._ctx, "loop": loop}


@dataclass(slots=True)
class _Walk:
    """Where the linear pass stands: how each settled step settled (succeeded | skipped |
    aborted), the steps begun, the first failure, the tasks of parallel branches."""

    begun: set[str]
    settled: dict[str, str] = field(default_factory=dict)
    failure: list[_RunFailed] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    paused: str | None = None  # the first step that did not start because of a pause


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
        pause_check: PauseCheck | None = None,
    ) -> None:
        self.plan = plan
        self.pause_check = pause_check
        self._next_pause_check = time.monotonic() + PAUSE_POLL
        self._pausing = False
        self._failed = False  # a branch has failed the run
        self.executor = executor
        self.journal = journal
        self._recorded = getattr(journal, "recorded", None)  # (a journal may not say)
        self.registry = registry or default_registry()
        self.listener = listener
        if listener is not None and executor.on_attempt is None:
            executor.on_attempt = lambda key, n, m: self._emit(
                "step_attempt", key=key, attempt=n, max_attempts=m
            )
        self.steps: dict[str, Step] = plan.step_objects(self.registry)

    def _emit(self, event: str, **payload: Any) -> None:
        if self.listener is not None:
            self.listener(event, payload)

    async def run(self, run_id: str, input: Mapping[str, Any]) -> RunResult:
        wf = self.plan.workflow
        started = time.perf_counter()
        state = _State(
            self.plan.with_defaults(input),
            wf.step_ids,
            {k: os.environ[k] for k in wf.env if k in os.environ},
            list(self.plan.loops),
        )
        result = RunResult(run_id, wf.id, "running")
        try:
            await self._linear_pass(state)
        except _RunFailed as f:
            result.status = "failed"
            result.error = f.error
            result.failed_step = f.step
        except _RunPaused as p:
            result.status = "paused"
            result.paused_at = p.step
        result.steps = state.executions
        result.revisions = state.revisions()
        if result.status == "running" or (
            result.failed_step is not None and result.error and "max revisions" in result.error
        ):
            try:
                result.output = expr.render_value(dict(wf.output), state.context())
            except EclflowError as e:
                if result.status == "running":
                    result.status = "failed"
                    result.error = f"output: {e}" + _skipped_hint(str(e), state)
        if result.status == "running":
            result.status = "completed"
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        return result

    async def _linear_pass(self, state: _State) -> None:
        """Every step of the linear pass, each once all it waits for has settled."""
        entry = self.plan.entry_steps
        walk = _Walk(begun=set(entry))
        loop = asyncio.get_running_loop()
        walk.tasks.extend(
            loop.create_task(self._branch(self._follow(s, state, walk))) for s in entry[1:]
        )
        try:
            await self._branch(self._follow(entry[0] if entry else None, state, walk))
            while walk.tasks:  # the tasks may start more while we wait
                await walk.tasks[0]
                walk.tasks.pop(0)
        except BaseException:
            for t in walk.tasks:
                t.cancel()
            raise
        if walk.failure:
            first = walk.failure[0]
            raise _RunFailed(first.step, first.error)  # a new one: this frame holds the old
        if walk.paused is not None:
            raise _RunPaused(walk.paused)

    async def _follow(self, sid: str | None, state: _State, walk: _Walk) -> None:
        """Settle `sid`, then go on with the first step that it made ready, starting a task for
        each other one: a linear workflow runs in one task, parallel branches each in their
        own. (A method, not a closure: a closure that starts itself is a reference cycle, and
        would keep the whole run in memory until the cyclic GC.)"""
        plan = self.plan
        while sid is not None:
            done = sid
            walk.settled[done] = await self._settle(done, state, walk)
            sid = None
            for d in plan.dependants[done]:
                if d not in walk.begun and all(w in walk.settled for w in plan.waits[d]):
                    walk.begun.add(d)
                    if sid is None:
                        sid = d
                    else:
                        branch = self._branch(self._follow(d, state, walk))
                        walk.tasks.append(asyncio.get_running_loop().create_task(branch))

    def _branch(self, follow: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
        """A branch of the run as its journal wants it run: a journal whose entries must be
        created in an order a replay repeats (Restate's) has the branches take turns."""
        take_turns = getattr(self.journal, "branch", None)
        return follow if take_turns is None else take_turns(follow)

    async def _settle(self, sid: str, state: _State, walk: _Walk) -> str:
        """Run (or skip) one step of the linear pass, with its loop; how it settled."""
        try:
            if walk.failure or any(walk.settled[w] == "aborted" for w in self.plan.waits[sid]):
                return "aborted"
            if not self._runs(sid, self.plan.first_keys[sid], state):
                await self._skip(sid, state)
                return "skipped"
            await self._run_step(sid, state, loop=self._first_pass_loop(sid))
            if sid in self.plan.loops:
                await self._run_loop(self.plan.loops[sid], state)
            return "succeeded"
        except _RunFailed as f:
            walk.failure.append(f.with_traceback(None))  # its frames hold `walk`: no cycle
            self._failed = True
            return "aborted"
        except _Stopped:  # (a loop in this branch, after another branch failed)
            return "aborted"
        except _RunPaused as p:  # the other branches finish the steps they are in, no more
            walk.paused = walk.paused or p.step
            return "aborted"

    def _runs(self, sid: str, key: str, state: _State) -> bool:
        """Whether `sid` runs at `key`: as the journal recorded it when it has (a run resumed
        takes the path it took, whatever this version would decide), else as its edges say."""
        recorded = self._recorded
        seen = recorded(key) if recorded is not None else None
        if seen is not None:
            return bool(seen == "succeeded")
        return self._is_active(sid, state)

    def _is_active(self, sid: str, state: _State) -> bool:
        preds = self.plan.predecessors[sid]
        if not preds:
            return True
        revisers = self.plan.reviser_loops
        for p in preds:
            status = state.status(p)
            if status != "succeeded" and p in revisers and (p, sid) not in self.plan.conditions:
                # a reviser that never ran: its validator passed; what waits for the reviser
                # waits for the loop's end (as Plan.waits has it), which has come (an edge
                # with a condition on the reviser's output stays closed)
                status = state.status(revisers[p])
            if status != "succeeded":
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
        return LoopState(0, self.plan.loops[validator].max_iterations)  # (by position)

    async def _skip(
        self, sid: str, state: _State, key: str | None = None, iteration: int = 0
    ) -> None:
        state.set_status(sid, "skipped")
        state.clear_output(sid)  # (a loop's rerun: not the last version's output)
        execution = await self.journal.skip(key or self.plan.first_keys[sid], sid, iteration)
        state.executions.append(execution)
        emit("step_skipped", step_id=sid, iteration=iteration, key=execution.key)
        if self.listener is not None:
            self.listener("step_finished", {"execution": execution})

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
        key = key or self.plan.first_keys[sid]
        if self._failed:
            raise _Stopped
        if (
            self.pause_check is not None
            and (self._pausing or time.monotonic() >= self._next_pause_check)
            and await self._pause_asked()
        ):  # (no coroutine a step until a look is due)
            raise _RunPaused(sid)
        recorded = self._recorded
        try:
            if recorded is not None and recorded(key) == "succeeded":
                rendered: Any = {}  # (replayed: its result is recorded, its input not needed)
            else:
                context = state.context(loop.as_context() if loop is not None else None)
                rendered = expr.render_value(step.spec.with_, context)
        except EclflowError as e:
            hint = _skipped_hint(str(e), state)
            raise _RunFailed(sid, f"Step {sid} failed: input: {e}{hint}") from None
        if not isinstance(rendered, dict):
            rendered = {}
        state.set_status(sid, "running")
        listener = self.listener  # (no payload is built for nobody: two a step)
        if listener is not None:
            listener("step_started", {"step_id": sid, "key": key, "iteration": iteration})
        run = self.executor.run  # (a closure: a partial with a keyword costs more to call)
        execution = await self.journal.step(
            key, sid, iteration, lambda log: run(step, key, iteration, rendered, log, loop)
        )
        state.executions.append(execution)
        if execution.replayed:  # (the timeline of a resumed run says what it did not redo)
            emit("step_replayed", step_id=sid, iteration=iteration, key=key)
        if listener is not None:
            listener("step_finished", {"execution": execution})
        if execution.outcome == "failed":
            state.set_status(sid, "failed")
            raise _RunFailed(sid, f"Step {sid} failed: {execution.error}")
        state.set_status(sid, "succeeded")
        state.set_output(sid, execution.output)
        return execution

    async def _pause_asked(self) -> bool:
        if not self._pausing and time.monotonic() >= self._next_pause_check:
            assert self.pause_check is not None
            self._pausing = await self.pause_check()
            self._next_pause_check = time.monotonic() + PAUSE_POLL
        return self._pausing

    async def _run_loop(self, loop: Loop, state: _State) -> None:
        """The validator has run once; revise and re-validate until it passes or the bound."""
        # (read once: each is a property, and a run of the loop asks for them about 20 times)
        validator, reviser, target, bound, rerun = (
            loop.validator,
            loop.reviser,
            loop.target,
            loop.max_iterations,
            loop.rerun,
        )
        last = _last(state, validator)
        revisions = 0
        state.set_revisions(validator, 0)
        history: list[dict[str, Any]] = []
        while last.outcome == "needs_revision":
            history.append(
                {"iteration": revisions, "output": last.output, "feedback": last.feedback}
            )
            if revisions >= bound:
                if loop.spec.on_exhausted == "accept":
                    return
                err = MaxRevisionsExceeded(bound)
                raise _RunFailed(validator, f"Revision loop failed: {err}")
            revisions += 1
            state.set_revisions(validator, revisions)
            # (by position: a class called with keywords builds a dict of them)
            loop_state = LoopState(revisions, bound, last.feedback, tuple(history))
            emit("loop_revision", validator=validator, iteration=revisions, max_iterations=bound)
            if self.listener is not None:
                self._emit(
                    "loop_revision", validator=validator, iteration=revisions, max_iterations=bound
                )
            try:
                revised = await self._run_step(
                    reviser,
                    state,
                    key=f"{reviser}#{revisions}",
                    iteration=revisions,
                    loop=loop_state,
                )
            except (_RunPaused, _Stopped):  # stopped before the revision: it was not made
                state.set_revisions(validator, revisions - 1)
                raise
            # The reviser's output is the new version of the target's output.
            state.set_output(target, revised.output)
            for sid in rerun:
                key = f"{sid}#{revisions + 1}"
                if sid != validator and not self._runs(sid, key, state):
                    # a condition in the loop's body holds on the new version as on the first
                    await self._skip(sid, state, key, revisions)
                    continue
                last = await self._run_step(
                    sid,
                    state,
                    key=key,
                    iteration=revisions,
                    loop=loop_state,
                )


def _skipped_hint(error: str, state: _State) -> str:
    """Why an output that reads a skipped step fails, and what to write instead."""
    for e in state.executions:
        if e.outcome == "skipped" and f"steps.{e.step_id}." in error:
            sid = e.step_id
            return (
                f" (step {sid} was skipped, so its output is null: guard it with "
                f"`| default(...)` or `steps.{sid}.status`)"
            )
    return ""


def _last(state: _State, sid: str) -> StepExecution:
    for e in reversed(state.executions):
        if e.step_id == sid:
            return e
    raise LookupError(sid)


def new_run_id() -> str:
    """A random UUID (version 4) as text, as `str(uuid.uuid4())` writes it, without making
    the UUID object (a run's id: its checks and its int cost more than the rest)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # variant RFC 4122
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
