"""YAML text → `Workflow`, or every problem found, each located at its node.

The loader runs in stages, each collecting diagnostics instead of stopping at the first one:
parse (ruamel.yaml round-trip mode, so every node keeps its line and column), the JSON Schema,
then the semantic checks of `checks.py`. Nothing here raises for bad input except `load` and
`load_text`, which raise `WorkflowInvalid` carrying all the diagnostics.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, WorkflowInvalid
from .model import (
    DEFAULT_TIMEOUT,
    Budget,
    Conditional,
    Diagnostic,
    Location,
    RetrySpec,
    RevisionLoop,
    Sequential,
    StepSpec,
    Transition,
    Workflow,
    printable,
)

MAX_BYTES = 2 * 1024 * 1024  # a 1000-step workflow is ~150 KB
MAX_PROMPT_BYTES = 1024 * 1024  # a prompt file: a page of instructions is ~5 KB
MAX_NODES = 200_000  # guards against alias bombs, which expand when converted
MAX_STEPS = 1000
MAX_DEPTH = 200  # levels of nesting: past them, the checks' recursion would run out

_DURATION = re.compile(r"^\s*(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# --- public entry points --------------------------------------------------------------------


def check(path: str | Path) -> tuple[Workflow | None, list[Diagnostic]]:
    """Validate a workflow file: the workflow (None if it has errors) and every diagnostic."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"a workflow is a file path, not {type(path).__name__}")
    path = Path(path)
    file = str(path)
    try:
        if path.is_dir():
            return None, [_diag(Location(file), "E102", "is a directory, not a workflow file")]
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, [
                _diag(
                    Location(file),
                    "E102",
                    f"file is too large ({size} bytes; a workflow file may be at most "
                    f"{MAX_BYTES // (1024 * 1024)} MiB)",
                )
            ]
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [_diag(Location(file), "E102", "no such file")]
    except OSError as e:
        return None, [_diag(Location(file), "E102", f"cannot read the file: {e.strerror or e}")]
    wide = _wide_encoding(raw)
    if wide is not None:
        return None, [
            _diag(
                Location(file, 1, 1),
                "E102",
                f"the file is {wide} text; a workflow file is UTF-8",
                f"convert it to UTF-8, e.g. with `iconv -f {wide} -t UTF-8`",
            )
        ]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        start = raw.rfind(b"\n", 0, e.start) + 1
        col = len(raw[start : e.start].decode("utf-8", "replace")) + 1
        return None, [
            _diag(
                Location(file, line, col),
                "E102",
                f"not UTF-8 text (byte 0x{raw[e.start]:02x})",
                "is this a workflow file? save it as UTF-8",
            )
        ]
    return check_text(text, file=file, base_dir=path.resolve().parent, path=path)


def _wide_encoding(raw: bytes) -> str | None:
    """ "UTF-16" or "UTF-32" when `raw` starts with their byte order mark, or reads as UTF-16
    text without one (ASCII with a NUL byte after or before each character): what Windows
    tools write. None otherwise."""
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    head = raw[:8]
    if len(head) == 8 and (
        all(head[i] and not head[i + 1] for i in range(0, 8, 2))
        or all(not head[i] and head[i + 1] for i in range(0, 8, 2))
    ):
        return "UTF-16"
    return None


def check_text(
    text: str,
    file: str = "<string>",
    base_dir: str | Path | None = None,
    *,
    path: Path | None = None,
    registry: Any = None,
    prompt_root: str | Path | None = None,
) -> tuple[Workflow | None, list[Diagnostic]]:
    """Validate workflow text. `base_dir` resolves relative `prompt:` files; they must be in
    `prompt_root` (default: `base_dir`, the workflow file's folder; E403)."""
    if not isinstance(text, str):
        decode = " (decode it first: data.decode('utf-8'))" if isinstance(text, bytes) else ""
        raise ConfigError(f"workflow text is a str, not {type(text).__name__}{decode}")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return None, [_diag(Location(file), "E102", "text is too large for a workflow file")]
    if "\x00" in text:
        return None, [
            _diag(Location(file), "E102", "contains NUL bytes (is this a workflow file?)")
        ]
    deep = _too_deep_flow(text)
    if deep is not None:
        return None, [
            _diag(
                Location(file, *deep),
                "E100",
                f"YAML: nested more than {MAX_DEPTH} levels deep",
                "a workflow needs only a few levels of nesting",
            )
        ]
    doc, diags = _parse(text, file)
    if any(d.severity == "error" for d in diags):
        return None, diags
    yaml_warnings = diags
    located = _Located(file, doc)
    data, too_big = _plain(doc)
    if too_big == "key":
        found = _keys_not_text(text, file)
        return None, found or [_diag(located.at(()), "E100", "YAML: a mapping or list as a key")]
    if too_big == "deep":
        return None, [
            _diag(
                located.at(()),
                "E100",
                f"YAML: nested more than {MAX_DEPTH} levels deep",
                "a workflow needs only a few levels of nesting",
            )
        ]
    if too_big:
        return None, [
            _diag(
                located.at(()),
                "E103",
                f"document expands to more than {MAX_NODES} nodes",
                "anchors and aliases that expand exponentially are refused",
            )
        ]
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {_kind(data)}"
        return None, [
            _diag(
                located.at(()),
                "E101",
                f"the document is {kind}; a workflow is a mapping",
                "start from `eclflow: 1`, `id:`, `steps:` (see docs/format.md)",
            )
        ]
    diags = yaml_warnings + _schema_diagnostics(data, located)
    seen = {d.location for d in diags}  # (one problem a value: -1 is no duration, so no range)
    diags += [d for d in _value_diagnostics(data, located) if d.location not in seen]
    seen = {d.location for d in diags}
    diags += [d for d in _unusable(data, located, []) if d.location not in seen]
    base = Path(base_dir) if base_dir is not None else (path.parent if path else None)
    root = Path(prompt_root) if prompt_root is not None else base
    from .checks import semantic_checks

    if any(d.severity == "error" for d in diags):
        # Unknown keys (typos, the commonest mistake) and bad values of keys that may be left
        # out do not stop the other checks: without them the file is whole, and every
        # problem shows in one pass.
        pruned = _without_bad_keys(data)
        if pruned is None:
            return None, _sorted(diags, file)
        embedded = _embedded_schemas(pruned, located)
        diags += embedded
        if not any(d.severity == "error" for d in embedded):
            with contextlib.suppress(Exception):  # (the schema errors say enough then)
                wf = _build(pruned, located, text, path, base)
                found = semantic_checks(wf, pruned, located, registry=registry, base=root)
                # only what a key left out cannot have caused: without a misspelt `with:`,
                # `env:`, `output_schema:` or `transitions:`, other checks would report
                # what the typo did rather than what the file says
                diags += [d for d in found if d.code in _SURVIVE_UNKNOWN_KEYS]
        return None, _sorted(diags, file)
    schema_warnings = diags
    wf = _build(data, located, text, path, base)
    diags = schema_warnings + semantic_checks(wf, data, located, registry=registry, base=root)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        return None, _sorted(diags, file)
    warnings = tuple(_sorted(diags, file))
    object.__setattr__(wf, "warnings", warnings)
    return wf, list(warnings)


