"""PinCheck: a changed tool is refused; the agent is told it awaits review, the operator how to approve."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pipeline_kit import call_ctx, registry
from structlog.testing import capture_logs

from mcp_guard.pipeline.pins import PinCheck
from mcp_guard.testing import RecordingUpstream
from mcp_guard.types import ReasonCode, ToolInfo

pytestmark = pytest.mark.anyio

SHA = "0123456789abcdef" * 4


async def test_changed_tool_is_denied_without_operator_advice_for_the_agent() -> None:
    stage = PinCheck(registry())
    upstream = RecordingUpstream()
    ctx = replace(call_ctx(), tool_info=ToolInfo(definition_sha256=SHA, changed=True))
    with capture_logs() as logs:
        outcome = await stage(ctx, upstream)

    assert upstream.seen == []
    d = outcome.denial
    assert d is not None and d.code == ReasonCode.TOOL_CHANGED and d.reasons[0] == ReasonCode.TOOL_CHANGED
    agent_text = " ".join(d.reasons)
    assert "'rec__echo'" in agent_text and SHA[:12] in agent_text and "operator" in agent_text
    assert "tools approve" not in agent_text and "mcp-guard" not in agent_text and "`" not in agent_text
    (line,) = [e for e in logs if e["event"] == "pin.call_denied"]
    assert line["log_level"] == "warning" and line["tool"] == "echo" and line["upstream"] == "rec"
    assert "mcp-guard tools approve rec__echo" in line["hint"]


async def test_unchanged_tool_goes_on() -> None:
    upstream = RecordingUpstream()
    ctx = replace(call_ctx(), tool_info=ToolInfo(definition_sha256=SHA, pinned=True))
    outcome = await PinCheck(registry())(ctx, upstream)
    assert not outcome.denied and len(upstream.seen) == 1
