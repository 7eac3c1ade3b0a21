"""`python -m bench.restate_bench`: N mock critique-revise runs through Restate, beside the
local engine doing the same work.

Restate side: the real `restate-server` (from `.restate/`, as `.ci/run` installs it) on loopback
with a throwaway data dir, `--workers` `eclflow serve` processes sharing one address, and the
runs submitted through the ingress (`eclflow.restate.client.submit_many`) and waited for. Each
step is a `ctx.run` Restate journals before the run goes on.
Local side: the same runs with `eclflow.engine.batch.run_batch` in this process.
Both use the keyed mock script of `bench/workloads.py` (six model calls a run) with the same
latency, and the same store choice (`--store none|sqlite|postgres`) for eclflow's own rows.

    python -m bench.restate_bench                       # 1000 runs, 2 workers, latency 0
    python -m bench.restate_bench --runs 200 --latency 0.05 --store sqlite --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .workloads import CALLS_PER_RUN, CRITIQUE_REVISE, PG_URL, TOPIC, mock_script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the server/worker launcher the tests use

MODEL = "mock/bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.restate_bench", description=__doc__)
    p.add_argument("--runs", type=int, default=1000, help="runs per engine (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="eclflow serve processes (default 2)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="requests the client keeps open / runs the local batch runs at once (default 64)",
    )
    p.add_argument("--latency", type=float, default=0.0, help="mock model latency, seconds")
    p.add_argument("--store", choices=["none", "sqlite", "postgres"], default="none")
    p.add_argument("--skip-local", action="store_true", help="only the Restate figure")
    p.add_argument("--json", action="store_true", help="one JSON line at the end")
    return p.parse_args(argv)


def _store_url(kind: str, workdir: Path, name: str) -> tuple[str | None, Any]:
    """A database URL for eclflow's rows, and a cleanup to call afterwards."""
    if kind == "none":
        return None, lambda: None
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{name}.db'}", lambda: None
    from .pg import temporary_schema

    ctx = temporary_schema(f"bench_{name}")
    schema = ctx.__enter__()
    return f"{PG_URL}?schema={schema}", lambda: ctx.__exit__(None, None, None)


def _check(results: list[Any]) -> None:
    bad = [r for r in results if getattr(r, "status", None) != "completed"]
    if bad:
        raise SystemExit(f"{len(bad)} runs did not complete; first: {bad[0].error}")
    for r in results:
        if r.output.get("revision_count") != 2:
            raise SystemExit(f"a run did not do the workload: {r.output}")


def restate_figure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from restate_server import free_port, processes, server_available

    from eclflow.restate import client
    from eclflow.spec import load

    if not server_available():
        raise SystemExit("restate-server is not in .restate/: run .ci/run, or npm install it")
    wf = load(CRITIQUE_REVISE)
    script = {"responses": mock_script(args.latency), "cycle": True}
    db, cleanup = _store_url(args.store, workdir, "restate")
    try:
        with processes(workdir) as procs:
            server = procs.server()
            bind = f"127.0.0.1:{free_port()}"
            env = {"ECLFLOW_MOCK_LOG": "", "ECLFLOW_LOG_LEVEL": "error"}
            for i in range(args.workers):
                procs.worker(server, script, bind=bind, name=f"w{i}", db=db, extra_env=env)

            def batch(n: int, tag: str) -> tuple[float, list[Any]]:
                items = [{"topic": f"{TOPIC} {tag}{i}"} for i in range(n)]
                start = time.perf_counter()
                results = asyncio.run(
                    client.submit_many(
                        wf,
                        items,
                        model=MODEL,
                        restate_url=server.ingress_url,
                        concurrency=args.concurrency,
                    )
                )
                return time.perf_counter() - start, results

            _check(batch(min(20, args.runs), "warm-up ")[1])
            seconds, results = batch(args.runs, "#")
            _check(results)
    finally:
        cleanup()
    return {
        "engine": f"restate, {args.workers} workers",
        "seconds": seconds,
        "runs": args.runs,
        "runs_per_s": args.runs / seconds,
        "steps_per_s": args.runs * CALLS_PER_RUN / seconds,
    }


def local_figure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from eclflow.engine.batch import run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load
    from eclflow.store import open_store

    wf = load(CRITIQUE_REVISE)
    mock = MockProvider(mock_script(args.latency))
    db, cleanup = _store_url(args.store, workdir, "local")
    store = open_store(db) if db else None
    try:

        async def batch(n: int, tag: str) -> list[Any]:
            items = [{"topic": f"{TOPIC} {tag}{i}"} for i in range(n)]
            return await run_batch(
                wf,
                items,
                concurrency=args.concurrency,
                model=MODEL,
                mock_responses=mock,
                store=store,
            )

        _check(asyncio.run(batch(min(20, args.runs), "warm-up ")))
        start = time.perf_counter()
        results = asyncio.run(batch(args.runs, "#"))
        seconds = time.perf_counter() - start
        _check(results)
    finally:
        if store is not None:
            store.close()
        cleanup()
    return {
        "engine": "local (one process, run_batch)",
        "seconds": seconds,
        "runs": args.runs,
        "runs_per_s": args.runs / seconds,
        "steps_per_s": args.runs * CALLS_PER_RUN / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="eclflow-restate-bench-") as tmp:
        workdir = Path(tmp)
        rows.append(restate_figure(args, workdir / "restate"))
        if not args.skip_local:
            (workdir / "local").mkdir()
            rows.append(local_figure(args, workdir / "local"))
    print(
        f"{args.runs} critique-revise runs ({CALLS_PER_RUN} mock calls each, latency "
        f"{args.latency:g} s), store: {args.store}, concurrency {args.concurrency} · "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"{'engine':34} {'seconds':>8} {'runs/s':>8} {'steps/s':>8}")
    for r in rows:
        print(
            f"{r['engine']:34} {r['seconds']:8.2f} {r['runs_per_s']:8.1f} {r['steps_per_s']:8.0f}"
        )
    if args.json:
        print(
            json.dumps(
                {"figure": "restate", "store": args.store, "latency": args.latency, "rows": rows}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
