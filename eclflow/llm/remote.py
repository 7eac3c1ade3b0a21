"""Remote models through litellm (`openai/…`, `anthropic/…`, `ollama/…`, …).

litellm is heavy (seconds to import) and by default fetches its price table from the network
when imported; this module pins the bundled table first and imports litellm only on first use,
so nothing pays for it unless a run really calls a remote model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

# Before any import of litellm: use the cost map bundled with the package, never fetch it.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ..errors import (
    AuthError,
    BadRequest,
    ConfigError,
    LLMError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from .base import CompletionRequest, CompletionResponse, TokenUsage
from .names import API_BASE_ENV

# Settings litellm lists as "missing" although the provider has a working default.
_OPTIONAL_SETTINGS = frozenset({"OLLAMA_API_BASE"})

_MAX_MESSAGE = 300


def _litellm() -> Any:
    """Import litellm once, quietly (no banner, no provider list printed on stdout)."""
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


class LiteLLMProvider:
    """Calls any model litellm knows. Retries are the executor's job (`num_retries=0`)."""

    def __init__(self, api_base: str | None = None) -> None:
        self.api_base = api_base

    def _api_base(self) -> str | None:
        return self.api_base or os.environ.get(API_BASE_ENV) or None

    def check(self, model: str) -> None:
        litellm = _litellm()
        try:
            litellm.get_llm_provider(model)
        except Exception:
            raise ConfigError(
                f"model '{model}' names no provider litellm knows: write it as "
                "'provider/model' (e.g. 'openai/gpt-4o-mini', 'anthropic/claude-haiku-4-5', "
                "'ollama/llama3'), or 'local/smollm2' for the embedded model"
            ) from None
        try:
            env = litellm.validate_environment(model, api_base=self._api_base())
        except Exception:
            return  # cannot tell: let the call itself report what is missing
        missing = [k for k in env.get("missing_keys") or [] if k not in _OPTIONAL_SETTINGS]
        if missing:
            names = " and ".join(missing)
            them = "them" if len(missing) > 1 else "it"
            raise ConfigError(f"model '{model}' needs {names}: set {them} in the environment")

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        litellm = _litellm()
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "num_retries": 0,
            "drop_params": True,  # a provider without `seed` or `stop` still answers
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.timeout is not None:
            kwargs["timeout"] = request.timeout
        if request.seed is not None:
            kwargs["seed"] = request.seed
        api_base = self._api_base()
        if api_base:
            kwargs["api_base"] = api_base
        response_format = (
            response_format_for(request.model, request.json_schema)
            if request.json_schema is not None
            else None
        )
        if response_format is not None:
            kwargs["response_format"] = response_format
        try:
            resp = await litellm.acompletion(**kwargs)
        except Exception as e:
            # The schema is a hint: an endpoint that rejects `response_format` gets the plain
            # request once more instead of failing the step.
            if response_format is None or not _rejects_request(litellm, e):
                raise self._mapped(e, request.model) from None
            kwargs.pop("response_format")
            try:
                resp = await litellm.acompletion(**kwargs)
            except Exception as e2:
                raise self._mapped(e2, request.model) from None
        return _to_response(litellm, resp, request)

    def _mapped(self, e: Exception, model: str) -> LLMError:
        """`map_exception`, naming the address when no connection could be made (litellm
        says "InternalServerError … Connection error." without it)."""
        reason = _connect_failure(e)
        if reason is None:
            return map_exception(e)
        where = self._api_base() or f"the API of {model.split('/', 1)[0]}"
        return ServerError(f"cannot reach {where}: {reason}")


