"""Errors the command line reports: each is one line (a JSON object under --log-format json)
with the exit code the project promises, run through the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from conftest import CRITIQUE_REVISE

WF = str(CRITIQUE_REVISE)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI; click calls itself `python -m eclflow` there, shortened to `eclflow`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    r.stderr = r.stderr.replace("python -m eclflow", "eclflow")
    r.stdout = r.stdout.replace("python -m eclflow", "eclflow")
    return r


USAGE_ERRORS = [
    (
        ["run", WF, "--inputs", "nope.jsonl"],
        "error: Invalid value for '--inputs': File 'nope.jsonl' does not exist."
        " (see eclflow run --help)",
    ),
    (["run", WF, "-c", "0"], "error: Invalid value for '--concurrency' / '-c'"),
    (["run"], "error: Missing argument 'FILE'. (see eclflow run --help)"),
    (["run", WF, "--nosuch"], "error: No such option '--nosuch'"),
    (["run", WF, "--input"], "error: Option '--input' requires an argument."),
    (["--log-level", "bogus", "runs"], "error: Invalid value for '--log-level'"),
    (["nosuchcommand"], "error: No such command 'nosuchcommand'."),
    # values a script gets wrong, refused before anything runs
    (["run", WF, "-i", "topic=x", "--model", ""], "error: Invalid value for '--model' / '-m'"),
    (["runs", "--db", " "], "error: Invalid value for '--db': must not be empty"),
    (
        ["run", WF, "-i", "topic=x", "--budget-usd", "nan"],
        "error: Invalid value for '--budget-usd': nan is not a number of dollars",
    ),
    (["run", WF, "-i", "topic=x", "-c", "4"], "error: --concurrency goes with --inputs"),
    (
        ["run", WF, "-i", "topic=x", "--engine", "restate", "--db", "sqlite:///x.db"],
        "error: --engine restate takes no --mock-responses, --from, --inputs, --no-journal, "
        "--provider or --db",
    ),
    (  # (the workers run Restate's runs, which import no module of this process)
        ["run", WF, "-i", "topic=x", "--engine", "restate", "--provider", "myco=m:client"],
        "error: --engine restate takes no --mock-responses, --from, --inputs, --no-journal, "
        "--provider or --db",
    ),
    (
        ["resume", "abc", "--engine", "restate", "--provider", "myco=m:client"],
        "error: resume --engine restate takes no --provider: the run goes on as it was sent",
    ),
    (
        ["run", WF, "-i", "topic=x", "--mock-responses", "replies.yaml"],
        "error: --mock-responses plays replies for mock/… models, and no step uses one "
        "(the model is local/smollm2): add --model mock/NAME",
    ),
    (
        ["run", WF, "-i", "topic=x", "--raw", "final"],
        "error: --raw final: the workflow's output has no 'final' (it has: final_text, "
        "revision_count)",
    ),
    (["run", WF, "-i", "topic=x", "--raw", "final_text", "--json"], "error: --raw and --json"),
    (["run", WF, "--inputs", WF, "--raw", "final_text"], "error: --raw goes with a single run"),
]


@pytest.mark.parametrize(("args", "start"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], start: str) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith(start), r.stderr
    assert "Usage:" not in r.stderr and "Traceback" not in r.stderr
    assert "--help)" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--log-format", "json", "run", WF, "-c", "0"],
        ["--log-format=json", "--bogus", "runs"],
        ["--log-format", "json", "nosuchcommand"],
        ["--log-format", "json", "validate"],
        ["--log-format", "json", "run", WF, "-i"],  # (an option without its value was text)
    ],
)
def test_a_usage_error_is_a_json_object_when_the_logs_are_json(args: list[str]) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = json.loads(lines[0])
    assert line["level"] == "error" and line["exit_code"] == 2
    assert line["help"].startswith("eclflow") and line["help"].endswith("--help")


def test_json_from_the_environment_too() -> None:
    r = cli("run", env={"ECLFLOW_LOG_FORMAT": "json"})
    assert r.returncode == 2
    assert json.loads(r.stderr)["event"] == "Missing argument 'FILE'."


def test_misspellings_get_a_suggestion_on_the_same_line() -> None:
    r = cli("rnu", WF)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: No such command 'rnu'. (Did you mean 'run'?) (see eclflow --help)"
    )
    r = cli("run", WF, "--inptus", "x.jsonl")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "Did you mean" in r.stderr and "'--inputs'" in r.stderr


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["run", WF, "-v"], "(eclflow -v run …)"),
        (["validate", "--log-level", "info", WF], "(eclflow --log-level LEVEL validate …)"),
        (["logs", "x", "--log-format=json"], "(eclflow --log-format FORMAT logs …)"),
    ],
)
def test_an_option_of_eclflow_after_the_command_says_where_it_goes(
    args: list[str], where: str
) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    option = args[2].partition("=")[0] if args[0] != "validate" else args[1]
    assert r.stderr.startswith(
        f"error: {option} is an option of eclflow itself, not of {args[0]}: "
        f"put it before the command {where}"
    ), r.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["run", WF, "--topic", "x"], "(an input of the workflow is given as -i topic=VALUE)"),
        (["run", WF, "topic=why tide pools"], "(an input of the workflow is given as -i topic=…)"),
    ],
)
def test_an_input_written_as_an_option_or_a_bare_pair_is_shown_the_i_way(
    args: list[str], hint: str
) -> None:
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.strip().endswith(f"{hint} (see eclflow run --help)"), r.stderr
    # a command that takes no inputs gets no such hint
    assert "input" not in cli("runs", "--topic").stderr


def test_help_and_version_still_work(tmp_path: Path) -> None:
    r = cli("--help")
    assert r.returncode == 0 and r.stdout.startswith("Usage: eclflow") and not r.stderr
    r = cli("run", "-h")
    assert r.returncode == 0 and "Usage: eclflow run" in r.stdout
    r = cli("--version")
    assert r.returncode == 0 and "eclflow, version" in r.stdout


@pytest.fixture(scope="module")
def one_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """A SQLite file holding one completed run of the bundled workflow, and that run's id."""
    tmp = tmp_path_factory.mktemp("errors")
    env = {"ECLFLOW_DATABASE_URL": f"sqlite:///{tmp / 'runs.db'}"}
    script = tmp / "script.yaml"
    script.write_text('generate: "draft"\ncritique: {content: {decision: pass, critique: fine}}\n')
    r = cli(
        "run", WF, "-i", "topic=kelp", "-m", "mock/x", "--mock-responses", str(script), "--json",
        env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return env, json.loads(r.stdout)["run_id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resume", "zzzz"], "error: Run not found: zzzz"),
        (["status", "zzzz"], "error: Run not found: zzzz"),
        (["show", "zzzz"], "error: Run not found: zzzz"),
        (["logs", "zzzz"], "error: Run not found: zzzz"),
        (["show", "RUN", "--step", "nosuch"], "error: Step not found: nosuch"),
        (["run", WF, "--run", "RUN", "--from", "nosuch"], "error: Step not found: nosuch"),
    ],
)
def test_a_run_or_step_that_does_not_exist_is_invalid_input(
    one_run: tuple[dict[str, str], str], args: list[str], message: str
) -> None:
    env, run_id = one_run
    r = cli(*[run_id if a == "RUN" else a for a in args], env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message) and len(r.stderr.splitlines()) == 1, r.stderr


