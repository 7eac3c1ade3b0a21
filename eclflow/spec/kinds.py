"""E306: an operation in an expression whose operands can never go together.

`steps.a.output.text > 3` (an `llm` step's reply is text) passes every other check and fails
only when a run gets there, with a TypeError, after the steps before it were paid for. Here
each operand gets the Python types it may have at run time where they are known for sure (a
literal, a built-in step's output field, a field an `output_schema` types, an `input` property
the `inputs` schema types, `env.X`, a filter whose result is fixed); an operation that fails
for every combination of them is reported. Where a type is not known (a plugin's output, a
schema part without `type`, `| default(…)`, a name the template binds) nothing is said.

E307: an operation that fails whatever the run's values are, as written: a number divided by
a literal 0, a `range(…)` of literal numbers larger than the sandbox makes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import MAX_RANGE

from ..expr import path_of

# The Python types a value may have at run time. Only these are reasoned about: a value of
# another type (a date a YAML default wrote) makes the whole operand unknown.
Kinds = frozenset[type]
NONE = type(None)
NUMBER: Kinds = frozenset({int, float, bool})  # (bool is an int to Python: True + 1 == 2)
STRING: Kinds = frozenset({str})
INTEGER: Kinds = frozenset({int})
BOOLEAN: Kinds = frozenset({bool})
_KNOWN = frozenset({str, int, float, bool, NONE, list, tuple, dict})
_SEQUENCES = (str, list, tuple)
_NOT_ITERABLE: Kinds = frozenset({int, float, bool, NONE})

# JSON Schema `type` → what a validated value is (`integer` admits 1.0, a float)
_JSON_TYPES: Mapping[str, Kinds] = {
    "string": STRING,
    "integer": frozenset({int, float}),
    "number": frozenset({int, float}),
    "boolean": BOOLEAN,
    "null": frozenset({NONE}),
    "array": frozenset({list}),
    "object": frozenset({dict}),
}

# Filters whose result has one type whatever they are given (Markup, the result of some of
# them, is a str). `default`, `first`, `sum`, `round`, … depend on their input: unknown.
_FILTERS: Mapping[str, Kinds] = {
    **dict.fromkeys(("length", "count", "wordcount", "int"), INTEGER),
    "float": frozenset({float}),
    **dict.fromkeys(
        (
            "string",
            "lower",
            "upper",
            "title",
            "capitalize",
            "trim",
            "striptags",
            "center",
            "indent",
            "format",
            "join",
            "tojson",
            "to_json",
            "truncate",
            "wordwrap",
            "replace",
            "urlencode",
            "filesizeformat",
            "escape",
            "e",
            "safe",
        ),
        STRING,
    ),
    **dict.fromkeys(("list", "dictsort"), frozenset({list})),
}

# Filters that fail (a TypeError, or an error of their own) on a value of any of these types,
# whatever else they are given: what they refuse. `upper`, `trim`, `wordcount`, … take any
# value (as text); `unique`, `map`, `select`, `batch`, `items`, … are lazy (a value that is
# never iterated over does not fail): none of them is here.
_NOT_A_NUMBER: Kinds = frozenset({str, NONE, list, tuple, dict})
_REFUSED: Mapping[str, Kinds] = {
    **dict.fromkeys(
        (
            "length",
            "count",
            "first",
            "last",
            "join",
            "list",
            "sort",
            "min",
            "max",
            "sum",
            "random",
            "reverse",
            "groupby",
        ),
        _NOT_ITERABLE,
    ),
    **dict.fromkeys(("abs", "round"), _NOT_A_NUMBER),
    "dictsort": frozenset({str, int, float, bool, NONE, list, tuple}),
}

_ORDERING = {"lt": "<", "gt": ">", "lteq": "<=", "gteq": ">="}
_BINARY: Mapping[type[nodes.BinExpr], str] = {
    nodes.Add: "+",
    nodes.Sub: "-",
    nodes.Mul: "*",
    nodes.Div: "/",
    nodes.FloorDiv: "//",
    nodes.Mod: "%",
    nodes.Pow: "**",
}


def kind_of(value: Any) -> Kinds | None:
    """The kinds of a literal value; None for a type not reasoned about."""
    t = type(value)
    return frozenset({t}) if t in _KNOWN else None


def schema_kinds(schema: Any, *, with_default: bool = False) -> Kinds | None:
    """What a value a JSON Schema validated may be, from its `type` alone; None when it has
    none (or one this does not know). `with_default`: a run that leaves the value out gets
    the schema's `default` (the `inputs` of a workflow), so its type is one more."""
    if not isinstance(schema, Mapping):
        return None
    declared = schema.get("type")
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not names:
        return None
    kinds: set[type] = set()
    for name in names:
        if not isinstance(name, str) or name not in _JSON_TYPES:
            return None
        kinds |= _JSON_TYPES[name]
    if with_default and "default" in schema:
        default = kind_of(schema["default"])
        if default is None:
            return None
        kinds |= default
    return frozenset(kinds)


