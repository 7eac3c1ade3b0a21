"""Logging overhead (issue 6): the engine with JSON logs at info level against logging off.

    python -m bench.logging_overhead [--runs 1000] [--repeats 5]

Runs the critique-revise workload (mock model, no latency, no journal) `--runs` times in one
process with logging off (level error), then with `--log-format json --log-level info` writing
to /dev/null, alternating, and prints the median wall time of each and the overhead in percent
(the target is within 5 %), plus one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from .workloads import CRITIQUE_REVISE, TOPIC, mock_script


async def _runs(n: int) -> float:
    from eclflow.engine import runner
    from eclflow.llm import MockProvider
    from eclflow.spec import load

    wf = load(CRITIQUE_REVISE)
    provider = MockProvider(mock_script(0.0))
    started = time.perf_counter()
    for _ in range(n):
        r = await runner.run(
            wf, {"topic": TOPIC}, model="mock/bench", mock_responses=provider.fresh()
        )
        if r.status != "completed":
            raise RuntimeError(r.error)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from eclflow.observe.logs import configure

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    off: list[float] = []
    on: list[float] = []
    asyncio.run(_runs(50))  # warm-up: imports, caches
    for _ in range(args.repeats):
        configure("error", "json", stream=sink)
        off.append(asyncio.run(_runs(args.runs)))
        configure("info", "json", stream=sink)
        on.append(asyncio.run(_runs(args.runs)))
    m_off, m_on = statistics.median(off), statistics.median(on)
    overhead = (m_on / m_off - 1) * 100
    print(f"logging off      : {m_off:.3f} s for {args.runs} runs")
    print(f"json, info level : {m_on:.3f} s for {args.runs} runs")
    print(f"overhead         : {overhead:+.1f} %  (target within 5 %)")
    print(
        json.dumps(
            {
                "figure": "logging",
                "runs": args.runs,
                "off_s": m_off,
                "json_info_s": m_on,
                "overhead_pct": round(overhead, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
