"""E301 in a `with:` value, a condition or `output:` is located at what it is about (the
filter, the test, the `{{ … }}` that does not parse), not at the value's first character: a
value holding several expressions left one to find which."""

from __future__ import annotations

from eclflow.spec import check_text

HEAD = "eclflow: 1\nid: w\nsteps:\n  - id: a\n    type: template\n    template: hi\n"


def where(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """The line and column of the `nth` (0-based) `needle` in `text`."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


def e301(text: str) -> list[tuple[int, int, str]]:
    _, diags = check_text(text, file="w.yaml")
    return [(d.location.line, d.location.col, d.message) for d in diags if d.code == "E301"]


def test_an_unknown_filter_in_text_around_expressions_is_located_at_the_filter() -> None:
    text = HEAD + '    with: {x: "Topic: {{ input.topic }}, tone: {{ input.tone | loud }}"}\n'
    assert e301(text) == [(*where(text, "loud"), "no filter named 'loud'")]


def test_a_filter_named_like_a_variable_before_it_is_located_at_the_filter() -> None:
    text = HEAD + '    with: {x: "{{ input.shout ~ input.topic | shout }}"}\n'
    assert e301(text) == [(*where(text, "shout", 1), "no filter named 'shout'")]


def test_an_unknown_test_is_located_at_the_test() -> None:
    text = HEAD + "    with: {x: \"{{ 'a' if input.topic is nosuchtest else 'b' }}\"}\n"
    assert e301(text) == [(*where(text, "nosuchtest"), "no test named 'nosuchtest'")]


def test_a_syntax_error_is_located_at_the_expression_that_does_not_parse() -> None:
    text = HEAD + '    with: {x: "{{ input.topic }} and {{ input.tone }"}\n'
    (got,) = e301(text)
    assert got[:2] == where(text, "{{ input.tone")
    # a `{% %}` block that does not close: no one `{{ … }}` is at fault, so its line
    text = HEAD + '    with: {x: "{% if input.topic %}yes"}\n'
    (got,) = e301(text)
    assert got[:2] == where(text, '"{% if')


def test_in_a_block_value_at_its_line_and_column() -> None:
    text = (
        HEAD + "    with:\n      x: |\n        first {{ input.topic }}\n"
        "        then {{ input.tone | loud }}\n"
        "        last {{ input.topic }\n"
    )
    got = e301(text)
    assert got == [(*where(text, "{{ input.topic }\n"), got[0][2])], got
    text = text.replace("last {{ input.topic }\n", "last\n")
    assert e301(text) == [(*where(text, "loud"), "no filter named 'loud'")]


def test_in_a_condition_and_in_output() -> None:
    text = (
        HEAD + "  - {id: b, type: template, template: x}\n"
        "transitions:\n"
        "  - {type: conditional, from: a, to: b, when: \"steps.a.output.text | loud == 'x'\"}\n"
        'output: {r: "{{ steps.a.output.text }} / {{ steps.b.output.text | quiet }}"}\n'
    )
    assert e301(text) == [
        (*where(text, "loud"), "no filter named 'loud'"),
        (*where(text, "quiet"), "no filter named 'quiet'"),
    ]


def test_a_syntax_error_after_the_same_expression_written_well_is_located_at_the_bad_one() -> None:
    """The text from the fault on, `{{ input.topic }`, is also the start of the good
    `{{ input.topic }}` before it: it was found there, a place with nothing wrong."""
    text = HEAD + '    with: {x: "{{ input.topic }} {{ input.topic }"}\n'
    (got,) = e301(text)
    assert got[:2] == where(text, '{{ input.topic }"')


def test_in_a_quoted_value_with_escapes_at_the_fault_itself() -> None:
    """What a quoted value writes differently from its text (`\\"`, `''`, `\\u00e9`), before
    or after the fault, does not move the location off it (after it: the value's start)."""
    for value, nth in [
        (r'"\u00e9\"{{ input.tone | loud }} \"quoted\""', 0),
        ("'it''s {{ input.tone | loud }} ''quoted'''", 0),
        (r'"{{ \"loud\" }} {{ input.tone | loud }} \t"', 1),
    ]:
        text = HEAD + f"    with: {{x: {value}}}\n"
        assert e301(text) == [(*where(text, "loud", nth), "no filter named 'loud'")], value


def test_in_a_value_folded_from_several_lines_at_its_line_and_column() -> None:
    """A plain or double-quoted value written over several lines (YAML folds them into one
    line of text): the fault on the second line was located at the value's start."""
    for first, last in [("", ""), ('"', '"'), ('"', '\\\n\n        ok"')]:
        text = (
            HEAD + f"    with:\n      x: {first}first {{{{ input.topic }}}}\n"
            f"        then {{{{ input.tone | loud }}}}{last}\n"
        )
        assert e301(text) == [(*where(text, "loud"), "no filter named 'loud'")], text
