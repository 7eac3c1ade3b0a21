"""Jinja expressions: typed single expressions, the sandbox, data never rendered twice."""

from __future__ import annotations

import pytest

from eclflow import expr
from eclflow.errors import TemplateError


def test_single_expression_keeps_its_type() -> None:
    ctx = {"input": {"n": 3, "items": [1, 2]}}
    assert expr.render_value("{{ input.n }}", ctx) == 3
    assert expr.render_value("{{ input.items }}", ctx) == [1, 2]
    assert expr.render_value("n={{ input.n }}", ctx) == "n=3"
    assert expr.render_value({"a": ["{{ input.n + 1 }}"]}, ctx) == {"a": [4]}
    assert expr.render_value("plain", ctx) == "plain"
    # a nested literal's `}}` does not end the expression (it was the text "{'a': {'b': 1}}")
    assert expr.render_value("{{ {'a': {'b': input.n}} }}", ctx) == {"a": {"b": 3}}
    assert expr.render_value("{{ [{'k': 1}] }}", ctx) == [{"k": 1}]
    assert expr.render_value("{{ input.n }} {{ input.n }}", ctx) == "3 3"
    assert expr.render_value("{{ input.n }}{% if true %}!{% endif %}", ctx) == "3!"


def test_values_are_data_not_templates() -> None:
    assert expr.render_value("{{ input.t }}", {"input": {"t": "{{ 7*7 }}"}}) == "{{ 7*7 }}"
    assert expr.render_string("x {{ t }}", {"t": "{% for %}"}) == "x {% for %}"


def test_undefined_names_fail_clearly() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        expr.render_value("{{ input.missing }}", {"input": {}})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ [].append(1) }}",
    ],
)
def test_sandbox_refuses_escapes(source: str) -> None:
    with pytest.raises(TemplateError):
        expr.render_value(source, {"cycler": object()})


def test_evaluate_accepts_bare_or_braced_expressions() -> None:
    ctx = {"steps": {"c": {"output": {"long": True}}}}
    assert expr.evaluate("steps.c.output.long", ctx) is True
    assert expr.evaluate("{{ not steps.c.output.long }}", ctx) is False


def test_referenced_paths() -> None:
    tree = expr.parse(
        "{{ steps.a.output.x }} {% for i in input.items %}{{ i }}{% endfor %}"
        "{{ loop.feedback | upper }}{{ steps['b'].status }}"
    )
    paths = expr.referenced_paths(tree)
    assert ("steps", "a", "output", "x") in paths
    assert ("input", "items") in paths
    assert ("loop", "feedback") in paths
    assert ("steps", "b", "status") in paths
    assert not any(p[0] == "i" for p in paths)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ a.b }}", "text"),  # a string found by its path: returned as Jinja would print it
        (" {{ a.b }} ", " text "),  # text around the expression stays
        ("{{ n }}", "3"),  # not a string: Jinja prints it
        ("{{ a.b | upper }}", "TEXT"),
        ("{{ a }}", "{'b': 'text'}"),
    ],
)
def test_render_string_of_one_expression_prints_what_jinja_prints(
    source: str, expected: str
) -> None:
    context = {"a": {"b": "text"}, "n": 3}
    assert expr.render_string(source, context) == expected
    assert expr.environment().from_string(source).render(context) == expected


def test_an_error_names_a_long_template_by_its_first_line_only() -> None:
    from eclflow.errors import TemplateError

    prompt = "Revise the draft below using {{ feedback }}.\n" + "More instructions.\n" * 40
    with pytest.raises(TemplateError) as caught:
        expr.render_string(prompt, {})
    message = str(caught.value)
    assert message == (
        "'feedback' is undefined in 'Revise the draft below using {{ feedback }}.'… (41 lines), "
        "line 1"
    )
    with pytest.raises(TemplateError, match=r"^'x' is undefined in '\{\{ x \}\}'$"):
        expr.render_string("{{ x }}", {})


