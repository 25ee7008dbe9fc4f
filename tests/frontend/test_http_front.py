"""The streamable-HTTP front: auth, session binding, DNS-rebinding protection, both protocol eras."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp.server.lowlevel import Server

from guard_harness import make_settings, recorder_upstream, running_guard, text_of
from http_harness import http_client, http_front, sse_answer
from mcp_guard.errors import ConfigError
from mcp_guard.frontend.http import HttpFront, bind_socket, http_served
from mcp_guard.settings import ServerSettings
from mcp_guard.testing import RecordingSink

pytestmark = pytest.mark.anyio

ALICE_KEY = "alice-test-key-0123456789"
BOB_KEY = "bob-test-key-9876543210"


def _settings(tmp_path: Path, **server: object):  # type: ignore[no-untyped-def]
    return make_settings(
        {"rec": recorder_upstream()},
        server=server,
        principals={
            "alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(ALICE_KEY.encode()).hexdigest()},
            "bob": {"roles": ["analyst"], "api_key_sha256": hashlib.sha256(BOB_KEY.encode()).hexdigest()},
        },
    )


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_missing_and_wrong_keys_are_401_and_audited(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with (
        running_guard(_settings(tmp_path), sink=sink) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        r = await http.post(url, json=INIT, headers=HEADERS)
        assert r.status_code == 401
        r = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": "Bearer wrong-key-abc"})
        assert r.status_code == 401
        r = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": "Basic abc"})
        assert r.status_code == 401
        r = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {ALICE_KEY}"})
        assert r.status_code == 200
    rejects = sink.of_kind("auth.reject")
    assert [e.reasons for e in rejects] == [("missing_key",), ("invalid_key",), ("malformed_authorization",)]
    assert all("wrong-key" not in repr(e) for e in sink.events)


async def test_principal_reaches_policy_and_sessions_are_bound(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with running_guard(_settings(tmp_path), sink=sink) as guard, http_front(guard) as url:
        async with http_client(url, ALICE_KEY) as client:
            r = await client.call_tool("rec__echo", {"text": "hello"})
            assert text_of(r) == "hello"
        starts = sink.of_kind("session.start")
        assert starts and starts[0].principal == "alice"
        assert starts[0].details is not None and starts[0].details["roles"] == ["support"]
        # Hijack: alice's session id presented with bob's key is refused.
        async with httpx2.AsyncClient(timeout=10) as http:
            r = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {ALICE_KEY}"})
            sid = r.headers["mcp-session-id"]
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
            r2 = await http.post(
                url,
                json=call,
                headers={
                    **HEADERS,
                    "Authorization": f"Bearer {BOB_KEY}",
                    "mcp-session-id": sid,
                    "mcp-protocol-version": "2025-11-25",
                },
            )
            assert r2.status_code == 404


async def test_dns_rebinding_protection(tmp_path: Path) -> None:
    async with (
        running_guard(_settings(tmp_path)) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        auth = {"Authorization": f"Bearer {ALICE_KEY}"}
        r = await http.post(url, json=INIT, headers={**HEADERS, **auth, "Host": "evil.example:80"})
        assert r.status_code in (403, 421)
        r = await http.post(url, json=INIT, headers={**HEADERS, **auth, "Origin": "http://evil.example"})
        assert r.status_code == 403


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_both_protocol_eras(tmp_path: Path, mode: str) -> None:
    async with (
        running_guard(_settings(tmp_path)) as guard,
        http_front(guard) as url,
        http_client(url, BOB_KEY, mode=mode) as client,
    ):
        tools = (await client.list_tools()).tools
        assert "rec__echo" in {t.name for t in tools}
        r = await client.call_tool("rec__add", {"a": 20, "b": 22})
        assert r.structured_content == {"sum": 42}
        res = await client.read_resource("mcpg://rec/rec://info")
        assert res.contents
        p = await client.get_prompt("rec__greet", {"name": "Grace"})
        assert "Grace" in str(p.messages[0].content)


async def test_oversized_request_is_refused(tmp_path: Path) -> None:
    async with (
        running_guard(_settings(tmp_path, max_request_bytes=2048)) as guard,
        http_front(guard) as url,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        big = {**INIT, "params": {**INIT["params"], "pad": "x" * 10_000}}  # type: ignore[dict-item]
        r = await http.post(url, json=big, headers={**HEADERS, "Authorization": f"Bearer {ALICE_KEY}"})
        assert r.status_code == 413


async def test_the_front_serves_what_it_is_handed_no_guard_needed() -> None:
    """The HTTP front depends on its arguments only: an MCP server, [server] settings, key digests, a
    callback for refusals (the composition root hands it a Guard's; here a bare SDK server)."""
    server: Server[Any] = Server("bare", on_list_tools=_no_tools)
    refused: list[tuple[str, str | None]] = []
    front = HttpFront(
        server=server,
        settings=ServerSettings(),
        digests={"alice": hashlib.sha256(ALICE_KEY.encode()).hexdigest()},
        on_reject=lambda rejection, client: refused.append((rejection.reason, client)),
    )
    async with http_served(front) as url, httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(url, json=INIT, headers=HEADERS)
        assert r.status_code == 401
        r = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {ALICE_KEY}"})
        assert r.status_code == 200 and sse_answer(r)["result"]["serverInfo"]["name"] == "bare"
    assert [reason for reason, _ in refused] == ["missing_key"]


async def _no_tools(ctx: Any, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[])


def test_a_port_in_use_is_a_config_error_naming_the_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            bind_socket("127.0.0.1", port, source="guard.toml")
    assert str(info.value) == f"guard.toml: server.port: cannot listen on 127.0.0.1:{port}: address already in use"
    with bind_socket("127.0.0.1", 0) as free:
        assert free.getsockname()[1] != 0
