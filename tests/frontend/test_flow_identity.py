"""Flows through the real HTTP front: a 2025-11-25 session is one flow; stateless 2026-07-28 requests share the
flow of their principal, client and ``_meta`` correlation id; the correlation key never travels upstream."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from guard_harness import make_settings, recorder_upstream, running_guard
from http_harness import http_client, http_front
from mcp_guard.pipeline.flow import FLOW_META_KEY
from mcp_guard.testing import FunctionEngine
from mcp_guard.types import Decision, PolicyInput

pytestmark = pytest.mark.anyio

KEY = "flow-test-key-0123456789"


def _settings(log: Path):  # type: ignore[no-untyped-def]
    return make_settings(
        {"rec": recorder_upstream(log)},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )


def _engine() -> FunctionEngine:
    """Allows everything; ``add`` labels the flow "private"."""

    def decide(i: PolicyInput) -> Decision:
        obligations = {"labels": ["private"]} if i.action == "tools/call" and i.tool == "add" else {}
        return Decision(allow=True, reasons=("ok",), obligations=obligations, revision="r")

    return FunctionEngine(decide)


def _calls(engine: FunctionEngine) -> list[dict[str, Any]]:
    """The ``context.flow`` of every tools/call the policy was asked about, in order."""
    docs = [i.to_dict() for i in engine.inputs if i.action == "tools/call"]
    return [d["context"]["flow"] for d in docs]


def _client_meta(log: Path) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e["params"].get("_meta") or {} for e in entries if e.get("method") == "tools/call"]


async def test_a_handshake_session_is_one_flow_and_a_new_session_a_new_one(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    engine = _engine()
    async with running_guard(_settings(log), engine=engine) as guard, http_front(guard) as url:
        async with http_client(url, KEY, mode="legacy") as client:
            await client.call_tool("rec__add", {"a": 1, "b": 2})
            # a correlation id does not split a session
            await client.call_tool("rec__echo", {"text": "x"}, meta={FLOW_META_KEY: "elsewhere"})
        async with http_client(url, KEY, mode="legacy") as client:
            await client.call_tool("rec__echo", {"text": "y"})
    first, second, fresh = _calls(engine)
    assert first["labels"] == [] and second["labels"] == ["private"] and second["id"] == first["id"]
    assert fresh["labels"] == [] and fresh["id"] != first["id"]
    assert all(FLOW_META_KEY not in m for m in _client_meta(log))


async def test_stateless_requests_share_the_flow_of_their_correlation_id(tmp_path: Path) -> None:
    log = tmp_path / "rec.log"
    engine = _engine()
    app = types.Implementation(name="agent-app", version="1")
    other_app = types.Implementation(name="other-app", version="1")
    async with running_guard(_settings(log), engine=engine) as guard, http_front(guard) as url:
        async with http_client(url, KEY, mode="2026-07-28", client_info=app) as client:
            await client.call_tool("rec__add", {"a": 1, "b": 2}, meta={FLOW_META_KEY: "conv-1"})
            await client.call_tool("rec__echo", {"text": "a"}, meta={FLOW_META_KEY: "conv-1"})
            await client.call_tool("rec__echo", {"text": "b"}, meta={FLOW_META_KEY: "conv-2"})
            await client.call_tool("rec__echo", {"text": "c"})
        async with http_client(url, KEY, mode="2026-07-28", client_info=app) as client:
            await client.call_tool("rec__echo", {"text": "d"}, meta={FLOW_META_KEY: "conv-1"})
            await client.call_tool("rec__echo", {"text": "e"})
        async with http_client(url, KEY, mode="2026-07-28", client_info=other_app) as client:
            await client.call_tool("rec__echo", {"text": "f"}, meta={FLOW_META_KEY: "conv-1"})
    add, same, other_corr, no_corr, same_later, no_corr_later, other_client = _calls(engine)
    assert add["labels"] == [] and same["labels"] == ["private"] and same["id"] == add["id"]
    assert same_later["id"] == add["id"] and same_later["labels"] == ["private"]  # a new connection, same flow
    assert other_corr["id"] != add["id"] and other_corr["labels"] == []
    assert no_corr["id"] not in {add["id"], other_corr["id"]} and no_corr_later["id"] == no_corr["id"]
    assert other_client["id"] != add["id"] and other_client["labels"] == []
    sessions = {i.session.id for i in engine.inputs if i.action == "tools/call"}
    assert len(sessions) == 7  # every stateless request was a session of its own
    assert all(FLOW_META_KEY not in m for m in _client_meta(log))
