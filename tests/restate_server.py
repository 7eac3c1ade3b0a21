"""Starting and stopping the real `restate-server` and `eclflow serve` workers for tests.

The server binary comes from the npm package `@restatedev/restate-server` that `.ci/run`
installs into `.restate/` (or ECLFLOW_RESTATE_SERVER names another binary). Everything
listens on loopback on free, non-default ports with a throwaway base dir, so a developer's
own Restate is never touched. Every process is stopped by its pid (SIGKILL when asked to).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESTATE_SERVER = Path(
    os.environ.get("ECLFLOW_RESTATE_SERVER")
    or ROOT / ".restate/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
)


def server_available() -> bool:
    return RESTATE_SERVER.is_file() and os.access(RESTATE_SERVER, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, urllib.error.URLError):
        return 0


def stop_pid(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal one process we started, by its pid, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)


@dataclass
class RestateServer:
    """One restate-server node on loopback; `kill()` then `start()` keeps its data."""

    base_dir: Path
    ingress_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        env.update(
            {
                "RESTATE_NODE_NAME": "eclflow-test",
                "RESTATE_CLUSTER_NAME": "eclflow-test",
                "RESTATE_LISTEN_MODE": "tcp",
                "RESTATE_BIND_ADDRESS": f"127.0.0.1:{self.node_port}",
                "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{self.node_port}/",
                "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{self.ingress_port}",
                "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{self.admin_port}",
                "RESTATE_DISABLE_TELEMETRY": "true",
                "RESTATE_LOG_FILTER": "warn",
                "DO_NOT_TRACK": "1",
            }
        )
        return env

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = (self.base_dir.parent / f"restate-server-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(RESTATE_SERVER), "--no-logo", "--base-dir", str(self.base_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )
        log.close()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"restate-server exited with {self.proc.returncode}: {self.log()}"
                )
            if (
                _get(f"{self.admin_url}/health") == 200
                and _get(f"{self.ingress_url}/restate/health") == 200
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"restate-server not healthy after {timeout}s: {self.log()}")

    def log(self) -> str:
        path = self.base_dir.parent / f"restate-server-{self.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, signal.SIGKILL)


@dataclass
class WorkerProcess:
    """One `eclflow serve` subprocess."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    mock_log: Path

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "eclflow worker serving" in self.stderr():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"eclflow serve exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise RuntimeError(f"eclflow serve not ready after {timeout}s: {self.stderr()}")

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def calls(self) -> list[dict[str, Any]]:
        """Every model call this worker's mock received (ECLFLOW_MOCK_LOG)."""
        if not self.mock_log.exists():
            return []
        return [json.loads(line) for line in self.mock_log.read_text().splitlines() if line]

    def kill(self) -> None:
        stop_pid(self.proc, signal.SIGKILL)


class Processes:
    """Everything a test started, stopped by pid at the end (a fixture's finalizer)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[RestateServer] = []
        self.workers: list[WorkerProcess] = []

    def server(self) -> RestateServer:
        server = RestateServer(self.tmp / f"restate-{len(self.servers)}" / "data")
        self.servers.append(server)
        server.start()
        return server

    def worker(
        self,
        server: RestateServer,
        script: Any,
        *,
        bind: str,
        name: str | None = None,
        db: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        register: bool = True,
        wait: bool = True,
        args: Sequence[str] = (),
    ) -> WorkerProcess:
        name = name or f"worker-{len(self.workers)}"
        script_path = self.tmp / f"{name}-script.json"
        script_path.write_text(json.dumps(script))
        log_path = self.tmp / f"{name}.log"
        mock_log = self.tmp / f"{name}-calls.jsonl"
        env = {
            **os.environ,
            "ECLFLOW_MOCK_LOG": str(mock_log),
            "ECLFLOW_DATABASE_URL": "",
            **(extra_env or {}),
        }
        cmd = [
            sys.executable,
            "-m",
            "eclflow",
            "serve",
            "--bind",
            bind,
            "--mock-responses",
            str(script_path),
            *args,
        ]
        if register:
            cmd += ["--register", server.admin_url]
        if db:
            cmd += ["--db", db]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        worker = WorkerProcess(proc, log_path, mock_log)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for w in self.workers:
            w.kill()
        for s in self.servers:
            s.kill()


@contextlib.contextmanager
def processes(tmp: Path) -> Iterator[Processes]:
    procs = Processes(tmp)
    try:
        yield procs
    finally:
        procs.stop_all()


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