def test_a_value_the_inputs_declare_a_string_stays_the_text_typed(tmp_path: Path) -> None:
    """`-i topic=2024` is the topic "2024" (the input is a string), not the number 2024 that
    the input schema then refused."""
    script = tmp_path / "script.yaml"
    script.write_text('generate: "draft"\ncritique: {content: {decision: pass, critique: fine}}\n')
    r = cli(
        "run", WF, "-i", "topic=2024", "-m", "mock/x", "--mock-responses", str(script),
        "--json", "--no-journal",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"


@pytest.mark.parametrize(
    ("declared", "raw", "value"),
    [
        ({"type": "string"}, "2024", "2024"),
        ({"type": "string"}, "true", "true"),
        ({"type": "string"}, "1.5", "1.5"),
        ({"type": ["string", "integer"]}, "2024", 2024),
        ({"type": ["string", "integer"]}, "1.5", "1.5"),
        ({"type": ["string", "number"]}, "1.5", 1.5),
        ({"type": "integer"}, "2024", 2024),
        ({}, "2024", 2024),
        ({"type": "boolean"}, "true", True),
        # the text as typed: YAML comments, quotes, anchors and spaces are not syntax here
        ({"type": "string"}, "Issue #42 is broken", "Issue #42 is broken"),
        ({}, "a # b", "a # b"),
        ({}, '"quoted"', '"quoted"'),
        ({}, "  spaced  ", "  spaced  "),
        ({}, "line1\nline2", "line1\nline2"),
        ({}, "&a x", "&a x"),
        ({}, "null", "null"),
        ({}, "2024-01-01", "2024-01-01"),
        ({"type": "number"}, ".inf", ".inf"),  # (refused by the schema, not turned into inf)
        ({"type": "array"}, "[a, 2]", ["a", 2]),
        ({"type": "object"}, "{k: v}", {"k": "v"}),
        ({"type": "string"}, "[a, 2]", "[a, 2]"),
    ],
)
def test_typed_values_follow_the_inputs_schema(declared: dict, raw: str, value: object) -> None:
    from eclflow.cli.run import parse_inputs

    schema = {"type": "object", "properties": {"x": declared}}
    assert parse_inputs((f"x={raw}",), None, schema) == {"x": value}


def test_an_input_file_holds_json_values(tmp_path: Path) -> None:
    """A YAML date is its ISO text (it was refused: not a string); `.nan` and `.inf`, which
    JSON and the journal cannot keep, are refused with the place in the file."""
    from eclflow.cli.run import parse_inputs

    good = tmp_path / "in.yaml"
    good.write_text("when: 2024-01-01\nnested: {at: [2024-01-02]}\n")
    assert parse_inputs((), good) == {"when": "2024-01-01", "nested": {"at": ["2024-01-02"]}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: {y: [1, .nan]}\n")
    with pytest.raises(click.BadParameter, match=r"x\.y\[1\] is nan, not a finite number"):
        parse_inputs((), bad)
    # and a list or object given with -i, as the journal keeps it
    schema = {"properties": {"xs": {"type": "array"}, "o": {"type": "object"}}}
    assert parse_inputs(("xs=[2024-01-01, b]",), None, schema) == {"xs": ["2024-01-01", "b"]}
    with pytest.raises(click.BadParameter, match=r"o\.a is inf, not a finite number"):
        parse_inputs(("o={a: .inf}",), None, schema)
    assert parse_inputs(("o={1: a}",), None, schema) == {"o": {"1": "a"}}


def test_a_large_json_input_file_is_read_quickly(tmp_path: Path) -> None:
    """A document given as input (4 MB of JSON) took seven seconds to read, through the
    pure-Python YAML parser, before the run started; YAML's readings of what JSON does not
    have are kept (a key twice refused, `NaN` text, flow syntax)."""
    import json
    import time

    from eclflow.cli.run import parse_inputs

    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps({"text": "é" * 2_000_000, "n": 1, "more": [{"a": None}]}))
    started = time.perf_counter()
    assert parse_inputs((), doc)["more"] == [{"a": None}]
    assert time.perf_counter() - started < 3
    odd = tmp_path / "odd.json"
    odd.write_text('{"t": NaN, "u": {v: w}}')
    assert parse_inputs((), odd) == {"t": "NaN", "u": {"v": "w"}}
    odd.write_text('{"t": 1, "t": 2}')
    with pytest.raises(click.BadParameter, match='found duplicate key "t"'):
        parse_inputs((), odd)


@pytest.mark.parametrize(
    "text", ['{"t": ' + "[" * 100_000 + "]" * 100_000 + "}", "[" * 100_000, "a: &a [*a]\n"]
)
def test_an_input_file_that_nests_too_deep_is_one_line(tmp_path: Path, text: str) -> None:
    """It was `RecursionError: maximum recursion depth exceeded`, as an internal error (also
    for a YAML list that holds itself, `&a [*a]`)."""
    from eclflow.cli.run import parse_inputs

    deep = tmp_path / "deep.json"
    deep.write_text(text)
    with pytest.raises(click.BadParameter, match=r"deep\.json: its values nest too deep"):
        parse_inputs((), deep)


@pytest.mark.parametrize("args", [["steps"], ["graph", WF], ["runs"]])
def test_a_reader_that_goes_away_is_141_for_commands_that_print_through_rich(
    args: list[str], tmp_path: Path
) -> None:
    """rich handles the broken pipe itself and exits 1 ("the run failed"); the shell's status
    for a process its reader left is 141, as for every other command."""
    from eclflow.store import open_store

    open_store(f"sqlite:///{tmp_path / 'runs.db'}").close()  # (`runs` reads an existing one)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")},
        "ECLFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "eclflow", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # long before the interpreter has started and printed anything
    assert p.wait(timeout=60) == 141
    assert p.stderr.read() == b""


def test_a_journal_that_fails_mid_run_names_the_run_even_when_the_database_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eclflow.cli.run import _journal_failed
    from eclflow.errors import PersistenceError
    from eclflow.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    store.close()  # the database cannot be asked whether the run is there
    with pytest.raises(SystemExit) as e:
        _journal_failed(PersistenceError("connection refused"), store, "0123456789abcdef")
    assert e.value.code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "run 01234567 stopped: once the database is back, `eclflow resume 01234567` continues it"
        )
    )


