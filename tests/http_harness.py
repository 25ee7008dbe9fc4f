"""Serve a Guard's HTTP front in-process on a free port, and build SDK clients for it; switch the front's direct
tools/call path (frontend/direct_call.py) off, or count what it runs."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_guard.app import Guard
from mcp_guard.frontend.direct_call import DirectCalls


def http_front(guard: Guard) -> AbstractAsyncContextManager[str]:
    """Serve the guard's HTTP front on a free loopback port; yields its /mcp URL."""
    return guard.http_served()


def sse_answer(r: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a streamable-HTTP answer, whether a JSON body or an SSE stream."""
    if r.headers.get("content-type", "").startswith("application/json"):
        return dict(r.json())
    for line in r.text.splitlines():
        if line.startswith("data:") and '"id"' in line:
            return dict(json.loads(line[5:]))
    raise AssertionError(f"no JSON-RPC response in the body: {r.text[:500]}")


ACCEPT_BOTH = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def raw_session(
    http: httpx2.AsyncClient, url: str, key: str, *, capabilities: dict[str, Any] | None = None, listed: bool = True
) -> dict[str, str]:
    """Open a 2025-11-25 session over raw HTTP (initialize, initialized; ``listed``: then a ``tools/list``, through
    the SDK's path, so the front knows the session); the headers every request of the session carries."""
    auth = {**ACCEPT_BOTH, "Authorization": f"Bearer {key}"}
    client = {"name": "raw", "version": "0"}
    params = {"protocolVersion": "2025-11-25", "capabilities": capabilities or {}, "clientInfo": client}
    r = await http.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}, headers=auth)
    assert r.status_code == 200, r.text
    headers = {**auth, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    r = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert r.status_code == 202
    if listed:
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 100, "method": "tools/list"}, headers=headers)
        assert r.status_code == 200
    return headers


def tools_call_body(rid: int, tool: str, arguments: Any, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``tools/call`` request as a raw client posts it."""
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def http_client(url: str, key: str | None = None, *, mode: str = "legacy", **kwargs: Any) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(20.0))
    kwargs.setdefault("read_timeout_seconds", 20.0)
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs)  # type: ignore[arg-type]


def counted_direct_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The methods run directly from now on, as they run (the direct path stays on)."""
    runs: list[str] = []
    real = DirectCalls.run

    async def counted(*args: Any) -> Any:
        runs.append(args[1].method)
        return await real(*args)

    monkeypatch.setattr(DirectCalls, "run", staticmethod(counted))
    return runs


def sdk_dispatch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every request takes the SDK's dispatcher (the direct path is off)."""
    monkeypatch.setattr(DirectCalls, "ready", lambda *_args: None)
