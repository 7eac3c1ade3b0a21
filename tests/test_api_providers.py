"""Model clients of one's own: `providers=` on run, resume, run_batch and iter_batch.

The providers here are real objects of the kind a user writes (a test double is what a user
passes in a test of their own); the runs around them, their journals (real SQLite files),
retries, timeouts and budgets are eclflow's, unchanged.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import eclflow

ONE = """\
eclflow: 1
id: own
model: myco/small
defaults:
  retry: {max_attempts: 3, initial_delay: 1ms}
steps:
  - {id: answer, type: llm, template: "Tell me about tides."}
output: {text: "{{ steps.answer.output.text }}"}
"""

TWO = """\
eclflow: 1
id: own2
model: myco/small
inputs: {type: object, properties: {topic: {type: string}}}
steps:
  - {id: first, type: llm, template: "first {{ topic }}", with: {topic: "{{ input.topic }}"}}
  - {id: second, type: llm, template: "second", depends_on: [first]}
output: {text: "{{ steps.second.output.text }}"}
"""


class Client:
    """A provider of one's own: answers from `replies` in order (an exception is raised)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.requests: list[eclflow.CompletionRequest] = []

    async def complete(self, request: eclflow.CompletionRequest) -> eclflow.CompletionResponse:
        self.requests.append(request)
        reply = self.replies.pop(0) if self.replies else "more"
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            return eclflow.CompletionResponse(
                reply, usage=eclflow.TokenUsage(input=10, output=5), cost=0.25
            )
        return reply  # type: ignore[no-any-return]  # (a wrong reply, on purpose)


def go(text: str, inputs: dict[str, Any] | None = None, **kwargs: Any) -> eclflow.RunResult:
    return asyncio.run(eclflow.run(eclflow.load_text(text), inputs or {}, **kwargs))


def test_a_provider_of_ones_own_answers_its_models_and_is_journaled(tmp_path: Path) -> None:
    """`providers=` did not exist: `myco/small` went to litellm, which knows no such provider."""
    client = Client("the answer")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    r = go(ONE, providers={"myco": client}, store=url)
    assert r.status == "completed", r.error
    assert r.output == {"text": "the answer"}
    assert (r.tokens, r.cost, r.steps[0].model) == (15, 0.25, "myco/small")
    (request,) = client.requests
    assert request.model == "myco/small" and request.step_id == "answer"
    assert [(m.role, m.content) for m in request.messages][-1] == ("user", "Tell me about tides.")
    with eclflow.open_store(url) as store:
        (row,) = store.steps.for_run(r.run_id)
        assert (row.state, row.output, row.tokens_in, row.cost) == (
            "succeeded", {"text": "the answer"}, 10, 0.25,
        )  # fmt: skip


