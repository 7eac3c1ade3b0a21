"""Model providers behind one interface, chosen by the model string.

`mock/…` plays a script, `local/…` runs an in-process GGUF model, a model whose prefix a
caller's own provider was given for (`providers=`) goes to it, anything else through litellm.
The heavy ones are imported only when a run actually uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import CompletionRequest, CompletionResponse, Message, Provider, TokenUsage
from .mock import MockProvider, load_script

if TYPE_CHECKING:
    from ..observe.budget import Price
    from .own import OwnProviders

__all__ = [
    "CompletionRequest",
    "CompletionResponse",
    "Message",
    "MockProvider",
    "Provider",
    "Providers",
    "TokenUsage",
    "load_script",
]


class Providers:
    """Resolves model strings to providers for one run (or batch), creating each once."""

    def __init__(
        self,
        mock: Provider | None = None,
        command: str = "eclflow run",
        own: OwnProviders | None = None,
    ) -> None:
        """`command`: the command a `mock/` model's missing script is passed to (`eclflow
        resume` for a resumed run), named when it is missing. `own`: providers of one's own
        by model prefix (`own.own_providers`)."""
        if own is None:
            from .own import OwnProviders

            own = OwnProviders({})
        self.mock = mock
        self.command = command
        self.own = own
        self._cache: dict[str, Provider] = {}

    def kind(self, model: str) -> str:
        if model.startswith("mock/"):
            return "mock"
        if model.startswith("local/"):
            return "local"
        if self.own:
            from .own import provider_for

            prefix = provider_for(self.own, model)
            if prefix is not None:
                return "own:" + prefix
        return "remote"

    def serves_own(self, model: str) -> bool:
        """Whether a provider of the caller's own serves `model`."""
        return self.kind(model).startswith("own:")

    def get(self, model: str) -> Provider:
        if model in _BARE:  # (litellm would say it knows no such provider)
            from ..errors import ConfigError

            raise ConfigError(f"model '{model}' needs a name after it: {_BARE[model]}")
        kind = self.kind(model)
        cached = self._cache.get(kind)
        if cached is not None:
            return cached
        from ..errors import ConfigError

        provider: Provider
        if kind == "mock":
            if self.mock is None:
                raise ConfigError(
                    f"model '{model}' plays a script of replies: pass --mock-responses FILE "
                    f"to `{self.command}` (for Restate runs, to `eclflow serve`) or "
                    "mock_responses= (Python)"
                )
            provider = self.mock
        elif kind.startswith("own:"):
            from .own import OwnProvider

            prefix = kind[len("own:") :]
            provider = OwnProvider(self.own[prefix], prefix, self.own)
        elif kind == "local":
            from .local import LocalProvider

            provider = _shared_local(LocalProvider)
        else:
            from .remote import LiteLLMProvider

            provider = LiteLLMProvider()
        self._cache[kind] = provider
        return provider

    def check(self, model: str) -> None:
        """Raise ConfigError now if `model` cannot be called (missing key, extra not installed).
        (A provider of the caller's own is checked by `self.own.prepare`, on the loop.)"""
        check = getattr(self.get(model), "check", None)
        if check is not None:
            check(model)

    def price(self, model: str) -> Price | None:
        """Dollars per token of `model`: its own provider's price, else litellm's; None when
        unknown."""
        if self.own and self.serves_own(model):
            return self.own.price(model)
        from ..observe.budget import price

        return price(model)


# a provider's prefix alone, without the model's name
_BARE = {
    "mock": "write mock/NAME (any name, e.g. mock/test) and pass --mock-responses FILE",
    "mock/": "write mock/NAME (any name, e.g. mock/test) and pass --mock-responses FILE",
    "local": "write local/smollm2, or local/PATH.gguf for a GGUF file",
}

_local_instance: Provider | None = None


def _shared_local(cls: type) -> Provider:
    global _local_instance
    if _local_instance is None:
        _local_instance = cls()
    return _local_instance
