"""The Python API's surface: the `eclflow` package, its exceptions and its result object."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Iterator, Mapping
from datetime import date
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from eclflow import errors
from eclflow.spec import Budget


def _error_classes() -> list[type[errors.EclflowError]]:
    return [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.EclflowError)
    ]


def _example(cls: type[errors.EclflowError]) -> errors.EclflowError:
    """An instance of `cls`, its arguments made up from the constructor's parameters."""
    made_up = {"float": 2.5, "int": 3, "str": "it broke", "list[Diagnostic]": ["a problem"]}
    kwargs: dict[str, Any] = {}
    for name, p in inspect.signature(cls).parameters.items():
        if p.default is inspect.Parameter.empty:
            kwargs[name] = made_up.get(str(p.annotation), "value")
    return cls(**kwargs)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_survives_pickling(cls: type[errors.EclflowError]) -> None:
    """Errors cross process boundaries (batch workers, multiprocessing) by pickle."""
    error = _example(cls)
    error.retryable = not error.retryable  # an instance attribute must survive too
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert str(back) == str(error) and back.args == error.args
    assert vars(back) == vars(error)
    assert back.retryable == error.retryable


def test_step_timeout_keeps_its_seconds() -> None:
    back = pickle.loads(pickle.dumps(errors.StepTimeout(3)))
    assert back.seconds == 3 and str(back) == "Step timed out after 3s"


def test_dir_and_help_show_the_lazy_public_names() -> None:
    import pydoc

    import eclflow

    assert set(eclflow.__all__) <= set(dir(eclflow))
    text = pydoc.render_doc(eclflow, renderer=pydoc.plaintext)
    for name in ("run(", "resume(", "load(", "RunResult", "WorkflowInvalid", "RunNotFound"):
        assert name in text, name


def test_the_docstring_example_runs_outside_an_event_loop() -> None:
    import eclflow

    doc = eclflow.__doc__ or ""
    assert "asyncio.run(eclflow.run(" in doc and "= await" not in doc


def test_the_errors_users_catch_are_exported() -> None:
    import eclflow

    for name in ("WorkflowInvalid", "InvalidInput", "ConfigError", "RunNotFound", "StepNotFound",
                 "BudgetExceeded", "LLMError", "InvalidState", "EclflowError"):  # fmt: skip
        assert name in eclflow.__all__
        assert getattr(eclflow, name) is getattr(errors, name)
    assert all(hasattr(eclflow, name) for name in eclflow.__all__)


def test_importing_eclflow_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, eclflow; from eclflow import RunNotFound, WorkflowInvalid; dir(eclflow);"
        "print(sorted(m for m in sys.modules if m.startswith(('eclflow.', 'litellm', 'rich'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['eclflow.errors']"


def _result(cost: float) -> Any:
    from eclflow.engine.result import RunResult, StepExecution

    steps = [
        StepExecution(f"s{i}", f"s{i}", 0, "success", prompt=[{"content": "x" * 2000}], cost=cost)
        for i in range(3)
    ]
    return RunResult("run-1", "wf", "failed", error="boom", steps=steps)


def test_run_result_repr_is_one_short_line() -> None:
    r = _result(0.5)
    assert repr(r) == (
        "RunResult(run_id='run-1', workflow='wf', status='failed', steps=3, tokens=0, "
        "cost=1.5, error='boom')"
    )
    assert len(repr(r.steps[0])) < 400  # a step's prompt stays out of its repr too
    assert r == _result(0.5) and r != _result(0.25)  # still compared field by field


def test_cost_is_always_a_float_in_the_result_json() -> None:
    from eclflow.engine.result import RunResult

    for r in (RunResult("run-1", "wf", "completed"), _result(0)):
        data = r.to_dict()
        assert isinstance(data["cost"], float) and data["cost"] == 0.0
        assert all(isinstance(s["cost"], float) for s in data["steps"])


# --- eclflow.run and eclflow.resume take what a caller naturally passes -----------------------

KEYED = {  # the keyed form of a mock script, as a dict
    "generate": "a draft",
    "critique": {"content": {"decision": "pass", "critique": "fine"}},
}


def test_run_takes_a_keyed_mock_script_a_budget_mapping_and_a_database_url(tmp_path: Any) -> None:
    import asyncio

    from conftest import CRITIQUE_REVISE

    import eclflow

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = asyncio.run(
        eclflow.run(
            CRITIQUE_REVISE, {"topic": "tides"}, model="mock/x", mock_responses=KEYED,
            budget={"max_calls": 5}, store=url,
        )
    )  # fmt: skip
    assert result.status == "completed" and result.output["final_text"] == "a draft"
    # kept in that database: resume finds it there from its URL alone
    again = asyncio.run(eclflow.resume(result.run_id, db=url))
    assert again.status == "completed" and again.run_id == result.run_id
    assert asyncio.run(eclflow.resume(result.run_id, store=url)).run_id == result.run_id


