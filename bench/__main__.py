"""`python -m bench [A B C D E] [--full] [--runs N] …`: eclflow beside LangGraph, same workload.

Every measurement runs in a fresh subprocess (`python -m bench.worker`), so peak RSS is that
measurement's own; the repeats of a figure are interleaved across engines to spread the noise,
and each row shows the median of the repeats. After each figure: a table, the eclflow/LangGraph
ratio of each pair, and one JSON line (`{"figure": "A", ...}`) for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .workloads import CALLS_PER_RUN, CHAIN_STEPS, CRITIQUE_REVISE, ROOT, floor_seconds

FIGURES = "ABCDE"
TITLES = {
    "A": "engine overhead: critique-revise, latency 0, sequential runs",
    "B": "concurrency: critique-revise, latency 0.05 s, all runs at once (SQLite)",
    "C": f"a {CHAIN_STEPS}-step linear chain of template steps",
    "D": "start-up: eclflow validate workflows/critique_revise.yaml",
    "E": "concurrency against PostgreSQL: latency 0.05 s, all runs at once",
}
# (figure, engine, store) -> the label of that row
LABELS = {
    "eclflow/none": "eclflow, no journal",
    "eclflow/sqlite": "eclflow, journal on SQLite",
    "eclflow/postgres": "eclflow, journal on PostgreSQL",
    "langgraph/none": "LangGraph, no checkpointer",
    "langgraph/sqlite": "LangGraph, AsyncSqliteSaver",
    "langgraph/sqlite-normal": "LangGraph, AsyncSqliteSaver synchronous=NORMAL",
    "langgraph/postgres": "LangGraph, AsyncPostgresSaver",
    "plain/sqlite": "plain asyncio loop, same rows to SQLite",
    "plain/postgres": "plain asyncio loop, same rows to PostgreSQL",
}
# eclflow row -> the LangGraph row it is compared with
PAIRS = {
    "eclflow/none": "langgraph/none",
    "eclflow/sqlite": "langgraph/sqlite",
    "eclflow/postgres": "langgraph/postgres",
}
# the machine's calibration: eclflow's durable row -> the plain loop writing the same rows
# (bench/plain_side.py; the "about 0.4 s" for B's 2000 runs)
CALIBRATION = {"eclflow/sqlite": "plain/sqlite", "eclflow/postgres": "plain/postgres"}


@dataclass
class Row:
    """One line of a figure: an engine with a store, measured `repeats` times."""

    key: str
    params: dict[str, Any]
    values: list[float] = field(default_factory=list)
    rss_growth: list[float] = field(default_factory=list)
    rss_peak: list[float] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Figure:
    name: str
    unit: str
    rows: list[Row]
    targets: dict[str, str] = field(default_factory=dict)
    note: str = ""
    skipped: str | None = None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)
    for name in args.figures:
        fig = run_figure(name, args)
        print_figure(fig, args)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="eclflow beside LangGraph on the same critique-revise workload.",
    )
    p.add_argument("figures", nargs="*", help="figures to run (A B C D E; default all)")
    p.add_argument(
        "--full",
        action="store_true",
        help="the issue's sizes: A 2000 runs, B/E 500 and 2000 at once, C 50 runs",
    )
    p.add_argument("--runs", type=int, help="A: sequential runs per repeat (default 300)")
    p.add_argument(
        "--concurrent",
        help="B/E: comma-separated numbers of runs at once (default 500)",
    )
    p.add_argument("--chain-runs", type=int, help="C: runs of the chain per repeat (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per row (default 3, min 3)")
    p.add_argument("--latency", type=float, default=0.05, help="B/E: fake model latency (s)")
    p.add_argument(
        "--sync-normal",
        action="store_true",
        help="A/B: also LangGraph's SQLite saver with synchronous=NORMAL (eclflow's setting)",
    )
    p.add_argument(
        "--only",
        choices=["eclflow", "langgraph", "plain"],
        help="measure one engine only (plain: the calibration rows, bench/plain_side.py)",
    )
    p.add_argument("--jsonl", type=Path, help="also append each figure's JSON line to this file")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each eclflow measurement once more under cProfile, stats into DIR",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    args = p.parse_args(argv)
    figures = [f.upper() for f in args.figures] or list(FIGURES)
    for f in figures:
        if f not in FIGURES:
            p.error(f"unknown figure {f!r} (choose from {' '.join(FIGURES)})")
    args.figures = figures
    args.repeats = max(3, args.repeats)
    args.runs = args.runs or (2000 if args.full else 300)
    args.chain_runs = args.chain_runs or (50 if args.full else 10)
    sizes = args.concurrent or ("500,2000" if args.full else "500")
    try:
        args.sizes = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--concurrent takes numbers separated by commas, not {sizes!r}")
    return args


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"# machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}; {versions()}"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("eclflow", "langgraph", "langgraph-checkpoint-sqlite"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


# ---------------------------------------------------------------------------------- figures


def engines(args: argparse.Namespace, keys: list[str]) -> list[str]:
    return [k for k in keys if args.only is None or k.startswith(args.only + "/")]


def run_figure(name: str, args: argparse.Namespace) -> Figure:
    print(f"\n== {name}. {TITLES[name]}", flush=True)
    if name == "A":
        keys = ["eclflow/none", "eclflow/sqlite", "langgraph/none", "langgraph/sqlite"]
        if args.sync_normal:
            keys.append("langgraph/sqlite-normal")
        keys.append("plain/sqlite")
        rows = [Row(k, {"figure": "A", "runs": args.runs}) for k in engines(args, keys)]
        measure_rows(rows, args, per_step_us)
        return Figure(
            "A",
            "µs/step",
            rows,
            targets={"eclflow/sqlite": "≤ 150 µs/step, ≥10× below LangGraph+SQLite"},
            note=f"{args.runs} sequential runs × {CALLS_PER_RUN} calls per repeat",
        )
    if name in ("B", "E"):
        return concurrency_figure(name, args)
    if name == "C":
        keys = ["eclflow/none", "eclflow/sqlite", "langgraph/none", "langgraph/sqlite"]
        rows = [Row(k, {"figure": "C", "runs": args.chain_runs}) for k in engines(args, keys)]
        measure_rows(rows, args, per_step_us)
        return Figure(
            "C",
            "µs/step",
            rows,
            targets={"eclflow/none": "≤ 50 µs/step", "eclflow/sqlite": "≤ 50 µs/step"},
            note=f"{args.chain_runs} runs × {CHAIN_STEPS} steps per repeat",
        )
    return startup_figure(args)


def concurrency_figure(name: str, args: argparse.Namespace) -> Figure:
    floor = floor_seconds(args.latency)
    if name == "E":
        from .pg import unreachable

        why = unreachable()
        if why is not None:
            return Figure("E", "× floor", [], skipped=f"PostgreSQL unreachable: {why}")
        keys = ["eclflow/postgres", "langgraph/postgres", "plain/postgres"]
        target = "≤ 2× floor"
    else:
        keys = ["eclflow/none", "eclflow/sqlite", "langgraph/none", "langgraph/sqlite"]
        if args.sync_normal:
            keys.append("langgraph/sqlite-normal")
        keys.append("plain/sqlite")
        target = "≤ 1.5× floor, RSS growth < 100 MB"
    rows = [
        Row(f"{k}@{n}", {"figure": name, "runs": n, "latency": args.latency})
        for n in args.sizes
        for k in engines(args, keys)
    ]
    measure_rows(rows, args, lambda r: r["seconds"] / floor)
    durable = "eclflow/postgres" if name == "E" else "eclflow/sqlite"
    return Figure(
        name,
        "× floor",
        rows,
        targets={f"{durable}@{n}": target for n in args.sizes},
        note=f"floor = {CALLS_PER_RUN} × {args.latency} s = {floor:.2f} s per run",
    )


def per_step_us(result: dict[str, Any]) -> float:
    return result["seconds"] / result["steps"] * 1e6


def measure_rows(
    rows: list[Row], args: argparse.Namespace, metric: Callable[[dict[str, Any]], float]
) -> None:
    """Every row `repeats` times, repeats interleaved: row1 row2 … row1 row2 …"""
    for rep in range(args.repeats):
        for row in rows:
            if row.error is not None:
                continue
            result = run_worker(row, args)
            if "error" in result:
                row.error = result["error"]
                print(f"   {label(row.key)}: FAILED: {row.error}", flush=True)
                continue
            row.values.append(metric(result))
            row.rss_peak.append(result["rss_peak_mb"])
            row.rss_growth.append(result["rss_peak_mb"] - result["rss_base_mb"])
            print(
                f"   [{rep + 1}/{args.repeats}] {label(row.key):<52} "
                f"{row.values[-1]:10.2f}  ({result['seconds']:.2f} s, "
                f"peak RSS {result['rss_peak_mb']:.0f} MB)",
                flush=True,
            )
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for row in rows:
            if row.key.startswith("eclflow/") and row.error is None:
                out = args.profile / f"{row.params['figure']}-{row.key.replace('/', '-')}.pstats"
                run_worker(row, args, profile=out)
                print(f"   profile of {label(row.key)}: {out}", flush=True)


def run_worker(row: Row, args: argparse.Namespace, profile: Path | None = None) -> dict[str, Any]:
    engine, store = row.key.split("@")[0].split("/")
    spec = {**row.params, "engine": engine, "store": store}
    if profile is not None:
        spec["profile"] = str(profile)
    cmd = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        return {"error": f"exit {proc.returncode}: {lines[-1]}"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def startup_figure(args: argparse.Namespace) -> Figure:
    """D: wall time of whole processes, each started `repeats` (at least 10) times.

    eclflow's bytecode is compiled first, as `pip install` or any first run leaves it: an
    editable checkout under PYTHONDONTWRITEBYTECODE would otherwise compile every module on
    every start (about 45 ms here), which no installed copy does.
    """
    import compileall

    compileall.compile_dir(ROOT / "eclflow", quiet=1)
    exe = Path(sys.executable)
    script = exe.parent / "eclflow"
    validate = [str(script)] if script.exists() else [str(exe), "-m", "eclflow"]
    validate += ["validate", str(CRITIQUE_REVISE.relative_to(ROOT))]
    commands = {
        "python/pass": [str(exe), "-c", "pass"],
        "eclflow/validate": validate,
        "langgraph/compile": [
            str(exe),
            "-c",
            "from bench.langgraph_side import build_graph; build_graph(0.0)",
        ],
    }
    repeats = max(10, args.repeats)
    rows = [Row(k, {"figure": "D"}) for k in commands]
    for _ in range(repeats):
        for row in rows:
            start = time.perf_counter()
            proc = subprocess.run(
                commands[row.key], cwd=ROOT, capture_output=True, text=True, check=False
            )
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                row.error = f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-200:]}"
                continue
            row.values.append(seconds)
    heavy = heavy_imports(validate)
    rows[1].extra["heavy_imports"] = heavy
    rows[1].extra["command"] = " ".join(["eclflow", *validate[-2:]])
    base = rows[0].median or 0.0
    for row in rows[1:]:
        if row.median is not None:
            row.extra["above_python_s"] = round(row.median - base, 4)
    return Figure(
        "D",
        "s",
        rows,
        targets={"eclflow/validate": "≤ 0.25 s, no litellm import"},
        note=(
            f"median of {repeats} process starts; LangGraph row: import langgraph and compile "
            f"the critique-revise graph; heavy modules imported by validate: "
            f"{', '.join(heavy) if heavy else 'none'}"
        ),
    )


HEAVY = ("litellm", "peewee", "openai", "httpx", "tiktoken", "langgraph")


def heavy_imports(command: list[str]) -> list[str]:
    """Top-level heavy modules that `command` imports (python -X importtime, one run)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    if command[0] != sys.executable:
        command = [sys.executable, "-m", "eclflow", *command[1:]]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found: set[str] = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        module = line.rsplit("|", 1)[-1].strip()
        top = module.split(".")[0]
        if top in HEAVY:
            found.add(top)
    return sorted(found)


