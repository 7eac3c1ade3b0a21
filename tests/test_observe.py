"""Logs with run/step correlation, the event timeline, spans, prices and budgets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE
from test_store import pg_url  # noqa: F401  (the fixture: a fresh PostgreSQL schema)

import eclflow
from eclflow.errors import BudgetExceeded, ConfigError
from eclflow.llm import CompletionRequest, Message, MockProvider
from eclflow.observe import tracing
from eclflow.observe.budget import BudgetGuard, price, prompt_tokens
from eclflow.observe.logs import LOGGER_NAME, bind, configure, resolve
from eclflow.spec import load
from eclflow.spec.model import Budget

PASS = json.dumps({"decision": "pass", "critique": "good"})
REVISE = json.dumps({"decision": "revise", "critique": "thin", "feedback": "add detail"})
ONE_REVISION = ["draft one", REVISE, "draft two", PASS]


@pytest.fixture
def workflow() -> Any:
    return load(CRITIQUE_REVISE)


@pytest.fixture
def log_stream() -> Any:
    stream = io.StringIO()
    configure("debug", "json", stream=stream)
    yield stream
    configure("warning", "compact")


def run(wf: Any, script: list[Any], **kw: Any) -> Any:
    return eclflow.run(wf, {"topic": "tides"}, model="mock/t", mock_responses=script, **kw)


def test_concurrent_runs_never_mix_their_logs(workflow: Any, log_stream: io.StringIO) -> None:
    async def both() -> list[Any]:
        return await asyncio.gather(run(workflow, ONE_REVISION), run(workflow, [*ONE_REVISION]))

    results = asyncio.run(both())
    assert [r.status for r in results] == ["completed", "completed"]
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert lines, "nothing was logged at info level"
    for r in results:
        story = [x for x in lines if x.get("run_id") == r.run_id]
        kinds = [x["kind"] for x in story]
        assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed"
        assert kinds.count("step_started") == 4
        assert kinds.count("llm_request_completed") == 4
        steps = [x["step_id"] for x in story if x["kind"] == "step_succeeded"]
        assert steps == ["generate", "critique", "revise", "critique"]
        for x in story:
            if x["kind"].startswith(("step_", "llm_")):
                assert x["step_id"] in ("generate", "critique", "revise")
            if x["kind"] in ("step_started", "llm_request_completed"):
                assert x["attempt"] == 1
            assert x["workflow_id"] == "critique-revise"
    # every line belongs to exactly one of the two runs
    assert {x["run_id"] for x in lines} == {r.run_id for r in results}


def test_a_runs_end_is_logged_and_recorded_with_its_totals(workflow: Any) -> None:
    """`workflow_completed`'s tokens and cost (sums over the steps) are computed only when
    the event goes somewhere: logs at info, or a run's recorder."""
    from eclflow.observe.events import EventRecorder, record_to, wanted

    configure("warning", "compact")
    assert not wanted("workflow_completed")
    assert wanted("workflow_failed")  # (an error: logged at warning)
    recorder = EventRecorder(None, "r")
    with record_to(recorder):
        assert wanted("workflow_completed")
    stream = io.StringIO()
    configure("info", "json", stream=stream)
    try:
        assert wanted("workflow_completed")
        result = asyncio.run(run(workflow, ONE_REVISION))
    finally:
        configure("warning", "compact")
    ends = [json.loads(x) for x in stream.getvalue().splitlines()]
    ends = [x for x in ends if x.get("kind") == "workflow_completed"]
    assert [(x["tokens"], x["cost"]) for x in ends] == [(result.tokens, result.cost)]
    assert result.tokens > 0


def test_retries_and_failures_are_logged_with_their_fields(
    workflow: Any, log_stream: io.StringIO
) -> None:
    script = [{"error": "rate_limit"}, "draft", "not json at all", PASS]
    r = asyncio.run(run(workflow, script))
    assert r.status == "completed", r.error
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    retries = [x for x in lines if x["kind"] == "retrying"]
    assert [(x["step_id"], x["attempt"], x["max_attempts"]) for x in retries] == [
        ("generate", 2, 3),
        ("critique", 2, 3),
    ]
    assert all(x["level"] == "warning" and x["error"] for x in retries)
    after = [x for x in lines if x["kind"] == "step_succeeded_after_retry"]
    assert [(x["step_id"], x["attempts"]) for x in after] == [("generate", 2), ("critique", 2)]
    failed_calls = [x for x in lines if x["kind"] == "llm_request_failed"]
    assert len(failed_calls) == 1 and "duration_ms" in failed_calls[0]


def test_a_reply_cut_off_at_max_tokens_is_logged_and_kept_with_the_run(
    workflow: Any, log_stream: io.StringIO, tmp_path: Any
) -> None:
    """A draft cut at max_tokens reads as whole; nothing said so."""
    from eclflow.store import open_store

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    cut_at = {"input": 50, "output": 300}  # generate's max_tokens
    script = {"generate": {"content": "A draft that stops mid", "finish_reason": "length",
                           "tokens": cut_at},
              "critique": PASS}  # fmt: skip
    r = asyncio.run(run(workflow, script, db=db))  # type: ignore[arg-type]  (a mapping script)
    assert r.status == "completed", r.error
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    [cut] = [x for x in lines if x["kind"] == "llm_reply_truncated"]
    assert (cut["level"], cut["step_id"], cut["max_tokens"]) == ("warning", "generate", 300)
    assert cut["hint"] == "raise steps.generate.config.max_tokens"
    with open_store(db) as store:
        kinds = [e.kind for e in store.events.for_run(r.run_id)]
    assert kinds.count("llm_reply_truncated") == 1
    # stopped short of max_tokens: the prompt filled the context window (llama.cpp lowers
    # max_tokens to what is left of it), and raising max_tokens cannot help
    script["generate"]["tokens"] = {"input": 4000, "output": 84}
    log_stream.seek(0)
    log_stream.truncate()
    r = asyncio.run(run(workflow, script, db=db))  # type: ignore[arg-type]
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines() if line.strip()]
    [cut] = [x for x in lines if x["kind"].startswith("llm_") and "hint" in x]
    assert (cut["kind"], cut["tokens_output"]) == ("llm_context_full", 84)
    assert cut["hint"] == (
        "shorten the prompt of step 'generate', or use a model with a longer context"
    )