def test_run_refuses_wrong_shapes_with_its_own_errors() -> None:
    import asyncio

    from conftest import CRITIQUE_REVISE

    import eclflow

    with pytest.raises(eclflow.InvalidInput, match=r"inputs must be a mapping .* not list"):
        asyncio.run(eclflow.run(CRITIQUE_REVISE, ["topic"], model="mock/x", mock_responses=KEYED))
    with pytest.raises(eclflow.ConfigError, match="budget has no field max_dollars"):
        asyncio.run(
            eclflow.run(
                CRITIQUE_REVISE, {"topic": "t"}, model="mock/x", mock_responses=KEYED,
                budget={"max_dollars": 1},
            )
        )  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"budget": {"max_calls": "ten"}},
            "budget max_calls must be a whole number ≥ 1, not 'ten'",
        ),
        ({"budget": {"max_calls": -1}}, "budget max_calls must be a whole number ≥ 1, not -1"),
        ({"budget": {"max_usd": 0}}, "budget max_usd must be a number > 0, not 0"),
        (
            {"budget": Budget(max_calls=0)},  # (the run failed on its first call)
            "budget max_calls must be a whole number ≥ 1, not 0",
        ),
        (
            {"budget": Budget(max_calls="ten")},  # type: ignore[arg-type]  # (a TypeError)
            "budget max_calls must be a whole number ≥ 1, not 'ten'",
        ),
        ({"store": 42}, "store must be an eclflow Store (eclflow.store.open_store) or a database"),
        ({"db": 42}, "db must be a database URL, not int"),
        ({"run_id": 5}, "run_id must be a string, not int"),
        (
            {"run_id": " "},
            "run_id is empty: give the new run its id, or leave run_id out for one to be made",
        ),  # (a new id was made)
        ({"model": "local/smollm2"}, "mock responses play replies for mock/… models, and no step"),
        ({"model": 123}, "model is a name such as 'openai/gpt-4o-mini', not 123"),
        ({"mock_responses": 42}, "mock_responses is a MockProvider, a list of replies, a mapping"),
    ],
)
def test_run_refuses_what_it_cannot_use_before_anything_runs(
    kwargs: dict[str, Any], message: str
) -> None:
    """Each of these started the run: a budget failed it with a TypeError (or at once with
    budget_exceeded), a store or db of the wrong type raised AttributeError, a mock script
    beside a real model was ignored and the real model was called (and paid)."""
    import asyncio

    from conftest import CRITIQUE_REVISE

    import eclflow

    args: dict[str, Any] = {"model": "mock/x", "mock_responses": KEYED, **kwargs}
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.run(CRITIQUE_REVISE, {"topic": "t"}, **args))
    assert message in str(caught.value)


def test_a_run_id_that_exists_is_refused_and_its_run_left_as_it_was(tmp_path: Path) -> None:
    """The second run of an id made a model call, failed on the journal's UNIQUE key, and then
    wrote the first, completed run back to `running` (shown as interrupted)."""
    import asyncio

    from conftest import CRITIQUE_REVISE

    import eclflow
    from eclflow.llm import MockProvider
    from eclflow.store import open_store

    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        mocks: list[MockProvider] = []

        def go(run_id: str) -> Any:
            mocks.append(MockProvider(KEYED))
            return asyncio.run(
                eclflow.run(CRITIQUE_REVISE, {"topic": "t"}, model="mock/x",
                            mock_responses=mocks[-1], store=store, run_id=run_id)
            )  # fmt: skip

        assert go("same-id").status == "completed"
        with pytest.raises(eclflow.InvalidState, match="run same-id already exists"):
            go("same-id")
        assert mocks[1].calls == 0  # refused before anything was called
        assert go("other").status == "completed"
        assert store.runs.get("same-id").state == "completed"
        # a Path is a SQLite file, for run, resume and pause alike
        again = asyncio.run(eclflow.resume("same-id", store=tmp_path / "runs.db"))
        assert again.status == "completed"
    # resume with a URL that holds no store does not make one
    with pytest.raises(eclflow.NotFound, match="no eclflow database at"):
        asyncio.run(eclflow.resume("same-id", db=f"sqlite:///{tmp_path / 'typo.db'}"))
    assert not (tmp_path / "typo.db").exists()


async def test_pause_lets_the_steps_in_flight_finish_and_resume_runs_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two parallel branches in flight when the pause is asked: both finish (paid for, kept),
    the step that waits for them does not start; resume runs only it."""
    import asyncio

    import eclflow
    from eclflow.engine import orchestrator
    from eclflow.llm import MockProvider
    from eclflow.store import open_store

    monkeypatch.setattr(orchestrator, "PAUSE_POLL", 0.0)  # look at every step
    wf = eclflow.load(_write(tmp_path / "fan.yaml", FAN))
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    mock = MockProvider(
        {"b": {"content": "B", "delay": 0.5}, "c": {"content": "C", "delay": 0.1}, "d": "D"}
    )
    try:
        running = asyncio.create_task(
            eclflow.run(wf, {}, model="mock/x", mock_responses=mock, store=store, run_id="r-fan")
        )
        await asyncio.sleep(0.2)  # b and c in flight (c done)
        assert eclflow.pause("r-fan", store=store) == "r-fan"
        result = await running
        assert (result.status, result.paused_at) == ("paused", "d")
        assert [s.key for s in result.steps] == ["a", "c", "b"] and mock.calls == 2
        assert store.runs.get("r-fan").state == "paused"
        with pytest.raises(eclflow.InvalidState, match="is paused: only a running run pauses"):
            eclflow.pause("r-fan", store=store)
        done = await eclflow.resume("r-fan", store=store, mock_responses=mock)
        assert done.status == "completed" and done.output == {"d": "D"}
        assert mock.calls == 3  # only d
        assert store.runs.get("r-fan").metadata.get("pause_requested") is None
    finally:
        store.close()


def test_a_pause_look_that_meets_a_database_error_does_not_fail_the_run(tmp_path: Path) -> None:
    """(PostgreSQL gone for a moment: the journal writes again on a new connection, and the
    look for a pause request must not end the run either.)"""
    from eclflow.engine.runner import pause_requested
    from eclflow.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.close()  # every call now raises PersistenceError
    assert pause_requested(store, "r-any") is False


async def test_a_run_paused_before_its_revision_counts_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from conftest import CRITIQUE_REVISE

    import eclflow
    from eclflow.engine import orchestrator
    from eclflow.llm import MockProvider
    from eclflow.store import open_store

    monkeypatch.setattr(orchestrator, "PAUSE_POLL", 0.0)
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    revise = {"content": {"decision": "revise", "critique": "thin", "feedback": "more"}}
    mock = MockProvider({"generate": "v1", "critique#1": {**revise, "delay": 0.3}})
    try:
        running = asyncio.create_task(
            eclflow.run(
                eclflow.load(CRITIQUE_REVISE), {"topic": "t"}, model="mock/x",
                mock_responses=mock, store=store, run_id="r-loop",
            )
        )  # fmt: skip
        await asyncio.sleep(0.1)  # critique#1 in flight
        eclflow.pause("r-loop", store=store)
        result = await running
        assert (result.status, result.paused_at) == ("paused", "revise")
        assert result.revisions == {"critique": 0}
    finally:
        store.close()


FAN = """\
eclflow: 1
id: fan
model: mock/x
steps:
  - {id: a, type: template, template: "go"}
  - {id: b, type: llm, template: "b {{ x }}", depends_on: [a], with: {x: "{{ steps.a.output.text }}"}}
  - {id: c, type: llm, template: "c {{ x }}", depends_on: [a], with: {x: "{{ steps.a.output.text }}"}}
  - {id: d, type: llm, template: "d", depends_on: [b, c]}
