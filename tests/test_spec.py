"""The loader and the checks: every diagnostic code, located exactly, and no exception ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import CRITIQUE_REVISE, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eclflow.errors import WorkflowInvalid
from eclflow.spec import check, check_text, load, load_text, parse_duration, schema
from eclflow.spec.deps import CycleError, DepGraph
from eclflow.spec.model import Conditional, RevisionLoop, Sequential

BASE = CRITIQUE_REVISE.read_text(encoding="utf-8")


def located(text: str, needle: str, nth: int = 1) -> tuple[int, int]:
    """1-based line and column of the nth occurrence of `needle` in `text`."""
    at = -1
    for _ in range(nth):
        at = text.index(needle, at + 1)
    line = text.count("\n", 0, at) + 1
    col = at - (text.rfind("\n", 0, at) + 1) + 1
    return line, col


def diagnose(text: str, base_dir: Path | None = None) -> list:
    _, diags = check_text(text, file="w.yaml", base_dir=base_dir or CRITIQUE_REVISE.parent)
    return diags


def sub(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


MINIMAL = """\
eclflow: 1
id: mini
steps:
  - id: a
    type: template
    template: "hello {{ who }}"
    with: {who: "{{ input.who }}"}
"""

# (code, text, needle, nth occurrence) — the diagnostic must sit exactly where needle starts.
CASES = {
    "E100 bad yaml": ("E100", sub("  - id: critique\n", "  - id: critique\n  x: [1,\n"), "x: [1,"),
    "E100 duplicate key": ("E100", sub("name: Critique", "id: twice\nname: Critique"), "id: twice"),
    "E101 empty": ("E101", "", None),
    "E101 list": ("E101", "- 1\n- 2\n", "- 1"),
    "E103 alias bomb": (
        "E103",
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n"
            for p, n in zip("abcdef", "bcdefg", strict=True)
        ),
        "a:",
    ),
    "E110 missing key": ("E110", sub("id: critique-revise\n", ""), "eclflow: 1"),
    "E110 missing step type": ("E110", sub("    type: critique\n", ""), "id: critique\n"),
    "E111 unknown key": (
        "E111",
        sub("    depends_on: [generate]\n", "    depend_on: [generate]\n"),
        "depend_on",
    ),
    "E112 wrong type": (
        "E112",
        sub("depends_on: [generate]", "depends_on: generate"),
        "generate\n    with: {draft",
    ),
    "E113 enum": ("E113", sub("on_exhausted: fail", "on_exhausted: retry"), "retry}"),
    "E113 version": ("E113", sub("eclflow: 1", "eclflow: 2"), "2 "),
    "E113 duration": ("E113", sub("timeout: 120s", "timeout: soon"), "soon"),
    "E113 step id": ("E113", sub("  - id: generate", "  - id: gen-erate"), "gen-erate"),
    # names with a control character: a NUL failed the run's journal on PostgreSQL, and the
    # pattern's `$` let a line break end an id
    "E113 model with a NUL": (
        "E113",
        sub("model: local/smollm2", 'model: "local/smol\\0lm2"'),
        '"local/smol',
    ),
    "E113 step id ending in a line break": (
        "E113",
        sub("  - id: generate", '  - id: "generate\\n"'),
        '"generate',
    ),
    "E113 workflow id ending in a line break": (
        "E113",
        sub("id: critique-revise", 'id: "critique-revise\\n"'),
        '"critique-revise',
    ),
    "E114 empty list": ("E114", "eclflow: 1\nid: e\nsteps: []\n", "[]"),
    "E115 prompt and template": (
        "E115",
        sub("    type: generate", "    type: generate\n    template: x"),
        "template: x",
    ),
    "E116 inputs not a schema": (
        "E116",
        sub("type: object\n  required", "type: objekt\n  required"),
        "objekt",
    ),
    "E116 inputs not an object": (
        "E116",
        sub("type: object\n  required", "type: [string, array]\n  required"),
        "[string, array]",
    ),
    "E116 output_schema a fixed type never meets": (
        "E116",
        sub("    type: critique\n", "    type: critique\n    output_schema: {required: [score]}\n"),
        "[score]",
    ),
    "E201 duplicate id": (
        "E201",
        sub("  - id: revise", "  - id: critique"),
        "critique\n    type: revise",
    ),
    "E202 unknown type": ("E202", sub("    type: critique\n", "    type: critic\n"), "critic\n"),
    "E211 unknown local model": (
        "E211",
        sub("model: local/smollm2", "model: local/nonexistent"),
        "local/nonexistent",
    ),
    "E211 unknown local model of a step": (
        "E211",
        sub("    type: critique\n", "    type: critique\n    model: local/smolm2\n"),
        "local/smolm2",
    ),
    "E211 unknown local model in defaults": (
        "E211",
        sub("  timeout: 120s\n", "  timeout: 120s\n  model: local/llama\n"),
        "local/llama",
    ),
    "E203 unknown transition endpoint": ("E203", sub("to: critique}", "to: critque}"), "critque"),
    "E203 unknown depends_on": (
        "E203",
        sub("depends_on: [generate]", "depends_on: [genrate]"),
        "genrate",
    ),
    "E204 cycle": (
        "E204",
        sub("depends_on: [generate]", "depends_on: [generate, revise]"),
        "revise]",
    ),
    "E205 loop bound": ("E205", sub("max_iterations: 3", "max_iterations: 0"), "0, on_exhausted"),
    "E207 target downstream": (
        "E207",
        sub("target: generate", "target: revise"),
        "revise, target",
    ),
    "E207 revision_source": (
        "E207",
        sub("revision_source: critique", "revision_source: generate"),
        "generate   #",
    ),
    "E209 two conditions on one edge": (
        "E209",
        sub(
            "  - {type: sequential, from: generate, to: critique}\n",
            "  - {type: conditional, from: generate, to: critique, when: 'true'}\n"
            "  - {type: conditional, from: generate, to: critique, when: 'false'}\n",
        ),
        "{type: conditional, from: generate, to: critique, when: 'false'}",
    ),
    "E208 missing input": (
        "E208",
        sub('    with: {draft: "{{ steps.generate.output.draft }}"}', '    with: {text: "x"}'),
        "{text",
    ),
    "E210 input the step refuses": (
        "E210",
        sub('attempt: "{{ loop.iteration }}"', "attempt: next"),
        "next",
    ),
    "E301 template syntax": (
        "E301",
        sub('"{{ input.topic }}"', '"{{ input.topic }"'),
        '{{ input.topic }"',  # (at the `{{` that does not parse, inside the quotes)
    ),
    "E301 condition syntax": (
        "E301",
        sub(
            "  - {type: sequential, from: generate, to: critique}",
            "  - {type: conditional, from: generate, to: critique, when: 'a ==='}",
        ),
        "'a ==='",
    ),
    "E302 unknown root": (
        "E302",
        sub('"{{ input.topic }}"', '"{{ inputs.topic }}"'),
        "inputs.topic",
    ),
    "E302 unknown step field": (
        "E302",
        sub(
            'final_text: "{{ steps.generate.output.draft }}"',
            'final_text: "{{ steps.generate.outputs }}"',
        ),
        "steps.generate.outputs",
    ),
    "E302 prompt variable": (
        "E302",
        sub("    type: critique\n", "    type: critique\n    template: 'Review {{ drafts }}'\n"),
        "drafts }}",
    ),
    "E303 not upstream": (
        "E303",
        sub('{topic: "{{ input.topic }}"}', '{topic: "{{ steps.critique.output.critique }}"}'),
        "steps.critique.output.critique",
    ),
    "E303 not a step": (
        "E303",
        sub('"{{ loops.critique.revisions }}"', '"{{ steps.nope.status }}"'),
        "steps.nope",
    ),
    "E304 loop outside loop": (
        "E304",
        sub('"{{ loops.critique.revisions }}"', '"{{ loop.iteration }}"'),
        'loop.iteration }}"\n',
        2,
    ),
    "E305 env undeclared": ("E305", sub('"{{ input.topic }}"', '"{{ env.HOME }}"'), "env.HOME"),
    "E306 a reply compared with a number": (
        "E306",
        MINIMAL
        + "  - {id: b, type: llm, template: x}\n"
        + "transitions:\n"
        + '  - {type: conditional, from: a, to: b, when: "steps.a.output.text > 3"}\n',
        "steps.a.output.text > 3",
    ),
    "W506 text == a number": (
        "W506",
        MINIMAL
        + "  - {id: b, type: llm, template: x}\n"
        + "transitions:\n"
        + '  - {type: conditional, from: a, to: b, when: "steps.a.output.text == 5"}\n',
        "steps.a.output.text == 5",
    ),
    "E307 division by a literal zero": (
        "E307",
        MINIMAL + '  - {id: b, type: template, template: x, with: {n: "{{ 10 // 0 }}"}}\n',
        "10 // 0",
    ),
    "E401 prompt missing": (
        "E401",
        sub("prompt: generate.j2", "prompt: templates/gone.j2"),
        "templates/gone.j2",
    ),
    "E403 prompt outside the workflow's folder": (
        "E403",
        sub("prompt: generate.j2", "prompt: ../README.md"),
        "../README.md",
    ),
    "E402 no prompt": ("E402", MINIMAL.replace('    template: "hello {{ who }}"\n', ""), "a\n"),
    "W501 isolated step": (
        "W501",
        MINIMAL + "  - id: b\n    type: template\n    template: x\n",
        "b\n",
    ),
    "W502 unused output": (
        "W502",
        sub(
            "transitions:",
            "  - id: extra\n    type: template\n    depends_on: [generate]\n    template: x\ntransitions:",
        ),
        "extra",
    ),
    "W503 unknown inputs keyword": (
        "W503",
        sub("  required: [topic]", "  requird: [topic]"),
        "requird",
    ),
    "W504 timeout on a template step": (
        "W504",
        MINIMAL.replace("    template:", "    timeout: 5s\n    template:"),
        "5s",
    ),
    "W507 a remote model litellm does not list": (
        "W507",
        sub("    type: critique\n", "    type: critique\n    model: openai/gpt-4o-mnii\n"),
        "openai/gpt-4o-mnii",
    ),
    "W508 an anchor defined twice": (
        "W508",
        MINIMAL.replace("id: mini\n", "id: mini\nmetadata: {a: &t x, b: &t y}\n"),
        "&t y",
    ),
    "W505 reading a step a condition may skip": (
        "W505",
        MINIMAL + "  - {id: b, type: template, template: x}\n"
        "transitions:\n  - {type: conditional, from: a, to: b, when: input.x}\n"
        'output: {t: "{{ steps.b.output.text }}"}\n',
        "steps.b.output.text",
    ),
    "E116 dangling $ref": (
        "E116",
        sub("topic: {type: string", "topic: {$ref: '#/nope', type: string"),
        "'#/nope'",
    ),
    "E301 unknown filter": (
        "E301",
        sub('"{{ input.topic }}"', '"{{ input.topic | nosuchfilter }}"'),
        "nosuchfilter",
    ),
    "E301 condition mixing text and {{ }}": (
        "E301",
        sub(
            "  - {type: sequential, from: generate, to: critique}",
            "  - {type: conditional, from: generate, to: critique, when: 'v: {{ 1 }}'}",
        ),
        "'v: {{",
    ),
    "E303 loops count before its loop ran": (
        "E303",
        sub('{topic: "{{ input.topic }}"}', '{topic: "{{ loops.critique.revisions }}"}'),
        'loops.critique.revisions }}"}',
    ),
    "E302 unknown loops field": (
        "E302",
        sub('"{{ loops.critique.revisions }}"', '"{{ loops.critique.nope }}"'),
        "loops.critique.nope",
    ),
    "E207 validator never revises": (
        "E207",
        sub("validator: critique, reviser", "validator: generate, reviser"),
        "generate, reviser",
    ),
    "E114 timeout 0": ("E114", sub("timeout: 120s", "timeout: 0s"), "0s\n"),
    "E114 initial_delay over max_delay": (
        "E114",
        sub("initial_delay: 1s", "initial_delay: 20s"),
        "20s",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_code_is_reported_at_its_node(name: str) -> None:
    code, text, needle, *nth = CASES[name]
    diags = diagnose(text)
    hits = [d for d in diags if d.code == code]
    assert hits, f"{name}: expected {code}, got {[str(d) for d in diags]}"
    where = (1, 1) if needle is None else located(text, needle, *nth)
    assert where in [(d.location.line, d.location.col) for d in hits], [str(d) for d in hits]
    assert hits[0].location.file == "w.yaml"
    assert "\n" not in hits[0].message
    if code.startswith("W"):
        assert hits[0].severity == "warning"
        assert not any(d.severity == "error" for d in diags), [str(d) for d in diags]


def test_codes_cover_the_documented_table() -> None:
    covered = {c[0] for c in CASES.values()}
    for code in ("E102", "E206"):
        covered.add(code)  # tested below: they need a file or a large workflow
    documented = (ROOT / "eclflow" / "spec" / "checks.py").read_text() + (
        ROOT / "eclflow" / "spec" / "loader.py"
    ).read_text()
    import re

    for code in set(re.findall(r"\b([EW][1-5]\d\d)\b", documented)):
        assert code in covered, f"{code} has no test"


def test_did_you_mean_hints() -> None:
    d = next(d for d in diagnose(CASES["E203 unknown transition endpoint"][1]) if d.code == "E203")
    assert str(d) == (
        f"w.yaml:{d.location.line}:{d.location.col}: E203 unknown step 'critque' in "
        "transitions[0].to (did you mean 'critique'?)"
    )
    d = next(d for d in diagnose(CASES["E202 unknown type"][1]) if d.code == "E202")
    assert d.hint == "did you mean 'critique'?"
    d = next(d for d in diagnose(CASES["E111 unknown key"][1]) if d.code == "E111")
    assert d.hint == "did you mean 'depends_on'?"


def test_an_unknown_local_model_names_the_known_ones() -> None:
    """`model: local/nonexistent` was valid to `eclflow validate`, and every run of the file
    refused it before its first step."""
    d = next(d for d in diagnose(CASES["E211 unknown local model"][1]) if d.code == "E211")
    assert str(d) == (
        f"w.yaml:{d.location.line}:{d.location.col}: E211 unknown local model "
        "'local/nonexistent' (use local/smollm2, or local/PATH.gguf for a GGUF file)"
    )
    d = next(d for d in diagnose(CASES["E211 unknown local model of a step"][1]))
    assert d.hint == "did you mean 'local/smollm2'?"
    # a GGUF file is known by its name (where it is depends on the run's working directory)
    for model in ("local/models/tiny.GGUF", "local/smollm2"):
        assert diagnose(sub("model: local/smollm2", f"model: {model}")) == [], model


def test_a_remote_model_litellm_does_not_list_is_a_warning_with_the_close_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`model: openai/gpt-4o-mnii` was valid to `eclflow validate`; a run failed at the first
    step calling it, after paying for the steps before it."""
    monkeypatch.delenv("ECLFLOW_API_BASE", raising=False)
    text = sub("model: local/smollm2", "model: openai/gpt-4o-mnii")
    (d,) = diagnose(text)
    assert (d.location.line, d.location.col) == located(text, "openai/gpt-4o-mnii")
    assert (d.code, d.severity, d.message, d.hint) == (
        "W507",
        "warning",
        f"model 'openai/gpt-4o-mnii' is not in the model list of litellm {version('litellm')}",
        "did you mean 'openai/gpt-4o-mini'?",
    )
    # in `defaults`, without a provider (litellm finds its provider in the list only)
    text = sub("  timeout: 120s\n", "  timeout: 120s\n  model: gpt-4o-mnii\n")
    (d,) = diagnose(text)
    assert (d.code, d.hint) == ("W507", "did you mean 'gpt-4o-mini'?")
    assert (d.location.line, d.location.col) == located(text, "gpt-4o-mnii")
    (d,) = diagnose(sub("model: local/smollm2", "model: anthropic/claude-nonesuch-9"))
    assert d.code == "W507" and "ECLFLOW_API_BASE" in (d.hint or "")
    # listed; a provider whose names are open-ended (a server's, a deployment's); fine-tuned
    for model in (
        "openai/gpt-4o-mini",
        "gpt-4o",
        "anthropic/claude-haiku-4-5",
        "mistral/mistral-large-latest",
        "ollama/llama3:8b",
        "hosted_vllm/my-org/my-model",
        "openrouter/some/new-model",
        "azure/my-deployment",
        "bedrock/arn:aws:bedrock:us-east-1:1:custom-model/x",
        "openai/ft:gpt-4o-mini-2024-07-18:org::abc123",
        "mock/x",
    ):
        assert diagnose(sub("model: local/smollm2", f'model: "{model}"')) == [], model
    # every remote call goes to a server of one's own: its names are its own
    monkeypatch.setenv("ECLFLOW_API_BASE", "http://127.0.0.1:8000/v1")
    assert diagnose(sub("model: local/smollm2", "model: openai/my-finetune")) == []


