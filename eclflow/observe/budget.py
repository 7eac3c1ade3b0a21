"""Prices and budgets: what a call may cost at worst, and refusing the call that could overspend.

Prices come from litellm's bundled price map, read as a JSON file so `validate` can use it
without importing litellm; `mock/` and `local/` models cost nothing unless the mock says so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import BudgetExceeded

if TYPE_CHECKING:  # (`validate` prices calls with this module: asyncio is imported by a run)
    import asyncio


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per token."""

    input: float
    output: float


@lru_cache(maxsize=256)
def price(model: str) -> Price | None:
    """Per-token prices of a model, None when unknown (mock/ and local/ are free)."""
    if model.startswith(("local/", "mock/")):
        return Price(0.0, 0.0)
    from ..llm.names import litellm_table

    table = litellm_table()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for name in candidates:
        entry = table.get(name)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return Price(
                float(entry.get("input_cost_per_token") or 0.0),
                float(entry.get("output_cost_per_token") or 0.0),
            )
    return None


def estimate_tokens(text: str) -> int:
    """A cautious token count for text (about 4 characters a token, rounded up)."""
    return len(text) // 3 + 1


def prompt_tokens(model: str, messages: Sequence[Any], estimate: bool = False) -> int:
    """Tokens of a prompt: litellm's tokenizer for remote models, a cautious estimate else
    (`estimate`: for this model too, one a provider of the caller's own serves: litellm, which
    takes seconds to import, is not loaded for it).

    Always tiktoken's encoding, which litellm ships: for some model names (`…llama-3…`)
    litellm would fetch a tokenizer from Hugging Face first, on the event loop inside the
    step's deadline (offline, 23 s: a false step timeout)."""
    if not estimate and not model.startswith(("local/", "mock/")):
        try:
            from ..llm.remote import _litellm  # (litellm with its bundled price table)

            litellm = _litellm()

            # (process-wide, and what eclflow wants of litellm everywhere: no downloads)
            litellm.disable_hf_tokenizer_download = True

            return int(
                litellm.token_counter(
                    model=model, messages=[{"role": m.role, "content": m.content} for m in messages]
                )
            )
        except Exception:
            pass
    return sum(estimate_tokens(m.content) + 4 for m in messages)


@dataclass(slots=True)
class Spent:
    usd: float = 0.0
    tokens: int = 0
    calls: int = 0


