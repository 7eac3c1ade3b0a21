"""Starting and resuming runs: input checks, provider checks, the journal, the run row."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidInput, InvalidState
from ..graph.plan import Plan, compile_plan
from ..llm import MockProvider, Providers, load_script
from ..spec.model import Workflow
from ..steps.registry import default_registry
from .executor import CallGuard, CallHook, Executor
from .journal import Journal, MemoryJournal, StoreJournal
from .orchestrator import Listener, Orchestrator, new_run_id
from .result import RunResult

MODEL_ENV = "ECLFLOW_MODEL"


def as_workflow(workflow: Workflow | str | Path) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    from ..spec import load

    return load(workflow)


def as_mock(mock: MockProvider | Sequence[Any] | str | Path | None) -> MockProvider | None:
    if mock is None or isinstance(mock, MockProvider):
        return mock
    if isinstance(mock, str | Path):
        return load_script(mock)
    return MockProvider(list(mock))


def validate_input(workflow: Workflow, inputs: Mapping[str, Any]) -> None:
    """Check the run input against the workflow's `inputs` schema before anything runs."""
    from jsonschema import Draft202012Validator

    errors = sorted(
        Draft202012Validator(dict(workflow.inputs)).iter_errors(dict(inputs)),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidInput(f"input {e.message}{more}", field=where or None)


def default_model(workflow: Workflow, model: str | None) -> str | None:
    """`--model` > ECLFLOW_MODEL > the workflow's `model:`."""
    return model or os.environ.get(MODEL_ENV) or workflow.model


def check_models(plan: Plan, providers: Providers, model: str | None) -> None:
    """Fail before the run starts if a model the run needs cannot be called."""
    registry = default_registry()
    seen: set[str] = set()
    for s in plan.workflow.steps:
        if not registry.get(s.type).uses_model:
            continue
        m = s.model or model
        if m is None:
            raise ConfigError(
                f"step '{s.id}' needs a model: set `model:` in the workflow or pass --model"
            )
        if m not in seen:
            seen.add(m)
            providers.check(m)


async def run(
    workflow: Workflow | str | Path,
    inputs: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    mock_responses: MockProvider | Sequence[Any] | str | Path | None = None,
    store: Any = None,
    db: str | None = None,
    run_id: str | None = None,
    listener: Listener | None = None,
    guard: CallGuard | None = None,
    on_call: CallHook | None = None,
    journal: Journal | None = None,
    journal_factory: Callable[[str], Journal] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run a workflow to its end and return the result (a failed run is a result, not an error).

    Journaled to `store` (or a store opened from `db`) when given; otherwise nothing is kept.
    """
    wf = as_workflow(workflow)
    inputs = dict(inputs or {})
    validate_input(wf, inputs)
    plan = compile_plan(wf)
    providers = Providers(mock=as_mock(mock_responses))
    chosen = default_model(wf, model)
    check_models(plan, providers, chosen)
    own_store = False
    if store is None and db is not None:
        from ..store import open_store

        store, own_store = open_store(db), True
    run_id = run_id or new_run_id()
    try:
        if journal is None:
            if store is not None:
                store.runs.create(
                    run_id=run_id,
                    definition_id=wf.id,
                    definition_name=wf.name,
                    definition=wf.source,
                    definition_sha256=wf.sha256,
                    input=inputs,
                    state="running",
                    metadata={
                        "model": chosen,
                        "path": str(wf.path) if wf.path else None,
                        "pid": os.getpid(),
                        "host": _hostname(),
                        **(metadata or {}),
                    },
                )
                journal = (journal_factory or (lambda rid: StoreJournal(store, rid)))(run_id)
            else:
                journal = MemoryJournal()
        return await _execute(
            plan, providers, chosen, journal, run_id, inputs, store, listener, guard, on_call
        )
    finally:
        if own_store:
            store.close()


async def _execute(
    plan: Plan,
    providers: Providers,
    model: str | None,
    journal: Journal,
    run_id: str,
    inputs: Mapping[str, Any],
    store: Any,
    listener: Listener | None,
    guard: CallGuard | None,
    on_call: CallHook | None,
) -> RunResult:
    executor = Executor(
        run_id=run_id, providers=providers, default_model=model, guard=guard, on_call=on_call
    )
    orchestrator = Orchestrator(plan, executor, journal, listener=listener)
    result = await orchestrator.run(run_id, inputs)
    if store is not None:
        import asyncio

        await asyncio.to_thread(_record_end, store, result)
    return result


def _record_end(store: Any, result: RunResult) -> None:
    with store.transaction():
        store.runs.update_output(result.run_id, result.output)
        store.runs.update_metadata(
            result.run_id,
            revisions=result.revisions,
            tokens=result.tokens,
            cost=result.cost,
            duration_ms=result.duration_ms,
        )
        store.runs.update_state(
            result.run_id, result.status, error=result.error, failed_step=result.failed_step
        )


async def resume(
    run_id: str,
    *,
    store: Any,
    model: str | None = None,
    mock_responses: MockProvider | Sequence[Any] | str | Path | None = None,
    force: bool = False,
    listener: Listener | None = None,
    guard: CallGuard | None = None,
    on_call: CallHook | None = None,
) -> RunResult:
    """Continue a run from its journal: succeeded steps are replayed without calling anything."""
    from ..spec import load, load_text

    record = store.runs.find(run_id)
    meta = dict(record.metadata or {})
    path = Path(meta["path"]) if meta.get("path") else None
    wf = load_text(
        record.definition, file=str(path or "<stored>"), base_dir=path.parent if path else None
    )
    if path is not None and path.is_file():
        on_disk = path.read_text(encoding="utf-8")
        if on_disk != record.definition:
            if not force:
                raise InvalidState(
                    f"{path} changed since run {record.id[:8]} started; "
                    "resume with --force to continue with the file as it is now"
                )
            wf = load(path)
    if record.state == "running" and not force and _alive_elsewhere(meta):
        raise InvalidState(f"run {record.id[:8]} is still running in process {meta.get('pid')}")
    plan = compile_plan(wf)
    providers = Providers(mock=as_mock(mock_responses))
    chosen = model or meta.get("model") or default_model(wf, None)
    check_models(plan, providers, chosen)
    store.runs.update_state(record.id, "running")
    store.runs.update_metadata(
        record.id, pid=os.getpid(), host=_hostname(), resumed=int(meta.get("resumed", 0)) + 1
    )
    journal = StoreJournal(store, record.id)
    return await _execute(
        plan, providers, chosen, journal, record.id, record.input, store, listener, guard, on_call
    )


def _alive_elsewhere(meta: Mapping[str, Any]) -> bool:
    pid = meta.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _same_host(meta)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _same_host(meta: Mapping[str, Any]) -> bool:
    return meta.get("host") in (None, _hostname())
