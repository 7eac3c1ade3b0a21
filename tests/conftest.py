"""Shared fixtures. Tests never reach the network; the only fake is the scripted `mock/` model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
EXAMPLES = ROOT / "examples"
CRITIQUE_REVISE = WORKFLOWS / "critique_revise.yaml"

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def _no_retry_waits():
    """Retries run for real, but stamina's testing mode removes the waiting."""
    import stamina

    stamina.set_testing(True, attempts=100, cap=True)
    yield
    stamina.set_testing(False)


@pytest.fixture(autouse=True)
def _no_model_server_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own model server (ECLFLOW_API_BASE, OPENAI_BASE_URL, …) would make
    validate leave every model name alone: the tests see none, in-process and in the CLI."""
    from eclflow.llm.names import API_BASE_ENV, PROVIDER_BASE_ENVS

    for name in (API_BASE_ENV, *(n for ns in PROVIDER_BASE_ENVS.values() for n in ns)):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def eclflow_cmd() -> list[str]:
    """The command line that runs the real `eclflow` in a subprocess."""
    return [sys.executable, "-m", "eclflow"]
