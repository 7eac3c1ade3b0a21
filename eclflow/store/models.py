"""The peewee models: workflow definitions, runs (`workflows`), step executions, artifacts,
events, schema version.

Models are built per database by `make_models(db)`, so several stores (a SQLite file and a
PostgreSQL database, say) can be open in one process without rebinding global classes.
Timestamps are UTC; JSON is stored with `json.dumps(default=str)`.

Every value a run can produce is stored so that it reads back as it was, on both databases:
text a column cannot hold as it is (a NUL, which PostgreSQL's text refuses, or a lone
surrogate, which no UTF-8 holds) is kept escaped (`store_text`), and a float JSON has no
number for (NaN, ±Infinity) is kept as a tag (`json_text`); both are undone on reading.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from peewee import (
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    Database,
    DoubleField,
    Field,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

# Column types the two backends map differently (see `FIELD_TYPES`).
JSON_TYPE = "JSON"
TIME_TYPE = "UTCDATETIME"
FIELD_TYPES = {
    # SQLite: JSON as TEXT (a JSON-named column would get NUMERIC affinity); timestamps as
    # fixed-width ISO text, so comparing the text compares the instants.
    "sqlite": {JSON_TYPE: "TEXT", TIME_TYPE: "TEXT"},
    # PostgreSQL: `json` keeps the text as written (key order too); `timestamptz`.
    "postgresql": {JSON_TYPE: "JSON", TIME_TYPE: "TIMESTAMPTZ"},
}
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f+00:00"


def utcnow() -> datetime:
    return datetime.now(UTC)


# The mark of an escaped text, and of a JSON tag: ASCII's record separator (RFC 7464 puts it
# before each JSON text of a sequence), which no text a model or a person writes starts with,
# and which reaches the database whatever the connection's encoding.
MARK = "\x1e"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def store_text(value: str | None) -> str | None:
    """`value` as a text column holds it: as it is, or when it has a NUL or a lone surrogate
    (or begins with MARK), MARK then its JSON string, which is ASCII (`read_text` undoes it).
    Anything else (a custom step's feedback of 42) as its text, as a text column keeps it."""
    if value is None:
        return None
    if value.__class__ is not str:
        value = str(value)
    if value.isascii():  # (a flag of the string: no scan for surrogates)
        if "\x00" not in value and not value.startswith(MARK):
            return value
    elif _UNSTORABLE.search(value) is None and not value.startswith(MARK):
        return value
    return MARK + json.dumps(value)


def read_text(value: str | None) -> str | None:
    """The text `store_text` was given. A text that begins with MARK but is no escape (one
    an earlier eclflow wrote as it was) is given as it is, not refused."""
    if value is not None and value.startswith(MARK):
        return _escaped(value, {})
    return value


def _escaped(value: str, floats: dict[str, float]) -> Any:
    """The string MARK and its JSON text stand for, or the float of `floats` its name does (a
    JSON tag); `value` itself when what follows MARK is neither."""
    rest = value[1:]
    if rest[:1] == '"':
        try:
            decoded = json.loads(rest)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return floats.get(rest, value)


_NOT_FINITE = {"nan": MARK + "NaN", "inf": MARK + "Infinity", "-inf": MARK + "-Infinity"}
_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_MARK_IN_JSON = "\\u001e"  # how JSON text writes MARK (json and orjson alike)


def _tagged(value: Any) -> Any:
    """`value` with each text (key or value) a JSON column cannot hold in every use as
    `store_text` keeps it (PostgreSQL's `json` takes a \\u0000 escape or a lone surrogate's,
    but its operators, `->>`, and `jsonb` refuse them), and each float JSON has no number
    for as MARK and its name ("NaN", "Infinity", "-Infinity", which json.loads reads);
    `value` itself when there is none."""
    if isinstance(value, str):
        return store_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_FINITE[str(value)]
    if isinstance(value, dict):
        items = {_tagged(k): _tagged(v) for k, v in value.items()}
        same = len(items) == len(value) and all(
            a is b and items[a] is v for a, (b, v) in zip(items, value.items(), strict=True)
        )
        return value if same else items
    if isinstance(value, list | tuple):
        tagged = [_tagged(v) for v in value]
        return value if all(t is v for t, v in zip(tagged, value, strict=True)) else tagged
    if value is None or isinstance(value, int):
        return value
    # an object JSON has no type for is written as its str() (default=str): a text like any
    # other, whose NUL is escaped the same way (one orjson writes itself, a datetime, as it
    # does)
    try:
        orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        text = str(value)
        escaped = store_text(text)
        return text if escaped == text else escaped
    return value


def _untagged(value: Any) -> Any:
    """The value `_tagged` was given."""
    if isinstance(value, str):
        return _escaped(value, _FLOATS) if value.startswith(MARK) else value
    if isinstance(value, dict):
        return {_untagged(k): _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value


_OPTIONS = orjson.OPT_NON_STR_KEYS


def json_text(value: Any) -> str | None:
    """`value` as JSON text both databases hold and `read_json` gives back as it was: orjson
    (a step writes several, json.dumps costs 5x more), or json for what orjson refuses
    (integers beyond 64 bits, a lone surrogate, deep nesting); see `_tagged` for the texts
    and floats that are tagged (orjson writes NaN as null)."""
    if value is None:
        return None
    try:
        text = orjson.dumps(value, default=str, option=_OPTIONS).decode()
    except TypeError:
        # (json.dumps first, not _tagged: a value nested nearly as deep as Python recurses,
        # which json.dumps takes, would overflow the stack in a walk of it)
        return _field_json(value)
    # orjson writes NaN as null; \\u0000 and \\u001e are among the escapes of control
    # characters, \\u00XX (two scans of the text, not three: a step writes kilobytes)
    if "\\u00" in text or ("null" in text and _not_finite_in(value)):
        tagged = _tagged(value)
        if tagged is not value:
            return _dumps(tagged)
    return text


def _not_finite_in(value: Any) -> bool:
    """Whether `value` holds a float JSON has no number for (a loop, cheaper than _tagged:
    a null in a step's output or traces is common, a NaN rare)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return True
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)
    return False


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str, option=_OPTIONS).decode()
    except TypeError:  # (integers beyond 64 bits, deep nesting)
        return json.dumps(value, default=str, ensure_ascii=False)


def _field_json(value: Any) -> str:
    """`json_text` by json.dumps, as the models always wrote (a datetime as str() has it).
    What must be tagged is tagged in the text (`_tagged_text`): the value may be nested
    nearly as deep as Python recurses, which json.dumps takes and a walk of it does not."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:  # (NaN, Infinity)
        return _tagged_text(json.dumps(value, default=str, ensure_ascii=False))
    if "\\u0000" in text or _MARK_IN_JSON in text or _UNSTORABLE.search(text) is not None:
        return _tagged_text(text)
    return text


# A JSON text's strings, and the floats json.dumps writes that JSON has no number for (never
# inside a string: the string is matched first, whole)
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|NaN|-?Infinity')
_JSON_FLOATS = {"NaN": MARK + "NaN", "Infinity": MARK + "Infinity", "-Infinity": MARK + "-Infinity"}


def _tagged_text(text: str) -> str:
    """json.dumps's `text` (ensure_ascii=False, NaN allowed) as the JSON text of `_tagged` of
    its value, by rewriting the strings and floats to tag, without a walk of the value."""

    def tag(m: re.Match[str]) -> str:
        token = m.group()
        if token[0] != '"':
            return json.dumps(_JSON_FLOATS[token])
        if "\\u0000" not in token and _MARK_IN_JSON not in token and not _UNSTORABLE.search(token):
            return token
        return json.dumps(store_text(json.loads(token)), ensure_ascii=False)

    return _TOKENS.sub(tag, text)


def _untagged_text(text: str) -> str:
    """`_tagged_text` undone: the JSON text of `_untagged` of `text`'s value (which the text
    is, once json.loads reads NaN and Infinity)."""

    def untag(m: re.Match[str]) -> str:
        token = m.group()
        if not token.startswith('"' + _MARK_IN_JSON):
            return token
        value = _escaped(json.loads(token), _FLOATS)
        if isinstance(value, float):
            return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(value)]
        return json.dumps(value, ensure_ascii=False)

    return _TOKENS.sub(untag, text)


def read_json(text: str | bytes) -> Any:
    """The value `json_text` was given."""
    value = json.loads(text)
    tagged = _MARK_IN_JSON in text if isinstance(text, str) else b"\\u001e" in text
    if not tagged:
        return value
    try:
        return _untagged(value)
    except RecursionError:  # (nested nearly as deep as Python recurses: see _field_json)
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(_untagged_text(text))


class JSONField(Field):
    """Any JSON-able value; SQL NULL stands for None."""

    field_type = JSON_TYPE

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        return _field_json(value)

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8")
        return read_json(value) if isinstance(value, str) else value


class SafeTextField(TextField):
    """Text that may hold anything a run produced (a model's reply, an error): see
    `store_text`."""

    def db_value(self, value: Any) -> Any:
        return store_text(super().db_value(value))

    def python_value(self, value: Any) -> Any:
        return read_text(value)


class UTCDateTimeField(Field):
    """An aware UTC datetime; naive values are taken as UTC."""

    field_type = TIME_TYPE

    def db_value(self, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value.astimezone(UTC).strftime(_TIME_FORMAT)
        raise TypeError(f"not a datetime: {value!r}")

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Models:
    """The model classes bound to one database."""

    # Any: peewee's stubs do not know the fields declared in make_models
    Definition: Any
    Run: Any
    StepExecution: Any
    Artifact: Any
    Event: Any
    SchemaVersion: Any

    @property
    def tables(self) -> list[Any]:
        """Every data table, parents first (creation order)."""
        return [self.Definition, self.Run, self.StepExecution, self.Artifact, self.Event]


def make_models(db: Database) -> Models:
    """Model classes bound to `db` (the latest version of the schema; see migrations.py)."""

    class Base(Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Definition(Base):
        """The text of a workflow definition, once however many runs ran it: a batch of
        100 000 items wrote 2 KB of the same text in every run's row."""

        sha256 = CharField(primary_key=True, max_length=64)
        text = TextField()

        class Meta:
            table_name = "definitions"

    class Run(Base):
        id = CharField(primary_key=True, max_length=64)
        definition_id = TextField()
        definition_name = SafeTextField(null=True)  # (a workflow's `name:` is free text)
        # the text is the `definitions` row of this hash (no foreign key: SQLite would scan
        # every run for each definition `prune` deletes; writers keep them paired, see
        # RunRepository.prune_definitions)
        definition_sha256 = CharField(max_length=64)
        input = JSONField(null=True)
        state = CharField(max_length=16)
        output = JSONField(null=True)
        error = SafeTextField(null=True)
        failed_step = TextField(null=True)
        metadata = JSONField(null=True)
        created_at = UTCDateTimeField()
        updated_at = UTCDateTimeField()
        completed_at = UTCDateTimeField(null=True)

        class Meta:
            table_name = "workflows"
            indexes = (
                (("state", "created_at"), False),
                (("definition_id", "created_at"), False),
                (("created_at",), False),
            )

    class StepExecution(Base):
        # 64-bit numbers (BIGINT, DOUBLE PRECISION on PostgreSQL; SQLite's are already): a
        # step may report 2**31 tokens, and a cost in REAL kept 7 digits (see migrations v4)
        id = BigAutoField()
        run = ForeignKeyField(
            Run, column_name="run_id", on_delete="CASCADE", backref="steps", index=False
        )
        step_id = TextField()
        key = TextField()
        iteration = IntegerField(default=0)
        attempt = IntegerField()
        state = CharField(max_length=16)
        outcome = CharField(max_length=16, null=True)
        input = JSONField(null=True)
        output = JSONField(null=True)
        feedback = SafeTextField(null=True)
        error = SafeTextField(null=True)
        retryable = BooleanField(null=True)
        model = TextField(null=True)
        prompt = JSONField(null=True)
        started_at = UTCDateTimeField()
        completed_at = UTCDateTimeField(null=True)
        duration_ms = BigIntegerField(null=True)
        tokens_in = BigIntegerField(null=True)
        tokens_out = BigIntegerField(null=True)
        cost = DoubleField(null=True)
        traces = JSONField(null=True)

        class Meta:
            table_name = "step_executions"
            # also the index for a run's rows and lookups by (run, key); a run's few rows sort
            # in memory, and each index is one page more in every journal commit
            indexes = ((("run", "key", "attempt"), True),)

    class Artifact(Base):
        id = BigAutoField()
        run = ForeignKeyField(Run, column_name="run_id", on_delete="CASCADE", backref="artifacts")
        step_id = TextField(null=True)
        name = TextField()
        content_type = TextField(default="text/plain")
        content = SafeTextField(null=True)
        path = TextField(null=True)
        size = BigIntegerField(null=True)
        created_at = UTCDateTimeField()

        class Meta:
            table_name = "artifacts"

    class Event(Base):
        id = BigAutoField()
        run = ForeignKeyField(
            Run, column_name="run_id", on_delete="CASCADE", backref="events", index=False
        )
        ts = UTCDateTimeField()
        kind = TextField()
        step_id = TextField(null=True)
        fields = JSONField(null=True)

        class Meta:
            table_name = "events"
            indexes = ((("run", "id"), False),)

    class SchemaVersion(Base):
        version = IntegerField(primary_key=True)
        applied_at = UTCDateTimeField()

        class Meta:
            table_name = "schema_version"

    return Models(Definition, Run, StepExecution, Artifact, Event, SchemaVersion)
