"""Running eclflow workflows on Restate, the durable-execution engine (DESIGN.md §3).

The same orchestrator runs with a different journal: every step execution is a
`ctx.run_typed(key, …)` inside a Restate workflow handler whose key is the run id. Modules:

- `journal`: `RestateJournal` (the Journal protocol over a Restate context) and the JSON form
  of a `StepExecution` that Restate keeps;
- `service`: the Restate workflow service (`eclflow serve` serves it) and its worker settings;
- `worker`: serving that service over HTTP/2 cleartext with hypercorn, and registering it;
- `client`: submitting runs through Restate's ingress, waiting for them, reading their status;
- `admin`: how a run's invocation stands (paused?) and resuming it, through the admin API.

Importing this package imports nothing heavy; `restate`, `hypercorn` and `httpx` (the `restate`
extra) are imported by the modules that need them.
"""

from __future__ import annotations

SERVICE_NAME = "eclflow"
"""The Restate workflow service every worker serves; its workflow key is the run id."""

DEFAULT_BIND = "127.0.0.1:9080"
DEFAULT_ADMIN_URL = "http://127.0.0.1:9070"
DEFAULT_INGRESS_URL = "http://127.0.0.1:8080"
INGRESS_ENV = "ECLFLOW_RESTATE_URL"
ADMIN_ENV = "ECLFLOW_RESTATE_ADMIN_URL"

EXTRA_HINT = "pip install 'eclflow[restate]'"


def require(module: str) -> None:
    """Raise a one-line ConfigError when an optional module of the `restate` extra is missing."""
    import importlib.util

    from ..errors import ConfigError

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"the Restate engine needs the `{module}` package: {EXTRA_HINT}")


def checked_url(url: str, names: str) -> str:
    """`url`, when it is one an HTTP client can call; `names`: where it was given (the option
    and its variable). httpx's `InvalidURL: Invalid port` (and an ExceptionGroup around it)
    said nothing of which option was wrong."""
    from urllib.parse import urlsplit

    from ..errors import ConfigError

    try:
        _ = urlsplit(url).port  # (a port out of range, an unclosed [IPv6 address)
    except ValueError as e:
        raise ConfigError(f"{names} {url!r} is not a URL ({e}): give http://HOST:PORT") from None
    return url
