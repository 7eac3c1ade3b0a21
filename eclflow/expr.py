"""Jinja expressions: one sandboxed environment for every template a workflow file holds.

Workflow files may come from other people, so everything renders in Jinja's
`ImmutableSandboxedEnvironment` with `StrictUndefined`. Values that come from inputs or model
output are data: they are passed as variables and never rendered again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from functools import lru_cache
from types import CodeType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import TemplateError

_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<body>.*)\}\}\s*$", re.DOTALL)


def _tojson(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, default=str)


# What one operation in a template may make: a workflow file may come from someone else, and
# `'a' * 10**10`, `2 ** 10**9` or `'x' | center(10**9)` would take the process's memory or time.
MAX_SIZE = 10_000_000  # characters or items
MAX_BITS = 100_000  # of an integer `**` makes


def _concat(parts: Iterable[Any]) -> str:
    """The text a template, a `{% set %}` block or a macro makes, refused past MAX_SIZE
    characters: each part may be within the bounds (`{% for i in range(10**5) %}{{ big }}`)."""
    out: list[str] = []
    size = 0
    for part in parts:
        size += len(part)
        if size > MAX_SIZE:
            _bounded(size, f"the text it makes would reach {size:,} characters")
        out.append(part)
    return "".join(out)


def _str_join(values: Iterable[Any]) -> str:
    """`a ~ b`: Jinja's own, refused past MAX_SIZE characters (a loop that doubles a text)."""
    texts = list(map(str, values))
    size = sum(map(len, texts))
    if size > MAX_SIZE:  # (the message is made only then: `~` is on every step's path)
        _bounded(size, f"`~` would make {size:,} characters")
    return "".join(texts)


class _Template(jinja2.Template):
    """A template whose `~` is `_str_join` (the compiled code takes Jinja's from its module)."""

    @classmethod
    def from_code(
        cls,
        environment: jinja2.Environment,
        code: CodeType,
        globals: MutableMapping[str, Any],
        uptodate: Callable[[], bool] | None = None,
    ) -> jinja2.Template:
        template = super().from_code(environment, code, globals, uptodate)
        template.root_render_func.__globals__["str_join"] = _str_join  # type: ignore[attr-defined]
        return template


