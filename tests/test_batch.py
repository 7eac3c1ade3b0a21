"""Batch mode: one run per input line, bounded concurrency, results in order, resumable."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE
from test_store import pg_url  # noqa: F401  (the fixture: a fresh PostgreSQL schema)

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None

# Keyed by journal key, so a resumed run gets the replies of the calls it still has to make.
SCRIPT = """\
generate: {content: "draft one", delay: %(d)s}
critique#1: {content: {decision: revise, critique: thin, feedback: more}, delay: %(d)s}
revise#1: {content: "draft two", delay: %(d)s}
critique#2: {content: {decision: pass, critique: ok}, delay: %(d)s}
"""


def batch(tmp_path: Path, n: int, *extra: str, delay: float = 0.0, log: Path | None = None):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"topic": f"topic {i}"}) + "\n" for i in range(n)))
    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT % {"d": delay})
    env = {**os.environ, "ECLFLOW_MOCK_LOG": str(log or tmp_path / "calls.jsonl")}
    cmd = [
        sys.executable,
        "-m",
        "eclflow",
        "run",
        str(CRITIQUE_REVISE),
        "--inputs",
        str(items),
        "--model",
        "mock/t",
        "--mock-responses",
        str(script),
        *extra,
    ]
    return cmd, env


def test_results_in_input_order_without_a_journal(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 12, "--concurrency", "5", "--no-journal")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 12
    assert all(
        x["status"] == "completed" and x["output"]["final_text"] == "draft two" for x in lines
    )
    assert len({x["run_id"] for x in lines}) == 12
    assert "12/12 completed, 0 failed" in r.stderr
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 12 * 4


def test_quiet_hides_the_progress_but_not_the_summary(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 3, "--concurrency", "2", "--no-journal", "--quiet")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["completed"] * 3
    # no progress lines (the first would say 0/3), one summary line
    assert r.stderr.splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("3/3 completed, 0 failed, 0 running") and " in " in r.stderr


def test_a_model_no_run_can_call_fails_the_batch_before_it_starts(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 3, "--no-journal")
    cmd.remove("--mock-responses")
    cmd.remove(str(tmp_path / "script.yaml"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "error: Configuration error: model 'mock/t' plays a script of replies: pass "
        "--mock-responses FILE to `eclflow run` (for Restate runs, to `eclflow serve`) or "
        "mock_responses= (Python)"
    )


def test_the_summary_says_why_items_failed(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 3, "--no-journal", "--quiet")
    (tmp_path / "script.yaml").write_text('generate: {error: auth_error, message: "bad key"}\n')
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["failed"] * 3
    assert "0/3 completed, 3 failed" in r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"{tmp_path / 'items.jsonl'}:1: Step generate failed: LLM error: bad key "
        "(and 2 more failed)"
    )
    # one log line for each failed item (its run's failure), not also its call's and step's
    logged = [line for line in r.stderr.splitlines() if " ERROR " in line or " WARNING " in line]
    assert len(logged) == 3 and all("Workflow execution failed" in x for x in logged), r.stderr
    # which --quiet keeps, as its help says (it said: only the output and the summary)
    shown = subprocess.run([*cmd[:5], "--help"], env=env, capture_output=True, text=True)
    assert "(stderr; with --inputs, a line for each failed item)" in " ".join(shown.stdout.split())


def test_failed_items_are_retried_by_the_same_command_which_the_summary_says(
    tmp_path: Path,
) -> None:
    cmd, env = batch(tmp_path, 3, "--db", f"sqlite:///{tmp_path / 'runs.db'}", "--quiet")
    good = (tmp_path / "script.yaml").read_text()
    (tmp_path / "script.yaml").write_text('generate: {error: auth_error, message: "bad key"}\n')
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].endswith(
        "(and 2 more failed); the same command again retries the failed items"
    )
    (tmp_path / "script.yaml").write_text(good)  # (the key is fixed, say)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["completed"] * 3


def test_the_progress_bar_fits_its_counts_in_80_columns() -> None:
    import io

    from rich.console import Console

    from eclflow.cli.batch import _Bar
    from eclflow.engine.batch import BatchProgress

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    p = BatchProgress(total=1000)
    with _Bar(1000, enabled=True, console=console) as bar:
        p.done, p.failed, p.running, p.tokens, p.cost = 794, 6, 200, 1_234_567, 12.5
        bar.update(p)
    frames = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue()).replace("\r", "\n")
    last = [line for line in frames.splitlines() if line.strip()][-1]  # the final frame
    assert len(last) <= 80 and "…" not in last, last
    for part in ("800/1000", "794 done", "6 failed", "200 running", "1.2M tok", "$12.5000", "eta"):
        assert part in last, (part, last)


def test_with_json_logs_every_stderr_line_is_a_json_object(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 3, "--no-journal")
    cmd[3:3] = ["--log-format", "json"]  # (a global option: before `run`)
    (tmp_path / "script.yaml").write_text('generate: {error: auth_error, message: "bad key"}\n')
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    logged = [json.loads(line) for line in r.stderr.splitlines()]  # no plain count lines
    summary, failure = logged[-2:]
    assert (summary["level"], summary["total"], summary["completed"], summary["failed"]) == (
        "info", 3, 0, 3,
    )  # fmt: skip
    assert failure["level"] == "error" and failure["line"] == 1 and failure["failed_items"] == 3
    assert "bad key" in failure["event"]


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (999, "999"), (1000, "1.0k"), (12_345, "12.3k"), (99_999, "100k"),
     (999_999, "1.0M"), (1_234_567, "1.2M"), (123_456_789, "123M"), (10**13, "10000G")],
)  # fmt: skip
def test_the_bar_shortens_token_counts(n: int, text: str) -> None:
    from eclflow.cli.batch import _short

    assert _short(n) == text


def test_items_can_come_from_stdin_and_resume_the_same_batch(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    cmd, env = batch(tmp_path, 3, "--db", db)
    from_file = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert from_file.returncode == 0, from_file.stderr
    cmd[cmd.index("--inputs") + 1] = "-"
    items = (tmp_path / "items.jsonl").read_text()
    r = subprocess.run(cmd, env=env, input=items, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == from_file.stdout and "3 from an earlier attempt" in r.stderr
    r = subprocess.run(cmd, env=env, input='{"topic": "a"}\n[1]\n', capture_output=True, text=True)
    assert r.returncode == 2 and "<stdin>:2:1: each line must be a JSON object" in r.stderr


def test_a_reader_that_goes_away_stops_the_batch_quietly(tmp_path: Path) -> None:
    """`eclflow run … --inputs … | head -1`: the batch stops at its next line, with SIGPIPE's
    status and no error message."""
    cmd, env = batch(tmp_path, 50, "--concurrency", "5", "--no-journal", "-q", delay=0.02)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    assert json.loads(p.stdout.readline())["status"] == "completed"
    p.stdout.close()
    assert p.wait(timeout=60) == 141
    assert p.stderr.read() == ""


def test_bad_input_lines_are_usage_errors(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 1, "--no-journal")
    items = tmp_path / "items.jsonl"
    items.write_text('{"topic": "ok"}\n{"topic": \n')
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and f"{items}:2:" in r.stderr and "Traceback" not in r.stderr
    # every line that does not match the inputs is named by its line, and long values are cut
    items.write_text('# items\n\n{"topic": ""}\n{"topic": "ok"}\n{"topic": "%s"}\n' % ("a" * 600))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert lines[0].startswith(f"error: {items}:3: ") and "non-empty" in lines[0]
    assert lines[1].startswith(f"error: {items}:5: ") and "(602 characters)" in lines[1]
    assert "a" * 100 not in r.stderr
    # and what is not JSON, or not text, is named by line and column
    for content, message in (
        (b'\xef\xbb\xbf{"topic": 1}\n{"topic": NaN}\n', ":2: not valid JSON: NaN is not a JSON"),
        (b'{"topic": "ok"}\n{"topic": "\xff"}\n', ":2:12: not UTF-8 text (byte 0xff)"),
        # (it was `RecursionError: maximum recursion depth exceeded`, as an internal error)
        (
            b'{"topic": "ok"}\n{"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            ":2: its values nest too deep",
        ),
    ):
        items.write_bytes(content)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"error: {items}{message}"), r.stderr


def test_a_killed_batch_resumes_the_unfinished_items_only(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 20, "--concurrency", "4", "--db", db, delay=0.1, log=log)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        calls = len(log.read_text().splitlines()) if log.exists() else 0
        if calls >= 30:  # about seven runs done, four in flight
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    first = len(log.read_text().splitlines())
    assert 0 < first < 80
    with sqlite3.connect(tmp_path / "runs.db") as conn:  # claimed by the batch, never begun
        unbegun = {i for (i,) in conn.execute("select id from workflows where state = 'pending'")}
    assert unbegun
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "runs.db") as conn:  # claimed again, not resumed
        meta = dict(conn.execute("select id, metadata from workflows").fetchall())
    assert all("resumed" not in json.loads(meta[i]) for i in unbegun)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["completed"] * 20
    total = len(log.read_text().splitlines())
    # Every call that finished before the kill is not made again: the second pass makes at
    # most the calls that were missing plus the ones in flight when the process died.
    assert total - first <= 80 - first + 4, (first, total)
    assert "from an earlier attempt" in r.stderr
    # and a third time, everything is reused: no call at all
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert len(log.read_text().splitlines()) == total
    assert "20 from an earlier attempt" in r.stderr


def test_resuming_an_item_a_killed_batch_never_began_starts_its_timeline(tmp_path: Path) -> None:
    """`eclflow resume` of an item a killed batch had claimed (`pending`) but never begun: its
    timeline began with `Workflow execution interrupted` (the batch's process ended, with no
    step in flight) and `Workflow execution resumed` (resume 1), and no start: the run was
    not interrupted, it starts."""
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 4, "--concurrency", "1", "--db", db, delay=0.5, log=log)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    with sqlite3.connect(tmp_path / "runs.db") as conn:  # claimed by the batch, never begun
        unbegun = [i for (i,) in conn.execute("select id from workflows where state = 'pending'")]
    assert unbegun
    script = str(tmp_path / "script.yaml")
    base = [sys.executable, "-m", "eclflow"]
    r = subprocess.run(
        [*base, "resume", unbegun[0], "--db", db, "--model", "mock/t", "--mock-responses", script],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*base, "logs", unbegun[0], "--db", db, "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["kind"] for e in events if e["kind"].startswith("workflow_")] == [
        "workflow_started",
        "workflow_completed",
    ]
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        [(meta,)] = conn.execute("select metadata from workflows where id = ?", (unbegun[0],))
    assert "resumed" not in json.loads(meta)


@pytest.mark.postgres
def test_a_batch_on_postgres_starts_many_claimed_runs_at_once(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """The claimed runs that start together are written in one statement, as on SQLite."""
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 12, "--concurrency", "12", "--db", pg_url, log=log)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["completed"] * 12
    assert len(log.read_text().splitlines()) == 48


@pytest.mark.postgres
def test_items_a_database_error_stopped_are_said_to_continue_when_run_again(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    import psycopg2

    from eclflow.store import open_store

    cmd, env = batch(tmp_path, 3, "--concurrency", "1", "--db", pg_url)
    open_store(pg_url).close()
    base, _, schema = pg_url.partition("?schema=")
    with psycopg2.connect(base, options=f"-c search_path={schema}") as conn, conn.cursor() as c:
        c.execute(
            """
            CREATE SEQUENCE failures;
            CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.input::text LIKE '%topic 1%' AND nextval('failures') = 1 THEN
                    RAISE EXCEPTION 'could not extend file: No space left on device';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fail_once BEFORE INSERT ON step_executions
                FOR EACH ROW EXECUTE FUNCTION fail_once();
            """
        )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == [
        "completed", "failed", "completed",
    ]  # fmt: skip
    assert "could not extend file" in r.stderr
    assert r.stderr.splitlines()[-1] == (
        "1 stopped by a database error: once it is back, run the same command again to continue it"
    )
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [json.loads(x)["status"] for x in again.stdout.splitlines()] == ["completed"] * 3


@pytest.mark.postgres
def test_an_item_whose_value_the_database_refuses_is_not_said_to_continue_when_run_again(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    """A value the database refuses (here a number out of range, as PostgreSQL says it for a
    `bigint`) stops that item and not the others; the summary says so, and does not say that
    once the database is back the same command continues it: it would stop there again."""
    import psycopg2

    from eclflow.store import open_store

    cmd, env = batch(tmp_path, 3, "--concurrency", "1", "--db", pg_url)
    open_store(pg_url).close()
    base, _, schema = pg_url.partition("?schema=")
    with psycopg2.connect(base, options=f"-c search_path={schema}") as conn, conn.cursor() as c:
        c.execute(
            """
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.input::text LIKE '%topic 1%' THEN
                    RAISE EXCEPTION 'bigint out of range' USING ERRCODE = '22003';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON step_executions
                FOR EACH ROW EXECUTE FUNCTION refuse();
            """
        )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["completed", "failed", "completed"]
    assert lines[1]["error"].startswith(
        f"Database error: the journal could not write run {lines[1]['run_id']} (step "
    )
    assert "once it is back" not in r.stderr and "retries the failed" not in r.stderr
    assert r.stderr.splitlines()[-1] == (
        "1 stopped by a value the database cannot hold, not by a database failure (its line "
        "says which): what it did before is kept, and the same command again stops it there "
        "again if the step gives the same value"
    )


def test_a_batch_run_again_returns_what_the_journal_kept_without_calling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second call of the same batch reads the completed items back (in bulk, a chunk at
    a time as the workers reach them: all at once held a big batch's every result in memory)
    with their outputs, tokens, cost and steps, and makes no model call; a run left unfinished
    in between is resumed, in its place in the input order."""
    from eclflow.engine import batch, runner
    from eclflow.engine.batch import BatchProgress
    from eclflow.store import open_store

    chunks: list[int] = []
    read = runner.stored_results

    def spy(store: Any, run_ids: Any) -> Any:
        chunks.append(len(run_ids))
        return read(store, run_ids)

    monkeypatch.setattr(batch, "STORED_CHUNK", 7)
    monkeypatch.setattr(runner, "stored_results", spy)
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        first = _api_batch(store, 30, concurrency=8)
        assert [r.status for r in first] == ["completed"] * 30
        store.runs.update_state(first[7].run_id, "running")  # as if cut short before its end
        seen: list[BatchProgress] = []
        # with a mock that fails any call
        again = _api_batch(store, 30, concurrency=8, script=[], on_update=seen.append)
    finally:
        store.close()
    assert max(chunks) <= 7 and sum(chunks) == 29
    assert [r.run_id for r in again] == [r.run_id for r in first]
    for a, b in zip(first, again, strict=True):
        assert (b.status, b.output, b.tokens, b.cost) == (a.status, a.output, a.tokens, a.cost)
        assert [s.key for s in b.steps] == [s.key for s in a.steps] == ["generate", "critique#1"]
        assert all(s.replayed for s in b.steps)
    assert seen[-1].reused == 29 and seen[-1].done == 30


