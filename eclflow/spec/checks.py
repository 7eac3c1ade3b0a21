"""Semantic checks of a schema-valid workflow: references, cycles, loops, templates, files.

Codes: E201 duplicate step id, E202 unknown step type, E203 unknown step reference, E204 cycle,
E205 loop bound, E206 too many steps, E207 loop wiring, E208 step input missing, E209 two
conditions on one edge, E210 an input written as it is that the step type refuses, E211 an
unknown local model, E301 template syntax, E302 unknown variable, E303 `steps.X` not available
here, E304 `loop.*` outside a loop, E305 `env.X` not declared, E306 an operation whose
operands' types never go together (`steps.a.output.text > 3`, `input.n | length` of a number),
E307 one that fails whatever the values (`x // 0`, `range(10**9)`), E401 prompt file missing or
too large, E402 step has no prompt, E403 prompt file outside the workflow file's folder;
warnings W501 step not connected, W502 output unused, W506 text `==` a number (never equal),
W507 a remote model litellm does not list.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .deps import DepGraph, dependency_graph
from .model import (
    Conditional,
    Diagnostic,
    Location,
    RevisionLoop,
    Sequential,
    Severity,
    Workflow,
    control_character,
)

# Names every template may use besides the context: Jinja's globals.
_JINJA_GLOBALS = frozenset(
    {"range", "dict", "lipsum", "cycler", "joiner", "namespace", "self", "super"}
)
_STEP_FIELDS = ("output", "status", "versions")
_LOOP_FIELDS = ("iteration", "max_iterations", "feedback", "history")
_LOOPS_FIELDS = ("revisions",)
# what a template may call on a step's output (a mapping) besides reading its fields
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})


def semantic_checks(
    wf: Workflow,
    data: Mapping[str, Any],
    located: Any,
    *,
    registry: Any = None,
    base: Path | None = None,
) -> list[Diagnostic]:
    """Every problem past the file's shape. `base`: the folder prompt files must be in (the
    workflow file's, where relative `prompt:` paths are resolved; None: the working
    directory)."""
    return _Checker(wf, data, located, registry, base).run()


# The names of the run's context, which expressions see and prompts do not
_CONTEXT_ROOTS = frozenset({"input", "steps", "loop", "loops", "env"})


def _bind_under_with(p: tuple[str, ...], names: Iterable[str]) -> str:
    """The hint of a prompt's E302 for a name its input lacks: a name of the run's context
    (`{{ input.q }}` in `template:`, the first thing one writes) is bound under `with:`."""
    if p[0] in _CONTEXT_ROOTS and len(p) > 1:
        expression = ".".join(p)
        name = p[-1] if p[-1].isidentifier() and p[-1] not in _CONTEXT_ROOTS else "value"
        return (
            f"a prompt sees its step's `with:` values, not the run's context: bind it, "
            f'with: {{{name}: "{{{{ {expression} }}}}"}}, and write {{{{ {name} }}}}'
        )
    return f"the prompt sees its step's input: {', '.join(_text_keys(names))}"


def _text_keys(keys: Iterable[Any]) -> list[str]:
    """`keys` that are text, sorted: a YAML key may be `null` or a number (`with: {1: …}`),
    which no expression can name, and which sorted() cannot order beside text."""
    return sorted(k for k in keys if isinstance(k, str))


def _did_you_mean(word: str, options: Sequence[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class _Checker:
    def __init__(
        self,
        wf: Workflow,
        data: Mapping[str, Any],
        located: Any,
        registry: Any,
        base: Path | None = None,
    ) -> None:
        self.wf = wf
        self.base = base
        self.data = data
        self.located = located
        if registry is None:
            from ..steps.registry import default_registry

            registry = default_registry()
        self.registry = registry
        self.out: list[Diagnostic] = []
        self.ids = list(dict.fromkeys(s.id for s in wf.steps))
        self.known = set(self.ids)
        self.trees: dict[tuple[str, bool], Any] = {}  # (text, whole) → its parsed template

    def parsed(self, text: str, *, whole: bool) -> Any:
        """`_parsed`, once per text: a value is read by several checks, and a prompt's
        variable's type parses what `with:` binds it to again."""
        key = (text, whole)
        if key not in self.trees:
            self.trees[key] = _parsed(text, whole=whole)  # (raises as _parsed does)
        return self.trees[key]

    def at(self, path: Sequence[Any], *, key: bool = False) -> Location:
        loc: Location = self.located.at(path, key=key)
        return loc

    def error(
        self,
        path: Sequence[Any],
        code: str,
        msg: str,
        hint: str | None = None,
        *,
        at: tuple[int, int] | None = None,
        severity: Severity = "error",
    ) -> None:
        """`at`: (line, column), 1-based, within the string at `path` (column 0: the line's
        first character)."""
        loc = self.at(path)
        if at is not None:
            loc = self.within(path, loc, *at)
        self.out.append(Diagnostic(loc, code, msg, hint, severity))

    def within(self, path: Sequence[Any], loc: Location, line: int, column: int) -> Location:
        """The location of a place in the string at `path`: in a block scalar (`|` or `>`),
        whose own location is its indicator, or in a one-line scalar; otherwise `loc`."""
        node: Any = self.located.doc
        try:
            for part in path:
                node = node[part]
        except Exception:
            return loc
        source = self.wf.source.splitlines()
        if type(node).__name__ == "FoldedScalarString":
            return _in_folded(loc, str(node), source, line, column)
        if type(node).__name__ != "LiteralScalarString":
            # a flow scalar, plain or quoted, on one line or folded from several
            if not isinstance(node, str) or column <= 0 or not 0 < loc.line <= len(source):
                return loc
            lines = node.split("\n")
            if not 0 < line <= len(lines):
                return loc
            offset = sum(len(t) + 1 for t in lines[: line - 1]) + column - 1
            found = _scalar_position(source, loc.line - 1, loc.col - 1, node, offset)
            return loc if found is None else Location(loc.file, *found)
        at = loc.line + line - 1  # 0-based index of the line: the text starts after the `|`
        if not 0 <= at < len(source):
            return loc
        text = source[at]
        indent = len(text) - len(text.lstrip())
        if column > 0:  # the block's lines are the source's without the block's indentation
            lines = str(node).splitlines()
            within = lines[line - 1] if line <= len(lines) else ""
            start = text.rfind(within) if within else -1
            return Location(loc.file, at + 1, (start if start >= 0 else indent) + column)
        return Location(loc.file, at + 1, indent + 1)

    def warn(self, path: Sequence[Any], code: str, msg: str, hint: str | None = None) -> None:
        self.out.append(Diagnostic(self.at(path), code, msg, hint, "warning"))

    def run(self) -> list[Diagnostic]:
        from .loader import MAX_STEPS

        if len(self.wf.steps) > MAX_STEPS:
            self.error(
                ["steps"],
                "E206",
                f"{len(self.wf.steps)} steps; a workflow may have at most {MAX_STEPS}",
                "split it into several workflows",
            )
        self.check_ids()
        self.check_types()
        self.check_models()
        self.check_references()
        if any(d.code == "E201" for d in self.out):
            # the graph of ambiguous ids would only report noise; missing files are missing
            for i, s in enumerate(self.wf.steps):
                self.prompt_missing(i, s, self.data["steps"][i])
            return self.out
        self.graph = dependency_graph(self.wf.steps, self.wf.transitions)
        has_cycle = self.check_cycles()
        self.check_loops()
        if has_cycle:  # no scopes to check templates in; missing files are missing still
            for i, s in enumerate(self.wf.steps):
                self.prompt_missing(i, s, self.data["steps"][i])
        else:
            self.check_templates()
            if not any(d.severity == "error" for d in self.out):
                self.check_reachability()
                self.check_pure_timeouts()
                self.check_skipped_reads()
        return self.out

    # --- identities and types ---------------------------------------------------------------

    def check_ids(self) -> None:
        """E201: a step id given twice. E113: an id with a control character (the schema's
        pattern lets a line break end one: "a\\n"); the journal keys its rows by them."""
        self.check_no_control(["id"], self.data.get("id"), "id")
        first: dict[str, int] = {}
        for i, s in enumerate(self.wf.steps):
            self.check_no_control(["steps", i, "id"], s.id, f"steps[{i}].id")
            if s.id in first:
                line = self.at(["steps", first[s.id], "id"]).line
                self.error(
                    ["steps", i, "id"],
                    "E201",
                    f"duplicate step id '{s.id}'",
                    f"first defined on line {line}",
                )
            else:
                first[s.id] = i

    def check_types(self) -> None:
        from ..steps.builtin import PromptStep, TemplateStep

        for i, s in enumerate(self.wf.steps):
            if s.type not in self.registry:
                names = self.registry.names()
                hint = _did_you_mean(s.type, names) or f"known types: {', '.join(names)}"
                broken = getattr(self.registry, "problem", lambda _: None)(s.type)
                if broken is not None:  # installed, but it does not import: say why
                    hint = f"{broken}; fix or reinstall the plugin"
                self.error(["steps", i, "type"], "E202", f"unknown step type '{s.type}'", hint)
                continue
            cls = self.registry.get(s.type)
            required = list((cls.input_schema or {}).get("required", ()))
            missing = [r for r in required if r not in s.with_]
            if missing:
                self.error(
                    ["steps", i, "with"] if "with" in self.data["steps"][i] else ["steps", i, "id"],
                    "E208",
                    f"step '{s.id}' of type {s.type} needs input "
                    + ", ".join(f"'{m}'" for m in missing),
                    "bind it under `with:`",
                )
            self.check_given(i, s, cls)
            needs_prompt = (
                issubclass(cls, PromptStep)
                and cls.default_template is None
                and cls.prompt_source is PromptStep.prompt_source  # (a plugin may give its own)
            ) or cls is TemplateStep
            if needs_prompt and s.template is None and s.prompt is None:
                self.error(
                    ["steps", i, "id"],
                    "E402",
                    f"step '{s.id}' of type {s.type} has no prompt",
                    "give it `template:` (inline) or `prompt:` (a file)",
                )

    def check_models(self) -> None:
        """E211: a `local/NAME` model that is neither bundled nor a GGUF file; a run would
        refuse it before its first step. W507: a remote model litellm's list does not have
        (`openai/gpt-4o-mnii`): a run fails at the first step that calls it, after paying for
        the steps before it. Only a warning: new models come before litellm lists them."""
        defaults = self.data.get("defaults")
        written: list[tuple[list[Any], Any]] = [
            (["model"], self.data.get("model")),
            (
                ["defaults", "model"],
                defaults.get("model") if isinstance(defaults, Mapping) else None,
            ),
            *(
                (["steps", i, "model"], raw.get("model"))
                for i, raw in enumerate(self.data["steps"])
            ),
        ]
        from ..llm.names import unknown_local, unlisted_remote

        for path, model in written:
            if not isinstance(model, str):
                continue
            where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path)
            if self.check_no_control(path, model, where.replace(".[", "[")):
                continue
            if model.startswith("local/"):
                hint = unknown_local(model)
                if hint is not None:
                    self.error(path, "E211", f"unknown local model '{model}'", hint)
                continue
            unlisted = unlisted_remote(model)
            if unlisted is not None:
                self.warn(path, "W507", unlisted.message, unlisted.hint)

    def check_no_control(self, path: list[Any], value: Any, where: str) -> bool:
        """E113 when a name (an id, a model) has a control character: a NUL, which a
        PostgreSQL journal cannot hold, a line break, a tab. Whether it had one."""
        found = control_character(value) if isinstance(value, str) else None
        if found is None:
            return False
        self.error(
            path,
            "E113",
            f"{where} {json.dumps(value)} has a control character ({found})",
            'remove it: "\\0", "\\n" or "\\t" in a double-quoted string is one',
        )
        return True

    def check_given(self, i: int, s: Any, cls: Any) -> None:
        """E210: an input `with:` writes as it is (no template) that the step's type refuses;
        the run would fail there, after paying for the steps before it."""
        from ..errors import ValidationError
        from ..expr import render_value

        # what a run would hand the step: render_value thaws the frozen containers
        given = {k: render_value(v, {}) for k, v in s.with_.items() if _written_as_is(v)}
        if not given:
            return
        try:
            cls(s, self.wf).validate_given(given)
        except ValidationError as e:
            name = (e.field or "").split(".")[0]
            if name not in given and len(given) == 1:
                name = next(iter(given))
            where = ["steps", i, "with", name] if name in given else ["steps", i, "with"]
            self.error(
                where,
                "E210",
                f"step '{s.id}', input '{name}': {e.reason}"
                if name in given
                else f"step '{s.id}': {e.reason}",
                "bind a value the step accepts, or an expression",
            )
        except Exception:  # a plugin's own bug is for its run to report
            return

    def ref(self, path: Sequence[Any], name: str, what: str) -> bool:
        if name in self.known:
            return True
        hint = _did_you_mean(name, self.ids) or f"steps are: {', '.join(self.ids[:20])}"
        self.error(path, "E203", f"unknown step '{name}' in {what}", hint)
        return False

    def check_references(self) -> None:
        for i, s in enumerate(self.wf.steps):
            for j, dep in enumerate(s.depends_on):
                self.ref(["steps", i, "depends_on", j], dep, f"steps[{i}].depends_on")
            if s.revision_source is not None:
                self.ref(
                    ["steps", i, "revision_source"],
                    s.revision_source,
                    f"steps[{i}].revision_source",
                )
        conditions: dict[tuple[str, str], int] = {}
        for i, t in enumerate(self.wf.transitions):
            if isinstance(t, Conditional):
                first = conditions.setdefault((t.from_, t.to), i)
                if first != i:  # (the graph keeps one edge a pair: the last would win)
                    self.error(
                        ["transitions", i],
                        "E209",
                        f"transitions[{i}] and transitions[{first}] are both conditions on "
                        f"{t.from_} -> {t.to}",
                        "write one condition that says both: (a) or (b)",
                    )
            if isinstance(t, Sequential | Conditional):
                self.ref(["transitions", i, "from"], t.from_, f"transitions[{i}].from")
                self.ref(["transitions", i, "to"], t.to, f"transitions[{i}].to")
            else:
                for field in ("validator", "reviser", "target"):
                    self.ref(
                        ["transitions", i, field], getattr(t, field), f"transitions[{i}].{field}"
                    )

    # --- graph ------------------------------------------------------------------------------

    def edge_path(self, a: str, b: str) -> list[Any]:
        """Where the edge a → b is declared: the depends_on entry or the transition."""
        for i, s in enumerate(self.wf.steps):
            if s.id == b and a in s.depends_on:
                return ["steps", i, "depends_on", s.depends_on.index(a)]
        for i, t in enumerate(self.wf.transitions):
            if isinstance(t, Sequential | Conditional) and t.from_ == a and t.to == b:
                return ["transitions", i]
        return ["steps"]

    def check_cycles(self) -> bool:
        cycles = self.graph.cycles()
        for cycle in cycles:
            a, b = cycle[-1], cycle[0]
            self.error(
                self.edge_path(a, b),
                "E204",
                f"cycle {' -> '.join([*cycle, b])}",
                "only a revision_loop transition may lead back to an earlier step",
            )
        return bool(cycles)

    def loop_body(self, loop: RevisionLoop) -> set[str]:
        g = self.graph
        if loop.target not in g or loop.validator not in g:
            return set()
        body = (g.descendants(loop.target) | {loop.target}) & (
            g.ancestors(loop.validator) | {loop.validator}
        )
        return body | {loop.target, loop.validator}

    def check_loops(self) -> None:
        validators: dict[str, int] = {}
        revisers: dict[str, int] = {}
        taken: dict[str, int] = {}  # step → the loop (transition index) whose body holds it
        # (another loop's reviser stands for that loop's validator, as the engine waits)
        reviser_of = {x.reviser: x.validator for x in self.wf.loops}
        self.loop_scope: dict[str, set[str]] = {}  # step → steps of its loop
        self.in_loop: set[str] = set()
        for i, t in enumerate(self.wf.transitions):
            if not isinstance(t, RevisionLoop):
                continue
            if not all(x in self.known for x in (t.validator, t.reviser, t.target)):
                # E203 said so; the reviser is still meant to be this loop's: no E207 for its
                # revision_source, no E304 for its loop.*
                if t.reviser in self.known and t.validator in self.known:
                    revisers.setdefault(t.reviser, i)
                self.broken_loop(t)
                continue
            where = f"transitions[{i}]"
            if t.validator in validators:
                self.error(
                    ["transitions", i, "validator"],
                    "E207",
                    f"step '{t.validator}' already validates the loop in "
                    f"transitions[{validators[t.validator]}]",
                )
            validators.setdefault(t.validator, i)
            if t.reviser in revisers:
                self.error(
                    ["transitions", i, "reviser"],
                    "E207",
                    f"step '{t.reviser}' already revises for the loop in "
                    f"transitions[{revisers[t.reviser]}]",
                )
            revisers.setdefault(t.reviser, i)
            if t.reviser in (t.validator, t.target):
                self.error(
                    ["transitions", i, "reviser"],
                    "E207",
                    f"the reviser of {where} must be a step of its own, not '{t.reviser}'",
                )
                self.broken_loop(t)
                continue
            if t.target != t.validator and not self.graph.has_path(t.target, t.validator):
                self.error(
                    ["transitions", i, "target"],
                    "E207",
                    f"target '{t.target}' is not upstream of validator '{t.validator}'",
                    f"the validator must depend (directly or not) on '{t.target}'",
                )
                self.broken_loop(t)
                continue
            if self.never_revises(t.validator):
                v = self.wf.step(t.validator)
                why = (
                    "its output has no decision"
                    if v.output_schema is None
                    else "its output_schema does not admit `decision: revise`"
                )
                self.error(
                    ["transitions", i, "validator"],
                    "E207",
                    f"validator '{t.validator}' (type {v.type}) never asks for a revision: {why}",
                    "use a critique step, or an llm step whose output_schema has `decision`",
                )
                self.broken_loop(t)
                continue
            if t.target == t.validator:
                # (a validator revised in place would never be asked again: the loop would
                # call its reviser to the bound and fail)
                self.error(
                    ["transitions", i, "target"],
                    "E207",
                    f"the target of {where} is its validator '{t.validator}'",
                    "the target is the step whose output the validator judges: a step upstream "
                    "of it",
                )
                self.broken_loop(t)
                continue
            body = self.loop_body(t)
            if t.reviser in body or self.graph.has_path(t.reviser, t.validator):
                self.error(
                    ["transitions", i, "reviser"],
                    "E207",
                    f"reviser '{t.reviser}' runs before validator '{t.validator}'",
                    "the reviser runs only when the validator asks for a revision",
                )
                self.broken_loop(t)
                continue
            shared = sorted((body | {t.reviser}) & taken.keys(), key=self.wf.step_ids.index)
            if shared:
                other = taken[shared[0]]
                self.error(
                    ["transitions", i, "target"],
                    "E207",
                    f"the loop of {where} shares step '{shared[0]}' with the loop of "
                    f"transitions[{other}]",
                    "loops may not share steps: each would re-run them under the same keys",
                )
                self.broken_loop(t)
                continue
            outside = [
                p
                for p in self.graph.predecessors(t.reviser)
                if p not in body
                and reviser_of.get(p, p) not in self.graph.ancestors(t.validator)
                and reviser_of.get(p, p) not in body
            ]
            if outside:
                self.error(
                    ["transitions", i, "reviser"],
                    "E207",
                    f"reviser '{t.reviser}' depends on '{outside[0]}', which the loop does not "
                    "wait for",
                    f"make validator '{t.validator}' depend on '{outside[0]}' (directly or not)",
                )
                self.broken_loop(t)
                continue
            taken.update(dict.fromkeys(body | {t.reviser}, i))
            # The reviser sees the whole loop; body steps see only what is upstream of them
            # (the validator has not run yet when they first run).
            self.loop_scope.setdefault(t.reviser, set()).update(body)
            self.in_loop |= body | {t.reviser}
        for i, s in enumerate(self.wf.steps):
            src = s.revision_source
            if src is None or src not in self.known:
                continue
            if revisers.get(s.id) is None or self.wf.transitions[revisers[s.id]].validator != src:  # type: ignore[union-attr]
                self.error(
                    ["steps", i, "revision_source"],
                    "E207",
                    f"step '{s.id}' names revision_source '{src}', but no revision_loop has "
                    f"validator '{src}' and reviser '{s.id}'",
                    "add the revision_loop transition or remove revision_source",
                )

    def never_revises(self, step_id: str) -> bool:
        """Whether a step's type can never return needs_revision: the built-in types whose
        output has no `decision` (plugin types may, so they are trusted)."""
        from ..steps.builtin import GenerateStep, LLMStep, ReviseStep, TemplateStep

        s = self.wf.step(step_id)
        if s.type not in self.registry:
            return False
        cls = self.registry.get(s.type)
        if cls in (GenerateStep, ReviseStep, TemplateStep):
            return True
        return cls is LLMStep and not _may_hold_revise(s.output_schema)

    def broken_loop(self, t: RevisionLoop) -> None:
        """A loop already reported: its reviser may read what a reviser may (every step,
        `loop.*`), so that the one mistake is not reported again in its templates."""
        if t.reviser in self.known:
            self.loop_scope.setdefault(t.reviser, set()).update(self.known)
            self.in_loop.add(t.reviser)

    # --- templates --------------------------------------------------------------------------

    def loop_members(self) -> dict[str, set[str]]:
        """Each loop's steps (by validator): its target, validator, reviser and the steps
        between target and validator. A step that depends on any of them waits for the whole
        loop, so the loop's count is known there."""
        g = self.graph
        members = {}
        for t in self.wf.loops:
            body = {t.target, t.validator, t.reviser}
            if t.target in g and t.validator in g:
                body |= g.ancestors(t.validator) & g.descendants(t.target)
            members[t.validator] = body
        return members

    def check_templates(self) -> None:
        loops = {t.validator for t in self.wf.loops}
        members = self.loop_members()
        fields = self.output_fields()
        inputs = _closed_fields(self.wf.inputs)

        def after(step: str, upstream: set[str]) -> set[str]:
            """The loops whose count `step` can read: it is not in them, and waits for them."""
            return {v for v, m in members.items() if step not in m and m & upstream}

        for i, s in enumerate(self.wf.steps):
            upstream = self.graph.ancestors(s.id) if s.id in self.graph else set()
            allowed = upstream | self.loop_scope.get(s.id, set())
            allowed.discard(s.id)
            scope = _Scope(
                f"step '{s.id}'",
                allowed,
                s.id in self.in_loop,
                loops,
                set(self.wf.env),
                after(s.id, upstream),
                fields,
                self.revised_by,
                inputs,
            )
            raw = self.data["steps"][i]
            for path, text in _strings(raw.get("with"), ["steps", i, "with"]):
                self.expression(path, text, scope, whole=False)
            self.prompt_templates(i, s, raw)
        for i, t in enumerate(self.wf.transitions):
            if isinstance(t, Conditional) and t.to in self.graph:
                allowed = self.graph.ancestors(t.to) | {t.from_}
                scope = _Scope(
                    f"the condition of transitions[{i}]",
                    allowed,
                    False,
                    loops,
                    set(self.wf.env),
                    after(t.to, allowed),
                    fields,
                    self.revised_by,
                    inputs,
                )
                when = self.data["transitions"][i]["when"]
                if isinstance(when, str):
                    self.expression(["transitions", i, "when"], when, scope, whole=True)
        scope = _Scope(
            "output",
            self.known,
            False,
            loops,
            set(self.wf.env),
            loops,
            fields,
            self.revised_by,
            inputs,
        )
        for path, text in _strings(self.data.get("output"), ["output"]):
            self.expression(path, text, scope, whole=False)

    def output_fields(self) -> dict[str, frozenset[str] | None]:
        """The fields each step's output has, where its type fixes them (None: not known). A
        loop's target has those its reviser's output has too (which replaces it)."""
        from ..steps.builtin import CritiqueStep, GenerateStep, LLMStep, ReviseStep, TemplateStep

        fixed: dict[Any, frozenset[str]] = {
            GenerateStep: frozenset({"draft"}),
            ReviseStep: frozenset({"draft"}),
            CritiqueStep: frozenset({"decision", "critique", "feedback", "quality_score"}),
            TemplateStep: frozenset({"text"}),
        }
        fields: dict[str, frozenset[str] | None] = {}
        self.revised_by: dict[str, str] = {}  # a loop's target → its reviser
        for i, s in enumerate(self.wf.steps):
            cls = self.registry.get(s.type) if s.type in self.registry else None
            if cls is None:
                fields[s.id] = None
            elif cls in fixed:
                fields[s.id] = fixed[cls]
                required = (s.output_schema or {}).get("required")
                missing = [r for r in required or () if isinstance(r, str) and r not in fixed[cls]]
                if isinstance(required, list) and missing:
                    self.error(
                        ["steps", i, "output_schema", "required"],
                        "E116",
                        f"steps.{s.id}.output_schema requires {', '.join(map(repr, missing))}, "
                        f"which a {s.type} step's output never has (it has "
                        f"{', '.join(sorted(fixed[cls]))}): every attempt would fail",
                        "an `llm` step's output is the JSON its output_schema describes",
                    )
            elif cls is LLMStep:
                closed = _closed_fields(s.output_schema)
                fields[s.id] = frozenset({"text"}) if s.output_schema is None else closed
            else:  # a plugin type: what its own schema closes, if it does
                fields[s.id] = _closed_fields(s.output_schema or cls.output_schema)
        for t in self.wf.loops:
            target, reviser = fields.get(t.target), fields.get(t.reviser)
            if t.target in fields:
                # after a revision the target's output is the reviser's: what is read of it
                # must be in both
                fields[t.target] = None if target is None or reviser is None else target & reviser
                self.revised_by[t.target] = t.reviser
        return fields

    def expression(self, path: list[Any], text: str, scope: _Scope, *, whole: bool) -> None:
        import jinja2

        from .. import expr

        if whole and not text.strip(" {}"):  # (`when: ""`, `when: "{{ }}"`)
            self.error(
                path,
                "E301",
                "the condition is empty",
                "write an expression, e.g. steps.a.output.decision == 'pass'",
            )
            return
        if (
            whole
            and expr.single_expression(text) is None
            and expr.has_template(text)
            and not _parses_as_expression(text)  # ('{{' in x: braces in a string literal)
        ):
            # the engine evaluates a condition as one expression: `{{ a }} == {{ b }}` or
            # `value: {{ x }}` would fail every run
            self.error(
                path,
                "E301",
                "a condition is one expression, not text around {{ }} or {% %}",
                "write it bare (steps.a.output.n == 1) or as exactly one {{ … }}",
            )
            return
        try:
            tree = self.parsed(text, whole=whole)
            if tree is None:
                return
        except jinja2.TemplateSyntaxError as e:
            at = (e.lineno, _failing_tag(text, e.lineno)) if e.lineno else None
            self.error(path, "E301", f"template does not parse: {e.message}", at=at)
            return
        except Exception as e:  # the sandbox's parser on absurd input
            self.error(path, "E301", f"template does not parse: {type(e).__name__}")
            return
        if not self.filters_and_tests(path, tree, text, kinds_of=self.path_kinds):
            return
        jinja_loop = _uses_jinja_loop(tree)
        named_well = True
        for p in expr.referenced_paths(tree):
            if p[0] == "loop" and jinja_loop:
                continue  # Jinja's own `loop` inside {% for %}
            problem = scope.check(p, self.ids) or self.field_of_scalar(p, tree)
            if problem is not None:
                named_well = False
                code, msg, hint = problem
                self.error(path, code, msg, hint, at=_position_of(text, p))
        if named_well:
            self.check_kinds(path, text, tree)

    def field_of_scalar(self, p: tuple[str, ...], tree: Any) -> tuple[str, str, str | None] | None:
        """E302 for `steps.a.output.text.summary`: a field read of a value that is certainly a
        string, number, boolean or null (as E306 knows types), which has no such attribute: the
        run fails there ('str object' has no attribute 'summary'), after the steps before.
        Not where the run never reads it (a constant turns it away, the template tests the
        value: `x.summary if x is mapping else x`), as E306."""
        from .kinds import NONE, describe, live_reads

        for n in range(2, len(p)):
            kinds = self.path_kinds(p[:n])
            if not kinds or not kinds <= _SCALARS:
                continue
            name = p[n]
            if name.startswith("_") or any(hasattr(k, name) for k in kinds if k is not NONE):
                return None  # (a method: `text.upper()`; a dunder is E301's)
            if str in kinds and name.isdigit():
                return None  # (an index, `text[0]` or `text.0`: a string's character)
            if p not in live_reads(tree):
                return None
            shown = ".".join(p[:n])
            hint = (
                f"give step '{p[1]}' an output_schema with the fields its JSON reply has"
                if p[0] == "steps" and p[2:n] == ("output", "text")
                else f"read {shown} itself"
            )
            return ("E302", f"{shown} is {describe(kinds)}: it has no field '{name}'", hint)
        return None

    def check_kinds(self, path: list[Any], text: str, tree: Any) -> None:
        """E306: an operation whose operands' types never go together (`steps.a.output.text
        > 3`, a reply compared with a number): the run would fail there, after paying for the
        steps before it. W506: text `==` a number, never equal (the branch never runs)."""
        from jinja2 import nodes

        from .kinds import clashes, judged

        operations = (nodes.Compare, nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv)
        if not judged(tree, (*operations, nodes.Mod, nodes.Pow, nodes.For)):
            return  # (most bindings are one variable: nothing to judge)

        for c in clashes(tree, self.path_kinds, _CONTEXT_ROOTS):
            at = _clash_position(text, c)
            severity: Severity = "warning" if c.code.startswith("W") else "error"  # (W506)
            self.error(
                path, c.code, c.message, c.hint, at=at or (c.node.lineno, 0), severity=severity
            )

    def path_kinds(self, p: tuple[str, ...]) -> Any:
        """The types the value at a variable path may have at run time, where they are known
        for sure; None otherwise. (A value missing there fails the run anyway.)"""
        from .kinds import INTEGER, STRING, schema_at, schema_kinds

        root = p[0]
        if root == "input" and len(p) >= 2:
            return schema_kinds(schema_at(self.wf.inputs, p[1:]), with_default=True)
        if root == "env" and len(p) == 2:
            return STRING  # (an environment variable is text; one that is unset: undefined)
        if root == "loops" and p[2:] == ("revisions",):
            return INTEGER
        if root == "loop" and p[1:] in (("iteration",), ("max_iterations",)):
            return INTEGER
        if root != "steps" or len(p) < 3:
            return None
        if p[2:] == ("status",):
            return STRING
        if p[2:] == ("output",):  # a built-in step's output (a plugin's: unknown)
            revisers = [r for r in (self.revised_by.get(p[1]),) if r is not None]
            known = [self.output_kinds(s, ()) for s in (p[1], *revisers)]
            return None if None in known else frozenset().union(*known)
        if p[2] != "output" or len(p) < 4:
            return None
        kinds = self.output_kinds(p[1], p[3:])
        reviser = self.revised_by.get(p[1])
        if kinds is not None and reviser is not None:  # (a revision replaces the output)
            more = self.output_kinds(reviser, p[3:])
            return None if more is None else kinds | more
        return kinds

    def output_kinds(self, step_id: str, fields: tuple[str, ...]) -> Any:
        """The types of a field of a built-in step's output (`text` of an `llm` step without
        output_schema is its reply, a string); None for a plugin's, or where not known."""
        from ..steps.builtin import CritiqueStep, GenerateStep, LLMStep, ReviseStep, TemplateStep
        from .kinds import NUMBER, STRING, schema_at, schema_kinds

        try:
            s = self.wf.step(step_id)
        except KeyError:  # (a loop's reviser that is no step: E203 says so)
            return None
        cls = self.registry.get(s.type) if s.type in self.registry else None
        if not fields:  # the output itself: a mapping, but an llm step's JSON may be any value
            if cls is LLMStep and s.output_schema is not None:
                return schema_kinds(s.output_schema)
            builtin = (CritiqueStep, GenerateStep, LLMStep, ReviseStep, TemplateStep)
            return frozenset({dict}) if cls in builtin else None
        if cls is LLMStep and s.output_schema is not None:
            # the output is checked against it: a field it types has that type
            return schema_kinds(schema_at(s.output_schema, fields))
        fixed: dict[Any, dict[str, Any]] = {
            GenerateStep: {"draft": STRING},
            ReviseStep: {"draft": STRING},
            TemplateStep: {"text": STRING},
            LLMStep: {"text": STRING},
            CritiqueStep: {
                "decision": STRING,
                "critique": STRING,
                "feedback": STRING,
                "quality_score": NUMBER,
            },
        }
        if cls not in fixed or len(fields) != 1:
            return None
        return fixed[cls].get(fields[0])

    def prompt_missing(self, i: int, s: Any, raw: Mapping[str, Any]) -> bool:
        """E403 when the step's prompt file is outside the workflow file's folder, E401 when
        it does not exist: True when either was said."""
        from .loader import is_dir, is_file, prompt_outside

        if s.prompt is None:
            return False
        name = str(raw["prompt"])
        shown = name if len(name) <= 80 else name[:60] + "…"
        folder = prompt_outside(s.prompt, self.base)
        if folder is not None:
            self.error(
                ["steps", i, "prompt"],
                "E403",
                f"prompt file {shown!r} is outside the workflow file's folder {str(folder)!r}"
                + (" (a link leads out of it)" if _leads_out(name, folder) else ""),
                "move (or copy) the file next to the workflow file, or into a folder under it, "
                "and name it relative to the workflow file: a prompt file is sent to the model",
            )
            return True
        if is_file(s.prompt):
            return False
        if is_dir(s.prompt):
            self.error(
                ["steps", i, "prompt"],
                "E401",
                f"prompt file {shown!r} is a directory",
                "name a template file in it",
            )
            return True
        what = _not_a_file(s.prompt)
        if what is not None:  # (it exists: "not found" sent one looking for a typo)
            self.error(
                ["steps", i, "prompt"],
                "E401",
                f"prompt file {shown!r} is {what}, not a file",
                "name a template file",
            )
            return True
        self.error(
            ["steps", i, "prompt"],
            "E401",
            f"prompt file {shown!r} not found"
            + (f" (its name has {len(name)} characters)" if len(name) > 80 else ""),
            "paths are relative to the workflow file; bundled: generate.j2, critique.j2, revise.j2",
        )
        return True

    def prompt_templates(self, i: int, s: Any, raw: Mapping[str, Any]) -> None:
        import jinja2

        from .. import expr
        from .loader import MAX_PROMPT_BYTES, PromptTooLarge, _wide_encoding, read_prompt_bytes

        if self.prompt_missing(i, s, raw):
            return
        sources: list[tuple[list[Any], str, str]] = []
        if s.template is not None:
            sources.append((["steps", i, "template"], s.template, ""))
        elif s.prompt is not None:
            try:
                raw_text = read_prompt_bytes(s.prompt)
                wide = _wide_encoding(raw_text)
                if wide is not None or b"\x00" in raw_text:
                    self.error(
                        ["steps", i, "prompt"],
                        "E401",
                        f"prompt file {str(raw['prompt'])!r} is "
                        + (f"{wide} text" if wide else "not text (it holds NUL bytes)"),
                        f"save it as UTF-8, e.g. with `iconv -f {wide} -t UTF-8`"
                        if wide
                        else "name a template file",
                    )
                    return
                # (newlines as the run reads the file: in text mode)
                text = raw_text.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
                sources.append((["steps", i, "prompt"], text, str(raw["prompt"])))
            except UnicodeDecodeError as e:
                line = e.object[: e.start].count(b"\n") + 1
                self.error(
                    ["steps", i, "prompt"],
                    "E401",
                    f"prompt file {str(raw['prompt'])!r} is not UTF-8 text "
                    f"(byte 0x{e.object[e.start]:02x} on line {line})",
                    "save it as UTF-8",
                )
                return
            except PromptTooLarge:
                self.error(
                    ["steps", i, "prompt"],
                    "E401",
                    f"prompt file {str(raw['prompt'])!r} is too large: a prompt file may "
                    f"hold at most {MAX_PROMPT_BYTES // 2**20} MiB",
                    "is this the prompt file you meant? put long reference text in a step's "
                    "input rather than in its prompt",
                )
                return
            except OSError as e:
                self.error(
                    ["steps", i, "prompt"],
                    "E401",
                    f"cannot read prompt file {str(raw['prompt'])!r}: {e.strerror or e}",
                )
                return
        if s.system is not None:
            sources.append((["steps", i, "system"], s.system, ""))
        names = self.prompt_names(s)
        for path, text, file in sources:
            # a problem in a prompt file is located in that file, at its line and column
            say = functools.partial(self.in_prompt, s, file, text) if file else None
            try:
                tree = expr.parse(text)
            except jinja2.TemplateSyntaxError as e:
                message = f"template does not parse: {e.message}"
                at = (e.lineno, 0) if e.lineno else None
                if say is not None:
                    say("E301", f"prompt of step '{s.id}': {message}", None, at)
                else:
                    self.error(path, "E301", message, at=at)
                continue
            except Exception as e:
                message = f"template does not parse: {type(e).__name__}"
                if say is not None:
                    say("E301", f"prompt of step '{s.id}': {message}", None, None)
                else:
                    self.error(path, "E301", message)
                continue
            if not self.filters_and_tests(path, tree, text, say, s.id if file else None):
                continue
            if names is None:
                continue
            uses_loop_var = _uses_jinja_loop(tree)
            named_well = True
            for p in expr.referenced_paths(tree):
                root = p[0]
                if root in names or root in _JINJA_GLOBALS or (root == "loop" and uses_loop_var):
                    continue
                named_well = False
                hint = _did_you_mean(root, _text_keys(names)) or _bind_under_with(p, names)
                found = _position_of(text, p)
                message = f"prompt of step '{s.id}' uses '{root}', which is not in its input"
                if say is not None:
                    say("E302", message, hint, found)
                else:
                    self.error(path, "E302", message, hint, at=found)
            if named_well:
                self.prompt_kinds(s, path, text, tree, file)

    def prompt_kinds(self, s: Any, path: list[Any], text: str, tree: Any, file: str) -> None:
        """E306 and W506 in a step's prompt (inline, or in its `prompt:` file, where they are
        located): the prompt's variables are the step's input, whose types are those of what
        `with:` binds (a value written as it is, one `{{ … }}` whose type is known, text
        around `{{ … }}`), and `config` and `max_revisions`."""
        from jinja2 import nodes

        from .kinds import INTEGER, clashes, judged

        if not judged(tree, (nodes.Compare, nodes.BinExpr, nodes.For)):
            return
        from ..steps.builtin import PromptStep

        takes_max = issubclass(self.registry.get(s.type), PromptStep)

        def kinds_of(p: tuple[str, ...]) -> Any:
            root, rest = p[0], p[1:]
            if root in s.with_:
                return self.binding_kinds(s.with_[root], rest)
            if root == "config":
                return _config_kinds(s.config, rest)
            if root == "max_revisions" and takes_max and not rest:
                return INTEGER
            return None

        for c in clashes(tree, kinds_of, {*s.with_, "config", "max_revisions"}):
            severity: Severity = "warning" if c.code.startswith("W") else "error"
            at = _clash_position(text, c)
            at = at or (c.node.lineno, 0)
            message = f"prompt of step '{s.id}': {c.message}"
            if file:
                self.in_prompt(s, file, text, c.code, message, c.hint, at, severity)
            else:
                self.error(path, c.code, message, c.hint, at=at, severity=severity)

    def in_prompt(
        self,
        s: Any,
        file: str,
        text: str,
        code: str,
        message: str,
        hint: str | None,
        at: tuple[int, int] | None,
        severity: Severity = "error",
    ) -> None:
        """A problem of step `s`'s prompt file (`file` as the step names it; `text`, what it
        holds), located where it is written in that file: `at` (line, column; column 0: the
        line's first character other than a blank), else the file's first line."""
        lines = text.splitlines()
        line_no, col = at if at is not None and 0 < at[0] <= max(len(lines), 1) else (1, 0)
        if col <= 0:
            line = lines[line_no - 1] if lines else ""
            col = len(line) - len(line.lstrip()) + 1
        where = Location(self.prompt_file_shown(s, file), line_no, col)
        self.out.append(Diagnostic(where, code, message, hint, severity))

    def binding_kinds(self, value: Any, rest: tuple[str, ...]) -> Any:
        """The types of what a `with:` binding gives its step (at the fields `rest` in it),
        where known: as `expr.render_value` makes it."""
        from .. import expr
        from .kinds import STRING, single_node, value_kinds

        if isinstance(value, Mapping):
            if not rest:
                return frozenset({dict})
            return self.binding_kinds(value[rest[0]], rest[1:]) if rest[0] in value else None
        if not isinstance(value, str) or not expr.has_template(value):
            return _literal_kinds(value, rest)
        body = expr.single_expression(value)
        if body is None:  # text around {{ … }}: rendered as text
            return None if rest else STRING
        try:
            tree = self.parsed(value, whole=False)  # (as its own check parsed it)
            if single_node(tree) is None:  # (`  {{ x }}`: blanks around it)
                tree = expr.parse_expression(body)
        except Exception:
            return None  # (its E301 is said where it is bound)
        if not rest:
            return value_kinds(tree, self.path_kinds)
        node = single_node(tree)  # `x: "{{ steps.a.output }}"`, read as `x.text`
        bound = expr.path_of(node) if node is not None else None
        return None if bound is None else self.path_kinds((*bound, *rest))

    def prompt_file_shown(self, s: Any, file: str) -> str:
        """How to name a step's prompt file in a diagnostic: beside the workflow file as the
        command line named it (`workflows/p.j2`), else its full path."""
        import os

        beside = os.path.normpath(os.path.join(os.path.dirname(self.located.file), file))
        try:
            if os.path.samefile(beside, s.prompt):
                return beside
        except OSError:
            pass
        return str(s.prompt)

    def filters_and_tests(
        self,
        path: list[Any],
        tree: Any,
        text: str | None,
        say: Callable[[str, str, str | None, tuple[int, int] | None], None] | None = None,
        step: str | None = None,
        *,
        kinds_of: Callable[[tuple[str, ...]], Any] | None = None,
    ) -> bool:
        """Report `| nosuchfilter` and `is nosuchtest` (Jinja finds them only when it compiles,
        that is at run time) and what the sandbox refuses; False when there was one. `text`:
        the template's text, where the problem is located (None: at `path`). `say`: how to
        report one in a prompt file (that of step `step`), in place of `self.error`.
        `kinds_of`: the types of an expression's variable path, where known: `x['__init__']`
        of a value that may be a mapping reads a key it may hold (the run looks a mapping's
        key up first), which the checks of names judge (E302); a prompt's are all refused."""
        from jinja2 import nodes

        from .. import expr

        def report(code: str, message: str, hint: str | None, at: Any) -> None:
            if say is not None:
                say(code, f"prompt of step '{step}': {message}", hint, at)
            else:
                self.error(path, code, message, hint, at=at if text is not None else None)

        env = expr.environment()
        ok = True
        for n in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            ok = False
            tag = {nodes.Include: "include", nodes.Extends: "extends"}.get(type(n), "import")
            report(
                "E301",
                f"{{% {tag} %}} is not supported: a template cannot load another",
                "put the text in this template, or pass it in through `with:`",
                (n.lineno, 0),
            )
        for n in tree.find_all((nodes.Getattr, nodes.Getitem)):
            name = n.attr if isinstance(n, nodes.Getattr) else getattr(n.arg, "value", None)
            if name in _EVERY_OBJECTS and not self.may_be_mapping(n.node, kinds_of):
                ok = False
                report(
                    "E301",
                    f"`{name}` is refused by the sandbox: a template cannot reach Python's "
                    "internals",
                    "read the data: input, steps, loop and the step's `with:` values",
                    _position_on(text, (name,), n.lineno) if text is not None else None,
                )
        taken: set[tuple[int, int]] = set()  # (numbers on one line: each said once)
        for n, shown in _infinite_constants(tree):
            ok = False
            number = _number_on(text, n, taken) if text is not None else None
            if number is not None:
                taken.add(number[:2])
                if isinstance(n, nodes.Const):
                    shown = number[2]  # (as written: `1e400`, not `inf`)
            report(
                "E301",
                f"`{shown}` is infinite: numbers in a workflow must be finite (Jinja cannot "
                "compile an infinite one: a run fails there, NameError: name 'inf' is not "
                "defined)",
                "write a number a float can hold (at most about 1.8e308)",
                number[:2] if number is not None else ((n.lineno, 0) if text else None),
            )
        for kind, node_type, known in (
            ("filter", nodes.Filter, env.filters),
            ("test", nodes.Test, env.tests),
        ):
            for n in tree.find_all(node_type):
                if n.name in known:
                    continue
                ok = False
                hint = _did_you_mean(n.name, _text_keys(known)) or f"see Jinja's built-in {kind}s"
                at = _position_of_name(text, kind, n.name, n.lineno) if text is not None else None
                report("E301", f"no {kind} named '{n.name}'", hint, at)
        return ok

    @staticmethod
    def may_be_mapping(node: Any, kinds_of: Callable[[tuple[str, ...]], Any] | None) -> bool:
        """Whether the value of `node` (what `node['__init__']` reads from) may be a mapping,
        as far as known: the run's `input`, or a path `kinds_of` gives a mapping's type."""
        from .. import expr

        p = expr.path_of(node)
        if p is None or kinds_of is None:
            return False
        if p == ("input",):
            return True
        kinds = kinds_of(p)
        return kinds is not None and dict in kinds

    def prompt_names(self, s: Any) -> set[str] | None:
        """Variables a built-in step's prompt can see; None for plugin types (unknown)."""
        from ..steps.builtin import PromptStep, TemplateStep

        if s.type not in self.registry:
            return None
        cls = self.registry.get(s.type)
        if not (issubclass(cls, PromptStep) or issubclass(cls, TemplateStep)):
            return None
        if cls.__module__ != "eclflow.steps.builtin":
            return None
        props = (cls.input_schema or {}).get("properties", {})
        model_step = {"max_revisions"} if issubclass(cls, PromptStep) else set()
        return set(s.with_) | set(props) | {"config"} | model_step

    # --- warnings ---------------------------------------------------------------------------

    def check_pure_timeouts(self) -> None:
        """A `timeout:` on a step that calls no model and waits on nothing (a `template`)
        bounds nothing: such steps run without a timer."""
        raw_steps = self.data.get("steps") or []
        for i, s in enumerate(self.wf.steps):
            raw = raw_steps[i] if i < len(raw_steps) else {}
            if not (isinstance(raw, Mapping) and "timeout" in raw) or s.type not in self.registry:
                continue
            if self.registry.get(s.type).pure:
                self.warn(
                    ["steps", i, "timeout"],
                    "W504",
                    f"steps.{s.id}.timeout bounds nothing: a {s.type} step waits on nothing, "
                    "so it runs without a timer",
                    "leave it out",
                )

    def check_reachability(self) -> None:
        if len(self.wf.steps) < 2:
            return
        used: set[str] = set()
        from .. import expr

        def collect(value: Any) -> None:
            for _, text in _strings(value, []):
                try:
                    tree = expr.parse(text) if expr.has_template(text) else None
                except Exception:
                    continue
                if tree is None:
                    continue
                for p in expr.referenced_paths(tree):
                    if len(p) >= 2 and p[0] == "steps":
                        used.add(p[1])

        for raw in self.data["steps"]:
            collect(raw.get("with"))
        collect(self.data.get("output"))
        for t in self.wf.transitions:
            if isinstance(t, Conditional):
                for p in _paths_of_expression(t.when):
                    if len(p) >= 2 and p[0] == "steps":
                        used.add(p[1])
        for i, s in enumerate(self.wf.steps):
            g = self.graph
            connected = bool(g.pred[s.id] or g.succ[s.id]) or s.id in self.in_loop
            if not connected and s.id not in used:
                self.warn(
                    ["steps", i, "id"],
                    "W501",
                    f"step '{s.id}' is not connected to any other step",
                    "add depends_on or a transition, or remove it",
                )
                continue
            if (
                self.wf.output
                and not g.succ[s.id]
                and s.id not in used
                and s.id not in self.in_loop
            ):
                self.warn(
                    ["steps", i, "id"],
                    "W502",
                    f"nothing uses the output of step '{s.id}'",
                    "reference it in `output:` or in a later step",
                )

    def check_skipped_reads(self) -> None:
        """W505: a field of a step a condition may skip, read where it is evaluated all the
        same (`output:`, a step that also waits on another branch): the step's output is
        null then, and the run fails there, after the steps it paid for. Reads the same
        expression guards (`steps.X.status`, `steps.X.output` alone or tested, `| default`)
        are left."""
        from .. import expr

        g = self.graph
        sure: set[str] = set()  # the steps that run whenever the run gets that far
        for sid in g.order():
            waits = [p for p, e in g.pred[sid].items() if e["kind"] != "conditional"]
            # a join of branches is taken to have one of them run (exclusive conditions)
            if not g.pred[sid] or len(waits) > 1 or any(p in sure for p in waits):
                sure.add(sid)
        revisers = {t.reviser for t in self.wf.loops}
        maybe = set(g) - sure - revisers
        if not maybe:
            return
        roots = [n for n in g if not g.pred[n]]
        without: dict[str, set[str]] = {}

        def runs_without(x: str) -> set[str]:
            """The steps that can run when `x` does not: a step skipped had every step it
            waits on (not by a condition) skipped too, so none of those runs either."""
            if x not in without:
                skipped = {x}
                todo = [x]
                while todo:
                    for p, e in g.pred[todo.pop()].items():
                        if e["kind"] != "conditional" and p not in skipped:
                            skipped.add(p)
                            todo.append(p)
                found = {r for r in roots if r not in skipped}
                todo = list(found)
                while todo:
                    for m in g.succ[todo.pop()]:
                        if m not in skipped and m not in found:
                            found.add(m)
                            todo.append(m)
                without[x] = found
            return without[x]

        def read(path: list[Any], text: str, reader: str | None, *, whole: bool) -> None:
            try:  # (what does not parse has had its E301 already: no W505 runs then)
                tree = self.parsed(text, whole=whole)
            except Exception:
                return
            if tree is None:
                return
            paths = expr.referenced_paths(tree)
            if any(len(p) >= 3 and p[0] == "steps" and p[2] == "status" for p in paths) or any(
                p[0] == "steps" and p[2:] == ("output",) and p[1] in maybe
                for p in expr.tested_paths(tree)
            ):
                # it picks a branch by a step's status, or by whether a step that may be
                # skipped has an output (`… if steps.a.output else …`): what it reads there,
                # it reads knowingly
                return
            guarded = {p[1] for p in paths if len(p) == 3 and p[0] == "steps"}
            warned: set[str] = set()
            for p in paths:
                if not (len(p) >= 4 and p[0] == "steps" and p[2] == "output"):
                    continue
                x = p[1]
                if x not in maybe or x in guarded or x in warned:
                    continue
                if reader is not None and (reader == x or reader not in runs_without(x)):
                    continue
                warned.add(x)
                loc = self.at(path)
                at = _position_of(text, p)
                if at is not None:
                    loc = self.within(path, loc, *at)
                field = ".".join(p[:4])
                self.out.append(
                    Diagnostic(
                        loc,
                        "W505",
                        f"{field} fails the run when a condition skips step '{x}' "
                        "(its output is null then)",
                        f"guard it: `{field} if steps.{x}.status == 'succeeded' else …`, "
                        "or `| default(…)`",
                        "warning",
                    )
                )

        for i, raw in enumerate(self.data["steps"]):
            for path, text in _strings(raw.get("with"), ["steps", i, "with"]):
                read(path, text, self.wf.steps[i].id, whole=False)
        for i, t in enumerate(self.wf.transitions):
            when = self.data["transitions"][i].get("when")
            if isinstance(t, Conditional) and isinstance(when, str):
                read(["transitions", i, "when"], when, t.from_, whole=True)
        for path, text in _strings(self.data.get("output"), ["output"]):
            read(path, text, None, whole=False)


