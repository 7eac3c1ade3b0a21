"""The Restate workflow service that runs any eclflow workflow (what `eclflow serve` serves).

One invocation of its `run` handler is one eclflow run: the workflow key is the run id, the
request carries the definition text (with the prompt files it names), the input and the model.
The handler runs the ordinary engine (`engine.runner.run`) with a `RestateJournal`, so no step
logic exists twice. Its shared `status` handler reads the progress the run keeps in its state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import restate
from restate import TerminalError

from ..engine.journal import Journal, StoreJournal
from ..errors import ConfigError, EclflowError, PersistenceError, RunNotFound
from ..spec.model import Budget, RetrySpec, Workflow
from . import SERVICE_NAME
from .journal import STATUS_STATE, RestateJournal

DEFAULT_INACTIVITY_TIMEOUT = timedelta(minutes=30)
DEFAULT_ABORT_TIMEOUT = timedelta(minutes=10)


@dataclass(slots=True)
class WorkerSettings:
    """How one `eclflow serve` process runs steps."""

    db: str | None = None  # the eclflow store every worker writes to (None: Restate only)
    model: str | None = None  # the model when the request names none
    mock_responses: Any = None  # a MockProvider (or script path) for `mock/…` models
    inactivity_timeout: timedelta = DEFAULT_INACTIVITY_TIMEOUT
    abort_timeout: timedelta = DEFAULT_ABORT_TIMEOUT
    # Invocation retries after a worker or the server died (not step retries): fast at first.
    retry_initial: timedelta = timedelta(milliseconds=200)
    retry_max_interval: timedelta = timedelta(seconds=5)
    prompt_dir: Path | None = None  # where prompt files shipped with requests are written


@dataclass
class Worker:
    """What a serving process shares between its invocations: the store, the mock, caches."""

    settings: WorkerSettings = field(default_factory=WorkerSettings)
    store: Any = None
    mock: Any = None
    _workflows: OrderedDict[str, Workflow] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        """Open the store and load the mock script (before serving: errors stop the start)."""
        from ..engine.runner import as_mock

        self.mock = as_mock(self.settings.mock_responses)
        if self.settings.db and self.store is None:
            from ..store import open_store

            self.store = open_store(self.settings.db)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def workflow(self, request: Mapping[str, Any]) -> Workflow:
        """The request's workflow, loaded once per definition (and prompt files) per process."""
        definition = request.get("definition")
        if not isinstance(definition, str) or not definition.strip():
            raise TerminalError("the request carries no workflow definition", status_code=400)
        prompts = request.get("prompts") or {}
        if not isinstance(prompts, Mapping):
            raise TerminalError("`prompts` must map prompt paths to their text", status_code=400)
        digest = hashlib.sha256(
            json.dumps([definition, prompts], sort_keys=True).encode("utf-8")
        ).hexdigest()
        with self._lock:
            cached = self._workflows.get(digest)
            if cached is not None:
                self._workflows.move_to_end(digest)
                return cached
        from ..errors import WorkflowInvalid
        from ..spec import check_text

        base, top = self._materialize(digest, prompts)
        # The prompt files are the request's, written under `top` (a `../x.j2` of the client's,
        # beside `base`: the client checked where it was, E403): none of this machine's.
        wf, diags = check_text(
            definition, file=str(request.get("file") or "<restate>"), base_dir=base, prompt_root=top
        )
        if wf is None:
            raise WorkflowInvalid(diags)
        self._warn_of_long_steps(wf)
        with self._lock:
            self._workflows[digest] = wf
            while len(self._workflows) > 64:
                self._workflows.popitem(last=False)
        return wf

    def _warn_of_long_steps(self, wf: Workflow) -> None:
        """Say (in the worker's log) which steps may outlast the inactivity timeout: Restate
        cuts such a step off and runs it again, paying for its calls again, without a word."""
        limit = self.settings.inactivity_timeout.total_seconds()
        longest = {s.id: step_longest(s.timeout, s.retry) for s in wf.steps}
        over = [sid for sid, t in longest.items() if t > limit]
        if over:
            logging.getLogger("eclflow.restate").warning(
                "workflow %s: step %s may run up to %.0fs (timeout × attempts + retry delays), "
                "longer than this worker's --inactivity-timeout (%.0fs): Restate would cut it "
                "off and call it again; start the workers with a larger --inactivity-timeout",
                wf.id,
                ", ".join(over),
                max(longest[sid] for sid in over),
                limit,
            )

    def _materialize(self, digest: str, prompts: Mapping[str, Any]) -> tuple[Path, Path]:
        """Write the shipped prompt files where the definition's relative paths find them: the
        folder they are relative to, and the one they are all in."""
        root = self.settings.prompt_dir or Path(tempfile.gettempdir()) / (
            f"eclflow-restate-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        )
        top = (root / digest[:32]).resolve()
        relative = [str(p) for p in prompts if not PurePosixPath(str(p)).is_absolute()]
        depth = max((_ups(p) for p in relative), default=0)
        base = top.joinpath(*(["w"] * depth)) if depth else top
        base.mkdir(parents=True, exist_ok=True)
        for raw in relative:
            target = Path(os.path.normpath(base / raw))
            if top not in target.parents:
                raise TerminalError(f"prompt path {raw!r} leaves the workflow", status_code=400)
            text = prompts[raw]
            if not isinstance(text, str):
                raise TerminalError(f"prompt {raw!r} must be text", status_code=400)
            if target.is_file() and target.read_text(encoding="utf-8") == text:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        return base, top

    def inner_journal(self, run_id: str) -> Any:
        """The journal a step action runs in: the store's when there is one."""
        if self.store is None:
            return None
        store = self.store

        async def make() -> Journal:
            return await asyncio.to_thread(StoreJournal, store, run_id)

        return make

    def create_run_row(
        self, run_id: str, wf: Workflow, inputs: Mapping[str, Any], model: str | None, meta: Any
    ) -> None:
        """The run's row in the store, once however often the handler is replayed."""

        try:
            self.store.runs.get(run_id)
            return
        except RunNotFound:
            pass
        try:
            self._create(run_id, wf, inputs, model, meta)
        except PersistenceError:
            # Two workers replaying the same handler at once: the other one created it.
            self.store.runs.get(run_id)

    def _create(
        self, run_id: str, wf: Workflow, inputs: Mapping[str, Any], model: str | None, meta: Any
    ) -> None:
        from ..engine.runner import run_row

        extra = {"engine": "restate", "path": (meta or {}).get("path"), **(meta or {})}
        self.store.runs.create(**run_row(wf, inputs, run_id, model, Budget(), extra))


def step_longest(timeout: float, retry: RetrySpec) -> float:
    """The longest a step execution can take: every attempt to its timeout, and the delays."""
    from ..steps.base import RetryPolicy

    policy = RetryPolicy.from_spec(retry)
    attempts = max(1, policy.max_attempts)
    return attempts * timeout + sum(policy.delay_for_attempt(n) for n in range(1, attempts))


def _ups(path: str) -> int:
    """How far above its own folder a relative path reaches (`../../x` → 2)."""
    depth = lowest = 0
    for part in PurePosixPath(path.replace("\\", "/")).parts:
        if part == "..":
            depth -= 1
            lowest = min(lowest, depth)
        elif part not in ("", "."):
            depth += 1
    return -lowest


def _budget(raw: Any) -> Budget | None:
    if not isinstance(raw, Mapping):
        return None
    return Budget(
        max_usd=raw.get("max_usd"), max_tokens=raw.get("max_tokens"), max_calls=raw.get("max_calls")
    )


def _one_line(e: BaseException) -> str:
    from ..errors import WorkflowInvalid

    if isinstance(e, WorkflowInvalid):
        return "; ".join(str(d) for d in e.diagnostics[:5]) or str(e)
    return str(e)


def build_service(worker: Worker) -> restate.Workflow:
    """The `eclflow` Restate workflow service, bound to this process's worker."""
    s = worker.settings
    service = restate.Workflow(
        SERVICE_NAME,
        description="Runs eclflow workflows; the workflow key is the run id.",
        inactivity_timeout=s.inactivity_timeout,
        abort_timeout=s.abort_timeout,
        invocation_retry_policy=restate.InvocationRetryPolicy(
            initial_interval=s.retry_initial,
            exponentiation_factor=2.0,
            max_interval=s.retry_max_interval,
        ),
    )

    @service.main()
    async def run(ctx: restate.WorkflowContext, request: dict[str, Any]) -> dict[str, Any]:
        return await run_handler(worker, ctx, request)

    @service.handler()
    async def status(ctx: restate.WorkflowSharedContext) -> dict[str, Any]:
        value = await ctx.get(STATUS_STATE, type_hint=dict)
        return value or {"state": "pending", "running": None, "steps": []}

    return service


async def run_handler(worker: Worker, ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One eclflow run, start to end; replayed by Restate after any crash."""
    from ..engine import runner

    run_id = ctx.key()
    if not isinstance(request, Mapping):
        raise TerminalError("the request must be a JSON object", status_code=400)
    inputs = request.get("input") or {}
    try:
        wf = worker.workflow(request)
        if not isinstance(inputs, Mapping):
            raise TerminalError("`input` must be a JSON object", status_code=400)
        runner.validate_input(wf, inputs)
    except EclflowError as e:
        raise TerminalError(_one_line(e), status_code=400) from None
    model = request.get("model") or worker.settings.model
    metadata = request.get("metadata") if isinstance(request.get("metadata"), Mapping) else {}
    ctx.set(STATUS_STATE, {"state": "running", "running": None, "steps": [], "workflow": wf.id})

    async def begin() -> float:
        """The run's row in the store (once), and when the run began: a replay's result
        counts its duration from then, not from the last invocation's start."""
        if worker.store is not None:
            await asyncio.to_thread(
                worker.create_run_row, run_id, wf, inputs, runner.default_model(wf, model), metadata
            )
        return time.time()

    began = await ctx.run_typed("eclflow:run", begin)

    journal = RestateJournal(
        ctx,
        inner=worker.inner_journal(run_id),
        retry=lambda sid: wf.step(sid).retry,
        workflow_id=wf.id,
    )
    mock = worker.mock
    if mock is not None:  # a worker's script is for the runs on mock/ models, not the others
        try:
            runner.check_mock_is_used(wf, model)
        except EclflowError:
            mock = None
    try:
        result = await runner._run(
            wf,
            inputs,
            model=model,
            mock_responses=mock,
            store=worker.store,
            run_id=run_id,
            journal=journal,
            budget=_budget(request.get("budget")),
            spent=journal.spent,
            # (an invocation journaled by an eclflow before this one has True there)
            started_at=began if isinstance(began, float) else None,
        )
    except EclflowError as e:
        if e.retryable:
            raise
        message = _one_line(e)
        if isinstance(e, ConfigError):  # (a missing API key, a plugin: the workers')
            message += " (on the workers: the `eclflow serve` processes run the steps)"
        ctx.set(
            STATUS_STATE,
            {
                "state": "failed",
                "running": None,
                "steps": journal.progress,
                "workflow": wf.id,
                "error": message,
            },
        )
        raise TerminalError(message, status_code=400) from None
    finally:
        journal.close()  # (a driver still waiting: the invocation ends without it)
    data = result.to_dict()
    ctx.set(
        STATUS_STATE,
        {
            "state": result.status,
            "running": None,
            "steps": journal.progress,
            "workflow": wf.id,
            "error": result.error,
            "failed_step": result.failed_step,
            "result": data,
        },
    )
    return data
