"""Submitting runs to Restate's ingress, waiting for them, reading their state.

`eclflow run FILE --engine restate` calls `submit`; `eclflow status RUN_ID --engine restate`
calls `status`. The request carries everything a worker needs: the definition text, the text
of the prompt files it names (workers need not share a file system), the input, the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.result import RunResult, StepExecution
from ..errors import ConfigError, EclflowError, RunNotFound, RunPaused
from ..spec.model import Budget, Workflow
from . import ADMIN_ENV, DEFAULT_INGRESS_URL, INGRESS_ENV, SERVICE_NAME, checked_url, require
from .admin import WORKFLOW_HEADER, Admin, AdminUnavailable, Invocation, admin_url
from .admin import message as _message

NO_WORKER_AFTER = 10.0  # seconds without a result before `run` asks whether a worker answers
NO_WORKER_PROBE = 3.0
STATUS_WAIT = 5.0  # seconds `status` waits for a worker to answer for an unfinished run
ADMIN_POLL = 10.0  # seconds between asking the admin API whether Restate paused a waited-for run
RETRIES_SAID_AFTER = 2  # failed attempts of a run before `run` says Restate retries it


def ingress_url(url: str | None = None) -> str:
    """`--restate-url` > ECLFLOW_RESTATE_URL > http://127.0.0.1:8080."""
    given = (url or os.environ.get(INGRESS_ENV) or DEFAULT_INGRESS_URL).rstrip("/")
    return checked_url(given, f"--restate-url (or {INGRESS_ENV})")


def prompt_files(workflow: Workflow) -> dict[str, str]:
    """The text of every prompt file the workflow names, keyed by the path as written."""
    if not any(s.prompt is not None for s in workflow.steps):
        return {}
    key = (workflow.sha256, str(workflow.path), tuple(str(s.prompt) for s in workflow.steps))
    cached = _PROMPTS.get(key)
    if cached is None:
        cached = _PROMPTS[key] = _read_prompt_files(workflow)
        while len(_PROMPTS) > 32:
            _PROMPTS.pop(next(iter(_PROMPTS)))
    return dict(cached)


_PROMPTS: dict[tuple[str, str, tuple[str, ...]], dict[str, str]] = {}


def _read_prompt_files(workflow: Workflow) -> dict[str, str]:
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(workflow.source) or {}
    raw_steps = {str(s.get("id")): s for s in data.get("steps") or [] if isinstance(s, Mapping)}
    files: dict[str, str] = {}
    for s in workflow.steps:
        if s.prompt is None:
            continue
        raw = raw_steps.get(s.id, {}).get("prompt")
        if not isinstance(raw, str):
            continue
        if _absolute(raw):
            # a worker finds a prompt file by the name the workflow gives it, among those the
            # request ships; one of its own disk, named so, it refuses (E403)
            shown = (
                f" ({os.path.relpath(s.prompt, workflow.path.parent)})"
                if workflow.path is not None
                else ""
            )
            raise ConfigError(
                f"step '{s.id}': prompt file {raw!r} is named by an absolute path, which Restate "
                f"workers cannot find: name it relative to the workflow file{shown}"
            )
        try:
            files[raw] = s.prompt.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read prompt file {s.prompt}: {e.strerror or e}") from None
    return files


def _absolute(raw: str) -> bool:
    """Whether a `prompt:` path as written names a place of its own (`/…`, `~/…`), which
    resolves on each machine to that machine's file."""
    with contextlib.suppress(RuntimeError):
        if os.path.expanduser(raw) != raw:
            return True
    return os.path.isabs(raw)


