"""eclflow doing the benchmark's work through its public Python API.

critique-revise is the bundled workflows/critique_revise.yaml on a keyed `mock/` script (one
fresh MockProvider per run), run with `eclflow.engine.runner.run` (figures A and C) or
`eclflow.engine.batch.run_batch` (figures B and E). The journal is a store opened with
`eclflow.store.open_store`: a SQLite file, a PostgreSQL schema of its own, or none at all.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .workloads import (
    CALLS_PER_RUN,
    CHAIN_STEPS,
    CRITIQUE_REVISE,
    PG_URL,
    TOPIC,
    chain_yaml,
    mock_script,
)

MODEL = "mock/bench"


@asynccontextmanager
async def store(kind: str, workdir: Path) -> AsyncIterator[Any]:
    """The journal's store: `none`, `sqlite` (a file in `workdir`) or `postgres`."""
    if kind == "none":
        yield None
        return
    from eclflow.store import open_store

    if kind == "sqlite":
        s = open_store(f"sqlite:///{workdir / 'eclflow.db'}")
        try:
            yield s
        finally:
            s.close()
    elif kind == "postgres":
        from .pg import temporary_schema

        with temporary_schema("bench_ecl") as schema:
            s = open_store(f"{PG_URL}?schema={schema}")
            try:
                yield s
            finally:
                s.close()
    else:
        raise ValueError(f"unknown eclflow store {kind!r}")


def _check(result: Any, expect_revisions: int | None = 2) -> None:
    if result.status != "completed":
        raise RuntimeError(f"eclflow run {result.status}: {result.error}")
    if expect_revisions is not None and result.output.get("revision_count") != expect_revisions:
        raise RuntimeError(f"eclflow run did not do the workload: {result.output}")


async def sequential(runs: int, kind: str, workdir: Path, warmup: int = 20) -> dict[str, Any]:
    """Figure A: `runs` critique-revise runs one after another, mock latency 0."""
    from eclflow.engine.runner import run
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    wf = load(CRITIQUE_REVISE)
    mock = MockProvider(mock_script(0.0))
    async with store(kind, workdir) as s:

        async def one() -> None:
            _check(
                await run(wf, {"topic": TOPIC}, model=MODEL, mock_responses=mock.fresh(), store=s)
            )

        for _ in range(warmup):
            await one()
        start = time.perf_counter()
        for _ in range(runs):
            await one()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "runs": runs, "steps": runs * CALLS_PER_RUN}


async def concurrent(
    runs: int, latency: float, kind: str, workdir: Path, on_ready: Callable[[], None]
) -> dict[str, Any]:
    """Figures B and E: `runs` critique-revise runs at once through the batch API."""
    from eclflow.engine.batch import run_batch
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    wf = load(CRITIQUE_REVISE)
    mock = MockProvider(mock_script(latency))
    async with store(kind, workdir) as s:
        # warm-up: one run (a batch of its own: its run ids differ from the measured batch's)
        for r in await run_batch(
            wf, [{"topic": "warm-up"}], concurrency=1, model=MODEL, mock_responses=mock, store=s
        ):
            _check(r)
        on_ready()
        items = [{"topic": f"{TOPIC} #{i}"} for i in range(runs)]
        start = time.perf_counter()
        results = await run_batch(
            wf, items, concurrency=runs, model=MODEL, mock_responses=mock, store=s
        )
        seconds = time.perf_counter() - start
    for r in results:
        _check(r)
    return {"seconds": seconds, "runs": runs, "steps": runs * CALLS_PER_RUN}


async def chain(runs: int, kind: str, workdir: Path, warmup: int = 2) -> dict[str, Any]:
    """Figure C: `runs` runs of a 200-step linear chain of `template` steps."""
    from eclflow.engine.runner import run
    from eclflow.spec import load_text

    wf = load_text(chain_yaml(CHAIN_STEPS), file="<chain>")
    async with store(kind, workdir) as s:
        for _ in range(warmup):
            _check(await run(wf, {"topic": TOPIC}, store=s), None)
        start = time.perf_counter()
        for _ in range(runs):
            r = await run(wf, {"topic": TOPIC}, store=s)
            _check(r, None)
            if r.output.get("text") != TOPIC:
                raise RuntimeError(f"eclflow chain returned {r.output!r}")
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "runs": runs, "steps": runs * CHAIN_STEPS}
