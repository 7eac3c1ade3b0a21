"""The orchestrator through the Python API: loop bodies, waits, failures, replay."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import eclflow
from eclflow.engine import MemoryJournal, RunResult
from eclflow.errors import ConfigError, InvalidInput
from eclflow.spec import load_text

PASS = json.dumps({"decision": "pass", "critique": "ok"})
REVISE = json.dumps({"decision": "revise", "critique": "no", "feedback": "fix it"})

BODY = """\
eclflow: 1
id: body
name: Loop with a step between target and validator
model: mock/t
defaults: {retry: {max_attempts: 2, initial_delay: 1ms}}
inputs: {type: object, properties: {topic: {type: string}}}
steps:
  - {id: generate, type: generate, with: {topic: "{{ input.topic }}"}}
  - id: tidy
    type: template
    depends_on: [generate]
    template: "[{{ text }}] (pass {{ n }})"
    with: {text: "{{ steps.generate.output.draft }}", n: "{{ loop.iteration }}"}
  - id: critique
    type: critique
    depends_on: [tidy]
    with: {draft: "{{ steps.tidy.output.text }}"}
  - id: revise
    type: revise
    depends_on: [critique]
    with:
      draft: "{{ steps.generate.output.draft }}"
      feedback: "{{ loop.feedback }}"
      attempt: "{{ loop.iteration }}"
  - id: publish
    type: template
    depends_on: [generate]
    template: "final: {{ d }} after {{ n }} revision(s), {{ v }} versions"
    with:
      d: "{{ steps.generate.output.draft }}"
      n: "{{ loops.critique.revisions }}"
      v: "{{ steps.generate.versions | length }}"
transitions:
  - {type: revision_loop, validator: critique, reviser: revise, target: generate,
     max_iterations: 2}
output: {text: "{{ steps.publish.output.text }}"}
"""


def go(text: str, script: list[Any], inputs: dict[str, Any] | None = None, **kw: Any) -> RunResult:
    wf = load_text(text)
    from eclflow.engine.runner import _run  # (`journal=`: not in the public `run`)

    return asyncio.run(_run(wf, inputs or {"topic": "t"}, mock_responses=script, **kw))


def test_loop_reruns_the_steps_between_target_and_validator() -> None:
    r = go(BODY, ["v1", REVISE, "v2", PASS])
    assert r.status == "completed", r.error
    assert [s.key for s in r.steps] == [
        "generate",
        "tidy#1",
        "critique#1",
        "revise#1",
        "tidy#2",
        "critique#2",
        "publish",
    ]
    tidy = [s.output["text"] for s in r.steps if s.step_id == "tidy"]
    assert tidy == ["[v1] (pass 0)", "[v2] (pass 1)"]
    # a step that hangs on the loop's target waits for the whole loop and sees the last version
    assert r.output == {"text": "final: v2 after 1 revision(s), 2 versions"}


FORK = """\
eclflow: 1
id: fork
name: Fork
model: mock/t
defaults: {retry: {max_attempts: 1}}
steps:
  - {id: a, type: llm, template: "a"}
  - {id: b, type: llm, template: "b"}
  - {id: c, type: template, depends_on: [a, b], template: "{{ x }}",
     with: {x: "{{ steps.a.output.text }}"}}
"""


def test_failure_in_one_branch_fails_the_run_and_skips_nothing_else() -> None:
    r = go(FORK, [{"error": "bad_request"}, "fine"], inputs={})
    assert r.status == "failed"
    assert r.failed_step in ("a", "b")
    assert "c" not in [s.step_id for s in r.steps]


def test_input_is_checked_against_the_workflow_schema() -> None:
    with pytest.raises(InvalidInput, match="topic"):
        go(BODY, [], inputs={"topic": 5})


DEFAULTS = """\
eclflow: 1
id: defaults
inputs:
  type: object
  required: [topic]
  properties:
    topic: {type: string}
    tone: {type: string, default: plain}
    style:
      type: object
      default: {}
      properties: {width: {type: integer, default: 60}, case: {type: string}}
steps:
  - id: a
    type: template
    template: "{{ t }} / {{ tone }} / {{ width }}"
    with: {t: "{{ input.topic }}", tone: "{{ input.tone }}", width: "{{ input.style.width }}"}
output: {text: "{{ steps.a.output.text }}", style: "{{ input.style }}"}
"""


def test_input_defaults_fill_what_the_input_leaves_out() -> None:
    """A property's `default` (nested too) is what the run sees when the input omits it."""
    assert go(DEFAULTS, [], inputs={"topic": "kelp"}).output == {
        "text": "kelp / plain / 60",
        "style": {"width": 60},
    }
    given = go(DEFAULTS, [], inputs={"topic": "kelp", "tone": "dry", "style": {"case": "up"}})
    assert given.output == {"text": "kelp / dry / 60", "style": {"case": "up", "width": 60}}