output: {d: "{{ steps.d.output.text }}"}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_one_store_serves_event_loops_in_several_threads(tmp_path: Path) -> None:
    """Threads that each found the writer of an ended event loop all deleted it: a bare
    KeyError in most of them."""
    import asyncio
    import threading

    from conftest import CRITIQUE_REVISE

    import eclflow
    from eclflow.store import open_store

    wf = eclflow.load(CRITIQUE_REVISE)
    results: list[Any] = []
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:

        def one() -> None:
            try:
                results.append(
                    asyncio.run(eclflow.run(wf, {"topic": "t"}, model="mock/x",
                                            mock_responses=KEYED, store=store))
                )  # fmt: skip
            except BaseException as e:  # (a thread's exception would be lost)
                results.append(e)

        one()  # leaves the writer of a loop that has ended
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [getattr(r, "status", r) for r in results] == ["completed"] * 9
        assert len(store.runs.list(limit=None)) == 9


def test_a_custom_step_may_pass_plain_mappings_as_messages_and_registering_checks_the_class(
    tmp_path: Path,
) -> None:
    """`ctx.complete([{"role": "user", "content": …}])`, the form every model API takes, failed
    with AttributeError; `register` took anything (and let a built-in type be replaced)."""
    import asyncio

    import eclflow
    from eclflow.spec import load_text
    from eclflow.steps.registry import StepRegistry, default_registry

    class Ask(eclflow.Step):
        type_name = "ask_plain"
        uses_model = True

        async def execute(self, ctx: Any, input: Any) -> Any:
            reply = await ctx.complete([{"role": "user", "content": "hello"}])
            return eclflow.StepResult.success({"text": reply.content})

    eclflow.register(Ask)
    wf = load_text("eclflow: 1\nid: ask\nmodel: mock/x\nsteps: [{id: a, type: ask_plain}]\n")
    r = asyncio.run(eclflow.run(wf, {}, mock_responses=["hi there"]))
    assert r.status == "completed" and r.steps[0].output == {"text": "hi there"}

    class Sync(eclflow.Step):
        type_name = "sync_step"

        def execute(self, ctx: Any, input: Any) -> Any:  # type: ignore[override]
            return eclflow.StepResult.success({})

    class Generate(Ask):
        type_name = "generate"

    for bad, says in [(int, "subclass of eclflow.Step"),
                      (Generate, "Step type 'generate' is already registered")]:  # fmt: skip
        with pytest.raises(eclflow.ConfigError, match=says):
            eclflow.register(bad)
    assert default_registry().get("generate").__module__ == "eclflow.steps.builtin"
    assert StepRegistry().register(Ask, replace=True) is Ask
    assert StepRegistry().register(Sync) is Sync  # (a plain def execute runs in a thread)
    with pytest.raises(eclflow.ConfigError, match="looks like the text of a workflow"):
        eclflow.load("eclflow: 1\nid: x\nsteps: []\n")


def test_a_step_type_whose_output_is_not_json_fails_its_attempt(tmp_path: Path) -> None:
    """A set or bytes was journaled as its repr (orjson's default=str): the run completed, and
    its resume read back a string where the run had had a set."""
    import asyncio

    import eclflow
    from eclflow.spec import load_text

    class Odd(eclflow.Step):
        type_name = "odd_output"

        async def execute(self, ctx: Any, input: Any) -> Any:
            return eclflow.StepResult.success({"s": {1, 2}})

    class Keys(eclflow.Step):
        type_name = "int_keys"

        async def execute(self, ctx: Any, input: Any) -> Any:
            return eclflow.StepResult.success({"by": {1: "a"}})

    eclflow.register(Keys)
    keys = load_text("eclflow: 1\nid: k\nsteps: [{id: a, type: int_keys}]\n")
    r = asyncio.run(eclflow.run(keys, {}))
    assert r.status == "failed" and "a mapping's keys must be text" in (r.error or "")

    class Fine(eclflow.Step):
        type_name = "fine_output"

        async def execute(self, ctx: Any, input: Any) -> Any:
            return eclflow.StepResult.success({"n": [1, 2.5, None, "x"]})

    for cls in (Odd, Fine):
        eclflow.register(cls)
    odd = load_text("eclflow: 1\nid: o\nsteps: [{id: a, type: odd_output}]\n")
    r = asyncio.run(eclflow.run(odd, {}, db=f"sqlite:///{tmp_path / 'runs.db'}"))
    assert r.status == "failed"
    assert "made an output that is not JSON (Object of type set is not JSON serializable)" in (
        r.error or ""
    )
    fine = load_text("eclflow: 1\nid: f\nsteps: [{id: a, type: fine_output}]\n")
    assert asyncio.run(eclflow.run(fine, {})).steps[0].output == {"n": [1, 2.5, None, "x"]}