def env_readers(wf: Workflow, replayed: Collection[str] = ()) -> dict[str, str]:
    """The `env:` variables some expression reads without a guard (`| default(…)`, `is
    defined`) in every run, each with the first place that does (`step 'a'`, `output`): a run
    without the variable set fails there. A read the run may not reach is left: in a step a
    condition may skip (or a reviser), in a condition that may not be evaluated, in an
    `{% if %}` branch or `… if … else …` arm, in a `replayed` step (a resume takes its
    recorded result: its input is not rendered). What does not parse is left (it is E301)."""
    from .. import expr

    graph = dependency_graph(wf.steps, wf.transitions)
    certain = _certain_steps(wf, graph)
    places: list[tuple[str, Any, bool]] = [
        (f"step '{s.id}'", s.with_, False)
        for s in wf.steps
        if s.id in certain and s.id not in replayed
    ]
    places += [
        (f"the condition {t.from_} -> {t.to}", t.when, True)
        for t in wf.transitions
        if isinstance(t, Conditional)
        and t.from_ in certain
        and t.to not in replayed
        and t.to in graph
        and list(graph.predecessors(t.to)) == [t.from_]  # (else another edge may open it)
    ]
    places.append(("output", wf.output, False))
    found: dict[str, str] = {}
    for reader, value, whole in places:
        for _, text in _strings(value, []):
            if "env" not in text:
                continue
            try:
                tree = _parsed(text, whole=whole)
            except Exception:
                continue
            for p in expr.certain_paths(tree) if tree is not None else ():
                if len(p) >= 2 and p[0] == "env" and p[1] in wf.env:
                    found.setdefault(p[1], reader)
    return found


