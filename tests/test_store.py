"""The durable store on a real SQLite file and on the real PostgreSQL server: repositories,
URLs, migrations, and several processes writing one database at once."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import CRITIQUE_REVISE, EXAMPLES

from eclflow.errors import (
    ConfigError,
    InvalidState,
    NotFound,
    PersistenceError,
    RunNotFound,
    StepNotFound,
    StoreUnavailable,
)
from eclflow.store import Store, open_store, parse_url, resolve_url
from eclflow.store import migrations as migrations_module

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_reachable() -> str | None:
    """None when the server answers, else why not."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed"
    try:
        psycopg2.connect(PG_BASE, connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        return f"PostgreSQL at 127.0.0.1:5432 is unreachable: {' '.join(str(e).split())}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema of the `test` database for one test, dropped afterwards."""
    why = _pg_reachable()
    if why:
        pytest.skip(why)
    import psycopg2

    schema = f"eclflow_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield f"{PG_BASE}?schema={schema}"
    conn = psycopg2.connect(PG_BASE)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def new_run(store: Store, run_id: str | None = None, **kw: object) -> str:
    run_id = run_id or str(uuid.uuid4())
    args: dict[str, object] = {
        "definition_id": "critique-revise",
        "definition_name": "Critique and Revise Loop",
        "definition": "eclflow: 1\nid: critique-revise\n",
        "definition_sha256": "ab" * 32,
        "input": {"topic": "tides", "n": 3, "flags": [True, None]},
        "state": "running",
        "metadata": {"model": "mock/x"},
    }
    args.update(kw)
    store.runs.create(run_id, **args)  # type: ignore[arg-type]
    return run_id


def add_step(
    store: Store, run_id: str, key: str, attempt: int = 1, state: str = "succeeded", **kw: object
) -> int:
    step_id, _, n = key.partition("#")
    handle = store.steps.start(
        run_id=run_id,
        step_id=step_id,
        key=key,
        iteration=int(n or 0),
        attempt=attempt,
        input={"draft": f"in {key}"},
        model="mock/x",
    )
    fields: dict[str, object] = {
        "outcome": "success" if state == "succeeded" else "failed",
        "output": {"draft": f"out {key}"},
        "feedback": None,
        "error": None if state == "succeeded" else "boom",
        "retryable": state != "succeeded",
        "duration_ms": 10,
        "tokens_in": 3,
        "tokens_out": 4,
        "cost": 0.25,
        "traces": [{"level": "info", "message": "Step execution completed", "n": 1}],
        "prompt": [{"role": "user", "content": f"prompt {key}"}],
    }
    fields.update(kw)
    store.steps.finish(handle, state=state, **fields)  # type: ignore[arg-type]
    return handle


# --- runs ----------------------------------------------------------------------------------------


def test_run_round_trip(store: Store) -> None:
    before = datetime.now(UTC)
    run_id = new_run(store)
    r = store.runs.get(run_id)
    assert r.id == run_id
    assert (r.definition_id, r.definition_name) == ("critique-revise", "Critique and Revise Loop")
    assert r.definition == "eclflow: 1\nid: critique-revise\n"
    assert r.definition_sha256 == "ab" * 32
    assert r.input == {"topic": "tides", "n": 3, "flags": [True, None]}
    assert r.state == "running" and r.output is None and r.error is None
    assert r.failed_step is None and r.completed_at is None
    assert r.metadata == {"model": "mock/x"}
    assert r.created_at.tzinfo is not None and r.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= r.created_at <= datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(Exception):  # noqa: B017 - frozen: callers cannot change a record
        r.state = "failed"  # type: ignore[misc]


def test_get_unknown_run(store: Store) -> None:
    with pytest.raises(RunNotFound, match=r"^Run not found: nope$"):
        store.runs.get("nope")


def test_find_by_prefix(store: Store) -> None:
    from eclflow.errors import UnclearRunId

    a = new_run(store, "abcd0001-0000-4000-8000-000000000000")
    b = new_run(store, "abcd0002-0000-4000-8000-000000000000", state="failed")
    c = new_run(store, "f00d0001-0000-4000-8000-000000000000")
    assert store.runs.find(a).id == a  # exact
    assert store.runs.find("abcd0001").id == a
    assert store.runs.find("ABCD0002").id == b  # ids are compared case-insensitively
    assert store.runs.find("f00d").id == c
    with pytest.raises(UnclearRunId, match="ambiguous") as e:
        store.runs.find("abcd")
    assert a in str(e.value) and b in str(e.value)
    with pytest.raises(InvalidState, match="ambiguous"):  # (what it was: still caught so)
        store.runs.find("abcd")
    with pytest.raises(UnclearRunId, match="at least 4"):
        store.runs.find("f0")
    with pytest.raises(RunNotFound, match="Run not found: beef"):
        store.runs.find("beef")
    with pytest.raises(RunNotFound):
        store.runs.find("abc%")  # no wildcard matching


def test_update_state_sets_and_clears_completed_at(store: Store) -> None:
    run_id = new_run(store)
    first = store.runs.get(run_id)
    store.runs.update_state(
        run_id, "failed", error="max revisions exceeded", failed_step="critique"
    )
    r = store.runs.get(run_id)
    assert (r.state, r.error, r.failed_step) == ("failed", "max revisions exceeded", "critique")
    assert r.completed_at is not None and r.updated_at >= first.updated_at
    store.runs.update_state(run_id, "running")  # a resume
    r = store.runs.get(run_id)
    assert (r.state, r.error, r.failed_step, r.completed_at) == ("running", None, None, None)
    for state in ("completed", "cancelled"):
        store.runs.update_state(run_id, state)
        assert store.runs.get(run_id).completed_at is not None
    store.runs.update_state(run_id, "paused")
    assert store.runs.get(run_id).completed_at is None
    with pytest.raises(RunNotFound):
        store.runs.update_state("missing", "completed")
    with pytest.raises(InvalidState, match="unknown run state 'done'"):
        store.runs.update_state(run_id, "done")


def test_update_output_and_metadata(store: Store) -> None:
    run_id = new_run(store)
    store.runs.update_output(run_id, {"final_text": "v2", "revision_count": 1, "z": [1, 2]})
    assert store.runs.get(run_id).output == {"final_text": "v2", "revision_count": 1, "z": [1, 2]}
    store.runs.update_output(run_id, "plain text")
    assert store.runs.get(run_id).output == "plain text"
    merged = store.runs.update_metadata(run_id, tokens=12, when=datetime(2024, 1, 2, tzinfo=UTC))
    assert merged["model"] == "mock/x" and merged["tokens"] == 12
    meta = store.runs.get(run_id).metadata
    assert meta == {"model": "mock/x", "tokens": 12, "when": "2024-01-02 00:00:00+00:00"}
    with pytest.raises(RunNotFound):
        store.runs.update_output("missing", 1)
    with pytest.raises(RunNotFound):
        store.runs.update_metadata("missing", a=1)


def test_metadata_updates_from_many_threads_are_not_lost(store: Store) -> None:
    run_id = new_run(store)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.runs.update_metadata(run_id, **{f"k{i}": i}), range(40)))
    meta = store.runs.get(run_id).metadata
    assert {f"k{i}" for i in range(40)} <= set(meta)


def test_list_newest_first_with_filters(store: Store) -> None:
    ids = []
    for i in range(5):
        ids.append(
            new_run(
                store,
                definition_id="a" if i % 2 == 0 else "b",
                state="completed" if i < 3 else "failed",
            )
        )
        _age(store, ids[-1], 5 - i)  # created one day apart, the last one newest
    assert [r.id for r in store.runs.list()] == ids[::-1]
    assert [r.id for r in store.runs.list(limit=2)] == ids[:2:-1]
    assert [r.id for r in store.runs.list(state="failed")] == [ids[4], ids[3]]
    assert [r.id for r in store.runs.list(definition_id="a")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in store.runs.list(state="completed", definition_id="b")] == [ids[1]]
    assert store.runs.count() == 5 and store.runs.count(state="failed") == 2


def test_listing_runs_by_state_agrees_with_what_each_record_says(store: Store) -> None:
    """`list(state=…)` and `count(state=…)` go by `RunRecord.status`, as `eclflow runs
    --state` does: a run stored running whose process has ended is `interrupted`, and was
    listed as running (and counted) though its record said `interrupted`."""
    from eclflow.store.owner import this_process

    mine, gone = {**this_process()}, {"pid": 1, "released": True}
    made = [
        ("running", mine),
        ("running", gone),
        ("pending", gone),
        ("pending", mine),
        ("completed", gone),
        ("running", gone),
    ]
    ids = []
    for n, (state, meta) in enumerate(made):
        ids.append(new_run(store, state=state, metadata=meta))
        _age(store, ids[-1], 10 - n)  # the last one newest
    expected = {
        "running": [ids[0]],
        "pending": [ids[3]],
        "interrupted": [ids[5], ids[2], ids[1]],
        "completed": [ids[4]],
    }
    for state, listed in expected.items():
        runs = store.runs.list(state=state)
        assert [(r.id, r.status) for r in runs] == [(i, state) for i in listed]
        assert store.runs.count(state=state) == len(listed)
    assert [r.id for r in store.runs.list(state="interrupted", limit=2)] == [ids[5], ids[2]]
    assert store.runs.count(state="interrupted", older_than=timedelta(days=6)) == 2
    assert [r.id for r in store.runs.list(state="interrupted", definition_id="other")] == []
    with pytest.raises(InvalidState):
        store.runs.list(state="retrying")


def test_delete_cascades(store: Store) -> None:
    keep, gone = new_run(store), new_run(store)
    for run_id in (keep, gone):
        add_step(store, run_id, "generate")
        store.events.append(run_id, "workflow_started", {"level": "info"})
        store.artifacts.create(run_id, "draft.txt", step_id="generate", content="héllo")
    store.runs.delete(gone)
    with pytest.raises(RunNotFound):
        store.runs.get(gone)
    assert store.steps.for_run(gone) == []
    assert store.events.for_run(gone) == []
    assert store.artifacts.for_run(gone) == []
    assert len(store.steps.for_run(keep)) == 1 and len(store.events.for_run(keep)) == 1
    assert len(store.artifacts.for_run(keep)) == 1
    with pytest.raises(RunNotFound):
        store.runs.delete(gone)


def _age(store: Store, run_id: str, days: float) -> None:
    M = store.models.Run
    M.update(created_at=datetime.now(UTC) - timedelta(days=days)).where(M.id == run_id).execute()


def test_prune(store: Store) -> None:
    old_done = new_run(store, state="completed")
    old_failed = new_run(store, state="failed")
    recent = new_run(store, state="completed")
    add_step(store, old_done, "generate")
    _age(store, old_done, 40)
    _age(store, old_failed, 31)
    assert store.runs.count(older_than=timedelta(days=30)) == 2
    assert store.runs.prune(timedelta(days=30), state="failed") == (1, 0)
    assert {r.id for r in store.runs.list()} == {old_done, recent}
    assert store.runs.prune(timedelta(days=30)) == (1, 0)
    assert store.steps.for_run(old_done) == []
    assert [r.id for r in store.runs.list()] == [recent]
    assert store.runs.prune(timedelta(days=30)) == (0, 0)
    # a run this process holds is kept: it may be going on
    from eclflow.store.owner import this_process

    going = new_run(store, state="running")
    store.runs.update_metadata(going, **this_process())
    assert store.runs.prune(None) == (1, 1)
    assert [r.id for r in store.runs.list()] == [going]


# --- steps ---------------------------------------------------------------------------------------


def test_step_start_is_committed_before_finish(store: Store, url: str) -> None:
    run_id = new_run(store)
    handle = store.steps.start(run_id, "generate", "generate", 0, 1, {"topic": "x"}, "mock/x")
    with open_store(url) as other:  # another connection sees the running row at once
        (row,) = other.steps.for_run(run_id)
        assert (row.id, row.state, row.attempt, row.input) == (handle, "running", 1, {"topic": "x"})
        assert row.completed_at is None and row.started_at is not None
    store.steps.finish(
        handle,
        state="succeeded",
        outcome="needs_revision",
        output={"decision": "revise"},
        feedback="more",
        error=None,
        retryable=False,
        duration_ms=12,
        tokens_in=5,
        tokens_out=7,
        cost=0.5,
        traces=[{"level": "warn", "message": "m", "attempt": 1}],
        prompt=[{"role": "system", "content": "s"}],
    )
    row = store.steps.get(handle)
    assert row.state == "succeeded" and row.outcome == "needs_revision"
    assert row.output == {"decision": "revise"} and row.feedback == "more"
    assert (row.duration_ms, row.tokens_in, row.tokens_out, row.cost) == (12, 5, 7, 0.5)
    assert row.tokens == 12 and row.retryable is False and row.model == "mock/x"
    assert row.traces == [{"level": "warn", "message": "m", "attempt": 1}]
    assert row.prompt == [{"role": "system", "content": "s"}]
    assert row.completed_at is not None and row.completed_at >= row.started_at  # type: ignore[operator]


def test_step_queries_and_stats(store: Store) -> None:
    run_id = new_run(store)
    add_step(store, run_id, "generate")
    add_step(store, run_id, "critique#1", attempt=1, state="failed")
    add_step(store, run_id, "critique#1", attempt=2, outcome="needs_revision", feedback="more")
    add_step(store, run_id, "revise#1")
    store.steps.start(run_id, "critique", "critique#2", 2, 1, None, "mock/x")  # in flight
    skipped = store.steps.record_skipped(run_id, "notify", "notify", 0)
    assert store.steps.record_skipped(run_id, "notify", "notify", 0) == skipped  # idempotent

    rows = store.steps.for_run(run_id)
    assert [(r.key, r.attempt, r.state) for r in rows] == [
        ("generate", 1, "succeeded"),
        ("critique#1", 1, "failed"),
        ("critique#1", 2, "succeeded"),
        ("revise#1", 1, "succeeded"),
        ("critique#2", 1, "running"),
        ("notify", 0, "skipped"),
    ]
    crit = store.steps.for_step(run_id, "critique")
    assert [(r.key, r.attempt) for r in crit] == [
        ("critique#1", 1),
        ("critique#2", 1),
        ("critique#1", 2),
    ]
    done = store.steps.succeeded(run_id)
    assert list(done) == ["generate", "critique#1", "revise#1"]
    assert done["critique#1"].attempt == 2 and done["critique#1"].feedback == "more"
    stats = store.steps.stats(run_id)
    assert (stats.count, stats.succeeded, stats.failed, stats.running, stats.skipped) == (
        6,
        3,
        1,
        1,
        1,
    )
    assert stats.steps == 4  # generate, critique#1, revise#1, critique#2
    assert (stats.duration_ms, stats.tokens_in, stats.tokens_out) == (40, 12, 16)
    assert stats.cost == pytest.approx(1.0) and stats.tokens == 28
    assert store.steps.stats("no-such-run").count == 0
    many = store.steps.stats_many([run_id, "no-such-run"])
    assert set(many) == {run_id}