def test_model_text_and_a_markup_like_name_print_safely_on_a_terminal(tmp_path: Path) -> None:
    """A name with `[/]` crashed the live view (rich markup); a reply's escape sequences
    reached the terminal raw (they can retitle the window or rewrite lines). Into a file or a
    pipe the output is exactly the reply."""
    wf = tmp_path / "mk.yaml"
    wf.write_text(
        'eclflow: 1\nid: mk\nname: "Costs [USD] and [/] report [bold]x"\nmodel: mock/x\n'
        "steps:\n  - {id: a, type: llm, template: hi}\n"
        'output: {text: "{{ steps.a.output.text }}"}\n'
    )
    script = tmp_path / "m.yaml"
    script.write_text('- "draft \\e]0;pwned\\a \\e[31mred\\e[0m \\x9b2J"\n')
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    run = ["run", str(wf), "--mock-responses", str(script), "--db", db]
    out, err, code = _on_terminals(*run)
    assert code == 0, err
    assert "Costs [USD] and [/] report [bold]x" in err  # the title, as written
    assert out.replace("\r\n", "\n") == (
        "text: draft \\x1b]0;pwned\\x07 \\x1b[31mred\\x1b[0m \\x9b2J\n"
    )
    piped = cli(*run)
    assert piped.stdout == "text: draft \x1b]0;pwned\x07 \x1b[31mred\x1b[0m \x9b2J\n"
    run_id = json.loads(cli("runs", "--db", db, "--json").stdout)[0]["id"]
    shown, _, code = _on_terminals("show", run_id, "--db", db)
    assert code == 0 and "pwned" in shown
    assert "\x07" not in shown and "\x9b" not in shown and "\x1b]" not in shown


def _on_terminals(*args: str) -> tuple[str, str, int]:
    """Run the CLI with stdout and stderr each on a terminal of its own; what each showed."""
    import pty
    import threading

    ends = [pty.openpty(), pty.openpty()]
    seen = [bytearray(), bytearray()]

    def drain(fd: int, into: bytearray) -> None:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            into.extend(chunk)

    readers = [
        threading.Thread(target=drain, args=(main, into), daemon=True)
        for (main, _), into in zip(ends, seen, strict=True)
    ]
    for r in readers:
        r.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "eclflow", *args], stdout=ends[0][1], stderr=ends[1][1],
            timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")},
        )  # fmt: skip
    finally:
        for _, secondary in ends:
            os.close(secondary)
        for r in readers:
            r.join(timeout=5)
        for main, _ in ends:
            os.close(main)
    out, err = (bytes(b).decode(errors="replace") for b in seen)
    return out, err, proc.returncode


@pytest.mark.parametrize(
    "args",
    [["runs"], ["status", "abcd1234"], ["show", "abcd1234"], ["logs", "abcd1234"],
     ["prune", "--older-than", "1d", "--yes"], ["resume", "abcd1234"], ["pause", "abcd1234"]],
)  # fmt: skip
def test_reading_a_mistyped_database_is_an_error_and_creates_nothing(
    args: list[str], tmp_path: Path
) -> None:
    typo = tmp_path / "tyop.db"
    r = cli(*args, "--db", str(typo))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        f"error: no eclflow database at {typo}: nothing has run with it; check --db or "
        "ECLFLOW_DATABASE_URL"
    )
    assert not typo.exists()
    # ECLFLOW_DATABASE_URL names a database on purpose: a new one is simply empty
    fresh = tmp_path / "fresh.db"
    r = cli(*args, env={"ECLFLOW_DATABASE_URL": f"sqlite:///{fresh}"})
    assert "no eclflow database" not in r.stderr


@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("{tmp}", "is a directory: give the path of a file"),
        ("{tmp}/junk.db", "junk.db is not an SQLite database"),
        ("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2", "127.0.0.1:1/test"),
    ],
)
@pytest.mark.parametrize("args", [["runs"], ["run", WF, "-i", "topic=x", "--model", "mock/x"]])
def test_a_database_that_cannot_be_opened_is_a_configuration_error(
    db: str, says: str, args: list[str], tmp_path: Path
) -> None:
    """Nothing ran: exit 2 with one line, as for a database that does not exist (a run said
    exit 1, "the run failed", when the --db was a directory or the port a wrong one)."""
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all, " * 300)
    r = cli(*args, "--db", db.format(tmp=tmp_path))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: Database error: ")
    assert says in r.stderr


def test_a_run_into_a_folder_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    r = cli("run", WF, "-i", "topic=x", "--db", f"sqlite:///{tmp_path}/no/runs.db")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().endswith(f"directory {tmp_path}/no does not exist")


