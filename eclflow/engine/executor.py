"""The executor: one step occurrence from rendered input to a `StepExecution` record.

validate input (never retried; the step does not run) → execute under the retry policy and
the step timeout, each attempt journaled → validate output.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import stamina

from ..errors import EclflowError, LLMError, StepTimeout, ValidationError
from ..llm import CompletionRequest, CompletionResponse, Message, Providers
from ..llm.base import Provider, utf8_text
from ..observe import tracing
from ..observe.events import emit
from ..observe.logs import bind, pop, push
from ..steps.base import LoopState, Step, StepContext, StepResult
from . import deadline
from .journal import AttemptLog
from .result import StepExecution, TraceEvent

logger = logging.getLogger("eclflow.engine")

# Called before each model call with (step_id, request); raises to refuse the call (budgets).
CallGuard = Callable[[str, CompletionRequest], Awaitable[None]]
# Called after each model call with (step_id, request, response).
CallHook = Callable[[str, CompletionRequest, CompletionResponse, float], None]


class _RetryableFailure(Exception):
    """Raised inside the retry loop so stamina retries; carries the attempt's record."""

    def __init__(self, record: StepExecution) -> None:
        super().__init__(record.error)
        self.record = record


# The field of an attempt's last trace that says how many model calls it made, when not one.
CALLS_MADE = "calls_made"

# A provider's Retry-After is honoured up to this many seconds (a longer one, such as a daily
# quota's, is not worth holding a run for: the retries run out, and `eclflow resume` goes on).
MAX_RETRY_AFTER = 120.0


def _execute(step: Step, ctx: StepContext, input: Mapping[str, Any]) -> Awaitable[Any]:
    """`step.execute`, awaitable. A plain `def execute` (a plugin's blocking code: time.sleep,
    a synchronous client, a long computation) runs in a thread of its own, so that it blocks
    neither the other steps and runs of the event loop nor the step's timeout and Ctrl-C; a
    pure type's (it waits on nothing) runs here, without the thread's cost."""
    execute = step.execute
    if _is_async(execute):
        return execute(ctx, input)
    if step.pure:
        return _ready(step.execute(ctx, input))
    return in_thread(step.execute, ctx, input)


_ASYNC: dict[Any, bool] = {}


def _is_async(execute: Callable[..., Any]) -> bool:
    """Whether `execute` is an `async def`, known once per function (inspect's answer costs
    more than a step's own bookkeeping)."""
    fn = getattr(execute, "__func__", execute)
    known = _ASYNC.get(fn)
    if known is None:
        known = _ASYNC[fn] = inspect.iscoroutinefunction(execute)
    return known


async def _ready(value: Any) -> Any:
    return value


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a daemon thread of its own, with the caller's context (its log fields).

    Not `asyncio.to_thread`: the end of `asyncio.run` waits for the default executor's
    threads, so Ctrl-C would wait for the blocking call to end. A step timeout or a
    cancellation stops the waiting at once; Python cannot stop the thread, which runs to its
    end on its own (a daemon thread: it does not hold up the process's exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled: nobody waits for it any more
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        error: BaseException | None
        try:
            result, error = context.run(fn, *args), None
        except StopIteration as e:  # (a future cannot hold it: as a coroutine, a RuntimeError)
            name = getattr(fn, "__name__", "it")
            stopped = RuntimeError(
                f"{name} raised StopIteration (a plain `def execute` cannot let it out: catch "
                "it, or give next() a default)"
            )
            stopped.__cause__ = e
            result, error = None, stopped
        except BaseException as e:
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # (the event loop has closed)
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="eclflow-step", daemon=True).start()
    return await future


@dataclass(slots=True)
class _Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    calls: int = 0
    made: int = 0  # calls made, failed or cut short ones too (the budget counts them)
    prompt: list[dict[str, str]] | None = None
    retry_after: float | None = None


