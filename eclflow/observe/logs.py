"""Logging on the standard library, with run and step correlation through contextvars.

`bind(run_id=…)` adds fields to every record logged inside it, also in tasks started inside it,
so concurrent runs never mix. `configure()` installs one handler on the `eclflow` logger in one
of three formats: `pretty` (rich, one line a record; several lines with tracebacks at debug
level), `json` (one object a line, every field) or `compact`. Until then the library logs to
nobody, as libraries should: configure `logging` (or call `configure()`) to see its records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from datetime import datetime

LOGGER_NAME = "eclflow"
FORMATS = ("pretty", "json", "compact")
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "warning"
DEFAULT_FORMAT = "pretty"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("eclflow_log_context", default=_EMPTY)

# Attributes every LogRecord has; everything else on a record is a field of ours.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_SECRET_WORDS = ("api_key", "apikey", "authorization", "password", "secret", "token_value")


# A library's logs reach nobody until the application configures logging (the CLI does, with
# `configure()`); without this, Python's last-resort handler prints bare warnings on stderr.
logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class bind:
    """Add fields to every record logged inside the block (and in tasks it starts)."""

    __slots__ = ("fields", "token")

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __enter__(self) -> None:
        self.token = _context.set({**_context.get(), **self.fields})

    def __exit__(self, *exc: object) -> None:
        _context.reset(self.token)


def push(fields: Mapping[str, Any]) -> Token[Mapping[str, Any]]:
    """`with bind(**fields)`'s entry as one plain call; `pop(token)` is its exit. For the
    engine's step path: making a `bind` with keywords and entering it costs several times more."""
    return _context.set({**_context.get(), **fields})


def pop(token: Token[Mapping[str, Any]]) -> None:
    """Leave what `push` bound."""
    _context.reset(token)


def bound() -> Mapping[str, Any]:
    """The fields bound at this point."""
    return _context.get()


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if key not in record.__dict__:
                record.__dict__[key] = value
        return True


@lru_cache(maxsize=1024)
def _kind_of_key(key: str) -> int:
    """0: a LogRecord attribute (skipped), 1: a field, 2: a field whose value is a secret."""
    if key in _STANDARD or key.startswith("_"):
        return 0
    lowered = key.lower()
    return 2 if any(word in lowered for word in _SECRET_WORDS) else 1


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (bound context and `extra=`), secrets masked."""
    out = {}
    for key, value in record.__dict__.items():
        kind = _kind_of_key(key)
        if kind:
            out[key] = "***" if kind == 2 else value
    return out


def for_people(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields as the human formats show them: the step as `step=` its journal key, as
    `eclflow status` and the run's lines name it (`critique#2`, not `step_id=critique
    iteration=1`). The JSON format keeps every field."""
    step = fields.get("key") or fields.get("step_id")
    if step is None:
        out = dict(fields)
    else:
        # (without its key, a record of an older eclflow: its iteration tells critique#1 and
        # critique#2 apart)
        said = _STEP_FIELDS if fields.get("key") else _STEP_FIELDS - {"iteration"}
        out = {"step": step}
        out.update((k, v) for k, v in fields.items() if k not in said)
    for name in TIME_FIELDS:
        if name in out:
            out[name] = local_time(out[name])
    return out


_STEP_FIELDS = frozenset({"step_id", "key", "iteration", "step"})

# Fields that hold a time, as ISO 8601 text with its UTC offset (the interrupted event's
# `last_seen`): the human formats show them in the reader's time zone, as the record's own time.
TIME_FIELDS = ("last_seen",)


