"""Workflow files: YAML text → a validated, immutable `Workflow` (or diagnostics)."""

from .model import (
    Budget,
    Conditional,
    Diagnostic,
    Location,
    RetrySpec,
    RevisionLoop,
    Sequential,
    StepSpec,
    Transition,
    Workflow,
)

__all__ = [
    "Budget",
    "Conditional",
    "Diagnostic",
    "Location",
    "RetrySpec",
    "RevisionLoop",
    "Sequential",
    "StepSpec",
    "Transition",
    "Workflow",
]
