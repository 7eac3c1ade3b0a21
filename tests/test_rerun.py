"""`eclflow run FILE --from STEP --run RUN_ID`: a new run that reuses an earlier run's results
but those of STEP and the steps it leads to (eclflow/engine/rerun.py), through the real command
line and journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import CRITIQUE_REVISE
from test_crash import KEYS, calls, script


def eclflow(*args: str, env: dict[str, str]) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "eclflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def first_run(tmp_path: Path) -> tuple[dict[str, str], str]:
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
        "ECLFLOW_MOCK_LOG": str(log),
    }
    (tmp_path / "all.json").write_text(script(KEYS))
    r = eclflow(
        *("run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "all.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    return env, json.loads(r.stdout)["run_id"]


def test_from_a_step_reuses_what_is_upstream_of_it(tmp_path: Path) -> None:
    env, old = first_run(tmp_path)
    (tmp_path / "rest.json").write_text(script(KEYS[1:]))  # no reply for generate
    r = eclflow(
        *("run", str(CRITIQUE_REVISE), "--from", "critique", "--run", old[:8]),
        *("--model", "mock/x", "--mock-responses", str(tmp_path / "rest.json"), "--json"),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "completed" and result["run_id"] != old
    assert result["output"]["final_text"] == "draft two"
    assert calls(tmp_path / "calls.jsonl") == [*KEYS, *KEYS[1:]]  # generate was not called again
    shown = eclflow("show", result["run_id"], env=env).stdout.splitlines()
    headings = [line for line in shown if line.startswith(("== generate", "== critique"))]
    assert headings[0] == f"== generate · attempt 1 · succeeded · reused from run {old[:8]}"
    assert "reused" not in headings[1]  # critique was called again


def test_a_run_of_another_workflow_is_refused(tmp_path: Path) -> None:
    """The id of another workflow's run is a usage error (exit 2, as for a run that does not
    exist), not a run in no state for the command (exit 1)."""
    env, old = first_run(tmp_path)
    other = tmp_path / "other.yaml"
    text = CRITIQUE_REVISE.read_text().replace("id: critique-revise", "id: other-flow", 1)
    other.write_text(text)
    r = eclflow(
        *("run", str(other), "--from", "critique", "--run", old[:8]),
        *("--model", "mock/x", "--mock-responses", str(tmp_path / "all.json")),
        env=env,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        f"error: run {old[:8]} is of workflow 'critique-revise', not 'other-flow': "
        "--from reuses the steps of a run of the same workflow"
    )
    assert calls(tmp_path / "calls.jsonl") == KEYS  # nothing was called


def test_another_input_is_refused(tmp_path: Path) -> None:
    """The new run recorded the new input and held results made from the old one."""
    env, old = first_run(tmp_path)
    r = eclflow(
        *("run", str(CRITIQUE_REVISE), "--from", "critique", "--run", old[:8]),
        *("-i", "topic=volcanoes", "--model", "mock/x"),
        env=env,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: --from reuses results made from the earlier run's input")


def test_from_a_step_reuses_the_steps_beside_it_too(tmp_path: Path) -> None:
    """`--from cons` called `pros` again (a parallel branch `cons` does not lead to): paid for
    twice, and with a real model `verdict` would have judged another `pros`."""
    from conftest import EXAMPLES

    from eclflow.engine.rerun import reusable_steps
    from eclflow.graph.plan import compile_plan
    from eclflow.spec import load

    wf, mock = EXAMPLES / "parallel_branches.yaml", EXAMPLES / "mock" / "parallel_branches.yaml"
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
        "ECLFLOW_MOCK_LOG": str(log),
    }
    args = ("--model", "mock/x", "--mock-responses", str(mock), "--json")
    r = eclflow("run", str(wf), "-i", "proposal=a four-day week", *args, env=env)
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout)["run_id"]
    first = json.loads(r.stdout)
    r = eclflow("run", str(wf), "--from", "cons", "--run", old[:8], *args, env=env)
    assert r.returncode == 0, r.stderr
    assert calls(log) == ["pros", "cons", "verdict", "cons", "verdict"]
    # what it reused was paid for by the earlier run: not counted again
    again = json.loads(r.stdout)
    pros = next(s for s in again["steps"] if s["id"] == "pros")
    assert (pros["replayed"], pros["tokens"], pros["cost"]) == (True, 0, 0.0)
    spent = {s["id"]: s["tokens"] for s in first["steps"]}
    assert again["tokens"] == spent["cons"] + spent["verdict"]
    (stats,) = json.loads(eclflow("runs", "--stats", "--json", env=env).stdout)["workflow"]
    assert stats["calls"] == 3 + 2
    assert stats["tokens_in"] + stats["tokens_out"] == first["tokens"] + again["tokens"]
    # in a revision loop: what the step leads to, and the rest of its loop, run again
    loop = compile_plan(load(CRITIQUE_REVISE))
    assert [sorted(reusable_steps(loop, s)) for s in ("generate", "critique", "revise")] == [
        [],
        ["generate"],
        ["critique", "generate"],
    ]


def test_a_reused_step_that_changed_since_is_named(tmp_path: Path) -> None:
    """The run reused the old result silently, and a later step failed on it."""
    env, old = first_run(tmp_path)
    edited = tmp_path / "cr.yaml"
    text = CRITIQUE_REVISE.read_text()
    edited.write_text(text.replace("prompt: generate.j2", "template: 'Write about {{ topic }}.'"))
    r = eclflow(
        *("run", str(edited), "--from", "critique", "--run", old[:8]),
        *("--model", "mock/x", "--mock-responses", str(tmp_path / "all.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert (
        f"step generate changed since run {old[:8]} and is reused as that run left it "
        "(--from generate runs it again)"
    ) in r.stderr
    r = eclflow(  # the same file: nothing to say
        *("run", str(CRITIQUE_REVISE), "--from", "critique", "--run", old[:8]),
        *("--model", "mock/x", "--mock-responses", str(tmp_path / "all.json")),
        env=env,
    )
    assert r.returncode == 0 and "changed since" not in r.stderr, r.stderr


TWO_LOOPS = """\
eclflow: 1
id: two-loops
inputs: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  - {id: gen1, type: generate, with: {topic: "{{ input.topic }}"}}
  - {id: crit1, type: critique, depends_on: [gen1], with: {draft: "{{ steps.gen1.output.draft }}"}}
  - id: rev1
    type: revise
    depends_on: [crit1]
    revision_source: crit1
    with: {draft: "{{ steps.gen1.output.draft }}", feedback: "{{ loop.feedback }}"}
  - {id: gen2, type: generate, with: {topic: "{{ input.topic }}"}}
  - {id: crit2, type: critique, depends_on: [gen2], with: {draft: "{{ steps.gen2.output.draft }}"}}
  - id: rev2
    type: revise
    depends_on: [crit2]
    revision_source: crit2
    with: {draft: "{{ steps.gen2.output.draft }}", feedback: "{{ loop.feedback }}"}
