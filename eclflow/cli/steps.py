"""`eclflow steps`: the step types this installation knows, built-in and plugins."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click

from . import cli
from ._common import handle_errors, stdout_console


@cli.command("steps")
@click.option("--json", "as_json", is_flag=True, help="Print the types as JSON.")
@handle_errors
def steps_cmd(as_json: bool) -> None:
    """List the registered step types with their inputs and outputs."""
    from ..steps import default_registry
    from ..steps.builtin import LLMStep

    registry = default_registry()
    rows: list[dict[str, Any]] = []
    unsaid: dict[str, str] = {}  # what the table says of a type whose schema names no output
    for name in registry.names():
        cls = registry.get(name)
        unsaid[name] = "text / output_schema" if issubclass(cls, LLMStep) else "any"
        rows.append(
            {
                "type": name,
                "description": cls.description,
                "calls_model": cls.uses_model,
                "inputs": sorted(_schema(cls.input_schema, "properties")),
                "required": list(_schema(cls.input_schema, "required")),
                # `with:` may bind names besides `inputs` (a model step's prompt variables):
                # `llm` and `template` list none and take any (the table's "any")
                "other_inputs": _takes_others(cls.input_schema),
                "outputs": sorted(_schema(cls.output_schema, "properties")),
                "module": cls.__module__,
            }
        )
    for problem in registry.problems:
        click.echo(f"warning: {problem}", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="Step types")
    for col in ("type", "model", "inputs", "outputs", "description"):
        table.add_column(col)
    for r in rows:
        inputs = ", ".join(f"{i}*" if i in r["required"] else i for i in r["inputs"]) or (
            "any" if r["other_inputs"] else "none"
        )
        table.add_row(
            r["type"],
            "yes" if r["calls_model"] else "no",
            inputs,
            ", ".join(r["outputs"]) or unsaid[r["type"]],
            r["description"],
        )
    stdout_console().print(table)


def _schema(schema: Any, key: str) -> Any:
    """`schema[key]` of a step type's schema, empty where the type has none (a plugin's
    `input_schema = None` works in a run: it must not break the listing of every type)."""
    value = schema.get(key) if isinstance(schema, Mapping) else None
    return value if isinstance(value, Mapping | list) else ()


def _takes_others(schema: Any) -> bool:
    """Whether a step type's input takes names its schema does not list: unless the schema
    closes them off (`additionalProperties: false`), they reach the step (and a model step's
    prompt, as variables)."""
    return not (isinstance(schema, Mapping) and schema.get("additionalProperties") is False)