# ---------------------------------------------------------------------------------- output


def label(key: str) -> str:
    base, _, n = key.partition("@")
    text = LABELS.get(base, {"python/pass": "python -c pass"}.get(base, base))
    if base == "eclflow/validate":
        text = "eclflow validate critique_revise.yaml"
    if base == "langgraph/compile":
        text = "LangGraph: import + compile the graph"
    return f"{text} ({n} at once)" if n else text


def ratios(fig: Figure) -> list[dict[str, Any]]:
    """eclflow/LangGraph for each pair measured in this figure."""
    by_key = {r.key: r for r in fig.rows}
    out = []
    for row in fig.rows:
        base, _, n = row.key.partition("@")
        partners = []
        if base in PAIRS:
            partners.append(PAIRS[base])
        if fig.name == "A" and base == "eclflow/sqlite":
            partners.append("langgraph/none")  # the target: below LangGraph without persistence
        if fig.name == "D" and base == "eclflow/validate":
            partners.append("langgraph/compile")
        for partner in partners:
            other = _row(by_key, partner, n)
            if other is None or row.median is None or not other.median:
                continue
            entry: dict[str, Any] = {
                "eclflow": label(row.key),
                "langgraph": label(other.key),
                "ratio": round(row.median / other.median, 4),
            }
            if fig.name in ("B", "E") and row.rss_growth and other.rss_growth:
                entry["rss_ratio"] = round(
                    statistics.median(row.rss_growth) / max(statistics.median(other.rss_growth), 1),
                    4,
                )
            out.append(entry)
    return out