def schema_at(schema: Any, fields: Sequence[str]) -> Any:
    """The schema of `fields` (nested `properties`) in an object schema, or None. (A value
    that is not an object there has no such field: the run fails reading it anyway.)"""
    for name in fields:
        props = schema.get("properties") if isinstance(schema, Mapping) else None
        if not isinstance(props, Mapping) or name not in props:
            return None
        schema = props[name]
    return schema


@dataclass(frozen=True, slots=True)
class Clash:
    """An operation that fails whatever values its operands have at run time."""

    node: nodes.Node
    path: tuple[str, ...] | None  # a variable it reads (where it is written: its location)
    message: str
    hint: str
    # how its left operand, a literal before `path`, may be written (`3`, `'x'`, `"x"`)
    lead: tuple[str, ...] = ()
    # W506: `==`/`!=` that is always false/true (it does not fail); E307: fails whatever the
    # values (a division by 0, a range too large)
    code: str = "E306"
    # a pattern that finds it on its line (a variable read twice there: the read at fault)
    locate: str | None = None


def clashes(
    tree: nodes.Node,
    kinds_of: Callable[[tuple[str, ...]], Kinds | None],
    context: Collection[str] = (),
) -> list[Clash]:
    """The operations in a parsed template that can never work. `kinds_of`: the kinds of a
    variable path (`steps.a.output.text`), None where they are not known. `context`: the
    names the template's context has (a `with:` value named `range` is not Jinja's)."""
    return _Inference(tree, kinds_of, context).run()


def judged(tree: nodes.Node, operations: tuple[type[nodes.Node], ...]) -> bool:
    """Whether `clashes` has anything to judge in a template: one of `operations`, a filter
    that refuses some types, a call of `range` (most bindings are one variable)."""
    kinds: tuple[type[nodes.Node], ...] = (*operations, nodes.Filter, nodes.Call)
    n: nodes.Node
    for n in tree.find_all(kinds):  # type: ignore[arg-type]
        if isinstance(n, nodes.Filter):
            if n.name in _REFUSED:
                return True
        elif isinstance(n, nodes.Call):
            if isinstance(n.node, nodes.Name) and n.node.name == "range":
                return True
        else:
            return True
    return False


def single_node(tree: nodes.Node) -> nodes.Expr | None:
    """The expression of a parsed `{{ expression }}` and nothing else, or None."""
    body = getattr(tree, "body", None)
    if not body or len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    parts = body[0].nodes
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    node: nodes.Expr = parts[0]
    return node


def value_kinds(
    tree: nodes.Node, kinds_of: Callable[[tuple[str, ...]], Kinds | None]
) -> Kinds | None:
    """The kinds of the value of a parsed `{{ expression }}` (a binding that keeps its type),
    None when not known. Its clashes are not reported here (its own check reports them)."""
    node = single_node(tree)
    return None if node is None else _Inference(tree, kinds_of).infer(node)


def live_reads(tree: nodes.Node) -> set[tuple[str, ...]]:
    """The variable paths a template reads where a run may evaluate them and it does not
    test them: not in what a constant turns away (`{% if false %}`, `… if false else …`),
    not of a value it tests (`x.summary if x is mapping else x`), not of a name it binds."""
    read: set[tuple[str, ...]] = set()
    _Inference(tree, lambda path: read.add(path)).run()  # (asks for each path it reaches)
    return read