def test_a_step_type_that_cannot_be_made_is_a_config_error_before_the_run_is_kept(
    tmp_path: Path,
) -> None:
    """A plugin whose constructor raises ended the process as an internal error with a run
    recorded and left `running` (interrupted): it is a ConfigError naming the type and its
    class, and no run is recorded."""
    import asyncio

    import eclflow
    from eclflow.spec import load_text
    from eclflow.store import open_store

    class Unmakeable(eclflow.Step):
        type_name = "unmakeable_test"

        def __init__(self, spec: Any, workflow: Any = None) -> None:
            raise ValueError("no settings file")

        async def execute(self, ctx: Any, input: Any) -> eclflow.StepResult:
            return eclflow.StepResult.success({})

    eclflow.register(Unmakeable)
    wf = load_text("eclflow: 1\nid: u\nsteps:\n  - {id: s, type: unmakeable_test}\n")
    with open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        with pytest.raises(eclflow.ConfigError) as caught:
            asyncio.run(eclflow.run(wf, {}, store=store))
        assert str(caught.value) == (
            "Configuration error: step type 'unmakeable_test' "
            f"({__name__}:{Unmakeable.__qualname__}) cannot be made for step 's': "
            "ValueError: no settings file"
        )
        assert store.runs.count() == 0


# --- a program that embeds eclflow, as its author writes it ------------------------------------

TYPED_PROGRAM = """\
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import eclflow
from eclflow.spec import load_text
from eclflow.store import open_store


class Shout(eclflow.Step):
    type_name = "shout"

    async def execute(self, ctx: eclflow.StepContext, input: Mapping[str, Any]) -> eclflow.StepResult:
        reply = await ctx.complete([{"role": "user", "content": str(input["text"])}])
        return eclflow.StepResult.success({"text": reply.content.upper()})


async def main() -> None:
    eclflow.register(Shout)
    try:
        wf = load_text("eclflow: 1\\nid: x\\nsteps: [{id: a, type: shout}]\\n")
    except eclflow.WorkflowInvalid as e:
        for d in e.diagnostics:
            line: int = d.location.line
            print(line, d.code, d.severity, d.hint)
            print(d.cod)  # type: ignore[attr-defined]
        raise
    replies = {"generate": "a draft", "critique": {"content": {"decision": "pass"}}}
    with open_store("sqlite:///runs.db") as store:
        result: eclflow.RunResult = await eclflow.run(
            wf, {"topic": "t"}, model="mock/x", mock_responses=replies, store=store,
            budget={"max_calls": 5},
        )
        cost: float = result.cost
        print(result.status, result.output, result.tokens, cost, [s.key for s in result.steps])
        again = await eclflow.resume(result.run_id, store=store, mock_responses=replies)
        print(again.status, [(r.state, r.status) for r in store.runs.list()])
        own = await eclflow.run(wf, {}, model="echo/x", providers={"echo": Echo()})
        await eclflow.run_batch(wf, [{}], model="echo/x", providers={"echo": Echo()})
        await eclflow.run(wf, {}, model="bad/x", providers={"bad": Wrong()})  # type: ignore[dict-item]
        print(own.tokens)


class Echo:
    async def complete(self, request: eclflow.CompletionRequest) -> eclflow.CompletionResponse:
        text = request.messages[-1].content
        usage = eclflow.TokenUsage(input=len(text), output=len(text))
        return eclflow.CompletionResponse(text, usage=usage, cost=0.0)


class Wrong:  # a provider that returns text: mypy says so
    async def complete(self, request: eclflow.CompletionRequest) -> str:
        return request.model


asyncio.run(main())
"""


