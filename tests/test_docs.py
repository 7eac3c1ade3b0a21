"""The YAML of the documentation stays true: every complete workflow in README.md and
docs/format.md is valid to the real `eclflow validate --strict`, and every part of a file they
show (a `defaults:`, a `steps:` list, …) matches the JSON Schema of those keys."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import ROOT
from ruamel.yaml import YAML

DOCS = ("README.md", "docs/format.md")


@dataclass(frozen=True)
class Block:
    """A ```yaml block of a document: where it starts, its text and what the text holds."""

    doc: str
    line: int
    text: str
    data: Any

    @property
    def complete(self) -> bool:
        """Whether it is a whole workflow file, not a part of one."""
        return isinstance(self.data, dict) and {"eclflow", "id", "steps"} <= self.data.keys()

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def yaml_blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text("utf-8")
    blocks = []
    for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, m.start()) + 2  # (the block's first line, after the fence)
        blocks.append(Block(doc, line, m.group(1), YAML(typ="safe", pure=True).load(m.group(1))))
    return blocks


BLOCKS = [block for doc in DOCS for block in yaml_blocks(doc)]
COMPLETE = [block for block in BLOCKS if block.complete]
PARTS = [block for block in BLOCKS if not block.complete]


def test_the_docs_have_the_blocks_these_tests_check() -> None:
    """The README's workflow and format.md's complete file, which says it is the bundled
    workflow, and format.md's parts of a file."""
    assert [b.doc for b in COMPLETE] == ["README.md", "docs/format.md"]
    assert COMPLETE[1].text == (ROOT / "workflows" / "critique_revise.yaml").read_text("utf-8")
    assert len(PARTS) >= 5


def test_every_complete_workflow_in_the_docs_is_valid(tmp_path: Path) -> None:
    """Each one written to a file of its own, checked by the CLI in one run, warnings too."""
    files = []
    for block in COMPLETE:
        path = tmp_path / f"{Path(block.doc).stem}_{block.line}.yaml"
        path.write_text(block.text, "utf-8")
        files.append(path.name)
    done = subprocess.run(
        [sys.executable, "-m", "eclflow", "validate", "--strict", "--json", *files],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    report = json.loads(done.stdout)
    problems = [
        f"{block}: {d['code']} {d['message']}"
        for block, file in zip(COMPLETE, report["files"], strict=True)
        for d in file["diagnostics"]
    ]
    assert problems == []
    assert (done.returncode, report["valid"]) == (0, True)


def _schema_of(data: Any) -> dict[str, Any]:
    """What a part of a file must match: the workflow schema with no key required at the top,
    or, for items of a list (steps, as in the `steps:` of a file), the schema of `steps`."""
    schema = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text("utf-8"))
    if isinstance(data, list):
        return {"$defs": schema["$defs"], **schema["properties"]["steps"]}
    return {key: value for key, value in schema.items() if key != "required"}


@pytest.mark.parametrize("block", PARTS, ids=str)
def test_every_part_of_a_file_in_the_docs_matches_the_schema(block: Block) -> None:
    """A part of a file shows top-level keys (`defaults:`, `transitions:`) or items of the
    `steps:` list: each is checked against the schema of where it goes, so that a key renamed
    in the format cannot stay in the docs."""
    validator = jsonschema.Draft202012Validator(_schema_of(block.data))
    errors = [
        f"{block}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(block.data)
    ]
    assert errors == []


# --- the docs' examples as a reader may type them ---------------------------------------------

UNQUOTED = """\
eclflow: 1
id: unquoted
model: mock/demo
steps:
  - id: generate
    type: generate
    with:
      topic: {{ input.topic }}
output: {text: "{{ steps.generate.output.draft }}"}
"""


@pytest.mark.parametrize(
    ("value", "col"),
    [
        ("{{ input.topic }}", 14),  # the README's expression, its quotes left out
        ("{{ input.topic | upper }}", 14),
        ("{{ {'a': {'b': input.topic}} }}", 14),  # a mapping in the key: YAML cannot hash it
        ("[{{ input.topic }}]", 15),
    ],
)
def test_an_expression_without_its_quotes_is_located_with_the_fix(
    tmp_path: Path, value: str, col: int
) -> None:
    """Unquoted, `{{ input.topic }}` is YAML's mapping `{input.topic: null}` used as a key:
    it ran as the text "{\\"ordereddict([('input.topic', None)])\\": None}" (validate said
    valid), or failed with `1:1: E100 YAML: unhashable type: 'CommentedMap'`."""
    path = tmp_path / "w.yaml"
    path.write_text(UNQUOTED.replace("{{ input.topic }}", value), "utf-8")
    for command in (["validate"], ["run", "-i", "topic=tide pools"]):
        done = subprocess.run(
            [sys.executable, "-m", "eclflow", *command, str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        shown = done.stdout if command == ["validate"] else done.stderr
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert shown.splitlines()[0] == (
            f"{path}:8:{col}: E100 YAML: a mapping as a key: an expression `{{{{ … }}}}` "
            "not in quotes is a YAML mapping (put the value in quotes: "
            '"{{ … }}", or write it after `|` or `>`)'
        )
        assert "Traceback" not in done.stderr
