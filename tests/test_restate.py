"""eclflow on Restate: the real `restate-server` binary, real `eclflow serve` workers, SIGKILL.

The server comes from `.restate/` (installed by `.ci/run`); these tests are skipped only when
that binary is absent. Each worker plays its own `mock/` script and logs every call it receives
(ECLFLOW_MOCK_LOG), which is how a test proves that no finished call was made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CRITIQUE_REVISE
from restate_server import (
    Processes,
    RestateServer,
    free_port,
    processes,
    server_available,
    wait_for,
)

from eclflow.engine.result import RunResult, StepExecution, TraceEvent
from eclflow.errors import EclflowError, RunNotFound
from eclflow.restate import client
from eclflow.restate.journal import execution_from_json, execution_to_json
from eclflow.spec import load
from eclflow.spec.model import Workflow

PASS = {"decision": "pass", "critique": "Clear and complete."}
REVISE = {"decision": "revise", "critique": "Too short.", "feedback": "Add an example."}

needs_server = pytest.mark.skipif(
    not server_available(),
    reason="restate-server is not installed in .restate/ (.ci/run installs it with npm)",
)
pytestmark = pytest.mark.restate


def critique_revise(tmp_path: Path) -> Workflow:
    """The bundled workflow with millisecond retry delays, its prompt a file of its own in
    `prompts/` beside it."""
    text = CRITIQUE_REVISE.read_text().replace("prompt: generate.j2", "prompt: prompts/generate.j2")
    text = text.replace("initial_delay: 1s", "initial_delay: 5ms").replace(
        "max_delay: 10s", "max_delay: 10ms"
    )
    folder = tmp_path / "wf" / "workflows"
    folder.mkdir(parents=True)
    templates = folder / "prompts"
    templates.mkdir()
    source = CRITIQUE_REVISE.parent.parent / "templates" / "generate.j2"
    (templates / "generate.j2").write_text(source.read_text())
    path = folder / "critique_revise.yaml"
    path.write_text(text)
    return load(path)


def keyed(script: dict[str, Any], *, cycle: bool = False) -> dict[str, Any]:
    """A mock script keyed by journal key (`critique#2`) or step id."""
    return {"responses": script, "cycle": cycle}


def keys(calls: list[dict[str, Any]]) -> list[str]:
    return [c["key"] for c in calls]


@contextlib.contextmanager
def run_on_restate(wf: Workflow, env: Mapping[str, str]) -> Iterator[Any]:
    """`eclflow run WF --engine restate -i topic=kelp -m mock/x` in a subprocess, its stdout and
    stderr piped (text); killed if it has not ended with the block, or after 120 s (a line
    that never comes fails the test instead of hanging it)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "eclflow", "run", str(wf.path), "--engine", "restate",
         "-i", "topic=kelp", "-m", "mock/x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    guard = threading.Timer(120, p.kill)
    guard.start()
    try:
        yield p
    finally:
        guard.cancel()
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_result(server: RestateServer, run_id: str, timeout: float = 60.0) -> RunResult:
    return asyncio.run(client.wait_async(run_id, restate_url=server.ingress_url, timeout=timeout))


def submit(server: RestateServer, wf: Workflow, topic: str, **kw: Any) -> Any:
    return asyncio.run(
        client.submit_async(
            wf, {"topic": topic}, model="mock/test", restate_url=server.ingress_url, **kw
        )
    )


def stuck_in_revise(procs: Processes, server: RestateServer, bind: str, **kw: Any) -> Any:
    """A worker whose script answers generate and critique#1 (revise) and never revise#1:
    the one a test kills mid-run."""
    script = {
        "generate": "v1",
        "critique#1": REVISE,
        "revise#1": {"content": "never delivered", "delay": 120},
    }
    return procs.worker(server, keyed(script), bind=bind, name="first", **kw)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as p:
        yield p


# --- without a server -----------------------------------------------------------------------


def test_request_ships_the_prompt_files_and_a_worker_loads_them(tmp_path: Path) -> None:
    from eclflow.restate.service import Worker, WorkerSettings

    wf = critique_revise(tmp_path)
    request = client.build_request(wf, {"topic": "tides"}, model="mock/x")
    assert set(request["prompts"]) == {"prompts/generate.j2"}
    assert request["input"] == {"topic": "tides"} and request["model"] == "mock/x"
    json.dumps(request)  # the whole request is JSON

    # a worker on another machine: the files exist only in the request
    (tmp_path / "wf" / "workflows" / "prompts" / "generate.j2").write_text("changed on the client")
    worker = Worker(WorkerSettings(prompt_dir=tmp_path / "worker"))
    loaded = worker.workflow(request)
    assert loaded.sha256 == wf.sha256
    generate = loaded.step("generate")
    assert generate.prompt is not None
    assert (tmp_path / "worker") in generate.prompt.parents
    assert generate.prompt.read_text() == request["prompts"]["prompts/generate.j2"]
    assert worker.workflow(request) is loaded  # loaded once per definition


def test_a_worker_loads_prompt_files_the_client_ships_from_beside_the_workflows_folder(
    tmp_path: Path,
) -> None:
    """`workflows/x.yaml` reading `../templates/generate.j2` through a link to eclflow's own
    templates (the repository's layout) is valid, and runs locally; the worker, which writes
    the shipped text beside its folder, refused it as outside that folder (E403). A request of
    an earlier client (an invocation Restate retries on an upgraded worker) naming a file of
    its own there likewise: the text is the request's, nothing of the worker's is read."""
    from eclflow.restate.service import Worker, WorkerSettings
    from eclflow.spec import load

    (tmp_path / "wf" / "workflows").mkdir(parents=True)
    (tmp_path / "wf" / "templates").symlink_to(CRITIQUE_REVISE.parent.parent / "templates")
    path = tmp_path / "wf" / "workflows" / "w.yaml"
    path.write_text(
        CRITIQUE_REVISE.read_text().replace(
            "prompt: generate.j2", "prompt: ../templates/generate.j2"
        )
    )
    request = client.build_request(load(path), {"topic": "tides"}, model="mock/x")
    assert set(request["prompts"]) == {"../templates/generate.j2"}
    worker = Worker(WorkerSettings(prompt_dir=tmp_path / "worker"))
    generate = worker.workflow(request).step("generate")
    assert generate.prompt is not None and (tmp_path / "worker") in generate.prompt.parents
    assert generate.prompt.read_text() == request["prompts"]["../templates/generate.j2"]

    earlier = dict(request, prompts={"../templates/generate.j2": "Own prompt: {{ topic }}"})
    own = worker.workflow(earlier).step("generate").prompt
    assert own is not None and own.read_text() == "Own prompt: {{ topic }}"


