"""`eclflow run FILE --from STEP --run RUN_ID`: a new run that reuses what came before STEP."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import RunOfAnotherWorkflow, StepNotFound
from ..graph.plan import Plan, compile_plan
from ..spec.model import Workflow, printable
from .journal import StoreJournal, execution_from_record
from .orchestrator import Listener
from .result import RunResult

logger = logging.getLogger("eclflow.engine")


def reusable_steps(plan: Plan, step: str) -> set[str]:
    """Steps whose results a run from `step` reuses: every step but `step` and the steps it
    leads to, transitively. A step beside it (a parallel branch, the other side of a
    condition) is reused, not paid for again. A loop whose validator is run again is run again
    whole, reviser included; from a reviser, its validator's verdict is reused and what
    waits for the loop is run again."""
    waited_by: dict[str, list[str]] = {}
    for s, waits in plan.waits.items():
        for w in waits:
            waited_by.setdefault(w, []).append(s)
    after: set[str] = set()
    todo = [step]
    if step in plan.revisers:
        validator = next(v for v, lp in plan.loops.items() if lp.reviser == step)
        todo.extend(waited_by.get(validator, ()))
        after.update(waited_by.get(validator, ()))
    while todo:
        s = todo.pop()
        leads_to = [*waited_by.get(s, ())]
        if s in plan.loops:
            leads_to.append(plan.loops[s].reviser)
        for n in leads_to:
            if n != step and n not in after:
                after.add(n)
                todo.append(n)
    return set(plan.workflow.step_ids) - after - {step}


async def rerun_from(
    workflow: Workflow,
    run_id: str,
    step: str,
    *,
    store: Any,
    model: str | None = None,
    mock_responses: Any = None,
    providers: Any = None,
    listener: Listener | None = None,
    inputs: dict[str, Any] | None = None,
    budget: Any = None,
    new_run_id: str | None = None,
) -> RunResult:
    from ..llm import Providers
    from ..llm.own import own_providers
    from .runner import _check_own_given, _run, default_model

    if store is None:
        from ..errors import ConfigError

        raise ConfigError("--from needs the journal: drop --no-journal")
    if step not in workflow.step_ids:
        import difflib

        close = difflib.get_close_matches(step, workflow.step_ids, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise StepNotFound(f"{step}{hint}")
    old = store.runs.find(run_id)
    if old.definition_id != workflow.id:
        raise RunOfAnotherWorkflow(
            f"run {old.id[:8]} is of workflow '{old.definition_id}', not '{workflow.id}': "
            "--from reuses the steps of a run of the same workflow"
        )
    seed = reused_executions(store, compile_plan(workflow), old.id, step)
    changed = _changed_since(old, workflow, {e.step_id for e in seed.values()})
    if changed:
        one = len(changed) == 1
        logger.warning(
            f"step{'' if one else 's'} {', '.join(changed)} changed since run {old.id[:8]} and "
            f"{'is' if one else 'are'} reused as that run left {'it' if one else 'them'} "
            f"(--from {changed[0] if one else 'STEP'} runs {'it' if one else 'a step'} again)"
        )
    model = model or (old.metadata or {}).get("model")
    # (its model went to a provider of the caller's own: litellm would say it knows no such model)
    _check_own_given(
        compile_plan(workflow),
        Providers(own=own_providers(providers)),
        default_model(workflow, model),
        (old.metadata or {}).get("providers"),
        old.id,
        "give it again, --provider {}=MODULE:NAME",
    )
    journal = _SeededJournal(store, seed, old.id)
    return await _run(
        workflow,
        inputs if inputs is not None else old.input,
        model=model,
        mock_responses=mock_responses,
        providers=providers,
        store=store,
        listener=listener,
        journal_factory=journal.bind,
        metadata={"rerun_of": old.id, "from_step": step},
        budget=budget,
        run_id=new_run_id,
    )


def reused_executions(store: Any, plan: Plan, run_id: str, step: str) -> dict[str, Any]:
    """The executions of run `run_id` that a run from `step` reuses, by journal key (also
    what the resume of such a run reuses: a run killed while copying them holds only some)."""
    keep = reusable_steps(plan, step)
    in_same_loop = plan.loop_of.get(step) or next(
        (v for v, lp in plan.loops.items() if lp.reviser == step), None
    )
    seed = {}
    for key, row in store.steps.succeeded(run_id).items():
        if row.step_id not in keep:
            continue
        loop = plan.loop_of.get(row.step_id)
        same_loop = in_same_loop is not None and (
            loop == in_same_loop or plan.reviser_loops.get(row.step_id) == in_same_loop
        )  # (another loop's turns are reused whole)
        if same_loop and key != plan.first_keys[row.step_id]:
            continue  # later turns of the loop are redone from STEP on
        seed[key] = execution_from_record(row, replayed=True)
    return seed


def _changed_since(old: Any, workflow: Workflow, reused: set[str]) -> list[str]:
    """The reused steps whose definition or prompt file is not what the earlier run ran."""
    from .runner import _stored_workflow, prompt_digests

    base = workflow.path.parent if workflow.path is not None else None
    try:
        before = _stored_workflow(old.definition, "<stored>", base)
    except Exception:  # (a definition this eclflow cannot read: nothing to compare with)
        return []
    recorded = (old.metadata or {}).get("prompts") or {}
    now = prompt_digests(workflow)
    changed = []
    for sid in sorted(reused):
        was = before.step(sid) if sid in before.step_ids else None
        step = workflow.step(sid)
        prompt = printable(str(step.prompt)) if step.prompt is not None else None
        edited = prompt is not None and recorded.get(prompt, now.get(prompt)) != now.get(prompt)
        if was is None or _spec(was) != _spec(step) or edited:
            changed.append(sid)
    return changed


def _spec(step: Any) -> Any:
    """What a step does, without where its file was read from."""
    return (step.type, dict(step.with_), step.template, step.prompt, dict(step.config),
            step.model, step.output_schema, step.system)  # fmt: skip


class _SeededJournal:
    """Builds a StoreJournal for the new run that replays (and copies) the reused executions."""

    def __init__(self, store: Any, seed: dict[str, Any], origin: str) -> None:
        self.store = store
        self.seed = seed
        self.origin = origin

    def bind(self, run_id: str) -> StoreJournal:
        return StoreJournal(self.store, run_id, seed=self.seed, fresh=True, seed_from=self.origin)


__all__ = ["rerun_from", "reusable_steps", "reused_executions"]
