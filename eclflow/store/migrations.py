"""Versioned schema migrations, applied in order when a store opens.

`MIGRATIONS[i]` upgrades a database from version i to i + 1; `schema_version` keeps one row
per applied version. To change the schema: change the models, then append a migration that
alters existing tables to match (never edit an applied one; freeze what it needs inside it).
A database newer than the code is refused rather than touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from peewee import Database, PostgresqlDatabase

from ..errors import StoreUnavailable
from .models import Models, utcnow

Migration = Callable[[Database, Models], None]

_LOCK_KEY = 0x6563_6C66  # "eclf": serialises concurrent migrations on one PostgreSQL database


def _v1_initial(db: Database, models: Models) -> None:
    """Version 1: every table and index."""
    db.create_tables(models.tables, safe=True)


def _v2_drop_started_index(db: Database, models: Models) -> None:
    """Version 2: no (run_id, started_at) index on step_executions. The unique index on
    (run_id, key, attempt) already finds a run's rows, and the extra index cost every journal
    commit a page write (about 15% of a step's commit on SQLite)."""
    db.execute_sql("DROP INDEX IF EXISTS step_executions_run_id_started_at")


# (frozen for version 3: the runs' table without its `definition` column)
_V3_RUNS = (
    '"id" VARCHAR(64) NOT NULL PRIMARY KEY, "definition_id" TEXT NOT NULL, '
    '"definition_name" TEXT, "definition_sha256" VARCHAR(64) NOT NULL, "input" TEXT, '
    '"state" VARCHAR(16) NOT NULL, "output" TEXT, "error" TEXT, "failed_step" TEXT, '
    '"metadata" TEXT, "created_at" TEXT NOT NULL, "updated_at" TEXT NOT NULL, "completed_at" TEXT'
)
_V3_RUN_COLUMNS = (
    "id, definition_id, definition_name, definition_sha256, input, state, output, error, "
    "failed_step, metadata, created_at, updated_at, completed_at"
)
_V3_RUN_INDEXES = (("state", "created_at"), ("definition_id", "created_at"), ("created_at",))


def _v3_definitions_once(db: Database, models: Models) -> None:
    """Version 3: each distinct definition text once, in `definitions` keyed by its sha256,
    and no `definition` column in the runs' table (a batch of 100 000 items wrote 2 KB of
    the same text in each of its runs' rows: 200 MB)."""
    db.execute_sql(
        'CREATE TABLE IF NOT EXISTS "definitions" '
        '("sha256" VARCHAR(64) NOT NULL PRIMARY KEY, "text" TEXT NOT NULL)'
    )
    if "definition" not in {c.name for c in db.get_columns("workflows")}:
        return  # (created at version 1 by this eclflow: the models had no such column)
    # (a hash is of the text, so the runs of one hash have one text)
    db.execute_sql(
        "INSERT INTO definitions (sha256, text) SELECT definition_sha256, MIN(definition) "
        "FROM workflows GROUP BY definition_sha256"
    )
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("ALTER TABLE workflows DROP COLUMN definition")
        return
    # SQLite: the table made anew (ALTER TABLE … DROP COLUMN is 3.35+ only, and rewrites the
    # table as well). migrate() has turned foreign keys off on this connection, so dropping
    # the old table does not cascade to the steps, artifacts and events referencing its rows.
    db.execute_sql(f'CREATE TABLE "workflows_v3" ({_V3_RUNS})')
    db.execute_sql(
        f"INSERT INTO workflows_v3 ({_V3_RUN_COLUMNS}) SELECT {_V3_RUN_COLUMNS} FROM workflows"
    )
    db.execute_sql("DROP TABLE workflows")
    db.execute_sql("ALTER TABLE workflows_v3 RENAME TO workflows")
    for columns in _V3_RUN_INDEXES:
        name = "workflows_" + "_".join(columns)
        quoted = ", ".join(f'"{c}"' for c in columns)  # (as peewee writes a new file's)
        db.execute_sql(f'CREATE INDEX "{name}" ON "workflows" ({quoted})')
    broken = db.execute_sql("PRAGMA foreign_key_check").fetchall()
    if broken:  # (cannot be: every row was copied; the transaction is rolled back)
        raise StoreUnavailable(f"upgrading the schema to version 3 broke references: {broken}")


# (frozen for version 4: the columns PostgreSQL made 32-bit `integer` or `real`, by table)
_V4_WIDENED = {
    "step_executions": ("id", "duration_ms", "tokens_in", "tokens_out", "cost"),
    "events": ("id",),
    "artifacts": ("id", "size"),
}


def _v4_wide_numbers(db: Database, models: Models) -> None:
    """Version 4, PostgreSQL only (SQLite's INTEGER and REAL are 64-bit already): counters
    and ids `bigint` (a step reporting 2**31 tokens failed its run's write: integer out of
    range) and the cost `double precision` (`real` kept 7 digits of it). The stored costs
    go through their text, so that 0.1 reads back 0.1 and not real's 0.10000000149011612."""
    if not isinstance(db, PostgresqlDatabase):
        return
    for table, columns in _V4_WIDENED.items():
        changes = ", ".join(
            f'ALTER COLUMN "{c}" TYPE double precision USING "{c}"::text::double precision'
            if c == "cost"
            else f'ALTER COLUMN "{c}" TYPE bigint'
            for c in columns
        )
        db.execute_sql(f'ALTER TABLE "{table}" {changes}')
        # (a serial's sequence stays `integer`, whose last value is 2**31 - 1, unless told)
        (sequence,) = db.execute_sql(
            "SELECT pg_get_serial_sequence(%s, 'id')", (f'"{table}"',)
        ).fetchone()
        db.execute_sql(f"ALTER SEQUENCE {sequence} AS bigint")


MIGRATIONS: list[Migration] = [
    _v1_initial,
    _v2_drop_started_index,
    _v3_definitions_once,
    _v4_wide_numbers,
]


def latest_version(migrations: Sequence[Migration] | None = None) -> int:
    return len(MIGRATIONS if migrations is None else migrations)


def current_version(db: Database, models: Models) -> int:
    """The version recorded in the database; 0 for a database eclflow never set up."""
    if not db.table_exists(models.SchemaVersion._meta.table_name):
        return 0
    row = (
        models.SchemaVersion.select(models.SchemaVersion.version)
        .order_by(models.SchemaVersion.version.desc())
        .first()
    )
    return int(row.version) if row is not None else 0


def migrate(db: Database, models: Models, migrations: Sequence[Migration] | None = None) -> int:
    """Bring the database to the latest version in place; returns the version it is at.

    Safe when several processes open a fresh database at once: the work happens in one write
    transaction (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL) and the version is
    read again inside it.
    """
    steps = list(MIGRATIONS if migrations is None else migrations)
    latest = len(steps)
    version = current_version(db, models)
    _refuse_newer(version, latest)
    if version == latest:
        return version
    sqlite = not isinstance(db, PostgresqlDatabase)
    if sqlite:  # (only outside a transaction; see _v3_definitions_once)
        db.execute_sql("PRAGMA foreign_keys = OFF")
    try:
        with db.atomic():
            _apply(db, models, steps, latest)
    finally:
        if sqlite:
            db.execute_sql("PRAGMA foreign_keys = ON")
    return latest


def _apply(db: Database, models: Models, steps: Sequence[Migration], latest: int) -> None:
    """The steps after the version recorded, read again under the lock (in migrate's
    transaction)."""
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    db.create_tables([models.SchemaVersion], safe=True)
    version = current_version(db, models)
    _refuse_newer(version, latest)
    for number in range(version + 1, latest + 1):
        steps[number - 1](db, models)
        models.SchemaVersion.insert(version=number, applied_at=utcnow()).execute()


def _refuse_newer(version: int, latest: int) -> None:
    if version > latest:
        raise StoreUnavailable(
            f"database schema version {version} is newer than this eclflow (supports "
            f"{latest}); upgrade eclflow"
        )