def test_a_run_on_ones_own_provider_resumes_with_it_and_replays_what_it_answered(
    tmp_path: Path,
) -> None:
    """The first step answered, the second failed: resume (given the provider again) calls
    only the second."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = Client("one", eclflow.LLMError("down", retryable=False))
    r = go(TWO, {"topic": "t"}, providers={"myco": first}, store=url)
    assert r.status == "failed" and r.failed_step == "second"
    assert r.error == "Step second failed: LLM error: down"
    again = Client("two")
    done = asyncio.run(eclflow.resume(r.run_id, store=url, providers={"myco": again}))
    assert done.status == "completed" and done.output == {"text": "two"}
    assert [req.step_id for req in again.requests] == ["second"]


@pytest.mark.parametrize(
    ("raised", "attempts", "error"),
    [
        # retried, as a built-in provider's lost connection, timeout or 5xx is
        (ConnectionError("hung up"), 2, None),
        (TimeoutError("slow"), 2, None),
        (type("APIError", (Exception,), {"status_code": 503})("busy"), 2, None),
        (eclflow.LLMError("try again"), 2, None),
        # not retried: said so, or an exception of no known meaning
        (eclflow.LLMError("no such model", retryable=False), 1, "LLM error: no such model"),
        (ValueError("bad prompt"), 1, "LLM error: myco/small: ValueError: bad prompt"),
        (
            type("APIError", (Exception,), {"status_code": 401})("who are you"),
            1,
            "LLM error: myco/small: APIError: who are you",
        ),
    ],
)
def test_what_a_provider_raises_fails_the_attempt_retried_or_not(
    raised: Exception, attempts: int, error: str | None
) -> None:
    client = Client(raised, "fine")
    r = go(ONE, providers={"myco": client})
    assert r.steps[0].attempts == attempts
    assert len(client.requests) == attempts
    if error is None:
        assert r.status == "completed" and r.output == {"text": "fine"}
    else:
        assert r.status == "failed" and r.error == f"Step answer failed: {error}"


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ("text", None),
        (
            {"content": "x"},
            "the provider for 'myco' (model myco/small) returned dict, not an "
            "eclflow.CompletionResponse",
        ),
        (
            eclflow.CompletionResponse("x", cost=None),  # type: ignore[arg-type]
            "returned cost None: give US dollars, a number ≥ 0",
        ),
        (
            eclflow.CompletionResponse("x", usage=(3, 4)),  # type: ignore[arg-type]
            "returned usage (3, 4): give TokenUsage(input=N, output=N)",
        ),
    ],
)
def test_a_reply_the_journal_cannot_keep_fails_the_step_with_what_is_wrong(
    reply: Any, says: str | None
) -> None:
    r = go(ONE, providers={"myco": Client(reply)})
    if says is None:
        assert r.status == "completed"
    else:
        assert r.status == "failed" and says in (r.error or "")
        assert r.steps[0].attempts == 1  # (no retry makes the provider's code right)


def test_a_provider_that_hangs_is_cut_off_by_the_steps_timeout_and_retried() -> None:
    class Hangs(Client):
        async def complete(self, request: eclflow.CompletionRequest) -> eclflow.CompletionResponse:
            if not self.requests:
                self.requests.append(request)
                await asyncio.sleep(3600)
            return await super().complete(request)

    client = Hangs("in time")
    text = ONE.replace("initial_delay: 1ms}", "initial_delay: 1ms}\n  timeout: 50ms")
    r = go(text, providers={"myco": client})
    assert r.status == "completed" and r.steps[0].attempts == 2
    (retried,) = [t for t in r.steps[0].traces if t.message.startswith("Retrying")]
    assert retried.fields["error"] == "Step timed out after 0.05s"


def test_the_budget_counts_a_providers_calls_and_tokens() -> None:
    client = Client("one", "two")
    r = go(TWO, {"topic": "t"}, providers={"myco": client}, budget={"max_calls": 1})
    assert r.status == "failed" and r.failed_step == "second"
    assert "over the limit of 1 calls" in (r.error or "")
    assert len(client.requests) == 1


SMALL = """\
eclflow: 1
id: small
model: myco/small
inputs: {type: object, properties: {topic: {type: string}}}
steps:
  - {id: first, type: llm, template: "first {{ topic }}", with: {topic: "{{ input.topic }}"},
     config: {max_tokens: 5}}
  - {id: second, type: llm, template: "second", depends_on: [first], config: {max_tokens: 5}}
output: {text: "{{ steps.second.output.text }}"}
"""


class Priced(Client):
    """A provider that says what it charges: US dollars per input and per output token."""

    def __init__(self, *replies: Any, price: Any = (0.001, 0.002)) -> None:
        super().__init__(*replies)
        self.prices = price
        self.asked: list[str] = []

    def price(self, model: str) -> Any:
        self.asked.append(model)
        return self.prices


def uncosted(text: str) -> eclflow.CompletionResponse:
    """A reply that gives its usage and no cost."""
    return eclflow.CompletionResponse(text, usage=eclflow.TokenUsage(input=10, output=5))


def test_a_dollar_budget_counts_a_providers_calls_at_its_price(tmp_path: Path) -> None:
    """A dollar budget on a model of one's own was refused ("the price of model 'myco/small'
    is unknown"): litellm has no price for it, and a provider had no way to give one. Its
    `price(model)` now prices each call's worst case before it is made, and a reply that
    gives no cost is counted (and journaled) at it: 10 × 0.001 + 5 × 0.002 = $0.02."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    client = Priced(uncosted("one"), uncosted("two"))
    r = go(SMALL, {"topic": "t"}, providers={"myco": client}, budget={"max_usd": 0.03}, store=url)
    # the first call fits ($0.017 at most: 7 prompt tokens by estimate and 5 max_tokens; $0.02
    # spent), the second's worst case would not
    assert r.status == "failed" and r.failed_step == "second", r.error
    assert r.error == (
        "Step second failed: budget_exceeded: step 'second' could bring the cost to $0.037000, "
        "over the limit of $0.03"
    )
    assert len(client.requests) == 1 and client.asked == ["myco/small"]
    assert r.steps[0].cost == pytest.approx(0.02)
    with eclflow.open_store(url) as store:
        (row, _) = store.steps.for_run(r.run_id)
        assert (row.step_id, row.cost) == ("first", pytest.approx(0.02))
    # resumed with a higher limit, given the provider again: what was spent still counts
    again = Priced(uncosted("two"))
    done = asyncio.run(
        eclflow.resume(r.run_id, store=url, providers={"myco": again}, budget={"max_usd": 0.05})
    )
    assert done.status == "completed" and done.cost == pytest.approx(0.04)
    # a reply that gives its cost is counted at what it gives
    assert go(ONE, providers={"myco": Priced("x")}).cost == 0.25


