"""decision_from_result: what counts as a decision (docs/architecture.md §8.3), everything else fails closed."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.policy.base import decision_from_result


def test_allow_with_reasons_and_obligations() -> None:
    d = decision_from_result(
        "data.p.d", {"allow": True, "reasons": ["ok"], "obligations": {"secrets": ["s"]}}, revision="r1"
    )
    assert d.allow is True and d.reasons == ("ok",) and d.obligations == {"secrets": ["s"]}
    assert d.revision == "r1" and d.code is None


def test_deny_without_reasons_gets_one_and_drops_obligations() -> None:
    d = decision_from_result("data.p.d", {"allow": False, "obligations": {"secrets": ["s"]}}, revision=None)
    assert d.allow is False and d.code is None
    assert d.reasons == ("denied by policy (data.p.d gave no reason)",)
    assert d.obligations == {}


def test_a_deny_keeps_only_step_up() -> None:
    obligations = {"secrets": ["s"], "step_up": {"scopes": ["tickets:write"]}}
    d = decision_from_result("data.p.d", {"allow": False, "reasons": ["r"], "obligations": obligations}, revision=None)
    assert d.allow is False and d.obligations == {"step_up": {"scopes": ["tickets:write"]}}


def test_minimal_allow() -> None:
    d = decision_from_result("data.p.d", {"allow": True}, revision=None)
    assert d.allow is True and d.reasons == () and d.obligations == {}


@pytest.mark.parametrize(
    ("result", "detail"),
    [
        (True, "data.p.d is boolean, expected an object"),
        ([{"allow": True}], "data.p.d is array, expected an object"),
        ("allow", "data.p.d is string, expected an object"),
        (None, "data.p.d is null, expected an object"),
        (1, "data.p.d is number, expected an object"),
        ({}, "data.p.d.allow is null, expected a boolean"),
        ({"allow": "true"}, "data.p.d.allow is string, expected a boolean"),
        ({"allow": 1}, "data.p.d.allow is number, expected a boolean"),
        ({"allow": True, "reasons": "fine"}, "data.p.d.reasons must be a list of strings"),
        ({"allow": True, "reasons": [1]}, "data.p.d.reasons must be a list of strings"),
        ({"allow": True, "obligations": []}, "data.p.d.obligations is array, expected an object"),
    ],
)
def test_result_invalid(result: Any, detail: str) -> None:
    d = decision_from_result("data.p.d", result, revision="r")
    assert d.allow is False
    assert d.code == "result_invalid"
    assert d.reasons == ("result_invalid", detail)
    assert d.revision == "r"