def build_request(
    workflow: Workflow,
    inputs: Mapping[str, Any],
    *,
    model: str | None = None,
    budget: Budget | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of the service's `run` handler (the input and the model name are checked
    here, first: a worker refusing them said to look at the workers)."""
    from ..engine.runner import check_model_name, default_model, validate_input

    validate_input(workflow, inputs)
    check_model_name(model)
    request: dict[str, Any] = {
        "definition": workflow.source,
        "file": workflow.path.name if workflow.path else "<restate>",
        "prompts": prompt_files(workflow),
        "input": dict(inputs),
        "model": default_model(workflow, model),
        "metadata": {"path": str(workflow.path) if workflow.path else None, **(metadata or {})},
    }
    if budget is not None:
        request["budget"] = {
            "max_usd": budget.max_usd,
            "max_tokens": budget.max_tokens,
            "max_calls": budget.max_calls,
        }
    return request


def result_from_dict(data: Mapping[str, Any]) -> RunResult:
    """A RunResult from the JSON the `run` handler returned (RunResult.to_dict)."""
    steps = [
        StepExecution(
            step_id=s.get("id", ""),
            key=s.get("key", ""),
            iteration=int(s.get("iteration", 0)),
            outcome=s.get("outcome", "success"),
            output=s.get("output"),
            feedback=s.get("feedback"),
            error=s.get("error"),
            attempts=int(s.get("attempts", 0)),
            duration_ms=int(s.get("duration_ms", 0)),
            tokens_in=int(s.get("tokens_in", 0)),
            tokens_out=int(s.get("tokens_out", 0)),
            cost=float(s.get("cost", 0.0)),
            replayed=bool(s.get("replayed", False)),
        )
        for s in data.get("steps") or []
    ]
    return RunResult(
        run_id=str(data.get("run_id", "")),
        workflow_id=str(data.get("workflow", "")),
        status=data.get("status", "failed"),
        output=data.get("output"),
        error=data.get("error"),
        failed_step=data.get("failed_step"),
        steps=steps,
        revisions=dict(data.get("revisions") or {}),
        duration_ms=int(data.get("duration_ms", 0)),
    )


def _failed(run_id: str, workflow_id: str, message: str) -> RunResult:
    return RunResult(run_id, workflow_id, "failed", error=message)


class _Ingress:
    """The few ingress calls eclflow makes, with one-line errors."""

    def __init__(self, url: str, client: Any) -> None:
        self.url = url
        self.client = client

    def _unreachable(self, e: Exception) -> ConfigError:
        return ConfigError(
            f"cannot reach Restate at {self.url} ({type(e).__name__}); is `restate-server` "
            "running, and is this its ingress address (--restate-url)?"
        )

    def _check_ingress(self, r: Any) -> None:
        """A 404 from something other than Restate's ingress (its admin API, a worker) is a
        wrong address, not a missing service or run."""
        if r.status_code == 404 and not _from_ingress(r):
            raise ConfigError(
                f"{self.url} is not Restate's ingress (it answered 404 without Restate's error "
                "body): give the ingress address (restate-server's port 8080, not its admin "
                f"API's 9070 or a worker's) with --restate-url or {INGRESS_ENV}"
            )

    async def send(self, run_id: str, request: Mapping[str, Any], workflow_id: str) -> str:
        import httpx

        try:
            r = await self.client.post(
                f"{self.url}/{SERVICE_NAME}/{_key(run_id)}/run/send",
                json=dict(request),
                headers={WORKFLOW_HEADER: workflow_id},  # (kept in the journal: `runs` reads it)
            )
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        self._check_ingress(r)
        if r.status_code == 404:
            raise ConfigError(
                f"Restate at {self.url} has no `{SERVICE_NAME}` service: start a worker with "
                "`eclflow serve --register`"
            )
        if r.status_code >= 400:
            raise EclflowError(f"Restate refused the run ({r.status_code}): {_message(r)}")
        return str(r.json().get("status", "Accepted"))

    async def attach(
        self,
        run_id: str,
        workflow_id: str,
        deadline: float | None,
        on_no_worker: Callable[[], None] | None = None,
        admin: Admin | None = None,
        on_retrying: Callable[[Invocation], None] | None = None,
    ) -> RunResult:
        """Wait for the run's result; rides out a restarting server until `deadline`.

        If no result came within NO_WORKER_AFTER seconds and no worker answers a status
        request either, `on_no_worker` is called once (Restate holds the run until one does).
        With `admin`, every ADMIN_POLL seconds without a result it asks whether Restate paused
        the run, and raises RunPaused if so (a paused run's result never comes by itself);
        `on_retrying` is called once if Restate retries the run while a worker is up (an error
        outside any step: the worker's log has its traceback)."""
        import httpx

        url = f"{self.url}/restate/workflow/{SERVICE_NAME}/{_key(run_id)}/attach"
        delay = 0.1
        quiet_until = None if on_no_worker is None else time.monotonic() + NO_WORKER_AFTER
        no_worker = False
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise EclflowError(f"gave up waiting for run {run_id} (it goes on in Restate)")
            read = remaining
            if quiet_until is not None:
                left = max(quiet_until - time.monotonic(), 0.0)
                read = left if read is None else min(read, left)
            if admin is not None:
                read = ADMIN_POLL if read is None else min(read, ADMIN_POLL)
            try:
                r = await self.client.get(url, timeout=httpx.Timeout(10.0, read=read))
            except httpx.ReadTimeout:
                if quiet_until is not None and time.monotonic() >= quiet_until:
                    quiet_until = None
                    if on_no_worker is not None and not await self.worker_answers(run_id):
                        no_worker = True
                        on_no_worker()
                if admin is not None:
                    admin, invocation = await _unless_paused(admin, run_id)
                    if (
                        on_retrying is not None
                        and not no_worker
                        and invocation is not None
                        and invocation.status == "backing-off"
                        and invocation.attempts >= RETRIES_SAID_AFTER
                    ):
                        on_retrying(invocation)
                        on_retrying = None
                continue
            except httpx.TransportError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if r.status_code == 200:
                return result_from_dict(r.json())
            if r.status_code == 404:
                raise RunNotFound(run_id)
            if r.status_code in (502, 503, 504):  # the server is starting or a partition moves
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            return _failed(run_id, workflow_id, _message(r))

    async def worker_answers(self, run_id: str) -> bool:
        """Whether a worker answers the run's status handler within NO_WORKER_PROBE seconds."""
        import httpx

        try:
            r = await self.client.post(
                f"{self.url}/{SERVICE_NAME}/{_key(run_id)}/status",
                json=None,
                timeout=httpx.Timeout(NO_WORKER_PROBE),
            )
        except httpx.TimeoutException:
            return False
        except httpx.TransportError:
            return True  # the server, not the worker, is away: attach rides that out
        return r.status_code < 500

    async def status(self, run_id: str, wait: float = STATUS_WAIT) -> dict[str, Any] | None:
        """The progress the run keeps in its state, from its `status` handler; None when no
        worker answers within `wait` seconds (Restate runs that handler on a worker)."""
        import httpx

        try:
            r = await self.client.post(
                f"{self.url}/{SERVICE_NAME}/{_key(run_id)}/status",
                json=None,
                timeout=httpx.Timeout(30.0, read=wait),
            )
        except httpx.ReadTimeout:
            return None
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code == 404:
            raise ConfigError(f"Restate at {self.url} has no `{SERVICE_NAME}` service")
        if r.status_code >= 400:
            raise EclflowError(f"Restate could not read run {run_id} ({r.status_code})")
        data = r.json()
        return data if isinstance(data, dict) else {}

    async def output(self, run_id: str) -> tuple[str, Any]:
        """('done', result) · ('running', None) · ('unknown', None) · ('failed', message)."""
        import httpx

        try:
            r = await self.client.get(
                f"{self.url}/restate/workflow/{SERVICE_NAME}/{_key(run_id)}/output"
            )
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        self._check_ingress(r)
        if r.status_code == 200:
            return "done", r.json()
        if r.status_code == 470:
            return "running", None
        if r.status_code == 404:
            return "unknown", None
        return "failed", _message(r)


async def _unless_paused(admin: Admin, run_id: str) -> tuple[Admin | None, Invocation | None]:
    """Raise RunPaused if Restate paused the run; else the admin API to ask again and the run's
    invocation. The admin API is given up (None) when it was never reached (not at its address,
    so nothing tells a pause) or answered as no admin API does; one that was reached is asked
    again (a slow query, a restart, a server still starting)."""
    try:
        invocation = await admin.invocation(run_id)
    except ConfigError:
        return (admin if admin.reached else None), None
    if invocation is not None and invocation.paused:
        raise RunPaused(paused_message(run_id, invocation))
    return admin, invocation


def paused_message(run_id: str, invocation: Invocation) -> str:
    return (
        f"Restate paused run {run_id} {invocation.failure_note()}: once a worker is up "
        f"(`eclflow serve --register ADMIN_URL`), `eclflow resume {run_id} --engine restate` "
        "continues it"
    )


def _key(run_id: str) -> str:
    """A run id as one path segment of an ingress URL (a `/` or `?` in it is not a path)."""
    from urllib.parse import quote

    return quote(run_id, safe="")


def _from_ingress(r: Any) -> bool:
    """Whether an answer comes from Restate's ingress, which marks its errors and explains
    them in a JSON body (its admin API and the workers answer an unknown path with nothing)."""
    if "x-restate-error-source" in r.headers:
        return True
    try:
        data = r.json()
    except Exception:
        return False
    return isinstance(data, dict) and bool(data.get("message"))


def _http_client(connections: int = 16) -> Any:
    require("httpx")
    import httpx

    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=connections)
    )


