"""Workflow files: YAML text → a validated, immutable `Workflow` (or diagnostics)."""

from .loader import check, check_text, load, load_text, parse_duration, schema
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
    "check",
    "check_text",
    "load",
    "load_text",
    "parse_duration",
    "schema",
]
