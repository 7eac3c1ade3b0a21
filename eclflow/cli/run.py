"""`eclflow run` and `eclflow resume`: run a workflow, show it live, print the result."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ..errors import (
    ConfigError,
    JournalRefused,
    PersistenceError,
    RunNotFound,
    RunPaused,
    WorkflowInvalid,
)
from . import cli
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    db_option,
    exit_code_for,
    fail,
    handle_errors,
    interrupted_exit_code,
    json_logs,
    json_text,
    leave_out_what_the_end_says,
    not_empty,
    open_store,
    restate_options,
    resume_command,
    safe_text,
    say,
    stderr_console,
    stop_on_sigterm,
    stopping_lock_waits,
)

if TYPE_CHECKING:
    from ..restate.admin import Invocation


def parse_inputs(
    pairs: tuple[str, ...], input_file: Path | None, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`--input-file` (JSON or YAML) first, then each `-i key=value` on top.

    A value typed with `-i` is the text as typed (`#`, quotes and spaces included), except a
    number or boolean the `inputs` schema does not declare a string, and a `[list]` or
    `{object}` (YAML flow syntax) where it declares one."""
    from ruamel.yaml import YAML, YAMLError

    yaml = YAML(typ="safe", pure=True)
    data: dict[str, Any] = {}
    if input_file is not None:
        try:
            text = sys.stdin.read() if str(input_file) == "-" else input_file.read_text("utf-8")
            loaded = _json(text)
            if loaded is None:
                loaded = yaml.load(text)
            if isinstance(loaded, Mapping):  # (a YAML list that holds itself recurses too)
                data.update(_plain(loaded, input_file, ""))
        except (OSError, YAMLError, UnicodeDecodeError) as e:
            raise click.BadParameter(
                f"cannot read {input_file}: {e}", param_hint="--input-file"
            ) from None
        except RecursionError:
            raise click.BadParameter(
                f"cannot read {input_file}: its values nest too deep", param_hint="--input-file"
            ) from None
        if not isinstance(loaded, Mapping):
            raise click.BadParameter(
                f"{input_file} must hold an object of input values", param_hint="--input-file"
            )
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="-i")
        kinds = _declared(schema, key)
        try:
            value = yaml.load(raw) if raw.strip() else raw
        except YAMLError:
            value = raw
        if isinstance(value, list | dict):  # as JSON has it: dates as text, no NaN
            wanted = ("array" if isinstance(value, list) else "object") in kinds
            try:
                value = _plain(value, None, key) if wanted else raw
            except RecursionError:  # (`&a [*a]`: a list that holds itself)
                raise click.BadParameter(
                    f"{key}: its values nest too deep", param_hint="-i"
                ) from None
        elif isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
            value = raw if _wants_text(kinds, value) else value
        else:  # text, null, a date, .inf: what was typed
            value = raw
        data[key] = value
    return data


def _json(text: str) -> Any:
    """`text` as a JSON object, or None when it is not one (YAML, or a key written twice,
    which YAML reports): the pure-Python YAML parser takes seconds a megabyte."""
    if not text.lstrip().startswith("{"):
        return None
    import json

    def no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("a key written twice")
        return obj

    try:
        return json.loads(text, object_pairs_hook=no_twice, parse_constant=_not_json)
    except ValueError:
        return None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # (YAML reads `NaN` as text)