def _row(by_key: dict[str, Row], base: str, n: str) -> Row | None:
    """The row of `base` at the same number of runs at once (`n`; empty outside B and E)."""
    return by_key.get(f"{base}@{n}" if n else base)


def calibrations(fig: Figure) -> list[dict[str, Any]]:
    """eclflow's durable rows against the plain loop writing the same rows: how much of the
    way from the floor the engine itself takes."""
    by_key = {r.key: r for r in fig.rows}
    out = []
    for row in fig.rows:
        base, _, n = row.key.partition("@")
        plain = _row(by_key, CALIBRATION[base], n) if base in CALIBRATION else None
        if plain is None or row.median is None or not plain.median:
            continue
        out.append(
            {
                "eclflow": label(row.key),
                "plain": label(plain.key),
                "ratio": round(row.median / plain.median, 4),
            }
        )
    return out


def print_figure(fig: Figure, args: argparse.Namespace) -> None:
    if fig.skipped:
        print(f"   skipped: {fig.skipped}")
        line: dict[str, Any] = {"figure": fig.name, "skipped": fig.skipped}
    else:
        concurrency = fig.name in ("B", "E")
        header = f"   {'':<62} {'median':>10} {'unit':<8}"
        if concurrency:
            header += f" {'wall s':>7} {'RSS +MB':>8} {'peak MB':>8}"
        print(f"\n   {fig.note}")
        print(header + "  target")
        for row in fig.rows:
            target = fig.targets.get(row.key, "")
            if row.median is None:
                print(f"   {label(row.key):<62} {'—':>10} {fig.unit:<8}  {row.error or ''}")
                continue
            text = f"   {label(row.key):<62} {row.median:10.2f} {fig.unit:<8}"
            if concurrency:
                floor = floor_seconds(row.params["latency"])
                text += (
                    f" {row.median * floor:7.2f} {statistics.median(row.rss_growth):8.1f}"
                    f" {statistics.median(row.rss_peak):8.1f}"
                )
            print(text + (f"  {target}" if target else ""))
        pairs = ratios(fig)
        for p in pairs:
            print(f"   ratio {p['eclflow']} / {p['langgraph']}: {p['ratio']:.3f}")
        calibration = calibrations(fig)
        for p in calibration:
            print(f"   ratio {p['eclflow']} / {p['plain']}: {p['ratio']:.3f}")
        line = {
            "figure": fig.name,
            "title": TITLES[fig.name],
            "unit": fig.unit,
            "note": fig.note,
            "rows": [row_json(r, fig) for r in fig.rows],
            "ratios": pairs,
            "calibration": calibration,
            "targets": fig.targets,
        }
    text = json.dumps(line, ensure_ascii=False)
    print(text, flush=True)
    if args.jsonl is not None:
        with args.jsonl.open("a", encoding="utf-8") as f:
            f.write(text + "\n")


def row_json(row: Row, fig: Figure) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": row.key,
        "label": label(row.key),
        **{k: v for k, v in row.params.items() if k != "figure"},
        "median": None if row.median is None else round(row.median, 4),
        "values": [round(v, 4) for v in row.values],
    }
    if fig.name in ("B", "E") and row.values:
        floor = floor_seconds(row.params["latency"])
        out["wall_s"] = round(row.median * floor, 4) if row.median is not None else None
        out["rss_growth_mb"] = round(statistics.median(row.rss_growth), 1)
        out["rss_peak_mb"] = round(statistics.median(row.rss_peak), 1)
    elif row.rss_peak:
        out["rss_peak_mb"] = round(statistics.median(row.rss_peak), 1)
    if row.error:
        out["error"] = row.error
    out.update(row.extra)
    return out


if __name__ == "__main__":
    sys.exit(main())
