"""UTC timestamps as text, cheaply: the journal stamps several rows per step."""

from __future__ import annotations

import time

_prefixes: dict[str, tuple[int, str]] = {}


def utc_text(t: float | None = None, sep: str = "T") -> str:
    """`t` (seconds since the epoch; now if None) as `YYYY-MM-DD<sep>HH:MM:SS.ffffff+00:00`,
    the text of `datetime.isoformat(sep)` for an aware UTC datetime with microseconds."""
    if t is None:
        t = time.time()
    second = int(t)
    cached = _prefixes.get(sep)
    if cached is None or cached[0] != second:
        cached = (second, time.strftime(f"%Y-%m-%d{sep}%H:%M:%S", time.gmtime(second)))
        _prefixes[sep] = cached
    return f"{cached[1]}.{int((t - second) * 1_000_000):06d}+00:00"
