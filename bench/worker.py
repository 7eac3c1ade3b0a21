"""One measurement in a process of its own, so that peak RSS belongs to that measurement alone.

    python -m bench.worker '{"figure": "B", "engine": "eclflow", "store": "sqlite", "runs": 500,
                             "latency": 0.05}'

prints one JSON line: the measurement (seconds, runs, steps) plus the process's RSS after
warm-up (`rss_base_mb`) and at its peak (`rss_peak_mb`). With `"profile": PATH` the timed part
runs under cProfile and the statistics are written to PATH.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    """Resident set size of this process now, in MB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux without psutil: /proc has it too
        import os

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (ru_maxrss is in KB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


async def measure(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    if spec["engine"] == "eclflow":
        from . import eclflow_side as side
    elif spec["engine"] == "langgraph":
        from . import langgraph_side as side  # type: ignore[no-redef]
    elif spec["engine"] == "plain":
        from . import plain_side as side  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown engine {spec['engine']!r}")
    base: dict[str, float] = {}

    def ready() -> None:
        base["rss"] = rss_mb()

    figure, kind, runs = spec["figure"], spec["store"], int(spec["runs"])
    if figure == "A":
        ready()
        out = await side.sequential(runs, kind, workdir)
    elif figure in ("B", "E"):
        out = await side.concurrent(runs, float(spec["latency"]), kind, workdir, ready)
    elif figure == "C":
        ready()
        out = await side.chain(runs, kind, workdir)
    else:
        raise ValueError(f"figure {figure!r} is not measured by the worker")
    out["rss_base_mb"] = base.get("rss", 0.0)
    out["rss_peak_mb"] = peak_rss_mb()
    return out


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    with tempfile.TemporaryDirectory(prefix="eclflow-bench-") as tmp:
        profile = spec.get("profile")
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            result = asyncio.run(measure(spec, Path(tmp)))
            prof.disable()
            prof.dump_stats(profile)
        else:
            result = asyncio.run(measure(spec, Path(tmp)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
