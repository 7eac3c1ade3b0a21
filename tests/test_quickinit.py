"""quick_init: the engine's frozen records are made as dataclasses makes them, only cheaper."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field

import pytest

from eclflow._quickinit import quick_init
from eclflow.engine.result import TraceEvent
from eclflow.steps.base import LoopState, StepResult


@dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


@quick_init
@dataclass(frozen=True, slots=True)
class _Quick:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)


def test_same_parameters_defaults_and_factories_as_dataclass() -> None:
    assert list(inspect.signature(_Quick).parameters) == ["a", "b", "c"]
    for args, kwargs in [((1,), {}), ((1, "x"), {}), ((1,), {"c": [2]}), ((), {"a": 3, "b": "y"})]:
        quick, plain = _Quick(*args, **kwargs), _Plain(*args, **kwargs)
        assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    first, second = _Quick(1), _Quick(1)
    assert first.c == [] and first.c is not second.c  # a new list each time, as the factory's
    given: list[int] = [5]
    assert _Quick(1, c=given).c is given
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'a'"):
        _Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        _Quick(1, d=2)  # type: ignore[call-arg]


def test_records_stay_frozen_comparable_and_picklable() -> None:
    result = StepResult.failed("broke", retryable=True)
    assert (result.kind, result.output, result.feedback, result.error, result.retryable) == (
        "failed",
        None,
        None,
        "broke",
        True,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.error = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(result)) == result
    assert dataclasses.replace(result, error="again").error == "again"
    loop = LoopState(2, 3, "shorter")
    assert loop == LoopState(iteration=2, max_iterations=3, feedback="shorter", history=())
    assert hash(loop) == hash(LoopState(2, 3, "shorter"))
    event = TraceEvent("info", "done")
    assert event.fields == {} and event.fields is not TraceEvent("info", "done").fields
    assert TraceEvent("info", "done", {"n": 1}, 5.0).to_dict()["ts"].startswith("1970-01-01")


def test_refuses_what_it_cannot_make_the_same() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="does not handle Checked"):
        quick_init(Checked)
