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
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError, EclflowError, LLMError
from ..observe.budget import Price
from .base import CompletionRequest, CompletionResponse, Provider, TokenUsage

# the prefixes of eclflow's own providers, which a provider of one's own does not replace
RESERVED = ("mock", "local")


class OwnProviders(dict[str, Provider]):
    """`providers=` checked (`own_providers`), by prefix, with what was asked of them once for
    every run that shares them (a batch's runs): the models their `check` passed, their prices."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        super().__init__(providers)
        self.ready: set[str] = set()  # the models whose check passed
        self.prices: dict[str, Price | None] = {}

    async def prepare(self, models: Iterable[str], max_usd: float | None = None) -> None:
        """Before a run starts: for each of `models` a provider here serves, its `check(model)`
        (awaited when async) and its price, once per model; on the event loop's thread, as its
        `complete` is (a check may use the provider's HTTP client, which is the loop's).
        ConfigError when a dollar budget (`max_usd`) needs a price the provider does not give."""
        for model in sorted(set(models)):
            prefix = provider_for(self, model)
            if prefix is None:
                continue
            if model not in self.ready:
                check = getattr(self[prefix], "check", None)
                if callable(check):
                    try:
                        outcome = check(model)
                        if inspect.isawaitable(outcome):
                            await outcome
                    except EclflowError:  # (its ConfigError, as it is)
                        raise
                    except Exception as e:
                        raise _raised(e, prefix, f"check({model!r})") from e
                self.ready.add(model)
            if self.price(model) is None and max_usd is not None:
                raise ConfigError(
                    f"a budget of ${max_usd:g} needs the price of model '{model}': give the "
                    f"provider for '{prefix}' a method `def price(self, model)` returning its "
                    "US dollars per input token and per output token, or limit tokens or calls "
                    "instead"
                )

    def price(self, model: str) -> Price | None:
        """What a provider here charges for `model` (its `price(model)`, asked once), None when
        it does not say. litellm's price for a model of the same name is not taken: the
        provider's own model, or its way to a known one, is not litellm's to price."""
        if model in self.prices:
            return self.prices[model]
        prefix = provider_for(self, model)
        asked = getattr(self[prefix], "price", None) if prefix is not None else None
        try:
            given = asked(model) if callable(asked) else None
        except EclflowError:
            raise
        except Exception as e:
            raise _raised(
                e, prefix, f"price({model!r})", "return None for a model it has no price for"
            ) from e
        found = _price(given, prefix, model)
        self.prices[model] = found
        return found


def _raised(e: Exception, prefix: str | None, call: str, hint: str = "") -> ConfigError:
    """What a provider's `check` or `price` raised, as one line naming the provider."""
    text = " ".join(str(e).split())
    said = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return ConfigError(
        f"the provider for '{prefix}' raised {said} from {call}" + (f": {hint}" if hint else "")
    )


def _price(given: Any, prefix: str | None, model: str) -> Price | None:
    """A provider's `price(model)` as a Price (None: it has none for this model)."""
    if given is None:
        return None
    if inspect.iscoroutine(given):  # (an async def price: never awaited)
        given.close()
    numbers = tuple(given) if isinstance(given, tuple | list) else ()
    if len(numbers) != 2 or not all(
        isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) and n >= 0
        for n in numbers
    ):
        raise ConfigError(
            f"the provider for '{prefix}' gave the price {given!r} for model '{model}': "
            "return (input, output), US dollars per token, numbers ≥ 0 (or None), from a plain "
            "`def price(self, model)`"
        )
    return Price(float(numbers[0]), float(numbers[1]))


def own_providers(providers: Any) -> OwnProviders:
    """`providers=` checked: a mapping of model prefixes (`myco` for `myco/…`, or a whole
    model name) to objects with a `complete` method; ConfigError naming what is wrong (two keys
    for one prefix too: `myco` and `myco/`). Checked already (an OwnProviders), as it is."""
    if isinstance(providers, OwnProviders):
        return providers
    if providers is None:
        return OwnProviders({})
    if not isinstance(providers, Mapping):
        raise ConfigError(
            "providers is a mapping of model prefixes to providers, such as "
            f"{{'myco': client}} for the models myco/…, not {type(providers).__name__}"
        )
    out: dict[str, Provider] = {}
    keys: dict[str, str] = {}
    for prefix, provider in providers.items():
        if not isinstance(prefix, str) or not prefix.strip("/").strip():
            raise ConfigError(
                f"providers: a key is a model prefix such as 'myco' (for myco/…), not {prefix!r}"
            )
        name = prefix.strip("/")
        if name in keys:
            raise ConfigError(
                f"providers: the keys {keys[name]!r} and {prefix!r} both name the prefix "
                f"'{name}' (the models {name}/…): give one of them"
            )
        keys[name] = prefix
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
    return OwnProviders(out)


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

    def __init__(self, provider: Provider, prefix: str, own: OwnProviders | None = None) -> None:
        """`own`: the providers it is one of, which know its prices."""
        self.provider = provider
        self.prefix = prefix
        self.own = own

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
        if not (usage.input or usage.output):
            # a reply that reports no usage (`CompletionResponse(text)`): counted as nothing, a
            # budget would never stop; the estimate a remote reply without usage gets instead
            from ..observe.budget import estimate_tokens, prompt_tokens

            usage = TokenUsage(
                prompt_tokens(request.model, request.messages, estimate=True),
                estimate_tokens(response.content),
            )
        if not cost and self.own is not None:
            # a reply that says no cost, of a provider that gives its price: counted at it
            p = self.own.price(request.model)
            if p is not None:
                cost = usage.input * p.input + usage.output * p.output
        if usage is not response.usage or cost != response.cost or type(cost) is not float:
            from dataclasses import replace

            response = replace(response, usage=usage, cost=float(cost))
        return response
