"""The step API: retry policy, results, registry, and the built-in types' rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eclflow.errors import ConfigError, StepNotFound, ValidationError
from eclflow.llm import MockProvider, Providers
from eclflow.spec.model import RevisionLoop, StepSpec, Workflow
from eclflow.steps import RetryPolicy, Step, StepRegistry, StepResult, default_registry
from eclflow.steps.builtin import (
    CRITIQUE_SCHEMA,
    CritiqueStep,
    GenerateStep,
    ReviseStep,
    TemplateStep,
    parse_critique,
    strip_fences,
)


def test_retry_policy_delays_follow_the_seed_vector() -> None:
    p = RetryPolicy.exponential(5, 1.0, 10.0)
    assert [p.delay_for_attempt(a) for a in range(6)] == [0, 1, 2, 4, 8, 10]


def test_retry_policy_presets() -> None:
    assert RetryPolicy.default() == RetryPolicy(3, 1.0, 10.0, 2.0)
    assert RetryPolicy.none() == RetryPolicy(1, 0.0, 0.0, 1.0)
    assert RetryPolicy.linear(4, 2.0) == RetryPolicy(4, 2.0, 2.0, 1.0)
    assert RetryPolicy.linear(4, 2.0).delay_for_attempt(3) == 2.0


@given(st.integers(1, 100), st.floats(1, 10), st.floats(10, 100), st.floats(1, 4))
def test_retry_delay_never_exceeds_the_cap(attempt: int, init: float, cap: float, m: float) -> None:
    assert RetryPolicy(5, init, cap, m).delay_for_attempt(attempt) <= cap


def test_step_result_helpers() -> None:
    ok = StepResult.success(1)
    rev = StepResult.needs_revision(2, "more")
    bad = StepResult.failed("boom", retryable=True)
    assert ok.unwrap() == 1 and ok.map(lambda x: x + 1).output == 2
    assert rev.map(lambda x: x * 10).output == 20 and rev.map(str).feedback == "more"
    assert bad.map(lambda x: x) is bad and bad.is_retryable
    assert not StepResult.failed("x").is_retryable
    with pytest.raises(ValueError, match="NeedsRevision"):
        rev.unwrap()
    with pytest.raises(ValueError, match="Failed: boom"):
        bad.unwrap()
    assert bad.unwrap_or(7) == 7


def test_validation_error_display() -> None:
    assert str(ValidationError("bad", field="topic")) == ("Validation error in field 'topic': bad")
    assert str(ValidationError("bad")) == "Validation error: bad"
    assert ValidationError("x", details={"a": 1}).details == {"a": 1}


def test_registry_register_get_and_duplicates() -> None:
    reg = StepRegistry()

    class Echo(Step):
        type_name = "echo"

    class Echo2(Step):
        type_name = "echo"

    reg.register(Echo)
    assert reg.get("echo") is Echo and "echo" in reg and len(reg) == 1
    with pytest.raises(ConfigError, match="already registered"):
        reg.register(Echo2)
    with pytest.raises(StepNotFound):
        reg.get("nope")
    assert set(default_registry().names()) >= {"generate", "critique", "revise", "llm", "template"}


def spec(type_: str, **kw: Any) -> StepSpec:
    return StepSpec(id=kw.pop("id", type_), type=type_, **kw)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", "Topic cannot be empty"),
        ("   ", "Topic cannot be empty"),
        ("x" * 501, "Topic is too long (max 500 characters)"),
    ],
)
def test_generate_input_rules(topic: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerateStep(spec("generate")).validate_input({"topic": topic})
    GenerateStep(spec("generate")).validate_input({"topic": "x" * 500})


def test_generate_output_rules() -> None:
    g = GenerateStep(spec("generate"))
    with pytest.raises(ValidationError, match="Generated draft is empty"):
        g.validate_output({"draft": " "})
    with pytest.raises(ValidationError, match="Draft too long: 2001 chars"):
        g.validate_output({"draft": "x" * 2001})
    g.validate_output({"draft": "x" * 2000})


def test_revise_attempt_bounds_follow_the_loop() -> None:
    wf = Workflow(
        "w",
        "w",
        (spec("generate"), spec("critique"), spec("revise")),
        (RevisionLoop("critique", "revise", "generate", 3),),
    )
    r = ReviseStep(wf.step("revise"), wf)
    ok = {"draft": "d", "feedback": "f"}
    for attempt in (1, 2, 3):
        r.validate_input({**ok, "attempt": attempt})
    with pytest.raises(ValidationError, match="Attempt 4 exceeds max revisions 3"):
        r.validate_input({**ok, "attempt": 4})
    with pytest.raises(ValidationError, match="must be positive"):
        r.validate_input({**ok, "attempt": 0})
    with pytest.raises(ValidationError, match="Feedback cannot be empty"):
        r.validate_input({"draft": "d", "feedback": "", "attempt": 1})
    with pytest.raises(ValidationError, match="Revised draft is empty"):
        r.validate_output({"draft": ""})


def test_parse_critique_accepts_the_documented_shapes() -> None:
    assert parse_critique('{"decision": "PASS", "critique": "fine"}') == {
        "decision": "pass",
        "critique": "fine",
        "feedback": "fine",
    }
    out = parse_critique('```json\n{"decision": "revise", "feedback": "shorter"}\n```')
    assert out["decision"] == "revise" and out["feedback"] == "shorter"
    out = parse_critique('Sure! {"decision": "revise", "critique": "c", "feedback": "f"} done')
    assert out["feedback"] == "f" and out["critique"] == "c"
    assert (
        parse_critique('{"decision":"pass","critique":"x","quality_score":7}')["quality_score"] == 7
    )
    # a line break written as it is inside a string, as small models write one
    out = parse_critique('{"critique": "Too short.\n\tAdd an example.", "decision": "revise"}')
    assert out["critique"] == "Too short.\n\tAdd an example."


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("nope", "Failed to parse critique JSON"),
        ('{"critique": "c"}', "Missing 'decision'"),
        ('{"decision": "maybe", "critique": "c"}', "Invalid decision value: maybe"),
        ('{"decision": "pass"}', "Missing 'critique'"),
        ("[1]", "expected an object"),
    ],
)
def test_parse_critique_rejects(reply: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_critique(reply)


def test_strip_fences() -> None:
    assert strip_fences("```\n{}\n```") == "{}"
    assert strip_fences("  plain  ") == "plain"


def _ctx(provider: MockProvider) -> Any:
    from eclflow.engine.executor import Executor, _Usage

    ex = Executor(run_id="r", providers=Providers(mock=provider), default_model="mock/t")
    return ex, _Usage


def test_critique_step_turns_revise_into_needs_revision() -> None:
    from eclflow.engine.journal import _NoLog

    mock = MockProvider(['{"decision": "revise", "critique": "c", "feedback": "f"}'])
    ex, _ = _ctx(mock)
    step = CritiqueStep(spec("critique"))
    e = asyncio.run(ex.run(step, "critique#1", 0, {"draft": "d"}, _NoLog()))
    assert e.outcome == "needs_revision" and e.feedback == "f" and e.attempts == 1
    assert mock.requests[0].json_schema is not None  # structured output was asked for


def test_a_critique_asks_for_the_quality_score_its_output_schema_requires() -> None:
    from eclflow.engine.journal import _NoLog

    reply = '{"critique": "c", "decision": "pass", "quality_score": 8}'
    own = {"type": "object", "required": ["quality_score"], "properties": {}}
    mock = MockProvider([reply, reply])
    ex, _ = _ctx(mock)
    e = asyncio.run(
        ex.run(CritiqueStep(spec("critique", output_schema=own)), "c", 0, {"draft": "d"}, _NoLog())
    )
    assert e.outcome == "success" and e.output["quality_score"] == 8
    asked = mock.requests[0].json_schema
    assert asked["required"] == ["decision", "critique", "quality_score"]
    assert asked["properties"]["quality_score"] == {"type": "number"}
    # without one, the verdict alone
    asyncio.run(ex.run(CritiqueStep(spec("critique")), "c", 0, {"draft": "d"}, _NoLog()))
    assert mock.requests[1].json_schema == CRITIQUE_SCHEMA


def test_template_step_renders_without_a_model() -> None:
    from eclflow.engine.journal import _NoLog

    ex, _ = _ctx(MockProvider([]))
    step = TemplateStep(spec("template", template="Hi {{ name }}!"))
    e = asyncio.run(ex.run(step, "template", 0, {"name": "Ada"}, _NoLog()))
    assert e.output == {"text": "Hi Ada!"} and e.calls == 0


def test_input_validation_failure_is_not_retried_and_calls_nothing() -> None:
    from eclflow.engine.journal import _NoLog

    mock = MockProvider(["never"])
    ex, _ = _ctx(mock)
    e = asyncio.run(ex.run(GenerateStep(spec("generate")), "generate", 0, {"topic": ""}, _NoLog()))
    assert e.outcome == "failed" and "Topic cannot be empty" in (e.error or "")
    assert mock.calls == 0


def test_output_validation_failure_fails_the_step() -> None:
    from eclflow.engine.journal import _NoLog

    mock = MockProvider(["   "], cycle=True)
    ex, _ = _ctx(mock)
    e = asyncio.run(ex.run(GenerateStep(spec("generate")), "generate", 0, {"topic": "t"}, _NoLog()))
    assert e.outcome == "failed" and "Generated draft is empty" in (e.error or "")
    # the model's reply broke the rules: retried, as the model may do better
    assert e.retryable and e.attempts == 3 and mock.calls == 3


def test_output_validation_failure_then_a_good_reply_succeeds() -> None:
    from eclflow.engine.journal import _NoLog

    ex, _ = _ctx(MockProvider(["x" * 2500, "A fine draft."]))
    e = asyncio.run(ex.run(GenerateStep(spec("generate")), "generate", 0, {"topic": "t"}, _NoLog()))
    assert e.outcome == "success" and e.attempts == 2 and e.output == {"draft": "A fine draft."}


@pytest.mark.parametrize(
    ("step", "reply", "output"),
    [
        (GenerateStep, "too long a draft", {"draft": "short"}),
        (ReviseStep, "too long a draft", {"draft": "short"}),
        (
            CritiqueStep,
            '{"decision": "pass", "critique": "Fine but wordy."}',
            {"decision": "pass", "critique": "Fine.", "feedback": "Fine."},
        ),
    ],
)
def test_a_workflow_output_schema_binds_the_fixed_output_types_too(
    step: type[Step], reply: str, output: dict[str, Any]
) -> None:
    """generate, critique and revise check their own rules and then the step's
    `output_schema` (it was ignored): a reply that breaks it is retried like any other."""
    from eclflow.engine.journal import _NoLog

    field = "critique" if step is CritiqueStep else "draft"
    schema = {"type": "object", "properties": {field: {"maxLength": 8}}}
    mock = MockProvider(
        [reply, '{"decision": "pass", "critique": "Fine."}' if step is CritiqueStep else "short"]
    )
    ex, _ = _ctx(mock)
    s = step(spec(step.type_name, output_schema=schema))
    inputs = {"topic": "t", "draft": "d", "feedback": "f", "attempt": 1}
    e = asyncio.run(ex.run(s, "k", 0, inputs, _NoLog()))
    assert e.outcome == "success" and e.attempts == 2 and e.output == output, e.error


def test_step_timeout_is_retryable() -> None:
    from eclflow.engine.journal import _NoLog
    from eclflow.spec.model import RetrySpec

    mock = MockProvider([{"content": "late", "delay": 1}, "on time"])
    ex, _ = _ctx(mock)
    s = GenerateStep(spec("generate", timeout=0.05, retry=RetrySpec(2, 0, 0, 1)))
    e = asyncio.run(ex.run(s, "generate", 0, {"topic": "t"}, _NoLog()))
    assert e.outcome == "success" and e.attempts == 2 and e.output == {"draft": "on time"}


def test_an_object_output_schema_still_refuses_a_non_object() -> None:
    class Objects(Step):
        type_name = "objects"
        output_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}

    step = Objects(spec("generate"))
    step.validate_input({"anything": 1})  # inputs are always mappings: nothing to refuse
    step.validate_output({"a": 1})
    with pytest.raises(ValidationError, match="output 'text' is not of type 'object'"):
        step.validate_output("text")


PLUGIN_MODULE = """\
from eclflow.steps import Step, StepResult

