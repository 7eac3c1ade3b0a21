"""Workflow → the plan the engine runs: DAG, deterministic order, loop table, wait sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EclflowError
from ..spec.deps import DepGraph, dependency_graph
from ..spec.model import RevisionLoop, StepSpec, Workflow

if TYPE_CHECKING:
    from ..steps.base import Step
    from ..steps.registry import StepRegistry


@dataclass(frozen=True, slots=True)
class Loop:
    """A revision loop with the steps it re-runs.

    `body` is the target, the validator and every step on a path between them, in order.
    After the reviser writes a new version of the target, `rerun` (the body minus the target)
    runs again, the validator last.
    """

    spec: RevisionLoop
    body: tuple[str, ...]

    @property
    def validator(self) -> str:
        return self.spec.validator

    @property
    def reviser(self) -> str:
        return self.spec.reviser

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def max_iterations(self) -> int:
        return self.spec.max_iterations

    @property
    def rerun(self) -> tuple[str, ...]:
        return tuple(s for s in self.body if s != self.spec.target)


class Plan:
    """The compiled form of a valid workflow. Build with `compile_plan`."""

    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow
        self._step_objects: dict[int, tuple[StepRegistry, dict[str, Step]]] = {}
        self.mock_models_checked: set[str | None] = set()  # (runner.check_mock_is_used)
        self.dag: DepGraph = dependency_graph(workflow.steps, workflow.transitions)
        self.order: tuple[str, ...] = tuple(self.dag.order())
        loops = {}
        for spec in workflow.loops:
            body_set = (self.dag.descendants(spec.target) | {spec.target}) & (
                self.dag.ancestors(spec.validator) | {spec.validator}
            )
            body_set |= {spec.target, spec.validator}
            loops[spec.validator] = Loop(spec, tuple(s for s in self.order if s in body_set))
        self.loops: Mapping[str, Loop] = MappingProxyType(loops)
        self.revisers: frozenset[str] = frozenset(lp.reviser for lp in loops.values())
        self.conditions: Mapping[tuple[str, str], str] = MappingProxyType(
            {(a, b): d["when"] for a, b, d in self.dag.edges() if d.get("kind") == "conditional"}
        )
        # Which loop (by validator) each body step belongs to.
        self.loop_of: Mapping[str, str] = MappingProxyType(
            {s: v for v, lp in loops.items() for s in lp.body}
        )

    @cached_property
    def reviser_loops(self) -> Mapping[str, str]:
        """Each reviser's loop, by its validator."""
        return MappingProxyType({lp.reviser: v for v, lp in self.loops.items()})

    @cached_property
    def linear(self) -> tuple[str, ...]:
        """Steps of the linear pass, in order: every step but the revisers."""
        return tuple(s for s in self.order if s not in self.revisers)

    @cached_property
    def waits(self) -> Mapping[str, tuple[str, ...]]:
        """What each linear step waits for. A step outside a loop that hangs on a loop's body
        waits for the loop's validator, i.e. for the whole loop to end."""
        out: dict[str, tuple[str, ...]] = {}
        for s in self.linear:
            own_loop = self.loop_of.get(s)
            deps: list[str] = []
            for p in self.dag.predecessors(s):
                loop = self.loop_of.get(p)
                if p in self.revisers:
                    loop = next(v for v, lp in self.loops.items() if lp.reviser == p)
                    p = loop
                elif loop is not None and loop != own_loop:
                    p = loop
                if p != s and p not in deps:
                    deps.append(p)
            out[s] = tuple(sorted(deps, key=self.order.index))
        return MappingProxyType(out)

    @cached_property
    def dependants(self) -> Mapping[str, tuple[str, ...]]:
        """The linear steps that wait for each linear step, in order."""
        out: dict[str, list[str]] = {s: [] for s in self.linear}
        for s in self.linear:
            for w in self.waits[s]:
                out[w].append(s)
        return MappingProxyType({s: tuple(d) for s, d in out.items()})

    @cached_property
    def predecessors(self) -> Mapping[str, tuple[str, ...]]:
        """Each step's direct predecessors in the dependency graph."""
        return MappingProxyType({s: tuple(self.dag.predecessors(s)) for s in self.order})

    @cached_property
    def first_keys(self) -> Mapping[str, str]:
        """The journal key of each step's first execution (`critique#1` inside a loop body)."""
        out = {}
        for s in self.order:
            loop = self.loop_of.get(s)
            out[s] = f"{s}#1" if loop is not None and s != self.loops[loop].target else s
        return MappingProxyType(out)

    @cached_property
    def input_validator(self) -> Any:
        """The JSON Schema validator of the run input, built once (building one costs more
        than using it)."""
        from jsonschema import Draft202012Validator

        return Draft202012Validator(dict(self.workflow.inputs))

    def with_defaults(self, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """`inputs` with the `default` of every property the `inputs` schema declares and the
        run input leaves out (in nested objects too), as a reader of the schema expects."""
        if not self._input_defaults:
            return inputs
        return fill_defaults(self.workflow.inputs, inputs)

    @cached_property
    def _input_defaults(self) -> bool:
        return _has_defaults(self.workflow.inputs)

    def step_objects(self, registry: StepRegistry) -> dict[str, Step]:
        """The workflow's step instances from `registry`, made once per plan and registry."""
        made = self._step_objects.get(id(registry))
        if made is None or made[0] is not registry:
            steps = {
                s.id: _made(registry.get(s.type), s, self.workflow) for s in self.workflow.steps
            }
            made = self._step_objects[id(registry)] = (registry, steps)
        return made[1]

    def upstream(self, step: str) -> frozenset[str]:
        return frozenset(self.dag.ancestors(step) - {step})

    @cached_property
    def entry_steps(self) -> tuple[str, ...]:
        return tuple(s for s in self.linear if not self.waits[s])

    @cached_property
    def generations(self) -> tuple[tuple[str, ...], ...]:
        """Sets of steps that may run at the same time, in order."""
        return tuple(
            tuple(sorted(gen, key=self.order.index)) for gen in self.dag.generations(self.linear)
        )

    def occurrences(self, step: str) -> int:
        """How many times a step can run at most (loops re-run their body)."""
        if step in self.revisers:
            return next(lp.max_iterations for lp in self.loops.values() if lp.reviser == step)
        loop = self.loop_of.get(step)
        if loop is not None and step != self.loops[loop].target:
            return self.loops[loop].max_iterations + 1
        return 1

    def worst_case_calls(self, uses_model: Mapping[str, bool] | None = None) -> int:
        """Most model calls a run can make: occurrences × attempts over the steps that call one."""
        total = 0
        for s in self.workflow.steps:
            if uses_model is not None and not uses_model.get(s.id, True):
                continue
            total += self.occurrences(s.id) * s.retry.max_attempts
        return total


_plans: dict[int, tuple[Workflow, Plan]] = {}
_MAX_PLANS = 256


def compile_plan(workflow: Workflow) -> Plan:
    """The plan of `workflow`, compiled once per workflow object (workflows are immutable, so
    a batch of a thousand runs shares one)."""
    hit = _plans.get(id(workflow))
    if hit is not None and hit[0] is workflow:
        return hit[1]
    plan = Plan(workflow)
    if len(_plans) >= _MAX_PLANS:
        _plans.pop(next(iter(_plans)))
    _plans[id(workflow)] = (workflow, plan)
    return plan


def _has_defaults(schema: Any) -> bool:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return False
    return any(
        isinstance(p, Mapping) and ("default" in p or _has_defaults(p)) for p in props.values()
    )


def fill_defaults(schema: Mapping[str, Any], value: Mapping[str, Any]) -> dict[str, Any]:
    """`value` with the defaults of the properties it leaves out, nested objects too: what a
    run sees of its input."""
    import copy

    out = dict(value)
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, Mapping):
            continue
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if isinstance(out.get(name), Mapping) and _has_defaults(prop):
            out[name] = fill_defaults(prop, out[name])
    return out


def _made(cls: type[Step], spec: StepSpec, workflow: Workflow) -> Step:
    """A step instance; a step type whose constructor raises (a plugin's bug) is a
    configuration error that names it, before anything runs."""
    try:
        return cls(spec, workflow)
    except EclflowError:
        raise
    except Exception as e:
        where = f"{cls.__module__}:{cls.__qualname__}"
        raise ConfigError(
            f"step type '{spec.type}' ({where}) cannot be made for step '{spec.id}': "
            f"{type(e).__name__}: {e}"
        ) from e
