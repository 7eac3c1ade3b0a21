"""Which database to use: `--db URL` > ECLFLOW_DATABASE_URL > a SQLite file in the data dir.

Parsing is kept free of peewee so that a bad URL is reported before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigError

ENV = "ECLFLOW_DATABASE_URL"
MEMORY = ":memory:"
_HINT = "use sqlite:///path/to/file.db, a file path, or postgresql://user@host:port/dbname"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed database URL. `kind` is "sqlite" (with `path`) or "postgresql"."""

    kind: str
    url: str  # as given, password hidden: safe to print
    path: str | None = None  # SQLite: a file path or ":memory:"
    database: str | None = None  # PostgreSQL
    params: dict[str, str | int] = field(default_factory=dict)  # PostgreSQL connect kwargs
    schema: str | None = None  # PostgreSQL: tables live in this schema (created if missing)


def default_url() -> str:
    """`sqlite:///<user data dir>/eclflow.db`; creates the directory."""
    from platformdirs import user_data_dir

    directory = Path(user_data_dir("eclflow"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the data directory {directory}: {e.strerror or e}; "
            f"set {ENV} or pass --db"
        ) from None
    return f"sqlite:///{directory / 'eclflow.db'}"


def resolve_url(url: str | None = None) -> str:
    """The URL to use: `url` if given (and not blank), else $ECLFLOW_DATABASE_URL, else the
    default SQLite file."""
    for candidate in (url, os.environ.get(ENV)):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return default_url()


def parse_url(url: str) -> DatabaseURL:
    """Parse a database URL or a bare file path; an unknown scheme is a ConfigError."""
    text = url.strip()
    if "://" not in text:
        if not text:
            raise ConfigError(f"empty database URL: {_HINT}")
        return DatabaseURL("sqlite", text, path=_sqlite_path(text))
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("sqlite", "sqlite3"):
        rest = text.split("://", 1)[1]
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"bad SQLite URL {text!r}: {_HINT}")
        path, _, query = rest[1:].partition("?")
        if query:
            raise ConfigError(f"SQLite URLs take no parameters: {text!r}")
        if not path:
            raise ConfigError(f"bad SQLite URL {text!r}: no file name; {_HINT}")
        return DatabaseURL("sqlite", text, path=_sqlite_path(unquote(path)))
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        return _postgres(text)
    raise ConfigError(f"unsupported database URL scheme '{scheme}' in {_safe(text)}: {_HINT}")


def _sqlite_path(path: str) -> str:
    if path == MEMORY:
        return MEMORY
    shown = path if len(path) <= 80 else f"{path[:60]}…({len(path)} characters)"
    if "\x00" in path:
        raise ConfigError(f"the SQLite file path {shown!r} holds a NUL byte: {_HINT}")
    try:
        full = Path(path).expanduser()
        full.exists()  # (OSError for a name longer than the file system takes)
    except RuntimeError:  # (~user, with no such user)
        user = path.partition("/")[0]
        raise ConfigError(f"cannot open {shown}: no such user as {user}") from None
    except OSError as e:
        raise ConfigError(f"cannot open {shown}: {e.strerror or e}") from None
    return str(full)


def _postgres(text: str) -> DatabaseURL:
    try:
        parts = urlsplit(text)
    except ValueError as e:  # (an unclosed [IPv6 address)
        raise ConfigError(f"bad PostgreSQL URL {_safe(text)}: {e}; {_HINT}") from None
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigError(f"PostgreSQL URL {_safe(text)} names no database: {_HINT}")
    params: dict[str, str | int] = {}
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"bad port in {_safe(text)}") from None
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.hostname:
        params["host"] = parts.hostname
    if port:
        params["port"] = port
    schema = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            if not _SCHEMA_NAME.fullmatch(value):
                raise ConfigError(
                    f"bad schema name {value!r} in {_safe(text)}: a schema name is letters, "
                    "digits and _ (at most 63), not starting with a digit"
                )
            if value.lower().startswith("pg_") or value.lower() == "information_schema":
                raise ConfigError(
                    f"schema {value!r} in {_safe(text)} is PostgreSQL's own, where no table of "
                    "eclflow's can go: give a name of your own"
                )
            schema = value
        else:
            params[key] = value
    params.setdefault("connect_timeout", 10)
    if schema is not None:
        # in quotes, as the schema is created: unquoted, PostgreSQL would look in the name
        # folded to lowercase (`Runs` in `runs`, where no table is)
        params["options"] = f'{params.get("options", "")} -c search_path="{schema}"'.strip()
    return DatabaseURL("postgresql", _safe(text), database=database, params=params, schema=schema)


def _safe(text: str) -> str:
    """The URL with its password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", text)