def _plain(value: Any, path: Path | None, where: str) -> Any:
    """An input file's values as JSON has them: a YAML date is its ISO text; a number that
    is not finite is refused (JSON has none, and the journal could not keep it)."""
    import datetime

    if isinstance(value, Mapping):  # (keys as JSON has them: text)
        return {
            str(k): _plain(v, path, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_plain(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise click.BadParameter(
            f"{f'{path}: ' if path else ''}{where} is {value}, not a finite number",
            param_hint="--input-file" if path else "-i",
        )
    return value


def _declared(schema: Mapping[str, Any] | None, key: str) -> list[Any]:
    """The JSON types the `inputs` schema declares for `key` (none when it says nothing)."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    declared = properties.get(key) if isinstance(properties, Mapping) else None
    kind = declared.get("type") if isinstance(declared, Mapping) else None
    return kind if isinstance(kind, list) else [kind]


def _wants_text(kinds: list[Any], value: Any) -> bool:
    """Whether the declared `kinds` include string and not the type `value` has."""
    if "string" not in kinds:
        return False
    if isinstance(value, bool):
        return "boolean" not in kinds
    return "number" not in kinds and (isinstance(value, float) or "integer" not in kinds)


class LiveView:
    """A rich table of the run's steps, refreshed as events arrive."""

    def __init__(self, workflow_name: str) -> None:
        self.title = workflow_name
        self.rows: dict[str, dict[str, Any]] = {}
        self.loop_note = ""
        self.live: Any = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self.live = Live(
            self._render(), console=stderr_console(), refresh_per_second=8, transient=False
        )
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def __call__(self, event: str, payload: Mapping[str, Any]) -> None:
        if event == "step_started":
            self.rows[payload["key"]] = {
                "status": "running",
                "attempt": 1,
                "start": time.perf_counter(),
                "elapsed": None,
                "tokens": 0,
            }
        elif event == "step_attempt":
            row = self.rows.setdefault(payload["key"], {"start": time.perf_counter()})
            row["attempt"] = payload["attempt"]
            row["max"] = payload["max_attempts"]
        elif event == "step_finished":
            e = payload["execution"]
            row = self.rows.setdefault(e.key, {"start": time.perf_counter()})
            row.update(
                status=("replayed" if e.replayed else e.status)
                + (" (revise)" if e.outcome == "needs_revision" else ""),
                attempt=e.attempts,
                elapsed=e.duration_ms / 1000,
                tokens=e.tokens,
            )
        elif event == "loop_revision":
            self.loop_note = (
                f"revision {payload['iteration']} of at most {payload['max_iterations']}"
            )
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(self.title), caption=self.loop_note or None, expand=False)
        for col in ("step", "status", "attempt", "time", "tokens"):
            table.add_column(col, justify="right" if col in ("time", "tokens") else "left")
        now = time.perf_counter()
        styles = {
            "succeeded": "green",
            "failed": "red",
            "running": "yellow",
            "skipped": "dim",
            "replayed": "cyan",
        }
        for key, row in self.rows.items():
            status = str(row.get("status", "running"))
            style = styles.get(status.split()[0], "")
            elapsed = row.get("elapsed")
            if elapsed is None:
                elapsed = now - row.get("start", now)
            table.add_row(
                key,
                f"[{style}]{status}[/{style}]" if style else status,
                str(row.get("attempt", "")),
                f"{elapsed:.1f}s",
                str(row.get("tokens") or ""),
            )
        return table


def print_result(
    result: Any, as_json: bool, local: bool = True, kept: bool = True, raw: str | None = None
) -> None:
    """The result on stdout, its summary on stderr. `local`: a run of this machine's journal,
    which `eclflow resume` can continue (not one on Restate); `kept`: it is in the journal
    (not a run with --no-journal, whose id no command can find); `raw`: the output value
    of that name alone, as it is (--raw), not a `name: value` line each."""
    if as_json:
        click.echo(json_text(result.to_dict()))
        return
    # the output on stdout, also with --quiet (which hides the progress only, as in batch
    # mode): `eclflow run -q … > out.txt` keeps it
    out = result.output
    if raw is not None:
        _print_raw(out, raw, result.status)
    elif isinstance(out, Mapping) and len(out) and all(isinstance(k, str) for k in out):
        for k, v in out.items():
            click.echo(safe_text(f"{k}: {shown_value(v)}"), color=True)  # (data: never stripped)
    elif out is not None:
        click.echo(
            safe_text(json.dumps(out, indent=2, ensure_ascii=False, default=str)), color=True
        )
    revisions = sum(result.revisions.values())
    status = result.status
    shown_id = result.run_id[:8] if local else result.run_id  # (Restate knows no prefixes)
    line = (
        f"{status} · run {shown_id}{'' if kept else ' (not kept: --no-journal)'} · "
        f"{len(result.steps)} steps · "
        f"{revisions} revision{'s' if revisions != 1 else ''} · {result.tokens} tokens · "
        f"${result.cost:.4f} · {result.duration_ms / 1000:.1f}s"
    )
    if json_logs():
        return  # the workflow_completed / workflow_failed log line says it on stderr
    click.echo(line, err=True)
    if result.status == "paused":
        click.echo(
            f"paused before step {result.paused_at}, as asked; "
            f"{resume_command(result.run_id)} continues it",
            err=True,
        )
    if result.error:
        click.echo(safe_text(f"error: {result.error}", err=True), err=True, color=True)
        if "budget_exceeded" in result.error and local and kept:
            flag = next(
                (f for word, f in _BUDGET_FLAGS if word in result.error), "--budget-usd USD"
            )
            click.echo(
                f"{resume_command(result.run_id, flag)} continues it with a larger budget",
                err=True,
            )


def _print_raw(out: Any, name: str, status: str) -> None:
    """--raw NAME: the output value NAME as it is, for a file or a pipe (`--raw text >
    draft.md`): text exactly as the run made it, ended by a newline when it has none; another
    value as JSON. A run that did not complete may have none: nothing then (its error says
    why)."""
    if isinstance(out, Mapping) and name in out:
        value = out[name]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        click.echo(safe_text(text), nl=not text.endswith("\n"), color=True)
    elif status == "completed":  # (a run resumed: its workflow was not at hand before)
        fail(f"--raw {name}: the run's output has no {name!r}{_names_of(out)}", EXIT_USAGE)


def _names_of(out: Any) -> str:
    names = [str(k) for k in out] if isinstance(out, Mapping) else []
    return f" (it has: {', '.join(names)})" if names else " (it has no names)"


def _check_raw(raw: str | None, workflow: Any, as_json: bool) -> None:
    """--raw NAME names one of the workflow's outputs, and goes without --json (whose
    `output` holds every value as it is): said before anything runs."""
    if raw is None:
        return
    if as_json:
        raise click.UsageError(
            "--raw and --json do not go together (--json's output holds every value as it is)"
        )
    if workflow is not None and raw not in workflow.output:
        raise click.UsageError(
            f"--raw {raw}: the workflow's output has no {raw!r}{_names_of(workflow.output)}"
        )


def shown_value(value: Any) -> str:
    """One output value after `name: ` for a person: text as it is, with its later lines
    indented under the name; true/false/null and numbers, lists and mappings as JSON (a
    Python `False`, `None` or dict repr means nothing to someone who wrote YAML)."""
    if isinstance(value, str):
        text = value.rstrip("\n")
    elif isinstance(value, Mapping | list | tuple) and value:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    first, *rest = text.split("\n")
    return first + "".join(f"\n  {line}" if line else "\n" for line in rest)


_BUDGET_FLAGS = (("model call", "--budget-calls N"), ("tokens", "--budget-tokens N"))


def _model_options(envvar: str | None, help: str) -> Callable[[Any], Any]:
    """--model and --mock-responses. `run`'s --model defaults to ECLFLOW_MODEL; `resume`'s is
    only what is typed (ECLFLOW_MODEL, a default for new runs, would switch a run to another
    model half-way, and pay it, unasked)."""
    return lambda fn: _mock_option(
        click.option(
            "--model", "-m", metavar="MODEL", envvar=envvar, callback=not_empty, help=help
        )(fn)
    )


def _mock_option(fn: Any) -> Any:
    return click.option(
        "--mock-responses",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Replies for `mock/…` models (YAML or JSON): a list played in call order, or a "
        "mapping of journal key (critique#2), step id or * to replies; a reply is text or "
        "{content, error, delay, tokens, cost}. See `pydoc eclflow.llm.mock`.",
    )(fn)


def _provider_option(fn: Any) -> Any:
    return click.option(
        "--provider",
        "provider",
        multiple=True,
        metavar="PREFIX=MODULE:NAME",
        help="A model client of your own for the models PREFIX/… (repeatable): the object NAME "
        "of the Python module MODULE (imported from the current folder, or PYTHONPATH), an "
        "eclflow.Provider; as providers= does in Python.",
    )(fn)


def given_providers(specs: tuple[str, ...]) -> dict[str, Any] | None:
    """The objects `--provider PREFIX=MODULE:NAME` names, by prefix (checked further as
    `providers=` is); ConfigError in one line for a spec, a module or a name that is wrong."""
    if not specs:
        return None
    import importlib
    import os

    from ..llm.own import RESERVED, own_providers

    out: dict[str, Any] = {}
    for spec in specs:
        prefix, _, target = (part.strip() for part in spec.partition("="))
        module, _, name = (part.strip() for part in target.partition(":"))
        where = f"--provider {spec}"
        if not (prefix and module and name):
            raise ConfigError(
                f"{where}: write PREFIX=MODULE:NAME, such as myco=myco_client:client (the "
                "object `client` of myco_client.py) for the models myco/…"
            )
        if any(p.strip("/") == prefix.strip("/") for p in out):
            raise ConfigError(f"{where}: the prefix {prefix.strip('/')} is given twice")
        first = prefix.strip("/").split("/")[0]
        if first in RESERVED:
            raise ConfigError(
                f"{where}: {first}/… are eclflow's own models (`mock/…` plays --mock-responses, "
                "`local/…` runs in this process): give your provider another prefix"
            )
        if module.endswith(".py") or module.startswith(".") or "/" in module or "\\" in module:
            # (a file's path: import_module says "no module myco_client.py", or a TypeError)
            parts = [p for p in module.removesuffix(".py").replace("\\", "/").split("/") if p]
            parts = [p for p in parts if p != "."]
            outside = module.startswith("/") or ".." in parts  # (its folder: on PYTHONPATH)
            named = parts[-1] if outside else ".".join(parts)
            raise ConfigError(
                f"{where}: MODULE is a module's name, as Python's import takes it: "
                f"{prefix}={named}:{name} (run eclflow in the folder that holds it, or put that "
                "folder on PYTHONPATH)"
            )
        if os.getcwd() not in sys.path:  # (as `python -m` and `python -c` have it)
            sys.path.insert(0, os.getcwd())
        try:
            found: Any = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and (module + ".").startswith(e.name + "."):
                raise ConfigError(
                    f"{where}: no module {e.name} in the current folder or on PYTHONPATH"
                ) from None
            raise ConfigError(f"{where}: importing {module} failed: {_one_line(e)}") from None
        except (Exception, SystemExit) as e:  # (sys.exit("set MYCO_KEY") as it is imported)
            raise ConfigError(f"{where}: importing {module} failed: {_one_line(e)}") from None
        for part in name.split("."):
            if not hasattr(found, part):
                raise ConfigError(f"{where}: {module} has no {name}")
            found = getattr(found, part)
        if isinstance(found, type) and callable(getattr(found, "complete", None)):
            raise ConfigError(
                f"{where}: {name} is a class: name an object of it (client = {name}(…) in "
                f"{module}, then {prefix}={module}:client)"
            )
        if not callable(getattr(found, "complete", None)):
            kind = type(found).__name__
            raise ConfigError(
                f"{where}: {name} is {'an' if kind[:1] in 'aeiou' else 'a'} {kind}, not a "
                "model client: it has no `async def complete(self, request)` (see "
                "eclflow.Provider)"
            )
        out[prefix] = found
    return own_providers(out)


def _one_line(e: BaseException) -> str:
    """`Type: message`, on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _raw_option(fn: Any) -> Any:
    return click.option(
        "--raw",
        metavar="NAME",
        help="Print only the output NAME, as it is (text exactly as the run made it, another "
        "value as JSON), for a file or a pipe: --raw final_text > draft.md.",
    )(fn)


def _budget_options(otherwise: str) -> Callable[[Any], Any]:
    """--budget-usd, --budget-tokens and --budget-calls; `otherwise`: where a limit not given
    comes from."""
    return lambda fn: _budget_options_of(fn, otherwise)


def _budget_options_of(fn: Any, otherwise: str) -> Any:
    fn = click.option(
        "--budget-calls",
        type=click.IntRange(min=1),
        metavar="N",
        help="Stop before the model call that would exceed N calls.",
    )(fn)
    fn = click.option(
        "--budget-tokens",
        type=click.IntRange(min=1),
        metavar="N",
        help="Stop before a call that could exceed N tokens (prompt + max_tokens).",
    )(fn)
    fn = click.option(
        "--budget-usd",
        type=click.FloatRange(min=0, min_open=True),
        callback=_finite,
        metavar="USD",
        help=f"Stop before a call that could bring the run's cost over USD ({otherwise}, "
        "for each of the three limits).",
    )(fn)
    return fn


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of dollars", ctx=ctx, param=param)
    return value


def _budget(usd: float | None, tokens: int | None, calls: int | None) -> Any:
    if usd is None and tokens is None and calls is None:
        return None
    from ..spec.model import Budget

    return Budget(max_usd=usd, max_tokens=tokens, max_calls=calls)


@cli.command("run")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-i",
    "--input",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An input value (repeatable): the text as typed; a number or true/false where the "
    "workflow's inputs allow one, [a, b] or {k: v} where they declare a list or object.",
)
@click.option(
    "--input-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True, allow_dash=True),
    help="A JSON or YAML file holding the input object (- for stdin).",
)
@_model_options(
    "ECLFLOW_MODEL",
    "Model for steps without their own (overrides the workflow's `model:`): local/smollm2, "
    "openai/gpt-4o-mini, mock/test, …  Default: ECLFLOW_MODEL.",
)
@db_option
@click.option(
    "--from",
    "from_step",
    metavar="STEP",
    help="With --run: run STEP and the steps it leads to again, and reuse the other steps' "
    "results (on the earlier run's input).",
)
@click.option("--run", "from_run", metavar="RUN_ID", help="The earlier run --from reuses.")
@_budget_options("the workflow's `budget:` otherwise")
@_provider_option
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True, allow_dash=True),
    help="Batch: a JSON-lines file (- for stdin), one input object a line (blank lines and "
    "lines starting with # are skipped); one run per line "
    "(-i and --input-file give defaults a line may override). Items run before (same "
    "content, workflow, prompt files and model) are reused, unfinished ones resumed.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Batch: how many runs at once.",
)
@click.option("--no-journal", is_flag=True, help="Keep nothing in the database.")
@restate_options("submit the run to Restate, where `eclflow serve` workers run it")
@click.option("--detach", is_flag=True, help="With --engine restate: print the run id and return.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as one JSON object (with --inputs: each item's whole result, "
    "steps included, a line each, instead of the short line).",
)
@_raw_option
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Hide the progress (live view, step lines, a batch's counts); the output (stdout), "
    "the summary, warnings and errors (stderr; with --inputs, a line for each failed item) "
    "remain.",
)
@handle_errors
def run_cmd(
    file: Path,
    pairs: tuple[str, ...],
    input_file: Path | None,
    model: str | None,
    mock_responses: Path | None,
    db: str | None,
    from_step: str | None,
    from_run: str | None,
    budget_usd: float | None,
    budget_tokens: int | None,
    budget_calls: int | None,
    provider: tuple[str, ...],
    inputs_file: Path | None,
    concurrency: int,
    no_journal: bool,
    engine: str,
    restate_url: str | None,
    restate_admin_url: str | None,
    detach: bool,
    as_json: bool,
    raw: str | None,
    quiet: bool,
) -> None:
    """Run the workflow in FILE and print its output.

    Exit status: 0 completed, 1 failed (or paused, or an invalid file), 2 usage or configuration
    error (invalid input, a missing API key, a database that does not exist).
    """
    from ..engine import runner
    from ..spec import load

    stop_on_sigterm()
    if bool(from_step) != bool(from_run):
        raise click.UsageError("--from STEP and --run RUN_ID go together")
    if from_step and (pairs or input_file is not None):
        # the steps it reuses ran on the earlier run's input: the new run would record one
        # input and hold results of another
        raise click.UsageError(
            "--from reuses results made from the earlier run's input: -i and --input-file do "
            "not go with it (run the workflow anew for another input)"
        )
    ctx = click.get_current_context()
    if inputs_file is None and ctx.get_parameter_source("concurrency") in (
        click.core.ParameterSource.COMMANDLINE,
        click.core.ParameterSource.ENVIRONMENT,
    ):
        raise click.UsageError("--concurrency goes with --inputs (a batch)")
    if str(inputs_file) == "-" and str(input_file) == "-":
        raise click.UsageError("--inputs - and --input-file - cannot both read stdin")
    if not file.exists():
        fail(f"{file}: no such file", 2)
    workflow = load(file)
    _check_raw(raw, workflow, as_json)
    if inputs_file is not None and raw is not None:
        raise click.UsageError("--raw goes with a single run (--inputs prints JSON lines)")
    if detach and raw is not None:
        raise click.UsageError("--raw and --detach do not go together (--detach prints the run id)")
    if mock_responses is not None:
        _check_mock_is_used(workflow, model)
    inputs = parse_inputs(pairs, input_file, workflow.inputs)
    _note_undeclared(workflow, inputs)
    budget = _budget(budget_usd, budget_tokens, budget_calls)
    _quiet_stamina()
    if engine == "restate":
        db_given = click.get_current_context().get_parameter_source("db")
        if (
            mock_responses
            or from_step
            or inputs_file
            or no_journal
            or provider
            or db_given == click.core.ParameterSource.COMMANDLINE
        ):
            raise click.UsageError(
                "--engine restate takes no --mock-responses, --from, --inputs, --no-journal, "
                "--provider or --db (the workers hold the mock script and the database)"
            )
        from ..engine.orchestrator import new_run_id
        from ..restate.client import submit

        restate_id = new_run_id()
        where = f"`eclflow status {restate_id} --engine restate` shows it"

        def sent(run_id: str) -> None:
            # the full id: Restate knows no prefixes, and the run goes on if this stops waiting
            if not detach and not (as_json or quiet or json_logs()):
                click.echo(f"run {run_id} sent to Restate; {where}", err=True)

        try:
            outcome = submit(
                workflow,
                inputs,
                model=model,
                restate_url=restate_url,
                restate_admin_url=restate_admin_url,
                detach=detach,
                budget=budget,
                run_id=restate_id,
                on_no_worker=None if detach else _no_worker_line(restate_id),
                on_sent=sent,
                on_retrying=_retrying_line(restate_id),
            )
        except KeyboardInterrupt:
            _stopped_waiting(restate_id)
        except RunPaused as e:
            _paused_in_restate(restate_id, e, as_json)
        if isinstance(outcome, str):
            click.echo(json.dumps({"run_id": outcome, "engine": "restate"}) if as_json else outcome)
            sys.exit(EXIT_OK)
        print_result(outcome, as_json, local=False, raw=raw)
        sys.exit(EXIT_OK if outcome.status == "completed" else EXIT_FAILED)
    if detach:
        raise click.UsageError("--detach goes with --engine restate")
    providers = given_providers(provider)
    if inputs_file is not None:
        if from_step:
            raise click.UsageError("--inputs and --from do not go together")
        from .batch import run_batch_command

        run_batch_command(
            workflow,
            inputs,
            inputs_file,
            concurrency=concurrency,
            model=model,
            mock_responses=mock_responses,
            providers=providers,
            db=db,
            journal=not no_journal,
            budget=budget,
            as_json=as_json,
            quiet=quiet,
        )
        return
    store = None if no_journal else open_store(db)
    if store is not None:  # (what _kept reads when the database cannot be)
        store.runs_created = set()
    from ..engine.orchestrator import new_run_id

    leave_out_what_the_end_says()
    run_id = new_run_id()
    quiet_stderr = as_json or quiet or json_logs()
    show_live = not quiet_stderr and sys.stderr.isatty()
    view = LiveView(workflow.name) if show_live else None
    listener = view if view is not None else (None if quiet_stderr else _line_printer())
    try:

        async def go() -> Any:
            if from_step:
                from ..engine.rerun import rerun_from

                return await rerun_from(
                    workflow,
                    from_run or "",
                    from_step,
                    store=store,
                    model=model,
                    mock_responses=mock_responses,
                    providers=providers,
                    listener=listener,
                    inputs=inputs or None,
                    budget=budget,
                    new_run_id=run_id,
                )
            return await runner.run(
                workflow,
                inputs,
                model=model,
                mock_responses=mock_responses,
                providers=providers,
                store=store,
                listener=listener,
                budget=budget,
                run_id=run_id,
            )

        if view is not None:
            with view:
                result = _run_async(go(), store)
        else:
            result = _run_async(go(), store)
    except KeyboardInterrupt:
        _interrupted(run_id if store is not None else None, store)
    except PersistenceError as e:
        _journal_failed(e, store, run_id)
    finally:
        if store is not None:
            store.close()
    print_result(result, as_json, kept=store is not None, raw=raw)
    sys.exit(EXIT_OK if result.status == "completed" else EXIT_FAILED)


def _no_worker_line(run_id: str) -> Callable[[], None]:
    def no_worker() -> None:
        say(
            f"run {run_id} waits in Restate: no worker answers; start one with `eclflow serve "
            "--register ADMIN_URL`; the run goes on when one does, unless none does for about "
            "six minutes: Restate then pauses it, and this command stops waiting and says how "
            "to resume it",
            "warning",
            run_id=run_id,
        )

    return no_worker


def _retrying_line(run_id: str) -> Callable[[Invocation], None]:
    def retrying(invocation: Invocation) -> None:
        say(
            f"run {run_id}: Restate retries it {invocation.failure_note()} (the workers' log "
            "says more); it pauses the run after about 70 attempts",
            "warning",
            run_id=run_id,
        )

    return retrying


def _stopped_waiting(run_id: str) -> NoReturn:
    code = interrupted_exit_code()
    say(
        f"interrupted: stopped waiting; run {run_id} goes on in Restate; `eclflow status "
        f"{run_id} --engine restate` shows it",
        "error",
        exit_code=code,
        run_id=run_id,
    )
    sys.exit(code)


def _paused_in_restate(run_id: str, e: RunPaused, as_json: bool) -> NoReturn:
    """Restate paused the run while this waited: it keeps what its steps did; say how to go on."""
    if as_json:
        click.echo(
            json.dumps({"run_id": run_id, "engine": "restate", "status": "paused", "error": str(e)})
        )
    say(str(e), "error", exit_code=EXIT_FAILED, run_id=run_id)
    sys.exit(EXIT_FAILED)


@cli.command("resume")
@click.argument("run_id")
@_model_options(
    None,
    "Model for steps without their own, instead of the one the run started with "
    "(ECLFLOW_MODEL is not read: it is for new runs).",
)
@_budget_options("otherwise the run's own: those it started with, else the workflow's")
@_provider_option
@db_option
@click.option(
    "--force",
    is_flag=True,
    help="Resume even if the workflow file or a prompt file changed since the run started.",
)
@restate_options("resume a run Restate paused, or wait for one it runs (give the full run id)")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
@_raw_option
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Hide the step lines; the output (stdout), the summary, warnings and errors "
    "(stderr) remain.",
)
@handle_errors
def resume_cmd(
    run_id: str,
    model: str | None,
    mock_responses: Path | None,
    budget_usd: float | None,
    budget_tokens: int | None,
    budget_calls: int | None,
    provider: tuple[str, ...],
    db: str | None,
    force: bool,
    engine: str,
    restate_url: str | None,
    restate_admin_url: str | None,
    as_json: bool,
    raw: str | None,
    quiet: bool,
) -> None:
    """Continue RUN_ID (any unique prefix) from its journal without repeating finished steps.

    A run that already completed is left as it is; its recorded result is printed. With
    --engine restate: resume a run Restate paused (after about six minutes without a worker,
    or an error outside any step every time) and wait for its result."""
    from ..engine import runner

    stop_on_sigterm()
    _check_raw(raw, None, as_json)
    if engine == "restate":
        ctx = click.get_current_context()
        given = [
            "--" + name.replace("_", "-")
            for name in _NOT_FOR_RESTATE
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"resume --engine restate takes no {', '.join(given)}: the run goes on as it "
                "was sent (the workers hold the mock script and the database)"
            )
        _resume_in_restate(run_id, restate_url, restate_admin_url, as_json, quiet, raw)
    _quiet_stamina()
    providers = given_providers(provider)
    leave_out_what_the_end_says()
    store = open_store(db, existing=True)
    try:
        listener = None if as_json or quiet or json_logs() else _line_printer()
        result = _run_async(
            runner.resume(
                run_id,
                store=store,
                model=model,
                mock_responses=mock_responses,
                providers=providers,
                force=force,
                listener=listener,
                budget=_budget(budget_usd, budget_tokens, budget_calls),
            ),
            store,
        )
    except KeyboardInterrupt:
        _interrupted(run_id)
    except PersistenceError as e:
        _journal_failed(e, store, run_id)
    except WorkflowInvalid as e:
        raise _with_the_way_on(e, run_id) from None
    finally:
        store.close()
    print_result(result, as_json, raw=raw)
    sys.exit(EXIT_OK if result.status == "completed" else EXIT_FAILED)


def _with_the_way_on(error: WorkflowInvalid, run_id: str) -> WorkflowInvalid:
    """A run whose workflow reads a prompt file outside its folder (E403: started by an
    eclflow before that check): the hint says to move the file and name it so, after which
    the workflow file has changed since the run started, and resuming takes --force. The one
    line says the whole way: move, edit, resume --force."""
    from dataclasses import replace

    then = f"then {resume_command(run_id, '--force')} goes on with the workflow as it is now"
    return WorkflowInvalid(
        [
            replace(d, hint=f"{d.hint}; {then}" if d.hint else then) if d.code == "E403" else d
            for d in error.diagnostics
        ]
    )


@cli.command("pause")
@click.argument("run_id")
@db_option
@handle_errors
def pause_cmd(run_id: str, db: str | None) -> None:
    """Pause RUN_ID (any unique prefix), which another process is running.

    The steps it is in finish (they are paid for); then it stops, `paused`, until `eclflow
    resume RUN_ID` continues it. The running process looks between steps, at most every few
    seconds."""
    from ..engine.runner import pause
    from ..errors import RunInterrupted

    with open_store(db, existing=True) as store:
        try:
            full = pause(run_id, store=store)
        except RunInterrupted as e:  # the CLI's hint: with --db, and --engine local if needed
            fail(
                f"run {e.run_id[:8]} is not running: its process ended; "
                f"{resume_command(e.run_id)} continues it"
            )
    click.echo(
        f"pausing run {full[:8]}: it stops before its next step (the process running it looks "
        f"every few seconds); {resume_command(full)} continues it"
    )


# what a resume on this machine takes and one Restate runs does not
_NOT_FOR_RESTATE = (
    "model",
    "mock_responses",
    "provider",
    "budget_usd",
    "budget_tokens",
    "budget_calls",
    "db",
    "force",
)


def _resume_in_restate(
    run_id: str,
    restate_url: str | None,
    admin_url: str | None,
    as_json: bool,
    quiet: bool,
    raw: str | None,
) -> NoReturn:
    from ..restate.client import resume_async

    def found(invocation: Invocation) -> None:
        if as_json or quiet or json_logs():
            return
        if invocation.paused:
            line = f"resuming run {run_id} (Restate paused it {invocation.failure_note()})"
        elif invocation.status == "completed":
            return
        else:
            line = f"run {run_id} is not paused ({invocation.status} in Restate); waiting for it"
        click.echo(line, err=True)

    try:
        result = _run_async(
            resume_async(
                run_id,
                restate_url=restate_url,
                restate_admin_url=admin_url,
                on_found=found,
                on_no_worker=_no_worker_line(run_id),
                on_retrying=_retrying_line(run_id),
            )
        )
    except KeyboardInterrupt:
        _stopped_waiting(run_id)
    except RunPaused as e:
        _paused_in_restate(run_id, e, as_json)
    print_result(result, as_json, local=False, raw=raw)
    sys.exit(EXIT_OK if result.status == "completed" else EXIT_FAILED)


def _note_undeclared(workflow: Any, inputs: Mapping[str, Any]) -> None:
    """A warning for each input the `inputs` schema does not declare, when the schema lets it
    through all the same: `-i topc=x` beside a `topic` with a default ran on the default,
    and nothing said why. (When the input is refused, the error names it.)"""
    from ..engine.runner import undeclared_inputs, validate_input
    from ..errors import InvalidInput

    notes = undeclared_inputs(workflow.inputs, inputs)
    if not notes:
        return
    try:
        validate_input(workflow, inputs)
    except InvalidInput:
        return  # (the run's error says it)
    for note in notes:
        say(f"{note}: the inputs schema does not declare it", "warning", prefix="warning: ")


def _check_mock_is_used(workflow: Any, model: str | None) -> None:
    """--mock-responses with no `mock/` model would run the real model (and pay for it)."""
    from ..engine.runner import check_mock_is_used, default_model, mock_unused
    from ..errors import ConfigError

    try:
        check_mock_is_used(workflow, model)
    except ConfigError:
        why = mock_unused(workflow, default_model(workflow, model), "add --model mock/NAME")
        raise click.UsageError(
            f"--mock-responses plays replies for mock/… models, and no step uses one {why}"
        ) from None


def _interrupted(run_id: str | None, new_run_in: Any = None) -> None:
    """Ctrl-C or SIGTERM: say how to go on (what was committed is kept), exit 130 or 143.
    `new_run_in`: the store of a run this command began, which may have kept nothing yet
    (stopped while it waited for another process's lock, before its first write)."""
    if run_id is None:
        message = "interrupted (with --no-journal nothing was kept: running it again starts over)"
    elif new_run_in is not None and not _kept(new_run_in, run_id):
        message = (
            f"interrupted before run {run_id[:8]} was recorded: nothing was kept; running it "
            "again starts over"
        )
    else:
        message = f"interrupted: run {run_id[:8]} stopped; {resume_command(run_id)} continues it"
    code = interrupted_exit_code()
    say(message, "error", exit_code=code, run_id=run_id)
    sys.exit(code)


def _kept(store: Any, run_id: str) -> bool:
    """Whether the new run is in the store, once what its writers held is written. When the
    database cannot be read (PostgreSQL: a lock another session holds on the runs' table, the
    wait for which the signal cancels), this process's writers know: nobody else writes a
    run this command began."""
    try:
        store.close_writers()
        return bool(store.runs.exists(run_id))
    except PersistenceError:
        return run_id in (store.runs_created or ())


def _journal_failed(error: PersistenceError, store: Any, run_id: str) -> None:
    """The database failed mid-run, or refused a value of it: what it committed is kept; say
    how to go on from it."""
    try:
        found = store.runs.find(run_id).id
    except RunNotFound:  # nothing of it was committed: nothing to resume
        raise error from None
    except PersistenceError:  # the database may be gone: the id is known anyway
        found = run_id
    if isinstance(error, JournalRefused):  # (the database is fine: waiting changes nothing)
        fail(
            f"{error}; run {found[:8]} stopped there, and {resume_command(found)} stops "
            "there again if the step gives the same value",
            exit_code_for(error),
        )
    fail(
        f"{error}; run {found[:8]} stopped: once the database is back, "
        f"{resume_command(found)} continues it",
        exit_code_for(error),
    )


def _run_async(coro: Any, store: Any = None) -> Any:
    """Runs the engine. What a step prints (a plugin's debugging, say) goes to stderr: stdout
    carries the run's output, which scripts read (`--json | jq`). Ctrl-C and SIGTERM also end
    a wait for `store`'s lock (see stopping_lock_waits)."""
    import asyncio
    from contextlib import redirect_stdout

    with redirect_stdout(sys.stderr):
        return asyncio.run(stopping_lock_waits(coro, store))


def _quiet_stamina() -> None:
    """Retries are reported in the step's traces and logs; stamina's own warning is noise."""
    from stamina.instrumentation import set_on_retry_hooks

    set_on_retry_hooks([])


def _line_printer() -> Any:
    """A plain progress log for when stderr is not a terminal."""

    def listener(event: str, payload: Mapping[str, Any]) -> None:
        if event == "step_finished":
            e = payload["execution"]
            what = "replayed" if e.replayed else e.status
            extra = " (revise)" if e.outcome == "needs_revision" else ""
            click.echo(
                f"  {e.key}: {what}{extra} · {e.attempts} attempt(s) · {e.tokens} tokens · "
                f"{e.duration_ms} ms",
                err=True,
            )
        elif event == "run_already_completed":
            click.echo(
                f"run {payload['result'].run_id[:8]} had already completed: "
                "its recorded result (nothing was run)",
                err=True,
            )

    return listener