def _api_batch(store: Any, n: int, concurrency: int, script: Any = None, **kw: Any) -> list[Any]:
    """`run_batch` of critique-revise over n items on `mock/` (by default every critique
    passes at once)."""
    import asyncio

    from eclflow.engine.batch import run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    if script is None:
        script = {"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}}
    items = [{"topic": f"t{i}"} for i in range(n)]
    return asyncio.run(
        run_batch(
            load(CRITIQUE_REVISE), items, concurrency=concurrency, model="mock/t",
            mock_responses=MockProvider(script), store=store, **kw,
        )
    )  # fmt: skip


def _interruptible(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The command started as a terminal starts it, so that SIGINT is Ctrl-C: a shell starts a
    background job (CI's, say) with SIGINT ignored, and the child would inherit that."""
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_ctrl_c_stops_a_batch_cleanly_keeping_its_timeline_and_it_resumes(
    tmp_path: Path,
) -> None:
    """SIGINT mid-batch: exit 130 with the counts and no traceback; every succeeded step of
    every run, finished or cut short, has its `step_succeeded` event in the journal; and the
    same command then finishes the batch without repeating a call whose result was kept."""
    import sqlite3

    path = tmp_path / "runs.db"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 12, "--concurrency", "4", "--db", f"sqlite:///{path}", delay=0.1)
    p = _interruptible(cmd, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 14:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted:" in err and "run the same command again" in err and "Traceback" not in err
    printed = out.splitlines()  # the results of the items before the first unfinished one
    first = len(log.read_text().splitlines())

    db = sqlite3.connect(path)
    steps = db.execute(
        "SELECT run_id, key FROM step_executions WHERE state = 'succeeded' ORDER BY run_id, key"
    ).fetchall()
    events = db.execute(
        "SELECT run_id, step_id FROM events WHERE kind = 'step_succeeded'"
    ).fetchall()
    db.close()
    assert 0 < len(steps) < 48
    assert len(events) == len(steps), (steps, events)

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["completed"] * 12
    assert r.stdout.splitlines()[: len(printed)] == printed
    # the calls made before Ctrl-C whose results were kept are not made again
    assert len(log.read_text().splitlines()) - first <= 48 - len(steps)


def test_sigterm_stops_a_batch_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM (`docker stop`, `timeout`) mid-batch: exit 143 with the counts; the same
    command then finishes it without repeating a call whose result was kept."""
    import sqlite3

    path = tmp_path / "runs.db"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 12, "--concurrency", "4", "--db", f"sqlite:///{path}", delay=0.1)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 14):
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "interrupted:" in err and "run the same command again" in err and "Traceback" not in err
    first = len(log.read_text().splitlines())
    db = sqlite3.connect(path)
    (kept,) = db.execute(
        "SELECT count(*) FROM step_executions WHERE state = 'succeeded'"
    ).fetchone()
    db.close()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["status"] for x in r.stdout.splitlines()] == ["completed"] * 12
    assert kept > 0 and len(log.read_text().splitlines()) - first <= 48 - kept


def test_ctrl_c_without_a_journal_says_running_again_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 12, "--concurrency", "4", "--no-journal", delay=0.1, log=log)
    p = _interruptible(cmd, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 6):
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "nothing was kept (--no-journal), so running it again starts over" in err
    assert "run the same command again" not in err and "Traceback" not in err


def test_result_lines_come_while_the_batch_runs(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 12, "--concurrency", "2", "--no-journal", delay=0.05, log=log)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    first = json.loads(p.stdout.readline())
    calls_then = len(log.read_text().splitlines())
    # (not communicate(): it reads the pipe itself, past what readline has buffered)
    rest, err = p.stdout.read(), p.stderr.read()  # stderr: a few lines, never a full pipe
    assert p.wait(timeout=60) == 0, err
    assert first["status"] == "completed"
    assert calls_then < 12 * 4  # the first line came before the last run was done
    lines = [first, *map(json.loads, rest.splitlines())]
    assert len(lines) == 12 and lines[0]["run_id"] != lines[1]["run_id"]


@pytest.mark.looptime  # (the naps end in the order their lengths say, whatever the load)
async def test_iter_batch_gives_results_in_input_order_as_they_are_ready() -> None:
    """Items that finish in the reverse order still come out in input order, each as soon as
    those before it are in; closed early, the iterator stops the runs it had started."""
    import asyncio
    from collections.abc import Mapping
    from contextlib import aclosing

    from eclflow.engine.batch import BatchProgress, iter_batch
    from eclflow.spec import load_text
    from eclflow.steps import Step, StepContext, StepResult, register

    @register
    class Nap(Step):
        type_name = "test_nap"
        uses_model = False

        async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
            await asyncio.sleep(float(input["seconds"]))
            return StepResult.success({"slept": input["seconds"]})

    wf = load_text(
        "eclflow: 1\nid: naps\nsteps:\n  - id: nap\n    type: test_nap\n"
        "    with: {seconds: '{{ input.seconds }}'}\noutput: {slept: '{{ steps.nap.output.slept }}'}\n"
    )
    items = [{"seconds": 0.01 * (8 - i)} for i in range(8)]  # the first takes longest
    progress: list[BatchProgress] = []

    def naps(concurrency: int) -> Any:
        return aclosing(iter_batch(wf, items, concurrency=concurrency, on_update=progress.append))

    got, done_then = [], []
    async with naps(8) as results:  # all at once: they finish last item first
        async for r in results:
            got.append(r.output["slept"])
            done_then.append(progress[-1].done)
    assert got == [item["seconds"] for item in items]
    assert done_then[0] == 8  # the first to be given was the last to finish
    got.clear()
    async with naps(1) as results:  # one at a time: each is given before the next is done
        async for r in results:
            got.append(r.output["slept"])
            assert progress[-1].done == len(got)
    assert got == [item["seconds"] for item in items]
    async with naps(2) as results:
        async for _ in results:
            break
    assert progress[-1].running == 0 and progress[-1].done < 8


pytestmark = pytest.mark.filterwarnings("ignore")


async def test_a_batch_collects_young_objects_less_often_and_restores_the_gc(
    tmp_path: Path,
) -> None:
    import gc

    from eclflow.engine.batch import run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    seen: list[tuple[int, int, int]] = []
    script = {"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}}
    before = gc.get_threshold()
    results = await run_batch(
        load(CRITIQUE_REVISE),
        [{"topic": f"t{i}"} for i in range(300)],
        concurrency=400,
        model="mock/t",
        mock_responses=MockProvider(script),
        on_update=lambda progress: seen.append(gc.get_threshold()) if progress.running else None,
    )
    assert [r.status for r in results] == ["completed"] * 300
    # 300 runs in flight (not 400: there are only 300 items), 500 young objects each
    assert seen and set(seen) == {(150_000, max(before[1], 20), before[2])}
    assert gc.get_threshold() == before


async def test_a_journaled_batch_hands_the_gil_over_quickly_and_restores_the_interval(
    tmp_path: Path,
) -> None:
    """The journal's writer thread waits for the GIL after every statement: during a journaled
    batch of several runs the switch interval is short; alone, or without a journal, it is
    left as it was, and it is restored after."""
    import sys

    from eclflow.engine.batch import SWITCH_INTERVAL, run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load
    from eclflow.store import open_store

    script = {"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}}
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL
    store = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        for items, concurrency, journal, expected in [
            (20, 10, store, SWITCH_INTERVAL),
            (20, 1, store, before),
            (20, 10, None, before),
        ]:
            seen: set[float] = set()
            results = await run_batch(
                load(CRITIQUE_REVISE),
                [{"topic": f"t{i} {concurrency} {journal is None}"} for i in range(items)],
                concurrency=concurrency,
                model="mock/t",
                mock_responses=MockProvider(script),
                store=journal,
                on_update=lambda p, seen=seen: (
                    seen.add(sys.getswitchinterval()) if p.running else None
                ),
            )
            assert [r.status for r in results] == ["completed"] * items
            assert seen == {expected}
            assert sys.getswitchinterval() == before
    finally:
        store.close()


def test_the_batch_gc_threshold_is_capped() -> None:
    import gc

    from eclflow.engine.batch import _gc_for_many_runs

    before = gc.get_threshold()
    with _gc_for_many_runs(5000):
        assert gc.get_threshold()[0] == 500_000  # not 2.5 million
    assert gc.get_threshold() == before


def test_items_completed_or_deleted_since_the_batch_began(tmp_path: Path) -> None:
    """An item another process completed after the batch read the states is its stored result
    (counted as reused, no call); one deleted meanwhile starts afresh."""
    from eclflow.engine.batch import BatchProgress
    from eclflow.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        first = _api_batch(store, 4, concurrency=2)
        store.runs.delete(first[3].run_id)
        # as read when the batch began: none of them completed yet
        store.runs.states = lambda ids: {r.run_id: "running" for r in first}  # type: ignore[method-assign]
        seen: list[BatchProgress] = []
        again = _api_batch(store, 4, concurrency=2, on_update=seen.append)
    finally:
        store.close()
    assert [r.status for r in again] == ["completed"] * 4
    assert [r.output for r in again] == [r.output for r in first]
    assert [all(s.replayed for s in r.steps) for r in again] == [True, True, True, False]
    assert seen[-1].reused == 3


async def test_a_batch_stopped_while_it_claims_its_items_stops_there_and_leaves_none(
    tmp_path: Path,
) -> None:
    """Ctrl-C while a big batch claims its items: the claim stops after the statement in hand,
    and what it had claimed is deleted, as when a batch stops later. It went on to the last
    item (Ctrl-C waited for it), and left every item `pending` for a process that had ended."""
    import asyncio
    from contextlib import aclosing

    from eclflow.engine.batch import iter_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load
    from eclflow.store import open_store

    n = 20_000
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    unclaimed: list[int] = []
    unclaim = store.runs.unclaim

    def counted(run_ids: Any) -> None:
        run_ids = list(run_ids)
        unclaimed.append(len(run_ids))
        unclaim(run_ids)

    store.runs.unclaim = counted  # type: ignore[method-assign]

    def runs() -> int:
        with sqlite3.connect(tmp_path / "runs.db") as conn:
            try:
                return int(conn.execute("select count(*) from workflows").fetchone()[0])
            except sqlite3.OperationalError:  # no table yet
                return 0

    async def batch() -> None:
        items = [{"topic": f"t{i}"} for i in range(n)]
        mock = MockProvider({"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}})
        async with aclosing(
            iter_batch(
                load(CRITIQUE_REVISE), items, model="mock/t", mock_responses=mock, store=store
            )
        ) as results:
            async for _ in results:
                pass

    try:
        task = asyncio.create_task(batch())
        while not await asyncio.to_thread(runs):
            assert not task.done(), "the batch ended before it claimed anything"
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        store.close()
    assert runs() == 0
    assert len(unclaimed) == 1 and 0 < unclaimed[0] < n


def test_an_item_its_inputs_refuse_fails_without_leaving_a_claimed_run(tmp_path: Path) -> None:
    """Through the API nothing checks the items first: one the workflow's `inputs` refuse is a
    failed result, and no run of it is left `pending` in the journal."""
    import asyncio

    from eclflow.engine.batch import run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load
    from eclflow.store import open_store

    items = [{"topic": "fine"}, {"topic": ""}, {"subject": "no topic"}]
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        results = asyncio.run(
            run_batch(
                load(CRITIQUE_REVISE), items, concurrency=3, model="mock/t", store=store,
                mock_responses=MockProvider(
                    {"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}}
                ),
            )
        )  # fmt: skip
    finally:
        store.close()
    assert [r.status for r in results] == ["completed", "failed", "failed"]
    assert "topic" in (results[2].error or "")
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        states = [s for (s,) in conn.execute("select state from workflows")]
    assert states == ["completed"]


def test_an_item_is_known_by_its_content_so_an_edited_batch_reuses_its_finished_items(
    tmp_path: Path,
) -> None:
    """Lines added, removed or reordered: the items run before are reused, not run again; an
    item the file holds twice is two runs."""
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 3, "--db", db, log=log)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    ids = [json.loads(x)["run_id"] for x in first.stdout.splitlines()]
    assert len(log.read_text().splitlines()) == 3 * 4
    items = tmp_path / "items.jsonl"
    lines = items.read_text().splitlines()
    new = json.dumps({"topic": "a new one"})
    items.write_text("\n".join([lines[2], new, lines[0], lines[2]]) + "\n")  # 1 dropped, 2 twice
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    again = [json.loads(x)["run_id"] for x in r.stdout.splitlines()]
    assert again[0] == ids[2] and again[2] == ids[0]
    assert len(set(again)) == 4 and again[1] not in ids and again[3] not in ids
    assert "2 from an earlier attempt" in r.stderr
    assert len(log.read_text().splitlines()) == 3 * 4 + 2 * 4  # the new item, the second copy


def test_an_edited_prompt_file_makes_a_new_batch(tmp_path: Path) -> None:
    from eclflow.engine.batch import item_run_ids, workflow_fingerprint
    from eclflow.spec import load

    (tmp_path / "ask.j2").write_text("Say something about {{ topic }}.")
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(
        "eclflow: 1\nid: ask\nsteps:\n"
        "  - {id: ask, type: llm, prompt: ask.j2, with: {topic: '{{ input.topic }}'}}\n"
    )
    wf = load(wf_file)
    items = [{"topic": "tides"}]
    before = item_run_ids(workflow_fingerprint(wf, "mock/t"), items)
    assert item_run_ids(workflow_fingerprint(wf, "mock/t"), items) == before
    assert item_run_ids(workflow_fingerprint(wf, "mock/u"), items) != before
    (tmp_path / "ask.j2").write_text("Say something else about {{ topic }}.")
    assert item_run_ids(workflow_fingerprint(wf, "mock/t"), items) != before


def test_the_same_batch_in_a_second_process_is_refused_while_the_first_runs(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 4, "--concurrency", "4", "--db", db, "-q", delay=1.5, log=log)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 4):
            assert time.monotonic() < deadline, "the first batch never started its calls"
            time.sleep(0.05)
        time.sleep(0.5)  # its runs are in the journal (committed within about 0.2 s)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr.strip() == (
            f"error: 4 items of this batch are being run by process {first.pid}; "
            "wait for it to end, or stop it and run the batch again"
        )
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert len(log.read_text().splitlines()) == 4 * 4  # no call was made twice


def test_each_result_names_its_line_in_the_inputs_file(tmp_path: Path) -> None:
    """Results come in input order, but blank and comment lines are skipped: each result line
    says which line of the file it is for, so a script can match them."""
    cmd, env = batch(tmp_path, 0, "--no-journal", "-q")
    (tmp_path / "items.jsonl").write_text('# topics\n{"topic": "a"}\n\n{"topic": "b"}\n')
    for extra in ([], ["--json"]):
        r = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert [(x["line"], x["status"]) for x in lines] == [(2, "completed"), (4, "completed")]


def test_json_gives_each_item_its_whole_result(tmp_path: Path) -> None:
    cmd, env = batch(tmp_path, 2, "--no-journal", "-q")
    short = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    full = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert short.returncode == full.returncode == 0, full.stderr
    lines = [json.loads(x) for x in full.stdout.splitlines()]
    assert len(lines) == 2 and all(x["status"] == "completed" for x in lines)
    # what a single run's --json prints: the steps and revisions too
    assert [s["key"] for s in lines[0]["steps"]] == [
        "generate",
        "critique#1",
        "revise#1",
        "critique#2",
    ]
    assert lines[0]["revisions"] and "steps" not in json.loads(short.stdout.splitlines()[0])


def test_a_batch_sharing_items_with_a_running_one_neither_repeats_nor_breaks_it(
    tmp_path: Path,
) -> None:
    """An item the first batch has not begun yet is already claimed by it: the second batch
    refuses it instead of running it too (which also broke the first batch's journal)."""
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "calls.jsonl"
    cmd, env = batch(tmp_path, 8, "--concurrency", "2", "--db", db, "-q", delay=0.3, log=log)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline, "the first batch never started its calls"
            time.sleep(0.05)
        last = tmp_path / "last.jsonl"  # the first batch's last item: not begun yet
        last.write_text(json.dumps({"topic": "topic 7"}) + "\n")
        second_cmd = [*cmd]
        second_cmd[second_cmd.index("--inputs") + 1] = str(last)
        second = subprocess.run(second_cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr.strip() == (
            f"error: 1 item of this batch is being run by process {first.pid}; "
            "wait for it to end, or stop it and run the batch again"
        )
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert [json.loads(x)["status"] for x in out.splitlines()] == ["completed"] * 8
    assert len(log.read_text().splitlines()) == 8 * 4  # no call made twice
    # the same item on its own, now that the first batch is done: its result, no call
    again = subprocess.run(second_cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "1 from an earlier attempt" in again.stderr
    assert len(log.read_text().splitlines()) == 8 * 4


def test_items_paused_are_counted_as_paused_and_the_batch_run_again_continues_them(
    tmp_path: Path,
) -> None:
    from test_crash import Journal, calls, wait_for

    cmd, env = batch(tmp_path, 2, "--concurrency", "2")
    env["ECLFLOW_DATABASE_URL"] = f"sqlite:///{tmp_path / 'runs.db'}"
    script = tmp_path / "script.yaml"
    # critique#1 outlasts the engine's wait between two looks for a pause request
    script.write_text(
        (SCRIPT % {"d": 0}).replace("feedback: more}, delay: 0", "feedback: more}, delay: 4")
    )
    journal = Journal(env["ECLFLOW_DATABASE_URL"])
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        flying = wait_for(
            lambda: (
                len(
                    rows := journal.rows(
                        "select run_id from step_executions where key = 'critique#1' and state = 'running'"
                    )
                )
                == 2
                and rows
            ),
            "both critiques to be in flight",
        )
        # The batch is frozen (SIGSTOP) while the two `pause` commands run: each is a Python
        # process that can take seconds to start on a loaded machine, and critique#1 could
        # end (and its run complete) before the second one had asked. Frozen, its process
        # must hold no write lock the pauses need: it is let go on until it holds none.
        _frozen_without_the_write_lock(p.pid, tmp_path / "runs.db")
        try:
            for (run_id,) in flying:
                r = subprocess.run(
                    [sys.executable, "-m", "eclflow", "pause", run_id[:8]],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert r.returncode == 0, r.stderr
        finally:
            os.kill(p.pid, signal.SIGCONT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 1
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["paused", "paused"]
    assert "0/2 completed, 0 failed, 2 paused, 0 running" in err
    assert "2 paused (eclflow pause): run the same command again to continue them" in err
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["status"] for line in again.stdout.splitlines()] == ["completed"] * 2
    keys = sorted(calls(tmp_path / "calls.jsonl"))
    assert keys == sorted(["generate", "critique#1", "revise#1", "critique#2"] * 2)  # none twice


def _frozen_without_the_write_lock(pid: int, db: Path) -> None:
    """Stop process `pid` (SIGSTOP) at a moment it holds no write lock on SQLite file `db`."""
    while True:
        os.kill(pid, signal.SIGSTOP)
        while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
            time.sleep(0.01)
        probe = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # locked: let it finish its write
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()


def test_input_lines_are_split_at_newlines_only(tmp_path: Path) -> None:
    """JSON Lines as `jq -c` or eclflow's own --json write them: U+2028, U+2029 and U+0085
    stay inside their strings (splitlines() cut the line there); CRLF, a BOM, blank and `#`
    lines are as before."""
    from eclflow.cli.batch import read_items

    path = tmp_path / "items.jsonl"
    path.write_bytes(
        '\ufeff{"topic": "a\u2028b"}\r\n\n# a comment\n{"topic": "c\u0085d\u2029e"}\n'.encode()
    )
    assert read_items(path, {"tone": "dry"}) == [
        (1, {"tone": "dry", "topic": "a\u2028b"}),
        (4, {"tone": "dry", "topic": "c\u0085d\u2029e"}),
    ]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LLAMA, reason="the 'local' extra is not installed")
def test_a_batch_on_the_local_model_runs_one_item_at_a_time(tmp_path: Path) -> None:
    """The model answers one call at a time: more items at once only waited for it, and their
    waits counted against their step timeouts (items that never started timed out)."""
    wf = tmp_path / "w.yaml"
    wf.write_text(
        "eclflow: 1\nid: w\nmodel: local/smollm2\n"
        "steps:\n  - {id: a, type: llm, template: 'Say {{ n }}.', with: {n: '{{ input.n }}'},\n"
        "     config: {max_tokens: 4}}\n"
    )
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3)))
    cmd = [sys.executable, "-m", "eclflow", "run", str(wf), "--inputs", str(items)]
    r = subprocess.run(
        [*cmd, "--concurrency", "3", "--db", str(tmp_path / "r.db")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == (
        "note: the local model answers one call at a time: 1 item at a time, not 3"
    )
    with sqlite3.connect(tmp_path / "r.db") as conn:
        spans = conn.execute(
            "SELECT started_at, completed_at FROM step_executions ORDER BY started_at"
        ).fetchall()
    assert len(spans) == 3
    # one after the other: each began once the one before it had ended
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), spans


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_input_lines_with_odd_values_run_and_are_kept_as_they_were(
    tmp_path: Path, db_url: str
) -> None:
    """Input lines holding a NUL, a lone surrogate (`\\ud800`), tabs, line breaks, backslashes,
    emoji, an integer beyond 64 bits, megabytes of text, a critique's feedback with a NUL: each
    item runs and is journaled as it was given, on PostgreSQL as on SQLite (a lone surrogate
    stopped the whole batch: no UTF-8 holds it), the --json lines are JSON, and the same batch
    run again finds every item done."""
    from eclflow.store import open_store

    lines = [
        {"topic": "nul \x00 inside"},
        {"topic": "lone \ud800 half"},
        {"topic": "tab\t CR\r LF\n back\\slash é 😀", "k\t\\": "v\r\n"},
        {"topic": "big", "n": 123456789012345678901234567890},
        {"topic": "long", "notes": "é😀 " * 1_000_000},
    ]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(v) + "\n" for v in lines))
    script = tmp_path / "script.json"
    feedback = "add \x00 tables"
    script.write_text(
        json.dumps(
            {
                "generate": "a draft",
                "critique#1": {"decision": "revise", "critique": "thin", "feedback": feedback},
                "revise": "draft two",
                "critique#2": {"decision": "pass", "critique": "ok"},
            }
        )
    )
    cmd = [
        *(sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE), "--inputs", str(items)),
        *("--model", "mock/x", "--mock-responses", str(script), "--db", db_url),
        *("--concurrency", "5", "--json"),
    ]

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    results = [json.loads(line, parse_constant=refuse) for line in r.stdout.splitlines()]
    assert [x["status"] for x in results] == ["completed"] * len(lines)
    store = open_store(db_url)
    try:
        for given, result in zip(lines, results, strict=True):
            run = store.runs.get(result["run_id"])
            assert (run.state, run.input) == ("completed", given)
            critique = store.steps.succeeded(run.id)["critique#1"]
            assert critique.feedback == feedback
            assert critique.output["feedback"] == feedback
    finally:
        store.close()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"({len(lines)} from an earlier attempt)" in again.stderr


async def test_the_runs_of_a_batch_look_for_a_pause_request_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run looks for `eclflow pause` between its steps; the runs of a batch that look at
    the same moment are answered by one read of their rows, not a read (and a thread) each,
    and the run asked to pause still pauses while the others complete."""
    import asyncio

    import eclflow
    from eclflow.engine import orchestrator
    from eclflow.engine.batch import item_run_ids, run_batch, workflow_fingerprint
    from eclflow.store import open_store
    from eclflow.store.repositories import RunRepository

    monkeypatch.setattr(orchestrator, "PAUSE_POLL", 0.0)  # a look before every step
    reads: list[str] = []
    for name in ("get", "states_and_metadata"):  # how a look reads a run's row
        real = getattr(RunRepository, name)

        def counted(self: Any, *a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(RunRepository, name, counted)
    wf = eclflow.load(CRITIQUE_REVISE)
    items = [{"topic": f"t{i}"} for i in range(20)]
    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT % {"d": 0.2})
    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        first = item_run_ids(workflow_fingerprint(wf, "mock/t"), items)[0]
        batch = asyncio.ensure_future(
            run_batch(wf, items, concurrency=20, model="mock/t", mock_responses=script, store=store)
        )
        await asyncio.sleep(0.3)  # every run in its first call
        assert eclflow.pause(first, store=store) == first
        results = await batch
    finally:
        store.close()
    assert [r.status for r in results] == ["paused"] + ["completed"] * 19
    # 20 runs, a look before each of their 4 steps: 80 looks, each a read of its own before
    assert "get" not in reads
    assert len(reads) <= 20, reads