def _certain_steps(wf: Workflow, graph: DepGraph) -> set[str]:
    """The steps every run that completes runs: those a condition cannot skip (a step runs
    when a step before it succeeded and the edge between them, if it has a condition, holds)
    and that are no loop's reviser (which runs only when its validator fails)."""
    revisers = {loop.reviser for loop in wf.loops}
    certain: set[str] = set()
    for sid in graph.order():
        preds = list(graph.predecessors(sid))
        if sid not in revisers and (
            not preds
            or any(p in certain and graph.edge(p, sid)["kind"] != "conditional" for p in preds)
        ):
            certain.add(sid)
    return certain


def _scalar_position(
    source: Sequence[str], row: int, start: int, text: str, offset: int
) -> tuple[int, int] | None:
    """Where (line, column, 1-based) the character at `offset` of `text` is written, `text`
    being a flow scalar written from column `start` of line `row` (0-based) of `source`:
    plain, 'single-' or "double-quoted" (`''`, `\\"`, `\\u00e9`), on one line or folded from
    several (a line break read as a space, blank lines as line breaks, indentation dropped).
    None when what is written does not give `text` so."""
    quote = source[row][start : start + 1]
    quote = quote if quote in ("'", '"') else ""
    i, n = start + len(quote), 0  # the source's index on line `row`; the offset in `text`
    first = True
    while row < len(source):
        written = source[row]
        if not first:
            i = len(written) - len(written.lstrip())
        end = len(written.rstrip())
        escaped_break = False
        while i < end:
            if n == offset:
                return row + 1, i + 1
            c = written[i]
            if quote and c == quote and not (quote == "'" and written[i + 1 : i + 2] == "'"):
                return None  # (the scalar ends before it)
            if quote == '"' and c == "\\":
                if i + 1 == end:
                    escaped_break = True  # (a line break written away: no space)
                    break
                i += 2 + {"x": 2, "u": 4, "U": 8}.get(written[i + 1 : i + 2], 0)
            elif quote == "'" and c == "'":
                i += 2
            elif n < len(text) and text[n] == c:
                i += 1
            else:
                return None
            n += 1
        if n >= len(text):
            return None
        # the line break: a space, or as many line breaks as blank lines follow
        row += 1
        blank = 0
        while row < len(source) and not source[row].strip():
            row += 1
            blank += 1
        if not escaped_break:
            n += blank or 1
        if n > offset:
            return None  # (the fault is a line break: no place of its own)
        first = False
    return None


