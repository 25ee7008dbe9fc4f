"""Era negotiation and the per-request envelope, against an SDK server over in-memory streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.memory import create_client_server_memory_streams

from mcp_guard.upstream.era import (
    EnvelopeDispatcher,
    EraMemory,
    era_of,
    negotiate,
    per_request_capabilities,
    split_envelope,
)

pytestmark = pytest.mark.anyio

CAPS = types.CLIENT_CAPABILITIES_META_KEY


async def _caps_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    """Answers with the client capabilities the server sees for this request."""
    caps = ctx.session.client_capabilities
    seen = caps.model_dump(by_alias=True, mode="json", exclude_none=True) if caps is not None else None
    meta = dict(params.meta or {})
    text = json.dumps({"caps": seen, "traceparent": meta.get("traceparent")}, sort_keys=True)
    return types.CallToolResult(content=[types.TextContent(text=text)])


async def _list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(name="caps", input_schema={"type": "object"})])


@asynccontextmanager
async def _connected(protocol: Any) -> AsyncIterator[tuple[ClientSession, str]]:
    server: Server[Any] = Server("era-test", on_call_tool=_caps_tool, on_list_tools=_list_tools)

    async def elicit(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: server.run(server_streams[0], server_streams[1], server.create_initialization_options()))
        session = ClientSession(
            dispatcher=EnvelopeDispatcher(client_streams[0], client_streams[1]),
            read_timeout_seconds=10,
            elicitation_callback=elicit,
        )
        async with session:
            with anyio.fail_after(10):
                version = await negotiate(session, protocol)
            yield session, version
        tg.cancel_scope.cancel()


async def _seen(session: ClientSession, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    request = types.CallToolRequest(params=types.CallToolRequestParams(name="caps", arguments={}, _meta=meta))
    raw = await session.send_request(request, types.CallToolResult)
    text = raw.content[0]
    assert isinstance(text, types.TextContent)
    parsed: dict[str, Any] = json.loads(text.text)
    return parsed


async def test_auto_speaks_2026_to_a_server_that_answers_discover() -> None:
    async with _connected("auto") as (session, version):
        assert version == "2026-07-28" and era_of(version) == "stateless"
        assert session.discover_result is not None and session.initialize_result is None


async def test_a_pinned_handshake_never_probes() -> None:
    async with _connected("2025-11-25") as (session, version):
        assert version == "2025-11-25" and era_of(version) == "handshake"
        assert session.discover_result is None


async def test_a_request_carries_the_clients_capabilities_not_the_sessions() -> None:
    async with _connected("2026-07-28") as (session, _):
        ad = (await _seen(session))["caps"]
        assert ad.get("elicitation") is not None  # the session's own ad: it has an elicitation callback
        with per_request_capabilities({}):
            assert (await _seen(session))["caps"] == {}  # this client declared nothing: the upstream sees that
        with per_request_capabilities({"sampling": {}}):
            assert (await _seen(session))["caps"] == {"sampling": {}}
        assert (await _seen(session))["caps"] == ad  # outside the block: the session's ad again


async def test_traceparent_in_meta_reaches_the_upstream() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with _connected("2026-07-28") as (session, _):
        assert (await _seen(session, {"traceparent": tp}))["traceparent"] == tp


def test_split_envelope_lifts_capabilities_for_a_stateless_upstream_only() -> None:
    meta = {
        CAPS: {"roots": {}},
        types.LOG_LEVEL_META_KEY: "info",
        types.PROTOCOL_VERSION_META_KEY: "2026-07-28",
        "traceparent": "tp",
    }
    kept, caps = split_envelope(meta, "stateless")
    assert caps == {"roots": {}}
    assert kept == {types.LOG_LEVEL_META_KEY: "info", "traceparent": "tp"}
    kept, caps = split_envelope(meta, "handshake")
    assert caps is None and kept == {"traceparent": "tp"}
    assert split_envelope({CAPS: {}}, "handshake") == (None, None)
    assert split_envelope(None, "stateless") == (None, None)


async def test_a_remembered_handshake_skips_the_probe_and_a_remembered_2026_era_still_discovers() -> None:
    async with _connected_remembering("2025-11-25") as (session, version):
        assert version == "2025-11-25" and session.discover_result is None, "no server/discover sent"
    async with _connected_remembering("2026-07-28") as (session, version):
        assert version == "2026-07-28" and session.discover_result is not None  # the probe is the connect


def test_era_memory_remembers_forgets_and_clears() -> None:
    memory = EraMemory()
    memory.remember("a", "2025-11-25")
    memory.remember("b", "2026-07-28")
    assert (memory.get("a"), memory.get("b"), memory.get("c")) == ("2025-11-25", "2026-07-28", None)
    memory.forget("a")
    assert memory.get("a") is None and memory.get("b") == "2026-07-28"
    memory.clear()
    assert memory.get("b") is None


@asynccontextmanager
async def _connected_remembering(remembered: str) -> AsyncIterator[tuple[ClientSession, str]]:
    """An ``auto`` connect to a server that speaks both eras, told what the upstream spoke before."""
    server: Server[Any] = Server("era-test", on_call_tool=_caps_tool, on_list_tools=_list_tools)
    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: server.run(server_streams[0], server_streams[1], server.create_initialization_options()))
        session = ClientSession(
            dispatcher=EnvelopeDispatcher(client_streams[0], client_streams[1]), read_timeout_seconds=10
        )
        async with session:
            with anyio.fail_after(10):
                version = await negotiate(session, "auto", remembered=remembered)
            yield session, version
        tg.cancel_scope.cancel()