def test_a_reply_that_reports_no_usage_is_counted_by_estimate_at_the_providers_price() -> None:
    """`CompletionResponse(text)`, the simplest reply, gives no usage and no cost: it was
    counted as 0 tokens and $0 (0 tokens at the provider's price), so neither a dollar nor a
    token budget ever stopped the run. It is counted by estimate, as a remote reply without
    usage is: the prompt ("first t", 7 tokens) and the reply ("one", 2 tokens)."""
    plain = Priced(eclflow.CompletionResponse("one"), eclflow.CompletionResponse("two"))
    r = go(SMALL, {"topic": "t"}, providers={"myco": plain}, budget={"max_usd": 0.02})
    assert r.status == "failed" and r.failed_step == "second", r.error
    assert len(plain.requests) == 1
    first = r.steps[0]
    assert (first.tokens_in, first.tokens_out) == (7, 2)
    assert first.cost == pytest.approx(7 * 0.001 + 2 * 0.002)
    tokens = Client(eclflow.CompletionResponse("one"), eclflow.CompletionResponse("two"))
    r = go(SMALL, {"topic": "t"}, providers={"myco": tokens}, budget={"max_tokens": 20})
    assert r.status == "failed" and r.failed_step == "second", r.error
    assert r.error == (  # (9 counted for the first call, 7 + 5 the second's worst case)
        "Step second failed: budget_exceeded: step 'second' could use up to 21 tokens in all "
        "(7 prompt + 5 max_tokens for this call), over the limit of 20"
    )


def test_a_dollar_budget_on_a_provider_without_its_price_is_refused_before_the_run() -> None:
    """Also for a model name litellm has a price for: `myco/gpt-4o-mini` was counted at
    OpenAI's price for gpt-4o-mini, and its replies (no cost given) at $0: the budget never
    stopped the run."""
    for model in ("myco/small", "myco/gpt-4o-mini"):
        client = Client("x")
        with pytest.raises(eclflow.ConfigError) as caught:
            go(ONE, model=model, providers={"myco": client}, budget={"max_usd": 1})
        assert str(caught.value) == (
            f"Configuration error: a budget of $1 needs the price of model '{model}': give the "
            "provider for 'myco' a method `def price(self, model)` returning its US dollars "
            "per input token and per output token, or limit tokens or calls instead"
        )
        assert client.requests == []
    # and one with a price is counted at its own, not litellm's for gpt-4o-mini
    r = go(
        ONE,
        model="myco/gpt-4o-mini",
        providers={"myco": Priced("x", price=(1.0, 1.0))},
        budget={"max_usd": 1},
    )
    assert r.status == "failed" and "over the limit of $1" in (r.error or "")


@pytest.mark.parametrize(
    "price", ["cheap", (0.1,), (-1, 0), (float("nan"), 0), (True, 0)], ids=repr
)
def test_a_price_that_is_no_price_is_refused_before_the_run(price: Any) -> None:
    client = Priced("x", price=price)
    with pytest.raises(eclflow.ConfigError) as caught:
        go(ONE, providers={"myco": client})
    assert str(caught.value) == (
        f"Configuration error: the provider for 'myco' gave the price {price!r} for model "
        "'myco/small': return (input, output), US dollars per token, numbers ≥ 0 (or None), "
        "from a plain `def price(self, model)`"
    )
    assert client.requests == []