@pytest.mark.parametrize("how", ["absolute", "home"])
def test_an_absolute_prompt_path_is_refused_before_the_run_is_sent(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid beside the workflow file, but a worker resolves it on its own disk, which E403
    refuses (it used to read that machine's file, whatever it held): said here, in one line,
    with the relative name to write."""
    from eclflow.errors import ConfigError
    from eclflow.spec import load

    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "wf"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "g.j2").write_text("Write about {{ topic }}")
    named = str(folder / "prompts" / "g.j2") if how == "absolute" else "~/wf/prompts/g.j2"
    path = folder / "w.yaml"
    path.write_text(CRITIQUE_REVISE.read_text().replace("prompt: generate.j2", f"prompt: {named}"))
    wf = load(path)  # (valid: the file is in the workflow file's folder)
    with pytest.raises(ConfigError) as caught:
        client.build_request(wf, {"topic": "tides"}, model="mock/x")
    assert str(caught.value) == (
        f"Configuration error: step 'generate': prompt file {named!r} is named by an absolute "
        "path, which Restate workers cannot find: name it relative to the workflow file "
        "(prompts/g.j2)"
    )


def test_invalid_input_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    from eclflow.errors import InvalidInput

    with pytest.raises(InvalidInput):
        client.build_request(critique_revise(tmp_path), {"topic": ""})


def test_a_model_name_run_refuses_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """A model name with a control character is refused by `run` (a NUL failed the journal on
    PostgreSQL); sent to Restate, the worker refused it, and the run failed with '... has a
    control character (on the workers: the `eclflow serve` processes run the steps)', as if
    the workers' setup were wrong."""
    from eclflow.errors import ConfigError

    wf = critique_revise(tmp_path)
    given: list[tuple[Any, str]] = [
        ("mock/x\t", 'model "mock/x\\t" has a control character (U+0009)'),
        (5, "model is a name such as 'openai/gpt-4o-mini', not 5"),
    ]
    for model, said in given:
        with pytest.raises(ConfigError) as caught:
            client.build_request(wf, {"topic": "tides"}, model=model)
        assert str(caught.value) == f"Configuration error: {said}"


def test_registering_gives_up_on_a_deployment_restate_cannot_reach() -> None:
    """An admin API that keeps answering 500 (what Restate says when it cannot call the
    advertised URI) is tried for `within` seconds, then a one-line error with the remedy."""
    import http.server

    from eclflow.errors import ConfigError
    from eclflow.restate.worker import register

    posts: list[str] = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(self.path)
            body = b'{"message": "error when calling the deployment: connection refused"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    admin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError) as e:
            asyncio.run(
                register(f"http://127.0.0.1:{admin.server_port}", "http://w:9080", within=1.0)
            )
    finally:
        admin.shutdown()
    assert len(posts) >= 2 and set(posts) == {"/deployments"}
    assert "Restate refused the deployment http://w:9080 (500): error when" in str(e.value)
    assert "(--advertise URL)" in str(e.value)


@pytest.mark.parametrize("bind", ["127.0.0.1:99999", "127.0.0.1", "host:port"])
def test_a_bad_bind_is_one_line_and_exit_2(bind: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "serve", "--bind", bind],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: Configuration error: --bind expects HOST:PORT with a port of 0 to 65535, "
        f"got {bind!r}"
    ]


@pytest.mark.parametrize("body", [b'{"status": "ok"}', b"<html>a web page</html>"])
def test_an_admin_address_answering_200_without_rows_is_not_taken_for_no_runs(
    body: bytes,
) -> None:
    """A wrong `--restate-admin-url` that answers 200 (a web page, another JSON API) made
    `runs --engine restate` say "No runs." and exit 0."""
    import http.server

    class Other(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{other.server_port}"
    try:
        r = subprocess.run(
            [sys.executable, "-m", "eclflow", "runs", "--engine", "restate",
             "--restate-admin-url", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        other.shutdown()
    assert (r.returncode, r.stdout) == (2, ""), r.stdout
    assert r.stderr.strip().splitlines() == [
        f"error: Configuration error: {url} is not Restate's admin API (it answered 200 without "
        "the rows of a query): give its address (restate-server's port 9070) with "
        "--restate-admin-url or ECLFLOW_RESTATE_ADMIN_URL"
    ]


def test_step_execution_survives_the_journal_json() -> None:
    e = StepExecution(
        "critique",
        "critique#2",
        1,
        "needs_revision",
        output={"decision": "revise", "n": 2},
        feedback="more",
        attempts=2,
        duration_ms=12,
        tokens_in=5,
        tokens_out=7,
        cost=0.25,
        calls=2,
        made=3,
        model="mock/x",
        input={"draft": "v1"},
        prompt=[{"role": "user", "content": "hi"}],
        traces=[TraceEvent("warn", "Retrying", {"attempt": 2}, 1700000000.5)],
    )
    data = json.loads(json.dumps(execution_to_json(e)))
    back = execution_from_json(data, replayed=True)
    assert back.replayed and not e.replayed
    back.replayed = False
    assert back == e


# --- against the real server ----------------------------------------------------------------


@needs_server
def test_critique_revise_runs_through_restate(procs: Processes, tmp_path: Path) -> None:
    server = procs.server()
    script = keyed({"generate": "v1", "critique#1": REVISE, "revise#1": "v2", "critique#2": PASS})
    worker = procs.worker(server, script, bind=f"127.0.0.1:{free_port()}")
    wf = critique_revise(tmp_path)

    result = submit(server, wf, "tide pools")
    assert isinstance(result, RunResult)
    assert result.status == "completed", result.error
    assert result.output == {"final_text": "v2", "revision_count": 1}
    assert [s.key for s in result.steps] == ["generate", "critique#1", "revise#1", "critique#2"]
    assert result.revisions == {"critique": 1}
    calls = worker.calls()
    assert keys(calls) == ["generate", "critique#1", "revise#1", "critique#2"]
    assert "tide pools" in calls[0]["messages"][-1]["content"]
    assert "Add an example." in calls[2]["messages"][-1]["content"]

    st = client.status(result.run_id, server.ingress_url)
    assert st.state == "completed" and st.output == result.output
    assert [s["key"] for s in st.steps] == ["generate", "critique#1", "revise#1", "critique#2"]
    assert "critique#1: succeeded (revise)" in st.to_text()
    with pytest.raises(RunNotFound):
        client.status(str(uuid.uuid4()), server.ingress_url)

    # a definition the worker cannot load ends the run (a TerminalError), not a retry loop
    broken = Workflow(**{**{f: getattr(wf, f) for f in wf.__slots__}, "source": "eclflow: 1\n"})
    failed = submit(server, broken, "x")
    assert isinstance(failed, RunResult) and failed.status == "failed"
    assert failed.error and "critique-revise" not in failed.error
    assert len(worker.calls()) == 4


def _rows(db: str, run_id: str) -> list[tuple[str, str]]:
    from eclflow.errors import EclflowError
    from eclflow.store import open_store

    try:
        store = open_store(db)
    except EclflowError:
        return []
    try:
        return [(r.key, r.state) for r in store.steps.for_run(run_id)]
    finally:
        store.close()


@needs_server
def test_worker_killed_mid_step_another_finishes_without_repeating(
    procs: Processes, tmp_path: Path
) -> None:
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = stuck_in_revise(procs, server, bind, db=db)
    wf = critique_revise(tmp_path)
    run_id = submit(server, wf, "tides", detach=True)
    assert isinstance(run_id, str)
    wait_for(lambda: "revise#1" in keys(first.calls()), what="revise#1 in flight")
    wait_for(lambda: ("revise#1", "running") in _rows(db, run_id), what="its running row")
    first.kill()
    time.sleep(2)  # (the run's duration counts this wait: it said only the last invocation's)

    # The replacement's script holds only what is still needed: a repeated generate or
    # critique#1 would find no reply and fail the run.
    second = procs.worker(
        server,
        keyed({"revise#1": "v2", "critique#2": PASS}),
        bind=bind,
        name="second",
        db=db,
        register=False,
    )
    result = wait_result(server, run_id)
    assert result.status == "completed", result.error
    assert result.output == {"final_text": "v2", "revision_count": 1}
    assert result.duration_ms >= 2000
    assert keys(first.calls()) == ["generate", "critique#1", "revise#1"]
    assert keys(second.calls()) == ["revise#1", "critique#2"]
    replayed = {s.key: s.replayed for s in result.steps}
    assert replayed == {
        "generate": True,
        "critique#1": True,
        "revise#1": False,
        "critique#2": False,
    }

    # the same attempts are in the eclflow store, keyed as on the local engine
    from eclflow.store import open_store

    store = open_store(db)
    try:
        run = store.runs.get(run_id)
        assert run.state == "completed" and run.output == result.output
        assert run.metadata.get("engine") == "restate"
        assert run.metadata.get("duration_ms") == result.duration_ms
        rows = [(r.key, r.attempt, r.state) for r in store.steps.for_run(run_id)]
        assert rows == [
            ("generate", 1, "succeeded"),
            ("critique#1", 1, "succeeded"),
            ("revise#1", 1, "running"),  # the killed worker's attempt
            ("revise#1", 2, "succeeded"),
            ("critique#2", 1, "succeeded"),
        ]
    finally:
        store.close()

    # and the history commands read a Restate run like a local one
    out = subprocess.run(
        [sys.executable, "-m", "eclflow", "status", run_id, "--db", db, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ECLFLOW_DATABASE_URL": ""},
    )
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout and "critique#2" in out.stdout


@needs_server
def test_a_worker_crash_does_not_give_the_run_a_new_budget(
    procs: Processes, tmp_path: Path
) -> None:
    """The calls replayed from Restate's journal count against the run's budget: with 3
    calls allowed, generate and critique#1 before the crash and revise#1 after it leave none
    for critique#2 (before, each crash started the count again: 8 calls on a budget of 3)."""
    from eclflow.spec.model import Budget

    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    first = stuck_in_revise(procs, server, bind)
    run_id = submit(
        server, critique_revise(tmp_path), "tides", detach=True, budget=Budget(max_calls=3)
    )
    wait_for(lambda: "revise#1" in keys(first.calls()), what="revise#1 in flight")
    # (and `status` says whose run it is while it goes on)
    st = asyncio.run(client.status_async(run_id, server.ingress_url))
    assert (st.state, st.workflow_id, st.running) == ("running", "critique-revise", "revise#1")
    first.kill()
    second = procs.worker(
        server,
        keyed({"revise#1": "v2", "critique#2": PASS}),
        bind=bind,
        name="second",
        register=False,
    )
    result = wait_result(server, run_id)
    assert result.status == "failed"
    assert "budget_exceeded" in (result.error or "") and "model call 4" in (result.error or "")
    assert keys(second.calls()) == ["revise#1"]


@needs_server
def test_a_worker_crash_counts_the_failed_calls_too(procs: Processes, tmp_path: Path) -> None:
    """A call that failed and was retried counts against `max_calls` as it did before the crash
    (the replay counted only the calls that answered: generate's failed first attempt was free
    after a crash, and the run made one call over its budget)."""
    from eclflow.spec.model import Budget

    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    script = {
        "generate": [{"error": "server_error"}, "v1"],
        "critique#1": REVISE,
        "revise#1": {"content": "never delivered", "delay": 120},
    }
    first = procs.worker(server, keyed(script), bind=bind, name="first")
    run_id = submit(
        server, critique_revise(tmp_path), "tides", detach=True, budget=Budget(max_calls=4)
    )
    wait_for(lambda: "revise#1" in keys(first.calls()), what="revise#1 in flight")
    first.kill()
    second = procs.worker(
        server, keyed({"revise#1": "v2", "critique#2": PASS}), bind=bind, name="second"
    )
    result = wait_result(server, run_id)
    assert keys(first.calls()) == ["generate", "generate", "critique#1", "revise#1"]
    assert keys(second.calls()) == ["revise#1"]
    assert result.status == "failed", result
    assert "would make model call 5, over the limit of 4" in (result.error or "")


@needs_server
def test_server_killed_mid_run_restarts_on_its_data_and_completes(
    procs: Processes, tmp_path: Path
) -> None:
    server = procs.server()
    worker = procs.worker(
        server,
        keyed(
            {
                "generate": "v1",
                # the first critique is cut off by the server's death; the second is the retry
                "critique#1": [{"content": REVISE, "delay": 3}, REVISE],
                "revise#1": "v2",
                "critique#2": PASS,
            }
        ),
        bind=f"127.0.0.1:{free_port()}",
    )
    wf = critique_revise(tmp_path)
    run_id = submit(server, wf, "tides", detach=True)
    assert isinstance(run_id, str)

    waited: dict[str, Any] = {}

    def wait_across_the_crash() -> None:  # a client attached before the crash rides it out
        try:
            waited["result"] = wait_result(server, run_id, timeout=90)
        except BaseException as e:
            waited["error"] = e

    waiter = threading.Thread(target=wait_across_the_crash, daemon=True)
    waiter.start()
    wait_for(lambda: "critique#1" in keys(worker.calls()), what="critique#1 in flight")
    server.kill()
    server.start()

    waiter.join(timeout=90)
    assert not waiter.is_alive()
    assert "error" not in waited, waited.get("error")
    result = waited["result"]
    assert result.status == "completed", result.error
    assert result.output == {"final_text": "v2", "revision_count": 1}
    calls = keys(worker.calls())
    # generate had finished before the crash: it was not called again
    assert calls.count("generate") == 1
    assert calls == ["generate", "critique#1", "critique#1", "revise#1", "critique#2"]


@needs_server
def test_two_hundred_runs_across_two_workers(procs: Processes, tmp_path: Path) -> None:
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    script = keyed(
        {"generate": "v1", "critique#1": REVISE, "revise#1": "v2", "critique#2": PASS},
        cycle=True,
    )
    workers = [procs.worker(server, script, bind=bind, name=f"w{i}") for i in range(2)]
    wf = critique_revise(tmp_path)

    results = asyncio.run(
        asyncio.wait_for(
            client.submit_many(
                wf,
                [{"topic": f"topic {i}"} for i in range(200)],
                model="mock/test",
                restate_url=server.ingress_url,
                concurrency=32,
            ),
            timeout=90,
        )
    )
    assert all(isinstance(r, RunResult) for r in results)
    assert len({r.run_id for r in results if isinstance(r, RunResult)}) == 200
    assert [getattr(r, "status", None) for r in results] == ["completed"] * 200
    assert all(
        getattr(r, "output", None) == {"final_text": "v2", "revision_count": 1} for r in results
    )
    per_worker = [keys(w.calls()) for w in workers]
    assert sum(len(c) for c in per_worker) == 800  # 4 calls a run, none repeated
    assert all(per_worker), "both workers ran steps"
    every = [k for c in per_worker for k in c]
    for key in ("generate", "critique#1", "revise#1", "critique#2"):
        assert every.count(key) == 200


def _pg_url() -> Iterator[str]:
    base = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        import psycopg2

        psycopg2.connect(base, connect_timeout=3).close()
    except Exception as e:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {' '.join(str(e).split())}")
    schema = f"eclflow_restate_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield f"{base}?schema={schema}"
    conn = psycopg2.connect(base)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _pg_url()


@needs_server
@pytest.mark.postgres
def test_workers_share_one_postgres_store(procs: Processes, tmp_path: Path, pg_url: str) -> None:
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    script = keyed(
        {"generate": "v1", "critique#1": REVISE, "revise#1": "v2", "critique#2": PASS},
        cycle=True,
    )
    for i in range(2):
        procs.worker(server, script, bind=bind, name=f"pg{i}", db=pg_url)
    wf = critique_revise(tmp_path)

    async def go() -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    client.submit_async(
                        wf, {"topic": f"t{i}"}, model="mock/x", restate_url=server.ingress_url
                    )
                    for i in range(20)
                )
            )
        )

    results = asyncio.run(go())
    assert {r.status for r in results} == {"completed"}
    from eclflow.store import open_store

    store = open_store(pg_url)
    try:
        for r in results:
            run = store.runs.get(r.run_id)
            assert run.state == "completed"
            assert [(s.key, s.state) for s in store.steps.for_run(r.run_id)] == [
                ("generate", "succeeded"),
                ("critique#1", "succeeded"),
                ("revise#1", "succeeded"),
                ("critique#2", "succeeded"),
            ]
    finally:
        store.close()


@needs_server
def test_cli_runs_and_reads_a_run_on_restate(procs: Processes, tmp_path: Path) -> None:
    """`eclflow run FILE --engine restate` and `eclflow status RUN_ID --engine restate`."""
    server = procs.server()
    script = keyed({"generate": "v1", "critique": PASS}, cycle=True)
    worker = procs.worker(server, script, bind=f"127.0.0.1:{free_port()}")
    wf = critique_revise(tmp_path)
    env = {**os.environ, "ECLFLOW_DATABASE_URL": "", "ECLFLOW_RESTATE_URL": server.ingress_url}

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eclflow", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    done = eclflow(
        "run", str(wf.path), "--engine", "restate", "-i", "topic=kelp", "-m", "mock/x", "--json"
    )
    if "No such option" in done.stderr and "--engine" in done.stderr:
        pytest.skip("`eclflow run --engine restate` is not wired into the CLI yet")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "completed" and data["output"]["final_text"] == "v1"
    assert keys(worker.calls()) == ["generate", "critique#1"]

    # in text, the full id comes first: Restate knows no prefixes, and the run goes on if
    # the command stops waiting
    text = eclflow("run", str(wf.path), "--engine", "restate", "-i", "topic=kelp", "-m", "mock/x")
    assert text.returncode == 0, text.stderr
    first = text.stderr.splitlines()[0]
    assert first.startswith("run ") and first.endswith(" --engine restate` shows it")
    sent = first.split()[1]
    uuid.UUID(sent)
    assert wait_result(server, sent).status == "completed"
    # with -q that line is not shown: the summary names the run by its whole id
    quiet = eclflow(
        "run", str(wf.path), "--engine", "restate", "-i", "topic=kelp", "-m", "mock/x", "-q"
    )
    assert quiet.returncode == 0, quiet.stderr
    (summary,) = quiet.stderr.splitlines()
    uuid.UUID(summary.split(" · ")[1].removeprefix("run "))

    detached = eclflow(
        "run", str(wf.path), "--engine", "restate", "-i", "topic=kelp", "-m", "mock/x", "--detach"
    )
    assert detached.returncode == 0, detached.stderr
    run_id = detached.stdout.strip().splitlines()[-1]
    uuid.UUID(run_id)
    # with --json, one JSON object like every other --json output
    as_json = eclflow(
        "run", str(wf.path), "--engine", "restate", "-i", "topic=kelp", "-m", "mock/x",
        "--detach", "--json",
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    sent_json = json.loads(as_json.stdout)
    assert sent_json == {"run_id": sent_json["run_id"], "engine": "restate"}
    assert wait_result(server, sent_json["run_id"]).status == "completed"
    result = wait_result(server, run_id)
    assert result.status == "completed"

    st = eclflow("status", run_id, "--engine", "restate", "-o", "json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["state"] == "completed"
    missing = eclflow("status", run_id[:8], "--engine", "restate")
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        f"error: Run not found: {run_id[:8]} (Restate knows a run by its whole id, as `run` "
        "printed it, and keeps a finished one for a day by default)",
    )

    down = eclflow(
        "run",
        str(wf.path),
        "--engine",
        "restate",
        "-i",
        "topic=kelp",
        "-m",
        "mock/x",
        "--restate-url",
        f"http://127.0.0.1:{free_port()}",
    )
    assert down.returncode != 0
    assert "cannot reach Restate" in down.stderr and "Traceback" not in down.stderr
    assert "sent to Restate" not in down.stderr  # (it said so before sending)


@needs_server
def test_sigterm_cuts_off_a_step_quietly_and_another_worker_finishes_the_run(
    procs: Processes, tmp_path: Path
) -> None:
    """SIGTERM mid-step: the worker exits 0 after its grace period without printing the
    tracebacks of the invocation it cut off, and Restate gives the run to the next worker."""
    import signal

    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    slow = keyed({"generate": {"content": "never delivered", "delay": 120}})
    first = procs.worker(server, slow, bind=bind, name="first")
    wf = critique_revise(tmp_path)
    run_id = submit(server, wf, "kelp", detach=True)
    wait_for(lambda: keys(first.calls()) == ["generate"], what="generate in flight")

    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0
    log = first.log_path.read_text()
    assert "Traceback" not in log and "never awaited" not in log, log
    assert log.strip().splitlines()[-1].startswith("eclflow worker serving ")

    second = procs.worker(
        server, keyed({"generate": "v1", "critique": PASS}, cycle=True), bind=bind,
        name="second", register=False,
    )  # fmt: skip
    assert wait_result(server, run_id).status == "completed"
    assert keys(second.calls()) == ["generate", "critique#1"]


@needs_server
def test_a_run_waiting_for_a_worker_says_so_once(
    procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the service registered but no worker up, the client says so (once) instead of
    waiting without a word; a slow step on a live worker is not taken for a missing one."""
    monkeypatch.setattr(client, "NO_WORKER_AFTER", 0.5)
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    script = keyed({"generate": {"content": "v1", "delay": 2}, "critique": PASS}, cycle=True)
    live = procs.worker(server, script, bind=bind)
    wf = critique_revise(tmp_path)
    said: list[str] = []

    slow = submit(server, wf, "kelp", on_no_worker=lambda: said.append("slow"))
    assert isinstance(slow, RunResult) and slow.status == "completed", slow
    assert said == []

    live.kill()
    with pytest.raises(EclflowError, match="gave up waiting"):
        submit(
            server,
            wf,
            "kelp",
            run_id="batch/7?a b",
            timeout=5,
            on_no_worker=lambda: said.append("none"),
        )
    assert said == ["none"]

    # the run waited in Restate; a worker at the registered address runs it, and an id
    # with `/`, `?` and a space is one key throughout
    procs.worker(server, script, bind=bind, name="second", register=False)
    assert wait_result(server, "batch/7?a b").status == "completed"
    assert client.status("batch/7?a b", server.ingress_url).state == "completed"


def _local(wf: Workflow, inputs: dict[str, Any], script: dict[str, Any]) -> RunResult:
    from eclflow.engine.runner import run
    from eclflow.llm import MockProvider

    return asyncio.run(run(wf, inputs, model="mock/x", mock_responses=MockProvider(script)))


@needs_server
def test_branches_and_conditions_take_the_local_engines_path(
    procs: Processes, tmp_path: Path
) -> None:
    """Skipped steps and concurrent branches: the same steps and output as a local run, and a
    worker killed in the step after the branches does not repeat them."""
    from ruamel.yaml import YAML

    examples = CRITIQUE_REVISE.parent.parent / "examples"
    yaml = YAML(typ="safe", pure=True)
    routing = load(examples / "conditional_routing.yaml")
    parallel = load(examples / "parallel_branches.yaml")
    routing_script = yaml.load((examples / "mock" / "conditional_routing.yaml").read_text())
    parallel_script = yaml.load((examples / "mock" / "parallel_branches.yaml").read_text())
    slow_verdict = {**parallel_script, "verdict": {"content": "late", "delay": 120}}
    bind = f"127.0.0.1:{free_port()}"
    server = procs.server()
    first = procs.worker(server, keyed({**routing_script, **slow_verdict}), bind=bind, name="first")

    question = {"question": "Why is the sky blue?"}
    routed = asyncio.run(
        client.submit_async(routing, question, model="mock/x", restate_url=server.ingress_url)
    )
    assert isinstance(routed, RunResult)
    local = _local(routing, question, routing_script)
    assert routed.status == local.status == "completed"
    assert routed.output == local.output
    # (long_answer's skip and short_answer are branches in flight together: either ends first)
    steps = sorted((s.key, s.status) for s in routed.steps)
    assert steps == sorted((s.key, s.status) for s in local.steps)
    assert ("long_answer", "skipped") in steps and routed.steps[-1].key == "answer"

    proposal = {"proposal": "A four-day work week"}
    run_id = asyncio.run(
        client.submit_async(
            parallel, proposal, model="mock/x", restate_url=server.ingress_url, detach=True
        )
    )
    assert isinstance(run_id, str)
    wait_for(lambda: "verdict" in keys(first.calls()), what="verdict in flight")
    first.kill()
    second = procs.worker(
        server,
        keyed({"verdict": parallel_script["verdict"]}),
        bind=bind,
        name="second",
        register=False,
    )
    result = wait_result(server, run_id)
    local = _local(parallel, proposal, parallel_script)
    assert result.status == local.status == "completed", result.error
    assert result.output == local.output
    assert sorted(s.key for s in result.steps) == sorted(s.key for s in local.steps)
    assert sorted(keys(first.calls())) == ["classify", "cons", "pros", "short_answer", "verdict"]
    assert keys(second.calls()) == ["verdict"]


TWO_BRANCHES = """\
eclflow: 1
id: two-branches
inputs:
  type: object
  required: [topic]
  properties: {topic: {type: string}}
defaults:
  retry: {max_attempts: 1}
steps:
  - id: a1
    type: llm
    template: "a1 {{ topic }}"
    with: {topic: "{{ input.topic }}"}
  - id: b1
    type: llm
    template: "b1 {{ topic }}"
    with: {topic: "{{ input.topic }}"}
  - id: a2
    type: llm
    depends_on: [a1]
    template: "a2 {{ prev }}"
    with: {prev: "{{ steps.a1.output.text }}"}
  - id: b2
    type: llm
    depends_on: [b1]
    template: "b2 {{ prev }}"
    with: {prev: "{{ steps.b1.output.text }}"}
  - id: join
    type: llm
    depends_on: [a2, b2]
    template: "{{ a }} {{ b }}"
    with: {a: "{{ steps.a2.output.text }}", b: "{{ steps.b2.output.text }}"}
output:
  text: "{{ steps.join.output.text }}"
"""
# (two branches, a1 -> a2 and b1 -> b2, joined: each step's reply is its key)
BRANCH_REPLIES = {k: k.upper() for k in ("a1", "b1", "a2", "b2", "join")}


def two_branches(tmp_path: Path, text: str = TWO_BRANCHES) -> Workflow:
    path = tmp_path / "two_branches.yaml"
    path.write_text(text)
    return load(path)


def _step_rows(db: str, run_id: str) -> dict[str, Any]:
    from eclflow.store import open_store

    store = open_store(db)
    try:
        return {r.key: r for r in store.steps.for_run(run_id)}
    finally:
        store.close()


@needs_server
def test_parallel_branches_run_at_the_same_time(procs: Processes, tmp_path: Path) -> None:
    """Independent branches overlap on Restate as on the local engine: b1 starts before a1
    ends (they went through Restate's journal one at a time: b1 began after a1 had ended)."""
    server = procs.server()
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    slow = {
        **BRANCH_REPLIES,
        "a1": {"content": "A1", "delay": 1},
        "b1": {"content": "B1", "delay": 1},
    }
    procs.worker(server, keyed(slow), bind=f"127.0.0.1:{free_port()}", db=db)
    wf = two_branches(tmp_path)

    result = submit(server, wf, "tides")
    assert isinstance(result, RunResult)
    assert result.status == "completed", result.error
    assert (
        result.output == _local(wf, {"topic": "tides"}, BRANCH_REPLIES).output == {"text": "JOIN"}
    )
    rows = _step_rows(db, result.run_id)
    a1, b1 = rows["a1"], rows["b1"]
    assert a1.state == b1.state == "succeeded"
    assert b1.started_at < a1.completed_at and a1.started_at < b1.completed_at


@needs_server
def test_worker_killed_with_both_branches_in_flight(procs: Processes, tmp_path: Path) -> None:
    """b1 ends before a1 (its branch goes on first: b2 is journaled before a2), then the
    worker is killed with a2 and b2 both in flight. The next worker replays the entries in
    the order they were made and calls only a2, b2 and join: no finished step again."""
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    never = {"content": "never delivered", "delay": 120}
    script = {"a1": {"content": "A1", "delay": 1.5}, "b1": "B1", "a2": never, "b2": never}
    first = procs.worker(server, keyed(script), bind=bind, name="first")
    wf = two_branches(tmp_path)
    run_id = submit(server, wf, "tides", detach=True)
    wait_for(lambda: {"a2", "b2"} <= set(keys(first.calls())), what="a2 and b2 in flight")
    called = keys(first.calls())  # (a1 and b1 start together: either call may come first)
    assert sorted(called[:2]) == ["a1", "b1"] and called[2:] == ["b2", "a2"]
    first.kill()

    second = procs.worker(
        server,
        keyed({k: BRANCH_REPLIES[k] for k in ("a2", "b2", "join")}),
        bind=bind,
        name="second",
        register=False,
    )
    result = wait_result(server, run_id)
    assert result.status == "completed", result.error
    assert result.output == {"text": "JOIN"}
    assert sorted(keys(second.calls())) == ["a2", "b2", "join"]
    replayed = {s.key: s.replayed for s in result.steps}
    assert replayed == {"a1": True, "b1": True, "a2": False, "b2": False, "join": False}


@needs_server
def test_budget_holds_with_branches_in_flight_across_a_crash(
    procs: Processes, tmp_path: Path
) -> None:
    """With 4 calls allowed, a1 and b1 before the crash and a2 and b2 (in flight at once)
    after it leave none for join: the replayed branches count, the concurrent ones too."""
    from eclflow.spec.model import Budget

    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    never = {"content": "never delivered", "delay": 120}
    first = procs.worker(
        server, keyed({"a1": "A1", "b1": "B1", "a2": never, "b2": never}), bind=bind, name="first"
    )
    wf = two_branches(tmp_path)
    run_id = submit(server, wf, "tides", detach=True, budget=Budget(max_calls=4))
    wait_for(lambda: {"a2", "b2"} <= set(keys(first.calls())), what="a2 and b2 in flight")
    st = asyncio.run(client.status_async(run_id, server.ingress_url))
    assert st.state == "running" and sorted((st.running or "").split(", ")) == ["a2", "b2"]
    first.kill()
    second = procs.worker(server, keyed(BRANCH_REPLIES), bind=bind, name="second", register=False)
    result = wait_result(server, run_id)
    assert result.status == "failed" and result.failed_step == "join", result
    assert "would make model call 5, over the limit of 4" in (result.error or "")
    assert sorted(keys(second.calls())) == ["a2", "b2"]


@needs_server
def test_a_branch_that_times_out_fails_the_run_as_locally(procs: Processes, tmp_path: Path) -> None:
    """a1 passes its 1 s timeout while b1 is in flight: b1 still finishes, nothing after it
    starts, and the run fails with the local engine's error."""
    server = procs.server()
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    text = TWO_BRANCHES.replace(
        'template: "a1 {{ topic }}"', 'template: "a1 {{ topic }}"\n    timeout: 1s'
    )
    wf = two_branches(tmp_path, text)
    script = {
        **BRANCH_REPLIES,
        "a1": {"content": "late", "delay": 30},
        "b1": {"content": "B1", "delay": 2},
    }
    worker = procs.worker(server, keyed(script), bind=f"127.0.0.1:{free_port()}", db=db)

    result = submit(server, wf, "tides")
    local = _local(wf, {"topic": "tides"}, script)
    assert isinstance(result, RunResult)
    assert (
        (result.status, result.failed_step) == (local.status, local.failed_step) == ("failed", "a1")
    )
    assert result.error == local.error and "timed out" in (result.error or "")
    statuses = sorted((s.key, s.status) for s in result.steps)
    assert statuses == sorted((s.key, s.status) for s in local.steps)
    assert ("b1", "succeeded") in statuses and "b2" not in dict(statuses)
    assert sorted(keys(worker.calls())) == ["a1", "b1"]
    rows = _step_rows(db, result.run_id)
    assert (rows["a1"].state, rows["b1"].state) == ("failed", "succeeded")
    assert rows["b1"].started_at < rows["a1"].completed_at  # (in flight when a1 failed)


@needs_server
@pytest.mark.postgres
def test_a_store_failure_in_one_branch_does_not_call_the_others_steps_again(
    procs: Processes, tmp_path: Path, pg_url: str
) -> None:
    """a1's result cannot be written (its table is gone for a moment) while b1's call is in
    flight: the write is tried again in the action, b1 is called once. (Restate retried the
    whole invocation: b1's call was cut short and made again, paid twice.)"""
    import psycopg2

    server = procs.server()
    text = TWO_BRANCHES.replace(
        "retry: {max_attempts: 1}", "retry: {max_attempts: 5, initial_delay: 1s, max_delay: 2s}"
    )
    wf = two_branches(tmp_path, text)
    script = {
        **BRANCH_REPLIES,
        "a1": {"content": "A1", "delay": 0.5},
        "b1": {"content": "B1", "delay": 8},
    }
    worker = procs.worker(
        server, keyed(script, cycle=True), bind=f"127.0.0.1:{free_port()}", db=pg_url
    )
    base, schema = pg_url.split("?schema=")

    def rename(old: str, new: str) -> None:
        conn = psycopg2.connect(base)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'ALTER TABLE "{schema}".{old} RENAME TO {new}')
        conn.close()

    run_id = submit(server, wf, "tides", detach=True)
    wait_for(lambda: {"a1", "b1"} <= set(keys(worker.calls())), what="a1 and b1 in flight")
    rename("step_executions", "step_executions_away")
    try:
        wait_for(lambda: "does not exist" in worker.stderr(), what="a1's write failing")
    finally:
        rename("step_executions_away", "step_executions")
    result = wait_result(server, run_id)
    assert result.status == "completed", result.error
    assert result.output == {"text": "JOIN"}
    assert keys(worker.calls()).count("b1") == 1, keys(worker.calls())


@needs_server
def test_resume_leaves_a_run_restate_is_running_to_restate(
    procs: Processes, tmp_path: Path
) -> None:
    """`eclflow resume` of a Restate run in flight (it is in the store, `running`) ran it here
    as well: every step's call made twice, by the worker and by the resume."""
    server = procs.server()
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    worker = stuck_in_revise(procs, server, f"127.0.0.1:{free_port()}", db=db)
    run_id = submit(server, critique_revise(tmp_path), "tides", detach=True)
    wait_for(lambda: "revise#1" in keys(worker.calls()), what="revise#1 in flight")
    (tmp_path / "here.json").write_text(json.dumps(keyed({"*": "v9", "critique": PASS})))
    here = tmp_path / "here-calls.jsonl"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": "", "ECLFLOW_MOCK_LOG": str(here)}
    resumed = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", "resume", run_id[:8], "--db", db),
            *("--model", "mock/x", "--mock-responses", str(tmp_path / "here.json")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert resumed.returncode == 1, resumed.stderr
    assert resumed.stderr.strip() == (
        f"error: run {run_id[:8]} runs on Restate, which continues it itself: `eclflow status "
        f"{run_id} --engine restate` shows it (resume --force runs it here too, paying again "
        "for what Restate runs; only for a run Restate has lost)"
    )
    assert not here.exists()
    assert _rows(db, run_id)[-1] == ("revise#1", "running")


@needs_server
def test_status_with_no_worker_up(procs: Processes, tmp_path: Path) -> None:
    """`status --engine restate` asked a worker even for a finished run: with none up it
    waited 30 s and then blamed the server ("cannot reach Restate … is `restate-server`
    running"). A finished run is read from its result; an unfinished one says a worker is
    needed, after a few seconds."""
    import time

    server = procs.server()
    script = keyed(
        {
            "generate": ["v1", "v1"],
            "critique#1": [PASS, REVISE],
            "revise#1": {"content": "never delivered", "delay": 120},
        }
    )
    bind = f"127.0.0.1:{free_port()}"
    worker = procs.worker(server, script, bind=bind)
    wf = critique_revise(tmp_path)
    done = submit(server, wf, "kelp")
    assert isinstance(done, RunResult) and done.status == "completed", done
    running = submit(server, wf, "tides", detach=True)
    wait_for(lambda: keys(worker.calls())[-1:] == ["revise#1"], what="revise#1 in flight")
    assert client.status(running, server.ingress_url).running == "revise#1"
    worker.kill()
    nowhere = f"http://127.0.0.1:{free_port()}"  # (not 9070: a Restate of one's own may be there)
    env = {
        **os.environ,
        "ECLFLOW_RESTATE_URL": server.ingress_url,
        "ECLFLOW_RESTATE_ADMIN_URL": nowhere,
    }

    def status(run_id: str) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "eclflow", "status", run_id, "--engine", "restate"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        return out, time.monotonic() - start

    finished, took = status(done.run_id)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines()[0].endswith("· critique-revise · completed (restate)")
    assert "  critique#1: succeeded · 1 attempt(s)" in finished.stdout
    assert took < 10

    unfinished, took = status(running)
    assert unfinished.returncode == 2
    assert unfinished.stderr.strip() == (
        f"error: Configuration error: run {running} has not finished in Restate, and neither "
        f"Restate's admin API (cannot reach Restate's admin API at {nowhere} (ConnectError)) nor "
        "a worker (none answered within 5s) could say how it stands: give the admin API's "
        "address (restate-server's port 9070) with --restate-admin-url or "
        "ECLFLOW_RESTATE_ADMIN_URL, or start a worker with `eclflow serve`"
    )
    assert took < 20

    # an admin address that drops packets: said with the address and how long it waited (it
    # said only "ConnectTimeout")
    with dropping_address() as dropping:
        env["ECLFLOW_RESTATE_ADMIN_URL"] = dropping
        unfinished, took = status(running)
    assert unfinished.returncode == 2
    assert (
        f"Restate's admin API (cannot reach Restate's admin API at {dropping} (no connection "
        "within 3s)) nor a worker (none answered within 5s)"
    ) in unfinished.stderr, unfinished.stderr

    # with the admin API, no worker is needed: the progress the run keeps, and what Restate
    # does about it
    env["ECLFLOW_RESTATE_ADMIN_URL"] = server.admin_url
    wait_for(
        lambda: (
            (invocation(server, running).status, invocation(server, running).attempts >= 2)
            == ("backing-off", True)
        ),
        what="retries",
    )
    unfinished, took = status(running)
    assert unfinished.returncode == 0, unfinished.stderr
    lines = unfinished.stdout.splitlines()
    assert lines[0] == f"run {running} · critique-revise · retrying (restate)"
    # (Restate's own words were "[500 Internal] error when calling …: Connection refused")
    assert lines[1].startswith(
        f"note: no worker is reachable at http://{bind}/: start one with `eclflow serve --bind "
        f"{bind}` (Restate has tried "
    ), lines[1]
    assert lines[2].startswith("  generate: succeeded · 1 attempt(s)")
    assert lines[3].startswith("  critique#1: succeeded (revise) · 1 attempt(s)")
    assert lines[4:] == ["  revise#1: running when the last attempt ended"]
    assert took < 10


@contextlib.contextmanager
def dropping_address() -> Iterator[str]:
    """An address that drops connection attempts, as a firewall does: a listener whose queue is
    full (one connection made, never accepted) takes no more."""
    import socket

    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@needs_server
def test_the_admin_address_given_for_the_ingress_is_named_as_such(
    procs: Processes, tmp_path: Path
) -> None:
    """`--restate-url` pointing at the admin API (a 404 with no body) said "Restate has no
    `eclflow` service: start a worker", and `status` said "Run not found"."""
    server = procs.server()
    wf = critique_revise(tmp_path)
    env = {**os.environ, "ECLFLOW_RESTATE_URL": server.admin_url}
    said = (
        f"error: Configuration error: {server.admin_url} is not Restate's ingress (it answered "
        "404 without Restate's error body): give the ingress address (restate-server's port "
        "8080, not its admin API's 9070 or a worker's) with --restate-url or ECLFLOW_RESTATE_URL"
    )
    for args in (
        ("run", str(wf.path), "--engine", "restate", "-i", "topic=kelp", "-m", "mock/x"),
        ("status", str(uuid.uuid4()), "--engine", "restate"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "eclflow", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert (out.returncode, out.stderr.strip()) == (2, said)


@needs_server
def test_registering_with_the_ingress_address_names_it(procs: Processes) -> None:
    """`serve --register` given the ingress's address said "Restate refused the deployment
    (400): bad path: /deployments; is that where Restate reaches this worker? (--advertise)"."""
    server = procs.server()
    out = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", "serve", "--bind", f"127.0.0.1:{free_port()}"),
            *("--register", server.ingress_url),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stderr.strip()) == (
        2,
        f"error: Configuration error: {server.ingress_url} is not Restate's admin API (it "
        "answered 400: bad path: /deployments): give --register the admin address "
        "(restate-server's port 9070, not its ingress's 8080)",
    )


@needs_server
def test_run_waiting_for_a_worker_says_restate_pauses_it_in_time(
    procs: Processes, tmp_path: Path
) -> None:
    """The line said "the run goes on when one does", but after about six minutes without a
    worker Restate pauses the run, and a worker starting then does not continue it: `run`
    waited for ever."""
    import signal

    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    procs.worker(server, keyed({"*": "v1"}), bind=bind).kill()  # registered, then gone
    wf = critique_revise(tmp_path)
    env = {**os.environ, "ECLFLOW_RESTATE_URL": server.ingress_url}
    with run_on_restate(wf, env) as p:
        lines = [p.stderr.readline() for _ in range(2)]  # sent, then (after 10 s) waits
        p.send_signal(signal.SIGINT)
        rest = p.communicate(timeout=30)[1]
    run_id = lines[0].split()[1]
    assert lines[1].strip() == (
        f"run {run_id} waits in Restate: no worker answers; start one with `eclflow serve "
        "--register ADMIN_URL`; the run goes on when one does, unless none does for about six "
        "minutes: Restate then pauses it, and this command stops waiting and says how to resume "
        "it"
    )
    assert p.returncode == 130 and "goes on in Restate" in rest


def invocation(server: RestateServer, run_id: str) -> Any:
    from eclflow.restate.admin import Admin

    async def ask() -> Any:
        async with httpx.AsyncClient() as http:
            return await Admin(server.admin_url, http).invocation(run_id)

    return asyncio.run(ask())


def progress(server: RestateServer, run_id: str) -> dict[str, Any]:
    """The progress a run keeps in its Restate state, as Restate has it now."""
    from eclflow.restate.admin import Admin
    from eclflow.restate.journal import STATUS_STATE

    async def ask() -> Any:
        async with httpx.AsyncClient() as http:
            return await Admin(server.admin_url, http).state(run_id, STATUS_STATE)

    return asyncio.run(ask()) or {}


@needs_server
def test_a_run_restate_paused_is_said_and_resume_continues_it(
    procs: Processes, tmp_path: Path
) -> None:
    """Restate pauses a run it could not run for about six minutes (no worker up, or an error
    outside any step every time); `run --engine restate` then waited for ever, `status` said it
    needed a worker, and only Restate's admin API could continue it. `run` now stops waiting
    and says how to go on, `status` says paused, and `resume --engine restate` continues it on
    the workers registered since, without repeating what its steps did."""
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    gone = procs.worker(server, keyed({"*": "v1"}), bind=bind)
    gone.kill()  # registered, then gone: the run waits for a worker
    wf = critique_revise(tmp_path)
    env = {
        **os.environ,
        "ECLFLOW_RESTATE_URL": server.ingress_url,
        "ECLFLOW_RESTATE_ADMIN_URL": server.admin_url,
    }

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eclflow", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    with run_on_restate(wf, env) as p:
        run_id = p.stderr.readline().split()[1]
        wait_for(lambda: invocation(server, run_id) is not None, what="the run's invocation")
        # what Restate does after its last attempt, without waiting six minutes for it
        r = httpx.patch(f"{server.admin_url}/invocations/{invocation(server, run_id).id}/pause")
        assert r.status_code < 300, r.text
        out, err = p.communicate(timeout=60)
    assert (p.returncode, out) == (1, ""), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"Restate paused run {run_id} after "), last
    assert f"; the last: no worker was reachable at http://{bind}/: " in last
    assert last.endswith(
        ": once a worker is up (`eclflow serve --register ADMIN_URL`), `eclflow resume "
        f"{run_id} --engine restate` continues it"
    )

    status = eclflow("status", run_id, "--engine", "restate")  # no worker up: the admin API says
    assert status.returncode == 0, status.stderr
    # (the workflow from the submission: no worker has begun the run)
    assert status.stdout.splitlines()[0] == f"run {run_id} · critique-revise · paused (restate)"

    worker = procs.worker(
        server, keyed({"generate": "v1", "critique#1": PASS}), bind=f"127.0.0.1:{free_port()}"
    )
    resumed = eclflow("resume", run_id, "--engine", "restate")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.splitlines()[0].startswith(
        f"resuming run {run_id} (Restate paused it after "
    )
    assert resumed.stdout.splitlines()[0] == "final_text: v1"
    assert keys(worker.calls()) == ["generate", "critique#1"]

    again = eclflow("resume", run_id, "--engine", "restate", "--json")  # finished: its result
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "completed"
    assert keys(worker.calls()) == ["generate", "critique#1"]


@needs_server
def test_waiting_asks_the_admin_api_again_after_it_was_away(procs: Processes) -> None:
    """`run` stopped asking whether Restate paused the run at the admin API's first failure (a
    slow query, a restart), and could wait for ever again; it gives up only on an admin API
    that was never reached (not at its address) or answered as none does. One slow from the
    first question (a query over the time limit) was given up too, as if not there."""
    import signal

    from eclflow.restate.admin import Admin

    server = procs.server()

    def answers() -> bool:
        try:
            return invocation(server, "no-such-run") is None
        except EclflowError:  # (a server just started answers 500 until its partitions run)
            return False

    wait_for(answers, what="the admin API's answer")

    async def ask(admin: Admin) -> Any:
        return await client._unless_paused(admin, "no-such-run")

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            nowhere = Admin(f"http://127.0.0.1:{free_port()}", http)
            assert await ask(nowhere) == (None, None)  # never reached: not there
            ingress = Admin(server.ingress_url, http)
            assert await ask(ingress) == (None, None)  # not an admin API's answer (400)
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)  # (connections made, no answer)
            try:
                slow = Admin(server.admin_url, http)
                assert await ask(slow) == (slow, None)  # there, but slow: asked again
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            admin = Admin(server.admin_url, http)
            assert await ask(admin) == (admin, None)
            server.kill()
            assert await ask(admin) == (admin, None)  # away for now: asked again
            server.start()
            assert await ask(admin) == (admin, None)

    asyncio.run(go())


@needs_server
def test_runs_lists_the_runs_restate_keeps(procs: Processes, tmp_path: Path) -> None:
    """`eclflow runs` read the local database only: runs submitted to Restate with --detach
    could not be found again without their ids. `runs --engine restate` lists them from the
    admin API, newest first, with no worker needed."""
    server = procs.server()
    script = keyed(
        {
            "generate": ["v1", "v1"],
            "critique#1": [PASS, {"content": json.dumps(PASS), "delay": 120}],
        }
    )
    worker = procs.worker(server, script, bind=f"127.0.0.1:{free_port()}")
    wf = critique_revise(tmp_path)
    done = submit(server, wf, "kelp")
    assert isinstance(done, RunResult) and done.status == "completed", done
    going = submit(server, wf, "tides", detach=True)
    wait_for(lambda: keys(worker.calls())[-1:] == ["critique#1"], what="critique#1 in flight")
    wait_for(lambda: len(progress(server, going).get("steps", [])) == 1, what="its progress")
    env = {
        **os.environ,
        "ECLFLOW_RESTATE_URL": server.ingress_url,
        "ECLFLOW_RESTATE_ADMIN_URL": server.admin_url,
        "COLUMNS": "200",
    }

    def runs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eclflow", "runs", "--engine", "restate", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    listed = runs("--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["run_id"], r["workflow"], r["state"], r["steps"]) for r in rows] == [
        (going, "critique-revise", "running", 1),
        (done.run_id, "critique-revise", "completed", 2),
    ]
    assert rows[1]["tokens"] == done.tokens
    # as `runs --json` of local runs and `run --json` name it too
    assert [r["status"] for r in rows] == ["running", "completed"]
    only = json.loads(runs("--state", "completed", "--json").stdout)
    assert [r["run_id"] for r in only] == [done.run_id]
    assert json.loads(runs("-n", "1", "--json").stdout)[0]["run_id"] == going
    text = runs()
    assert text.returncode == 0, text.stderr
    assert text.stdout.split("\n")[0].split() == [
        "run", "workflow", "state", "steps", "tokens", "started"
    ]  # fmt: skip
    assert text.stdout.splitlines()[1].split()[:4] == [going, "critique-revise", "running", "1"]
    refused = runs("--stats")
    assert refused.returncode == 2 and "takes no --stats" in refused.stderr


@needs_server
def test_runs_on_restate_shows_unbegun_and_retried_runs_and_filters_in_the_query(
    procs: Processes, tmp_path: Path
) -> None:
    """`runs --engine restate` showed workflow `?` for a run no worker had begun, `running`
    for a run Restate retries with no worker up (only `status` said so, quoting Restate's
    "Connection refused"), and read every run Restate keeps to filter --state and --workflow
    itself. The workflow is known from the submission, the run is `retrying` with a note
    saying where a worker is wanted, and the filters and the limit go into the admin query."""
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    script = keyed({"generate": "v1", "critique#1": {"content": json.dumps(PASS), "delay": 120}})
    worker = procs.worker(server, script, bind=bind)
    wf = critique_revise(tmp_path)
    other_path = wf.path.parent / "other.yaml"  # (the same steps under another workflow id)
    other_path.write_text(wf.source.replace("id: critique-revise", "id: other-flow"))
    other = load(other_path)
    assert other.id == "other-flow"
    going = submit(server, wf, "tides", detach=True)
    wait_for(lambda: keys(worker.calls())[-1:] == ["critique#1"], what="critique#1 in flight")
    wait_for(lambda: len(progress(server, going).get("steps", [])) == 1, what="its progress")
    worker.kill()
    unbegun = submit(server, other, "reef", detach=True)  # (no worker has begun it)

    def retried(run_id: str) -> bool:
        # (then retried at longer and longer intervals: it stays backing-off for the test)
        found = invocation(server, run_id)
        return found is not None and found.status == "backing-off" and found.attempts >= 2

    wait_for(lambda: retried(going) and retried(unbegun), what="Restate retrying them")
    recorded: list[str] = []
    admin = _RecordingProxy(server.admin_url, recorded)
    env = {
        **os.environ,
        "ECLFLOW_RESTATE_URL": server.ingress_url,
        "ECLFLOW_RESTATE_ADMIN_URL": admin.url,
    }

    def runs(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "eclflow", "runs", "--engine", "restate", "--json", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))

    try:
        rows = runs()
        assert [(r["run_id"], r["workflow"], r["state"], r["steps"]) for r in rows] == [
            (unbegun, "other-flow", "retrying", 0),
            (going, "critique-revise", "retrying", 1),
        ]
        for r in rows:
            assert r["note"].startswith(
                f"no worker is reachable at http://{bind}/: start one with `eclflow serve --bind "
                f"{bind}` (Restate has tried "
            ), r["note"]
        assert [r["run_id"] for r in runs("--workflow", "other-flow")] == [unbegun]
        assert [r["run_id"] for r in runs("--workflow", "critique-revise")] == [going]
        assert runs("--state", "running") == []
        recorded.clear()
        assert [r["run_id"] for r in runs("--state", "retrying", "-n", "1")] == [unbegun]
    finally:
        admin.close()
    listing = [q for q in recorded if "FROM sys_invocation" in q]
    assert len(listing) == 1 and "state = 'retrying'" in listing[0], recorded
    assert listing[0].endswith(" LIMIT 1 OFFSET 0"), listing[0]


