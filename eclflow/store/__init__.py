"""The durable store: runs, step executions, artifacts and events in SQLite or PostgreSQL.

    store = open_store("sqlite:///runs.db")   # or postgresql://user@host:5432/db, or None
    store.runs.create(...); h = store.steps.start(...); store.steps.finish(h, ...)

Repositories return frozen records (records.py), never live ORM objects.
"""

from __future__ import annotations

from .db import Store, open_store
from .records import (
    RUN_STATES,
    TERMINAL_STATES,
    ArtifactRecord,
    EventRecord,
    RunRecord,
    StepRow,
    StepStats,
)
from .url import DatabaseURL, parse_url, resolve_url

__all__ = [
    "RUN_STATES",
    "TERMINAL_STATES",
    "ArtifactRecord",
    "DatabaseURL",
    "EventRecord",
    "RunRecord",
    "StepRow",
    "StepStats",
    "Store",
    "open_store",
    "parse_url",
    "resolve_url",
]
