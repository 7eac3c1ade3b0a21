"""eclflow: declarative YAML workflows for LLM work.

    import asyncio
    import eclflow

    wf = eclflow.load("workflows/critique_revise.yaml")
    result = asyncio.run(eclflow.run(wf, {"topic": "tide pools"}, model="local/smollm2"))
    print(result.status, result.output)

`run` and `resume` are coroutines (await them inside your own event loop). A failed run is a
`RunResult` with `status == "failed"`, not an exception; the exceptions below are raised for
what is wrong before a run starts (an invalid file or input, a run that does not exist, …),
all of them subclasses of `EclflowError`.
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
    "BudgetExceeded",
    "ConfigError",
    "EclflowError",
    "InvalidInput",
    "InvalidState",
    "LLMError",
    "NotFound",
    "PersistenceError",
    "RunNotFound",
    "RunResult",
    "Step",
    "StepContext",
    "StepNotFound",
    "StepResult",
    "StepTimeout",
    "StoreNotFound",
    "StoreUnavailable",
    "TemplateError",
    "UnclearRunId",
    "ValidationError",
    "Workflow",
    "WorkflowInvalid",
    "__version__",
    "load",
    "pause",
    "register",
    "resume",
    "run",
]

if TYPE_CHECKING:
    from .engine import RunResult, pause, resume, run
    from .spec import Workflow, load
    from .steps import Step, StepContext, StepResult, register

# Imported on first use, so that `eclflow validate` does not pay for the engine.
_LAZY = {
    "RunResult": "eclflow.engine",
    "run": "eclflow.engine",
    "resume": "eclflow.engine",
    "pause": "eclflow.engine",
    "Workflow": "eclflow.spec",
    "load": "eclflow.spec",
    "Step": "eclflow.steps",
    "StepContext": "eclflow.steps",
    "StepResult": "eclflow.steps",
    "register": "eclflow.steps",
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