@pytest.mark.parametrize(
    ("setting", "model"),
    [
        ("OPENAI_BASE_URL", "openai/Qwen/Qwen2.5-7B-Instruct"),
        ("OPENAI_API_BASE", "openai/my-finetune"),
        ("ANTHROPIC_BASE_URL", "anthropic/kimi-k2"),
        ("GEMINI_API_BASE", "gemini/my-gemma"),
    ],
)
def test_a_model_sent_to_the_providers_own_base_url_is_not_judged(
    monkeypatch: pytest.MonkeyPatch, setting: str, model: str
) -> None:
    """litellm sends a provider's calls to the server its base-URL variable names (vLLM or LM
    Studio behind OPENAI_BASE_URL, a proxy behind ANTHROPIC_BASE_URL), whose model names are
    its own: validate warned W507 about them (an error with --strict) although a run works."""
    from eclflow.llm.names import PROVIDER_BASE_ENVS

    for name in ("ECLFLOW_API_BASE", *(n for ns in PROVIDER_BASE_ENVS.values() for n in ns)):
        monkeypatch.delenv(name, raising=False)
    text = sub("model: local/smollm2", f"model: {model}")
    assert [d.code for d in diagnose(text)] == ["W507"]
    monkeypatch.setenv(setting, "http://127.0.0.1:8000/v1")
    assert diagnose(text) == []
    # (another provider's names are still judged)
    (d,) = diagnose(sub("model: local/smollm2", "model: mistral/mistral-nonesuch-9"))
    assert d.code == "W507"


def test_all_problems_in_one_pass() -> None:
    text = sub("to: critique}", "to: critque}")
    text = sub('"{{ input.topic }}"', '"{{ env.HOME }}"', text)
    text = sub("    type: critique\n", "    type: critic\n", text)
    codes = sorted(d.code for d in diagnose(text))
    assert codes == ["E202", "E203", "E305"]
    # schema errors too are all collected
    text = sub("on_exhausted: fail", "on_exhausted: retry")
    text = sub("timeout: 120s", "timeout: soon", text)
    text = sub("    depends_on: [generate]\n", "    depend_on: [generate]\n", text)
    assert sorted(d.code for d in diagnose(text)) == ["E111", "E113", "E113"]


def test_unknown_keys_do_not_hide_the_other_problems() -> None:
    """A typo'd key is the commonest mistake: the rest of the file is still checked, so that
    one pass shows everything (a required key's problems still stop there: the file's shape
    is unknown)."""
    text = """\
eclflow: 1
id: x
model: mock/x
steps:
  - {id: a, type: llm, template: "hi", timeot: 5s}
  - {id: b, type: generat, depends_on: [nosuch], with: {topic: x}}
  - {id: c, type: llm, prompt: missing.j2, depends_on: [a], colour: red}
output: {o: "{{ steps.a.output.txt }}"}
"""
    got = [(d.code, d.location.line) for d in diagnose(text)]
    assert got == [
        ("E111", 5), ("E202", 6), ("E203", 6), ("E401", 7), ("E111", 7),
    ]  # fmt: skip
    # what the misspelt key itself made wrong is not reported (here: no output_schema, so
    # `long` and `decision` look unknown); the E111 and its "did you mean" say it
    text = LLM_LOOP.replace("output_schema: %s", "output_schem: %s") % (
        "{type: object, properties: {decision: {type: string}}}"
    )
    assert [d.code for d in diagnose(text)] == ["E111"]


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        ("  - id: revise", "  - id: critique", "E201"),
        ("depends_on: [generate]", "depends_on: [generate, revise]", "E204"),
    ],
)
def test_a_missing_prompt_file_is_reported_beside_duplicate_ids_and_cycles(
    old: str, new: str, code: str
) -> None:
    text = sub(old, new, sub("prompt: generate.j2", "prompt: gone.j2"))
    assert {code, "E401"} <= {d.code for d in diagnose(text)}


def test_too_many_steps() -> None:
    steps = "".join(
        f"  - {{id: s{i}, type: template, template: x{f', depends_on: [s{i - 1}]' if i else ''}}}\n"
        for i in range(1001)
    )
    diags = diagnose("eclflow: 1\nid: big\nsteps:\n" + steps)
    assert [d.code for d in diags if d.severity == "error"] == ["E206"]
    assert (diags[0].location.line, diags[0].location.col) == (4, 3)


def test_file_problems(tmp_path: Path) -> None:
    assert [d.code for d in check(tmp_path)[1]] == ["E102"]
    assert "directory" in check(tmp_path)[1][0].message
    assert [d.code for d in check(tmp_path / "nope.yaml")[1]] == ["E102"]
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"eclflow: 1\n\xff\xfe\x00binary")
    assert [(d.code, d.location.line) for d in check(junk)[1]] == [("E102", 2)]
    huge = tmp_path / "huge.yaml"
    huge.write_text("a: " + "x" * (10 * 1024 * 1024))
    assert [d.code for d in check(huge)[1]] == ["E102"]


def test_bundled_workflow_model() -> None:
    wf = load(CRITIQUE_REVISE)
    assert wf.id == "critique-revise"
    assert wf.step_ids == ("generate", "critique", "revise")
    assert wf.model == "local/smollm2"
    assert wf.step("generate").prompt == (ROOT / "templates" / "generate.j2").resolve()
    assert wf.step("critique").retry.max_delay == 10.0
    assert wf.step("critique").timeout == 120.0
    assert wf.transitions[0] == Sequential("generate", "critique", wf.transitions[0].location)
    loop = wf.transitions[1]
    assert isinstance(loop, RevisionLoop)
    assert (loop.validator, loop.reviser, loop.target, loop.max_iterations) == (
        "critique",
        "revise",
        "generate",
        3,
    )
    assert loop.on_exhausted == "fail"
    assert wf.warnings == ()
    with pytest.raises(TypeError):
        wf.step("generate").with_["topic"] = "x"  # type: ignore[index]
    assert len(wf.sha256) == 64 and wf.source == BASE


def test_defaults_and_durations() -> None:
    text = """\
eclflow: 1
id: d
defaults: {retry: {max_attempts: 5, initial_delay: 500ms}, timeout: 2m}
steps:
  - {id: a, type: template, template: x}
  - {id: b, type: template, template: y, depends_on: [a], timeout: 1.5, retry: {max_attempts: 1}}
transitions:
  - {type: conditional, from: a, to: b, when: "steps.a.output.text == 'x'"}
"""
    wf = load_text(text)
    a, b = wf.steps
    assert (a.retry.max_attempts, a.retry.initial_delay, a.timeout) == (5, 0.5, 120.0)
    assert (b.retry.max_attempts, b.retry.initial_delay, b.timeout) == (1, 0.5, 1.5)
    assert isinstance(wf.transitions[0], Conditional)
    assert [parse_duration(v) for v in ("1.5s", "500ms", "2m", 3, "1h", "7")] == [
        1.5,
        0.5,
        120.0,
        3.0,
        3600.0,
        7.0,
    ]


def test_numbers_that_are_not_finite_are_refused_where_they_are_written() -> None:
    """`.nan` passed the schema's `minimum: 0` and a retry delay of it hung the run; `.inf`
    delays and timeouts never end. Each is E114 at its value, once (the schema's own error
    for `-.inf` is not repeated)."""
    text = """\
eclflow: 1
id: nanwf
defaults: {retry: {max_attempts: 2, initial_delay: .nan, max_delay: .inf}}
budget: {max_usd: .inf}
steps:
  - {id: a, type: template, template: hi, timeout: .nan, config: {t: .nan}}
  - {id: b, type: template, template: hi, retry: {initial_delay: -.inf}}
"""
    with pytest.raises(WorkflowInvalid) as e:
        load_text(text, file="n.yaml")
    got = [(d.location.line, d.location.col, d.code) for d in e.value.diagnostics]
    assert sorted(got) == [
        (3, 52, "E114"),
        (3, 69, "E114"),
        (4, 19, "E114"),
        (6, 52, "E114"),
        (6, 70, "E114"),
        (7, 66, "E113"),
    ]
    assert "defaults.retry.initial_delay is nan; numbers in a workflow must be finite" in str(
        e.value
    )
    for bad in (float("nan"), float("inf"), "9" * 400 + "s"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_a_lone_surrogate_is_refused_where_it_is_written() -> None:
    """ "\\ud800" passed validate; the run then failed printing its output, or with a journal
    lost the run (its row could not be written)."""
    text = 'eclflow: 1\nid: s\nsteps:\n  - {id: a, type: template, template: "sur[\\ud800]"}\n'
    (d,) = diagnose(text)
    assert (d.code, d.location.line, d.location.col) == ("E113", 4, 39), str(d)
    assert "half of a surrogate pair" in d.message


def test_template_problems_are_located_in_the_template(tmp_path: Path) -> None:
    """An inline template's problems were all reported at its `|`; a prompt file's E302 named
    no line of the file (then only its line, at the workflow's `prompt:`): it is located in the
    file, at the use, as its E306 is."""
    text = (
        "eclflow: 1\nid: loc\nsteps:\n  - id: a\n    type: template\n    template: |\n"
        "      line one {{ x }}\n      line two {{ nope }}\n    with: {x: 1}\n"
        "  - id: b\n    type: template\n    template: |\n      one\n      {{ x | nofilter }}\n"
        "  - id: c\n    type: template\n    template: |\n      one\n      {% if %}\n"
        "  - {id: d, type: template, prompt: p.j2, with: {x: 1}}\n"
    )
    (tmp_path / "p.j2").write_text("Line1\n{{ x }}\nhello {{ nme }}\n")
    got = [
        (
            Path(d.location.file).name,
            d.code,
            d.location.line,
            d.location.col,
            d.message.split(":")[0],
        )
        for d in diagnose(text, base_dir=tmp_path)
    ]
    assert got == [
        ("w.yaml", "E302", 8, 19, "prompt of step 'a' uses 'nope', which is not in its input"),
        ("w.yaml", "E301", 14, 14, "no filter named 'nofilter'"),
        ("w.yaml", "E301", 19, 7, "template does not parse"),
        ("p.j2", "E302", 3, 10, "prompt of step 'd' uses 'nme', which is not in its input"),
    ]


def test_an_unknown_filter_is_located_at_the_filter_not_in_a_string_or_the_text() -> None:
    """`{{ 'a | nofilter' | nofilter }}`: the E301 pointed into the string literal (and,
    in a prompt, at `| nofilter` in its own words), the first `| nofilter` on the line."""
    text = (
        "eclflow: 1\nid: quoted\nsteps:\n  - id: a\n    type: template\n"
        "    template: \"a | nofilter, {{ who }} {# | nofilter #}{{ 'b | nofilter' | nofilter }}\"\n"
        "    with: {who: \"{{ 'is nottest' is nottest }}\"}\n"
        "  - {id: b, type: template, template: x}\n"
        "transitions:\n"
        "  - {type: conditional, from: a, to: b, when: \"'x | nofilt' | nofilt\"}\n"
    )
    got = [(d.code, d.location.line, d.location.col, d.message) for d in diagnose(text)]
    assert got == [
        ("E301", *located(text, 'nofilter }}"'), "no filter named 'nofilter'"),
        ("E301", *located(text, "nottest }}"), "no test named 'nottest'"),
        ("E301", *located(text, 'nofilt"'), "no filter named 'nofilt'"),
    ], got


def test_a_prompt_reading_the_run_context_is_told_to_bind_it_under_with() -> None:
    """`template: "{{ input.q }}"` is the first prompt one writes; its E302 listed the prompt's
    own names (config, max_revisions) and did not say where `input.q` goes."""
    text = (
        "eclflow: 1\nid: ctx\nsteps:\n"
        '  - {id: a, type: llm, template: "Answer {{ input.q }}"}\n'
        '  - {id: b, type: llm, depends_on: [a], template: "{{ steps.a.output.text }}!"}\n'
    )
    hints = [(d.code, d.hint) for d in diagnose(text)]
    assert hints == [
        (
            "E302",
            "a prompt sees its step's `with:` values, not the run's context: bind it, "
            'with: {q: "{{ input.q }}"}, and write {{ q }}',
        ),
        (
            "E302",
            "a prompt sees its step's `with:` values, not the run's context: bind it, "
            'with: {text: "{{ steps.a.output.text }}"}, and write {{ text }}',
        ),
    ]


def test_a_value_the_schema_refuses_is_not_also_out_of_range() -> None:
    (d,) = diagnose(MINIMAL.replace("    template:", "    timeout: -1\n    template:"))
    assert d.code == "E113" and "timeout -1 is not a duration" in d.message


def test_load_raises_with_all_diagnostics() -> None:
    with pytest.raises(WorkflowInvalid) as e:
        load_text(sub("to: critique}", "to: critque}"), file="x.yaml", base_dir=ROOT / "workflows")
    assert "x.yaml:" in str(e.value) and "E203" in str(e.value)
    assert e.value.diagnostics[0].code == "E203"


def test_schema_is_shipped_and_matches_the_top_level_copy() -> None:
    s = schema()
    assert s["$schema"].endswith("2020-12/schema")
    top = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text())
    assert top == s
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(s)


def test_bundled_yaml_files_name_the_schema() -> None:
    files = [CRITIQUE_REVISE, *sorted((ROOT / "examples").rglob("*.yaml"))]
    for f in files:
        if f.parent.name == "mock":
            continue
        first = f.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), f
        target = (f.parent / first.split("$schema=", 1)[1].strip()).resolve()
        assert target.is_file(), f


# --- never an exception ---------------------------------------------------------------------

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        ["generate", "critique", "revise", "{{ input.topic }}", "{{ steps.", "1s", "llm", "{%"]
    ),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "type", "steps", "with", "to", "from", "eclflow", "x", "when"])
            | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(yaml_values)
def test_random_documents_give_diagnostics_only(value: object) -> None:
    import io

    from ruamel.yaml import YAML

    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(value, buf)
    wf, diags = check_text(buf.getvalue(), file="fuzz.yaml")
    assert wf is not None or any(d.severity == "error" for d in diags)
    for d in diags:
        assert d.location.line >= 1 and d.location.col >= 1
        assert d.code[0] in "EW"


@pytest.mark.parametrize(
    "old, new", [("- id: revise", "- id: evise"), ("reviser: revise", "reviser: evise")]
)
def test_a_revision_loop_whose_reviser_is_no_step_is_e203_not_a_crash(old: str, new: str) -> None:
    """A reviser named wrongly (or a reviser step renamed) was `E000 eclflow failed while
    checking this file: KeyError` (found by the mutation test below): the type of a field read
    from the loop's validator looked up the reviser's output."""
    _, diags = check_text(BASE.replace(old, new), file="m.yaml", base_dir=CRITIQUE_REVISE.parent)
    codes = [d.code for d in diags]
    assert "E203" in codes, diags
    assert "E000" not in codes, diags


