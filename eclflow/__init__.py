"""eclflow: declarative YAML workflows for LLM work.

    import asyncio
    import eclflow

    wf = eclflow.load("workflows/critique_revise.yaml")
    result = asyncio.run(eclflow.run(wf, {"topic": "tide pools"}, model="local/smollm2"))
    print(result.status, result.output)

Workflows: `load(path)` and `load_text(text)` return a validated `Workflow` or raise
`WorkflowInvalid`, whose `diagnostics` are every problem (`Diagnostic`: `code`, `location`,
`message`); `check(path)` and `check_text(text)` return the workflow (None if invalid) and the
diagnostics instead of raising.

Runs: `run`, `resume` and `run_batch` are coroutines (await them inside your own event loop),
`iter_batch` an async iterator of a batch's results; `pause` asks the process running a run to
pause it. A failed run is a `RunResult` with `status == "failed"`, not an exception; its
`steps` are `StepExecution`s. `open_store(url)` opens a journal (SQLite or PostgreSQL) to pass
as `store=`, and lists the runs in it (`store.runs.list()`). `MockProvider` plays scripted
replies for `mock/…` models; a `Provider` of your own (`async def complete(request:
CompletionRequest) -> CompletionResponse`, the request's `messages` each a `Message`, the reply
with its `TokenUsage`) serves the models of a prefix, `run(…, providers={"myco": client})`;
`Step`, `StepContext`, `StepResult` and `register` add step types of your own.

Errors: the exceptions below are raised for what is wrong before a run starts (an invalid file
or input, a run that does not exist, …), all of them subclasses of `EclflowError`; the
hierarchy is in `eclflow.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# errors.py imports nothing heavy, so its classes are here eagerly.
from .errors import (
    BudgetExceeded,
    ConfigError,
    EclflowError,
    InvalidInput,
    InvalidState,
    LLMError,
    NotFound,
    PersistenceError,
    RunNotFound,
    StepNotFound,
    StepTimeout,
    StoreNotFound,
    StoreUnavailable,
    TemplateError,
    UnclearRunId,
    ValidationError,
    WorkflowInvalid,
)

__version__ = "0.1.0"

__all__ = [
    "BatchProgress",
    "Budget",
    "BudgetExceeded",
    "CompletionRequest",
    "CompletionResponse",
    "ConfigError",
    "Diagnostic",
    "EclflowError",
    "InvalidInput",
    "InvalidState",
    "LLMError",
    "Location",
    "Message",
    "MockProvider",
    "NotFound",
    "PersistenceError",
    "Provider",
    "RunNotFound",
    "RunResult",
    "Step",
    "StepContext",
    "StepExecution",
    "StepNotFound",
    "StepResult",
    "StepTimeout",
    "Store",
    "StoreNotFound",
    "StoreUnavailable",
    "TemplateError",
    "TokenUsage",
    "UnclearRunId",
    "ValidationError",
    "Workflow",
    "WorkflowInvalid",
    "__version__",
    "check",
    "check_text",
    "iter_batch",
    "load",
    "load_text",
    "open_store",
    "pause",
    "register",
    "resume",
    "run",
    "run_batch",
]

if TYPE_CHECKING:
    from .engine import RunResult, StepExecution, pause, resume, run
    from .engine.batch import BatchProgress, iter_batch, run_batch
    from .llm import (
        CompletionRequest,
        CompletionResponse,
        Message,
        MockProvider,
        Provider,
        TokenUsage,
    )
    from .spec import Budget, Diagnostic, Location, Workflow, check, check_text, load, load_text
    from .steps import Step, StepContext, StepResult, register
    from .store import Store, open_store

# Imported on first use, so that `eclflow validate` does not pay for the engine.
_LAZY = {
    "RunResult": "eclflow.engine",
    "StepExecution": "eclflow.engine",
    "run": "eclflow.engine",
    "resume": "eclflow.engine",
    "pause": "eclflow.engine",
    "BatchProgress": "eclflow.engine.batch",
    "iter_batch": "eclflow.engine.batch",
    "run_batch": "eclflow.engine.batch",
    "Workflow": "eclflow.spec",
    "Budget": "eclflow.spec",
    "Diagnostic": "eclflow.spec",
    "Location": "eclflow.spec",
    "load": "eclflow.spec",
    "load_text": "eclflow.spec",
    "check": "eclflow.spec",
    "check_text": "eclflow.spec",
    "Step": "eclflow.steps",
    "StepContext": "eclflow.steps",
    "StepResult": "eclflow.steps",
    "register": "eclflow.steps",
    "MockProvider": "eclflow.llm",
    "Provider": "eclflow.llm",
    "CompletionRequest": "eclflow.llm",
    "CompletionResponse": "eclflow.llm",
    "Message": "eclflow.llm",
    "TokenUsage": "eclflow.llm",
    "Store": "eclflow.store",
    "open_store": "eclflow.store",
}


def __getattr__(name: str) -> Any:
    """Import the public names lazily so `eclflow validate` starts fast."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eclflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The module's names with the lazy ones, so `dir()`, `help()` and completion see them."""
    return sorted({*globals(), *__all__})