def _in_folded(loc: Location, text: str, source: Sequence[str], line: int, column: int) -> Location:
    """Where (line, column) of the text of a folded block scalar (`>`) at `loc` is written:
    each of the block's lines is found in turn in the folded text (folding joins lines with a
    space and drops the indentation); `loc` when a line is not found so."""
    lines = text.split("\n")
    if not 0 < line <= len(lines):
        return loc
    offset = sum(len(t) + 1 for t in lines[: line - 1]) + max(column - 1, 0)
    pos = 0
    for index in range(loc.line, len(source)):  # (the text starts on the line after the `>`)
        written = source[index]
        content = written.strip()
        if not content:
            continue  # (a blank line folds into a line break)
        start = text.find(content, pos)
        if start < 0:
            return loc  # past the block, or a line folding does not keep as it is
        if offset < start + len(content):
            indent = len(written) - len(written.lstrip())
            return Location(loc.file, index + 1, indent + max(offset - start, 0) + 1)
        pos = start + len(content)
    return loc


def _parsed(text: str, *, whole: bool) -> Any:
    """The template tree of a string the engine evaluates, None when it is plain text: a
    condition (`whole`) is one bare expression or one `{{ … }}`. Raises TemplateSyntaxError."""
    from .. import expr

    if whole and expr.single_expression(text) is None:
        return expr.parse_expression(text)
    return expr.parse(text) if expr.has_template(text) else None