_FORWARDED = ("accept", "content-type")


class _RecordingProxy:
    """An HTTP proxy in front of Restate's admin API that records the SQL queries sent to it."""

    def __init__(self, target: str, queries: list[str]) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                queries.append(json.loads(body).get("query", ""))
                kept = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED}
                r = httpx.post(target + self.path, content=body, headers=kept, timeout=30)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@needs_server
def test_a_run_restate_retries_while_a_worker_is_up_says_why(
    procs: Processes, tmp_path: Path
) -> None:
    """An error outside any step (here the workers' database lost its `workflows` table) makes
    Restate retry the whole invocation, every attempt a traceback in the worker's log, while
    `run` waited without a word for the six minutes until Restate paused it. It now says once
    that Restate retries it, with the last attempt's error; the run completes once the cause
    is gone, without calling the model again."""
    import sqlite3

    server = procs.server()
    db = tmp_path / "worker.db"
    script = keyed({"generate": "v1", "critique#1": {"content": json.dumps(PASS), "delay": 2}})
    worker = procs.worker(server, script, bind=f"127.0.0.1:{free_port()}", db=f"sqlite:///{db}")
    wf = critique_revise(tmp_path)
    env = {
        **os.environ,
        "ECLFLOW_RESTATE_URL": server.ingress_url,
        "ECLFLOW_RESTATE_ADMIN_URL": server.admin_url,
    }
    with run_on_restate(wf, env) as p:
        run_id = p.stderr.readline().split()[1]
        wait_for(lambda: keys(worker.calls()) == ["generate", "critique#1"], what="critique#1")
        with sqlite3.connect(db) as conn:  # (the run's end is recorded there)
            conn.execute("ALTER TABLE workflows RENAME TO workflows_away")
        said = p.stderr.readline().strip()
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE workflows_away RENAME TO workflows")
        out, err = p.communicate(timeout=60)
    assert said.startswith(f"run {run_id}: Restate retries it after "), said
    assert "PersistenceError('Database error: no such table: workflows" in said
    assert said.endswith("(the workers' log says more); it pauses the run after about 70 attempts")
    assert p.returncode == 0, err
    assert "Restate retries it" not in err  # (once)
    assert out.splitlines()[0] == "final_text: v1"
    assert keys(worker.calls()) == ["generate", "critique#1"]


