"""The scripted `mock/…` model: plays replies in order, injects failures, records every request.

It is the only fake in the test suite. It raises `MockExhausted` when its script runs out, which
is how a test proves that a resumed run did not call a finished step again.

The script: `eclflow run FILE --model mock/x --mock-responses SCRIPT` (YAML or JSON), or
`eclflow.run(..., mock_responses=...)` with a path, a list, a mapping or a `MockProvider`.

A list plays one entry per model call, in the order the calls are made:

    - "the first reply"
    - {content: {decision: pass, critique: clear}}  # a mapping as content is sent as JSON
    - {error: rate_limit}             # this call fails; the retry gets the next entry
    - {content: "late", delay: 0.5}   # replies after 0.5 seconds

A mapping (keyed) answers each call by its journal key (`critique#2`), else its step id
(`critique`), else `*`. A list under a key plays in order for successive calls of that key
(retries); a key whose replies are used up raises `MockExhausted`:

    generate: "draft one"
    critique#1: {content: {decision: revise, feedback: add tide tables}}
    critique: {content: {decision: pass, critique: clear and complete}}
    revise: ["draft two", "draft three"]
    "*": "any other step"

A key that names no step of the workflow calling a model (a misspelt id, `critique#0`) is
warned of before the run starts.

Either form may be wrapped as `{responses: LIST_OR_MAPPING, cycle: true}`; with `cycle` the
script (or each key's list) starts over instead of running out.

An entry is a string (the reply) or a mapping with any of these keys:

    content        the reply (default ""); a mapping or list is sent as its JSON text
    error          fail the call: rate_limit | timeout | server_error (retryable),
                   auth_error | bad_request (not retryable)
    message        the failure's message, with `error` (default "mock ERROR")
    retry_after    seconds the failure asks to wait before the next call, with `error`
                   (as a provider's Retry-After header)
    delay          seconds to wait before replying or failing (default 0)
    tokens         {input: N, output: M} (default: word counts of prompt and reply)
    cost           USD the call costs (default 0)
    finish_reason  what the model reports as why it stopped (default "stop")

A mapping with none of these keys is itself the reply, sent as JSON. Every request is kept in
`MockProvider.requests`; with ECLFLOW_MOCK_LOG=FILE each is also appended to FILE as a JSON line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    AuthError,
    BadRequest,
    ConfigError,
    LLMError,
    MockExhausted,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from .base import CompletionRequest, CompletionResponse, TokenUsage

# Keys of a scripted entry; a mapping with none of them is itself the reply, sent as JSON.
_ENTRY_KEYS = frozenset(
    {"content", "delay", "error", "message", "retry_after", "tokens", "cost", "finish_reason"}
)

_ERRORS: Mapping[str, type[LLMError]] = {
    "rate_limit": RateLimited,
    "timeout": ProviderTimeout,
    "server_error": ServerError,
    "auth_error": AuthError,
    "bad_request": BadRequest,
}

LOG_ENV = "ECLFLOW_MOCK_LOG"


def load_script(path: str | Path) -> MockProvider:
    """Read a mock script (YAML or JSON): a list of entries or `{responses: [...], cycle: b}`."""
    from ruamel.yaml import YAML, YAMLError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read mock responses {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"mock responses {p} are not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start})"
        ) from None
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"mock responses {p}{where} are not valid YAML/JSON: {problem}") from None
    cycle = False
    if isinstance(data, Mapping) and "responses" in data:
        cycle = bool(data.get("cycle", False))
        data = data.get("responses")
    if not isinstance(data, list | Mapping):
        raise ConfigError(
            f"mock responses {p} must be a list of replies, a mapping of step keys to replies, "
            "or {responses: ...}"
        )
    provider = MockProvider(data, cycle=cycle)
    provider.source = str(p)
    return provider


class MockProvider:
    """Plays `script` one entry per call, or, when `script` is a mapping, the entry for the
    call's journal key (`critique#2`), else its step id, else `*`; `cycle` starts it over
    instead of running out. The entries are described in this module's docstring."""

    def __init__(
        self,
        script: Sequence[Any] | Mapping[str, Any],
        *,
        cycle: bool = False,
        log_path: str | Path | None = None,
    ) -> None:
        if isinstance(script, str | bytes | os.PathLike) or not isinstance(
            script, Sequence | Mapping
        ):  # (a string is a sequence: each of its characters was played as a reply)
            kind = type(script).__name__
            file = isinstance(script, str | os.PathLike)
            raise ConfigError(
                f"a MockProvider plays a list of replies or a mapping of them by step, not {kind}"
                + ("; for a script file, eclflow.llm.load_script(path)" if file else "")
            )
        self.keyed: dict[str, list[_Reply]] | None = None
        if isinstance(script, Mapping):
            # Keyed: replies by journal key (`critique#2`), else by step id, else `*`; a list
            # plays in order for successive calls of the same key (retries).
            self.keyed = {}
            for k, v in script.items():
                entries = list(v) if isinstance(v, list) else [v]
                self.keyed[str(k)] = [_reply(entry, i) for i, entry in enumerate(entries)]
            script = []
        self.script = [_reply(entry, i) for i, entry in enumerate(script)]
        self._used: dict[str, int] = {}
        self.cycle = cycle
        self.requests: list[CompletionRequest] = []
        self._lock = threading.Lock()
        log = log_path if log_path is not None else os.environ.get(LOG_ENV)
        self.log_path = Path(log) if log else None
        self.source: str | None = None  # the script's file, when it was read from one
        self.keys_checked: set[tuple[str, ...]] = set()  # (shared by its fresh copies)

    def unplayed_keys(self, step_ids: Sequence[str], calling: Collection[str]) -> list[str]:
        """What is wrong with each key of a keyed script that no call of a workflow with
        these steps (`calling`: those that call a model) can ask for: a misspelt step id
        was found only when that step's call found no reply."""
        import difflib

        out: list[str] = []
        for key in self.keyed or ():
            step, _, n = key.partition("#")
            if key == "*" or (step in calling and (not n or (n.isdigit() and int(n) > 0))):
                continue
            if step in step_ids and not n:
                out.append(f"key '{key}': step '{key}' calls no model, so it plays no reply")
                continue
            if step in calling:
                out.append(f"key '{key}': a journal key is STEP#N, N from 1 (as '{step}#1')")
                continue
            close = difflib.get_close_matches(step, list(calling), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}{'#' + n if n else ''}'?)" if close else ""
            out.append(f"key '{key}' names no step that calls a model{hint}")
        return out

    def fresh(self) -> MockProvider:
        """A provider playing the same script from the start (one per run in a batch)."""
        clone = object.__new__(MockProvider)
        clone.script = self.script
        clone.keyed = self.keyed
        clone._used = {}
        clone.cycle = self.cycle
        clone.requests = []
        clone._lock = threading.Lock()
        clone.log_path = self.log_path
        clone.source = self.source
        clone.keys_checked = self.keys_checked
        return clone

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def remaining(self) -> int:
        return max(0, len(self.script) - len(self.requests)) if not self.cycle else len(self.script)

    def check(self, model: str) -> None:
        return None

    def _keyed_entry(self, request: CompletionRequest, n: int) -> _Reply:
        assert self.keyed is not None
        for name in (request.key, request.step_id, "*"):
            if name is not None and name in self.keyed:
                entries = self.keyed[name]
                used = self._used.get(name, 0)
                if used >= len(entries) and not self.cycle:
                    raise MockExhausted(
                        f"mock model has no reply left for '{name}' (call {n + 1}; "
                        f"the script holds {len(entries)} for it)"
                    )
                self._used[name] = used + 1
                return entries[used % len(entries)]
        raise MockExhausted(
            f"mock model has no reply for '{request.key or request.step_id}' (call {n + 1})"
        )

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        with self._lock:
            n = len(self.requests)
            if self.keyed is not None:
                entry = self._keyed_entry(request, n)
            else:
                if n >= len(self.script) and not (self.cycle and self.script):
                    raise MockExhausted(
                        f"mock model has no reply left for call {n + 1} "
                        f"(the script holds {len(self.script)})"
                    )
                entry = self.script[n % len(self.script)]
            self.requests.append(request)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(
                        json.dumps({"call": n + 1, "key": request.key, **request.to_dict()}) + "\n"
                    )
        if entry.delay > 0:
            import asyncio  # here: `eclflow validate` loads this module and must start fast

            await asyncio.sleep(entry.delay)
        if entry.error is not None:
            message = entry.message if entry.message is not None else f"mock {entry.error}"
            raise _ERRORS[entry.error](message, retry_after=entry.retry_after)
        return _response(
            entry.content,
            request,
            tokens_in=entry.tokens_in,
            tokens_out=entry.tokens_out,
            cost=entry.cost,
            finish_reason=entry.finish_reason,
        )


