"""End-to-end scenarios through the real `eclflow run` in a subprocess, with `mock/` scripts.

Each scenario checks the documented call counts and statuses, the JSON result, and the mock's
request log (ECLFLOW_MOCK_LOG), which lists every call the model actually received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE

PASS = {"decision": "pass", "critique": "Clear and complete."}
REVISE = {"decision": "revise", "critique": "Too short.", "feedback": "Add an example."}

FAST_RETRY = "initial_delay: 1s"


def critique_revise(tmp_path: Path, *, on_exhausted: str = "fail", max_iterations: int = 3) -> Path:
    """The bundled workflow with millisecond retry delays (and the loop settings given)."""
    text = CRITIQUE_REVISE.read_text()
    text = text.replace(FAST_RETRY, "initial_delay: 5ms").replace(
        "max_delay: 10s", "max_delay: 10ms"
    )
    text = text.replace("on_exhausted: fail", f"on_exhausted: {on_exhausted}")
    text = text.replace("max_iterations: 3", f"max_iterations: {max_iterations}")
    path = tmp_path / "critique_revise.yaml"
    path.write_text(text)
    return path


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str], log: Path) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.data: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
        self.calls = (
            [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        )

    @property
    def keys(self) -> list[str]:
        return [s["key"] for s in self.data["steps"]]

    def step(self, key: str) -> dict[str, Any]:
        return next(s for s in self.data["steps"] if s["key"] == key)


def run(tmp_path: Path, workflow: Path, script: list[Any], *args: str) -> Result:
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps(script))
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    env = {**os.environ, "ECLFLOW_MOCK_LOG": str(log), "ECLFLOW_DATABASE_URL": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eclflow",
            "run",
            str(workflow),
            "--model",
            "mock/test",
            "--mock-responses",
            str(script_file),
            "--db",
            f"sqlite:///{tmp_path / 'runs.db'}",
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return Result(proc, log)


def test_passes_first_time(tmp_path: Path) -> None:
    r = run(tmp_path, critique_revise(tmp_path), ["A draft.", PASS], "-i", "topic=tide pools")
    assert r.code == 0, r.stderr
    assert r.data["status"] == "completed"
    assert r.keys == ["generate", "critique#1"]
    assert len(r.calls) == 2
    assert r.data["output"] == {"final_text": "A draft.", "revision_count": 0}
    assert "tide pools" in r.calls[0]["messages"][-1]["content"]


def test_one_revision(tmp_path: Path) -> None:
    r = run(tmp_path, critique_revise(tmp_path), ["v1", REVISE, "v2", PASS], "-i", "topic=x")
    assert r.code == 0, r.stderr
    assert r.keys == ["generate", "critique#1", "revise#1", "critique#2"]
    assert len(r.calls) == 4
    assert r.data["output"] == {"final_text": "v2", "revision_count": 1}
    # the reviser saw the draft and the critique's feedback
    revise_prompt = r.calls[2]["messages"][-1]["content"]
    assert "v1" in revise_prompt and "Add an example." in revise_prompt
    assert "1 of 3" in revise_prompt
    # the second critique judged the revised draft
    assert "v2" in r.calls[3]["messages"][-1]["content"]


def test_two_revisions(tmp_path: Path) -> None:
    script = ["v1", REVISE, "v2", REVISE, "v3", PASS]
    r = run(tmp_path, critique_revise(tmp_path), script, "-i", "topic=x")
    assert r.code == 0, r.stderr
    assert len(r.calls) == 6
    assert r.data["output"] == {"final_text": "v3", "revision_count": 2}
    assert r.data["revisions"] == {"critique": 2}


def test_never_passes_fails_after_max_revisions(tmp_path: Path) -> None:
    script = ["v1", REVISE, "v2", REVISE, "v3", REVISE, "v4", REVISE]
    r = run(tmp_path, critique_revise(tmp_path), script, "-i", "topic=x")
    assert r.code == 1
    assert len(r.calls) == 8
    assert r.keys == [
        "generate",
        "critique#1",
        "revise#1",
        "critique#2",
        "revise#2",
        "critique#3",
        "revise#3",
        "critique#4",
    ]
    assert r.data["status"] == "failed"
    assert "max revisions exceeded" in r.data["error"]
    assert r.data["output"]["final_text"] == "v4"  # the last draft is kept
    critiques = [s for s in r.data["steps"] if s["id"] == "critique"]
    assert len(critiques) == 4 and all(c["output"]["decision"] == "revise" for c in critiques)


def test_exhausted_loop_can_accept(tmp_path: Path) -> None:
    script = ["v1", REVISE, "v2", REVISE, "v3", REVISE, "v4", REVISE]
    r = run(tmp_path, critique_revise(tmp_path, on_exhausted="accept"), script, "-i", "topic=x")
    assert r.code == 0, r.stderr
    assert r.data["status"] == "completed"
    assert r.data["output"] == {"final_text": "v4", "revision_count": 3}


def test_loop_bound_of_one(tmp_path: Path) -> None:
    r = run(
        tmp_path,
        critique_revise(tmp_path, max_iterations=1),
        ["v1", REVISE, "v2", REVISE],
        "-i",
        "topic=x",
    )
    assert r.code == 1
    assert len(r.calls) == 4
    assert "max revisions exceeded (1 attempts)" in r.data["error"]


def test_rate_limit_twice_then_success(tmp_path: Path) -> None:
    script = [{"error": "rate_limit"}, {"error": "rate_limit"}, "v1", PASS]
    r = run(tmp_path, critique_revise(tmp_path), script, "-i", "topic=x")
    assert r.code == 0, r.stderr
    assert r.step("generate")["attempts"] == 3
    assert len(r.calls) == 4


def test_auth_error_fails_at_once(tmp_path: Path) -> None:
    r = run(
        tmp_path, critique_revise(tmp_path), [{"error": "auth_error"}, "unused"], "-i", "topic=x"
    )
    assert r.code == 1
    assert r.step("generate")["attempts"] == 1
    assert r.step("generate")["status"] == "failed"
    assert len(r.calls) == 1
    assert r.data["failed_step"] == "generate"


def test_retries_exhausted(tmp_path: Path) -> None:
    script = [{"error": "server_error"}] * 3
    r = run(tmp_path, critique_revise(tmp_path), script, "-i", "topic=x")
    assert r.code == 1
    assert r.step("generate")["attempts"] == 3
    assert len(r.calls) == 3


def test_malformed_critique_json_is_retried(tmp_path: Path) -> None:
    script = ["v1", "this is not json", "```json\n" + json.dumps(PASS) + "\n```"]
    r = run(tmp_path, critique_revise(tmp_path), script, "-i", "topic=x")
    assert r.code == 0, r.stderr
    assert r.step("critique#1")["attempts"] == 2
    assert r.step("critique#1")["output"]["decision"] == "pass"


def test_input_failing_the_schema_is_rejected_before_any_call(tmp_path: Path) -> None:
    r = run(tmp_path, critique_revise(tmp_path), ["v1", PASS], "-i", "topic=")
    assert r.code == 2
    assert r.calls == []
    assert "topic" in r.stderr
    r = run(tmp_path, critique_revise(tmp_path), ["v1", PASS])  # no topic at all
    assert r.code == 2 and r.calls == []
    assert "'topic' is a required property" in r.stderr


def test_mock_raises_when_exhausted(tmp_path: Path) -> None:
    r = run(tmp_path, critique_revise(tmp_path), ["v1"], "-i", "topic=x")
    assert r.code == 1
    assert "no reply left" in r.data["error"]
    assert r.data["failed_step"] == "critique"


def test_data_is_never_rendered_again(tmp_path: Path) -> None:
    r = run(tmp_path, critique_revise(tmp_path), ["{{ 7*7 }}", PASS], "-i", "topic={{ 7*7 }}")
    assert r.code == 0, r.stderr
    assert "{{ 7*7 }}" in r.calls[0]["messages"][-1]["content"]
    assert "{{ 7*7 }}" in r.calls[1]["messages"][-1]["content"]
    assert r.data["output"]["final_text"] == "{{ 7*7 }}"


CONDITIONAL = """\
eclflow: 1
id: routing
name: Routing
model: mock/test
inputs: {type: object, required: [text], properties: {text: {type: string}}}
steps:
  - id: classify
    type: llm
    template: "Is this long? {{ text }}"
    with: {text: "{{ input.text }}"}
    output_schema:
      type: object
      required: [long]
      properties: {long: {type: boolean}}
  - id: summarize
    type: llm
    template: "Summarize: {{ text }}"
    with: {text: "{{ input.text }}"}
  - id: shout
    type: template
    template: "{{ text | upper }}"
    with: {text: "{{ steps.summarize.output.text }}"}
  - id: keep
    type: template
    template: "as is: {{ text }}"
    with: {text: "{{ input.text }}"}
