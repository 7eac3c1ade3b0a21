"""A run belongs to the process that runs it: no other process resumes it, prunes it or calls
it running once that process has ended (eclflow/store/owner.py and its users).

Real processes throughout: `eclflow run` in a subprocess, killed with SIGKILL or SIGINT, and
the commands a user would type next.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE
from test_crash import KEYS, Journal, calls, script, wait_for
from test_store import pg_url  # noqa: F401  (the fixture: a fresh PostgreSQL schema)

from eclflow.store.owner import _start_ticks, held_elsewhere, holder, this_process


def eclflow(*args: str, env: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "eclflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(
    tmp_path: Path,
    env: dict[str, str],
    slow: str = "generate",
    *,
    replies: str | None = None,
    wrap: tuple[str, ...] = (),
    **popen: Any,
) -> Any:
    """`eclflow run` of critique-revise whose `slow` call takes a minute (or on `replies`, a
    mock script), started under the command `wrap` if given."""
    (tmp_path / "slow.json").write_text(replies or script(KEYS, slow=slow))
    return subprocess.Popen(
        [
            *wrap,
            *(sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE), "-i", "topic=x"),
            *("--model", "mock/x", "--mock-responses", str(tmp_path / "slow.json")),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def in_flight(journal: Journal, key: str = "generate") -> str:
    (run_id,) = wait_for(
        lambda: journal.rows(
            "select run_id from step_executions where key = %s and state = 'running'", key
        ),
        f"{key} to be in flight",
    )[0]
    return str(run_id)


def setup(tmp_path: Path) -> tuple[dict[str, str], Journal, Path]:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url, "ECLFLOW_MOCK_LOG": str(log)}
    (tmp_path / "rest.json").write_text(script(KEYS))
    return env, Journal(url), log


def test_holder_is_the_same_process_not_only_the_same_pid() -> None:
    me = this_process()
    assert holder(me) == "alive" and not held_elsewhere(me)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as p:
        try:
            other = {"pid": p.pid, "host": socket.gethostname(), "started": _start_ticks(p.pid)}
            assert other["started"] is not None
            assert holder(other) == "alive" and held_elsewhere(other)
            # the same pid, started at another time: a process that got the pid later
            assert holder({**other, "started": other["started"] - 1}) == "gone"
            assert holder({**other, "host": "elsewhere"}) == "unknown"
            assert holder({**other, "engine": "restate"}) == "unknown"
        finally:
            p.kill()
    assert holder(other) == "gone"


def test_resume_refuses_a_run_another_process_is_running_even_with_force(tmp_path: Path) -> None:
    env, journal, log = setup(tmp_path)
    p = start(tmp_path, env)
    try:
        run_id = in_flight(journal)
        r = eclflow(
            *("resume", run_id[:8], "--force", "--model", "mock/x"),
            *("--mock-responses", str(tmp_path / "rest.json")),
            env=env,
        )
        assert r.returncode != 0
        assert f"still running in process {p.pid}" in r.stderr
        assert len(r.stderr.splitlines()) == 1
        assert calls(log) == ["generate"]  # the resume called nothing
    finally:
        p.kill()
        p.communicate(timeout=30)
    # once that process has gone, the run is resumed, and finishes
    r = eclflow(
        *("resume", run_id[:8], "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"


def test_two_resumes_at_once_run_the_run_once(tmp_path: Path) -> None:
    """Both resumes look at the run while a third connection holds the database's write lock,
    so both find its process gone; the lock released, the first takes the run over and the
    second, deciding again inside its own transaction, finds the first running it."""
    env, journal, log = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    p.kill()
    p.communicate(timeout=30)
    (tmp_path / "again.json").write_text(script(KEYS, slow="generate"))
    lock = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    cmd = [
        *(sys.executable, "-m", "eclflow", "resume", run_id[:8], "--model", "mock/x"),
        *("--mock-responses", str(tmp_path / "again.json")),
    ]
    both = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        time.sleep(4)  # both started, looked, and wait for the lock
        assert all(q.poll() is None for q in both)
        lock.execute("COMMIT")
        lock.close()
        loser = wait_for(
            lambda: next((q for q in both if q.poll() is not None), None), "one resume to end"
        )
        assert loser.returncode == 1
        _, err = loser.communicate()
        assert "still running in process" in err
        winner = next(q for q in both if q is not loser)
        assert winner.poll() is None  # the other one is running the run (its minute-long call)
        assert calls(log) == ["generate", "generate"]  # the first process's, the winner's
    finally:
        for q in both:
            q.kill()
            q.communicate(timeout=30)


def test_prune_keeps_a_run_that_is_going_on(tmp_path: Path) -> None:
    env, journal, _ = setup(tmp_path)
    (tmp_path / "quick.json").write_text(script(KEYS))
    done = eclflow(
        *("run", str(CRITIQUE_REVISE), "-i", "topic=y", "--model", "mock/x"),
        *("--mock-responses", str(tmp_path / "quick.json"), "-q"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    p = start(tmp_path, env, slow="critique#1")
    try:
        run_id = in_flight(journal, "critique#1")
        r = eclflow("prune", "--older-than", "0", "-y", env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "Deleted 1 run. (kept 1 still running)"
        assert journal.rows("select state from workflows where id = %s", run_id) == [("running",)]
        # only the interrupted ones: none yet (the completed run is not one)
        r = eclflow("prune", "--older-than", "0", "--state", "interrupted", "-y", env=env)
        assert r.stdout.strip() == "Deleted 0 runs. (kept 1 still running)"
    finally:
        p.kill()
        p.communicate(timeout=30)
    # its process gone, it is an interrupted run like any other: not a running one (as `runs
    # --state running` does not list it), and pruned when asked for by that name
    r = eclflow("prune", "--older-than", "0", "--state", "running", "-y", env=env)
    assert r.stdout.strip() == "Deleted 0 runs."
    r = eclflow("prune", "--older-than", "0", "--state", "interrupted", "-y", env=env)
    assert r.stdout.strip() == "Deleted 1 run."
    assert journal.rows("select id from workflows") == []


def test_a_run_whose_process_died_shows_as_interrupted(tmp_path: Path) -> None:
    env, journal, _ = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    r = eclflow("runs", env=env)
    assert r.returncode == 0 and f"{run_id[:8]}  critique-revise  interrupted" in r.stdout
    r = eclflow("runs", "--state", "interrupted", "--json", env=env)
    (row,) = json.loads(r.stdout)
    assert row["run_id"] == run_id and row["state"] == "running" and row["interrupted"] is True
    assert json.loads(eclflow("runs", "--state", "running", "--json", env=env).stdout) == []
    r = eclflow("status", run_id[:8], env=env)
    assert "Status:       ⚠ Interrupted" in r.stdout
    assert "Current Step: generate\nAttempt:      1\n" in r.stdout  # where it stopped
    assert f"`eclflow resume {run_id[:8]}` continues it" in r.stdout
    # `show` said `running` in its heading, as if a process were still at it
    r = eclflow("show", run_id[:8], env=env)
    assert r.stdout.splitlines()[:2] == [
        f"Run {run_id} · critique-revise · interrupted",
        f"note: it was running in process {p.pid}, which has ended; `eclflow resume "
        f"{run_id[:8]}` continues it",
    ]
    shown = json.loads(eclflow("show", run_id[:8], "--json", env=env).stdout)
    assert (shown["state"], shown["interrupted"]) == ("running", True)
    # following its events ends at once instead of waiting for an end that will not come
    r = eclflow("logs", run_id[:8], "--follow", env=env, timeout=30)
    assert r.returncode == 0 and f"run {run_id[:8]} was interrupted" in r.stderr


def test_ctrl_c_says_which_run_stopped_and_how_to_continue_it(tmp_path: Path) -> None:
    env, journal, _ = setup(tmp_path)
    # a terminal's Ctrl-C: SIGINT at its default (a background job would have it ignored)
    p = start(tmp_path, env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_id = in_flight(journal)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    short = run_id[:8]
    assert err.strip().splitlines()[-1] == (
        f"interrupted: run {short} stopped; `eclflow resume {short}` continues it"
    )
    r = eclflow(
        *("resume", short, "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    # its duration is from its start to its end, not the resumed part's alone
    st = json.loads(eclflow("status", short, "--json", env=env).stdout)
    began, end = (datetime.fromisoformat(st[k]) for k in ("created_at", "completed_at"))
    assert st["duration_ms"] == int((end - began).total_seconds() * 1000)
    assert st["duration_ms"] > json.loads(r.stdout)["duration_ms"]
    # its timeline says that the run was stopped, and when, before it says it was resumed
    logs = eclflow("logs", short, "--json", env=env)
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    [stopped] = [e for e in events if e["kind"] == "workflow_interrupted"]
    assert (stopped["cause"], stopped["in_flight"]) == (
        f"process {p.pid} stopped it (Ctrl-C, SIGTERM or a cancelled task)",
        ["generate"],
    )
    kinds = [e["kind"] for e in events]
    assert kinds.index("workflow_interrupted") + 1 == kinds.index("workflow_resumed")
    assert datetime.fromisoformat(stopped["last_seen"]) <= datetime.fromisoformat(
        events[kinds.index("workflow_resumed")]["ts"]
    )


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint", "no-sigint"])
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path: Path, sigint: Any) -> None:
    """`docker stop`, systemd and `timeout` send SIGTERM: the run stops cleanly, says how to
    go on, exits 143; its resume makes no call whose result was kept. Also when SIGINT is
    ignored, as in a background job."""
    env, journal, log = setup(tmp_path)
    p = start(tmp_path, env, slow="critique#1", preexec_fn=lambda: signal.signal(2, sigint))
    run_id = in_flight(journal, "critique#1")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    short = run_id[:8]
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: run {short} stopped; `eclflow resume {short}` continues it"
    )
    (tmp_path / "rest.json").write_text(script(KEYS[1:]))  # no reply for generate
    r = eclflow(
        *("resume", short, "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    assert calls(log) == [*KEYS[:2], *KEYS[1:]]  # critique#1 was cut short, and only it again


@pytest.mark.parametrize(
    ("sig", "sigint"),
    [
        (signal.SIGINT, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_IGN),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-in-background"],
)
def test_a_run_waiting_for_another_process_lock_stops_at_once_on_a_signal(
    tmp_path: Path, sig: int, sigint: Any
) -> None:
    """Ctrl-C or SIGTERM while the journal waited for the write lock another process holds
    (an sqlite3 shell left in a transaction): the process sat out the rest of the minute's
    busy timeout before it stopped. It stops at once, says how to go on in one line, and the
    resume finishes the run. Also for a run started in the background of a script (`eclflow
    run … &`: SIGINT ignored), where only Ctrl-C's handler ended the wait: SIGTERM sat out the
    busy timeout twice (about two minutes)."""
    import threading

    env, journal, log = setup(tmp_path)
    replies = json.loads(script(KEYS))
    replies["critique#1"]["delay"] = 1
    p = start(tmp_path, env, replies=json.dumps(replies),
              preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    lock = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    try:
        run_id = in_flight(journal, "critique#1")
        lock.execute("BEGIN IMMEDIATE")  # critique#1's result waits for it
        wait_for(lambda: any("waiting for the write lock" in line for line in lines), "the wait")
        p.send_signal(sig)
        p.wait(timeout=30)  # (the busy timeout had more than 50 s to go)
    finally:
        p.kill()
        lock.close()
    reader.join(timeout=10)
    _stopped_then_resumed(p.returncode, lines, run_id, sig, tmp_path, env, log)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_run_waiting_for_another_postgres_session_lock_stops_at_once_on_a_signal(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
    sig: int,
) -> None:
    """Ctrl-C or SIGTERM while the journal waited for a lock another PostgreSQL session holds
    (`LOCK TABLE` in a psql left in its transaction): the process sat out the rest of the
    minute's lock_timeout before it stopped, where SQLite's wait ends at once. The waiting
    statement is cancelled: it stops at once, says how to go on, and the resume finishes."""
    import threading

    import psycopg2

    env, _, log = setup(tmp_path)
    env["ECLFLOW_DATABASE_URL"] = pg_url
    journal = Journal(pg_url)
    replies = json.loads(script(KEYS))
    replies["critique#1"]["delay"] = 1
    p = start(tmp_path, env, replies=json.dumps(replies))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    base, _, schema = pg_url.partition("?schema=")
    lock = psycopg2.connect(base, options=f"-c search_path={schema}")
    try:
        run_id = in_flight(journal, "critique#1")
        with lock.cursor() as cursor:  # critique#1's result waits for it
            cursor.execute("LOCK TABLE step_executions")
        _signal_once_blocked(p, sig, lock, journal)
    finally:
        p.kill()
        lock.close()
    reader.join(timeout=10)
    _stopped_then_resumed(p.returncode, lines, run_id, sig, tmp_path, env, log)


def _signal_once_blocked(p: Any, sig: int, lock: Any, journal: Any) -> None:
    """Send `sig` to `p` once it waits for a lock the connection `lock` holds, and wait for it
    to end (its lock_timeout has more than 50 s to go)."""
    me = lock.get_backend_pid()
    blocked = f"SELECT 1 FROM pg_stat_activity WHERE {me} = ANY(pg_blocking_pids(pid))"
    wait_for(lambda: journal.rows(blocked), "the wait")
    p.send_signal(sig)
    p.wait(timeout=30)


def _stopped_then_resumed(
    returncode: int | None,
    lines: list[str],
    run_id: str,
    sig: int,
    tmp_path: Path,
    env: dict[str, str],
    log: Path,
) -> None:
    """A run stopped by `sig` while its journal waited for a lock: it said how to go on, and
    the resume finished it, calling again only the step whose result was not kept."""
    short = run_id[:8]
    assert returncode == (143 if sig == signal.SIGTERM else 130), lines
    assert lines[-1].strip() == (
        f"interrupted: run {short} stopped; `eclflow resume {short}` continues it"
    ), lines
    assert not any("Traceback" in line or "lost" in line for line in lines), lines
    r = eclflow(
        *("resume", short, "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    assert calls(log) == [*KEYS[:2], *KEYS[1:]]  # critique#1's result was not kept


def test_a_run_stopped_before_its_first_write_says_nothing_was_kept(tmp_path: Path) -> None:
    """SIGTERM while a new run waited for the lock before anything of it was written: it
    said `eclflow resume ID` continues it, which found no such run."""
    import threading

    from eclflow.store import open_store

    env, _, log = setup(tmp_path)
    open_store(env["ECLFLOW_DATABASE_URL"]).close()
    lock = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    p = start(tmp_path, env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("waiting for the write lock" in line for line in lines), "the wait")
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        p.kill()
        lock.close()
    reader.join(timeout=10)
    assert p.returncode == 143, lines
    assert lines[-1].startswith("interrupted before run "), lines
    assert lines[-1].endswith(" was recorded: nothing was kept; running it again starts over\n")
    assert calls(log) == []
    assert eclflow("runs", env=env).stdout.strip() == "No runs."


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_run_stopped_before_its_first_write_on_postgres_says_nothing_was_kept(
    tmp_path: Path,
    pg_url: str,  # noqa: F811
    sig: int,
) -> None:
    """Ctrl-C or SIGTERM while a new run waited for an ACCESS EXCLUSIVE lock another session
    held on the runs' table (`LOCK TABLE workflows`), before anything of it was written: it
    said `eclflow resume ID` continues it, which found no such run (the check of whether the
    run was kept waited for the same lock, was cancelled, and was taken for a yes)."""
    import threading

    import psycopg2

    from eclflow.store import open_store

    env, _, log = setup(tmp_path)
    env["ECLFLOW_DATABASE_URL"] = pg_url
    journal = Journal(pg_url)
    open_store(pg_url).close()
    base, _, schema = pg_url.partition("?schema=")
    lock = psycopg2.connect(base, options=f"-c search_path={schema}")
    with lock.cursor() as cursor:
        cursor.execute("LOCK TABLE workflows")  # ACCESS EXCLUSIVE: even a read waits
    p = start(tmp_path, env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
        reader.start()
        _signal_once_blocked(p, sig, lock, journal)
    finally:
        p.kill()
        lock.close()
    reader.join(timeout=10)
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), lines
    assert len(lines) == 1, lines
    assert lines[-1].startswith("interrupted before run "), lines
    assert lines[-1].endswith(" was recorded: nothing was kept; running it again starts over\n")
    assert calls(log) == []
    assert journal.rows("select id from workflows") == []
    assert eclflow("runs", env=env).stdout.strip() == "No runs."


def test_a_run_cancelled_in_a_process_that_goes_on_is_resumed_elsewhere(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A server (say) that cancels a run and lives on: the run is released, so another
    process resumes it at once instead of finding it 'still running in process N'."""
    import asyncio
    import contextlib

    import eclflow as api
    from eclflow.store import open_store

    env, journal, log = setup(tmp_path)
    monkeypatch.setenv("ECLFLOW_MOCK_LOG", str(log))
    store = open_store(env["ECLFLOW_DATABASE_URL"])

    async def main() -> Any:
        run = api.run(
            CRITIQUE_REVISE, {"topic": "x"}, model="mock/x", store=store,
            mock_responses=json.loads(script(KEYS, slow="generate")),
        )  # fmt: skip
        task = asyncio.create_task(run)
        while not journal.rows("select 1 from step_executions where state = 'running'"):
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)  # the writer's next batch
        run_id = journal.rows("select id from workflows")[0][0]
        st = await asyncio.to_thread(eclflow, "status", run_id[:8], env=env)
        note = f"Note:         it was stopped (cancelled) by process {os.getpid()};"
        assert note in st.stdout and "Current Step: generate\n" in st.stdout
        # this process goes on, its store open: another one resumes the run
        return await asyncio.to_thread(eclflow_cli_resume, run_id, env, tmp_path)

    try:
        r = asyncio.run(main())
    finally:
        store.close()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    assert calls(log) == ["generate", *KEYS]  # the cancelled call, then the resumed run's


