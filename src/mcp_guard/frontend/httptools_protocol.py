"""The HTTP front's protocol on httptools (llhttp, C), held to what h11 guarantees the application.

httptools parses a request for ~0.2 ms less CPU than h11 (README §Benchmarks), but uvicorn's protocol over it
differs from the h11 one in ways the front depends on. :func:`guarded_httptools` makes a subclass that closes
those gaps:

* **Header values** lose their optional whitespace (SP / HTAB) at both ends, as h11 does (RFC 9110 §5.5):
  llhttp keeps trailing whitespace, which made a ``Mcp-Name: tool `` header disagree with its body.
* **Trailers** of a chunked body are dropped, as uvicorn's h11 protocol drops them: uvicorn's httptools
  protocol appends them to the headers the application already holds, after authentication has read them.
* **What h11 refuses and llhttp accepts** is refused here with the same 400 and close: a request without
  exactly one ``Host`` (HTTP/1.1; at most one for 1.0), a version other than 1.0 / 1.1 (llhttp takes
  ``GET /`` as HTTP/0.9), and a ``Transfer-Encoding`` other than one ``chunked`` (llhttp takes
  ``gzip, chunked``). llhttp already refuses the rest of the framing ambiguities (duplicate or listed
  ``Content-Length``, ``Transfer-Encoding`` with ``Content-Length``, obs-fold, bad names and control
  characters in values) — often stricter than h11, never looser (tests/frontend/test_http_parsers.py).
* **Head size**: llhttp has no limit of its own (an endless header would grow in memory). Bytes that have
  not yet made a head, a body piece or a message end (a head, or a chunked body's trailers) are capped at
  ``max_head_bytes``: more is answered 400 and the connection closed, like h11's
  ``max_incomplete_event_size``. The count is per read, so a head that begins in the same read as the end of
  a pipelined request before it is counted from the end of that read (at most one read, 256 KiB, later).
* An ``Upgrade`` or ``CONNECT`` request that is not a WebSocket upgrade is answered and the connection then
  closed: llhttp stops parsing after it, so anything the client sent next would be dropped unanswered.
* **Slowloris**: the same :class:`~mcp_guard.frontend.slowloris.HeadWatch` as the h11 protocol (head
  timeout incl. idle keep-alive, a cap on partial heads and another on idle connections, close after an
  answer given before the body).

Two additions, for speed:

* A response with a ``Content-Length`` (every JSON answer) goes out in one write, head and body together
  (:class:`_HeadWithBody`), where uvicorn writes the head and then the body — two ``send`` calls, two segments and
  two wake-ups of the client for each answer. Streams (chunked, SSE) write their head at once, as before.
* Each request's scope carries a :class:`LostHook` (``scope["extensions"][DISCONNECT_HOOK]``): the
  application can have a callback called when the request's client goes away, where an ASGI application otherwise
  keeps a task waiting on ``receive()`` for ``http.disconnect`` (the 2026-07-28 direct path did, one task per call).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# (imports httptools: without it this module does not import, and the front runs on h11)
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mcp_guard.frontend.modern_direct import DISCONNECT_HOOK
from mcp_guard.frontend.slowloris import HeadLimits, HeadWatch

__all__ = ["LostHook", "guarded_httptools"]

_OWS = b" \t"


class RefusedRequest(ValueError):
    """A request h11 would refuse: raised in a parser callback, so httptools fails the parse (uvicorn's 400)."""


def _check_head(headers: list[tuple[bytes, bytes]], http_version: str) -> None:
    """Refuse what h11 refuses and llhttp lets through (see the module docstring)."""
    if http_version not in ("1.1", "1.0"):
        raise RefusedRequest(f"unsupported HTTP version {http_version}")
    hosts = 0
    encodings: list[bytes] = []
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"transfer-encoding":
            encodings.append(value)
    if hosts > 1 or (hosts == 0 and http_version == "1.1"):
        raise RefusedRequest("a request needs exactly one Host header")
    if encodings and (len(encodings) > 1 or encodings[0].lower() != b"chunked"):
        raise RefusedRequest("only Transfer-Encoding: chunked is supported")


class _HeadWithBody:
    """The transport one request's :class:`RequestResponseCycle` writes to: the head of a response with a
    ``Content-Length`` (and a body to come) is held and written with the body's first piece, in one write.

    Everything else passes straight through: a ``100 Continue`` (written before the response starts), the head of
    a chunked or empty response, a HEAD request's head, every later write. A cycle that closes the connection with
    the head still held (its application failed after starting the answer) writes the head first, as it would
    have been written before.

    It lets go of its cycle once the head has gone through :meth:`write`: the cycle holds it as its transport, so
    holding the cycle for longer made each request a reference cycle that only the garbage collector could free —
    with the scope, its headers and the request's user, ~20 objects a request, collected in pauses of 20–75 ms
    every ~2,000 requests at 32 clients (a p99 ~20 ms higher)."""

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle: RequestResponseCycle | None = cycle  # None once the head went through write() (held or not)
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
            return
        cycle = self._cycle
        if cycle is not None and cycle.response_started:
            self._cycle = None
            if (
                cycle.chunked_encoding is False
                and cycle.expected_content_length > 0
                and cycle.scope["method"] != "HEAD"
            ):
                self._head = data
                return
        self._transport.write(data)

    def close(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class LostHook:
    """The :class:`~mcp_guard.frontend.modern_direct.DisconnectHook` of one connection: tells one of its requests
    that its client went away, without a task waiting on ``receive()``.

    One per connection, in every request's scope. :meth:`arm` registers a callback for the request whose scope it is
    given; it is called once, when the connection is lost with that request unanswered — exactly when uvicorn's
    ``receive()`` would return ``http.disconnect`` to a task waiting on it. :meth:`arm` refuses (False: wait on
    ``receive()`` as before) what it cannot watch the same way: a request that is not the connection's latest (a
    pipelined one behind it has arrived; uvicorn's disconnect reaches only the latest) or one already answered or
    disconnected.
    """

    __slots__ = ("_armed", "_protocol")

    def __init__(self, protocol: HttpToolsProtocol) -> None:
        self._protocol = protocol
        self._armed: tuple[RequestResponseCycle, Callable[[], None]] | None = None

    def arm(self, scope: Any, on_disconnect: Callable[[], None]) -> bool:
        """Call ``on_disconnect`` when the client of the request ``scope`` belongs to goes away (until :meth:`disarm`).

        ``scope`` may be a middleware's copy of the request's scope: they share its ``extensions``.
        """
        cycle = self._protocol.cycle
        if (
            cycle is None
            or cycle.scope.get("extensions") is not scope.get("extensions")
            or cycle.response_complete
            or cycle.disconnected
        ):
            return False
        self._armed = (cycle, on_disconnect)
        cycle.flow.resume_reading()  # as receive() does before it waits: a paused read would never see the close
        return True

    def disarm(self) -> None:
        """No callback any more (the request is answered, or its application no longer cares)."""
        self._armed = None

    def lost(self) -> None:
        """The connection is lost: the armed request's callback, if uvicorn marked that request disconnected."""
        armed = self._armed
        self._armed = None
        if armed is not None and armed[0].disconnected:
            armed[1]()


def guarded_httptools(limits: HeadLimits, max_head_bytes: int) -> type[HttpToolsProtocol]:
    """An :class:`HttpToolsProtocol` subclass that enforces ``limits`` and ``max_head_bytes`` and parses
    as h11 does (one class per served front)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _watch: HeadWatch
        _unparsed = 0  # bytes read since the last head end, body piece or message end
        _in_head = False  # headers being read (after them come the body and, chunked, the trailers)
        _unread: RequestResponseCycle | None = None  # the request whose body is still arriving
        _hook: LostHook

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch = HeadWatch(limits, self.loop, transport)
            self._watch.await_head(started=False)
            self._hook = LostHook(self)

        def data_received(self, data: bytes) -> None:
            self._unparsed += len(data)
            super().data_received(data)
            if self._unparsed > max_head_bytes and not self.transport.is_closing():
                self._refuse_oversized()
            if self._watch.awaiting:  # bytes came and the head is not complete (that ends the wait): pending now
                self._watch.head_started()

        def _refuse_oversized(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.send_400_response("Invalid HTTP request received.")  # what h11's size limit answers
            else:  # trailers too large while the application holds the request: nothing to answer in between
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]  # (uvicorn types extensions narrowly)
            scope.setdefault("extensions", {})[DISCONNECT_HOOK] = self._hook

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._in_head:  # (after the head: a trailer, dropped)
                super().on_header(name, value.strip(_OWS))

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._unparsed = 0
            self._watch.head_done()
            _check_head(self.headers, self.parser.get_http_version())
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is before:  # upgraded to a WebSocket: the connection is no longer ours
                return
            self._unread = self.cycle
            self.cycle.transport = _HeadWithBody(self.transport, self.cycle)  # type: ignore[assignment]
            if self.parser.should_upgrade():  # an Upgrade / CONNECT answered as a plain request
                self.cycle.keep_alive = False

        def on_body(self, body: bytes) -> None:
            self._unparsed = 0
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._unparsed = 0
            self._unread = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            unread = self._unread
            self._watch.answered(
                body_unread=unread is not None and unread.response_complete,
                finish=super().on_response_complete,
                idle=lambda: self.cycle is None or self.cycle.response_complete,
                started=lambda: self._in_head,  # a pipelined head begun in an earlier read
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._watch.head_done()
            super().connection_lost(exc)
            self._hook.lost()

    return GuardedHttpToolsProtocol