def _clash_position(text: str, c: Any) -> tuple[int, int] | None:
    """Where a clash of kinds.py is written in `text`: what its `locate` pattern finds on its
    line, else where its variable is."""
    import re

    lines = text.splitlines()
    if c.locate is not None and 0 < c.node.lineno <= len(lines):
        found = re.search(c.locate, lines[c.node.lineno - 1])
        if found:
            return c.node.lineno, found.start() + 1
    return _position_on(text, c.path, c.node.lineno, c.lead) if c.path is not None else None


def _position_of_name(text: str, kind: str, name: str, line: int) -> tuple[int, int] | None:
    """Where `text` applies the filter (`| name`) or test (`is name`) `name` on its line
    `line`; else where it names `name` at all."""
    import re

    lines = _code_only(text).splitlines()
    if 0 < line <= len(lines):
        lead = r"\|\s*" if kind == "filter" else r"\bis\s+(?:not\s+)?"
        found = re.search(lead + r"(" + re.escape(name) + r")\b", lines[line - 1])
        if found:
            return line, found.start(1) + 1
    return _position_on(text, (name,), line)


def _code_only(text: str) -> str:
    """`text` with what is not Jinja code blanked out (same length, same lines): the text
    around `{{ … }}` and `{% … %}`, comments, and what string literals hold, so that a
    search for `| name` finds the filter, not `'a | name'` written in a string or the
    prompt's own words. A text without tags is one expression (a condition): all code."""
    if "{{" not in text and "{%" not in text:
        return _blank_strings(text)
    out: list[str] = []
    i = 0
    while i < len(text):
        two = text[i : i + 2]
        close = {"{{": "}}", "{%": "%}"}.get(two)
        if close is None:
            end = len(text)
            for opener in ("{{", "{%", "{#"):
                at = text.find(opener, i + (2 if two == "{#" else 0))
                if at >= 0:
                    end = min(end, at)
            if two == "{#":  # a comment, to its end
                shut = text.find("#}", i + 2)
                end = len(text) if shut < 0 else shut + 2
            out.append(_blank(text[i:end]))
            i = end
            continue
        j = i + 2
        quote = ""
        while j < len(text):
            c = text[j]
            if quote:
                if c == "\\":
                    j += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif text.startswith(close, j):
                j += 2
                break
            j += 1
        out.append(_blank_strings(text[i:j]))
        i = j
    return "".join(out)