class _Inference:
    def __init__(
        self,
        tree: nodes.Node,
        kinds_of: Callable[[tuple[str, ...]], Kinds | None],
        context: Collection[str] = (),
    ) -> None:
        self.tree = tree
        self.kinds_of = kinds_of
        self.context = context
        self.found: list[Clash] = []
        # names the template binds itself ({% for %}, {% set %}, macros) are not the context's,
        # and what it tests (`x is number`, `x is defined`) it may read knowingly
        bound: set[str] = set()
        tested: set[tuple[str, ...]] = set()
        for n in tree.find_all((nodes.Name, nodes.Test, nodes.For, nodes.Macro, nodes.CallBlock)):
            if isinstance(n, nodes.Name):
                if n.ctx in ("store", "param"):
                    bound.add(n.name)
            elif isinstance(n, nodes.Test):
                path = path_of(n.node)
                if path is not None:
                    tested.add(path)
            elif isinstance(n, nodes.For):
                bound.add("loop")  # Jinja's own loop variable
            else:
                bound |= {"caller", "varargs", "kwargs", getattr(n, "name", "caller")}
        self.bound = bound
        self.tested = tested
        # the names the template reads: a macro none of them names is never run
        self.read = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"}

    def run(self) -> list[Clash]:
        self.visit(self.tree)
        return self.found

    def visit(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Expr):
            self.infer(node)
            return
        if isinstance(node, nodes.For):
            kinds = self.infer(node.iter)
            if kinds is not None and kinds <= _NOT_ITERABLE:
                self.not_iterable(node.iter, kinds)
            if _empty(node.iter):
                # `{% for x in [] %}`: the body (and its `if`) never runs, only the `else`
                for child in node.else_:
                    self.visit(child)
                return
            for child in node.iter_child_nodes(exclude=("iter",)):
                self.visit(child)
            return
        if isinstance(node, nodes.Macro) and node.name not in self.read:
            return  # (a macro no one calls is never run: what it holds never fails)
        if isinstance(node, nodes.If) and _constant(node.test) is not None:
            # `{% if false %}…{% endif %}`, text set aside: what is never run never fails
            taken = node.body if _constant(node.test) else [*node.elif_, *node.else_]
            for child in taken:
                self.visit(child)
            return
        for child in node.iter_child_nodes():
            self.visit(child)

    def infer(self, node: nodes.Node) -> Kinds | None:
        """The kinds of an expression's value (None: not known); operations in it that can
        never work are recorded on the way."""
        if isinstance(node, nodes.Const):
            return kind_of(node.value)
        if isinstance(node, nodes.TemplateData):
            return STRING
        if isinstance(node, nodes.Name | nodes.Getattr | nodes.Getitem):
            path = path_of(node)
            if path is not None:
                return self.variable(path)
        if isinstance(node, nodes.Compare):
            left_node, left = node.expr, self.infer(node.expr)
            for operand in node.ops:
                right = self.infer(operand.expr)
                self.compare(operand.op, left_node, left, operand.expr, right)
                left_node, left = operand.expr, right
            return BOOLEAN
        if isinstance(node, nodes.BinExpr) and type(node) in _BINARY:
            left, right = self.infer(node.left), self.infer(node.right)
            return self.arithmetic(node, _BINARY[type(node)], left, right)
        if isinstance(node, nodes.And | nodes.Or):  # (its value is one of its operands)
            left = self.infer(node.left)
            if _constant(node.left) is isinstance(node, nodes.Or):  # `false and …`, `true or …`
                return left  # (its right is never evaluated: it never fails)
            return _union(left, self.infer(node.right))
        if isinstance(node, nodes.CondExpr):
            self.infer(node.test)
            test = _constant(node.test)  # (a branch a constant turns away is never run)
            if test is True:
                return self.infer(node.expr1)
            if test is False:
                return self.infer(node.expr2) if node.expr2 is not None else None
            chosen = self.infer(node.expr1)
            return _union(chosen, self.infer(node.expr2)) if node.expr2 is not None else None
        if isinstance(node, nodes.Neg | nodes.Pos):
            inner = self.infer(node.node)
            return frozenset({int, float}) if inner is not None and inner <= NUMBER else None
        if isinstance(node, nodes.Filter) and node.node is not None:
            given = self.infer(node.node)
            for child in node.iter_child_nodes(exclude=("node",)):
                self.visit(child)
            refused = _REFUSED.get(node.name)
            if given is not None and refused is not None and given <= refused:
                self.refused(node, given)
                return None  # (what uses it is not reported again)
            return _filter_kinds(node)
        for child in node.iter_child_nodes():
            self.visit(child)
        if isinstance(node, nodes.Call):
            self.range_too_large(node)
        if isinstance(node, nodes.Concat):
            return STRING
        if isinstance(node, nodes.Not | nodes.Test):
            return BOOLEAN
        if isinstance(node, nodes.List):
            return frozenset({list})
        if isinstance(node, nodes.Tuple):
            return frozenset({tuple})
        if isinstance(node, nodes.Dict):
            return frozenset({dict})
        if isinstance(node, nodes.Filter):  # (`{% filter %}`: no value of its own)
            return _filter_kinds(node)
        return None

    def variable(self, path: tuple[str, ...]) -> Kinds | None:
        if path[0] in self.bound:
            return None
        if any(path[: len(t)] == t or t[: len(path)] == path for t in self.tested):
            return None
        return self.kinds_of(path)

    # --- the rules: a pair of types an operation never takes ---------------------------------

    def compare(
        self,
        op: str,
        left_node: nodes.Node,
        left: Kinds | None,
        right_node: nodes.Node,
        right: Kinds | None,
    ) -> None:
        if left is None or right is None:
            return
        if op in _ORDERING:
            if all(not _orderable(a, b) for a in left for b in right):
                self.clash(left_node, _ORDERING[op], left, right_node, right)
        elif op in ("in", "notin") and all(not _contains(a, b) for a in left for b in right):
            written = "in" if op == "in" else "not in"
            self.clash(left_node, written, left, right_node, right)
        elif op in ("eq", "ne") and all(_never_equal(a, b) for a in left for b in right):
            written = "==" if op == "eq" else "!="
            self.clash(left_node, written, left, right_node, right, "W506")

    def arithmetic(
        self, node: nodes.BinExpr, op: str, left: Kinds | None, right: Kinds | None
    ) -> Kinds | None:
        if left is None or right is None:
            return None
        if op in ("/", "//", "%") and left <= NUMBER and _is_zero(node.right):
            written = source(node.left)
            what = f"`{written} {op} {source(node.right)}`" if written is not None else f"`{op} 0`"
            message = f"{what} divides by zero: a run fails there (ZeroDivisionError)"
            hint = "divide by a number other than 0"
            path, after = _first_path(node.left), rf"\s*{re.escape(op)}\s*0\b"
            locate = (
                _written(path, after)
                if path is not None
                else (re.escape(written) + after if written is not None else None)
            )
            self.found.append(Clash(node.left, path, message, hint, (), "E307", locate))
            return None
        results = [_result(op, a, b) for a in left for b in right]
        if op == "%" and isinstance(node.left, nodes.Const) and isinstance(node.left.value, str):
            # a format written in the template: whether it takes such a value is known
            results = [_formats(node.left.value, b, node.right) for b in right]
        if all(r is None for r in results):
            self.clash(node.left, op, left, node.right, right)
            return None  # (what uses it is not reported again)
        if any(r is _UNKNOWN for r in results):
            return None
        return frozenset(r for r in results if isinstance(r, type))

    def not_iterable(self, node: nodes.Node, kinds: Kinds) -> None:
        """`{% for x in n %}` over a number, a boolean or null: a TypeError at every run."""
        written = source(node)
        loop = f"`{{% for … in {written} %}}`" if written is not None else "`{% for %}`"
        count = written is not None and kinds <= NUMBER
        hint = "iterate over a list, a string or a mapping" + (
            f" (to count: range({written} | int))" if count else ""
        )
        message = f"{loop} iterates over {describe(kinds)}: a run fails there (TypeError)"
        self.found.append(Clash(node, _first_path(node), message, hint))

    def refused(self, node: nodes.Filter, given: Kinds) -> None:
        """`x | length` of a number, `x | round` of a string, …: the filter fails on every
        value `x` may be."""
        assert node.node is not None
        written = source(node.node)
        shown = f"`{written} | {node.name}`" if written is not None else f"`| {node.name}`"
        name = node.name
        if _REFUSED[name] is _NOT_A_NUMBER:
            wants = "a number"
            hint = (
                f"convert the text first: `{written} | float | {name}`"
                if written is not None and given == STRING
                else f"`| {name}` takes a number"
            )
        elif name == "dictsort":
            wants = "a mapping"
            hint = "`| dictsort` takes a mapping (a list: `| sort`)"
        else:
            wants = "a list, a string or a mapping"
            hint = f"`| {name}` takes a list, a string or a mapping" + (
                f": to count its characters, `{written} | string | {name}`"
                if written is not None and given <= NUMBER and name in ("length", "count")
                else ""
            )
        message = (
            f"{shown} applies `{name}` to {describe(given)}, which takes {wants}: a run fails there"
        )
        path = _first_path(node.node)
        locate = _written(path, rf"[^{{}}]*?\|\s*{name}\b") if path is not None else None
        self.found.append(Clash(node.node, path, message, hint, (), "E306", locate))

    def range_too_large(self, node: nodes.Call) -> None:
        """`range(10**9)`, its numbers written as they are: the sandbox refuses a range of more
        than MAX_RANGE items, at every run that gets there; and `range(a, b, 0)`, whatever
        `a` and `b` are."""
        if not (isinstance(node.node, nodes.Name) and node.node.name == "range"):
            return
        if "range" in self.bound or "range" in self.context:
            return  # (not Jinja's)
        if node.kwargs or node.dyn_args or node.dyn_kwargs or not 1 <= len(node.args) <= 3:
            return
        if len(node.args) == 3 and _literal_int(node.args[2]) == 0:
            message = (
                "`range(…)` with a step of 0: Python refuses it (ValueError), so a run fails there"
            )
            hint = "give range a step other than 0: range(start, stop, 1)"
            self.found.append(Clash(node, ("range",), message, hint, (), "E307"))
            return
        numbers = [_literal_int(a) for a in node.args]
        if any(n is None for n in numbers):
            return
        try:
            count = len(range(*numbers))  # type: ignore[arg-type]
        except (ValueError, OverflowError):  # (a step of 0; a range too large for len)
            return
        if count <= MAX_RANGE:
            return
        message = (
            f"`range(…)` makes {count:,} numbers: the sandbox refuses a range of more than "
            f"{MAX_RANGE:,}, so a run fails there"
        )
        hint = f"iterate over at most {MAX_RANGE:,} numbers, or over the data itself"
        self.found.append(Clash(node, ("range",), message, hint, (), "E307"))  # (located so)

    def clash(
        self,
        left_node: nodes.Node,
        op: str,
        left: Kinds,
        right_node: nodes.Node,
        right: Kinds,
        code: str = "E306",
    ) -> None:
        lt, rt = source(left_node), source(right_node)
        written = f"`{lt} {op} {rt}`" if lt is not None and rt is not None else f"`{op}`"
        what = {
            "+": "adds {} and {}",
            "-": "subtracts {1} from {0}",
            "*": "multiplies {} by {}",
            "/": "divides {} by {}",
            "//": "divides {} by {}",
            "%": "takes the remainder of {} divided by {}",
            "**": "raises {} to the power of {}",
            "in": "looks for {} in {}",
            "not in": "looks for {} in {}",
        }.get(op, "compares {} with {}")
        formatted = op == "%" and isinstance(left_node, nodes.Const) and left == STRING
        if formatted:  # (`'%d items' % x`: a format, not a remainder)
            what = "fills the format with {1}"
        message = f"{written} {what.format(describe(left), describe(right))}: " + (
            "a run fails there (TypeError)"
            if code == "E306"
            else f"they are never equal, so it is always {'false' if op == '==' else 'true'}"
        )
        path = _first_path(left_node)
        lead: tuple[str, ...] = ()
        if path is None:
            path = _first_path(right_node)
            if isinstance(left_node, nodes.Const) and type(left_node.value) in (str, int, float):
                value = left_node.value
                lead = (f"'{value}'", f'"{value}"') if isinstance(value, str) else (repr(value),)
        hint = (
            "each % code takes one value (%s any, %d and %f a number, %(name)s a mapping's): "
            "fix the format, convert the value (`| int`), or join text with `~`"
            if formatted
            else _hint(op, left_node, left, right_node, right)
        )
        self.found.append(Clash(left_node, path, message, hint, lead, code))


