"""The built-in step types: generate, critique, revise, llm and template."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from .. import expr
from ..errors import TemplateError, ValidationError
from ..llm.base import Message, utf8_text
from .base import Step, StepContext, StepResult

MAX_TOPIC = 500
MAX_DRAFT = 2000

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(?P<body>.*?)\n?\s*```\s*$", re.DOTALL)


@lru_cache(maxsize=64)
def bundled_template(name: str) -> str:
    """Text of a template shipped with eclflow (`generate.j2`, ...)."""
    return resources.files("eclflow").joinpath("templates", name).read_text(encoding="utf-8")


@lru_cache(maxsize=256)
def _read_prompt(path: Path) -> str:
    """A prompt file's text (newlines as text mode reads them), at most MAX_PROMPT_BYTES: one
    that grew past it since the workflow was checked is not read whole, nor sent."""
    from ..spec.loader import PromptTooLarge, read_prompt_bytes

    try:
        data = read_prompt_bytes(path)
    except PromptTooLarge as e:
        raise TemplateError(str(e)) from None
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def strip_fences(text: str) -> str:
    """Remove a Markdown code fence around a model reply (```json … ```)."""
    m = _FENCE.match(text)
    return m.group("body").strip() if m else text.strip()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _check_filled(name: str, value: Any) -> None:
    if value is None or not str(value).strip():
        raise ValidationError(f"{name.capitalize()} cannot be empty", field=name)


def _check_draft(output: Any, config: Mapping[str, Any], *, empty: str, long: str) -> None:
    """A draft is non-blank and at most `config.max_chars` (default 2000) characters."""
    draft = _text(output.get("draft") if isinstance(output, Mapping) else None)
    if not draft.strip():
        raise ValidationError(f"{empty} is empty", field="draft")
    limit = int(config.get("max_chars", MAX_DRAFT))
    if len(draft) > limit:
        raise ValidationError(f"{long} too long: {len(draft)} chars (max {limit})", field="draft")


class PromptStep(Step):
    """A step whose user prompt is a Jinja template: inline, a file, or a bundled default."""

    uses_model: ClassVar[bool] = True
    default_system: ClassVar[str | None] = None
    default_max_tokens: ClassVar[int] = 1024

    def prompt_source(self) -> str:
        if self.spec.template is not None:
            return self.spec.template
        if self.spec.prompt is not None:
            return _read_prompt(self.spec.prompt)
        if self.default_template is not None:
            return bundled_template(self.default_template)
        raise ValidationError(
            f"step '{self.id}' has no prompt: give it `template:` or `prompt:`", field="prompt"
        )

    @cached_property
    def _prompt_file(self) -> str | None:
        return _file_of(self.spec)

    # The inputs `check_input` knows; each is checked alone, so that `eclflow validate` can
    # check the ones a file writes as they are with the same code as a run.
    checked_inputs: ClassVar[tuple[str, ...]] = ()

    def check_input(self, name: str, value: Any) -> None:
        """Raise `ValidationError` when `value` cannot be this step's input `name`."""

    def validate_input(self, input: Mapping[str, Any]) -> None:
        if not self.checked_inputs:  # a plugin's prompt step: its input_schema, as any step's
            super().validate_input(input)
            return
        required = self.input_schema.get("required", ())
        for name in self.checked_inputs:
            if name in input or name in required:
                self.check_input(name, input.get(name))

    def validate_given(self, given: Mapping[str, Any]) -> None:
        if not self.checked_inputs:
            super().validate_given(given)
            return
        for name in self.checked_inputs:
            if name in given:
                self.check_input(name, given[name])

    def prompt_variables(self, input: Mapping[str, Any]) -> dict[str, Any]:
        """The step's input, and `max_revisions` and `config` unless `with:` binds them."""
        return {"max_revisions": self.max_revisions, "config": dict(self.spec.config), **input}

    def messages(self, input: Mapping[str, Any]) -> list[Message]:
        variables = self.prompt_variables(input)
        user = expr.render_string(self.prompt_source(), variables, self._prompt_file)
        if not user.strip():  # (a model asked nothing answers anyway, and is paid for it)
            where = f" ({self._prompt_file})" if self._prompt_file else ""
            raise TemplateError(
                f"the prompt of step '{self.id}'{where} renders to nothing: check the "
                "values under `with:` and the template's `{% if %}` blocks"
            )
        system_source = self.spec.system if self.spec.system is not None else self.default_system
        out = []
        if system_source:
            out.append(Message("system", expr.render_string(system_source, variables)))
        out.append(Message("user", user))
        return out

    async def call_model(
        self,
        ctx: StepContext,
        input: Mapping[str, Any],
        json_schema: Mapping[str, Any] | None = None,
    ) -> str:
        config = self.spec.config
        stop = config.get("stop", ())
        response = await ctx.complete(
            self.messages(input),
            max_tokens=int(config.get("max_tokens", self.default_max_tokens)),
            temperature=config.get("temperature"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),  # one string: one stop
            json_schema=json_schema,
        )
        return response.content.strip()