class _Environment(ImmutableSandboxedEnvironment):
    """Sandboxed, and `a.b` on a mapping means its key `b` first (`output.items` is data)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    template_class = _Template
    concat = staticmethod(_concat)  # type: ignore[assignment]

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "+":
            if isinstance(left, _SIZED) and isinstance(right, _SIZED):
                size = len(left) + len(right)  # (a loop that doubles a list: `ns.a + ns.a`)
                if size > MAX_SIZE:  # (the message is made only then, as for `~`)
                    _bounded(size, f"`+` would make {size:,} items")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and type(n) is int:
                    _bounded(len(seq) * n, f"`*` would make {len(seq) * n:,} items")
        elif operator == "**" and type(left) is int and type(right) is int and abs(left) > 1:
            bits = right * abs(left).bit_length()
            if bits > MAX_BITS:
                raise SecurityError(f"`**` would make a number of {bits:,} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # str's own padding methods, as the filters
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _PADDING:
                width = args[0] if args else kwargs.get("tabsize" if name == "expandtabs" else "")
                if type(width) is int:
                    tabs = owner.count("\t") if name == "expandtabs" else 0
                    _bounded(len(owner) + max(tabs, 1) * width, f"`{name}` of width {width:,}")
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else None)
            elif name == "join" and len(args) == 1:
                args = (list(args[0]),)
                _check_join(owner, args[0])
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        # `'…'.format(…)` and `format_map(…)`: the sandbox hands out its own wrapper
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> Any:
            mapped = args[0].values() if value.__name__ == "format_map" and args else ()
            _check_format(fmt, (*args, *kwargs.values(), *mapped))
            return wrapped(*args, **kwargs)

        return bounded


_SIZED = (str, list, tuple)
_PADDING = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_format(fmt: str, values: Any) -> None:
    """A `%` or `str.format` format whose widths or precisions (written, or given as values
    for `*` and `{…}` fields) would make more than MAX_SIZE characters."""
    for number in re.findall(r"\d{8,}", fmt):
        _bounded(int(number), f"a width of {int(number):,} in a format")
    given = values if isinstance(values, tuple) else (values,)
    if isinstance(values, Mapping):
        given = tuple(values.values())
    # widths given as values: `%*s`, or a nested `{:>{}}` field
    if "*" in fmt.replace("%%", "") or re.search(r"\{[^{}]*:[^{}]*\{", fmt):
        for v in given:
            if type(v) is int:
                _bounded(abs(v), f"a width of {abs(v):,} in a format")


def _check_replace(text: str, old: Any, new: Any, count: Any) -> None:
    if not (isinstance(old, str) and isinstance(new, str)) or len(new) <= len(old):
        return
    n = text.count(old) if old else len(text) + 1
    if type(count) is int and count >= 0:
        n = min(n, count)
    size = len(text) + n * (len(new) - len(old))
    _bounded(size, f"`replace` would make {size:,} characters")


def _check_join(separator: str, items: list[Any]) -> None:
    size = sum(len(str(i)) for i in items) + len(separator) * max(len(items) - 1, 0)
    _bounded(size, f"`join` would make {size:,} characters")


def _bounded(size: int, what: str) -> None:
    if size > MAX_SIZE:
        raise SecurityError(f"{what}, over the limit of {MAX_SIZE:,}")


def _width_filter(name: str) -> Any:
    """Jinja's `center`, `indent` or `format`, refusing what would make more than MAX_SIZE
    characters (their own defaults kept)."""
    original = jinja2.filters.FILTERS[name]

    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if name == "format":
            if isinstance(value, str):
                _check_format(value, (*args, *kwargs.values()))
            return original(value, *args, **kwargs)
        width = args[0] if args else kwargs.get("width")
        if type(width) is int:
            lines = str(value).count("\n") + 1 if name == "indent" else 1
            _bounded(len(str(value)) + lines * width, f"`{name}` of width {width:,}")
        return original(value, *args, **kwargs)

    return bounded


@jinja2.pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> Any:
    _check_replace(str(s), str(old), str(new), count)
    return jinja2.filters.do_replace(eval_ctx, s, old, new, count)


@jinja2.pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
    if attribute is not None:
        value = map(jinja2.filters.make_attrgetter(eval_ctx.environment, attribute), value)
    items = list(value)
    _check_join(str(d), items)
    return jinja2.filters.sync_do_join(eval_ctx, items, d)


def _batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
    if fill_with is not None and type(linecount) is int:  # (the last batch is filled up)
        _bounded(linecount, f"`batch` of {linecount:,} items")
    return jinja2.filters.do_batch(value, linecount, fill_with)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    if type(slices) is int:
        _bounded(slices, f"`slice` into {slices:,} lists")
    return jinja2.filters.sync_do_slice(value, slices, fill_with)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
    if type(n) is int and type(max) is int:
        _bounded(n * max, f"`lipsum` of up to {n * max:,} words")
    return jinja2.utils.generate_lorem_ipsum(n, html, min, max)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    env = _Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = _tojson
    env.filters["to_json"] = _tojson
    for name in ("center", "indent", "format"):
        env.filters[name] = _width_filter(name)
    env.filters.update(replace=_replace, join=_join, batch=_batch, slice=_slice)
    env.globals["lipsum"] = _lipsum
    return env


def has_template(value: str) -> bool:
    return "{{" in value or "{%" in value or "{#" in value


@lru_cache(maxsize=4096)
def single_expression(value: str) -> str | None:
    """The body of `value` when it is exactly one `{{ … }}` (so it keeps its type), else None."""
    m = _SINGLE_EXPR.match(value)
    if m is None:
        return None
    body = m.group("body")
    if ("{{" in body or "}}" in body or "{%" in body) and not _one_variable(value.strip()):
        return None  # `{{ a }} {{ b }}`, not `{{ {'a': {'b': 1}} }}`
    # `{{-` and `-}}` are Jinja's whitespace control, not part of the expression
    return body.removeprefix("-").removesuffix("-")


def _one_variable(value: str) -> bool:
    """Whether Jinja's lexer reads `value` as one `{{ … }}` and nothing else."""
    try:
        kinds = [kind for _, kind, _ in environment().lex(value)]
    except jinja2.TemplateSyntaxError:
        return False
    return (
        kinds[:1] == ["variable_begin"]
        and kinds[-1:] == ["variable_end"]
        and kinds.count("variable_begin") == 1
        and kinds.count("variable_end") == 1
    )


