"""Bounds on HTTP connections that have not finished sending a request head (slowloris).

uvicorn's protocols time out an idle keep-alive connection only until its first byte arrives, and nothing
bounds a request head sent one byte at a time, so a few dozen connections that never finish their headers
would hold sockets for ever. A :class:`HeadWatch` per connection (both HTTP parsers' protocol classes use
it: :func:`guarded_h11` here, :func:`mcp_guard.frontend.httptools_protocol.guarded_httptools`) sorts a
connection that owes a request head into one of two pools, each bounded in number with its own cap, and
bounds both in time alike:

* **Pending** (``max_pending``): bytes of the head have arrived, the head is not complete. A real client's
  head arrives within milliseconds of its first byte, so these are few, and each may hold a parser buffer
  of up to the front's head-size limit (megabytes): the cap is small, and one more closes the connection
  whose head *began* longest ago — the slow one. (Counted from the first byte, not from when the head was
  due: a keep-alive client that idled for seconds and then sends its request at full speed is not older
  than a slow head opened meanwhile.)
* **Idle** (``max_idle``): not a byte of the head yet — a connection between requests (keep-alive) and a
  brand-new one alike. Neither holds anything but a socket and the protocol object, and neither is a
  sign of an attack in itself: a pool of keep-alive clients is idle between calls, and a burst of clients
  that connect at once is accepted in one go before any of their requests is read, so counting either
  among the pending heads would close healthy connections as soon as there were more of them than the
  pending cap. New connections are not given a pool of their own because they are no cheaper to hold and
  no harder to make than idle ones (one unauthenticated ``GET /healthz`` turns a new connection into an
  idle keep-alive one): one cap for both bounds the sockets held without a request in flight, and one more
  closes the connection that has idled longest — never one partway through a head or a request.
* **Time** (``head_timeout_s``): the head must be complete that long after the connection opened or its
  previous response ended, idle time included, whatever the pool; the first byte moves a connection from
  idle to pending without restarting the clock.

A connection whose head is complete is the application's: unauthenticated requests are answered 401 at
once by the bearer-auth layer, and a connection answered before the body it announced arrived is closed
after the answer (uvicorn would wait for that body for ever), so they do not linger either; that answer
says ``Connection: close`` so a keep-alive client does not send its next request into the closing socket.
Closing an idle keep-alive connection (its timeout, or its cap) can cross a request the client is sending
at that instant; HTTP clients retry an idempotent request that meets a closed idle connection, and the
same race exists with every server's keep-alive timeout.
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
    """The limits and the connections waiting for a head now, in two pools (insertion order = age)."""

    head_timeout_s: float
    max_pending: int
    max_idle: int
    pending: dict[HeadWatch, None] = field(default_factory=dict)  # partway through a head
    idle: dict[HeadWatch, None] = field(default_factory=dict)  # not a byte of the head yet (new or keep-alive)
    closed_slow: int = 0  # connections closed for a late head (for tests and the log)
    evicted: int = 0  # pending heads closed to stay within max_pending
    evicted_idle: int = 0  # idle connections closed to stay within max_idle
    closed_unread: int = 0  # connections closed after an answer given before their body arrived


class HeadWatch:
    """One connection's side of :class:`HeadLimits`: the parser-independent part of the guard.

    The protocol class says when a head starts being awaited (:meth:`await_head`), when its first bytes
    arrive (:meth:`head_started`), when it is complete (:meth:`head_done`) and when a response ended
    (:meth:`answered`); the watch keeps the timer, the pools and the closing.
    """

    __slots__ = ("_limits", "_loop", "_pool", "_timer", "_transport")

    def __init__(self, limits: HeadLimits, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._limits = limits
        self._loop = loop
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None
        self._pool: dict[HeadWatch, None] | None = None  # the pool this connection is counted in

    @property
    def awaiting(self) -> bool:
        return self._pool is not None

    def await_head(self, *, started: bool) -> None:
        """A request head is due from now on: bounded in time, and counted among the idle connections or,
        when bytes of it are already in (``started``: a pipelined head read with the previous request), the
        pending ones."""
        self._timer = self._loop.call_later(self._limits.head_timeout_s, self._late)
        self._join(started=started)

    def head_started(self) -> None:
        """Bytes of the awaited head arrived: an idle connection becomes a pending head (same deadline)."""
        limits = self._limits
        if self._pool is limits.idle and not self._transport.is_closing():
            del limits.idle[self]
            self._join(started=True)

    def head_done(self) -> None:
        """The head is complete (or the connection is gone): no longer bounded here."""
        if self._pool is not None:
            self._pool.pop(self, None)
            self._pool = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def answered(
        self,
        *,
        body_unread: bool,
        finish: Callable[[], None],
        idle: Callable[[], bool],
        started: Callable[[], bool],
    ) -> None:
        """A response ended: ``finish`` is the protocol's own end-of-response step.

        Answered before its body arrived (a 401 to a request that announced a large body), the connection
        would wait for that body for ever: it has had its answer, so it is closed. Otherwise, once the
        protocol is ``idle`` (no request read but unanswered; a pipelined one may already be), the next head
        and the idle time before it are bounded too — as a pending head if ``started`` (bytes of it were
        read with the previous request), else as an idle connection.
        """
        if body_unread and not self._transport.is_closing():
            self._limits.closed_unread += 1
            finish()
            self._transport.close()
            return
        finish()
        if not self._transport.is_closing() and idle():
            self.await_head(started=started())

    def close(self) -> None:
        self.head_done()
        if not self._transport.is_closing():
            self._transport.close()

    def _join(self, *, started: bool) -> None:
        """Count this connection in its pool, first closing the pool's oldest when it is full."""
        limits = self._limits
        pool, cap = (limits.pending, limits.max_pending) if started else (limits.idle, limits.max_idle)
        if len(pool) >= cap:
            oldest = next(iter(pool))
            if started:
                limits.evicted += 1
                log.warning("http.pending_heads_full", limit=cap)
            else:
                limits.evicted_idle += 1
                log.warning("http.idle_connections_full", limit=cap)
            oldest.close()
        pool[self] = None
        self._pool = pool

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
            self._watch.await_head(started=False)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._watch.awaiting:
                return
            if self.conn.their_state is h11.IDLE:  # (h11 holds an incomplete head back: still IDLE)
                self._watch.head_started()
            else:
                self._watch.head_done()

        def on_response_complete(self) -> None:
            self._watch.answered(
                body_unread=self.conn.their_state is h11.SEND_BODY,
                finish=super().on_response_complete,
                idle=lambda: self.conn.their_state is h11.IDLE,
                started=lambda: bool(self.conn.trailing_data[0]),  # bytes of the next head, read but held back
            )

        def connection_lost(self, exc: Exception | None) -> None:
            self._watch.head_done()
            super().connection_lost(exc)

    return GuardedH11Protocol
