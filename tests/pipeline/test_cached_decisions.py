"""A decision answered by the decision cache goes through the pipeline like a fresh one: its own decision id, its
own decision and outcome rows, the same obligations (the secrets grant, the rate limit counted)."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest

from mcp_guard.pipeline.build import pipeline_stages
from mcp_guard.pipeline.chain import build_chain
from mcp_guard.pipeline.context import CallContext, Outcome
from mcp_guard.pipeline.secret_source import NO_SECRETS
from mcp_guard.policy.bundle import load_bundle
from mcp_guard.policy.cache import CachedEngine
from mcp_guard.policy.embedded import EmbeddedEngine
from mcp_guard.settings import DecisionCacheSettings, parse_settings
from mcp_guard.state import MemoryState
from mcp_guard.testing import RecordingSink, RecordingUpstream, idle_registry
from mcp_guard.types import EventKind, Principal, SessionInfo, ToolInfo

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


def _call(session: str) -> CallContext:
    arguments = {"timezone": "UTC"}
    return CallContext(
        action="tools/call",
        principal=Principal("local-agent", ("developer",)),
        session=SessionInfo(session, "http"),
        server="time",
        target="get_current_time",
        exposed="time__get_current_time",
        arguments=arguments,
        request=types.CallToolRequest(params=types.CallToolRequestParams(name="get_current_time", arguments=arguments)),
        tool_info=ToolInfo(annotations={"readOnlyHint": True}),
    )


async def test_a_remembered_decision_is_audited_as_its_own_decision() -> None:
    engine = CachedEngine(EmbeddedEngine(load_bundle(REPO / "policies" / "rego")), DecisionCacheSettings())
    sink, state = RecordingSink(), MemoryState()
    settings = parse_settings({"upstreams": {"time": {"command": "never"}}}, source="<test>")
    stages = pipeline_stages(
        engine=engine, sink=sink, registry=idle_registry(settings), secrets=NO_SECRETS, state=state
    )
    upstream = RecordingUpstream(Outcome(result={"content": [{"type": "text", "text": "12:00"}], "isError": False}))
    chain = build_chain(stages, upstream)
    for session in ("a", "b", "a"):
        outcome = await chain(_call(session))
        assert not outcome.denied, outcome.denial
    assert engine.stats.hits == 2 and engine.stats.misses == 1  # sessions, times and counters are not read
    decisions = [e for e in sink.events if e.kind == EventKind.CALL_DECISION]
    results = [e for e in sink.events if e.kind == EventKind.CALL_RESULT]
    assert len(decisions) == 3 and len({e.decision_id for e in decisions}) == 3
    assert {e.decision_id for e in results} == {e.decision_id for e in decisions}
    assert [e.session_id for e in decisions] == ["a", "b", "a"]
    bucket = ("tool_calls|local-agent|time|get_current_time", 60.0)
    assert (await state.usage([bucket]))[bucket] == 3  # each allowed call was counted, remembered or not
