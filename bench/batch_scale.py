"""Batch mode at scale, as a script: `python -m bench.batch_scale --items 100000`.

The real CLI in a subprocess, `eclflow run workflows/critique_revise.yaml --inputs items.jsonl`
on `mock/` (four calls an item, no delay by default), journaled to a SQLite file (or a fresh
PostgreSQL schema with --postgres). What it measures, each from the process's start:

- fresh: the seconds before the first result line (every item is claimed first), and how long
  Ctrl-C takes to end a fresh batch sent it while it claims its items (once the journal holds
  --interrupt-after runs);
- killed: the batch killed with SIGKILL once --kill-after result lines are out, started again:
  the seconds before its first result line, and to its end;
- again: the finished batch run once more (every result from the journal): its seconds.

It checks that the batch started again and the one run once more print the same lines, and that
no step succeeded twice. Prints one line per figure and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from .workloads import CRITIQUE_REVISE, PG_URL

# the four calls of critique-revise that pass at the second critique (tests/test_batch.py's)
SCRIPT = """\
generate: {content: "draft one", delay: %(d)s}
critique#1: {content: {decision: revise, critique: thin, feedback: more}, delay: %(d)s}
revise#1: {content: "draft two", delay: %(d)s}
critique#2: {content: {decision: pass, critique: ok}, delay: %(d)s}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_scale", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000, help="input lines (100000)")
    parser.add_argument("--concurrency", type=int, default=50, help="runs at once (50)")
    parser.add_argument("--delay", type=float, default=0.0, help="mock call latency, s (0)")
    parser.add_argument("--kill-after", type=int, default=1000, help="result lines (1000)")
    parser.add_argument(
        "--interrupt-after", type=int, default=2000, help="Ctrl-C at this many runs (0: no)"
    )
    parser.add_argument("--postgres", action="store_true", help=f"a fresh schema of {PG_URL}")
    parser.add_argument("--keep", type=Path, help="keep the database and outputs in this folder")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batch-scale-")))
        items = work / "items.jsonl"
        items.write_text(
            "".join(json.dumps({"topic": f"topic {i}"}) + "\n" for i in range(args.items))
        )
        script = work / "script.yaml"
        script.write_text(SCRIPT % {"d": args.delay})

        def database(name: str) -> str:
            if not args.postgres:
                return f"sqlite:///{work / (name + '.db')}"
            from .pg import temporary_schema

            return f"{PG_URL}?schema={stack.enter_context(temporary_schema('batch_' + name))}"

        def command(db: str) -> list[str]:
            return [
                sys.executable, "-m", "eclflow", "run", str(CRITIQUE_REVISE),
                "--inputs", str(items), "--concurrency", str(args.concurrency),
                "--model", "mock/t", "--mock-responses", str(script), "--db", db, "-q",
            ]  # fmt: skip

        figures: dict[str, Any] = {"items": args.items, "concurrency": args.concurrency}
        where = "PostgreSQL" if args.postgres else "SQLite"
        print(f"== {args.items} items, --concurrency {args.concurrency}, {where}", flush=True)

        if args.interrupt_after > 0:
            db = database("interrupted")
            p = subprocess.Popen(
                command(db), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            deadline = time.monotonic() + 600
            while (runs := _runs(db)) < args.interrupt_after:
                _expect(time.monotonic() < deadline and p.poll() is None, "the batch ended")
                time.sleep(0.005)
            sent = time.perf_counter()
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=900)
            figures["ctrl_c_seconds"] = time.perf_counter() - sent
            print(
                f"   Ctrl-C with {runs} runs claimed: ended {figures['ctrl_c_seconds']:.2f} s "
                f"later, exit {p.returncode}: {err.strip().splitlines()[-1:]}",
                flush=True,
            )

        db = database("main")
        first_out = work / "first.jsonl"
        with first_out.open("w") as out:
            start = time.perf_counter()
            killed = subprocess.Popen(command(db), stdout=out, stderr=subprocess.DEVNULL)
            figures["fresh_first_result"] = _wait_lines(first_out, 1, killed) - start
            _wait_lines(first_out, args.kill_after, killed)
            os.kill(killed.pid, signal.SIGKILL)
            killed.wait(timeout=60)
        printed = first_out.read_text()
        print(f"   fresh: first result after {figures['fresh_first_result']:.2f} s", flush=True)

        again_out = work / "again.jsonl"
        r, first, total = _timed(command(db), again_out)
        resumed = again_out.read_text()
        _expect(r.returncode == 0, f"the batch started again exited {r.returncode}: {r.stderr}")
        figures["killed_first_result"], figures["killed_total"] = first, total
        print(
            f"   killed with {len(printed.splitlines())} lines printed, started again: first "
            f"result after {first:.2f} s, ended after {total:.2f} s: {r.stderr.strip()}",
            flush=True,
        )

        once_more_out = work / "once_more.jsonl"
        r, first, total = _timed(command(db), once_more_out)
        _expect(r.returncode == 0, f"the finished batch run again exited {r.returncode}")
        figures["again_first_result"], figures["again_total"] = first, total
        print(
            f"   the finished batch run again: first result after {first:.2f} s, ended after "
            f"{total:.2f} s: {r.stderr.strip()}",
            flush=True,
        )
        checks = {
            f"{args.items} result lines": len(resumed.splitlines()) == args.items,
            "what was printed before the kill is their beginning": resumed.startswith(printed),
            "run again: the same lines": once_more_out.read_text() == resumed,
            "no step succeeded twice": _steps_twice(db) == 0,
        }
        for what, ok in checks.items():
            print(f"   {'ok ' if ok else 'NO '} {what}")
        figures["checks"] = checks
        print(json.dumps({"figure": "batch_scale", **figures}), flush=True)
        return 0 if all(checks.values()) else 1