async def submit_async(
    workflow: Workflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    restate_url: str | None = None,
    detach: bool = False,
    run_id: str | None = None,
    budget: Budget | None = None,
    timeout: float | None = None,
    client: Any = None,
    on_no_worker: Callable[[], None] | None = None,
    on_sent: Callable[[str], None] | None = None,
    restate_admin_url: str | None = None,
    on_retrying: Callable[[Invocation], None] | None = None,
) -> RunResult | str:
    """Submit one run through Restate's ingress; its RunResult, or its id with `detach`.

    `on_sent(run_id)` is called once Restate has accepted the run; `on_no_worker` once if the
    run seems to wait for a worker, `on_retrying` once if Restate retries it (see `attach`).
    Raises RunPaused if Restate pauses the run while this waits (`restate_admin_url`: where to
    ask, see `admin.admin_url`)."""
    from ..engine.orchestrator import new_run_id

    request = build_request(workflow, dict(inputs or {}), model=model, budget=budget)
    run_id = run_id or new_run_id()
    own = client is None
    client = client or _http_client()
    try:
        ingress = _Ingress(ingress_url(restate_url), client)
        await ingress.send(run_id, request, workflow.id)
        if on_sent is not None:
            on_sent(run_id)
        if detach:
            return run_id
        deadline = None if timeout is None else time.monotonic() + timeout
        admin = Admin(admin_url(restate_admin_url, ingress.url), client)
        return await ingress.attach(run_id, workflow.id, deadline, on_no_worker, admin, on_retrying)
    finally:
        if own:
            await client.aclose()


