"""The standard events of a run: logged with their fields and kept with the run in the store.

Each event has a stable `kind` (for filtering and the store) and the seed's message text.
`record_to(recorder)` sends the events of the current run to an `EventRecorder`, which writes
them to the store in batches, so the timeline survives the process and `eclflow logs --follow`
can watch it from another one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .logs import bound, get_logger

logger = get_logger("run")

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

# kind → (level, message). At info level a run logs its start and end and one line a step
# (with tokens and cost); attempts and model calls are debug, retries and failures above info.
EVENTS: dict[str, tuple[int, str]] = {
    "workflow_started": (INFO, "Workflow execution started"),
    "workflow_completed": (INFO, "Workflow execution completed successfully"),
    "workflow_failed": (ERROR, "Workflow execution failed"),
    "workflow_paused": (INFO, "Workflow paused as asked"),
    # written by the resume that finds the run's process gone: the process could not say it
    "workflow_interrupted": (WARNING, "Workflow execution interrupted"),
    "workflow_resumed": (INFO, "Workflow execution resumed"),
    "step_started": (DEBUG, "Step execution started"),
    "step_succeeded": (INFO, "Step execution succeeded"),
    "step_succeeded_after_retry": (INFO, "Step succeeded after retry"),
    "step_failed": (ERROR, "Step execution failed"),
    "step_failed_after_retries": (ERROR, "Step failed after all retry attempts"),
    "step_skipped": (INFO, "Step skipped"),
    "step_replayed": (INFO, "Step replayed from the journal"),
    "retrying": (WARNING, "Retrying after failure"),
    "validation_failed": (WARNING, "Validation failed"),
    "llm_request_started": (DEBUG, "LLM request started"),
    "llm_request_completed": (DEBUG, "LLM request completed"),
    "llm_prompt": (DEBUG, "LLM prompt"),
    "llm_reply": (DEBUG, "LLM reply"),
    "llm_request_failed": (WARNING, "LLM request failed"),
    "llm_reply_truncated": (WARNING, "LLM reply cut off at max_tokens"),
    "llm_context_full": (WARNING, "LLM reply cut off: the model's context window is full"),
    "loop_revision": (INFO, "Revision requested"),
    "budget_exceeded": (ERROR, "Budget exceeded"),
}

_LEVEL_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}

# Kept in the logs only: the step's attempt rows already say when each attempt started, and
# hold its prompt and reply.
_NOT_KEPT = frozenset({"step_started", "llm_request_started", "llm_prompt", "llm_reply"})


def level_name(level: int) -> str:
    """`info` for INFO: an event's level as its record in the store says it."""
    return _LEVEL_NAMES[level]


_recorder: ContextVar[EventRecorder | None] = ContextVar("eclflow_event_recorder", default=None)


def emit(kind: str, **fields: Any) -> bool:
    """Log a standard event with its fields, and record it for the current run. Whether the
    logs take events of its level (the caller may log more alongside it)."""
    level, message = EVENTS[kind]
    recorder = _recorder.get()
    enabled = logger.isEnabledFor(level)
    if not enabled and recorder is None:
        return False
    if enabled:
        _log(kind, level, message, fields)
    if recorder is not None and kind not in _NOT_KEPT:
        recorder.add(kind, level, message, fields)
    return enabled


def log_only(kind: str, **fields: Any) -> None:
    """Log a standard event that is kept in the store by other means (the take-over of a
    resume writes `workflow_interrupted` in its own transaction): the process's logs say it
    as they say the events that follow it, and the run's timeline holds it once."""
    level, message = EVENTS[kind]
    if logger.isEnabledFor(level):
        _log(kind, level, message, fields)


def _log(kind: str, level: int, message: str, fields: Mapping[str, Any]) -> None:
    # makeRecord + handle: what logger.log does, minus looking up the caller's frame
    logger.handle(
        logger.makeRecord(
            logger.name, level, "eclflow", 0, message, (), None, extra={"kind": kind, **fields}
        )
    )


def wanted(kind: str) -> bool:
    """Whether `emit(kind, …)` here would log or record anything: for a caller whose fields
    cost something to compute (sums over a run's steps)."""
    return _recorder.get() is not None or logger.isEnabledFor(EVENTS[kind][0])


@contextmanager
def record_to(recorder: EventRecorder | None) -> Iterator[None]:
    token = _recorder.set(recorder)
    try:
        yield
    finally:
        _recorder.reset(token)


class EventRecorder:
    """Buffers a run's events; the store's writer takes them in batches (every fraction of a
    second, and at the run's end), so other processes can follow the run."""

    def __init__(self, store: Any, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._buffer: list[tuple[str, str | None, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, level: int, message: str, fields: Mapping[str, Any]) -> None:
        """Keep one event with the fields bound where it happened (but the run id)."""
        data: dict[str, Any] = {"level": _LEVEL_NAMES[level], "message": message, "ts": time.time()}
        data.update(bound())
        data.pop("run_id", None)
        data.update(fields)
        with self._lock:
            self._buffer.append((kind, data.get("step_id"), data))

    def take(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """Empty the buffer and return what it held."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        return batch