@pytest.mark.parametrize(
    "step",
    [
        # a with: key that is null or a number, beside a prompt variable the step is not given
        '{id: a, type: llm, template: "{{ proposl }}", with: {null: x, 1: y, proposal: z}}',
        # an inputs property named 1, beside a misspelt input
        '{id: a, type: llm, template: "{{ t }}", with: {t: "{{ input.topc }}"}}',
    ],
)
def test_a_key_that_is_no_text_beside_a_wrong_name_gives_diagnostics(step: str) -> None:
    """YAML keys may be null or numbers: a "did you mean" among them was `E000 eclflow failed
    while checking this file: TypeError: '<' not supported between instances of 'NoneType'
    and 'str'` (sorted() of the names)."""
    text = (
        "eclflow: 1\nid: w\nmodel: mock/x\n"
        "inputs: {type: object, additionalProperties: false,\n"
        "  properties: {1: {type: string}, topic: {type: string}}}\n"
        f"steps:\n  - {step}\n"
    )
    _, diags = check_text(text, file="m.yaml", base_dir=CRITIQUE_REVISE.parent)
    codes = [d.code for d in diags]
    assert "E000" not in codes, diags
    assert any(d.severity == "error" for d in diags), diags


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_mutated_bundled_workflows_give_diagnostics_only(data: st.DataObject) -> None:
    sources = [BASE, *(p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml")))]
    text = data.draw(st.sampled_from(sources))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "swap_lines", "truncate"]))
        i = data.draw(st.integers(0, max(0, len(text) - 1)))
        if op == "delete":
            text = text[:i] + text[i + data.draw(st.integers(1, 20)) :]
        elif op == "insert":
            text = (
                text[:i] + data.draw(st.sampled_from(list(":-[]{}&*!|>'\"#\t\n {{}}%"))) + text[i:]
            )
        elif op == "replace":
            text = text[:i] + data.draw(st.text(max_size=5)) + text[i + 1 :]
        elif op == "truncate":
            text = text[:i]
        else:
            lines = text.split("\n")
            j, k = (
                data.draw(st.integers(0, len(lines) - 1)),
                data.draw(st.integers(0, len(lines) - 1)),
            )
            lines[j], lines[k] = lines[k], lines[j]
            text = "\n".join(lines)
    wf, diags = check_text(text, file="m.yaml", base_dir=CRITIQUE_REVISE.parent)
    assert wf is not None or any(d.severity == "error" for d in diags)


# --- the command -----------------------------------------------------------------------------


def run_cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `eclflow`, outside GitHub Actions' job summary unless `env` names one."""
    base = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    return subprocess.run(
        [sys.executable, "-m", "eclflow", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
    )


def test_validate_bundled_files() -> None:
    examples = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.yaml"))
    r = run_cli("validate", "workflows/critique_revise.yaml", *examples)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "at most 24 model calls per run" in r.stdout
    n = 1 + len(examples)
    assert r.stdout.strip().splitlines()[-1].startswith(f"{n} file{'s' * (n != 1)}: {n} valid")


def test_validate_reports_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(sub("to: critique}", "to: critque}"))
    r = run_cli("validate", str(bad))
    assert r.returncode == 1
    line, col = located(bad.read_text(), "critque")
    assert f"{bad}:{line}:{col}: E203 unknown step 'critque'" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    r = run_cli("validate", "--format", "json", str(bad))
    out = json.loads(r.stdout)
    assert out["valid"] is False
    assert out["files"][0]["diagnostics"][0]["code"] == "E203"
    # --json, as the other commands spell it
    assert json.loads(run_cli("validate", "--json", str(bad)).stdout) == out


def test_validate_checks_the_workflow_files_under_a_directory(tmp_path: Path) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.yaml").write_text(MINIMAL)
    (tmp_path / "deep" / "er" / "a.yml").write_text(sub("to: critique}", "to: critque}"))
    (tmp_path / ".hidden" / "c.yaml").write_text(MINIMAL.replace("{{ who }}", "{{ who"))
    (tmp_path / "mock.yaml").write_text("- hello\n- {error: rate_limit}\n")  # not a workflow
    (tmp_path / "notes.txt").write_text(MINIMAL)
    (tmp_path / "deep" / "up").symlink_to(tmp_path)  # a loop: followed once, not forever
    (tmp_path / "deep" / "out").symlink_to(ROOT / "workflows")  # out of the tree: not followed
    os.mkfifo(tmp_path / "pipe.yaml")  # reading it would wait forever
    # what the loader takes is a workflow here too: after a byte order mark, a quoted key
    (tmp_path / "bom.yaml").write_text("\ufeff" + MINIMAL.replace("hello {{ who }}", "{{ x }"))
    (tmp_path / "quoted.yaml").write_text(MINIMAL.replace("eclflow: 1", '"eclflow": 1'))
    r = run_cli("validate", str(tmp_path))
    assert r.returncode == 1
    line, col = located(sub("to: critique}", "to: critque}"), "critque}")
    out = r.stdout.splitlines()
    assert out[0] == (
        f"{tmp_path / 'b.yaml'}: valid: 1 step, 0 revision loops, at most 0 model calls per run"
        ", at most $0.0000"
    )
    assert out[1].startswith(f"{tmp_path / 'bom.yaml'}:6:") and " E301 " in out[1]
    assert out[2:] == [  # (a directory's files, then those of its directories)
        f"{tmp_path / 'quoted.yaml'}: valid: 1 step, 0 revision loops, at most 0 model calls per "
        "run, at most $0.0000",
        f"{tmp_path / 'deep/er/a.yml'}:{line}:{col}: E203 unknown step 'critque' in "
        "transitions[0].to (did you mean 'critique'?)",
        "4 files: 2 valid, 2 invalid (2 errors, 0 warnings); 1 YAML file without a top-level "
        "`eclflow:` key skipped",
    ]
    (tmp_path / "none").mkdir()
    r = run_cli("validate", str(tmp_path / "b.yaml"), str(tmp_path / "none"))
    assert r.returncode == 2
    assert r.stdout.splitlines()[1:] == [
        f"{tmp_path / 'none'}:1:1: E102 holds no workflow file (a .yaml or .yml file with a "
        "top-level `eclflow:` key)",
        "2 files: 1 valid, 1 invalid (1 error, 0 warnings)",
    ]


def test_validate_says_which_directory_it_could_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eclflow.cli import validate

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "w.yaml").write_text(MINIMAL.replace("{{ who }}", "{{ who"))
    (tmp_path / "ok.yaml").write_text(MINIMAL)
    scandir = os.scandir

    def refusing(path: object) -> object:  # as for a directory without read permission
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refusing)
    found = validate._expand((tmp_path,))
    assert found.files == [tmp_path / "ok.yaml", tmp_path / "locked"]
    # its own problem (the run's exit code is then 1: not a pass, what it holds went unchecked)
    assert found.problems == {tmp_path / "locked": "cannot be read: Permission denied"}


def test_validate_annotates_for_github_actions(tmp_path: Path) -> None:
    bad = tmp_path / "a,b:c.yaml"  # the separators of an annotation's properties
    bad.write_text(sub("to: critique}", "to: critque}"))
    odd = tmp_path / "odd.yaml"
    odd.write_text(MINIMAL + "    timeout: 5%s\n")  # `%` starts an escape in an annotation
    lone = tmp_path / "lone.yaml"
    lone.write_text(MINIMAL + "    timeout: 5s\n")  # W504: a template step waits on nothing
    summary = tmp_path / "summary.md"  # the job's summary, as GitHub Actions names it
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    r = run_cli("validate", "--format", "github", str(bad), str(odd), str(lone), env=env)
    assert r.returncode == 1
    line, col = located(bad.read_text(), "critque")
    file = str(bad).replace(",", "%2C").replace(":", "%3A")
    # annotations only: the `valid` line of a file and the counts were printed among them
    annotations = [
        f"::error file={file},line={line},col={col},title=eclflow E203::"
        "unknown step 'critque' in transitions[0].to (did you mean 'critique'?)",
        f"::error file={odd},line=8,col=14,title=eclflow E113::"
        'steps[0].timeout "5%25s" is not a duration (write seconds (30), or 500ms, 1.5s, 2m, 1h)',
        f"::warning file={lone},line=8,col=14,title=eclflow W504::steps.a.timeout bounds "
        "nothing: a template step waits on nothing, so it runs without a timer (leave it out)",
    ]
    assert r.stdout.splitlines() == annotations
    assert r.stderr == ""
    assert summary.read_text() == (
        "eclflow validate: 3 files: 1 valid, 2 invalid (2 errors, 1 warning)\n"
    )
    # --strict: the warning fails the check, and is annotated as the error it now is
    r = run_cli("validate", "--format", "github", "--strict", str(lone), env=env)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [annotations[2].replace("::warning", "::error", 1)]
    # each check's counts a paragraph of its own (lines in a row are one in Markdown: the two
    # checks of a step read as one sentence)
    assert summary.read_text() == (
        "eclflow validate: 3 files: 1 valid, 2 invalid (2 errors, 1 warning)\n"
        "\n"
        "eclflow validate: 1 file: 0 valid, 1 invalid (0 errors, 1 warning)\n"
    )
    # outside GitHub Actions: the annotations (none here), no summary anywhere
    ok = tmp_path / "ok.yaml"
    ok.write_text(MINIMAL)
    r = run_cli("validate", "--format", "github", str(ok))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # a summary file that cannot be written: said in one line; the check's result stands
    gone = tmp_path / "no" / "summary.md"
    r = run_cli("validate", "--format", "github", str(ok), env={"GITHUB_STEP_SUMMARY": str(gone)})
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == (
        f"warning: cannot add to the job summary $GITHUB_STEP_SUMMARY ({gone}): "
        "No such file or directory\n"
    )
    # a summary that is a pipe (/dev/stderr, to see it outside GitHub Actions): written to,
    # as a file is, though where it ends cannot be told
    r = run_cli(
        "validate", "--format", "github", str(ok), env={"GITHUB_STEP_SUMMARY": "/dev/stderr"}
    )
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr == "eclflow validate: 1 file: 1 valid, 0 invalid (0 errors, 0 warnings)\n"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x01\x02\xff" * 100,
        b"a: &a [*a]\n",
        b"[" * 10000,
        b"- - - - -",
        b"key: [unclosed",
    ],
)
def test_validate_never_prints_a_traceback(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "w.yaml"
    f.write_bytes(content)
    r = run_cli("validate", str(f))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"{f}:" in r.stdout


def test_validate_usage_errors(tmp_path: Path) -> None:
    assert run_cli("validate").returncode == 2
    r = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "no such file" in r.stdout
    r = run_cli("validate", str(tmp_path))
    assert r.returncode == 2 and f"{tmp_path}:1:1: E102 holds no workflow file" in r.stdout


def test_validate_checks_its_model_option_as_a_workflows_model(tmp_path: Path) -> None:
    """`validate --model local/typo` priced nothing and said nothing; `--model
    openai/gpt-4o-mnii` said only that the cost was unknown."""
    r = run_cli("validate", "--model", "local/smolm2", str(CRITIQUE_REVISE))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        "Invalid value for '--model' / '-m': unknown local model 'local/smolm2' (did you mean "
        "'local/smollm2'?)" in r.stderr
    )
    assert "Traceback" not in r.stderr
    said = (
        f"--model: W507 model 'openai/gpt-4o-mnii' is not in the model list of litellm "
        f"{version('litellm')} (did you mean 'openai/gpt-4o-mini'?)"
    )
    r = run_cli("validate", "--model", "openai/gpt-4o-mnii", str(CRITIQUE_REVISE))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == said
    assert lines[-1] == "1 file: 1 valid, 0 invalid (0 errors, 0 warnings); --model: 1 warning"
    r = run_cli("validate", "--strict", "--model", "openai/gpt-4o-mnii", str(CRITIQUE_REVISE))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].endswith("; --model: 1 warning (an error: --strict)")
    r = run_cli("validate", "--json", "--model", "openai/gpt-4o-mnii", str(CRITIQUE_REVISE))
    out = json.loads(r.stdout)
    assert out["valid"] is True and out["model"]["code"] == "W507"
    assert out["model"]["hint"] == "did you mean 'openai/gpt-4o-mini'?"
    r = run_cli("validate", "--model", "openai/gpt-4o-mini", str(CRITIQUE_REVISE))
    assert r.returncode == 0 and "W507" not in r.stdout


def test_validate_refuses_a_model_option_run_refuses(tmp_path: Path) -> None:
    """`validate --model` with a control character said the file valid, priced with that
    model, while `run --model` with it is refused ('has a control character'), as a
    workflow's `model:` with one is (E113)."""
    r = run_cli("validate", "--model", "mock/x\t", str(CRITIQUE_REVISE))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[-1] == (
        "error: Invalid value for '--model' / '-m': model \"mock/x\\t\" has a control "
        "character (U+0009) (see python -m eclflow validate --help)"
    )
    assert r.stdout == ""


def test_validate_does_not_import_heavy_modules() -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "eclflow", "validate", str(CRITIQUE_REVISE)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()}
    assert "eclflow" in imported
    for heavy in ("litellm", "peewee", "openai", "llama_cpp", "rich", "httpx", "networkx"):
        assert heavy not in imported, heavy
    # (nor asyncio, ssl and socket: ~15 ms of the ~170 a validate takes, for nothing)
    assert "asyncio" not in imported


# --- the dependency graph ----------------------------------------------------------------------


def _graph(nodes: str, edges: str) -> DepGraph:
    g = DepGraph()
    for n in nodes.split():
        g.add_node(n)
    for e in edges.split():
        a, b = e.split(">")
        g.add_edge(a, b, kind="depends_on")
    return g


def test_order_breaks_ties_by_declaration() -> None:
    # c is free from the start but declared last: it comes after b, which a unblocks
    g = _graph("a b c d", "a>b b>d c>d")
    assert g.order() == ["a", "b", "c", "d"]
    assert g.order(["b", "c", "d"]) == ["b", "c", "d"]
    assert g.generations(["a", "b", "c", "d"]) == [["a", "c"], ["b"], ["d"]]


def test_reachability() -> None:
    g = _graph("a b c d", "a>b b>c")
    assert g.descendants("a") == {"b", "c"}
    assert g.ancestors("c") == {"a", "b"}
    assert g.has_path("a", "c") and not g.has_path("c", "a") and not g.has_path("a", "d")


def test_cycles_one_per_strongly_connected_part() -> None:
    g = _graph("a b c d e f", "a>b b>c c>b c>a d>e e>d e>f")
    assert g.cycles() == [["b", "c"], ["d", "e"]]  # c -> b comes before c -> a
    with pytest.raises(CycleError):
        g.order()
    assert _graph("a b", "a>b").cycles() == []
    assert _graph("a", "a>a").cycles() == [["a"]]


def test_two_cycles_are_two_diagnostics() -> None:
    text = """\
eclflow: 1
id: two-cycles
model: mock/x
inputs: {type: object}
steps:
  - {id: a, type: template, template: "x", depends_on: [b]}
  - {id: b, type: template, template: "x", depends_on: [a]}
  - {id: c, type: template, template: "x", depends_on: [d]}
  - {id: d, type: template, template: "x", depends_on: [c]}
"""
    cycles = [d for d in diagnose(text) if d.code == "E204"]
    assert [d.message for d in cycles] == ["cycle a -> b -> a", "cycle c -> d -> c"]
    assert [d.location.line for d in cycles] == [6, 8]  # where the closing edge is declared


# --- audit: odd values the schema and the loader must turn into one located line ----------------


def test_step_config_is_checked_where_the_engine_reads_it() -> None:
    text = MINIMAL.replace(
        "    with:",
        "    config: {max_tokens: lots, temperature: hot, stop: 3, max_chars: 0}\n    with:",
    )
    diags = diagnose(text)
    got = {(d.code, d.message) for d in diags}
    assert ("E112", "steps[0].config.max_tokens must be an integer, not a string") in got
    assert ("E112", "steps[0].config.temperature must be a number or null, not a string") in got
    assert ("E112", "steps[0].config.stop must be a string or list, not a number") in got
    assert ("E114", "steps[0].config.max_chars is 0; it must be at least 1") in got
    assert located(text, "lots") in [(d.location.line, d.location.col) for d in diags]
    text = MINIMAL.replace("    with:", "    config: {max_tokens: null, temperature: 3}\n    with:")
    assert sorted(d.message for d in diagnose(text)) == [
        "steps[0].config.max_tokens must be an integer, not null",
        "steps[0].config.temperature is 3; it must be at most 2",
    ]
    # what a plugin type reads is its own business
    ok = MINIMAL.replace("    with:", "    config: {max_tokens: 5, stop: END, words: 3}\n    with:")
    assert diagnose(ok) == []


def test_messages_say_what_to_write() -> None:
    def messages(text: str) -> list[str]:
        return [f"{d.code} {d.message}{f' ({d.hint})' if d.hint else ''}" for d in diagnose(text)]

    budget = MINIMAL.replace(
        "steps:", "budget: {max_usd: 0, max_tokens: 1.5, max_calls: -1, max_dollars: 3}\nsteps:"
    )
    assert messages(budget) == [
        "E114 budget.max_usd is 0; it must be greater than 0",
        "E112 budget.max_tokens must be a whole number, not 1.5",
        "E114 budget.max_calls is -1; it must be at least 1",
        "E111 unknown key 'max_dollars' in budget (did you mean 'max_usd'?)",
    ]
    assert messages("eclflow: 1\nid: x\nsteps:\n") == ["E112 steps must be a list, not null"]
    long_id = MINIMAL.replace("id: mini", "id: " + "x" * 130)
    assert messages(long_id) == ["E114 id is too long (130 characters; at most 128)"]