_UNKNOWN = object()  # an operation that works but whose result is not worked out here


def _orderable(a: type, b: type) -> bool:
    """Whether `a < b` may work for values of these types (lists: when their items do)."""
    return (a in NUMBER and b in NUMBER) or (a is b and a in _SEQUENCES)


def _contains(a: type, b: type) -> bool:
    """Whether `x in y` may work: `y` is a container, and a string holds only strings."""
    if b in NUMBER or b is NONE:
        return False
    return not (b is str and a is not str)


def _never_equal(a: type, b: type) -> bool:
    """Whether a value of `a` is never `==` one of `b` (`'3' == 3` is false): text and a
    number (or a boolean). Other pairs (`x == none` as a guard) are left alone."""
    return (a is str and b in NUMBER) or (b is str and a in NUMBER)


def _result(op: str, a: type, b: type) -> Any:
    """The type of `a op b`; None when Python refuses these types, _UNKNOWN when it works but
    its type is not worked out."""
    numbers = a in NUMBER and b in NUMBER
    if op == "+":
        if numbers:
            return float if float in (a, b) else int
        return a if a is b and a in _SEQUENCES else None
    if op == "*":
        if numbers:
            return float if float in (a, b) else int
        if a in _SEQUENCES and b in (int, bool):
            return a
        if b in _SEQUENCES and a in (int, bool):
            return b
        return None
    if op == "%":
        if a is str:
            return str  # (or a TypeError, by what the format holds: see _formats)
        return (float if float in (a, b) else int) if numbers else None
    if op in ("-", "//"):
        return (float if float in (a, b) else int) if numbers else None
    if op == "/":
        return float if numbers else None
    if op == "**":
        return _UNKNOWN if numbers else None  # (2 ** -1 is a float)
    return _UNKNOWN


