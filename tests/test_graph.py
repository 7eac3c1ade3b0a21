"""Drawings of workflows (Mermaid, DOT, terminal, SVG/PNG), `eclflow graph`, and the examples.

The examples run end to end through the real engine with the scripted `mock/` model; the plugin
example's step type is registered in-process (no pip install in tests).
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import pty
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CRITIQUE_REVISE, EXAMPLES, ROOT

from eclflow.engine.runner import run
from eclflow.errors import ConfigError
from eclflow.graph import Plan, compile_plan, render_image, to_ascii, to_dot, to_mermaid
from eclflow.graph.render import DOT_MISSING
from eclflow.spec import load, load_text

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz's `dot` is not installed")

CONDITIONAL = EXAMPLES / "conditional_routing.yaml"
PARALLEL = EXAMPLES / "parallel_branches.yaml"
PLUGIN_DIR = EXAMPLES / "plugin"
CUSTOM_STEP = PLUGIN_DIR / "custom_step.yaml"

HEADER = "# yaml-language-server: $schema=../schemas/workflow.schema.json\neclflow: 1\n"


def plan_of(path: Path) -> Plan:
    return compile_plan(load(path))


def plan_text(text: str, tmp_path: Path) -> Plan:
    return compile_plan(load_text(HEADER + text, file="t.yaml", base_dir=tmp_path))


LOOP_WITH_BODY = """
id: body
steps:
  - {id: draft, type: llm, template: "Write about {{ topic }}", with: {topic: "{{ input.topic }}"}}
  - id: polish
    type: llm
    depends_on: [draft]
    template: "Polish {{ text }}"
    with: {text: "{{ steps.draft.output.text }}"}
  - {id: check, type: critique, depends_on: [polish], with: {draft: "{{ steps.polish.output.text }}"}}
  - id: fix
    type: llm
    depends_on: [check]
    revision_source: check
    template: "Fix {{ draft }}: {{ feedback }}"
    with: {draft: "{{ steps.draft.output.text }}", feedback: "{{ loop.feedback }}"}
  - {id: publish, type: template, depends_on: [draft], template: "{{ t }}", with: {t: "{{ steps.draft.output.text }}"}}
transitions:
  - {type: revision_loop, validator: check, reviser: fix, target: draft, max_iterations: 1, on_exhausted: accept}
output: {text: "{{ steps.publish.output.text }}"}
"""


# --- Mermaid ----------------------------------------------------------------------------------


def test_mermaid_draws_the_bundled_loop_as_a_dotted_back_edge_with_its_bound() -> None:
    text = to_mermaid(plan_of(CRITIQUE_REVISE))
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "flowchart TD"
    assert 'generate["generate<br/>generate"]' in lines
    assert 'critique["critique<br/>critique"]' in lines
    assert "generate --> critique" in lines
    assert 'critique -. "revise: ≤ 3 revisions" .-> generate' in lines
    assert "critique -.-> revise" in lines
    assert "revise -.-> generate" in lines
    # the reviser is reached only through the loop, never by a solid edge
    assert "critique --> revise" not in lines


def test_mermaid_labels_conditional_edges_with_their_condition() -> None:
    lines = [line.strip() for line in to_mermaid(plan_of(CONDITIONAL)).splitlines()]
    assert 'classify -- "when: steps.classify.output.long" --> long_answer' in lines
    assert 'classify -- "when: not steps.classify.output.long" --> short_answer' in lines
    assert "long_answer --> answer" in lines
    assert "short_answer --> answer" in lines


def test_mermaid_node_ids_are_never_keywords_nor_each_other(tmp_path: Path) -> None:
    """`interpolate` and `_self` failed Mermaid's parser; steps `end` and `step_end` were drawn
    as one node."""
    ids = ["interpolate", "_self", "_top", "end", "step_end", "step_step_end", "plain"]
    steps = "\n".join(
        f"  - {{id: {sid}, type: template, template: x"
        + (f", depends_on: [{ids[i - 1]}]}}" if i else "}")
        for i, sid in enumerate(ids)
    )
    nodes = [
        line.split("[")[0].strip()
        for line in to_mermaid(plan_text(f"id: m\nsteps:\n{steps}\n", tmp_path)).splitlines()
        if '["' in line
    ]
    assert nodes == [
        "step_interpolate",
        "step__self",
        "step__top",
        "step_end",
        "step_step_end",
        "step_step_step_end",
        "plain",
    ]


def test_mermaid_escapes_quotes_and_renames_reserved_ids(tmp_path: Path) -> None:
    plan = plan_text(
        """