def test_an_undefined_expression_is_named_as_written_without_braces_or_quotes() -> None:
    from eclflow.errors import TemplateError

    with pytest.raises(TemplateError, match=r"^input\.topic is undefined$"):
        expr.render_value("{{ input.topic }}", {"input": {"other": 1}})


def test_whitespace_control_marks_are_not_part_of_a_single_expression() -> None:
    ctx = {"input": {"n": 3, "topic": "tides"}}
    assert expr.render_value("{{- input.n -}}", ctx) == 3
    assert expr.render_value("{{-input.topic}}", ctx) == "tides"


def test_a_short_template_is_named_whole_even_with_a_final_newline() -> None:
    from eclflow.errors import TemplateError

    with pytest.raises(TemplateError, match=r"^'x' is undefined in '\{\{ x \}\}'$"):
        expr.render_string("{{ x }}\n", {})


@pytest.mark.parametrize(
    ("source", "unbound"),
    [
        # used before its `set`, or outside the loop or block that binds it: undefined there
        ("{{ x }}{% set x = 1 %}", ["x"]),
        ("{% for item in items %}{{ item }}{% endfor %} last={{ item }}", ["items", "item"]),
        ("{% for i in items %}{% set q = i %}{{ q }}{% endfor %}{{ q }}", ["items", "q"]),
        ("{% for i in items %}{% else %}{{ i }}{% endfor %}", ["items", "i"]),
        ("{% with z = 1 %}{{ z }}{% endwith %}{{ z }}", ["z"]),
        # bound where they are used
        ("{% set y = items | length %}{{ y }}{% for a, b in items if a %}{{ a ~ b }}{% endfor %}",
         ["items", "items"]),
        ("{% macro box(t) %}[{{ caller() }}:{{ t }}:{{ varargs | length }}:{{ kwargs }}]"
         "{% endmacro %}{% call box('x', 1) %}in {{ name }}{% endcall %}", ["name"]),
        ("{{ m() }}{% macro m() %}.{% endmacro %}", []),
        ("{% call(row) box() %}{{ row }}{% endcall %}", ["box"]),
    ],
)  # fmt: skip
def test_bound_names_count_only_where_they_are_bound(source: str, unbound: list[str]) -> None:
    """validate's E302 reads this: a name bound anywhere counted as bound everywhere (a run
    then failed on it), and `caller`, `varargs`, `kwargs` were taken for inputs."""
    assert [p[0] for p in expr.referenced_paths(expr.parse(source))] == unbound


def test_too_deep_to_run_is_a_parse_error_and_never_a_raw_python_one() -> None:
    """A chain of ~190 `or`s parsed (validate passed) and then failed the run with Python's
    "too many nested parentheses"; ~1000 raised RecursionError in validate and at run time."""
    import jinja2

    def chain(n: int) -> str:
        return " or ".join(f"x == {i}" for i in range(n))

    assert expr.compile_expression(chain(90))(x=89) is True  # what parses, runs
    for n in (150, 1000):
        with pytest.raises(jinja2.TemplateSyntaxError, match="nested more than 100 levels"):
            expr.parse_expression(chain(n))
    with pytest.raises(TemplateError, match="does not compile: nested more than 100"):
        expr.compile_expression(chain(1000))
    with pytest.raises(TemplateError, match="does not compile: nested more than 100"):
        expr.compile_template("{{ " + chain(1000) + " }}")


def test_a_run_time_error_names_the_template_line_and_file() -> None:
    """It named the template by its first line only: in a prompt file of pages, which line
    failed was anyone's guess."""
    source = "Line one\n{{ x }}\nhello {{ items.first }}\n"
    with pytest.raises(TemplateError) as caught:
        expr.render_string(source, {"x": 1, "items": "s"})
    assert str(caught.value) == (
        "'str object' has no attribute 'first' in 'Line one'… (3 lines), line 3"
    )
    with pytest.raises(TemplateError) as caught:
        expr.render_string(source, {"x": 1, "items": "s"}, name="prompts/p.j2")
    assert str(caught.value) == "'str object' has no attribute 'first' in prompts/p.j2, line 3"