class Shout(Step):
    type_name = "shout"
    description = "Upper-case a text."

    async def execute(self, ctx, input):
        return StepResult.success({"text": str(input.get("text", "")).upper()})

class FakeGenerate(Shout):
    type_name = "generate"

class Loose(Shout):
    input_schema = None
"""

PLUGIN_WORKFLOW = """\
eclflow: 1
id: shouting
name: Shouting
steps:
  - {id: loud, type: shout, with: {text: "hello"}}
output: {text: "{{ steps.loud.output.text }}"}
"""


def test_plugins_load_only_when_needed_and_cannot_replace_built_in_types(tmp_path: Path) -> None:
    """An installed distribution with two `eclflow.steps` entry points, one of them named like
    a built-in type, in real subprocesses."""
    import json
    import os
    import subprocess
    import sys

    from conftest import CRITIQUE_REVISE

    (tmp_path / "shout_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "shout_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[eclflow.steps]\nshout = shout_plugin:Shout\ngenerate = shout_plugin:FakeGenerate\n"
        "loose = shout_plugin:Loose\n"
    )
    (tmp_path / "shouting.yaml").write_text(PLUGIN_WORKFLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"}

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eclflow", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    # a workflow of built-in types never looks at the installed packages
    probe = (
        "import sys\n"
        "from eclflow.cli import cli\n"
        "try:\n"
        f"    cli.main(['validate', {str(CRITIQUE_REVISE)!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"

    r = eclflow("validate", str(tmp_path / "shouting.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = eclflow("run", str(tmp_path / "shouting.yaml"), "--no-journal", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == {"text": "HELLO"}

    r = eclflow("steps", "--json")
    assert r.returncode == 0, r.stderr
    types = {row["type"]: row["module"] for row in json.loads(r.stdout)}
    assert types["shout"] == "shout_plugin"
    # a type without an input schema (it runs) does not break the listing of every type
    assert {"type": "loose", "inputs": [], "required": []}.items() <= next(
        row for row in json.loads(r.stdout) if row["type"] == "loose"
    ).items()
    assert types["generate"] == "eclflow.steps.builtin"
    assert "warning: plugin step 'generate'" in r.stderr and "built-in step type" in r.stderr
    # a type whose schema names no output makes any output (not `llm`'s text / output_schema)
    r = eclflow("steps")
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in r.stdout.splitlines()]
    assert ["shout", "no", "any", "any", "Upper-case a text."] in rows


def test_a_step_cancelled_while_its_result_is_committed_keeps_its_event() -> None:
    """Ctrl-C can cancel a run just after its step's result was committed, before the task
    resumes: the step's outcome event must already have been recorded by then."""
    from eclflow.observe.events import EventRecorder, record_to

    class CommitsThenCancelled:
        def __init__(self) -> None:
            self.committed: list[str] = []

        def started(self, attempt: int, input: Any, model: str | None) -> None:
            return None

        async def finished(self, handle: Any, attempt: int, record: Any, **kw: Any) -> None:
            self.committed.append(record.outcome)
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # as asyncio.run does on Ctrl-C, with the commit already done
            await asyncio.sleep(0)

    async def main() -> list[str]:
        recorder = EventRecorder(None, "r")
        ex, _ = _ctx(MockProvider(["A fine draft."]))
        with record_to(recorder), pytest.raises(asyncio.CancelledError):
            await ex.run(GenerateStep(spec("generate")), "generate", 0, {"topic": "t"}, log)
        return [kind for kind, _, _ in recorder.take()]

    log = CommitsThenCancelled()
    kinds = asyncio.run(main())
    assert log.committed == ["success"]
    assert "step_succeeded" in kinds


