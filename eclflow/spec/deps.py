"""The dependency graph a workflow declares: `depends_on` plus sequential/conditional edges.

Revision loops are not edges (they would make the graph cyclic); they live in the loop table.
Shared by the semantic checks (cycles, upstream sets) and by the graph layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from .model import Conditional, Sequential, StepSpec, Transition


def dependency_graph(steps: Iterable[StepSpec], transitions: Iterable[Transition]) -> nx.DiGraph:
    """Nodes are step ids (attribute `index` = declaration order); edges point downstream.

    Edge attribute `kind` is `depends_on`, `sequential` or `conditional` (with `when`). Edges that
    name unknown steps are left out: reporting them is the checks' job.
    """
    g: nx.DiGraph = nx.DiGraph()
    steps = list(steps)
    for i, s in enumerate(steps):
        if s.id not in g:
            g.add_node(s.id, index=i)
    for s in steps:
        for dep in s.depends_on:
            if dep in g and not g.has_edge(dep, s.id):
                g.add_edge(dep, s.id, kind="depends_on")
    for t in transitions:
        if isinstance(t, Sequential | Conditional) and t.from_ in g and t.to in g:
            if isinstance(t, Conditional):
                g.add_edge(t.from_, t.to, kind="conditional", when=t.when)
            elif not g.has_edge(t.from_, t.to) or g.edges[t.from_, t.to]["kind"] != "conditional":
                g.add_edge(t.from_, t.to, kind="sequential")
    return g


def topological_order(g: nx.DiGraph) -> list[str]:
    """Deterministic order, declaration order breaking ties. Raises NetworkXUnfeasible on cycles."""
    return list(nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["index"]))
