"""What eclflow asks Restate's admin API about a run: how its invocation stands, and resuming it.

Restate pauses an invocation it could not run after many attempts (no worker for about six
minutes, or an error outside any step every time) until someone resumes it; only the admin API
tells a paused run from one that waits, and only it resumes one. The client finds it at
`--restate-admin-url`, ECLFLOW_RESTATE_ADMIN_URL, or else port 9070 of the ingress's host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import ConfigError, EclflowError
from . import ADMIN_ENV, SERVICE_NAME

DEFAULT_ADMIN_PORT = 9070


def admin_url(url: str | None, ingress: str) -> str:
    """`--restate-admin-url` > ECLFLOW_RESTATE_ADMIN_URL > the ingress's host on port 9070."""
    import os

    given = url or os.environ.get(ADMIN_ENV)
    if given:
        return given.rstrip("/")
    parts = urlsplit(ingress)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme or "http", f"{host}:{DEFAULT_ADMIN_PORT}", "", "", ""))


@dataclass(frozen=True, slots=True)
class Invocation:
    """A run's invocation of the `run` handler, as the admin API's `sys_invocation` shows it."""

    id: str  # inv_…
    status: str  # pending, ready, running, backing-off, suspended, paused, completed, …
    attempts: int = 0  # retry_count: how many times Restate has tried it
    last_failure: str | None = None

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    def failure_note(self) -> str:
        """`after 70 attempts; the last: <error>` (what Restate saw when it gave up)."""
        note = f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.last_failure:
            note += f"; the last: {self.last_failure.strip().splitlines()[0]}"
        return note


class AdminUnavailable(ConfigError):
    """The admin API could not be asked: `reason` says why (the message adds what to do)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"{reason}: give its address (restate-server's port 9070) with --restate-admin-url "
            f"or {ADMIN_ENV}"
        )
        self.reason = reason


class Admin:
    """The admin API calls eclflow makes, with one-line errors."""

    def __init__(self, url: str, client: Any) -> None:
        self.url = url
        self.client = client
        # whether it was ever found at its address (an answer, a failure of its own, a query
        # over the time limit): then a failure is for now, and it is asked again
        self.reached = False

    def _unreachable(self, e: BaseException) -> AdminUnavailable:
        return AdminUnavailable(
            f"cannot reach Restate's admin API at {self.url} ({type(e).__name__})"
        )

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        """The rows of one SQL query of the admin API (`/query`)."""
        import httpx

        try:
            r = await self.client.post(
                f"{self.url}/query",
                json={"query": sql},
                headers={"accept": "application/json"},
                timeout=httpx.Timeout(10.0, connect=3.0),
            )
        except httpx.TransportError as e:
            # connected, then slow or cut off (a long query, a server starting or stopping)
            cut = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.ProtocolError)
            self.reached |= isinstance(e, cut)
            raise self._unreachable(e) from None
        self.reached |= r.status_code >= 500  # (its own failure: a server still starting)
        if r.status_code != 200:
            raise AdminUnavailable(
                f"{self.url} did not answer as Restate's admin API does ({r.status_code})"
            )
        try:
            rows = r.json().get("rows")
        except (ValueError, AttributeError):
            rows = None
        if not isinstance(rows, list):  # (a web page, another API: not "no runs")
            raise AdminUnavailable(
                f"{self.url} is not Restate's admin API (it answered {r.status_code} without "
                "the rows of a query)"
            )
        self.reached = True
        return [row for row in rows if isinstance(row, dict)]

    async def invocation(self, run_id: str) -> Invocation | None:
        """The run's latest `run` invocation; None when Restate has none for it."""
        rows = await self._query(
            "SELECT id, status, retry_count, last_failure FROM sys_invocation "
            f"WHERE target_service_name = '{SERVICE_NAME}' "
            f"AND target_service_key = {_literal(run_id)} "
            "AND target_handler_name = 'run' ORDER BY created_at DESC LIMIT 1"
        )
        if not rows:
            return None
        row = rows[0]
        return Invocation(
            id=str(row.get("id")),
            status=str(row.get("status") or "pending"),
            attempts=int(row.get("retry_count") or 0),
            last_failure=row.get("last_failure") or None,
        )

    async def runs(self, state_key: str, limit: int | None) -> list[dict[str, Any]]:
        """The runs Restate keeps (a finished one for a day by default), newest first: each
        with its invocation's `status`, `created_at`, `completion_failure` and the JSON text of
        the state it keeps under `state_key` (`progress`, None before its first step)."""
        return await self._query(
            "SELECT i.target_service_key AS run_id, i.status, i.created_at, "
            "i.completion_failure, s.value_utf8 AS progress FROM sys_invocation i "
            "LEFT JOIN state s ON s.service_name = i.target_service_name "
            f"AND s.service_key = i.target_service_key AND s.key = {_literal(state_key)} "
            f"WHERE i.target_service_name = '{SERVICE_NAME}' AND i.target_handler_name = 'run' "
            f"ORDER BY i.created_at DESC{f' LIMIT {int(limit)}' if limit else ''}"
        )

    async def state(self, run_id: str, key: str) -> Any:
        """The value the run keeps in its state under `key` (JSON), None when it has none."""
        import json

        rows = await self._query(
            "SELECT value_utf8 FROM state "
            f"WHERE service_name = '{SERVICE_NAME}' AND service_key = {_literal(run_id)} "
            f"AND key = {_literal(key)}"
        )
        if not rows or rows[0].get("value_utf8") is None:
            return None
        try:
            return json.loads(rows[0]["value_utf8"])
        except ValueError:
            return None

    async def resume(self, invocation_id: str) -> None:
        """Resume a paused invocation on the latest deployment (the workers registered last:
        the one it started on may be gone)."""
        import httpx

        url = f"{self.url}/invocations/{quote(invocation_id, safe='')}/resume"
        try:
            r = await self.client.patch(url, params={"deployment": "latest"})
            if r.status_code == 400:  # (no deployment pinned: nothing to replace)
                r = await self.client.patch(url)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        if r.status_code >= 400:
            raise EclflowError(
                f"Restate did not resume {invocation_id} ({r.status_code}): {message(r)}"
            )


def _literal(text: str) -> str:
    """A string as an SQL literal (a run id is the user's to choose)."""
    return "'" + text.replace("'", "''") + "'"


def message(r: Any) -> str:
    """The first line of what Restate said in an error answer (its JSON `message`, or the text)."""
    try:
        data = r.json()
        text = data.get("message") if isinstance(data, dict) else None
    except Exception:
        text = None
    text = str(text or r.text or f"HTTP {r.status_code}").strip()
    return text.splitlines()[0] if text else f"HTTP {r.status_code}"
