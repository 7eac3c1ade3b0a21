"""What running steps and workflows produces: plain records, the same for the CLI and the API."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from .._quickinit import quick_init
from .._time import utc_text

Outcome = Literal["success", "needs_revision", "failed", "skipped"]
RunStatus = Literal["pending", "running", "paused", "completed", "failed", "cancelled"]
TraceLevel = Literal["debug", "info", "warn", "error"]
_now = time.time


@quick_init
@dataclass(frozen=True, slots=True)
class TraceEvent:
    level: TraceLevel
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=_now)  # seconds since the epoch

    @property
    def timestamp(self) -> str:
        return utc_text(self.time)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.timestamp, "level": self.level, "message": self.message, **self.fields}


@dataclass(slots=True)
class StepExecution:
    """One execution of one step occurrence (all its attempts), keyed in the journal by `key`."""

    step_id: str
    key: str
    iteration: int
    outcome: Outcome
    output: Any = None
    feedback: str | None = None
    error: str | None = None
    retryable: bool = False
    attempts: int = 0  # the journal's number of its last attempt: earlier executions' count
    duration_ms: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    calls: int = 0  # model calls that answered
    model: str | None = None
    input: Any = None
    # the messages of the last model call, for `eclflow show` (long: kept out of the repr)
    prompt: Any = field(default=None, repr=False)
    traces: list[TraceEvent] = field(default_factory=list, repr=False)
    replayed: bool = False
    # what the provider asked to wait before the next attempt (not journaled)
    retry_after: float | None = field(default=None, repr=False, compare=False)
    # model calls made, failed ones too (a budget counts them; the local journal has a row
    # an attempt instead), None where not known: then `calls`
    made: int | None = field(default=None, repr=False)

    @property
    def calls_made(self) -> int:
        """The model calls made, failed ones too (`calls` where that is not known)."""
        return self.calls if self.made is None else self.made

    @property
    def status(self) -> Literal["succeeded", "failed", "skipped"]:
        if self.outcome == "skipped":
            return "skipped"
        return "failed" if self.outcome == "failed" else "succeeded"

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.step_id,
            "key": self.key,
            "iteration": self.iteration,
            "status": self.status,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "tokens": self.tokens,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost": float(self.cost),
            "duration_ms": self.duration_ms,
            "output": self.output,
            "feedback": self.feedback,
            "error": self.error,
            "replayed": self.replayed,
        }


@dataclass(slots=True, repr=False)
class RunResult:
    """How a run ended. A failed run is a result with `status == "failed"`, never an exception."""

    run_id: str
    workflow_id: str
    status: RunStatus
    output: Any = None
    error: str | None = None
    failed_step: str | None = None
    steps: list[StepExecution] = field(default_factory=list)
    revisions: dict[str, int] = field(default_factory=dict)
    duration_ms: int = 0
    paused_at: str | None = None  # a paused run: the step it stopped before

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.steps)

    @property
    def cost(self) -> float:
        return float(sum(s.cost for s in self.steps))

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.steps if not s.replayed)

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def __repr__(self) -> str:
        """One short line: the steps (and their prompts) are in `steps` and `to_dict()`."""
        return (
            f"RunResult(run_id={self.run_id!r}, workflow={self.workflow_id!r}, "
            f"status={self.status!r}, steps={len(self.steps)}, tokens={self.tokens}, "
            f"cost={round(self.cost, 6)!r}, error={self.error!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow_id,
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "failed_step": self.failed_step,
            "revisions": self.revisions,
            "tokens": self.tokens,
            "cost": self.cost,
            "duration_ms": self.duration_ms,
            "steps": [s.to_dict() for s in self.steps],
            **({"paused_at": self.paused_at} if self.paused_at is not None else {}),
        }