def test_step_errors(store: Store) -> None:
    run_id = new_run(store)
    add_step(store, run_id, "generate")
    with pytest.raises(PersistenceError):  # unique (run, key, attempt)
        store.steps.start(run_id, "generate", "generate", 0, 1, None, None)
    with pytest.raises(PersistenceError):  # the run must exist
        store.steps.start("no-such-run", "generate", "generate", 0, 1, None, None)
    with pytest.raises(StepNotFound):
        store.steps.get(987654)
    with pytest.raises(StepNotFound):
        store.steps.finish(987654, state="succeeded")
    with pytest.raises(InvalidState):
        store.steps.finish(1, state="done")


def test_transaction_rolls_back_as_a_whole(store: Store) -> None:
    run_id = new_run(store)
    with pytest.raises(RuntimeError), store.transaction():
        store.runs.update_output(run_id, "x")
        with store.transaction():  # nested: a savepoint
            store.runs.update_metadata(run_id, a=1)
        raise RuntimeError("boom")
    r = store.runs.get(run_id)
    assert r.output is None and "a" not in r.metadata
    with store.transaction():
        store.runs.update_output(run_id, "y")
        with pytest.raises(RunNotFound), store.transaction():
            store.runs.update_output("missing", 1)
    assert store.runs.get(run_id).output == "y"


# --- events and artifacts ------------------------------------------------------------------------


def test_events(store: Store) -> None:
    run_id = new_run(store)
    first = store.events.append(run_id, "workflow_started", {"level": "info", "ts": 1700000000.5})
    store.events.append_many(
        run_id,
        [
            ("step_started", "generate", {"level": "info", "message": "Step execution started"}),
            ("step_succeeded", "generate", {"level": "info", "tokens": 7}),
        ],
    )
    events = store.events.for_run(run_id)
    assert [e.kind for e in events] == ["workflow_started", "step_started", "step_succeeded"]
    assert events[0].id == first and events[0].step_id is None
    assert events[0].ts == datetime.fromtimestamp(1700000000.5, UTC)
    assert events[2].step_id == "generate" and events[2].fields["tokens"] == 7
    later = store.events.for_run(run_id, after_id=events[0].id)
    assert [e.kind for e in later] == ["step_started", "step_succeeded"]
    assert store.events.for_run(run_id, after_id=events[-1].id) == []


def test_artifacts(store: Store) -> None:
    run_id = new_run(store)
    a = store.artifacts.create(run_id, "draft.md", step_id="generate", content="# Tides ✓")
    b = store.artifacts.create(
        run_id, "chart.png", content_type="image/png", path="/tmp/c.png", size=9
    )
    assert a.size == len("# Tides ✓".encode()) and a.content_type == "text/plain"
    assert store.artifacts.get(b.id).path == "/tmp/c.png"
    assert [x.name for x in store.artifacts.for_run(run_id)] == ["draft.md", "chart.png"]
    assert [x.name for x in store.artifacts.for_run(run_id, step_id="generate")] == ["draft.md"]
    store.artifacts.delete(a.id)
    with pytest.raises(NotFound):
        store.artifacts.get(a.id)
    with pytest.raises(NotFound):
        store.artifacts.delete(a.id)


# --- the journal, through the engine -------------------------------------------------------------


async def test_engine_run_is_journaled_and_resumes_from_the_store(store: Store) -> None:
    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    pass_ = {"content": {"decision": "pass", "critique": "ok"}}
    revise = {"content": {"decision": "revise", "critique": "thin", "feedback": "more"}}
    mock = MockProvider(
        {"generate": "v1", "critique#1": revise, "revise#1": "v2", "critique#2": pass_}
    )
    result = await runner.run(
        CRITIQUE_REVISE, {"topic": "tides"}, model="mock/x", mock_responses=mock, store=store
    )
    assert result.status == "completed", result.error
    run = store.runs.get(result.run_id)
    assert run.state == "completed" and run.output == {"final_text": "v2", "revision_count": 1}
    assert run.metadata["model"] == "mock/x" and run.completed_at is not None
    assert list(store.steps.succeeded(run.id)) == [
        "generate",
        "critique#1",
        "revise#1",
        "critique#2",
    ]
    assert store.steps.succeeded(run.id)["critique#1"].feedback == "more"
    events = store.events.for_run(run.id)
    assert any(e.kind == "workflow_completed" for e in events)

    # resuming a completed run gives its recorded result: no script for its mock model is
    # needed, and nothing is rewritten (not its end, its duration, its metadata or its events)
    heard: list[str] = []
    again = await runner.resume(
        run.id[:8], store=store, listener=lambda event, payload: heard.append(event)
    )
    assert again.status == "completed" and all(s.replayed for s in again.steps)
    assert again.output == {"final_text": "v2", "revision_count": 1}
    assert [s.key for s in again.steps] == ["generate", "critique#1", "revise#1", "critique#2"]
    assert again.duration_ms == run.metadata["duration_ms"] and again.tokens == result.tokens
    assert heard == ["run_already_completed"]
    after = store.runs.get(run.id)
    assert (after.completed_at, after.updated_at) == (run.completed_at, run.updated_at)
    assert after.metadata == run.metadata and "resumed" not in after.metadata
    assert len(store.events.for_run(run.id)) == len(events)

    # a run that stopped after critique#1: resuming calls only what is left
    store.runs.update_state(run.id, "running")
    M = store.models.StepExecution
    M.delete().where((M.run == run.id) & (M.key.in_(["revise#1", "critique#2"]))).execute()
    rest = MockProvider({"revise#1": "v2b", "critique#2": pass_})
    resumed = await runner.resume(run.id[:8], store=store, mock_responses=rest)
    assert resumed.status == "completed" and rest.calls == 2
    assert [s.replayed for s in resumed.steps] == [True, True, False, False]
    assert store.runs.get(run.id).output == {"final_text": "v2b", "revision_count": 1}


async def test_resume_refuses_a_run_whose_workflow_or_prompt_file_changed(
    store: Store, tmp_path: Path
) -> None:
    """The rest of a run would use the edited prompt (or file) with the results of the old:
    refused unless forced, naming what changed."""
    import shutil

    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    (tmp_path / "wf").mkdir()
    shutil.copytree(CRITIQUE_REVISE.parent.parent / "templates", tmp_path / "wf" / "templates")
    wf = tmp_path / "wf" / "critique_revise.yaml"
    wf.write_text(
        CRITIQUE_REVISE.read_text().replace("prompt: generate.j2", "prompt: templates/generate.j2")
    )
    revise = {"content": {"decision": "revise", "critique": "thin", "feedback": "more"}}
    failing = MockProvider(
        {"generate": "v1", "critique#1": revise, "revise#1": {"error": "auth_error"}}
    )
    first = await runner.run(
        wf, {"topic": "tides"}, model="mock/x", mock_responses=failing, store=store
    )
    assert first.status == "failed"
    assert list(store.runs.get(first.run_id).metadata["prompts"]) == [
        str(tmp_path / "wf" / "templates" / "generate.j2")
    ]
    rest = {"revise#1": "v2", "critique#2": {"content": {"decision": "pass", "critique": "ok"}}}

    prompt = tmp_path / "wf" / "templates" / "generate.j2"
    prompt.write_text(prompt.read_text() + "\nBe brief.\n")
    with pytest.raises(InvalidState, match=r"generate\.j2 changed since run .* --force"):
        await runner.resume(first.run_id, store=store, mock_responses=MockProvider(rest))
    wf.write_text(wf.read_text() + "\n# edited\n")
    with pytest.raises(InvalidState, match=r"critique_revise\.yaml changed since run"):
        await runner.resume(first.run_id, store=store, mock_responses=MockProvider(rest))
    done = await runner.resume(
        first.run_id, store=store, mock_responses=MockProvider(rest), force=True
    )
    assert done.status == "completed" and done.output["final_text"] == "v2"


async def test_a_run_an_earlier_eclflow_started_with_a_prompt_now_refused_can_be_finished(
    store: Store, tmp_path: Path
) -> None:
    """A run started before E403 whose workflow reads `../templates/x.j2`: resuming it is
    refused (E403, as `run` would be), and the way out the message gives (move the file next
    to the workflow, name it so, `--force`) finishes it, the paid-for steps replayed. Resume
    used to parse the stored definition before looking at the file: E403 again, whatever the
    file now said, so the run could never be finished."""
    import hashlib

    from eclflow.engine import runner
    from eclflow.errors import WorkflowInvalid
    from eclflow.llm import MockProvider
    from eclflow.store.repositories import definition_sql

    (tmp_path / "wf").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "gen.j2").write_text("Write about {{ topic }}.")
    inside = (
        "eclflow: 1\nid: two\nsteps:\n"
        "  - id: a\n    type: llm\n    prompt: PROMPT\n"
        "    with: {topic: '{{ input.topic }}'}\n"
        "  - {id: b, type: llm, depends_on: [a], template: 'Shorten {{ t }}',\n"
        "     with: {t: '{{ steps.a.output.text }}'}}\n"
    )
    wf = tmp_path / "wf" / "w.yaml"
    (tmp_path / "wf" / "gen.j2").write_text("Write about {{ topic }}.")
    wf.write_text(inside.replace("PROMPT", "gen.j2"))
    failing = MockProvider({"a": "a long text", "b": {"error": "auth_error"}})
    first = await runner.run(
        wf, {"topic": "kelp"}, model="mock/x", mock_responses=failing, store=store
    )
    assert first.status == "failed" and failing.calls == 2
    # as an eclflow before E403 kept it: the definition reads ../templates/gen.j2
    earlier = inside.replace("PROMPT", "../templates/gen.j2")
    wf.write_text(earlier)
    (tmp_path / "wf" / "gen.j2").unlink()
    sha = hashlib.sha256(earlier.encode()).hexdigest()
    store.db.execute_sql(definition_sql(store.db.param), (sha, earlier))
    Run = store.models.Run
    Run.update(definition_sha256=sha).where(Run.id == first.run_id).execute()
    store.runs.update_metadata(
        first.run_id, prompts={str(tmp_path / "templates" / "gen.j2"): "(as it was)"}
    )

    rest = MockProvider({"b": "short"})
    with pytest.raises(WorkflowInvalid) as caught:
        await runner.resume(first.run_id, store=store, mock_responses=rest)
    assert [d.code for d in caught.value.diagnostics] == ["E403"]
    # what E403 says to do: the file next to the workflow file, named so
    (tmp_path / "templates" / "gen.j2").rename(tmp_path / "wf" / "gen.j2")
    wf.write_text(inside.replace("PROMPT", "gen.j2"))
    with pytest.raises(InvalidState, match=r"w\.yaml changed since run .* --force"):
        await runner.resume(first.run_id, store=store, mock_responses=rest)
    done = await runner.resume(first.run_id, store=store, mock_responses=rest, force=True)
    assert done.status == "completed", done.error
    assert [s.replayed for s in done.steps] == [True, False] and rest.calls == 1


async def test_a_lock_another_process_holds_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    """SQLite waits up to its busy timeout for another process's write lock; on the event
    loop's thread that wait would stall every timer (step timeouts fired late and called the
    model again; Ctrl-C did nothing). The loop's write goes to the worker thread instead."""
    import sqlite3

    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    path = tmp_path / "runs.db"
    store = open_store(f"sqlite:///{path}")
    store.check_writable()  # (done before a run starts: not the wait this test is about)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mock = MockProvider(
        {
            "generate": {"content": "v1", "delay": 0.2},
            "critique": {"content": {"decision": "pass", "critique": "ok"}, "delay": 0.2},
        }
    )
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def tick() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    other.execute("BEGIN IMMEDIATE")  # "another process" holds the write lock for 1.5 s
    threading.Timer(1.5, lambda: other.execute("COMMIT")).start()
    ticking = asyncio.create_task(tick())
    try:
        result = await runner.run(
            CRITIQUE_REVISE, {"topic": "t"}, model="mock/x", mock_responses=mock, store=store
        )
    finally:
        ticking.cancel()
        store.close()
    assert result.status == "completed", result.error
    assert max(gaps) < 0.5, max(gaps)
    assert result.duration_ms >= 1400  # it did wait for the lock, off the loop
    with open_store(f"sqlite:///{path}") as again:
        assert list(again.steps.succeeded(result.run_id)) == ["generate", "critique#1"]
    other.close()


@pytest.mark.postgres
async def test_a_run_goes_on_when_postgres_closes_its_connections(pg_url: str) -> None:
    """A server restart or failover mid-run: the journal writes the batch again on a new
    connection, so the result of the call in flight is kept (before, it was lost, and the
    run failed with a database error; resume would have paid for the call again)."""
    import psycopg2

    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    store = open_store(pg_url)
    mock = MockProvider(
        {
            "generate": {"content": "v1", "delay": 0.6},
            "critique": {"content": {"decision": "pass", "critique": "ok"}, "delay": 0.3},
        }
    )

    async def close_its_connections() -> None:
        await asyncio.sleep(0.35)  # generate in flight, its `running` row committed
        pids = [c.get_backend_pid() for c in store.db._conns if not c.closed]
        admin = psycopg2.connect(PG_BASE)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
        admin.close()

    try:
        closing = asyncio.create_task(close_its_connections())
        result = await runner.run(
            CRITIQUE_REVISE, {"topic": "t"}, model="mock/x", mock_responses=mock, store=store
        )
        await closing
        assert result.status == "completed", result.error
    finally:
        store.close()
    with open_store(pg_url) as again:
        assert list(again.steps.succeeded(result.run_id)) == ["generate", "critique#1"]
        assert again.runs.get(result.run_id).state == "completed"