def _blank_strings(code: str) -> str:
    """Jinja code with what its string literals hold blanked out (their quotes kept)."""
    import re

    return re.sub(
        r"""(['"])((?:\\.|(?!\1).)*)\1""",
        lambda m: m[1] + _blank(m[2]) + m[1],
        code,
        flags=re.S,
    )


def _blank(text: str) -> str:
    """`text` as spaces, its line breaks kept."""
    return "".join(c if c in "\r\n" else " " for c in text)


def _infinite_constants(tree: Any) -> list[tuple[Any, str]]:
    """The literal numbers (`1e400`) and operations on literals (`1e308 / 1e-10`) that are not
    finite, with how to show them: Jinja writes them into its Python code as `inf` or `nan`,
    names that code does not have, so a render fails (NameError) unless Jinja made text of
    them when it compiled (`{{ 1e400 }}` alone in a template prints inf)."""
    import math

    from jinja2 import nodes
    from jinja2.nodes import EvalContext, Impossible

    from .. import expr

    found: list[tuple[Any, str]] = []
    context = EvalContext(expr.environment())
    for n in tree.find_all((nodes.Const, nodes.BinExpr, nodes.UnaryExpr)):
        children = list(n.iter_child_nodes())
        if isinstance(n, nodes.Const):
            value = n.value
        elif any(not _finite_const(c) for c in children):
            continue  # (only what Jinja folds, an operation on finite literals: `1e308 * 10`)
        else:
            try:
                value = n.as_const(context)
            except (Impossible, Exception):
                continue
        if isinstance(value, float) and not math.isfinite(value):
            if isinstance(n, nodes.BinExpr):
                written = f"{_literal_text(n.left)} {n.operator} {_literal_text(n.right)}"
            elif isinstance(n, nodes.UnaryExpr):
                written = f"{n.operator}{_literal_text(n.node)}"
            else:
                written = _literal_text(n)
            found.append((n, written))
    return found