def test_mock_model_without_a_script_is_a_config_error() -> None:
    wf = load_text(BODY)
    with pytest.raises(ConfigError, match="--mock-responses"):
        asyncio.run(eclflow.run(wf, {"topic": "t"}))


def test_memory_journal_replays_seeded_keys_without_calls() -> None:
    first = go(BODY, ["v1", REVISE, "v2", PASS])
    seed = {s.key: s for s in first.steps if s.key in ("generate", "tidy#1", "critique#1")}
    r = go(BODY, ["v2-again", PASS], journal=MemoryJournal(seed))
    assert r.status == "completed", r.error
    assert [s.replayed for s in r.steps][:3] == [True, True, True]
    assert r.output == {"text": "final: v2-again after 1 revision(s), 2 versions"}


def test_result_to_dict_is_json() -> None:
    r = go(BODY, ["v1", PASS])
    d = json.loads(json.dumps(r.to_dict()))
    assert d["status"] == "completed"
    assert [s["key"] for s in d["steps"]] == ["generate", "tidy#1", "critique#1", "publish"]
    assert all(
        {"id", "iteration", "status", "attempts", "tokens", "cost", "duration_ms"} <= set(s)
        for s in d["steps"]
    )


async def test_finished_runs_leave_no_reference_cycles() -> None:
    """A run's state is freed as soon as the run ends, not at the next cyclic collection:
    with thousands of runs at once, state kept for the GC is memory and collection time."""
    import gc

    wf = load_text(BODY)
    fork = load_text(FORK)

    async def runs() -> None:
        for _ in range(10):
            r = await eclflow.run(wf, {"topic": "t"}, mock_responses=["v1", REVISE, "v2", PASS])
            assert r.status == "completed"
            r = await eclflow.run(fork, {}, mock_responses=[{"error": "bad_request"}, "fine"])
            assert r.status == "failed"

    await runs()  # warm-up: caches filled once
    gc.collect()
    gc.disable()
    try:
        await runs()
        in_cycles = gc.collect()
    finally:
        gc.enable()
    assert in_cycles == 0


SKIPPED_LOOP = """\
eclflow: 1
id: skipped-loop
steps:
  - {id: gate, type: template, template: "{{ go }}", with: {go: "{{ input.go }}"}}
  - {id: generate, type: generate, with: {topic: "{{ input.topic }}"}}
  - {id: critique, type: critique, depends_on: [generate],
     with: {draft: "{{ steps.generate.output.draft }}"}}
  - {id: revise, type: revise, depends_on: [critique], revision_source: critique,
     with: {draft: "{{ steps.generate.output.draft }}", feedback: "{{ loop.feedback }}"}}
  - {id: after, type: template, depends_on: [gate, critique], template: "n={{ n }}",
     with: {n: "{{ loops.critique.revisions }}"}}
transitions:
  - {type: conditional, from: gate, to: generate, when: "input.go"}
  - {type: revision_loop, validator: critique, reviser: revise, target: generate}
output: {n: "{{ loops.critique.revisions }}"}
"""


def test_a_loop_a_condition_skipped_made_zero_revisions() -> None:
    r = go(SKIPPED_LOOP, [], {"topic": "t", "go": False}, model="mock/x")
    assert r.status == "completed", r.error
    assert r.output == {"n": 0} and r.revisions == {}
    assert [s.output["text"] for s in r.steps if s.step_id == "after"] == ["n=0"]


REVDEP = """\
eclflow: 1
id: revdep
model: mock/x
defaults: {retry: {max_attempts: 1}}
steps:
  - {id: g, type: generate, with: {topic: "t"}}
  - {id: c, type: critique, depends_on: [g], with: {draft: "{{ steps.g.output.draft }}"}}
  - {id: r, type: revise, depends_on: [c], revision_source: c,
     with: {draft: "{{ steps.g.output.draft }}", feedback: "{{ loop.feedback }}"}}
  - {id: fin, type: template, depends_on: [r], template: "{{ d }}",
     with: {d: "{{ steps.g.output.draft }} / {{ loops.c.revisions }}"}}
transitions:
  - {type: revision_loop, validator: c, reviser: r, target: g, max_iterations: 2}
output: {fin: "{{ steps.fin.output.text }}"}
"""


def test_a_step_after_the_reviser_runs_when_the_validator_passes_at_once() -> None:
    """What depends on the reviser waits for the loop to end, revision or not (it was
    skipped when no revision was needed, and the output then failed)."""
    r = go(REVDEP, {"g": "G0", "c": {"content": {"decision": "pass", "critique": "ok"}}})
    assert r.status == "completed", r.error
    assert r.output == {"fin": "G0 / 0"}