def aware_time(value: Any) -> datetime | None:
    """An ISO 8601 time with its offset (`2026-12-07T02:29:39.047+00:00`) in the reader's local
    zone; None for anything else (text without an offset is in no zone one could tell)."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return when.astimezone() if when is not None and when.tzinfo is not None else None


def local_time(value: Any) -> Any:
    """An ISO 8601 time with its offset as the reader's local time, `2026-12-07 03:29:39.047`
    (the date as `eclflow status` shows it, the milliseconds of the logs' own times); anything
    else as it is."""
    local = aware_time(value)
    if local is None:
        return value
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d}"


class JSONFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, event, then every field."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(fields_of(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class CompactFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL event key=value …` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = for_people(fields_of(record))
        head = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{head} {record.levelname:<7} {record.getMessage()}"]
        for key, value in fields.items():
            if key == "run_id" and isinstance(value, str):
                value = value[:8]
            parts.append(f"{key}={shorten(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _PrettyFormatter(logging.Formatter):
    """Message then dimmed fields, for rich's handler (which adds time and level)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = for_people(fields_of(record))
        extra = " ".join(
            f"{k}={shorten(v[:8] if k == 'run_id' and isinstance(v, str) else v)}"
            for k, v in fields.items()
        )
        text = (
            f"{record.getMessage()}  [dim]{_escape(extra)}[/dim]" if extra else record.getMessage()
        )
        if record.exc_info:
            text += "\n" + _escape(self.formatException(record.exc_info))
        return text


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def shorten(value: Any, limit: int = 120) -> str:
    """A value on one line, cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler eclflow installed, so configuring again replaces it."""


class _OneLineHandler(logging.Handler):
    """The default `pretty` logs: one line a record (time, level and message in colour, then
    the fields), cut at the terminal's width rather than wrapped. rich is imported on the
    first record, so commands that log nothing stay fast."""

    _eclflow = True
    _FIRST = ("step", "attempt", "error")  # what a person reads first
    _HIDDEN = frozenset({"kind"})  # (the message says it in words)

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self.stream = stream
        self._console: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from rich.text import Text

            if self._console is None:
                from rich.console import Console

                self._console = Console(
                    file=self.stream or sys.stderr, stderr=self.stream is None, highlight=False
                )
            console = self._console
            fields = for_people(fields_of(record))
            keys = [k for k in self._FIRST if k in fields]
            keys += [k for k in fields if k not in self._FIRST and k not in self._HIDDEN]
            line = Text.assemble(
                (time.strftime("%H:%M:%S ", time.localtime(record.created)), "log.time"),
                (f"{record.levelname:<8}", f"logging.level.{record.levelname.lower()}"),
                " ".join(record.getMessage().split()),
            )
            if keys:
                line.append("  " + " ".join(f"{k}={_short(k, fields[k])}" for k in keys), "dim")
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                line.append(f"  ({type(error).__name__}: {error})", "red")
            if console.is_terminal:
                console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
            else:
                console.print(line, soft_wrap=True)
        except Exception:
            self.handleError(record)


def _short(key: str, value: Any) -> str:
    return shorten(value[:8] if key == "run_id" and isinstance(value, str) else value)


class _LazyRichHandler(logging.Handler):
    """rich's handler, imported on the first record: commands that log nothing stay fast.
    Records over several lines, with tracebacks: for debug logs (`-v`)."""

    _eclflow = True

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self.stream = stream
        self._inner: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._inner is None:
            from rich.console import Console
            from rich.logging import RichHandler

            inner = RichHandler(
                console=Console(file=self.stream or sys.stderr, stderr=self.stream is None),
                show_path=False,
                markup=True,
                rich_tracebacks=False,
            )
            inner.setFormatter(_PrettyFormatter())
            self._inner = inner
        self._inner.emit(record)


def resolve(level: str | None = None, fmt: str | None = None) -> tuple[str, str]:
    """Options > ECLFLOW_LOG_LEVEL / ECLFLOW_LOG_FORMAT > defaults."""
    level = (level or os.environ.get("ECLFLOW_LOG_LEVEL") or DEFAULT_LEVEL).lower()
    fmt = (fmt or os.environ.get("ECLFLOW_LOG_FORMAT") or DEFAULT_FORMAT).lower()
    if level == "warn":
        level = "warning"
    if level not in LEVELS:
        from ..errors import ConfigError

        raise ConfigError(f"log level '{level}' is not one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"log format '{fmt}' is not one of {', '.join(FORMATS)}")
    return level, fmt


def configure(
    level: str | None = None, fmt: str | None = None, stream: TextIO | None = None
) -> logging.Logger:
    """Send eclflow's logs to stderr (or `stream`) in one format; calling again is harmless."""
    level, fmt = resolve(level, fmt)
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if isinstance(h, _Handler) or getattr(h, "_eclflow", False):
            logger.removeHandler(h)
    handler: logging.Handler
    if fmt == "pretty":
        handler = _LazyRichHandler(stream) if level == "debug" else _OneLineHandler(stream)
    else:
        handler = _Handler(stream or sys.stderr)
        handler.setFormatter(JSONFormatter() if fmt == "json" else CompactFormatter())
    handler.addFilter(_ContextFilter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def context_filter() -> logging.Filter:
    """A filter that adds the bound fields to records, for handlers of your own."""
    return _ContextFilter()


def quiet_unheard_retries() -> None:
    """Keep stamina's retry warnings from Python's last-resort handler.

    stamina's default hook logs each retry it schedules as a warning of the `stamina` logger;
    in a program that configured no logging, the last-resort handler prints it bare on stderr
    (`stamina.retry_scheduled`), though eclflow reports its retries in its own logs and the
    step's traces. When the program has set no retry hooks of its own (only stamina's
    defaults are in place), the logging hook is kept but called only when some handler would
    receive its record: with logging configured, the records come as before; other hooks
    (Prometheus, structlog) are left as they are. Calling it again changes nothing.
    """
    try:
        from stamina.instrumentation import get_on_retry_hooks, set_on_retry_hooks
    except ImportError:  # (a stamina without the instrumentation API: nothing to do)
        return
    hooks = get_on_retry_hooks()
    own = [getattr(h, "__module__", "") or "" for h in hooks]
    if not all(m.startswith("stamina.") for m in own) or _STAMINA_LOGGING not in own:
        return  # the program's own hooks, or no logging hook: theirs to decide
    set_on_retry_hooks(
        [_when_heard(h) if m == _STAMINA_LOGGING else h for h, m in zip(hooks, own, strict=True)]
    )


_STAMINA_LOGGING = "stamina.instrumentation._logging"  # where its default logging hook lives


def _when_heard(hook: Any) -> Any:
    """`hook`, called only when the `stamina` logger has a handler to reach."""
    stamina_logger = logging.getLogger("stamina")

    def log_retry_if_heard(details: Any) -> None:
        if stamina_logger.hasHandlers():
            hook(details)

    return log_retry_if_heard
