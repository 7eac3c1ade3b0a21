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


MIGRATIONS: list[Migration] = [_v1_initial, _v2_drop_started_index]


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
    with db.atomic():
        if isinstance(db, PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        db.create_tables([models.SchemaVersion], safe=True)
        version = current_version(db, models)
        _refuse_newer(version, latest)
        for number in range(version + 1, latest + 1):
            steps[number - 1](db, models)
            models.SchemaVersion.insert(version=number, applied_at=utcnow()).execute()
    return latest


def _refuse_newer(version: int, latest: int) -> None:
    if version > latest:
        raise StoreUnavailable(
            f"database schema version {version} is newer than this eclflow (supports "
            f"{latest}); upgrade eclflow"
        )