LOOPCOND = """\
eclflow: 1
id: loopcond
model: mock/x
defaults: {retry: {max_attempts: 1}}
steps:
  - {id: g, type: generate, with: {topic: "t"}}
  - {id: m, type: llm, template: "polish {{ d }}", with: {d: "{{ steps.g.output.draft }}"}}
  - {id: c, type: critique, depends_on: [g, m], with: {draft: "{{ steps.g.output.draft }}"}}
  - {id: r, type: revise, depends_on: [c], revision_source: c,
     with: {draft: "{{ steps.g.output.draft }}", feedback: "{{ loop.feedback }}"}}
transitions:
  - {type: conditional, from: g, to: m, when: "%(when)s"}
  - {type: revision_loop, validator: c, reviser: r, target: g, max_iterations: 2}
output: %(output)s
"""  # a condition inside a loop's body: when, output


PARLOOP = """\
eclflow: 1
id: parloop
model: mock/x
defaults: {retry: {max_attempts: 1}}
steps:
  - {id: x, type: llm, template: "x"}
  - {id: g, type: generate, with: {topic: "t"}}
  - {id: c, type: critique, depends_on: [g], with: {draft: "{{ steps.g.output.draft }}"}}
  - {id: r, type: revise, depends_on: [c], revision_source: c,
     with: {draft: "{{ steps.g.output.draft }}", feedback: "{{ loop.feedback }}"}}
transitions:
  - {type: revision_loop, validator: c, reviser: r, target: g, %(bound)s}
"""  # a loop beside a branch that fails: bound


# a one-revision loop's verdicts in LOOPCOND, keyed by journal key
C_REVISES_THEN_PASSES = {
    "c#1": {"content": {"decision": "revise", "critique": "thin", "feedback": "more"}},
    "c#2": {"content": {"decision": "pass", "critique": "ok"}},
}


def test_a_condition_in_a_loop_body_holds_on_every_version() -> None:
    """A step its condition skipped on the first version is skipped on the next too, not
    called (and paid for) on the rerun."""
    text = LOOPCOND % {
        "when": "steps.g.output.draft == 'POLISHME'",
        "output": '{g: "{{ steps.g.output.draft }}", m: "{{ steps.m.status }}"}',
    }
    script = {
        "g": "G0", "r": "G1", "m": "polished",
        **C_REVISES_THEN_PASSES,
    }  # fmt: skip
    r = go(text, script)
    assert r.status == "completed", r.error
    assert [(s.key, s.status) for s in r.steps if s.step_id == "m"] == [
        ("m#1", "skipped"),
        ("m#2", "skipped"),
    ]
    assert r.output == {"g": "G1", "m": "skipped"} and r.calls == 4


def test_a_loop_stops_revising_once_another_branch_has_failed_the_run() -> None:
    """ "Steps already running finish, nothing new starts" holds for a loop's next turn too
    (it went on revising, and paying, after the run had failed)."""
    text = PARLOOP % {"bound": "max_iterations: 5,\n     on_exhausted: accept"}
    revise = {"content": {"decision": "revise", "critique": "no", "feedback": "more"}, "delay": 0.2}
    script = {
        "x": {"error": "auth_error", "delay": 0.3},
        "g": "G0", "c": revise, "r": {"content": "Gn", "delay": 0.2},
    }  # fmt: skip
    r = go(text, script)
    assert r.status == "failed" and r.failed_step == "x"
    # g, c#1 (0.2 s), r#1 in flight when x fails at 0.3 s: it finishes; c#2 never starts
    assert [s.key for s in r.steps if s.step_id != "x"] == ["g", "c#1", "r#1"]


def test_an_output_that_reads_a_skipped_step_says_so() -> None:
    text = """\
eclflow: 1
id: skipout
model: mock/x
steps:
  - {id: k, type: llm, template: "k", output_schema: {type: object, properties: {long: {type: boolean}}}}
  - {id: a, type: llm, template: "a"}
transitions:
  - {type: conditional, from: k, to: a, when: "steps.k.output.long"}
output: {a: "{{ steps.a.output.text }}"}
"""
    r = go(text, {"k": {"content": {"long": False}}, "a": "A"})
    assert r.status == "failed"
    assert r.error == (
        "output: steps.a.output.text is undefined (step a was skipped, so its output is null: "
        "guard it with `| default(...)` or `steps.a.status`)"
    )
    guarded = go(text.replace("output.text }}", "output.text | default('none') }}"), {
        "k": {"content": {"long": False}}, "a": "A"})  # fmt: skip
    assert guarded.status == "completed" and guarded.output == {"a": "none"}
    # and a step's input that reads it
    reads = text.replace(
        "transitions:",
        "  - {id: c, type: template, depends_on: [k, a], template: '{{ t }}',\n"
        "     with: {t: '{{ steps.a.output.text }}'}}\ntransitions:",
    ).replace('output: {a: "{{ steps.a.output.text }}"}', "")
    r = go(reads, {"k": {"content": {"long": False}}, "a": "A"})
    assert r.status == "failed" and r.failed_step == "c", r
    assert r.error == (
        "Step c failed: input: steps.a.output.text is undefined (step a was skipped, so its "
        "output is null: guard it with `| default(...)` or `steps.a.status`)"
    )