@pytest.mark.parametrize(
    ("source", "refused"),
    [
        ("{{ 'a' * 10000000000 }}", "`*` would make 10,000,000,000 items"),
        ("{{ [0] * n * n * n }}", "`*` would make 100,000,000 items"),
        ("{{ 2 ** 1000000000 }}", "`**` would make a number of 2,000,000,000 bits"),
        ("{{ 'x' | center(1000000000) }}", "`center` of width 1,000,000,000"),
        ("{{ ' ' | indent(10 ** 9) }}", "`indent` of width 1,000,000,000"),
        ("{{ '%999999999d' % 1 }}", "a width of 999,999,999 in a format"),
        ("{{ '%.999999999f' % 1.0 }}", "a width of 999,999,999 in a format"),
        ("{{ '%(a(b)c)20000000s' % {'a(b)c': 1} }}", "a width of 20,000,000 in a format"),
        ("{{ '%*s' % (10 ** 9, 'x') }}", "a width of 1,000,000,000 in a format"),
        ("{{ '%20000000s' | format(1) }}", "a width of 20,000,000 in a format"),
        ("{{ '{:>20000000}'.format(1) }}", "a width of 20,000,000 in a format"),
        ("{{ '{:>{}}'.format(1, 20000000) }}", "a width of 20,000,000 in a format"),
        ("{{ ('\t' * 1000).expandtabs(9000000) }}", "`expandtabs` of width 9,000,000"),
        ("{{ '\t'.expandtabs(tabsize=20000000) }}", "`expandtabs` of width 20,000,000"),
        ("{{ ('a\n' * 100000) | indent(500) }}", "`indent` of width 500"),
        ("{{ 'x'.center(10 ** 9) }}", "`center` of width 1,000,000,000"),
        ("{{ 'x'.ljust(10 ** 9) }}", "`ljust` of width 1,000,000,000"),
        ("{{ 'x'.zfill(10 ** 9) }}", "`zfill` of width 1,000,000,000"),
        ("{{ lipsum(10 ** 6) }}", "`lipsum` of up to 100,000,000 words"),
        ("{{ lipsum(1, max=10 ** 9) }}", "`lipsum` of up to 1,000,000,000 words"),
        ("{{ [1] | batch(10 ** 9, 0) | list }}", "`batch` of 1,000,000,000 items"),
        ("{{ [1] | slice(10 ** 8) | list }}", "`slice` into 100,000,000 lists"),
        ("{{ ('a' * n) | replace('a', 'b' * n) }}", "`replace` would make 100,000,000 characters"),
        ("{{ ('a' * n).replace('a', 'b' * n) }}", "`replace` would make 100,000,000 characters"),
        ("{{ ('ab' * n) | join('c' * n) }}", "`join` would make 200,010,000 characters"),
        ("{{ ('c' * n).join('ab' * n) }}", "`join` would make 200,010,000 characters"),
        # each operation within bounds, repeated: a loop that doubles a text or a list
        ("{{ ('a' * n * 600) + ('b' * n * 600) }}", "`+` would make 12,000,000 items"),
        ("{{ ([0] * n * 600) + ([0] * n * 600) }}", "`+` would make 12,000,000 items"),
        ("{{ ('a' * n * 600) ~ ('b' * n * 600) }}", "`~` would make 12,000,000 characters"),
    ],
)
def test_the_sandbox_bounds_what_one_operation_may_make(source: str, refused: str) -> None:
    """A workflow file may come from someone else: each of these took the process's memory
    or minutes of CPU. Ordinary sizes are untouched."""
    with pytest.raises(TemplateError) as caught:
        expr.render_string(source, {"n": 10000})
    assert str(caught.value).startswith("unsafe template refused by the sandbox: " + refused)
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        expr.evaluate(source[3:-3], {"n": 10000})


