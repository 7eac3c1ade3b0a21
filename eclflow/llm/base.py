"""The one interface every model provider implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .._quickinit import quick_init

Role = Literal["system", "user", "assistant"]


@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    """One message of a prompt: its `role` (`system`, `user`, `assistant`) and text."""

    role: Role
    content: str


@quick_init
@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """What a step asks of a model: the `model` string, the `messages` (each a `Message`,
    `.role` and `.content`), `max_tokens`, `temperature`, `stop` sequences, `json_schema` (asks
    for structured output when supported), `timeout` (the step's, in seconds), and which
    step asks (`step_id`, its journal `key`, its `attempt`)."""

    model: str
    messages: Sequence[Message]
    max_tokens: int = 1024
    temperature: float | None = None
    stop: Sequence[str] = ()
    json_schema: Mapping[str, Any] | None = None
    seed: int | None = None
    timeout: float | None = None
    step_id: str | None = None  # which step asks, and under which journal key (`critique#2`)
    key: str | None = None
    attempt: int = 1  # the step's attempt that asks: a retry may ask to be answered otherwise

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stop": list(self.stop),
            "json_schema": dict(self.json_schema) if self.json_schema is not None else None,
        }


@quick_init
@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The tokens of one model call: `input` (the prompt's) and `output` (the reply's)."""

    input: int = 0
    output: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output


@quick_init
@dataclass(frozen=True, slots=True)
class CompletionResponse:
    """A model's reply: its text, its `TokenUsage`, its `cost` in US dollars (counted by the
    run's budget and totals; from a provider of one's own with a `price(model)`, 0 is counted
    at that price), why it ended (`"length"`: cut off at `max_tokens`) and the model that
    answered."""

    content: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0  # US dollars
    finish_reason: str = "stop"  # stop | length | stop_sequence | ...
    model: str = ""


@runtime_checkable
class Provider(Protocol):
    """A model client: `complete` answers one request (`request.model`, `request.messages`,
    `max_tokens`, `temperature`, `stop`, `json_schema`, `timeout`) with a `CompletionResponse`
    (the reply's text, its `TokenUsage` and its cost in US dollars).

    Pass your own to `eclflow.run(…, providers={"myco": client})` for the models `myco/…`.
    Raise `eclflow.LLMError(message, retryable=…, retry_after=…)` to say whether the step's
    next attempt may do better; a `TimeoutError`, a `ConnectionError` or an error with a
    `status_code` of 408, 429 or 5xx is retried too, any other exception fails the step at
    once. A provider may also have `check(model)`, called (awaited, if async) on the event
    loop before the run starts, once per model for a batch, that raises `eclflow.ConfigError`
    when the model cannot be called (a missing key); and `price(model)`, a plain def returning
    `(input, output)`, its US dollars per token (or None), which a dollar budget needs to
    count a call's worst case before it is made: a reply that gives no `cost` (0) is then
    counted at that price. A reply that gives no `usage` is counted by estimate."""

    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...


def utf8_text(text: str) -> str:
    """`text` with any lone surrogate (half of a UTF-16 pair, as a `\\ud800` escape in a
    model's JSON makes) replaced by U+FFFD: no UTF-8 holds one, so the journal could not write
    the step's row, nor the terminal print it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