def response_format_for(model: str, schema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `response_format` to send for `schema`: a strict JSON schema where the model supports
    one, plain JSON mode where it supports that, else nothing (the prompt asks for JSON)."""
    if schema is None:
        return None
    litellm = _litellm()
    try:
        if litellm.supports_response_schema(model=model):
            return {
                "type": "json_schema",
                "json_schema": {
                    "name": "output",
                    "schema": dict(schema),
                    "strict": _strict_ok(schema),
                },
            }
    except Exception:
        pass
    try:
        _, provider, _, _ = litellm.get_llm_provider(model)
        params = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:
        return None
    if params and "response_format" in params:
        return {"type": "json_object"}
    return None


def _strict_ok(schema: Mapping[str, Any]) -> bool:
    """OpenAI's strict mode needs every property required and no extra properties; ask for it
    only when the schema already says so, otherwise the provider would reject the request."""
    if schema.get("type") != "object":
        return False
    props = schema.get("properties") or {}
    return schema.get("additionalProperties") is False and set(schema.get("required") or []) == set(
        props
    )


def _rejects_request(litellm: Any, e: Exception) -> bool:
    return isinstance(e, litellm.BadRequestError | litellm.UnprocessableEntityError) and not (
        isinstance(e, litellm.ContextWindowExceededError | litellm.ContentPolicyViolationError)
    )


def _to_response(litellm: Any, resp: Any, request: CompletionRequest) -> CompletionResponse:
    try:
        choice = resp.choices[0]
        content = choice.message.content or ""
        finish = choice.finish_reason or "stop"
    except (AttributeError, IndexError, TypeError):
        raise ServerError(f"{request.model} returned a reply without choices") from None
    usage = getattr(resp, "usage", None)
    tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
    tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = completion_cost(litellm, resp)
    if tokens_in == 0 and tokens_out == 0:
        # many OpenAI-compatible servers and proxies send no `usage`: counted as nothing, a
        # budget would never stop; the same estimate a budget reserves with instead
        from ..observe.budget import estimate_tokens, price, prompt_tokens

        tokens_in = prompt_tokens(request.model, request.messages)
        tokens_out = estimate_tokens(content)
        p = price(request.model)
        cost = tokens_in * p.input + tokens_out * p.output if p is not None else 0.0
    return CompletionResponse(
        content=content,
        usage=TokenUsage(tokens_in, tokens_out),
        cost=cost,
        finish_reason=str(finish),
        model=str(getattr(resp, "model", "") or request.model),
    )


def completion_cost(litellm: Any, resp: Any) -> float:
    """Dollars for one reply from litellm's bundled price table; 0.0 for a model it does not
    price (a self-hosted or brand-new model), never an error."""
    try:
        cost = litellm.completion_cost(completion_response=resp)
    except Exception:
        return 0.0
    try:
        return max(0.0, float(cost or 0.0))
    except (TypeError, ValueError):
        return 0.0


def retry_after(e: BaseException) -> float | None:
    """The seconds a provider's error response asks to wait: its `retry-after-ms` or
    `retry-after` header (seconds, or an HTTP date)."""
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000, 0.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            import time
            from email.utils import parsedate_to_datetime

            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


def _connect_failure(e: BaseException) -> str | None:
    """Why no connection was made (`connection refused`, `name or service not known`), when
    that is what `e` comes from; else None."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and type(cause).__name__ == "gaierror":
            return f"unknown host ({cause.strerror or cause})".lower()
        if type(cause).__name__ in ("ConnectError", "ClientConnectorError") and cause is not e:
            inner = cause.__cause__ or cause.__context__
            if inner is None:
                return str(cause).split(" ssl:")[0].lower() or "no connection"
        cause = cause.__cause__ or cause.__context__
    return None


def _out_of_quota(e: BaseException) -> bool:
    """OpenAI's 429 `insufficient_quota` ("check your plan and billing details")."""
    body = getattr(getattr(e, "response", None), "text", "") or ""
    text = f"{e} {body if isinstance(body, str) else ''}"
    return "insufficient_quota" in text or "exceeded your current quota" in text


def map_exception(e: BaseException) -> LLMError:
    """Turn a litellm (or openai/httpx) exception into ours, with a one-line message and
    `retryable` set by what went wrong. Order matters: litellm's Timeout is an
    APIConnectionError and ContextWindowExceededError a BadRequestError."""
    if isinstance(e, LLMError):
        return e
    litellm = _litellm()
    message = clean_message(e)
    table: list[tuple[tuple[type, ...], type[LLMError]]] = [
        ((litellm.RateLimitError,), RateLimited),
        ((litellm.Timeout,), ProviderTimeout),
        ((litellm.AuthenticationError, litellm.PermissionDeniedError), AuthError),
        (
            (
                litellm.ContextWindowExceededError,
                litellm.ContentPolicyViolationError,
                litellm.BadRequestError,
                litellm.NotFoundError,
                litellm.UnprocessableEntityError,
            ),
            BadRequest,
        ),
        (
            (
                litellm.APIConnectionError,
                litellm.InternalServerError,
                litellm.ServiceUnavailableError,
                litellm.BadGatewayError,
            ),
            ServerError,
        ),
    ]
    for classes, ours in table:
        if isinstance(e, classes):
            if ours is RateLimited and _out_of_quota(e):
                # OpenAI's "check your plan and billing" is a 429 no wait mends
                return RateLimited(message, retryable=False)
            if ours in (RateLimited, ServerError):
                return ours(message, retry_after=retry_after(e))
            return ours(message)
    return plain_error(e, message)


def plain_error(e: BaseException, message: str) -> LLMError:
    """An exception of no model library eclflow knows as ours, by what it is: a timeout or a
    lost connection, an HTTP status (`status_code`: 429, 408 and 5xx are retried), else an
    error no retry mends."""
    if isinstance(e, TimeoutError):
        return ProviderTimeout(message)
    if isinstance(e, ConnectionError):
        return ServerError(message)
    status = getattr(e, "status_code", None)
    if isinstance(status, int):
        if status == 429:
            return RateLimited(message, retry_after=retry_after(e))
        if status == 408 or status >= 500:
            return ServerError(message, retry_after=retry_after(e))
        if status in (401, 403):
            return AuthError(message)
    return LLMError(message, retryable=False)


_LITELLM_PREFIX = re.compile(r"^(litellm\.)?[A-Za-z]+(Error|Exception|Timeout)?:\s*")
_KEYLIKE = re.compile(r"\b(sk|pk|rk|gsk|xai)[-_][A-Za-z0-9_\-]{8,}")
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


def clean_message(e: BaseException, litellm: bool = True) -> str:
    """One line, no longer than a line should be, with anything that looks like a key masked.
    `litellm`: `e` may be litellm's, whose class name is stripped from the front of its text
    (not from a provider of one's own: "Quota: exhausted" lost "Quota:")."""
    text = str(e) or type(e).__name__
    # litellm repeats its class name in front ("litellm.RateLimitError: RateLimitError: ...")
    for _ in range(3 if litellm else 0):
        stripped = _LITELLM_PREFIX.sub("", text, count=1)
        if stripped == text or not stripped.strip():
            break
        text = stripped
    for name, value in os.environ.items():
        if value and len(value) >= 8 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, "***")
    text = _KEYLIKE.sub(lambda m: m.group(1) + "-***", text)
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1].rstrip() + "…"
    kind = type(e).__name__
    return text if kind.lower() in text.lower() else f"{kind}: {text}"
