"""Model clients of one's own (`eclflow.run(…, providers={"myco": client})`).

The engine calls them as it calls the built-in providers (under the step's retries, timeout
and budget, journaled alike); this wrapper makes what they raise and return the engine's: an
exception becomes an `LLMError` that says whether a retry may help, and a reply that is not a
well-formed `CompletionResponse` fails the attempt with a message naming the provider.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, EclflowError, LLMError
from .base import CompletionRequest, CompletionResponse, Provider, TokenUsage

# the prefixes of eclflow's own providers, which a provider of one's own does not replace
RESERVED = ("mock", "local")


def own_providers(providers: Any) -> dict[str, Provider]:
    """`providers=` checked: a mapping of model prefixes (`myco` for `myco/…`, or a whole
    model name) to objects with a `complete` method; ConfigError naming what is wrong."""
    if providers is None:
        return {}
    if not isinstance(providers, Mapping):
        raise ConfigError(
            "providers is a mapping of model prefixes to providers, such as "
            f"{{'myco': client}} for the models myco/…, not {type(providers).__name__}"
        )
    out: dict[str, Provider] = {}
    for prefix, provider in providers.items():
        if not isinstance(prefix, str) or not prefix.strip("/").strip():
            raise ConfigError(
                f"providers: a key is a model prefix such as 'myco' (for myco/…), not {prefix!r}"
            )
        name = prefix.strip("/")
        if name.split("/")[0] in RESERVED:
            raise ConfigError(
                f"providers: '{prefix}' names eclflow's own {name.split('/')[0]}/… models "
                "(mock_responses= plays scripted replies): give your provider another prefix"
            )
        if isinstance(provider, type):  # (its complete would take the request for self)
            raise ConfigError(
                f"providers['{prefix}'] is the class {provider.__name__}: pass one of its "
                f"objects, {provider.__name__}(…)"
            )
        if not callable(getattr(provider, "complete", None)):
            raise ConfigError(
                f"providers['{prefix}'] is a {type(provider).__name__}, which has no complete "
                "method: a provider has `async def complete(self, request)` returning an "
                "eclflow.CompletionResponse"
            )
        out[name] = provider
    return out


def provider_for(own: Mapping[str, Provider], model: str) -> str | None:
    """The key of `own` that serves `model`: the model itself, else its longest prefix
    (`myco/big/v2` is served by `myco/big` before `myco`); None when none does."""
    if not own:
        return None
    if model in own:
        return model
    parts = model.split("/")
    for n in range(len(parts) - 1, 0, -1):
        key = "/".join(parts[:n])
        if key in own:
            return key
    return None


class OwnProvider:
    """A provider of one's own, its errors and replies made the engine's."""

    def __init__(self, provider: Provider, prefix: str) -> None:
        self.provider = provider
        self.prefix = prefix

    def check(self, model: str) -> None:
        check = getattr(self.provider, "check", None)
        if callable(check):
            outcome = check(model)
            if inspect.isawaitable(outcome):  # (dropped, it never ran: the run went on)
                if inspect.iscoroutine(outcome):
                    outcome.close()
                raise ConfigError(
                    f"the provider for '{self.prefix}' has an async check: make it a plain "
                    "`def check(self, model)` (it is called before the run starts)"
                )

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        try:
            pending = self.provider.complete(request)
            if not inspect.isawaitable(pending):
                raise LLMError(
                    f"{self._where(request)} returned a {type(pending).__name__} from complete, "
                    "not a coroutine: define it `async def complete(self, request)` (a call "
                    "that blocks holds up every other run and the step's timeout)",
                    retryable=False,
                )
            response = await pending
        except EclflowError:  # (LLMError, with its retryable and retry_after, as it is)
            raise
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # (Ctrl-C, a stopped batch, the timeout)
                raise
            # a task of the provider's own was cancelled under it: raised on, it cancelled the
            # caller's run (left `running`) or the whole batch
            raise LLMError(
                f"{request.model}: the provider raised CancelledError, though nothing "
                "cancelled the step",
                retryable=False,
            ) from e
        except Exception as e:
            from .remote import clean_message, plain_error

            raise plain_error(e, f"{request.model}: {clean_message(e, litellm=False)}") from e
        return self._checked(response, request)

    def _where(self, request: CompletionRequest) -> str:
        return f"the provider for '{self.prefix}' (model {request.model})"

    def _checked(self, response: Any, request: CompletionRequest) -> CompletionResponse:
        """The reply, when it is one the journal and the budget can take."""
        where = self._where(request)
        if not isinstance(response, CompletionResponse):
            raise LLMError(
                f"{where} returned {type(response).__name__}, not an eclflow.CompletionResponse",
                retryable=False,
            )
        if not isinstance(response.content, str):
            raise LLMError(
                f"{where} returned content of type {type(response.content).__name__}, not str",
                retryable=False,
            )
        usage = response.usage
        counts = (usage.input, usage.output) if isinstance(usage, TokenUsage) else ()
        if not counts or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts
        ):
            raise LLMError(
                f"{where} returned usage {usage!r}: give TokenUsage(input=N, output=N), "
                "whole numbers ≥ 0",
                retryable=False,
            )
        cost = response.cost
        if (
            isinstance(cost, bool)
            or not isinstance(cost, int | float)
            or not math.isfinite(cost)
            or cost < 0
        ):
            raise LLMError(
                f"{where} returned cost {cost!r}: give US dollars, a number ≥ 0",
                retryable=False,
            )
        if not isinstance(response.finish_reason, str) or not isinstance(response.model, str):
            raise LLMError(
                f"{where} returned a finish_reason or model that is not text", retryable=False
            )
        if isinstance(cost, int):
            from dataclasses import replace

            response = replace(response, cost=float(cost))
        return response