def test_a_cancelled_model_call_is_not_logged_as_a_failed_one(
    workflow: Any, log_stream: io.StringIO
) -> None:
    """Ctrl-C or a stopped batch cancels the calls in flight: they did not fail."""

    async def cancelled() -> None:
        task = asyncio.create_task(run(workflow, [{"content": "draft", "delay": 30}]))
        while "llm_request_started" not in log_stream.getvalue():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    kinds = [json.loads(line)["kind"] for line in log_stream.getvalue().splitlines()]
    assert "llm_request_started" in kinds and "llm_request_failed" not in kinds


def test_the_timeline_says_which_steps_were_skipped_revised_and_replayed(
    workflow: Any, tmp_path: Any
) -> None:
    """`eclflow logs` of a run with a skipped branch showed nothing for that step; a revision
    was not in it; a resumed run's timeline started over as if nothing had been done before
    (the replayed steps were missing). The events were declared and never emitted."""
    from conftest import EXAMPLES

    from eclflow.store import open_store

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    routed = asyncio.run(
        eclflow.run(
            EXAMPLES / "conditional_routing.yaml",
            {"question": "why"},
            model="mock/t",
            mock_responses=EXAMPLES / "mock" / "conditional_routing.yaml",
            db=db,
        )
    )
    assert routed.status == "completed", routed.error
    stopped = asyncio.run(run(workflow, ONE_REVISION, db=db, budget={"max_calls": 3}))
    assert stopped.status == "failed"
    done = asyncio.run(eclflow.resume(stopped.run_id, db=db, mock_responses=[PASS],
                                      budget={"max_calls": 4}))  # fmt: skip
    assert done.status == "completed", done.error
    with open_store(db) as store:
        routed_events = [(e.kind, e.step_id) for e in store.events.for_run(routed.run_id)]
        events = [(e.kind, e.step_id, e.fields) for e in store.events.for_run(done.run_id)]
    assert ("step_skipped", "long_answer") in routed_events
    [revision, _again] = [f for k, _, f in events if k == "loop_revision"]  # (one a process)
    assert (revision["validator"], revision["iteration"]) == ("critique", 1)
    kinds = [k for k, _, _ in events]
    resumed = kinds.index("workflow_resumed")
    # a failed run's resume: nothing was interrupted, and its start says what it continues
    assert "workflow_interrupted" not in kinds and kinds.count("workflow_started") == 1
    assert (events[resumed][2]["resume"], events[resumed][2]["previous_state"]) == (1, "failed")
    replayed = [(s, f["key"]) for k, s, f in events[resumed:] if k == "step_replayed"]
    assert replayed == [("generate", "generate"), ("critique", "critique#1"),
                        ("revise", "revise#1")]  # fmt: skip


def test_prompts_only_at_debug_and_secrets_masked(tmp_path: Path) -> None:
    wf = eclflow.load(CRITIQUE_REVISE)
    replies = {"generate": "Pools of sea.", "critique": {"decision": "pass", "critique": "Good."}}

    def logged(level: str) -> list[dict[str, Any]]:
        stream = io.StringIO()
        configure(level, "json", stream=stream)
        try:
            result = asyncio.run(
                eclflow.run(
                    wf,
                    {"topic": "tide pools"},
                    model="mock/x",
                    mock_responses=replies,
                    db=tmp_path / f"{level}.db",
                )
            )
        finally:
            configure("warning", "compact")
        assert result.status == "completed"
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    at_debug = logged("debug")
    (prompt, _) = [e for e in at_debug if e.get("kind") == "llm_prompt"]
    assert prompt["step_id"] == "generate" and "tide pools" in prompt["messages"][-1]["content"]
    replies_logged = [e["content"] for e in at_debug if e.get("kind") == "llm_reply"]
    assert replies_logged == ["Pools of sea.", '{"decision": "pass", "critique": "Good."}']
    assert not [e for e in logged("info") if "messages" in e or "content" in e]

    stream = io.StringIO()
    configure("debug", "json", stream=stream)
    try:
        log = logging.getLogger(f"{LOGGER_NAME}.test")
        with bind(run_id="r1"):
            log.info("hello", extra={"api_key": "sk-secret", "n": 1})
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert line["api_key"] == "***" and line["n"] == 1 and line["run_id"] == "r1"
        assert "sk-secret" not in stream.getvalue()
    finally:
        configure("warning", "compact")


