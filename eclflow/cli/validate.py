"""`eclflow validate FILE…`: every problem of every file, located, in one pass."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click

from ..spec.loader import MAX_BYTES, is_dir, is_file
from . import cli
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _verbose, handle_errors, json_or_format


def _known_model(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--model local/typo` is refused as a workflow's `model:` is (E211): no run could load
    it; a name with a control character too, which run refuses (E113 in a workflow). (A
    remote name litellm does not list is a warning: see _unlisted.)"""
    import json

    from ..llm.names import unknown_local
    from ..spec.model import control_character

    found = control_character(value) if value is not None else None
    if found is not None:
        said = f"model {json.dumps(value)} has a control character ({found})"
        raise click.BadParameter(said, ctx=ctx, param=param)
    hint = unknown_local(value) if value is not None else None
    if hint is not None:
        raise click.BadParameter(f"unknown local model '{value}' ({hint})", ctx=ctx, param=param)
    return value


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
    help="json prints one object for CI tools; github prints only GitHub Actions annotations, "
    "one a problem (shown on the pull request's lines; with --strict a warning is an error), "
    "and adds the counts to the job's summary ($GITHUB_STEP_SUMMARY) when there is one.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option(
    "--model",
    "-m",
    metavar="MODEL",
    callback=_known_model,
    help="Price the worst case with this model instead of the workflow's.",
)
@handle_errors
def validate_cmd(
    files: tuple[Path, ...], fmt: str, as_json: bool, strict: bool, model: str | None
) -> None:
    """Check workflow files: schema, references, cycles, loops, templates and prompt files.

    A directory stands for the workflow files under it (YAML files with a top-level
    `eclflow:` key; hidden directories and links out of it are skipped). Prints
    `file:line:col: CODE message` for each problem, then a summary. Exit code 0 when every
    file is valid, 1 when one is not, 2 when a file does not exist or a directory holds no
    workflow file.
    """
    fmt = json_or_format(as_json, fmt, "fmt")
    from ..spec.model import printable

    reports: list[dict[str, Any]] = []
    unlisted = _unlisted(model)
    if unlisted is not None and fmt != "json":
        said = f"--model: W507 {unlisted['message']} ({unlisted['hint']})"
        kind = "error" if strict else "warning"
        github = f"::{kind} title=eclflow W507::{_escape(said.replace(' W507', '', 1))}"
        click.echo(github if fmt == "github" else said)
    missing = False
    found = _expand(files)
    for path in found.files:
        problem = found.problems.get(path)
        if _missing(path) or problem == _EMPTY:
            missing = True
        wf, diags, summary = _check_one(path, model, problem)
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
                click.echo(_annotation(d, strict) if fmt == "github" else str(d))
            if wf is not None and fmt == "text":  # (github: annotations only)
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
    refused = strict and unlisted is not None  # (--strict: its warning is an error too)
    if fmt == "json":
        skipped = [printable(str(f)) for f in found.skipped]
        out = {"valid": n_invalid == 0 and not missing and not refused, "files": reports}
        if unlisted is not None:
            out["model"] = unlisted
        json.dump({**out, "skipped": skipped}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        n_err = sum(r["errors"] for r in reports)
        n_warn = sum(r["warnings"] for r in reports)
        total = len(reports)
        n_skipped = len(found.skipped)
        counts = (
            f"{total} file{'s' * (total != 1)}: {total - n_invalid} valid, {n_invalid} invalid "
            f"({n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)})"
            + (
                f"; {n_skipped} YAML file{'s' * (n_skipped != 1)} without a top-level "
                "`eclflow:` key skipped"
                if n_skipped
                else ""
            )
            + (f"; --model: 1 warning{' (an error: --strict)' * strict}" if unlisted else "")
        )
        if fmt == "github":
            _job_summary(counts)
        else:
            click.echo(counts)
    if missing:
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_FAILED if n_invalid or refused else EXIT_OK)


def _unlisted(model: str | None) -> dict[str, str] | None:
    """W507 for a `--model` litellm does not list (`openai/gpt-4o-mnii`), said once for the
    option (it prices every file), or None."""
    from ..llm.names import unlisted_remote

    found = unlisted_remote(model) if model is not None else None
    if found is None:
        return None
    return {"code": "W507", "severity": "warning", "message": found.message, "hint": found.hint}


def _annotation(d: Any, strict: bool = False) -> str:
    """A diagnostic as a GitHub Actions workflow command (`::error file=…,line=…::…`); with
    `strict`, a warning fails the check: an error."""
    loc = d.location
    where = f"file={_escape(loc.file, property=True)},line={loc.line},col={loc.col}"
    hint = f" ({d.hint})" if d.hint else ""
    kind = "warning" if d.severity == "warning" and not strict else "error"
    return f"::{kind} {where},title=eclflow {d.code}::{_escape(d.message + hint)}"