class GenerateStep(PromptStep):
    type_name = "generate"
    description = "Write a first draft about a topic."
    default_template = "generate.j2"
    default_system = "You are a content generator. Write clear paragraphs."
    default_max_tokens = 300  # about 1200-2000 characters: a draft stays under 2000
    input_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["topic"],
        "properties": {"topic": {"type": "string"}},
    }
    output_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["draft"],
        "properties": {"draft": {"type": "string"}},
    }

    checked_inputs = ("topic",)

    def check_input(self, name: str, value: Any) -> None:
        topic = _text(value)
        if not topic.strip():
            raise ValidationError("Topic cannot be empty", field="topic")
        if len(topic) > MAX_TOPIC:
            raise ValidationError(f"Topic is too long (max {MAX_TOPIC} characters)", field="topic")

    def validate_output(self, output: Any) -> None:
        _check_draft(output, self.spec.config, empty="Generated draft", long="Draft")
        self.check_workflow_schema(output)

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        return StepResult.success({"draft": await self.call_model(ctx, input)})


CRITIQUE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "enum": ["pass", "revise"]},
        "critique": {"type": "string"},
        "feedback": {"type": "string"},
    },
    "required": ["decision", "critique"],
}


def _file_of(spec: Any) -> str | None:
    """How an error names the step's prompt file (None for an inline or bundled template)."""
    return str(spec.prompt) if spec.template is None and spec.prompt is not None else None


_DECODER = json.JSONDecoder(strict=False)  # (json.loads with an option makes one every call)


def _loads(text: str) -> Any:
    """A model's JSON reply; a `\\ud800` escape in it (half a surrogate pair) is U+FFFD.
    A line break written as it is inside a string (small models do) is taken as one. Nested
    too deeply to read (a RecursionError) is a JSONDecodeError that says so."""
    try:
        data = _DECODER.decode(text)
        if "\\u" in text and re.search(r"\\u[dD][89a-fA-F]", text):
            data = _utf8(data)
    except RecursionError:
        raise json.JSONDecodeError(
            f"nested more than about {sys.getrecursionlimit()} levels deep", text, 0
        ) from None
    return data


