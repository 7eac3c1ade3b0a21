"""`eclflow runs | status | show | prune` through the real CLI in subprocesses, over runs of the
bundled workflow with the scripted mock model, journaled in a SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE

PASSES = """\
generate: "draft one"
critique#1: {content: {decision: revise, critique: thin, feedback: add tide tables}}
revise#1: "draft two"
critique#2: {content: {decision: pass, critique: good now}}
"""
NEVER_PASSES = """\
generate: "v1"
critique: &no [{content: {decision: revise, critique: weak, feedback: try again}}]
critique#2: *no
critique#3: *no
critique#4: *no
revise: ["v2", "v3", "v4"]
"""


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.db = f"sqlite:///{tmp_path / 'runs.db'}"
        self.env = {**os.environ, "ECLFLOW_DATABASE_URL": self.db}

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eclflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )

    def run(self, script: str, topic: str) -> dict[str, Any]:
        path = self.tmp / f"script-{abs(hash(script))}.yaml"
        path.write_text(script)
        r = self.cli(
            "run", str(CRITIQUE_REVISE), "-i", f"topic={topic}", "--model", "mock/x",
            "--mock-responses", str(path), "--json",
        )  # fmt: skip
        assert r.returncode in (0, 1) and r.stdout, r.stderr
        return json.loads(r.stdout)

    def json(self, *args: str) -> Any:
        r = self.cli(*args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def two_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Env, dict[str, Any], dict[str, Any]]:
    """One completed run (one revision), then one failed run (max revisions exceeded)."""
    env = Env(tmp_path_factory.mktemp("history"))
    ok = env.run(PASSES, "tides")
    assert ok["status"] == "completed"
    bad = env.run(NEVER_PASSES, "rocks")
    assert bad["status"] == "failed"
    return env, ok, bad


def test_runs_lists_newest_first(two_runs: Any) -> None:
    env, ok, bad = two_runs
    r = env.cli("runs")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "run", "workflow", "state", "steps", "tokens", "cost", "started", "duration",
    ]  # fmt: skip
    assert lines[1].startswith(bad["run_id"][:8]) and "failed" in lines[1]
    assert lines[2].startswith(ok["run_id"][:8]) and "completed" in lines[2]
    assert "critique-revise" in lines[2] and lines[2].split()[3] == "4"  # steps
    assert bad["run_id"] not in r.stdout  # short ids only

    data = env.json("runs", "--json")
    assert [d["id"] for d in data] == [bad["run_id"], ok["run_id"]]
    assert [d["run_id"] for d in data] == [bad["run_id"], ok["run_id"]]
    assert [(d["workflow"], d["status"]) for d in data] == [
        ("critique-revise", "failed"),
        ("critique-revise", "completed"),
    ]
    assert data[0]["started_at"] >= data[1]["started_at"]
    assert [d["revisions"] for d in data] == [3, 1]
    assert data[0]["failed_step"] == "critique" and data[0]["steps"] == 8
    assert data[1]["tokens"] == ok["tokens"] and data[1]["duration_ms"] is not None
    assert [d["id"] for d in env.json("runs", "--json", "--state", "completed")] == [ok["run_id"]]
    assert [d["id"] for d in env.json("runs", "--json", "--limit", "1")] == [bad["run_id"]]
    one = env.cli("runs", "-n", "1")  # the table says that there are more than it shows
    assert len(one.stdout.splitlines()) == 2
    assert one.stderr == "the newest 1 of 2 runs; -n 2 lists them all\n"
    assert env.cli("runs", "-n", "2").stderr == ""
    # (JSON logs: stderr holds JSON objects only, that note too)
    note = json.loads(env.cli("--log-format", "json", "runs", "-n", "1").stderr)
    assert note["event"] == "the newest 1 of 2 runs; -n 2 lists them all" and note["total"] == 2
    assert env.json("runs", "--json", "--workflow", "other") == []
    empty = env.cli("runs", "--workflow", "other")
    assert empty.returncode == 0 and empty.stdout.strip() == "No runs."
    # a --workflow no run has gets the workflows that have some (on stderr: stdout is the table)
    assert empty.stderr == (
        "no run of workflow 'other' at all (--workflow takes the file's `id:`; "
        "workflows with runs: critique-revise)\n"
    )
    typo = env.cli("runs", "--workflow", "critique_revise")
    assert typo.returncode == 0 and typo.stdout.strip() == "No runs."
    assert "did you mean 'critique-revise'?" in typo.stderr
    # none when the workflow has runs, only none in that state
    assert env.cli("runs", "--workflow", "critique-revise", "--state", "paused").stderr == ""


def test_status_text(two_runs: Any) -> None:
    env, ok, bad = two_runs
    r = env.cli("status", ok["run_id"][:8])
    assert r.returncode == 0, r.stderr
    assert f"Workflow ID: {ok['run_id']}" in r.stdout
    assert "Status:      ✓ Completed" in r.stdout and "Total Steps: 4" in r.stdout
    rows = [
        line.split()
        for line in r.stdout.splitlines()
        if line.startswith(("generate", "critique", "revise"))
    ]
    assert [row[0] for row in rows] == ["generate", "critique#1", "revise#1", "critique#2"]
    assert rows[1][1:3] == ["succeeded", "(revise)"]
    output = r.stdout.split("Output:\n", 1)[1].split("\n\n", 1)[0]
    assert json.loads(output) == {
        "final_text": ok["output"]["final_text"],
        "revision_count": 1,
    }

    r = env.cli("status", bad["run_id"])
    assert r.returncode == 0, r.stderr
    assert "Status:      ✗ Failed" in r.stdout and "Failed Step: critique" in r.stdout
    assert "max revisions exceeded" in r.stdout and "Output:" not in r.stdout


def test_status_json(two_runs: Any) -> None:
    env, ok, bad = two_runs
    data = env.json("status", ok["run_id"][:6], "-o", "json")
    assert data["id"] == ok["run_id"] and data["state"] == "completed"
    assert data["output"] == {"final_text": "draft two", "revision_count": 1}
    assert data["input"] == {"topic": "tides"} and data["tokens"] == ok["tokens"]
    assert [(s["key"], s["state"], s["attempts"]) for s in data["steps"]] == [
        ("generate", "succeeded", 1),
        ("critique#1", "succeeded", 1),
        ("revise#1", "succeeded", 1),
        ("critique#2", "succeeded", 1),
    ]
    failed = env.json("status", bad["run_id"], "-o", "json")
    assert failed["state"] == "failed" and failed["failed_step"] == "critique"
    assert "max revisions exceeded" in failed["error"] and len(failed["steps"]) == 8


def test_show_everything(two_runs: Any) -> None:
    env, ok, _ = two_runs
    r = env.cli("show", ok["run_id"][:8])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"Run {ok['run_id']} · critique-revise · completed")
    assert '"topic": "tides"' in out and '"final_text": "draft two"' in out
    for key in ("== generate", "== critique#1", "== revise#1", "== critique#2"):
        assert key in out
    assert "-- feedback\nadd tide tables" in out  # the critique's feedback
    assert "[user]" in out and "tides" in out  # the rendered prompt
    data = env.json("show", ok["run_id"], "--json")
    assert [e["key"] for e in data["executions"]] == [
        "generate",
        "critique#1",
        "revise#1",
        "critique#2",
    ]
    revise = data["executions"][2]
    assert revise["input"]["feedback"] == "add tide tables" and revise["output"] == {
        "draft": "draft two"
    }


def test_show_one_step(two_runs: Any) -> None:
    env, ok, bad = two_runs
    data = env.json("show", bad["run_id"][:8], "--step", "critique", "--json")
    assert list(data) == ["executions"]
    assert [e["key"] for e in data["executions"]] == [f"critique#{i}" for i in range(1, 5)]
    assert all(e["feedback"] == "try again" for e in data["executions"])
    r = env.cli("show", ok["run_id"][:8], "--step", "revise#1")
    assert r.returncode == 0, r.stderr
    assert "== revise#1" in r.stdout and "== generate" not in r.stdout and "Run " not in r.stdout
    r = env.cli("show", ok["run_id"][:8], "--step", "publish")
    assert r.returncode == 2  # invalid input
    assert r.stderr.startswith("error: Step not found: publish (this run has: critique,")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["status", "show"])
def test_unknown_run_is_one_line(two_runs: Any, command: str) -> None:
    env, _, _ = two_runs
    r = env.cli(command, "deadbeef")
    assert r.returncode == 2  # invalid input
    assert r.stderr == "error: Run not found: deadbeef\n"
    assert r.stdout == ""


def test_ambiguous_prefix_lists_candidates(tmp_path: Path) -> None:
    env = Env(tmp_path)
    from eclflow.store import open_store

    with open_store(env.db) as s:
        for rid in ("abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"):
            s.runs.create(rid, "wf", "WF", "x", "0" * 64, {}, "completed", {})
    r = env.cli("status", "abcd")
    assert r.returncode == 2  # what was typed does not name one run, as for an unknown id
    assert r.stderr.startswith("error: run id prefix 'abcd' is ambiguous: abcd2222-")  # newest
    assert "abcd1111-" in r.stderr and r.stderr.count("\n") == 1
    r = env.cli("status", "abcd2")
    assert r.returncode == 0 and "abcd2222-0000-4000-8000-000000000000" in r.stdout


def test_prune(tmp_path: Path) -> None:
    env = Env(tmp_path)
    ok = env.run(PASSES, "tides")
    bad = env.run(NEVER_PASSES, "rocks")
    newest = env.run(PASSES, "waves")
    from eclflow.store import open_store

    with open_store(env.db) as s:  # the first two started long ago
        M = s.models.Run
        for rid, days in ((ok["run_id"], 45), (bad["run_id"], 40)):
            M.update(created_at=datetime.now(UTC) - timedelta(days=days)).where(
                M.id == rid
            ).execute()

    r = env.cli("prune", "--older-than", "30d", "--state", "failed", "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Deleted 1 run."
    assert {d["id"] for d in env.json("runs", "--json")} == {ok["run_id"], newest["run_id"]}
    assert env.cli("status", bad["run_id"]).returncode == 2  # not found any more

    r = env.cli("prune", input="n\n")  # default: older than 30 days; asks first
    assert r.returncode == 1 and "Delete 1 run started more than 30 days ago?" in r.stderr
    assert len(env.json("runs", "--json")) == 2
    r = env.cli("prune", input="y\n")
    assert r.returncode == 0 and r.stdout.strip() == "Deleted 1 run."
    assert [d["id"] for d in env.json("runs", "--json")] == [newest["run_id"]]

    r = env.cli("prune", "--older-than", "1h", "--yes")
    assert r.returncode == 0 and r.stdout.strip() == "Deleted 0 runs."
    r = env.cli("prune", "--older-than", "0", "--yes")
    assert r.returncode == 0 and r.stdout.strip() == "Deleted 1 run."
    assert env.json("runs", "--json") == []

    r = env.cli("prune", "--older-than", "soon", "--yes")
    assert r.returncode == 2 and "not an age" in r.stderr
    for age in ("99999999999d", "999999999d"):  # (the second overflowed the date arithmetic)
        r = env.cli("prune", "--older-than", age, "--yes")
        assert r.returncode == 2 and "longer than any run can be old" in r.stderr, r.stderr
    # `M` is months to some tools: never taken for minutes
    r = env.cli("prune", "--older-than", "6M", "--yes")
    assert r.returncode == 2 and "'6M' is not an age: use e.g. 30d, 12h, 90m (minutes)" in r.stderr

    env.run(PASSES, "tides")
    r = env.cli("prune", "--older-than", "0", input="")  # no answer: stdin is at its end
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "Delete 1 run? [y/N]: ",
        "error: nothing deleted (--yes deletes without asking)",
    ]
    assert len(env.json("runs", "--json")) == 1


def test_db_option_and_bad_urls(tmp_path: Path) -> None:
    env = Env(tmp_path)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    r = env.cli("runs", "--json", "--db", other)  # reading makes no database of a typo
    assert r.returncode == 2 and "no eclflow database at" in r.stderr
    assert not (tmp_path / "other.db").exists()
    r = env.cli("runs", "--db", "mysql://root@localhost/x")
    assert r.returncode == 2
    assert r.stderr.startswith(
        "error: Configuration error: unsupported database URL scheme 'mysql'"
    )
    assert r.stderr.count("\n") == 1
    r = env.cli("runs", "--db", f"sqlite:///{tmp_path}/no/such/dir.db")
    assert r.returncode == 2 and "no eclflow database at" in r.stderr
    assert r.stderr.count("\n") == 1


def test_runs_stats_totals_by_workflow_and_model(two_runs: Any) -> None:
    env, ok, bad = two_runs
    totals = env.json("runs", "--stats", "--json")
    (wf,) = totals["workflow"]
    assert wf["workflow"] == "critique-revise" and wf["runs"] == 2
    assert wf["calls"] == 4 + 8
    assert wf["tokens_in"] + wf["tokens_out"] == ok["tokens"] + bad["tokens"]
    (model,) = totals["model"]
    assert model["model"] == "mock/x" and model["calls"] == 12
    text = env.cli("runs", "--stats")
    assert text.returncode == 0 and "by workflow" in text.stdout and "mock/x" in text.stdout
    # of one workflow; what it cannot filter by is refused, not ignored
    assert env.json("runs", "--stats", "--json", "--workflow", "critique-revise") == totals
    assert env.json("runs", "--stats", "--json", "--workflow", "other") == {
        "workflow": [],
        "model": [],
    }
    r = env.cli("runs", "--stats", "--state", "failed", "-n", "1")
    assert r.returncode == 2 and "--state and -n do not go with it" in r.stderr


def test_runs_stats_with_engine_restate_in_the_environment_reads_the_database(
    two_runs: Any,
) -> None:
    """With ECLFLOW_ENGINE=restate set (for `run` and `status` on Restate), `runs --stats` and
    `runs --state interrupted` were refused since `runs` took the variable too: what only the
    database has is read from it, as before; `--engine restate` written out is still refused."""
    env = two_runs[0]
    totals = env.json("runs", "--stats", "--json")
    on_restate = Env(env.tmp)
    on_restate.env["ECLFLOW_ENGINE"] = "restate"
    assert on_restate.json("runs", "--stats", "--json") == totals
    assert on_restate.json("runs", "--state", "interrupted", "--json") == []
    r = on_restate.cli("runs", "--stats", "--engine", "restate")
    assert r.returncode == 2 and "takes no --stats" in r.stderr


def test_runs_state_retrying_is_for_runs_on_restate(two_runs: Any) -> None:
    """`--state retrying` (a run Restate retries) lists nothing of the database: it is refused
    there in one line rather than answering "No runs." as if none were being retried."""
    r = two_runs[0].cli("runs", "--state", "retrying")
    assert (r.returncode, r.stdout) == (2, ""), r.stdout
    assert "--state retrying goes with --engine restate" in r.stderr


@pytest.mark.parametrize("columns", [120, 80, 40])
def test_runs_on_a_narrow_terminal_drops_columns_rather_than_cutting_ids(
    two_runs: Any, columns: int
) -> None:
    """On 80 columns every cell was cut (`comple…`, `$0.00…`), on 40 the id was `9…`."""
    import pty
    import re

    env, ok, bad = two_runs
    main, secondary = pty.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "eclflow", "runs"], stdout=secondary, stderr=subprocess.PIPE,
            env={**env.env, "COLUMNS": str(columns)}, timeout=60,
        )  # fmt: skip
        os.close(secondary)
        out = b""
        while chunk := _read(main):
            out += chunk
    finally:
        os.close(main)
    assert r.returncode == 0, r.stderr
    lines = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.decode()).splitlines()
    assert "…" not in "\n".join(lines)
    assert all(len(line.rstrip()) <= columns for line in lines)
    assert lines[1].split()[:3] == [bad["run_id"][:8], "critique-revise", "failed"]
    assert lines[2].split()[:3] == [ok["run_id"][:8], "critique-revise", "completed"]
    assert ("started" in lines[0]) is (columns >= 100)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end has closed
        return b""


def test_show_numbers_the_attempts_of_a_resumed_run_as_its_traces_do(tmp_path: Path) -> None:
    """After a resume, `show` said `generate · attempt 2` above a trace `Attempt 1
    completed`: the traces counted the attempts of the resumed execution only."""
    env = Env(tmp_path)
    failed = env.run("generate: {error: auth_error}\n", "tides")
    assert failed["status"] == "failed"
    script = tmp_path / "again.yaml"
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    r = env.cli("resume", failed["run_id"], "--mock-responses", str(script), "-q")
    assert r.returncode == 0, r.stderr
    shown = env.json("show", failed["run_id"], "--step", "generate", "--json")["executions"]
    told = [(e["attempt"], [t["message"] for t in e["traces"]][-1]) for e in shown]
    assert told == [
        (1, "Attempt 1 failed: LLM error: mock auth_error"),
        (2, "Attempt 2 completed"),
    ]


def test_a_resumed_step_counts_its_attempts_as_the_journal_numbers_them(tmp_path: Path) -> None:
    """After a resume, the live view and the logs said `attempt 4` for a step that `show`
    numbers attempt 4, and then its line and `--json` said `2 attempt(s)` (those of this
    execution only); the same step replayed by a later resume said 4. They all say 4."""
    env = Env(tmp_path)
    wf = tmp_path / "retry.yaml"
    wf.write_text(
        "eclflow: 1\nid: retry\nmodel: mock/x\n"
        "defaults: {retry: {max_attempts: 2, initial_delay: 0.01s, max_delay: 0.01s}}\n"
        'steps:\n  - {id: a, type: llm, template: "one"}\n'
        '  - {id: b, type: llm, depends_on: [a], template: "two"}\n'
        'output: {text: "{{ steps.b.output.text }}"}\n'
    )
    script = tmp_path / "m.yaml"
    script.write_text('a: "A"\nb: [{error: timeout}, {error: timeout}]\n')
    r = env.cli("run", str(wf), "--mock-responses", str(script), "--json")
    assert r.returncode == 1, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    script.write_text('b: [{error: timeout}, "B"]\n')
    r = env.cli("resume", run_id, "--mock-responses", str(script), "--json")
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)["steps"]
    assert [(s["key"], s["attempts"], s["replayed"]) for s in steps] == [
        ("a", 1, True),
        ("b", 4, False),
    ]
    shown = env.json("show", run_id, "--step", "b", "--json")["executions"]
    assert [e["attempt"] for e in shown] == [1, 2, 3, 4]
    again = env.json("resume", run_id, "--json")["steps"]  # (completed: its recorded result)
    assert [(s["key"], s["attempts"]) for s in again] == [("a", 1), ("b", 4)]


def test_a_resumed_step_that_succeeds_after_retry_says_the_journal_attempt_count(
    tmp_path: Path,
) -> None:
    """After a resume, `Step succeeded after retry` (its log line, `eclflow logs`) said `attempts=2`, this execution's count, where the step's line, `--json`
    and `show` say 4 since 39d37c0; a step whose retries all fail said the same of its
    `Step failed after all retry attempts`."""
    env = Env(tmp_path)
    wf = tmp_path / "retry.yaml"
    wf.write_text(
        "eclflow: 1\nid: retry\nmodel: mock/x\n"
        "defaults: {retry: {max_attempts: 2, initial_delay: 0.01s, max_delay: 0.01s}}\n"
        'steps:\n  - {id: b, type: llm, template: "two"}\n'
        'output: {text: "{{ steps.b.output.text }}"}\n'
    )
    script = tmp_path / "m.yaml"
    script.write_text("b: [{error: timeout}, {error: timeout}]\n")
    r = env.cli("run", str(wf), "--mock-responses", str(script), "--json")
    assert r.returncode == 1, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    script.write_text("b: [{error: timeout}, {error: timeout}]\n")  # failed again: 3 and 4
    r = env.cli("resume", run_id, "--mock-responses", str(script), "--json")
    assert r.returncode == 1, r.stderr
    script.write_text('b: [{error: timeout}, "B"]\n')  # 5 fails, 6 succeeds
    r = env.cli(
        "--log-level", "info", "--log-format", "json",
        "resume", run_id, "--mock-responses", str(script), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [(s["key"], s["attempts"]) for s in json.loads(r.stdout)["steps"]] == [("b", 6)]
    logged = [json.loads(line) for line in r.stderr.splitlines()]
    [after_retry] = [x for x in logged if x.get("kind") == "step_succeeded_after_retry"]
    assert (after_retry["attempt"], after_retry["attempts"]) == (6, 6)

    events = [json.loads(x) for x in env.cli("logs", run_id, "--json").stdout.splitlines()]
    assert [
        (e["kind"], e["attempts"])
        for e in events
        if e["kind"] in ("step_failed_after_retries", "step_succeeded_after_retry")
    ] == [
        ("step_failed_after_retries", 2),
        ("step_failed_after_retries", 4),
        ("step_succeeded_after_retry", 6),
    ]
    text = env.cli("logs", run_id, "--level", "info").stdout.splitlines()
    [line] = [x for x in text if "Step succeeded after retry" in x]
    assert "step=b attempt=6 attempts=6 " in line, line


def test_show_has_the_trace_that_says_how_a_step_s_retries_ended(tmp_path: Path) -> None:
    """`Step succeeded after retry` (and `Step failed after all retry attempts`) was a trace of
    the run's result only: the journal kept each attempt's traces before the step's outcome
    was said, so `show` never had it. It is kept with the last attempt."""
    env = Env(tmp_path)
    wf = tmp_path / "retry.yaml"
    wf.write_text(
        "eclflow: 1\nid: retry\nmodel: mock/x\n"
        "defaults: {retry: {max_attempts: 2, initial_delay: 0.01s, max_delay: 0.01s}}\n"
        'steps:\n  - {id: a, type: llm, template: "one"}\n'
        '  - {id: b, type: llm, depends_on: [a], template: "two"}\n'
        'output: {text: "{{ steps.b.output.text }}"}\n'
    )
    script = tmp_path / "m.yaml"
    script.write_text('a: [{error: timeout}, "A"]\nb: [{error: timeout}, {error: timeout}]\n')
    r = env.cli("run", str(wf), "--mock-responses", str(script), "--json")
    assert r.returncode == 1, r.stderr
    result = json.loads(r.stdout)
    shown = env.json("show", result["run_id"], "--json")["executions"]
    last = {
        e["key"]: [{k: v for k, v in t.items() if k != "ts"} for t in e["traces"][-2:]]
        for e in shown
        if e["attempt"] == 2
    }
    assert last == {
        "a": [
            {"level": "info", "message": "Attempt 2 completed"},
            {"level": "info", "message": "Step succeeded after retry", "attempts": 2},
        ],
        "b": [
            {"level": "error", "message": "Attempt 2 failed: LLM error: mock timeout"},
            {
                "level": "error",
                "message": "Step failed after all retry attempts",
                "attempts": 2,
                "error": "LLM error: mock timeout",
            },
        ],
    }
    text = env.cli("show", result["run_id"], "--step", "a").stdout
    assert text.rstrip().endswith("INFO  Step succeeded after retry attempts=2"), text


@pytest.mark.parametrize("command", ["status", "show", "logs", "resume", "pause"])
def test_a_huge_limit_or_an_id_no_run_can_have_is_not_an_internal_error(
    two_runs: Any, command: str
) -> None:
    """`runs -n 18446744073709551616` said `OverflowError: Python int too large to convert to
    SQLite INTEGER`; a run id with bytes that are not UTF-8 (`$'\\xff\\xfe'`) said
    `UnicodeEncodeError: … surrogates not allowed`, both as internal errors (exit 1)."""
    env, ok, bad = two_runs
    assert [r["id"] for r in env.json("runs", "-n", str(2**64), "--json")] == [
        bad["run_id"],
        ok["run_id"],
    ]
    r = env.cli(command, "\udcff\udcfeab")
    assert r.returncode == 2, r.stderr
    assert r.stderr == "error: Run not found: \\udcff\\udcfeab\n"


# RFC 3339 (ISO 8601 with `T` and an offset): what Go's time.RFC3339, Safari's Date and
# jq's strptime-based parsers need, and what the traces' and the logs' `ts` already were
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"


def _times(value: Any) -> list[tuple[str, Any]]:
    """Every field of `value` (nested) that holds a time: `…_at` and `ts`."""
    if isinstance(value, list):
        return [t for v in value for t in _times(v)]
    if not isinstance(value, dict):
        return []
    own = [(k, v) for k, v in value.items() if (k.endswith("_at") or k == "ts") and v is not None]
    return own + [t for v in value.values() for t in _times(v)]


def test_every_json_time_is_rfc_3339_with_its_offset(two_runs: Any) -> None:
    """`runs`, `status` and `show --json` printed the run's and the steps' times as Python's
    str() writes them, `2026-12-07 02:27:41.802000+00:00` (a space for the `T`), beside traces
    and `logs --json` whose `ts` was `2026-12-07T02:27:41.802+00:00`: a script parsing them
    (Go's time.RFC3339, a browser's Date) failed on the first. Every time is ISO 8601 with
    the `T` and its offset, the same instant as before."""
    import re

    env, ok, _ = two_runs
    printed = {
        "runs": env.json("runs", "--json"),
        "status": env.json("status", ok["run_id"], "--json"),
        "show": env.json("show", ok["run_id"], "--json"),
        "logs": [
            json.loads(x) for x in env.cli("logs", ok["run_id"], "--json").stdout.split("\n") if x
        ],
    }
    times = {name: _times(value) for name, value in printed.items()}
    assert {name: sorted({k for k, _ in found}) for name, found in times.items()} == {
        "runs": ["completed_at", "created_at", "started_at"],
        "status": ["completed_at", "created_at", "updated_at"],
        "show": ["completed_at", "created_at", "started_at", "ts"],
        "logs": ["ts"],
    }
    odd = [
        (n, k, v) for n, found in times.items() for k, v in found if not re.fullmatch(RFC3339, v)
    ]
    assert odd == []
    # the same instant as the store holds (UTC)
    [run] = [r for r in printed["runs"] if r["run_id"] == ok["run_id"]]
    started = datetime.fromisoformat(run["started_at"])
    assert started.utcoffset() == timedelta(0)
    assert datetime.fromisoformat(printed["status"]["created_at"]) == started