def test_quiet_hides_the_progress_and_keeps_the_output(tmp_path: Path) -> None:
    """`eclflow run -q … > out.txt` wrote an empty file: -q dropped the output itself (in
    batch mode it hid the progress only)."""
    script = tmp_path / "m.yaml"
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    r = cli("run", WF, "-i", "topic=kelp", "-m", "mock/x", "--mock-responses", str(script),
            "--no-journal", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "final_text: A draft.\nrevision_count: 0\n"
    [summary] = r.stderr.splitlines()
    assert summary.startswith("completed · run ")


def test_a_workflow_file_whose_name_is_not_utf8_runs_and_is_journaled(tmp_path: Path) -> None:
    """Its name went into the run's metadata as it was, and the journal (UTF-8) refused it:
    `UnicodeEncodeError: … surrogates not allowed`."""
    name = os.fsdecode(b"bad\xffname.yaml")
    (tmp_path / name).write_text(CRITIQUE_REVISE.read_text())
    script = tmp_path / "m.yaml"
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    r = cli("run", str(tmp_path / name), "-i", "topic=x", "-m", "mock/x", "--mock-responses",
            str(script), "--db", db, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = cli("show", json.loads(r.stdout)["run_id"], "--db", db, "--json")
    assert json.loads(shown.stdout)["metadata"]["path"].endswith("bad\\udcffname.yaml")
    # in such a folder, with a prompt file of its own (whose path the run records)
    folder = tmp_path / os.fsdecode(b"dir\xffx")
    folder.mkdir()
    (folder / "p.j2").write_text("Say {{ topic }}")
    (folder / "wf.yaml").write_text(
        "eclflow: 1\nid: p\nsteps:\n  - {id: a, type: template, prompt: p.j2, "
        "with: {topic: '{{ input.topic }}'}}\n"
    )
    r = cli("run", str(folder / "wf.yaml"), "-i", "topic=x", "--db", db, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"][0]["output"] == {"text": "Say x"}


def test_the_input_file_can_be_stdin(tmp_path: Path) -> None:
    script = tmp_path / "m.yaml"
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "run", WF, "--input-file", "-", "-m", "mock/x",
         "--mock-responses", str(script), "--db", db, "--json"],
        input='{"topic": "from stdin"}', capture_output=True, text=True, env=base, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = cli("show", json.loads(r.stdout)["run_id"], "--db", db, "--json")
    assert json.loads(shown.stdout)["input"] == {"topic": "from stdin"}
    both = cli("run", WF, "--input-file", "-", "--inputs", "-")
    assert both.returncode == 2 and "cannot both read stdin" in both.stderr


def test_a_run_whose_stdout_is_closed_still_completes(tmp_path: Path) -> None:
    """`eclflow run … >&-`: printing the output failed with AttributeError (exit 1) after the
    run had completed."""
    script = tmp_path / "m.yaml"
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "run", WF, "-i", "topic=x", "-m", "mock/x",
         "--mock-responses", str(script), "--no-journal"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")},
        pass_fds=(), close_fds=True, preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "completed · run" in r.stderr


def test_a_run_without_a_journal_says_it_was_not_kept(tmp_path: Path) -> None:
    """Its id is no use to any other command: no resume hint, even after a budget."""
    script = tmp_path / "s.yaml"
    script.write_text("generate: a draft\ncritique: {decision: pass, critique: fine}\n")
    args = ["run", str(CRITIQUE_REVISE), "-i", "topic=x", "-m", "mock/x"]
    r = cli(*args, "--mock-responses", str(script), "--no-journal", "--budget-calls", "1", "-q")
    assert r.returncode == 1, r.stderr
    summary, error = r.stderr.splitlines()  # (the budget's log line said the error again)
    assert summary.startswith("failed · run ") and "(not kept: --no-journal) · " in summary
    assert error.startswith("error: Step critique failed: budget_exceeded")


SHAPES = """\
eclflow: 1
id: shapes
model: mock/x
steps:
  - {id: k, type: llm, template: "k", output_schema: {type: object}}
output:
  flag: "{{ steps.k.output.flag }}"
  none: "{{ steps.k.output.none }}"
  n: "{{ steps.k.output.n }}"
  nested: "{{ steps.k.output.nested }}"
  text: "{{ steps.k.output.text }}"
"""


def test_the_output_is_shown_as_json_values_with_text_lines_indented(tmp_path: Path) -> None:
    """The output was printed as Python values: `long: False`, `none: None`, a dict as its
    repr, and the later lines of a multi-line text ran on at the left margin."""
    wf, script = tmp_path / "shapes.yaml", tmp_path / "m.yaml"
    wf.write_text(SHAPES)
    reply = {"flag": False, "none": None, "n": 2.5, "nested": {"a": [1, True]},
             "text": "one\n\nthree\n"}  # fmt: skip
    script.write_text(json.dumps({"k": {"content": reply}}))
    r = cli("run", str(wf), "--mock-responses", str(script), "--no-journal", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "flag: false\nnone: null\nn: 2.5\n"
        'nested: {\n    "a": [\n      1,\n      true\n    ]\n  }\n'
        "text: one\n\n  three\n"
    )


def test_raw_prints_one_output_as_it_is_for_a_file(tmp_path: Path) -> None:
    """`eclflow run -q … > out.txt` wrote `text: one` and then the later lines indented two
    spaces (the format for people, which does not change with where stdout goes): `--raw
    NAME` writes that value alone, as it is (text exactly; another value as JSON), from a
    run or from the resume of one."""
    wf, script = tmp_path / "shapes.yaml", tmp_path / "m.yaml"
    wf.write_text(SHAPES)
    reply = {"flag": False, "none": None, "n": 2.5, "nested": {"a": [1, True]},
             "text": "one\n\n  three"}  # fmt: skip
    script.write_text(json.dumps({"k": {"content": reply}}))
    db = f"sqlite:///{tmp_path}/runs.db"
    r = cli("run", str(wf), "--mock-responses", str(script), "--db", db, "-q", "--raw", "text")
    assert (r.returncode, r.stdout) == (0, "one\n\n  three\n"), r.stderr
    run_id = cli("runs", "--db", db, "--json").stdout
    run_id = json.loads(run_id)[0]["id"]
    r = cli("resume", run_id, "--db", db, "--raw", "nested")
    assert (r.returncode, r.stdout) == (0, '{"a": [1, true]}\n'), r.stderr
    r = cli("resume", run_id, "--db", db, "--raw", "txt")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.splitlines()[-1] == (
        "error: --raw txt: the run's output has no 'txt' (it has: flag, none, n, nested, text)"
    )


def test_a_resume_keeps_the_runs_model_whatever_eclflow_model_says(tmp_path: Path) -> None:
    """ECLFLOW_MODEL, a default for new runs, was read by `resume --model` too: a run started
    on mock/x was resumed on openai/gpt-4o-mini, which the shell happened to set (the call
    went to OpenAI, and would have been paid for). Only a --model typed changes it."""
    wf, script, calls = tmp_path / "wf.yaml", tmp_path / "m.yaml", tmp_path / "calls.jsonl"
    wf.write_text(ENVY.replace("  - HOME\n  - ECLFLOW_TEST_NAME\n", "  - HOME\n"))
    wf.write_text(wf.read_text().replace("env.ECLFLOW_TEST_NAME", "env.HOME"))
    script.write_text("a: {error: auth_error}\n")
    db = f"sqlite:///{tmp_path}/runs.db"
    log = {"ECLFLOW_MOCK_LOG": str(calls)}
    r = cli("run", str(wf), "--mock-responses", str(script), "--db", db, "--json", env=log)
    assert r.returncode == 1, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    script.write_text("a: hello\n")
    other = {**log, "ECLFLOW_MODEL": "openai/gpt-4o-mini", "OPENAI_API_KEY": "sk-none"}
    r = cli("resume", run_id, "--mock-responses", str(script), "--db", db, "-q", env=other)
    assert (r.returncode, r.stdout) == (0, f"text: {os.environ['HOME']}\n"), r.stderr
    assert [json.loads(line)["model"] for line in calls.read_text().splitlines()] == ["mock/x"] * 2


def test_the_conditional_routing_example_prints_false_as_json(tmp_path: Path) -> None:
    """The README's example printed `long: False`."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    r = cli("run", str(examples / "conditional_routing.yaml"), "-i", "question=Why?",
            "-m", "mock/demo", "--mock-responses", str(examples / "mock/conditional_routing.yaml"),
            "--no-journal", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == "long: false"


ENVY = """\
eclflow: 1
id: envy
model: mock/x
env:
  - HOME
  - ECLFLOW_TEST_NAME
steps:
  - {id: a, type: llm, template: "hi"}
  - id: b
    type: template
    depends_on: [a]
    template: "{{ who }}"
    with: {who: "{{ env.ECLFLOW_TEST_NAME }}"}
output:
  text: "{{ steps.b.output.text }}"
"""
ENV_UNSET = (
    "error: Configuration error: {wf}:6:5: env.ECLFLOW_TEST_NAME is not set, and step 'b' "
    "reads it: set ECLFLOW_TEST_NAME in the environment, or read it as "
    "env.ECLFLOW_TEST_NAME | default('…')"
)


def test_an_unset_env_variable_is_refused_before_anything_is_paid_for(tmp_path: Path) -> None:
    """It failed step 'b' (`input: env.ECLFLOW_TEST_NAME is undefined`) after step 'a' had
    made its model call; run, batch and resume now refuse it up front, naming where the file
    declares it."""
    wf, script, calls = tmp_path / "wf.yaml", tmp_path / "m.yaml", tmp_path / "calls.jsonl"
    wf.write_text(ENVY)
    script.write_text("a: hello\n")
    db = f"sqlite:///{tmp_path}/runs.db"
    log = {"ECLFLOW_MOCK_LOG": str(calls)}
    r = cli("run", str(wf), "--mock-responses", str(script), "--db", db, env=log)
    assert (r.returncode, r.stderr.strip()) == (2, ENV_UNSET.format(wf=wf))
    items = tmp_path / "items.jsonl"
    items.write_text("{}\n{}\n")
    r = cli("run", str(wf), "--inputs", str(items), "--mock-responses", str(script),
            "--db", db, env=log)  # fmt: skip
    assert (r.returncode, r.stderr.strip()) == (2, ENV_UNSET.format(wf=wf))
    assert not calls.exists()
    # a run that failed with it set, resumed without it
    script.write_text("a: {error: auth_error}\n")
    r = cli("run", str(wf), "--mock-responses", str(script), "--db", db, "--json",
            env={**log, "ECLFLOW_TEST_NAME": "Ann"})  # fmt: skip
    assert r.returncode == 1 and len(calls.read_text().splitlines()) == 1
    run_id = json.loads(r.stdout)["run_id"]
    script.write_text("a: hello\n")
    r = cli("resume", run_id, "--mock-responses", str(script), "--db", db, env=log)
    assert (r.returncode, r.stderr.strip()) == (2, ENV_UNSET.format(wf=wf.resolve()))
    assert len(calls.read_text().splitlines()) == 1
    r = cli("resume", run_id, "--mock-responses", str(script), "--db", db,
            env={**log, "ECLFLOW_TEST_NAME": "Ann"})  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "text: Ann\n"), r.stderr


REPLAYED_READER = """\
eclflow: 1
id: replayed-reader
model: mock/x
env: [ECLFLOW_TEST_NAME]
steps:
  - id: b
    type: template
    template: "{{ who }}"
    with: {who: "{{ env.ECLFLOW_TEST_NAME }}"}
  - id: a
    type: llm
    depends_on: [b]
    template: "hi {{ name }}"
    with: {name: "{{ steps.b.output.text }}"}
output:
  text: "{{ steps.a.output.text }}"
"""


def test_a_resume_needs_no_env_variable_only_a_step_it_replays_reads(tmp_path: Path) -> None:
    """The step that reads the variable succeeded before the run failed: a resume replays it
    without rendering its input, so it does not need the variable. Resume was refused (and,
    without that check, failed the replayed step: `env.ECLFLOW_TEST_NAME is undefined`)."""
    wf, script, calls = tmp_path / "wf.yaml", tmp_path / "m.yaml", tmp_path / "calls.jsonl"
    wf.write_text(REPLAYED_READER)
    script.write_text("a: {error: auth_error}\n")
    db = f"sqlite:///{tmp_path}/runs.db"
    log = {"ECLFLOW_MOCK_LOG": str(calls)}
    r = cli("run", str(wf), "--mock-responses", str(script), "--db", db, "--json",
            env={**log, "ECLFLOW_TEST_NAME": "Ann"})  # fmt: skip
    assert r.returncode == 1, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    script.write_text("a: hello\n")
    r = cli("resume", run_id, "--mock-responses", str(script), "--db", db, "-q", env=log)
    assert (r.returncode, r.stdout) == (0, "text: hello\n"), r.stderr
    prompts = [
        json.loads(line)["messages"][-1]["content"] for line in calls.read_text().splitlines()
    ]
    assert prompts == ["hi Ann", "hi Ann"]


def test_an_env_variable_read_with_a_default_may_be_unset(tmp_path: Path) -> None:
    """`env.NAME | default('…')` is how the format says a variable is optional: not refused."""
    wf, script = tmp_path / "wf.yaml", tmp_path / "m.yaml"
    wf.write_text(
        ENVY.replace("env.ECLFLOW_TEST_NAME }}", "env.ECLFLOW_TEST_NAME | default('you') }}")
    )
    script.write_text("a: hello\n")
    r = cli("run", str(wf), "--mock-responses", str(script), "--no-journal")
    assert (r.returncode, r.stdout) == (0, "text: you\n"), r.stderr


BRANCHED = """\
eclflow: 1
id: branched
model: mock/x
env: [ECLFLOW_TEST_URL]
inputs:
  type: object
  properties:
    mode: {type: string, default: dev}
steps:
  - {id: a, type: llm, template: "hi"}
  - id: prod
    type: template
    template: "{{ url }}"
    with: {url: "{{ env.ECLFLOW_TEST_URL }}"}
  - id: dev
    type: template
    depends_on: [a]
    template: "{{ how }}"
    with: {how: "{% if input.mode == 'prod' %}{{ env.ECLFLOW_TEST_URL }}{% else %}local{% endif %}"}
transitions:
  - {type: conditional, from: a, to: prod, when: "input.mode == 'prod'"}
output:
  text: "{{ steps.dev.output.text }}"
"""


def test_an_env_variable_read_only_on_a_branch_not_taken_may_be_unset(tmp_path: Path) -> None:
    """A variable read only in a step a condition skips, or in an `{% if %}` branch, is needed
    only by the runs that go there: the check refused every run without it (`mode=dev`
    too), which had run before it. A run that takes the branch still fails there."""
    wf, script = tmp_path / "wf.yaml", tmp_path / "m.yaml"
    wf.write_text(BRANCHED)
    script.write_text("a: hello\n")
    r = cli("run", str(wf), "--mock-responses", str(script), "--no-journal")
    assert (r.returncode, r.stdout) == (0, "text: local\n"), r.stderr
    r = cli("run", str(wf), "--mock-responses", str(script), "--no-journal", "-i", "mode=prod")
    assert r.returncode == 1 and "env.ECLFLOW_TEST_URL is undefined" in r.stderr, r.stderr


def test_mock_replies_for_steps_that_all_name_their_own_model_say_so(tmp_path: Path) -> None:
    """It said `(the model is mock/x): add --model mock/NAME` to someone who had given
    exactly that: the steps' own `model:` wins over --model."""
    wf, script = tmp_path / "own.yaml", tmp_path / "m.yaml"
    wf.write_text(
        "eclflow: 1\nid: own\nsteps:\n"
        '  - {id: a, type: llm, template: "hi", model: openai/gpt-4o-mini}\n'
        '  - {id: b, type: llm, template: "hi", model: openai/gpt-4o, depends_on: [a]}\n'
        '  - {id: t, type: template, template: "x", depends_on: [b]}\n'
    )
    script.write_text("a: hello\n")
    r = cli("run", str(wf), "-m", "mock/x", "--mock-responses", str(script), "--no-journal")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: --mock-responses plays replies for mock/… models, and no step uses one (every "
        "step that calls a model names its own: a: openai/gpt-4o-mini, b: openai/gpt-4o; "
        "mock/x is for steps without one): write mock/NAME in their model: to play the "
        "replies (see eclflow run --help)"
    )


DEFAULTED = """\
eclflow: 1
id: dflt
inputs:
  type: object
  properties:
    topic: {type: string, default: tides}
steps:
  - {id: t, type: template, template: "{{ topic }}", with: {topic: "{{ input.topic }}"}}
output:
  text: "{{ steps.t.output.text }}"
"""


def test_a_misspelt_input_is_named_with_the_one_meant(tmp_path: Path) -> None:
    """`-i topc=x` was told only `input 'topic' is a required property`; with
    additionalProperties: false, `Additional properties are not allowed ('topc' was
    unexpected)`; and beside a defaulted `topic` it ran on the default without a word."""
    r = cli("run", WF, "-i", "topc=x", "-m", "mock/x", "--no-journal")
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "error: Validation error: unknown input 'topc' (did you mean 'topic'?); "
        "input 'topic' is a required property",
    )
    closed = tmp_path / "closed.yaml"
    closed.write_text(
        DEFAULTED.replace("  properties:", "  additionalProperties: false\n  properties:")
    )
    r = cli("run", str(closed), "-i", "topc=x", "-i", "zzz=1", "--no-journal")
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "error: Validation error: unknown input 'topc' (did you mean 'topic'?); "
        "unknown input 'zzz'",
    )
    open_ = tmp_path / "open.yaml"
    open_.write_text(DEFAULTED)
    r = cli("run", str(open_), "-i", "topc=kelp", "--no-journal", "-q")
    assert (r.returncode, r.stdout) == (0, "text: tides\n")
    assert r.stderr.splitlines()[0] == (
        "warning: unknown input 'topc' (did you mean 'topic'?): the inputs schema does not "
        "declare it"
    )