def _finite_const(node: Any) -> bool:
    import math

    from jinja2 import nodes

    value = getattr(node, "value", None) if isinstance(node, nodes.Const) else None
    return isinstance(value, int | float) and math.isfinite(value)


def _literal_text(node: Any) -> str:
    """A literal as Python writes it (`1e+308`), or `…` for anything else."""
    return repr(node.value) if hasattr(node, "value") else "…"


def _number_on(text: str, node: Any, taken: set[tuple[int, int]]) -> tuple[int, int, str] | None:
    """Where the number `node` is, or starts with, is written on its line (not a place in
    `taken`): its line, column and text. The line's other numbers are passed over (`{{ 1e5 }}
    {{ 1e400 }}` is at `1e400`)."""
    import re

    from jinja2 import nodes

    line = node.lineno
    lines = _code_only(text).splitlines()
    if not 0 < line <= len(lines):
        return None
    parts = [node.left, node.right] if isinstance(node, nodes.BinExpr) else [node]
    if isinstance(node, nodes.UnaryExpr):
        parts = [node.node]
    written = list(re.finditer(r"(?<![\w.])\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?", lines[line - 1]))
    for part in parts:
        value = getattr(part, "value", None)
        for found in written:
            try:
                same = float(found[0].replace("_", "")) == value
            except (ValueError, OverflowError):
                continue
            if same and (line, found.start() + 1) not in taken:
                return line, found.start() + 1, found[0]
    return None


def _failing_tag(text: str, line: int) -> int:
    """The column of the first `{{ … }}` on line `line` of `text` that does not parse alone:
    where a syntax error is (Jinja tells its line, not its column); 0 when none is found."""
    import re

    import jinja2

    from .. import expr

    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return 0
    source = lines[line - 1]
    for start in (m.start() for m in re.finditer(r"\{\{", source)):
        end = source.find("}}", start + 2)
        try:
            expr.parse(source[start:] if end < 0 else source[start : end + 2])
        except jinja2.TemplateSyntaxError:
            return start + 1
        except Exception:
            continue
    return 0


def _leads_out(name: str, folder: Path) -> bool:
    """Whether the prompt path `name`, as written (`..` applied, links not followed), is in
    `folder`: then a link on the way leads out of it."""
    import contextlib
    import os

    written = Path(name)
    with contextlib.suppress(RuntimeError):
        written = written.expanduser()
    try:
        return Path(os.path.abspath(folder / written)).is_relative_to(folder)
    except ValueError:
        return False