@pytest.mark.parametrize(
    ("source", "refused"),
    [
        (
            "{% set ns = namespace(a='x') %}{% for i in range(40) %}"
            "{% set ns.a = ns.a + ns.a %}{% endfor %}{{ ns.a | length }}",
            "`+` would make 16,777,216 items",
        ),
        (
            "{% set ns = namespace(a=[0]) %}{% for i in range(40) %}"
            "{% set ns.a = ns.a + ns.a %}{% endfor %}",
            "`+` would make 16,777,216 items",
        ),
        (
            "{% set ns = namespace(a='x') %}{% for i in range(40) %}"
            "{% set ns.a = ns.a ~ ns.a %}{% endfor %}",
            "`~` would make 16,777,216 characters",
        ),
        (
            "{% for i in range(100000) %}{{ 'x' * 9000000 }}{% endfor %}",
            "the text it makes would reach 18,000,000 characters",
        ),
        (
            "{% set t %}{% for i in range(3) %}{{ 'x' * 9000000 }}{% endfor %}{% endset %}",
            "the text it makes would reach 18,000,000 characters",
        ),
    ],
)
def test_the_sandbox_bounds_what_a_loop_makes(source: str, refused: str) -> None:
    """Each step of these loops was within the bounds, the whole was not: the first took the
    process's memory (it was killed after a minute and a half), the others would have."""
    with pytest.raises(TemplateError) as caught:
        expr.render_string(source, {})
    assert str(caught.value).startswith("unsafe template refused by the sandbox: " + refused)


def test_ordinary_arithmetic_and_formatting_are_untouched() -> None:
    ctx = {"n": 3}
    assert expr.render_value("{{ 'ab' * n }}", ctx) == "ababab"
    assert expr.render_value("{{ [1] * n }}", ctx) == [1, 1, 1]
    assert expr.render_value("{{ 2 ** 64 }}", ctx) == 2**64
    assert expr.render_value("{{ '%5d|%-3s' % (42, 'x') }}", ctx) == "   42|x  "
    assert expr.render_value("{{ 'x' | center(5) }}", ctx) == "  x  "
    # the filters' own defaults are kept (a bare `indent` indented 80 spaces, not 4)
    assert expr.render_value('{{ "a\nb" | indent }}', ctx) == "a\n    b"
    assert expr.render_value('{{ "a" | center }}', ctx) == "a".center(80)
    assert expr.render_value("{{ 1 ** 200000 }}", ctx) == 1
    assert expr.render_value("{{ 'a .* b %s' % 'x' }}", ctx) == "a .* b x"
    assert expr.render_value("{{ 'ab'.center(6) }}", ctx) == "  ab  "
    assert expr.render_value("{{ '{}'.format(20000000) }}", ctx) == "20000000"
    assert expr.render_value("{{ '%d items, 100%%' % 20000000 }}", ctx) == "20000000 items, 100%"
    assert expr.render_value("{{ '{:>5}'.format('ab') }}", ctx) == "   ab"
    assert expr.render_value("{{ '%5.1f' | format(3.14159) }}", ctx) == "  3.1"
    assert expr.render_value("{{ lipsum(2, html=false) | wordcount > 30 }}", ctx) is True
    assert expr.render_value("{{ [1, 2, 3] | batch(2, 0) | list }}", ctx) == [[1, 2], [3, 0]]
    assert expr.render_value("{{ [1, 2, 3] | slice(2) | list }}", ctx) == [[1, 2], [3]]
    assert expr.render_value("{{ 'abcb' | replace('b', 'XY', 1) }}", ctx) == "aXYcb"
    assert expr.render_value("{{ 'abcb'.replace('b', 'XY') }}", ctx) == "aXYcXY"
    assert expr.render_value("{{ [1] + [2] }}", ctx) == [1, 2]
    assert expr.render_value("{{ 'a' + 'b' ~ 1 ~ none }}", ctx) == "ab1None"
    text = "{% set t %}a{{ n }}{% endset %}{% macro m() %}b{% endmacro %}{{ t }}{{ m() }}"
    assert expr.render_string(text, ctx) == "a3b"
    assert expr.render_value("{{ [{'a': 1}, {'a': 2}] | join('+', attribute='a') }}", ctx) == "1+2"
    assert expr.render_value("{{ '-'.join(['x', 'y']) }}", ctx) == "x-y"