transitions:
  - {type: conditional, from: classify, to: summarize, when: "steps.classify.output.long"}
  - {type: sequential, from: summarize, to: shout}
  - {type: conditional, from: classify, to: keep, when: "not steps.classify.output.long"}
output:
  route: "{{ 'long' if steps.classify.output.long else 'short' }}"
  summary_status: "{{ steps.summarize.status }}"
"""


def test_conditional_skips_a_branch(tmp_path: Path) -> None:
    wf = tmp_path / "routing.yaml"
    wf.write_text(CONDITIONAL)
    r = run(tmp_path, wf, [{"content": {"long": False}}], "-i", "text=hi")
    assert r.code == 0, r.stderr
    statuses = {s["key"]: s["status"] for s in r.data["steps"]}
    assert statuses == {
        "classify": "succeeded",
        "summarize": "skipped",
        "shout": "skipped",
        "keep": "succeeded",
    }
    assert r.data["output"] == {"route": "short", "summary_status": "skipped"}
    assert len(r.calls) == 1

    r = run(tmp_path, wf, [{"content": {"long": True}}, "a summary"], "-i", "text=hi")
    assert r.code == 0, r.stderr
    statuses = {s["key"]: s["status"] for s in r.data["steps"]}
    assert statuses["keep"] == "skipped" and statuses["shout"] == "succeeded"
    assert r.step("shout")["output"] == {"text": "A SUMMARY"}


PARALLEL = """\
eclflow: 1
id: branches
name: Branches
model: mock/test
steps:
  - {id: left, type: llm, template: "left"}
  - {id: right, type: llm, template: "right"}
  - id: join
    type: template
    depends_on: [left, right]
    template: "{{ a }} + {{ b }}"
    with: {a: "{{ steps.left.output.text }}", b: "{{ steps.right.output.text }}"}