def load(path: str | Path) -> Workflow:
    """Load and validate a workflow file; raises `WorkflowInvalid` with every diagnostic."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"a workflow is a file path, not {type(path).__name__}")
    if isinstance(path, str) and "\n" in path:
        raise ConfigError(
            "this looks like the text of a workflow, not a file name: use "
            "eclflow.load_text(text) for text"
        )
    wf, diags = check(path)
    if wf is None:
        raise WorkflowInvalid(diags)
    return wf


def load_text(text: str, file: str = "<string>", base_dir: str | Path | None = None) -> Workflow:
    """Load and validate workflow text; raises `WorkflowInvalid` with every diagnostic."""
    wf, diags = check_text(text, file=file, base_dir=base_dir)
    if wf is None:
        raise WorkflowInvalid(diags)
    return wf


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of the workflow format (shipped in the package)."""
    text = resources.files("eclflow").joinpath("schemas", "workflow.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def parse_duration(value: Any) -> float:
    """`1.5s`, `500ms`, `2m`, `1h` or plain seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(m.group("n")) * _UNITS[m.group("unit")]
    if not math.isfinite(seconds):  # .nan or .inf: a retry wait or a timeout that never ends
        raise ValueError(f"not a duration: {value!r}")
    return seconds


# --- parsing ----------------------------------------------------------------------------------


def _too_deep_flow(text: str) -> tuple[int, int] | None:
    """Where (line, column) `[` or `{` brackets open more than MAX_DEPTH levels, or None.
    ruamel's scanner takes time that grows with the square of the depth (seconds for a
    thousand `[`) before its parser runs out of recursion: the text is refused first. Quoted
    scalars, block scalars (`|`, `>`) and comments are skipped; outside brackets, one opens a
    collection only where a value starts (after `:`, `-`, `?` or at a line's start), not in a
    plain scalar's words."""
    depth = 0
    line, start = 1, 0
    i = 0
    while True:
        m = _FLOW_SIGNS.search(text, i)
        if m is None:
            return None
        i = m.start()
        c = text[i]
        if c == "\n":
            line, start = line + 1, i + 1
        elif c == "#":
            if i == 0 or text[i - 1] in " \t\n":  # a comment, to the end of its line
                end = text.find("\n", i)
                if end < 0:
                    return None
                i = end
                continue
        elif c in "]}":
            depth = max(depth - 1, 0)
        elif c in "|>":
            if depth == 0 and _before(text, i) in ":-?":
                # a block scalar: its lines (blank, or indented more than this one) are text
                row = text[start:]
                indent = len(row) - len(row.lstrip(" "))
                end = text.find("\n", i)
                while end >= 0:
                    nxt = text.find("\n", end + 1)
                    row = text[end + 1 : nxt if nxt >= 0 else len(text)]
                    if row.strip() and len(row) - len(row.lstrip(" ")) <= indent:
                        break
                    line, start, end = line + 1, end + 1, nxt
                if end < 0:
                    return None
                i = end  # (the line break before the next line that is not the scalar's)
                continue
        else:
            before = _before(text, i)
            if depth or before in ":-?\n":
                if c in "'\"":
                    if before in ":-?,[{\n":
                        i = _quoted_end(text, i)
                        continue
                else:
                    depth += 1
                    if depth > MAX_DEPTH:
                        return line, i - start + 1
        i += 1


_FLOW_SIGNS = re.compile(r"[\n#'\"\[\]{}|>]")


def _before(text: str, i: int) -> str:
    """The last character before `text[i]` other than a blank ("\\n" at a line's start)."""
    j = i - 1
    while j >= 0 and text[j] in " \t\r":
        j -= 1
    return text[j] if j >= 0 else "\n"


def _quoted_end(text: str, i: int) -> int:
    """The index after the quoted scalar that starts at `text[i]` (its end: the text's)."""
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\" and quote == '"':
            j += 2
            continue
        if text[j] == quote:
            if quote == "'" and text[j + 1 : j + 2] == "'":  # ('' is a quote in '…')
                j += 2
                continue
            return j + 1
        j += 1
    return j


def _parse(text: str, file: str) -> tuple[Any, list[Diagnostic]]:
    """The YAML document, or its E100; with the W508 of its anchors. (ruamel warns through
    `warnings`, which prints a warning as lines of ruamel's source code.)"""
    # One parse at a time records them: catch_warnings swaps the process's warning state and
    # puts back what it found, so overlapping parses in threads (a batch resuming its runs)
    # left every later warning going to another parse's list, never shown.
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc, diags = _parse_yaml(text, file)
    return doc, diags + _yaml_warnings(caught, file)


# (reentrant: a parse that fails looks at the node graph, `_compose`, under it)
_WARNINGS_LOCK = threading.RLock()


def _compose(text: str) -> Any:
    """ruamel's node graph of `text` (each node's place, no key hashed), for what the parse
    cannot tell; its warnings (an anchor defined twice) are the parse's W508 already."""
    from ruamel.yaml import YAML

    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return YAML(typ="rt").compose(text)


def _parse_yaml(text: str, file: str) -> tuple[Any, list[Diagnostic]]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    yaml.Composer = _composer()
    try:
        doc = yaml.load(text)
        held = _held(yaml, file)
        return (None, held) if held else (doc, [])
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        unclosed = "end of stream" in str(problem) or (
            # a bracket left open: the parser notices lines later (`got '<scalar>'`)
            str(e.context).startswith("while parsing a flow")
            and "expected ','" in str(problem)
            and e.problem_mark is not None
            and e.context_mark is not None
            and e.problem_mark.line > e.context_mark.line
        )
        if e.context_mark is not None and e.context and unclosed:
            # a quote or bracket left open: the end of the file says nothing, where it opens does
            m = e.context_mark
            return None, [
                _diag(
                    Location(file, m.line + 1, m.column + 1),
                    "E100",
                    f"YAML: {_one_line(e.context)} that starts here, {_one_line(problem)}",
                    "close the quote or bracket that opens here",
                )
            ]
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        if "found another document" in str(problem):
            return None, [
                _diag(
                    Location(file, line, col),
                    "E100",
                    "YAML: a second document starts here; a workflow file holds one",
                    "remove this `---` and what follows it, or give each workflow a file",
                )
            ]
        if "found duplicate key" in str(problem):
            keys = _colliding_keys(text, e.problem_mark)
            if keys is not None and not keys.same_in_yaml:
                return None, [
                    _diag(
                        Location(file, line, col),
                        "E100",
                        f"YAML: keys {keys.first} (line {keys.first_line}) and {keys.second} are "
                        f"different in YAML but the same key to eclflow ({keys.second} == "
                        f"{keys.first} in Python)",
                        f"quote them to make them text: '{keys.first}', '{keys.second}'",
                    )
                ]
            if keys is not None and keys.first != keys.second:  # (`1:` and `0x1:`)
                return None, [
                    _diag(
                        Location(file, line, col),
                        "E100",
                        f"YAML: duplicate key {keys.second}: the same key as {keys.first} on "
                        f"line {keys.first_line}",
                        "each key may appear once in a mapping",
                    )
                ]
            return None, [
                _diag(
                    Location(file, line, col),
                    "E100",
                    f"YAML: {_one_line(problem)}",
                    "each key may appear once in a mapping",
                )
            ]
        return None, [_diag(Location(file, line, col), "E100", f"YAML: {_one_line(problem)}")]
    except RecursionError:
        return None, [_diag(Location(file), "E100", "YAML: nested too deeply")]
    except YAMLError as e:
        return None, [_diag(Location(file), "E100", f"YAML: {_one_line(str(e))}")]
    except Exception as e:  # ruamel raises a few plain exceptions on odd input
        held = _held(yaml, file)  # (`&m {<<: *m}`: AttributeError of ruamel's)
        if held:
            return None, held
        if isinstance(e, TypeError) and "unhashable" in str(e):  # (a mapping in a key's)
            found = _keys_not_text(text, file)
            if found:
                return None, found
        return None, [
            _diag(Location(file), "E100", f"YAML: {_one_line(str(e)) or type(e).__name__}")
        ]


_OCCURRENCE = re.compile(r"(first|second) occurrence\s+in .*?, line (\d+), column (\d+)")


def _yaml_warnings(caught: list[warnings.WarningMessage], file: str) -> list[Diagnostic]:
    """W508 for an anchor defined twice (`&a` … `&a`), which YAML allows but is a slip: the
    aliases after the second refer to it, those before to the first. ruamel's other warnings
    (a float without a dot under `%YAML 1.1`) are about values it reads as intended."""
    from ruamel.yaml.error import ReusedAnchorWarning

    out: list[Diagnostic] = []
    said: set[str] = set()
    for w in caught:
        text = str(w.message)
        if not issubclass(w.category, ReusedAnchorWarning) or text in said:
            continue  # (a duplicate key's E100 parses the text again, warning again)
        said.add(text)
        name = re.search(r"found duplicate anchor '(.*?)'", text)
        marks = {m[1]: (int(m[2]), int(m[3])) for m in _OCCURRENCE.finditer(text)}
        if name is None or set(marks) != {"first", "second"}:
            continue
        out.append(
            _diag(
                Location(file, *marks["second"]),
                "W508",
                f"YAML: anchor &{name[1]} is defined again here (first at line "
                f"{marks['first'][0]}, column {marks['first'][1]}): the aliases after it "
                "refer to this one",
                "give each anchor a name of its own",
                "warning",
            )
        )
    return out


@dataclass(frozen=True)
class _Collision:
    """Two keys of one mapping that ruamel calls duplicates, as they are written."""

    first: str
    first_line: int
    second: str
    same_in_yaml: bool  # False: `1:` and `true:` (an int and a bool), equal only in Python


def _colliding_keys(text: str, mark: Any) -> _Collision | None:
    """The key at `mark` that ruamel calls a duplicate and the earlier key it collides with;
    None when they cannot be found so (the message then is ruamel's)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    if mark is None:
        return None
    yaml = YAML(typ="rt")
    try:
        todo = [yaml.compose(text)]  # the nodes as written: composing checks no keys
        seen: set[int] = set()
        while todo:
            node = todo.pop()
            if id(node) in seen:  # (an alias is the node it names)
                continue
            seen.add(id(node))
            if isinstance(node, SequenceNode):
                todo.extend(node.value)
            if not isinstance(node, MappingNode):
                continue
            keys = [k for k, _ in node.value]
            todo.extend(v for _, v in node.value)
            here = [
                j
                for j, k in enumerate(keys)
                if (k.start_mark.line, k.start_mark.column) == (mark.line, mark.column)
            ]
            if not here or not isinstance(keys[here[0]], ScalarNode):
                todo.extend(keys)
                continue
            second = keys[here[0]]
            value = yaml.constructor.construct_object(second, deep=True)
            for first in keys[: here[0]]:
                if not isinstance(first, ScalarNode):
                    continue
                if yaml.constructor.construct_object(first, deep=True) == value:
                    written = [text[k.start_mark.index : k.end_mark.index] for k in (first, second)]
                    line = first.start_mark.line + 1
                    return _Collision(written[0], line, written[1], first.tag == second.tag)
            return None
    except Exception:  # (only a better message was at stake)
        return None
    return None


def _held(yaml: Any, file: str) -> list[Diagnostic]:
    """The E100 of an alias inside the node its anchor names, that `_composer` noted."""
    held = yaml.composer.held
    if held is None:
        return []
    name, mark = held
    return [
        _diag(
            Location(file, mark.line + 1, mark.column + 1),
            "E100",
            f"YAML: alias *{name} is inside the node &{name} names: a value cannot hold itself",
            "write the value out, or move the anchor to a node that does not hold the alias",
        )
    ]


@lru_cache(maxsize=1)
def _composer() -> Any:
    """ruamel's Composer, noting the first alias inside the node its anchor names
    (`steps: &s [{with: {x: *s}}]`: that node is not composed to its end yet), as (name, the
    alias's mark). ruamel reads one as null inside a mapping (silently), as a list that holds
    itself inside a list. (Noted as the document is read: a second reading of it cost a
    third of the time of validating a file with anchors.)"""
    from ruamel.yaml.composer import Composer
    from ruamel.yaml.events import AliasEvent
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    class _HeldComposer(Composer):  # type: ignore[misc]
        held: tuple[str, Any] | None = None

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.held is None and self.parser.check_event(AliasEvent):
                event = self.parser.peek_event()
                node = self.anchors.get(event.anchor)
                if isinstance(node, MappingNode | SequenceNode) and node.end_mark is None:
                    self.held = (str(event.anchor), event.start_mark)
            return super().compose_node(parent, index)

    return _HeldComposer


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _plain(node: Any) -> tuple[Any, str | None]:
    """ruamel's round-trip objects → plain dict/list/str/int/float/bool/None, with a node budget
    and a depth limit: also what went over ("nodes", "deep") or "key" for a key that is a
    mapping or a list, which no JSON holds, or None."""
    count = 0

    def conv(n: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise _TooBig("nodes")
        if depth > MAX_DEPTH:
            raise _TooBig("deep")
        if isinstance(n, Mapping):
            return {_key(k): conv(v, depth + 1) for k, v in n.items()}
        if isinstance(n, list | tuple):
            return [conv(v, depth + 1) for v in n]
        if isinstance(n, bool) or n is None:
            return n
        if isinstance(n, int):
            return int(n)
        if isinstance(n, float):
            return float(n)
        if isinstance(n, str):
            return str(n)
        return n  # dates, binary...: the schema reports them

    try:
        return conv(node, 0), None
    except _TooBig as e:
        return None, str(e)
    except _KeyNotText:
        return None, "key"
    except RecursionError:
        return None, "deep"


def _key(k: Any) -> Any:
    if isinstance(k, str):
        return str(k)
    if isinstance(k, bool) or k is None:
        return k
    if isinstance(k, int | float):
        return k
    if isinstance(k, Mapping | tuple | list):  # (see _keys_not_text)
        raise _KeyNotText
    return str(k)


def _keys_not_text(text: str, file: str) -> list[Diagnostic]:
    """E100 at each mapping that has a mapping or a list as a key. Such a key is most often an
    expression written without quotes: `topic: {{ input.topic }}` is, to YAML, the mapping
    `{input.topic: null}` as the key of another, and it would have run as that mapping's
    Python text. Found on ruamel's node graph, which has every node's place (and hashes no
    key: a key holding a mapping cannot be loaded at all)."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    found: list[Diagnostic] = []
    seen: set[int] = set()
    todo = [_compose(text)]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:  # (an alias: its node was looked at)
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            todo.extend(reversed(node.value))
        elif isinstance(node, MappingNode):
            bad = [k for k, _ in node.value if isinstance(k, MappingNode | SequenceNode)]
            for key in bad[:1]:  # (one for each mapping: `{{ a }}` has one key)
                if isinstance(key, MappingNode) and node.flow_style:  # `{{ … }}`
                    mark, message, hint = (
                        node.start_mark,
                        "a mapping as a key: an expression `{{ … }}` not in quotes is a YAML "
                        "mapping",
                        'put the value in quotes: "{{ … }}", or write it after `|` or `>`',
                    )
                else:  # (`? [a, b]`: written as a key on purpose)
                    kind = "mapping" if isinstance(key, MappingNode) else "list"
                    mark, message, hint = (
                        key.start_mark,
                        f"a {kind} as a key; a key is text or a number",
                        "write the key as text",
                    )
                where = Location(file, mark.line + 1, mark.column + 1)
                found.append(_diag(where, "E100", f"YAML: {message}", hint))
            todo.extend(v for k, v in reversed(node.value) if all(k is not b for b in bad))
    return sorted(found, key=lambda d: (d.location.line, d.location.col))


class _TooBig(Exception):
    pass


class _KeyNotText(Exception):
    pass


class _Located:
    """Finds the line and column of a node by its path (keys and indexes) in the parsed YAML."""

    def __init__(self, file: str, doc: Any) -> None:
        self.file = file
        self.doc = doc

    def _walk(self, path: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        node = self.doc
        for part in path:
            yield node, part
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return

    def at(self, path: Sequence[Any], *, key: bool = False) -> Location:
        """Location of the value at `path` (of its key, with key=True); the nearest known
        ancestor when the path does not exist."""
        line, col = 0, 0
        node = self.doc
        lc = getattr(node, "lc", None)
        if lc is not None:
            line, col = lc.line, lc.col
        for i, part in enumerate(path):
            lc = getattr(node, "lc", None)
            last = i == len(path) - 1
            pos = None
            try:
                if lc is not None and isinstance(node, Mapping) and part in node:
                    lc = _written_in(node, part).lc
                    pos = lc.key(part) if (key and last) else lc.value(part)
                elif (
                    lc is not None
                    and isinstance(node, list)
                    and isinstance(part, int)
                    and 0 <= part < len(node)
                ):
                    pos = lc.item(part)
            except Exception:
                pos = None
            if pos is None or pos[0] is None or pos[1] is None:
                break
            if (
                lc is not None
                and not (key and last)
                and isinstance(node, Mapping)
                and node.get(part) is None
            ):
                # an empty value (`steps:` then nothing) has the position of the next token,
                # which may be past the end of the file: its key is where it is written
                kpos = lc.key(part)
                if kpos[0] is not None and pos[0] > kpos[0]:
                    pos = kpos
            line, col = pos
            try:
                node = node[part]
            except Exception:
                break
            child_lc = getattr(node, "lc", None)
            # a block collection starts where its first item is
            block = not getattr(node, "fa", None) or not node.fa.flow_style()
            collection = isinstance(node, Mapping | list)
            if child_lc is not None and not (key and last) and collection and block:
                line, col = child_lc.line or line, child_lc.col or col
        return Location(self.file, (line or 0) + 1, (col or 0) + 1)

    def node(self, path: Sequence[Any]) -> Any:
        """The parsed node at `path`, None when there is none."""
        node = self.doc
        for part in path:
            try:
                node = node[part]
            except Exception:
                return None
        return node

    def keys_of(self, path: Sequence[Any]) -> list[Any]:
        node = self.node(path)
        return list(node.keys()) if isinstance(node, Mapping) else []


def _holds_anchor(node: Any, depth: int = 0) -> bool:
    """Whether `node` or a node in it is a YAML anchor (`&name`)."""
    if depth > 20:
        return False
    if getattr(getattr(node, "anchor", None), "value", None):
        return True
    if isinstance(node, Mapping):
        return any(_holds_anchor(v, depth + 1) for v in node.values())
    if isinstance(node, list):
        return any(_holds_anchor(v, depth + 1) for v in node)
    return False


def _written_in(node: Any, key: Any) -> Any:
    """The mapping that writes `key` of `node`: itself, or one it merges (`<<: *anchor`), so
    that a key from an anchor is located where the anchor writes it."""
    data = getattr(getattr(node, "lc", None), "data", None) or {}
    if key in data:
        return node
    for merged in getattr(node, "merge", None) or ():
        merged = merged[1] if isinstance(merged, tuple) else merged
        if isinstance(merged, Mapping) and key in merged:
            return _written_in(merged, key)
    return node


def _diag(
    location: Location, code: str, message: str, hint: str | None = None, severity: Any = "error"
) -> Diagnostic:
    return Diagnostic(location, code, message, hint, severity)


def _sorted(diags: list[Diagnostic], file: str) -> list[Diagnostic]:
    """In the order of the places they are about: the workflow file's (`file`) first, then
    those of its prompt files, file by file; each said once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    main = printable(file)  # (as a Diagnostic shows it)

    def where(d: Diagnostic) -> tuple[Any, ...]:
        loc = d.location
        return (loc.file != main, loc.file if loc.file != main else "", loc.line, loc.col)

    for d in sorted(diags, key=lambda d: (*where(d), d.code)):
        k = (*where(d), d.code, d.message)
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out


def _kind(value: Any) -> str:
    return {
        dict: "mapping",
        list: "list",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# --- the JSON Schema ----------------------------------------------------------------------------

# Schema violations: E110 missing, E111 unknown key, E112 wrong type, E113 value not allowed,
# E114 out of range, E115 other, E116 `inputs`/`output_schema` is not a valid JSON Schema.


def _schema_diagnostics(data: dict[str, Any], located: _Located) -> list[Diagnostic]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    out: list[Diagnostic] = []
    for error in validator.iter_errors(data):
        for leaf in _leaves(error):
            out.extend(_describe(leaf, located))
    if not out:
        out.extend(_embedded_schemas(data, located))
    return out


# Checks whose findings no missing key can cause: duplicate ids, unknown types and step names,
# cycles, template syntax, missing prompt files.
_SURVIVE_UNKNOWN_KEYS = frozenset({"E201", "E202", "E203", "E204", "E301", "E401", "E403"})


# Schema errors about one key's value, which leaving the key out (for its default) removes.
_PRUNABLE = frozenset(
    {
        "type", "enum", "const", "pattern", "anyOf", "minimum", "maximum", "exclusiveMinimum",
        "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems",
    }
)  # fmt: skip


def _without_bad_keys(data: dict[str, Any]) -> dict[str, Any] | None:
    """`data` without the keys the schema does not know or whose value it refuses, if that
    leaves it valid (a required key left out does not); else None."""
    import copy

    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    pruned = copy.deepcopy(data)
    for _ in range(3):  # a key inside an unknown key goes with it: rarely more than one round
        errors = [leaf for e in validator.iter_errors(pruned) for leaf in _leaves(e)]
        if not errors:
            return pruned
        for e in errors:
            if e.validator == "additionalProperties":
                known = e.schema.get("properties", {})
                for key in [k for k in e.instance if k not in known]:
                    del e.instance[key]
                continue
            path = list(e.absolute_path)
            if e.validator not in _PRUNABLE or not path or not isinstance(path[-1], str):
                return None
            parent: Any = pruned
            for part in path[:-1]:
                parent = parent[part]
            parent.pop(path[-1], None)
    return None


def _leaves(error: Any) -> Iterator[Any]:
    """The most specific errors: for if/then and anyOf, the branch that applies."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        # a duration or similar: report once at the node, with what was expected
        yield error
        return
    if error.validator == "allOf" and error.context:
        for sub in error.context:
            yield from _leaves(sub)
        return
    yield error


def _describe(error: Any, located: _Located) -> list[Diagnostic]:
    path = list(error.absolute_path)
    where = _path_text(path)
    v = error.validator
    inst = error.instance
    if v == "required":
        missing = [m for m in error.validator_value if not isinstance(inst, dict) or m not in inst]
        # `Steps:` or `setps:` is the missing key misspelt: its E111 says so (only where the
        # mapping allows no other keys: a transition's `type` is checked before its keys are)
        known = error.schema.get("properties", {})
        closed = isinstance(inst, dict) and error.schema.get("additionalProperties") is False
        unknown = [str(k) for k in inst if k not in known] if closed else []
        missing = [m for m in missing if not any(_did_you_mean(k, [m]) for k in unknown)]
        return [
            _diag(
                located.at(path),
                "E110",
                f"{where or 'the workflow'} is missing required key '{m}'",
            )
            for m in missing
        ]
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extras = [k for k in (inst or {}) if k not in error.schema.get("properties", {})]
        out = []
        for k in extras:
            hint: str | None = (
                "keep the anchors steps share under `metadata:`, which may hold anything"
                if not path and _holds_anchor(located.node([k]))
                else _synonym(path, str(k))
                or _did_you_mean(str(k), allowed)
                or f"allowed keys: {', '.join(allowed)}"
            )
            out.append(
                _diag(
                    located.at([*path, k], key=True),
                    "E111",
                    f"unknown key '{k}' in {where or 'the workflow'}",
                    hint,
                )
            )
        return out
    if v == "type":
        expected = error.validator_value
        names = [str(n) for n in (expected if isinstance(expected, list) else [expected])]
        expected = " or ".join(_YAML_TYPES.get(n, n) for n in names)
        if expected == "integer" and isinstance(inst, float):
            return [_diag(located.at(path), "E112", f"{where} must be a whole number, not {inst}")]
        kind = "null" if inst is None else _article(_kind(inst))
        hint = (
            "write each item on a line of its own starting with `- `"
            if names == ["array"] and isinstance(inst, dict)
            else None
        )
        return [
            _diag(
                located.at(path),
                "E112",
                f"{where} must be {_article(expected)}, not {kind}",
                hint,
            )
        ]
    if v in ("enum", "const"):
        options = error.validator_value if v == "enum" else [error.validator_value]
        shown = ", ".join(json.dumps(o) for o in options)
        hint = (
            _did_you_mean(str(inst), [str(o) for o in options]) if isinstance(inst, str) else None
        )
        if path == ["eclflow"]:
            return [
                _diag(
                    located.at(path),
                    "E113",
                    f"unsupported format version {json.dumps(inst, default=str)}",
                    "this eclflow reads `eclflow: 1`",
                )
            ]
        return [
            _diag(
                located.at(path),
                "E113",
                f"{where} is {json.dumps(inst, default=str)}; expected {shown}",
                hint,
            )
        ]
    if v == "pattern":
        what = "an identifier (letters, digits, _; not starting with a digit)"
        if path and path[0] == "id":
            what = "letters, digits, '_', '-' or '.'"
        elif path and path[0] == "env":
            what = "an environment variable name"
        elif path and path[-1] == "model" and isinstance(inst, str):
            why = (
                "has spaces around it"
                if inst.strip() != inst
                else f"names no model after '{inst}'"
                if inst.endswith("/")
                else "starts with a slash"
            )
            return [
                _diag(
                    located.at(path),
                    "E113",
                    f"{where} {json.dumps(inst)} {why}",
                    "write provider/model: openai/gpt-4o-mini, local/smollm2, mock/NAME",
                )
            ]
        return [
            _diag(located.at(path), "E113", f"{where} {json.dumps(inst)} is not valid: use {what}")
        ]
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if path and path[-1] == "max_iterations":
            return [
                _diag(
                    located.at(path),
                    "E205",
                    f"max_iterations is {inst}; a revision loop allows 1 to 10 revisions",
                )
            ]
        bound = error.validator_value
        rule = {
            "minimum": f"at least {bound}",
            "maximum": f"at most {bound}",
            "exclusiveMinimum": f"greater than {bound}",
            "exclusiveMaximum": f"less than {bound}",
        }[v]
        shown = json.dumps(inst, default=str)
        return [_diag(located.at(path), "E114", f"{where} is {shown}; it must be {rule}")]
    if v in ("minLength", "maxLength", "minItems", "maxItems", "uniqueItems"):
        limit = error.validator_value
        msg = {
            "minLength": "must not be empty",
            "minItems": "must not be empty",
            "uniqueItems": "lists an item twice",
            "maxLength": f"is too long ({_size(inst)} characters; at most {limit})",
            "maxItems": f"has too many items ({_size(inst)}; at most {limit})",
        }[v]
        return [_diag(located.at(path), "E114", f"{where} {msg}")]
    if v == "anyOf" and path and path[-1] in ("timeout", "initial_delay", "max_delay"):
        return [
            _diag(
                located.at(path),
                "E113",
                f"{where} {json.dumps(inst, default=str)} is not a duration",
                "write seconds (30), or 500ms, 1.5s, 2m, 1h",
            )
        ]
    if v == "not" and isinstance(inst, dict) and "prompt" in inst and "template" in inst:
        return [
            _diag(
                located.at([*path, "template"], key=True),
                "E115",
                f"{where} has both `prompt:` and `template:`",
                "keep one: a prompt file or an inline template",
            )
        ]
    return [
        _diag(located.at(path), "E115", f"{where or 'the workflow'}: {_one_line(error.message)}")
    ]


# JSON Schema's names of types, as YAML calls them (and as the messages call what was found)
_YAML_TYPES = {"array": "list", "object": "mapping"}


def _unusable(value: Any, located: _Located, path: list[Any]) -> list[Diagnostic]:
    """`.nan`, `.inf` anywhere: a schema's `minimum` lets NaN through, and a retry delay or a
    timeout of either hangs the run. A lone surrogate (`"\\ud800"`): no UTF-8 can hold it, so
    the run failed printing it, or its journal failed writing it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return [
                _diag(
                    located.at(path),
                    "E113",
                    f"{_path_text(path) or 'a key'} holds {value[e.start]!r}, half of a "
                    "surrogate pair, which no UTF-8 text can hold",
                    "write the character itself, or its \\U0001xxxx escape",
                )
            ]
        return []
    if isinstance(value, float) and not math.isfinite(value):
        return [
            _diag(
                located.at(path),
                "E114",
                f"{_path_text(path)} is {value}; numbers in a workflow must be finite",
                "write a number, or leave the key out for its default",
            )
        ]
    items: Any = value.items() if isinstance(value, dict) else ()
    if isinstance(value, list):
        items = enumerate(value)
    return [
        d
        for k, v in items
        for d in (*_unusable(k, located, path), *_unusable(v, located, [*path, k]))
    ]


def _value_diagnostics(data: dict[str, Any], located: _Located) -> list[Diagnostic]:
    """What the schema cannot say: a timeout of 0 (every attempt would time out at once) and a
    retry whose first delay is longer than its longest. Only values the schema accepted."""
    out: list[Diagnostic] = []
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    places: list[tuple[list[Any], Any]] = [(["defaults"], defaults)]
    steps = data.get("steps")
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict):
            places.append((["steps", i], step))
    raw_base = defaults.get("retry")
    base_retry: dict[str, Any] = raw_base if isinstance(raw_base, dict) else {}
    for path, holder in places:
        with contextlib.suppress(ValueError):
            if "timeout" in holder and parse_duration(holder["timeout"]) <= 0:
                out.append(
                    _diag(
                        located.at([*path, "timeout"]),
                        "E114",
                        f"{_path_text([*path, 'timeout'])} is {json.dumps(holder['timeout'])}; "
                        "it must be greater than 0",
                        "leave it out for the default (120s)",
                    )
                )
        retry = holder.get("retry")
        # only a first wait written out can contradict the longest: a shorter max_delay alone
        # just caps the default first wait (1s), as the engine does
        if not isinstance(retry, dict) or "initial_delay" not in retry:
            continue
        merged = {**(base_retry if path != ["defaults"] else {}), **retry}
        with contextlib.suppress(ValueError):
            first = parse_duration(merged.get("initial_delay", RetrySpec().initial_delay))
            most = parse_duration(merged.get("max_delay", RetrySpec().max_delay))
            if first > most:
                out.append(
                    _diag(
                        located.at([*path, "retry", "initial_delay"]),
                        "E114",
                        f"{_path_text([*path, 'retry'])}: initial_delay ({first:g}s) is longer "
                        f"than max_delay ({most:g}s)",
                        "the first wait cannot be longer than the longest",
                    )
                )
    return out


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else 0


def _embedded_schemas(data: dict[str, Any], located: _Located) -> list[Diagnostic]:
    """`inputs` and each `output_schema` must themselves be valid JSON Schemas."""
    import jsonschema

    out = []
    candidates: list[tuple[list[Any], Any]] = []
    if "inputs" in data:
        candidates.append((["inputs"], data["inputs"]))
    for i, step in enumerate(data.get("steps") or []):
        if isinstance(step, dict) and "output_schema" in step:
            candidates.append((["steps", i, "output_schema"], step["output_schema"]))
    for path, value in candidates:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as e:
            sub = [*path, *e.absolute_path]
            out.append(
                _diag(
                    located.at(sub),
                    "E116",
                    f"{_path_text(path)} is not a valid JSON Schema: {_one_line(e.message)}",
                )
            )
            continue
        for ref_path, ref in _dangling_refs(value):
            out.append(
                _diag(
                    located.at([*path, *ref_path, "$ref"]),
                    "E116",
                    f"{_path_text(path)}: $ref {json.dumps(ref)} points to nothing",
                    "a $ref names a part of the same schema, e.g. #/$defs/name",
                )
            )
        if path == ["inputs"] and isinstance(value, dict):
            out.extend(_unknown_keywords(value, located))
            out.extend(_bad_defaults(value, ["inputs"], located))
            kind = value.get("type")
            kinds = kind if isinstance(kind, list) else [kind]
            if kind is not None and "object" not in kinds:
                out.append(
                    _diag(
                        located.at(["inputs", "type"]),
                        "E116",
                        f"inputs has type {json.dumps(kind)}, but a run's input is an object of "
                        "named values: every run would be refused",
                        "write `type: object` with `properties:` for each input",
                    )
                )
    return out


def _dangling_refs(schema_: Any) -> list[tuple[list[Any], str]]:
    """Every `$ref` of `schema_` that does not resolve, as the engine's validator would resolve
    it (no network: a remote `$ref` fails at run time too). Parts under their own `$id` are
    left alone."""
    from jsonschema_specifications import REGISTRY
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    if not isinstance(schema_, dict):
        return []
    uri = str(schema_.get("$id", "")) or "urn:eclflow:schema"
    resolver = REGISTRY.with_resource(uri, DRAFT202012.create_resource(schema_)).resolver(uri)
    out: list[tuple[list[Any], str]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            if path and "$id" in node:
                return
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    out.append((path, ref))
            for k, v in node.items():
                if k not in ("const", "enum", "default", "examples"):
                    walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(schema_, [])
    return out


def _bad_defaults(schema_: Any, path: list[Any], located: _Located) -> list[Diagnostic]:
    """A property's `default` its own schema refuses: a run that leaves the property out gets
    it (the input is checked as given), so a step would see what the schema forbids. Parts
    with a `$ref` are left alone, and so is `default: null`, which hand-written schemas use for
    "optional, none" (`{% if input.note %}` runs with it)."""
    import jsonschema

    props = schema_.get("properties") if isinstance(schema_, dict) else None
    out: list[Diagnostic] = []
    for name, prop in (props or {}).items() if isinstance(props, dict) else ():
        if not isinstance(prop, dict) or "$ref" in json.dumps(prop, default=str):
            continue
        where = [*path, "properties", name]
        if prop.get("default") is not None:
            value = prop["default"]
            if isinstance(value, dict):  # (`default: {}` gets its properties' own defaults)
                from ..graph.plan import fill_defaults

                value = fill_defaults(prop, value)
            error = jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(prop).iter_errors(value)
            )
            if error is not None:
                out.append(
                    _diag(
                        located.at([*where, "default"]),
                        "E116",
                        f"{_path_text(where)}.default {json.dumps(prop['default'], default=str)}"
                        f" does not match its own schema: {_one_line(error.message)}",
                        f"a run that leaves '{name}' out gets this value",
                    )
                )
        out.extend(_bad_defaults(prop, where, located))
    return out


def _unknown_keywords(schema_: dict[str, Any], located: _Located) -> list[Diagnostic]:
    """Warn about top-level keys of `inputs` that JSON Schema does not know (`requird:`):
    the validator ignores them, so the rule they were meant to state silently does not hold."""
    from jsonschema.validators import Draft202012Validator

    known = set(Draft202012Validator.VALIDATORS) | {
        "$schema", "$id", "$defs", "$comment", "$anchor", "$dynamicAnchor", "$vocabulary",
        "definitions", "title", "description", "default", "examples", "deprecated",
        "readOnly", "writeOnly", "format", "contentEncoding", "contentMediaType",
        "contentSchema", "then", "else",  # (read by `if`, not validators of their own)
    }  # fmt: skip
    out = []
    for k in schema_:
        if not isinstance(k, str) or k in known:
            continue
        hint = _did_you_mean(k, sorted(known)) or "JSON Schema ignores keys it does not know"
        out.append(
            _diag(
                located.at(["inputs", k], key=True),
                "W503",
                f"'{k}' in inputs is not a JSON Schema keyword and checks nothing",
                hint,
                "warning",
            )
        )
    return out


def _path_text(path: Sequence[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# Words people write for a key, by what they mean: `budget: {max_dollars: 3}` is max_usd, which
# spelling alone would not find (difflib prefers max_calls).
_SYNONYMS = {
    "budget": (
        ("max_usd", ("dollar", "usd", "cost", "price", "spend", "money", "cent")),
        ("max_tokens", ("token",)),
        ("max_calls", ("call", "request")),
    ),
}


def _synonym(path: Sequence[Any], key: str) -> str | None:
    """`did you mean` from what a key means, for the few places where people guess names."""
    table = _SYNONYMS.get(_path_text(path), ())
    low = key.lower()
    for name, words in table:
        if any(w in low for w in words):
            return f"did you mean '{name}'?"
    return None


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _did_you_mean(word: str, options: Sequence[str]) -> str | None:
    import difflib

    same = [o for o in options if o.lower() == word.lower()]  # `ID:`, `Steps:`
    close = same or difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# --- building the model -------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _retry(raw: Mapping[str, Any] | None, base: RetrySpec) -> RetrySpec:
    if not raw:
        return base
    return RetrySpec(
        max_attempts=int(raw.get("max_attempts", base.max_attempts)),
        initial_delay=parse_duration(raw.get("initial_delay", base.initial_delay)),
        max_delay=parse_duration(raw.get("max_delay", base.max_delay)),
        multiplier=float(raw.get("multiplier", base.multiplier)),
    )


def resolve_prompt(prompt: str, base: Path | None) -> Path:
    """A prompt path relative to the workflow file; a bare name not found there falls back to
    the bundled templates."""
    p = Path(prompt)
    with contextlib.suppress(RuntimeError):  # `~nosuchuser/…`: kept, and reported not found
        p = p.expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    if not exists(p) and "/" not in prompt and "\\" not in prompt:
        bundled = bundled_templates() / prompt
        if exists(bundled):
            return bundled.resolve()
    return p.resolve() if exists(p) else p


@lru_cache(maxsize=1)
def bundled_templates() -> Path:
    """The folder of the templates shipped with eclflow (`generate.j2`, …)."""
    return Path(str(resources.files("eclflow").joinpath("templates"))).resolve()


def prompt_outside(resolved: Path, base: Path | None) -> Path | None:
    """The folder a `prompt:` file must be in, when the file (links followed, `..` applied)
    is not in it; None when it is. A workflow file may come from someone else: a prompt path
    leading out of its folder (`/home/me/.ssh/id_rsa`, `../../.env`, a link beside it) would
    send that file to the model. eclflow's own templates (a bare name not found beside the
    workflow file, or a path to them) are no one's secret: allowed."""
    folder = (base if base is not None else Path.cwd()).resolve()
    try:
        real = Path(os.path.realpath(resolved))
    except (OSError, ValueError):  # (a path the system refuses: E401 says so)
        return None
    if real.is_relative_to(folder):
        return None
    return None if real.is_relative_to(bundled_templates()) else folder


class PromptTooLarge(ValueError):
    """A prompt file over MAX_PROMPT_BYTES."""


def read_prompt_bytes(path: Path) -> bytes:
    """A prompt file's bytes, at most MAX_PROMPT_BYTES of them: a larger file raises
    `PromptTooLarge` without being read whole (a path naming a multi-GB file would otherwise
    be read into memory and sent to the model)."""
    with open(path, "rb") as f:
        data = f.read(MAX_PROMPT_BYTES + 1)
    if len(data) > MAX_PROMPT_BYTES:
        raise PromptTooLarge(
            f"prompt file {str(path)!r} is too large: a prompt file may hold at most "
            f"{MAX_PROMPT_BYTES // 2**20} MiB"
        )
    return data


def exists(p: Path) -> bool:
    """Whether `p` exists; False for any path the system refuses (too long, NUL, no access)."""
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def is_file(p: Path) -> bool:
    """Whether `p` is a file; False for any path the system refuses (too long, NUL, no access)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def is_dir(p: Path) -> bool:
    """Whether `p` is a directory; False for any path the system refuses."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def _build(
    data: dict[str, Any], located: _Located, text: str, path: Path | None, base: Path | None
) -> Workflow:
    defaults = data.get("defaults") or {}
    base_retry = _retry(defaults.get("retry"), RetrySpec())
    base_timeout = parse_duration(defaults.get("timeout", DEFAULT_TIMEOUT))
    default_model = data.get("model", defaults.get("model"))
    steps = []
    for i, raw in enumerate(data["steps"]):
        prompt = raw.get("prompt")
        steps.append(
            StepSpec(
                id=raw["id"],
                type=raw["type"],
                depends_on=tuple(raw.get("depends_on") or ()),
                revision_source=raw.get("revision_source"),
                with_=_freeze(dict(raw.get("with") or {})),
                prompt=resolve_prompt(prompt, base) if prompt is not None else None,
                template=raw.get("template"),
                system=raw.get("system"),
                model=raw.get("model"),
                retry=_retry(raw.get("retry"), base_retry),
                timeout=parse_duration(raw.get("timeout", base_timeout)),
                output_schema=raw.get("output_schema"),
                config=_freeze(dict(raw.get("config") or {})),
                location=located.at(["steps", i]),
            )
        )
    transitions: list[Transition] = []
    for i, raw in enumerate(data.get("transitions") or []):
        loc = located.at(["transitions", i])
        kind = raw["type"]
        if kind == "sequential":
            transitions.append(Sequential(raw["from"], raw["to"], loc))
        elif kind == "conditional":
            when = raw["when"]
            when = ("true" if when else "false") if isinstance(when, bool) else str(when)
            transitions.append(Conditional(raw["from"], raw["to"], when, loc))
        else:
            transitions.append(
                RevisionLoop(
                    raw["validator"],
                    raw["reviser"],
                    raw["target"],
                    int(raw.get("max_iterations", 3)),
                    raw.get("on_exhausted", "fail"),
                    loc,
                )
            )
    budget_raw = data.get("budget") or {}
    return Workflow(
        id=str(data["id"]),
        name=str(data.get("name") or data["id"]),
        steps=tuple(steps),
        transitions=tuple(transitions),
        description=str(data.get("description") or ""),
        version=data.get("version", 1),
        metadata=_freeze(dict(data.get("metadata") or {})),
        model=default_model,
        inputs=MappingProxyType(dict(data.get("inputs") or {"type": "object"})),
        output=_freeze(dict(data.get("output") or {})),
        env=tuple(data.get("env") or ()),
        env_locations=tuple(located.at(["env", i]) for i in range(len(data.get("env") or ()))),
        budget=Budget(
            max_usd=budget_raw.get("max_usd"),
            max_tokens=budget_raw.get("max_tokens"),
            max_calls=budget_raw.get("max_calls"),
        ),
        source=text,
        path=path.resolve() if path is not None else None,
    )


__all__ = [
    "MAX_PROMPT_BYTES",
    "MAX_STEPS",
    "PromptTooLarge",
    "check",
    "check_text",
    "exists",
    "is_file",
    "load",
    "load_text",
    "parse_duration",
    "prompt_outside",
    "read_prompt_bytes",
    "resolve_prompt",
    "schema",
]
