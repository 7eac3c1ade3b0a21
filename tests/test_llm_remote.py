"""The litellm provider against a real HTTP peer: an OpenAI-compatible server started here.

No test reaches the network: the server listens on 127.0.0.1 and litellm's price table is the
bundled one.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE

from eclflow import errors
from eclflow.llm import CompletionRequest, Message, Providers
from eclflow.llm.remote import API_BASE_ENV, LiteLLMProvider, map_exception, response_format_for
from eclflow.steps.builtin import CRITIQUE_SCHEMA

FAKE_KEY = "sk-test-0123456789abcdefghij"

Reply = tuple[int, dict[str, Any]]


def chat_completion(
    content: str, model: str = "gpt-4o-mini", prompt: int = 12, completion: int = 7
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def api_error(status: int, message: str) -> Reply:
    return status, {"error": {"message": message, "type": "error", "code": None}}


class FakeOpenAI:
    """An OpenAI-compatible chat endpoint that answers with `reply(body)` and keeps every
    request (path, headers, JSON body)."""

    def __init__(self, reply: Callable[[dict[str, Any]], Reply]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0
        self.headers: dict[str, str] = {}  # sent with every reply that is not a 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.requests.append(
                    {
                        "at": time.monotonic(),
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                if outer.delay:
                    time.sleep(outer.delay)
                status, payload = outer.reply(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in (outer.headers if status != 200 else {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv(API_BASE_ENV, raising=False)


@pytest.fixture
def server(openai_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A server answering every call with one draft; ECLFLOW_API_BASE points litellm at it."""
    with FakeOpenAI(lambda body: (200, chat_completion("A short draft."))) as s:
        monkeypatch.setenv(API_BASE_ENV, s.base)
        yield s


def request(model: str = "openai/gpt-4o-mini", **kw: Any) -> CompletionRequest:
    return CompletionRequest(
        model=model,
        messages=(Message("system", "You write."), Message("user", "Write about tea.")),
        **kw,
    )


def complete(provider: LiteLLMProvider, req: CompletionRequest) -> Any:
    return asyncio.run(provider.complete(req))


# --- a real call over HTTP ---------------------------------------------------------------


def test_complete_over_http_passes_the_request_and_reads_tokens_and_cost(
    server: FakeOpenAI,
) -> None:
    import litellm

    resp = complete(
        LiteLLMProvider(),
        request(max_tokens=50, temperature=0.0, stop=("END",), seed=7, timeout=30),
    )
    assert resp.content == "A short draft."
    assert (resp.usage.input, resp.usage.output) == (12, 7)
    assert resp.finish_reason == "stop"
    prices = litellm.model_cost["gpt-4o-mini"]
    expected = 12 * prices["input_cost_per_token"] + 7 * prices["output_cost_per_token"]
    assert resp.cost == pytest.approx(expected) and resp.cost > 0

    [sent] = server.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {FAKE_KEY}"
    body = sent["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "You write."},
        {"role": "user", "content": "Write about tea."},
    ]
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 50
    assert body["temperature"] == 0.0 and body["stop"] == ["END"] and body["seed"] == 7
    assert "response_format" not in body


