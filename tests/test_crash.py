"""Crash and resume: `eclflow run` is killed with SIGKILL while a step is in flight, then
`eclflow resume` finishes the run without calling any step whose result was committed.

The mock model logs every call it receives (ECLFLOW_MOCK_LOG, one JSON line a call) and the
resume script holds only the replies still needed, so a repeated call would fail the run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE
from test_store import pg_url  # noqa: F401  (the fixture: a fresh PostgreSQL schema)

KEYS = ["generate", "critique#1", "revise#1", "critique#2"]
REPLIES = {
    "generate": "draft one",
    "critique#1": {"content": {"decision": "revise", "critique": "thin", "feedback": "more"}},
    "revise#1": "draft two",
    "critique#2": {"content": {"decision": "pass", "critique": "good"}},
}


def script(keys: list[str], slow: str | None = None) -> str:
    """A keyed mock script for `keys`; the `slow` key takes long enough to be killed in."""
    entries = {}
    for k in keys:
        reply = REPLIES[k]
        entry = dict(reply) if isinstance(reply, dict) else {"content": reply}
        if k == slow:
            entry["delay"] = 60
        entries[k] = entry
    return json.dumps(entries)


def calls(log: Path) -> list[str]:
    return (
        [json.loads(line)["key"] for line in log.read_text().splitlines()] if log.exists() else []
    )


class Journal:
    """Reads the journal the way another process would: SQLite file or PostgreSQL schema."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite:///"):
            path = Path(self.url[len("sqlite:///") :])
            if not path.exists():
                return []
            conn = sqlite3.connect(path, timeout=5)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            except sqlite3.OperationalError:  # tables not created yet
                return []
            finally:
                conn.close()
        import psycopg2

        base, _, schema = self.url.partition("?schema=")
        conn = psycopg2.connect(base, options=f"-c search_path={schema}")
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        except psycopg2.errors.UndefinedTable:
            return []
        finally:
            conn.close()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_and_kill(
    args: list[str],
    env: dict[str, str],
    log: Path,
    journal: Journal,
    key: str,
    *,
    state: str = "running",
    other_than: str = "",
) -> str:
    """Start `eclflow ARGS`, wait until `key` is `state` (in flight) in the journal of a run
    other than `other_than`, kill -9 the process; the run's id."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eclflow", *args],
        env={**env, "ECLFLOW_MOCK_LOG": str(log)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (run_id,) = wait_for(
            lambda: journal.rows(
                "select run_id from step_executions where key = %s and state = %s and run_id <> %s",
                key,
                state,
                other_than,
            ),
            f"{key} to be {state}",
        )[0]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)  # reaped: the pid is gone, so resume will not refuse
    assert proc.returncode == -signal.SIGKILL
    return str(run_id)


def resume(run_id: str, script_file: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """`eclflow resume` of the run on `script_file`'s replies; its JSON result."""
    r = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", "resume", run_id[:8], "--model", "mock/x"),
            *("--mock-responses", str(script_file), "--json"),
        ],
        env={**env, "ECLFLOW_MOCK_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def _shown(iso: str) -> str:
    """A time of `logs --json` as the text of `logs` shows it: local, to the millisecond."""
    from datetime import datetime

    when = datetime.fromisoformat(iso).astimezone()
    return f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d}"


