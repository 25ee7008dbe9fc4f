"""The handshake-era client channel: upstream→client traffic on the client request's own stream.

A small low-level SDK server, reached by an SDK client over in-memory streams, hands each ``tools/call``
to a :class:`RequestChannel` of that request (as the guard's handlers do) and records what the client
answered; the tool name says which request to relay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.shared.memory import create_client_server_memory_streams

from guard_harness import make_settings
from mcp_guard.channel import ClientMethod, capability_refusal
from mcp_guard.frontend.sessions import DownstreamSession, RequestChannel, SessionTable
from mcp_guard.types import Principal, SessionInfo

pytestmark = pytest.mark.anyio

ELICIT = {"mode": "form", "message": "Name?", "requestedSchema": {"type": "object", "properties": {}}}
LOG = types.LoggingMessageNotificationParams(level="warning", logger="up", data="careful")


class Relay:
    """The server side: each call relays one upstream→client message through a RequestChannel."""

    def __init__(self) -> None:
        self.sessions = SessionTable(make_settings({}), lambda s: None, lambda s: None)
        self.answers: list[dict[str, Any] | types.ErrorData] = []
        self.channels: list[RequestChannel] = []

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> dict[str, Any]:
        channel = RequestChannel(self.sessions.for_request(ctx, "stdio", Principal("alice")), ctx, timeout_s=10.0)
        self.channels.append(channel)
        if params.name == "log":
            await channel.notify_log(LOG)
        elif params.name == "progress":
            await channel.progress(1, 2, "half")
        else:
            self.answers.append(await channel.request(ClientMethod(params.name), dict(params.arguments or {})))
        return {"content": []}

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        schema = {"type": "object"}
        names = [*ClientMethod, "log", "progress"]
        return types.ListToolsResult(tools=[types.Tool(name=n, input_schema=schema) for n in names])


@asynccontextmanager
async def _client(relay: Relay, **callbacks: Any) -> AsyncIterator[ClientSession]:
    server: Server[Any] = Server("relay", on_call_tool=relay.call_tool, on_list_tools=relay.list_tools)  # type: ignore[arg-type]
    async with (
        create_client_server_memory_streams() as (client_streams, server_streams),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(server.run, server_streams[0], server_streams[1], server.create_initialization_options())
        async with ClientSession(*client_streams, read_timeout_seconds=10, **callbacks) as client:
            await client.initialize()
            yield client
        tg.cancel_scope.cancel()


async def test_the_clients_answer_comes_back_as_it_was_sent() -> None:
    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert params.message == "Name?"
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    relay = Relay()
    with anyio.fail_after(10):
        async with _client(relay, elicitation_callback=elicit) as client:
            await client.call_tool(ClientMethod.ELICITATION, ELICIT)
    assert relay.answers == [{"action": "accept", "content": {"name": "Ada"}}]
    [channel] = relay.channels
    assert channel.principal_id == "alice" and not channel.parked


async def test_an_error_the_client_answers_is_handed_on() -> None:
    relay = Relay()  # a client without a roots callback answers roots/list with an error
    with anyio.fail_after(10):
        async with _client(relay) as client:
            await client.call_tool(ClientMethod.ROOTS, {})
    [answer] = relay.answers
    assert isinstance(answer, types.ErrorData) and answer.code != types.INTERNAL_ERROR


async def test_log_and_progress_ride_the_request() -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    relay = Relay()
    with anyio.fail_after(10):
        async with _client(relay, logging_callback=on_log) as client:
            await client.call_tool("log", {})
            await client.call_tool("progress", {}, progress_callback=on_progress)
    assert [(m.level, m.logger, m.data) for m in logs] == [("warning", "up", "careful")]
    assert reported == [(1, 2, "half")]


SAMPLING_CAPS = types.ClientCapabilities(sampling=types.SamplingCapability())


def _fake_request(
    *, modern: bool, can_send_request: bool, caps: types.ClientCapabilities | None = SAMPLING_CAPS
) -> RequestChannel:
    session = DownstreamSession(
        info=SessionInfo(id="s1", transport="http"),
        principal=Principal(id="alice"),
        connection=SimpleNamespace(),  # type: ignore[arg-type]
        modern=modern,
    )
    outbound = SimpleNamespace(can_send_request=can_send_request, client_capabilities=caps)
    return RequestChannel(session, SimpleNamespace(session=outbound, request_id=1), timeout_s=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("modern", "can_send_request"), [(True, True), (False, False)])
async def test_no_back_channel_is_a_refusal_for_the_upstream(modern: bool, can_send_request: bool) -> None:
    answer = await _fake_request(modern=modern, can_send_request=can_send_request).request(ClientMethod.SAMPLING, {})
    assert answer == types.ErrorData(
        code=types.INVALID_REQUEST,
        message="mcp-guard: the client's connection cannot carry sampling/createMessage (no back channel on this "
        "protocol era/transport)",
    )


@pytest.mark.parametrize("caps", [None, types.ClientCapabilities(elicitation=types.ElicitationCapability())])
async def test_a_2026_clients_missing_capability_is_refused_as_a_round_refuses_it(
    caps: types.ClientCapabilities | None,
) -> None:
    """A 2026-07-28 call the bridge left in its request (its client can answer nothing) meets this channel: the
    upstream's question is refused with -32021 naming what the client lacks, as the bridge's round refuses it."""
    answer = await _fake_request(modern=True, can_send_request=False, caps=caps).request(ClientMethod.SAMPLING, {})
    assert answer == capability_refusal("sampling/createMessage", {"sampling": {}})
    assert isinstance(answer, types.ErrorData) and answer.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert answer.data == {"requiredCapabilities": {"sampling": {}}}


class CannedOutbound:
    """A request's back channel whose client answers every request with ``answer`` (sent as it is)."""

    can_send_request = True
    request_id = 7

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.sent: list[tuple[str, Any, Any]] = []

    async def send_raw_request(self, method: str, params: Any, opts: Any = None) -> dict[str, Any]:
        self.sent.append((method, params, opts))
        return self.answer


class NoStandaloneOutbound:
    async def send_raw_request(self, method: str, params: Any, opts: Any = None) -> dict[str, Any]:
        raise AssertionError("a relayed request rides the client request's stream, not the standalone one")


def _canned_request(answer: dict[str, Any]) -> tuple[RequestChannel, CannedOutbound]:
    outbound = CannedOutbound(answer)
    connection = Connection(NoStandaloneOutbound(), protocol_version="2025-11-25")  # type: ignore[arg-type]
    ctx: ServerRequestContext[Any, Any] = ServerRequestContext(
        session=ServerSession(outbound, connection),  # type: ignore[arg-type]
        lifespan_context={},
        protocol_version="2025-11-25",
        method="tools/call",
        request_id=outbound.request_id,
    )
    session = DownstreamSession(
        info=SessionInfo(id="s1", transport="stdio"),
        principal=Principal(id="alice"),
        connection=connection,
        modern=False,
    )
    return RequestChannel(session, ctx, timeout_s=3.0), outbound


async def test_an_invalid_answer_is_an_internal_error_naming_the_request() -> None:
    channel, outbound = _canned_request({"action": "maybe"})
    answer = await channel.request(ClientMethod.ELICITATION, ELICIT)
    assert isinstance(answer, types.ErrorData) and answer.code == types.INTERNAL_ERROR
    assert answer.message.startswith("client sent an invalid elicit result: ")
    assert outbound.sent == [("elicitation/create", ELICIT, {"timeout": 3.0})]
