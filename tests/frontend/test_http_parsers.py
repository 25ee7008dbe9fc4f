"""The HTTP front parses the same on httptools as on h11: what reaches the application, and what is refused.

Each test runs on both parsers (``http_parser``, tests/frontend/conftest.py). Most serve a small recording
application with the front's protocol class, so raw bytes can be sent and exactly what the application saw
(or that it saw nothing) checked; the 2026-07-28 test goes through a whole guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import uvicorn

from guard_harness import make_settings, recorder_upstream, running_guard
from http_harness import http_front
from mcp_guard.frontend import http
from mcp_guard.frontend.slowloris import HeadLimits

pytestmark = pytest.mark.anyio

KEY = "parser-test-key-0123456789"


class Recorder:
    """An ASGI app that reads the whole body, then answers 200 with the headers it was given (as JSON)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # disconnected before the body ended: nothing is recorded
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        self.requests.append({"headers": headers, "body": body, "http_version": scope["http_version"]})
        payload = json.dumps(headers).encode()
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    """Serve ``app`` with the front's protocol class (the parser ``http_parser`` chose); yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    protocol = http.http_protocol(HeadLimits(head_timeout_s=30, max_pending=64, max_idle=512))
    config = uvicorn.Config(
        app,
        http=protocol,
        h11_max_incomplete_event_size=http.MAX_HEAD_BYTES,  # as the front configures h11
        lifespan="off",
        timeout_keep_alive=60,  # only the front's own guards close an idle connection within a test's deadlines
        log_level="warning",
        loop="none",
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                await anyio.sleep(0.01)
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
    sock.close()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``; everything the server answers until it closes the connection (bounded)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await s.send(raw)
        answer = b""
        with anyio.fail_after(10):
            try:
                while True:
                    answer += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return answer


def request(*headers: bytes, body: bytes = b"", start: bytes = b"POST /mcp HTTP/1.1") -> bytes:
    return b"\r\n".join([start, *headers, b"", body])


@pytest.mark.usefixtures("http_parser")
async def test_header_values_lose_their_optional_whitespace_at_both_ends() -> None:
    app = Recorder()
    raw = request(
        b"Host: 127.0.0.1",
        b"Mcp-Name: tools/call ",
        b"X-Tabs:\t\tv a l\t ",
        b"X-Lead:   lead",
        b"X-Empty:  \t ",
        b"Content-Length: 2 ",
        b"Connection: close",
        body=b"{}",
    )
    async with served(app) as port:
        answer = await exchange(port, raw)
    assert answer.startswith(b"HTTP/1.1 200")
    (seen,) = app.requests
    assert seen["body"] == b"{}"
    stripped = [["mcp-name", "tools/call"], ["x-tabs", "v a l"], ["x-lead", "lead"], ["x-empty", ""]]
    assert seen["headers"][1:5] == stripped


@pytest.mark.usefixtures("http_parser")
async def test_trailers_never_reach_the_application() -> None:
    """A chunked body's trailers come after the application has the headers: they are dropped, not added."""
    app = Recorder()
    chunked = b"3\r\nabc\r\n0\r\nAuthorization: Bearer late\r\nHost: evil.example\r\n\r\n"
    raw = request(b"Host: 127.0.0.1", b"Transfer-Encoding: chunked", b"Connection: close", body=chunked)
    async with served(app) as port:
        assert (await exchange(port, raw)).startswith(b"HTTP/1.1 200")
    (seen,) = app.requests
    assert seen["body"] == b"abc"
    assert [n for n, _ in seen["headers"]] == ["host", "transfer-encoding", "connection"]