def test_a_batch_sends_its_runs_to_the_provider_and_reuses_them_run_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(TWO)
    client = Client(*"abcd")
    items = [{"topic": "x"}, {"topic": "y"}]
    results = asyncio.run(
        eclflow.run_batch(wf, items, providers={"myco": client}, store=url, concurrency=1)
    )
    assert [r.output for r in results] == [{"text": "b"}, {"text": "d"}]

    async def again() -> list[str]:
        out = []
        async for r in eclflow.iter_batch(wf, items, providers={"myco": Client()}, store=url):
            out.append(r.status)
        return out

    assert asyncio.run(again()) == ["completed", "completed"]
    assert len(client.requests) == 4


def test_the_longest_prefix_wins_and_other_models_are_not_taken() -> None:
    small, big = Client("small"), Client("big")
    own = {"myco": small, "myco/big": big}
    assert go(ONE, providers=own, model="myco/big/v2").output == {"text": "big"}
    assert go(ONE, providers=own, model="myco/bigger").output == {"text": "small"}
    # a model no key serves goes where it went before: mock/… to the script
    r = go(ONE, providers=own, model="mock/x", mock_responses=["scripted"])
    assert r.output == {"text": "scripted"} and len(small.requests) == 1


class Checked(Client):
    def check(self, model: str) -> None:
        raise eclflow.ConfigError(f"model '{model}' needs MYCO_KEY: set it in the environment")


