"""Serving the eclflow Restate service over HTTP/2 cleartext (hypercorn), and registering it.

Several `eclflow serve` processes may bind the same address: the socket is opened with
SO_REUSEPORT, so the kernel spreads Restate's connections over them, a replacement can start
before the old process is gone, and they are registered with Restate as one deployment (its
URI). On several machines, put the workers behind one address (a load balancer) and register
that address once: Restate keeps each running invocation on the deployment it started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ..errors import ConfigError, EclflowError
from . import SERVICE_NAME
from .admin import message as _message
from .service import Worker, build_service


def parse_bind(bind: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`, or `:port`) → (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--bind expects HOST:PORT with a port of 0 to 65535, got {bind!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def open_socket(bind: str) -> socket.socket:
    """A listening TCP socket other `eclflow serve` processes may share (SO_REUSEPORT)."""
    host, port = parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {bind}: {e.strerror or e}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def advertised_uri(bind: str) -> str:
    host, port = parse_bind(bind)
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


REGISTER_WITHIN = 30.0  # seconds: the admin API may still be starting beside the worker


async def register(
    admin_url: str,
    uri: str,
    *,
    within: float = REGISTER_WITHIN,
    timeouts: tuple[timedelta, timedelta] | None = None,
) -> str:
    """Register the deployment at `uri` with the Restate admin API; returns its id.

    Tries for `within` seconds (a server starting beside the worker is waited for). Registering
    the same URI again (another worker at the same address) is not an error, but Restate then
    keeps the service's settings of the first registration: `timeouts` (inactivity, abort) are
    set on the service afterwards, so a worker restarted with other timeouts has them."""
    deployment = await _register(admin_url, uri, within)
    if timeouts is not None:
        await _set_timeouts(admin_url, *timeouts)
    return deployment


def _humantime(d: timedelta) -> str:
    return f"{round(d.total_seconds() * 1000)}ms"


async def _set_timeouts(admin_url: str, inactivity: timedelta, abort: timedelta) -> None:
    import httpx

    url = f"{admin_url.rstrip('/')}/services/{SERVICE_NAME}"
    body = {"inactivity_timeout": _humantime(inactivity), "abort_timeout": _humantime(abort)}
    try:
        async with httpx.AsyncClient(timeout=30.0) as client:
            r = await client.patch(url, json=body)
    except httpx.TransportError as e:
        raise ConfigError(f"cannot reach the Restate admin API at {admin_url}: {e}") from None
    if r.status_code >= 400:
        raise ConfigError(
            f"Restate did not take the service's timeouts ({r.status_code}): {_message(r)}"
        )


async def _register(admin_url: str, uri: str, within: float) -> str:
    import time

    import httpx

    url = admin_url.rstrip("/") + "/deployments"
    deadline = time.monotonic() + within
    last: str = ""
    async with httpx.AsyncClient(timeout=min(30.0, within)) as client:
        while True:
            try:
                r = await client.post(url, json={"uri": uri})
            except httpx.TransportError as e:
                last = f"cannot reach the Restate admin API at {admin_url}: {e}"
            else:
                if r.status_code in (200, 201):
                    data = r.json()
                    return str(data.get("id", ""))
                if r.status_code == 409:
                    return _existing_id(r)
                if r.status_code == 404 or "x-restate-error-source" in r.headers:
                    raise ConfigError(
                        f"{admin_url} is not Restate's admin API (it answered {r.status_code}"
                        f"{': ' + _message(r) if r.content else ''}): give --register the admin "
                        "address (restate-server's port 9070, not its ingress's 8080)"
                    )
                last = (
                    f"Restate refused the deployment {uri} ({r.status_code}): {_message(r)}; "
                    "is that where Restate reaches this worker? (--advertise URL)"
                )
                if r.status_code < 500:
                    break
            if time.monotonic() + 0.2 >= deadline:
                break
            await asyncio.sleep(0.2)
    raise ConfigError(last or f"cannot register {uri} with {admin_url}")


def _existing_id(r: Any) -> str:
    try:
        return str(r.json().get("id", ""))
    except Exception:
        return ""


def _on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`. The Restate app adds its own SIGTERM hook on its first
    request (asyncio keeps one handler a signal), so SIGTERM goes through the SDK's hook list."""
    loop = asyncio.get_running_loop()
    install_shutdown_hook: Any = None
    with contextlib.suppress(ImportError):  # an SDK without the hook list: plain handlers
        from restate.server import install_shutdown_hook
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            if sig == signal.SIGTERM and install_shutdown_hook is not None:
                install_shutdown_hook(loop, stop.set, sig)
            else:
                loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