def test_a_program_using_the_api_passes_mypy_strict(tmp_path: Path) -> None:
    """A keyed mock script (a dict, as documented) was refused by the annotation of `run`'s
    `mock_responses`, and `WorkflowInvalid.diagnostics` was `list[Any]`, so a misspelt
    attribute of a diagnostic went unseen (here: the ignore of the typo is used); a step's
    `ctx.complete` took only `Message`s in its annotation, not the documented mappings. A
    provider of one's own is checked against `eclflow.Provider` (the ignore of `Wrong` is
    used)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    program = _write(tmp_path / "program.py", TYPED_PROGRAM)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         str(program)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "MYPYPATH": str(ROOT)},
    )  # fmt: skip
    assert done.stdout.strip() == "Success: no issues found in 1 source file"


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_says_what_it_means_and_is_in_the_documented_tree(
    cls: type[errors.EclflowError],
) -> None:
    """`help(eclflow.RunNotFound)` showed the docstring of a base class (EclflowError's "Root
    of every error…" for StepTimeout, BudgetExceeded, PersistenceError…), and the module had no
    map of the hierarchy to choose what to catch."""
    assert "__doc__" in vars(cls) and cls.__doc__
    assert cls.__name__ in (errors.__doc__ or "")


@pytest.mark.parametrize("run_id", [None, 123])
def test_resume_and_pause_refuse_a_run_id_that_is_not_text(tmp_path: Path, run_id: Any) -> None:
    """`resume(None)` (an id read from a missing field) raised AttributeError: 'NoneType'
    object has no attribute 'strip'."""
    import asyncio

    import eclflow
    from eclflow.store import open_store

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    open_store(url).close()  # (a store that exists: the lookup itself is reached)
    says = f"run_id must be a string, not {type(run_id).__name__}"
    with pytest.raises(eclflow.ConfigError, match=says):
        asyncio.run(eclflow.resume(run_id, db=url))
    with pytest.raises(eclflow.ConfigError, match=says):
        eclflow.pause(run_id, db=url)


def test_a_batch_takes_what_run_takes(tmp_path: Path) -> None:
    """run_batch/iter_batch took only a loaded Workflow, a MockProvider, a Budget and an open
    Store: a path, a dict of replies, a budget mapping or a database URL (all of which `run`
    takes) ended in AttributeError ('str' object has no attribute 'env', 'dict' object has no
    attribute 'fresh', …), and a generator of items in TypeError (no len())."""
    import asyncio
    import re

    from conftest import CRITIQUE_REVISE

    import eclflow
    from eclflow.engine.batch import iter_batch, run_batch
    from eclflow.store import open_store

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    items = ({"topic": t} for t in ("a", "b", ""))
    results = asyncio.run(
        run_batch(str(CRITIQUE_REVISE), items, model="mock/x", mock_responses=KEYED, store=url,
                  budget={"max_calls": 5}, concurrency=2)
    )  # fmt: skip
    assert [r.status for r in results] == ["completed", "completed", "failed"]
    assert results[2].error == "Validation error in field 'topic': input '' should be non-empty"
    with open_store(url) as store:
        assert store.runs.count() == 2  # (an item refused by its checks has no run)

    async def first_of_two() -> str:
        batch = iter_batch(CRITIQUE_REVISE, [{"topic": "c"}, {"topic": "d"}], model="mock/x",
                           mock_responses=KEYED, store=tmp_path / "runs.db", concurrency=1)  # fmt: skip
        async for result in batch:
            await batch.aclose()  # stopped early: the run of the second item is cancelled
            return result.status
        raise AssertionError("no result")

    assert asyncio.run(first_of_two()) == "completed"
    with pytest.raises(eclflow.ConfigError, match="concurrency must be a whole number, not '2'"):
        asyncio.run(run_batch(CRITIQUE_REVISE, [], concurrency="2"))  # type: ignore[arg-type]
    # one input given for the list of them ran one failed item per key; None was a TypeError
    for items, says in [({"topic": "t"}, "not dict (one input: eclflow.run)"), (None, "not NoneType"),
                        ("topic", "not str")]:  # fmt: skip
        with pytest.raises(eclflow.ConfigError, match=re.escape(f"one mapping each, {says}")):
            asyncio.run(run_batch(CRITIQUE_REVISE, items))  # type: ignore[arg-type]


def test_an_ordinary_program_needs_only_import_eclflow(tmp_path: Path) -> None:
    """Validating text, reading the problems, opening a store, listing its runs and batching
    needed eclflow.spec, eclflow.store, eclflow.llm and eclflow.engine.batch (and load()'s own
    error sent users to eclflow.spec.load_text)."""
    import asyncio

    import eclflow

    text = "eclflow: 1\nid: x\nsteps:\n  - {id: a, type: nope}\n"
    wf, problems = eclflow.check_text(text, file="x.yaml")
    assert wf is None and [(d.code, str(d.location)) for d in problems] == [("E202", "x.yaml:4:19")]
    assert isinstance(problems[0], eclflow.Diagnostic)
    with pytest.raises(eclflow.WorkflowInvalid) as caught:
        eclflow.load_text(text)
    assert caught.value.diagnostics[0].code == "E202"
    with pytest.raises(eclflow.ConfigError, match=r"use eclflow\.load_text\(text\) for text"):
        eclflow.load(text)
    fan = eclflow.load_text(FAN)
    with eclflow.open_store(f"sqlite:///{tmp_path / 'runs.db'}") as store:
        assert isinstance(store, eclflow.Store)
        mock = eclflow.MockProvider({"b": "B", "c": "C", "d": "D"})
        results = asyncio.run(eclflow.run_batch(fan, [{}, {}], model="mock/x", store=store,
                                                mock_responses=mock, budget=eclflow.Budget(max_calls=3)))  # fmt: skip
        assert [r.status for r in results] == ["completed", "completed"]
        assert all(isinstance(s, eclflow.StepExecution) for s in results[0].steps)
        assert {r.id for r in store.runs.list()} == {r.run_id for r in results}


def test_every_public_name_says_what_it_is() -> None:
    import eclflow

    for name in eclflow.__all__:
        if name != "__version__":
            thing = getattr(eclflow, name)
            own = vars(thing).get("__doc__") if isinstance(thing, type) else thing.__doc__
            assert own and not own.startswith(f"{name}("), name  # (not a dataclass's default)


RETRIED = """\
import asyncio, logging, sys
import stamina.instrumentation
import eclflow

heard = []
if "--basic" in sys.argv:
    logging.basicConfig(format="%(name)s %(message)s")
if "--hooks" in sys.argv:  # the program's own hooks, set before its first run
    stamina.instrumentation.set_on_retry_hooks([lambda d: heard.append(d.retry_num)])
replies = {"generate": [{"error": "rate_limit"}, "a draft"],
           "critique": {"content": {"decision": "pass", "critique": "fine"}}}
r = asyncio.run(eclflow.run(sys.argv[1], {"topic": "t"}, model="mock/x", mock_responses=replies))
print(r.status, r.steps[0].attempts, heard)
"""


@pytest.mark.parametrize(
    ("flag", "stdout", "stderr"),
    [
        ("", "completed 2 []\n", ""),
        (
            "--basic",
            "completed 2 []\n",
            "eclflow.run LLM request failed\nstamina stamina.retry_scheduled\n"
            "eclflow.run Retrying after failure\n",
        ),
        ("--hooks", "completed 2 [1]\n", ""),
    ],
)
def test_a_retry_prints_nothing_unless_the_program_set_up_logging(
    tmp_path: Path, flag: str, stdout: str, stderr: str
) -> None:
    """A program that set up no logging saw a bare 'stamina.retry_scheduled' on stderr at each
    retry (stamina's default hook, through Python's last-resort handler). A program that set up
    logging still gets the record, and one that set hooks of its own keeps them."""
    import subprocess
    import sys

    from conftest import CRITIQUE_REVISE

    program = _write(tmp_path / "program.py", RETRIED)
    args = [sys.executable, str(program), str(CRITIQUE_REVISE), *([flag] if flag else [])]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert (done.stdout, done.stderr) == (stdout, stderr)


def test_the_readme_program_runs_as_it_is(tmp_path: Path) -> None:
    """The README's Python API program, run in a fresh process from a directory holding the
    workflow it names: it validates, runs, resumes, batches and lists on a real SQLite file."""
    import re
    import shutil
    import subprocess
    import sys

    from conftest import CRITIQUE_REVISE, ROOT

    section = (ROOT / "README.md").read_text().split("## Python API")[1].split("\n## ")[0]
    programs = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(programs) == 3 and "mock/demo" in programs[1]
    (tmp_path / "workflows").mkdir()
    shutil.copy(CRITIQUE_REVISE, tmp_path / "workflows")
    program = _write(tmp_path / "program.py", programs[1])
    done = subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.stderr == "" and done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "completed Tide pools shelter anemones, crabs and snails at low tide. 164 0.0"
    )
    assert lines[1:3] == ["generate succeeded 1 62", "critique#1 succeeded 1 102"]
    assert [line.split()[1] for line in lines[3:5]] == ["completed", "completed"]
    assert [line.split()[1] for line in lines[5:]] == ["completed"] * 3


def test_the_readme_program_with_a_provider_of_ones_own_runs_as_it_is(tmp_path: Path) -> None:
    """The README's program that passes a model client of its own (`providers=`), which
    fails its first call with a lost connection: retried, then answered."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Python API")[1].split("\n## ")[0]
    program = re.findall(r"```python\n(.*?)```", section, re.S)[2]
    assert 'providers={"myco": shouter}' in program
    path = _write(tmp_path / "program.py", program)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert (done.stderr, done.returncode) == ("", 0)
    assert done.stdout.splitlines() == ["completed TELL ME ABOUT TIDE POOLS. 2 2", "20 0.0005"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.load_text(None), "workflow text is a str, not NoneType"),
        (lambda e: e.check_text(b"eclflow: 1"), "workflow text is a str, not bytes (decode it"),
        (lambda e: e.check(None), "a workflow is a file path, not NoneType"),
        (lambda e: e.check(3), "a workflow is a file path, not int"),
    ],
)
def test_loading_something_that_is_no_workflow_is_a_config_error(call: Any, message: str) -> None:
    """load_text(None) or of bytes raised AttributeError ('… has no attribute encode'), and
    check(None) a TypeError from pathlib."""
    import eclflow

    with pytest.raises(eclflow.ConfigError) as caught:
        call(eclflow)
    assert message in str(caught.value)


