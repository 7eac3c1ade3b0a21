"""The scripted mock model: order, delays, injected failures, exhaustion, the request log."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path

import pytest

from eclflow import errors
from eclflow.llm import CompletionRequest, Message, MockProvider, load_script


def req(text: str = "hi") -> CompletionRequest:
    return CompletionRequest(model="mock/t", messages=(Message("user", text),))


def test_plays_replies_in_order_and_records_requests() -> None:
    m = MockProvider(["one", {"content": {"decision": "pass"}}])
    a = asyncio.run(m.complete(req("first")))
    b = asyncio.run(m.complete(req("second")))
    assert a.content == "one" and json.loads(b.content) == {"decision": "pass"}
    assert [r.messages[0].content for r in m.requests] == ["first", "second"]
    assert a.usage.input == 1 and a.usage.output == 1


@pytest.mark.parametrize(
    ("kind", "cls", "retryable"),
    [
        ("rate_limit", errors.RateLimited, True),
        ("timeout", errors.ProviderTimeout, True),
        ("server_error", errors.ServerError, True),
        ("auth_error", errors.AuthError, False),
        ("bad_request", errors.BadRequest, False),
    ],
)
def test_injected_failures(kind: str, cls: type, retryable: bool) -> None:
    m = MockProvider([{"error": kind}])
    with pytest.raises(cls) as info:
        asyncio.run(m.complete(req()))
    assert info.value.retryable is retryable


def test_raises_when_exhausted() -> None:
    m = MockProvider(["only"])
    asyncio.run(m.complete(req()))
    with pytest.raises(errors.MockExhausted, match="no reply left for call 2"):
        asyncio.run(m.complete(req()))


def test_cycle_and_delay() -> None:
    m = MockProvider([{"content": "x", "delay": 0.01}], cycle=True)
    assert [asyncio.run(m.complete(req())).content for _ in range(3)] == ["x", "x", "x"]


def test_script_files_and_log(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("responses:\n  - hello\n  - {content: bye, tokens: {input: 5, output: 7}}\n")
    m = load_script(f)
    m.log_path = tmp_path / "log.jsonl"
    asyncio.run(m.complete(req()))
    r = asyncio.run(m.complete(req()))
    assert r.usage.input == 5 and r.usage.output == 7
    lines = [json.loads(x) for x in m.log_path.read_text().splitlines()]
    assert [x["call"] for x in lines] == [1, 2]


def test_bad_scripts_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="unknown error 'nope'"):
        MockProvider([{"error": "nope"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("just a string\n")
    with pytest.raises(errors.ConfigError, match="must be a list"):
        load_script(bad)
    bad.write_text("critique: [ok, {error: nope}]\n")
    with pytest.raises(errors.ConfigError, match="unknown error 'nope'"):
        load_script(bad)
    with pytest.raises(errors.ConfigError, match="cannot read"):
        load_script(tmp_path / "missing.yaml")
    # one line each, where: not UTF-8 was an internal error, broken YAML eight lines
    bad.write_bytes(b"- caf\xe9\n")
    with pytest.raises(errors.ConfigError) as e:
        load_script(bad)
    assert str(e.value).endswith("bad.yaml are not UTF-8 text (byte 0xe9 at offset 5)")
    bad.write_text("- ok\n- [unclosed\n")
    with pytest.raises(errors.ConfigError) as e:
        load_script(bad)
    assert "bad.yaml:3:1 are not valid YAML/JSON: expected ',' or ']'" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"content": "x", "delay": "abc"}, "mock reply 1: delay (seconds) must be a number ≥ 0"),
        ({"content": "x", "delay": -1}, "delay (seconds) must be a number ≥ 0, not -1"),
        ({"content": "x", "cost": "free"}, "cost (USD) must be a number ≥ 0, not 'free'"),
        ({"content": "x", "tokens": 5}, "tokens must be a mapping {input: N, output: N}"),
        ({"content": "x", "tokens": {"input": "lots"}}, "tokens.input must be a whole number"),
    ],
)
def test_bad_reply_fields_are_config_errors_when_the_script_loads(
    entry: dict[str, object], message: str
) -> None:
    """(They were raw ValueError/AttributeError, or failed the step only when it ran.)"""
    with pytest.raises(errors.ConfigError, match=re.escape(message)):
        MockProvider([entry])


def test_keyed_scripts_answer_by_journal_key_then_step_then_star() -> None:
    import asyncio

    from eclflow.llm import CompletionRequest, Message

    mock = MockProvider(
        {"critique#2": "second critique", "critique": ["c1", "c1 again"], "*": "anything"}
    )

    def ask(step: str, key: str) -> str:
        req = CompletionRequest("mock/t", (Message("user", "x"),), step_id=step, key=key)
        return asyncio.run(mock.complete(req)).content

    assert ask("critique", "critique#2") == "second critique"
    assert ask("critique", "critique#1") == "c1"
    assert ask("critique", "critique#1") == "c1 again"
    assert ask("generate", "generate") == "anything"
    with pytest.raises(errors.MockExhausted, match="no reply left for 'critique'"):
        ask("critique", "critique#3")
    fresh = mock.fresh()
    assert fresh.calls == 0


def _doc_examples() -> list[str]:
    """The indented YAML examples of eclflow.llm.mock's docstring."""
    import eclflow.llm.mock as mock

    blocks, current = [], []
    for line in (mock.__doc__ or "").splitlines():
        if line.startswith("    "):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current))
            current = []
    return [b for b in blocks if not b.startswith("content")]  # (the table of keys)


