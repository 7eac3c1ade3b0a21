"""Batch mode: one run per input item, a bounded number at once, resumable as a whole.

Each item's run id is derived from what its run depends on: the workflow's text and prompt
files, the model, and the item itself (with a count for an item the batch holds more than
once). Running a batch again therefore finds the runs of its items in the journal, even with
lines added, removed or reordered: completed items are reported as they were, unfinished ones
are resumed, new ones start. Editing the workflow or a prompt file starts its items afresh.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import numbers
import os
import re
import sys
import threading
import uuid
from collections.abc import (
    AsyncGenerator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigError, EclflowError, InvalidState, RunNotFound
from ..graph.plan import compile_plan
from ..llm import MockProvider, Provider
from ..llm.own import OwnProviders, own_providers
from ..spec.model import Budget, Workflow
from .result import RunResult

if TYPE_CHECKING:
    from .runner import MockScript

_NAMESPACE = uuid.UUID("6f1c3c2e-8a4e-4c55-9a55-3f0e2f6a9b10")


@dataclass(slots=True)
class BatchProgress:
    """Counts for a progress display; updated as items start and end."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    reused: int = 0
    paused: int = 0  # by `eclflow pause`: the batch run again continues them
    tokens: int = 0
    cost: float = 0.0


def workflow_fingerprint(workflow: Workflow, model: str | None) -> str:
    """What every run of a batch depends on: the workflow's text, its prompt files, the model."""
    h = hashlib.sha256()
    h.update(workflow.sha256.encode())
    for step in workflow.steps:
        if step.prompt is not None:
            try:
                h.update(step.prompt.read_bytes())
            except OSError:  # (the run will say what is wrong with it)
                h.update(str(step.prompt).encode())
    h.update(b"\0" + (model or "").encode())
    return h.hexdigest()


_SURROGATE = re.compile("[\ud800-\udfff]")


