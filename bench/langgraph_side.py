"""LangGraph doing the benchmark's work: the same six fake-model calls per critique-revise run.

A StateGraph generate → critique → (revise → critique)* with a conditional edge after critique;
each node awaits the fake model (sleep LATENCY, return the fixed reply for its key) and keeps
what it needs in the graph state. Persistence is LangGraph's own: no checkpointer, the
AsyncSqliteSaver on a file, or the AsyncPostgresSaver; every run has its own thread id.
"""

from __future__ import annotations

import asyncio
import json
import operator
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict, cast

from .workloads import CALLS_PER_RUN, CHAIN_STEPS, PG_URL, REPLIES, TOPIC

MAX_REVISIONS = 3


class State(TypedDict, total=False):
    topic: str
    draft: str
    decision: str
    feedback: str
    critiques: int
    revisions: int
    calls: Annotated[int, operator.add]


def fake_model(latency: float) -> Callable[[str, str], Awaitable[str]]:
    """The fake model: sleeps `latency` seconds (not at all at 0) and returns the fixed reply."""

    async def call(key: str, prompt: str) -> str:
        if latency > 0:
            await asyncio.sleep(latency)
        return REPLIES[key]

    return call


def build_graph(latency: float, checkpointer: Any = None) -> Any:
    """The critique-revise StateGraph, compiled with `checkpointer` (None: no persistence)."""
    from langgraph.graph import END, START, StateGraph

    model = fake_model(latency)

    async def generate(state: State) -> dict[str, Any]:
        draft = await model("generate", f"Write a paragraph about: {state['topic']}")
        return {"draft": draft, "critiques": 0, "revisions": 0, "calls": 1}

    async def critique(state: State) -> dict[str, Any]:
        n = state["critiques"] + 1
        reply = await model(f"critique#{n}", f"Review this draft:\n{state['draft']}")
        verdict = json.loads(reply)
        return {
            "critiques": n,
            "decision": verdict["decision"],
            "feedback": verdict.get("feedback", ""),
            "calls": 1,
        }

    async def revise(state: State) -> dict[str, Any]:
        n = state["revisions"] + 1
        draft = await model(
            f"revise#{n}", f"Revise:\n{state['draft']}\nFeedback:\n{state['feedback']}"
        )
        return {"draft": draft, "revisions": n, "calls": 1}

    def route(state: State) -> str:
        if state["decision"] == "revise" and state["revisions"] < MAX_REVISIONS:
            return "revise"
        return END

    g = StateGraph(State)
    g.add_node("generate", generate)
    g.add_node("critique", critique)
    g.add_node("revise", revise)
    g.add_edge(START, "generate")
    g.add_edge("generate", "critique")
    g.add_conditional_edges("critique", route, ["revise", END])
    g.add_edge("revise", "critique")
    return g.compile(checkpointer=checkpointer)


class ChainState(TypedDict):
    text: str


def build_chain(steps: int = CHAIN_STEPS, checkpointer: Any = None) -> Any:
    """A linear chain of `steps` nodes, each producing its predecessor's text."""
    from langgraph.graph import END, START, StateGraph

    def node(state: ChainState) -> dict[str, Any]:
        return {"text": f"{state['text']}"}

    g = StateGraph(ChainState)
    for i in range(steps):
        g.add_node(f"s{i}", node)
    g.add_edge(START, "s0")
    for i in range(1, steps):
        g.add_edge(f"s{i - 1}", f"s{i}")
    g.add_edge(f"s{steps - 1}", END)
    return g.compile(checkpointer=checkpointer)


@asynccontextmanager
async def saver(kind: str, workdir: Path) -> AsyncIterator[Any]:
    """LangGraph's checkpointer: `none`, `sqlite` (a file in `workdir`, SQLite's default
    synchronous=FULL), `sqlite-normal` (the same with synchronous=NORMAL, as eclflow's store) or
    `postgres` (a schema of its own, dropped afterwards)."""
    if kind == "none":
        yield None
    elif kind in ("sqlite", "sqlite-normal"):
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(str(workdir / "langgraph.db")) as cp:
            await cp.setup()
            if kind == "sqlite-normal":
                # eclflow's SQLite setting (WAL, no fsync per commit) instead of the default FULL
                await cp.conn.execute("PRAGMA synchronous=NORMAL")
            yield cp
    elif kind == "postgres":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        from .pg import temporary_schema

        with temporary_schema("bench_lg") as schema:
            pool = AsyncConnectionPool(
                conninfo=PG_URL,
                max_size=10,
                open=False,
                kwargs={
                    "autocommit": True,
                    "prepare_threshold": 0,
                    "row_factory": dict_row,
                    "options": f"-c search_path={schema}",
                },
            )
            await pool.open()
            try:
                # (the pool's rows are dicts, set by row_factory, which its type does not say)
                pg = AsyncPostgresSaver(cast(Any, pool))
                await pg.setup()
                yield pg
            finally:
                await pool.close()
    else:
        raise ValueError(f"unknown LangGraph checkpointer {kind!r}")


def _config(persist: bool, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(extra)
    if persist:
        config["configurable"] = {"thread_id": uuid.uuid4().hex}
    return config


def _check(state: dict[str, Any]) -> None:
    if state.get("calls") != CALLS_PER_RUN or state.get("revisions") != 2:
        raise RuntimeError(f"LangGraph run did not do the workload: {state}")


async def sequential(runs: int, kind: str, workdir: Path, warmup: int = 20) -> dict[str, Any]:
    """Figure A: `runs` critique-revise runs one after another, fake model latency 0."""
    async with saver(kind, workdir) as cp:
        graph = build_graph(0.0, cp)
        persist = cp is not None
        for _ in range(warmup):
            _check(await graph.ainvoke({"topic": TOPIC}, _config(persist)))
        start = time.perf_counter()
        for _ in range(runs):
            _check(await graph.ainvoke({"topic": TOPIC}, _config(persist)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "runs": runs, "steps": runs * CALLS_PER_RUN}


async def concurrent(
    runs: int, latency: float, kind: str, workdir: Path, on_ready: Callable[[], None]
) -> dict[str, Any]:
    """Figures B and E: `runs` critique-revise runs at once, fake model latency `latency`."""
    async with saver(kind, workdir) as cp:
        graph = build_graph(latency, cp)
        persist = cp is not None
        _check(await graph.ainvoke({"topic": TOPIC}, _config(persist)))  # warm-up
        on_ready()
        start = time.perf_counter()
        states = await asyncio.gather(
            *(graph.ainvoke({"topic": TOPIC}, _config(persist)) for _ in range(runs))
        )
        seconds = time.perf_counter() - start
    for s in states:
        _check(s)
    return {"seconds": seconds, "runs": runs, "steps": runs * CALLS_PER_RUN}


async def chain(runs: int, kind: str, workdir: Path, warmup: int = 2) -> dict[str, Any]:
    """Figure C: `runs` runs of a 200-node linear chain."""
    async with saver(kind, workdir) as cp:
        graph = build_chain(CHAIN_STEPS, cp)
        persist = cp is not None
        config = {"recursion_limit": CHAIN_STEPS + 10}
        for _ in range(warmup):
            await graph.ainvoke({"text": TOPIC}, _config(persist, **config))
        start = time.perf_counter()
        for _ in range(runs):
            state = await graph.ainvoke({"text": TOPIC}, _config(persist, **config))
            if state["text"] != TOPIC:
                raise RuntimeError(f"LangGraph chain returned {state!r}")
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "runs": runs, "steps": runs * CHAIN_STEPS}