def test_revise_without_attempt_in_with_uses_the_loop_iteration() -> None:
    """`attempt` is optional (docs) and revise.j2 reads it: the revision number fills it."""
    from eclflow.engine.journal import _NoLog
    from eclflow.steps.base import LoopState

    mock = MockProvider(["better draft"])
    ex, _ = _ctx(mock)
    step = ReviseStep(spec("revise"))
    loop = LoopState(iteration=2, max_iterations=3, feedback="f")
    e = asyncio.run(ex.run(step, "revise#2", 2, {"draft": "d", "feedback": "f"}, _NoLog(), loop))
    assert e.outcome == "success", e.error
    assert "Revision attempt: 2 of 3" in mock.requests[0].messages[-1].content


def test_a_plugin_type_is_its_entry_point_name_and_a_broken_one_says_why(tmp_path: Path) -> None:
    """docs/format.md: `type:` is the entry point's name; a plugin cannot replace a built-in
    type, even through a type_name it inherits; validate's E202 shows a plugin's import error."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "more_plugin.py").write_text(
        "from eclflow.steps.builtin import GenerateStep, TemplateStep\n"
        "class MyGen(GenerateStep):\n"
        "    description = 'my tweaked generate'\n"
        "class Shout(TemplateStep):\n"
        "    type_name = 'shout'\n"
    )
    info = tmp_path / "more_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: more-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[eclflow.steps]\nmy_generate = more_plugin:MyGen\nyell = more_plugin:Shout\n"
        "broken = no_such_module_xyz:X\n"
    )
    (tmp_path / "w.yaml").write_text(
        "eclflow: 1\nid: p\nsteps:\n"
        "  - {id: a, type: my_generate, with: {topic: x}}\n"
        "  - {id: b, type: yell, template: hi, depends_on: [a]}\n"
        "  - {id: c, type: broken, depends_on: [b]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eclflow", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    r = eclflow("validate", str(tmp_path / "w.yaml"))
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stdout.splitlines() if ": E" in line]
    assert len(errors) == 1, r.stdout
    assert "E202 unknown step type 'broken'" in errors[0]
    assert "No module named 'no_such_module_xyz'" in errors[0]
    r = eclflow("steps", "--json")
    types = {row["type"]: row["module"] for row in json.loads(r.stdout)}
    assert types["generate"] == "eclflow.steps.builtin"
    assert types["my_generate"] == types["yell"] == "more_plugin"
    assert "shout" not in types


def test_every_step_of_a_loop_sees_its_bound_as_max_revisions() -> None:
    from conftest import CRITIQUE_REVISE

    from eclflow.spec import load_text
    from eclflow.steps.registry import default_registry

    text = CRITIQUE_REVISE.read_text().replace("max_iterations: 3", "max_iterations: 5")
    wf = load_text(text, file=str(CRITIQUE_REVISE), base_dir=CRITIQUE_REVISE.parent)
    registry = default_registry()
    bounds = {s.id: registry.get(s.type)(s, wf).max_revisions for s in wf.steps}
    assert bounds == {"generate": 5, "critique": 5, "revise": 5}
    alone = load_text("eclflow: 1\nid: one\nsteps: [{id: g, type: generate, with: {topic: t}}]\n")
    assert registry.get("generate")(alone.steps[0], alone).max_revisions == 3


def test_a_reply_a_step_could_not_use_is_kept_with_its_failed_attempt(tmp_path: Path) -> None:
    """A critique that is not JSON, or a draft over max_chars, was paid for and then kept
    nowhere: `eclflow show` printed "(none)" for every failed attempt."""
    import eclflow
    from eclflow.spec import load_text
    from eclflow.store import open_store

    wf = load_text(
        "eclflow: 1\nid: keep\nmodel: mock/t\nsteps:\n"
        "  - {id: g, type: generate, with: {topic: t}, config: {max_chars: 5},\n"
        "     retry: {max_attempts: 2, initial_delay: 1ms}}\n"
        "  - {id: c, type: critique, depends_on: [g], with: {draft: '{{ steps.g.output.draft }}'},\n"
        "     retry: {max_attempts: 1}}\n"
    )
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    r = asyncio.run(
        eclflow.run(wf, {}, mock_responses=["far too long", "short", "Looks fine to me!"], db=db)
    )
    assert r.status == "failed" and r.failed_step == "c"
    with open_store(db) as store:
        rows = [(s.key, s.attempt, s.state, s.output) for s in store.steps.for_run(r.run_id)]
    assert rows == [
        ("g", 1, "failed", {"draft": "far too long"}),
        ("g", 2, "succeeded", {"draft": "short"}),
        ("c", 1, "failed", {"reply": "Looks fine to me!"}),
    ]


def test_what_with_binds_wins_over_the_names_a_prompt_gets_anyway() -> None:
    """`with: {config: …}` rendered the step's config and `with: {max_revisions: 99}` the
    loop's bound: the binding was silently ignored."""
    from eclflow.steps.builtin import LLMStep

    step = LLMStep(
        spec("llm", template="{{ config }} {{ max_revisions }}", config={"max_tokens": 5})
    )
    assert step.messages({})[-1].content == "{'max_tokens': 5} 3"
    assert step.messages({"config": "mine", "max_revisions": 99})[-1].content == "mine 99"
    from eclflow.engine.journal import _NoLog

    ex, _ = _ctx(MockProvider([]))
    t = TemplateStep(spec("template", template="{{ config }}", config={"k": 1}))
    e = asyncio.run(ex.run(t, "t", 0, {"config": "mine"}, _NoLog()))
    assert e.output == {"text": "mine"}