def test_open_store_takes_a_path_and_refuses_what_is_no_database(tmp_path: Path) -> None:
    """open_store(Path(...)) raised AttributeError ('PosixPath' object has no attribute
    'strip'), though run(store=Path(...)) took one, and so did open_store(42)."""
    import eclflow

    with eclflow.open_store(tmp_path / "runs.db") as store:
        assert store.runs.count() == 0
    assert (tmp_path / "runs.db").is_file()
    with pytest.raises(eclflow.ConfigError, match="a database is a URL or a file path, not int"):
        eclflow.open_store(42)  # type: ignore[arg-type]


def test_a_mock_provider_of_a_file_name_is_refused_not_played_letter_by_letter() -> None:
    """MockProvider("replies.yaml") took the name as a list of replies: each call was answered
    with one of its letters. MockProvider(42) raised TypeError."""
    import eclflow

    with pytest.raises(eclflow.ConfigError) as caught:
        eclflow.MockProvider("replies.yaml")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "Configuration error: a MockProvider plays a list of replies or a mapping of them by "
        "step, not str; for a script file, eclflow.llm.load_script(path)"
    )
    with pytest.raises(eclflow.ConfigError, match=r"by step, not int$"):
        eclflow.MockProvider(42)  # type: ignore[arg-type]
    assert eclflow.MockProvider(("a", "b")).remaining == 2


def test_a_listener_hears_each_step_start_attempt_and_end() -> None:
    """The README documents `listener=` for progress: the events and their fields it names."""
    import asyncio

    from conftest import CRITIQUE_REVISE

    import eclflow

    heard: list[tuple[str, Any]] = []

    def listener(event: str, payload: Any) -> None:
        if event == "step_started":
            heard.append((event, (payload["key"], payload["step_id"], payload["iteration"])))
        elif event == "step_attempt":
            heard.append((event, (payload["key"], payload["attempt"], payload["max_attempts"])))
        elif event == "step_finished":
            execution = payload["execution"]
            assert isinstance(execution, eclflow.StepExecution)
            heard.append((event, (execution.key, execution.status)))

    replies = {"generate": [{"error": "rate_limit"}, "a draft"], "critique": KEYED["critique"]}
    result = asyncio.run(
        eclflow.run(CRITIQUE_REVISE, {"topic": "t"}, model="mock/x", mock_responses=replies,
                    listener=listener)
    )  # fmt: skip
    assert result.status == "completed"
    assert heard == [
        ("step_started", ("generate", "generate", 0)),
        ("step_attempt", ("generate", 1, 3)),
        ("step_attempt", ("generate", 2, 3)),
        ("step_finished", ("generate", "succeeded")),
        ("step_started", ("critique#1", "critique", 0)),
        ("step_attempt", ("critique#1", 1, 3)),
        ("step_finished", ("critique#1", "succeeded")),
    ]


