"""A response with a Content-Length leaves the httptools front in one write, head and body together; streams,
``100 Continue`` and a head with nothing after it are written as before (frontend/httptools_protocol._HeadWithBody).

The front's protocol class is driven directly on a transport that records every write, so the number of writes is
observed exactly (over a socket, TCP may merge or split them)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import uvicorn
from uvicorn.server import ServerState

from mcp_guard.frontend.httptools_protocol import guarded_httptools
from mcp_guard.frontend.slowloris import HeadLimits

pytestmark = pytest.mark.anyio


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


def _app(*messages: dict[str, Any], fail: bool = False) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        for message in messages:
            await send(message)
        if fail:
            raise RuntimeError("the application failed after starting its answer")

    return app


async def _serve(app: Any, raw: bytes) -> RecordingTransport:
    config = uvicorn.Config(app, lifespan="off", log_level="critical", loop="none")
    config.load()
    protocol = guarded_httptools(HeadLimits(head_timeout_s=30, max_pending=64, max_idle=512), 64 * 1024)(
        config=config, server_state=ServerState(), app_state={}
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(raw)
    with anyio.fail_after(10):
        while protocol.tasks:  # the ASGI task of the request
            await asyncio.gather(*protocol.tasks, return_exceptions=True)
    protocol.connection_lost(None)
    return transport


REQUEST = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
JSON_HEAD = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"7")]}


async def test_a_json_answer_is_one_write() -> None:
    transport = await _serve(_app(JSON_HEAD, {"type": "http.response.body", "body": b'{"a":1}'}), REQUEST)
    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 7" in head and body == b'{"a":1}'


async def test_a_body_in_pieces_sends_the_head_with_the_first() -> None:
    pieces = [
        {"type": "http.response.body", "body": b'{"a"', "more_body": True},
        {"type": "http.response.body", "body": b":1}"},
    ]
    transport = await _serve(_app(JSON_HEAD, *pieces), REQUEST)
    assert (
        len(transport.writes) == 2 and transport.writes[0].endswith(b'\r\n\r\n{"a"') and transport.writes[1] == b":1}"
    )


async def test_a_stream_writes_its_head_at_once() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    body = {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}
    transport = await _serve(_app(start, body, {"type": "http.response.body", "body": b""}), REQUEST)
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")  # the head alone, first
    assert b"data: x" in transport.writes[1]


async def test_an_empty_answer_and_a_head_request_are_written_at_once() -> None:
    empty = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
    transport = await _serve(_app(empty, {"type": "http.response.body", "body": b""}), REQUEST)
    assert transport.writes[0].startswith(b"HTTP/1.1 202") and not any(transport.writes[1:])  # (uvicorn writes b"")
    head_request = b"HEAD /mcp HTTP/1.1\r\nHost: x\r\n\r\n"
    transport = await _serve(_app(JSON_HEAD, {"type": "http.response.body", "body": b""}), head_request)
    assert transport.writes[0].startswith(b"HTTP/1.1 200") and not any(transport.writes[1:])


async def test_a_failure_after_the_head_still_writes_the_head_before_closing() -> None:
    transport = await _serve(_app(JSON_HEAD, fail=True), REQUEST)
    assert transport.closed and len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200")


async def test_100_continue_goes_out_before_the_answer() -> None:
    raw = b"POST /mcp HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
    transport = await _serve(_app(JSON_HEAD, {"type": "http.response.body", "body": b'{"a":1}'}), raw)
    assert transport.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b'\r\n\r\n{"a":1}')
