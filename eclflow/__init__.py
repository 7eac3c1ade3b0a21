"""eclflow: declarative YAML workflows for LLM work.

import eclflow
wf = eclflow.load("workflows/critique_revise.yaml")
result = await eclflow.run(wf, {"topic": "tide pools"}, model="local/smollm2")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import EclflowError

__version__ = "0.1.0"

__all__ = [
    "EclflowError",
    "RunResult",
    "Step",
    "StepContext",
    "StepResult",
    "Workflow",
    "__version__",
    "load",
    "register",
    "resume",
    "run",
]

if TYPE_CHECKING:
    from .engine import RunResult, resume, run
    from .spec import Workflow, load
    from .steps import Step, StepContext, StepResult, register

_LAZY = {
    "RunResult": "eclflow.engine",
    "run": "eclflow.engine",
    "resume": "eclflow.engine",
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
