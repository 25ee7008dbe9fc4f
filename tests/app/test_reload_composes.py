"""A policy reload through the Guard (SIGHUP, ``mcp-guard reload``: ``Guard.reload``) recomposes the pipeline the
fronts run: a bundle that now uses flows has the next call's flow read and recorded, one that no longer does
has the stage left out (mcp_guard.pipeline.in_use)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard_harness import client_of, make_settings, recorder_upstream, text_of
from mcp_guard.app import Guard
from mcp_guard.pipeline.flow import TrackFlow
from mcp_guard.pipeline.in_use import InUsePipeline

pytestmark = pytest.mark.anyio

HEAD = "package mcp_guard\n\nimport rego.v1\n\n"
ALLOW = HEAD + 'decision := {"allow": true, "reasons": ["ok"], "obligations": {}}\n'
# Defined only with a flow in the input (an allowed call had its flow read); the first call labels the flow, the
# next one in it is denied for that label (the first was recorded).
FLOWS = HEAD + (
    'decision := {"allow": false, "reasons": ["the flow is private"], "obligations": {}} '
    'if "private" in input.context.flow.labels\n'
    'else := {"allow": true, "reasons": ["ok"], "obligations": {"labels": ["private"]}} '
    "if count(input.context.flow.history) >= 0\n"
)


def _tracks(guard: Guard) -> bool:
    assert isinstance(guard.chain, InUsePipeline)
    return any(isinstance(s, TrackFlow) for s in guard.chain.stages)


async def test_a_policy_reload_turns_flow_tracking_on_for_the_next_call_and_off_again(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "p.rego").write_text(ALLOW)
    settings = make_settings(
        {"rec": recorder_upstream()},
        policy={"bundle": str(bundle), "hot_reload": False, "run_tests_on_start": False},
        audit={"path": str(tmp_path / "audit.db"), "state_path": str(tmp_path / "state.db")},
    )
    async with Guard.open(settings) as guard, client_of(guard) as client:
        assert not await guard.registry.wait_ready(20)
        assert text_of(await client.call_tool("rec__echo", {"text": "one"})) == "one"
        assert not _tracks(guard)

        (bundle / "p.rego").write_text(FLOWS)
        assert (await guard.reload()).policy == "loaded"
        assert text_of(await client.call_tool("rec__echo", {"text": "two"})) == "two"  # the flow was read
        assert _tracks(guard)
        again = await client.call_tool("rec__echo", {"text": "again"})  # and the call recorded in it
        assert again.is_error and "the flow is private" in text_of(again)

        (bundle / "p.rego").write_text(ALLOW)
        assert (await guard.reload()).policy == "loaded"
        assert text_of(await client.call_tool("rec__echo", {"text": "three"})) == "three"
        assert not _tracks(guard)