def submit(
    workflow: Workflow,
    inputs: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    restate_url: str | None = None,
    detach: bool = False,
    run_id: str | None = None,
    budget: Budget | None = None,
    timeout: float | None = None,
    on_no_worker: Callable[[], None] | None = None,
    on_sent: Callable[[str], None] | None = None,
    restate_admin_url: str | None = None,
    on_retrying: Callable[[Invocation], None] | None = None,
) -> RunResult | str:
    """`eclflow run FILE --engine restate [--restate-url URL] [--detach]`."""
    return asyncio.run(
        submit_async(
            workflow,
            inputs,
            model=model,
            restate_url=restate_url,
            detach=detach,
            run_id=run_id,
            budget=budget,
            timeout=timeout,
            on_no_worker=on_no_worker,
            on_sent=on_sent,
            restate_admin_url=restate_admin_url,
            on_retrying=on_retrying,
        )
    )


async def submit_many(
    workflow: Workflow,
    inputs: Sequence[Mapping[str, Any]],
    *,
    model: str | None = None,
    restate_url: str | None = None,
    concurrency: int = 32,
    detach: bool = False,
    timeout: float | None = None,
) -> list[RunResult | str]:
    """Submit one run per input object and wait for them all (or return their ids with
    `detach`). Results come back in the order of `inputs`.

    The runs all go on at once inside Restate; `concurrency` is how many requests this client
    has open. Each lane has its own one-connection HTTP client: one shared pool with many
    requests waiting costs httpx time quadratic in their number."""
    from ..engine.orchestrator import new_run_id

    requests = [build_request(workflow, dict(i), model=model) for i in inputs]
    ids = [new_run_id() for _ in requests]
    deadline = None if timeout is None else time.monotonic() + timeout
    url = ingress_url(restate_url)
    results: list[RunResult | str] = list(ids)

    async def lanes(work: Any) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(ids)):
            queue.put_nowait(i)

        async def lane() -> None:
            http = _http_client(1)
            try:
                ingress = _Ingress(url, http)
                while not queue.empty():
                    await work(ingress, queue.get_nowait())
            finally:
                await http.aclose()

        await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, len(ids))))))

    async def send(ingress: _Ingress, i: int) -> None:
        await ingress.send(ids[i], requests[i], workflow.id)

    async def attach(ingress: _Ingress, i: int) -> None:
        results[i] = await ingress.attach(ids[i], workflow.id, deadline)

    await lanes(send)
    if not detach:
        await lanes(attach)
    return results