transitions:
  - {type: revision_loop, validator: crit1, reviser: rev1, target: gen1}
  - {type: revision_loop, validator: crit2, reviser: rev2, target: gen2}
"""


def test_from_a_step_in_one_loop_reuses_another_loop_whole(tmp_path: Path) -> None:
    """`--from crit1` called the other loop's reviser again (paid twice) and reused that loop's
    later verdict, which had judged the old revision."""
    wf = tmp_path / "two.yaml"
    wf.write_text(TWO_LOOPS)
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
        "ECLFLOW_MOCK_LOG": str(log),
    }
    revise = {"decision": "revise", "critique": "thin", "feedback": "more"}
    passes = {"decision": "pass", "critique": "ok"}
    replies = {"gen1": "a", "gen2": "b", "rev1": "a2", "rev2": "b2",
               "crit1#1": revise, "crit2#1": revise, "crit1": passes, "crit2": passes}  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(replies))
    args = ("--model", "mock/x", "--mock-responses", str(tmp_path / "s.json"), "--json")
    r = eclflow("run", str(wf), "-i", "topic=t", *args, env=env)
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout)["run_id"]
    first = calls(log)
    r = eclflow("run", str(wf), "--from", "crit1", "--run", old[:8], *args, env=env)
    assert r.returncode == 0, r.stderr
    assert calls(log)[len(first) :] == ["crit1#1", "rev1#1", "crit1#2"]