def item_run_ids(fingerprint: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
    """The run id of each item: the same item (as JSON, keys sorted) under the same fingerprint
    always gets the same id; its second copy in a batch gets another."""
    seen: dict[str, int] = {}
    ids = []
    for item in items:
        text = json.dumps(item, sort_keys=True, ensure_ascii=False, default=_as_json)
        if not text.isascii() and _SURROGATE.search(text) is not None:
            # (a lone surrogate, `\ud800` in a JSON line: no UTF-8 holds it, its escape)
            text = json.dumps(item, sort_keys=True, default=_as_json)
        copy = seen[text] = seen.get(text, -1) + 1
        ids.append(str(uuid.uuid5(_NAMESPACE, f"{fingerprint}:{copy}:{text}")))
    return ids


def _as_json(value: Any) -> Any:
    """What JSON does not hold, in an item's id as its run takes it (`plain_inputs`): an
    integer of another kind (numpy's) its number, not its text (that of the item "3"); the
    rest its text, as a Path or a UUID is run."""
    return int(value) if isinstance(value, numbers.Integral) else str(value)


async def run_batch(
    workflow: Workflow | str | Path,
    items: Iterable[Mapping[str, Any]],
    *,
    concurrency: int = 8,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    store: Any = None,
    budget: Budget | Mapping[str, Any] | None = None,
    on_update: Callable[[BatchProgress], None] | None = None,
) -> list[RunResult]:
    """Run `workflow` once per item; results in input order. With a store, a second call with
    the same batch resumes it instead of starting over. The arguments are those of
    `eclflow.run` (a file, a mock script in any of its forms, providers of your own, a budget
    mapping, a database URL or path as `store`); `concurrency`: the most runs at once;
    `on_update`: called with the `BatchProgress` as items start and end. An item that fails
    its checks is a failed result, not an error."""
    return [
        result
        async for result in iter_batch(
            workflow,
            items,
            concurrency=concurrency,
            model=model,
            mock_responses=mock_responses,
            providers=providers,
            store=store,
            budget=budget,
            on_update=on_update,
        )
    ]


STORED_CHUNK = 500  # stored results read at a time when a batch is run again
TAKEN_OVER_CLAIMS = 50  # the most claims of dead processes a batch takes over in place


def one_call_at_a_time(workflow: Workflow, model: str | None) -> int | None:
    """How many runs of `workflow` can be served at once when every model it calls answers
    one call at a time in this process (`local/…`: one run per model file); None when a
    model it calls is not one. More runs at once would only wait for the model (outside their
    steps' timeouts, but inside their steps' recorded durations)."""
    from ..llm.local import model_path
    from .runner import default_model, models_called

    models = models_called(workflow, default_model(workflow, model))
    if not models or not all(m.startswith("local/") for m in models):
        return None
    files: set[object] = set()
    for m in models:
        try:
            files.add(model_path(m))  # (local/smollm2 and its file by path are one model)
        except EclflowError:
            files.add(m)
    return len(files)


async def iter_batch(
    workflow: Workflow | str | Path,
    items: Iterable[Mapping[str, Any]],
    *,
    concurrency: int = 8,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    store: Any = None,
    budget: Budget | Mapping[str, Any] | None = None,
    on_update: Callable[[BatchProgress], None] | None = None,
) -> AsyncGenerator[RunResult, None]:
    """`run_batch`, each result given as soon as it and every one before it are in: a caller
    can print or store results while the batch goes on, and keep none of them. Only
    `concurrency` runs exist at a time (fewer on a local model); closing the iterator early
    cancels them."""
    async with aclosing(
        _iter_batch(
            workflow,
            items,
            concurrency=concurrency,
            model=model,
            mock_responses=mock_responses,
            providers=providers,
            store=store,
            budget=budget,
            on_update=on_update,
        )
    ) as results:
        async for result in results:
            yield result


async def _iter_batch(
    workflow: Workflow | str | Path,
    items: Iterable[Mapping[str, Any]],
    *,
    concurrency: int = 8,
    model: str | None = None,
    mock_responses: MockScript | None = None,
    providers: Mapping[str, Provider] | None = None,
    store: Any = None,
    budget: Budget | Mapping[str, Any] | None = None,
    on_update: Callable[[BatchProgress], None] | None = None,
    checked: bool = False,
) -> AsyncGenerator[RunResult, None]:
    """`iter_batch` (`one_call_at_a_time` says how many runs a local model serves at once).
    `checked`: the caller has checked every item against the workflow's `inputs` (the CLI
    does, to name every bad line), so they are not checked again."""
    from . import runner

    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise ConfigError(f"concurrency must be a whole number, not {concurrency!r}")
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        one = " (one input: eclflow.run)" if isinstance(items, Mapping) else ""
        raise ConfigError(
            f"items is a list of inputs, one mapping each, not {type(items).__name__}{one}"
        )
    runner.check_model_name(model)
    own = own_providers(providers)  # (checked once, not per item)
    store, own_store = runner._as_store(store, None)
    try:
        async with aclosing(
            _batch(
                runner.as_workflow(workflow),
                items if isinstance(items, Sequence) else list(items),
                concurrency=concurrency,
                model=model,
                mock_responses=runner.as_mock(mock_responses),
                providers=own,
                store=store,
                budget=runner.as_budget(budget),
                on_update=on_update,
                checked=checked,
            )
        ) as results:
            async for result in results:
                yield result
    finally:
        if own_store:
            store.close()


async def _batch(
    workflow: Workflow,
    items: Sequence[Mapping[str, Any]],
    *,
    concurrency: int,
    model: str | None,
    mock_responses: MockProvider | None,
    providers: OwnProviders,
    store: Any,
    budget: Budget | None,
    on_update: Callable[[BatchProgress], None] | None,
    checked: bool,
) -> AsyncGenerator[RunResult, None]:
    """`iter_batch`, its arguments made plain. The items' runs share `providers`, which ask
    each provider's check and price once for the batch."""
    from . import runner

    runner.check_env(workflow)  # (it would fail every item)
    if providers:  # (likewise: once, before any item is claimed)
        chosen = runner.default_model(workflow, model)
        limits = runner._limits(workflow, budget)
        await providers.prepare(runner.models_called(workflow, chosen), limits.max_usd)
    progress = BatchProgress(total=len(items))
    fingerprint = workflow_fingerprint(workflow, model)
    ids = item_run_ids(fingerprint, items)
    # which batch a run was started by, in its metadata (a run may serve later batches too)
    bid = hashlib.sha256("".join(ids).encode()).hexdigest()[:16]

    def update() -> None:
        if on_update is not None:
            on_update(progress)

    async def stored(run_id: str) -> RunResult | None:
        """The stored result of a run an earlier attempt completed, read with the next
        STORED_CHUNK of them (in input order, as the workers reach them: all at once held
        every result of a big batch in memory); None if it has gone since."""
        async with loading:
            n = completed_at[run_id]
            if n >= loaded_to[0]:  # (workers take items in order: those before were read)
                chunk = completed[n : n + STORED_CHUNK]
                loaded_to[0] = n + len(chunk)
                finished.update(await asyncio.to_thread(runner.stored_results, store, chunk))
        return finished.pop(run_id, None)

    async def one(index: int, item: Mapping[str, Any], run_id: str) -> RunResult:
        # completed by an earlier attempt: its stored result
        done = await stored(run_id) if run_id in completed_at else None
        if done is not None:
            result = done
            progress.reused += 1
            progress.done += 1
            progress.tokens += result.tokens
            progress.cost += result.cost
            update()
            return result
        progress.running += 1
        update()
        try:
            result = await _item(runner, run_id, index, item)
        except EclflowError as e:
            result = RunResult(run_id, workflow.id, "failed", error=str(e))
        finally:
            progress.running -= 1
        if result.status == "completed":
            progress.done += 1
        elif result.status == "paused":
            progress.paused += 1
        else:
            progress.failed += 1
        progress.tokens += result.tokens
        progress.cost += result.cost
        update()
        return result

    async def _item(runner: Any, run_id: str, index: int, item: Mapping[str, Any]) -> RunResult:
        mock = mock_responses.fresh() if mock_responses is not None else None
        if store is not None and run_id in known:

            def reused(event: str, payload: Mapping[str, Any]) -> None:
                if event == "run_already_completed":  # since the batch began: another process
                    progress.reused += 1

            try:
                return await runner.resume(
                    run_id,
                    store=store,
                    model=model,
                    mock_responses=mock,
                    providers=providers,
                    budget=budget,
                    listener=reused,
                )
            except RunNotFound:  # deleted since the batch began: it starts afresh
                pass
        begun.add(run_id)
        plain = plain_items.pop(run_id, None)  # (made plain as it was claimed: not again)
        return await runner._run(
            workflow,
            item if plain is None else plain,
            model=model,
            mock_responses=mock,
            providers=providers,
            store=store,
            run_id=run_id,
            budget=budget,
            metadata={"batch": bid, "item": index},
            claimed=run_id in claimed,
        )

    # One query for the whole batch tells which items an earlier attempt already started.
    known: dict[str, str] = (
        await asyncio.to_thread(store.runs.states, ids) if store is not None else {}
    )
    running = [run_id for run_id in ids if known.get(run_id) in ("running", "pending")]
    if running:  # the same items in another live process: both would make their calls
        unbegun = await asyncio.to_thread(_refuse_held, store, running)
        # items a batch that died had claimed but not begun have no steps: claimed again with
        # the new ones, in bulk, rather than resumed one by one; their rows are taken over
        # by their dead claim's token (one without a token is deleted first, and all of them
        # when dead claims are so many that their tokens would crowd each statement)
        dead_claims = {token for token in unbegun.values() if token}
        if len(dead_claims) > TAKEN_OVER_CLAIMS:
            dead_claims = set()
        untokened = [run_id for run_id, token in unbegun.items() if token not in dead_claims]
        if untokened:
            await asyncio.to_thread(store.runs.unclaim, untokened)
        for run_id in unbegun:
            del known[run_id]
    else:
        dead_claims = set()
    # The items no run has yet are claimed now, all in a few statements: written `pending`,
    # held by this process, so that another batch sharing an item resumes or refuses it
    # instead of running it too (its run id is the same there).
    claimed: set[str] = set()
    plain_items: dict[str, dict[str, Any]] = {}  # the input of each claimed run, as journaled
    begun: set[str] = set()  # claimed runs this batch has started
    fresh = [i for i, run_id in enumerate(ids) if run_id not in known]
    if store is not None and fresh:
        stop = threading.Event()
        claiming = asyncio.ensure_future(
            asyncio.to_thread(
                _claim, runner, store, workflow, items, ids, fresh, model, budget, bid, checked,
                stop, sorted(dead_claims), sorted(providers),
            )
        )  # fmt: skip
        try:
            plain_items = await asyncio.shield(claiming)
            claimed = set(plain_items)
        except asyncio.CancelledError:
            # stopped (Ctrl-C) while claiming: the claim ends after its statement in hand,
            # not after the last of 100 000 items, and what it claimed is nobody's again, as
            # when a batch stops later
            stop.set()
            store.runs.unclaim(_in_order(ids, await claiming))
            raise
        for i in fresh:
            if ids[i] not in claimed:  # another process wrote it first: resumed, or refused
                known[ids[i]] = "pending"
    # and the results of those it completed, read in bulk rather than one run at a time
    completed = [run_id for run_id in ids if known.get(run_id) == "completed"]
    completed_at = {run_id: n for n, run_id in enumerate(completed)}
    finished: dict[str, RunResult] = {}
    loaded_to = [0]  # completed[: loaded_to[0]] have been read
    loading = asyncio.Lock()
    update()

    # `concurrency` workers take the items in input order; results wait in `ready` until those
    # before them are given
    todo = iter(enumerate(items))
    ready: dict[int, RunResult] = {}
    arrived = asyncio.Event()
    broken: list[BaseException] = []

    async def worker() -> None:
        try:
            for index, item in todo:
                ready[index] = await one(index, item, ids[index])
                arrived.set()
                # let the loop go round between items: a run that never waits (a stored
                # result, a model that answers at once) would otherwise keep the loop, and
                # the results, Ctrl-C and every other run, until the whole batch is done
                await asyncio.sleep(0)
        except BaseException as e:  # (a bug: EclflowError is a failed result) stops the batch
            broken.append(e)
            arrived.set()
            raise

    in_flight = min(
        len(items), max(1, concurrency), one_call_at_a_time(workflow, model) or len(items)
    )
    with _gc_for_many_runs(in_flight), _quick_gil_handoffs(store is not None and in_flight > 1):
        workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
        try:
            for index in range(len(items)):
                while index not in ready:
                    if broken:
                        raise broken[0]
                    arrived.clear()
                    await arrived.wait()
                yield ready.pop(index)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if claimed - begun:  # stopped early: what it never began is nobody's again
                store.runs.unclaim(_in_order(ids, claimed - begun))


def _in_order(ids: Sequence[str], some: Collection[str]) -> list[str]:
    """`some` of the batch's run ids in input order, the order their rows were claimed in:
    SQLite deleted 100 000 claimed rows in 2.8 s in that order, 9.3 s in a set's (each
    statement's rows spread over the whole table)."""
    return [run_id for run_id in ids if run_id in some]


def _claim(
    runner: Any,
    store: Any,
    workflow: Workflow,
    items: Sequence[Mapping[str, Any]],
    ids: Sequence[str],
    indexes: Sequence[int],
    model: str | None,
    budget: Budget | None,
    batch: str,
    checked: bool = False,
    stop: threading.Event | None = None,
    take_over: Sequence[str] = (),
    own: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Write the runs of these items `pending`; the ids this process claimed, each with its
    input as written (`plain_inputs`: its run takes it as it is). An item its
    workflow's `inputs` refuse is not claimed: its run fails before it starts, and a claim
    would stay `pending` for nobody (`checked`: the caller has refused such items already).
    Once `stop` is set, it claims no more. `take_over`: the tokens of claims whose process has
    ended (their runs are claimed too). `own`: the prefixes of the caller's own providers, kept
    with each run (see `runner._run`).
    What the rows share is made once: `run_row` for each of 100 000 items took a second."""
    chosen = runner.default_model(workflow, model)
    limits = runner._limits(workflow, runner.as_budget(budget))
    accepts = compile_plan(workflow).input_validator.is_valid
    own_given = {"providers": list(own)} if own else None
    shared = runner.run_row(workflow, {}, "", chosen, limits, own_given, "pending")
    # each run's metadata is run_row's, with the batch and the item before the budget
    head = dict(shared["metadata"])
    tail = {"budget": head.pop("budget")} if "budget" in head else {}
    rows = []
    for i in indexes:
        item = _plain_json(runner, items[i])
        if item is not None and (checked or accepts(item)):
            rows.append(
                {
                    **shared,
                    "run_id": ids[i],
                    "input": item,
                    "metadata": {**head, "batch": batch, "item": i, **tail},
                }
            )
    if not rows:
        return {}
    claimed: set[str] = store.runs.claim_many(
        rows, uuid.uuid4().hex, stop=stop, take_over=take_over
    )
    return {row["run_id"]: row["input"] for row in rows if row["run_id"] in claimed}


def _plain_json(runner: Any, item: Any) -> dict[str, Any] | None:
    """`item` as the journal keeps it (a tuple as a list, …: `plain_inputs`); None for what
    is no mapping, or holds what the journal cannot keep (a date, a set): such an item is not
    claimed, and its run fails with the reason."""
    if not isinstance(item, Mapping):
        return None
    try:
        plain: dict[str, Any] = runner.plain_inputs(item)
    except ConfigError:
        return None
    return plain


def _refuse_held(store: Any, run_ids: Sequence[str]) -> dict[str, str | None]:
    """Refuse a batch whose items another process that still runs is running; the runs of
    these that a process which has ended claimed and never began, with the token of their
    claim (None for a run `pending` without one). Each process is looked up
    once (the items of a batch share a few): not once per item, through /proc."""
    from ..store.owner import holder

    looked_up: dict[tuple[Any, ...], str] = {}

    def held_by(meta: Mapping[str, Any]) -> str:
        key = tuple(repr(meta.get(k)) for k in _HOLDER_FIELDS)
        if key not in looked_up:
            looked_up[key] = holder(meta)
        return looked_up[key]

    records = store.runs.states_and_metadata(run_ids)
    me = os.getpid()
    held = [
        meta for _, meta in records.values() if meta.get("pid") != me and held_by(meta) == "alive"
    ]
    if held:
        pids = sorted({str(meta.get("pid")) for meta in held})
        raise InvalidState(
            f"{len(held)} item{'s' * (len(held) != 1)} of this batch "
            f"{'are' if len(held) != 1 else 'is'} being run by process {', '.join(pids)}; "
            "wait for it to end, or stop it and run the batch again"
        )
    return {
        run_id: token if isinstance(token := meta.get("claim"), str) else None
        for run_id, (state, meta) in records.items()
        if state == "pending" and held_by(meta) == "gone"
    }


# what `holder` reads of a run's metadata
_HOLDER_FIELDS = ("pid", "host", "pidns", "started", "released", "engine")


SWITCH_INTERVAL = 0.0005
_T = TypeVar("_T")


@contextmanager
def _quick_gil_handoffs(journaled: bool) -> Iterator[None]:
    """The journal's writer thread (eclflow/store/writer.py) takes the GIL back after each
    statement, and an event loop busy with many runs lets it go only every
    `sys.getswitchinterval()` seconds (5 ms by default): a batch's commit, a few statements,
    waited tens of milliseconds for the GIL, and the runs for their commit. During a journaled
    batch the interval is SWITCH_INTERVAL (unless already shorter), restored after."""
    if not journaled or sys.getswitchinterval() <= SWITCH_INTERVAL:
        yield
        return
    with _process_setting(sys.getswitchinterval, sys.setswitchinterval, SWITCH_INTERVAL):
        yield


@contextmanager
def _gc_for_many_runs(in_flight: int) -> Iterator[None]:
    """Runs in flight are hundreds of live objects each, and Python's cyclic GC, at its default
    thresholds, scans them over and over (measured: more than half the time of 2000 runs at
    once). eclflow's runs leave no cyclic garbage, so during a batch the young generation is
    collected only after 500 net new objects per run in flight, between 100 000 and 500 000
    (with 2000 runs at once: four collections in 0.06 s instead of seven in 0.2 s, the same
    peak memory). The upper bound caps what cyclic garbage of other libraries (a provider's
    HTTP client, say) can pile up between collections. The thresholds are restored after."""
    before = gc.get_threshold()
    young = max(before[0], 100_000, min(500 * in_flight, 500_000))
    relaxed = (young, max(before[1], 20), before[2])
    with _process_setting(gc.get_threshold, lambda t: gc.set_threshold(*t), relaxed):
        yield


@contextmanager
def _process_setting(get: Callable[[], _T], put: Callable[[_T], None], value: _T) -> Iterator[None]:
    """A process-wide setting at `value` for the block, then back to what it was, unless
    somebody changed it meanwhile."""
    before = get()
    put(value)
    try:
        yield
    finally:
        if get() == value:
            put(before)
