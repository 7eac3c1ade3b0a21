"""An example eclflow plugin: the `word_count` step type.

It counts the words, characters and lines of a text, and with `config: {max_words: N}` says
whether the text fits. It calls no model, so it is cheap, deterministic and never retried.
Installed, it is registered through the `eclflow.steps` entry point (see pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from eclflow.errors import ValidationError
from eclflow.steps import Step, StepContext, StepResult


class WordCountStep(Step):
    """`with: {text: ...}` → `{words, characters, lines, within_limit}`."""

    type_name = "word_count"
    description = "Count the words of a text; optionally check it against config.max_words."
    uses_model = False
    input_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    }
    output_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["words", "characters", "lines", "within_limit"],
        "properties": {
            "words": {"type": "integer", "minimum": 0},
            "characters": {"type": "integer", "minimum": 0},
            "lines": {"type": "integer", "minimum": 0},
            "within_limit": {"type": "boolean"},
        },
    }

    def validate_input(self, input: Mapping[str, Any]) -> None:
        super().validate_input(input)
        limit = self.spec.config.get("max_words")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValidationError(
                f"config.max_words must be a positive integer, not {limit!r}", field="max_words"
            )

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        text = str(input["text"])
        words = len(text.split())
        limit = self.spec.config.get("max_words")
        return StepResult.success(
            {
                "words": words,
                "characters": len(text),
                "lines": len(text.splitlines()),
                "within_limit": limit is None or words <= limit,
            }
        )
