"""The PostgreSQL server of figure E: is it there, and a throw-away schema per measurement."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from .workloads import PG_URL


def unreachable(url: str = PG_URL) -> str | None:
    """None when `url` accepts a connection, else one line saying why not."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[bench]')"
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except Exception as e:  # any failure to connect means: skip figure E
        return " ".join(str(e).split()) or type(e).__name__
    return None


@contextmanager
def temporary_schema(prefix: str, url: str = PG_URL) -> Iterator[str]:
    """A new schema for one measurement's tables, dropped with everything in it afterwards."""
    import psycopg2

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(url, connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.close()