# One value of each type a `%` format is tried with: whether `format % value` is a TypeError
# depends on the value's type only (for a `%c` code, on the value too: not judged). A tuple is
# several values, a mapping is read by key: not judged either.
_SAMPLES: Mapping[type, Any] = {str: "x", int: 1, float: 1.5, bool: True, NONE: None, list: []}
_CHAR_CODE = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(\.(\*|\d+)?)?[hlL]?c")


def _formats(fmt: str, kind: type, value_node: nodes.Node) -> Any:
    """The type of `fmt % value` for a value of `kind`: str, None when it is a TypeError
    (`'%d' % 'x'`, `'%s %s' % 1`, `'done' % 1`), _UNKNOWN when that is not known."""
    if re.search(r"\d{5}", fmt):
        return _UNKNOWN  # (`%99999999d`: not to be made here; the run refuses it anyway)
    if isinstance(value_node, nodes.Const) and type(value_node.value) is kind:
        value = value_node.value  # (both written: tried as they are)
    elif kind in _SAMPLES and not _CHAR_CODE.search(fmt.replace("%%", "")):
        value = _SAMPLES[kind]
    else:
        return _UNKNOWN
    try:
        fmt % value  # (only whether it fails)
    except TypeError:
        return None
    except Exception:  # a malformed format (ValueError) or a huge number: not a type's fault
        return _UNKNOWN
    return str