output: {joined: "{{ steps.join.output.text }}"}
"""


def test_independent_branches_overlap_in_time(tmp_path: Path) -> None:
    import sqlite3

    wf = tmp_path / "branches.yaml"
    wf.write_text(PARALLEL)
    script = [{"content": "L", "delay": 0.4}, {"content": "R", "delay": 0.4}]
    r = run(tmp_path, wf, script)
    assert r.code == 0, r.stderr
    assert r.data["output"]["joined"] in ("L + R", "R + L")
    with sqlite3.connect(tmp_path / "runs.db") as db:
        rows = dict(
            (k, (s, c))
            for k, s, c in db.execute(
                "select key, started_at, completed_at from step_executions where run_id = ?",
                (r.data["run_id"],),
            )
        )
    (ls, lc), (rs, rc) = rows["left"], rows["right"]
    assert ls < rc and rs < lc, "the two branches did not run at the same time"
    assert rows["join"][0] >= max(lc, rc)


def test_unsafe_template_is_refused(tmp_path: Path) -> None:
    wf = tmp_path / "evil.yaml"
    wf.write_text(
        "eclflow: 1\nid: evil\nname: Evil\nsteps:\n"
        "  - id: t\n    type: template\n"
        "    template: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"\n"
    )
    r = run(tmp_path, wf, [])
    assert r.code == 1
    said = (r.data.get("error") or "") + r.stderr
    assert "sandbox" in said or "unsafe" in said or "__class__" in said
    assert "Traceback" not in r.stderr


def test_env_is_reachable_only_through_the_allow_list(tmp_path: Path) -> None:
    wf = tmp_path / "env.yaml"
    wf.write_text(
        "eclflow: 1\nid: envy\nname: Env\nenv: [ECLFLOW_TEST_OK]\nsteps:\n"
        '  - id: t\n    type: template\n    template: "{{ v }}"\n'
        '    with: {v: "{{ env.ECLFLOW_TEST_OK }}"}\n'
        'output: {v: "{{ steps.t.output.text }}"}\n'
    )
    os.environ["ECLFLOW_TEST_OK"] = "visible"
    try:
        r = run(tmp_path, wf, [])
    finally:
        del os.environ["ECLFLOW_TEST_OK"]
    assert r.code == 0, r.stderr
    assert r.data["output"] == {"v": "visible"}


@pytest.mark.parametrize("bad", ["topic", "-i"])
def test_bad_input_syntax_is_a_usage_error(tmp_path: Path, bad: str) -> None:
    r = (
        run(tmp_path, critique_revise(tmp_path), [], "-i", bad)
        if bad != "-i"
        else run(tmp_path, critique_revise(tmp_path), [], "-i")
    )
    assert r.code == 2
    assert "Traceback" not in r.stderr
