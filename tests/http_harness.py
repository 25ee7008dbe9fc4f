"""Serve a Guard's HTTP front in-process on a free port, and build SDK clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_guard.app import Guard


@asynccontextmanager
async def http_front(guard: Guard) -> AsyncIterator[str]:
    """Yield the front's /mcp URL while it serves."""
    port: list[int] = []
    ready = anyio.Event()

    def on_ready(p: int) -> None:
        port.append(p)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: guard.serve_http("127.0.0.1", 0, ready=on_ready))
        with anyio.fail_after(10):
            await ready.wait()
        yield f"http://127.0.0.1:{port[0]}/mcp"
        tg.cancel_scope.cancel()


def http_client(url: str, key: str | None = None, *, mode: str = "legacy", **kwargs: Any) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(20.0))
    kwargs.setdefault("read_timeout_seconds", 20.0)
    return Client(streamable_http_client(url, http_client=http), mode=mode, **kwargs)  # type: ignore[arg-type]