@lru_cache(maxsize=4096)
def compile_template(source: str) -> jinja2.Template:
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template does not parse: {e.message} (line {e.lineno})") from e
    except (RecursionError, SyntaxError, MemoryError):
        raise TemplateError(f"template {_excerpt(source)} does not compile: {_TOO_DEEP}") from None


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Any:
    try:
        return environment().compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"expression does not parse: {e.message}") from e
    except (RecursionError, SyntaxError, MemoryError):
        raise TemplateError(
            f"expression {_excerpt(source)} does not compile: {_TOO_DEEP}"
        ) from None


def _explain(
    e: Exception, source: str, line: int | None = None, name: str | None = None
) -> TemplateError:
    shown = (name or _excerpt(source)) + (f", line {line}" if line else "")
    if isinstance(e, SecurityError):
        return TemplateError(f"unsafe template refused by the sandbox: {e} in {shown}")
    if isinstance(e, jinja2.UndefinedError):
        return TemplateError(f"{e.message} in {shown}")
    return TemplateError(f"template {shown} failed: {type(e).__name__}: {e}")


def _excerpt(source: str, limit: int = 60) -> str:
    """A template as an error message names it: whole when short, else its first line cut to
    `limit` characters (a prompt file is pages long)."""
    text = source.strip()
    lines = text.splitlines() or [text]
    if len(lines) == 1 and len(text) <= limit:
        return repr(text)
    return repr(lines[0][:limit]) + f"… ({len(lines)} line{'s' * (len(lines) != 1)})"


@lru_cache(maxsize=4096)
def _renderer(source: str) -> tuple[jinja2.Template, dict[str, Any]]:
    """A compiled template and its globals as a plain dict (Jinja merges a ChainMap of them
    into every render otherwise, which costs more than rendering a short prompt)."""
    template = compile_template(source)
    return template, dict(template.globals)


def render_string(source: str, context: Mapping[str, Any], name: str | None = None) -> str:
    """Render a template to text. `name`: what an error calls the template (its file)."""
    if not has_template(source):
        return source
    body = single_expression(source)
    if body is not None and source.startswith("{{") and source.endswith("}}"):
        path = _dotted(body)
        if path is not None and path[0] not in _LITERALS:
            value = _lookup(path, context)
            if type(value) is str:
                return value  # what Jinja would print, without building a context for it
    try:
        template, globals_ = _renderer(source)
        ctx = new_context(
            template.environment, template.name, template.blocks, {**globals_, **context}, True
        )
        return template.environment.concat(template.root_render_func(ctx))  # type: ignore[attr-defined]
    except TemplateError:
        raise
    except Exception as e:
        raise _explain(e, source, _template_line(e, source), name) from e


def _template_line(e: BaseException, source: str) -> int | None:
    """The line of a template of several lines that `e` was raised at, from the traceback's
    frames in the compiled template (what Jinja's own render would rewrite them to)."""
    if "\n" not in source.strip():
        return None
    template = _renderer(source)[0]
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


_PATH = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*$")
_MISSING = object()
_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})