def test_resume_and_pause_refuse_an_empty_run_id(tmp_path: Path) -> None:
    """`resume("")` took the empty text for a prefix of every run id."""
    import asyncio
    import subprocess
    import sys

    import eclflow

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    open_store_ = eclflow.open_store(url)
    open_store_.close()
    # (what `run` says, "or leave run_id out for a new run", is no advice for these)
    said = "Configuration error: run_id is empty: give the run's id (or a unique prefix of it)"
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.resume("", db=url))
    assert str(caught.value) == said
    with pytest.raises(eclflow.ConfigError) as caught:
        eclflow.pause(" ", db=url)
    assert str(caught.value) == said
    for command in ("resume", "pause"):
        done = subprocess.run(
            [sys.executable, "-m", "eclflow", command, "", "--db", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (2, f"error: {said}\n")


def test_a_run_whose_id_an_earlier_eclflow_took_with_a_tab_is_still_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run's id with a control character is refused (a NUL failed the journal on
    PostgreSQL), but an id given to find a run is not written: a run an earlier eclflow made
    with one (a tab-separated name and date, say) was refused with 'run_id "job\\t1" has a
    control character', and could no longer be resumed nor paused."""
    import asyncio

    import eclflow
    from eclflow.engine import runner
    from eclflow.spec import load_text

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    workflow = load_text(
        "eclflow: 1\nid: two\nmodel: mock/x\nsteps:\n  - {id: a, type: llm, template: hi}\n"
        "  - {id: b, type: llm, template: there, depends_on: [a]}\n"
    )
    with monkeypatch.context() as m:  # (an eclflow before the check: it took the id)
        m.setattr(runner, "control_character", lambda name: None)
        first = asyncio.run(
            eclflow.run(workflow, {}, mock_responses={"a": "x"}, db=url, run_id="job\t1")
        )
    assert (first.run_id, first.status) == ("job\t1", "failed")
    again = asyncio.run(eclflow.resume("job\t1", mock_responses={"b": "y"}, db=url))
    assert (again.run_id, again.status) == ("job\t1", "completed")
    with pytest.raises(eclflow.ConfigError) as caught:  # (a new one is refused still)
        asyncio.run(eclflow.run(workflow, {}, mock_responses={"a": "x"}, db=url, run_id="r\n"))
    assert str(caught.value) == (
        'Configuration error: run_id "r\\n" has a control character (U+000A)'
    )


PUBLIC_PARAMETERS = {
    "run": "workflow inputs model mock_responses providers store db run_id budget listener",
    "resume": "run_id store db model mock_responses providers force budget listener",
    "run_batch": "workflow items concurrency model mock_responses providers store budget on_update",
    "iter_batch": "workflow items concurrency model mock_responses providers store budget "
    "on_update",
}


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMETERS))
def test_help_of_a_run_function_shows_only_what_a_caller_passes(name: str) -> None:
    """`help(eclflow.run)` showed the engine's own parameters (journal, journal_factory,
    claimed, spent, started_at, guard, on_call, metadata), `resume` guard and on_call, and
    `iter_batch` checked: each a way to corrupt a journal or double-count a budget."""
    import pydoc

    import eclflow

    function = getattr(eclflow, name)
    assert list(inspect.signature(function).parameters) == PUBLIC_PARAMETERS[name].split()
    text = pydoc.render_doc(function, renderer=pydoc.plaintext)
    for internal in ("journal", "claimed", "guard", "on_call", "spent", "checked"):
        assert f"{internal}=" not in text, internal
    if name in ("run", "resume"):  # each one said what it is (the batches: "those of run")
        for public in PUBLIC_PARAMETERS[name].split():
            assert f"`{public}`" in (function.__doc__ or ""), public


def test_a_run_whose_process_died_is_interrupted_in_its_record_as_in_eclflow_status(
    tmp_path: Path,
) -> None:
    """`store.runs.get(id).state` said `running` for a run whose process was killed, while
    `eclflow status` said Interrupted (through store.owner, which is not public)."""
    import json
    import subprocess
    import sys

    from test_owner import in_flight, setup, start

    import eclflow

    env, journal, _ = setup(tmp_path)
    url = env["ECLFLOW_DATABASE_URL"]
    p = start(tmp_path, env)
    try:
        run_id = in_flight(journal)
        with eclflow.open_store(url) as store:
            live = store.runs.get(run_id)
            assert (live.state, live.status) == ("running", "running")
    finally:
        p.kill()
        p.communicate(timeout=30)
    with eclflow.open_store(url) as store:
        record = store.runs.get(run_id)
        assert (record.state, record.status) == ("running", "interrupted")
        assert [r.status for r in store.runs.list()] == ["interrupted"]
    shown = subprocess.run(
        [sys.executable, "-m", "eclflow", "status", run_id, "-o", "json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(shown.stdout)["interrupted"] is True


ANY_INPUT = """\
eclflow: 1
id: any
inputs: {type: object}
steps:
  - {id: a, type: template, template: "{{ v }}", with: {v: "{{ input.v }}"}}
output: {v: "{{ input.v }}", text: "{{ steps.a.output.text }}"}
"""


class Thing:
    """An object of a program's own."""


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (date(2024, 1, 2), "input 'v' is a date, which the journal cannot keep as JSON (a resume "
                           "would read its text instead): pass its isoformat() text"),
        ({"b", "a"}, "input 'v' is a set, which the journal cannot keep as JSON"),
        (Thing(), "input 'v' is a Thing, which the journal cannot keep as JSON"),
        ([1, {"when": date(2024, 1, 2)}], "input 'v[1].when' is a date"),
        ({1: "one"}, "input 'v' has the key 1, an int: the journal keeps inputs as JSON, whose "
                     "keys are text (a resume would read '1')"),
        (float("nan"), "input 'v' is nan, which JSON cannot hold"),
        # (as a float another number, as text no number: said what to pass)
        (Decimal("0.1"), "input 'v' is a Decimal, which the journal cannot keep as JSON (a "
                         "resume would read its text instead): pass float(…), or str(…) to "
                         "keep every digit"),
        (Fraction(1, 3), "input 'v' is a Fraction, which the journal cannot keep as JSON (a "
                         "resume would read its text instead): pass float(…), or str(…)"),
    ],
)  # fmt: skip
def test_an_input_the_journal_cannot_keep_as_it_is_refused_before_the_run(
    tmp_path: Path, value: Any, says: str
) -> None:
    """A date, a set or an object of one's own was journaled as its str() (`default=str`): the
    first run rendered the date, a resume of the run the text `2024-01-02`; a set's order
    changed between processes; an int key came back as text."""
    import asyncio

    import eclflow

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(ANY_INPUT)
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.run(wf, {"v": value}, store=url))
    assert says in str(caught.value)
    # in a batch: that item fails with the reason, the others run
    results = asyncio.run(eclflow.run_batch(wf, [{"v": value}, {"v": "fine"}], store=url))
    assert [r.status for r in results] == ["failed", "completed"]
    assert says in (results[0].error or "")
    with eclflow.open_store(url) as store:
        assert store.runs.count() == 1


