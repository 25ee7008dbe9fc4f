"""evolve() makes exactly the copy dataclasses.replace makes, for the pipeline's values and for the classes it hands
back to replace."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from mcp_guard.frozen import _plan_for, evolve
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.types import Decision


def _values(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _call() -> CallContext:
    required = {
        f.name: object()
        for f in dataclasses.fields(CallContext)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return CallContext(**required)


@pytest.mark.parametrize(
    ("obj", "changes"),
    [
        (_call(), {}),
        (_call(), {"decision": object(), "verdict": object()}),
        (_call(), {"call_id": "c-1", "started": 1.5, "flow": None}),
        (Outcome(result={"content": []}), {"upstream_protocol": object()}),
        (Outcome(error=None), {"result": {"a": 1}, "error": object(), "decision": None}),
        (Decision(allow=True, reasons=("ok",)), {"decision_id": "d-2", "obligations": {"x": 1}}),
    ],
)
def test_same_copy_as_replace(obj: Any, changes: dict[str, Any]) -> None:
    expected = dataclasses.replace(obj, **changes)
    got = evolve(obj, **changes)
    assert type(got) is type(obj)
    assert got is not obj
    assert _values(got) == _values(expected)
    assert all(getattr(got, k) is v for k, v in changes.items())
    assert _plan_for(type(obj)) is not None  # the fast copy, not the fallback, made it


def test_unknown_field_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'nope'"):
        evolve(_call(), nope=1)


def test_a_copy_holds_the_same_objects_and_its_original_is_untouched() -> None:
    old = _call()
    got = evolve(old, timeout_s=3.0)
    assert all(
        getattr(got, f.name) is getattr(old, f.name) for f in dataclasses.fields(CallContext) if f.name != "timeout_s"
    )
    assert got.timeout_s == 3.0 and old.timeout_s is None


def test_the_pipeline_values_get_a_copier_written_for_their_class() -> None:
    for cls in (CallContext, Outcome, Decision):
        plan = _plan_for(cls)
        assert plan is not None and plan.cls is cls, cls
        assert plan.copy.__code__.co_names.count("_new") == 1  # one line per field, no loop
        assert set(plan.copy.__code__.co_names) >= {f.name for f in dataclasses.fields(cls)}


def test_the_copy_stays_frozen() -> None:
    got = evolve(Outcome(), result={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.result = None  # type: ignore[misc]


@dataclass(frozen=True)
class _NoSlots:
    a: int = 0


@dataclass(frozen=True, slots=True)
class _PostInit:
    a: int = 0
    seen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seen.append(self.a)


@dataclass(frozen=True, slots=True)
class _NotInit:
    a: int = 0
    b: int = field(default=7, init=False)


@dataclass(frozen=True, slots=True)
class _Base:
    a: int = 0


@dataclass(frozen=True, slots=True)
class _Child(_Base):
    b: int = 0


@pytest.mark.parametrize(
    ("obj", "changes"),
    [(_NoSlots(1), {"a": 2}), (_PostInit(1), {"a": 2}), (_NotInit(1), {"a": 2}), (_Child(1, 2), {"a": 3})],
)
def test_what_it_cannot_copy_goes_to_replace(obj: Any, changes: dict[str, Any]) -> None:
    assert _plan_for(type(obj)) is None
    assert _values(evolve(obj, **changes)) == _values(dataclasses.replace(obj, **changes))


def test_post_init_runs_again_as_with_replace() -> None:
    got = evolve(_PostInit(1), a=2)
    assert got.seen == [1, 2]  # the list is shared, as replace shares it; __post_init__ saw the new value
