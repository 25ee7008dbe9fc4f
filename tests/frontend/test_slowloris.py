"""Slowloris on the HTTP front: half-sent request heads are closed, and there can only be so many at once;
connections with no byte of a request yet (new, or idle keep-alive) have a cap of their own.

Every test runs on both request parsers the front can be served on (``http_parser``, tests/frontend/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
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
HEALTH_START, HEALTH_REST = HEALTH[:23], HEALTH[23:]  # the request line; the rest of the head
OK = b"HTTP/1.1 200 OK"


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


@asynccontextmanager
async def connections(host: str, port: int, n: int) -> AsyncIterator[list[SocketStream]]:
    """``n`` connections, opened in order, closed at the end whatever happened."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(await anyio.connect_tcp(host, port)) for _ in range(n)]


async def exchange(s: SocketStream, request: bytes = HEALTH) -> bytes:
    """Send ``request`` (or its end) and read the whole response, so ``s`` can carry the next: its status line."""
    await s.send(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += await s.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {name.lower(): value for name, _, value in (line.partition(b":") for line in lines[1:])}
    length = int(fields[b"content-length"])
    while len(body) < length:
        body += await s.receive()
    return lines[0]


async def make_pending(s: SocketStream) -> None:
    """Leave ``s`` partway through a head the server has certainly read: the head is pipelined behind a request
    whose answer the server sends only after reading both (one write)."""
    assert await exchange(s, HEALTH + HEALTH_START) == OK


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


async def test_a_connection_that_never_sends_a_byte_is_closed_after_the_head_timeout(tmp_path: Path) -> None:
    async with front(tmp_path, http_head_timeout_s=0.5) as (host, port), await anyio.connect_tcp(host, port) as s:
        with anyio.fail_after(10):
            assert await closed_by_server(s)


async def test_more_idle_keep_alive_clients_than_the_pending_cap_all_stay_served(tmp_path: Path) -> None:
    """Between requests a keep-alive connection has sent no byte of a head: it is not a pending head."""
    async with (
        front(tmp_path, http_head_timeout_s=60, http_max_pending_heads=4) as (host, port),
        connections(host, port, 12) as streams,
    ):
        with anyio.fail_after(10):
            for s in streams:
                assert await exchange(s) == OK
            for s in streams:  # all twelve idled at once, three times the pending cap
                assert await exchange(s) == OK


async def test_more_silent_new_connections_than_the_pending_cap_are_all_served(tmp_path: Path) -> None:
    """Clients that connect at once are accepted before any request is read: not pending heads either."""
    async with (
        front(tmp_path, http_head_timeout_s=60, http_max_pending_heads=4) as (host, port),
        connections(host, port, 12) as streams,
    ):
        with anyio.fail_after(10):
            for s in streams:
                assert await exchange(s) == OK


async def test_idle_connections_over_their_cap_close_the_oldest_idle_one_not_a_pending_head(tmp_path: Path) -> None:
    server = {"http_head_timeout_s": 60, "http_max_pending_heads": 4, "http_max_idle_connections": 3}
    async with front(tmp_path, **server) as (host, port), AsyncExitStack() as stack:
        with anyio.fail_after(10):
            partial = await stack.enter_async_context(await anyio.connect_tcp(host, port))
            await make_pending(partial)
            idle = []
            for _ in range(5):  # each connects, is served and idles before the next connects
                idle.append(await stack.enter_async_context(await anyio.connect_tcp(host, port)))
                assert await exchange(idle[-1]) == OK
            assert await closed_by_server(idle[0])
            assert await closed_by_server(idle[1])
            for s in idle[2:]:
                assert await exchange(s) == OK
            assert await exchange(partial, HEALTH_REST) == OK  # the oldest connection, but mid-head: kept


async def test_silent_new_connections_over_the_idle_cap_close_the_oldest(tmp_path: Path) -> None:
    server = {"http_head_timeout_s": 60, "http_max_idle_connections": 3}
    async with front(tmp_path, **server) as (host, port), connections(host, port, 5) as streams:
        with anyio.fail_after(10):
            assert await closed_by_server(streams[0])
            assert await closed_by_server(streams[1])
            for s in streams[2:]:
                assert await exchange(s) == OK


async def test_partial_heads_over_the_cap_close_the_oldest_partial_head_not_an_idle_connection(tmp_path: Path) -> None:
    async with (
        front(tmp_path, http_head_timeout_s=60, http_max_pending_heads=1) as (host, port),
        connections(host, port, 2) as idle,
        connections(host, port, 2) as partial,
    ):
        with anyio.fail_after(10):
            for s in idle:
                assert await exchange(s) == OK
            await make_pending(partial[0])
            await make_pending(partial[1])
            assert await closed_by_server(partial[0])
            for s in idle:
                assert await exchange(s) == OK
            assert await exchange(partial[1], HEALTH_REST) == OK


async def test_a_keep_alive_client_starting_its_next_head_is_younger_than_a_head_begun_meanwhile(
    tmp_path: Path,
) -> None:
    """Age among pending heads counts from a head's first byte, not from the end of the previous response:
    the client that idled and then sends at full speed is not the slow one."""
    async with (
        front(tmp_path, http_head_timeout_s=60, http_max_pending_heads=1) as (host, port),
        connections(host, port, 1) as [keep_alive],
    ):
        with anyio.fail_after(10):
            assert await exchange(keep_alive) == OK  # idle from now on
            slow = await anyio.connect_tcp(host, port)
            await make_pending(slow)  # a head begun after keep_alive's became due
            await keep_alive.send(HEALTH_START)
            assert await closed_by_server(slow)
            await slow.aclose()
            assert await exchange(keep_alive, HEALTH_REST) == OK
