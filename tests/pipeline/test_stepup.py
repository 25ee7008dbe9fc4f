"""``obligations.step_up``: read on a deny (the front's scope challenge), refused on an allow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_kit import call_ctx, pipeline

from mcp_guard.pipeline.stepup import STEP_UP, step_up_scopes
from mcp_guard.policy.base import DENY_OBLIGATIONS
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, PolicyInput, Principal, ReasonCode, SessionInfo

pytestmark = pytest.mark.anyio


def _deny(step_up: Any) -> Decision:
    return Decision(allow=False, reasons=("needs more",), obligations={"step_up": step_up})


def test_the_scopes_a_deny_asks_for() -> None:
    assert step_up_scopes(_deny({"scopes": ["tickets:write", "a", "a"]})) == ("tickets:write", "a")


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "tickets:write",
        {"scopes": []},
        {"scopes": "tickets:write"},
        {"scopes": ["has space"]},
        {"scopes": ['quo"te']},
        {"scopes": [7]},
        {"scopes": ["s"] * 33},
    ],
)
def test_a_malformed_step_up_leaves_a_plain_deny(value: Any) -> None:
    assert step_up_scopes(_deny(value)) is None


def test_an_allow_asks_no_step_up() -> None:
    assert step_up_scopes(Decision(allow=True, obligations={"step_up": {"scopes": ["x"]}})) is None
    assert step_up_scopes(Decision(allow=False)) is None


async def test_a_deny_with_step_up_is_recorded_with_its_obligation_and_never_forwarded() -> None:
    sink = RecordingSink()
    call, upstream = pipeline(FunctionEngine(lambda _i: _deny({"scopes": ["tickets:write"]})), sink)
    outcome = await call(call_ctx())
    assert outcome.denial is not None and step_up_scopes(outcome.denial) == ("tickets:write",)
    assert upstream.seen == []
    (row,) = sink.events
    assert row.decision == "deny" and row.details is not None
    assert row.details["obligations"] == {"step_up": {"scopes": ["tickets:write"]}}


async def test_an_allow_carrying_step_up_is_refused() -> None:
    allow = Decision(allow=True, obligations={"step_up": {"scopes": ["x"]}}, revision="rev-1")
    sink = RecordingSink()
    call, upstream = pipeline(FunctionEngine(lambda _i: allow), sink)
    outcome = await call(call_ctx())
    assert upstream.seen == [] and outcome.decision is not None
    assert outcome.decision.code is ReasonCode.OBLIGATION_INVALID
    assert "belongs on a deny" in outcome.decision.reasons[1]
    (row,) = sink.events
    assert row.decision == "deny"


STEP_UP_REGO = """package mcp_guard

import rego.v1

decision := {"allow": true, "reasons": ["ok"], "obligations": {}} if "tickets:write" in input.principal.scopes

else := {
	"allow": false,
	"reasons": ["needs tickets:write"],
	"obligations": {"step_up": {"scopes": ["tickets:write"]}, "secrets": ["ignored on a deny"]},
}
"""


async def test_a_rego_deny_keeps_its_step_up_through_the_engine(tmp_path: Path) -> None:
    assert STEP_UP in DENY_OBLIGATIONS  # the policy layer keeps it on a deny, and only it
    (tmp_path / "p.rego").write_text(STEP_UP_REGO)
    engine = EmbeddedEngine(load_bundle(tmp_path))

    def ask(*scopes: str) -> PolicyInput:
        return PolicyInput("tools/call", Principal("alice", scopes=scopes), SessionInfo("s", "http"), "t", "x")

    denied = await engine.evaluate(ask("tickets:read"))
    assert denied.obligations == {"step_up": {"scopes": ["tickets:write"]}}
    assert step_up_scopes(denied) == ("tickets:write",)
    assert (await engine.evaluate(ask("tickets:write"))).allow is True
