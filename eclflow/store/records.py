"""Plain, frozen records the repositories return, so callers never hold live ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RUN_STATES = ("pending", "running", "paused", "completed", "failed", "cancelled")
TERMINAL_STATES = ("completed", "failed", "cancelled")
STEP_STATES = ("running", "succeeded", "failed", "skipped")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run: the definition it ran (text and hash), its input, state and output.

    `state` is what the journal holds; `status` what is true now (a run whose process died is
    `interrupted` there, though its `state` stays `running` until it is resumed)."""

    id: str
    definition_id: str
    definition_name: str | None
    definition: str
    definition_sha256: str
    input: Any
    state: str
    output: Any
    error: str | None
    failed_step: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def status(self) -> str:
        """The run's state as `eclflow status` and `eclflow runs` show it: `interrupted` for a
        run the journal still holds `running` (or `pending`: claimed by a batch) whose process
        has ended, which nothing but `resume` will finish; else `state`, as recorded."""
        from .owner import shown_state

        return shown_state(self.state, self.metadata or {})


@dataclass(frozen=True, slots=True)
class StepRow:
    """One attempt of one step occurrence (journal key), or a `skipped` marker (attempt 0)."""

    id: int
    run_id: str
    step_id: str
    key: str
    iteration: int
    attempt: int
    state: str
    outcome: str | None = None
    input: Any = None
    output: Any = None
    feedback: str | None = None
    error: str | None = None
    retryable: bool | None = None
    model: str | None = None
    prompt: Any = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    traces: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return (self.tokens_in or 0) + (self.tokens_out or 0)


@dataclass(frozen=True, slots=True)
class StepStats:
    """Totals over a run's step rows. `count` counts every row, `steps` the distinct keys run."""

    count: int = 0
    succeeded: int = 0
    failed: int = 0
    duration_ms: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    running: int = 0
    skipped: int = 0
    steps: int = 0

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of a run's timeline (`kind` is a key of eclflow.observe.events.EVENTS)."""

    id: int
    run_id: str
    ts: datetime
    kind: str
    step_id: str | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """A named piece of content a step produced: inline text, or a path to a file."""

    id: int
    run_id: str
    step_id: str | None
    name: str
    content_type: str
    content: str | None
    path: str | None
    size: int | None
    created_at: datetime