async def serve(
    worker: Worker,
    bind: str,
    *,
    register_with: str | None = None,
    advertise: str | None = None,
    on_ready: Callable[[str, str | None], None] | None = None,
    stop: asyncio.Event | None = None,
    grace: float = 5.0,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`): the service over h2c on `bind`.

    On stop, invocations in flight get `grace` seconds; whatever is still running then is cut
    off, which Restate treats like a crash: it retries the invocation on another worker."""
    import hypercorn.asyncio
    import restate
    from hypercorn.config import Config

    sock = open_socket(bind)
    app = restate.app(services=[build_service(worker)])
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket now
    config.accesslog = None
    config.errorlog = None
    # Restate keeps one HTTP/2 connection open with many invocations on it.
    config.h2_max_concurrent_streams = 2**31 - 1
    config.keep_alive_max_requests = 2**31 - 1
    config.keep_alive_timeout = 2**31 - 1
    config.graceful_timeout = grace

    stop = stop or asyncio.Event()
    _on_signals(stop)
    server = asyncio.create_task(
        hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    )
    try:
        deployment = None
        uri = advertise or advertised_uri(bind)
        if register_with:
            timeouts = (worker.settings.inactivity_timeout, worker.settings.abort_timeout)
            registering = asyncio.create_task(register(register_with, uri, timeouts=timeouts))
            done, _ = await asyncio.wait({server, registering}, return_when=asyncio.FIRST_COMPLETED)
            if registering not in done:
                registering.cancel()
                await server  # the server stopped before registration: raise its error
                return
            deployment = registering.result()
        if on_ready is not None:
            on_ready(uri, deployment)
        await _until_stopped(server, stop, grace)
    except EclflowError:
        stop.set()
        server.cancel()
        raise


async def _until_stopped(server: asyncio.Task[Any], stop: asyncio.Event, grace: float) -> None:
    """Wait for the server; once stopped, give it `grace` seconds, then cancel it.

    Hypercorn's graceful shutdown waits for clients to close their connections, and Restate
    keeps its HTTP/2 connections open, so the wait is bounded here."""
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({server, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if server.done():
        server.result()
        return
    _quiet_cut_offs()
    try:
        # hypercorn cuts off what is still running after `grace`; this bound is for a server
        # that does not stop even then
        await asyncio.wait_for(asyncio.shield(server), timeout=grace + 2.0)
    except TimeoutError:
        server.cancel()
        await asyncio.wait({server}, timeout=1.0)
    if server.done() and not server.cancelled():
        with contextlib.suppress(Exception):
            server.exception()


def _quiet_cut_offs() -> None:
    """Invocations cut off at a stop make hypercorn, the Restate SDK and asyncio print the
    tracebacks of their own cancellation. That is the expected end of a stop (Restate retries
    the invocations elsewhere), so from now on they go to the debug log, not to stderr."""
    log = logging.getLogger("eclflow.restate")

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        log.debug("while stopping: %s", context.get("message"), exc_info=context.get("exception"))

    asyncio.get_running_loop().set_exception_handler(handler)
    logging.getLogger("restate.server").addFilter(lambda record: record.levelno > logging.ERROR)
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
