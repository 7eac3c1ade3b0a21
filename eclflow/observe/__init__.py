"""Observability: correlated logs, the run's event timeline, spans, prices and budgets."""

from .events import EVENTS, EventRecorder, emit, record_to
from .logs import bind, configure, get_logger

__all__ = ["EVENTS", "EventRecorder", "bind", "configure", "emit", "get_logger", "record_to"]