def test_null_and_scalar_steps_are_one_type_error_each() -> None:
    text = "eclflow: 1\nid: x\nsteps:\n  - null\n  - a\n"
    assert [(d.code, d.location.line, d.message) for d in diagnose(text)] == [
        ("E112", 4, "steps[0] must be a mapping, not null"),
        ("E112", 5, "steps[1] must be a mapping, not a string"),
    ]


def test_an_empty_value_is_located_at_its_key_not_past_the_end() -> None:
    for text, needle in [
        ("eclflow: 1\nid: x\nsteps:\n", "steps:"),
        (MINIMAL + "defaults:\n", "defaults:"),
    ]:
        (d,) = diagnose(text)
        assert (d.location.line, d.location.col) == located(text, needle), str(d)


def test_an_unclosed_quote_is_reported_where_it_opens() -> None:
    text = 'eclflow: 1\nid: "x\nsteps:\n  - {id: a, type: llm, template: hi}\n'
    (d,) = diagnose(text)
    assert d.code == "E100" and (d.location.line, d.location.col) == (2, 5), str(d)
    assert "quoted scalar" in d.message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("eclflow: 1\nid: s\nsteps: [{id: a, type: template\n", (3, 9)),  # at the end
        ("eclflow: 1\nid: s\nsteps: [{id: a, type: template, template: x}\nmodel: x\n", (3, 8)),
        ("eclflow: 1\nid: s\nsteps: [{id: a type: template}]\n", (3, 20)),  # a comma, here
    ],
)
def test_an_unclosed_bracket_is_reported_where_it_opens(text: str, where: tuple[int, int]) -> None:
    """(It was reported where the parser noticed: the end of the file, or the next key.)"""
    (d,) = diagnose(text)
    assert d.code == "E100" and (d.location.line, d.location.col) == where, str(d)


def test_prompt_paths_the_system_refuses_are_e401(tmp_path: Path) -> None:
    for prompt in ("~nosuchuser_eclflow/p.j2", "a" * 300 + ".j2", "a\0b.j2"):
        text = MINIMAL.replace('template: "hello {{ who }}"', f"prompt: {json.dumps(prompt)}")
        text = text.replace("type: template", "type: llm")
        assert [d.code for d in diagnose(text, tmp_path)] == ["E401"], prompt


def test_a_lone_surrogate_is_printed_escaped(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(MINIMAL + '"\\ud800": 1\n')
    r = run_cli("validate", str(f))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "E111 unknown key '\\ud800'" in r.stdout


def test_validate_goes_on_past_bad_files_and_json_stays_whole(tmp_path: Path) -> None:
    files = []
    for name, body in {
        "tokens.yaml": MINIMAL.replace("    with:", "    config: {max_tokens: lots}\n    with:"),
        "tilde.yaml": "eclflow: 1\nid: x\nsteps:\n  - {id: a, type: llm, prompt: ~nosuchuser_x/p}\n",
        "surrogate.yaml": MINIMAL + '"\\ud800": 1\n',
        "good.yaml": MINIMAL,
    }.items():
        (tmp_path / name).write_text(body)
        files.append(str(tmp_path / name))
    r = run_cli("validate", *files)
    assert r.returncode == 1 and r.stderr == "", r.stderr
    assert "4 files: 1 valid, 3 invalid" in r.stdout
    r = run_cli("validate", "--format", "json", *files)
    assert r.returncode == 1 and r.stderr == "", r.stderr
    out = json.loads(r.stdout)
    assert [f["valid"] for f in out["files"]] == [False, False, False, True]


def test_a_bug_while_checking_one_file_is_one_line_for_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    import eclflow.spec
    from eclflow.cli import cli

    real = eclflow.spec.check

    def flaky(path: Path) -> object:
        if path.name == "boom.yaml":
            raise RuntimeError("boom\ninside")
        return real(path)

    monkeypatch.setattr(eclflow.spec, "check", flaky)
    (tmp_path / "boom.yaml").write_text(MINIMAL)
    (tmp_path / "ok.yaml").write_text(MINIMAL)
    args = [str(tmp_path / "boom.yaml"), str(tmp_path / "ok.yaml")]
    r = CliRunner().invoke(cli, ["validate", "--format", "json", *args])
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    (d,) = out["files"][0]["diagnostics"]
    assert d["code"] == "E000" and d["message"].endswith("RuntimeError: boom inside")
    assert out["files"][1]["valid"] is True


def test_an_unreadable_file_is_e102_and_the_others_are_checked(tmp_path: Path) -> None:
    import shutil

    f = tmp_path / "secret.yaml"
    f.write_text(MINIMAL)
    f.chmod(0)
    (tmp_path / "ok.yaml").write_text(MINIMAL)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    r = subprocess.run(
        [*prefix, sys.executable, "-m", "eclflow", "validate", str(f), str(tmp_path / "ok.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{f}:1:1: E102 cannot read the file" in r.stdout
    assert "2 files: 1 valid, 1 invalid" in r.stdout


def test_unknown_filters_and_tests_everywhere_a_template_is(tmp_path: Path) -> None:
    (tmp_path / "p.j2").write_text("line one\n{{ topic | upperr }}\n")
    text = """\
eclflow: 1
id: f
steps:
  - {id: a, type: template, template: "{{ x | nosuch }}", with: {x: "{{ input.t }}"}}
  - {id: b, type: generate, prompt: p.j2, with: {topic: x}, depends_on: [a]}
  - id: c
    type: template
    template: hi
    depends_on: [a]
    with: {w: "{% if input.t is nosuchtest %}a{% endif %}"}
transitions:
  - {type: conditional, from: a, to: c, when: "steps.a.output.text | nosuch2"}
output: {r: "{{ steps.c.output.text | lenght }}"}
"""
    got = [(d.code, d.message, d.hint) for d in diagnose(text, tmp_path)]
    assert got == [
        ("E301", "no filter named 'nosuch'", "see Jinja's built-in filters"),
        ("E301", "no test named 'nosuchtest'", "see Jinja's built-in tests"),
        ("E301", "no filter named 'nosuch2'", "see Jinja's built-in filters"),
        ("E301", "no filter named 'lenght'", "did you mean 'length'?"),
        # the prompt file's, after the workflow file's, where it is written
        ("E301", "prompt of step 'b': no filter named 'upperr'", "did you mean 'upper'?"),
    ], got
    located_at = diagnose(text, tmp_path)[-1].location
    assert (located_at.file, located_at.line, located_at.col) == (str(tmp_path / "p.j2"), 2, 12)


def test_jinja_loop_variable_inside_for_is_not_e304() -> None:
    text = MINIMAL.replace(
        'with: {who: "{{ input.who }}"}',
        'with: {who: "{% for i in [1, 2] %}{{ loop.index }}{% endfor %}"}',
    )
    text += 'output: {o: "{% for i in [1] %}{{ loop.first }}{% endfor %}"}\n'
    assert diagnose(text) == []


def test_a_loop_mistake_is_reported_once() -> None:
    for wrong, needle in [
        ("target: generate", "target: nope"),
        ("target: generate", "target: revise"),
    ]:
        text = sub(wrong, needle)
        codes = [d.code for d in diagnose(text) if d.severity == "error"]
        assert len(codes) == 1, [str(d) for d in diagnose(text)]
    text = sub("validator: critique, reviser", "validator: generate, reviser")
    codes = [d.code for d in diagnose(text)]
    assert "E207" in codes and "E304" not in codes and "E303" not in codes, codes


def test_loops_count_is_readable_downstream_of_its_validator() -> None:
    text = sub(
        "transitions:",
        "  - id: report\n    type: template\n    depends_on: [critique]\n"
        '    template: "{{ n }}"\n    with: {n: "{{ loops.critique.revisions }}"}\ntransitions:',
    )
    assert [d for d in diagnose(text) if d.severity == "error"] == []
    # a step that depends on the loop's target waits for the whole loop (the engine's rule)
    after_target = text.replace("depends_on: [critique]", "depends_on: [generate]")
    assert [d for d in diagnose(after_target) if d.severity == "error"] == []
    # one that depends on none of the loop's steps may run before it ends
    beside = text.replace("    depends_on: [critique]\n", "")
    assert [d.code for d in diagnose(beside) if d.severity == "error"] == ["E303"]


def test_retry_delays_merge_over_the_defaults() -> None:
    # a shorter max_delay alone caps the default first wait: nothing to say
    text = sub("    type: critique\n", "    type: critique\n    retry: {max_delay: 500ms}\n")
    assert diagnose(text) == []
    text = sub("    type: critique\n", "    type: critique\n    retry: {initial_delay: 21s}\n")
    (d,) = diagnose(text)
    assert d.code == "E114" and d.message == (
        "steps[1].retry: initial_delay (21s) is longer than max_delay (10s)"
    )
    assert (d.location.line, d.location.col) == located(text, "21s")


def test_errors_inside_a_block_scalar_point_at_their_line() -> None:
    text = MINIMAL.replace(
        'with: {who: "{{ input.who }}"}',
        "with:\n      who: |\n        line one\n        {{ inptu.q }}\n      x: |\n"
        "        ok\n        {{ x }\n",
    )
    got = {d.code: (d.location.line, d.location.col) for d in diagnose(text)}
    assert got["E302"] == located(text, "inptu.q")
    assert got["E301"] == located(text, "{{ x }")


def test_errors_inside_a_folded_block_scalar_point_at_their_line() -> None:
    """In a folded block (`>`), whose lines the text joins with spaces, a problem was
    reported at the `>`; it is on the line (and column) that writes it."""
    text = MINIMAL.replace('    template: "hello {{ who }}"\n', "").replace(
        'with: {who: "{{ input.who }}"}',
        "template: >\n      hello\n      {{ who | nofilter }}\n"
        "    with:\n      who: >-\n        line one\n        {{ inptu.q }}\n"
        "      x: >\n        ok\n\n        {{ x }\n",
    )
    got = {(d.code, d.location.line, d.location.col) for d in diagnose(text)}
    assert got == {
        ("E301", *located(text, "nofilter")),  # on the second line of a folded one
        ("E302", *located(text, "inptu.q")),
        ("E301", *located(text, "{{ x }")),  # after a blank line: a line of its own
    }


def test_valid_files_the_newer_checks_once_refused() -> None:
    """A condition whose string literal holds braces is one expression; `then` and `else`
    are JSON Schema keywords (read by `if`)."""
    braces = sub(
        "  - {type: sequential, from: generate, to: critique}",
        "  - {type: conditional, from: generate, to: critique,\n"
        "     when: \"'{{' in steps.generate.output.draft\"}",
    )
    assert diagnose(braces) == []
    if_then = sub(
        "  required: [topic]\n",
        "  required: [topic]\n  if: {required: [tone]}\n  then: {required: [style]}\n"
        "  else: {required: [topic]}\n",
    )
    assert diagnose(if_then) == []


def test_names_a_template_binds_or_guards_are_not_its_inputs() -> None:
    """Macros, `{% set %}` blocks, `{% with %}`, and variables under `is defined` or
    `| default` render without being bound; `{% include %}` cannot load anything."""
    text = MINIMAL.replace('    template: "hello {{ who }}"\n', "").replace(
        'with: {who: "{{ input.who }}"}',
        "template: |\n"
        "      {% macro greet(n) %}Hi {{ n }}{% endmacro %}{{ greet(who) }}\n"
        "      {% set header %}== {{ who | upper }} =={% endset %}{{ header }}\n"
        "      {% with g = 'hello' %}{{ g }}{% endwith %}\n"
        "      {% if tone is defined %}{{ tone }}{% endif %} {{ style | default('plain') }}\n"
        '    with: {who: "{{ input.who }}"}',
    )
    assert [d for d in diagnose(text) if d.severity == "error"] == []
    (d,) = diagnose(text.replace("{{ g }}{% endwith %}", "{{ g }}{% endwith %}{{ nope }}"))
    assert d.code == "E302" and "'nope'" in d.message
    (d,) = diagnose(text.replace("{{ greet(who) }}", "{% include 'other.j2' %}"))
    assert d.code == "E301" and "{% include %} is not supported" in d.message


def test_a_plugin_prompt_step_may_give_its_prompt_in_code() -> None:
    from eclflow.steps.builtin import PromptStep
    from eclflow.steps.registry import default_registry

    class Shout(PromptStep):
        type_name = "shout_test"
        description = "Shout the text."
        input_schema: ClassVar = {"type": "object", "properties": {"text": {"type": "string"}}}

        def prompt_source(self) -> str:
            return "Shout {{ text }}"

    registry = default_registry()
    registry.register(Shout, replace=True)
    text = (
        MINIMAL.replace("type: template", "type: shout_test")
        .replace('    template: "hello {{ who }}"\n', "")
        .replace('with: {who: "{{ input.who }}"}', 'with: {text: "{{ input.who }}"}')
    )
    try:
        assert [d.code for d in diagnose(text) if d.severity == "error"] == []
    finally:
        registry._types.pop("shout_test")  # (the registry is the process's)


def test_inputs_written_as_they_are_are_checked_as_a_run_would() -> None:
    attempt = 'attempt: "{{ loop.iteration }}"'
    for value, message in [
        ("0", "Attempt number must be positive (1-indexed)"),
        ("4", "Attempt 4 exceeds max revisions 3"),  # the loop's bound
        ("[1]", "Attempt must be a number, not [1]"),
    ]:
        text = sub(attempt, f"attempt: {value}")
        (d,) = diagnose(text)
        assert (d.code, d.message) == ("E210", f"step 'revise', input 'attempt': {message}")
        assert (d.location.line, d.location.col) == located(text, f"{value}\n", nth=1)
    (d,) = diagnose(sub('{topic: "{{ input.topic }}"}', '{topic: "  "}'))
    assert d.message == "step 'generate', input 'topic': Topic cannot be empty"
    (d,) = diagnose(sub('feedback: "{{ loop.feedback }}"', "feedback: ''"))
    assert d.message == "step 'revise', input 'feedback': Feedback cannot be empty"
    # as a run reads them: a number as text, the whole loop's bound, anything with an expression
    assert diagnose(sub(attempt, 'attempt: "3"')) == []
    assert diagnose(sub(attempt, 'attempt: "{{ 0 }}"')) == []
    assert diagnose(sub('{topic: "{{ input.topic }}"}', "{topic: [x, '{{ input.topic }}']}")) == []


def test_a_plugin_type_checks_given_inputs_by_its_schema_or_its_own_rule() -> None:
    from eclflow.errors import ValidationError
    from eclflow.steps.base import Step
    from eclflow.steps.builtin import PromptStep
    from eclflow.steps.registry import default_registry

    class Count(Step):
        type_name = "count_test"
        input_schema: ClassVar = {
            "type": "object",
            "required": ["n", "unit"],
            "properties": {"n": {"type": "integer", "minimum": 1}, "unit": {"type": "string"}},
        }

    class Picky(Step):
        type_name = "picky_test"

        def validate_given(self, given: object) -> None:
            raise RuntimeError("a plugin's own bug")

    class Odd(Step):
        type_name = "odd_test"

        def validate_given(self, given: object) -> None:
            raise ValidationError("must be odd")

    class Lenient(Count):  # takes "3" for 3 at run time, and says so to validate
        type_name = "lenient_test"

        def validate_input(self, input: object) -> None:
            pass

        def validate_given(self, given: object) -> None:
            pass

    class Stricter(Count):  # the schema, and then a rule of its own (examples/plugin's way)
        type_name = "stricter_test"

        def validate_input(self, input: Any) -> None:
            super().validate_input(input)

    class Ask(PromptStep):  # a plugin's prompt step: its input_schema, as any step's
        type_name = "ask_test"
        input_schema: ClassVar = Count.input_schema

    registry = default_registry()
    for cls in (Count, Picky, Odd, Lenient, Stricter, Ask):
        registry.register(cls, replace=True)
    text = MINIMAL.replace('    template: "hello {{ who }}"\n', "")
    try:
        count = text.replace("type: template", "type: count_test")
        bad = count.replace('with: {who: "{{ input.who }}"}', "with: {n: 0, unit: '{{ input.u }}'}")
        (d,) = diagnose(bad)
        assert (d.code, d.message) == (
            "E210",
            "step 'a', input 'n': value 0 is less than the minimum of 1",
        )
        assert (d.location.line, d.location.col) == located(bad, "0, unit")
        good = count.replace('with: {who: "{{ input.who }}"}', "with: {n: 2, unit: cm}")
        assert diagnose(good) == []
        picky = text.replace("type: template", "type: picky_test")
        assert diagnose(picky.replace("{{ input.who }}", "x")) == []
        odd = text.replace("type: template", "type: odd_test")
        (d,) = diagnose(odd.replace("{{ input.who }}", "x"))
        assert (d.code, d.message) == ("E210", "step 'a', input 'who': must be odd")
        assert diagnose(bad.replace("count_test", "lenient_test")) == []
        (d,) = diagnose(bad.replace("count_test", "stricter_test"))
        assert d.message == "step 'a', input 'n': value 0 is less than the minimum of 1"
        ask = bad.replace("count_test", "ask_test").replace(
            "    with:", "    template: x\n    with:"
        )
        (d,) = diagnose(ask)
        assert (d.code, d.message) == (
            "E210",
            "step 'a', input 'n': value 0 is less than the minimum of 1",
        )
    finally:
        for cls in (Count, Picky, Odd, Lenient, Stricter, Ask):
            registry._types.pop(cls.type_name)


def test_max_revisions_is_for_model_steps_only() -> None:
    (d,) = diagnose(MINIMAL.replace("hello {{ who }}", "at most {{ max_revisions }}"))
    assert d.code == "E302" and "'max_revisions'" in d.message


LLM_LOOP = """\
eclflow: 1
id: llm-loop
model: mock/x
steps:
  - {id: draft, type: llm, template: "write"}
  - id: judge
    type: llm
    template: "judge {{ steps.draft.output.text }}"
    depends_on: [draft]
    output_schema: %s
  - {id: fix, type: llm, template: "fix {{ loop.feedback }}", depends_on: [judge]}
transitions:
  - {type: revision_loop, validator: judge, reviser: fix, target: draft, max_iterations: 2}
"""


@pytest.mark.parametrize(
    ("schema", "never"),
    [
        ("{type: object, properties: {decision: {type: string}}}", False),
        ("{type: object, properties: {decision: {enum: [pass, Revise]}}}", False),
        ("{type: object}", False),
        ("{$ref: '#/$defs/v', $defs: {v: {type: object}}}", False),
        ("{type: string}", True),
        ("{type: object, properties: {score: {type: number}}, additionalProperties: false}", True),
        ("{type: object, properties: {decision: {enum: [pass, ok]}}}", True),
        ("{type: object, properties: {decision: {const: pass}}}", True),
        ("{type: object, properties: {decision: {type: boolean}}}", True),
    ],
)
def test_an_llm_validator_whose_output_schema_cannot_say_revise_is_e207(
    schema: str, never: bool
) -> None:
    found = [d for d in diagnose(LLM_LOOP % schema) if d.code == "E207"]
    assert bool(found) == never, found
    if never:
        assert "output_schema does not admit `decision: revise`" in found[0].message


def test_a_field_a_steps_output_does_not_have_is_e302_at_its_use() -> None:
    """Fields of built-in outputs are known: a typo fails at validate, not after the calls
    before it were paid for; the location is the use, in a `|` block on its own line."""
    text = sub('"{{ steps.generate.output.draft }}"}', '"{{ steps.generate.output.drat }}"}')
    (d,) = diagnose(text)
    assert (d.code, d.message, d.hint) == (
        "E302",
        "steps.generate.output.drat does not exist",
        "did you mean 'draft'?",
    )
    assert (d.location.line, d.location.col) == located(text, "steps.generate.output.drat")
    text = sub(
        '  final_text: "{{ steps.generate.output.draft }}"',
        "  final_text: |\n    {{ steps.generate.output.draft }}\n"
        "    {{ steps.critique.output.feedback }} {{ steps.critique.output.verdict }}",
    )
    (d,) = diagnose(text)
    assert d.message == "steps.critique.output.verdict does not exist"
    assert "decision, feedback" in (d.hint or "")
    assert (d.location.line, d.location.col) == located(text, "steps.critique.output.verdict")


@pytest.mark.parametrize(
    "use",
    [
        "steps.critique.output.quality_score",
        "steps.critique.output.get('score')",
        "steps.critique.output.scores | default(0)",
        "steps.critique.output.scores is defined",
    ],
)
def test_fields_a_template_guards_or_a_mapping_method_are_not_flagged(use: str) -> None:
    text = sub('"{{ loops.critique.revisions }}"', f'"{{{{ {use} }}}}"')
    assert diagnose(text) == []


OUTPUT_OF = """\
eclflow: 1
id: fields
model: mock/x
steps:
  - {id: a, type: llm, template: "write"%s}
  - {id: b, type: template, template: "{{ x }}", depends_on: [a],
     with: {x: "{{ steps.a.output.%s }}"}}
"""


@pytest.mark.parametrize(
    ("schema", "field", "ok"),
    [
        ("", "text", True),
        ("", "draft", False),
        (", output_schema: {type: object}", "anything", True),
        (", output_schema: {type: object, properties: {n: {}}}", "m", True),
        (", output_schema: {type: object, properties: {n: {}}, additionalProperties: false}",
         "n", True),
        (", output_schema: {type: object, properties: {n: {}}, additionalProperties: false}",
         "m", False),
    ],
)  # fmt: skip
def test_an_llm_steps_fields_are_known_without_a_schema_or_with_a_closed_one(
    schema: str, field: str, ok: bool
) -> None:
    codes = [d.code for d in diagnose(OUTPUT_OF % (schema, field))]
    assert codes == ([] if ok else ["E302"])


def test_what_is_read_of_a_loop_target_must_be_in_its_revisers_output_too() -> None:
    """After a revision the target's output is the reviser's: a field only the first version
    has fails the run after the revision was paid for."""
    text = """\
eclflow: 1
id: mixed
model: mock/x
steps:
  - {id: a, type: llm, template: "write"}
  - {id: c, type: critique, depends_on: [a], with: {draft: "{{ steps.a.output.text }}"}}
  - {id: r, type: revise, depends_on: [c], revision_source: c,
     with: {draft: "x", feedback: "{{ loop.feedback }}"}}
transitions:
  - {type: revision_loop, validator: c, reviser: r, target: a, max_iterations: 2}
output: {t: "{{ steps.a.output.text }}"}
"""
    found = [(d.code, d.message, d.hint) for d in diagnose(text)]
    hint = "after a revision the output of 'a' is reviser 'r''s: read what both have (no field"
    assert [f[:2] for f in found] == [("E302", "steps.a.output.text does not exist")] * 2
    assert all((f[2] or "").startswith(hint) for f in found)
    same = text.replace(
        '{id: a, type: llm, template: "write"}', "{id: a, type: generate, with: {topic: t}}"
    ).replace("output.text", "output.draft")
    assert diagnose(same) == []


LOOPS = """\
eclflow: 1
id: loops
model: mock/x
steps:
  - {id: g, type: generate, with: {topic: "t"}}
  - {id: x, type: llm, template: "style guide"}
  - {id: c1, type: critique, depends_on: [g], with: {draft: "{{ steps.g.output.draft }}"}}
  - {id: c2, type: critique, depends_on: [c1], with: {draft: "{{ steps.g.output.draft }}"}}
  - {id: r1, type: revise, depends_on: [c1], revision_source: c1,
     with: {draft: "{{ steps.g.output.draft }}", feedback: "{{ loop.feedback }}"}}
  - {id: r2, type: revise, depends_on: [c2], revision_source: c2,
     with: {draft: "{{ steps.g.output.draft }}", feedback: "{{ loop.feedback }}"}}
transitions:
  - {type: revision_loop, validator: c1, reviser: r1, target: g, max_iterations: 2}
  - {type: revision_loop, validator: c2, reviser: r2, target: g, max_iterations: 2}
"""


def test_a_reviser_may_depend_on_an_earlier_loops_reviser() -> None:
    """(The engine waits for that loop's end, as it does for anything downstream of it.)"""
    text = (
        LOOPS.replace(
            "  - {id: c2, type: critique, depends_on: [c1],",
            "  - {id: g2, type: generate, depends_on: [c1], with: {topic: t}}\n"
            "  - {id: c2, type: critique, depends_on: [g2],",
        )
        .replace(
            "  - {id: r2, type: revise, depends_on: [c2],",
            "  - {id: r2, type: revise, depends_on: [c2, r1],",
        )
        .replace("reviser: r2, target: g,", "reviser: r2, target: g2,")
    )
    assert [d.code for d in diagnose(text) if d.severity == "error"] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # two loops re-running the same steps: both wrote c1#2, and resume replayed one
        # loop's verdict as the other's
        ((), "the loop of transitions[1] shares step 'g' with the loop of transitions[0]"),
        # a validator revised in place is never asked again: the reviser ran to the bound
        (
            (("target: g, max_iterations: 2}\n  - {type: revision_loop, validator: c2",
              "target: c1, max_iterations: 2}\n  - {type: revision_loop, validator: c2"),),
            "the target of transitions[0] is its validator 'c1'",
        ),
        # the reviser ran as soon as the validator asked, before x had even started
        (
            (("depends_on: [c1], revision_source: c1", "depends_on: [c1, x], revision_source: c1"),
             ("target: g, max_iterations: 2}\n", "target: g, max_iterations: 2}\n#")),
            "reviser 'r1' depends on 'x', which the loop does not wait for",
        ),
    ],
)  # fmt: skip
def test_loop_wirings_the_engine_cannot_run_are_e207(
    change: tuple[tuple[str, str], ...], message: str
) -> None:
    text = LOOPS
    for old, new in change:
        assert old in text, old
        text = text.replace(old, new, 1)
    found = [d.message for d in diagnose(text) if d.code == "E207"]
    assert message in found, found


def test_an_input_a_closed_inputs_schema_cannot_have_is_e302() -> None:
    """With `additionalProperties: false` a run's input has only the declared properties, so
    `input.topik` would fail the run at the step that reads it, after the paid ones before."""
    text = sub(
        "    topic: {type: string, minLength: 1, maxLength: 500}\n",
        "    topic: {type: string, minLength: 1, maxLength: 500}\n  additionalProperties: false\n",
    )
    assert diagnose(text) == []
    typo = sub('"{{ steps.generate.output.draft }}"}', '"{{ input.topik }}"}', text)
    (d,) = diagnose(typo)
    assert (d.code, d.message, d.hint) == (
        "E302",
        "input.topik does not exist: `inputs` allows no other properties",
        "did you mean 'topic'?",
    )
    assert (d.location.line, d.location.col) == located(typo, "input.topik")
    guarded = sub(
        '"{{ steps.generate.output.draft }}"}',
        "\"{{ input.tone | default('') }}{{ input.get('x') }}{{ input['topic'] }}\"}",
        text,
    )
    assert diagnose(guarded) == []
    # an open schema may get any property
    assert diagnose(sub('"{{ steps.generate.output.draft }}"}', '"{{ input.topik }}"}')) == []


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("openai/", "names no model after 'openai/'"),
        ("local/", "names no model after 'local/'"),
        (" openai/gpt-4o", "has spaces around it"),
        ("/gpt-4o", "starts with a slash"),
    ],
)
def test_a_malformed_model_name_is_e113(model: str, why: str) -> None:
    """`openai/` passed validate and the run's check of its provider, then failed at the call,
    after the paid steps before it."""
    text = sub("model: local/smollm2", f'model: "{model}"')
    (d,) = diagnose(text)
    assert (d.code, d.message) == ("E113", f'model "{model}" {why}')
    assert (d.location.line, d.location.col) == located(text, f'"{model}"')