async def wait_async(
    run_id: str,
    *,
    restate_url: str | None = None,
    timeout: float | None = None,
    restate_admin_url: str | None = None,
) -> RunResult:
    """Wait for a submitted run and return its result (RunPaused if Restate pauses it)."""
    client = _http_client()
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        ingress = _Ingress(ingress_url(restate_url), client)
        admin = Admin(admin_url(restate_admin_url, ingress.url), client)
        return await ingress.attach(run_id, "", deadline, admin=admin)
    finally:
        await client.aclose()


async def resume_async(
    run_id: str,
    *,
    restate_url: str | None = None,
    restate_admin_url: str | None = None,
    timeout: float | None = None,
    on_found: Callable[[Invocation], None] | None = None,
    on_no_worker: Callable[[], None] | None = None,
    on_retrying: Callable[[Invocation], None] | None = None,
) -> RunResult:
    """`eclflow resume RUN_ID --engine restate`: resume a run Restate paused, and wait for it.

    A run that is not paused is waited for as it is; a finished one's result is returned.
    `on_found(invocation)` is called with the run's invocation as it stood (before resuming)."""
    _utf8_id(run_id)
    client = _http_client()
    try:
        ingress = _Ingress(ingress_url(restate_url), client)
        admin = Admin(admin_url(restate_admin_url, ingress.url), client)
        invocation = await admin.invocation(run_id)
        if invocation is None:
            raise RunNotFound(run_id, _WHOLE_ID)
        if on_found is not None:
            on_found(invocation)
        if invocation.status == "completed":
            kind, value = await ingress.output(run_id)
            if kind == "done" and isinstance(value, Mapping):
                return result_from_dict(value)
            if kind == "failed":
                return _failed(run_id, "", str(value))
        elif invocation.paused:
            await admin.resume(invocation.id)
        deadline = None if timeout is None else time.monotonic() + timeout
        return await ingress.attach(run_id, "", deadline, on_no_worker, admin, on_retrying)
    finally:
        await client.aclose()


_WHOLE_ID = (
    "Restate knows a run by its whole id, as `run` printed it, and keeps a finished one for a "
    "day by default"
)


def _utf8_id(run_id: str) -> None:
    """RunNotFound for an id with bytes no UTF-8 text has (`$'\\xff'` from argv), which no run
    has and no URL or query can carry (it was UnicodeEncodeError, an internal error)."""
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError:
        raise RunNotFound(run_id, _WHOLE_ID) from None


