"""Opening a store: the database connection(s), SQLite settings, migrations, error mapping.

SQLite runs in WAL mode with a long busy timeout, `synchronous=NORMAL`, foreign keys on, and
every write transaction starts with BEGIN IMMEDIATE, so several processes can write one file
without "database is locked" and without losing rows. Peewee keeps one connection per thread
(the journal calls the store from `asyncio.to_thread` workers); the store remembers them all
so `close()` closes every one. An in-memory SQLite database has a single connection shared by
all threads, used under a lock.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

from peewee import (
    DatabaseError,
    InterfaceError,
    PostgresqlDatabase,
    SqliteDatabase,
)

from ..errors import (
    ConfigError,
    EclflowError,
    LockWaitStopped,
    PersistenceError,
    StoreNotFound,
    StoreUnavailable,
)
from . import migrations
from .models import FIELD_TYPES, make_models
from .url import MEMORY, DatabaseURL, parse_url, resolve_url

BUSY_TIMEOUT_MS = 60_000
# SQLite: a transaction that has waited this long for another process's write lock says so
# before it waits the rest of BUSY_TIMEOUT_MS (a minute without a word looks like a hang)
LOCK_NOTICE_MS = 3_000
# SQLite: the longest a wait for that lock goes without looking whether the process is stopping
LOCK_SLICE_MS = 100
# PostgreSQL: as SQLite's busy timeout, a lock held by a session left open in a transaction (an
# idle psql, say) fails the statement after a minute instead of hanging for ever. Set once
# connected, where the session has no lock_timeout of its own (the URL's options, PGOPTIONS,
# the role's): in the startup packet, poolers (PgBouncer) refuse the connection.
LOCK_TIMEOUT_MS = 60_000
_QUERY_CANCELED = "57014"  # (a statement cancel_lock_waits cancelled)
logger = logging.getLogger("eclflow.store")
SQLITE_PRAGMAS = [
    # busy_timeout first: switching to WAL may have to wait for another process
    ("busy_timeout", BUSY_TIMEOUT_MS),
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    # Checkpoint the WAL every 10 000 pages (40 MB) instead of 1 000: the pages a journal
    # rewrites most (index leaves, the table's last page) are copied once per checkpoint, so
    # ten times fewer checkpoints cost the commits a third less; the file shrinks back to
    # 64 MB at most after each.
    ("wal_autocheckpoint", 10_000),
    ("journal_size_limit", 64 * 2**20),
    ("foreign_keys", 1),
]


class _Tracked:
    """Remembers every connection a database opens, in any thread."""

    _conns: list[Any]
    _conns_lock: threading.Lock

    def _track(self, conn: Any) -> Any:
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _close(self, conn: Any) -> None:
        with self._conns_lock, suppress(ValueError):
            self._conns.remove(conn)
        super()._close(conn)  # type: ignore[misc]

    def close_all(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with suppress(Exception):  # closing is best effort
                conn.close()


class _SqliteDatabase(_Tracked, SqliteDatabase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self.stop = threading.Event()  # set: waits for a lock end at once (Store.stop_waiting)
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        # `PRAGMA journal_mode = wal` on a new connection can fail at once with "database is
        # locked" while another process opens the file or checkpoints it: SQLite does not call
        # the busy handler there. The mode is already in the file, so a retry soon succeeds.
        waited, delay = 0.0, 0.001
        while True:
            try:
                return self._track(super()._connect())  # type: ignore[misc]
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or waited >= BUSY_TIMEOUT_MS / 1000:
                    raise
                if self.stop.is_set():
                    raise LockWaitStopped(f"stopped opening {self.database}: stopping") from e
            time.sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 0.1)

    def begin(self, lock_type: str | None = None) -> None:
        """BEGIN IMMEDIATE (every transaction of the store), saying so while it waits long."""
        if self.database == MEMORY:
            super().begin(lock_type)
            return
        begin_immediate(self.connection(), self.database, self.stop)


def begin_immediate(conn: Any, path: str, stop: threading.Event | None = None) -> None:
    """BEGIN IMMEDIATE on a connection of the file `path`, waiting up to BUSY_TIMEOUT_MS for
    the write lock of another process (an open sqlite3 shell, a long transaction), with a
    warning once it has waited LOCK_NOTICE_MS. It waits in slices of LOCK_SLICE_MS, so that
    `stop` (set when the process is stopping: Ctrl-C, SIGTERM) ends the wait at once instead
    of a minute later; it then raises LockWaitStopped."""
    started = time.monotonic()
    noticed = False
    try:
        while True:
            if stop is not None and stop.is_set():
                # one try that does not wait: a lock that is free is still taken
                conn.execute("PRAGMA busy_timeout = 0")
            else:
                conn.execute(f"PRAGMA busy_timeout = {LOCK_SLICE_MS}")
            tried = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                now = time.monotonic()
                waited = (now - started) * 1000
                if "locked" not in str(e) or waited >= BUSY_TIMEOUT_MS:
                    raise
                if stop is not None and stop.is_set():
                    raise LockWaitStopped(
                        f"stopped waiting for the write lock of {path}, which another process "
                        "holds: this process is stopping"
                    ) from None
            if now - tried < LOCK_SLICE_MS / 2000:  # (refused without waiting: do not spin)
                time.sleep(LOCK_SLICE_MS / 2000)
            if not noticed and waited >= LOCK_NOTICE_MS:
                noticed = True
                logger.warning(
                    "waiting for the write lock of %s, which another process holds "
                    "(up to %d s more)",
                    path,
                    (BUSY_TIMEOUT_MS - LOCK_NOTICE_MS) // 1000,
                )
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


class _PostgresqlDatabase(_Tracked, PostgresqlDatabase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self.stop = threading.Event()  # set: lock waits are cancelled (Store.stop_waiting)
        super().__init__(*args, **kwargs)

    def cancel_lock_waits(self, until: Callable[[], bool]) -> None:
        """(Its own thread, once the process is stopping) Cancel each statement of this
        database's connections that waits for a lock another session holds, every
        LOCK_SLICE_MS until `until()`: as on SQLite, the wait ends at once instead of at the
        lock_timeout (its transaction is rolled back; what was committed is kept). Only lock
        waits: a statement that is running is left to finish."""
        import psycopg2

        params = {"connect_timeout": 5, **self.connect_params}
        try:
            watcher = psycopg2.connect(dbname=self.database, **params)
        except Exception:  # (the server is gone: nothing waits on it for long)
            return
        watcher.autocommit = True
        try:
            with watcher.cursor() as cursor:
                while not until():
                    with self._conns_lock:
                        pids = [c.get_backend_pid() for c in self._conns if not c.closed]
                    cursor.execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                        "WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
                        (pids,),
                    )
                    time.sleep(LOCK_SLICE_MS / 1000)
        except Exception:  # best effort: the wait then ends at the lock_timeout
            pass
        finally:
            watcher.close()

    def _connect(self) -> Any:
        conn = super()._connect()  # type: ignore[misc]
        try:
            import psycopg2.extras

            # JSON columns are decoded by JSONField, not by the driver
            psycopg2.extras.register_default_json(conn, loads=lambda text: text)
        except ImportError:  # pragma: no cover - psycopg 3 is not used
            pass
        try:
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, false) "
                    "WHERE current_setting('lock_timeout') = '0'",
                    (str(LOCK_TIMEOUT_MS),),
                )
        except BaseException:
            conn.close()
            raise
        return self._track(conn)


class Store:
    """A durable store of runs, step executions, artifacts and events."""

    def __init__(self, url: DatabaseURL, *, create: bool = True) -> None:
        from .repositories import (
            ArtifactRepository,
            EventRepository,
            RunRepository,
            StepRepository,
        )

        self.url = url.url
        self.kind = url.kind
        self._shared: threading.RLock | None = None
        self._closed = False
        self.write_checked = False  # True once check_writable has found it writable
        if not create and url.kind == "sqlite" and url.path != MEMORY:
            from pathlib import Path

            assert url.path is not None
            if not Path(url.path).is_file() and not Path(url.path).is_dir():
                raise StoreNotFound(url.url)  # (a directory: the connection says so)
        self.db = _database(url)
        # one connection shared by every thread, under a lock
        self.in_memory = url.kind == "sqlite" and url.path == MEMORY
        if self.in_memory:
            self._shared = threading.RLock()
        self.models = make_models(self.db)
        self.runs = RunRepository(self)
        self.steps = StepRepository(self)
        self.artifacts = ArtifactRepository(self)
        self.events = EventRepository(self)
        # the group-commit writer of each event loop that writes here (eclflow/store/writer.py)
        self.writers: dict[int, Any] = {}
        # when a set (the CLI's `run`: one run a process), the runs whose rows those writers
        # created and committed: whether a run stopped before its first write was kept is
        # known here when the database cannot be read (None: a long-lived process keeps no
        # growing record)
        self.runs_created: set[str] | None = None
        try:
            self._connect_first()
            with self.reading():
                if migrations.current_version(self.db, self.models) == 0:
                    if url.schema is not None:
                        self._refuse_a_folded_journal(url.schema)
                    if not create:
                        raise StoreNotFound(url.url)
                if url.schema is not None:
                    self._create_schema(url.schema)
                self.schema_version = migrations.migrate(self.db, self.models)
        except BaseException:
            self.close()
            raise

    def _connect_first(self) -> None:
        """Connect before anything else: a connection that cannot be made at all is the URL's
        fault (or the server's absence), not a run's failure: StoreUnavailable. A lock another
        process held too long is no such fault."""
        try:
            with self.reading():
                self.db.connect(reuse_if_open=True)
        except PersistenceError as e:
            if "database is locked" in str(e) or e.__cause__ is None:
                raise
            raise StoreUnavailable(
                _one_line(e.__cause__, self.url, self._sqlite_path())
            ) from e.__cause__

    def _refuse_a_folded_journal(self, schema: str) -> None:
        """An earlier eclflow set search_path unquoted, and PostgreSQL folded `?schema=Runs`
        to `runs`: the journal of that URL is in `runs`. A `Runs` with no journal, beside a
        `runs` with one, is that URL's journal: the user is told to name it so, rather than
        told there is none or given an empty one beside it."""
        folded = schema.lower()
        if folded == schema:
            return
        table = self.models.SchemaVersion._meta.table_name
        there = "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s"
        if self.db.execute_sql(there, (folded, table)).fetchone():
            raise ConfigError(
                f"schema {schema!r} holds no eclflow journal, but {folded!r} does (its name in "
                f"lowercase, where an earlier eclflow kept the journal of ?schema={schema}): "
                f"write ?schema={folded}"
            )

    def _create_schema(self, schema: str) -> None:
        """Create the URL's schema if it is not there; only then under the migrations' lock
        (a store that opens an existing schema neither waits for it nor needs to write)."""
        exists = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
        if self.db.execute_sql(exists, (schema,)).fetchone():
            return
        with self.db.atomic():
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (migrations._LOCK_KEY,))
            self.db.execute_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around every repository call: the in-memory lock, and database errors turned into
        PersistenceError (one line, no driver traceback)."""
        if self._closed:
            raise PersistenceError(f"the store {self.url} is closed")
        with self._shared if self._shared is not None else nullcontext():
            try:
                yield
            except EclflowError:
                raise
            except Exception as e:
                if not _is_database_error(e):
                    raise
                if connection_lost(e):  # this thread's next call opens a new connection
                    with suppress(Exception):
                        self.db.close()
                missing = _missing_database(e)
                if self.db.stop.is_set() and getattr(e, "pgcode", None) == _QUERY_CANCELED:
                    raise LockWaitStopped(
                        f"stopped waiting for a lock another session holds ({self.url}): "
                        "this process is stopping"
                    ) from e
                if missing is not None:  # a mistyped --db, not a failure of the server
                    raise ConfigError(
                        f"the PostgreSQL database '{missing}' does not exist ({self.url}): "
                        f"create it (createdb {missing}) or check --db / ECLFLOW_DATABASE_URL"
                    ) from None
                raise PersistenceError(_one_line(e, self.url, self._sqlite_path())) from e

    def check_writable(self) -> None:
        """Fail now if nothing can be written here (a read-only file or mount, a PostgreSQL
        standby), rather than after a run's first paid call. Once per store; waits for a
        lock another process holds, like any write."""
        if self.write_checked or self.in_memory:
            return
        with self.reading():
            if self.kind == "sqlite":
                conn = self.db.connection()
                begin_immediate(conn, str(self.db.database), self.db.stop)
                conn.execute("ROLLBACK")
            elif self.db.execute_sql("SHOW transaction_read_only").fetchone()[0] == "on":
                raise PersistenceError(
                    f"{self.url} is read-only (transaction_read_only is on: a standby, or "
                    "default_transaction_read_only): give the URL of a writable server"
                )
        self.write_checked = True

    def stop_waiting(self) -> None:
        """This process is stopping (Ctrl-C, SIGTERM): a transaction waiting for the write lock
        another process holds gives up at once (LockWaitStopped) instead of waiting out the
        busy timeout, and so does any later one that finds the lock taken (on PostgreSQL, a
        thread cancels them until the store is closed). For a store about to be closed."""
        stop = getattr(self.db, "stop", None)
        if stop is None or stop.is_set():
            return
        stop.set()
        if self.kind == "postgresql":  # (a signal handler: the thread does the talking)
            threading.Thread(
                target=self.db.cancel_lock_waits,
                args=(lambda: self._closed,),
                name="eclflow-lock-waits",
                daemon=True,
            ).start()

    def _sqlite_path(self) -> str | None:
        return None if self.kind != "sqlite" or self.in_memory else str(self.db.database)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE on SQLite); nested ones become savepoints."""
        with self.reading(), self.db.atomic():
            yield

    writing = transaction

    def close_writers(self) -> None:
        """Let go of the journal writers of the event loops that wrote here, writing what they
        still hold (a run stopped by Ctrl-C: its last rows and events)."""
        writers, self.writers = list(self.writers.values()), {}
        for writer in writers:
            writer.close()

    def close(self) -> None:
        """Close every connection this store opened (in any thread). Idempotent."""
        if self._closed:
            return
        self.close_writers()  # first: they write what they still hold
        self._closed = True
        self.db.close_all()
        self.db.dispose()


def open_store(url: str | os.PathLike[str] | None = None, *, create: bool = True) -> Store:
    """Open (and create or upgrade) the store at `url` (a URL, or a SQLite file's path),
    $ECLFLOW_DATABASE_URL, or the default SQLite file in the user's data directory.
    `create=False`: only a store that exists (the commands that read history do not make a
    database of a mistyped URL)."""
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"a database is a URL or a file path, not {type(url).__name__}")
    return Store(parse_url(resolve_url(url)), create=create)


def _database(url: DatabaseURL) -> Any:
    if url.kind == "sqlite":
        assert url.path is not None
        if url.path != MEMORY:
            from pathlib import Path

            parent = Path(url.path).parent
            if not parent.is_dir():
                raise StoreUnavailable(f"cannot open {url.url}: directory {parent} does not exist")
            return _SqliteDatabase(
                url.path,
                pragmas=SQLITE_PRAGMAS,
                timeout=BUSY_TIMEOUT_MS / 1000,
                lock_type="IMMEDIATE",
                field_types=FIELD_TYPES["sqlite"],
                check_same_thread=False,
            )
        return _SqliteDatabase(
            MEMORY,
            pragmas=[("foreign_keys", 1)],
            lock_type="IMMEDIATE",
            field_types=FIELD_TYPES["sqlite"],
            check_same_thread=False,
            thread_safe=False,  # one connection for every thread, used under Store._shared
        )
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise ConfigError(
            "PostgreSQL needs the psycopg2 driver: pip install 'eclflow[postgres]'"
        ) from None
    return _PostgresqlDatabase(url.database, field_types=FIELD_TYPES["postgresql"], **url.params)


def _is_database_error(error: BaseException) -> bool:
    """peewee's, sqlite3's, or psycopg2's own (the journal writes through a raw cursor)."""
    if isinstance(error, DatabaseError | InterfaceError | sqlite3.Error):
        return True
    psycopg2 = sys.modules.get("psycopg2")
    return psycopg2 is not None and isinstance(error, psycopg2.Error)


def connection_lost(error: BaseException | None) -> bool:
    """Whether a PostgreSQL error may go away with a new connection and another try: the
    connection was closed or broken (a server restart, a failover, a killed backend)."""
    psycopg2 = sys.modules.get("psycopg2")
    if error is None or psycopg2 is None:
        return False
    if isinstance(error, psycopg2.InterfaceError):
        return True
    if isinstance(error, psycopg2.OperationalError):
        return getattr(error, "pgcode", None) is None or error.pgcode.startswith(("08", "57P"))
    return isinstance(error, DatabaseError | InterfaceError) and connection_lost(
        error.__cause__ or error.__context__
    )


def _missing_database(error: BaseException) -> str | None:
    """The name of the PostgreSQL database a connection found missing, if that is why it
    failed (the driver gives no code for a refused connection: only the server's message)."""
    m = re.search(r'FATAL:\s+database "(.+)" does not exist', str(error))
    return m.group(1) if m else None


def _one_line(error: BaseException, url: str, sqlite_path: str | None = None) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if sqlite_path:
        hint = _sqlite_hint(text, sqlite_path)
    elif "lock timeout" in text:
        hint = (
            "another session held a lock too long (a psql left open in a transaction, say): "
            "end it, then try again"
        )
    else:
        hint = None
    return f"{text} ({url})" + (f"; {hint}" if hint else "")


def _sqlite_hint(text: str, path: str) -> str | None:
    """What SQLite's terse messages usually mean, for the file at `path`."""
    import os
    from pathlib import Path

    folder = Path(path).parent
    if Path(path).is_dir():
        return f"{path} is a directory: give the path of a file"
    if "unable to open database file" in text or "readonly database" in text:
        if not os.access(folder, os.W_OK):
            return (
                f"the directory {folder} is not writable (SQLite needs to create the -wal and "
                "-shm files beside the database): use another --db"
            )
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"{path} is not writable: use another --db"
        return None
    if "file is not a database" in text:
        return f"{path} is not an SQLite database: give the path of eclflow's, or of a new file"
    if "database is locked" in text:
        return (
            f"another process held the write lock for {BUSY_TIMEOUT_MS // 1000} s "
            "(an open sqlite3 shell, say): end it, then try again"
        )
    if "disk is full" in text or "disk I/O error" in text:
        return f"check the free space (and any file-size limit) where {folder} is"
    return None
