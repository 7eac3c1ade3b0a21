"""The engine: executor (one step) and orchestrator (one run), durable through a journal."""

from ..observe.logs import quiet_unheard_retries
from .executor import Executor
from .journal import Journal, MemoryJournal, StoreJournal
from .orchestrator import Orchestrator
from .result import RunResult, StepExecution, TraceEvent
from .runner import pause, resume, run

__all__ = [
    "Executor",
    "Journal",
    "MemoryJournal",
    "Orchestrator",
    "RunResult",
    "StepExecution",
    "StoreJournal",
    "TraceEvent",
    "pause",
    "resume",
    "run",
]

quiet_unheard_retries()  # (stamina's retry warnings, printed bare when no logging is set up)