@dataclass(slots=True)
class RestateRunStatus:
    """What `eclflow status RUN_ID --engine restate` shows."""

    run_id: str
    state: str  # pending | running | retrying | paused | completed | failed
    workflow_id: str | None = None
    running: str | None = None  # the keys of the steps in flight (parallel branches: a, b)
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    failed_step: str | None = None
    output: Any = None
    note: str | None = None  # what Restate is doing about an unfinished run (retrying it, …)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "engine": "restate",
            "workflow": self.workflow_id,
            "state": self.state,
            "running": self.running,
            "error": self.error,
            "failed_step": self.failed_step,
            "note": self.note,
            "output": self.output,
            "steps": self.steps,
        }

    def to_text(self) -> str:
        lines = [f"run {self.run_id} · {self.workflow_id or '?'} · {self.state} (restate)"]
        if self.error:
            where = f" at step {self.failed_step}" if self.failed_step else ""
            lines.append(f"error{where}: {self.error}")
        if self.note:
            lines.append(f"note: {self.note}")
        for s in self.steps:
            extra = " (revise)" if s.get("outcome") == "needs_revision" else ""
            lines.append(
                f"  {s.get('key')}: {s.get('status')}{extra} · {s.get('attempts', 0)} attempt(s)"
                f" · {s.get('duration_ms', 0)} ms · {s.get('tokens', 0)} tokens"
            )
        if self.running:
            stopped = self.state in ("paused", "retrying")  # (no worker is at it now)
            doing = "running when the last attempt ended" if stopped else "running"
            lines.append(f"  {self.running}: {doing}")
        return "\n".join(lines)


async def status_async(
    run_id: str, restate_url: str | None = None, restate_admin_url: str | None = None
) -> RestateRunStatus:
    _utf8_id(run_id)
    client = _http_client()
    try:
        ingress = _Ingress(ingress_url(restate_url), client)
        kind, value = await ingress.output(run_id)
        if kind == "unknown":
            raise RunNotFound(run_id, _WHOLE_ID)
        if kind == "done" and isinstance(value, Mapping):
            return _finished(run_id, result_from_dict(value))
        # The admin API has the progress the run keeps in its state, and whether Restate paused
        # or retries it, with no worker up; else the run's status handler (a worker) is asked.
        from .journal import STATUS_STATE

        admin = Admin(admin_url(restate_admin_url, ingress.url), client)
        try:
            invocation = await admin.invocation(run_id)
            data: dict[str, Any] | None = await admin.state(run_id, STATUS_STATE) or {}
        except AdminUnavailable as e:
            invocation, data = None, await ingress.status(run_id)
            if data is None and kind != "failed":
                raise ConfigError(
                    f"run {run_id} has not finished in Restate, and neither Restate's admin API "
                    f"({e.reason}) nor a worker (none answered within {STATUS_WAIT:g}s) could "
                    "say how it stands: give the admin API's address (restate-server's port "
                    f"9070) with --restate-admin-url or {ADMIN_ENV}, or start a worker with "
                    "`eclflow serve`"
                ) from None
        if data is None:
            return RestateRunStatus(run_id, "failed", error=str(value))
        workflow_id = data.get("workflow")
        if not workflow_id and invocation is not None:  # (no worker has begun it)
            workflow_id = (await admin.submitted_workflows([invocation.id])).get(invocation.id)
        st = RestateRunStatus(
            run_id=run_id,
            state=str(data.get("state") or "pending"),
            workflow_id=workflow_id,
            running=data.get("running"),
            steps=list(data.get("steps") or []),
            error=data.get("error"),
            failed_step=data.get("failed_step"),
        )
        if kind == "failed":
            st.state, st.error = "failed", str(value)
        elif invocation is not None and invocation.paused:
            st.state, st.error = "paused", paused_message(run_id, invocation)
        elif invocation is not None and invocation.status == "backing-off":
            st.state, st.note = "retrying", invocation.retry_note()
        return st
    finally:
        await client.aclose()


