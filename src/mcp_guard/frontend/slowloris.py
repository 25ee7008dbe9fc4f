"""Bounds on HTTP connections that have not finished sending a request head (slowloris).

uvicorn's protocols time out an idle keep-alive connection only until its first byte arrives, and nothing
bounds a request head sent one byte at a time, so a few dozen connections that never finish their headers
would hold sockets for ever. A :class:`HeadWatch` per connection (both HTTP parsers' protocol classes use
it: :func:`guarded_h11` here, :func:`mcp_guard.frontend.httptools_protocol.guarded_httptools`)

* closes a connection whose request head is not complete ``head_timeout_s`` after the connection opened
  or after its previous response ended (so idle keep-alive time counts too), and
* keeps at most ``max_pending`` connections with an incomplete head: one more closes the oldest of them
  (a real client's head arrives in milliseconds, so the oldest pending connection is the slow one).

A connection whose head is complete is the application's: unauthenticated requests are answered 401 at
once by the bearer-auth layer, and a connection answered before the body it announced arrived is closed
after the answer (uvicorn would wait for that body for ever), so they do not linger either; that answer
says ``Connection: close`` so a keep-alive client does not send its next request into the closing socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeadLimits", "HeadWatch", "guarded_h11"]

log = structlog.get_logger("mcp_guard.frontend")


@dataclass
class HeadLimits:
    """The limits and the connections waiting for a head now (insertion order = age)."""

    head_timeout_s: float
    max_pending: int
    pending: dict[HeadWatch, None] = field(default_factory=dict)
    closed_slow: int = 0  # connections closed for a late head (for tests and the log)
    evicted: int = 0  # connections closed to stay within max_pending
    closed_unread: int = 0  # connections closed after an answer given before their body arrived


class HeadWatch:
    """One connection's side of :class:`HeadLimits`: the parser-independent part of the guard.

    The protocol class says when a head starts being awaited (:meth:`await_head`), when it is complete
    (:meth:`head_done`) and when a response ended (:meth:`answered`); the watch keeps the timer, the
    pending set and the closing.
    """

    __slots__ = ("_limits", "_loop", "_timer", "_transport")

    def __init__(self, limits: HeadLimits, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._limits = limits
        self._loop = loop
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None

    @property
    def awaiting(self) -> bool:
        return self in self._limits.pending

    def await_head(self) -> None:
        """A request head is due from now on: bounded in time, and counted among the pending ones."""
        limits = self._limits
        if len(limits.pending) >= limits.max_pending:
            oldest = next(iter(limits.pending))
            limits.evicted += 1
            log.warning("http.pending_heads_full", limit=limits.max_pending)
            oldest.close()
        limits.pending[self] = None
        self._timer = self._loop.call_later(limits.head_timeout_s, self._late)

    def head_done(self) -> None:
        """The head is complete (or the connection is gone): no longer bounded here."""
        self._limits.pending.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def answered(self, *, body_unread: bool, finish: Callable[[], None], idle: Callable[[], bool]) -> None:
        """A response ended: ``finish`` is the protocol's own end-of-response step.

        Answered before its body arrived (a 401 to a request that announced a large body), the connection
        would wait for that body for ever: it has had its answer, so it is closed. Otherwise, once the
        protocol is ``idle`` (no request read but unanswered; a pipelined one may already be), the next head
        and the idle time before it are bounded too.
        """
        if body_unread and not self._transport.is_closing():
            self._limits.closed_unread += 1
            finish()
            self._transport.close()
            return
        finish()
        if not self._transport.is_closing() and idle():
            self.await_head()

    def close(self) -> None:
        self.head_done()
        if not self._transport.is_closing():
            self._transport.close()

    def _late(self) -> None:
        self._limits.closed_slow += 1
        log.info("http.head_timeout", timeout_s=self._limits.head_timeout_s)
        self.close()


def guarded_h11(limits: HeadLimits) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass that enforces ``limits`` (one instance per served front)."""

    class GuardedH11Protocol(H11Protocol):
        _watch: HeadWatch

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch = HeadWatch(limits, self.loop, transport)
            self._watch.await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._watch.awaiting and self.conn.their_state is not h11.IDLE:
                self._watch.head_done()

        def on_response_complete(self) -> None:
            self._watch.answered(
                body_unread=self.conn.their_state is h11.SEND_BODY,
                finish=super().on_response_complete,
                idle=lambda: self.conn.their_state is h11.IDLE,
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._watch.head_done()
            super().connection_lost(exc)

    return GuardedH11Protocol