def test_a_condition_on_a_revisers_output_stays_closed_when_it_never_ran() -> None:
    text = (
        REVDEP.replace(
            "  - {id: fin, type: template, depends_on: [r], template:",
            "  - {id: fin, type: template, template:",
        )
        .replace(
            "transitions:\n",
            "transitions:\n  - {type: conditional, from: r, to: fin, "
            "when: 'steps.r.output.draft | length > 3'}\n",
        )
        .replace(
            'output: {fin: "{{ steps.fin.output.text }}"}',
            'output: {fin: "{{ steps.fin.status }}"}',
        )
    )
    r = go(text, {"g": "G0", "c": {"content": {"decision": "pass", "critique": "ok"}}})
    assert r.status == "completed", r.error
    assert r.output == {"fin": "skipped"}


def test_a_step_skipped_on_a_rerun_has_no_output() -> None:
    text = LOOPCOND % {
        "when": "steps.g.output.draft == 'v1'",
        "output": '{m: "{{ steps.m.output }}", n: "{{ steps.m.versions | length }}"}',
    }
    script = {
        "g": "v1", "r": "v2", "m": "polished",
        **C_REVISES_THEN_PASSES,
    }  # fmt: skip
    r = go(text, script)
    assert r.status == "completed", r.error
    # m ran on v1, was skipped on v2: its output is null now (its versions keep v1's)
    assert r.output == {"m": None, "n": 1}


def test_a_resumed_run_follows_the_journal_rather_than_deciding_again() -> None:
    """What the journal recorded (here m#2 succeeded, though its condition is false for the
    new version) is the path: a run resumed by another version of eclflow replays it."""
    from eclflow.engine import StepExecution

    text = LOOPCOND % {
        "when": "steps.g.output.draft == 'v1'",
        "output": '{m: "{{ steps.m.output.text }}"}',
    }
    seed = {"m#2": StepExecution("m", "m#2", 1, "success", output={"text": "m two"})}
    script = {
        "g": "v1", "r": "v2", "m#1": "m one",
        **C_REVISES_THEN_PASSES,
    }  # fmt: skip
    r = go(text, script, journal=MemoryJournal(seed))
    assert r.status == "completed", r.error
    assert r.output == {"m": "m two"}
    assert [(s.key, s.replayed) for s in r.steps if s.step_id == "m"] == [
        ("m#1", False),
        ("m#2", True),
    ]


def test_a_loop_stopped_by_another_branchs_failure_counts_no_revision() -> None:
    text = PARLOOP % {"bound": "max_iterations: 2"}
    revise = {"content": {"decision": "revise", "critique": "no", "feedback": "more"}, "delay": 0.3}
    r = go(text, {"x": {"error": "auth_error", "delay": 0.1}, "g": "G0", "c": revise})
    assert r.status == "failed" and r.failed_step == "x"
    assert r.revisions == {"c": 0}


def test_a_lone_surrogate_in_a_reply_is_kept_as_u_fffd_and_the_run_journaled(
    tmp_path: Any,
) -> None:
    """A `\\ud800` escape in a model's JSON (or a provider's text) became half a surrogate
    pair, which no UTF-8 can hold: the journal's transaction failed and the run was lost."""
    from eclflow.store import open_store

    text = (
        "eclflow: 1\nid: sur\nmodel: mock/t\nsteps:\n"
        "  - {id: a, type: llm, template: hi, output_schema: {type: object}}\n"
        "  - {id: b, type: llm, template: hi, depends_on: [a]}\n"
        'output: {k: "{{ steps.a.output.k }}", t: "{{ steps.b.output.text }}"}\n'
    )
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    r = go(text, ['{"k": "x\\ud800y", "\\udc00": 1}', "plain \ud800 text"], inputs={}, db=db)
    assert r.status == "completed", r.error
    assert r.output == {"k": "x\ufffdy", "t": "plain \ufffd text"}
    with open_store(db) as store:
        assert store.runs.get(r.run_id).output == r.output
        rows = store.steps.for_run(r.run_id)
        assert rows[0].output == {"k": "x\ufffdy", "\ufffd": 1}


def test_a_new_run_id_is_a_random_uuid_as_uuid4_writes_it() -> None:
    import uuid

    from eclflow.engine.orchestrator import new_run_id

    ids = [new_run_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert (str(parsed), parsed.version, parsed.variant) == (run_id, 4, uuid.RFC_4122)