@pytest.mark.parametrize(
    "model", ["local//models/m.gguf", "local/C:/My Models/m.gguf", "ollama/llama3:8b", "gpt-4o"]
)
def test_model_names_with_inner_slashes_spaces_or_no_provider_are_valid(model: str) -> None:
    assert diagnose(sub("model: local/smollm2", f'model: "{model}"')) == []


def test_a_second_yaml_document_is_named_as_such() -> None:
    """ruamel says only "but found another document"; the user needs to know what that is."""
    for text in (MINIMAL + "---\nid: other\n", "---\n" + MINIMAL + "---\n"):
        (d,) = diagnose(text)
        assert (d.code, d.message) == (
            "E100",
            "YAML: a second document starts here; a workflow file holds one",
        )
        assert (d.location.line, d.location.col) == located(text, "---", text.count("---"))


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")],
)
def test_a_utf16_file_is_named_as_such(tmp_path: Path, encoding: str, name: str) -> None:
    """What Windows tools write (PowerShell's `>`): "not UTF-8" or "contains NUL bytes" did
    not say what the file is or how to fix it."""
    f = tmp_path / "w.yaml"
    f.write_text(MINIMAL, encoding=encoding)
    (d,) = check(f)[1]
    assert (d.code, d.message, d.hint) == (
        "E102",
        f"the file is {name} text; a workflow file is UTF-8",
        f"convert it to UTF-8, e.g. with `iconv -f {name} -t UTF-8`",
    )
    f.write_bytes(MINIMAL.replace("hello", "h\xe9llo").encode("latin-1"))
    (d,) = check(f)[1]
    assert (d.location.line, d.location.col, d.message) == (6, 17, "not UTF-8 text (byte 0xe9)")


def test_a_required_key_misspelt_is_one_e111_not_also_e110() -> None:
    """`Steps:` or `ID:` was reported twice (missing `steps`, unknown `Steps`), and `ID` got
    no "did you mean": keys are lowercase."""
    for old, new, hint in [
        ("steps:\n", "Steps:\n", "'steps'"),
        ("steps:\n", "setps:\n", "'steps'"),
        ("  - id: a\n", "  - ID: a\n", "'id'"),
    ]:
        text = MINIMAL.replace(old, new)
        (d,) = diagnose(text)
        assert (d.code, d.hint) == ("E111", f"did you mean {hint}?")
        assert (d.location.line, d.location.col) == located(text, new.strip(" -\n"))


def test_a_transitions_type_misspelt_is_e110_not_an_internal_error() -> None:
    """`{Type: sequential, …}`: a transition's keys are checked only once its type is known, so
    no E111 said it, the E110 was dropped as if one did, and the file crashed the checker
    (E000 KeyError: 'type'; `run` failed with a traceback hint)."""
    for key in ("Type", "typ"):
        text = MINIMAL + (
            "  - {id: b, type: template, template: x}\n"
            f"transitions:\n  - {{{key}: sequential, from: a, to: b}}\n"
        )
        got = [(d.code, d.message, d.location.line) for d in diagnose(text)]
        assert got == [("E110", "transitions[0] is missing required key 'type'", text.count("\n"))]


SKIPPABLE = """\
eclflow: 1
id: skip
steps:
  - {id: a, type: template, template: x}
  - {id: b, type: template, template: x}
  - {id: c, type: template, template: x}
  - {id: d, type: template, template: "{{ t }}", depends_on: [a, b],
     with: {t: "{{ steps.b.output.text }}"}}
  - {id: e, type: template, template: "{{ t }}", depends_on: [b],
     with: {t: "{{ steps.b.output.text }}"}}
  - {id: f, type: template, template: "{{ t }}", depends_on: [b, c],
     with: {t: "{{ steps.b.output.text if steps.b.status == 'succeeded' else '' }}"}}
transitions:
  - {type: conditional, from: a, to: b, when: input.x}
  - {type: conditional, from: a, to: c, when: not input.x}
output:
  b: "{{ steps.b.output.text }}"
  guarded: "{{ steps.b.output.text | default('') }}{{ steps.f.output.text }}"
"""


@pytest.mark.parametrize("when", ["''", "'  '", "'{{ }}'"])
def test_an_empty_condition_says_so(when: str) -> None:
    """`when: ""` said "Expected an expression, got 'end of print statement'"."""
    text = sub(
        "  - {type: sequential, from: generate, to: critique}",
        f"  - {{type: conditional, from: generate, to: critique, when: {when}}}",
    )
    (d,) = diagnose(text)
    assert (d.code, d.message) == ("E301", "the condition is empty")
    assert (d.location.line, d.location.col) == located(text, when)


