"""The typed, immutable form of a workflow file (DESIGN.md §1).

The loader builds these from YAML; everything downstream (graph, engine, store) reads only these.
Mappings are read-only views so a loaded workflow cannot be changed by accident.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Location:
    """A 1-based position in a workflow file."""

    file: str
    line: int = 1
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def printable(text: str) -> str:
    """`text` with lone surrogates (which UTF-8 cannot encode) written as `\\udXXX` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_character(name: str) -> str | None:
    """The first control character of `name` as U+XXXX (a NUL, which a PostgreSQL journal
    cannot hold, a line break, a tab), None when it has none: names (ids, models) have none."""
    found = _CONTROL_CHARACTER.search(name)
    return None if found is None else f"U+{ord(found.group()):04X}"


# A value a message quotes ('…' or "…") longer than this is shown by its start: an id, a type
# or a key of 10,000 characters made a line of 10,000 (and a JSON Schema message, of 20,000).
QUOTED_MAX = 80
_LONG = QUOTED_MAX - 2  # (characters between the quotes)
# (a quote that opens a value follows no letter, one that closes it is followed by none: the
# text between two short quoted values is not one)
_QUOTED = re.compile(f"(?<![\\w'\"])(?:'[^'\\n]{{{_LONG},}}'|\"[^\"\\n]{{{_LONG},}}\")(?!\\w)")
MESSAGE_MAX = 1000


# Control characters a quoted value may hold: a newline would split the diagnostic's line, an
# escape sequence (`\x1b[2J`) would act on the terminal it is printed on
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F)}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r"})
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_CONTROL.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """`text` as one line a person reads: control characters (a newline in a quoted value)
    escaped, each long quoted value cut to its first characters (`'xxx…'`), at most
    MESSAGE_MAX characters in all."""
    text = text.translate(_CONTROL)
    text = _QUOTED.sub(lambda m: m[0][: QUOTED_MAX - 20] + "…" + m[0][0], text)
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a workflow file: where, a stable code, one line of why."""

    location: Location
    code: str
    message: str
    hint: str | None = None
    severity: Severity = "error"

    def __post_init__(self) -> None:
        # A key or value the YAML spells with a lone surrogate ("\ud800") cannot be printed or
        # encoded: show it escaped, as it was written. A message is one line (see one_line).
        for name in ("message", "hint"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, one_line(printable(value)))
        if self.location.file != printable(self.location.file):
            loc = self.location
            object.__setattr__(self, "location", Location(printable(loc.file), loc.line, loc.col))

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        return f"{self.location}: {self.code} {self.message}{hint}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.location.file,
            "line": self.location.line,
            "col": self.location.col,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """Retry settings as written in the file (seconds for durations)."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 10.0
    multiplier: float = 2.0


DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One entry of `steps:`. `with_` holds the raw binding values (templates not yet rendered)."""

    id: str
    type: str
    depends_on: tuple[str, ...] = ()
    revision_source: str | None = None
    with_: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    prompt: Path | None = None  # resolved prompt file, when `prompt:` was given
    template: str | None = None  # inline template text, when `template:` was given
    system: str | None = None  # inline system prompt (llm steps)
    model: str | None = None
    retry: RetrySpec = RetrySpec()
    timeout: float = DEFAULT_TIMEOUT
    output_schema: Mapping[str, Any] | None = None
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    location: Location = Location("<string>")


@dataclass(frozen=True, slots=True)
class Sequential:
    from_: str
    to: str
    location: Location = Location("<string>")
    type: Literal["sequential"] = "sequential"


@dataclass(frozen=True, slots=True)
class Conditional:
    from_: str
    to: str
    when: str  # a Jinja expression, without the surrounding {{ }}
    location: Location = Location("<string>")
    type: Literal["conditional"] = "conditional"


@dataclass(frozen=True, slots=True)
class RevisionLoop:
    validator: str
    reviser: str
    target: str
    max_iterations: int = 3
    on_exhausted: Literal["fail", "accept"] = "fail"
    location: Location = Location("<string>")
    type: Literal["revision_loop"] = "revision_loop"


Transition = Sequential | Conditional | RevisionLoop


@dataclass(frozen=True, slots=True)
class Budget:
    """A run's limits (None: no limit); a model call that could go over one is not made."""

    max_usd: float | None = None
    max_tokens: int | None = None
    max_calls: int | None = None


@dataclass(frozen=True, slots=True)
class Workflow:
    """A validated workflow definition, plus the exact text it came from."""

    id: str
    name: str
    steps: tuple[StepSpec, ...]
    transitions: tuple[Transition, ...] = ()
    description: str = ""
    version: int = 1
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    model: str | None = None
    inputs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"type": "object"}))
    output: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    env: tuple[str, ...] = ()  # environment variables the file may read as `env.NAME`
    env_locations: tuple[Location, ...] = ()  # where each of `env` is declared
    budget: Budget = Budget()
    source: str = ""  # the YAML text the workflow was loaded from
    path: Path | None = None
    warnings: tuple[Diagnostic, ...] = ()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.steps)

    @property
    def loops(self) -> tuple[RevisionLoop, ...]:
        return tuple(t for t in self.transitions if isinstance(t, RevisionLoop))