@dataclass(slots=True)
class Executor:
    """Runs steps for one run: knows the run id, the providers and the model to use."""

    run_id: str
    providers: Providers
    default_model: str | None = None
    model_override: str | None = None
    guard: CallGuard | None = None
    on_call: CallHook | None = None
    on_attempt: Callable[[str, int, int], None] | None = None  # (key, attempt, max_attempts)
    seed: int | None = None
    _log: logging.Logger = field(default=logger)

    def model_for(self, step: Step) -> str | None:
        if not step.uses_model:
            return None
        return self.model_override or step.spec.model or self.default_model

    def run(
        self,
        step: Step,
        key: str,
        iteration: int,
        input: Mapping[str, Any],
        attempts_log: AttemptLog,
        loop: LoopState | None = None,
    ) -> Awaitable[StepExecution]:
        """Execute one step occurrence to its record (all attempts)."""
        if tracing.enabled():
            return self._traced(step, key, iteration, input, attempts_log, loop)
        return self._run(step, key, iteration, input, attempts_log, loop)

    async def _traced(
        self,
        step: Step,
        key: str,
        iteration: int,
        input: Mapping[str, Any],
        attempts_log: AttemptLog,
        loop: LoopState | None,
    ) -> StepExecution:
        with tracing.span(
            "step",
            **{
                "eclflow.run_id": self.run_id,
                "eclflow.step_id": step.id,
                "eclflow.step_type": step.spec.type,
                "eclflow.key": key,
                "eclflow.iteration": iteration,
            },
        ) as span:
            record = await self._run(step, key, iteration, input, attempts_log, loop)
            tracing.set_attributes(
                span,
                **{
                    "eclflow.outcome": record.outcome,
                    # the step's attempts as the journal, its line and `show` count them: with
                    # those of the executions a resumed run made before
                    "eclflow.attempts": _offset(attempts_log) + record.attempts,
                    "gen_ai.usage.input_tokens": record.tokens_in,
                    "gen_ai.usage.output_tokens": record.tokens_out,
                },
            )
            if record.outcome == "failed":
                tracing.record_error(span, record.error or "failed")
            return record

    async def _run(
        self,
        step: Step,
        key: str,
        iteration: int,
        input: Mapping[str, Any],
        attempts_log: AttemptLog,
        loop: LoopState | None,
    ) -> StepExecution:
        # attempts are numbered as the journal numbers them: after those of earlier
        # executions of the key (a run resumed after a failed step), so that `show`'s
        # `attempt 2` and its trace `Attempt 2 completed` agree
        first = _offset(attempts_log)
        # (`with bind(...)`, as two plain calls: making a bind with keywords costs more)
        bound = push({"step_id": step.id, "key": key, "iteration": iteration, "attempt": first + 1})
        try:
            started = time.perf_counter()
            model = self.model_for(step)
            traces: list[TraceEvent] = [TraceEvent("debug", "Validating input")]
            try:
                step.validate_input(input)
            except Exception as e:
                refused = str(e) if isinstance(e, ValidationError) else self._bug(step, e)
                traces.append(TraceEvent("error", "Input validation failed", {"error": refused}))
                field_name = e.field if isinstance(e, ValidationError) else None
                emit("validation_failed", field=field_name or "input", reason=refused)
                handle = attempts_log.started(1, input, model)
                total = StepExecution(
                    step.id, key, iteration, "failed", error=refused, attempts=1, model=model,
                    input=input, traces=traces, duration_ms=_ms(started),
                )  # fmt: skip
                await attempts_log.finished(handle, 1, total)
                return total
            traces.append(TraceEvent("info", "Input validation passed"))

            # The first attempt runs directly: most steps succeed at once, and entering the
            # retry machinery costs more than the rest of the engine's work on a step.
            policy = step.retry_policy
            if self.on_attempt is not None:
                self.on_attempt(key, first + 1, first + max(1, policy.max_attempts))
            emit("step_started", attempt=first + 1)
            last = await self._attempt(
                step, key, iteration, 1, input, model, loop, attempts_log, traces, started
            )
            if last.outcome == "failed" and last.retryable and policy.max_attempts > 1:
                last = await self._retry(
                    step, key, iteration, input, model, loop, attempts_log, traces, last, started
                )
            last.traces = traces
            last.duration_ms = _ms(started)
            return last
        finally:
            pop(bound)

    def _settled(
        self, record: StepExecution, n: int, shown: int, traces: list[TraceEvent], started: float
    ) -> None:
        """The step's outcome, decided by its `n`th and last attempt, the journal's `shown`th
        (after those of earlier executions of the key): its event and last trace, which count
        the attempts as the journal, the step's line and `--json` do.

        Said before the attempt is committed: a run cancelled while it waits for that commit
        (Ctrl-C) would otherwise keep the step's result without its event. After retries, the
        trace that says how they ended is journaled with the last attempt too (`show` has it,
        as the run's result does); a first attempt's row says its outcome already."""
        duration_ms = _ms(started)
        if record.outcome == "failed":
            msg = "Step failed after all retry attempts" if n > 1 else "Step execution failed"
            said = TraceEvent("error", msg, {"attempts": shown, "error": record.error})
            traces.append(said)
            if n > 1:
                record.traces.append(said)
                emit("step_failed_after_retries", attempts=shown, error=record.error)
            else:
                emit("step_failed", error=record.error, duration_ms=duration_ms)
            return
        if n > 1:
            said = TraceEvent("info", "Step succeeded after retry", {"attempts": shown})
            traces.append(said)
            record.traces.append(said)
            emit("step_succeeded_after_retry", attempts=shown, duration_ms=duration_ms)
        else:
            emit(
                "step_succeeded",
                duration_ms=duration_ms,
                tokens_input=record.tokens_in,
                tokens_output=record.tokens_out,
                cost=record.cost,
            )
        traces.append(TraceEvent("info", "Step execution completed"))

    async def _retry(
        self,
        step: Step,
        key: str,
        iteration: int,
        input: Mapping[str, Any],
        model: str | None,
        loop: LoopState | None,
        attempts_log: AttemptLog,
        traces: list[TraceEvent],
        first: StepExecution,
        started: float,
    ) -> StepExecution:
        """Attempts 2… under the step's retry policy; the record of the last, with the totals
        of all of them."""
        policy = step.retry_policy
        max_attempts = policy.max_attempts
        last_shown = _offset(attempts_log) + max_attempts  # (the journal's number of the last)
        made = [first]
        last = first
        try:
            async for attempt in stamina.retry_context(
                on=_RetryableFailure,
                attempts=max_attempts,
                timeout=None,
                wait_initial=policy.initial_delay,
                wait_max=policy.max_delay,
                wait_exp_base=policy.multiplier,
                wait_jitter=policy.initial_delay * 0.1,
            ):
                with attempt:
                    n = attempt.num
                    shown = _offset(attempts_log) + n
                    if n == 1:
                        raise _RetryableFailure(last)  # already made: stamina waits
                    with bind(attempt=shown):
                        error = last.error
                        delay = policy.delay_for_attempt(n - 1)
                        asked = min(last.retry_after or 0.0, MAX_RETRY_AFTER)
                        if asked > delay:  # the provider's Retry-After: stamina waited `delay`
                            await asyncio.sleep(asked - delay)
                            delay = asked
                        emit(
                            "retrying", attempt=shown, max_attempts=last_shown, error=error,
                            delay=delay,
                        )  # fmt: skip
                        traces.append(
                            TraceEvent(
                                "warn",
                                f"Retrying after failure (attempt {shown} of {last_shown})",
                                {
                                    "attempt": shown,
                                    "max_attempts": last_shown,
                                    "error": error,
                                    "delay": delay,
                                },
                            )
                        )
                        if self.on_attempt is not None:
                            self.on_attempt(key, shown, last_shown)
                        emit("step_started", attempt=shown)
                        last = await self._attempt(
                            step, key, iteration, n, input, model, loop, attempts_log, traces,
                            started,
                        )  # fmt: skip
                    made.append(last)
                    if last.outcome == "failed" and last.retryable:
                        raise _RetryableFailure(last)
        except _RetryableFailure as e:
            last = e.record
        return replace(
            last,
            attempts=len(made),
            tokens_in=sum(r.tokens_in for r in made),
            tokens_out=sum(r.tokens_out for r in made),
            cost=sum(r.cost for r in made),
            calls=sum(r.calls for r in made),
            made=sum(r.calls_made for r in made),
        )

    async def _attempt(
        self,
        step: Step,
        key: str,
        iteration: int,
        attempt: int,
        input: Mapping[str, Any],
        model: str | None,
        loop: LoopState | None,
        attempts_log: AttemptLog,
        traces: list[TraceEvent],
        step_started: float,
    ) -> StepExecution:
        handle = attempts_log.started(attempt, input, model)
        usage = _Usage()
        started = time.perf_counter()
        sid = step.id  # (a property: read once)
        ctx = StepContext(  # (by position: a class called with keywords builds a dict of them)
            self.run_id,  # run_id
            sid,  # step_id
            attempt,
            model,
            self._completer(step, sid, key, attempt, model, usage),  # complete_fn
            self._log,  # logger
            step.spec.config,  # config
            loop,
            iteration,
            step.max_revisions,
        )
        # (a pure step never waits on anything: there is nothing a timer could cut short)
        timer = None if step.pure else deadline.timeout(step.spec.timeout)
        try:
            if timer is None:
                result = await _execute(step, ctx, input)
            else:
                async with timer:
                    result = await _execute(step, ctx, input)
        except TimeoutError as e:
            if timer is not None and timer.expired:
                result = _failure(StepTimeout(step.spec.timeout))
            else:  # a wait of the step's own (`asyncio.wait_for`, a client's timeout)
                self._log.debug("step type '%s' raised", step.spec.type, exc_info=e)
                why = f"TimeoutError: {e}" if str(e) else "TimeoutError"
                result = StepResult.failed(f"{why} (a wait inside the step)", retryable=True)
        except EclflowError as e:
            result = _failure(e)
        except Exception as e:
            result = StepResult.failed(self._bug(step, e), retryable=False)

        if not isinstance(result, StepResult):
            result = StepResult.failed(
                f"step type '{step.spec.type}' returned {type(result).__name__}, not StepResult"
            )
        elif result.kind != "failed" and type(step).__module__ != _BUILTIN_MODULE:
            result = _as_json(step, result)  # (the built-in types make JSON by construction)
        if result.kind != "failed":
            try:
                step.validate_output(result.output)
            except ValidationError as e:
                emit("validation_failed", field=e.field or "output", reason=str(e))
                # A model's reply that breaks the output rules (a draft too long, a field
                # missing) may well be fine on the next attempt; a plain step's would not.
                # What broke the rules is kept with the attempt, for `eclflow show`.
                if step.uses_model:
                    result = StepResult.failed(
                        f"{e} (the model may do better on retry)", True, result.output
                    )
                else:
                    result = StepResult.failed(str(e), False, result.output)
            except Exception as e:
                result = StepResult.failed(self._bug(step, e), False, result.output)
        failed = result.kind == "failed"
        shown = _offset(attempts_log) + attempt  # (as the journal numbers it)
        done = TraceEvent(
            "error" if failed else "info",
            f"Attempt {shown} failed: {result.error}" if failed else f"Attempt {shown} completed",
            # (not one call: a resumed run's budget reads how many)
            {CALLS_MADE: usage.made} if usage.made != 1 and model is not None else {},
        )
        record = StepExecution(
            sid,
            key,
            iteration,
            result.kind,
            result.output,
            result.feedback,
            result.error,
            result.retryable,
            1,
            _ms(started),
            usage.tokens_in,
            usage.tokens_out,
            usage.cost,
            usage.calls,
            model,
            input,
            usage.prompt,
            [*traces, done],  # the journal keeps the step's story up to this attempt
            False,  # replayed
            usage.retry_after if failed else None,  # retry_after
            usage.made,  # made
        )
        if not (failed and result.retryable and attempt < step.retry_policy.max_attempts):
            self._settled(record, attempt, shown, traces, step_started)
        await attempts_log.finished(handle, attempt, record, commit=not step.pure)
        return record

    def _bug(self, step: Step, e: Exception) -> str:
        """What a step fails with when its type's code raised an exception of no meaning to
        eclflow (a bug in a plugin): the step fails, not the engine. The traceback: with -v."""
        self._log.debug("step type '%s' raised", step.spec.type, exc_info=e)
        return f"{type(e).__name__}: {e}"

    def _completer(
        self, step: Step, sid: str, key: str, attempt: int, model: str | None, usage: _Usage
    ) -> Any:
        """The model call of one attempt of `step` (whose id is `sid`)."""

        async def complete(
            messages: Sequence[Message],
            *,
            max_tokens: int = 1024,
            temperature: float | None = None,
            stop: Sequence[str] = (),
            json_schema: Mapping[str, Any] | None = None,
        ) -> CompletionResponse:
            if not step.uses_model:  # (the executor gives no model to a type that says so)
                raise ValidationError(
                    f"step type '{step.spec.type}' calls a model without saying so: set "
                    f"`uses_model = True` on {type(step).__qualname__}"
                )
            if model is None:
                raise ValidationError(
                    f"step '{sid}' calls a model but none is set: give the workflow "
                    "`model:`, the step `model:`, or pass --model"
                )
            request = CompletionRequest(  # (by position, as StepContext above)
                model,
                tuple(messages),  # messages
                max_tokens,
                temperature,
                tuple(stop),  # stop
                json_schema,
                self.seed,  # seed
                step.spec.timeout,  # timeout
                sid,  # step_id
                key,
                attempt,
            )
            if self.guard is not None:
                try:
                    await self.guard(sid, request)
                except EclflowError as e:
                    emit("budget_exceeded", model=model, error=str(e))
                    raise
            usage.prompt = [{"role": m.role, "content": m.content} for m in messages]
            # (a debug event: when it is logged, so are the prompt and the reply)
            debug = emit("llm_request_started", model=model, message_count=len(messages))
            if debug:
                emit("llm_prompt", model=model, messages=usage.prompt)
            t0 = time.perf_counter()
            with (  # attributes are only built when tracing is on
                tracing.span(
                    "llm_call",
                    **{
                        "gen_ai.request.model": model,
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.max_tokens": max_tokens,
                        "gen_ai.request.temperature": temperature,
                        "eclflow.run_id": self.run_id,
                        "eclflow.step_id": sid,
                    },
                )
                if tracing.enabled()
                else tracing.OFF
            ) as span:
                try:
                    usage.made += 1
                    provider = self.providers.get(model)
                    turn = getattr(provider, "turn", None)
                    if turn is None and self.guard is None:
                        response = await provider.complete(request)
                    elif turn is None:
                        # (the step's clock runs while this call is in flight, even if another
                        # call of the step waits in the budget for it to end)
                        async with deadline.working():
                            response = await provider.complete(request)
                    else:
                        response = await _in_turn(provider, turn(model), request)
                except BaseException as e:
                    release = getattr(self.guard, "release", None)
                    if release is not None:
                        release(request)
                    if isinstance(e, LLMError) and e.retry_after is not None:
                        usage.retry_after = e.retry_after
                    if isinstance(e, Exception):
                        # (a call cancelled by Ctrl-C, a stopped batch or a step's timeout did
                        # not fail: the run or the step says what happened)
                        emit(
                            "llm_request_failed",
                            model=model,
                            error=str(e) or type(e).__name__,
                            duration_ms=_ms(t0),
                        )
                    if span is not None:
                        tracing.record_error(span, str(e) or type(e).__name__)
                    raise
                if span is not None:
                    tracing.set_attributes(
                        span,
                        **{
                            "gen_ai.response.model": response.model or None,
                            "gen_ai.usage.input_tokens": response.usage.input,
                            "gen_ai.usage.output_tokens": response.usage.output,
                            "gen_ai.response.finish_reasons": [response.finish_reason],
                            "eclflow.cost_usd": response.cost,
                        },
                    )
            emit(
                "llm_request_completed",
                model=model,
                tokens_input=response.usage.input,
                tokens_output=response.usage.output,
                duration_ms=_ms(t0),
                cost=response.cost,
            )
            if debug:
                emit("llm_reply", model=model, content=response.content)
            if response.finish_reason == "length":  # (a draft cut mid-sentence looks whole)
                _truncated(sid, model, max_tokens, response.usage.output)
            if not response.content.isascii():  # (the check is cheap, the repair is not)
                response = replace(response, content=utf8_text(response.content))
            usage.tokens_in += response.usage.input
            usage.tokens_out += response.usage.output
            usage.cost += response.cost
            usage.calls += 1
            if self.on_call is not None:
                self.on_call(sid, request, response, time.perf_counter() - t0)
            return response

        return complete


