"""The issue's check of batch mode, as a script: `python -m bench.batch_check`.

`eclflow run workflows/critique_revise.yaml --inputs items.jsonl --concurrency 200` over 1000
items on `mock/` with 50 ms per call (the bench's keyed script), journaled to a SQLite file:
its wall time, process start included, against the floor of ceil(items / concurrency) waves of
six calls; then the same batch killed with SIGKILL once half its runs are completed, and
started again, which must complete the rest only. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .__main__ import machine_line
from .workloads import CALLS_PER_RUN, CRITIQUE_REVISE, TOPIC, mock_script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_check", description=__doc__)
    parser.add_argument("--items", type=int, default=1000, help="input lines (default 1000)")
    parser.add_argument("--concurrency", type=int, default=200, help="runs at once (default 200)")
    parser.add_argument("--latency", type=float, default=0.05, help="mock call latency (s)")
    parser.add_argument("--repeats", type=int, default=3, help="uninterrupted batches (default 3)")
    args = parser.parse_args(argv)
    waves = math.ceil(args.items / args.concurrency)
    floor = waves * CALLS_PER_RUN * args.latency
    print(machine_line(), flush=True)
    print(
        f"\n== batch mode: {args.items} items, --concurrency {args.concurrency}, "
        f"{args.latency * 1000:.0f} ms a call; floor {waves} × {CALLS_PER_RUN} calls = "
        f"{floor:.2f} s; target ≤ 2× the floor",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="eclflow-batch-check-") as tmp:
        work = Path(tmp)
        items = work / "items.jsonl"
        items.write_text(
            "".join(json.dumps({"topic": f"{TOPIC} #{i}"}) + "\n" for i in range(args.items))
        )
        script = work / "mock.json"
        script.write_text(json.dumps(mock_script(args.latency)))

        def command(db: Path) -> list[str]:
            return [
                sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE),
                "--inputs", str(items), "--concurrency", str(args.concurrency),
                "--model", "mock/bench", "--mock-responses", str(script),
                "--db", f"sqlite:///{db}", "-q",
            ]  # fmt: skip

        walls, lines = [], ""
        for n in range(max(1, args.repeats)):
            db = work / f"run{n}.db"
            start = time.perf_counter()
            r = subprocess.run(command(db), capture_output=True, text=True, timeout=600)
            walls.append(time.perf_counter() - start)
            _expect(r.returncode == 0, f"batch exited {r.returncode}: {r.stderr.strip()}")
            _expect(len(r.stdout.splitlines()) == args.items, "not one result line per item")
            lines = lines or r.stdout
            _expect(r.stdout == lines, "the result lines differ between two batches")
            print(f"   [{n + 1}] {walls[-1]:.2f} s: {r.stderr.strip()}", flush=True)
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        db = work / "killed.db"
        out = work / "killed.jsonl"  # (a file: a full pipe would stop the batch)
        with out.open("w") as stdout:
            p = subprocess.Popen(command(db), stdout=stdout, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 600
            while _count(db, "workflows WHERE state = 'completed'") < args.items // 2:
                _expect(time.monotonic() < deadline and p.poll() is None, "the batch ended")
                time.sleep(0.01)
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=60)
        printed = out.read_text()
        completed = _count(db, "workflows WHERE state = 'completed'")
        kept = _count(db, "step_executions WHERE state = 'succeeded'")
        start = time.perf_counter()
        r = subprocess.run(command(db), capture_output=True, text=True, timeout=600)
        again = time.perf_counter() - start
        _expect(r.returncode == 0, f"the batch started again exited {r.returncode}: {r.stderr}")
        reused = re.search(r"\((\d+) from an earlier attempt\)", r.stderr)
        twice = _count(
            db,
            "(SELECT run_id, key FROM step_executions WHERE state = 'succeeded' "
            "GROUP BY run_id, key HAVING COUNT(*) > 1)",
        )
        steps = _count(db, "step_executions WHERE state = 'succeeded'")
        checks = {
            "same result lines as an uninterrupted batch": r.stdout == lines,
            "what was printed before the kill is their beginning": lines.startswith(printed),
            "the runs completed before the kill are reused": reused is not None
            and int(reused.group(1)) == completed,
            f"{args.items * CALLS_PER_RUN} succeeded steps": steps == args.items * CALLS_PER_RUN,
            "no step succeeded twice": twice == 0,
        }
    wall = statistics.median(walls)
    print(
        f"\n   uninterrupted, median of {len(walls)}: {wall:.2f} s = {wall / floor:.2f}× the "
        f"floor ({'within' if wall <= 2 * floor else 'OVER'} 2×), peak RSS {rss_mb:.0f} MB"
    )
    print(
        f"   killed with {completed} runs completed and {kept} steps kept "
        f"({len(printed.splitlines())} lines printed); started again: {again:.2f} s"
    )
    for what, ok in checks.items():
        print(f"   {'ok ' if ok else 'NO '} {what}")
    figure: dict[str, Any] = {
        "figure": "batch",
        "items": args.items,
        "concurrency": args.concurrency,
        "latency": args.latency,
        "floor": floor,
        "seconds": walls,
        "median": wall,
        "ratio": wall / floor,
        "rss_peak_mb": round(rss_mb, 1),
        "killed_completed": completed,
        "killed_steps_kept": kept,
        "resumed_seconds": again,
        "checks": checks,
    }
    print(json.dumps(figure), flush=True)
    return 0 if all(checks.values()) and wall <= 2 * floor else 1


def _count(db: Path, what: str) -> int:
    """`SELECT COUNT(*) FROM what` on the batch's journal (0 until it has the table)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {what}").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise SystemExit(f"batch check failed: {message}")


if __name__ == "__main__":
    sys.exit(main())
