"""Hostile input through the real HTTP front and from misbehaving upstreams: clear errors, no damage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from guard_harness import REPO, make_settings, recorder_upstream, running_guard
from http_harness import http_front, sse_answer

pytestmark = pytest.mark.anyio

H = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
ROGUE = str(REPO / "tests" / "fixtures" / "rogue.py")


def _rogue(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [ROGUE], "timeout_s": 2.0, **extra}


async def _session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    r = await http.post(url, json=INIT, headers=H)
    assert r.status_code == 200
    h = {**H, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
    return h


async def _call(
    http: httpx2.AsyncClient, url: str, h: dict[str, str], rid: int, name: str, args: dict[str, Any]
) -> dict[str, Any]:
    r = await http.post(
        url,
        json={"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": args}},
        headers=h,
    )
    assert r.status_code == 200, r.text[:300]
    return sse_answer(r)


async def test_malformed_client_requests_get_clear_errors(tmp_path: Path) -> None:
    settings = make_settings({"rec": recorder_upstream()}, server={"require_auth": False})
    async with running_guard(settings) as guard, http_front(guard) as url, httpx2.AsyncClient(timeout=30) as http:
        h = await _session(http, url)
        deep = "[" * 50_000 + "]" * 50_000
        body = (
            '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"rec__echo","arguments":{"x":'
            + deep
            + "}}}"
        )
        r = await http.post(url, content=body, headers=h)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
        r = await http.post(url, content=b"{not json", headers=h)
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "no/such/method"}, headers=h)
        assert sse_answer(r)["error"]["code"] == -32601
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {}}, headers=h)
        assert sse_answer(r)["error"]["code"] == -32602
        for name in ("echo", "rec__", "__echo", "rec__no_such_tool", "x" * 10_000):
            res = (await _call(http, url, h, 5, name, {}))["result"]
            assert res["isError"] and "does not exist" in res["content"][0]["text"]
        big = "y" * 3_000_000
        res = (await _call(http, url, h, 6, "rec__echo", {"text": big}))["result"]
        assert res["content"][0]["text"] == big
        res = (await _call(http, url, h, 7, "rec__echo", {"text": "still alive"}))["result"]
        assert res["content"][0]["text"] == "still alive"


async def test_misbehaving_upstream_cannot_mix_answers(tmp_path: Path) -> None:
    settings = make_settings(
        {"rogue": _rogue(max_response_bytes=1024 * 1024), "rec": recorder_upstream()},
        server={"require_auth": False},
    )
    async with running_guard(settings) as guard, http_front(guard) as url, httpx2.AsyncClient(timeout=30) as http:
        h = await _session(http, url)
        results: dict[int, dict[str, Any]] = {}

        async def call(rid: int, name: str, args: dict[str, Any]) -> None:
            results[rid] = await _call(http, url, h, rid, name, args)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 10, "rogue__wrong_id", {})
            for i in range(20):
                tg.start_soon(call, 100 + i, "rogue__ok", {"text": f"answer-{i}"})
                tg.start_soon(call, 200 + i, "rec__echo", {"text": f"rec-{i}"})
        # The wrong-id answer belongs to nobody: that call times out cleanly …
        assert results[10]["id"] == 10
        assert results[10]["result"]["isError"] and "did not answer" in results[10]["result"]["content"][0]["text"]
        # … and every other caller got exactly its own answer.
        for i in range(20):
            assert results[100 + i]["id"] == 100 + i
            assert results[100 + i]["result"]["content"][0]["text"] == f"answer-{i}"
            assert results[200 + i]["result"]["content"][0]["text"] == f"rec-{i}"
        # Garbage lines are skipped; an oversized answer is refused without taking memory or the proxy down.
        assert (await _call(http, url, h, 11, "rogue__garbage", {}))["result"]["content"][0]["text"] == "garbage"
        huge = (await _call(http, url, h, 12, "rogue__huge", {}))["result"]
        assert huge["isError"]
        bad = await _call(http, url, h, 13, "rogue__bad_shape", {})
        assert "error" in bad or bad["result"].get("isError")
        ok = (await _call(http, url, h, 14, "rogue__ok", {"text": "fine"}))["result"]
        assert ok["content"][0]["text"] == "fine"