def test_a_reply_without_usage_is_counted_by_estimate_not_as_nothing(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers that send no `usage` made every call 0 tokens and $0: a token or dollar budget
    never stopped the run."""
    import litellm

    reply = chat_completion("word " * 400)
    del reply["usage"]
    with FakeOpenAI(lambda body: (200, reply)) as s:
        monkeypatch.setenv(API_BASE_ENV, s.base)
        resp = complete(LiteLLMProvider(), request())
    assert resp.usage.input > 5 and resp.usage.output > 300
    prices = litellm.model_cost["gpt-4o-mini"]
    assert resp.cost == pytest.approx(
        resp.usage.input * prices["input_cost_per_token"]
        + resp.usage.output * prices["output_cost_per_token"]
    )


def test_json_schema_becomes_a_strict_response_format_where_supported(server: FakeOpenAI) -> None:
    complete(LiteLLMProvider(), request(json_schema=CRITIQUE_SCHEMA))
    fmt = server.requests[0]["body"]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "output"
    assert fmt["json_schema"]["schema"] == json.loads(json.dumps(CRITIQUE_SCHEMA))
    # CRITIQUE_SCHEMA leaves `feedback` optional: OpenAI's strict mode would reject it
    assert fmt["json_schema"]["strict"] is False


def test_strict_mode_only_for_schemas_that_allow_it() -> None:
    closed = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    fmt = response_format_for("openai/gpt-4o-mini", closed)
    assert fmt is not None and fmt["json_schema"]["strict"] is True
    assert response_format_for("openai/gpt-4o-mini", None) is None


def test_unknown_model_costs_nothing_and_gets_plain_json_mode(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(lambda body: (200, chat_completion('{"ok": 1}', model="x"))) as s:
        monkeypatch.setenv(API_BASE_ENV, s.base)
        resp = complete(LiteLLMProvider(), request("openai/x", json_schema={"type": "object"}))
    assert resp.content == '{"ok": 1}' and resp.cost == 0.0
    assert resp.usage.total == 19
    assert s.requests[0]["body"]["response_format"] == {"type": "json_object"}


def test_api_base_given_to_the_provider_wins(openai_env: None) -> None:
    with FakeOpenAI(lambda body: (200, chat_completion("hi"))) as s:
        resp = complete(LiteLLMProvider(api_base=s.base), request())
    assert resp.content == "hi" and len(s.requests) == 1


def test_an_endpoint_rejecting_the_schema_hint_is_asked_again_without_it(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reply(body: dict[str, Any]) -> Reply:
        if "response_format" in body:
            return api_error(400, "response_format is not supported by this server")
        return 200, chat_completion('{"decision": "pass", "critique": "fine"}')

    with FakeOpenAI(reply) as s:
        monkeypatch.setenv(API_BASE_ENV, s.base)
        resp = complete(LiteLLMProvider(), request(json_schema=CRITIQUE_SCHEMA))
    assert json.loads(resp.content)["decision"] == "pass"
    assert ["response_format" in r["body"] for r in s.requests] == [True, False]


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (429, errors.RateLimited, True),
        (500, errors.ServerError, True),
        (503, errors.ServerError, True),
        (401, errors.AuthError, False),
        (403, errors.AuthError, False),
        (400, errors.BadRequest, False),
        (404, errors.BadRequest, False),
    ],
)
def test_http_errors_map_to_our_errors_and_are_not_retried_inside(
    status: int,
    cls: type[errors.LLMError],
    retryable: bool,
    openai_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeOpenAI(lambda body: api_error(status, f"failure {status} for key {FAKE_KEY}")) as s:
        monkeypatch.setenv(API_BASE_ENV, s.base)
        with pytest.raises(cls) as info:
            complete(LiteLLMProvider(), request())
    err = info.value
    assert type(err) is cls and err.retryable is retryable
    text = str(err)
    assert text.startswith("LLM error: ") and "\n" not in text
    assert FAKE_KEY not in text
    # retries belong to the executor (stamina): one HTTP request per call
    assert len(s.requests) == 1


def test_refused_connection_is_a_retryable_server_error(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv(API_BASE_ENV, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(errors.ServerError) as info:
        complete(LiteLLMProvider(), request())
    assert info.value.retryable
    # the address, and why (litellm says only "InternalServerError … Connection error.")
    assert str(info.value) == (
        f"LLM error: cannot reach http://127.0.0.1:{port}/v1: connection refused"
    )
    monkeypatch.setenv(API_BASE_ENV, "http://nosuchhost.invalid/v1")
    with pytest.raises(errors.ServerError) as info:
        complete(LiteLLMProvider(), request())
    assert str(info.value).startswith(
        "LLM error: cannot reach http://nosuchhost.invalid/v1: unknown host"
    )


def test_slow_server_past_the_request_timeout_is_a_provider_timeout(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(lambda body: (200, chat_completion("late"))) as s:
        s.delay = 3.0
        monkeypatch.setenv(API_BASE_ENV, s.base)
        with pytest.raises(errors.ProviderTimeout) as info:
            complete(LiteLLMProvider(), request(timeout=0.3))
    assert info.value.retryable


def test_critique_revise_runs_end_to_end_against_the_http_peer(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eclflow.engine.runner import run
    from eclflow.spec import load

    replies = iter(
        [
            chat_completion("Tea is a drink.", prompt=20, completion=5),
            chat_completion('{"decision": "revise", "critique": "thin", "feedback": "more"}'),
            chat_completion("Tea is a drink brewed from leaves.", prompt=30, completion=8),
            chat_completion('{"decision": "pass", "critique": "good"}'),
        ]
    )
    with FakeOpenAI(lambda body: (200, next(replies))) as s:
        monkeypatch.setenv(API_BASE_ENV, s.base)
        result = asyncio.run(
            run(load(CRITIQUE_REVISE), {"topic": "tea"}, model="openai/gpt-4o-mini")
        )
    assert result.status == "completed", result.error
    assert result.output["final_text"] == "Tea is a drink brewed from leaves."
    assert [s.key for s in result.steps] == ["generate", "critique#1", "revise#1", "critique#2"]
    assert [s.tokens for s in result.steps] == [25, 19, 38, 19]
    assert all(s.cost > 0 for s in result.steps)
    critique_formats = [r["body"].get("response_format") for r in s.requests]
    assert [f is not None for f in critique_formats] == [False, True, False, True]


# --- exception mapping without a server ----------------------------------------------------


def _litellm_errors() -> list[tuple[Exception, type[errors.LLMError], bool]]:
    import httpx
    import litellm

    req = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")

    def resp(code: int) -> httpx.Response:
        return httpx.Response(code, request=req)

    kw = {"llm_provider": "openai", "model": "gpt-4o-mini"}
    return [
        (litellm.RateLimitError("slow down", **kw), errors.RateLimited, True),
        (litellm.Timeout("timed out", **kw), errors.ProviderTimeout, True),
        (litellm.APIConnectionError("refused", **kw), errors.ServerError, True),
        (litellm.InternalServerError("boom", **kw), errors.ServerError, True),
        (litellm.ServiceUnavailableError("down", **kw), errors.ServerError, True),
        (litellm.AuthenticationError("bad key", **kw), errors.AuthError, False),
        (
            litellm.PermissionDeniedError("no", response=resp(403), **kw),
            errors.AuthError,
            False,
        ),
        (litellm.BadRequestError("bad", **kw), errors.BadRequest, False),
        (litellm.NotFoundError("no such model", **kw), errors.BadRequest, False),
        (litellm.ContextWindowExceededError("too long", **kw), errors.BadRequest, False),
        (litellm.APIError(502, "bad gateway", **kw), errors.ServerError, True),
        (ValueError("odd"), errors.LLMError, False),
    ]


def test_a_rate_limit_waits_as_long_as_the_provider_asks(
    openai_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429's Retry-After is waited for (the policy's 1 ms delays spent every attempt within
    a second, and the run failed); OpenAI's insufficient_quota is not retried at all."""
    from eclflow.engine.runner import run
    from eclflow.spec import load_text

    text = (
        "eclflow: 1\nid: rl\nmodel: openai/gpt-4o-mini\nsteps:\n  - {id: a, type: llm, "
        "template: hi, retry: {max_attempts: 3, initial_delay: 1ms, max_delay: 1ms}}\n"
    )
    replies = iter([api_error(429, "Rate limit reached"), (200, chat_completion("ok"))])
    with FakeOpenAI(lambda body: next(replies)) as s:
        s.headers = {"retry-after": "1.5"}
        monkeypatch.setenv(API_BASE_ENV, s.base)
        result = asyncio.run(run(load_text(text), {}))
    assert result.status == "completed", result.error
    assert len(s.requests) == 2 and s.requests[1]["at"] - s.requests[0]["at"] >= 1.4
    retry = next(t for t in result.steps[0].traces if t.message.startswith("Retrying"))
    assert retry.fields["delay"] == 1.5

    quota = "You exceeded your current quota, please check your plan and billing details."
    with FakeOpenAI(lambda body: (429, {"error": {"message": quota, "type": "insufficient_quota",
                                                  "code": "insufficient_quota"}})) as s:  # fmt: skip
        monkeypatch.setenv(API_BASE_ENV, s.base)
        failed = asyncio.run(run(load_text(text), {}))
    assert failed.status == "failed" and "quota" in (failed.error or "")
    assert len(s.requests) == 1


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "250"}, 0.25), ({}, None),
     ({"retry-after": "soon"}, None)],
)  # fmt: skip
def test_retry_after_is_read_from_the_error_response(
    headers: dict[str, str], seconds: float | None
) -> None:
    import httpx
    import litellm

    req = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    e = litellm.RateLimitError(
        "slow down", llm_provider="openai", model="gpt-4o-mini",
        response=httpx.Response(429, request=req, headers=headers),
    )  # fmt: skip
    mapped = map_exception(e)
    assert isinstance(mapped, errors.RateLimited) and mapped.retry_after == seconds


