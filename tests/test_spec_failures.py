"""Operations validate knows fail at every run that reaches them: a filter given a value of a
type it never takes (E306: `n | length` of a number, `s | round` of text), a number divided
by a literal 0 and a `range(…)` of literal numbers larger than the sandbox makes (E307).

Each workflow said valid here is also run, and completes; each one reported is rendered as a
run renders it, and fails, in one line.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from eclflow import expr
from eclflow.errors import TemplateError
from eclflow.spec import check_text

INPUT = {"n": 5, "s": "2.5", "l": [3, 1], "d": {"k": 1}, "b": True, "either": "ab"}
# the prompt's variables, as `with:` binds them from INPUT
BOUND = {k: INPUT[k] for k in ("n", "s", "l", "d", "b")}

HEAD = """\
eclflow: 1
id: t
inputs:
  type: object
  properties:
    n: {type: integer}
    s: {type: string}
    l: {type: array}
    d: {type: object}
    b: {type: boolean}
    either: {type: [string, integer]}
    maybe: {type: integer}
steps:
"""


def prompt_step(template: str) -> str:
    """A template step whose prompt reads n, s, l, d, b, bound from the input."""
    binding = ", ".join(f'{k}: "{{{{ input.{k} }}}}"' for k in BOUND)
    return HEAD + (
        f"  - id: a\n    type: template\n    template: {json.dumps(template)}\n"
        f"    with: {{{binding}}}\n"
    )


def with_step(value: str) -> str:
    """A template step whose `with:` value `x` is `value` (an expression on the input)."""
    return HEAD + (
        f"  - id: a\n    type: template\n    template: hi\n    with: {{x: {json.dumps(value)}}}\n"
    )


def diagnose(text: str) -> list:
    return check_text(text, file="w.yaml")[1]


def runs_to_the_end(text: str) -> None:
    from eclflow.engine import runner
    from eclflow.spec import load_text

    result = asyncio.run(runner.run(load_text(text, file="w.yaml"), INPUT))
    assert result.status == "completed", result.error


VALID_PROMPTS = [
    "{{ n | upper }} {{ n | title }} {{ n | trim }} {{ n | wordcount }}",  # (any value, as text)
    "{{ n | string | length }} {{ n | int | string | length }}",
    "{{ n | length if n is string else n }}",
    "{% if n is iterable %}{{ n | length }}{% endif %}",
    "{% if false %}{{ n | length }}{{ n // 0 }}{{ range(10**9) | list }}{% endif %}",
    "{{ false and n | first }} {{ true or n | join }} {{ n // 0 if false else n }}",
    "{{ s | length }} {{ l | first }} {{ l | join(',') }} {{ d | dictsort }} {{ d | first }}",
    "{{ l | sum }} {{ l | sort | first }} {{ l | min }} {{ l | reverse | list }}",
    "{{ n | round }} {{ n | abs }} {{ b | abs }} {{ b | round }} {{ s | float | round }}",
    "{{ n / 2 }} {{ 0 / n }} {{ n // 3 }} {{ n % 2 }} {{ '%d' % 0 }} {{ n / n }}",
    "{{ range(100000) | length }} {{ range(10, 10**9, 10**5) | length }}",
    "{% macro range(x) %}{{ x }}{% endmacro %}{{ range(10**9) }}",  # (its own `range`)
    "{% filter upper %}{{ n }}{% endfilter %}{% for i in range(3) %}{{ i }}{% endfor %}",
    "{% set n = [1, 2] %}{{ n | first }}",  # (a name the template binds: not judged)
    "{% macro boom() %}{{ n | length }}{{ n // 0 }}{% endmacro %}ok",  # (never called)
]

VALID_WITH = [
    "{{ input.either | length }}",  # (a string or an integer: a string takes it)
    "{% if input.maybe is defined %}{{ input.maybe | length }}{% endif %}",
    "{{ (input.nothere | default([])) | length }}",
    "{{ input.n / input.n }} {{ input.s | length }} {{ input.n | upper }}",
    "{{ input.n // 0 if input.n is string else input.n }}",
]


@pytest.mark.parametrize("template", VALID_PROMPTS)
def test_prompts_that_run_stay_valid(template: str) -> None:
    text = prompt_step(template)
    assert diagnose(text) == [], [str(d) for d in diagnose(text)]
    runs_to_the_end(text)


@pytest.mark.parametrize("value", VALID_WITH)
def test_with_values_that_run_stay_valid(value: str) -> None:
    text = with_step(value)
    assert diagnose(text) == [], [str(d) for d in diagnose(text)]
    runs_to_the_end(text)


FAILING_PROMPTS = [
    ("E306", "{{ n | length }}", "`n | length` applies `length` to a number"),
    ("E306", "{{ n | first }}", "`n | first` applies `first` to a number"),
    ("E306", "{{ n | join(', ') }}", "`n | join` applies `join` to a number"),
    ("E306", "{{ b | last }}", "`b | last` applies `last` to a boolean"),
    ("E306", "{{ n | sum }}", "`n | sum` applies `sum` to a number"),
    ("E306", "{{ n | reverse }}", "`n | reverse` applies `reverse` to a number"),
    ("E306", "{{ n | int | length }}", "`n | int | length` applies `length` to a number"),
    ("E306", "{{ s | round }}", "`s | round` applies `round` to a string"),
    ("E306", "{{ s | abs }}", "`s | abs` applies `abs` to a string"),
    ("E306", "{{ l | dictsort }}", "`l | dictsort` applies `dictsort` to a list"),
    ("E306", "{{ s | dictsort }}", "`s | dictsort` applies `dictsort` to a string"),
    ("E307", "{{ n // 0 }}", "`n // 0` divides by zero"),
    ("E307", "{{ n % 0 }}", "`n % 0` divides by zero"),
    ("E307", "{{ 1 / 0.0 }}", "`1 / 0.0` divides by zero"),
    ("E307", "{{ range(10**9) | list }}", "`range(…)` makes 1,000,000,000 numbers"),
    ("E307", "{% for i in range(200001) %}{% endfor %}", "`range(…)` makes 200,001 numbers"),
    ("E307", "{{ range(1, n, 0) | list }}", "`range(…)` with a step of 0"),
    # behind a guard that is no constant: it fails at every run that gets there
    ("E306", "{% if b %}{{ n | length }}{% endif %}", "`n | length` applies `length`"),
    # a macro that is called (or named, to be called later) runs
    ("E306", "{% macro m() %}{{ n | length }}{% endmacro %}{{ m() }}", "`n | length` applies"),
    ("E307", "{% macro m() %}{{ n // 0 }}{% endmacro %}{% set f = m %}{{ f() }}", "`n // 0`"),
]


@pytest.mark.parametrize(("code", "template", "said"), FAILING_PROMPTS)
def test_prompts_that_fail_at_run_time_are_reported(code: str, template: str, said: str) -> None:
    (d,) = diagnose(prompt_step(template))
    assert (d.code, d.severity) == (code, "error")
    assert d.message.startswith(f"prompt of step 'a': {said}"), d.message
    tail = {
        "step of 0": "(ValueError)",
        "divides": "(ZeroDivisionError)",
        "range": "refuses a range of more than 100,000",
    }
    ending = next((t for word, t in tail.items() if word in said), "a run fails there")
    assert ending in d.message, d.message
    with pytest.raises(TemplateError) as caught:  # as the run renders it
        expr.render_string(template, BOUND)
    assert "\n" not in str(caught.value)


def test_where_each_is_located() -> None:
    text = with_step("Count: {{ input.n // 0 }}, {{ input.n | length }}, {{ range(10**6) }}")
    got = sorted((d.code, d.location.col) for d in diagnose(text))
    line = text.splitlines()[-1]
    assert got == [
        ("E306", line.index("input.n | length") + 1),
        ("E307", line.index("input.n // 0") + 1),
        ("E307", line.index("range(") + 1),
    ], [str(d) for d in diagnose(text)]


def test_in_a_condition_and_in_output() -> None:
    text = (
        HEAD + "  - {id: a, type: template, template: hi}\n"
        "  - {id: b, type: template, template: hi}\n"
        "transitions:\n"
        '  - {type: conditional, from: a, to: b, when: "steps.a.output.text | abs > 1"}\n'
        'output: {r: "{{ range(0, 10**6) | list }}"}\n'
    )
    assert sorted(d.code for d in diagnose(text)) == ["E306", "E307"]
    context = {"steps": {"a": {"output": {"text": "hi"}}}}
    with pytest.raises(TemplateError):
        expr.evaluate("steps.a.output.text | abs > 1", context)
    with pytest.raises(TemplateError):
        expr.render_value("{{ range(0, 10**6) | list }}", context)


def test_a_with_value_named_range_is_not_jinjas() -> None:
    """A prompt's `range` bound under `with:` is that value: not judged as Jinja's range."""
    text = HEAD + (
        "  - id: a\n    type: template\n    template: '{{ range(10**9) }}'\n"
        "    with: {range: '{{ input.n }}'}\n"
    )
    assert [d.code for d in diagnose(text)] == []


def test_an_infinite_number_literal_is_e301_where_it_is_written() -> None:
    """`{{ 1e400 }}` (or `1e308 / 1e-10`, which Jinja works out when it compiles) passed
    validate, and every run failed there with "NameError: name 'inf' is not defined": Jinja
    writes the number into its Python code as `inf` (found by the structural fuzzer)."""
    text = with_step("{{ 1e400 }}") + (
        "  - {id: b, type: template, template: '{{ n }} {{ 1e308 / 1e-10 }}', with: {n: 1}}\n"
        "transitions:\n  - {type: conditional, from: a, to: b, when: 'input.n < -1E+999'}\n"
    )
    got = [
        (d.code, d.location.line, d.location.col, d.message.split(":")[0]) for d in diagnose(text)
    ]
    lines = text.splitlines()
    where = [
        (i + 1, line.index(number) + 1)
        for number in ("1e400", "1e308", "1E+999")
        for i, line in enumerate(lines)
        if number in line
    ]
    assert got == [
        ("E301", *where[0], "`1e400` is infinite"),
        ("E301", *where[1], "`1e+308 / 1e-10` is infinite"),
        ("E301", *where[2], "`1E+999` is infinite"),
    ], got
    for source in ("{{ 1e400 }}", "{{ 1e308 / 1e-10 }}", "{% if x < 1e400 %}a{% endif %}"):
        with pytest.raises(TemplateError, match="NameError"):  # as a run renders it
            expr.render_value(source, {"x": 1})
    # a large finite number, or an infinity made at run time, compiles
    fine = with_step("{{ 1e308 }} {{ 1e308 * input.n }} {{ -1.5e-300 }}")
    assert diagnose(fine) == []
    runs_to_the_end(fine)


def test_an_infinite_number_is_named_and_located_beside_other_numbers() -> None:
    """With another number written with an exponent before it on the line, E301 named and
    pointed at that one: "`1e5` is infinite" for `{{ 1e5 }} and {{ 1e400 }}`, a finite
    number the user would look at in vain."""
    text = with_step("{{ 1e5 }} and {{ 1e400 }} then {{ 2E+999 }}") + (
        "  - {id: b, type: template, template: '{{ 2.5e3 + n }} {{ 10 / 1e-320 }}', with: {n: 1}}\n"
    )
    got = [
        (d.code, d.location.line, d.location.col, d.message.split(":")[0]) for d in diagnose(text)
    ]
    lines = text.splitlines()
    where = [
        (i + 1, line.index(number) + 1)
        for number in ("1e400", "2E+999", "10 / 1e-320")
        for i, line in enumerate(lines)
        if number in line
    ]
    assert got == [
        ("E301", *where[0], "`1e400` is infinite"),
        ("E301", *where[1], "`2E+999` is infinite"),
        ("E301", *where[2], "`10 / 1e-320` is infinite"),
    ], got