@pytest.mark.postgres
async def test_a_commit_that_loses_its_connection_is_written_again_if_it_was_not_in(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection lost during a journal batch's COMMIT (a restart, a killed backend): the
    batch may or may not be in, so it was never written again and every run waiting for it
    failed (4% of a busy batch's items when its connections were killed now and then),
    their calls paid again on resume. The server says how the transaction ended: one rolled
    back is written again, one committed is done."""
    import psycopg2

    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    open_store(pg_url).close()
    base, _, schema = pg_url.partition("?schema=")
    admin = psycopg2.connect(base, options=f"-c search_path={schema}")
    admin.autocommit = True
    with admin.cursor() as cur:  # the first journal batch that writes a step dies in COMMIT
        cur.execute(
            """
            CREATE SEQUENCE commits;
            CREATE FUNCTION die_in_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('commits') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER die_in_commit AFTER INSERT ON step_executions
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die_in_commit();
            """
        )
    admin.close()
    mock = MockProvider({"generate": "v1", "critique": {"decision": "pass", "critique": "ok"}})
    with open_store(pg_url) as store, caplog.at_level("WARNING", "eclflow"):
        result = await runner.run(
            CRITIQUE_REVISE, {"topic": "t"}, model="mock/x", mock_responses=mock, store=store
        )
    assert result.status == "completed", result.error
    assert mock.calls == 2
    assert any("writing again on a new connection" in r.getMessage() for r in caplog.records)
    with open_store(pg_url) as again:
        assert list(again.steps.succeeded(result.run_id)) == ["generate", "critique#1"]
        assert len(again.steps.for_run(result.run_id)) == 2
        # and a transaction that did commit is not written again
        from eclflow.store.writer import JournalWriter

        writer = JournalWriter(again, asyncio.get_running_loop())
        xid = "SELECT txid_current()"
        with again.transaction():
            committed = again.db.execute_sql(xid).fetchone()[0]
        with pytest.raises(ZeroDivisionError), again.transaction():
            rolled_back = again.db.execute_sql(xid).fetchone()[0]
            _ = 1 / 0
        lost = PersistenceError("lost")
        assert writer._committed(committed, lost) and not writer._committed(rolled_back, lost)
        writer.close()


# --- opening: URLs, settings, migrations ---------------------------------------------------------


def test_resolve_url_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("ECLFLOW_DATABASE_URL", "sqlite:///from-env.db")
    assert resolve_url("sqlite:///given.db") == "sqlite:///given.db"
    assert resolve_url(None) == "sqlite:///from-env.db"
    monkeypatch.setenv("ECLFLOW_DATABASE_URL", "  ")
    default = resolve_url(None)
    assert default == f"sqlite:///{tmp_path / 'data' / 'eclflow' / 'eclflow.db'}"
    assert (tmp_path / "data" / "eclflow").is_dir()
    monkeypatch.delenv("ECLFLOW_DATABASE_URL")
    with open_store(None) as s:
        new_run(s)
    assert (tmp_path / "data" / "eclflow" / "eclflow.db").is_file()


def test_sqlite_url_forms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abs").mkdir()
    for given, made in (
        ("sqlite:///relative.db", tmp_path / "relative.db"),
        (f"sqlite:///{tmp_path}/abs/a.db", tmp_path / "abs" / "a.db"),  # sqlite:////abs/a.db
        ("bare.db", tmp_path / "bare.db"),
        (str(tmp_path / "abs" / "b.db"), tmp_path / "abs" / "b.db"),
    ):
        with open_store(given) as s:
            new_run(s)
        assert made.is_file(), given
    assert parse_url(f"sqlite:///{tmp_path}/x.db").path == f"{tmp_path}/x.db"
    assert parse_url("sqlite:///x.db").path == "x.db"
    with pytest.raises(PersistenceError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing-dir/x.db")


def test_memory_store_is_shared_by_threads() -> None:
    with open_store("sqlite:///:memory:") as s:
        run_id = new_run(s)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda k: add_step(s, run_id, f"k{k}"), range(20)))
        assert len(s.steps.for_run(run_id)) == 20


@pytest.mark.postgres
def test_opening_an_existing_postgres_schema_takes_no_lock(pg_url: str) -> None:
    """Only creating the schema (or migrating it) waits for the migrations' advisory lock: a
    session that holds it (another process migrating a fresh schema) does not stall `runs`."""
    import psycopg2

    open_store(pg_url).close()
    admin = psycopg2.connect(PG_BASE)
    pool = ThreadPoolExecutor(1)
    try:
        with admin.cursor() as cur:  # held until the rollback below
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (migrations_module._LOCK_KEY,))
        pool.submit(lambda: open_store(pg_url).close()).result(timeout=10)
    finally:
        admin.rollback()  # (lets a stalled open finish, so that the pool can end)
        admin.close()
        pool.shutdown()


def test_postgres_url_forms() -> None:
    u = parse_url("postgresql://bob:s3cret@db.example:6543/runs?schema=eclflow&sslmode=require")
    assert (u.kind, u.database, u.schema) == ("postgresql", "runs", "eclflow")
    assert u.params["user"] == "bob" and u.params["password"] == "s3cret"
    assert u.params["host"] == "db.example" and u.params["port"] == 6543
    assert u.params["sslmode"] == "require" and 'search_path="eclflow"' in str(u.params["options"])
    assert "s3cret" not in u.url and "***" in u.url
    assert parse_url("postgres://postgres@127.0.0.1:5432/test").kind == "postgresql"
    with pytest.raises(ConfigError, match="names no database"):
        parse_url("postgresql://postgres@127.0.0.1:5432/")
    with pytest.raises(ConfigError, match="bad schema name"):
        parse_url("postgresql://h/db?schema=a;drop")


def test_a_schema_name_is_the_schema_named_so_capitals_and_all(pg_url: str) -> None:
    """`?schema=Runs` created the schema "Runs" but looked for its tables in `runs`
    (PostgreSQL folds a name not written in quotes to lowercase): the first open failed with
    'no schema has been selected to create in'. And `?schema=runs%0A` (a newline at its end)
    passed the name check."""
    import psycopg2

    base, _, schema = pg_url.partition("?schema=")
    mixed = schema.replace("eclflow_test", "Eclflow_Test")
    try:
        with open_store(f"{base}?schema={mixed}") as store:
            assert store.runs.list(limit=1) == []
        conn = psycopg2.connect(PG_BASE)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_schema FROM information_schema.tables WHERE table_name = 'workflows' "
                "AND lower(table_schema) = lower(%s)",
                (mixed,),
            )
            assert cur.fetchall() == [(mixed,)]
        conn.close()
    finally:
        conn = psycopg2.connect(PG_BASE)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{mixed}" CASCADE')
        conn.close()
    with pytest.raises(ConfigError, match="bad schema name 'runs\\\\n'"):
        parse_url(f"{base}?schema=runs%0A")


def test_a_journal_an_earlier_eclflow_kept_in_the_lowercase_schema_is_not_lost(
    pg_url: str,
) -> None:
    """Before search_path was quoted, `?schema=Runs` kept its journal in `runs` (as when the
    schema was made by `CREATE SCHEMA Runs`). Read now as "Runs", the same URL said 'no
    eclflow database' and `run` began an empty journal beside the old one: such a URL is
    refused, saying which name holds the journal."""
    import psycopg2

    base, _, lower = pg_url.partition("?schema=")
    mixed = lower.replace("eclflow_test", "Eclflow_Test")
    with open_store(pg_url) as store:  # (the journal where an earlier eclflow kept it)
        assert store.runs.list(limit=1) == []
    try:
        for create in (False, True):
            with pytest.raises(ConfigError) as e:
                open_store(f"{base}?schema={mixed}", create=create)
            assert str(e.value) == (
                f"Configuration error: schema {mixed!r} holds no eclflow journal, but {lower!r} does (its name in "
                f"lowercase, where an earlier eclflow kept the journal of ?schema={mixed}): "
                f"write ?schema={lower}"
            )
    finally:
        conn = psycopg2.connect(PG_BASE)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{mixed}" CASCADE')
        conn.close()


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        open_store("mysql://root:pw@localhost/db")
    text = str(e.value)
    assert "unsupported database URL scheme 'mysql'" in text and "sqlite:///" in text
    assert "pw" not in text and "\n" not in text


def test_postgres_without_psycopg2_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` now fails
    with pytest.raises(ConfigError, match=r"pip install 'eclflow\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1:5432/test")


def test_unreachable_postgres_is_one_line() -> None:
    with pytest.raises(PersistenceError) as e:
        open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    assert "\n" not in str(e.value) and "127.0.0.1:1/test" in str(e.value)


def test_sqlite_settings(sqlite_url: str) -> None:
    with open_store(sqlite_url) as s:

        def pragma(name: str) -> object:
            return s.db.execute_sql(f"PRAGMA {name}").fetchone()[0]

        assert pragma("journal_mode") == "wal"
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") >= 30000  # type: ignore[operator]
        assert pragma("synchronous") == 1  # NORMAL
        seen: list[object] = []
        t = threading.Thread(target=lambda: seen.append(pragma("foreign_keys")))
        t.start()
        t.join()
        assert seen == [1]  # every thread's connection has the settings
        assert s.db._lock_type == "IMMEDIATE"


def test_a_connection_refused_as_locked_is_tried_again(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new connection's `PRAGMA journal_mode = wal` can fail at once with "database is
    locked" while another process opens or checkpoints the file (two `eclflow run` started
    together failed one time in ten): the connection is tried again, other errors are not."""
    import sqlite3

    from peewee import SqliteDatabase

    connect = SqliteDatabase._connect
    calls: list[int] = []

    def locked_twice(self: SqliteDatabase) -> object:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return connect(self)

    monkeypatch.setattr(SqliteDatabase, "_connect", locked_twice)
    store = open_store(sqlite_url)
    try:
        assert len(calls) == 3
        assert store.runs.list() == []
    finally:
        store.close()

    def broken(self: SqliteDatabase) -> object:
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    monkeypatch.setattr(SqliteDatabase, "_connect", broken)
    with pytest.raises(PersistenceError, match="disk I/O error"):
        open_store(sqlite_url)
    assert len(calls) == 1


def test_close_closes_every_thread_connection(sqlite_url: str) -> None:
    s = open_store(sqlite_url)
    run_id = new_run(s)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: s.runs.get(run_id), range(9)))
    conns = list(s.db._conns)
    assert len(conns) >= 2
    s.close()
    s.close()  # idempotent
    import sqlite3

    for conn in conns:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("select 1")
    with pytest.raises(PersistenceError, match="closed"):
        s.runs.get(run_id)


def _version_rows(s: Store) -> list[int]:
    M = s.models.SchemaVersion
    return [r.version for r in M.select().order_by(M.version)]


def test_journal_writer_commits_big_and_small_batches_in_queue_order(store: Store) -> None:
    """A batch of hundreds of writes (SQLite: from the writer's thread) and single awaited
    writes (on the loop's thread) land complete and in the order they were queued."""
    import asyncio

    from eclflow.store.writer import writer_for

    run_id = new_run(store)

    async def write() -> None:
        w = writer_for(store)
        handles = [w.start(run_id, f"s{i}", f"s{i}", 0, 1, {"i": i}) for i in range(300)]
        for i, h in enumerate(handles):
            w.finish(h, False, state="succeeded", outcome="success", output={"i": i})
        await w.drain()
        last = w.start(run_id, "last", "last", 0, 1)
        done = w.finish(last, state="succeeded", outcome="success", output={"i": 300})
        assert done is not None
        await done
        # results of rows committed earlier: many UPDATEs in one batch, NULLs among them
        later = [w.start(run_id, f"u{i}", f"u{i}", 0, 1) for i in range(300)]
        await w.drain()
        for i, h in enumerate(later):
            fields: dict[str, object] = {"state": "failed", "outcome": "failed", "error": "e"}
            if i % 2:
                fields = {
                    **{"state": "succeeded", "outcome": "success", "output": {"i": i}},
                    **{"retryable": False, "duration_ms": i, "tokens_in": 2, "tokens_out": 3},
                    **{"cost": 0.25, "traces": [{"message": "ok"}], "prompt": [{"role": "u"}]},
                }
            w.finish(h, False, **fields)
        await w.drain()

    asyncio.run(write())
    rows = store.steps.for_run(run_id)
    assert [r.key for r in rows] == [
        *(f"s{i}" for i in range(300)),
        "last",
        *(f"u{i}" for i in range(300)),
    ]
    assert [r.output for r in rows[:301]] == [{"i": i} for i in range(301)]
    assert {r.state for r in rows[:301]} == {"succeeded"}
    failed, ok = rows[301], rows[302]
    assert (failed.state, failed.error, failed.output, failed.cost) == ("failed", "e", None, None)
    assert (ok.state, ok.output, ok.retryable, ok.duration_ms) == ("succeeded", {"i": 1}, False, 1)
    assert (ok.tokens_in, ok.tokens_out, ok.cost) == (2, 3, 0.25)
    assert ok.traces == [{"message": "ok"}] and ok.prompt == [{"role": "u"}]
    assert ok.completed_at is not None and failed.completed_at is not None


def test_journal_writer_ends_runs_with_their_metadata_merged(store: Store) -> None:
    import asyncio

    from eclflow.store.writer import writer_for

    ids = [new_run(store, metadata={"path": "w.yaml", "model": "mock/x"}) for _ in range(3)]

    async def end() -> None:
        w = writer_for(store)
        await asyncio.gather(  # one batch: PostgreSQL ends them all in one statement
            *(
                w.end_run(run_id, "completed", {"i": i}, None, None, {"model": "mock/y", "i": i})
                for i, run_id in enumerate(ids)
            ),
            w.end_run(ids[2], "failed", None, "boom", "critique", {"tokens": 5}),  # ended twice
        )

    asyncio.run(end())
    for i, run_id in enumerate(ids[:2]):
        run = store.runs.get(run_id)
        assert (run.state, run.output, run.error) == ("completed", {"i": i}, None)
        assert run.metadata == {"path": "w.yaml", "model": "mock/y", "i": i}
        assert run.completed_at is not None
    last = store.runs.get(ids[2])
    assert (last.state, last.output, last.error) == ("failed", None, "boom")
    assert last.metadata == {"path": "w.yaml", "model": "mock/y", "i": 2, "tokens": 5}


def test_fresh_database_is_at_the_latest_version(store: Store) -> None:
    assert store.schema_version == migrations_module.latest_version() == 4
    assert _version_rows(store) == [1, 2, 3, 4]
    tables = ("definitions", "workflows", "step_executions", "artifacts", "events")
    for table in (*tables, "schema_version"):
        assert store.db.table_exists(table)


def test_hand_made_v0_database_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a database eclflow never set up, with data of its own
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    with open_store(f"sqlite:///{path}") as s:
        assert s.schema_version == 4 and _version_rows(s) == [1, 2, 3, 4]
        new_run(s)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
        assert conn.execute("SELECT count(*) FROM workflows").fetchone() == (1,)


def test_older_database_is_upgraded_by_new_migrations(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(url) as s:
        run_id = new_run(s)
        add_step(s, run_id, "generate")

    def v5(db: object, models: object) -> None:
        db.execute_sql("ALTER TABLE workflows ADD COLUMN note TEXT")  # type: ignore[attr-defined]
        db.execute_sql("UPDATE workflows SET note = 'migrated'")  # type: ignore[attr-defined]

    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*migrations_module.MIGRATIONS, v5])
    with open_store(url) as s:
        assert s.schema_version == 5 and _version_rows(s) == [1, 2, 3, 4, 5]
        assert s.db.execute_sql("SELECT note FROM workflows").fetchall() == [("migrated",)]
        assert s.runs.get(run_id).input["topic"] == "tides"
        assert len(s.steps.for_run(run_id)) == 1
    with open_store(url) as s:  # applied once only
        assert _version_rows(s) == [1, 2, 3, 4, 5]


