"""What a step type is: the `Step` base class, its result, its context and its retry policy."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from .._quickinit import quick_init
from ..errors import ValidationError
from ..llm.base import Message

if TYPE_CHECKING:
    from ..llm.base import CompletionResponse
    from ..spec.model import RetrySpec, StepSpec, Workflow


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a step is retried. Delays are in seconds."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 10.0
    multiplier: float = 2.0

    @classmethod
    def default(cls) -> RetryPolicy:
        return cls.exponential(3, 1.0, 10.0)

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1, initial_delay=0.0, max_delay=0.0, multiplier=1.0)

    @classmethod
    def linear(cls, max_attempts: int, delay: float) -> RetryPolicy:
        return cls(max_attempts, delay, delay, 1.0)

    @classmethod
    def exponential(cls, max_attempts: int, initial: float, maximum: float) -> RetryPolicy:
        return cls(max_attempts, initial, maximum, 2.0)

    @classmethod
    def from_spec(cls, spec: RetrySpec) -> RetryPolicy:
        return cls(spec.max_attempts, spec.initial_delay, spec.max_delay, spec.multiplier)

    def delay_for_attempt(self, attempt: int) -> float:
        """Delay before retry number `attempt` (0 → none, then initial·multiplierᵃ⁻¹, capped)."""
        if attempt <= 0:
            return 0.0
        return min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)


Outcome = Literal["success", "needs_revision", "failed"]


@quick_init
@dataclass(frozen=True, slots=True)
class StepResult:
    """What one execution of a step produced."""

    kind: Outcome
    output: Any = None
    feedback: str | None = None
    error: str | None = None
    retryable: bool = False

    @classmethod
    def success(cls, output: Any) -> StepResult:
        return cls("success", output)

    @classmethod
    def needs_revision(cls, output: Any, feedback: str) -> StepResult:
        return cls("needs_revision", output, feedback=feedback)

    @classmethod
    def failed(cls, error: str, retryable: bool = False, output: Any = None) -> StepResult:
        """`output`: what the step got that it could not use (a model's reply that does not
        parse), journaled with the failed attempt for `eclflow show`; never a step's output."""
        return cls("failed", output, error=error, retryable=retryable)

    @property
    def is_success(self) -> bool:
        return self.kind == "success"

    @property
    def is_needs_revision(self) -> bool:
        return self.kind == "needs_revision"

    @property
    def is_failed(self) -> bool:
        return self.kind == "failed"

    @property
    def is_retryable(self) -> bool:
        return self.kind == "failed" and self.retryable

    def unwrap(self) -> Any:
        if self.kind == "needs_revision":
            raise ValueError("called `unwrap()` on NeedsRevision")
        if self.kind == "failed":
            raise ValueError(f"called `unwrap()` on Failed: {self.error}")
        return self.output

    def unwrap_or(self, default: Any) -> Any:
        return self.output if self.kind == "success" else default

    def map(self, fn: Callable[[Any], Any]) -> StepResult:
        if self.kind == "failed":
            return self
        return StepResult(self.kind, fn(self.output), self.feedback)


@quick_init
@dataclass(frozen=True, slots=True)
class LoopState:
    """Where a step stands inside a revision loop (`loop.*` in templates)."""

    iteration: int  # 1-based revision number for the reviser; revisions so far for others
    max_iterations: int
    feedback: str | None = None
    history: tuple[Mapping[str, Any], ...] = ()

    def as_context(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "max_iterations": self.max_iterations,
            "feedback": self.feedback,
            "history": [dict(h) for h in self.history],
        }


Completer = Callable[..., Any]  # async (messages, **options) -> CompletionResponse


@dataclass(slots=True)
class StepContext:
    """Everything a step may use while it executes; one per attempt."""

    run_id: str
    step_id: str
    attempt: int
    model: str | None
    complete_fn: Completer
    logger: logging.LoggerAdapter[logging.Logger] | logging.Logger
    config: Mapping[str, Any] = field(default_factory=dict)
    loop: LoopState | None = None
    iteration: int = 0
    max_revisions: int = 3

    def complete(
        self,
        messages: Sequence[Message | Mapping[str, str]],
        *,
        max_tokens: int = 1024,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        json_schema: Mapping[str, Any] | None = None,
    ) -> Awaitable[CompletionResponse]:
        """Call this step's model (await the result); tokens and cost are accounted to the
        attempt. A message is a `Message` or a mapping `{"role": …, "content": …}`."""
        plain: Sequence[Message]
        if all(type(m) is Message for m in messages):
            plain = cast("Sequence[Message]", messages)
        else:  # a mapping (or a subclass) among them: each made a Message
            plain = [_message(m) for m in messages]
        return self.complete_fn(
            plain,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            json_schema=json_schema,
        )