def test_a_plugin_prompt_step_has_its_input_schema_checked() -> None:
    from eclflow.steps.builtin import PromptStep

    class Ask(PromptStep):
        type_name = "ask_test"
        input_schema: ClassVar[Mapping[str, Any]] = {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
        }

    step = Ask(spec("ask_test", template="Say {{ n }}"))
    step.validate_input({"n": 3})
    with pytest.raises(ValidationError, match="'three' is not of type 'integer'"):
        step.validate_input({"n": "three"})


def _install_plugin(tmp_path: Path, module: str, source: str, entry_points: str) -> None:
    """A distribution on `tmp_path` (put it on the path) whose module `module` holds `source`,
    with `entry_points` (lines `name = module:Class`) in the group `eclflow.steps`."""
    (tmp_path / f"{module}.py").write_text(source)
    info = tmp_path / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[eclflow.steps]\n{entry_points}\n")


def test_a_plugin_step_that_raises_shows_its_traceback_with_verbose(tmp_path: Path) -> None:
    """A bug in a plugin's `execute` fails the step with one line, and `eclflow -v` shows
    where it is (it showed no traceback at all, even with -v)."""
    import os
    import subprocess
    import sys

    _install_plugin(
        tmp_path,
        "buggy_plugin",
        "from eclflow.steps import Step\n"
        "class Buggy(Step):\n"
        "    async def execute(self, ctx, input):\n"
        "        return {}['missing_key']\n",
        "buggy = buggy_plugin:Buggy",
    )
    (tmp_path / "w.yaml").write_text("eclflow: 1\nid: b\nsteps:\n  - {id: s, type: buggy}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eclflow", *args, "run", str(tmp_path / "w.yaml")]
        cmd.append("--no-journal")
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    r = eclflow()
    assert r.returncode == 1
    assert "error: Step s failed: KeyError: 'missing_key'" in r.stderr
    assert "Traceback" not in r.stderr
    r = eclflow("-v")
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr
    assert "buggy_plugin.py" in r.stderr and "return {}['missing_key']" in r.stderr