def _not_a_file(path: Any) -> str | None:
    """What `path` is when it exists but is no regular file: 'a FIFO', 'a device', 'a socket',
    'a link that leads nowhere'; None when there is nothing there (or it is a file)."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a link that leads nowhere" if os.path.islink(path) else None
    except ValueError:
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


# The types whose values have no fields of their own (their attributes are methods)
_SCALARS = frozenset({str, int, float, bool, type(None)})

# The attributes every Python object has (`__class__`, `__init__`, …): the sandbox refuses
# them whatever they are read of (but a mapping's own key of that name), so the run fails there
_EVERY_OBJECTS = frozenset(a for a in dir(object) if a.startswith("_"))


def _position_of(text: str, path: tuple[str, ...]) -> tuple[int, int] | None:
    """Where (1-based line and column) `text` first names `path` (`steps.a.output.x`), or as
    long a start of it as it names: the line of the use, not of the first mention."""
    import re

    for n in range(len(path), 0, -1):
        pattern = re.compile(r"\b" + r"\s*\.\s*".join(map(re.escape, path[:n])) + r"\b")
        for number, line in enumerate(text.splitlines(), 1):
            found = pattern.search(line)
            if found:
                return number, found.start() + 1
    return None


def _position_on(
    text: str, path: tuple[str, ...], line: int, lead: Sequence[str] = ()
) -> tuple[int, int] | None:
    """Where `text` names `path` on its line `line` (a template's node knows its line, not
    its column), or where a `lead` written before it on that line is; else where `text`
    first names `path`."""
    import re

    lines = text.splitlines()
    if 0 < line <= len(lines):
        pattern = re.compile(r"\b" + r"\s*\.\s*".join(map(re.escape, path)) + r"\b")
        found = pattern.search(lines[line - 1])
        if found:
            before = max((lines[line - 1].rfind(w, 0, found.start()) for w in lead), default=-1)
            return line, (before if before >= 0 else found.start()) + 1
    return _position_of(text, path)


def _literal_kinds(value: Any, rest: Sequence[str]) -> Any:
    """The types of a `with:` value written as it is (a scalar or a list: what render_value
    gives is a list), at the fields `rest` in it."""
    from .kinds import kind_of

    if rest:
        return None
    return frozenset({list}) if isinstance(value, tuple | list) else kind_of(value)


def _config_kinds(config: Mapping[str, Any], rest: Sequence[str]) -> Any:
    """The types of `config` (a dict) or of a field of it, as a prompt has them: its own
    fields are as the loader froze them (a list is a tuple, a mapping read-only)."""
    from .kinds import kind_of

    if not rest:
        return frozenset({dict})
    value: Any = config
    for name in rest:
        if not isinstance(value, Mapping) or name not in value:
            return None
        value = value[name]
    return None if isinstance(value, Mapping) else kind_of(value)


def _written_as_is(value: Any) -> bool:
    """Whether a binding has no expression anywhere: a run uses it as the file writes it."""
    from ..expr import has_template

    def literal(v: Any) -> bool:
        if isinstance(v, str):
            return not has_template(v)
        if isinstance(v, Mapping):
            return all(literal(x) for x in v.values())
        if isinstance(v, list | tuple):
            return all(literal(x) for x in v)
        return True

    return literal(value)


def _uses_jinja_loop(tree: Any) -> bool:
    """Whether the template has a `{% for %}`, inside which `loop` is Jinja's own variable."""
    from jinja2 import nodes

    return any(True for _ in tree.find_all(nodes.For))


def _paths_of_expression(text: str) -> list[tuple[str, ...]]:
    from .. import expr

    try:
        body = expr.single_expression(text)
        tree = expr.parse_expression(body if body is not None else text)
    except Exception:
        return []
    return expr.referenced_paths(tree)


def _strings(value: Any, path: list[Any]) -> Iterator[tuple[list[Any], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, [*path, k])
    elif isinstance(value, list | tuple):  # (a Workflow's values are frozen: tuples)
        for i, v in enumerate(value):
            yield from _strings(v, [*path, i])


def _parses_as_expression(text: str) -> bool:
    from .. import expr

    try:
        expr.parse_expression(text)
    except Exception:
        return False
    return True


class _Scope:
    """What an expression at one place may name."""

    def __init__(
        self,
        where: str,
        steps: set[str],
        in_loop: bool,
        loops: set[str],
        env: set[str],
        loops_done: set[str],
        fields: Mapping[str, frozenset[str] | None],
        revised_by: Mapping[str, str],
        inputs: frozenset[str] | None = None,
    ) -> None:
        self.where = where
        self.inputs = inputs  # the input's properties when `inputs` allows no others
        self.fields = fields  # step → the fields of its output, where known
        self.revised_by = revised_by
        self.steps = steps
        self.in_loop = in_loop
        self.loops = loops
        self.env = env
        self.loops_done = loops_done  # the loops that have ended wherever this is evaluated

    def check(self, p: tuple[str, ...], ids: Sequence[str]) -> tuple[str, str, str | None] | None:
        root = p[0]
        if root == "input":
            if (
                len(p) >= 2
                and self.inputs is not None
                and p[1] not in self.inputs
                and p[1] not in _MAPPING_METHODS
            ):
                return (
                    "E302",
                    f"input.{p[1]} does not exist: `inputs` allows no other properties",
                    _did_you_mean(p[1], _text_keys(self.inputs))
                    or (
                        f"the input has {', '.join(_text_keys(self.inputs))}"
                        if self.inputs
                        else "declare it under inputs.properties"
                    ),
                )
            return None
        if root in _JINJA_GLOBALS:
            return None
        if root == "steps":
            if len(p) < 2:
                return None
            name = p[1]
            if name not in ids:
                return ("E303", f"steps.{name} is not a step", _did_you_mean(name, ids))
            if name not in self.steps:
                return (
                    "E303",
                    f"steps.{name} is not upstream of {self.where}",
                    f"add '{name}' to depends_on (directly or through a step it depends on)",
                )
            if len(p) >= 3 and p[2] not in _STEP_FIELDS:
                return (
                    "E302",
                    f"steps.{name}.{p[2]} does not exist",
                    _did_you_mean(p[2], _STEP_FIELDS) or "use output, status or versions",
                )
            known = self.fields.get(name)
            if (
                len(p) >= 4
                and p[2] == "output"
                and known is not None
                and p[3] not in known
                and p[3] not in _MAPPING_METHODS
            ):
                has = ", ".join(_text_keys(known)) or "no field both have"
                reviser = self.revised_by.get(name)
                return (
                    "E302",
                    f"steps.{name}.output.{p[3]} does not exist",
                    _did_you_mean(p[3], _text_keys(known))
                    or (
                        f"after a revision the output of '{name}' is reviser '{reviser}''s: "
                        f"read what both have ({has})"
                        if reviser is not None
                        else f"the output of '{name}' has {has}"
                    ),
                )
            return None
        if root == "loop":
            if not self.in_loop:
                return (
                    "E304",
                    f"{'.'.join(p)} is used outside a revision loop in {self.where}",
                    "loop.* exists only for steps of a revision loop and its reviser",
                )
            if len(p) >= 2 and p[1] not in _LOOP_FIELDS:
                return (
                    "E302",
                    f"loop.{p[1]} does not exist",
                    _did_you_mean(p[1], _LOOP_FIELDS)
                    or "use iteration, max_iterations, feedback or history",
                )
            return None
        if root == "loops":
            if len(p) >= 2 and p[1] not in self.loops:
                return (
                    "E302",
                    f"loops.{p[1]} is not a revision loop",
                    _did_you_mean(p[1], _text_keys(self.loops))
                    or "loops are named by their validator step",
                )
            if len(p) >= 2 and p[1] not in self.loops_done:
                # the count exists once the loop has ended: not in the loop's own steps, nor
                # in steps that may run before it or beside it
                return (
                    "E303",
                    f"loops.{p[1]} is not known yet in {self.where}: it does not wait for that "
                    "loop to end",
                    f"make it depend on '{p[1]}' (directly or through a step it depends on)",
                )
            if len(p) >= 3 and p[2] not in _LOOPS_FIELDS:
                return (
                    "E302",
                    f"loops.{p[1]}.{p[2]} does not exist",
                    _did_you_mean(p[2], _LOOPS_FIELDS) or "a loop has only `revisions`",
                )
            return None
        if root == "env":
            if len(p) >= 2 and p[1] not in self.env:
                return (
                    "E305",
                    f"env.{p[1]} is not declared",
                    f"list {p[1]} under `env:` at the top of the file to let templates read it",
                )
            return None
        names = ["input", "steps", "loop", "loops", "env"]
        return (
            "E302",
            f"unknown variable '{root}' in {self.where}",
            _did_you_mean(root, names) or "expressions see input, steps, loop, loops and env",
        )


def _may_hold_revise(schema: Any) -> bool:
    """Whether an llm step's `output_schema` admits `decision: revise`, which is how such a
    step asks its loop for a revision. Schemas built from `$ref`, `anyOf` and the like are
    trusted."""
    if not isinstance(schema, Mapping):
        return schema is True
    if any(k in schema for k in ("$ref", "anyOf", "oneOf", "allOf", "if", "not")):
        return True
    kind = schema.get("type", "object")
    if "object" not in (kind if isinstance(kind, list) else [kind]):
        return False
    properties = schema.get("properties")
    decision = properties.get("decision") if isinstance(properties, Mapping) else None
    if decision is None:
        return (
            schema.get("additionalProperties", True) is not False or "patternProperties" in schema
        )
    if not isinstance(decision, Mapping):
        return decision is not False
    allowed = decision.get("enum", [decision["const"]] if "const" in decision else None)
    if isinstance(allowed, list):
        return any(isinstance(v, str) and v.strip().lower() == "revise" for v in allowed)
    dtype = decision.get("type", "string")
    return "string" in (dtype if isinstance(dtype, list) else [dtype])


def _closed_fields(schema: Any) -> frozenset[str] | None:
    """The fields an object schema allows when it allows no others; None when it is open or
    built from parts (`$ref`, `anyOf`, …) this check does not follow."""
    if not isinstance(schema, Mapping) or schema.get("additionalProperties", True) is not False:
        return None
    if any(k in schema for k in ("$ref", "anyOf", "oneOf", "allOf", "if", "patternProperties")):
        return None
    properties = schema.get("properties", {})
    return frozenset(properties) if isinstance(properties, Mapping) else None