def test_inputs_a_schema_takes_on_purpose_are_not_called_unknown(tmp_path: Path) -> None:
    """A schema with `additionalProperties: {type: string}` (or true) takes inputs beside the
    declared ones by design: each run warned `unknown input 'tone'`, and an error about
    another input led with it."""
    wf = tmp_path / "extra.yaml"
    wf.write_text(
        DEFAULTED.replace(
            "  properties:", "  additionalProperties: {type: string}\n  properties:"
        ).replace("{{ input.topic }}", "{{ input.topic }} {{ input.tone | default('plain') }}")
    )
    r = cli("run", str(wf), "-i", "tone=dry", "--no-journal", "-q")
    assert (r.returncode, r.stdout) == (0, "text: tides dry\n"), r.stderr
    assert r.stderr.startswith("completed · run "), r.stderr  # (the summary alone)
    r = cli("run", str(wf), "-i", "tone=dry", "-i", "n=3", "--no-journal", "-q")
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "error: Validation error in field 'n': input 3 is not of type 'string'",
    )


def test_an_input_declared_in_an_allof_part_is_not_called_unknown(tmp_path: Path) -> None:
    """`allOf: [{properties: {tone: …}}]` declares `tone` as surely as `properties` does:
    each run warned `unknown input 'tone': the inputs schema does not declare it`."""
    wf = tmp_path / "allof.yaml"
    wf.write_text(
        DEFAULTED.replace(
            "  properties:", "  allOf:\n    - properties: {tone: {type: string}}\n  properties:"
        ).replace("{{ input.topic }}", "{{ input.topic }} {{ input.tone | default('plain') }}")
    )
    r = cli("run", str(wf), "-i", "tone=dry", "--no-journal", "-q")
    assert (r.returncode, r.stdout) == (0, "text: tides dry\n"), r.stderr
    assert r.stderr.startswith("completed · run "), r.stderr  # (the summary alone)
    r = cli("run", str(wf), "-i", "tonr=dry", "--no-journal", "-q")
    assert r.stderr.splitlines()[0] == (
        "warning: unknown input 'tonr' (did you mean 'tone'?): the inputs schema does not "
        "declare it"
    )