def test_plugin_entry_points_that_claim_a_taken_type_are_refused_when_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A type two plugins, or a plugin and the program, both claim (the last one loaded
    silently replaced the other): refused with a line that says why, the first type kept. A
    plain `def execute` is loaded (it runs in a thread)."""
    _install_plugin(
        tmp_path,
        "claims_plugin",
        "from eclflow.steps import Step, StepResult\n"
        "class Sync(Step):\n"
        "    def execute(self, ctx, input):\n"
        "        return StepResult.success({})\n"
        "class First(Step):\n"
        "    async def execute(self, ctx, input):\n"
        "        return StepResult.success({})\n"
        "class Second(First):\n"
        "    pass\n",
        "sync_claim = claims_plugin:Sync\ntwice_claim = claims_plugin:First\n"
        "twice_claim = claims_plugin:Second\nmine_claim = claims_plugin:First",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = StepRegistry()

    class Mine(Step):
        type_name = "mine_claim"

        async def execute(self, ctx: Any, input: Any) -> StepResult:
            return StepResult.success({})

    reg.register(Mine)
    problems = reg.load_entry_points()
    assert reg.get("sync_claim").__qualname__ == "Sync"
    assert reg.get("twice_claim").__qualname__ == "First"
    assert reg.get("mine_claim") is Mine
    assert sorted(problems) == [
        "plugin step 'mine_claim' (claims_plugin:First) failed to load: 'mine_claim' is "
        f"already the type of {Mine.__module__}:{Mine.__qualname__}",
        "plugin step 'twice_claim' (claims_plugin:Second) failed to load: 'twice_claim' is "
        "already the type of claims_plugin:First",
    ]


class _Sleepy(Step):
    """A plugin's blocking code: `def execute` with a sleep that outlasts the step's timeout."""

    type_name = "sleepy_test"

    def execute(self, ctx: Any, input: Any) -> StepResult:  # type: ignore[override]
        time.sleep(float(input.get("seconds", 5)))
        return StepResult.success({"slept": True})


def test_a_blocking_plugin_execute_runs_in_a_thread_beside_the_other_steps() -> None:
    """A plain `def execute` was refused, and an `async def` one that blocks held up the event
    loop: the other branches waited, and the step's timeout could not cut it short. A plain
    `def execute` runs in a thread: its timeout fails it, and the branch beside it finishes
    meanwhile."""
    import eclflow
    from eclflow.spec import load_text

    registry = default_registry()
    registry.register(_Sleepy)
    wf = load_text(
        "eclflow: 1\nid: sleepy\nsteps:\n"
        "  - {id: slow, type: sleepy_test, with: {seconds: 5}, timeout: 1s,\n"
        "     retry: {max_attempts: 1}}\n"
        "  - {id: quick, type: template, template: done}\n"
    )
    seen: list[str] = []

    def listener(event: str, payload: Any) -> None:
        if event == "step_finished":
            seen.append(f"{payload['execution'].key}: {payload['execution'].status}")

    try:
        r = asyncio.run(eclflow.run(wf, {}, listener=listener))
    finally:
        registry._types.pop("sleepy_test")
    assert r.status == "failed" and r.failed_step == "slow"
    assert r.error == "Step slow failed: Step timed out after 1s"
    assert seen == ["quick: succeeded", "slow: failed"]


class _Finder(Step):
    """A plugin's `def execute` that looks for what is not there: `next()` raises
    StopIteration."""

    type_name = "finder_test"

    def execute(self, ctx: Any, input: Any) -> StepResult:  # type: ignore[override]
        found = next(x for x in (1, 2) if x > 5)
        return StepResult.success({"found": found})


def test_a_blocking_plugin_execute_that_raises_stop_iteration_fails_at_once() -> None:
    """`next()` with nothing left in a plain `def execute` raises StopIteration, which an
    asyncio future cannot hold: asyncio printed a traceback and the step hung until its
    timeout (two minutes by default), then failed as "timed out" and was retried. It fails at
    once, as an `async def` one does (RuntimeError), and is not retried."""
    import eclflow
    from eclflow.spec import load_text

    registry = default_registry()
    registry.register(_Finder)
    wf = load_text(
        "eclflow: 1\nid: finder\nsteps:\n"
        "  - {id: find, type: finder_test, timeout: 30s, retry: {max_attempts: 2}}\n"
    )
    try:
        r = asyncio.run(eclflow.run(wf, {}))
    finally:
        registry._types.pop("finder_test")
    assert r.status == "failed" and r.failed_step == "find"
    assert r.error == (
        "Step find failed: RuntimeError: execute raised StopIteration (a plain `def execute` "
        "cannot let it out: catch it, or give next() a default)"
    ), r.error
    (step,) = r.steps
    assert step.attempts == 1


def test_ctrl_c_stops_a_run_whose_blocking_plugin_step_is_in_flight(tmp_path: Path) -> None:
    """Ctrl-C during a plain `def execute` that blocks for a minute: the run stops at once
    and says how to go on (the thread is not waited for), and the resume runs the step
    again."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from test_crash import Journal, wait_for

    _install_plugin(
        tmp_path,
        "sleepy_plugin",
        "import os, time\n"
        "from eclflow.steps import Step, StepResult\n"
        "class Sleepy(Step):\n"
        "    def execute(self, ctx, input):\n"
        "        time.sleep(float(os.environ['SLEEPY_SECONDS']))\n"
        "        return StepResult.success({'slept': True})\n",
        "sleepy = sleepy_plugin:Sleepy",
    )
    (tmp_path / "w.yaml").write_text("eclflow: 1\nid: s\nsteps:\n  - {id: s, type: sleepy}\n")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
           "ECLFLOW_DATABASE_URL": url, "SLEEPY_SECONDS": "60"}  # fmt: skip
    cmd = [sys.executable, "-m", "eclflow", "run", str(tmp_path / "w.yaml")]
    p = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        q = "select run_id from step_executions where state = 'running'"
        ((run_id,),) = wait_for(lambda: Journal(url).rows(q), "the step to be in flight")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)  # (the step had most of its minute to go)
    finally:
        p.kill()
    assert p.returncode == 130, err
    short = run_id[:8]
    assert err.strip().splitlines()[-1] == (
        f"interrupted: run {short} stopped; `eclflow resume {short}` continues it"
    )
    env["SLEEPY_SECONDS"] = "0"
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "resume", short, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["status"] == "completed", done
    assert [(s["id"], s["status"]) for s in done["steps"]] == [("s", "succeeded")]