def _utf8(value: Any) -> Any:
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {_utf8(k): _utf8(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8(v) for v in value]
    return value


def parse_critique(reply: str) -> dict[str, Any]:
    """Parse a critique reply into {decision, critique, feedback}; ValueError says what is wrong."""
    body = strip_fences(reply)
    try:
        data = _loads(body)
    except json.JSONDecodeError as e:
        # a model sometimes wraps the object in prose: take the outermost {...}
        start, end = body.find("{"), body.rfind("}")
        if start == -1 or end <= start:
            raise ValueError(f"Failed to parse critique JSON: {e.msg}") from None
        try:
            data = _loads(body[start : end + 1])
        except json.JSONDecodeError as e2:
            raise ValueError(f"Failed to parse critique JSON: {e2.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("Failed to parse critique JSON: expected an object")
    decision = data.get("decision")
    if not isinstance(decision, str):
        raise ValueError("Missing 'decision' field")
    decision = decision.strip().lower()
    if decision not in ("pass", "revise"):
        raise ValueError(f"Invalid decision value: {data.get('decision')}")
    critique = data.get("critique")
    feedback = data.get("feedback")
    critique = critique.strip() if isinstance(critique, str) else ""
    feedback = feedback.strip() if isinstance(feedback, str) else ""
    if not critique and not feedback:
        raise ValueError("Missing 'critique' field")
    out: dict[str, Any] = {
        "decision": decision,
        "critique": critique or feedback,
        "feedback": feedback or critique,
    }
    if isinstance(data.get("quality_score"), int | float):
        out["quality_score"] = data["quality_score"]
    return out


class CritiqueStep(PromptStep):
    type_name = "critique"
    description = "Judge a draft: pass, or revise with feedback (JSON)."
    default_template = "critique.j2"
    default_system = "You are a writing critic. Be helpful but thorough. Reply with JSON only."
    default_max_tokens = 400
    input_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["draft"],
        "properties": {"draft": {"type": "string"}},
    }
    output_schema: ClassVar[Mapping[str, Any]] = CRITIQUE_SCHEMA

    checked_inputs = ("draft",)

    def check_input(self, name: str, value: Any) -> None:
        _check_filled(name, value)

    def validate_output(self, output: Any) -> None:
        if not _text(output.get("critique") if isinstance(output, Mapping) else None).strip():
            raise ValidationError("Critique cannot be empty", field="critique")
        self.check_workflow_schema(output)

    @cached_property
    def _reply_schema(self) -> Mapping[str, Any]:
        """What the model is asked for: the verdict, and `quality_score` where the workflow's
        own output_schema has it (a grammar built from the verdict alone, as the local model
        decodes with, could never write it)."""
        own = self.spec.output_schema or {}
        score = (own.get("properties") or {}).get("quality_score")
        required = "quality_score" in (own.get("required") or ())
        if score is None and not required:
            return CRITIQUE_SCHEMA
        return {
            **CRITIQUE_SCHEMA,
            "properties": {
                **CRITIQUE_SCHEMA["properties"],
                "quality_score": score if score is not None else {"type": "number"},
            },
            "required": [*CRITIQUE_SCHEMA["required"], *(["quality_score"] if required else [])],
        }

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        reply = await self.call_model(ctx, input, json_schema=self._reply_schema)
        try:
            parsed = parse_critique(reply)
        except ValueError as e:
            return StepResult.failed(
                f"{e} (the model may do better on retry)", retryable=True, output={"reply": reply}
            )
        if parsed["decision"] == "revise":
            return StepResult.needs_revision(parsed, parsed["feedback"])
        return StepResult.success(parsed)


class ReviseStep(PromptStep):
    type_name = "revise"
    description = "Rewrite a draft from a critique's feedback."
    default_template = "revise.j2"
    default_system = "You are a content editor. Improve the text based on feedback."
    default_max_tokens = 300  # about 1200-2000 characters: a draft stays under 2000
    input_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["draft", "feedback"],
        "properties": {
            "draft": {"type": "string"},
            "feedback": {"type": "string"},
            "attempt": {"type": ["integer", "string"]},
        },
    }
    output_schema: ClassVar[Mapping[str, Any]] = GenerateStep.output_schema

    checked_inputs = ("draft", "feedback", "attempt")

    def check_input(self, name: str, value: Any) -> None:
        if name != "attempt":
            _check_filled(name, value)
            return
        try:
            attempt = int(value)
        except (TypeError, ValueError):
            raise ValidationError(
                f"Attempt must be a number, not {value!r}", field="attempt"
            ) from None
        if attempt <= 0:
            raise ValidationError("Attempt number must be positive (1-indexed)", field="attempt")
        if attempt > self.max_revisions:
            raise ValidationError(
                f"Attempt {attempt} exceeds max revisions {self.max_revisions}", field="attempt"
            )

    def validate_output(self, output: Any) -> None:
        _check_draft(output, self.spec.config, empty="Revised draft", long="Revised draft")
        self.check_workflow_schema(output)

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        if "attempt" not in input:
            # `attempt` is optional in `with:`, and the bundled revise.j2 reads it: it is the
            # loop's revision number (1-based), which is what a workflow would bind anyway
            n = ctx.loop.iteration if ctx.loop is not None else ctx.iteration
            input = {**input, "attempt": max(n, 1)}
        return StepResult.success({"draft": await self.call_model(ctx, input)})


class LLMStep(PromptStep):
    """Any prompt → `{text}`, or a JSON object checked against the step's `output_schema`."""

    type_name = "llm"
    description = "Any prompt to a model; text, or JSON checked against output_schema."
    output_schema: ClassVar[Mapping[str, Any]] = {}

    def effective_output_schema(self) -> Mapping[str, Any] | None:
        if self.spec.output_schema is not None:
            return self.spec.output_schema
        return {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        schema = self.spec.output_schema
        reply = await self.call_model(ctx, input, json_schema=schema)
        if schema is None:
            return StepResult.success({"text": reply})
        try:
            data = _loads(strip_fences(reply))
        except json.JSONDecodeError as e:
            return StepResult.failed(
                f"reply is not valid JSON: {e.msg} (the model may do better on retry)",
                retryable=True,
                output={"reply": reply},
            )
        if isinstance(data, dict) and str(data.get("decision", "")).lower() == "revise":
            feedback = data.get("feedback") or data.get("critique") or ""
            return StepResult.needs_revision(data, str(feedback))
        return StepResult.success(data)


class TemplateStep(Step):
    """Render text from a template; no model involved."""

    type_name = "template"
    description = "Render text from a Jinja template (no model)."
    pure = True
    output_schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    }

    def source(self) -> str:
        if self.spec.template is not None:
            return self.spec.template
        if self.spec.prompt is not None:
            return _read_prompt(self.spec.prompt)
        raise ValidationError(
            f"step '{self.id}' needs `template:` or `prompt:` to render", field="template"
        )

    def validate_output(self, output: Any) -> None:
        """Only a workflow's own `output_schema` to check: `execute` always makes `{text}`."""
        self.check_workflow_schema(output)

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        variables = {"config": self._config, **input}  # (what `with:` binds wins)
        text = expr.render_string(self.source(), variables, _file_of(self.spec))  # (no model)
        return StepResult.success({"text": text})

    @cached_property
    def _config(self) -> dict[str, Any]:
        return dict(self.spec.config)  # templates only read it (the sandbox is immutable)


BUILTINS: tuple[type[Step], ...] = (GenerateStep, CritiqueStep, ReviseStep, LLMStep, TemplateStep)
