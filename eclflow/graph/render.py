"""Drawings of a compiled plan: Mermaid, Graphviz DOT, a terminal view, and SVG/PNG through `dot`.

Every renderer is a pure function of a `Plan`, so the same workflow always draws the same way.
The revision loop is not an edge of the plan's DAG (that stays acyclic); it is drawn on top as a
dotted back edge validator → target labelled with its bound, plus validator ⇢ reviser ⇢ target.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, EclflowError
from .plan import Loop, Plan

if TYPE_CHECKING:
    from rich.text import Text

ImageFormat = Literal["svg", "png"]
IMAGE_FORMATS: tuple[str, ...] = ("svg", "png")

DOT_MISSING = (
    "Graphviz's `dot` program is not installed: install it with `apt install graphviz` "
    "(Debian/Ubuntu), `brew install graphviz` (macOS), `choco install graphviz` (Windows) "
    "or from https://graphviz.org/download/ — or draw with --format mermaid|dot|ascii instead"
)

# Words Mermaid's flowchart grammar reads as keywords: a step with such an id gets a prefixed
# node id (its label still shows the real id).
_MERMAID_RESERVED = frozenset(
    {
        "end",
        "graph",
        "flowchart",
        "subgraph",
        "style",
        "class",
        "classdef",
        "click",
        "linkstyle",
        "direction",
        "default",
        "call",
        "href",
        "interpolate",
        "_self",
        "_blank",
        "_parent",
        "_top",
    }
)


def bound_text(n: int) -> str:
    """`≤ 3 revisions` (singular for one)."""
    return f"≤ {n} revision{'s' if n != 1 else ''}"


@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    target: str
    kind: str  # depends_on | sequential | conditional
    when: str | None = None


def _nodes(plan: Plan) -> tuple[str, ...]:
    """Every step, in execution order (revisers included, at their place in the order)."""
    return plan.order


def _edges(plan: Plan) -> Iterator[_Edge]:
    """The DAG's edges in a stable order, minus validator → reviser (drawn as part of the loop)."""
    loop_links = {(lp.validator, lp.reviser) for lp in plan.loops.values()}
    index = {s: i for i, s in enumerate(plan.order)}
    edges = sorted(plan.dag.edges(), key=lambda e: (index[e[0]], index[e[1]]))
    for a, b, data in edges:
        if (a, b) in loop_links:
            continue
        kind = str(data.get("kind", "depends_on"))
        yield _Edge(a, b, kind, data.get("when") if kind == "conditional" else None)


def _loops(plan: Plan) -> list[Loop]:
    index = {s: i for i, s in enumerate(plan.order)}
    return sorted(plan.loops.values(), key=lambda lp: index[lp.validator])


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _loop_label(loop: Loop) -> str:
    label = f"revise: {bound_text(loop.max_iterations)}"
    if loop.spec.on_exhausted == "accept":
        label += ", then accept"
    return label


# --- Mermaid --------------------------------------------------------------------------------


def _mermaid_id(step: str) -> str:
    """The node id of a step: its own, but `step_` before a Mermaid keyword, and before an id
    that already starts with `step_` (so that steps `end` and `step_end` stay two nodes)."""
    if step.lower() in _MERMAID_RESERVED or step.startswith("step_"):
        return f"step_{step}"
    return step


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: entities for the characters its parser reacts to."""
    out = _one_line(text)
    for ch, entity in (
        ("&", "#amp;"),
        ('"', "#quot;"),
        ("<", "#lt;"),
        (">", "#gt;"),
        ("|", "#124;"),
    ):
        out = out.replace(ch, entity)
    return out


def to_mermaid(plan: Plan) -> str:
    """A Mermaid `flowchart TD`: a node per step (`id<br/>type`), dependency edges, conditions
    on their edges, and each revision loop as a dotted back edge with its bound."""
    wf = plan.workflow
    lines = ["flowchart TD"]
    title = _one_line(f"{wf.id}: {wf.name}" if wf.name and wf.name != wf.id else wf.id)
    lines.append(f"    %% {title}")
    for sid in _nodes(plan):
        step = wf.step(sid)
        label = f"{_mermaid_text(sid)}<br/>{_mermaid_text(step.type)}"
        if sid in plan.revisers:
            lines.append(f'    {_mermaid_id(sid)}(["{label}"])')
        else:
            lines.append(f'    {_mermaid_id(sid)}["{label}"]')
    for e in _edges(plan):
        a, b = _mermaid_id(e.source), _mermaid_id(e.target)
        if e.when is not None:
            lines.append(f'    {a} -- "when: {_mermaid_text(e.when)}" --> {b}')
        else:
            lines.append(f"    {a} --> {b}")
    for loop in _loops(plan):
        v, r, t = (_mermaid_id(x) for x in (loop.validator, loop.reviser, loop.target))
        lines.append(f'    {v} -. "{_mermaid_text(_loop_label(loop))}" .-> {t}')
        lines.append(f"    {v} -.-> {r}")
        lines.append(f"    {r} -.-> {t}")
    if plan.revisers:
        lines.append("    classDef reviser stroke-dasharray: 5 5")
        revisers = ",".join(_mermaid_id(s) for s in _nodes(plan) if s in plan.revisers)
        lines.append(f"    class {revisers} reviser")
    return "\n".join(lines) + "\n"


# --- Graphviz DOT ---------------------------------------------------------------------------


def _dot_quote(text: str) -> str:
    """A DOT double-quoted string; newlines become DOT's centred line break."""
    out = str(text).replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{out}"'