_BUILTIN_MODULE = "eclflow.steps.builtin"


def _as_json(step: Step, result: StepResult) -> StepResult:
    """A step type's output as the journal keeps it, JSON: a set or bytes became its repr in
    the journal, and a resumed run read back something else than the run had."""
    import json

    try:
        json.dumps(result.output, allow_nan=False)
        if not _string_keys(result.output):  # ({1: "a"} is read back as {"1": "a"})
            raise TypeError("a mapping's keys must be text")
    except RecursionError:  # (a list in a list … thousands deep: it escaped the step's handling)
        return StepResult.failed(
            f"step type '{step.spec.type}' made an output nested too deeply to journal as "
            f"JSON (more than about {sys.getrecursionlimit()} levels)"
        )
    except (TypeError, ValueError) as e:
        return StepResult.failed(
            f"step type '{step.spec.type}' made an output that is not JSON ({e}): a step's "
            "output is journaled as JSON"
        )
    return result


def _string_keys(value: Any) -> bool:
    """Whether every mapping in `value` has text keys; a loop, not a recursion, so that it
    answers for any output `json.dumps` took."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            if not all(type(k) is str for k in v):
                return False
            todo.extend(v.values())
        elif isinstance(v, list | tuple):
            todo.extend(v)
    return True


def _failure(e: EclflowError) -> StepResult:
    return StepResult.failed(str(e), retryable=e.retryable)


async def _in_turn(
    provider: Provider, turn: asyncio.Lock, request: CompletionRequest
) -> CompletionResponse:
    """The reply of a provider that answers one call at a time (the local model), once it is
    this call's turn: the wait does not count against the step's timeout, which is for the
    step's own call."""
    async with deadline.suspended():
        await turn.acquire()
    try:
        async with deadline.working():
            return await provider.complete(request)
    finally:
        turn.release()


def _truncated(step_id: str, model: str, max_tokens: int, output: int) -> None:
    """Say that a reply was cut off, and by what: max_tokens, or (a reply that stopped short
    of it) the model's context window, which the prompt and the reply share."""
    if 0 < output < max_tokens:
        emit(
            "llm_context_full",
            model=model,
            max_tokens=max_tokens,
            tokens_output=output,
            hint=f"shorten the prompt of step '{step_id}', or use a model with a longer context",
        )
    else:
        emit(
            "llm_reply_truncated",
            model=model,
            max_tokens=max_tokens,
            hint=f"raise steps.{step_id}.config.max_tokens",
        )


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _offset(attempts_log: AttemptLog) -> int:
    """The attempts earlier executions of the key used (0 for a log that does not say)."""
    return int(getattr(attempts_log, "offset", 0))
