"""A client's Mcp-Param-* headers reach a 2026-07-28 HTTP upstream with its own call only
(mcp_guard.upstream.param_headers): unit tests of the hook, then a real HTTP upstream recording what it got."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from guard_harness import REPO, make_settings, running_guard, text_of
from http_harness import http_front
from mcp_guard.testing import RecordingSink
from mcp_guard.upstream.param_headers import MAX_PARAM_HEADERS, add_call_headers, call_headers, param_headers_of

pytestmark = pytest.mark.anyio


def _asgi(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """An ASGI header list: names lower-case, latin-1 bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def test_only_mcp_param_headers_are_taken_and_bounded() -> None:
    headers = {"Mcp-Param-Tenant": "acmé", "mcp-method": "tools/call", "Authorization": "Bearer x"}
    assert param_headers_of(_asgi(headers)) == {"mcp-param-tenant": "acmé"}
    assert param_headers_of(_asgi({"Accept": "*/*"})) is None and param_headers_of(None) is None
    many = {f"Mcp-Param-H{i:03d}": str(i) for i in range(MAX_PARAM_HEADERS + 10)}
    kept = {f"mcp-param-h{i:03d}": str(i) for i in range(MAX_PARAM_HEADERS)}  # the first names in sorted order
    assert param_headers_of(_asgi(many)) == kept


async def test_each_task_sends_its_own_headers_and_never_overrides_the_requests_own() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append({k: v for k, v in request.headers.items() if k.startswith("mcp-param-")})
        return httpx2.Response(200)

    both = anyio.Event()
    async with httpx2.AsyncClient(
        transport=httpx2.MockTransport(handler), event_hooks={"request": [add_call_headers]}
    ) as http:

        async def call(tenant: str, region: str | None) -> None:
            with call_headers({"mcp-param-tenant": tenant, "mcp-param-region": "from-client"}):
                await both.wait()  # both calls' headers are set at once
                own = {"Mcp-Param-Region": region} if region else {}
                await http.post("http://upstream/mcp", headers=own)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a", "eu")
            tg.start_soon(call, "b", None)
            await anyio.wait_all_tasks_blocked()
            both.set()
        await http.post("http://upstream/mcp")  # outside any call: nothing added
    assert sorted(seen, key=str) == sorted(
        [
            {"mcp-param-tenant": "a", "mcp-param-region": "eu"},  # the request's own declared header stands
            {"mcp-param-tenant": "b", "mcp-param-region": "from-client"},
            {},
        ],
        key=str,
    )


# ------------------------------------------------------------------------------------ a real 2026-07-28 HTTP upstream
@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "headers.log"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fixtures" / "http_recorder.py"), "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    yield f"http://127.0.0.1:{int(line.split()[1])}/mcp", log
    proc.terminate()
    proc.wait(timeout=10)


def _client(url: str, headers: dict[str, str]) -> Client:
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(20.0))
    transport: Any = streamable_http_client(url, http_client=http)
    return Client(transport, mode="2026-07-28", read_timeout_seconds=20.0)


def _calls(log: Path) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("mcp-method") == "tools/call"]


async def test_unknown_mcp_param_headers_reach_the_upstream_with_their_call_only(
    recorder: tuple[str, Path],
) -> None:
    url, log = recorder
    settings = make_settings({"h": {"transport": "http", "url": url, "timeout_s": 10}}, server={"require_auth": False})
    async with running_guard(settings, sink=RecordingSink()) as guard, http_front(guard) as front:
        assert guard.registry.connections["h"].protocol_version == "2026-07-28"
        async with _client(front, {"Mcp-Param-Tenant": "acme"}) as client:
            r = await client.call_tool("h__route", {"region": "eu"})
            assert text_of(r) == "eu"
        async with _client(front, {}) as other:
            r = await other.call_tool("h__route", {"region": "us"})
            assert text_of(r) == "us"
    first, second = _calls(log)
    # The declared header is validated by mcp-guard and written again by its own client; the unknown one is passed on.
    assert first["mcp-param-region"] == "eu" and first["mcp-param-tenant"] == "acme"
    assert second["mcp-param-region"] == "us" and "mcp-param-tenant" not in second, "never carried to another call"