def test_an_input_json_keeps_otherwise_is_run_as_the_journal_keeps_it(tmp_path: Path) -> None:
    """A tuple (JSON keeps a list) and an enum of text (JSON keeps its value): the first run
    sees what a resume reads back, not `('a', 'b')` then `['a', 'b']`."""
    import asyncio
    from enum import Enum, StrEnum

    import eclflow

    class Colour(StrEnum):
        RED = "red"

    class Key(str, Enum):  # noqa: UP042  (what StrEnum fixes: its str() is Key.SIZE, JSON keeps size)
        SIZE = "size"

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(ANY_INPUT)
    r = asyncio.run(eclflow.run(wf, {"v": ("a", Colour.RED, {Key.SIZE: 1})}, store=url))
    assert r.status == "completed"
    assert r.output == {"v": ["a", "red", {"size": 1}], "text": "['a', 'red', {'size': 1}]"}
    with eclflow.open_store(url) as store:
        assert store.runs.get(r.run_id).input == {"v": ["a", "red", {"size": 1}]}


def test_an_input_name_that_is_no_text_is_named_as_such() -> None:
    """An input named by an int read "input '' has the key 1, a int": no input is named ''."""
    import asyncio

    import eclflow

    wf = eclflow.load_text(ANY_INPUT)
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.run(wf, {1: "one"}))  # type: ignore[dict-item]
    assert str(caught.value) == (
        "Configuration error: an input is named 1, an int: the journal keeps inputs as JSON, "
        "whose keys are text (a resume would read '1'): give text names"
    )


def test_a_number_path_or_uuid_of_another_type_is_run_as_the_journal_keeps_it(
    tmp_path: Path,
) -> None:
    """numpy's int64 (what a DataFrame's column gives), a `Path` and a `UUID` were refused
    ("input 'v' is a int64, which the journal cannot keep as JSON"): each has one exact int or
    text, which the run now sees as a resume of it reads it back."""
    import asyncio
    import uuid

    import eclflow

    numpy = pytest.importorskip("numpy")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(ANY_INPUT)
    given = (numpy.int64(7), numpy.uint8(255), numpy.float64(0.5), Path("notes/a.txt"),
             uuid.UUID(int=1))  # fmt: skip
    plain = [7, 255, 0.5, "notes/a.txt", "00000000-0000-0000-0000-000000000001"]
    r = asyncio.run(eclflow.run(wf, {"v": given}, store=url))
    assert r.status == "completed", r.error
    assert r.output == {"v": plain, "text": str(plain)}
    assert [type(v) for v in r.output["v"]] == [int, int, float, str, str]
    with eclflow.open_store(url) as store:
        assert store.runs.get(r.run_id).input == {"v": plain}


def test_a_batch_item_of_numpy_integers_is_known_by_its_number_not_its_text(
    tmp_path: Path,
) -> None:
    """An item is known by its content as JSON, and numpy's int64 was written as its text: the
    item {"v": int64(3)} had the run id of {"v": "3"}, so a batch of it took the run of the
    text "3" as its own (reused, v "3"), and the same rows as plain ints (a JSON lines file)
    ran again."""
    import asyncio

    import eclflow

    numpy = pytest.importorskip("numpy")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(ANY_INPUT)
    (text,) = asyncio.run(eclflow.run_batch(wf, [{"v": "3"}], store=url))
    (number,) = asyncio.run(eclflow.run_batch(wf, [{"v": numpy.int64(3)}], store=url))
    assert (text.output["v"], number.output["v"]) == ("3", 3)
    assert number.run_id != text.run_id
    (again,) = asyncio.run(eclflow.run_batch(wf, [{"v": 3}], store=url))
    assert (again.run_id, again.output["v"]) == (number.run_id, 3)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        # (float32 0.1 is 0.10000000149011612 as a float: the run would see another number)
        (lambda np: np.float32(0.1), "input 'v' is a numpy.float32, which the journal cannot "
                                     "keep as JSON (a resume would read its text instead): "
                                     "pass float(…), or str(…) to keep every digit"),
        (lambda np: np.bool_(True), "input 'v' is a numpy.bool"),
    ],
)  # fmt: skip
def test_a_numpy_value_that_is_no_plain_number_says_what_to_pass(make: Any, says: str) -> None:
    import asyncio

    import eclflow

    numpy = pytest.importorskip("numpy")
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.run(eclflow.load_text(ANY_INPUT), {"v": make(numpy)}))
    assert says in str(caught.value)


def test_a_key_given_twice_is_refused_rather_than_one_value_dropped() -> None:
    """A multidict (aiohttp's form data) holds a key more than once: the journal kept the
    last value, and the run said nothing of the first."""
    import asyncio

    import eclflow

    multidict = pytest.importorskip("multidict")
    wf = eclflow.load_text(ANY_INPUT)
    twice = multidict.MultiDict([("a", 1), ("a", 2)])
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.run(wf, {"v": twice}))
    assert str(caught.value) == (
        "Configuration error: input 'v' has the key 'a' twice: the journal keeps inputs as "
        "JSON, one value a key: give one"
    )
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.run(wf, multidict.MultiDict([("v", 1), ("v", 2)])))
    assert str(caught.value) == (
        "Configuration error: the inputs have the key 'v' twice: the journal keeps inputs as "
        "JSON, one value a key: give one"
    )


class Counting(Mapping[str, Any]):
    """A mapping of one's own that counts how often its items are read."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self.reads = 0

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_a_batch_makes_each_items_input_plain_once(tmp_path: Path) -> None:
    """Each item was made plain JSON data twice: as the batch claimed it, and as its run
    began (0.4 s a 100 000 items)."""
    import asyncio

    import eclflow

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    items = [Counting(v=i) for i in range(3)]
    results = asyncio.run(eclflow.run_batch(eclflow.load_text(ANY_INPUT), items, store=url))
    assert [r.output["v"] for r in results] == [0, 1, 2]
    assert [item.reads for item in items] == [1, 1, 1]