class BudgetGuard:
    """Checks each model call before it is made; a call that could exceed a limit is refused.

    Use as the executor's `guard` (before) and `record` as its `on_call` hook (after).
    """

    def __init__(
        self,
        max_usd: float | None = None,
        max_tokens: int | None = None,
        max_calls: int | None = None,
        spent: Spent | None = None,
        estimated: Callable[[str], bool] | None = None,
        priced: Callable[[str], Price | None] | None = None,
    ) -> None:
        """`estimated(model)`: whether the prompts of `model` are counted by estimate (see
        `prompt_tokens`). `priced(model)`: its price, when not litellm's (`price`): that of
        the provider of the caller's own that serves it."""
        self.estimated = estimated
        self.priced = priced or price
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self.max_calls = max_calls
        self.spent = spent or Spent()
        self._lock = threading.Lock()
        self._pending = Spent()  # calls in flight, counted at their worst case
        self._reserved: dict[int, tuple[int, float]] = {}
        self._waiters: list[asyncio.Future[None]] = []  # calls waiting for one in flight

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.max_usd, self.max_tokens, self.max_calls))

    async def __call__(self, step_id: str, request: Any) -> None:
        if not self.active:
            return
        estimate = self.estimated is not None and self.estimated(request.model)
        tokens_in = prompt_tokens(request.model, request.messages, estimate)
        worst_tokens = tokens_in + request.max_tokens
        p = self.priced(request.model)
        worst_usd = tokens_in * p.input + request.max_tokens * p.output if p is not None else 0.0
        if self.max_usd is not None and p is None:
            raise BudgetExceeded(
                f"step '{step_id}': the price of model '{request.model}' is unknown, so "
                f"a budget of ${self.max_usd:g} cannot be enforced"
            )
        while True:
            with self._lock:
                refusal = self._refusal(step_id, tokens_in, request.max_tokens, worst_usd, None)
                if refusal is None:
                    self._pending.calls += 1
                    self._pending.tokens += worst_tokens
                    self._pending.usd += worst_usd
                    self._reserved[id(request)] = (worst_tokens, worst_usd)
                    return
                # Over the limit only with the worst case of the calls in flight (concurrent
                # branches): wait for them to end and count what they really used, rather than
                # fail a run whose budget may well be enough.
                if not self._pending.calls or self._refusal(
                    step_id, tokens_in, request.max_tokens, worst_usd, Spent()
                ):
                    raise refusal
                ended = self._ended_call()
            await _waiting(ended)

    def _refusal(
        self, step_id: str, tokens_in: int, max_tokens: int, worst_usd: float, pending: Spent | None
    ) -> BudgetExceeded | None:
        """Why the call would exceed a limit, counting the calls in flight at their worst
        case (or `pending` instead); None when it fits. Called with the lock held."""
        pending = self._pending if pending is None else pending
        calls = self.spent.calls + pending.calls + 1
        if self.max_calls is not None and calls > self.max_calls:
            return BudgetExceeded(
                f"step '{step_id}' would make model call {calls}, over the limit of "
                f"{self.max_calls} calls"
            )
        tokens = self.spent.tokens + pending.tokens + tokens_in + max_tokens
        if self.max_tokens is not None and tokens > self.max_tokens:
            return BudgetExceeded(
                f"step '{step_id}' could use up to {tokens} tokens in all "
                f"({tokens_in} prompt + {max_tokens} max_tokens for this call), over "
                f"the limit of {self.max_tokens}"
            )
        usd = self.spent.usd + pending.usd + worst_usd
        if self.max_usd is not None and usd > self.max_usd:
            return BudgetExceeded(
                f"step '{step_id}' could bring the cost to ${usd:.6f}, over the limit "
                f"of ${self.max_usd:g}"
            )
        return None

    def _ended_call(self) -> asyncio.Future[None]:
        """A future set when a call in flight ends (with the lock held)."""
        import asyncio

        ended = asyncio.get_running_loop().create_future()
        self._waiters.append(ended)
        return ended

    def _wake(self) -> None:
        """A call in flight ended: the calls that wait for one check the budget again (with the
        lock held)."""
        waiters, self._waiters = self._waiters, []
        for ended in waiters:
            loop = ended.get_loop()
            loop.call_soon_threadsafe(_set_done, ended)

    def record(self, step_id: str, request: Any, response: Any, seconds: float) -> None:
        """What a call actually used; releases its worst-case reservation."""
        with self._lock:
            worst = self._reserved.pop(id(request), None)
            if worst is not None:
                self._pending.calls -= 1
                self._pending.tokens -= worst[0]
                self._pending.usd -= worst[1]
            self.spent.calls += 1
            self.spent.tokens += response.usage.input + response.usage.output
            self.spent.usd += response.cost
            self._wake()

    def cancel(self, request: Any) -> None:
        """A reserved call that was not made after all: its reservation is given back."""
        self._unreserve(request, made=False)

    def release(self, request: Any) -> None:
        """A reserved call failed without a response (it still counts as made)."""
        self._unreserve(request, made=True)

    def _unreserve(self, request: Any, *, made: bool) -> None:
        with self._lock:
            worst = self._reserved.pop(id(request), None)
            if worst is not None:
                self._pending.calls -= 1
                self._pending.tokens -= worst[0]
                self._pending.usd -= worst[1]
                self.spent.calls += made
                self._wake()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _waiting(ended: asyncio.Future[None]) -> None:
    """Wait for a call in flight to end; the step's timeout does not run meanwhile (the wait
    is for other steps' calls, as a local model's turn is), unless a call of the same step is
    in flight (the executor marks those `deadline.working`)."""
    from ..engine import deadline

    async with deadline.suspended():
        await ended