@dataclass(frozen=True, slots=True)
class _Reply:
    """One scripted entry, read once when the script is loaded."""

    content: str
    delay: float = 0.0
    error: str | None = None
    message: str | None = None
    retry_after: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float = 0.0
    finish_reason: str = "stop"


def _reply(entry: Any, index: int) -> _Reply:
    if isinstance(entry, str):
        return _Reply(entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"mock reply {index + 1} must be a string or a mapping, not {entry!r}")
    if not _ENTRY_KEYS & entry.keys():
        return _Reply(json.dumps(entry))  # the mapping is the (JSON) reply
    error = entry.get("error")
    if error is not None and str(error) not in _ERRORS:
        raise ConfigError(
            f"mock reply {index + 1}: unknown error '{error}' "
            f"(use one of {', '.join(sorted(_ERRORS))})"
        )
    content = entry.get("content", "")
    tokens = entry.get("tokens") or {}
    if not isinstance(tokens, Mapping):
        raise ConfigError(
            f"mock reply {index + 1}: tokens must be a mapping {{input: N, output: N}}, "
            f"not {tokens!r}"
        )
    return _Reply(
        content if isinstance(content, str) else json.dumps(content),
        delay=_number(entry.get("delay", 0) or 0, "delay (seconds)", index),
        error=None if error is None else str(error),
        message=None if entry.get("message") is None else str(entry["message"]),
        retry_after=None
        if entry.get("retry_after") is None
        else _number(entry["retry_after"], "retry_after (seconds)", index),
        tokens_in=_count(tokens.get("input"), "tokens.input", index),
        tokens_out=_count(tokens.get("output"), "tokens.output", index),
        cost=_number(entry.get("cost", 0.0), "cost (USD)", index),
        finish_reason=str(entry.get("finish_reason", "stop")),
    )


def _number(value: Any, what: str, index: int) -> float:
    """A non-negative number of a reply, or a ConfigError that names the reply."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        number = None
    else:
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not number >= 0:
        raise ConfigError(f"mock reply {index + 1}: {what} must be a number ≥ 0, not {value!r}")
    return number


def _count(value: Any, what: str, index: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"mock reply {index + 1}: {what} must be a whole number ≥ 0, not {value!r}"
        )
    return value


def _response(
    content: str,
    request: CompletionRequest,
    *,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
    cost: float = 0.0,
    finish_reason: str = "stop",
) -> CompletionResponse:
    if tokens_in is None:
        tokens_in = sum(len(m.content.split()) for m in request.messages)
    if tokens_out is None:
        tokens_out = len(content.split())
    return CompletionResponse(
        content,
        TokenUsage(int(tokens_in), int(tokens_out)),
        cost=cost,
        finish_reason=finish_reason,
        model=request.model,
    )