def test_configure_twice_keeps_one_handler_and_respects_env(monkeypatch: Any) -> None:
    configure("info", "json")
    configure("info", "compact")
    ours = [
        h
        for h in logging.getLogger(LOGGER_NAME).handlers
        if type(h).__module__ == "eclflow.observe.logs"
    ]
    assert len(ours) == 1
    monkeypatch.setenv("ECLFLOW_LOG_LEVEL", "debug")
    monkeypatch.setenv("ECLFLOW_LOG_FORMAT", "json")
    assert resolve() == ("debug", "json")
    assert resolve("error", None) == ("error", "json")
    monkeypatch.setenv("ECLFLOW_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="log format 'xml'"):
        resolve()
    configure("warning", "compact")


def test_span_tree_of_a_one_revision_run(workflow: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        r = asyncio.run(run(workflow, ONE_REVISION))
    finally:
        tracing.use_provider(None)
        tracing.reset()
    assert r.status == "completed"
    spans = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert {k: len(v) for k, v in by_name.items()} == {"workflow": 1, "step": 4, "llm_call": 4}
    root = by_name["workflow"][0]
    assert root.parent is None
    assert root.attributes["eclflow.run_id"] == r.run_id
    step_ids = {s.context.span_id for s in by_name["step"]}
    assert all(s.parent.span_id == root.context.span_id for s in by_name["step"])
    assert [
        s.attributes["eclflow.step_id"] for s in sorted(by_name["step"], key=lambda s: s.start_time)
    ] == [
        "generate",
        "critique",
        "revise",
        "critique",
    ]
    for call in by_name["llm_call"]:
        assert call.parent.span_id in step_ids
        assert call.attributes["gen_ai.request.model"] == "mock/t"
        assert call.attributes["gen_ai.usage.input_tokens"] > 0
        assert call.attributes["gen_ai.usage.output_tokens"] > 0
        assert call.attributes["eclflow.run_id"] == r.run_id


def test_a_resumed_step_s_span_counts_the_attempts_as_the_journal_does(tmp_path: Path) -> None:
    """`eclflow.attempts` of a step's span counted this execution's attempts: a step that
    failed, then succeeded on its resume, said 1 where its line, `--json` and `show` say 2."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from eclflow.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        failed = asyncio.run(
            eclflow.run(
                CRITIQUE_REVISE, {"topic": "x"}, model="mock/x", store=store,
                mock_responses={"generate": {"error": "auth_error"}},
            )
        )  # fmt: skip
        assert failed.status == "failed"
        exporter.clear()
        done = asyncio.run(
            eclflow.resume(
                failed.run_id, store=store,
                mock_responses={
                    "generate": "draft",
                    "critique": {"content": {"decision": "pass", "critique": "ok"}},
                },
            )
        )  # fmt: skip
    finally:
        tracing.use_provider(None)
        tracing.reset()
        store.close()
    assert done.status == "completed", done.error
    steps = [s for s in exporter.get_finished_spans() if s.name == "step"]
    spans = {s.attributes["eclflow.key"]: s.attributes["eclflow.attempts"] for s in steps}
    assert spans == {s.key: s.attempts for s in done.steps} == {"generate": 2, "critique#1": 1}


def test_no_tracing_without_the_switch(monkeypatch: Any) -> None:
    monkeypatch.delenv("ECLFLOW_OTEL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.reset()
    assert tracing.enabled() is False
    with tracing.span("x", a=1) as s:
        assert s is None
    tracing.reset()


def test_asking_for_spans_without_opentelemetry_says_so(monkeypatch: Any, caplog: Any) -> None:
    import sys

    monkeypatch.setenv("ECLFLOW_OTEL", "1")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the extra were missing
    tracing.reset()
    try:
        with caplog.at_level("WARNING", logger="eclflow.observe"):
            assert tracing.enabled() is False
        (record,) = caplog.records
        assert "OpenTelemetry is not installed" in record.getMessage()
        assert "eclflow[otel]" in record.getMessage()
    finally:
        tracing.reset()


def test_asking_for_spans_without_an_exporter_says_so(monkeypatch: Any, caplog: Any) -> None:
    """With OpenTelemetry's SDK but no OTLP exporter (as `eclflow[otel]` not installed), spans
    were made for every step and sent nowhere, and nothing said so."""
    import sys

    monkeypatch.setenv("ECLFLOW_OTEL", "1")
    for name in ("http", "grpc"):  # as if the otel extra's exporter were missing
        monkeypatch.setitem(
            sys.modules, f"opentelemetry.exporter.otlp.proto.{name}.trace_exporter", None
        )
    tracing.reset()
    try:
        with caplog.at_level("WARNING", logger="eclflow.observe"):
            assert tracing.enabled() is False
        (record,) = caplog.records
        assert "no OTLP exporter is installed" in record.getMessage()
        assert "eclflow[otel]" in record.getMessage()
    finally:
        tracing.reset()


def _traced_run(tmp_path: Path, **env: str) -> Any:
    """`eclflow run --json` of the bundled workflow on a mock model, spans asked for with
    ECLFLOW_OTEL=1 and `env` (a real process: its exit sends the last spans)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "script.yaml"
    script.write_text('generate: "v1"\ncritique: {content: {decision: pass, critique: ok}}\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ECLFLOW_OTEL"))}
    return subprocess.run(
        [sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE), "-i", "topic=x",
         "-m", "mock/x", "--mock-responses", str(script), "--no-journal", "--json"],
        capture_output=True, text=True, timeout=60,
        env={**clean, "ECLFLOW_OTEL": "1", **env},
    )  # fmt: skip


@pytest.mark.parametrize("collector", ["none listening", "never answering"])
def test_a_collector_out_of_reach_is_said_once_and_does_not_hold_the_exit(
    tmp_path: Path, collector: str
) -> None:
    """With no collector at the OTLP endpoint a run's exit waited about 8 s (10 s for one that
    takes connections and never answers), OpenTelemetry's exporter writing a "Transient error
    … retrying in 1.08s" line at each attempt. It is now one line, and the exit waits at most
    EXIT_WAIT seconds."""
    import socket

    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if collector == "never answering":
            listener.listen(8)  # (connections are made by the kernel; nothing reads them)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        r = _traced_run(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    why = "could not be reached" if collector == "none listening" else "did not answer within 2s"
    assert [line.split(" WARNING ", 1)[-1] for line in r.stderr.splitlines()] == [
        f"the OpenTelemetry collector at {endpoint}/v1/traces {why}: spans are not sent "
        "(OTEL_EXPORTER_OTLP_ENDPOINT says where it is)"
    ]


def test_otel_traces_exporter_console_writes_the_spans_to_stderr(tmp_path: Path) -> None:
    """`OTEL_TRACES_EXPORTER=console` was ignored (spans went to OTLP, to no collector). The
    spans are written to stderr: stdout still carries the run's result alone."""
    r = _traced_run(tmp_path, OTEL_TRACES_EXPORTER="console")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"
    names = [line.strip() for line in r.stderr.splitlines() if line.startswith('    "name": ')]
    assert sorted(names) == sorted(
        ['"name": "workflow",'] + ['"name": "step",'] * 2 + ['"name": "llm_call",'] * 2
    )


@pytest.mark.parametrize(
    "env", [{"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_SDK_DISABLED": "true"}], ids=str
)
def test_otel_traces_exporter_none_turns_spans_off(monkeypatch: Any, env: dict[str, str]) -> None:
    """OpenTelemetry's own switches for "no spans" were ignored when ECLFLOW_OTEL was set."""
    monkeypatch.setenv("ECLFLOW_OTEL", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracing.reset()
    try:
        assert tracing.enabled() is False
    finally:
        tracing.reset()


def test_an_exporter_name_eclflow_lacks_is_said(monkeypatch: Any, caplog: Any) -> None:
    monkeypatch.setenv("ECLFLOW_OTEL", "1")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    tracing.reset()
    try:
        with caplog.at_level("WARNING", logger="eclflow.observe"):
            assert tracing.enabled() is False
        assert [r.getMessage() for r in caplog.records] == [
            "OTEL_TRACES_EXPORTER names 'zipkin', which eclflow has no exporter for (it knows "
            "otlp, console and none)"
        ]
    finally:
        tracing.reset()


def test_prices_come_from_the_bundled_map() -> None:
    p = price("openai/gpt-4o-mini")
    assert p is not None and p.input > 0 and p.output > p.input
    assert price("local/smollm2") == price("mock/x")
    assert price("mock/x") is not None and price("mock/x").input == 0.0
    assert price("nonexistent-provider/no-model") is None


def _request(model: str = "mock/t", max_tokens: int = 100) -> CompletionRequest:
    return CompletionRequest(model, (Message("user", "word " * 40),), max_tokens=max_tokens)


def test_counting_a_prompt_never_reaches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm picks a Hugging Face tokenizer for `…llama-3…` names and downloads it (23 s
    offline, inside the step's deadline); a budget's count uses the bundled encoding."""
    import socket

    tried: list[Any] = []

    def no_network(self: socket.socket, address: Any) -> None:
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: no_network(None, a))  # type: ignore[arg-type]
    messages = [Message("system", "Be brief."), Message("user", "Why do tides happen? " * 20)]
    for model in (
        "openai/meta-llama/Meta-Llama-3-8B-Instruct",
        "huggingface/meta-llama/Llama-2-7b",
    ):
        n = prompt_tokens(model, messages)
        assert 80 < n < 400, n
    assert tried == []


def test_a_dollar_budget_on_a_model_without_a_price_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, workflow: Any
) -> None:
    """It started, failed at the first call with budget_exceeded, and advised a resume with
    a larger budget, which failed the same way."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdefghij")
    with pytest.raises(ConfigError, match=r"price of model 'openai/acme-llama' is unknown.*"
                       r"--budget-tokens"):  # fmt: skip
        asyncio.run(
            eclflow.run(workflow, {"topic": "t"}, model="openai/acme-llama", budget={"max_usd": 1})
        )


def test_a_guard_of_ones_own_beside_a_budget_gives_failed_calls_reservations_back() -> None:
    """With `guard=` and a budget, a failed call's worst case stayed reserved (the executor
    found no `release` on the combined guard), and so did a call the own guard refused after
    the budget had reserved it: later calls were refused by a budget nothing had spent."""
    from eclflow.engine.runner import _run
    from eclflow.errors import ServerError
    from eclflow.spec import load_text

    wf = load_text(
        "eclflow: 1\nid: g\nmodel: mock/t\nsteps:\n  - {id: a, type: llm, template: hi, "
        "config: {max_tokens: 100}, retry: {max_attempts: 4, initial_delay: 1ms}}\n"
    )
    seen: list[str] = []
    released: list[Any] = []

    class Guard:
        async def __call__(self, step_id: str, request: Any) -> None:
            seen.append(step_id)
            if len(seen) == 1:
                raise ServerError("refused by my own guard")

        def release(self, request: Any) -> None:  # told of a call that failed, as without
            released.append(request)  # a budget

    script = [{"error": "server_error"}, {"error": "server_error"}, "fine"]
    r = asyncio.run(_run(wf, {}, mock_responses=script, guard=Guard(), budget={"max_tokens": 250}))
    assert r.status == "completed", r.error
    assert r.steps[0].attempts == 4 and len(seen) == 4 and len(released) == 2


def test_budget_guard_refuses_before_the_call() -> None:
    from eclflow.llm import CompletionResponse, TokenUsage

    guard = BudgetGuard(max_calls=2)
    for _ in range(2):
        req = _request()
        asyncio.run(guard("s", req))
        guard.record("s", req, CompletionResponse("x", TokenUsage(10, 5)), 0.0)
    with pytest.raises(BudgetExceeded, match=r"budget_exceeded: .*limit of 2 calls"):
        asyncio.run(guard("s", _request()))
    tokens = BudgetGuard(max_tokens=120)
    assert prompt_tokens("mock/t", _request().messages) > 20
    with pytest.raises(BudgetExceeded, match="max_tokens"):
        asyncio.run(tokens("s", _request(max_tokens=100)))
    usd = BudgetGuard(max_usd=0.0001)
    with pytest.raises(BudgetExceeded, match=r"\$"):
        asyncio.run(usd("s", _request("openai/gpt-4o-mini", max_tokens=1000)))
    with pytest.raises(BudgetExceeded, match=r"price .* is unknown"):
        asyncio.run(usd("s", _request("nonexistent-provider/x")))


def test_budget_ends_the_run_before_the_third_call(workflow: Any, tmp_path: Any) -> None:
    log = tmp_path / "calls.jsonl"
    import os

    os.environ["ECLFLOW_MOCK_LOG"] = str(log)
    try:
        r = asyncio.run(run(workflow, ONE_REVISION, budget=Budget(max_calls=2)))
    finally:
        del os.environ["ECLFLOW_MOCK_LOG"]
    assert r.status == "failed"
    assert "budget_exceeded" in (r.error or "")
    assert r.failed_step == "revise"
    assert len(log.read_text().splitlines()) == 2
    # what was done is kept: the draft and the critique
    assert [s.key for s in r.steps if s.status == "succeeded"] == ["generate", "critique#1"]


PARALLEL = """\
eclflow: 1
id: par
model: mock/t
steps:
  - {id: a, type: llm, template: "say a", config: {max_tokens: 100}}
  - {id: b, type: llm, template: "say b", config: {max_tokens: 100}}
  - {id: c, type: llm, template: "say c", config: {max_tokens: 100}, timeout: 1s,
     retry: {max_attempts: 1}}
  - {id: d, type: llm, depends_on: [a, b, c], template: "join", config: {max_tokens: 100}}
"""


def test_concurrent_branches_wait_for_the_calls_in_flight_instead_of_failing_the_run() -> None:
    """Three branches at once, each call at most ~105 tokens, 20 used: with a 250-token budget
    the third was refused at once for the other two's worst case, and the run failed having
    spent 40 tokens (a resume with the same budget then finished it). Now it waits for them;
    the wait does not count against its 1 s timeout. A limit that even the calls' real use
    leaves no room for still fails the run, once they have ended."""
    from eclflow.spec import load_text

    wf = load_text(PARALLEL)
    slow = {"content": "x", "tokens": {"input": 10, "output": 10}, "delay": 2.5}
    script = {"a": slow, "b": slow, "c": {"content": "c", "tokens": {"input": 10, "output": 10}},
              "d": {"content": "d", "tokens": {"input": 10, "output": 10}}}  # fmt: skip
    r = asyncio.run(eclflow.run(wf, {}, mock_responses=script, budget={"max_tokens": 250}))
    assert r.status == "completed", r.error
    assert r.tokens == 80 and [s.attempts for s in r.steps if s.step_id == "c"] == [1]
    calls = asyncio.run(eclflow.run(wf, {}, mock_responses=script, budget={"max_calls": 2}))
    assert calls.status == "failed"
    assert "would make model call 3, over the limit of 2 calls" in (calls.error or "")
    assert sorted(s.step_id for s in calls.steps if s.status == "succeeded") == ["a", "b"]


def test_a_call_waiting_for_its_own_steps_call_leaves_that_calls_timeout_running() -> None:
    """A step type of one's own making two calls at once, the second waiting in the budget for
    the first: the wait stopped the step's clock, and with it the timeout of the first call,
    in flight: a call that hung held the step (and the run) far past its 2 s timeout. The
    step's clock runs while one of its calls is in flight, and the step times out."""
    from eclflow.spec import load_text

    class Pair(eclflow.Step):
        type_name = "pair_for_budget"
        uses_model = True

        async def execute(self, ctx: Any, input: Any) -> Any:
            one, two = await asyncio.gather(
                ctx.complete([{"role": "user", "content": "one"}], max_tokens=100),
                ctx.complete([{"role": "user", "content": "two"}], max_tokens=100),
            )
            return eclflow.StepResult.success({"text": one.content + two.content})

    eclflow.register(Pair)
    wf = load_text(
        "eclflow: 1\nid: pair\nmodel: mock/t\nsteps:\n"
        "  - {id: a, type: pair_for_budget, timeout: 2s, retry: {max_attempts: 1}}\n"
    )
    hung = {"content": "x", "tokens": {"input": 10, "output": 10}, "delay": 30}
    script = [hung, {"content": "y", "tokens": {"input": 10, "output": 10}}]
    r = asyncio.run(eclflow.run(wf, {}, mock_responses=script, budget={"max_tokens": 150}))
    assert r.status == "failed"
    assert "timed out" in (r.error or ""), r.error


def test_a_resumed_run_counts_every_call_a_step_of_ones_own_made(tmp_path: Any) -> None:
    """A step type that calls the model twice an attempt: the first run made 4 calls under
    `max_calls: 4`; the resume counted its journal as 2 (one a step) and, told `max_calls: 5`,
    made 2 more calls, 6 in all. Now it makes one (the fifth) and stops before the sixth."""
    from eclflow.spec import load_text

    class Twice(eclflow.Step):
        type_name = "twice_for_budget"
        uses_model = True

        async def execute(self, ctx: Any, input: Any) -> Any:
            one = await ctx.complete([{"role": "user", "content": "one"}], max_tokens=10)
            two = await ctx.complete([{"role": "user", "content": "two"}], max_tokens=10)
            return eclflow.StepResult.success({"text": one.content + two.content})

    eclflow.register(Twice)
    wf = load_text(
        "eclflow: 1\nid: twice\nmodel: mock/t\nsteps:\n  - {id: a, type: twice_for_budget}\n"
        "  - {id: b, type: twice_for_budget, depends_on: [a]}\n"
        "  - {id: c, type: twice_for_budget, depends_on: [b]}\n"
    )
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = asyncio.run(eclflow.run(wf, {}, db=db, mock_responses=["x"] * 4,
                                    budget={"max_calls": 4}))  # fmt: skip
    assert first.status == "failed" and first.failed_step == "c"
    assert "would make model call 5, over the limit of 4" in (first.error or "")
    replies = MockProvider(["y"] * 4)
    again = asyncio.run(eclflow.resume(first.run_id, db=db, mock_responses=replies,
                                       budget={"max_calls": 5}))  # fmt: skip
    assert again.status == "failed"
    assert "would make model call 6, over the limit of 5" in (again.error or "")
    assert len(replies.requests) == 1


def test_validate_prices_the_worst_case_when_the_price_is_known() -> None:
    import subprocess
    import sys

    def report(*extra: str) -> dict[str, Any]:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "eclflow",
                "validate",
                "--format",
                "json",
                str(CRITIQUE_REVISE),
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["files"][0]

    assert report()["worst_case_usd"] == 0.0  # local/smollm2 is free
    priced = report("--model", "openai/gpt-4o-mini")["worst_case_usd"]
    assert 0 < priced < 1
    assert report("--model", "nonexistent-provider/x")["worst_case_usd"] is None


# --- through the command line, with the journal -------------------------------------------------

KEYED = """\
generate: {content: "draft one", delay: %(d)s}
critique#1: {content: {decision: revise, critique: thin, feedback: more}, delay: %(d)s}
revise#1: {content: "draft two", delay: %(d)s}
critique#2: {content: {decision: pass, critique: ok}, delay: %(d)s}
"""


def _cli(tmp_path: Any, *args: str, delay: float = 0.0, wait: bool = True) -> Any:
    import os
    import subprocess
    import sys

    script = tmp_path / "script.yaml"
    script.write_text(KEYED % {"d": delay})
    env = {
        **os.environ,
        "ECLFLOW_MOCK_LOG": str(tmp_path / "calls.jsonl"),
        "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
    }
    cmd = [sys.executable, "-m", "eclflow", *args]
    if args and args[0] in ("run", "resume"):
        cmd += ["--model", "mock/t", "--mock-responses", str(script)]
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_budget_stops_a_run_and_resume_with_a_higher_budget_finishes_it(tmp_path: Any) -> None:
    r = _cli(
        tmp_path, "run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--budget-calls", "2", "--json"
    )
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and "budget_exceeded" in out["error"]
    calls = tmp_path / "calls.jsonl"
    assert len(calls.read_text().splitlines()) == 2
    # without --json, the last lines say why it stopped and how to go on
    r1 = _cli(tmp_path, "status", out["run_id"])
    assert "budget_exceeded" in r1.stdout
    quiet = _cli(tmp_path, "run", str(CRITIQUE_REVISE), "-i", "topic=t", "--budget-calls", "1")
    *_, error, hint = quiet.stderr.strip().splitlines()
    assert error.startswith("error: Step critique failed: budget_exceeded: step 'critique'")
    run_id = quiet.stderr.split("· run ")[1][:8]
    assert hint == f"`eclflow resume {run_id} --budget-calls N` continues it with a larger budget"
    r2 = _cli(tmp_path, "resume", out["run_id"], "--budget-calls", "10", "--json")
    assert r2.returncode == 0, r2.stderr
    done = json.loads(r2.stdout)
    assert done["status"] == "completed" and done["output"]["final_text"] == "draft two"
    keys = [json.loads(line)["key"] for line in calls.read_text().splitlines()]
    # (the second run's one call, generate, in between)
    assert keys == ["generate", "critique#1", "generate", "revise#1", "critique#2"]
    status = _cli(tmp_path, "status", out["run_id"], "-o", "json")
    assert status.returncode == 0, status.stderr
    # once more, now that it has completed: its result again, and nothing is called
    r3 = _cli(tmp_path, "resume", out["run_id"][:8])
    assert r3.returncode == 0, r3.stderr
    assert "had already completed: its recorded result (nothing was run)" in r3.stderr
    assert "final_text: draft two" in r3.stdout and "completed · run" in r3.stderr
    assert len(calls.read_text().splitlines()) == 5
    # a --db given on the command line is part of the command that goes on (without it,
    # resume would look in the default database and find no such run)
    other = tmp_path / "other dir"
    other.mkdir()
    db = f"sqlite:///{other / 'runs.db'}"
    given = _cli(tmp_path, "run", str(CRITIQUE_REVISE), "-i", "topic=t", "--budget-calls", "1",
                 "--db", db)  # fmt: skip
    run_id = given.stderr.split("· run ")[1][:8]
    assert given.stderr.strip().splitlines()[-1] == (
        f"`eclflow resume {run_id} --budget-calls N --db '{db}'` continues it with a larger budget"
    )


def test_the_resume_command_said_for_a_local_run_works_with_engine_restate_set(
    tmp_path: Any,
) -> None:
    """With ECLFLOW_ENGINE=restate in the environment (for `run` and `status` on Restate), a
    run made with `--engine local` said `eclflow resume ID --budget-calls N`: since `resume`
    takes ECLFLOW_ENGINE too, that command went to Restate and was refused (it takes no
    --budget-calls). The command said now names the local engine, and it finishes the run."""
    import os
    import shlex
    import subprocess
    import sys

    script = tmp_path / "script.yaml"
    script.write_text(KEYED % {"d": 0})
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {**os.environ, "ECLFLOW_ENGINE": "restate", "ECLFLOW_DATABASE_URL": db}
    mock = ["--model", "mock/t", "--mock-responses", str(script)]

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eclflow", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    stopped = eclflow("run", str(CRITIQUE_REVISE), "-i", "topic=t", "--engine", "local",
                      "--budget-calls", "1", *mock)  # fmt: skip
    assert stopped.returncode == 1, stopped.stderr
    hint = stopped.stderr.strip().splitlines()[-1]
    said = shlex.split(hint.split("`")[1].replace(" N", " 10"))
    assert said[:2] == ["eclflow", "resume"], hint
    go_on = eclflow(*said[1:], *mock)
    assert go_on.returncode == 0, go_on.stderr
    assert "final_text: draft two" in go_on.stdout


def test_the_logs_name_a_loop_step_by_its_journal_key(tmp_path: Any) -> None:
    """The run's lines, `eclflow status` and the mock scripts say `critique#2`; the info logs
    and `eclflow logs` said `step_id=critique iteration=1` (and `critique#1` is iteration 0,
    `revise#1` iteration 1): they now say `step=critique#2`. JSON keeps every field."""
    import os
    import subprocess
    import sys

    (tmp_path / "script.yaml").write_text(KEYED % {"d": 0})
    env = {**os.environ, "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}"}

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eclflow", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    keys = ["generate", "critique#1", "revise#1", "critique#2"]
    for fmt in ("pretty", "compact"):
        r = eclflow("--log-level", "info", "--log-format", fmt, "run", str(CRITIQUE_REVISE),
                    "-i", "topic=t", "--model", "mock/t", "--mock-responses",
                    str(tmp_path / "script.yaml"), "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        lines = [x for x in r.stderr.splitlines() if "Step execution succeeded" in x]
        assert [x.split("step=")[1].split()[0] for x in lines] == keys, r.stderr
        assert not any("iteration=" in x or "step_id=" in x for x in lines), r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    text = eclflow("logs", run_id).stdout.splitlines()
    lines = [x for x in text if "Step execution succeeded" in x]
    assert [x.split("step=")[1].split()[0] for x in lines] == keys, text
    assert not any("iteration=" in x for x in lines), text
    objects = [json.loads(x) for x in eclflow("logs", run_id, "--json").stdout.splitlines()]
    done = [x for x in objects if x["kind"] == "step_succeeded"]
    assert [(x["step_id"], x["key"], x["iteration"]) for x in done] == [
        ("generate", "generate", 0),
        ("critique", "critique#1", 0),
        ("revise", "revise#1", 1),
        ("critique", "critique#2", 1),
    ]


def test_logs_of_a_run_recorded_without_keys_still_tell_iterations_apart(tmp_path: Any) -> None:
    """A run recorded before the records carried their journal `key` (an older eclflow, the
    same database): `eclflow logs` dropped `iteration` along with `step_id`, so critique#1
    and critique#2 both read `step=critique`, and nothing told them apart."""
    import os
    import sqlite3
    import subprocess
    import sys

    (tmp_path / "script.yaml").write_text(KEYED % {"d": 0})
    env = {**os.environ, "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}"}

    def eclflow(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "eclflow", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    r = eclflow("run", str(CRITIQUE_REVISE), "-i", "topic=t", "--model", "mock/t",
                "--mock-responses", str(tmp_path / "script.yaml"), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "runs.db") as db:  # (as the older eclflow wrote them)
        db.execute("UPDATE events SET fields = json_remove(fields, '$.key')")
    text = eclflow("logs", json.loads(r.stdout)["run_id"]).stdout.splitlines()
    lines = [x for x in text if "Step execution succeeded" in x and "step=critique" in x]
    assert [x.split("step=")[1].split()[0] for x in lines] == ["critique", "critique"], text
    assert ["iteration=0" in lines[0], "iteration=1" in lines[1]] == [True, True], lines


def test_logs_follow_a_run_in_another_process(tmp_path: Any) -> None:
    run = _cli(
        tmp_path, "run", str(CRITIQUE_REVISE), "-i", "topic=tides", "--json", delay=0.3, wait=False
    )
    import sqlite3
    import time

    db = tmp_path / "runs.db"
    run_id = None
    deadline = time.monotonic() + 30
    while run_id is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if db.exists():
            try:
                row = sqlite3.connect(db).execute("select id from workflows").fetchone()
            except sqlite3.Error:
                row = None
            run_id = row[0] if row else None
    assert run_id, "the run never appeared in the journal"
    follow = _cli(tmp_path, "logs", run_id, "--follow", "--json")
    run.wait(timeout=60)
    assert run.returncode == 0, run.stderr.read() if run.stderr else ""
    events = [json.loads(line) for line in follow.stdout.splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed", kinds
    assert kinds.count("llm_request_completed") == 4
    assert {e["run_id"] for e in events} == {run_id}
    assert [e["step_id"] for e in events if e["kind"] == "step_succeeded"] == [
        "generate",
        "critique",
        "revise",
        "critique",
    ]
    text = _cli(tmp_path, "logs", run_id[:8])
    assert text.returncode == 0 and "Workflow execution completed successfully" in text.stdout


@pytest.mark.postgres
def test_logs_follow_goes_on_when_postgres_drops_its_connection(
    tmp_path: Any,
    pg_url: str,  # noqa: F811
) -> None:
    """A killed backend (a restart, a failover) ended `logs --follow` with a database error
    while the run it followed went on; it reads again on a new connection."""
    import os
    import subprocess
    import sys
    import time
    import uuid

    import psycopg2

    script = tmp_path / "script.yaml"
    script.write_text(KEYED % {"d": 1.5})
    env = {**os.environ, "ECLFLOW_DATABASE_URL": pg_url}
    eclflow = [sys.executable, "-m", "eclflow"]
    mock = ("--model", "mock/t", "--mock-responses", str(script))
    run = subprocess.Popen(
        [*eclflow, "run", str(CRITIQUE_REVISE), "-i", "topic=t", "--json", *mock],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base, _, schema = pg_url.partition("?schema=")
    app = f"eclflow_follow_{uuid.uuid4().hex[:8]}"

    def sql(query: str, *params: Any) -> list[Any]:
        conn = psycopg2.connect(base, options=f"-c search_path={schema}")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        except psycopg2.errors.UndefinedTable:
            return []
        finally:
            conn.close()

    deadline = time.monotonic() + 30
    while not (ids := sql("select id from workflows")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ids, "the run never appeared in the journal"
    follow = subprocess.Popen(
        [
            *eclflow,
            "logs",
            ids[0][0],
            "--follow",
            "--json",
            "--db",
            f"{pg_url}&application_name={app}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)
    kill = "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s"
    assert sql(kill, app), "the follower had no connection to kill"
    out, err = follow.communicate(timeout=60)
    run.communicate(timeout=60)
    assert follow.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["kind"] == "workflow_completed"
    assert len({e["id"] for e in events}) == len(events)  # none printed twice


def test_json_logs_of_two_concurrent_cli_runs_are_all_json(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "script.yaml"
    script.write_text(KEYED % {"d": 0.05})
    env = {**os.environ, "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}"}
    cmd = [
        sys.executable, "-m", "eclflow", "--log-format", "json", "--log-level", "info", "run",
        str(CRITIQUE_REVISE), "-i", "topic=tides", "--model", "mock/t", "--mock-responses",
        str(script),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    run_ids = set()
    for stdout, stderr in outs:
        assert "final_text: draft two" in stdout
        lines = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
        ids = {x["run_id"] for x in lines}
        assert len(ids) == 1
        run_ids |= ids
        steps = [x["step_id"] for x in lines if x["kind"] == "step_succeeded"]
        assert steps == ["generate", "critique", "revise", "critique"]
    assert len(run_ids) == 2


def test_pretty_logs_are_one_line_a_record() -> None:
    stream = io.StringIO()
    configure("warning", "pretty", stream=stream)
    try:
        log = logging.getLogger(f"{LOGGER_NAME}.test")
        with bind(run_id="0123456789abcdef", workflow_id="critique-revise"):
            log.warning(
                "LLM request failed",
                extra={"kind": "llm_request_failed", "step_id": "generate", "attempt": 1,
                       "error": "LLM error: " + "very long " * 30, "duration_ms": 3},
            )  # fmt: skip
            try:
                raise ValueError("boom")
            except ValueError:
                log.error("Step execution failed", exc_info=True)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2, lines
        assert "WARNING LLM request failed  step=generate attempt=1 error=LLM error:" in lines[0]
        assert "run_id=01234567 " in lines[0] and "kind=" not in lines[0]
        assert lines[1].endswith("Step execution failed  run_id=01234567 "
                                 "workflow_id=critique-revise  (ValueError: boom)")  # fmt: skip
    finally:
        configure("warning", "compact")


def _failing_run(script: Any, *options: str, **environment: str) -> Any:
    """`eclflow [options] run` of critique-revise on `script`'s mock replies, -q, with only
    the ECLFLOW_ variables given (the logs as a user gets them by default)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "eclflow", *options, "run", str(CRITIQUE_REVISE), "-i", "topic=x",
         "-m", "mock/x", "--mock-responses", str(script), "--no-journal", "-q"],
        env={**env, **environment}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_failing_cli_run_logs_one_line_a_record_by_default(tmp_path: Any) -> None:
    script = tmp_path / "fail.yaml"
    script.write_text(
        'generate: [{error: server_error, message: "busy"}, {error: auth_error, message: "bad key"}]\n'
    )
    r = _failing_run(script)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert not [line for line in lines if line.startswith(" ")], r.stderr  # nothing wrapped
    # the retry's warning, then the summary's two lines: the failure is said once, by the
    # `error:` line (the failed call, the failed step and the failed run were three more)
    assert len(lines) == 3, r.stderr
    assert "WARNING Retrying after failure" in lines[0] and "busy" in lines[0]
    assert lines[2] == "error: Step generate failed: LLM error: bad key"
    assert r.stderr.count("bad key") == 1
    # logs asked for keep every record
    for asked, environment in (
        (["--log-format", "compact"], {}),
        (["--log-level", "warning"], {}),
        ([], {"ECLFLOW_LOG_FORMAT": "pretty"}),
    ):
        r = _failing_run(script, *asked, **environment)
        kinds = ("LLM request failed", "Step failed after all", "Workflow execution failed")
        assert all(k in r.stderr for k in kinds), r.stderr


def test_an_output_that_breaks_the_rules_is_said_once_an_attempt_by_default(
    tmp_path: Any,
) -> None:
    """A draft too long three times: each retry's warning and the `error:` line say why, and
    a "Validation failed" warning said it again before each of them."""
    script = tmp_path / "long.yaml"
    script.write_text(f"generate: {['x' * 2100] * 3}\n")
    r = _failing_run(script)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("Draft too long: 2100 chars") == 3, r.stderr
    assert r.stderr.count("WARNING Retrying after failure") == 2, r.stderr
    assert "Validation failed" not in r.stderr


def test_the_library_logs_to_nobody_until_logging_is_configured(tmp_path: Any) -> None:
    import subprocess
    import sys

    code = (
        "import asyncio, logging, sys, eclflow\n"
        "async def main():\n"
        "    return await eclflow.run(eclflow.load(sys.argv[1]), {'topic': 'x'}, model='mock/x',"
        " mock_responses=[{'error': 'auth_error'}])\n"
        "if len(sys.argv) > 2: logging.basicConfig(format='%(levelname)s %(message)s')\n"
        "print(asyncio.run(main()).status)\n"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", code, str(CRITIQUE_REVISE)], capture_output=True, text=True
    )
    assert quiet.stdout == "failed\n" and quiet.stderr == "", quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-c", code, str(CRITIQUE_REVISE), "configured"],
        capture_output=True,
        text=True,
    )
    assert loud.stdout == "failed\n" and "ERROR Workflow execution failed" in loud.stderr