def _message(m: Any) -> Message:
    if isinstance(m, Message):
        return m
    role = m.get("role", "user") if isinstance(m, Mapping) else None
    if role in ("system", "user", "assistant") and isinstance(m.get("content"), str):
        return Message(role, m["content"])
    raise ValidationError(
        f"a message is a Message or a mapping with a role (system, user or assistant) and "
        f"content (text), not {m!r:.80}"
    )


class Step:
    """Base of every step type. Subclass, set `type_name` and the schemas, implement `execute`.

    One instance is made for each step of a workflow that uses the type, with its `StepSpec`.
    """

    type_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    input_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}
    output_schema: ClassVar[Mapping[str, Any]] = {}
    uses_model: ClassVar[bool] = False
    # Nothing outside the run sees it execute, redoing it costs nothing and it never waits on
    # anything (no model call, no I/O): the run goes on without waiting for its result to be
    # committed, since a crash before the commit only means executing it again, and it runs
    # without the step timeout's timer, which could not cut it short anyway.
    pure: ClassVar[bool] = False
    default_template: ClassVar[str | None] = None  # bundled template file name, if any

    def __init__(self, spec: StepSpec, workflow: Workflow | None = None) -> None:
        self.spec = spec
        self.workflow = workflow

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def name(self) -> str:
        return self.spec.id

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy.from_spec(self.spec.retry)

    @cached_property
    def max_revisions(self) -> int:
        """The bound of the revision loop the step belongs to (as its target, validator or
        reviser), else 3."""
        if self.workflow is not None:
            for loop in self.workflow.loops:
                if self.id in (loop.reviser, loop.validator, loop.target):
                    return loop.max_iterations
        return 3

    def effective_output_schema(self) -> Mapping[str, Any] | None:
        if self.spec.output_schema is not None:
            return self.spec.output_schema
        return self.output_schema or None

    def validate_input(self, input: Mapping[str, Any]) -> None:
        """Raise `ValidationError` when `input` cannot be executed. Default: check the schema."""
        _check(self._input_validator, input, "input")

    def validate_given(self, given: Mapping[str, Any]) -> None:
        """Raise `ValidationError` for an input the workflow file writes as it is (no template)
        that `validate_input` would refuse at run time: `eclflow validate` asks. `given` holds
        only such inputs, so a required one may be missing. Default: each against its property
        in `input_schema` (a type whose `validate_input` takes what its schema does not
        overrides this too)."""
        _check(self._given_validator, given, "value")

    def validate_output(self, output: Any) -> None:
        """Raise `ValidationError` when `output` is not acceptable. Default: check the schema."""
        _check(self._output_validator, output, "output")

    def check_workflow_schema(self, output: Any) -> None:
        """Check `output` against the `output_schema` the workflow gave this step, if any: for
        the step types whose `validate_output` checks rules of their own instead."""
        if self.spec.output_schema is not None:
            _check(self._output_validator, output, "output")

    # Built once per step: making a jsonschema validator costs several times more than using it.
    @cached_property
    def _input_validator(self) -> Any:
        if self.input_schema == {"type": "object"}:
            return None  # the engine always hands a step a mapping: nothing left to check
        return _validator(self.input_schema)

    @cached_property
    def _given_validator(self) -> Any:
        # the schema's rules for each property, not those of the object as a whole
        per_property = {k: v for k, v in self.input_schema.items() if k in _PER_PROPERTY}
        return _validator(per_property) if _OF_PROPERTIES & per_property.keys() else None

    @cached_property
    def _output_validator(self) -> Any:
        return _validator(self.effective_output_schema())

    async def execute(self, ctx: StepContext, input: Mapping[str, Any]) -> StepResult:
        """Do the step's work. `async def` runs on the event loop with every other step and
        must not block; a subclass may define a plain `def execute` instead, for blocking
        code, which then runs in a thread of its own (it cannot await `ctx.complete`)."""
        raise NotImplementedError


_OF_PROPERTIES = frozenset({"properties", "patternProperties", "additionalProperties"})
_PER_PROPERTY = _OF_PROPERTIES | {"$schema", "$id", "$defs", "definitions"}


def _validator(schema: Mapping[str, Any] | None) -> Any:
    if not schema:
        return None
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


def _check(validator: Any, value: Any, what: str) -> None:
    if validator is None:
        return
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        field_name = ".".join(str(p) for p in e.absolute_path) or None
        raise ValidationError(f"{what} {e.message}", field=field_name, details=e.schema)