def _wait_lines(path: Path, n: int, p: subprocess.Popen[Any]) -> float:
    """When `path` first has `n` lines (polled every 5 ms)."""
    deadline = time.monotonic() + 1800
    while True:
        with path.open("rb") as f:
            if f.read().count(b"\n") >= n:
                return time.perf_counter()
        _expect(p.poll() is None, f"the batch ended (exit {p.returncode}) before {n} lines")
        _expect(time.monotonic() < deadline, f"no {n} lines in 30 minutes")
        time.sleep(0.005)


def _timed(cmd: list[str], out_path: Path) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run `cmd` with stdout to `out_path`: the process, its first line's and end's seconds."""
    with out_path.open("w") as out:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        err: IO[str] = p.stderr  # type: ignore[assignment]
        first = _wait_lines(out_path, 1, p) - start
        stderr = err.read()
        code = p.wait(timeout=1800)
        total = time.perf_counter() - start
    return subprocess.CompletedProcess(cmd, code, "", stderr), first, total


def _runs(db: str) -> int:
    """The runs in the journal (0 before it has its tables)."""
    sql = "SELECT COUNT(*) FROM workflows"
    try:
        if db.startswith("sqlite:///"):
            import sqlite3

            with sqlite3.connect(f"file:{db[len('sqlite:///') :]}?mode=ro", uri=True) as conn:
                return int(conn.execute(sql).fetchone()[0])
        import psycopg2

        base, _, schema = db.partition("?schema=")
        conn = psycopg2.connect(base, options=f"-c search_path={schema}")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return int(cur.fetchone()[0])
        finally:
            conn.close()
    except Exception:  # (no file or no table yet)
        return 0


def _steps_twice(db: str) -> int:
    """(run, step key) pairs that succeeded more than once."""
    from eclflow.store import open_store

    sql = (
        "SELECT COUNT(*) FROM (SELECT run_id, key FROM step_executions WHERE state = "
        "'succeeded' GROUP BY run_id, key HAVING COUNT(*) > 1) AS twice"
    )
    with open_store(db) as store:
        return int(store.db.execute_sql(sql).fetchone()[0])


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise SystemExit(f"batch scale failed: {message}")


if __name__ == "__main__":
    sys.exit(main())