def test_version_1_database_loses_the_started_at_index(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(migrations_module, "MIGRATIONS", migrations_module.MIGRATIONS[:1])
        with open_store(url) as s:  # as version 1 made it
            s.db.execute_sql(
                "CREATE INDEX step_executions_run_id_started_at "
                "ON step_executions (run_id, started_at)"
            )
            run_id = new_run(s)
            add_step(s, run_id, "generate")
            assert s.schema_version == 1
            assert "step_executions_run_id_started_at" in _indexes(s)
    with open_store(url) as s:
        assert s.schema_version == 4 and _version_rows(s) == [1, 2, 3, 4]
        assert _indexes(s) - {"step_executions_pkey"} == {"step_executions_run_id_key_attempt"}
        assert [r.key for r in s.steps.for_run(run_id)] == ["generate"]


def _indexes(s: Store) -> set[str]:
    return {i.name for i in s.db.get_indexes("step_executions")}


def test_newer_database_is_refused(url: str) -> None:
    with open_store(url) as s:
        s.models.SchemaVersion.insert(version=7, applied_at=datetime.now(UTC)).execute()
    with pytest.raises(StoreUnavailable) as e:  # (exit 2: nothing ran, the fix is an upgrade)
        open_store(url)
    assert str(e.value) == (
        "Database error: database schema version 7 is newer than this eclflow (supports 4); "
        "upgrade eclflow"
    )


# The tables as schema version 2 made them (eclflow before `definitions`): every run's row held
# its definition's text. {json} {time} {serial} {bool} are the backend's types.
V2_TABLES = [
    'CREATE TABLE "workflows" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, "definition_id" TEXT '
    'NOT NULL, "definition_name" TEXT, "definition" TEXT NOT NULL, "definition_sha256" '
    'VARCHAR(64) NOT NULL, "input" {json}, "state" VARCHAR(16) NOT NULL, "output" {json}, '
    '"error" TEXT, "failed_step" TEXT, "metadata" {json}, "created_at" {time} NOT NULL, '
    '"updated_at" {time} NOT NULL, "completed_at" {time})',
    'CREATE INDEX "workflows_state_created_at" ON "workflows" ("state", "created_at")',
    'CREATE INDEX "workflows_definition_id_created_at" ON "workflows" ("definition_id", '
    '"created_at")',
    'CREATE INDEX "workflows_created_at" ON "workflows" ("created_at")',
    'CREATE TABLE "step_executions" ("id" {serial} NOT NULL PRIMARY KEY, "run_id" VARCHAR(64) '
    'NOT NULL, "step_id" TEXT NOT NULL, "key" TEXT NOT NULL, "iteration" INTEGER NOT NULL, '
    '"attempt" INTEGER NOT NULL, "state" VARCHAR(16) NOT NULL, "outcome" VARCHAR(16), "input" '
    '{json}, "output" {json}, "feedback" TEXT, "error" TEXT, "retryable" {bool}, "model" TEXT, '
    '"prompt" {json}, "started_at" {time} NOT NULL, "completed_at" {time}, "duration_ms" '
    'INTEGER, "tokens_in" INTEGER, "tokens_out" INTEGER, "cost" REAL, "traces" {json}, '
    'FOREIGN KEY ("run_id") REFERENCES "workflows" ("id") ON DELETE CASCADE)',
    'CREATE UNIQUE INDEX "step_executions_run_id_key_attempt" ON "step_executions" ("run_id", '
    '"key", "attempt")',
    'CREATE TABLE "artifacts" ("id" {serial} NOT NULL PRIMARY KEY, "run_id" VARCHAR(64) NOT '
    'NULL, "step_id" TEXT, "name" TEXT NOT NULL, "content_type" TEXT NOT NULL, "content" TEXT, '
    '"path" TEXT, "size" INTEGER, "created_at" {time} NOT NULL, FOREIGN KEY ("run_id") '
    'REFERENCES "workflows" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "artifacts_run_id" ON "artifacts" ("run_id")',
    'CREATE TABLE "events" ("id" {serial} NOT NULL PRIMARY KEY, "run_id" VARCHAR(64) NOT NULL, '
    '"ts" {time} NOT NULL, "kind" TEXT NOT NULL, "step_id" TEXT, "fields" {json}, FOREIGN KEY '
    '("run_id") REFERENCES "workflows" ("id") ON DELETE CASCADE)',
    'CREATE INDEX "events_run_id_id" ON "events" ("run_id", "id")',
    'CREATE TABLE "schema_version" ("version" INTEGER NOT NULL PRIMARY KEY, "applied_at" {time} '
    "NOT NULL)",
]
V2_TYPES = {
    "sqlite": {"json": "TEXT", "time": "TEXT", "serial": "INTEGER", "bool": "INTEGER"},
    "postgresql": {"json": "JSON", "time": "TIMESTAMPTZ", "serial": "SERIAL", "bool": "BOOLEAN"},
}


def _cli(tmp_path: Path, *args: str, script: dict[str, object]) -> dict[str, object]:
    """`eclflow ARGS --json` on the mock model's keyed `script`; its JSON result."""
    import json

    replies = tmp_path / f"replies-{uuid.uuid4().hex[:8]}.json"
    replies.write_text(json.dumps(script))
    r = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", *args, "--model", "mock/x"),
            *("--mock-responses", str(replies), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.stdout, r.stderr
    result: dict[str, object] = json.loads(r.stdout)
    return result


def _make_version_2(source: Path, url: str) -> None:
    """At `url`, the tables schema version 2 made, holding the runs of the SQLite file
    `source` (each run's row with its definition's text, as version 2 wrote them)."""
    queries = {
        "workflows": "SELECT w.*, d.text AS definition FROM workflows AS w "
        "JOIN definitions AS d ON d.sha256 = w.definition_sha256 ORDER BY w.created_at",
        "step_executions": "SELECT * FROM step_executions ORDER BY id",
        "events": "SELECT * FROM events ORDER BY id",
    }
    src = sqlite3.connect(source)
    src.row_factory = sqlite3.Row
    rows = {table: [dict(r) for r in src.execute(sql)] for table, sql in queries.items()}
    src.close()
    with open_store(url) as target:  # (for its connection: the tables are made anew below)
        db, kind = target.db, target.kind
        with db.atomic():
            for table in ("step_executions", "events", "artifacts", "workflows"):
                db.execute_sql(f'DROP TABLE "{table}"')
            db.execute_sql('DROP TABLE "definitions"')
            db.execute_sql('DROP TABLE "schema_version"')
            for sql in V2_TABLES:
                db.execute_sql(sql.format(**V2_TYPES[kind]))
            for version in (1, 2):
                db.execute_sql(
                    f"INSERT INTO schema_version VALUES ({db.param}, {db.param})",
                    (version, "2026-01-01 00:00:00.000000+00:00"),
                )
            for table, records in rows.items():
                for record in records:
                    if table != "workflows":
                        del record["id"]  # (numbered anew, in the same order)
                    if record.get("retryable") is not None and kind == "postgresql":
                        record["retryable"] = bool(record["retryable"])
                    marks = ", ".join([db.param] * len(record))
                    db.execute_sql(
                        f"INSERT INTO {table} ({', '.join(record)}) VALUES ({marks})",
                        list(record.values()),
                    )


REVISE_ONCE = {
    "generate": {"content": "draft one"},
    "critique#1": {"content": {"decision": "revise", "critique": "thin", "feedback": "more"}},
    "revise#1": {"content": "draft two"},
    "critique#2": {"content": {"decision": "pass", "critique": "good"}},
}


@pytest.mark.slow
def test_version_2_database_keeps_each_definition_once_and_its_runs_resume(
    url: str, tmp_path: Path
) -> None:
    """A database of schema version 2 (each run's row with its definition's text) opens at
    version 3: the text once in `definitions`, the runs' rows without it; its runs show with
    their definition, and a failed one resumes (the file-changed check compares that text)."""
    source = tmp_path / "v3.db"
    at = ("--db", f"sqlite:///{source}")
    first = {k: REVISE_ONCE[k] for k in ("generate", "critique#1")}  # no reply for revise#1
    run = ("run", str(CRITIQUE_REVISE))
    failed = _cli(tmp_path, *run, "-i", "topic=tides", *at, script=first)
    done = _cli(tmp_path, *run, "-i", "topic=moons", *at, script=REVISE_ONCE)
    assert (failed["status"], done["status"]) == ("failed", "completed")
    _make_version_2(source, url)

    run_id = str(failed["run_id"])
    shown = subprocess.run(
        [sys.executable, "-m", "eclflow", "show", run_id[:8], "--db", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and run_id in shown.stdout, shown.stderr
    rest = {k: REVISE_ONCE[k] for k in ("revise#1", "critique#2")}
    resumed = _cli(tmp_path, "resume", run_id[:8], "--db", url, script=rest)
    assert resumed["status"] == "completed", resumed
    assert resumed["output"] == {"final_text": "draft two", "revision_count": 1}

    text = CRITIQUE_REVISE.read_text()
    with open_store(url) as s:
        assert s.schema_version == 4 and _version_rows(s) == [1, 2, 3, 4]
        assert "definition" not in {c.name for c in s.db.get_columns("workflows")}
        (sha,) = {r.definition_sha256 for r in s.runs.list(limit=None)}
        assert s.db.execute_sql("SELECT sha256, text FROM definitions").fetchall() == [(sha, text)]
        runs = s.runs.list(limit=None)
        assert sorted(r.state for r in runs) == ["completed", "completed"]
        assert [r.definition for r in runs] == [text, text]
        assert s.runs.get_many([run_id])[run_id].definition == text
        # the steps and events of both runs came through (steps still found by their run)
        assert [r.key for r in s.steps.for_run(str(done["run_id"]))] == list(REVISE_ONCE)
        assert s.events.for_run(str(done["run_id"]))


def test_version_2_sqlite_file_upgraded_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    """SQLite rebuilds the runs' table to drop its `definition` column: the file it leaves has
    the same tables and indexes, written the same way, as a file made at version 3 (what
    `sqlite3 FILE .schema` shows)."""
    source, upgraded, fresh = (tmp_path / n for n in ("source.db", "v2.db", "v3.db"))
    with open_store(f"sqlite:///{source}") as s:
        new_run(s, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
    _make_version_2(source, f"sqlite:///{upgraded}")
    for path in (upgraded, fresh):
        open_store(f"sqlite:///{path}").close()  # (upgraded / made at version 3)

    def schema(path: Path) -> list[str]:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
        finally:
            conn.close()
        return sorted(r[0] for r in rows)

    assert schema(upgraded) == schema(fresh)


@pytest.mark.postgres
def test_an_older_postgres_schema_gets_64_bit_numbers_on_open(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL tables made before version 4 (`integer` counters and ids, a `real` cost) are
    widened when a store opens them: a step of 2**31 tokens is then written, ids go on past
    2**31, and the costs stored before read back as they did (0.1, not real's
    0.10000000149011612)."""
    source = tmp_path / "source.db"
    with open_store(f"sqlite:///{source}") as s:
        run_id = new_run(s)
        add_step(s, run_id, "generate", cost=0.1)
    _make_version_2(source, pg_url)
    with open_store(pg_url) as s:
        assert s.schema_version == 4 and _version_rows(s) == [1, 2, 3, 4]
        types = dict(
            s.db.execute_sql(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema."
                "columns WHERE table_schema = current_schema() AND data_type IN ('integer', "
                "'bigint', 'real', 'double precision')"
            ).fetchall()
        )
        wide = ["id", "duration_ms", "tokens_in", "tokens_out"]
        assert {c: types.pop(f"step_executions.{c}") for c in wide} == dict.fromkeys(wide, "bigint")
        assert types.pop("step_executions.cost") == "double precision"
        assert [types.pop(c) for c in ("events.id", "artifacts.id", "artifacts.size")] == [
            "bigint"
        ] * 3
        assert set(types.values()) == {"integer"}  # iteration, attempt, version: small
        sequences = s.db.execute_sql(
            "SELECT sequence_name, data_type FROM information_schema.sequences "
            "WHERE sequence_schema = current_schema()"
        ).fetchall()
        assert sorted(sequences) == [
            ("artifacts_id_seq", "bigint"),
            ("events_id_seq", "bigint"),
            ("step_executions_id_seq", "bigint"),
        ]
        assert [r.cost for r in s.steps.for_run(run_id)] == [0.1]
        s.db.execute_sql(
            "SELECT setval(pg_get_serial_sequence('step_executions', 'id'), 2147483648)"
        )
        add_step(s, run_id, "critique#1", tokens_in=2**31, cost=0.123456789012345)
        last = s.steps.for_run(run_id)[-1]
        assert (last.id, last.tokens_in, last.cost) == (2**31 + 1, 2**31, 0.123456789012345)


A_TEXT, B_TEXT = "eclflow: 1\nid: a\n", "eclflow: 1\nid: b\n"


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _definitions(store: Store) -> dict[str, str]:
    return dict(store.db.execute_sql("SELECT sha256, text FROM definitions").fetchall())


def test_each_definition_is_kept_once_whatever_writes_its_runs(store: Store, url: str) -> None:
    """A definition's text is one row of `definitions` however many runs ran it and whichever
    way they were written (create, a batch's claim, the journal writer); every run gives it
    back by its hash, in this process and in another."""
    from eclflow.store.writer import writer_for

    one = new_run(store, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
    two = new_run(store, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
    claimed = [str(uuid.uuid4()) for _ in range(250)]  # more than one statement's worth
    rows = [
        {**row, "definition": text, "definition_sha256": _sha(text)}
        for row, text in zip(claim_rows(claimed), [A_TEXT, B_TEXT] * 125, strict=True)
    ]
    assert store.runs.claim_many(rows, "token") == set(claimed)
    written = [str(uuid.uuid4()) for _ in range(3)]

    async def write() -> None:
        w = writer_for(store)
        for run_id, text in zip(written, [B_TEXT, A_TEXT, B_TEXT], strict=True):
            w.create_run(
                run_id=run_id, definition_id="wf", definition=text,
                definition_sha256=_sha(text), input={}, state="running",
            )  # fmt: skip
        await w.drain()

    asyncio.run(write())
    assert _definitions(store) == {_sha(A_TEXT): A_TEXT, _sha(B_TEXT): B_TEXT}
    columns = {c.name for c in store.db.get_columns("workflows")}
    assert "definition_sha256" in columns and "definition" not in columns
    assert store.runs.get(one).definition == A_TEXT
    assert store.runs.find(two[:8]).definition == A_TEXT
    by_id = store.runs.get_many(claimed)
    assert [by_id[i].definition for i in claimed[:3]] == [A_TEXT, B_TEXT, A_TEXT]
    listed = {r.id: r.definition for r in store.runs.list(limit=None)}
    assert [listed[i] for i in written] == [B_TEXT, A_TEXT, B_TEXT]
    with open_store(url) as other:  # read from the database, not this process's cache
        assert other.runs.get(claimed[1]).definition == B_TEXT
        assert other.runs.get(written[1]).definition == A_TEXT


def test_prune_deletes_the_definitions_no_run_refers_to_any_more(store: Store) -> None:
    old_a = new_run(store, state="completed", definition=A_TEXT, definition_sha256=_sha(A_TEXT))
    old_b = new_run(store, state="completed", definition=B_TEXT, definition_sha256=_sha(B_TEXT))
    recent_b = new_run(store, state="failed", definition=B_TEXT, definition_sha256=_sha(B_TEXT))
    _age(store, old_a, 40)
    _age(store, old_b, 40)
    assert store.runs.prune(timedelta(days=30)) == (2, 0)
    assert _definitions(store) == {_sha(B_TEXT): B_TEXT}  # recent_b's is kept
    assert store.runs.get(recent_b).definition == B_TEXT
    store.runs.delete(recent_b)  # (one run deleted: its text goes at the next prune)
    assert _definitions(store) == {_sha(B_TEXT): B_TEXT}
    assert store.runs.prune(timedelta(days=30)) == (0, 0)
    assert _definitions(store) == {}


@pytest.mark.postgres
def test_prune_waits_for_a_run_being_written_with_a_stored_definition(pg_url: str) -> None:
    """PostgreSQL: a transaction has written a run and found its definition stored (nothing
    to insert, no row locked), and not committed yet; a prune meanwhile would see no run
    referring to that definition. It waits for the transaction instead, and keeps it."""
    with open_store(pg_url) as store, open_store(pg_url) as writer:
        gone = new_run(store, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
        store.runs.delete(gone)  # A's text is stored, and no run refers to it
        pruned: list[int] = []
        pruner = threading.Thread(target=lambda: pruned.append(store.runs.prune_definitions()))
        with writer.transaction():  # (RunRepository.create: the run, then its definition)
            run_id = new_run(writer, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
            pruner.start()

            def waiting() -> bool:  # the prune blocked on a lock, or (wrongly) done
                sql = (
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s"
                )
                # (not in the writer's transaction: it would see one snapshot of the activity)
                found = store.db.execute_sql(sql, ("LOCK TABLE workflows%",)).fetchone()[0]
                return bool(pruned) or found > 0

            deadline = time.monotonic() + 60
            while not waiting() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waiting()
        pruner.join(timeout=60)
        assert pruned == [0]
        assert _definitions(store) == {_sha(A_TEXT): A_TEXT}
        assert store.runs.get(run_id).definition == A_TEXT


@pytest.mark.postgres
def test_prune_of_definitions_reads_the_runs_once_on_postgresql(pg_url: str) -> None:
    """PostgreSQL: prune holds up every worker's writes while it looks for the definitions no
    run refers to, so it reads the runs once (an anti-join). `NOT IN (subquery)` compared each
    definition with every run once the runs' hashes no longer fitted in work_mem: 35 s for a
    million runs and 600 texts, longer than a worker waits for a lock."""
    from eclflow.store.repositories import UNUSED_DEFINITIONS

    used = [_sha(f"used {i}") for i in range(20)]
    with open_store(pg_url) as store:
        db = store.db
        with store.transaction():
            db.execute_sql(
                "INSERT INTO definitions (sha256, text) SELECT md5(i::text) || md5(i::text), "
                "'unused' FROM generate_series(1, 30) AS i"
            )
            for sha in used:
                db.execute_sql("INSERT INTO definitions (sha256, text) VALUES (%s, 'used')", (sha,))
            db.execute_sql(
                "INSERT INTO workflows (id, definition_id, definition_sha256, state, created_at, "
                "updated_at) SELECT 'r' || i, 'wf', (%s::text[])[i %% 20 + 1], 'completed', "
                "'2026-01-01', '2026-01-01' FROM generate_series(1, 20000) AS i",
                (used,),
            )
        db.execute_sql("ANALYZE workflows")
        db.execute_sql("ANALYZE definitions")
        with store.transaction():
            db.execute_sql("SET LOCAL work_mem = '64kB'")  # (the runs' hashes do not fit)
            sql = UNUSED_DEFINITIONS["postgresql"]
            plan = "\n".join(r[0] for r in db.execute_sql(f"EXPLAIN {sql}").fetchall())
        assert "SubPlan" not in plan, plan
        assert store.runs.prune_definitions() == 30
        assert sorted(_definitions(store)) == sorted(used)


@pytest.mark.postgres
def test_prune_waiting_for_the_runs_table_does_not_hold_up_workers(pg_url: str) -> None:
    """PostgreSQL: a session left in a transaction that wrote a run (an idle psql) keeps
    prune from locking the runs' table. Waiting there, prune's lock request queued every
    worker's next write to the table behind it for as long as its lock_timeout (a minute),
    though those writes do not conflict with that session; it now waits in short tries, so a
    worker's write goes through between them, and prune finishes once the session ends."""
    import psycopg2

    with open_store(pg_url) as store, open_store(pg_url) as worker:
        held = new_run(store, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
        other = new_run(store, definition=A_TEXT, definition_sha256=_sha(A_TEXT))
        gone = new_run(store, definition=B_TEXT, definition_sha256=_sha(B_TEXT))
        store.runs.delete(gone)  # B's text is left for prune
        schema = pg_url.split("schema=")[1]
        idle = psycopg2.connect(PG_BASE, options=f"-c search_path={schema}")
        try:
            with idle.cursor() as cur:  # (the driver's transaction stays open)
                cur.execute("UPDATE workflows SET updated_at = updated_at WHERE id = %s", (held,))
            pruned: list[int] = []
            pruner = threading.Thread(target=lambda: pruned.append(store.runs.prune_definitions()))
            pruner.start()

            def prune_waits() -> bool:
                sql = (
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s"
                )
                return worker.db.execute_sql(sql, ("LOCK TABLE workflows%",)).fetchone()[0] > 0

            deadline = time.monotonic() + 60
            while not prune_waits() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert prune_waits() and not pruned
            wrote = threading.Thread(target=lambda: worker.runs.update_metadata(other, ok=1))
            wrote.start()
            wrote.join(timeout=30)  # (without waiting for the idle session, nor for prune)
            assert not wrote.is_alive()
            assert worker.runs.get(other).metadata["ok"] == 1 and not pruned
        finally:
            idle.commit()
            idle.close()
        pruner.join(timeout=60)
        assert pruned == [1]
        assert _definitions(store) == {_sha(A_TEXT): A_TEXT}


# --- several processes at once -------------------------------------------------------------------

WORKER = r"""
import os, sys, time, uuid
from concurrent.futures import ThreadPoolExecutor
from eclflow.store import open_store

url, worker, go, shared = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
store = open_store(url)
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)

def step(run_id, key, n):
    h = store.steps.start(run_id=run_id, step_id=key.split("#")[0], key=key, iteration=n,
                          attempt=1, input={"n": n}, model="mock/x")
    store.steps.finish(h, state="succeeded", outcome="success", output={"w": worker, "key": key},
                       duration_ms=1, tokens_in=1, tokens_out=1, cost=0.0,
                       traces=[{"level": "info", "message": "ok"}], prompt=None)

with ThreadPoolExecutor(3) as pool:  # like the journal's asyncio.to_thread workers
    for i in range(50):
        run_id = f"w{worker}-{i:03d}-" + uuid.uuid4().hex[:8]
        store.runs.create(run_id=run_id, definition_id="load", definition_name="Load",
                          definition="x", definition_sha256="0" * 64, input={"i": i},
                          state="running", metadata={"worker": worker})
        list(pool.map(lambda a: step(run_id, *a), [("generate", 0), ("critique#1", 1), ("revise#1", 1)]))
        store.runs.update_metadata(run_id, done=True)
        store.runs.update_metadata(shared, **{f"w{worker}-{i}": i})  # one row, every process
        with store.transaction():
            store.runs.update_output(run_id, {"i": i})
            store.runs.update_state(run_id, "completed")
store.close()
print("ok")
"""


def _hammer(url: str, tmp_path: Path) -> None:
    with open_store(url) as s:
        shared = new_run(s, "shared-run")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(w), str(go), shared],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    time.sleep(0.3)  # let every worker open the store, then start them together
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert out.strip() == "ok" and "locked" not in err
    with open_store(url) as s:
        runs = [r for r in s.runs.list(limit=None) if r.id != shared]
        assert len(runs) == 200
        assert {r.state for r in runs} == {"completed"}
        assert all(r.metadata.get("done") is True and r.output is not None for r in runs)
        stats = s.steps.stats_many(r.id for r in runs)
        assert len(stats) == 200
        assert all(st.count == 3 and st.succeeded == 3 for st in stats.values())
        assert len(s.runs.get(shared).metadata) == 1 + 200  # no lost read-modify-write
        # the four wrote the same definition at once: one row, every run's text
        assert {r.definition for r in runs} == {"x"}
        assert _definitions(s) == {"0" * 64: "x", "ab" * 32: "eclflow: 1\nid: critique-revise\n"}


@pytest.mark.slow
def test_four_processes_write_one_sqlite_file(sqlite_url: str, tmp_path: Path) -> None:
    _hammer(sqlite_url, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_four_processes_write_one_postgres_database(pg_url: str, tmp_path: Path) -> None:
    _hammer(pg_url, tmp_path)


def test_a_closed_store_lets_go_of_its_journal_writers(tmp_path: Path) -> None:
    """The writers a store's runs used (with their worker threads) end with the store, and a
    closed store is not kept alive by them."""
    import asyncio
    import gc
    import weakref

    from eclflow.engine.batch import run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    script = {"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}}
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    results = asyncio.run(
        run_batch(
            load(CRITIQUE_REVISE),
            [{"topic": f"t{i}"} for i in range(60)],
            concurrency=60,
            model="mock/t",
            mock_responses=MockProvider(script),
            store=store,
        )
    )
    assert [r.status for r in results] == ["completed"] * 60
    assert store.writers  # the batch's loop had a writer
    store.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("eclflow-journal")]
    gone = weakref.ref(store)
    del store
    gc.collect()
    assert gone() is None


def test_sqlite_pages_reach_the_database_file_from_the_checkpoint_thread(tmp_path: Path) -> None:
    """Committed pages are copied from the WAL into the database file by the writer's own
    checkpoint thread, long before the WAL reaches SQLite's automatic mark (10 000 pages),
    which would do it inside a commit on the event loop's thread; closing stops the thread."""
    import asyncio

    from eclflow.engine.runner import run
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    path = tmp_path / "x.db"
    store = open_store(f"sqlite:///{path}")
    empty = path.stat().st_size
    wf = load(CRITIQUE_REVISE)
    mock = MockProvider({"*": "a draft", "critique": {"decision": "pass", "critique": "ok"}})

    async def runs() -> None:
        for _ in range(20):
            result = await run(
                wf, {"topic": "t"}, model="mock/t", mock_responses=mock.fresh(), store=store
            )
            assert result.status == "completed"
            await asyncio.sleep(0.01)  # several checkpoint periods over the runs

    try:
        asyncio.run(runs())
        wal = Path(f"{path}-wal").stat().st_size
        assert 0 < wal < 10_000 * 4096  # below the automatic checkpoint's mark
        assert path.stat().st_size > empty  # yet the database file has the runs' pages
    finally:
        store.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("eclflow-checkpoint")]


def test_closing_the_store_writes_what_its_writers_still_hold(url: str) -> None:
    """A loop that stops before the linger timer fires (Ctrl-C) leaves unawaited writes queued
    and events buffered; closing the store commits them instead of dropping them."""
    import asyncio

    from eclflow.observe.events import EventRecorder
    from eclflow.store.writer import writer_for

    store = open_store(url)
    run_id = new_run(store)
    loop = asyncio.new_event_loop()

    async def queue_and_stop() -> None:
        w = writer_for(store)
        h = w.start(run_id, "generate", "generate", 0, 1, {"topic": "t"}, "mock/x")
        w.finish(h, False, state="succeeded", outcome="success", output="a draft")
        w.start(run_id, "critique", "critique#1", 1, 1, {"draft": "a draft"}, "mock/x")
        w.events(run_id, [("step_succeeded", "generate", {"level": "info"})])
        recorder = EventRecorder(store, run_id)
        w.follow(recorder)  # a run cut short before it could unfollow
        recorder.add("loop_revision", 20, "Revision requested", {"step_id": "critique"})

    loop.run_until_complete(queue_and_stop())
    loop.close()  # the linger and events timers never fire
    store.close()

    store = open_store(url)
    try:
        rows = {r.key: r for r in store.steps.for_run(run_id)}
        assert rows["generate"].state == "succeeded" and rows["generate"].output == "a draft"
        assert rows["critique#1"].state == "running"
        kinds = [e.kind for e in store.events.for_run(run_id)]
        assert kinds == ["step_succeeded", "loop_revision"]
    finally:
        store.close()


def test_a_running_row_waits_for_its_result_then_is_written_on_its_own(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that finishes within HOLD_START is one row in one transaction (no INSERT of a
    `running` row, then an UPDATE); one still going after HOLD_START is committed as
    `running` (other processes see the call in flight), and `drain` writes held rows at once."""
    import asyncio

    from eclflow.store.writer import HOLD_START, JournalWriter, writer_for

    store = open_store(url)
    run_id = new_run(store)
    batches: list[list[str]] = []
    write = JournalWriter._write

    def spy(self: JournalWriter, batch: list[tuple[str, object, object]]) -> None:
        batches.append([kind for kind, _, _ in batch])
        write(self, batch)

    monkeypatch.setattr(JournalWriter, "_write", spy)

    async def steps() -> None:
        w = writer_for(store)
        quick = w.start(run_id, "generate", "generate", 0, 1, {"topic": "t"}, "mock/x")
        slow = w.start(run_id, "critique", "critique#1", 1, 1, {"draft": "d"}, "mock/x")
        done = w.finish(quick, state="succeeded", outcome="success", output="a draft")
        assert done is not None
        await done
        # its start and result as one row; the slow one's row is still held
        assert batches == [["step"]]
        await asyncio.sleep(HOLD_START + 0.2)
        assert batches[1:] == [["start"]]
        assert [r.state for r in store.steps.for_run(run_id)] == ["succeeded", "running"]
        w.finish(slow, False, state="succeeded", outcome="success", output={"ok": 1})
        w.start(run_id, "revise", "revise#1", 1, 1, None, "mock/x")
        await w.drain()
        assert batches[2:] == [["upsert", "start", "noop"]]

    try:
        asyncio.run(steps())
        rows = store.steps.for_run(run_id)
        assert [(r.key, r.state) for r in rows] == [
            ("generate", "succeeded"),
            ("critique#1", "succeeded"),
            ("revise#1", "running"),
        ]
        assert rows[0].output == "a draft" and rows[0].input == {"topic": "t"}
    finally:
        store.close()


def test_a_result_is_kept_when_its_running_row_was_lost(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody waits for a `running` row: when its transaction fails (a lock held past the
    timeout, a full disk) the result that follows must still be kept, not reported committed
    after an UPDATE of no row; else resume would pay for the call again."""
    import asyncio

    from eclflow.errors import PersistenceError
    from eclflow.store.writer import HOLD_START, JournalWriter, writer_for

    store = open_store(url)
    run_id = new_run(store)
    write = JournalWriter._write

    def failing_starts(self: JournalWriter, batch: list[tuple[str, object, object]]) -> None:
        if [kind for kind, _, _ in batch] == ["start"]:
            raise PersistenceError("database is locked")
        write(self, batch)

    monkeypatch.setattr(JournalWriter, "_write", failing_starts)

    async def step() -> None:
        w = writer_for(store)
        slow = w.start(run_id, "generate", "generate", 0, 1, {"topic": "t"}, "mock/x")
        await asyncio.sleep(HOLD_START + 0.2)  # its `running` row went, and failed
        assert store.steps.for_run(run_id) == []
        done = w.finish(slow, state="succeeded", outcome="success", output="a draft")
        assert done is not None
        await done

    try:
        asyncio.run(step())
        (row,) = store.steps.for_run(run_id)
        assert (row.key, row.state, row.output, row.input) == (
            "generate", "succeeded", "a draft", {"topic": "t"},
        )  # fmt: skip
    finally:
        store.close()


def claim_rows(ids: list[str]) -> list[dict[str, object]]:
    """The rows batch mode claims for runs of these ids (what `RunRepository.create` takes)."""
    return [
        {
            "run_id": i, "definition_id": "wf", "definition_name": "WF",
            "definition": "eclflow: 1\\n", "definition_sha256": "ab" * 32,
            "input": {"topic": i}, "metadata": {"item": n},
        }
        for n, i in enumerate(ids)
    ]  # fmt: skip


@pytest.mark.parametrize("how", ["claim_many", "_claim_many_slowly"])
def test_claiming_runs_writes_only_those_nobody_has(store: Store, how: str) -> None:
    """Batch mode claims the runs of its items before it starts; a run another claim (or run)
    wrote first is not this claim's."""

    claim = getattr(store.runs, how)
    existing = new_run(store)
    first = [str(uuid.uuid4()) for _ in range(250)]  # more than one statement's worth
    assert claim(claim_rows([*first, existing]), "token-1") == set(first)
    again = [str(uuid.uuid4()), *first[:3]]
    assert claim(claim_rows(again), "token-2") == {again[0]}
    got = store.runs.get(first[0])
    assert got.state == "pending" and got.input == {"topic": first[0]}
    assert got.metadata == {"item": 0, "claim": "token-1"}
    assert store.runs.get(existing).state == "running"
    store.runs.unclaim([first[0], existing])  # only what is still pending goes
    assert store.runs.states([first[0], existing]) == {existing: "running"}


@pytest.mark.parametrize("how", ["claim_many", "_claim_many_slowly"])
def test_claiming_takes_over_only_runs_still_pending_under_a_dead_claim(
    store: Store, how: str
) -> None:
    """A batch started again after its process died claims the runs that process claimed and
    never began in place: those still `pending` under its claim's token. One another process
    has claimed since (another token), or begun (`running`), is not this claim's."""

    claim = getattr(store.runs, how)
    dead = [str(uuid.uuid4()) for _ in range(250)]  # more than one statement's worth
    assert claim(claim_rows(dead), "dead") == set(dead)
    assert claim(claim_rows(dead[:2]), "other", take_over=["dead"]) == set(dead[:2])
    store.runs.update_state(dead[2], "running")
    new = str(uuid.uuid4())
    assert claim(claim_rows([*dead, new]), "mine", take_over=["dead"]) == {*dead[3:], new}
    got = store.runs.get(dead[3])
    assert got.state == "pending" and got.metadata == {"item": 3, "claim": "mine"}
    assert store.runs.get(dead[0]).metadata == {"item": 0, "claim": "other"}
    assert store.runs.get(dead[2]).metadata["claim"] == "dead"
    assert store.runs.get(dead[2]).state == "running"
    assert store.runs.states([*dead, new]) == {
        **{i: "pending" for i in dead},
        dead[2]: "running",
        new: "pending",
    }


def test_unclaiming_a_few_runs_reads_only_those(sqlite_url: str) -> None:
    """A stopped batch lets go of the runs it claimed and never began. SQLite looked them up
    by state (every pending run, for each 500 ids): a batch of 100 000 items took a minute to
    stop. Found by id, letting go of ten among thousands costs what it costs among ten."""
    store = open_store(sqlite_url)

    def claim(n: int) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in range(n)]
        rows = [
            {
                "run_id": i, "definition_id": "wf", "definition": "eclflow: 1\n",
                "definition_sha256": "ab" * 32, "input": {"topic": i},
            }
            for i in ids
        ]  # fmt: skip
        store.runs.claim_many(rows, "token")
        return ids

    def steps_to_unclaim(ids: list[str]) -> int:
        ticks = [0]
        conn = store.db.connection()
        conn.set_progress_handler(lambda: ticks.__setitem__(0, ticks[0] + 1) or 0, 100)
        try:
            store.runs.unclaim(ids)
        finally:
            conn.set_progress_handler(None, 100)
        return ticks[0]

    try:
        among_few = steps_to_unclaim(claim(10))
        many = claim(3000)
        among_many = steps_to_unclaim(many[:10])
        assert store.runs.states(many[:11]) == {many[10]: "pending"}
        assert among_many <= 3 * max(among_few, 1), (among_few, among_many)
    finally:
        store.close()


@pytest.mark.postgres
def test_a_batch_whose_commit_may_have_gone_through_is_not_written_again(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost during COMMIT leaves the outcome unknown to the client: writing the
    batch again could store it twice (events) or fail on its own rows. The server says that
    it committed: the batch is done, not written again."""
    from contextlib import contextmanager

    import psycopg2

    from eclflow.store.writer import writer_for

    store = open_store(pg_url)
    run_id = new_run(store)
    real = store.transaction

    @contextmanager
    def committed_then_lost() -> Iterator[None]:
        with real():
            yield
        lost = psycopg2.OperationalError("server closed the connection unexpectedly")
        raise PersistenceError(str(lost)) from lost

    async def write() -> None:
        w = writer_for(store)
        w.events(run_id, [("step_started", "generate", {"n": 1})])
        await w.drain()

    try:
        monkeypatch.setattr(store, "transaction", committed_then_lost)
        asyncio.run(write())
        monkeypatch.setattr(store, "transaction", real)
        assert [e.kind for e in store.events.for_run(run_id)] == ["step_started"]
    finally:
        store.close()


def test_a_store_used_by_loop_after_loop_keeps_few_connections(tmp_path: Path) -> None:
    """Each event loop's writer closes the connections its threads opened: a process that
    runs asyncio.run after asyncio.run on one store ran out of file descriptors."""
    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    script = {"generate": "v1", "critique": {"content": {"decision": "pass", "critique": "ok"}}}
    try:
        for _ in range(12):
            result = asyncio.run(
                runner.run(
                    CRITIQUE_REVISE, {"topic": "t"}, model="mock/x",
                    mock_responses=MockProvider(script), store=store,
                )
            )  # fmt: skip
            assert result.status == "completed"
        assert len(store.db._conns) <= 4, len(store.db._conns)
    finally:
        store.close()


@pytest.mark.postgres
async def test_a_read_only_database_fails_the_run_before_its_first_call(pg_url: str) -> None:
    """(A standby, or default_transaction_read_only: before, the first model call was made and
    paid for, then its result could not be written.)"""
    from eclflow.engine import runner
    from eclflow.llm import MockProvider

    open_store(pg_url).close()  # the schema exists
    read_only = f"{pg_url}&options=-c%20default_transaction_read_only%3Don"
    mock = MockProvider({"*": "v1"})
    with (
        open_store(read_only) as store,
        pytest.raises(PersistenceError, match=r"is read-only .* a writable server"),
    ):
        await runner.run(
            CRITIQUE_REVISE, {"topic": "t"}, model="mock/x", mock_responses=mock, store=store
        )
    assert mock.calls == 0


@pytest.mark.parametrize("write", ["check_writable", "transaction"])
def test_a_write_waiting_for_another_process_lock_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, write: str
) -> None:
    """A run, a resume or a prune behind an open sqlite3 shell's transaction waited up to a
    minute without a word; it says what it waits for once the wait is no longer short."""
    from eclflow.store.db import LOCK_NOTICE_MS

    path = tmp_path / "runs.db"
    open_store(f"sqlite:///{path}").close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(LOCK_NOTICE_MS / 1000 + 1, other.execute, ("ROLLBACK",))
    release.start()
    try:
        with open_store(f"sqlite:///{path}") as store, caplog.at_level("WARNING", "eclflow"):
            if write == "check_writable":
                store.check_writable()
            else:
                with store.transaction():
                    store.runs.create("r1", "wf", None, "src", "0" * 64, {})
            assert store.runs.exists("r1") == (write == "transaction")
    finally:
        release.join()
        other.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"waiting for the write lock of {path}, which another process holds (up to 57 s more)"
    ]


async def test_a_journal_write_waiting_for_another_process_lock_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An sqlite3 shell that takes the write lock while a run goes on: the journal's writes
    waited for it up to a minute without a word (only the run's creation said so)."""
    from eclflow.engine import runner
    from eclflow.llm import MockProvider
    from eclflow.store.db import LOCK_NOTICE_MS

    path = tmp_path / "runs.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    release = threading.Timer(LOCK_NOTICE_MS / 1000 + 1, other.execute, ("ROLLBACK",))

    def lock_once_started(event: str, payload: object) -> None:
        if event == "step_started" and release.ident is None:  # (the first step's start)
            other.execute("BEGIN IMMEDIATE")
            release.start()

    replies = {
        "generate": {"content": "v1", "delay": 0.3},
        "critique": {"decision": "pass", "critique": "ok"},
    }
    try:
        with open_store(f"sqlite:///{path}") as store, caplog.at_level("WARNING", "eclflow"):
            result = await runner.run(
                CRITIQUE_REVISE,
                {"topic": "t"},
                model="mock/x",
                mock_responses=MockProvider(replies),
                store=store,
                listener=lock_once_started,
            )
    finally:
        release.join()
        other.close()
    assert result.status == "completed", result.error
    assert [r.getMessage() for r in caplog.records] == [
        f"waiting for the write lock of {path}, which another process holds (up to 57 s more)"
    ]


def test_sqlite_errors_say_what_to_do(tmp_path: Path) -> None:
    from eclflow.store.db import _sqlite_hint

    (tmp_path / "dir.db").mkdir()
    with pytest.raises(PersistenceError) as e:
        open_store(f"sqlite:///{tmp_path / 'dir.db'}")
    assert str(e.value).endswith(f"; {tmp_path / 'dir.db'} is a directory: give the path of a file")
    assert "\n" not in str(e.value)
    db = str(tmp_path / "runs.db")
    locked = _sqlite_hint("database is locked", db) or ""
    assert "held the write lock for 60 s" in locked
    # (said before a run has begun, and by `runs` and `prune`, too: no run to resume there)
    assert locked.endswith("end it, then try again")
    assert "free space" in (_sqlite_hint("database or disk is full", db) or "")
    # (writable here: no advice to check what is fine, say when the process ran out of files)
    assert _sqlite_hint("attempt to write a readonly database", db) is None
    assert _sqlite_hint("no such table: x", db) is None


@pytest.mark.postgres
def test_a_postgres_lock_held_too_long_fails_with_what_to_do(pg_url: str, tmp_path: Path) -> None:
    """A psql left open in a transaction that holds a run's row made `prune` (and resume)
    wait for ever; a lock is waited for a minute by default, as on SQLite, then one line says
    what to do. A lock_timeout in the URL's own options is kept (here, to wait less)."""
    import psycopg2

    with open_store(pg_url) as store:
        assert store.db.execute_sql("SHOW lock_timeout").fetchone()[0] == "1min"
    url = f"{pg_url}&options=-c%20lock_timeout%3D300"
    env = {**os.environ, "ECLFLOW_DATABASE_URL": url}
    mock = ("--model", "mock/x", "--mock-responses", str(EXAMPLES / "mock/critique_revise.yaml"))
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE), "-i", "topic=x", *mock],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    schema = pg_url.rsplit("schema=", 1)[1]
    holder = psycopg2.connect(PG_BASE)  # (a transaction left open)
    try:
        with holder.cursor() as cur:
            cur.execute(f'SELECT id FROM "{schema}".workflows FOR UPDATE')
        r = subprocess.run(
            [sys.executable, "-m", "eclflow", "prune", "--older-than", "0", "--yes"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.close()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith(
        "another session held a lock too long (a psql left open in a transaction, say): "
        "end it, then try again"
    ), r.stderr


@pytest.mark.postgres
def test_the_postgres_lock_timeout_leaves_the_sessions_own(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minute of lock_timeout went in every connection's startup `options`, which PgBouncer
    refuses ('unsupported startup parameter: options': no connection at all, where a URL
    without ?schema= connected before) and which override PGOPTIONS. It is set once
    connected, only where the session has no lock_timeout of its own."""
    from eclflow.store.db import _database

    assert "options" not in parse_url(PG_BASE).params
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=300")
    db = _database(parse_url(PG_BASE))  # (connected only: nothing is created)
    try:
        assert db.execute_sql("SHOW lock_timeout").fetchone()[0] == "300ms"
    finally:
        db.close()


def test_a_postgres_database_that_does_not_exist_is_a_configuration_error() -> None:
    from eclflow.errors import ConfigError

    url = PG_BASE.rsplit("/", 1)[0] + "/eclflow_no_such_db"
    for create in (True, False):  # a run, and a command that only reads
        with pytest.raises(ConfigError, match="database 'eclflow_no_such_db' does not exist"):
            open_store(url, create=create)


def test_a_store_that_is_only_read_is_never_created(url: str, tmp_path: Path) -> None:
    """`create=False` (the history commands with a given --db): a mistyped URL is an error,
    not a new empty database (`runs --db typo.db` said "No runs." and left typo.db; on
    PostgreSQL it made eclflow's tables in the schema). A store that exists opens."""
    from eclflow.errors import StoreNotFound

    with pytest.raises(StoreNotFound, match=r"no eclflow database at .*check --db"):
        open_store(url, create=False)
    if url.startswith("sqlite"):
        assert not (tmp_path / "store.db").exists()
        (tmp_path / "store.db").write_bytes(b"")  # a file that is not a store is not made one
        with pytest.raises(StoreNotFound):
            open_store(url, create=False)
        with sqlite3.connect(tmp_path / "store.db") as conn:
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
        (tmp_path / "store.db").unlink()
    else:
        import psycopg2

        schema = url.split("schema=")[1]
        with psycopg2.connect(PG_BASE) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            assert cur.fetchone() is None
    open_store(url).close()
    with open_store(url, create=False) as store:
        assert store.runs.list() == []


def test_a_batch_of_many_rows_keeps_every_value_as_it_was_given(url: str) -> None:
    """Many rows of a kind in one transaction are written in bulk (on PostgreSQL by COPY, whose
    text format escapes tabs, line breaks and backslashes): every value reads back as given."""
    import asyncio

    from eclflow.store.writer import writer_for

    store = open_store(url)
    run_id = new_run(store)
    tricky = "tab\there\nline\r\nback\\slash \\N \\.\n\\.\nünï €"
    steps = {
        "generate": (tricky, {"text": tricky, "n": [1, 2.5, None, True]}, True, 1e-05),
        "critique#1": (None, "plain", False, 0.0),
        "revise#1": ("\\", {"\\": "\t"}, None, 12.75),
    }

    async def write() -> None:
        w = writer_for(store)
        for n, (key, (feedback, output, retryable, cost)) in enumerate(steps.items()):
            h = w.start(run_id, key.split("#")[0], key, n, 1, {"in": tricky}, "mock/x\ty")
            w.finish(
                h,
                False,
                state="succeeded",
                outcome="success",
                output=output,
                feedback=feedback,
                retryable=retryable,
                duration_ms=2_000_000_000,
                tokens_in=n,
                cost=cost,
                traces=[{"message": tricky}],
                prompt=[{"role": "user", "content": tricky}],
            )
        w.events(run_id, [(kind, tricky, {"why": tricky}) for kind in ("a\tb", "c\\d")])
        await w.drain()

    try:
        asyncio.run(write())
        rows = {r.key: r for r in store.steps.for_run(run_id)}
        assert sorted(rows) == sorted(steps)
        for n, (key, (feedback, output, retryable, cost)) in enumerate(steps.items()):
            row = rows[key]
            assert (row.feedback, row.output, row.retryable, row.cost) == (
                feedback,
                output,
                retryable,
                cost,
            )
            assert (row.input, row.model, row.duration_ms, row.tokens_in) == (
                {"in": tricky},
                "mock/x\ty",
                2_000_000_000,
                n,
            )
            assert row.traces == [{"message": tricky}]
            assert row.prompt == [{"role": "user", "content": tricky}]
        events = store.events.for_run(run_id)
        assert [(e.kind, e.step_id, e.fields) for e in events] == [
            ("a\tb", tricky, {"why": tricky}),
            ("c\\d", tricky, {"why": tricky}),
        ]
    finally:
        store.close()


@pytest.mark.postgres
def test_a_bulk_write_keeps_accented_text_whatever_the_connections_encoding(pg_url: str) -> None:
    """A connection whose client_encoding is not UTF8 (`?client_encoding=LATIN1` in the URL,
    PGCLIENTENCODING, a LATIN1 database) is sent text in that encoding: COPY's rows too, not
    UTF-8 bytes the server would read as LATIN1 ('é' stored as 'Ã©')."""
    import asyncio

    from eclflow.store.writer import writer_for

    store = open_store(f"{pg_url}&client_encoding=LATIN1")
    run_id = new_run(store)
    text = "café à Zürich"

    async def write() -> None:
        w = writer_for(store)
        for n, key in enumerate(("generate", "critique#1", "revise#1")):
            h = w.start(run_id, key.split("#")[0], key, n, 1, {"in": text}, "mock/x")
            w.finish(h, False, state="succeeded", outcome="success", output=text, feedback=text)
        w.events(run_id, [("note", key, {"why": text}) for key in ("a", "b")])
        await w.drain()

    try:
        asyncio.run(write())
        rows = store.steps.for_run(run_id)
        assert [(r.input, r.output, r.feedback) for r in rows] == [({"in": text}, text, text)] * 3
        events = store.events.for_run(run_id)
        assert [(e.step_id, e.fields) for e in events] == [
            ("a", {"why": text}),
            ("b", {"why": text}),
        ]
    finally:
        store.close()


# --- every value a run can produce, kept as it was --------------------------------------------

MB_TEXT = "long é😀\t\n" * 300_000  # 3 MB of text
ODD_TEXTS = [
    "nul \x00 inside",  # PostgreSQL's text refuses NUL
    "lone \ud800 surrogate and \udfff",  # no UTF-8 holds one
    "\x1e starts with the mark the journal escapes with",
    '\x1e"looks escaped"',
    "CR\r LF\n tab\t backslash\\ \\N \\. é 😀 日本",
    MB_TEXT + "\x00",
]


def _nested(depth: int) -> list[object]:
    """[[[…]]], `depth` levels."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


ODD_VALUES: list[object] = [
    {"score": float("nan"), "up": float("inf"), "down": -float("inf"), "ok": 1.5},
    [float("nan"), None, 0.0, -0.0, 1e308, 5e-324],
    {"\x1e": "NaN"},  # what a tag looks like, given as data
    {"\x1e": ["NaN"], "k": {"\x1e": {"\x1e": 1}}},
    {"big": 123456789012345678901234567890, "neg": -(2**64), "edge": 2**63},
    {"nul\x00key": "nul\x00value", "\ud800": ["\udc00"], "k\t\r\n\\": "v\t\r\n\\"},
    {"emoji 😀": "日本語 é", "deep": [[[[[[[[[[{"x": None}]]]]]]]]]]},
    _nested(300),  # deeper than orjson writes (255 levels)
    MB_TEXT,
    "",
    None,
]


def _same(a: object, b: object) -> bool:
    """Equal, NaN and -0.0 included, and of the same types all the way down."""
    return type(a) is type(b) and repr(a) == repr(b)


def _sorted(value: object) -> object:
    """`value` with each mapping's keys in sorted order."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


@pytest.mark.parametrize("many", [False, True], ids=["row by row", "many rows at once"])
def test_every_value_a_run_can_produce_reads_back_as_it_was(url: str, many: bool) -> None:
    """A model's reply, an error or an input may hold a NUL, a lone surrogate, NaN or Infinity,
    integers beyond 64 bits, thousands of levels, megabytes, or text that looks like the
    journal's own escapes: each is committed (on PostgreSQL too, whose text refuses NUL and whose
    JSON has no NaN) and reads back exactly, written one row at a time or many at once (COPY)."""
    import asyncio

    from eclflow.store.writer import writer_for

    store = open_store(url)
    runs = [new_run(store, input=v) for v in ODD_VALUES]
    pairs = list(zip(ODD_TEXTS * 2, ODD_VALUES, strict=False))

    async def write() -> None:
        w = writer_for(store)
        for n, (text, value) in enumerate(pairs):
            h = w.start(runs[0], "s", f"s#{n}", n, 1, value, "mock/x")
            done = w.finish(
                h,
                not many,
                state="succeeded",
                outcome="success",
                output=value,
                feedback=text,
                error=text,
                traces=[{"message": text, "value": value}],
                prompt=[{"role": "user", "content": text}],
            )
            if done is not None:
                await done
        w.events(runs[0], [("note", None, {"text": text, "value": v}) for text, v in pairs])
        if many:
            await w.drain()
        ends = [
            w.end_run(run_id, "failed", value, ODD_TEXTS[n % len(ODD_TEXTS)], "s", {"v": value})
            for n, (run_id, value) in enumerate(zip(runs, ODD_VALUES, strict=True))
        ]
        if many:
            await asyncio.gather(*ends)
        else:
            for end in ends:
                await end

    try:
        asyncio.run(write())
        rows = {r.key: r for r in store.steps.for_run(runs[0])}
        replayed = store.steps.succeeded_many([runs[0]])[runs[0]]
        for n, (text, value) in enumerate(pairs):
            for row in (rows[f"s#{n}"], replayed[f"s#{n}"]):
                assert _same(row.input, value) and _same(row.output, value), n
                assert _same(row.feedback, text) and _same(row.error, text), n
                assert _same(row.traces, [{"message": text, "value": value}]), n
                assert _same(row.prompt, [{"role": "user", "content": text}]), n
        events = store.events.for_run(runs[0])
        assert _same([e.fields for e in events], [{"text": t, "value": v} for t, v in pairs])
        for n, (run_id, value) in enumerate(zip(runs, ODD_VALUES, strict=True)):
            run = store.runs.get(run_id)
            assert (run.state, run.failed_step) == ("failed", "s")
            assert _same(run.input, value) and _same(run.output, value), n
            assert _same(run.error, ODD_TEXTS[n % len(ODD_TEXTS)]), n
            # (PostgreSQL merges metadata as jsonb, which orders keys its own way)
            assert _same(_sorted(run.metadata["v"]), _sorted(value)), n
            assert _same(store.runs.get_many([run_id])[run_id].output, value), n
    finally:
        store.close()


def test_odd_values_written_through_the_repositories_read_back_as_they_were(store: Store) -> None:
    """The repositories (not the journal writer) keep the same values the same way, and read
    back what the journal writer wrote."""
    for text, value in zip(ODD_TEXTS, ODD_VALUES, strict=False):
        run_id = new_run(store, input=value)
        handle = add_step(store, run_id, "generate", output=value, feedback=text, error=text)
        store.runs.update_state(run_id, "failed", error=text)
        store.runs.update_output(run_id, value)
        store.events.append(run_id, "note", {"value": value, "text": text})
        artifact = store.artifacts.create(run_id, "a", content=text, step_id="generate")
        row = store.steps.get(handle)
        assert _same(row.output, value) and _same(row.feedback, text) and _same(row.error, text)
        run = store.runs.get(run_id)
        assert _same(run.input, value) and _same(run.output, value) and _same(run.error, text)
        assert _same(store.events.for_run(run_id)[-1].fields, {"value": value, "text": text})
        assert _same(store.artifacts.get(artifact.id).content, text)


def test_text_an_earlier_version_wrote_starting_with_the_mark_reads_back_as_it_is(
    store: Store,
) -> None:
    """A journal an earlier eclflow wrote kept every text as it was: one that happens to begin
    with the escape mark (\\x1e) but is no escape read back as it is, not as an error that
    stopped `eclflow show` and resume (JSONDecodeError) nor as another value ("\\x1e123" as
    "123"). (One that is an escape, \\x1e and a JSON string, or in JSON \\x1eNaN, cannot be
    told from one.)"""
    run_id = new_run(store)
    handle = add_step(store, run_id, "generate")
    texts = ["\x1e not an escape", "\x1e123", "\x1eNaN", '\x1e"unclosed', '\x1e"1" 2']
    listed = [t for t in texts if t != "\x1eNaN"]  # (in JSON: NaN's tag)
    value = {"t": listed, "\x1e{}": "\x1e[1]", "n": "\x1enull"}
    p = store.db.param
    store.db.execute_sql(
        f"UPDATE step_executions SET feedback = {p}, error = {p}, output = {p} WHERE id = {p}",
        (texts[0], texts[1], json.dumps(value), handle),
    )
    store.db.execute_sql(
        f"UPDATE workflows SET error = {p}, input = {p} WHERE id = {p}",
        (texts[2], json.dumps(listed), run_id),
    )
    row = store.steps.get(handle)
    assert (row.feedback, row.error, row.output) == (texts[0], texts[1], value)
    run = store.runs.get(run_id)
    assert (run.error, run.input) == (texts[2], listed)


def test_a_value_the_database_refuses_fails_only_its_own_run_of_a_batch(url: str) -> None:
    """The runs of a batch share the journal's transactions: a value one run's row holds that
    the database refuses (a token count beyond the column's integers) fails that run, with
    what was refused and where, and not the others, whose writes are all committed."""
    import asyncio

    from eclflow.observe.events import EventRecorder
    from eclflow.store.writer import writer_for

    store = open_store(url)
    runs = [new_run(store) for _ in range(3)]
    too_big = 2**63  # (beyond BIGINT and INTEGER)

    async def write() -> list[BaseException | None]:
        w = writer_for(store)
        recorders = [EventRecorder(store, run_id) for run_id in runs]
        for recorder in recorders:  # (runs in one loop: their writes share transactions)
            w.follow(recorder)
        results = []
        for n, run_id in enumerate(runs):
            h = w.start(run_id, "critique", "critique#1", 1, 1, {"draft": "d"}, "mock/x")
            results.append(
                w.finish(
                    h,
                    state="succeeded",
                    outcome="success",
                    output={"n": n},
                    tokens_in=too_big if n == 1 else 5,
                )
            )
        w.events(runs[1], [("note", "critique", {"n": 1})])
        w.events(runs[2], [("note", "critique", {"n": 2})])
        errors = await asyncio.gather(*results, return_exceptions=True)
        for recorder in recorders:
            w.unfollow(recorder)
        await w.drain()
        return errors

    try:
        errors = asyncio.run(write())
        assert [type(e).__name__ for e in errors] == ["NoneType", "JournalRefused", "NoneType"]
        message = str(errors[1])
        assert message.startswith(
            f"Database error: the journal could not write run {runs[1]} (step critique#1), a value "
            "the database cannot hold: "
        )
        assert "\n" not in message
        assert [r.output for r in store.steps.for_run(runs[0])] == [{"n": 0}]
        assert [r.output for r in store.steps.for_run(runs[2])] == [{"n": 2}]
        assert store.steps.for_run(runs[1]) == []
        assert [e.fields for e in store.events.for_run(runs[2])] == [{"n": 2}]
    finally:
        store.close()


def test_a_run_whose_write_is_refused_does_not_take_the_definition_of_the_others(
    url: str,
) -> None:
    """Runs of one workflow created in one transaction share its definition's text, written
    once: when the run it was queued with has a value refused, the others' writes still hold
    that text (before, it was lost with the refused run's writes: the others could be neither
    resumed nor rerun)."""
    import asyncio

    from eclflow.store.writer import writer_for

    store = open_store(url)
    runs = [str(uuid.uuid4()) for _ in range(2)]
    text = f"eclflow: 1\nid: shared-{uuid.uuid4().hex}\n"
    sha = uuid.uuid4().hex * 2
    too_big = 2**63  # (beyond BIGINT and INTEGER)

    async def write() -> list[BaseException | None]:
        w = writer_for(store)
        for run_id in runs:
            w.create_run(
                run_id=run_id,
                definition_id="shared",
                definition_sha256=sha,
                definition=text,
                input={"topic": "t"},
            )
        results = []
        for n, run_id in enumerate(runs):
            h = w.start(run_id, "s", "s#1", 1, 1, {"draft": "d"}, "mock/x")
            tokens = too_big if n == 0 else 5
            results.append(w.finish(h, state="succeeded", outcome="success", tokens_in=tokens))
        return await asyncio.gather(*results, return_exceptions=True)

    try:
        errors = asyncio.run(write())
        assert [type(e).__name__ for e in errors] == ["JournalRefused", "NoneType"]
        # the refused run is kept without the step refused: it can end, and be resumed
        assert [r.definition for r in store.runs.get_many(runs).values()] == [text, text]
        assert store.steps.for_run(runs[0]) == []
    finally:
        store.close()


def test_a_feedback_or_error_that_is_not_text_is_kept_as_its_text(url: str) -> None:
    """A custom step type's feedback or error need not be text (42, a list of issues): the
    journal keeps it as its text, as before, rather than failing the write with
    AttributeError ('int' object has no attribute 'isascii')."""
    from eclflow.store.writer import writer_for

    store = open_store(url)
    run_id = new_run(store)

    async def write() -> None:
        w = writer_for(store)
        h = w.start(run_id, "critique", "critique#1", 1, 1, None, "mock/x")
        await w.finish(h, state="succeeded", outcome="needs_revision", feedback=42, error=["a"])

    try:
        asyncio.run(write())
        [row] = store.steps.for_run(run_id)
        assert (row.feedback, row.error) == ("42", "['a']")
    finally:
        store.close()


@pytest.mark.parametrize("many", [False, True], ids=["one", "bulk"])
def test_counters_beyond_32_bits_and_costs_read_back_as_given(url: str, many: bool) -> None:
    """Token counts, durations and costs are 64-bit on both databases, however the rows are
    written (one INSERT; COPY and a bulk UPDATE on PostgreSQL): a step reporting 2**31 tokens
    failed its run's write there ('integer out of range'), and a cost kept 7 digits."""
    from eclflow.store.writer import writer_for

    store = open_store(url)
    run_id = new_run(store)
    counters = {"tokens_in": 2**31, "tokens_out": 2**63 - 1, "duration_ms": 2**40}
    cost = 0.123456789012345
    done = ["a", "b", "c"] if many else ["a"]  # a start and its result: one new row each
    later = ["d", "e"] if many else ["d"]  # started before: their results update the rows
    for key in later:
        store.steps.start(run_id=run_id, step_id=key, key=key, iteration=0, attempt=1)

    async def write() -> None:
        w = writer_for(store)
        for key in done:
            h = w.start(run_id, key, key, 0, 1, None, "mock/x")
            w.finish(h, False, state="succeeded", outcome="success", cost=cost, **counters)
        for key in later:
            w.finish((run_id, key, 1), False, state="succeeded", cost=cost, **counters)
        await w.drain()

    try:
        asyncio.run(write())
        rows = store.steps.for_run(run_id)
        assert sorted(r.key for r in rows) == sorted(done + later)
        for row in rows:
            assert (row.tokens_in, row.tokens_out, row.duration_ms, row.cost) == (
                2**31,
                2**63 - 1,
                2**40,
                cost,
            )
    finally:
        store.close()


def test_a_number_beyond_64_bits_stops_its_run_saying_where_and_why(
    url: str, tmp_path: Path
) -> None:
    """A step whose result holds a number no database integer holds (a provider reporting
    2**63 tokens) stops its run with one line naming the run, the step and what was refused,
    and saying that resuming meets it again (not 'OverflowError: …', nor 'once the database
    is back'); the run is kept, without that step, and nothing is lost on close."""
    workflow = tmp_path / "w.yaml"
    workflow.write_text(
        "eclflow: 1\nid: big\nmodel: mock/x\nsteps:\n  - {id: a, type: llm, template: hi}\n"
    )
    script = tmp_path / "s.json"
    script.write_text('{"a": {"content": "x", "tokens": {"input": 9223372036854775808}}}')
    r = subprocess.run(
        [
            *(sys.executable, "-m", "eclflow", "run", str(workflow), "--db", url),
            *("--mock-responses", str(script)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    with open_store(url) as s:
        [run] = s.runs.list()
        assert s.steps.for_run(run.id) == []
    why = (  # (PostgreSQL's errors say which database)
        f"bigint out of range ({url})"
        if url.startswith("postgresql")
        else "Python int too large to convert to SQLite INTEGER"
    )
    assert r.stderr.splitlines()[-1] == (
        f"error: Database error: the journal could not write run {run.id} (step a), a value "
        f"the database cannot hold: {why}; run {run.id[:8]} stopped there, and `eclflow resume "
        f"{run.id[:8]} --db {shlex.quote(url)}` stops there again if the step gives the same "
        "value"
    )
    assert "lost on close" not in r.stderr


def test_closing_with_a_refused_write_keeps_the_others_and_says_no_more_was_lost(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes still queued when the store closes, one run's refused: the other run's are
    written, and the log says what was refused, not that every queued write was lost."""
    from eclflow.store.writer import writer_for

    store = open_store(url)
    runs = [new_run(store) for _ in range(2)]

    async def queue() -> None:  # (nothing awaited: all of it is written by close)
        w = writer_for(store)
        for n, run_id in enumerate(runs):
            h = w.start(run_id, "s", "s", 0, 1, None, "mock/x")
            w.finish(h, False, state="succeeded", tokens_in=2**63 if n == 0 else 5)

    asyncio.run(queue())
    with caplog.at_level("WARNING", logger="eclflow.store"):
        store.close()
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith(
        f"Database error: the journal could not write run {runs[0]} (step s), a value "
    )
    with open_store(url) as s:
        assert [r.tokens_in for r in s.steps.for_run(runs[1])] == [5]
        assert s.steps.for_run(runs[0]) == []


def test_names_with_a_nul_are_refused_where_given_or_kept_as_they_are(url: str) -> None:
    """A NUL, which PostgreSQL's text refuses, in a name: a model or run id given to `run`
    is refused before the run (ConfigError), a workflow's model by its checks (E113, as
    validate says it: see tests/test_spec.py); a workflow's `name:`, free text, is kept as it
    is. Each failed the run's first journal write on PostgreSQL."""
    import eclflow
    from eclflow.errors import WorkflowInvalid
    from eclflow.spec import load_text

    text = (
        'eclflow: 1\nid: nul\nname: "the \\0 name"\nsteps:\n  - {id: a, type: llm, template: hi}\n'
    )
    workflow = load_text(text)
    assert workflow.name == "the \x00 name"
    with open_store(url) as store:
        for args in ({"model": "mock/a\x00b"}, {"model": "mock/x", "run_id": "r\x00"}):
            with pytest.raises(ConfigError) as e:
                asyncio.run(eclflow.run(workflow, {}, mock_responses=["x"], store=store, **args))
            assert "has a control character (U+0000)" in str(e.value)
        assert store.runs.count() == 0
        with pytest.raises(WorkflowInvalid) as invalid:
            load_text(text.replace("steps:", 'model: "mock/a\\0b"\nsteps:'))
        assert str(invalid.value) == (
            '<string>:4:8: E113 model "mock/a\\u0000b" has a control character (U+0000) '
            '(remove it: "\\0", "\\n" or "\\t" in a double-quoted string is one)'
        )
        result = asyncio.run(
            eclflow.run(workflow, {}, model="mock/x", mock_responses=["x"], store=store)
        )
        assert result.status == "completed", result.error
        assert store.runs.get(result.run_id).definition_name == "the \x00 name"
        assert [r.definition_name for r in store.runs.list()] == ["the \x00 name"]


class _Odd:
    """A value JSON has no type for, whose text (default=str) holds a NUL."""

    def __str__(self) -> str:
        return "odd \x00 text"


def test_a_value_kept_as_its_text_and_empty_metadata_read_back_as_given(url: str) -> None:
    """An object written as its str() (default=str) whose text holds a NUL is escaped as
    other text is (PostgreSQL kept a \\u0000 in its json, which jsonb and ->> refuse), and a
    run whose metadata is {} and ends with {} keeps {} (PostgreSQL's merge of two empty maps
    was NULL)."""
    from eclflow.store.writer import writer_for

    store = open_store(url)
    run_id = new_run(store, metadata={})

    async def write() -> None:
        w = writer_for(store)
        h = w.start(run_id, "s", "s", 0, 1, {"in": _Odd()}, "mock/x")
        await w.finish(h, state="succeeded", output={"at": _Odd(), "n": [_Odd(), 2**70]})
        await w.end_run(run_id, "completed", {"o": _Odd()}, None, None, {})

    try:
        asyncio.run(write())
        [row] = store.steps.for_run(run_id)
        assert row.output == {"at": "odd \x00 text", "n": ["odd \x00 text", 2**70]}
        assert row.input == {"in": "odd \x00 text"}
        run = store.runs.get(run_id)
        assert (run.output, run.metadata) == ({"o": "odd \x00 text"}, {})
        if store.kind == "postgresql":  # (what jsonb and ->> refused)
            [(output, metadata)] = store.db.execute_sql(
                "SELECT s.output::jsonb ->> 'at', w.metadata::text FROM step_executions AS s "
                "JOIN workflows AS w ON w.id = s.run_id"
            ).fetchall()
            assert (output, metadata) == ('\x1e"odd \\u0000 text"', "{}")
    finally:
        store.close()


def test_tagging_in_the_text_writes_what_a_walk_of_the_value_writes() -> None:
    """`_tagged_text` (for values too deep to walk) gives the text `_tagged` gives, and
    `_untagged_text` undoes it, for every kind of value tagged."""
    from eclflow.store.models import MARK, _tagged, _tagged_text, _untagged_text

    value = {
        "nul \x00": ["a\x00b", float("nan"), float("inf"), -float("inf"), 1.5, "NaN"],
        MARK + "k": {"s": "\ud800 lone", "m": MARK + "NaN", "q": 'q"\\', "n": None},
        "plain": [True, 2**70, "Infinity", _Odd()],
    }
    text = json.dumps(value, default=str, ensure_ascii=False)
    walked = json.dumps(_tagged(value), default=str, ensure_ascii=False)
    assert _tagged_text(text) == walked
    assert _untagged_text(walked) == json.dumps(json.loads(text), default=str, ensure_ascii=False)


DEEP_WORKFLOW = """\
eclflow: 1
id: deep
model: mock/x
steps:
  - id: a
    type: llm
    template: hi
    output_schema: {type: object}
    retry: {max_attempts: 1}
"""


@pytest.mark.parametrize("depth", [500, 900])
def test_a_reply_nested_hundreds_deep_is_kept_or_a_clear_step_failure(
    url: str, tmp_path: Path, depth: int
) -> None:
    """An `llm` step's JSON reply nested hundreds deep: with a NUL in it, the journal kept it
    by a walk of the value, which overflowed the stack ('Error: maximum recursion depth
    exceeded', the run lost); now it is written and read back as it was. With half a
    surrogate pair, reading the reply overflowed ('Step a failed: RecursionError: …'): now
    the step fails saying the reply is nested too deeply."""
    workflow = tmp_path / "deep.yaml"
    workflow.write_text(DEEP_WORKFLOW)
    statuses = []
    for leaf in ("\\u0000", "\\ud800"):
        script = tmp_path / "s.json"
        reply = '{"a": ' * depth + f'"{leaf}"' + "}" * depth
        script.write_text(json.dumps({"a": {"content": reply}}))
        r = subprocess.run(
            [
                *(sys.executable, "-m", "eclflow", "run", str(workflow), "--db", url),
                *("--mock-responses", str(script), "--json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.stdout, r.stderr
        statuses.append(json.loads(r.stdout))
    kept, refused = statuses
    assert kept["status"] == "completed", kept
    assert (refused["status"], refused["error"]) == (
        "failed",
        "Step a failed: reply is not valid JSON: nested more than about "
        f"{sys.getrecursionlimit()} levels deep (the model may do better on retry)",
    )
    expected: object = "\x00"
    for _ in range(depth):
        expected = {"a": expected}
    with open_store(url) as s:
        [row] = s.steps.for_run(str(kept["run_id"]))
        assert row.output == expected


ODD_REPLY_WORKFLOW = """\
eclflow: 1
id: odd-values
model: mock/x
steps:
  - id: classify
    type: llm
    template: "Classify this"
    output_schema: {type: object}
  - id: not_a_number
    type: llm
    template: "NaN is not equal to itself"
  - id: a_number
    type: llm
    template: "a number"
  - id: final
    type: llm
    depends_on: [not_a_number, a_number]
    template: "the end"
transitions:
  - {type: conditional, from: classify, to: not_a_number,
     when: "steps.classify.output.score != steps.classify.output.score"}
  - {type: conditional, from: classify, to: a_number,
     when: "steps.classify.output.score == steps.classify.output.score"}
output:
  classified: "{{ steps.classify.output.s }}"
"""
ODD_REPLY = (
    '{"score": NaN, "far": -Infinity, "big": 9007199254740993, '
    '"s": "nul \\u0000 and \\u001e mark", "k\\t\\r\\n\\\\": "v\\t\\r\\n\\\\ é😀", '
    '"\\u001e": "NaN"}'
)


def _strict_json(text: str) -> object:
    """`text` read as JSON is written (Python's json reads NaN and Infinity, which it has not)."""
    import json

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_run_with_odd_values_completes_shows_them_and_resumes_on_the_same_path(
    url: str, tmp_path: Path
) -> None:
    """A model's JSON reply holding NaN, -Infinity, a big number and a NUL, and a critique's
    feedback with a NUL: the run is journaled on both databases (PostgreSQL's text refused the
    NUL, and the run failed), --json prints valid JSON (NaN as null), and resuming replays the
    reply as it was: NaN is still not equal to itself, so the run goes on down the same branch
    (the journal kept NaN as null, and the resumed run took the other)."""
    import json

    flow = tmp_path / "odd.yaml"
    flow.write_text(ODD_REPLY_WORKFLOW)

    def cli(*args: str, script: dict[str, object] | None = None) -> tuple[int, str]:
        """`eclflow ARGS`: its exit status and stdout (stderr with it when that is empty)."""
        more: list[str] = []
        if script is not None:
            replies = tmp_path / f"replies-{uuid.uuid4().hex[:8]}.json"
            replies.write_text(json.dumps(script))
            more = ["--mock-responses", str(replies)]
        r = subprocess.run(
            [sys.executable, "-m", "eclflow", *args, *more],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return r.returncode, r.stdout or r.stderr

    script = {
        "classify": ODD_REPLY,
        "not_a_number": "the NaN branch",
        "final": {"error": "auth_error"},  # fails: the run is resumed
    }
    code, out = cli("run", str(flow), "--db", url, "--json", script=script)
    first = _strict_json(out)
    assert code == 1 and isinstance(first, dict), out
    assert (first["status"], first["failed_step"]) == ("failed", "final")
    run_id = first["run_id"]
    classify = next(s for s in first["steps"] if s["key"] == "classify")
    assert classify["output"]["score"] is None and classify["output"]["far"] is None
    assert classify["output"]["big"] == 9007199254740993

    store = open_store(url)
    try:
        row = store.steps.succeeded(run_id)["classify"]
        assert _same(row.output, json.loads(ODD_REPLY))
        assert sorted(store.steps.succeeded(run_id)) == ["classify", "not_a_number"]
    finally:
        store.close()
    code, out = cli("show", run_id, "--db", url, "--json")
    shown = _strict_json(out)
    assert code == 0 and isinstance(shown, dict), out
    assert shown["input"] == {}

    # resumed: the same branch; a call of `a_number` would find no reply and fail the run
    code, out = cli("resume", run_id, "--db", url, "--json", script={"final": "done"})
    again = _strict_json(out)
    assert code == 0 and isinstance(again, dict), out
    assert again["status"] == "completed"
    assert [(s["key"], s["status"], s["replayed"]) for s in again["steps"]] == [
        ("classify", "succeeded", True),
        ("not_a_number", "succeeded", True),
        ("a_number", "skipped", False),
        ("final", "succeeded", False),
    ]
    assert again["output"] == {"classified": "nul \x00 and \x1e mark"}

    # a critique's feedback with a NUL (a text column: PostgreSQL's text refuses NUL)
    feedback = "add \x00 tide \x1e tables"
    critique = {"decision": "revise", "critique": "thin", "feedback": feedback}
    pass_ = {"decision": "pass", "critique": "ok"}
    code, out = cli(
        *("run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--model", "mock/x"),
        *("--db", url, "--json"),
        script={"generate": "v1", "critique#1": critique, "revise": "v2", "critique#2": pass_},
    )
    done = _strict_json(out)
    assert code == 0 and isinstance(done, dict), out
    assert done["status"] == "completed"
    code, out = cli("show", done["run_id"], "--db", url, "--json")
    shown = _strict_json(out)
    assert code == 0 and isinstance(shown, dict), out
    critique_row = next(e for e in shown["executions"] if e["key"] == "critique#1")
    assert critique_row["feedback"] == feedback


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://[::1/test", "bad PostgreSQL URL postgresql://[::1/test: Invalid IPv6 URL"),
        ("sqlite:///runs%00.db", "a NUL byte"),
        # (they failed as a run fails, exit 1: `permission denied to create
        # "pg_catalog.schema_version"`, `unacceptable schema name "pg_temp"`)
        (f"{PG_BASE}?schema=pg_catalog", "schema 'pg_catalog' in postgresql://"),
        (f"{PG_BASE}?schema=pg_temp", "is PostgreSQL's own"),
        (f"{PG_BASE}?schema=information_schema", "give a name of your own"),
        ("runs\x00.db", "a NUL byte"),
        ("~nosuchuser_eclflow/runs.db", "no such user as ~nosuchuser_eclflow"),
        ("x" * 5000, "File name too long"),
        ("sqlite:///" + "x" * 5000, "File name too long"),
    ],
)
def test_a_url_that_names_no_file_or_server_is_a_configuration_error(url: str, says: str) -> None:
    """Each was an internal error (ValueError: Invalid IPv6 URL, ValueError: embedded null
    byte, RuntimeError: Could not determine home directory, OSError: File name too long),
    exit 1; a URL that cannot be used is the user's to fix: a ConfigError, exit 2."""
    from eclflow.cli._common import exit_code_for

    with pytest.raises(ConfigError) as e:
        open_store(url, create=False)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert len(str(e.value)) < 300
    assert exit_code_for(e.value) == 2
