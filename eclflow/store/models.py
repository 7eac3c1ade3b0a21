"""The peewee models: workflow definitions, runs (`workflows`), step executions, artifacts,
events, schema version.

Models are built per database by `make_models(db)`, so several stores (a SQLite file and a
PostgreSQL database, say) can be open in one process without rebinding global classes.
Timestamps are UTC; JSON is stored with `json.dumps(default=str)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    Database,
    Field,
    FloatField,
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


class JSONField(Field):
    """Any JSON-able value; SQL NULL stands for None."""

    field_type = JSON_TYPE

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        return json.dumps(value, default=str, ensure_ascii=False)

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8")
        return json.loads(value) if isinstance(value, str) else value


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
        definition_name = TextField(null=True)
        # the text is the `definitions` row of this hash (no foreign key: SQLite would scan
        # every run for each definition `prune` deletes; writers keep them paired, see
        # RunRepository.prune_definitions)
        definition_sha256 = CharField(max_length=64)
        input = JSONField(null=True)
        state = CharField(max_length=16)
        output = JSONField(null=True)
        error = TextField(null=True)
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
        id = AutoField()
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
        feedback = TextField(null=True)
        error = TextField(null=True)
        retryable = BooleanField(null=True)
        model = TextField(null=True)
        prompt = JSONField(null=True)
        started_at = UTCDateTimeField()
        completed_at = UTCDateTimeField(null=True)
        duration_ms = IntegerField(null=True)
        tokens_in = IntegerField(null=True)
        tokens_out = IntegerField(null=True)
        cost = FloatField(null=True)
        traces = JSONField(null=True)

        class Meta:
            table_name = "step_executions"
            # also the index for a run's rows and lookups by (run, key); a run's few rows sort
            # in memory, and each index is one page more in every journal commit
            indexes = ((("run", "key", "attempt"), True),)

    class Artifact(Base):
        id = AutoField()
        run = ForeignKeyField(Run, column_name="run_id", on_delete="CASCADE", backref="artifacts")
        step_id = TextField(null=True)
        name = TextField()
        content_type = TextField(default="text/plain")
        content = TextField(null=True)
        path = TextField(null=True)
        size = IntegerField(null=True)
        created_at = UTCDateTimeField()

        class Meta:
            table_name = "artifacts"

    class Event(Base):
        id = AutoField()
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
