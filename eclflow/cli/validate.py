"""`eclflow validate FILE…`: every problem of every file, located, in one pass."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from . import cli
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _verbose, handle_errors


@cli.command("validate")
# readable=False: an unreadable file is one E102 among the others' reports, not a usage error
# that stops them all
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="json prints one object for CI tools; github prints each problem as a GitHub Actions "
    "annotation (shown on the pull request's lines), then the summary.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option(
    "--model",
    "-m",
    metavar="MODEL",
    help="Price the worst case with this model instead of the workflow's.",
)
@handle_errors
def validate_cmd(
    files: tuple[Path, ...], fmt: str, as_json: bool, strict: bool, model: str | None
) -> None:
    """Check workflow files: schema, references, cycles, loops, templates and prompt files.

    A directory stands for the workflow files under it (YAML files with a top-level
    `eclflow:` key; hidden directories are skipped). Prints `file:line:col: CODE message` for
    each problem, then a summary. Exit code 0 when every file is valid, 1 when one is not, 2
    when a file does not exist or a directory holds no workflow file.
    """
    fmt = "json" if as_json else fmt
    from ..spec.model import printable

    reports: list[dict[str, Any]] = []
    missing = False
    for path in _expand(files):
        if _missing(path) or _is_dir(path):
            missing = True
        wf, diags, summary = _check_one(path, model)
        errors = [d for d in diags if d.severity == "error"]
        warnings = [d for d in diags if d.severity == "warning"]
        valid = wf is not None and not (strict and warnings)
        report: dict[str, Any] = {
            "file": printable(str(path)),
            "valid": valid,
            "errors": len(errors),
            "warnings": len(warnings),
            "diagnostics": [d.to_dict() for d in diags],
        }
        report.update(summary)
        reports.append(report)
        if fmt != "json":
            for d in diags:
                click.echo(_annotation(d) if fmt == "github" else str(d))
            if wf is not None:
                loops = report["loops"]
                cost = report["worst_case_usd"]
                priced = f", at most ${cost:.4f}" if cost is not None else ""
                click.echo(
                    f"{printable(str(path))}: {'valid' if valid else 'invalid (--strict)'}: "
                    f"{report['steps']} step{'s' * (report['steps'] != 1)}, "
                    f"{loops} revision loop{'s' * (loops != 1)}, "
                    f"at most {report['worst_case_calls']} model calls per run{priced}"
                )
    n_invalid = sum(not r["valid"] for r in reports)
    if fmt == "json":
        json.dump(
            {"valid": n_invalid == 0 and not missing, "files": reports},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        n_err = sum(r["errors"] for r in reports)
        n_warn = sum(r["warnings"] for r in reports)
        total = len(reports)
        click.echo(
            f"{total} file{'s' * (total != 1)}: {total - n_invalid} valid, {n_invalid} invalid "
            f"({n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)})"
        )
    if missing:
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_FAILED if n_invalid else EXIT_OK)


def _annotation(d: Any) -> str:
    """A diagnostic as a GitHub Actions workflow command (`::error file=…,line=…::…`)."""
    loc = d.location
    where = f"file={_escape(loc.file, property=True)},line={loc.line},col={loc.col}"
    hint = f" ({d.hint})" if d.hint else ""
    kind = "warning" if d.severity == "warning" else "error"
    return f"::{kind} {where},title=eclflow {d.code}::{_escape(d.message + hint)}"


def _escape(text: str, *, property: bool = False) -> str:
    # GitHub's escaping of a workflow command's data, and of its properties
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property else text


_WORKFLOW_KEY = re.compile(rb"^eclflow[ \t]*:", re.MULTILINE)


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    """The files to check: each file given, and the workflow files under each directory."""
    out: list[Path] = []
    for path in paths:
        if not _is_dir(path):
            out.append(path)
            continue
        # none: the directory itself, reported as holding none
        out.extend([f for f in _yaml_files(path) if _is_workflow(f)] or [path])
    return out


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _yaml_files(root: Path) -> list[Path]:
    found = []
    for parent, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent, n) for n in sorted(names) if n.endswith((".yaml", ".yml"))]
    return found


def _is_workflow(path: Path) -> bool:
    from ..spec.loader import MAX_BYTES

    try:
        with path.open("rb") as f:
            return _WORKFLOW_KEY.search(f.read(MAX_BYTES)) is not None
    except OSError:
        return True  # unreadable: its E102 says why


def _missing(path: Path) -> bool:
    """Whether `path` names nothing (exit code 2); a path the system refuses is E102 instead."""
    try:
        return not path.exists()
    except (OSError, ValueError):
        return False


def _check_one(path: Path, model: str | None) -> tuple[Any, list[Any], dict[str, Any]]:
    """One file's workflow (None if invalid), diagnostics and summary. A bug of ours while
    checking it is one located E000 line for that file: the other files are still checked."""
    from ..spec import Diagnostic, Location, check

    if _is_dir(path):
        why = "holds no workflow file (a .yaml or .yml file with a top-level `eclflow:` key)"
        return None, [Diagnostic(Location(str(path)), "E102", why)], {}
    try:
        wf, diags = check(path)
        return wf, diags, (_summary(wf, model) if wf is not None else {})
    except Exception as e:  # not the user's doing: say so, and go on with the next file
        if _verbose():
            raise
        why = " ".join(str(e).split())
        internal = Diagnostic(
            Location(str(path)),
            "E000",
            f"eclflow failed while checking this file: {type(e).__name__}: {why}",
            "please report it; run with --verbose for the traceback",
        )
        return None, [internal], {}


def _summary(wf: Any, model: str | None) -> dict[str, Any]:
    """Shape and cost of a valid workflow: steps, loops, worst-case model calls and dollars."""
    from ..graph.plan import compile_plan
    from ..steps.registry import default_registry

    plan = compile_plan(wf)
    registry = default_registry()
    uses_model = {s.id: registry.get(s.type).uses_model for s in wf.steps}
    return {
        "worst_case_usd": _worst_case_usd(wf, plan, registry, model),
        "id": wf.id,
        "steps": len(wf.steps),
        "loops": len(plan.loops),
        "order": list(plan.order),
        "parallel_groups": [list(g) for g in plan.generations if len(g) > 1],
        "worst_case_calls": plan.worst_case_calls(uses_model),
    }


def _worst_case_usd(wf: Any, plan: Any, registry: Any, model: str | None) -> float | None:
    """Every call of every occurrence and attempt at its max_tokens, with the prompt's text
    counted; None when a model's price is unknown."""
    from ..observe.budget import estimate_tokens, price
    from ..spec.loader import is_file

    total = 0.0
    for s in wf.steps:
        cls = registry.get(s.type)
        if not cls.uses_model:
            continue
        m = model or s.model or wf.model
        p = price(m) if m else None
        if p is None:
            return None
        max_tokens = s.config.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:  # (a plugin's own config)
            max_tokens = int(getattr(cls, "default_max_tokens", 1024))
        prompt = s.template or ""
        if not prompt and s.prompt is not None and is_file(s.prompt):
            try:
                prompt = s.prompt.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                prompt = ""
        # bound inputs (drafts, feedback) can be as long as a reply
        prompt_tokens = estimate_tokens(prompt) + max_tokens * len(s.with_)
        calls = plan.occurrences(s.id) * s.retry.max_attempts
        total += calls * (prompt_tokens * p.input + max_tokens * p.output)
    return total