id: esc
steps:
  - {id: kind, type: llm, template: "Classify {{ q }}", with: {q: "{{ input.q }}"}}
  - {id: end, type: template, template: "done", with: {k: "{{ steps.kind.output.text }}"}}
transitions:
  - {type: conditional, from: kind, to: end, when: 'steps.kind.output.text == "a<b>|c"'}
""",
        tmp_path,
    )
    text = to_mermaid(plan)
    assert 'step_end["end<br/>template"]' in text
    edge = 'kind -- "when: steps.kind.output.text == #quot;a#lt;b#gt;#124;c#quot;" --> step_end'
    assert edge in text
    # no raw quote inside any quoted label
    for line in text.splitlines():
        if '"' in line:
            inner = line.split('"', 1)[1].rsplit('"', 1)[0]
            assert '"' not in inner, line


def test_mermaid_singular_bound_and_accept_and_loop_body(tmp_path: Path) -> None:
    text = to_mermaid(plan_text(LOOP_WITH_BODY, tmp_path))
    assert 'check -. "revise: ≤ 1 revision, then accept" .-> draft' in text
    assert "check -.-> fix" in text and "fix -.-> draft" in text
    assert "draft --> polish" in text and "polish --> check" in text


# --- DOT --------------------------------------------------------------------------------------


def test_dot_draws_the_loop_edge_dashed_unconstrained_and_labelled() -> None:
    text = to_dot(plan_of(CRITIQUE_REVISE))
    assert text.startswith('digraph "critique-revise" {')
    assert '"generate" -> "critique";' in text
    loop = next(line for line in text.splitlines() if '"critique" -> "generate"' in line)
    assert 'style="dashed"' in loop
    assert "constraint=false" in loop
    assert 'label="≤ 3 revisions"' in loop
    assert '"critique" -> "revise" [style="dotted"];' in text
    assert '"revise" -> "generate" [style="dotted", constraint=false];' in text
    assert '"generate" [label="generate\\ngenerate"];' in text


def test_dot_labels_conditional_edges_and_escapes(tmp_path: Path) -> None:
    text = to_dot(plan_of(CONDITIONAL))
    assert '"classify" -> "long_answer" [label="when: steps.classify.output.long"];' in text
    plan = plan_text(
        """
id: esc
name: 'A "quoted" \\ name'
steps:
  - {id: a, type: llm, template: "x {{ q }}", with: {q: "{{ input.q }}"}}
  - {id: b, type: template, template: "y", with: {k: "{{ steps.a.output.text }}"}}
transitions:
  - {type: conditional, from: a, to: b, when: 'steps.a.output.text == "\\\\n"'}
""",
        tmp_path,
    )
    text = to_dot(plan)
    assert 'label="A \\"quoted\\" \\\\ name";' in text
    assert '[label="when: steps.a.output.text == \\"\\\\\\\\n\\""]' in text


@needs_dot
def test_dot_output_with_awkward_labels_is_accepted_by_graphviz(tmp_path: Path) -> None:
    plan = plan_text(
        """
id: esc
name: 'A "quoted" \\ name; with {braces} and <angles>'
steps:
  - {id: a, type: llm, template: "x {{ q }}", with: {q: "{{ input.q }}"}}
  - {id: b, type: template, template: "y", with: {k: "{{ steps.a.output.text }}"}}
transitions:
  - {type: conditional, from: a, to: b, when: 'steps.a.output.text == "a\\"}b"'}