def crash_and_resume(tmp_path: Path, url: str, kill_at: str) -> None:
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url}
    journal = Journal(url)
    first_script, first_log = tmp_path / "first.json", tmp_path / "first.jsonl"
    first_script.write_text(script(KEYS, slow=kill_at))
    run_id = start_and_kill(
        [
            *("run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--model", "mock/x"),
            *("--mock-responses", str(first_script), "--json"),
        ],
        env,
        first_log,
        journal,
        kill_at,
    )

    done = KEYS[: KEYS.index(kill_at)]
    left = KEYS[KEYS.index(kill_at) :]
    assert calls(first_log) == [*done, kill_at]  # the killed call had been sent
    assert journal.rows("select state from workflows where id = %s", run_id) == [("running",)]
    states = journal.rows(
        "select key, state from step_executions where run_id = %s order by id", run_id
    )
    assert states == [*((k, "succeeded") for k in done), (kill_at, "running")]

    second_script, second_log = tmp_path / "second.json", tmp_path / "second.jsonl"
    second_script.write_text(script(left))  # only the replies still needed
    result = resume(run_id, second_script, env, second_log)
    assert result["status"] == "completed" and result["run_id"] == run_id
    assert result["output"] == {"final_text": "draft two", "revision_count": 1}
    assert calls(second_log) == left  # nothing that had succeeded was called again
    assert [s["key"] for s in result["steps"]] == KEYS
    assert [s["replayed"] for s in result["steps"]] == [k in done for k in KEYS]

    assert journal.rows("select state from workflows where id = %s", run_id) == [("completed",)]
    succeeded = journal.rows(
        "select key, attempt from step_executions where run_id = %s and state = 'succeeded' "
        "order by started_at, id",
        run_id,
    )
    # the interrupted key got a new attempt; the others kept their one row
    assert succeeded == [(k, 2 if k == kill_at else 1) for k in KEYS]
    # the timeline says the run was interrupted, once, with the step in flight
    events = journal.rows(
        "select kind, fields from events where run_id = %s and kind like 'workflow%%' order by id",
        run_id,
    )
    assert [kind for kind, _ in events] == [
        "workflow_started", "workflow_interrupted", "workflow_resumed", "workflow_completed"
    ]  # fmt: skip
    fields = events[1][1] if isinstance(events[1][1], dict) else json.loads(events[1][1])
    assert fields["in_flight"] == [kill_at]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KEYS)
def test_killed_mid_step_resumes_without_repeating_calls(tmp_path: Path, kill_at: str) -> None:
    crash_and_resume(tmp_path, f"sqlite:///{tmp_path / 'runs.db'}", kill_at)


