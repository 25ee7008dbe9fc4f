"""Bounds on HTTP connections that have not finished sending a request head (slowloris).

uvicorn's h11 protocol times out an idle keep-alive connection only until its first byte arrives, and
nothing bounds a request head sent one byte at a time, so a few dozen connections that never finish their
headers would hold sockets for ever. :func:`guarded_h11` makes a protocol class that

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
from dataclasses import dataclass, field
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeadLimits", "guarded_h11"]

log = structlog.get_logger("mcp_guard.frontend")


@dataclass
class HeadLimits:
    """The limits and the connections waiting for a head now (insertion order = age)."""

    head_timeout_s: float
    max_pending: int
    pending: dict[Any, None] = field(default_factory=dict)
    closed_slow: int = 0  # connections closed for a late head (for tests and the log)
    evicted: int = 0  # connections closed to stay within max_pending
    closed_unread: int = 0  # connections closed after an answer given before their body arrived


def guarded_h11(limits: HeadLimits) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass that enforces ``limits`` (one instance per served front)."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self in limits.pending and self.conn.their_state is not h11.IDLE:
                self._head_done()

        def on_response_complete(self) -> None:
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                # Answered before its body arrived (a 401 to a request that announced a large body): the
                # connection would wait for that body for ever. It has had its answer; close it.
                limits.closed_unread += 1
                super().on_response_complete()
                self.transport.close()
                return
            super().on_response_complete()
            # (a pipelined request may already have been read by the call above: its head is complete)
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_head()  # the next request's head (and the idle time before it) is bounded too

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            if len(limits.pending) >= limits.max_pending:
                oldest = next(iter(limits.pending))
                limits.evicted += 1
                log.warning("http.pending_heads_full", limit=limits.max_pending)
                oldest._close_slow()
            limits.pending[self] = None
            self._head_timer = self.loop.call_later(limits.head_timeout_s, self._head_late)

        def _head_done(self) -> None:
            limits.pending.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            limits.closed_slow += 1
            log.info("http.head_timeout", timeout_s=limits.head_timeout_s)
            self._close_slow()

        def _close_slow(self) -> None:
            self._head_done()
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
