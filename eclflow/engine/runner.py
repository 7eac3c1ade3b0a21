"""Starting and resuming runs: input checks, provider checks, the journal, the run row."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import numbers
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from functools import lru_cache, partial
from pathlib import Path
from typing import Any
from uuid import UUID

from .._time import utc_text
from ..errors import (
    ConfigError,
    EclflowError,
    InvalidInput,
    InvalidState,
    RunInterrupted,
)
from ..graph.plan import Plan, compile_plan
from ..llm import MockProvider, Provider, Providers, load_script
from ..llm.own import own_providers
from ..observe import tracing
from ..observe.budget import BudgetGuard, Spent
from ..observe.events import EventRecorder, emit, log_only, record_to, wanted
from ..observe.logs import bind
from ..spec.model import Budget, StepSpec, Workflow, control_character, printable
from ..steps.registry import default_registry
from .executor import CallGuard, CallHook, Executor
from .journal import Journal, MemoryJournal, StoreJournal
from .orchestrator import Listener, Orchestrator, new_run_id
from .result import RunResult

MODEL_ENV = "ECLFLOW_MODEL"
# what `mock_responses=` takes: a provider, replies in order, replies by step, a script file
MockScript = MockProvider | Sequence[Any] | Mapping[str, Any] | str | Path
logger = logging.getLogger("eclflow.engine")


def as_workflow(workflow: Workflow | str | Path) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    from ..spec import load

    return load(workflow)


def as_mock(mock: MockScript | None) -> MockProvider | None:
    if mock is None or isinstance(mock, MockProvider):
        return mock
    if isinstance(mock, str | Path):
        return load_script(mock)
    if isinstance(mock, Mapping):  # the keyed form: replies by journal key or step id
        return MockProvider(mock)
    if not isinstance(mock, Sequence):
        raise ConfigError(
            "mock_responses is a MockProvider, a list of replies, a mapping of them by step, "
            f"or a script file, not {type(mock).__name__}"
        )
    return MockProvider(list(mock))


def check_model_name(model: Any) -> None:
    """A model given to run, resume or a batch is a name, of printable characters (a NUL
    failed the run's first journal write on PostgreSQL; a workflow's are checked by validate)."""
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model is a name such as 'openai/gpt-4o-mini', not {model!r}")
    found = control_character(model) if model is not None else None
    if found is not None:
        raise ConfigError(f"model {json.dumps(model)} has a control character ({found})")


def check_run_id(run_id: Any, new: bool = False) -> None:
    """A run id given to run, resume or pause is text (an int or None failed with
    AttributeError), and not empty (run made a new id for one, resume took it for a prefix).
    `new`: the id of a new run (`run`), not of one to find. A new one has no control character
    (a NUL failed the run's first journal write on PostgreSQL); one to find may (an earlier
    eclflow took "job\\n", which resume and pause still find)."""
    if not isinstance(run_id, str):
        raise ConfigError(f"run_id must be a string, not {type(run_id).__name__}")
    found = control_character(run_id) if new else None
    if found is not None:
        raise ConfigError(f"run_id {json.dumps(run_id)} has a control character ({found})")
    if not run_id.strip():
        raise ConfigError(
            "run_id is empty: "
            + (
                "give the new run its id, or leave run_id out for one to be made"
                if new
                else "give the run's id (or a unique prefix of it)"
            )
        )


def plain_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The run's input as the journal keeps it, JSON: a date, a set or an object of one's own
    was kept as its `str()`, so a resumed run read other values than its first attempt did;
    ConfigError naming the first such input and its type, and what to pass. A tuple becomes a
    list, a subclass of str, int, float or dict (an enum, an OrderedDict) its plain value, an
    integer of another kind (numpy's) an int: what a resume reads. A `Path` or a `UUID` becomes
    its text: the one text each has (that JSON encoders of the field write for them, pydantic's
    among them), which the program would pass otherwise, and which `Path(…)` or `UUID(…)` of
    it gives back. A Decimal, a Fraction or a numpy float32 is refused: as a float it would be
    another number (0.1 becomes 0.1000000015 from a float32), as text no number."""
    try:
        out = _plain(inputs, "")
    except RecursionError:
        raise ConfigError(
            "inputs are nested too deeply to keep as JSON in the journal "
            f"(more than about {sys.getrecursionlimit()} levels)"
        ) from None
    return dict(out)


_JSON_LEAVES = (str, bool, int, type(None))