def test_a_timeout_inside_a_step_is_not_called_the_step_timeout() -> None:
    """A step's own `asyncio.wait_for` that times out was reported as "Step timed out after
    120s" at once: it says what it is, and is still retried."""
    from eclflow.engine.journal import _NoLog
    from eclflow.spec.model import RetrySpec

    class Waits(Step):
        type_name = "waits_test"

        async def execute(self, ctx: Any, input: Any) -> StepResult:
            await asyncio.wait_for(asyncio.sleep(10), 0.01)
            return StepResult.success({})

    ex, _ = _ctx(MockProvider([]))
    s = Waits(spec("waits_test", timeout=120, retry=RetrySpec(2, 0, 0, 1)))
    e = asyncio.run(ex.run(s, "w", 0, {}, _NoLog()))
    assert e.outcome == "failed" and e.attempts == 2
    assert e.error == "TimeoutError (a wait inside the step)"


def test_a_prompt_that_renders_to_nothing_is_not_sent() -> None:
    """A prompt whose `{% if %}` left nothing was sent to the model as it was (and paid for)."""
    from eclflow.engine.journal import _NoLog
    from eclflow.steps.builtin import LLMStep

    mock = MockProvider(["an answer to nothing"])
    ex, _ = _ctx(mock)
    step = LLMStep(spec("llm", template="{% if long %}Write at length.{% endif %}\n"))
    e = asyncio.run(ex.run(step, "llm", 0, {"long": False}, _NoLog()))
    assert e.outcome == "failed" and not e.retryable and mock.calls == 0
    assert e.error == (
        "the prompt of step 'llm' renders to nothing: check the values under `with:` and "
        "the template's `{% if %}` blocks"
    )