""",
        tmp_path,
    )
    svg = render_image(to_dot(plan), "svg").decode()
    assert "<svg" in svg
    assert "quoted" in svg and "braces" in svg


# --- terminal -------------------------------------------------------------------------------


def test_ascii_is_deterministic_and_shows_every_step_and_the_loop() -> None:
    first = str(to_ascii(plan_of(CRITIQUE_REVISE)))
    again = str(to_ascii(plan_of(CRITIQUE_REVISE)))
    assert first == again
    for sid in ("generate", "critique", "revise"):
        assert sid in first
    assert "≤ 3 revisions" in first
    assert "then the run fails" in first
    assert first.index("stage 1") < first.index("generate") < first.index("stage 2")
    assert "after generate" in first


def test_ascii_shows_conditions_parallel_stages_and_loop_bodies(tmp_path: Path) -> None:
    cond = str(to_ascii(plan_of(CONDITIONAL)))
    assert "only when steps.classify.output.long" in cond
    assert "only when not steps.classify.output.long" in cond
    assert "otherwise skipped" in cond
    par = str(to_ascii(plan_of(PARALLEL)))
    assert "stage 1 (2 in parallel)" in par
    assert "after pros, cons" in par
    body = str(to_ascii(plan_text(LOOP_WITH_BODY, tmp_path)))
    assert "then polish, check again" in body
    assert "≤ 1 revision (2 runs of check at most), then the last version is accepted" in body
    # publish hangs on the loop's target, so it waits for the whole loop
    assert "publish [template]  after check (its loop's end)" in body


# --- images -----------------------------------------------------------------------------------


@needs_dot
def test_svg_and_png_through_dot() -> None:
    dot_text = to_dot(plan_of(CRITIQUE_REVISE))
    svg = render_image(dot_text, "svg")
    assert svg.startswith(b"<?xml") or b"<svg" in svg
    assert "≤ 3 revisions".encode() in svg
    png = render_image(dot_text, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_missing_dot_is_a_config_error_saying_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        render_image(to_dot(plan_of(CRITIQUE_REVISE)), "svg")
    message = str(info.value)
    assert "Graphviz's `dot` program is not installed" in message
    assert "apt install graphviz" in message and "brew install graphviz" in message


def test_render_image_refuses_other_formats() -> None:
    with pytest.raises(ValueError):
        render_image("digraph {}", "gif")


# --- the command line ---------------------------------------------------------------------------


def graph(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "eclflow", "graph", *args],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_cli_default_is_the_terminal_drawing() -> None:
    proc = graph(str(CRITIQUE_REVISE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == str(to_ascii(plan_of(CRITIQUE_REVISE)))


@pytest.mark.parametrize(
    ("fmt", "render"), [("mermaid", to_mermaid), ("dot", to_dot), ("ascii", None)]
)
def test_cli_text_formats_to_stdout_and_to_a_file(fmt: str, render: Any, tmp_path: Path) -> None:
    expected = render(plan_of(CONDITIONAL)) if render else str(to_ascii(plan_of(CONDITIONAL)))
    proc = graph(str(CONDITIONAL), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == expected
    out = tmp_path / f"g.{fmt}"
    proc = graph(str(CONDITIONAL), "--format", fmt, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    assert out.read_text(encoding="utf-8") == expected


@needs_dot
def test_cli_svg_and_png_to_files_and_to_a_pipe(tmp_path: Path) -> None:
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    assert graph(str(CRITIQUE_REVISE), "-f", "svg", "-o", str(svg)).returncode == 0
    text = svg.read_text(encoding="utf-8")
    assert text.startswith("<?xml") or "<svg" in text
    assert graph(str(CRITIQUE_REVISE), "-f", "png", "-o", str(png)).returncode == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    piped = graph(str(CRITIQUE_REVISE), "-f", "png")  # stdout is a pipe, not a terminal
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == png.read_bytes()


def test_cli_binary_format_to_a_terminal_asks_for_o() -> None:
    main, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "eclflow", "graph", str(CRITIQUE_REVISE), "-f", "svg"],
            stdout=secondary,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=120,
        )
    finally:
        os.close(secondary)
        os.close(main)
    assert proc.returncode == 2
    assert b"use -o FILE" in proc.stderr
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_cli_without_dot_says_how_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no `dot` on the PATH
    proc = graph(str(CRITIQUE_REVISE), "-f", "svg", "-o", str(tmp_path / "g.svg"), env=env)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1
    assert DOT_MISSING in err
    assert "Traceback" not in err
    assert not (tmp_path / "g.svg").exists()


def test_cli_invalid_workflow_prints_the_validate_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER
        + "id: bad\nsteps:\n  - {id: a, type: genrate, with: {topic: x}}\n"
        + "  - {id: b, type: llm, depends_on: [zz], template: hi}\n"
    )
    proc = graph(str(bad))
    assert proc.returncode == 1
    assert proc.stdout == b""
    validate = subprocess.run(
        [sys.executable, "-m", "eclflow", "validate", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    diagnostics = [line for line in validate.stdout.splitlines() if line.startswith(str(bad))]
    diagnostics = [d for d in diagnostics if ": E" in d or ": W" in d]
    assert len(diagnostics) == 2
    assert proc.stderr.decode().splitlines() == diagnostics
    assert "E202" in diagnostics[0] and "did you mean 'generate'" in diagnostics[0]
    assert "E203" in diagnostics[1]


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = graph(str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1
    assert "nope.yaml" in err and "no such file" in err


def test_cli_directory_is_a_usage_error_as_for_run(tmp_path: Path) -> None:
    proc = graph(str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().strip() == (
        f"error: {tmp_path} is a directory: give one workflow file in it"
    )


def test_cli_unwritable_output_is_one_line(tmp_path: Path) -> None:
    proc = graph(str(CRITIQUE_REVISE), "-f", "dot", "-o", str(tmp_path / "no" / "dir" / "g.dot"))
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err
    # a name longer than the file system takes was `OSError: [Errno 36] File name too long`,
    # an internal error (exit 1), with or without --format
    long = str(tmp_path / ("g" * 300 + ".svg"))
    for args in (["-o", long], ["-o", long, "-f", "svg"]):
        proc = graph(str(CRITIQUE_REVISE), *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.decode() == f"error: cannot write {long}: File name too long\n"


@pytest.mark.parametrize("fmt", ["ascii", "mermaid", "dot"])
def test_cli_graph_imports_neither_litellm_nor_peewee(fmt: str) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-X", "importtime", "-m", "eclflow", "graph"),
            *(str(CRITIQUE_REVISE), "--format", fmt),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eclflow.graph.plan" in proc.stderr  # importtime did report the imports
    assert "litellm" not in proc.stderr
    assert "peewee" not in proc.stderr


# --- the examples -----------------------------------------------------------------------------


def test_every_top_level_example_validates_on_a_fresh_install() -> None:
    files = sorted(glob.glob(str(EXAMPLES / "*.yaml")))
    assert {Path(f).name for f in files} >= {"conditional_routing.yaml", "parallel_branches.yaml"}
    proc = subprocess.run(
        [sys.executable, "-m", "eclflow", "validate", *files],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 invalid (0 errors, 0 warnings)" in proc.stdout


def test_examples_start_with_the_schema_comment_and_format_version() -> None:
    for path in [*EXAMPLES.glob("*.yaml"), CUSTOM_STEP]:
        lines = path.read_text(encoding="utf-8").splitlines()
        schema = os.path.relpath(ROOT / "schemas" / "workflow.schema.json", path.parent)
        assert lines[0] == f"# yaml-language-server: $schema={schema}", path
        assert (path.parent / schema).is_file()
        assert lines[1] == "eclflow: 1", path


LONG = {"content": {"long": True, "reason": "needs detail"}}
SHORT = {"content": {"long": False, "reason": "a fact"}}


def statuses(result: Any) -> dict[str, str]:
    return {s.key: s.status for s in result.steps}


async def test_conditional_example_takes_the_long_branch() -> None:
    result = await run(
        CONDITIONAL,
        {"question": "How do tides work?"},
        model="mock/x",
        mock_responses=[LONG, "Tides come from the Moon's pull, in detail."],
    )
    assert result.status == "completed", result.error
    assert statuses(result) == {
        "classify": "succeeded",
        "long_answer": "succeeded",
        "short_answer": "skipped",
        "answer": "succeeded",
    }
    assert result.output == {"answer": "Tides come from the Moon's pull, in detail.", "long": True}


async def test_conditional_example_takes_the_short_branch_with_its_mock_script() -> None:
    result = await run(
        CONDITIONAL,
        {"question": "Why is the sky blue?"},
        model="mock/x",
        mock_responses=EXAMPLES / "mock" / "conditional_routing.yaml",
    )
    assert result.status == "completed", result.error
    assert statuses(result)["long_answer"] == "skipped"
    assert statuses(result)["short_answer"] == "succeeded"
    assert result.output["long"] is False
    assert result.output["answer"].startswith("Sunlight scatters")


async def test_conditional_example_fails_when_the_classifier_breaks_its_schema() -> None:
    result = await run(
        CONDITIONAL,
        {"question": "Why?"},
        model="mock/x",
        mock_responses=[{"content": {"reason": "no decision"}}] * 3,
    )
    assert result.status == "failed"
    assert result.failed_step == "classify"
    assert "long" in (result.error or "")
    # a reply that breaks the schema is retried: the model may do better
    assert "may do better on retry" in (result.error or "")
    assert result.steps[0].attempts == 3


async def test_parallel_example_joins_both_branches() -> None:
    plan = plan_of(PARALLEL)
    assert plan.generations == (("pros", "cons"), ("verdict",))
    result = await run(
        PARALLEL,
        {"proposal": "A four-day work week"},
        model="mock/x",
        mock_responses=EXAMPLES / "mock" / "parallel_branches.yaml",
    )
    assert result.status == "completed", result.error
    assert statuses(result) == {"pros": "succeeded", "cons": "succeeded", "verdict": "succeeded"}
    assert result.output["pros"].startswith("- Rested people")
    assert result.output["cons"].startswith("- Harder to cover")
    assert result.output["verdict"].startswith("Worth a time-boxed trial")
    assert [s.key for s in result.steps][-1] == "verdict"


# --- the plugin example -----------------------------------------------------------------------


@pytest.fixture
def word_count(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """The plugin's step type, imported from examples/plugin and registered in this process."""
    from eclflow.steps.registry import default_registry, register

    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.delitem(sys.modules, "eclflow_example_plugin", raising=False)
    import eclflow_example_plugin

    registry = default_registry()
    before = registry._types.get("word_count")
    cls = register(eclflow_example_plugin.WordCountStep)
    try:
        yield cls
    finally:
        if before is None:
            registry._types.pop("word_count", None)
        else:
            registry._types["word_count"] = before


