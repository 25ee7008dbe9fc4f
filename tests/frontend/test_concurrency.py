"""1,000 concurrent mixed allowed/denied calls from several sessions and principals: every answer and
every audit row belongs to the request that caused it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from guard_harness import make_settings, recorder_upstream, running_guard
from http_harness import http_front, sse_answer
from mcp_guard.testing import FunctionEngine, RecordingSink
from mcp_guard.types import Decision, PolicyInput

pytestmark = pytest.mark.anyio

KEYS = {f"p{i}": f"key-of-principal-{i}-xyz" for i in range(4)}
H = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _decide(i: PolicyInput) -> Decision:
    if i.action != "tools/call":
        return Decision(allow=True)
    text = str(i.arguments.get("text", ""))
    if text.endswith("-deny"):
        return Decision(allow=False, reasons=(f"denied {text} for {i.principal.id}",))
    return Decision(allow=True, reasons=(f"allowed {text} for {i.principal.id}",))


async def test_thousand_concurrent_calls_stay_correlated(tmp_path: Path) -> None:
    settings = make_settings(
        {"a": recorder_upstream(), "b": recorder_upstream()},
        principals={
            p: {"roles": ["r"], "api_key_sha256": hashlib.sha256(k.encode()).hexdigest()} for p, k in KEYS.items()
        },
    )
    sink = RecordingSink()
    answers: dict[str, tuple[str, dict[str, Any]]] = {}  # text -> (principal, JSON-RPC response)
    async with (
        running_guard(settings, engine=FunctionEngine(_decide), sink=sink) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=120, limits=httpx2.Limits(max_connections=64)) as http,
    ):
        sessions: list[tuple[str, dict[str, str]]] = []
        for principal, key in KEYS.items():
            for _ in range(2):
                h = {**H, "Authorization": f"Bearer {key}"}
                r = await http.post(
                    url,
                    headers=h,
                    json={
                        "jsonrpc": "2.0",
                        "id": 0,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-11-25",
                            "capabilities": {},
                            "clientInfo": {"name": principal, "version": "0"},
                        },
                    },
                )
                h = {**h, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
                await http.post(url, headers=h, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
                sessions.append((principal, h))

        limiter = anyio.Semaphore(48)

        async def call(n: int) -> None:
            principal, h = sessions[n % len(sessions)]
            upstream = "a" if n % 3 else "b"
            text = f"call-{n}-{principal}" + ("-deny" if n % 4 == 0 else "")
            async with limiter:
                r = await http.post(
                    url,
                    headers=h,
                    json={
                        "jsonrpc": "2.0",
                        "id": n,
                        "method": "tools/call",
                        "params": {"name": f"{upstream}__echo", "arguments": {"text": text}},
                    },
                )
            answers[text] = (principal, sse_answer(r))

        async with anyio.create_task_group() as tg:
            for n in range(1000):
                tg.start_soon(call, n)

    assert len(answers) == 1000
    decisions = {e.decision_id: e for e in sink.of_kind("call.decision")}
    results = {e.decision_id: e for e in sink.of_kind("call.result")}
    for text, (principal, resp) in answers.items():
        res = resp["result"]
        did = (
            res["_meta"]["mcp-guard/decision_id"]
            if "decision_id" not in res.get("_meta", {}).get("mcp-guard/decision", {})
            else res["_meta"]["mcp-guard/decision"]["decision_id"]
        )
        row = decisions[did]
        assert row.principal == principal and row.arguments is not None and row.arguments["text"] == text
        if text.endswith("-deny"):
            assert res["isError"] and f"denied {text} for {principal}" in res["content"][0]["text"]
            assert row.decision == "deny" and did not in results
        else:
            assert res["content"][0]["text"] == text
            assert row.decision == "allow" and row.reasons == (f"allowed {text} for {principal}",)
            assert results[did].principal == principal and results[did].session_id == row.session_id