@pytest.mark.slow
@pytest.mark.postgres
def test_killed_mid_step_resumes_on_postgres(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    crash_and_resume(tmp_path, pg_url, "critique#1")


TEMPLATE_CHAIN = """\
eclflow: 1
id: quote-chain
inputs: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  - {id: generate, type: llm, template: "Write about {{ topic }}", with: {topic: "{{ input.topic }}"}}
  - id: quote
    type: template
    depends_on: [generate]
    template: "> {{ text }}"
    with: {text: "{{ steps.generate.output.text }}"}
  - id: answer
    type: llm
    depends_on: [quote]
    template: "Reply to {{ q }}"
    with: {q: "{{ steps.quote.output.text }}"}
output: {quote: "{{ steps.quote.output.text }}", answer: "{{ steps.answer.output.text }}"}
"""


@pytest.mark.slow
def test_killed_after_a_template_step_resumes_from_its_journal(tmp_path: Path) -> None:
    """A template step's result is not waited for (redoing it is free), but it is committed
    in order with what follows: killed while the next model call is in flight, the journal holds
    the template's result and resume calls only the interrupted step."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url}
    journal = Journal(url)
    wf = tmp_path / "chain.yaml"
    wf.write_text(TEMPLATE_CHAIN)
    first, first_log = tmp_path / "first.json", tmp_path / "first.jsonl"
    first.write_text(json.dumps({"generate": "tides", "answer": {"content": "x", "delay": 60}}))
    run_id = start_and_kill(
        [
            *("run", str(wf), "-i", "topic=sea", "--model", "mock/x"),
            *("--mock-responses", str(first), "--json"),
        ],
        env,
        first_log,
        journal,
        "answer",
    )
    states = journal.rows(
        "select key, state, output from step_executions where run_id = %s order by id", run_id
    )
    assert [(k, s) for k, s, _ in states] == [
        ("generate", "succeeded"),
        ("quote", "succeeded"),
        ("answer", "running"),
    ]
    assert json.loads(states[1][2]) == {"text": "> tides"}

    second, second_log = tmp_path / "second.json", tmp_path / "second.jsonl"
    second.write_text(json.dumps({"answer": "calm"}))
    result = resume(run_id, second, env, second_log)
    assert result["output"] == {"quote": "> tides", "answer": "calm"}
    assert calls(second_log) == ["answer"]
    assert [s["replayed"] for s in result["steps"]] == [True, True, False]


def test_a_database_error_mid_run_says_how_to_resume_and_loses_nothing(tmp_path: Path) -> None:
    """The database refuses a write mid-run (here a trigger, as a full disk would): the run
    stops with one line that names it and the resume command; what was committed is kept,
    and resume does not call it again."""
    db = tmp_path / "runs.db"
    url = f"sqlite:///{db}"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url}
    from eclflow.store import open_store

    open_store(url).close()  # creates it
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON step_executions WHEN NEW.key = 'revise#1' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    first_script, first_log = tmp_path / "first.json", tmp_path / "first.jsonl"
    first_script.write_text(script(KEYS))
    r = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE), "-i", "topic=tides"),
            *("--model", "mock/x", "--mock-responses", str(first_script), "--json"),
        ],
        env={**env, "ECLFLOW_MOCK_LOG": str(first_log)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stdout == ""
    (run_id,) = Journal(url).rows("select id from workflows")[0]
    short = run_id[:8]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Database error: database or disk is full"), r.stderr
    assert last.endswith(
        f"run {short} stopped: once the database is back, `eclflow resume {short}` continues it"
    )
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse")
    second_script, second_log = tmp_path / "second.json", tmp_path / "second.jsonl"
    second_script.write_text(script(KEYS[2:]))
    result = resume(run_id, second_script, env, second_log)
    assert result["status"] == "completed"
    assert calls(first_log) == KEYS[:3] and calls(second_log) == KEYS[2:]


@pytest.mark.slow
@pytest.mark.postgres
def test_a_rerun_killed_while_copying_what_it_reuses_resumes_reusing_it(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """`run --from revise` copies generate's and critique#1's results from the earlier run,
    one commit each. Killed between the two copies (here: critique#1's insert waits for a lock
    the test holds), its resume reuses critique#1 from the earlier run too, rather than calling
    the model for it again: that call was paid for, and its verdict could differ."""
    import psycopg2

    env = {**os.environ, "ECLFLOW_DATABASE_URL": pg_url}
    journal = Journal(pg_url)
    script_file = tmp_path / "script.json"
    script_file.write_text(script(KEYS))
    first = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE), "-i", "topic=tides"),
            *("--model", "mock/x", "--mock-responses", str(script_file), "--json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    earlier = json.loads(first.stdout)["run_id"]

    base, _, schema = pg_url.partition("?schema=")
    holder = psycopg2.connect(base)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute(f"SET search_path = {schema}")
            cur.execute(
                "CREATE FUNCTION wait_for_test() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); "
                "RETURN NEW; END $$"
            )
            cur.execute(
                "CREATE TRIGGER wait_for_test BEFORE INSERT ON step_executions FOR EACH ROW "
                f"WHEN (NEW.key = 'critique#1' AND NEW.run_id <> '{earlier}') "
                "EXECUTE FUNCTION wait_for_test()"
            )
            cur.execute("SELECT pg_advisory_lock(4242)")
        rerun_log = tmp_path / "rerun.jsonl"
        run_id = start_and_kill(
            [
                *("run", str(CRITIQUE_REVISE), "--from", "revise", "--run", earlier),
                *("--model", "mock/x", "--mock-responses", str(script_file), "--json"),
            ],
            env,
            rerun_log,
            journal,
            "generate",
            state="succeeded",
            other_than=earlier,
        )
        # (the process is gone: its insert of critique#1 was never committed)
        assert calls(rerun_log) == []
        with holder.cursor() as cur:
            cur.execute(f"SET search_path = {schema}")
            cur.execute("DROP TRIGGER wait_for_test ON step_executions")
    finally:
        holder.close()
    rows = journal.rows("select key from step_executions where run_id = %s", run_id)
    assert rows == [("generate",)]

    resumed_script, resumed_log = tmp_path / "resumed.json", tmp_path / "resumed.jsonl"
    resumed_script.write_text(script(KEYS[2:]))  # the replies the rerun pays for
    result = resume(run_id, resumed_script, env, resumed_log)
    assert result["status"] == "completed"
    assert result["output"] == {"final_text": "draft two", "revision_count": 1}
    assert calls(resumed_log) == ["revise#1", "critique#2"]
    assert [(s["key"], s["replayed"]) for s in result["steps"]] == [
        ("generate", True),
        ("critique#1", True),
        ("revise#1", False),
        ("critique#2", False),
    ]


@pytest.mark.slow
def test_the_timeline_of_a_run_killed_and_resumed_says_it_was_interrupted(tmp_path: Path) -> None:
    """`eclflow logs` of a run killed (kill -9) and resumed showed a second `Workflow execution
    started` and nothing of the attempt that died: a crash could not be told from the log.
    Each resume now writes, once, that the run was interrupted (how, when it was last seen
    running, the steps in flight), and its start is `Workflow execution resumed`."""
    from datetime import datetime

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url}
    journal = Journal(url)
    first, log = tmp_path / "first.json", tmp_path / "calls.jsonl"
    first.write_text(script(KEYS, slow="critique#1"))
    run_id = start_and_kill(
        [
            *("run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--model", "mock/x"),
            *("--mock-responses", str(first), "--json"),
        ],
        env,
        log,
        journal,
        "critique#1",
    )

    def pid() -> int:  # the process that held the run, as its row names it
        [(meta,)] = journal.rows("select metadata from workflows where id = %s", run_id)
        return int(json.loads(meta)["pid"])

    killed = [pid()]
    second = tmp_path / "second.json"
    second.write_text(script(KEYS[1:], slow="revise#1"))  # the resume is killed too
    start_and_kill(
        ["resume", run_id[:8], "--model", "mock/x", "--mock-responses", str(second)],
        env,
        log,
        journal,
        "revise#1",
    )
    killed.append(pid())
    third = tmp_path / "third.json"
    third.write_text(script(KEYS[2:]))
    assert resume(run_id, third, env, log)["status"] == "completed"

    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "logs", run_id[:8], "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    runs = [e for e in events if e["kind"].startswith("workflow_")]
    assert [(e["kind"], e.get("resume"), e.get("previous_state")) for e in runs] == [
        ("workflow_started", None, None),
        ("workflow_interrupted", None, None),
        ("workflow_resumed", 1, "interrupted"),
        ("workflow_interrupted", None, None),
        ("workflow_resumed", 2, "interrupted"),
        ("workflow_completed", None, None),
    ]
    interrupted = [e for e in events if e["kind"] == "workflow_interrupted"]
    assert [(e["level"], e["in_flight"], e["pid"], e["cause"]) for e in interrupted] == [
        ("warning", [key], pid, f"process {pid} ended without finishing it (killed, or crashed)")
        for key, pid in zip(["critique#1", "revise#1"], killed, strict=True)
    ]
    # last seen: at the start of the call it died in (its `running` row), before the resume
    for e, key in zip(interrupted, ["critique#1", "revise#1"], strict=True):
        [(started,)] = journal.rows(
            "select started_at from step_executions where run_id = %s and key = %s "
            "and error like 'interrupted%%'",
            run_id,
            key,
        )
        last_seen = datetime.fromisoformat(e["last_seen"])
        assert last_seen >= datetime.fromisoformat(started)
        assert last_seen <= datetime.fromisoformat(e["ts"])

    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "logs", run_id[:8], "--level", "info"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    said = [line.split(" ", 1)[1] for line in r.stdout.splitlines()]  # (without the time)
    named = "workflow_name=Critique and Revise Loop step_count=3 model=mock/x"
    *shown, completed = [line for line in said if "Workflow execution" in line]
    assert shown == [
        f"INFO    Workflow execution started {named}",
        *(
            line
            for n, (e, pid) in enumerate(zip(interrupted, killed, strict=True), 1)
            for line in (
                f"WARNING Workflow execution interrupted cause=process {pid} ended without "
                f"finishing it (killed, or crashed) last_seen={_shown(e['last_seen'])} "
                f'in_flight=["{e["in_flight"][0]}"] pid={pid}',
                f"INFO    Workflow execution resumed {named} resume={n} previous_state=interrupted",
            )
        ),
    ]
    assert completed.startswith("INFO    Workflow execution completed successfully")


@pytest.mark.slow
def test_a_resume_says_the_run_was_interrupted_in_its_own_logs_and_to_a_follower(
    tmp_path: Path,
) -> None:
    """The take-over's `Workflow execution interrupted` went to the store only: `eclflow logs`
    showed it, but not the resuming process's own logs (`--log-format json` for a collector,
    or the default warnings), which began at `Workflow execution resumed`. A follower attached
    during the resume shows it once, in its place. Its `last_seen` was written with the
    resuming process's UTC offset (`+09:00` beside times shown in the reader's zone): it is
    kept in UTC and shown as the other times are, in the reader's zone."""
    from datetime import datetime

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url}
    journal = Journal(url)
    log = tmp_path / "calls.jsonl"
    (tmp_path / "first.json").write_text(script(KEYS, slow="generate"))
    run_id = start_and_kill(
        [
            *("run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--model", "mock/x"),
            *("--mock-responses", str(tmp_path / "first.json")),
        ],
        env,
        log,
        journal,
        "generate",
    )
    replies = json.loads(script(KEYS))
    replies["generate"]["delay"] = 2  # time for a follower to attach
    (tmp_path / "rest.json").write_text(json.dumps(replies))
    resuming = subprocess.Popen(
        [
            *(sys.executable, "-m", "eclflow", "--log-format", "json", "--log-level", "info"),
            *("resume", run_id[:8], "--model", "mock/x"),
            *("--mock-responses", str(tmp_path / "rest.json"), "--json"),
        ],
        env={**env, "ECLFLOW_MOCK_LOG": str(log), "TZ": "JST-9"},  # (UTC+9, no tzdata needed)
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: journal.rows("select 1 from events where kind = 'workflow_resumed'"),
            "the take-over",
        )
        followed = subprocess.run(
            [sys.executable, "-m", "eclflow", "logs", run_id[:8], "--follow", "--json"],
            env={**env, "TZ": "EST5"},  # (UTC-5)
            capture_output=True,
            text=True,
            timeout=120,
        )
        out, err = resuming.communicate(timeout=120)
    finally:
        resuming.kill()
    assert resuming.returncode == 0, err
    assert json.loads(out)["status"] == "completed"
    # the resume's own logs: the interrupted event, then the resumed one
    records = [json.loads(line) for line in err.splitlines()]
    events = [r["event"] for r in records if r["event"].startswith("Workflow execution")]
    assert events == [
        "Workflow execution interrupted",
        "Workflow execution resumed",
        "Workflow execution completed successfully",
    ]
    [said] = [r for r in records if r["event"] == "Workflow execution interrupted"]
    assert (said["level"], said["run_id"], said["in_flight"]) == ("warning", run_id, ["generate"])
    assert said["cause"].endswith(" ended without finishing it (killed, or crashed)")
    [(stored,)] = journal.rows(
        "select fields from events where kind = 'workflow_interrupted' and run_id = %s", run_id
    )
    last_seen = json.loads(stored)["last_seen"]
    assert said["last_seen"] == last_seen and last_seen.endswith("+00:00")  # kept in UTC

    # the follower: every event once, in order; its times in its own zone
    assert followed.returncode == 0, followed.stderr
    timeline = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["kind"] for e in timeline if e["kind"].startswith("workflow_")] == [
        "workflow_started", "workflow_interrupted", "workflow_resumed", "workflow_completed"
    ]  # fmt: skip
    [interrupted] = [e for e in timeline if e["kind"] == "workflow_interrupted"]
    assert interrupted["ts"].endswith("-05:00")
    assert interrupted["last_seen"].endswith("-05:00")
    seen = datetime.fromisoformat(interrupted["last_seen"])
    assert seen == datetime.fromisoformat(last_seen)
    # as text: the reader's local time, as `status` shows times (and with the milliseconds)
    text = subprocess.run(
        [sys.executable, "-m", "eclflow", "logs", run_id[:8], "--level", "warning"],
        env={**env, "TZ": "EST5"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr
    [line] = [x for x in text.stdout.splitlines() if "Workflow execution interrupted" in x]
    shown = f"{seen:%Y-%m-%d %H:%M:%S}.{seen.microsecond // 1000:03d}"  # (seen: at -05:00)
    assert f" last_seen={shown} in_flight=" in line