# Requests h11 refuses that llhttp alone would take, or that a front proxy could frame differently from us.
REFUSED = {
    "two Content-Lengths": request(b"Host: a", b"Content-Length: 1", b"Content-Length: 2", body=b"ab"),
    "signed Content-Length": request(b"Host: a", b"Content-Length: +1", body=b"a"),
    "negative Content-Length": request(b"Host: a", b"Content-Length: -1"),
    "gzip, chunked": request(b"Host: a", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
    "two Transfer-Encodings": request(
        b"Host: a", b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"
    ),
    "unknown Transfer-Encoding": request(b"Host: a", b"Transfer-Encoding: xchunked"),
    "space before the colon": request(b"Host: a", b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
    "space in a name": request(b"Host: a", b"X Y: v"),
    "quote in a name": request(b"Host: a", b'X"Y: v'),
    "empty name": request(b"Host: a", b": v"),
    "NUL in a value": request(b"Host: a", b"X: a\x00b"),
    "CR in a value": request(b"Host: a", b"X: a\rb"),
    "continuation before the first header": request(b" Host: a"),
    "no Host": request(b"X: v"),
    "two Hosts": request(b"Host: 127.0.0.1", b"Host: evil.example"),
    "HTTP/0.9": b"GET /mcp\r\n\r\n",
    "bad method": request(b"Host: a", start=b"G@T /mcp HTTP/1.1"),
    "space in the target": request(b"Host: a", start=b"GET /m cp HTTP/1.1"),
    "bare LF after a chunk size": request(b"Host: a", b"Transfer-Encoding: chunked", body=b"1\na\r\n0\r\n\r\n"),
}


@pytest.mark.usefixtures("http_parser")
@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
async def test_an_ambiguous_or_malformed_request_is_refused_and_closed(raw: bytes) -> None:
    app = Recorder()
    async with served(app) as port:
        answer = await exchange(port, raw)  # returns once the server has closed the connection
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert app.requests == []


LOOSER_IN_H11 = {
    "Transfer-Encoding with Content-Length": request(
        b"Host: a", b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"
    ),
    "obs-fold": request(b"Host: a", b"X: v", b"  w"),
    "repeated equal Content-Length": request(b"Host: a", b"Content-Length: 1", b"Content-Length: 1", body=b"a"),
}


@pytest.mark.parametrize("raw", LOOSER_IN_H11.values(), ids=LOOSER_IN_H11.keys())
async def test_httptools_refuses_framings_h11_would_take(raw: bytes) -> None:
    """Stricter than h11 where RFC 9112 allows either (each a request smuggling vector: refusing is the safe side).
    The front's default parser, so no ``http_parser`` here."""
    assert http.guarded_httptools is not None  # httptools is a dependency
    app = Recorder()
    async with served(app) as port:
        answer = await exchange(port, raw)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert app.requests == []


@pytest.mark.usefixtures("http_parser")
async def test_a_head_up_to_the_cap_reaches_the_application_and_a_larger_one_is_refused() -> None:
    app = Recorder()
    fits = b"X-Big: " + b"a" * (http.MAX_HEAD_BYTES - 1024)
    too_big = b"X-Big: " + b"a" * (http.MAX_HEAD_BYTES + 512 * 1024)
    async with served(app) as port:
        answer = await exchange(port, request(b"Host: 127.0.0.1", fits, b"Connection: close"))
        assert answer.startswith(b"HTTP/1.1 200")
        assert len(app.requests) == 1 and len(app.requests[0]["headers"][1][1]) == http.MAX_HEAD_BYTES - 1024
        answer = await exchange(port, request(b"Host: 127.0.0.1", too_big, b"Connection: close"))
        assert answer.startswith(b"HTTP/1.1 400")  # and closed: exchange() returned
        many = [b"X-%d: %s" % (i, b"b" * 1000) for i in range((http.MAX_HEAD_BYTES + 512 * 1024) // 1000)]
        answer = await exchange(port, request(b"Host: 127.0.0.1", *many, b"Connection: close"))
        assert answer.startswith(b"HTTP/1.1 400")  # many small headers add up the same
    assert len(app.requests) == 1


@pytest.mark.usefixtures("http_parser")
async def test_endless_trailers_close_the_connection() -> None:
    app = Recorder()
    raw = request(b"Host: 127.0.0.1", b"Transfer-Encoding: chunked", body=b"1\r\na\r\n0\r\nX-Late: ")
    async with served(app) as port, await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(raw)
        with anyio.fail_after(20):
            try:
                while True:  # the trailer value never ends: the server closes once it passes the cap
                    await s.send(b"t" * 65536)
            except (anyio.BrokenResourceError, ConnectionResetError, BrokenPipeError):
                pass
    assert app.requests == []


async def answer_at_once(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that answers without reading the body (as the auth layer's 401, minus its ``Connection: close``)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.usefixtures("http_parser")
async def test_a_connection_answered_before_its_body_arrived_is_closed() -> None:
    """Else it would wait for the announced body for ever (uvicorn's keep-alive timeout only starts once the
    request is read)."""
    raw = request(b"Host: 127.0.0.1", b"Content-Length: 100000", body=b"{")
    async with served(answer_at_once) as port:
        answer = await exchange(port, raw)  # returns once the server has closed the connection
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")


async def test_an_upgrade_that_is_not_taken_is_answered_then_closed(http_parser: str) -> None:
    """llhttp stops parsing after an Upgrade request: the next one on the connection would be dropped unanswered,
    so the answer closes the connection (h11 reads on, and the next request is answered)."""
    app = Recorder()
    upgrade = request(b"Host: 127.0.0.1", b"Connection: Upgrade", b"Upgrade: h2c", start=b"GET /mcp HTTP/1.1")
    then = request(b"Host: 127.0.0.1", b"Connection: close", start=b"GET /next HTTP/1.1")
    async with served(app) as port:
        answer = await exchange(port, upgrade + then)
    first_head = answer.split(b"\r\n\r\n")[0].lower()
    assert first_head.startswith(b"http/1.1 200")
    if http_parser == "httptools":
        assert b"\r\nconnection: close" in first_head and answer.count(b"HTTP/1.1 200") == 1
    else:
        assert b"\r\nconnection: close" not in first_head and answer.count(b"HTTP/1.1 200") == 2


async def test_a_2026_request_whose_mcp_name_ends_in_a_space_is_served(http_parser: str) -> None:
    """The routing header checks compare ``Mcp-Name`` with the body after the parser dropped the header's optional
    whitespace: ``rec__echo `` names ``rec__echo`` on both parsers, while a different name is still refused."""
    settings = make_settings(
        {"rec": recorder_upstream()},
        principals={"alice": {"roles": ["support"], "api_key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}},
    )
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    }
    params = {"name": "rec__echo", "arguments": {"text": "hi"}, "_meta": meta}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()

    def call(name: bytes, port: int) -> bytes:
        return request(
            b"Host: 127.0.0.1:%d" % port,
            b"Authorization: Bearer " + KEY.encode(),
            b"Accept: application/json, text/event-stream",
            b"Content-Type: application/json",
            b"MCP-Protocol-Version: 2026-07-28 ",
            b"Mcp-Method: tools/call\t",
            b"Mcp-Name: " + name,
            b"Content-Length: %d" % len(body),
            b"Connection: close",
            body=body,
        )

    async with running_guard(settings) as guard, http_front(guard) as url:
        port = urlsplit(url).port
        assert port is not None
        served_answer = await exchange(port, call(b"rec__echo ", port))
        refused_answer = await exchange(port, call(b"rec__add ", port))
    assert served_answer.startswith(b"HTTP/1.1 200"), served_answer[:300]
    assert b'"hi"' in served_answer and b'"error"' not in served_answer
    assert refused_answer.startswith(b"HTTP/1.1 400") and b"-32020" in refused_answer, refused_answer[:300]