@lru_cache(maxsize=4096)
def _dotted(source: str) -> tuple[str, ...] | None:
    m = _PATH.match(source)
    return tuple(m.group(1).split(".")) if m else None


def _lookup(path: tuple[str, ...], context: Mapping[str, Any]) -> Any:
    """`a.b.c` through mappings only, as the sandbox would resolve it; _MISSING otherwise."""
    value: Any = context
    for part in path:
        if not (type(value) is dict or isinstance(value, Mapping)) or part not in value:
            return _MISSING
        value = value[part]
    return value


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate one expression; `{{ }}` around it is optional."""
    body = single_expression(expression)
    source = body if body is not None else expression
    path = _dotted(source)
    if path is not None and path[0] not in _LITERALS:
        value = _lookup(path, context)
        if value is not _MISSING:
            return value  # the common `steps.x.output.y`, without building a Jinja context
    try:
        result = compile_expression(source)(**context)
    except TemplateError:
        raise
    except Exception as e:
        raise _explain(e, expression) from e
    if isinstance(result, jinja2.Undefined):
        raise TemplateError(f"{' '.join(source.split())} is undefined")
    return result


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render a binding: strings are templates, containers are rendered item by item.

    A string that is exactly one `{{ … }}` keeps the type of what it evaluates to.
    """
    if isinstance(value, str):
        if not has_template(value):
            return value
        body = single_expression(value)
        if body is not None:
            return evaluate(body, context)
        return render_string(value, context)
    if isinstance(value, Mapping):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, context) for v in value]
    return value


# --- static analysis, used by validation -------------------------------------------------------


# Python compiles Jinja's code with a parenthesis a level: it refuses 200, and Jinja's own
# compiler runs out of stack before 500. Deeper than this is refused when parsed (validate).
MAX_NESTING = 100


def parse(source: str) -> nodes.Template:
    """Parse a template; raises jinja2.TemplateSyntaxError (also when it nests too deep to
    run)."""
    try:
        tree = environment().parse(source)
    except RecursionError:
        raise jinja2.TemplateSyntaxError(_TOO_DEEP, 1) from None
    _check_nesting(tree)
    return tree


def parse_expression(source: str) -> nodes.Template:
    """Parse a bare expression as a template `{{ source }}`."""
    return parse("{{ " + source + " }}")


_TOO_DEEP = (
    f"nested more than {MAX_NESTING} levels deep (a long chain of `or`/`and`?): "
    "write `x in [a, b, …]` or split it"
)


def _check_nesting(tree: nodes.Node) -> None:
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise jinja2.TemplateSyntaxError(_TOO_DEEP, getattr(node, "lineno", 1) or 1)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


def referenced_paths(tree: nodes.Template) -> list[tuple[str, ...]]:
    """Every variable path the template reads, as far as it can be known statically.

    `steps.critique.output.draft` gives ('steps', 'critique', 'output', 'draft'); a subscript with a
    constant key counts like an attribute. Names the template binds are left out where they are
    bound: a for-loop's target inside its body, a `set` after it, a macro's or call block's
    parameters (and `caller`, `varargs`, `kwargs`) inside it, `with` targets inside `with`.
    """
    # macros can be called before their definition (Jinja hoists them)
    macros = {m.name for m in tree.find_all(nodes.Macro)}
    guarded = _guarded(tree)
    paths: list[tuple[str, ...]] = []

    def walk(node: nodes.Node, bound: set[str]) -> None:
        chain = path_of(node)
        if chain is not None:
            if chain[0] not in bound:
                if not any(chain[: len(g)] == g or g[: len(chain)] == chain for g in guarded):
                    paths.append(chain)
                elif chain[0] == "steps":  # a guarded field of a step: its name is still read
                    paths.append(chain[:3])
            return
        if isinstance(node, nodes.For):
            walk(node.iter, bound)
            inner = bound | _stored(node.target)
            for child in [*([node.test] if node.test is not None else []), *node.body]:
                walk(child, inner)
            for child in node.else_:
                walk(child, bound)
        elif isinstance(node, nodes.Macro | nodes.CallBlock):
            for default in node.defaults:
                walk(default, bound)
            if isinstance(node, nodes.CallBlock):
                walk(node.call, bound)
            inner = bound | {a.name for a in node.args} | {"caller", "varargs", "kwargs"}
            for child in node.body:
                walk(child, inner)
        elif isinstance(node, nodes.With):
            for value in node.values:
                walk(value, bound)
            inner = bound | {n for t in node.targets for n in _stored(t)}
            for child in node.body:
                walk(child, inner)
        elif isinstance(node, nodes.Assign | nodes.AssignBlock):
            for child in node.iter_child_nodes():
                if child is not node.target:
                    walk(child, bound)
            bound |= _stored(node.target)  # from here on, in this scope
        else:
            for child in node.iter_child_nodes():
                walk(child, bound)

    walk(tree, set(macros))
    return paths