def test_every_litellm_exception_maps_to_one_of_ours() -> None:
    for exc, cls, retryable in _litellm_errors():
        mapped = map_exception(exc)
        assert type(mapped) is cls, (exc, mapped)
        assert mapped.retryable is retryable, exc
        assert "\n" not in str(mapped)


def test_mapped_messages_are_one_line_and_never_show_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import litellm

    secret = "an-unusual-secret-value-42"
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", secret)
    exc = litellm.AuthenticationError(
        f"Incorrect API key provided: {FAKE_KEY}\nalso {secret}\n" + "x" * 1000,
        llm_provider="openai",
        model="gpt-4o-mini",
    )
    text = str(map_exception(exc))
    assert FAKE_KEY not in text and secret not in text
    assert "\n" not in text and len(text) < 400
    assert "Incorrect API key provided" in text


# --- check() ------------------------------------------------------------------------------


def test_check_names_the_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(errors.ConfigError) as info:
        LiteLLMProvider().check("openai/gpt-4o-mini")
    assert str(info.value) == (
        "Configuration error: model 'openai/gpt-4o-mini' needs OPENAI_API_KEY: "
        "set it in the environment"
    )


def test_check_passes_once_the_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    LiteLLMProvider().check("openai/gpt-4o-mini")
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    LiteLLMProvider().check("anthropic/claude-3-5-haiku-latest")