@needs_server
def test_a_model_the_worker_cannot_call_says_it_is_the_workers(
    procs: Processes, tmp_path: Path
) -> None:
    """A model error such as "needs OPENAI_API_KEY: set it in the environment" sent the user to
    their own shell; the key (or model file) is needed where `eclflow serve` runs."""
    server = procs.server()
    procs.worker(server, keyed({"*": "v1"}), bind=f"127.0.0.1:{free_port()}")
    result = asyncio.run(
        client.submit_async(
            critique_revise(tmp_path),
            {"topic": "kelp"},
            model="local/nope",
            restate_url=server.ingress_url,
        )
    )
    assert isinstance(result, RunResult) and result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("Configuration error: unknown local model 'local/nope'")
    assert result.error.endswith(" (on the workers: the `eclflow serve` processes run the steps)")


@needs_server
def test_a_worker_registered_again_with_other_timeouts_sets_them(procs: Processes) -> None:
    """Registering the same address again kept the service's first settings: a worker
    restarted with a larger --inactivity-timeout (as docs/scaling.md advises for long steps)
    still had its long calls cut off at the old one, and called again."""
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"

    def timeouts() -> tuple[str, str]:
        with urllib.request.urlopen(f"{server.admin_url}/services/eclflow", timeout=10) as r:
            data = json.load(r)
        return data["inactivity_timeout"], data["abort_timeout"]

    procs.worker(server, keyed({"*": "v1"}), bind=bind, name="first").kill()
    assert timeouts() == ("30m", "10m")
    args = ("--inactivity-timeout", "2h", "--abort-timeout", "90s")
    procs.worker(server, keyed({"*": "v1"}), bind=bind, name="second", args=args)
    assert timeouts() == ("2h", "1m 30s")