def _dot_attrs(**attrs: Any) -> str:
    parts = []
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        else:
            parts.append(f"{k}={_dot_quote(str(v))}")
    return f" [{', '.join(parts)}]" if parts else ""


def to_dot(plan: Plan) -> str:
    """A Graphviz digraph with the same content as `to_mermaid`: the loop edge is dashed,
    labelled `≤ N revisions` and does not constrain the layout."""
    wf = plan.workflow
    title = _one_line(wf.name or wf.id)
    lines = [
        f"digraph {_dot_quote(wf.id)} {{",
        "    rankdir=TB;",
        '    charset="UTF-8";',
        f"    label={_dot_quote(title)};",
        "    labelloc=t;",
        '    fontname="Helvetica";',
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for sid in _nodes(plan):
        step = wf.step(sid)
        style = "rounded,dashed" if sid in plan.revisers else None
        attrs = _dot_attrs(label=sid + "\n" + step.type, style=style)
        lines.append(f"    {_dot_quote(sid)}{attrs};")
    for e in _edges(plan):
        label = f"when: {_one_line(e.when)}" if e.when is not None else None
        lines.append(
            f"    {_dot_quote(e.source)} -> {_dot_quote(e.target)}{_dot_attrs(label=label)};"
        )
    for loop in _loops(plan):
        v, r, t = (_dot_quote(x) for x in (loop.validator, loop.reviser, loop.target))
        label = bound_text(loop.max_iterations)
        if loop.spec.on_exhausted == "accept":
            label += ", then accept"
        lines.append(
            f"    {v} -> {t}"
            f"{_dot_attrs(style='dashed', constraint=False, label=label, color='gray40')};"
        )
        lines.append(f"    {v} -> {r}{_dot_attrs(style='dotted')};")
        lines.append(f"    {r} -> {t}{_dot_attrs(style='dotted', constraint=False)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- terminal -------------------------------------------------------------------------------


def _loop_lines(plan: Plan, loop: Loop) -> list[str]:
    wf = plan.workflow
    reviser = wf.step(loop.reviser)
    again = ", ".join(loop.rerun)
    exhausted = (
        "then the run fails"
        if loop.spec.on_exhausted == "fail"
        else "then the last version is accepted"
    )
    return [
        f"↺ when {loop.validator} asks for a revision: {loop.reviser} [{reviser.type}] "
        f"writes a new version of {loop.target}, then {again} again",
        f"  {bound_text(loop.max_iterations)} ({loop.max_iterations + 1} runs of "
        f"{loop.validator} at most), {exhausted}",
    ]


def to_ascii(plan: Plan) -> Text:
    """A terminal drawing: the steps stage by stage (steps of one stage may run at the same
    time), what each waits on, the conditions on its way in, and each loop with its bound.

    Returns a rich `Text`; `str()` of it is the plain, deterministic drawing."""
    from rich.text import Text

    wf = plan.workflow
    out = Text()
    out.append(wf.id, style="bold")
    if wf.name and wf.name != wf.id:
        out.append(f": {_one_line(wf.name)}")
    out.append("\n")
    n_steps, n_loops = len(wf.steps), len(plan.loops)
    out.append(
        f"{n_steps} step{'s' * (n_steps != 1)}, {len(plan.generations)} "
        f"stage{'s' * (len(plan.generations) != 1)}, {n_loops} revision "
        f"loop{'s' * (n_loops != 1)}\n",
        style="dim",
    )
    for i, gen in enumerate(plan.generations, 1):
        out.append("\n")
        out.append(f"stage {i}", style="bold cyan")
        if len(gen) > 1:
            out.append(f" ({len(gen)} in parallel)", style="cyan")
        out.append("\n")
        for sid in gen:
            step = wf.step(sid)
            out.append("  ● ")
            out.append(sid, style="bold")
            out.append(f" [{step.type}]", style="magenta")
            preds = set(plan.dag.predecessors(sid))
            waits = []
            for w in plan.waits[sid]:
                if w in preds:
                    waits.append(w)
                elif w in plan.loops:
                    waits.append(f"{w} (its loop's end)")
                else:
                    waits.append(w)
            out.append("  after " + ", ".join(waits) if waits else "  start", style="dim")
            out.append("\n")
            conds = [
                (p, plan.conditions[(p, sid)])
                for p in sorted(preds, key=plan.order.index)
                if (p, sid) in plan.conditions
            ]
            for p, when in conds:
                out.append("      only when ", style="yellow")
                out.append(_one_line(when), style="yellow bold")
                origin = f" (after {p})" if len(preds) > 1 else ""
                out.append(f"{origin}; otherwise skipped\n", style="yellow")
            if sid in plan.loops:
                for line in _loop_lines(plan, plan.loops[sid]):
                    out.append(f"      {line}\n", style="green")
    return out


# --- images ---------------------------------------------------------------------------------


def render_image(dot_text: str, fmt: str) -> bytes:
    """DOT text → SVG or PNG bytes through Graphviz's `dot` program."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {', '.join(IMAGE_FORMATS)}")
    dot = shutil.which("dot")
    if dot is None:
        raise ConfigError(DOT_MISSING)
    try:
        proc = subprocess.run(
            [dot, f"-T{fmt}"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EclflowError("Graphviz's `dot` did not finish within 120 s") from None
    except OSError as e:
        raise ConfigError(f"cannot run {dot}: {e.strerror or e}") from None
    if proc.returncode != 0 or not proc.stdout:
        why = _one_line(proc.stderr.decode("utf-8", "replace")) or f"exit code {proc.returncode}"
        raise EclflowError(f"Graphviz's `dot` failed: {why}")
    return proc.stdout
