"""Step types: the base class, the registry and the built-in types."""

from .base import LoopState, RetryPolicy, Step, StepContext, StepResult
from .registry import StepRegistry, default_registry, register

__all__ = [
    "LoopState",
    "RetryPolicy",
    "Step",
    "StepContext",
    "StepRegistry",
    "StepResult",
    "default_registry",
    "register",
]