def _written(path: tuple[str, ...], after: str) -> str:
    """A pattern of `path` as a template writes it (`input.n`, `input . n`), then `after`."""
    return r"\b" + r"\s*\.\s*".join(map(re.escape, path)) + r"\b" + after


def _filter_kinds(node: nodes.Filter) -> Kinds | None:
    """The kinds of a filter's result, where it has one type whatever it is given."""
    if node.name in ("int", "float") and (
        node.args or node.kwargs or node.dyn_args or node.dyn_kwargs
    ):
        return None  # (`| int(none)`: what it gives back when the value is no number)
    return _FILTERS.get(node.name)


def _is_zero(node: nodes.Node) -> bool:
    """Whether `node` is a number 0 written as it is (`0`, `0.0`; not `false`)."""
    return isinstance(node, nodes.Const) and type(node.value) in (int, float) and node.value == 0


def _literal_int(node: nodes.Node) -> int | None:
    """The value of a whole number written with literals (`10`, `-5`, `10**9`, `2 * 1000`);
    None for anything else, or for a number too large to be worth making."""
    if isinstance(node, nodes.Const):
        return node.value if type(node.value) is int else None
    if isinstance(node, nodes.Neg):
        inner = _literal_int(node.node)
        return None if inner is None else -inner
    if isinstance(node, nodes.Add | nodes.Sub | nodes.Mul | nodes.Pow):
        left, right = _literal_int(node.left), _literal_int(node.right)
        if left is None or right is None:
            return None
        if isinstance(node, nodes.Pow):
            if right < 0 or right * max(abs(left).bit_length(), 1) > 256:
                return None
            value: int = left**right
        elif isinstance(node, nodes.Mul):
            value = left * right
        else:
            value = left + right if isinstance(node, nodes.Add) else left - right
        return value if abs(value) < 2**256 else None
    return None


