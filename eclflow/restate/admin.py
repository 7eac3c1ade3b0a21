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
from . import ADMIN_ENV, SERVICE_NAME, checked_url

DEFAULT_ADMIN_PORT = 9070
# seconds to connect to the admin API: one lost SYN is sent again after 1 s and still fits; an
# address that drops packets (a firewall, a wrong host) is said to be so after this long
CONNECT_TIMEOUT = 3.0


def admin_url(url: str | None, ingress: str) -> str:
    """`--restate-admin-url` > ECLFLOW_RESTATE_ADMIN_URL > the ingress's host on port 9070."""
    import os

    given = url or os.environ.get(ADMIN_ENV)
    if given:
        return checked_url(given.rstrip("/"), f"--restate-admin-url (or {ADMIN_ENV})")
    parts = urlsplit(ingress)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme or "http", f"{host}:{DEFAULT_ADMIN_PORT}", "", "", ""))


WORKFLOW_HEADER = "x-eclflow-workflow"
"""The header `run --engine restate` sends with a run: Restate keeps it in the run's journal,
so the workflow is known before a worker has begun the run (and written it in its state)."""

NO_WORKER_CODE = "RT0010"  # Restate's "network error when calling the deployment"


@dataclass(frozen=True, slots=True)
class Invocation:
    """A run's invocation of the `run` handler, as the admin API's `sys_invocation` shows it."""

    id: str  # inv_…
    status: str  # pending, ready, running, backing-off, suspended, paused, completed, …
    attempts: int = 0  # retry_count: how many times Restate has tried it
    last_failure: str | None = None
    error_code: str | None = None  # the last failure's code (RT0010: no worker was reached)
    deployment: str | None = None  # the address of the workers its last attempt went to

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    @property
    def no_worker(self) -> bool:
        """Whether the last attempt failed for want of a worker (none answered at its address)."""
        return self.error_code == NO_WORKER_CODE

    def failure_note(self) -> str:
        """`after 70 attempts; the last: <error>` (what Restate saw when it gave up)."""
        note = f"after {_attempts(self.attempts)}"
        if self.no_worker:
            note += f"; the last: no worker was reachable at {self.deployment or 'its address'}"
        elif self.last_failure:
            note += f"; the last: {self.last_failure.strip().splitlines()[0]}"
        return note

    def retry_note(self) -> str:
        """What `status` and `runs` say of a run Restate retries (`backing-off`): with no
        worker up, where one is wanted (Restate's own words are "Connection refused")."""
        if not self.no_worker:
            return f"Restate retries it {self.failure_note()}"
        serve = "eclflow serve"
        if self.deployment and urlsplit(self.deployment).netloc:
            serve += f" --bind {urlsplit(self.deployment).netloc}"
        return (
            f"no worker is reachable at {self.deployment or 'the address registered'}: start one "
            f"with `{serve}` (Restate has tried {_attempts(self.attempts)}; it pauses the run "
            "after about 70)"
        )