def test_a_resume_without_the_mock_script_is_told_to_pass_it_to_resume(tmp_path: Path) -> None:
    """It was told to pass --mock-responses `to eclflow run`, which would start another run;
    `eclflow resume` takes it too."""
    script, db = tmp_path / "m.yaml", f"sqlite:///{tmp_path}/runs.db"
    script.write_text("generate: {error: auth_error}\n")
    r = cli("run", WF, "-i", "topic=kelp", "-m", "mock/x", "--mock-responses", str(script),
            "--db", db, "--json")  # fmt: skip
    assert r.returncode == 1
    run_id = json.loads(r.stdout)["run_id"]
    r = cli("resume", run_id, "--db", db)
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "error: Configuration error: model 'mock/x' plays a script of replies: pass "
        "--mock-responses FILE to `eclflow resume` (for Restate runs, to `eclflow serve`) or "
        "mock_responses= (Python)",
    )
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    r = cli("resume", run_id, "--db", db, "--mock-responses", str(script), "-q")
    assert (r.returncode, r.stdout) == (0, "final_text: A draft.\nrevision_count: 0\n"), r.stderr


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            "local/nofile.gguf",
            "local model file not found: {cwd}/nofile.gguf: give local/PATH.gguf of a GGUF file "
            "that exists, or local/smollm2",
        ),
        (
            "mock",
            "model 'mock' needs a name after it: write mock/NAME (any name, e.g. mock/test) and "
            "pass --mock-responses FILE",
        ),
        (
            "local",
            "model 'local' needs a name after it: write local/smollm2, or local/PATH.gguf "
            "for a GGUF file",
        ),
    ],
)
def test_a_model_that_cannot_be_used_is_named_as_given(
    tmp_path: Path, model: str, message: str
) -> None:
    """`local/nofile.gguf` was echoed as 'local//tmp/…/nofile.gguf'; `mock` alone got
    litellm's `names no provider litellm knows`, without a word of mock/NAME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
    )  # (run from tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "run", WF, "-i", "topic=x", "-m", model, "--no-journal"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    cwd = tmp_path.resolve()
    assert r.stderr.strip() == "error: Configuration error: " + message.format(cwd=cwd)


def test_a_mock_script_key_that_names_no_step_is_warned_of_up_front(tmp_path: Path) -> None:
    """A misspelt key (`clasify:`) was found only when step `classify` asked for its reply:
    `mock model has no reply for 'classify'`. It is named before the run, once (not once per
    item of a batch), with the step meant."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    script = tmp_path / "m.yaml"
    text = (examples / "mock/conditional_routing.yaml").read_text()
    script.write_text(text.replace("\nclassify:", "\nclasify:") + "answer: x\nshort_answer#0: x\n")
    wf = str(examples / "conditional_routing.yaml")
    expected = [
        f"WARNING mock responses {script}: key 'clasify' names no step that calls a model "
        "(did you mean 'classify'?)",
        f"WARNING mock responses {script}: key 'answer': step 'answer' calls no model, so it "
        "plays no reply",
        f"WARNING mock responses {script}: key 'short_answer#0': a journal key is STEP#N, N "
        "from 1 (as 'short_answer#1')",
    ]
    r = cli("run", wf, "-i", "question=Why?", "-m", "mock/demo", "--mock-responses", str(script),
            "--no-journal")  # fmt: skip
    assert r.returncode == 1
    warnings = [line.split(" ", 1)[1] for line in r.stderr.splitlines() if " WARNING " in line]
    assert warnings == expected
    items = tmp_path / "items.jsonl"
    items.write_text('{"question": "a"}\n{"question": "b"}\n')
    r = cli("run", wf, "--inputs", str(items), "-m", "mock/demo", "--mock-responses", str(script),
            "--no-journal")  # fmt: skip
    warnings = [line.split(" ", 1)[1] for line in r.stderr.splitlines() if " WARNING " in line]
    assert warnings == expected