@needs_server
def test_a_worker_warns_of_steps_longer_than_its_inactivity_timeout(
    procs: Processes, tmp_path: Path
) -> None:
    """A step that may outlast --inactivity-timeout is cut off by Restate and called again,
    paid again, with nothing said anywhere; the worker now says so once per workflow."""
    server = procs.server()
    bind = f"127.0.0.1:{free_port()}"
    script = keyed({"generate": "v1", "critique": PASS}, cycle=True)
    wf = critique_revise(tmp_path)
    roomy = procs.worker(server, script, bind=bind, name="roomy")
    assert submit(server, wf, "kelp").status == "completed"
    assert "inactivity" not in roomy.stderr()
    roomy.kill()

    args = ("--inactivity-timeout", "100s")
    tight = procs.worker(server, script, bind=bind, name="tight", args=args)
    for topic in ("kelp", "tides"):
        assert submit(server, wf, topic).status == "completed"
    warnings = [line for line in tight.stderr().splitlines() if "inactivity" in line]
    assert [w.split(" ", 1)[1] for w in warnings] == [
        "WARNING workflow critique-revise: step generate, critique, revise may run up to 360s "
        "(timeout × attempts + retry delays), longer than this worker's --inactivity-timeout "
        "(100s): Restate would cut it off and call it again; start the workers with a larger "
        "--inactivity-timeout"
    ]
