"""Serve a Guard's HTTP front in-process on a free port, and build SDK clients for it."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_guard.app import Guard


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


def http_client(url: str, key: str | None = None, *, mode: str = "legacy", **kwargs: Any) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(20.0))
    kwargs.setdefault("read_timeout_seconds", 20.0)
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs)  # type: ignore[arg-type]