def _first_path(node: nodes.Node) -> tuple[str, ...] | None:
    """The first variable an operand reads, to locate it by."""
    path = path_of(node)
    if path is not None:
        return path
    for n in node.find_all((nodes.Name, nodes.Getattr, nodes.Getitem)):
        path = path_of(n)
        if path is not None:
            return path
    return None


def _constant(node: nodes.Node) -> bool | None:
    """Whether a test is written as a constant (`false`, `true`, `0`, `none`): its truth, or
    None when it depends on the run. A branch a constant turns away is never evaluated."""
    if isinstance(node, nodes.Const) and isinstance(node.value, bool | int | float | str | None):
        return bool(node.value)
    return None


def _empty(node: nodes.Node) -> bool:
    """Whether an iterable is written as an empty literal (`[]`, `()`, `{}`, `''`): a loop
    over it never runs its body, as a constant turns a branch away."""
    if isinstance(node, nodes.List | nodes.Tuple):
        return not node.items
    if isinstance(node, nodes.Dict):
        return not node.items
    return isinstance(node, nodes.Const) and node.value in ("", (), [])


def _union(a: Kinds | None, b: Kinds | None) -> Kinds | None:
    return None if a is None or b is None else a | b


def describe(kinds: Kinds) -> str:
    """How a message names what a value may be: 'a string', 'a number', 'a list or null'."""
    if kinds <= BOOLEAN:
        return "a boolean"
    if kinds <= NUMBER:
        return "a number"
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        NONE: "null",
        list: "a list",
        tuple: "a tuple",
        dict: "a mapping",
    }
    return " or ".join(sorted({names[k] for k in kinds}))


def source(node: nodes.Node) -> str | None:
    """An operand as it could be written (`steps.a.output.text`, `3`, `'x'`, `x | length`),
    None when it is more than that."""
    path = path_of(node)
    if path is not None:
        return path[0] + "".join(f".{p}" if p.isidentifier() else f"[{p!r}]" for p in path[1:])
    if isinstance(node, nodes.Const):
        value = node.value
        if value is None or isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, str | int | float):
            return repr(value)
        return None
    if isinstance(node, nodes.Filter) and node.node is not None and not (node.args or node.kwargs):
        inner = source(node.node)
        return None if inner is None else f"{inner} | {node.name}"
    return None