def test_the_module_docstring_documents_the_whole_script_format(tmp_path: Path) -> None:
    import eclflow.llm.mock as mock

    doc = mock.__doc__ or ""
    for word in sorted(mock._ENTRY_KEYS | mock._ERRORS.keys() | {"responses", "cycle", '"*"'}):
        assert word in doc, word
    listed, keyed = _doc_examples()
    f = tmp_path / "list.yaml"
    f.write_text(listed)
    m = load_script(f)
    assert asyncio.run(m.complete(req())).content == "the first reply"
    assert json.loads(asyncio.run(m.complete(req())).content) == {
        "decision": "pass",
        "critique": "clear",
    }
    with pytest.raises(errors.RateLimited):
        asyncio.run(m.complete(req()))
    assert asyncio.run(m.complete(req())).content == "late"
    f.write_text(f"responses:\n{textwrap.indent(keyed, '  ')}\ncycle: true\n")
    m = load_script(f)

    def ask(step: str, key: str) -> str:
        r = CompletionRequest("mock/t", (Message("user", "x"),), step_id=step, key=key)
        return asyncio.run(m.complete(r)).content

    assert json.loads(ask("critique", "critique#1"))["decision"] == "revise"
    assert json.loads(ask("critique", "critique#2")) == {
        "decision": "pass",
        "critique": "clear and complete",
    }
    assert [ask("revise", f"revise#{i}") for i in (1, 2, 3)] == [
        "draft two",
        "draft three",
        "draft two",
    ]
    assert ask("publish", "publish") == "any other step"


@pytest.mark.parametrize("script", ["the module's keyed example", "examples/mock"])
def test_the_documented_scripts_run_the_bundled_workflow(script: str) -> None:
    from conftest import CRITIQUE_REVISE, EXAMPLES
    from ruamel.yaml import YAML

    import eclflow

    if script == "examples/mock":
        responses: object = EXAMPLES / "mock" / "critique_revise.yaml"
    else:
        responses = YAML(typ="safe").load(_doc_examples()[1])
    result = asyncio.run(
        eclflow.run(
            eclflow.load(CRITIQUE_REVISE),
            {"topic": "tide pools"},
            model="mock/demo",
            mock_responses=responses,
            store=None,
        )
    )
    assert (result.status, result.output["revision_count"]) == ("completed", 1), result.error
    if (
        script == "examples/mock"
    ):  # a critique's reply has a critique's keys, none split off by a comma
        written = YAML(typ="safe").load(EXAMPLES / "mock" / "critique_revise.yaml")
        assert set(written["critique#1"]["content"]) == {"decision", "critique", "feedback"}
        assert set(written["critique"]["content"]) == {"decision", "critique"}