def test_a_step_type_that_calls_a_model_without_uses_model_is_told_so() -> None:
    """It was told to give the workflow a `model:`, which it had: the executor hands no model
    to a type whose `uses_model` is False."""
    from eclflow.engine.journal import _NoLog

    class Asks(Step):
        type_name = "asks_test"

        async def execute(self, ctx: Any, input: Any) -> StepResult:
            reply = await ctx.complete([{"role": "user", "content": "hi"}])
            return StepResult.success({"text": reply.content})

    mock = MockProvider(["hello"])
    ex, _ = _ctx(mock)
    e = asyncio.run(ex.run(Asks(spec("asks_test")), "a", 0, {}, _NoLog()))
    assert e.outcome == "failed" and mock.calls == 0
    assert e.error == (
        "Validation error: step type 'asks_test' calls a model without saying so: set "
        "`uses_model = True` on test_a_step_type_that_calls_a_model_without_uses_model_is_told_so"
        ".<locals>.Asks"
    )
    Asks.uses_model = True
    e = asyncio.run(ex.run(Asks(spec("asks_test")), "a", 0, {}, _NoLog()))
    assert e.output == {"text": "hello"}


@pytest.mark.parametrize("broken", ["validate_input", "validate_output"])
def test_a_step_type_whose_own_check_raises_fails_the_step_not_the_run(
    tmp_path: Path, broken: str
) -> None:
    """A bug in a plugin's `validate_input` or `validate_output` ended the process with
    "KeyError: …" as an internal error, the run left `running` (shown as interrupted): it fails
    the step, and the run, as a bug in `execute` does."""
    import eclflow
    from eclflow.spec import load_text

    class Checks(Step):
        async def execute(self, ctx: Any, input: Any) -> StepResult:
            return StepResult.success({"done": True})

    def bug(self: Step, value: Any) -> None:
        raise KeyError("nope")

    Checks = type(f"Checks_{broken}", (Checks,), {"type_name": f"checks_{broken}", broken: bug})
    eclflow.register(Checks)
    wf = load_text(f"eclflow: 1\nid: c\nsteps:\n  - {{id: s, type: checks_{broken}}}\n")
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    result = asyncio.run(eclflow.run(wf, {}, db=db))
    assert result.status == "failed"
    assert result.error == "Step s failed: KeyError: 'nope'"
    from eclflow.store import open_store

    store = open_store(db)
    try:
        assert store.runs.get(result.run_id).state == "failed"
    finally:
        store.close()