def _plain(value: Any, where: str) -> Any:
    """`value` made plain JSON data (see `plain_inputs`); `where`: its place in the input."""
    kind = type(value)
    if kind in _JSON_LEAVES:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ConfigError(f"input '{where}' is {value}, which JSON cannot hold: give a number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                name = type(k).__name__
                a = "an" if name[:1].lower() in "aeiou" else "a"
                raise ConfigError(
                    (f"input '{where}' has the key {k!r}, {a} {name}" if where else
                     f"an input is named {k!r}, {a} {name}")
                    + ": the journal keeps inputs as JSON, whose keys are text (a resume would "
                    f"read {str(k)!r}): give text {'keys' if where else 'names'}"
                )  # fmt: skip
            key = str.__str__(k)  # (an enum's text: its value, as JSON keeps it)
            if key in out:  # (a multidict's key twice: the journal would keep one value)
                first = next((j for j in value if isinstance(j, str) and str.__str__(j) == key), k)
                a, b = _shown_key(first), _shown_key(k)
                raise ConfigError(
                    (f"input '{where}' has " if where else "the inputs have ")
                    + (f"the key {a} twice" if a == b else f"the keys {a} and {b}, both {key!r}")
                    + ": the journal keeps inputs as JSON, one value a key: give one"
                )
            out[key] = _plain(v, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    for plain in (bool, str, int, float):  # a subclass (an enum of them): its plain value
        if isinstance(value, plain):
            return _plain(str.__str__(value) if plain is str else plain(value), where)
    # what has one exact text or number, which a resume reads back as the first run saw it
    if isinstance(value, numbers.Integral):  # (numpy's int64, …)
        return int(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, os.PathLike) and isinstance(path := os.fspath(value), str):
        return path
    if hasattr(value, "isoformat"):  # (a date, time or datetime)
        hint = "pass its isoformat() text"
    elif isinstance(value, set | frozenset):
        hint = "pass a list"
    elif isinstance(value, Decimal | numbers.Real):
        hint = "pass float(…), or str(…) to keep every digit"
    elif kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):
        hint = "pass bool(…)"
    else:
        hint = "pass text, a number, true/false, None, or a list or mapping of them"
    name = f"numpy.{kind.__name__}" if kind.__module__ == "numpy" else kind.__name__
    raise ConfigError(
        f"input '{where}' is a {name}, which the journal cannot keep as JSON (a "
        f"resume would read its text instead): {hint}"
    )


def _shown_key(key: str) -> str:
    """A key of an input mapping as the program wrote it: `Size.BIG` for an enum's."""
    from enum import Enum

    return f"{type(key).__name__}.{key.name}" if isinstance(key, Enum) else repr(key)


def validate_input(workflow: Workflow, inputs: Mapping[str, Any]) -> None:
    """Check the run input against the workflow's `inputs` schema before anything runs."""
    validator = compile_plan(workflow).input_validator
    if validator.is_valid(inputs):
        return
    errors = sorted(validator.iter_errors(dict(inputs)), key=lambda e: list(e.absolute_path))
    unknown = undeclared_inputs(workflow.inputs, inputs)
    if unknown:  # a misspelt name first: it is why the real one is missing
        errors = [e for e in errors if e.validator != "additionalProperties" or e.absolute_path]
        named = "; ".join(unknown)
        if not errors:
            raise InvalidInput(named, field=None)
    e = errors[0]
    where = ".".join(str(p) for p in e.absolute_path)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = e.message
    shown = repr(e.instance)
    if len(shown) > 60:  # a 5 MB value is not echoed back: its start and its length
        message = message.replace(shown, f"{shown[:40]}… ({len(shown)} characters)")
    lead = f"{named}; " if unknown else ""
    raise InvalidInput(f"{lead}input {message}{more}", field=where or None)


def undeclared_inputs(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
    """`unknown input 'topc' (did you mean 'topic'?)` for each input the `inputs` schema's
    `properties` (and `patternProperties`) do not declare; none when it declares no
    properties (it takes anything then), or says what others it takes (`additionalProperties`
    other than false: inputs beside the declared ones are meant, and not named)."""
    import difflib

    if not isinstance(schema.get("properties"), Mapping) or not schema["properties"]:
        return []
    if schema.get("additionalProperties", False) is not False:
        return []
    declared = _declared(schema)
    if declared is None:
        return []
    props, patterns = declared
    out = []
    for key in inputs:
        if key in props or any(_searches(p, str(key)) for p in patterns):
            continue
        close = difflib.get_close_matches(str(key), sorted(props), n=1, cutoff=0.6)
        out.append(f"unknown input {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return out


_SUBSCHEMAS = ("allOf", "anyOf", "oneOf", "if", "then", "else", "dependentSchemas")


def _declared(schema: Any) -> tuple[set[str], list[str]] | None:
    """The property names and `patternProperties` patterns the `inputs` schema declares, at
    its top or in the schemas it combines (`allOf`, `anyOf`, `oneOf`, `if`/`then`/`else`,
    `dependentSchemas`); None where a `$ref` may declare more than can be seen here."""
    names: set[str] = set()
    patterns: list[str] = []
    todo = [schema]
    while todo:
        part = todo.pop()
        if not isinstance(part, Mapping):
            continue
        if "$ref" in part or "$dynamicRef" in part:
            return None
        if isinstance(part.get("properties"), Mapping):
            names.update(str(k) for k in part["properties"])
        if isinstance(part.get("patternProperties"), Mapping):
            patterns += [p for p in part["patternProperties"] if isinstance(p, str)]
        for word in _SUBSCHEMAS:
            sub = part.get(word)
            if word == "dependentSchemas" and isinstance(sub, Mapping):
                todo += list(sub.values())
            elif isinstance(sub, list | tuple):
                todo += list(sub)
            elif sub is not None:
                todo.append(sub)
    return names, patterns


def _searches(pattern: str, key: str) -> bool:
    """Whether a `patternProperties` pattern matches `key` (one that does not compile, no)."""
    try:
        return re.search(pattern, key) is not None
    except re.error:
        return False


def check_env(workflow: Workflow, replayed: Collection[str] = ()) -> None:
    """An `env:` variable that is not set, and that an expression reads without
    `| default(…)`, fails the run before it starts: otherwise the step that reads it fails,
    after the steps before it were paid for."""
    unset = [n for n in workflow.env if n not in os.environ]
    if not unset:
        return
    from ..spec.checks import env_readers

    readers = env_readers(workflow, replayed)
    for i, name in enumerate(workflow.env):
        if name in unset and name in readers:
            where = f"{workflow.env_locations[i]}: " if i < len(workflow.env_locations) else ""
            raise ConfigError(
                f"{where}env.{name} is not set, and {readers[name]} reads it: set {name} in "
                f"the environment, or read it as env.{name} | default('…')"
            )


def default_model(workflow: Workflow, model: str | None) -> str | None:
    """`--model` > ECLFLOW_MODEL > the workflow's `model:`. A local model file given by a
    relative path is made absolute: the run keeps its model, and is resumed from anywhere."""
    given = model or os.environ.get(MODEL_ENV)
    if not given:
        return workflow.model
    if given.startswith("local/") and given.lower().endswith(".gguf"):
        path = Path(given[len("local/") :]).expanduser()
        if not path.is_absolute():
            return f"local/{path.absolute()}"
    return given


def _unpriced(model: str) -> bool:
    from ..observe.budget import price

    return price(model) is None


def models_called(workflow: Workflow, chosen: str | None) -> set[str]:
    """The models the steps that call one would call, with `chosen` for those without their
    own (`""` when there is none)."""
    return {s.model or chosen or "" for s in model_steps(workflow)}


def model_steps(workflow: Workflow) -> list[StepSpec]:
    """The steps that call a model: of a type that says so, or of a type not registered
    here (a plugin the run would load, taken to call one)."""
    registry = default_registry()
    return [s for s in workflow.steps if s.type not in registry or registry.get(s.type).uses_model]


def check_mock_is_used(workflow: Workflow, model: str | None) -> None:
    """Replies for `mock/` models with no step on one would run the real model (and pay)."""
    chosen = default_model(workflow, model)
    checked = compile_plan(workflow).mock_models_checked  # (once: a batch runs it per item)
    if chosen in checked:
        return
    calling = models_called(workflow, chosen)
    if calling and not any(m.startswith("mock/") for m in calling):
        raise ConfigError(
            "mock responses play replies for mock/… models, and no step uses one "
            + mock_unused(workflow, chosen, "give a mock/NAME model")
        )
    checked.add(chosen)


def mock_unused(workflow: Workflow, chosen: str | None, fix: str) -> str:
    """Why no step would play the mock's replies, and what to do (`fix`, for a model given
    once for all steps): a workflow whose every model step names its own model is not
    changed by `--model mock/…`, so saying `add --model mock/NAME` there would be wrong."""
    calling = model_steps(workflow)
    own = [f"{s.id}: {s.model}" for s in calling if s.model]
    if own and len(own) == len(calling) and chosen and chosen.startswith("mock/"):
        shown = ", ".join(own[:3]) + (f", … ({len(own)} steps)" if len(own) > 3 else "")
        return (
            f"(every step that calls a model names its own: {shown}; {chosen} is for steps "
            "without one): write mock/NAME in their model: to play the replies"
        )
    return f"(the model is {chosen or 'not set'}): {fix}"


def warn_unplayed_keys(workflow: Workflow, mock: object) -> None:
    """A warning for each key of a keyed mock script that no call of `workflow` can ask
    for (once per script and workflow: a batch runs it for every item)."""
    if not isinstance(mock, MockProvider) or mock.keyed is None:
        return
    seen = (workflow.source, *workflow.step_ids)  # (a str's hash is kept: no digest per run)
    if seen in mock.keys_checked:
        return
    mock.keys_checked.add(seen)
    calling = {s.id for s in model_steps(workflow)}
    where = f" {mock.source}" if mock.source else ""
    for problem in mock.unplayed_keys(workflow.step_ids, calling):
        logger.warning("mock responses%s: %s", where, problem)


def check_models(
    plan: Plan, providers: Providers, model: str | None, limits: Budget | None = None
) -> None:
    """Fail before the run starts if a model the run needs cannot be called, or, with a
    dollar budget, has no price to count it in."""
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
            if providers.serves_own(m):  # (own.prepare checks it, on the event loop)
                continue
            providers.check(m)
            if limits is not None and limits.max_usd is not None and _unpriced(m):
                raise ConfigError(
                    f"the price of model '{m}' is unknown, so a budget of ${limits.max_usd:g} "
                    "cannot be counted; limit tokens or calls instead (--budget-tokens, "
                    "--budget-calls, or `budget:` in the workflow)"
                )


async def run(
    workflow: Workflow | str | Path,
    inputs: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    store: Any = None,
    db: str | None = None,
    run_id: str | None = None,
    budget: Budget | Mapping[str, Any] | None = None,
    listener: Listener | None = None,
) -> RunResult:
    """Run a workflow to its end and return the result (a failed run is a result, not an error).

    `workflow`: a `Workflow` or a file path. `inputs`: the run's input, JSON values (text,
    numbers, true/false, None, lists and mappings of them; a `Path` or `UUID` is taken as its
    text, numpy's integers as ints). `model`: the model of the steps
    that name none (else ECLFLOW_MODEL, else the file's `model:`). `mock_responses`: scripted
    replies for `mock/…` models (a MockProvider, a list, a mapping by step, a script file).
    `providers`: model clients of your own by model prefix (`{"myco": client}` serves
    `myco/…`; see `eclflow.Provider`). `store` (a Store, a database URL or path) or `db` (a
    URL): the journal; without either, nothing is kept. `run_id`: the new run's id (one is
    made without it). `budget`: a `Budget` or a mapping (`{"max_calls": 10}`), over the
    file's `budget:`. `listener`: called `listener(event, payload)` as the run goes."""
    return await _run(
        workflow,
        inputs,
        model=model,
        mock_responses=mock_responses,
        providers=providers,
        store=store,
        db=db,
        run_id=run_id,
        budget=budget,
        listener=listener,
    )


async def _run(
    workflow: Workflow | str | Path,
    inputs: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    store: Any = None,
    db: str | None = None,
    run_id: str | None = None,
    listener: Listener | None = None,
    guard: CallGuard | None = None,
    on_call: CallHook | None = None,
    journal: Journal | None = None,
    journal_factory: Callable[[str], Journal] | None = None,
    metadata: Mapping[str, Any] | None = None,
    budget: Budget | Mapping[str, Any] | None = None,
    claimed: bool = False,
    spent: Spent | None = None,
    started_at: float | None = None,
) -> RunResult:
    """`run`, with what the CLI, batch mode and the Restate service add.

    `guard` and `on_call`: called before and after each model call. `journal` (or one made by
    `journal_factory` from the run id): where steps are journaled, instead of `store`'s.
    `metadata`: kept with the run's row. `claimed`: the caller (batch mode) has already
    made the input plain (`plain_inputs`), checked it and written the run's row, `pending`.
    `spent`: what the budget counts as spent already (a journal that replays steps adds
    theirs to it). `started_at` (`time.time()`): when the run began, for a journal that
    replays an earlier attempt of it (its duration counts from then, not from this call).
    """
    wf = as_workflow(workflow)
    if inputs is not None and not isinstance(inputs, Mapping):
        raise InvalidInput(
            f"inputs must be a mapping of input names to values, not {type(inputs).__name__}"
        )
    inputs = inputs or {}
    if not claimed:  # (batch mode made plain and checked the items it claimed)
        inputs = plain_inputs(inputs)
        validate_input(wf, inputs)
    check_model_name(model)
    if run_id is not None:
        check_run_id(run_id, new=True)
    budget = as_budget(budget)
    plan = compile_plan(wf)
    plan.step_objects(default_registry())  # (a type that cannot be made: before any record)
    check_env(wf)
    if mock_responses is not None:
        check_mock_is_used(wf, model)
    callers = Providers(mock=as_mock(mock_responses), own=own_providers(providers))
    if callers.own:  # (a resume not given them again says which it needs)
        metadata = {**(metadata or {}), "providers": sorted(callers.own)}
    warn_unplayed_keys(wf, callers.mock)
    chosen = default_model(wf, model)
    limits = _limits(wf, budget)
    check_models(plan, callers, chosen, limits)
    if callers.own:
        await callers.own.prepare(models_called(wf, chosen), limits.max_usd)
    store, own_store = _as_store(store, db)
    given_id = run_id
    run_id = run_id or new_run_id()
    try:
        if store is not None and journal is None and not getattr(store, "write_checked", True):
            await asyncio.to_thread(store.check_writable)  # before anything is paid for
        # a run of that id is another run: its record is not this one's to write
        taken = given_id and store is not None and journal is None and not claimed
        if taken and await asyncio.to_thread(store.runs.exists, run_id):
            raise InvalidState(
                f"run {run_id} already exists: resume it, or give the new run another id"
            )
        if journal is None:
            if store is not None:
                if claimed:  # its row is in the journal already, `pending`: now it runs
                    writer_for(store).start_run(run_id)
                else:  # committed with the first step's rows
                    writer_for(store).create_run(
                        **run_row(wf, inputs, run_id, chosen, limits, metadata)
                    )
                journal = (journal_factory or (lambda rid: StoreJournal(store, rid, fresh=True)))(
                    run_id
                )
            else:
                journal = MemoryJournal()
        return await _execute(
            plan,
            callers,
            chosen,
            journal,
            run_id,
            inputs,
            store,
            listener,
            guard,
            on_call,
            limits,
            spent,
            started_at,
        )
    finally:
        if own_store:
            store.close()


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a resume says as it starts: which resume of the run it is (1, 2, …), the state
    it continues the run from (`interrupted`, `failed`, `paused`) and, for an interrupted
    run, the fields of the `workflow_interrupted` event its take-over kept in the store (the
    resume's own logs say it too)."""

    number: int
    previous_state: str
    interrupted: Mapping[str, Any] | None = None


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
    limits: Budget | None = None,
    spent: Spent | None = None,
    started_at: float | None = None,
    resumed: Resumed | None = None,
) -> RunResult:
    limits = limits or Budget()
    budget_guard = BudgetGuard(
        limits.max_usd,
        limits.max_tokens,
        limits.max_calls,
        spent,
        providers.serves_own if providers.own else None,
        providers.price if providers.own else None,
    )
    if budget_guard.active:
        guard = _both_guards(budget_guard, guard)
        on_call = _both_hooks(budget_guard.record, on_call)
    executor = Executor(
        run_id=run_id, providers=providers, default_model=model, guard=guard, on_call=on_call
    )
    writer = writer_for(store) if store is not None else None
    orchestrator = Orchestrator(
        plan,
        executor,
        journal,
        listener=listener,
        # (asked with the other runs of this loop: see JournalWriter.pause_requested)
        pause_check=partial(writer.pause_requested, run_id) if writer is not None else None,
    )
    wf = plan.workflow
    recorder = EventRecorder(store, run_id) if store is not None else None
    if writer is not None:
        writer.follow(recorder)
    _running_here.add(run_id)
    try:
        with (
            bind(run_id=run_id, workflow_id=wf.id),
            record_to(recorder),
            (  # attributes are only built when tracing is on
                tracing.span(
                    "workflow",
                    **{
                        "eclflow.run_id": run_id,
                        "eclflow.workflow_id": wf.id,
                        "eclflow.workflow_name": wf.name,
                    },
                )
                if tracing.enabled()
                else tracing.OFF
            ) as span,
        ):
            if resumed is None:
                emit(
                    "workflow_started",
                    workflow_name=wf.name,
                    step_count=len(wf.steps),
                    model=model,
                )
            else:  # (a timeline read later tells this start from the first)
                if resumed.interrupted is not None:  # (kept by the take-over: logged only)
                    log_only("workflow_interrupted", **resumed.interrupted)
                emit(
                    "workflow_resumed",
                    workflow_name=wf.name,
                    step_count=len(wf.steps),
                    model=model,
                    resume=resumed.number,
                    previous_state=resumed.previous_state,
                )
            result = await orchestrator.run(run_id, inputs)
            if started_at is not None:
                since = int((time.time() - started_at) * 1000)
                result.duration_ms = max(result.duration_ms, since)
            if result.status == "completed":
                if wanted("workflow_completed"):  # (its tokens and cost: sums over the steps)
                    emit(
                        "workflow_completed",
                        duration_ms=result.duration_ms,
                        tokens=result.tokens,
                        cost=result.cost,
                    )
            elif result.status == "paused":
                emit("workflow_paused", before_step=result.paused_at)
            else:
                emit(
                    "workflow_failed",
                    error=result.error,
                    failed_step=result.failed_step,
                    duration_ms=result.duration_ms,
                )
                tracing.record_error(span, result.error or "failed")
            if span is not None:
                tracing.set_attributes(
                    span, **{"eclflow.status": result.status, "eclflow.cost_usd": result.cost}
                )
    except BaseException:  # cancelled before its end: nobody runs it now (resume may take it)
        if writer is not None:
            writer.release_run(run_id)
        raise
    finally:
        _running_here.discard(run_id)
        if writer is not None:
            writer.unfollow(recorder)
    if writer is not None:
        await writer.end_run(
            result.run_id,
            result.status,
            result.output,
            result.error,
            result.failed_step,
            _end_metadata(result),
        )
    return result


def pause(run_id: str, *, store: Any = None, db: str | None = None) -> str:
    """Ask the process running `run_id` (any unique prefix) to pause it: the steps in flight
    finish, no other starts, and the run is left `paused` for `resume`. The run's full id."""
    check_run_id(run_id)
    store, own = _as_store(store, db, reading=True)
    try:
        from ..store.owner import shown_state

        record = store.runs.find(run_id)
        shown = shown_state(record.state, record.metadata or {})
        if (record.metadata or {}).get("engine") == "restate":
            raise InvalidState(f"run {record.id[:8]} runs on Restate, which eclflow cannot pause")
        if shown == "interrupted":
            raise RunInterrupted(
                f"run {record.id[:8]} is not running: its process ended; "
                f"`eclflow resume {record.id[:8]}` continues it",
                record.id,
            )
        if shown != "running":
            raise InvalidState(f"run {record.id[:8]} is {shown}: only a running run pauses")
        store.runs.update_metadata(record.id, pause_requested=utc_text())
        return str(record.id)
    finally:
        if own:
            store.close()


def pause_requested(store: Any, run_id: str) -> bool:
    """Whether `pause` was asked of the run (from a thread; a run in an event loop asks its
    writer, with the loop's other runs: `JournalWriter.pause_requested`)."""
    from ..store.writer import _paused

    return run_id in _paused(store, [run_id])


def writer_for(store: Any) -> Any:
    """The store's group-commit writer for this event loop (imported here: runs without a
    journal never load the store)."""
    from ..store.writer import writer_for as _writer_for

    return _writer_for(store)


def _end_metadata(result: RunResult) -> dict[str, Any]:
    return {
        "revisions": result.revisions,
        "tokens": result.tokens,
        "cost": result.cost,
        "duration_ms": result.duration_ms,
        **({"paused_at": result.paused_at} if result.paused_at is not None else {}),
    }


def _as_store(store: Any, db: Any, *, reading: bool = False) -> tuple[Any, bool]:
    """The store to use, and whether this call opened it: `store` (a Store, or a URL or a
    path), else one opened from `db`, else none. `reading` (resume, pause): with neither, the
    default database; a URL given must hold a store already (a typo is no new database)."""
    if store is not None and hasattr(store, "runs"):  # (the usual cases, first)
        return store, False
    if store is None and db is None and not reading:
        return None, False
    if store is not None and not isinstance(store, str | os.PathLike):
        raise ConfigError(
            f"store must be an eclflow Store (eclflow.store.open_store) or a database URL, "
            f"not {type(store).__name__}"
        )
    url = store if store is not None else db
    if isinstance(url, os.PathLike):
        url = f"sqlite:///{os.fspath(url)}"
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"db must be a database URL, not {type(url).__name__}")
    from ..store import open_store

    return open_store(url, create=not (reading and url is not None)), True


def _both_guards(first: BudgetGuard, second: CallGuard | None) -> CallGuard:
    if second is None:
        return first
    return _Guards(first, second)


class _Guards:
    """The budget's guard, then the caller's; `release` (a call that failed, or that the
    caller's guard refused after the budget reserved it) goes to the budget's, as the executor
    calls it on the guard it holds."""

    def __init__(self, budget: BudgetGuard, other: CallGuard) -> None:
        self.budget, self.other = budget, other

    async def __call__(self, step_id: str, request: Any) -> None:
        await self.budget(step_id, request)
        try:
            await self.other(step_id, request)
        except BaseException:
            self.budget.cancel(request)
            raise

    def release(self, request: Any) -> None:
        self.budget.release(request)
        other = getattr(self.other, "release", None)  # (as it is told without a budget)
        if other is not None:
            other(request)


def _both_hooks(first: CallHook, second: CallHook | None) -> CallHook:
    if second is None:
        return first

    def hook(*args: Any) -> None:
        first(*args)
        second(*args)

    return hook


def _limits(wf: Workflow, override: Budget | None) -> Budget:
    """The command line's limits win over the file's, field by field."""
    if override is None:
        return wf.budget
    return Budget(
        max_usd=override.max_usd if override.max_usd is not None else wf.budget.max_usd,
        max_tokens=override.max_tokens if override.max_tokens is not None else wf.budget.max_tokens,
        max_calls=override.max_calls if override.max_calls is not None else wf.budget.max_calls,
    )


_digests: dict[tuple[Path, int, int], str] = {}


def prompt_digests(wf: Workflow) -> dict[str, str]:
    """A digest of each prompt file the steps of `wf` read, as the file is now: recorded with a
    run, so that resume can tell that a prompt was edited since."""
    out: dict[str, str] = {}
    for step in wf.steps:
        path = step.prompt
        # keyed by the path as UTF-8 text (a folder whose name is not UTF-8 is kept escaped)
        if path is None or printable(str(path)) in out:
            continue
        try:
            st = path.stat()
            key = (path, st.st_mtime_ns, st.st_size)
            digest = _digests.get(key)
            if digest is None:
                if len(_digests) >= 1024:
                    _digests.clear()
                digest = _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        except OSError:
            digest = "unreadable"
        out[printable(str(path))] = digest
    return out


def run_row(
    wf: Workflow,
    inputs: Mapping[str, Any],
    run_id: str,
    model: str | None,
    limits: Budget,
    metadata: Mapping[str, Any] | None = None,
    state: str = "running",
) -> dict[str, Any]:
    """A new run's row in the journal, held by this process."""
    from ..store.owner import this_process

    return dict(
        run_id=run_id,
        definition_id=wf.id,
        definition_name=wf.name,
        definition=wf.source,
        definition_sha256=wf.sha256,
        input=dict(inputs),
        state=state,
        metadata={
            "model": model,
            # (a file name that is not UTF-8 is kept escaped: the journal holds UTF-8 text)
            "path": printable(str(wf.path)) if wf.path else None,
            **({"prompts": prompts} if (prompts := prompt_digests(wf)) else {}),
            **this_process(),
            **(metadata or {}),
            **(
                {"budget": _budget_dict(limits)}
                if limits.max_usd or limits.max_tokens or limits.max_calls
                else {}
            ),
        },
    )


def as_budget(budget: Budget | Mapping[str, Any] | None) -> Budget | None:
    """A Budget, also from a mapping such as `{"max_calls": 10}` (the file's `budget:`)."""
    if budget is None:
        return None
    if isinstance(budget, Budget):  # (its fields are checked as a mapping's are)
        budget = {k: v for k, v in _budget_dict(budget).items() if v is not None}
    if not isinstance(budget, Mapping):
        raise ConfigError(f"budget must be a Budget or a mapping, not {type(budget).__name__}")
    fields = ("max_usd", "max_tokens", "max_calls")
    unknown = sorted(set(budget) - set(fields))
    if unknown:
        raise ConfigError(f"budget has no field {', '.join(unknown)}: use {', '.join(fields)}")
    for name, value in budget.items():
        whole = name != "max_usd"
        kinds = (int,) if whole else (int, float)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
            what = "a whole number ≥ 1" if whole else "a number > 0"
            raise ConfigError(f"budget {name} must be {what}, not {value!r}")
    return Budget(**budget)


def _budget_dict(b: Budget) -> dict[str, Any]:
    return {"max_usd": b.max_usd, "max_tokens": b.max_tokens, "max_calls": b.max_calls}


@lru_cache(maxsize=32)
def _stored_workflow(definition: str, file: str, base_dir: Path | None) -> Workflow:
    """A run's stored definition, parsed once per process: a batch that starts again resumes
    hundreds of runs of one file, and parsing and checking it takes milliseconds."""
    from ..spec import load_text

    return load_text(definition, file=file, base_dir=base_dir)


async def resume(
    run_id: str,
    *,
    store: Any = None,
    db: str | None = None,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    force: bool = False,
    budget: Budget | Mapping[str, Any] | None = None,
    listener: Listener | None = None,
) -> RunResult:
    """Continue a run from its journal: succeeded steps are replayed without calling anything.

    `run_id`: the run's id or a unique prefix of it. The journal is `store`, else one opened
    from `db` (a URL; the default database when neither is given). `model`, `mock_responses`
    and `providers` as for `run` (a run on a provider of your own needs it again here).
    `force`: continue although the workflow file or a prompt changed since. `budget`, given
    here, replaces the one the run had; what the run already spent counts. `listener` as for
    `run`. A run that completed is returned as it was recorded, calling nothing."""
    return await _resume(
        run_id,
        store=store,
        db=db,
        model=model,
        mock_responses=mock_responses,
        providers=providers,
        force=force,
        budget=budget,
        listener=listener,
    )


async def _resume(
    run_id: str,
    *,
    store: Any = None,
    db: str | None = None,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    force: bool = False,
    listener: Listener | None = None,
    guard: CallGuard | None = None,
    on_call: CallHook | None = None,
    budget: Budget | Mapping[str, Any] | None = None,
) -> RunResult:
    """`resume`, with `run`'s `guard` and `on_call` (see `_run`)."""
    check_run_id(run_id)
    if store is None or isinstance(store, str | os.PathLike):
        opened, _ = _as_store(store, db, reading=True)
        try:
            return await _resume(
                run_id,
                store=opened,
                model=model,
                mock_responses=mock_responses,
                providers=providers,
                force=force,
                listener=listener,
                guard=guard,
                on_call=on_call,
                budget=budget,
            )
        finally:
            opened.close()
    import asyncio

    check_model_name(model)
    budget = as_budget(budget)
    callers = Providers(
        mock=as_mock(mock_responses), command="eclflow resume", own=own_providers(providers)
    )
    # The reads and writes that take the run over go to a thread: a batch resumes hundreds of
    # runs at once, and the event loop must not wait for the database meanwhile.
    found: _Found | RunResult | None = None
    if callers.own:  # their checks run on this loop, between reading the run and taking it
        found = await asyncio.to_thread(_resumable, store, run_id, force, budget, callers, model)
        if isinstance(found, _Found):
            await callers.own.prepare(models_called(found.wf, found.chosen), found.limits.max_usd)
    taken: Taken | RunResult
    if isinstance(found, RunResult):
        taken = found
    else:
        handover = _Handover(store)
        taking = asyncio.ensure_future(
            asyncio.to_thread(handover.take, found, run_id, force, budget, callers, model)
        )
        try:
            taken = await asyncio.shield(taking)
        except asyncio.CancelledError:  # (the thread goes on: what it takes is let go of)
            handover.abandon()
            raise
    if isinstance(taken, RunResult):  # completed before: nothing to run, nothing rewritten
        if listener is not None:
            listener("run_already_completed", {"result": taken})
        return taken
    record, wf, chosen, limits, rows, (origin, seed), resumed = taken
    try:
        return await _execute(
            compile_plan(wf),
            callers,
            chosen,
            StoreJournal(store, record.id, rows=rows, seed=seed, seed_from=origin),
            record.id,
            record.input,
            store,
            listener,
            guard,
            on_call,
            limits,
            _spent_so_far(rows),
            resumed=resumed,
        )
    finally:  # (_execute's own finally, unless it failed before it began)
        _running_here.discard(record.id)


class _Handover:
    """A take-over (`_take_over`, in a thread) that its resume may abandon: cancelled while it
    waits for it (Ctrl-C, SIGTERM, a caller's timeout), nothing will run the run here, so what
    the thread takes is released, as a run cancelled while it runs is: another resume, in this
    process or another, takes it at once, and its timeline says this process stopped it, not
    that it crashed. Whichever of the thread and the resume comes second releases it (the
    event loop may be closing: its tasks cancelled, a done-callback would never run)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._abandoned = False
        self._taken: str | None = None

    def take(
        self,
        found: _Found | None,
        run_id: str,
        force: bool,
        budget: Budget | None,
        providers: Providers,
        model: str | None,
    ) -> Taken | RunResult:
        """`_take` of what `_resumable` found already, else `_take_over` of `run_id`."""
        if found is not None:
            taken = _take(self.store, found, force, budget)
        else:
            taken = _take_over(self.store, run_id, force, budget, providers, model)
        if isinstance(taken, RunResult):
            return taken
        with self._lock:
            if not self._abandoned:
                self._taken = taken[0].id
                return taken
        self._let_go(taken[0].id)
        return taken

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            run_id, self._taken = self._taken, None
        if run_id is not None:
            self._let_go(run_id)

    def _let_go(self, run_id: str) -> None:
        _running_here.discard(run_id)
        try:
            self.store.runs.update_metadata(run_id, released=True)
        except EclflowError as e:  # (the process is stopping: its end frees the run too)
            logger.debug("could not release run %s: %s", run_id[:8], e)


def _check_own_given(
    plan: Plan,
    providers: Providers,
    model: str | None,
    recorded: Any,
    run_id: str,
    remedy: str = "resume it with the same providers= (Python), or --provider {}=MODULE:NAME "
    "(eclflow resume)",
) -> None:
    """ConfigError when a model of the run went to a provider of the caller's own (`recorded`:
    their prefixes, in the run's metadata) and none is given for it now: litellm would say it
    knows no such model, though the name is right and the provider is what is missing.
    `remedy`: what to do, `{}` the prefix (a resume's; `run --from` says its own)."""
    if not recorded or not isinstance(recorded, list):
        return
    from ..llm.own import provider_for

    before = {prefix: None for prefix in recorded if isinstance(prefix, str)}
    registry = default_registry()
    for s in plan.workflow.steps:
        m = s.model or model
        if m is None or not registry.get(s.type).uses_model or providers.serves_own(m):
            continue
        prefix = provider_for(before, m)  # type: ignore[arg-type]
        if prefix is not None:
            raise ConfigError(
                f"run {run_id[:8]} calls {m} through a provider of your own "
                f"(providers={{'{prefix}': …}}): " + remedy.format(prefix)
            )


@dataclass(frozen=True, slots=True)
class _Found:
    """A run `_resumable` found that resume may take: its record, workflow, model, limits."""

    record: Any
    wf: Workflow
    plan: Plan
    chosen: str | None
    limits: Budget


Taken = tuple[
    Any, Workflow, str | None, Budget, list[Any], tuple[str | None, dict[str, Any]], Resumed | None
]


def _take_over(
    store: Any,
    run_id: str,
    force: bool,
    budget: Budget | None,
    providers: Providers,
    model: str | None,
) -> Taken | RunResult:
    """Check that run `run_id` can be resumed and mark it running in this process
    (`_resumable`, then `_take`); its record, workflow, model, limits, journal rows, what a
    `--from` run reuses from its earlier run (`_rerun_seed`) and what the resume says as it
    starts. A run that completed is left as it is: its recorded result."""
    found = _resumable(store, run_id, force, budget, providers, model)
    if isinstance(found, RunResult):
        return found
    return _take(store, found, force, budget)


def _resumable(
    store: Any,
    run_id: str,
    force: bool,
    budget: Budget | None,
    providers: Providers,
    model: str | None,
) -> _Found | RunResult:
    """Run `run_id` as read from the journal, once checked that it can be resumed (not held by
    another process, its files unchanged or `force`, its models callable); a run that
    completed: its recorded result. The checks of the caller's own providers are left to
    `OwnProviders.prepare`."""
    from ..spec import load

    record = store.runs.find(run_id)
    if record.state == "completed":
        return stored_results(store, [record.id])[record.id]
    meta = dict(record.metadata or {})
    _refuse_if_held(record, meta, force)
    path = Path(meta["path"]) if meta.get("path") else None
    on_disk = path.read_text(encoding="utf-8") if path is not None and path.is_file() else None
    if path is not None and on_disk is not None and on_disk != record.definition:
        if not force:
            raise InvalidState(
                f"{path} changed since run {record.id[:8]} started; "
                "resume with --force to continue with the file as it is now"
            )
        # (the stored definition is not read: an eclflow since may refuse what it holds, a
        # prompt file outside its folder (E403), and the file fixed is what the run goes on with)
        wf = load(path)
    else:
        base = path.parent if path else None
        wf = _stored_workflow(record.definition, str(path or "<stored>"), base)
    recorded = meta.get("prompts") or {}
    edited = [p for p, d in prompt_digests(wf).items() if recorded.get(p, d) != d]
    if edited and not force:
        raise InvalidState(
            f"{edited[0]} changed since run {record.id[:8]} started; "
            "resume with --force to continue with the prompt as it is now"
        )
    chosen = model or meta.get("model") or default_model(wf, None)
    stored = meta.get("budget") or {}
    limits = _limits(
        wf,
        Budget(
            max_usd=budget.max_usd
            if budget and budget.max_usd is not None
            else stored.get("max_usd"),
            max_tokens=budget.max_tokens
            if budget and budget.max_tokens is not None
            else stored.get("max_tokens"),
            max_calls=budget.max_calls
            if budget and budget.max_calls is not None
            else stored.get("max_calls"),
        ),
    )
    plan = compile_plan(wf)
    replayed: set[str] = set()
    if any(name not in os.environ for name in wf.env):  # (the rows are read only then)
        done = {r.key for r in store.steps.for_run(record.id) if r.state == "succeeded"}
        # a step a resume replays, and that no loop makes again, reads no variable
        replayed = {s for s, k in plan.first_keys.items() if k in done and s not in plan.loop_of}
    check_env(wf, replayed)
    warn_unplayed_keys(wf, providers.mock)
    _check_own_given(plan, providers, chosen, meta.get("providers"), record.id)
    check_models(plan, providers, chosen, limits)
    return _Found(record, wf, plan, chosen, limits)


def _take(store: Any, found: _Found, force: bool, budget: Budget | None) -> Taken | RunResult:
    """Mark the run `found` running in this process (see `_take_over`). Whether another
    process still holds the run is decided and the run taken in one transaction, so two
    resumes started at once cannot both run it; a run whose process ended (or stopped) in the
    middle of it gets its `workflow_interrupted` event in that transaction too: once,
    whatever becomes of this resume."""
    from ..store.owner import this_process

    record, plan, limits = found.record, found.plan, found.limits
    taken_here = False
    try:
        with store.transaction():
            now = store.runs.get(record.id, for_update=True)
            if now.state != "completed":  # (completed by another process since the first look)
                now_meta = dict(now.metadata or {})
                _refuse_if_held(now, now_meta, force)
                # from now on another resume in this process is refused, as one in another
                # process is once this commits: it would run the run too, and say it was
                # interrupted again (its process, this one, looks alive: "taken over")
                _running_here.add(record.id)
                taken_here = True
                rows = store.steps.for_run(record.id)
                # `pending`: claimed by a batch that ended before it began the run, which
                # this resume starts (its timeline has no start yet, nothing was cut short)
                interrupted = now.state == "running"  # (no process ends it now)
                said = _note_interrupted(store, now, rows) if interrupted else None
                _close_interrupted(store, rows)
                resumed = (
                    Resumed(
                        int(now_meta.get("resumed", 0)) + 1,
                        "interrupted" if interrupted else now.state,
                        said,
                    )
                    if now.state != "pending"
                    else None
                )
                store.runs.update_state(record.id, "running")
                store.runs.update_metadata(
                    record.id,
                    **this_process(),
                    released=None,
                    pause_requested=None,
                    **({"resumed": resumed.number} if resumed is not None else {}),
                    **({"budget": _budget_dict(limits)} if budget is not None else {}),
                )
        if now.state == "completed":
            return stored_results(store, [record.id])[record.id]
        seed = _rerun_seed(store, record, plan)
        return record, found.wf, found.chosen, limits, rows, seed, resumed
    except BaseException:
        if taken_here:
            _running_here.discard(record.id)
        raise


def _note_interrupted(store: Any, run: Any, rows: Sequence[Any]) -> dict[str, Any]:
    """Add to the timeline of `run`, which its last process left unfinished, that it was
    interrupted: how, when it was last seen running (a process that stopped it, Ctrl-C or
    SIGTERM, wrote when; of one killed or crashed, the time of its last record is known,
    not that of its end), and the steps it left in flight (their attempts are failed by
    _close_interrupted, and made again). Its fields, for the resume's logs. The time is
    kept in UTC, as the journal's times are: the readers show it in their own time zone."""
    from ..observe.events import EVENTS, level_name
    from ..store.owner import holder

    meta = run.metadata or {}
    pid = meta.get("pid")
    who = f"process {pid}" if pid is not None else "its process"
    if meta.get("released"):
        seen = run.updated_at
        cause = f"{who} stopped it (Ctrl-C, SIGTERM or a cancelled task)"
    else:
        times = [run.created_at, store.events.last_time(run.id)]
        times += [t for r in rows for t in (r.started_at, r.completed_at)]
        seen = max(t for t in times if t is not None)
        cause = (
            f"{who} ended without finishing it (killed, or crashed)"
            if holder(meta) == "gone"
            else f"taken over with --force from {who} on {meta.get('host')}, not checked"
        )
    level, message = EVENTS["workflow_interrupted"]
    said = {
        "cause": cause,
        "last_seen": seen.astimezone(UTC).isoformat(timespec="milliseconds"),
        "in_flight": [r.key for r in rows if r.state == "running"],
        "pid": pid,
    }
    store.events.append(
        run.id,
        "workflow_interrupted",
        {
            "level": level_name(level),
            "message": message,
            "workflow_id": run.definition_id,
            **said,
        },
    )
    return said


def _rerun_seed(store: Any, record: Any, plan: Plan) -> tuple[str | None, dict[str, Any]]:
    """A run of `run --from STEP` copies what it reuses from the earlier run as it starts, a
    commit a step: killed among them, its resume reuses the rest from there too, rather than
    paying for them again (none if that run was deleted since: its steps are called then)."""
    meta = record.metadata or {}
    origin, step = meta.get("rerun_of"), meta.get("from_step")
    if not isinstance(origin, str) or step not in plan.workflow.step_ids:
        return None, {}
    from .rerun import reused_executions

    return origin, reused_executions(store, plan, origin, step)


def _refuse_if_held(record: Any, meta: Mapping[str, Any], force: bool) -> None:
    """A run another live process is running is not resumed: both would make its calls. One
    held on another host cannot be checked, and one on Restate is Restate's to continue: they
    are resumed only with `force`."""
    from ..store.owner import held_elsewhere, holder

    if record.state not in ("running", "pending"):
        return
    if record.id in _running_here:
        raise InvalidState(f"run {record.id[:8]} is running in this process")
    if held_elsewhere(meta):
        raise InvalidState(
            f"run {record.id[:8]} is still running in process {meta.get('pid')}; "
            "wait for it to end, or stop that process and resume again"
        )
    if not force and meta.get("engine") == "restate":
        raise InvalidState(
            f"run {record.id[:8]} runs on Restate, which continues it itself: `eclflow status "
            f"{record.id} --engine restate` shows it (resume --force runs it here too, paying "
            "again for what Restate runs; only for a run Restate has lost)"
        )
    if not force and holder(meta) == "unknown":
        import socket

        host = meta.get("host")
        where = f"{host}, in another container" if host == socket.gethostname() else host
        raise InvalidState(
            f"run {record.id[:8]} was running in process {meta.get('pid')} on {where}, "
            "which cannot be checked from here; once that process is gone, resume with --force"
        )


# the runs this process is running now (a resume of one of them, from this process, is refused)
_running_here: set[str] = set()


def _close_interrupted(store: Any, rows: Sequence[Any]) -> None:
    """Attempts left `running` by a process that died are failed: they will be made again."""
    for row in rows:
        if row.state == "running":
            store.steps.finish(
                row.id,
                state="failed",
                outcome="failed",
                error="interrupted: the process ended during this attempt",
                retryable=True,
            )


def _spent_so_far(rows: Sequence[Any]) -> Spent:
    """What a run's journaled attempts already used: the calls each attempt with a model says
    it made (a step type of one's own may make several), else one (an attempt cut short by a
    crash too: it may have been paid for)."""
    spent = Spent()
    for row in rows:
        if row.state == "skipped" or not row.model:
            continue
        made = _calls_made(row)
        if made is None and (
            row.state == "failed"
            and not (row.tokens_in or row.tokens_out)
            and row.error
            and ("budget_exceeded" in row.error)
        ):
            made = 0  # refused before the call: nothing was spent (a row from before CALLS_MADE)
        spent.calls += 1 if made is None else made
        spent.tokens += (row.tokens_in or 0) + (row.tokens_out or 0)
        spent.usd += row.cost or 0.0
    return spent


def _calls_made(row: Any) -> int | None:
    """The model calls an attempt's row says it made, None when it does not say (one)."""
    from .executor import CALLS_MADE

    traces = row.traces
    if row.state == "running" or not traces or not isinstance(traces[-1], dict):
        return None
    made = traces[-1].get(CALLS_MADE)
    return made if isinstance(made, int) and not isinstance(made, bool) and made >= 0 else None


def stored_results(store: Any, run_ids: Sequence[str]) -> dict[str, RunResult]:
    """Finished runs as they were recorded, their steps rebuilt from the journal (no calls):
    a few queries for any number of them."""
    from .journal import execution_from_record

    records = store.runs.get_many(run_ids)
    steps = store.steps.succeeded_many(records)
    out = {}
    for run_id, record in records.items():
        meta = record.metadata or {}
        out[run_id] = RunResult(
            record.id,
            record.definition_id,
            record.state,
            output=record.output,
            error=record.error,
            failed_step=record.failed_step,
            steps=[
                execution_from_record(row, replayed=True) for row in steps.get(run_id, {}).values()
            ],
            revisions=dict(meta.get("revisions") or {}),
            duration_ms=int(meta.get("duration_ms") or 0),
        )
    return out
