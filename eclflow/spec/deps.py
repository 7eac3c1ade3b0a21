"""The dependency graph a workflow declares: `depends_on` plus sequential/conditional edges.

Revision loops are not edges (they would make the graph cyclic); they live in the loop table.
Shared by the semantic checks (cycles, upstream sets) and by the graph layer.

A small graph of our own rather than networkx: a workflow needs an order, reachability and its
cycles, all a few lines over two adjacency dicts, while `import networkx` (which loads every
algorithm it has) took 70-80 ms — a third of what `eclflow validate` may spend starting up.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

from .model import Conditional, Sequential, StepSpec, Transition

Edge = dict[str, Any]  # kind: depends_on | sequential | conditional; `when` for conditional


class CycleError(ValueError):
    """The graph has a cycle, so it has no topological order."""


class DepGraph:
    """Step ids as nodes, in declaration order; edges point downstream and carry an `Edge`."""

    __slots__ = ("index", "pred", "succ")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.succ: dict[str, dict[str, Edge]] = {}
        self.pred: dict[str, dict[str, Edge]] = {}

    def add_node(self, node: str) -> None:
        if node not in self.index:
            self.index[node] = len(self.index)
            self.succ[node] = {}
            self.pred[node] = {}

    def add_edge(self, a: str, b: str, **attrs: Any) -> None:
        self.succ[a][b] = self.pred[b][a] = attrs

    def __contains__(self, node: object) -> bool:
        return node in self.index

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def has_edge(self, a: str, b: str) -> bool:
        return b in self.succ.get(a, ())

    def edge(self, a: str, b: str) -> Edge:
        return self.succ[a][b]

    def edges(self) -> Iterator[tuple[str, str, Edge]]:
        for a, targets in self.succ.items():
            for b, attrs in targets.items():
                yield a, b, attrs

    def predecessors(self, node: str) -> Iterator[str]:
        return iter(self.pred[node])

    def successors(self, node: str) -> Iterator[str]:
        return iter(self.succ[node])

    def descendants(self, node: str) -> set[str]:
        """Every node reachable from `node` (itself only if it is on a cycle)."""
        return _reach(self.succ, node)

    def ancestors(self, node: str) -> set[str]:
        """Every node `node` is reachable from (itself only if it is on a cycle)."""
        return _reach(self.pred, node)

    def has_path(self, a: str, b: str) -> bool:
        return a == b or b in self.descendants(a)

    def order(self, nodes: Iterable[str] | None = None) -> list[str]:
        """Topological order of `nodes` (default all), declaration order breaking ties.

        Raises CycleError when they are not acyclic.
        """
        keep = set(self.index if nodes is None else nodes)
        waiting = {n: sum(p in keep for p in self.pred[n]) for n in keep}
        ready = [(self.index[n], n) for n, k in waiting.items() if k == 0]
        heapq.heapify(ready)
        out: list[str] = []
        while ready:
            _, n = heapq.heappop(ready)
            out.append(n)
            for m in self.succ[n]:
                if m in keep:
                    waiting[m] -= 1
                    if waiting[m] == 0:
                        heapq.heappush(ready, (self.index[m], m))
        if len(out) != len(keep):
            raise CycleError("the dependency graph has a cycle")
        return out

    def generations(self, nodes: Iterable[str]) -> list[list[str]]:
        """`nodes` in stages: each stage depends only on earlier ones (acyclic `nodes`)."""
        keep = set(nodes)
        depth: dict[str, int] = {}
        for n in self.order(keep):
            depth[n] = max((depth[p] + 1 for p in self.pred[n] if p in keep), default=0)
        stages: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for n, d in depth.items():
            stages[d].append(n)
        return stages

    def cycles(self) -> list[list[str]]:
        """One cycle of each strongly connected part that has one, as the nodes along it.

        Each starts from the part's first-declared node and follows edges in declaration order
        until it meets a node already on its path.
        """
        try:
            self.order()
            return []
        except CycleError:
            pass
        seen: set[str] = set()
        out = []
        for n in self.index:
            if n in seen or n not in (down := self.descendants(n)):
                continue
            part = down & self.ancestors(n)
            seen |= part
            out.append(self._cycle_from(n, part))
        return out

    def _cycle_from(self, start: str, part: set[str]) -> list[str]:
        path = [start]
        on_path = {start: 0}
        nexts = [iter(m for m in self.succ[start] if m in part)]
        while nexts:
            m = next(nexts[-1], None)
            if m is None:
                nexts.pop()
                del on_path[path.pop()]
            elif m in on_path:
                return path[on_path[m] :]
            else:
                on_path[m] = len(path)
                path.append(m)
                nexts.append(iter(x for x in self.succ[m] if x in part))
        raise AssertionError("no cycle through a strongly connected part")


def _reach(adjacency: dict[str, dict[str, Edge]], node: str) -> set[str]:
    found: set[str] = set()
    todo = list(adjacency[node])
    while todo:
        n = todo.pop()
        if n not in found:
            found.add(n)
            todo.extend(adjacency[n])
    return found


def dependency_graph(steps: Iterable[StepSpec], transitions: Iterable[Transition]) -> DepGraph:
    """Nodes are step ids in declaration order; edges point downstream.

    Edge attribute `kind` is `depends_on`, `sequential` or `conditional` (with `when`). Edges that
    name unknown steps are left out: reporting them is the checks' job.
    """
    g = DepGraph()
    steps = list(steps)
    for s in steps:
        g.add_node(s.id)
    for s in steps:
        for dep in s.depends_on:
            if dep in g and not g.has_edge(dep, s.id):
                g.add_edge(dep, s.id, kind="depends_on")
    for t in transitions:
        if isinstance(t, Sequential | Conditional) and t.from_ in g and t.to in g:
            if isinstance(t, Conditional):
                g.add_edge(t.from_, t.to, kind="conditional", when=t.when)
            elif not g.has_edge(t.from_, t.to) or g.edge(t.from_, t.to)["kind"] != "conditional":
                g.add_edge(t.from_, t.to, kind="sequential")
    return g