def test_a_step_types_messages_name_it_as_the_workflow_does() -> None:
    """A plugin's class registered under its entry point's name (`my_generate`) inherits the
    `type_name` of its base (`generate`): its errors named the built-in type."""
    from eclflow.engine.journal import _NoLog

    class Wrong(GenerateStep):
        async def execute(self, ctx: Any, input: Any) -> StepResult:
            return {"draft": "not a StepResult"}  # type: ignore[return-value]

    ex, _ = _ctx(MockProvider([]))
    e = asyncio.run(ex.run(Wrong(spec("my_generate")), "g", 0, {"topic": "t"}, _NoLog()))
    assert e.error == "step type 'my_generate' returned dict, not StepResult"


def test_what_a_step_prints_goes_to_stderr_not_into_the_output(tmp_path: Path) -> None:
    """A plugin's print() (debugging, say) went to stdout, into the JSON that `run --json`
    and a batch's result lines give to whoever reads them."""
    import json
    import os
    import subprocess
    import sys

    _install_plugin(
        tmp_path,
        "chatty_plugin",
        "from eclflow.steps import Step, StepResult\n"
        "class Chatty(Step):\n"
        "    async def execute(self, ctx, input):\n"
        "        print('debug: got here')\n"
        "        return StepResult.success({'text': 'ok'})\n",
        "chatty = chatty_plugin:Chatty",
    )
    (tmp_path / "w.yaml").write_text("eclflow: 1\nid: c\nsteps:\n  - {id: s, type: chatty}\n")
    (tmp_path / "items.jsonl").write_text("{}\n{}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = [sys.executable, "-m", "eclflow", "run", str(tmp_path / "w.yaml"), "--no-journal"]
    for extra in ([], ["--inputs", str(tmp_path / "items.jsonl")]):
        r = subprocess.run(
            [*run, *extra, "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        assert [json.loads(line)["status"] for line in r.stdout.splitlines()] == ["completed"] * (
            2 if extra else 1
        )
        assert "debug: got here" in r.stderr


def test_a_plugin_output_nested_too_deeply_fails_the_step_not_the_run(tmp_path: Path) -> None:
    """A plugin's output nested past Python's recursion limit (a list in a list, 5000 deep)
    raised RecursionError past the step's handling: a traceback, the run left `running`. It
    fails the step, saying why; one a few hundred deep is still journaled as it is."""
    import eclflow
    from eclflow.spec import load_text
    from eclflow.store import open_store

    class Deep(Step):
        type_name = "deep_test"

        async def execute(self, ctx: Any, input: Any) -> StepResult:
            value: list[Any] = []
            for _ in range(ctx.config["depth"]):
                value = [value]
            return StepResult.success({"v": value})

    eclflow.register(Deep)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    results = {}
    for depth in (5000, 600):
        text = f"eclflow: 1\nid: d\nsteps:\n  - {{id: s, type: deep_test, config: {{depth: {depth}}}}}\n"
        results[depth] = asyncio.run(eclflow.run(load_text(text), {}, db=db))
    deep, shallow = results[5000], results[600]
    assert deep.status == "failed"
    assert deep.error is not None and deep.error.startswith(
        "Step s failed: step type 'deep_test' made an output nested too deeply to journal as JSON"
    )
    assert shallow.status == "completed"
    store = open_store(db)
    try:
        assert store.runs.get(deep.run_id).state == "failed"
        assert store.runs.get(shallow.run_id).state == "completed"
    finally:
        store.close()


def test_steps_json_says_that_llm_and_template_take_any_input() -> None:
    """`eclflow steps --json` listed `inputs: []` for `llm` and `template`, as if they took
    nothing, where the table says "any": their `with:` binds the prompt's variables."""
    import json
    import subprocess
    import sys

    def steps(*args: str) -> str:
        cmd = [sys.executable, "-m", "eclflow", "steps", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    rows = {row["type"]: row for row in json.loads(steps("--json"))}
    for name in ("llm", "template"):
        assert (rows[name]["inputs"], rows[name]["other_inputs"]) == ([], True), name
    # a prompt step's other names are its prompt's variables too
    assert (rows["generate"]["inputs"], rows["generate"]["other_inputs"]) == (["topic"], True)
    table = [[c.strip() for c in line.split("│")[1:-1]] for line in steps().splitlines()]
    assert {r[0]: r[2] for r in table if r}["llm"] == "any"