def test_reading_a_step_a_condition_may_skip_is_w505() -> None:
    """`steps.b.output.text` where b may be skipped (its output is null) failed the run there:
    for `output:`, after every step was paid for. Not where the reader runs only after b
    (e), reads it guarded (f), or joins branches of which one runs (f itself)."""
    found = [d for d in diagnose(SKIPPABLE) if d.code == "W505"]
    assert [(d.location.line, d.location.col) for d in found] == [
        located(SKIPPABLE, "steps.b.output.text"),  # d also runs after a alone
        located(SKIPPABLE, "steps.b.output.text", 4),
    ]
    d = found[0]
    assert d.message == (
        "steps.b.output.text fails the run when a condition skips step 'b' (its output is "
        "null then)"
    )
    assert d.severity == "warning"


def test_w505_is_not_said_of_reads_that_run_only_with_the_step_or_pick_a_branch() -> None:
    """Two warnings on correct files: branches fanned out behind one condition and joined
    (d and e are skipped together, so f never runs without them), and the other branch
    read in the `else` of a test of a step's output (`… if steps.b.output else …`)."""
    text = """\
eclflow: 1
id: skip
steps:
  - {id: a, type: template, template: x}
  - {id: b, type: template, template: x}
  - {id: c, type: template, template: x}
  - {id: d, type: template, template: x, depends_on: [b]}
  - {id: e, type: template, template: x, depends_on: [b]}
  - {id: f, type: template, template: "{{ t }}", depends_on: [d, e],
     with: {t: "{{ steps.d.output.text }} {{ steps.e.output.text }}"}}
  - {id: g, type: template, template: "{{ t }}", depends_on: [b, c],
     with: {t: "{{ steps.b.output.text if steps.b.output else steps.c.output.text }}"}}
  - {id: h, type: template, template: "{{ t }}", depends_on: [b, c],
     with: {t: "{{ steps.c.output.text if steps.b.output is none else steps.b.output.text }}"}}
transitions:
  - {type: conditional, from: a, to: b, when: input.x}
  - {type: conditional, from: a, to: c, when: not input.x}
output:
  g: "{{ steps.g.output.text }}"
  h: "{{ steps.h.output.text }}"
  f: "{{ steps.f.output.text | default('') }}"
"""
    assert [d for d in diagnose(text) if d.code == "W505"] == []
    unguarded = text.replace("if steps.b.output else", "or")
    found = [d for d in diagnose(unguarded) if d.code == "W505"]
    assert [d.message.split()[0] for d in found] == ["steps.b.output.text", "steps.c.output.text"]


def test_bad_values_of_keys_that_may_be_left_out_do_not_hide_the_other_problems() -> None:
    """A loop bound of 0 or a malformed timeout showed alone; the unknown step and the broken
    template beside it came one `validate` later. A required key's bad value still stops."""
    text = sub("max_iterations: 3", "max_iterations: 0")
    text = sub("timeout: 120s", "timeout: soon", text)
    text = sub("depends_on: [generate]", "depends_on: [generat]", text)
    text = sub('"{{ loop.feedback }}"', '"{{ loop.feedback }"', text)
    got = [(d.code, d.location.line, d.location.col) for d in diagnose(text)]
    assert got == [
        ("E113", *located(text, "soon")),
        ("E203", *located(text, "generat]")),
        ("E301", *located(text, '{{ loop.feedback }"')),
        ("E205", *located(text, "0, on_exhausted")),
    ]
    required = sub("  - id: generate", "  - id: gen-erate", text)
    assert [d.code for d in diagnose(required)] == ["E113", "E113", "E205"]


def test_a_key_merged_from_an_anchor_is_located_where_the_anchor_writes_it() -> None:
    """`<<: *common`: a problem in the anchor's keys pointed at the step, not at the line to
    fix."""
    text = """\
eclflow: 1
id: merged
metadata:
  common: &common
    type: templat
    template: "{{ t }} {{ nope }}"
steps:
  - id: a
    <<: *common
    with: {t: x}
"""
    got = [(d.code, d.location.line, d.location.col) for d in diagnose(text)]
    assert got == [("E202", *located(text, "templat"))]
    fixed = text.replace("templat\n", "template\n")
    got = [(d.code, d.location.line, d.location.col) for d in diagnose(fixed)]
    assert got == [("E302", *located(fixed, "nope"))]


def test_a_top_level_key_holding_anchors_is_told_where_anchors_may_live() -> None:
    """`x-common: &common …` (as in docker compose) is E111: the hint says where it is valid,
    not "did you mean 'defaults'"."""
    text = MINIMAL.replace("steps:\n", "defs:\n  - &tpl hello\nsteps:\n").replace(
        '"hello {{ who }}"', "*tpl"
    )
    (d,) = diagnose(text)
    assert (d.code, d.hint) == (
        "E111",
        "keep the anchors steps share under `metadata:`, which may hold anything",
    )
    assert (
        diagnose(text.replace("defs:", "metadata:\n  defs:").replace("  - &tpl", "    - &tpl"))
        == []
    )
    (d,) = diagnose(MINIMAL + "defs: 1\n")
    assert d.hint == "did you mean 'defaults'?"