def test_check_anthropic_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(errors.ConfigError, match="needs ANTHROPIC_API_KEY"):
        Providers().check("anthropic/claude-3-5-haiku-latest")


def test_ollama_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_API_BASE", raising=False)
    LiteLLMProvider().check("ollama/llama3")


@pytest.mark.parametrize("model", ["foo/bar", "nonsense-model"])
def test_check_rejects_an_unknown_provider_with_a_hint(model: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        LiteLLMProvider().check(model)
    text = str(info.value)
    assert f"'{model}'" in text and "openai/gpt-4o-mini" in text and "\n" not in text


def test_providers_route_other_models_to_litellm() -> None:
    assert isinstance(Providers().get("openai/gpt-4o-mini"), LiteLLMProvider)


# --- import hygiene -----------------------------------------------------------------------

_NO_NETWORK_IMPORT = """
import os, socket
os.environ.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[:2])
    raise OSError("network disabled in this test")
socket.getaddrinfo = refuse
socket.socket.connect = lambda self, addr: refuse(addr)
socket.create_connection = lambda addr, *a, **k: refuse(addr)
import eclflow.llm.remote
assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
import litellm
assert litellm.model_cost.get("gpt-4o-mini"), "bundled price table missing"
print("attempts", len(attempts), attempts)
"""


def test_importing_the_provider_and_litellm_touches_no_network() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK_IMPORT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "attempts 0 []" in proc.stdout, proc.stdout + proc.stderr
    assert "fetch" not in proc.stderr.lower(), proc.stderr


def test_validate_and_graph_paths_do_not_import_litellm() -> None:
    code = (
        "import sys, eclflow.llm, eclflow.spec, eclflow.graph\n"
        "print('litellm' in sys.modules, 'eclflow.llm.remote' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]