def test_an_anchor_defined_twice_is_one_located_warning_not_ruamels_source_lines(
    tmp_path: Path,
) -> None:
    """ruamel warns of an anchor defined twice through Python's warnings: validate, graph and
    run printed ten lines of its source code (`composer.py:227: ReusedAnchorWarning`, the
    code line that warned) on stderr; a duplicate key printed them twice."""
    wf = tmp_path / "w.yaml"
    wf.write_text(
        "eclflow: 1\nid: anchors\nmetadata: {a: &t one, b: &t two}\nsteps:\n"
        '  - {id: a, type: template, template: "{{ x }}", with: {x: *t}}\n'
    )
    r = cli("validate", str(wf))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.splitlines()[0] == (
        f"{wf}:3:26: W508 YAML: anchor &t is defined again here (first at line 3, column 15): "
        "the aliases after it refer to this one (give each anchor a name of its own)"
    )
    r = cli("graph", str(wf))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    wf.write_text(wf.read_text() + "id: twice\n")
    r = cli("graph", str(wf))
    assert r.returncode == 1, r.stdout + r.stderr
    assert [line.split(": ")[1].split()[0] for line in r.stderr.splitlines()] == [
        "E100",
        "W508",
    ], r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "RUN", "--json", "-o", "text"], "--json and --output text"),
        (["status", "RUN", "-o", "text", "--json"], "--json and --output text"),
        (["status", "RUN", "--output=text", "--json"], "--json and --output text"),
        (["validate", WF, "--json", "--format", "github"], "--json and --format github"),
        (["validate", WF, "--format", "text", "--json"], "--json and --format text"),
    ],
)
def test_json_beside_another_output_format_is_a_usage_error(
    one_run: tuple[dict[str, str], str], args: list[str], message: str
) -> None:
    """`status --json -o text` printed JSON and `validate --json --format github` printed
    JSON, silently taking one of two formats asked for; a script reading the other got what it
    could not parse. Both options at once are a usage error, one line, exit 2, no output."""
    env, run_id = one_run
    r = cli(*[run_id[:8] if a == "RUN" else a for a in args], env=env)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    command = args[0]
    flag = message.split()[2]
    assert r.stderr == (
        f"error: {message} do not go together (--json means {flag} json) "
        f"(see eclflow {command} --help)\n"
    )


@pytest.mark.parametrize(
    "args",
    [["status", "RUN", "--json", "-o", "json"], ["validate", WF, "--json", "--format", "json"]],
)
def test_json_beside_the_same_format_is_that_format(
    one_run: tuple[dict[str, str], str], args: list[str]
) -> None:
    env, run_id = one_run
    r = cli(*[run_id[:8] if a == "RUN" else a for a in args], env=env)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), dict)


def test_resume_of_a_run_whose_prompt_is_now_refused_says_the_whole_way_on(
    tmp_path: Path,
) -> None:
    """A run an eclflow before E403 started, whose workflow reads `../templates/gen.j2`:
    `eclflow resume` said to move the file and name it relative to the workflow file, and
    nothing of the `--force` the resume then needs (the workflow file has changed since the
    run started): a second refusal to learn it from. The one line says the whole way, and
    following it finishes the run."""
    import hashlib

    from eclflow.store import open_store
    from eclflow.store.repositories import definition_sql

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {"ECLFLOW_DATABASE_URL": url}
    (tmp_path / "wf").mkdir()
    (tmp_path / "templates").mkdir()
    inside = (
        "eclflow: 1\nid: two\nsteps:\n"
        "  - id: a\n    type: llm\n    prompt: PROMPT\n"
        "    with: {topic: '{{ input.topic }}'}\n"
        "  - {id: b, type: llm, depends_on: [a], template: 'Shorten {{ t }}',\n"
        "     with: {t: '{{ steps.a.output.text }}'}}\n"
    )
    wf = tmp_path / "wf" / "w.yaml"
    (tmp_path / "wf" / "gen.j2").write_text("Write about {{ topic }}.")
    wf.write_text(inside.replace("PROMPT", "gen.j2"))
    (tmp_path / "failing.json").write_text('{"a": "a long text", "b": {"error": "auth_error"}}')
    r = cli(
        "run", str(wf), "-i", "topic=kelp", "-m", "mock/x",
        "--mock-responses", str(tmp_path / "failing.json"), "--json", env=env,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    # as an eclflow before E403 kept it: the definition reads ../templates/gen.j2
    earlier = inside.replace("PROMPT", "../templates/gen.j2")
    wf.write_text(earlier)
    (tmp_path / "wf" / "gen.j2").rename(tmp_path / "templates" / "gen.j2")
    store = open_store(url)
    try:
        sha = hashlib.sha256(earlier.encode()).hexdigest()
        store.db.execute_sql(definition_sql(store.db.param), (sha, earlier))
        Run = store.models.Run
        Run.update(definition_sha256=sha).where(Run.id == run_id).execute()
        store.runs.update_metadata(
            run_id, prompts={str(tmp_path / "templates" / "gen.j2"): "(as it was)"}
        )
    finally:
        store.close()

    rest = tmp_path / "rest.json"
    rest.write_text('{"b": "short"}')
    r = cli("resume", run_id[:8], "--mock-responses", str(rest), env=env)
    assert r.returncode == 1
    [line] = r.stderr.splitlines()
    assert line.startswith(f"{wf}:6:13: E403 prompt file '../templates/gen.j2' is outside"), line
    assert line.endswith(
        f"; then `eclflow resume {run_id[:8]} --force` goes on with the workflow as it is now)"
    ), line
    # the way it says: the file moved next to the workflow, named so, resume --force
    (tmp_path / "templates" / "gen.j2").rename(tmp_path / "wf" / "gen.j2")
    wf.write_text(inside.replace("PROMPT", "gen.j2"))
    r = cli("resume", run_id[:8], "--force", "--mock-responses", str(rest), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed"


def _cli_with(closed: int | None = None, **env: str) -> Any:
    """The CLI runner `cli`, with file descriptor `closed` (0 stdin, 1 stdout) closed in the
    child (`eclflow … <&-`, `>&-`) and `env` added."""

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ECLFLOW_")}
        return subprocess.run(
            [sys.executable, "-m", "eclflow", *args],
            env={**base, **env},
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            stdout=subprocess.DEVNULL if closed == 1 else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            preexec_fn=None if closed is None else (lambda: os.close(closed)),
        )

    return run


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--inputs", "-"], "error: <stdin>: no input lines\n"),
        (
            ["--input-file", "-"],
            "error: Invalid value for --input-file: - must hold an object of input values "
            "(see python -m eclflow run --help)\n",
        ),
    ],
)
def test_a_closed_stdin_reads_as_empty(args: list[str], says: str) -> None:
    """`eclflow run … --inputs - <&-` failed with `AttributeError: 'NoneType' object has no
    attribute 'buffer'` (Python's sys.stdin is None then)."""
    r = _cli_with(closed=0)("run", WF, *args, "-m", "mock/x", "--no-journal")
    assert (r.returncode, r.stderr) == (2, says)