def _job_summary(counts: str) -> None:
    """`--format github`: the counts go to the job's summary, the Markdown file GitHub Actions
    names in $GITHUB_STEP_SUMMARY and shows on the run's page, not among the annotations on
    stdout (a plain line there is neither an annotation nor shown as one); outside GitHub
    Actions they go nowhere. Each check's counts are a paragraph of their own: lines one
    after the other are one paragraph in Markdown, and two checks of a step (of two folders,
    say) read as one sentence of both."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{_apart(f)}eclflow validate: {counts}\n")
    except OSError as e:
        from ._common import say

        say(
            f"cannot add to the job summary $GITHUB_STEP_SUMMARY ({path}): {e.strerror or e}",
            "warning",
            prefix="warning: ",
        )


def _apart(summary: TextIO) -> str:
    """A blank line after what the summary file holds, none before the first counts; none
    either when it is not a file one can tell the size of (a pipe: GITHUB_STEP_SUMMARY set to
    /dev/stdout to see the summary outside GitHub Actions), which is written to as before."""
    try:
        return "\n" if summary.tell() else ""
    except OSError:  # (io.UnsupportedOperation: not seekable)
        return ""


def _escape(text: str, *, property: bool = False) -> str:
    # GitHub's escaping of a workflow command's data, and of its properties
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property else text


# A workflow's required top-level key: also after a byte order mark, quoted, or in a flow
# mapping (`{"eclflow": 1, …}`, a JSON workflow).
_WORKFLOW_KEY = re.compile(rb"^(?:\xef\xbb\xbf)?\{?[ \t]*[\"']?eclflow[\"']?[ \t]*:", re.MULTILINE)
_EMPTY = "holds no workflow file (a .yaml or .yml file with a top-level `eclflow:` key)"


@dataclass
class _Found:
    """What the command line names: the files to check, the directories that could not be
    read or hold no workflow (each reported as a problem of its own), the YAML files skipped."""

    files: list[Path] = field(default_factory=list)
    problems: dict[Path, str] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)


def _expand(paths: tuple[Path, ...]) -> _Found:
    """Each file given, and the workflow files under each directory given."""
    found = _Found()
    for path in paths:
        if not is_dir(path):
            found.files.append(path)
            continue
        before = len(found.files)
        for f, problem in _yaml_files(path):
            if problem is not None:
                found.files.append(f)
                found.problems[f] = problem
            elif _is_workflow(f):
                found.files.append(f)
            else:
                found.skipped.append(f)
        if len(found.files) == before:
            found.files.append(path)
            found.problems[path] = _EMPTY
    return found


def _yaml_files(root: Path) -> Iterator[tuple[Path, str | None]]:
    """The regular .yaml/.yml files under `root` (hidden directories skipped, links to
    directories within it followed once), and each directory that cannot be read, with why."""
    unreadable: list[OSError] = []
    seen: set[str] = set()
    inside = os.path.join(os.path.realpath(root), "")
    for parent, dirs, names in os.walk(root, onerror=unreadable.append, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _within(parent, d, inside))
        for n in sorted(names):
            f = Path(parent, n)
            if n.endswith((".yaml", ".yml")) and is_file(f):  # (not a FIFO: read, it waits)
                yield f, None
        yield from _refused(unreadable, parent)
    yield from _refused(unreadable, str(root))


def _within(parent: str, name: str, inside: str) -> bool:
    """Whether directory `name` is one of the tree's own: a link out of it (a mounted data
    folder, a package store) is not looked through."""
    path = os.path.join(parent, name)
    return not os.path.islink(path) or os.path.join(os.path.realpath(path), "").startswith(inside)


def _refused(errors: list[OSError], parent: str) -> Iterator[tuple[Path, str]]:
    for e in errors:
        yield Path(e.filename or parent), f"cannot be read: {e.strerror or e}"
    errors.clear()


def _is_workflow(path: Path) -> bool:
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


def _check_one(
    path: Path, model: str | None, problem: str | None = None
) -> tuple[Any, list[Any], dict[str, Any]]:
    """One file's workflow (None if invalid), diagnostics and summary. A bug of ours while
    checking it is one located E000 line for that file: the other files are still checked.
    `problem`: why a directory given could not be looked through."""
    from ..spec import Diagnostic, Location, check

    if problem is not None:
        return None, [Diagnostic(Location(str(path)), "E102", problem)], {}
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