def _finished(run_id: str, result: RunResult) -> RestateRunStatus:
    """A finished run's status from its result alone: no worker is needed to read it."""
    from .journal import progress_entry

    return RestateRunStatus(
        run_id,
        result.status,
        workflow_id=result.workflow_id or None,
        steps=[progress_entry(s) for s in result.steps],
        error=result.error,
        failed_step=result.failed_step,
        output=result.output,
    )


def status(
    run_id: str, restate_url: str | None = None, restate_admin_url: str | None = None
) -> RestateRunStatus:
    """`eclflow status RUN_ID --engine restate`: the run's state as Restate keeps it."""
    return asyncio.run(status_async(run_id, restate_url, restate_admin_url))


def runs(
    restate_url: str | None = None,
    restate_admin_url: str | None = None,
    *,
    limit: int = 50,
    state: str | None = None,
    workflow_id: str | None = None,
) -> list[dict[str, Any]]:
    """`eclflow runs --engine restate`: the runs Restate keeps, newest first, as the admin API
    shows them (no worker needed; a finished run is kept for a day by default)."""
    return asyncio.run(_runs_async(restate_url, restate_admin_url, limit, state, workflow_id))


async def _runs_async(
    restate_url: str | None,
    restate_admin_url: str | None,
    limit: int,
    state: str | None,
    workflow_id: str | None,
) -> list[dict[str, Any]]:
    from .journal import STATUS_STATE

    client = _http_client()
    try:
        admin = Admin(admin_url(restate_admin_url, ingress_url(restate_url)), client)
        out: list[dict[str, Any]] = []
        offset = 0
        while len(out) < limit:
            # the query filters and limits; only a run no worker has begun (its workflow not in
            # its state yet) is looked up after it, so a --workflow filter may need another page
            rows = await admin.runs(
                STATUS_STATE, limit, state=state, workflow=workflow_id, offset=offset
            )
            unbegun = [str(r.get("invocation")) for r in rows if not r.get("workflow")]
            submitted = await admin.submitted_workflows(unbegun)
            for row in rows:
                row["workflow"] = row.get("workflow") or submitted.get(str(row.get("invocation")))
                if workflow_id in (None, row["workflow"]) and len(out) < limit:
                    out.append(await _run_summary(admin, row))
            if len(rows) < limit or workflow_id is None:
                break
            offset += limit
    finally:
        await client.aclose()
    return out


async def _run_summary(admin: Admin, row: Mapping[str, Any]) -> dict[str, Any]:
    """One run as `runs --engine restate` shows it, from a row of `Admin.runs`."""
    import json

    try:
        progress = json.loads(row.get("progress") or "{}")
    except ValueError:
        progress = {}
    progress = progress if isinstance(progress, dict) else {}
    steps = [s for s in progress.get("steps") or [] if isinstance(s, dict)]
    shown = str(row.get("state"))
    note = None
    if shown == "retrying":
        invocation = Invocation(
            id=str(row.get("invocation")),
            status="backing-off",
            attempts=int(row.get("attempts") or 0),
            last_failure=row.get("last_failure") or None,
            error_code=row.get("error_code") or None,
        )
        if invocation.no_worker:
            address = await admin.deployment(row.get("deployment_id"))
            invocation = replace(invocation, deployment=address)
        note = invocation.retry_note()
    return {  # (the names `run --json` and `runs --json` of a local run use)
        "run_id": str(row.get("run_id")),
        "engine": "restate",
        "workflow": row.get("workflow"),
        "status": shown,
        "state": shown,
        "steps": sum(1 for s in steps if s.get("status") != "skipped"),
        "tokens": sum(int(s.get("tokens") or 0) for s in steps),
        "started_at": row.get("created_at"),
        "error": progress.get("error") or row.get("completion_failure") or None,
        "note": note,  # what Restate does about a run it retries, as `status` says it
    }
