"""Slowloris on the HTTP front: half-sent request heads are closed, and there can only be so many at once.

Every test runs on both request parsers the front can be served on (``http_parser``, tests/frontend/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
from anyio.abc import SocketStream

from guard_harness import make_settings, recorder_upstream, running_guard
from http_harness import http_front

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("http_parser")]  # each test on httptools and on h11

PARTIAL = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"  # no blank line: unfinished
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@asynccontextmanager
async def front(tmp_path: Path, **server: object) -> AsyncIterator[tuple[str, int]]:
    settings = make_settings({"rec": recorder_upstream()}, server=server)
    async with running_guard(settings) as guard, http_front(guard) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


async def closed_by_server(stream: SocketStream) -> bool:
    """Read until the server closes (True) — the caller bounds the wait."""
    try:
        while await stream.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return True
    return True


async def healthz(host: str, port: int) -> bytes:
    async with await anyio.connect_tcp(host, port) as s:
        await s.send(HEALTH)
        return await s.receive()


async def test_forty_half_sent_heads_are_closed_after_the_head_timeout(tmp_path: Path) -> None:
    async with front(tmp_path, http_head_timeout_s=0.5) as (host, port):
        streams = [await anyio.connect_tcp(host, port) for _ in range(40)]
        for s in streams:
            await s.send(PARTIAL)
        with anyio.fail_after(10):  # a deadline, not a sleep: each is closed as soon as its head is late
            for s in streams:
                assert await closed_by_server(s)
        for s in streams:
            await s.aclose()
        with anyio.fail_after(10):
            assert (await healthz(host, port)).startswith(b"HTTP/1.1 200")


async def test_a_byte_at_a_time_does_not_keep_a_head_open(tmp_path: Path) -> None:
    async with front(tmp_path, http_head_timeout_s=0.5) as (host, port), await anyio.connect_tcp(host, port) as s:
        closed = anyio.Event()

        async def trickle() -> None:
            for b in PARTIAL:
                try:
                    await s.send(bytes([b]))
                except (anyio.BrokenResourceError, OSError):
                    return
                with anyio.move_on_after(0.1):
                    await closed.wait()  # paced trickle, cut short once the server has closed

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(trickle)
                assert await closed_by_server(s)
                closed.set()


async def test_idle_keep_alive_then_a_partial_head_is_closed(tmp_path: Path) -> None:
    async with front(tmp_path, http_head_timeout_s=0.5) as (host, port), await anyio.connect_tcp(host, port) as s:
        await s.send(HEALTH)
        with anyio.fail_after(10):
            assert (await s.receive()).startswith(b"HTTP/1.1 200")
            await s.send(b"GET /healthz HTTP/1.1\r\n")
            assert await closed_by_server(s)


async def test_more_half_open_connections_than_the_cap_close_the_oldest(tmp_path: Path) -> None:
    async with front(tmp_path, http_head_timeout_s=60, http_max_pending_heads=4) as (host, port):
        streams = []
        for _ in range(6):
            s = await anyio.connect_tcp(host, port)
            await s.send(PARTIAL)
            streams.append(s)
        with anyio.fail_after(10):  # far below the 60 s head timeout: closed for the cap
            assert await closed_by_server(streams[0])
            assert await closed_by_server(streams[1])
            assert (await healthz(host, port)).startswith(b"HTTP/1.1 200")  # a real client still gets in
        for s in streams:
            await s.aclose()


async def test_an_unauthenticated_request_with_an_unsent_body_is_closed_after_its_401(tmp_path: Path) -> None:
    """The head is complete, so the head timeout no longer applies; the 401 is the end of it."""
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    async with front(tmp_path, http_head_timeout_s=60) as (host, port), await anyio.connect_tcp(host, port) as s:
        await s.send(head)
        with anyio.fail_after(10):
            assert (await s.receive()).startswith(b"HTTP/1.1 401")
            assert await closed_by_server(s)


async def test_a_401_before_the_body_arrived_announces_the_close(tmp_path: Path) -> None:
    """Closed after its answer, and the answer says so: a keep-alive client must not send its next request
    into the closing connection (it would fail with a read error — what an OAuth client's discovery request
    right after the 401 did, now and then, before the header)."""
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    async with front(tmp_path, http_head_timeout_s=60) as (host, port), await anyio.connect_tcp(host, port) as s:
        await s.send(head)  # the body ("{}") is not sent: the 401 comes first
        with anyio.fail_after(10):
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await s.receive()
            response_head = answer.split(b"\r\n\r\n")[0].lower()
            assert response_head.startswith(b"http/1.1 401") and b"\r\nconnection: close" in response_head
            assert await closed_by_server(s)