def _attempts(n: int) -> str:
    return f"{n} attempt{'s' if n != 1 else ''}"


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
        self._deployments: dict[str, str | None] = {}  # (asked once per listing)

    def _unreachable(self, e: BaseException) -> AdminUnavailable:
        import httpx

        why = type(e).__name__
        if isinstance(e, httpx.ConnectTimeout):  # (it named no address, nor how long it waited)
            why = f"no connection within {CONNECT_TIMEOUT:g}s"
        return AdminUnavailable(f"cannot reach Restate's admin API at {self.url} ({why})")

    async def _query(self, sql: str) -> list[dict[str, Any]]:
        """The rows of one SQL query of the admin API (`/query`)."""
        import httpx

        try:
            r = await self.client.post(
                f"{self.url}/query",
                json={"query": sql},
                headers={"accept": "application/json"},
                timeout=httpx.Timeout(10.0, connect=CONNECT_TIMEOUT),
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
            "SELECT id, status, retry_count, last_failure, last_failure_error_code, "
            "last_attempt_deployment_id FROM sys_invocation "
            f"WHERE target_service_name = '{SERVICE_NAME}' "
            f"AND target_service_key = {_literal(run_id)} "
            "AND target_handler_name = 'run' ORDER BY created_at DESC LIMIT 1"
        )
        if not rows:
            return None
        row = rows[0]
        code = row.get("last_failure_error_code") or None
        return Invocation(
            id=str(row.get("id")),
            status=str(row.get("status") or "pending"),
            attempts=int(row.get("retry_count") or 0),
            last_failure=row.get("last_failure") or None,
            error_code=code,
            deployment=(
                await self.deployment(row.get("last_attempt_deployment_id"))
                if code == NO_WORKER_CODE
                else None
            ),
        )

    async def deployment(self, deployment_id: str | None) -> str | None:
        """The address of a deployment (the workers registered at once), None if unknown."""
        if not deployment_id:
            return None
        if deployment_id not in self._deployments:
            rows = await self._query(
                f"SELECT endpoint FROM sys_deployment WHERE id = {_literal(deployment_id)}"
            )
            found = rows[0].get("endpoint") if rows else None
            self._deployments[deployment_id] = str(found) if found else None
        return self._deployments[deployment_id]

    async def runs(
        self,
        state_key: str,
        limit: int,
        *,
        state: str | None = None,
        workflow: str | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """The runs Restate keeps (a finished one for a day by default), newest first, filtered
        by the query: each with its `state` as `runs` shows it, its `invocation` id and
        `created_at`, `completion_failure`, `attempts`, `last_failure`, `error_code` and
        `deployment_id`, the JSON text of the state it keeps under `state_key` (`progress`,
        None before a worker has begun it) and the `workflow` written there. A run without a
        `workflow` there is kept by a `workflow` filter (`submitted_workflows` tells)."""
        where = []
        if state is not None:
            where.append(f"state = {_literal(state)}")
        if workflow is not None:
            where.append(f"(workflow = {_literal(workflow)} OR workflow IS NULL)")
        return await self._query(
            f"SELECT * FROM ({_RUNS.replace('{key}', _literal(state_key))}) AS runs"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} "
            f"ORDER BY created_at DESC, run_id LIMIT {int(limit)} OFFSET {int(offset)}"
        )

    async def submitted_workflows(self, invocation_ids: list[str]) -> dict[str, str]:
        """The workflow id each of these invocations was submitted with (WORKFLOW_HEADER), from
        the first entry of its journal; one submitted without it is left out. (Asked of a few
        runs only: the journal's JSON is made for every entry the query reads.)"""
        if not invocation_ids:
            return {}
        rows = await self._query(
            f"SELECT id, regexp_match(entry_json, {_literal(_HEADER_VALUE)})[1] AS workflow "
            f"FROM sys_journal WHERE id IN ({', '.join(map(_literal, invocation_ids))}) "
            "AND index = 0"
        )
        return {str(r["id"]): str(r["workflow"]) for r in rows if r.get("workflow")}

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


# A run's state as `runs` shows it, from its invocation's status and the progress it keeps (the
# JSON a worker writes, `state` its first key), computed by the query so that `--state` filters
# there, before the limit; only core SQL functions (regexp_match), which any Restate 1.x has.
# A completed invocation whose progress says neither completed nor failed ended in an error.
_RUNS = (
    "SELECT i.id AS invocation, i.target_service_key AS run_id, i.created_at, "
    "i.completion_failure, i.retry_count AS attempts, i.last_failure, "
    "i.last_failure_error_code AS error_code, i.last_attempt_deployment_id AS deployment_id, "
    "s.value_utf8 AS progress, "
    r"""regexp_match(s.value_utf8, '"workflow":\s*"([^"]*)"')[1] AS workflow, """
    "CASE WHEN i.status = 'paused' THEN 'paused' "
    "WHEN i.status = 'backing-off' THEN 'retrying' "
    "WHEN i.status = 'completed' THEN CASE WHEN i.completion_failure IS NULL "
    r"""AND regexp_match(s.value_utf8, '^\{"state":\s*"([a-z]+)"')[1] = 'completed' """
    "THEN 'completed' ELSE 'failed' END "
    r"""WHEN regexp_match(s.value_utf8, '"running":\s*"|"steps":\s*\[\s*\{') IS NOT NULL """
    "THEN 'running' ELSE 'pending' END AS state "
    "FROM sys_invocation i LEFT JOIN state s ON s.service_name = i.target_service_name "
    "AND s.service_key = i.target_service_key AND s.key = {key} "
    f"WHERE i.target_service_name = '{SERVICE_NAME}' AND i.target_handler_name = 'run'"
)
# WORKFLOW_HEADER's value in the JSON of a journal's first entry (`{"name":…,"value":…}`)
_HEADER_VALUE = f'"name":"{WORKFLOW_HEADER}","value":"([^"]*)"'


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