@pytest.mark.parametrize(
    ("providers", "message"),
    [
        ([Client()], "providers is a mapping of model prefixes to providers, such as"),
        ({"": Client()}, "providers: a key is a model prefix such as 'myco' (for myco/…), not ''"),
        ({"mock": Client()}, "providers: 'mock' names eclflow's own mock/… models"),
        ({"local/x": Client()}, "providers: 'local/x' names eclflow's own local/… models"),
        ({"myco": object()}, "providers['myco'] is a object, which has no complete method"),
        # (a class, not one of its objects: the run failed at the first call, "TypeError:
        # Client.complete() missing 1 required positional argument: 'request'")
        (
            {"myco": Client},
            "providers['myco'] is the class Client: pass one of its objects, Client(…)",
        ),
        ({"myco": Checked()}, "model 'myco/small' needs MYCO_KEY: set it in the environment"),
        # (one of the two was dropped without a word: which served the models depended on
        # the order of the keys)
        (
            {"myco": Client(), "myco/": Client()},
            "providers: the keys 'myco' and 'myco/' both name the prefix 'myco' (the models "
            "myco/…): give one of them",
        ),
        ({"/myco/": Client(), "myco": Client()}, "the keys '/myco/' and 'myco' both name"),
    ],
)
def test_providers_that_cannot_serve_are_refused_before_the_run_starts(
    providers: Any, message: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with pytest.raises(eclflow.ConfigError) as caught:
        go(ONE, providers=providers, store=url)
    assert message in str(caught.value)
    with eclflow.open_store(url) as store:
        assert store.runs.count() == 0


def test_what_a_provider_says_is_kept_whole_in_the_error() -> None:
    """The message of a provider's exception lost its first words when they looked like a
    class name before a colon ("Quota: exhausted …" read "RuntimeError: exhausted …"): the
    clean-up meant for litellm's repeated class names ran on it."""
    client = Client(RuntimeError("Quota: exhausted for org acme"))
    r = go(ONE, providers={"myco": client})
    assert r.status == "failed"
    assert r.error == (
        "Step answer failed: LLM error: myco/small: RuntimeError: Quota: exhausted for org acme"
    )


RESUME_WITHOUT = (
    "Configuration error: run {id} calls myco/small through a provider of your own "
    "(providers={{'myco': …}}): resume it with the same providers= (Python), or --provider "
    "myco=MODULE:NAME (eclflow resume)"
)


def test_a_run_resumed_without_its_provider_says_to_give_it_again(tmp_path: Path) -> None:
    """Resumed without `providers=` (or with `eclflow resume`), a run on a provider of one's
    own was refused with litellm's "model 'myco/small' names no provider litellm knows: write
    it as 'provider/model'": the model name was right, the provider missing."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = Client("one", eclflow.LLMError("down", retryable=False))
    r = go(TWO, {"topic": "t"}, providers={"myco": first}, store=url)
    assert r.status == "failed"
    said = RESUME_WITHOUT.format(id=r.run_id[:8])
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.resume(r.run_id, store=url))
    assert str(caught.value) == said
    # a provider for other models is not the one the run needs
    with pytest.raises(eclflow.ConfigError) as caught:
        asyncio.run(eclflow.resume(r.run_id, store=url, providers={"other": Client()}))
    assert str(caught.value) == said
    done = subprocess.run(
        [sys.executable, "-m", "eclflow", "resume", r.run_id, "--db", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == f"error: {said}\n"
    # and given it, the run goes on
    again = asyncio.run(eclflow.resume(r.run_id, store=url, providers={"myco": Client("two")}))
    assert again.status == "completed"


def test_a_batch_run_again_without_its_provider_says_to_give_it_again(tmp_path: Path) -> None:
    """The same for the items of a batch that a second call resumes."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(TWO)
    items = [{"topic": "x"}]
    failing = Client("one", eclflow.LLMError("down", retryable=False))
    (r,) = asyncio.run(eclflow.run_batch(wf, items, providers={"myco": failing}, store=url))
    assert r.status == "failed"
    (again,) = asyncio.run(eclflow.run_batch(wf, items, store=url))
    assert again.status == "failed"
    assert again.error == RESUME_WITHOUT.format(id=r.run_id[:8])


class CancelsItself(Client):
    """A client whose own task was cancelled under it (its connection pool closed, …)."""

    async def complete(self, request: eclflow.CompletionRequest) -> eclflow.CompletionResponse:
        self.requests.append(request)
        raise asyncio.CancelledError


def test_a_cancellation_nobody_asked_for_fails_the_step_not_the_caller(tmp_path: Path) -> None:
    """A provider raising CancelledError while nothing cancelled the run: `run` raised
    CancelledError into the caller's task, leaving the run `running` in the journal, and a
    batch stopped at its first item."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    r = go(ONE, providers={"myco": CancelsItself()}, store=url)
    assert r.status == "failed" and r.steps[0].attempts == 1
    assert r.error == (
        "Step answer failed: LLM error: myco/small: the provider raised CancelledError, though "
        "nothing cancelled the step"
    )
    with eclflow.open_store(url) as store:
        assert store.runs.get(r.run_id).state == "failed"
    wf = eclflow.load_text(TWO)
    items = [{"topic": "a"}, {"topic": "b"}]
    results = asyncio.run(eclflow.run_batch(wf, items, providers={"myco": CancelsItself()}))
    assert [r.status for r in results] == ["failed", "failed"]


def test_a_run_cancelled_while_its_provider_answers_is_still_cancelled() -> None:
    """(What the case above must not change: the caller's cancel, or Ctrl-C, stops the run.)"""
    answering = asyncio.Event()

    class Slow(Client):
        async def complete(self, request: eclflow.CompletionRequest) -> eclflow.CompletionResponse:
            answering.set()
            await asyncio.sleep(3600)
            raise AssertionError("not reached")

    async def main() -> None:
        task = asyncio.ensure_future(
            eclflow.run(eclflow.load_text(ONE), {}, providers={"myco": Slow()})
        )
        await answering.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_provider_whose_complete_is_not_async_is_told_so() -> None:
    """A plain `def complete` failed the step with "TypeError: object CompletionResponse
    can't be used in 'await' expression", which names neither the provider nor the cure."""

    class Plain:
        def complete(self, request: eclflow.CompletionRequest) -> eclflow.CompletionResponse:
            return eclflow.CompletionResponse("sync")

    r = go(ONE, providers={"myco": Plain()})
    assert r.status == "failed" and r.steps[0].attempts == 1
    assert r.error == (
        "Step answer failed: LLM error: the provider for 'myco' (model myco/small) returned a "
        "CompletionResponse from complete, not a coroutine: define it `async def "
        "complete(self, request)` (a call that blocks holds up every other run and the step's "
        "timeout)"
    )


def test_a_price_or_check_that_raises_is_one_configuration_error_naming_the_provider(
    tmp_path: Path,
) -> None:
    """A `price(model)` that looks the model up (`KeyError: 'myco/small'`) or a `check` that
    raises what it likes escaped the run as it was: `eclflow run` said `error: KeyError:
    'myco/small'`, exit 1 (a failed run's code), naming neither the provider nor the method."""

    class Lookup(Client):
        def price(self, model: str) -> Any:
            return {"myco/big": (1e-6, 2e-6)}[model]

    class NoKey(Client):
        def check(self, model: str) -> None:
            raise RuntimeError("MYCO_KEY is not set")

    for client, says in [
        (Lookup("x"), "the provider for 'myco' raised KeyError: 'myco/small' from "
                      "price('myco/small'): return None for a model it has no price for"),
        (NoKey("x"), "the provider for 'myco' raised RuntimeError: MYCO_KEY is not set from "
                     "check('myco/small')"),
    ]:  # fmt: skip
        with pytest.raises(eclflow.ConfigError) as caught:
            go(ONE, providers={"myco": client})
        assert str(caught.value) == f"Configuration error: {says}"
        assert client.requests == []


def test_an_async_check_is_awaited_before_the_run_starts() -> None:
    """An `async def check` was refused ("make it a plain `def check(self, model)`"): it is
    called on the event loop now, which can wait for it (a check that asks the provider's
    server with its async HTTP client)."""

    class AsyncCheck(Client):
        async def check(self, model: str) -> None:
            await asyncio.sleep(0)
            raise eclflow.ConfigError(f"{model}: no key")

    client = AsyncCheck("answered")
    with pytest.raises(eclflow.ConfigError) as caught:
        go(ONE, providers={"myco": client})
    assert str(caught.value) == "Configuration error: myco/small: no key"
    assert client.requests == []


class Counted(Client):
    """A provider whose check says on which thread it ran, each time."""

    def __init__(self, *replies: Any) -> None:
        super().__init__(*replies)
        self.checks: list[tuple[str, int]] = []

    def check(self, model: str) -> None:
        import threading

        self.checks.append((model, threading.get_ident()))


def test_a_batch_checks_its_models_once_on_the_event_loops_thread(tmp_path: Path) -> None:
    """The check ran once per item of a batch (three items, three checks) and, for the items
    a batch run again resumed, in a worker thread (where a provider's loop-bound client
    cannot be used, nor an async check awaited)."""
    import threading

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(TWO)
    items = [{"topic": "x"}, {"topic": "y"}, {"topic": "z"}]
    down = eclflow.LLMError("down", retryable=False)
    first = Counted(*["one", down] * 3)
    loop_thread = threading.get_ident()  # (asyncio.run runs the loop on this thread)
    results = asyncio.run(
        eclflow.run_batch(wf, items, providers={"myco": first}, store=url, concurrency=1)
    )
    assert [r.status for r in results] == ["failed"] * 3
    assert first.checks == [("myco/small", loop_thread)]
    again = Counted()
    results = asyncio.run(eclflow.run_batch(wf, items, providers={"myco": again}, store=url))
    assert [r.status for r in results] == ["completed"] * 3  # (resumed: the second steps)
    assert [req.step_id for req in again.requests] == ["second"] * 3
    assert again.checks == [("myco/small", loop_thread)]
    # and a resume of one run on its own: on the loop's thread too
    alone = Counted("two")
    failed = go(TWO, {"topic": "w"}, providers={"myco": Counted("one", down)}, store=url)
    done = asyncio.run(eclflow.resume(failed.run_id, store=url, providers={"myco": alone}))
    assert done.status == "completed" and alone.checks == [("myco/small", loop_thread)]


def test_a_batch_whose_provider_refuses_its_model_says_so_once_before_any_item(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    wf = eclflow.load_text(TWO)
    client = Checked()
    with pytest.raises(eclflow.ConfigError, match="model 'myco/small' needs MYCO_KEY"):
        asyncio.run(
            eclflow.run_batch(
                wf, [{"topic": "x"}, {"topic": "y"}], providers={"myco": client}, store=url
            )
        )
    assert client.requests == []
    with eclflow.open_store(url) as store:
        assert store.runs.count() == 0


def test_the_messages_a_provider_is_sent_are_the_public_message_type() -> None:
    """`eclflow.Message` was not exported: a provider's author could not annotate or build
    (in a test of their own) the `request.messages` they are sent."""
    client = Client("x")
    go(ONE, providers={"myco": client})
    (request,) = client.requests
    assert "Message" in eclflow.__all__
    assert all(type(m) is eclflow.Message for m in request.messages)
    assert request.messages[-1] == eclflow.Message("user", "Tell me about tides.")