def _guarded(tree: nodes.Node) -> set[tuple[str, ...]]:
    """What the template guards (`x is defined`, `x | default(…)`): it does not need it."""
    guarded = set()
    for n in tree.find_all((nodes.Test, nodes.Filter)):
        if n.name in _GUARDS and n.node is not None:
            chain = path_of(n.node)
            if chain is not None:
                guarded.add(chain)
    return guarded


def certain_paths(tree: nodes.Template) -> list[tuple[str, ...]]:
    """The unguarded variable paths the template reads whenever it is rendered: not those
    only an `{% if %}` branch, an arm of `… if … else …`, the right of `and`/`or`, a loop's
    body or a macro reads (a branch the run does not take reads nothing)."""
    guarded = _guarded(tree)
    paths: list[tuple[str, ...]] = []

    def walk(node: nodes.Node) -> None:
        chain = path_of(node)
        if chain is not None:
            if not any(chain[: len(g)] == g or g[: len(chain)] == chain for g in guarded):
                paths.append(chain)
        elif isinstance(node, nodes.If | nodes.CondExpr):
            walk(node.test)
        elif isinstance(node, nodes.And | nodes.Or):
            walk(node.left)
        elif isinstance(node, nodes.For):
            walk(node.iter)
        elif not isinstance(node, nodes.Macro | nodes.CallBlock):
            for child in node.iter_child_nodes():
                walk(child)

    walk(tree)
    return paths


def tested_paths(tree: nodes.Node) -> list[tuple[str, ...]]:
    """The variable paths the template tests to pick a branch, as a whole: the test of an
    `{% if %}` or of `… if X else …`, or the left side of `and`/`or`, or what a `not`, an `is`
    test or a comparison is about there (`steps.a.output is none`)."""
    out = []
    for n in tree.find_all((nodes.If, nodes.CondExpr, nodes.And, nodes.Or)):
        test = (
            n.left
            if isinstance(n, nodes.And | nodes.Or)
            else n.test
            if isinstance(n, nodes.If | nodes.CondExpr)
            else None
        )
        while isinstance(test, nodes.Not | nodes.Test | nodes.Compare):
            test = test.expr if isinstance(test, nodes.Compare) else test.node
        chain = path_of(test) if test is not None else None
        if chain is not None:
            out.append(chain)
    return out


def _stored(target: nodes.Node) -> set[str]:
    """The names an assignment target binds (`x`, `a, b`)."""
    if isinstance(target, nodes.Name):
        return {target.name}
    return {n.name for n in target.find_all(nodes.Name)}


_GUARDS = {"defined", "undefined", "default", "d"}


def path_of(node: nodes.Node) -> tuple[str, ...] | None:
    """The variable path an expression node reads (`steps.a.output['x']` gives
    ('steps', 'a', 'output', 'x')), None when it is not a plain path."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            parts.append(str(node.arg.value))
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None