def eclflow_cli_resume(run_id: str, env: dict[str, str], tmp_path: Path) -> Any:
    return eclflow(
        *("resume", run_id[:8], "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )


def test_an_ended_but_unreaped_process_holds_nothing() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        meta = {"pid": p.pid, "host": socket.gethostname(), "started": _start_ticks(p.pid)}
        wait_for(lambda: holder(meta) == "gone", "the child to end", 10)  # a zombie till reaped
        assert os.waitpid(p.pid, os.WNOHANG) != (0, 0)  # it was not reaped before
    finally:
        p.wait()


def test_a_run_held_on_another_host_is_resumed_only_with_force(tmp_path: Path) -> None:
    env, journal, log = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    p.kill()
    p.communicate(timeout=30)
    with sqlite3.connect(tmp_path / "runs.db") as db:  # as if it had run on another machine
        db.execute("update workflows set metadata = json_set(metadata, '$.host', 'elsewhere')")
    args = ("resume", run_id[:8], "--model", "mock/x", "--mock-responses")
    r = eclflow(*args, str(tmp_path / "rest.json"), env=env)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: run {run_id[:8]} was running in process {p.pid} on elsewhere, which cannot "
        "be checked from here; once that process is gone, resume with --force"
    )
    assert calls(log) == ["generate"]
    r = eclflow(*args, str(tmp_path / "rest.json"), "--force", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"


def _can_unshare() -> bool:
    """Whether this process may start one in a pid namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def test_a_pid_of_another_pid_namespace_is_not_looked_up_here() -> None:
    """Containers sharing the host name (host networking) number their processes apart: a
    pid recorded in another one, found missing here (or found as some other process, or as
    this very one: pid 1 in both), says nothing about the process that holds the run."""
    me = this_process()
    assert me["pidns"] == os.readlink("/proc/self/ns/pid")
    there = {**me, "pidns": "pid:[1]", "started": 1}
    assert holder({**there, "pid": 2**22 + 1}) == "unknown"  # no such pid here
    assert holder({**there, "pid": os.getpid()}) == "unknown"  # this pid here: another process
    assert not held_elsewhere(there)
    assert holder({k: v for k, v in there.items() if k != "pidns"}) == "alive"  # (as before)


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare(1) allowed to make a pid namespace")
def test_a_run_going_on_in_another_container_of_this_host_is_not_resumed(
    tmp_path: Path,
) -> None:
    """`eclflow run` in a pid namespace of its own (a container with host networking: the
    same host name), then `eclflow resume` outside it: its pid means nothing here, so the
    resume must not decide that the run's process has ended and run it a second time."""
    env, journal, log = setup(tmp_path)
    p = start(tmp_path, env, wrap=("unshare", "--pid", "--fork", "--mount-proc", "--kill-child"))
    try:
        run_id = in_flight(journal)
        r = eclflow(
            *("resume", run_id[:8], "--model", "mock/x"),
            *("--mock-responses", str(tmp_path / "rest.json")),
            env=env,
        )
        assert r.returncode == 1, r.stderr
        assert f"on {socket.gethostname()}, in another container, which cannot be" in r.stderr
        assert calls(log) == ["generate"]  # the resume called nothing
    finally:
        p.kill()
        p.communicate(timeout=30)


def test_resuming_a_run_this_very_process_is_running_is_refused(tmp_path: Path) -> None:
    import asyncio

    import eclflow
    from eclflow.errors import InvalidState

    url = f"sqlite:///{tmp_path / 'runs.db'}"

    async def main() -> None:
        run = asyncio.create_task(
            eclflow.run(
                CRITIQUE_REVISE, {"topic": "x"}, model="mock/x", store=url, run_id="r-1234",
                mock_responses=json.loads(script(KEYS, slow="generate")),
            )
        )  # fmt: skip
        while not Journal(url).rows("select 1 from step_executions"):
            await asyncio.sleep(0.05)
        try:
            with pytest.raises(InvalidState, match="running in this process"):
                await eclflow.resume("r-1234", db=url, mock_responses=json.loads(script(KEYS)))
        finally:
            run.cancel()

    asyncio.run(main())


def test_a_second_resume_in_this_process_is_refused_once_the_first_has_taken_over(
    tmp_path: Path,
) -> None:
    """Two `eclflow.resume` of a killed run at once in one process: the second, deciding after
    the first had taken the run over but before it began running it, found the run held by a
    live process, this one, not in `_running_here` yet; it took the run over too, wrote a
    second `Workflow execution interrupted` ("taken over with --force", though nobody gave
    --force) and ran the run twice (a UNIQUE constraint failed on the journal's rows)."""
    from eclflow.engine import runner
    from eclflow.errors import InvalidState
    from eclflow.llm import Providers
    from eclflow.store import open_store

    env, journal, _ = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    p.kill()
    p.communicate(timeout=30)
    store = open_store(env["ECLFLOW_DATABASE_URL"])
    callers = Providers(mock=runner.as_mock(json.loads(script(KEYS))), command="eclflow resume")
    try:
        first = runner._take_over(store, run_id[:8], False, None, callers, "mock/x")
        assert not isinstance(first, runner.RunResult)
        with pytest.raises(InvalidState, match="is running in this process"):
            runner._take_over(store, run_id[:8], False, None, callers, "mock/x")
    finally:
        runner._running_here.discard(run_id)
        store.close()
    assert journal.rows(
        "select count(*) from events where run_id = %s and kind = 'workflow_interrupted'", run_id
    ) == [(1,)]


def test_a_run_paused_from_another_process_stops_between_steps_and_resumes(
    tmp_path: Path,
) -> None:
    """`eclflow pause`: the step in flight finishes (it is paid for), no other starts, the run
    is left `paused`; `eclflow resume` continues it without calling anything twice."""
    env, journal, log = setup(tmp_path)
    replies = json.loads(script(KEYS))
    replies["critique#1"]["delay"] = 4  # longer than the engine waits between two looks
    p = start(tmp_path, env, replies=json.dumps(replies))
    try:
        run_id = in_flight(journal, "critique#1")
        short = run_id[:8]
        r = eclflow("pause", short, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"pausing run {short}: it stops before its next step")
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 1
    assert f"paused · run {short} · 2 steps" in err
    assert f"paused before step revise, as asked; `eclflow resume {short}` continues it" in err
    assert calls(log) == ["generate", "critique#1"]
    st = eclflow("status", short, env=env)
    assert "Status:      ⏸ Paused" in st.stdout and "before step revise" in st.stdout
    again = eclflow("pause", short, env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: run {short} is paused: only a running run pauses"
    r = eclflow(
        *("resume", short, "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    assert calls(log) == KEYS  # nothing called twice


def test_only_a_running_run_pauses(tmp_path: Path) -> None:
    env, journal, _ = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    r = eclflow("pause", run_id[:8], env=env)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: run {run_id[:8]} is not running: its process ended; "
        f"`eclflow resume {run_id[:8]}` continues it"
    )
    assert eclflow("pause", "zzzz", env=env).returncode == 2


def test_pause_of_an_ended_run_says_a_resume_that_works_with_engine_restate_set(
    tmp_path: Path,
) -> None:
    """With ECLFLOW_ENGINE=restate set, `eclflow pause` of a run whose process ended said
    `eclflow resume ID`, which went to Restate (no such run there), and without the --db the
    pause was given: the command said names the local engine and the database, and works."""
    import shlex

    env, journal, _ = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    url = env.pop("ECLFLOW_DATABASE_URL")
    env["ECLFLOW_ENGINE"] = "restate"
    r = eclflow("pause", run_id[:8], "--db", url, env=env)
    assert r.returncode == 1
    said = shlex.split(r.stderr.split("`")[1])
    assert said[:3] == ["eclflow", "resume", run_id[:8]], r.stderr
    assert "--engine" in said and "--db" in said, r.stderr
    go_on = eclflow(*said[1:], "--model", "mock/x", "--mock-responses",
                    str(tmp_path / "rest.json"), "--json", env=env)  # fmt: skip
    assert go_on.returncode == 0, go_on.stderr
    assert json.loads(go_on.stdout)["status"] == "completed"


def test_a_resume_stopped_while_it_takes_the_run_over_lets_go_of_it(tmp_path: Path) -> None:
    """Ctrl-C reached `eclflow resume` of a killed run while it took the run over: the take-over
    went on in its thread and committed, and nothing ran the run or let go of it. The run was
    left held by the resume's process, as if that one had crashed: the next resume said it
    `ended without finishing it (killed, or crashed)`, and `status` that it was running there.
    It is released as a run stopped while it runs is. The moment is made certain: the resume
    waits for the write lock another connection holds; stopped (SIGSTOP), the lock is let go
    and Ctrl-C sent, so that it goes on (SIGCONT) with the lock free and the signal come."""
    import threading

    env, journal, log = setup(tmp_path)
    p = start(tmp_path, env)
    run_id = in_flight(journal)
    p.kill()
    p.communicate(timeout=30)
    short = run_id[:8]
    lock = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    q = subprocess.Popen(
        [
            *(sys.executable, "-m", "eclflow", "resume", short, "--model", "mock/x"),
            *("--mock-responses", str(tmp_path / "rest.json")),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(q.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("waiting for the write lock" in line for line in lines), "the wait")
        q.send_signal(signal.SIGSTOP)
        lock.execute("COMMIT")
        q.send_signal(signal.SIGINT)
        q.send_signal(signal.SIGCONT)
        q.wait(timeout=60)
    finally:
        q.kill()
        lock.close()
    reader.join(timeout=10)
    assert q.returncode == 130, lines
    assert lines[-1].strip() == (
        f"interrupted: run {short} stopped; `eclflow resume {short}` continues it"
    ), lines
    [(meta,)] = journal.rows("select metadata from workflows where id = %s", run_id)
    assert (json.loads(meta)["pid"], json.loads(meta).get("released")) == (q.pid, True)
    st = eclflow("status", short, env=env)
    assert f"it was stopped (cancelled) by process {q.pid};" in st.stdout
    r = eclflow(
        *("resume", short, "--model", "mock/x", "--json"),
        *("--mock-responses", str(tmp_path / "rest.json")),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    assert calls(log) == ["generate", *KEYS]  # the stopped resume called nothing
    logs = eclflow("logs", short, "--json", env=env)
    stopped = [
        (e["cause"], e["in_flight"])
        for e in map(json.loads, logs.stdout.splitlines())
        if e["kind"] == "workflow_interrupted"
    ]
    assert stopped == [
        (f"process {p.pid} ended without finishing it (killed, or crashed)", ["generate"]),
        (f"process {q.pid} stopped it (Ctrl-C, SIGTERM or a cancelled task)", []),
    ]


@pytest.mark.parametrize("command", ["run", "resume"])
def test_a_background_job_ignores_ctrl_c_and_stops_on_sigterm_run_and_resume_alike(
    tmp_path: Path, command: str
) -> None:
    """Started in the background of a shell (`eclflow resume ID &`: SIGINT ignored, as the shell
    leaves it for such jobs), `run` and `resume` both go on after SIGINT, which a terminal's
    Ctrl-C sends to the jobs in the foreground only, and both stop on SIGTERM as Ctrl-C
    would stop them: 143, and the way to go on."""
    env, journal, log = setup(tmp_path)
    replies = json.loads(script(KEYS))
    replies["generate"]["delay"] = 2  # long enough to be signalled in, short enough to end
    replies["critique#1"]["delay"] = 60
    (tmp_path / "bg.json").write_text(json.dumps(replies))
    args = [str(CRITIQUE_REVISE), "-i", "topic=x"]
    if command == "resume":  # of a run killed before anything was kept
        p = start(tmp_path, env)
        args = [in_flight(journal)[:8]]
        p.kill()
        p.communicate(timeout=30)
    q = subprocess.Popen(
        [
            *(sys.executable, "-m", "eclflow", command, *args, "--model", "mock/x"),
            *("--mock-responses", str(tmp_path / "bg.json")),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        (run_id,) = wait_for(
            lambda: journal.rows(
                "select run_id from step_executions where key = 'generate' and state = 'running'"
                " and attempt = %s",
                1 if command == "run" else 2,
            ),
            "generate to be in flight",
        )[0]
        q.send_signal(signal.SIGINT)  # ignored: generate's call ends, critique#1's begins
        in_flight(journal, "critique#1")
        q.send_signal(signal.SIGTERM)
        _, err = q.communicate(timeout=60)
    finally:
        q.kill()
    short = run_id[:8]
    assert q.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: run {short} stopped; `eclflow resume {short}` continues it"
    )
    assert calls(log)[-2:] == ["generate", "critique#1"]
