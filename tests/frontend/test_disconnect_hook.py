"""The httptools front tells a request that its client went away through a callback (frontend/httptools_protocol
``LostHook``, offered in ``scope["extensions"]``) exactly when uvicorn's ``receive()`` would return
``http.disconnect`` — and refuses the requests it cannot watch so (then the application waits on ``receive()``).

The protocol is driven directly on a recording transport, so the connection's loss is the test's to cause.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import uvicorn
from test_httptools_writes import RecordingTransport
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from mcp_guard.frontend.httptools_protocol import guarded_httptools
from mcp_guard.frontend.modern_direct import DISCONNECT_HOOK
from mcp_guard.frontend.slowloris import HeadLimits

pytestmark = pytest.mark.anyio

REQUEST = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
ANSWER = [
    {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]},
    {"type": "http.response.body", "body": b"{}"},
]


def _protocol(app: Any) -> HttpToolsProtocol:
    config = uvicorn.Config(app, lifespan="off", log_level="critical", loop="none")
    config.load()
    protocol = guarded_httptools(HeadLimits(head_timeout_s=30, max_pending=64, max_idle=512), 64 * 1024)(
        config=config, server_state=ServerState(), app_state={}
    )
    protocol.connection_made(RecordingTransport())
    return protocol


async def _settled(protocol: HttpToolsProtocol) -> None:
    with anyio.fail_after(10):
        while protocol.tasks:
            await asyncio.gather(*protocol.tasks, return_exceptions=True)


def _arming_app(armed: list[bool], called: list[str], *, answer_first: bool = False) -> Any:
    """Reads its body, arms the hook from a middleware's copy of the scope, then waits until told to stop."""
    stop = anyio.Event()
    tried = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        if answer_first:
            for message in ANSWER:
                await send(message)
        copy = {**scope, "user": "someone"}  # what an authenticating middleware hands on
        hook = copy["extensions"][DISCONNECT_HOOK]
        armed.append(hook.arm(copy, lambda: (called.append("gone"), stop.set())))
        tried.set()
        if armed[-1]:
            await stop.wait()

    app.stop = stop  # type: ignore[attr-defined]
    app.tried = tried  # type: ignore[attr-defined]
    return app


async def _tried(app: Any) -> None:
    """Until the application has tried to arm the hook."""
    with anyio.fail_after(10):
        await app.tried.wait()


async def _one_armed_request() -> tuple[Any, Any, list[bool], list[str]]:
    """A protocol whose one request's application has armed the hook: (app, protocol, armed, called)."""
    armed: list[bool] = []
    called: list[str] = []
    app = _arming_app(armed, called)
    protocol = _protocol(app)
    protocol.data_received(REQUEST)
    await _tried(app)
    return app, protocol, armed, called


async def test_a_lost_connection_calls_the_armed_request_once() -> None:
    _app, protocol, armed, called = await _one_armed_request()
    assert armed == [True] and called == []
    protocol.connection_lost(None)
    await _settled(protocol)
    assert called == ["gone"]


async def test_a_disarmed_request_is_not_called() -> None:
    app, protocol, _armed, called = await _one_armed_request()
    protocol.scope["extensions"][DISCONNECT_HOOK].disarm()
    protocol.connection_lost(None)
    app.stop.set()
    await _settled(protocol)
    assert called == []


async def test_an_answered_request_is_refused() -> None:
    armed: list[bool] = []
    called: list[str] = []
    protocol = _protocol(_arming_app(armed, called, answer_first=True))
    protocol.data_received(REQUEST)
    await _settled(protocol)
    protocol.connection_lost(None)
    assert armed == [False] and called == []  # receive() would answer http.disconnect at once: nothing to watch


async def test_a_request_with_a_pipelined_one_behind_it_is_refused() -> None:
    armed: list[bool] = []
    called: list[str] = []
    app = _arming_app(armed, called)
    protocol = _protocol(app)
    protocol.data_received(REQUEST + REQUEST)  # the second is queued behind the first: uvicorn's latest request
    await _tried(app)
    assert armed[0] is False  # uvicorn's disconnect would reach the queued request, not this one
    protocol.connection_lost(None)
    app.stop.set()
    await _settled(protocol)