def test_plugin_declares_its_entry_point() -> None:
    meta = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    eps = meta["project"]["entry-points"]["eclflow.steps"]
    assert eps == {"word_count": "eclflow_example_plugin:WordCountStep"}


def test_plugin_entry_point_value_loads_the_step_class(word_count: type) -> None:
    from eclflow.steps import Step

    ep = importlib.metadata.EntryPoint(
        name="word_count", value="eclflow_example_plugin:WordCountStep", group="eclflow.steps"
    )
    cls = ep.load()
    assert cls is word_count
    assert issubclass(cls, Step) and cls.type_name == "word_count" and not cls.uses_model


def test_plugin_workflow_is_invalid_without_the_plugin() -> None:
    installed = any(
        ep.name == "word_count" for ep in importlib.metadata.entry_points(group="eclflow.steps")
    )
    if installed:
        pytest.skip("the example plugin is installed in this environment")
    proc = subprocess.run(
        [sys.executable, "-m", "eclflow", "validate", str(CUSTOM_STEP)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "E202 unknown step type 'word_count'" in proc.stdout


async def test_plugin_workflow_runs_with_the_registered_type(word_count: type) -> None:
    draft = "Tide pools are small worlds left behind by the sea."
    result = await run(CUSTOM_STEP, {"topic": "tide pools"}, model="mock/x", mock_responses=[draft])
    assert result.status == "completed", result.error
    assert statuses(result) == {"generate": "succeeded", "count": "succeeded"}
    count = next(s for s in result.steps if s.step_id == "count")
    assert count.output == {
        "words": 10,
        "characters": len(draft),
        "lines": 1,
        "within_limit": True,
    }
    assert count.calls == 0  # no model involved
    assert result.output == {"draft": draft, "words": 10, "within_limit": True}


async def test_plugin_workflow_with_its_mock_script_and_a_word_limit(
    word_count: type, tmp_path: Path
) -> None:
    wf = load(CUSTOM_STEP)
    assert str(to_ascii(compile_plan(wf))).count("[word_count]") == 1
    text = CUSTOM_STEP.read_text(encoding="utf-8").replace("max_words: 120", "max_words: 5")
    short = tmp_path / "custom_step.yaml"
    short.write_text(text, encoding="utf-8")
    result = await run(
        short,
        {"topic": "tide pools"},
        model="mock/x",
        mock_responses=EXAMPLES / "mock" / "custom_step.yaml",
    )
    assert result.status == "completed", result.error
    assert result.output["within_limit"] is False
    assert result.output["words"] > 5


def test_cli_output_format_follows_the_file_extension(tmp_path: Path) -> None:
    out = tmp_path / "g.mmd"
    proc = graph(str(CRITIQUE_REVISE), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == to_mermaid(plan_of(CRITIQUE_REVISE))
    # a .png is drawn as a PNG (here: asks for Graphviz), never ASCII written into it
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = graph(str(CRITIQUE_REVISE), "-o", str(tmp_path / "g.png"), env=env)
    assert proc.returncode == 2 and DOT_MISSING in proc.stderr.decode()
    assert not (tmp_path / "g.png").exists()


def test_cli_output_that_contradicts_format_or_is_no_file_is_one_line(tmp_path: Path) -> None:
    for args, words in [
        (("-f", "dot", "-o", str(tmp_path / "g.png")), "named like a png file"),
        (("-o", ""), "-o needs a file name"),
        (("-o", str(tmp_path)), "is a directory"),
    ]:
        proc = graph(str(CRITIQUE_REVISE), *args)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1, err
        assert words in err, err
    assert not (tmp_path / "g.png").exists()


def test_cli_output_dash_is_standard_output(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eclflow", "graph", str(CRITIQUE_REVISE), "-o", "-"],
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == str(to_ascii(plan_of(CRITIQUE_REVISE)))
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(("out", "says"), [("svg", "write -f svg"), ("json", "-f is one of")])
def test_o_with_a_format_name_is_refused_not_written_to_a_file_of_that_name(
    out: str, says: str, tmp_path: Path
) -> None:
    """`graph -o json` (as `status -o json` means a format) wrote an ASCII drawing to a file
    named `json` and exited 0."""
    r = subprocess.run(
        [sys.executable, "-m", "eclflow", "graph", str(CRITIQUE_REVISE), "-o", out],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: -o names the file to write, not a format: {says}")
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / out).exists()


def test_o_never_overwrites_the_workflow_nor_writes_ascii_into_an_image(tmp_path: Path) -> None:
    """`graph w.yaml -o w.yaml` drew over the workflow; `-o g.pdf` wrote ASCII into it."""
    wf = tmp_path / "w.yaml"
    wf.write_text(CRITIQUE_REVISE.read_text())

    def graph(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eclflow", "graph", *args],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip

    for out in ("w.yaml", f"{tmp_path}/../{tmp_path.name}/w.yaml"):
        r = graph("w.yaml", "-o", out)
        assert (r.returncode, r.stderr) == (
            2,
            f"error: -o {out} is the workflow file itself: give another file name\n",
        )
    assert wf.read_text() == CRITIQUE_REVISE.read_text()
    r = graph("w.yaml", "-o", "g.pdf")
    assert (r.returncode, r.stderr) == (
        2,
        "error: eclflow cannot draw .pdf files: name it g.svg or g.png, or give --format\n",
    )
    assert not (tmp_path / "g.pdf").exists()
    assert graph("w.yaml", "-o", "g.out").returncode == 0  # a name of its own: ASCII