def test_a_closed_stdout_is_written_to_nowhere(tmp_path: Path) -> None:
    """`eclflow steps >&-` (and runs, graph, validate --json) failed with `AttributeError:
    'NoneType' object has no attribute 'isatty'`, and a batch's result lines went to stderr:
    what click's echo does, writing nothing, is now what every command does."""
    run = _cli_with(closed=1)
    for args in (["steps"], ["graph", WF], ["validate", WF, "--json"]):
        r = run(*args)
        assert (r.returncode, r.stderr) == (0, ""), args
    items = tmp_path / "items.jsonl"
    items.write_text('{"topic": "kelp"}\n')
    script = tmp_path / "m.yaml"
    script.write_text('generate: "A draft."\ncritique: {content: {decision: pass, critique: ok}}\n')
    r = run("run", WF, "--inputs", str(items), "-m", "mock/x", "--mock-responses", str(script),
            "--no-journal", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("1/1 completed, 0 failed"), r.stderr  # (no result line)


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_an_output_that_cannot_hold_unicode_gets_escapes(encoding: str) -> None:
    """With PYTHONIOENCODING=latin-1 (or a C locale outside Python's UTF-8 mode) `eclflow
    run --help` printed a traceback and `eclflow graph` said `UnicodeEncodeError: 'latin-1'
    codec can't encode character '\\u25cf'`: a character the output cannot hold is written
    as its escape."""
    run = _cli_with(PYTHONIOENCODING=encoding)
    r = run("run", "--help")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith("Usage: ")
    r = run("graph", WF)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert "\\u25cf" in r.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["run", WF, "-i", "topic=x", "--engine", "restate", "--restate-url", "http://[::1"],
            "--restate-url (or ECLFLOW_RESTATE_URL) 'http://[::1' is not a URL (Invalid IPv6 "
            "URL): give http://HOST:PORT",
        ),
        (
            ["runs", "--engine", "restate", "--restate-admin-url", "http://127.0.0.1:99999"],
            "--restate-admin-url (or ECLFLOW_RESTATE_ADMIN_URL) 'http://127.0.0.1:99999' is not "
            "a URL (Port out of range 0-65535): give http://HOST:PORT",
        ),
    ],
)
def test_a_restate_url_that_is_no_url_names_its_option(args: list[str], says: str) -> None:
    """They said `InvalidURL: Invalid port: ':1'` and `ExceptionGroup: unhandled errors in a
    TaskGroup (1 sub-exception)`, as internal errors (exit 1)."""
    r = cli(*args)
    assert (r.returncode, r.stderr) == (2, f"error: Configuration error: {says}\n")


def test_an_input_value_that_holds_itself_is_one_line() -> None:
    """`-i 'xs=&a [*a]'` (a YAML list that holds itself) where the inputs declare a list was
    `RecursionError: maximum recursion depth exceeded`, an internal error."""
    from eclflow.cli.run import parse_inputs

    schema = {"properties": {"xs": {"type": "array"}}}
    with pytest.raises(click.BadParameter, match="xs: its values nest too deep"):
        parse_inputs(("xs=&a [*a]",), None, schema)


def test_json_on_an_output_that_cannot_hold_unicode_is_still_json(tmp_path: Path) -> None:
    """With PYTHONIOENCODING=latin-1 `run --json` wrote a reply's 😀 as Python's escape
    `\\U0001f600`, which no JSON reader takes (`Invalid \\escape`), and exited 0: --json
    writes what the output cannot hold as JSON's own escapes, all of it ASCII."""
    script = tmp_path / "m.yaml"
    script.write_text(
        'generate: "kelp \\u2713 \\U0001f600"\ncritique: {content: {decision: pass, critique: ok}}\n'
    )
    r = _cli_with(PYTHONIOENCODING="latin-1")(
        "run", WF, "-i", "topic=x", "-m", "mock/x", "--mock-responses", str(script),
        "--no-journal", "--json",
    )  # fmt: skip
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.isascii(), r.stdout
    assert json.loads(r.stdout)["output"]["final_text"] == "kelp \u2713 \U0001f600"


@pytest.mark.parametrize("command", ["status", "resume"])
def test_a_run_id_no_restate_run_can_have_is_not_found(command: str) -> None:
    """`status $'\\xff\\xfe' --engine restate` (and resume) said `UnicodeEncodeError: … surrogates
    not allowed`, an internal error (exit 1), as the journal's commands did: no run has an id
    that is not UTF-8 text, whether or not Restate is up (here it is not)."""
    r = cli(command, "\udcff\udcfeab", "--engine", "restate", "--restate-url", "http://127.0.0.1:9",
            "--restate-admin-url", "http://127.0.0.1:9")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: Run not found: \\udcff\\udcfeab"), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