def test_a_prompt_that_is_a_directory_or_not_utf8_says_so(tmp_path: Path) -> None:
    """They were "not found" and Python's "'utf-8' codec can't decode byte 0xff in position
    17: invalid start byte"."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "latin.j2").write_bytes(b"Hello\n{{ who }} \xe9t\xe9\n")
    text = MINIMAL.replace('template: "hello {{ who }}"', "prompt: prompts")
    (d,) = diagnose(text, tmp_path)
    assert (d.code, d.message) == ("E401", "prompt file 'prompts' is a directory")
    (d,) = diagnose(text.replace("prompt: prompts", "prompt: latin.j2"), tmp_path)
    assert (d.code, d.message, d.hint) == (
        "E401",
        "prompt file 'latin.j2' is not UTF-8 text (byte 0xe9 on line 2)",
        "save it as UTF-8",
    )


def test_an_input_default_its_own_schema_refuses_is_e116() -> None:
    """The input is checked as given, then the defaults fill it: `default: 0` under
    `minimum: 1` reached the steps unchecked."""
    text = sub(
        "    topic: {type: string, minLength: 1, maxLength: 500}\n",
        "    topic: {type: string, minLength: 1, maxLength: 500}\n"
        "    tone: {type: string, enum: [plain, formal], default: casual}\n"
        "    opts:\n      type: object\n      properties:\n"
        "        n: {type: integer, minimum: 1, default: 0}\n"
        "        ok: {type: integer, minimum: 1, default: 2}\n"
        # (`default: null` is how many write "optional, none": `{% if input.note %}` runs)
        "    note: {type: string, default: null}\n",
    )
    got = [(d.code, d.location.line, d.location.col, d.message) for d in diagnose(text)]
    assert got == [
        (
            "E116",
            *located(text, "casual"),
            "inputs.properties.tone.default \"casual\" does not match its own schema: 'casual' "
            "is not one of ['plain', 'formal']",
        ),
        (
            "E116",
            *located(text, "0}\n        ok"),
            "inputs.properties.opts.properties.n.default 0 does not match its own schema: 0 is "
            "less than the minimum of 1",
        ),
    ]


def test_an_object_default_is_checked_with_its_properties_defaults_filled_in() -> None:
    """`default: {}` on an object whose required property has a default of its own runs (the
    run fills it in: `{mode: fast}`), and was refused as E116 for missing that property."""
    opts = (
        "    opts:\n      type: object\n      required: [mode]\n      properties:\n"
        "        mode: {type: string, default: fast}\n      default: {}\n"
    )
    topic = "    topic: {type: string, minLength: 1, maxLength: 500}\n"
    assert diagnose(sub(topic, topic + opts)) == []
    no_default = sub(topic, topic + opts.replace(", default: fast}", "}"))
    (d,) = diagnose(no_default)
    assert (d.code, d.location.line, d.location.col) == ("E116", *located(no_default, "{}\n"))
    assert "'mode' is a required property" in d.message


def test_type_errors_speak_yaml_a_list_and_a_mapping() -> None:
    """`steps must be an array, not a mapping`: JSON Schema's words for a YAML file, and
    nothing said how to write a list."""
    text = "eclflow: 1\nid: x\nsteps:\n  a: {type: template, template: x}\nmetadata: [1]\n"
    got = [(d.code, d.message, d.hint) for d in diagnose(text)]
    assert got == [
        (
            "E112",
            "steps must be a list, not a mapping",
            "write each item on a line of its own starting with `- `",
        ),
        ("E112", "metadata must be a mapping, not a list", None),
    ]


@pytest.mark.parametrize(
    "tail",
    [
        # inside a mapping ruamel reads the alias as null: the file was valid, the run got None
        'steps: &s\n  - {id: a, type: template, template: "{{ x }}", with: {x: *s}}\n',
        "metadata: &m\n  a: *m\nsteps:\n  - {id: a, type: template, template: x}\n",
        # inside a list it holds itself: "nested more than 200 levels deep" at 1:1
        "metadata: {l: &m [1, [2, *m]]}\nsteps:\n  - {id: a, type: template, template: x}\n",
        # merged into itself: "'NoneType' object has no attribute 'add_referent'" at 1:1
        "metadata: &m {x: 1, <<: *m}\nsteps:\n  - {id: a, type: template, template: x}\n",
    ],
)
def test_an_alias_inside_the_node_it_names_is_e100_at_the_alias(tail: str) -> None:
    text = "eclflow: 1\nid: loop\n" + tail
    got = [(d.code, d.location.line, d.location.col, d.message) for d in diagnose(text)]
    name = tail.split("&", 1)[1][0]
    said = f"YAML: alias *{name} is inside the node &{name} names: a value cannot hold itself"
    assert got == [("E100", *located(text, f"*{name}"), said)], got
    # an alias beside its anchor, or used twice, is fine; an anchor defined twice is W508
    # alone (looking for the alias did not print ruamel's warning of it again)
    shared = "metadata: {a: &m [1], b: *m, c: [*m, *m]}\nsteps:\n  - {id: a, type: template, template: x}\n"
    assert diagnose("eclflow: 1\nid: loop\n" + shared) == []
    twice = shared.replace("b: *m", "b: &m [2], d: *m")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [d.code for d in diagnose("eclflow: 1\nid: loop\n" + twice)] == ["W508"]
    assert [str(w.message) for w in caught] == []


def test_an_expression_not_in_quotes_beside_an_anchor_defined_twice_prints_no_warning() -> None:
    """Finding where `topic: {{ input.topic }}` is composed the document again outside the
    parse's catch of ruamel's warnings: with an anchor defined twice in the file, validate
    printed ruamel's ReusedAnchorWarning (eight lines of its source) beside the E100."""
    text = (
        "eclflow: 1\nid: dup\nmetadata: {a: &m [1], b: &m [2]}\nsteps:\n"
        '  - id: a\n    type: template\n    template: "{{ topic }}"\n'
        "    with:\n      topic: {{ input.topic }}\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [(d.code, d.location.line, d.location.col) for d in diagnose(text)]
    assert got == [("E100", *located(text, "{{ input"))], got
    assert [str(w.message) for w in caught] == []


def test_nesting_too_deep_is_not_called_an_alias_bomb() -> None:
    """From 201 to about 245 levels the message was E103 "document expands to more than
    200000 nodes (anchors and aliases that expand exponentially are refused)"."""
    for depth in (205, 240, 2000):
        text = MINIMAL + "metadata: " + "[" * depth + "]" * depth + "\n"
        (d,) = diagnose(text)
        assert d.code == "E100" and "nested" in d.message, (depth, str(d))


def test_brackets_nested_too_deep_are_refused_where_they_pass_the_limit() -> None:
    """A thousand `[` took ruamel seconds of CPU (its scanner's time grows with the square of
    the depth) to end in E100 "YAML: nested too deeply" at 1:1; they are refused before it
    reads them, at the bracket that opens the 201st level."""
    text = MINIMAL + "metadata:\n  x: " + "[" * 1000 + "]" * 1000 + "\n"
    (d,) = diagnose(text)
    assert (d.code, d.message) == ("E100", "YAML: nested more than 200 levels deep"), str(d)
    line, col = located(text, "[")
    assert (d.location.line, d.location.col) == (line, col + 200)
    # brackets in a quoted scalar, a comment, or the words of a plain or block scalar are not
    # nesting
    many = "[" * 300
    fine = MINIMAL + (
        f"metadata:\n  q: \"{many}\"\n  s: '{many}'\n  # {many}\n  p: see {many}\n"
        f"  b: |\n    see {many}\n"
    )
    assert diagnose(fine) == []


def test_brackets_in_a_block_scalar_are_text_not_nesting() -> None:
    """A prompt under `template: |` whose lines start with `[` that no `]` closes on them
    (`[1: see below`, or `[issue #12]`, whose ` #` read as a comment hid the `]`) was E100
    "nested more than 200 levels deep" from its 201st line: a valid file refused."""
    for row in ("[{i}: see below", "[issue #{i}] fixed", "{{ [[ {i}"):
        body = "      hello {{ who }}\n" + "".join(
            "      " + row.format(i=i) + "\n" for i in range(250)
        )
        text = MINIMAL.replace('template: "hello {{ who }}"', "template: |\n" + body)
        assert text != MINIMAL
        assert diagnose(text) == [], row
        text = MINIMAL + "metadata:\n  p: >-\n" + body.replace("      ", "    ") + "  q: 1\n"
        assert diagnose(text) == [], row
    # after the block scalar, brackets count again
    deep = MINIMAL + "metadata:\n  p: |\n    [[\n  x: " + "[" * 201 + "]" * 201 + "\n"
    (d,) = diagnose(deep)
    assert (d.code, d.message) == ("E100", "YAML: nested more than 200 levels deep"), str(d)
    assert (d.location.line, d.location.col) == (len(deep.splitlines()), 6 + 200)


def test_keys_equal_only_in_python_are_named_as_written() -> None:
    """`1:` and `true:` in one mapping were "duplicate key "True"": a key the file does not
    have, and keys YAML does not take for one (an int and a bool, equal in Python)."""
    text = MINIMAL + "    config: {1: a, true: b}\n"
    diags = diagnose(text)
    assert [str(d) for d in diags] == [
        f"w.yaml:{':'.join(map(str, located(text, 'true: b')))}: E100 YAML: keys 1 (line 8) and "
        "true are different in YAML but the same key to eclflow (true == 1 in Python) (quote "
        "them to make them text: '1', 'true')"
    ]
    # one key written two ways is a duplicate, named as written
    text = MINIMAL + "    config:\n      1: a\n      0x1: b\n"
    assert [d.message for d in diagnose(text)] == [
        "YAML: duplicate key 0x1: the same key as 1 on line 9"
    ]


# --- E306: operands whose types never go together ---------------------------------------------

TYPED = """\
eclflow: 1
id: typed
model: mock/x
defaults: {retry: {max_attempts: 1}}
inputs:
  type: object
  properties:
    n: {type: integer}
    name: {type: string}
    either: {type: [string, integer]}
env: [ECLFLOW_TEST_LIMIT]
steps:
  - {id: a, type: llm, template: "x"}
  - id: j
    type: llm
    template: "x"
    output_schema:
      type: object
      properties: {score: {type: number}, label: {type: string}, free: {}}
  - id: b
    type: template
    depends_on: [a, j]
    template: "{{ v }}"
    with: {v: "%s"}
output: {v: "{{ steps.b.output.text }}"}
"""
# what a run gives the expressions above: values of the types validate reasons with
TYPED_SCRIPT = {"a": "5", "j": {"content": {"score": 4, "label": "x", "free": 7}}}
TYPED_INPUT = {"n": 3, "name": "x", "either": 2}

# (expression, what the message says, what the hint says to write)
NEVER_WORK = [
    (
        "{{ steps.a.output.text > 3 }}",
        "compares a string with a number",
        "`steps.a.output.text | int > 3`",
    ),
    (
        "{{ 3 <= steps.a.output.text }}",
        "compares a number with a string",
        "`3 <= steps.a.output.text | int`",
    ),
    ("{{ steps.a.output.text + 1 }}", "adds a string and a number", "`steps.a.output.text ~ 1`"),
    (
        "{{ steps.j.output.score - input.name }}",
        "subtracts a string from a number",
        "`steps.j.output.score - input.name | int`",
    ),
    (
        "{{ steps.j.output.label * 1.5 }}",
        "multiplies a string by a number",
        "`steps.j.output.label | int * 1.5`",
    ),
    (
        "{{ 'x' in steps.j.output.score }}",
        "looks for a string in a number",
        "`'x' in (steps.j.output.score | string)`",
    ),
    (
        "{{ input.n in input.name }}",
        "looks for a number in a string",
        "`(input.n | string) in input.name`",
    ),
    (
        "{{ env.ECLFLOW_TEST_LIMIT >= 3 }}",
        "compares a string with a number",
        "`env.ECLFLOW_TEST_LIMIT | int >= 3`",
    ),
    (
        "{{ steps.j.output.score > '3' }}",
        "compares a number with a string",
        "`steps.j.output.score > 3`",
    ),
    (
        "{{ steps.a.output.text | upper > 3 }}",
        "compares a string with a number",
        "`steps.a.output.text | upper | int > 3`",
    ),
    ("{{ steps.a.output.text ~ 1 < 3 }}", "compares a string with a number", "`| int`"),
    (
        "{{ input.n > 'a' }}",
        "compares a number with a string",
        "`input.n | string > 'a'`",
    ),
    (
        "n: {{ input.n / input.name }} of {{ input.n }}",
        "divides a number by a string",
        "`input.n / input.name | int`",
    ),
    # a format written in the template, and a value of a type it never takes
    ("{{ '%d items' % steps.a.output.text }}", "fills the format with a string", "%d"),
    ("{{ 'done' % input.n }}", "fills the format with a number", "fix the format"),
    ("{{ '%s of %s' % steps.j.output.score }}", "fills the format with a number", "one value"),
]

# operations that work (or whose operands validate cannot know): nothing said, and a run completes
MAY_WORK = [
    "{{ steps.a.output.text * 3 }}",
    "{{ steps.a.output.text * input.n }}",
    "{{ steps.a.output.text | length > 3 }}",
    "{{ steps.a.output.text | int > 3 }}",
    "{{ steps.a.output.text ~ 3 }}",
    "{{ steps.a.output.text == '5' }}",
    "{{ steps.j.output.score != none }}",
    "{{ 'a' in steps.a.output.text }}",
    "{{ input.either > 1 }}",
    "{{ steps.j.output.free > 3 }}",
    "{{ steps.j.output.score > 3.5 }}",
    "{{ steps.j.output.label > 3 if steps.j.output.label is number else 0 }}",
    "{{ (steps.a.output.text | default(0)) * 2 }}",
    "{% for input in [{'name': 4}] %}{{ input.name > 3 }}{% endfor %}",
    "{% set env = {'ECLFLOW_TEST_LIMIT': 4} %}{{ env.ECLFLOW_TEST_LIMIT > 3 }}",
    "{{ [input.n] + [1] }}",
    "{{ loops | length > 0 }}",
    "{{ '%s items' % steps.a.output.text }}",
    "{{ '%d items' % input.n }}",
    "{{ '%s-%s' % (steps.a.output.text, input.n) }}",
    "{{ '%c' % steps.a.output.text }}",  # (a one-character string: its length is not known)
    # a branch a constant turns away is never evaluated (it was E306)
    "{{ false and steps.a.output.text > 3 }}",
    "{{ true or steps.a.output.text + 1 }}",
    "{{ 1 if true else steps.a.output.text > 3 }}",
    "{% if false %}{{ steps.a.output.text > 3 }}{% else %}1{% endif %}",
    # nor is the body of a loop over an empty literal (it was E306)
    "{% for i in [] %}{{ steps.a.output.text > 3 }}{% endfor %}",
    "{% for i in () if steps.a.output.text > 3 %}{{ i }}{% else %}1{% endfor %}",
]


def _with(expression: str) -> str:
    return TYPED % expression.replace('"', '\\"')


def _run_typed(expression: str) -> Any:
    """A run of TYPED whose step b binds `expression`, past validate (which refuses what it
    knows fails): what the engine makes of it."""
    import asyncio
    import dataclasses
    from types import MappingProxyType

    import eclflow

    wf = load_text(_with("{{ 1 }}"))
    steps = tuple(
        dataclasses.replace(s, with_=MappingProxyType({"v": expression})) if s.id == "b" else s
        for s in wf.steps
    )
    wf = dataclasses.replace(wf, steps=steps, source=_with(expression))
    return asyncio.run(eclflow.run(wf, TYPED_INPUT, mock_responses=TYPED_SCRIPT))


@pytest.mark.parametrize(("expression", "says", "hint"), NEVER_WORK)
def test_operands_that_never_go_together_are_e306(
    expression: str, says: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`steps.a.output.text > 3` passed validate and failed the run with a TypeError, after
    the steps before it were paid for."""
    text = _with(expression)
    diags = diagnose(text)
    assert [d.code for d in diags] == ["E306"], [str(d) for d in diags]
    (d,) = diags
    assert says in d.message and "TypeError" in d.message, d.message
    assert hint in (d.hint or ""), d.hint
    # located at the operation: its first operand as written
    first = expression.split("{{ ", 1)[1].split(" ", 1)[0].lstrip("(")
    assert (d.location.line, d.location.col) == located(text, first, text.count("v: {v:") + 1)
    # and the run does fail there, as validate says
    monkeypatch.setenv("ECLFLOW_TEST_LIMIT", "5")
    r = _run_typed(expression)
    assert r.status == "failed" and "TypeError" in (r.error or ""), (r.status, r.error)
    assert [(s.step_id, s.status) for s in r.steps] == [("a", "succeeded"), ("j", "succeeded")]


@pytest.mark.parametrize("expression", MAY_WORK)
def test_operands_that_may_go_together_are_not_reported(
    expression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _with(expression)
    assert [str(d) for d in diagnose(text)] == []
    monkeypatch.setenv("ECLFLOW_TEST_LIMIT", "5")
    r = _run_typed(expression)
    assert r.status == "completed", r.error


def test_a_format_that_would_make_a_huge_string_is_not_tried() -> None:
    """validate tries a `%` format with one value of each type, but not one of a huge width
    (a number would make 100 MB here; a run's sandbox refuses it first, not with a TypeError)."""
    assert diagnose(_with("{{ '%99999999d' % steps.a.output.text }}")) == []


def test_a_branch_a_run_may_take_is_judged_whatever_guards_it() -> None:
    """Only a constant turns a branch away for sure: behind a guard that depends on the run,
    the operation fails whenever it is reached, so it is still E306."""
    for expression in (
        "{{ input.n == 0 and steps.a.output.text > 3 }}",
        "{{ input.n or steps.a.output.text > 3 }}",
        "{{ 1 if input.n else steps.a.output.text > 3 }}",
        "{% if input.n %}{{ steps.a.output.text > 3 }}{% endif %}",
        "{% if false %}1{% else %}{{ steps.a.output.text > 3 }}{% endif %}",
        "{% for i in [] %}1{% else %}{{ steps.a.output.text > 3 }}{% endfor %}",
        "{% for i in [0] %}{{ steps.a.output.text > 3 }}{% endfor %}",
    ):
        assert [d.code for d in diagnose(_with(expression))] == ["E306"], expression


def test_e306_in_a_condition_of_several_lines_is_located_on_its_line() -> None:
    text = MINIMAL + (
        "  - {id: b, type: llm, template: x}\n"
        "transitions:\n"
        "  - type: conditional\n"
        "    from: a\n"
        "    to: b\n"
        "    when: >-\n"
        "      steps.a.status == 'succeeded'\n"
        "      and steps.a.output.text | length > 3\n"
        "      or loops | length < steps.a.output.text\n"
    )
    (d,) = diagnose(text)
    assert d.code == "E306" and d.message.startswith("`loops | length < steps.a.output.text`")
    assert (d.location.line, d.location.col) == located(text, "loops | length")


EQUAL = """\
eclflow: 1
id: equal
model: mock/x
defaults: {retry: {max_attempts: 1}}
steps:
  - {id: a, type: llm, template: "x"}
  - id: j
    type: llm
    template: "x"
    depends_on: [a]
    output_schema: {type: object, properties: {score: {type: number}, ok: {type: boolean}}}
  - {id: b, type: template, template: "x"}
transitions:
  - {type: conditional, from: j, to: b, when: "%s"}
output: {v: "{{ steps.b.status }}"}
"""

NEVER_EQUAL = [
    (
        "steps.a.output.text == 5",
        "compares a string with a number",
        "always false",
        "`steps.a.output.text | int == 5`",
    ),
    (
        "5 != steps.a.output.text",
        "compares a number with a string",
        "always true",
        "`5 != steps.a.output.text | int`",
    ),
    (
        "steps.j.output.score == '4'",
        "compares a number with a string",
        "always false",
        "`steps.j.output.score == 4`",
    ),
    (
        "steps.j.output.ok == 'true'",
        "compares a boolean with a string",
        "always false",
        "`steps.j.output.ok == true`",
    ),
]


@pytest.mark.parametrize(("when", "says", "always", "hint"), NEVER_EQUAL)
def test_text_equal_to_a_number_is_a_warning(when: str, says: str, always: str, hint: str) -> None:
    """`when: steps.a.output.text == 5` never held, not even when the reply was "5": the
    branch was silently never taken (or always)."""
    import asyncio

    import eclflow

    text = EQUAL % when
    diags = diagnose(text)
    assert [(d.code, d.severity) for d in diags] == [("W506", "warning")], [str(d) for d in diags]
    (d,) = diags
    assert says in d.message and always in d.message, d.message
    assert hint in (d.hint or ""), d.hint
    assert (d.location.line, d.location.col) == located(text, when)
    # the run does as the warning says: the reply "5" (score 4, ok true) does not make it hold
    script = {"a": "5", "j": {"content": {"score": 4, "ok": True}}}
    r = asyncio.run(eclflow.run(load_text(text), {}, mock_responses=script))
    assert r.status == "completed", r.error
    assert r.output == {"v": "skipped" if always == "always false" else "succeeded"}


# --- E306 and W506 in prompt templates ---------------------------------------------------------

PROMPTED = """\
eclflow: 1
id: prompted
model: mock/x
defaults: {retry: {max_attempts: 1}}
steps:
  - {id: a, type: llm, template: "x"}
  - id: b
    type: llm
    depends_on: [a]
    prompt: p.j2
    config: {max_tokens: 50}
    with:
      reply: "{{ steps.a.output.text }}"
      count: "{{ steps.a.output.text | length }}"
      label: "n {{ steps.a.output.text }}"
      limit: 3
      whole: "{{ steps.a.output }}"
output: {v: "{{ steps.b.output.text }}"}
"""

# (the prompt's second line, what the message says): the prompt's variables are typed by what
# `with:` binds them to, `config` by the file
PROMPT_NEVER_WORKS = [
    ("{{ reply > 3 }}", "`reply > 3` compares a string with a number"),
    ("{% if count > 'a' %}x{% endif %}", "`count > 'a'` compares a number with a string"),
    ("Say {{ label + 1 }}", "`label + 1` adds a string and a number"),
    ("{{ whole.text * 1.5 }}", "`whole.text * 1.5` multiplies a string by a number"),
    ("{{ config.max_tokens < 'a' }}", "`config.max_tokens < 'a'` compares a number with a string"),
    ("{{ max_revisions - reply }}", "`max_revisions - reply` subtracts a string from a number"),
]
PROMPT_MAY_WORK = [
    "{{ reply | int > 3 }}",
    "{{ count > limit }}",
    "{{ reply * limit }}",
    "{{ whole.text ~ 1 }}",
    "{{ config.max_tokens > 3 }}",
    "{% for reply in [4] %}{{ reply > 3 }}{% endfor %}",
    "{% if false %}{{ reply > 3 }}{% endif %}",
]


def _prompted(tmp_path: Path, line: str) -> tuple[str, Path]:
    (tmp_path / "p.j2").write_text(f"Write one word.\n{line}\n")
    return PROMPTED, tmp_path / "p.j2"


def _run_prompted(tmp_path: Path, text: str) -> Any:
    """A run of `text` past validate (which refuses what it knows fails): the prompt file is
    read when the step runs, so it is written after the workflow is loaded."""
    import asyncio

    import eclflow

    prompt = (tmp_path / "p.j2").read_text()
    (tmp_path / "p.j2").write_text("Write one word.\n")
    wf = load_text(text, file="w.yaml", base_dir=tmp_path)
    (tmp_path / "p.j2").write_text(prompt)
    return asyncio.run(eclflow.run(wf, {}, mock_responses={"a": "5", "b": "ok"}))


@pytest.mark.parametrize(("line", "says"), PROMPT_NEVER_WORKS)
def test_a_prompt_whose_operands_never_go_together_is_e306_in_its_file(
    tmp_path: Path, line: str, says: str
) -> None:
    """`{{ reply > 3 }}` in a prompt passed validate (its `with:` and conditions were
    type-checked, its templates not) and failed the run with a TypeError at that step."""
    text, prompt = _prompted(tmp_path, line)
    diags = diagnose(text, base_dir=tmp_path)
    assert [(d.code, d.severity) for d in diags] == [("E306", "error")], [str(d) for d in diags]
    (d,) = diags
    assert d.message.startswith(f"prompt of step 'b': {says}: a run fails there"), d.message
    # located in the prompt file, at the operation's first operand
    first = says.split("`")[1].split(" ")[0]
    assert (d.location.file, d.location.line) == (str(prompt), 2)
    assert d.location.col == line.index(first) + 1
    r = _run_prompted(tmp_path, text)
    assert r.status == "failed" and "TypeError" in (r.error or ""), (r.status, r.error)
    assert [(s.step_id, s.status) for s in r.steps] == [("a", "succeeded"), ("b", "failed")]


@pytest.mark.parametrize("line", PROMPT_MAY_WORK)
def test_a_prompt_whose_operands_may_go_together_is_not_reported(tmp_path: Path, line: str) -> None:
    text, _ = _prompted(tmp_path, line)
    assert [str(d) for d in diagnose(text, base_dir=tmp_path)] == []
    r = _run_prompted(tmp_path, text)
    assert r.status == "completed", r.error


def test_type_clashes_in_inline_prompts_are_located_in_the_workflow(tmp_path: Path) -> None:
    text = PROMPTED.replace(
        "    prompt: p.j2\n",
        "    template: |\n      Write.\n        {{ reply == 5 }}\n    system: 'Be {{ reply + 1 }}'\n",
    )
    diags = diagnose(text)
    assert [(d.code, d.location.line, d.location.col) for d in diags] == [
        ("W506", *located(text, "reply == 5")),
        ("E306", *located(text, "reply + 1")),
    ], [str(d) for d in diags]
    assert diags[0].message.startswith("prompt of step 'b': `reply == 5` compares a string")


def test_validate_names_the_prompt_file_as_the_workflow_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.yaml").write_text(PROMPTED)
    (tmp_path / "sub" / "p.j2").write_text("Write.\n  {{ reply > 3 }}\n")
    r = run_cli("validate", "sub/w.yaml", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith(
        "sub/p.j2:2:6: E306 prompt of step 'b': `reply > 3` compares a string with a number"
    ), r.stdout


@pytest.mark.parametrize(
    ("prompt", "said"),
    [
        (
            "Write.\n  {% if reply %}\n",
            "sub/p.j2:2:3: E301 prompt of step 'b': template does not parse: Unexpected end of "
            "template. Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. "
            "The innermost block that needs to be closed is 'if'.",
        ),
        (
            "Write.\n\n  {% include 'x.j2' %}\n",
            "sub/p.j2:3:3: E301 prompt of step 'b': {% include %} is not supported: a template "
            "cannot load another (put the text in this template, or pass it in through `with:`)",
        ),
        (
            "Write.\n  {{ reply | upperr }}\n",
            "sub/p.j2:2:14: E301 prompt of step 'b': no filter named 'upperr' (did you mean "
            "'upper'?)",
        ),
        (
            "Write.\n  {{ reply }} {{ replly }}\n",
            "sub/p.j2:2:18: E302 prompt of step 'b' uses 'replly', which is not in its input (did "
            "you mean 'reply'?)",
        ),
    ],
)
def test_a_prompt_files_problems_are_located_in_it(tmp_path: Path, prompt: str, said: str) -> None:
    """A prompt file's E301 and E302 were located at the workflow's `prompt:` key (`(p.j2 line
    3)` in the message, or no line at all), while its E306 pointed into the file: each is now
    at its line and column in the file, as the command line names it."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.yaml").write_text(PROMPTED)
    (tmp_path / "sub" / "p.j2").write_text(prompt)
    r = run_cli("validate", "sub/w.yaml", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == said, r.stdout


def test_a_value_a_message_quotes_is_shown_on_one_short_line() -> None:
    """A diagnostic quoting the value it is about printed it whole: a step type holding a
    newline split the line in two, an escape sequence acted on the terminal, and a type of
    10,000 characters (or an output_schema's value of 20,000) made a line that long."""
    long = "x" * 10_000
    text = (
        "eclflow: 1\nid: long\nsteps:\n"
        '  - {id: a, type: "one\\n\\u001b[2Jtwo", template: x}\n'
        f"  - {{id: b, type: {long}, template: x}}\n"
    )
    got = [(d.code, d.location.line, d.message) for d in diagnose(text)]
    assert got == [
        ("E202", 4, "unknown step type 'one\\n\\x1b[2Jtwo'"),
        ("E202", 5, "unknown step type '" + "x" * 59 + "…'"),
    ], got
    text = (
        "eclflow: 1\nid: long\nsteps:\n"
        f"  - {{id: c, type: llm, template: x, output_schema: {{properties: {{a: {long}}}}}}}\n"
    )
    got = [(d.code, d.location.line, d.message) for d in diagnose(text)]
    assert got == [
        (
            "E116",
            4,
            "steps[0].output_schema is not a valid JSON Schema: '"
            + "x" * 59
            + "…' is not of type 'object', 'boolean'",
        ),
    ], got


PARSES_IN_THREADS = """\
import sys, threading, warnings

from eclflow.spec import check_text

sys.setswitchinterval(1e-6)  # (threads take turns often: the parses overlap)
steps = "".join(f"  - {{id: s{j}, type: template, template: x}}\\n" for j in range(30))
texts = [f"eclflow: 1\\nid: w{i}\\nsteps:\\n{steps}" for i in range(8)]
threads = [
    threading.Thread(target=lambda t=t: [check_text(t) for _ in range(20)]) for t in texts
]
for t in threads:
    t.start()
for t in threads:
    t.join()
warnings.warn("said after the parses")
"""


def test_parsing_in_threads_leaves_pythons_warnings_as_they_were() -> None:
    """Workflows parsed in several threads at once (a batch resuming its runs, each in a
    thread) left the process's warnings in another parse's hands: each parse set up its own
    recording of warnings and put back what it found, the one an overlapping parse had set,
    so every later warning of the program was appended to a list nobody reads (never shown,
    and the list grows)."""
    r = subprocess.run(
        [sys.executable, "-c", PARSES_IN_THREADS],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    assert "UserWarning: said after the parses" in r.stderr, r.stderr


def test_only_a_long_quoted_value_is_shortened_not_the_text_between_two() -> None:
    """The text between two short quoted values ('b' … 'elif') was taken for one long value
    and cut: a prompt's parse error lost the words saying what Jinja was looking for."""
    from eclflow.spec.model import one_line

    said = (
        "prompt of step 'b': template does not parse: Unexpected end of template. Jinja was "
        "looking for the following tags: 'elif' or 'else' or 'endif'."
    )
    assert one_line(said) == said
    assert one_line(f"type '{'x' * 100}' and 'y'") == f"type '{'x' * 59}…' and 'y'"
    assert one_line(f'is "{"x" * 100}"; expected') == f'is "{"x" * 59}…"; expected'


def test_what_the_sandbox_refuses_is_refused_by_validate() -> None:
    """`''.__class__` (and `x['__init__']`) passed validate; every run then failed at that
    template with 'unsafe template refused by the sandbox', after paying for the steps before."""
    text = (
        "eclflow: 1\nid: evil\nsteps:\n"
        "  - {id: a, type: template, template: \"{{ ''.__class__.__mro__ }}\"}\n"
        "  - id: b\n    type: template\n    depends_on: [a]\n"
        '    template: "{{ x }}"\n    with: {x: "{{ input.who[\'__init__\'] }}"}\n'
        'output: {a: "{{ steps.a.output.text.__class__ }}"}\n'
    )
    got = [(d.code, d.location.line, d.location.col, d.message) for d in diagnose(text)]
    refused = "is refused by the sandbox: a template cannot reach Python's internals"
    assert got == [
        ("E301", 4, 46, f"`__class__` {refused}"),
        ("E301", 9, 30, f"`__init__` {refused}"),
        ("E301", 10, 37, f"`__class__` {refused}"),
    ], got
    # a key of that name of one's own data is another thing: only Python's own are refused
    assert diagnose(MINIMAL.replace("input.who", "input.__who")) == []


def test_a_dunder_key_of_a_mapping_is_a_key_not_a_sandbox_refusal() -> None:
    """`input['__init__']` was E301 "refused by the sandbox", but a run looks a mapping's key
    up first: with an input of that name it completes. It is judged as any key: E302 where
    the mapping cannot have it (`inputs` closed, a built-in step's fixed output)."""
    import asyncio

    import eclflow

    text = MINIMAL.replace("input.who", "input['__init__']")
    assert diagnose(text) == []
    result = asyncio.run(eclflow.run(load_text(text), {"__init__": "world"}))
    assert (result.status, result.output, result.steps[0].output) == (
        "completed",
        {},
        {"text": "hello world"},
    )
    closed = text.replace("steps:", "inputs: {type: object, additionalProperties: false}\nsteps:")
    got = [(d.code, d.message) for d in diagnose(closed)]
    assert got == [
        ("E302", "input.__init__ does not exist: `inputs` allows no other properties")
    ], got
    fixed = MINIMAL + (
        '  - {id: b, type: template, template: "{{ y }}", depends_on: [a],\n'
        "     with: {y: \"{{ steps.a.output['__class__'] }}\"}}\n"
    )
    got = [(d.code, d.message) for d in diagnose(fixed)]
    assert [c for c, _ in got] == ["E302"] and "__class__" in got[0][1], got


def test_a_field_of_a_string_or_number_is_e302() -> None:
    """`steps.a.output.text.summary` (an llm step without output_schema replies text) passed
    validate; every run then failed there: 'str object' has no attribute 'summary'. A method
    (`text.upper()`), a number's own attributes and a guarded read are left alone."""
    text = (
        "eclflow: 1\nid: fields\ninputs: {type: object, properties: {n: {type: integer}}}\n"
        "steps:\n"
        '  - {id: a, type: llm, model: mock/x, template: "x"}\n'
        '  - {id: c, type: critique, model: mock/x, with: {draft: "{{ input.n.size }}"}}\n'
        "output:\n"
        '  bad: "{{ steps.a.output.text.summary }}"\n'
        '  score: "{{ steps.c.output.quality_score.value }}"\n'
        '  upper: "{{ steps.a.output.text.upper() }}"\n'
        '  real: "{{ steps.c.output.quality_score.real }}"\n'
        "  guarded: \"{{ steps.a.output.text.summary | default('') }}\"\n"
    )
    got = [(d.code, d.location.line, d.message, d.hint) for d in diagnose(text)]
    assert got == [
        ("E302", 6, "input.n is a number: it has no field 'size'", "read input.n itself"),
        (
            "E302",
            8,
            "steps.a.output.text is a string: it has no field 'summary'",
            "give step 'a' an output_schema with the fields its JSON reply has",
        ),
        (
            "E302",
            9,
            "steps.c.output.quality_score is a number: it has no field 'value'",
            "read steps.c.output.quality_score itself",
        ),
    ], got


def test_an_index_into_a_string_is_no_field_of_it() -> None:
    """`input.name[0]` (a string's first letter) and `steps.a.output.text.0` were E302 ("is a
    string: it has no field '0'"), so a workflow that ran fine stopped validating; an index
    into a number is still E302 (the run fails reading it)."""
    import asyncio

    import eclflow

    text = (
        "eclflow: 1\nid: initial\nmodel: mock/x\n"
        "inputs: {type: object, properties: {name: {type: string}, n: {type: integer}}}\n"
        "steps:\n"
        '  - {id: a, type: llm, template: "hi {{ who }}", with: {who: "{{ input.name[0] }}"}}\n'
        "output:\n"
        '  first: "{{ steps.a.output.text[0] }}{{ steps.a.output.text.1 }}"\n'
        '  initial: "{{ input.name[0] }}"\n'
    )
    assert [str(d) for d in diagnose(text)] == []
    result = asyncio.run(
        eclflow.run(eclflow.load_text(text), {"name": "Ada"}, mock_responses=["ok"])
    )
    assert (result.status, result.output) == ("completed", {"first": "ok", "initial": "A"})
    number = text.replace('"{{ input.name[0] }}"\n', '"{{ input.n[0] }}"\n')
    got = [(d.code, d.location.line, d.message) for d in diagnose(number)]
    assert got == [("E302", 9, "input.n is a number: it has no field '0'")], got


def test_a_field_of_a_string_a_run_never_reads_is_no_e302() -> None:
    """A field read a constant turns away (`{% if false %}`, `… if false else …`) or of a
    value the template tests (`x.summary if x is mapping else x`) was E302 ("is a string: it
    has no field …"), though every run completes: the run never reads it. E306 already left
    such operations alone; the field check now does too."""
    import asyncio

    import eclflow

    text = (
        "eclflow: 1\nid: dead\nmodel: mock/x\n"
        "inputs: {type: object, properties: {name: {type: string}, n: {type: integer}}}\n"
        "steps:\n"
        '  - {id: a, type: llm, template: "hi"}\n'
        "output:\n"
        '  off: "{% if false %}{{ input.name.first }}{% endif %}{{ input.n.size if false else 1 }}"\n'
        '  either: "{{ steps.a.output.text.summary if steps.a.output.text is mapping'
        ' else steps.a.output.text }}"\n'
        '  typed: "{{ steps.a.output.text if steps.a.output.text is string'
        ' else steps.a.output.text.summary }}"\n'
    )
    assert [str(d) for d in diagnose(text)] == []
    result = asyncio.run(
        eclflow.run(eclflow.load_text(text), {"name": "Ada", "n": 2}, mock_responses=["ok"])
    )
    assert (result.status, result.output) == (
        "completed",
        {"off": "1", "either": "ok", "typed": "ok"},
    )
    # a read a run reaches is still reported
    live = text.replace("{% if false %}", "{% if input.n %}")
    got = [(d.code, d.location.line, d.message) for d in diagnose(live)]
    assert got == [("E302", 8, "input.name is a string: it has no field 'first'")], got


@pytest.mark.parametrize(
    ("make", "said", "hint"),
    [
        (lambda p: os.mkfifo(p), "is a FIFO, not a file", "name a template file"),
        (
            lambda p: os.symlink("nowhere.j2", p),
            "is a link that leads nowhere, not a file",
            "name a template file",
        ),
        (
            lambda p: p.write_bytes("hi {{ topic }}\n".encode("utf-16-le")),
            "is UTF-16 text",
            "save it as UTF-8, e.g. with `iconv -f UTF-16 -t UTF-8`",
        ),
        (
            lambda p: p.write_bytes(b"hi\x00{{ topic }}"),
            "is not text (it holds NUL bytes)",
            "name a template file",
        ),
    ],
)
def test_a_prompt_file_that_is_no_text_file_says_what_it_is(
    tmp_path: Path, make: Any, said: str, hint: str
) -> None:
    """A FIFO, a device or a dangling link as `prompt:` was 'not found' (it is there: one went
    looking for a typo); a UTF-16 prompt file (what Windows tools write) or one with NUL bytes
    passed validate, and the model got the NULs."""
    make(tmp_path / "p.j2")
    text = (
        "eclflow: 1\nid: p\nsteps:\n  - {id: a, type: generate, prompt: p.j2, with: {topic: x}}\n"
    )
    (d,) = diagnose(text, tmp_path)
    assert (d.code, d.location.line, d.message, d.hint) == (
        "E401",
        4,
        f"prompt file 'p.j2' {said}",
        hint,
    )


def test_a_loop_over_a_number_and_arithmetic_on_a_steps_output_are_e306() -> None:
    """`{% for i in max_revisions %}`, `{% for i in input.n %}` (an integer) and
    `steps.a.output + 1` (a built-in step's output is a mapping) passed validate; every run
    failed there with a TypeError, after paying for the steps before."""
    text = (
        "eclflow: 1\nid: it\nmodel: mock/x\n"
        "inputs: {type: object, properties: {n: {type: integer}}}\nsteps:\n"
        '  - {id: a, type: llm, template: "{% for i in max_revisions %}x{% endfor %}"}\n'
        "  - id: b\n    type: template\n    depends_on: [a]\n"
        '    template: "{{ x }}"\n'
        '    with: {x: "{% for i in input.n %}{{ i }}{% endfor %}"}\n'
        'output: {a: "{{ steps.a.output + 1 }}", b: "{{ steps.b.output.text }}"}\n'
    )
    got = [(d.code, d.location.line, d.message, d.hint) for d in diagnose(text)]
    assert got == [
        (
            "E306",
            6,
            "prompt of step 'a': `{% for … in max_revisions %}` iterates over a number: a run "
            "fails there (TypeError)",
            "iterate over a list, a string or a mapping (to count: range(max_revisions | int))",
        ),
        (
            "E306",
            11,
            "`{% for … in input.n %}` iterates over a number: a run fails there (TypeError)",
            "iterate over a list, a string or a mapping (to count: range(input.n | int))",
        ),
        (
            "E306",
            12,
            "`steps.a.output + 1` adds a mapping and a number: a run fails there (TypeError)",
            "convert one side so both are of one type: `| int`, `| float`, `| string`",
        ),
    ], got
    # iterating over a step's output (a mapping), a string or a list is fine
    fine = text.replace("max_revisions %}", "config %}").replace("input.n %}", "'ab' %}")
    fine = fine.replace("steps.a.output + 1", "steps.a.output | length + 1")
    assert diagnose(fine) == [], [str(d) for d in diagnose(fine)]


def test_an_llm_steps_output_has_the_type_its_output_schema_gives() -> None:
    """An `llm` step's output is the JSON its `output_schema` describes, which need not be an
    object: `steps.a.output + ['more']` of a step whose schema is an array was E306 ("adds a
    mapping and a list"), though every run of it completes; the output of a schema without
    `type` is not judged, that of an object schema still is."""
    import asyncio

    import eclflow

    text = (
        "eclflow: 1\nid: ideas\nmodel: mock/x\nsteps:\n"
        '  - {id: a, type: llm, template: "three ideas", output_schema: {type: array}}\n'
        "output:\n"
        "  all: \"{{ steps.a.output + ['more'] }}\"\n"
        '  first: "{{ steps.a.output[0] }}"\n'
    )
    assert [str(d) for d in diagnose(text)] == []
    result = asyncio.run(eclflow.run(eclflow.load_text(text), {}, mock_responses=['["x", "y"]']))
    assert (result.status, result.output) == (
        "completed",
        {"all": ["x", "y", "more"], "first": "x"},
    )
    untyped = text.replace("{type: array}", "{items: {type: string}}")
    assert [str(d) for d in diagnose(untyped)] == []
    an_object = text.replace("{type: array}", "{type: object}")
    got = [(d.code, d.location.line, d.message) for d in diagnose(an_object)]
    assert got == [
        (
            "E306",
            7,
            "`+` adds a mapping and a list: a run fails there (TypeError)",
        )
    ], got


def test_a_step_revised_by_a_plugin_has_an_output_of_unknown_type() -> None:
    """A plugin's output may be any value: once a plugin reviser can replace a generate
    step's output, `steps.g.output + 1` is not known to fail (E306 said it would)."""
    from eclflow.steps.builtin import ReviseStep
    from eclflow.steps.registry import default_registry

    class Rewrite(ReviseStep):  # (its output: whatever it returns)
        type_name = "rewrite_test"

    registry = default_registry()
    registry.register(Rewrite, replace=True)
    text = (
        "eclflow: 1\nid: pl\nmodel: mock/x\nsteps:\n"
        "  - {id: g, type: generate, with: {topic: t}}\n"
        '  - {id: c, type: critique, depends_on: [g], with: {draft: "{{ steps.g.output.draft }}"}}\n'
        "  - id: r\n    type: rewrite_test\n    depends_on: [c]\n    revision_source: c\n"
        '    with: {draft: "{{ steps.g.output.draft }}", feedback: "{{ loop.feedback }}"}\n'
        "transitions:\n"
        "  - {type: revision_loop, validator: c, reviser: r, target: g, max_iterations: 2}\n"
        'output: {n: "{{ steps.g.output + 1 }}"}\n'
    )
    try:
        assert [str(d) for d in diagnose(text)] == []
        builtin = text.replace("type: rewrite_test", "type: revise")
        assert [d.code for d in diagnose(builtin)] == ["E306"]
    finally:
        registry._types.pop("rewrite_test")