def _hint(op: str, left_node: nodes.Node, left: Kinds, right_node: nodes.Node, right: Kinds) -> str:
    """What to write instead, with the operands as written where they can be."""
    lt, rt = source(left_node), source(right_node)
    text_left = left == STRING and right <= NUMBER
    text_right = right == STRING and left <= NUMBER
    if op in ("in", "not in"):
        if right <= NUMBER | {NONE}:
            if lt is not None and rt is not None:
                return (
                    f"`{op}` looks inside a string, list or mapping: compare with `==`, or look "
                    f"in its text: `{lt} {op} ({rt} | string)`"
                )
            return "`in` looks inside a string, list or mapping: compare with `==` instead"
        if lt is not None and rt is not None:
            as_text = f"'{_literal(left_node)}'" if _literal(left_node) is not None else None
            return f"look for text: `{as_text or f'({lt} | string)'} {op} {rt}`"
        return "a string holds only strings: convert what you look for with `| string`"
    if op in ("==", "!=") and (text_left or text_right):
        return _equality_hint(op, left_node, right_node, text_left)
    if not (text_left or text_right):
        return "convert one side so both are of one type: `| int`, `| float`, `| string`"
    number_text = _number_in(left_node if text_left else right_node)
    if number_text is not None and lt is not None and rt is not None:
        lw, rw = (number_text, rt) if text_left else (lt, number_text)
        return f"write the number without quotes: `{lw} {op} {rw}`"
    if lt is None or rt is None:
        return "convert the text with `| int` or `| float` (or count it with `| length`)"
    if isinstance(left_node if text_left else right_node, nodes.Const):  # (`'a'` written so)
        if op in _ORDERING.values():
            lw, rw = (lt, f"{rt} | string") if text_left else (f"{lt} | string", rt)
            return f"write a number there, or compare text: `{lw} {op} {rw}`"
        if op == "+":
            return f"join them as text with `~`: `{lt} ~ {rt}`"
        return "write a number there"
    lw, rw = (f"{lt} | int", rt) if text_left else (lt, f"{rt} | int")
    converted = f"`{lw} {op} {rw}`"
    if op in _ORDERING.values():
        ll, rl = (f"{lt} | length", rt) if text_left else (lt, f"{rt} | length")
        return f"convert the text: {converted}, or compare its length: `{ll} {op} {rl}`"
    if op == "+":
        return f"join them as text with `~`: `{lt} ~ {rt}`, or add numbers: {converted}"
    if op == "*":
        return f"a string repeats a whole number of times: {converted}"
    return f"convert the text: {converted}"


def _equality_hint(op: str, left_node: nodes.Node, right_node: nodes.Node, text_left: bool) -> str:
    """What to write for `text == number`: the number it holds, or the number as text."""
    text_node, other = (left_node, right_node) if text_left else (right_node, left_node)
    tt, ot = source(text_node), source(other)

    def written(t: str, o: str) -> str:
        return f"`{t} {op} {o}`" if text_left else f"`{o} {op} {t}`"

    if isinstance(text_node, nodes.Const) and ot is not None:
        word = str(text_node.value).strip()
        if word.lower() in ("true", "false"):
            return f"write the boolean without quotes: {written(word.lower(), ot)}"
        if _number_in(text_node) is not None:
            return f"write the number without quotes: {written(word, ot)}"
    if tt is None or ot is None:
        return "convert one side so both are of one type: `| int`, `| float`, `| string`"
    if isinstance(other, nodes.Const) and type(other.value) in (int, float):
        return (
            f"compare the number it holds: {written(f'{tt} | int', ot)}, or the text: "
            f"{written(tt, repr(str(other.value)))}"
        )
    return f"compare the number it holds: {written(f'{tt} | int', ot)}"


def _literal(node: nodes.Node) -> str | None:
    """A number literal's digits (to be written as a string)."""
    if isinstance(node, nodes.Const) and type(node.value) in (int, float):
        return repr(node.value)
    return None


def _number_in(node: nodes.Node) -> str | None:
    """The number a string literal holds (`'3'`), as it would be written without quotes."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        text = node.value.strip()
        return text if re.fullmatch(r"-?\d+(\.\d+)?", text) else None
    return None
