"""A stdio session's ``tools/call`` started as its line is read (issue #19: the lean call path, stdio front).

Through the SDK alone, a request read off the client's stdin crosses two tasks and a memory stream before its handler
runs: the era loop's relay task (``serve_dual_era_loop``: it replays the opening request, then relays every later
message into a memory stream with its sender's context), the dispatcher's read loop (``JSONRPCDispatcher.run``),
which spawns an anyio task for the request in its task group; that task runs the ``ServerRunner`` and writes the
answer. For one sequential client that plumbing cost ~0.1 ms of proxy CPU per call.

:class:`StdioDirect` wraps the read stream the SDK's loop reads (:class:`DirectReads`): a ``tools/call`` that
:meth:`~mcp_guard.frontend.direct_call.DirectCalls.ready` accepts is registered in the session dispatcher's
in-flight table as the dispatcher registers its own, then run in a plain asyncio task of its own (the sender's
context copied, as the dispatcher copies it) with the SDK's ``ServerRunner.on_request``
(:class:`~mcp_guard.frontend.direct_call.Started`): the same validation, request context, handler, result shaping
and error mapping. The answer goes to the session's write stream as the dispatcher writes it. Everything else — the
handshake, listings, notifications, the client's answers to our requests, a request carrying the 2026-07-28
envelope (which the legacy loop refuses) — is passed on to the SDK's loop unchanged. So:

* concurrent requests stay concurrent (a task per request, as the dispatcher spawns one), and answers are written
  when their handlers finish, in the same stream, as before;
* the client's ``notifications/cancelled`` reaches the dispatcher, which finds the request in its in-flight table and
  cancels its scope: it then settles unanswered, as the dispatcher settles it;
* progress and log notifications, and requests to the client (elicitation, sampling, roots), go through the session's
  dispatcher as before; the client's answers reach it through the SDK's loop;
* when the client's stream ends, the calls still running are cancelled (the dispatcher cancels its own handlers
  then) and each answers ``CONNECTION_CLOSED`` as the dispatcher's do, before the write stream closes
  (:class:`DirectWrites` waits for them, bounded).

Which session: the connection is found in the front's session table once a request of the session has been through
the handlers (the first ``tools/call`` or listing takes the SDK's path), by the write stream its dispatcher writes to
— ``JSONRPCDispatcher._write_stream``, one more private attribute of the SDK (mcp 2.3, pinned ``<2.4``) beside those
:mod:`mcp_guard.frontend.direct_call` lists. tests/frontend/test_stdio_direct.py runs every case on both paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import anyio
import structlog
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.runner import _has_modern_envelope
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import CONNECTION_CLOSED, ErrorData, JSONRPCError, JSONRPCRequest

from mcp_guard.frontend.direct_call import DIRECT_METHODS, DirectCalls, Settled, Started
from mcp_guard.streams import LineReadStream, LineWriteStream

__all__ = ["DirectReads", "DirectWrites", "StdioDirect"]

log = structlog.get_logger("mcp_guard.frontend")

SHUTDOWN_WRITE_TIMEOUT_S = 2.0
"""How long a call cancelled by the session's end may take to write its ``CONNECTION_CLOSED`` (the dispatcher's
bound on the same write), and how long the write stream's close waits for the calls to end."""


class LiveSessions(Protocol):
    """The front's session table: the sessions that have made a request through the handlers."""

    @property
    def live(self) -> dict[str, Any]: ...


def _nothing() -> None:
    return None


class StdioDirect:
    """The direct path of one stdio stream pair: which messages it takes, its calls in flight (module docstring)."""

    def __init__(
        self, server: Server[Any], sessions: LiveSessions, writes: WriteStream[SessionMessage], lifespan_state: Any
    ) -> None:
        self._sessions = sessions
        self._writes = writes
        self._lifespan_state = lifespan_state
        self._conn: Connection | None = None
        self._calls = DirectCalls(server, self)
        self._running: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self._ended = False

    def connection_of(self, sdk_session_id: str) -> Connection | None:
        """This stream pair's SDK connection (``sdk_session_id`` is unused: a stdio session has none)."""
        if self._conn is None:
            self._conn = _writing_to(self._writes, (s.connection for s in list(self._sessions.live.values())))
        return self._conn

    def take(self, item: SessionMessage | Exception) -> bool:
        """Start ``item`` here when it is a request the direct path runs; False passes it on to the SDK's loop."""
        if self._ended or not isinstance(item, SessionMessage):
            return False
        message = item.message
        if not isinstance(message, JSONRPCRequest) or message.method not in DIRECT_METHODS:
            return False
        if _has_modern_envelope(message.params):
            return False  # the legacy loop refuses it (INVALID_REQUEST): the SDK answers it
        ready = self._calls.ready("", message, self._lifespan_state)
        if ready is None:
            return False
        scope = anyio.CancelScope()
        started = DirectCalls.start(ready, message, item.metadata, scope, _nothing)
        task = asyncio.get_running_loop().create_task(self._answer(started))  # the reader's context, copied
        self._running[task] = scope
        task.add_done_callback(self._running.pop)
        return True

    def end(self) -> None:
        """The client's stream ended: cancel the calls still running (the dispatcher cancels its handlers then)."""
        self._ended = True
        for scope in self._running.values():
            scope.cancel()

    async def drained(self) -> None:
        """Wait (bounded, shielded) until every call has ended and written what it writes."""
        if not self._running:
            return
        with anyio.move_on_after(SHUTDOWN_WRITE_TIMEOUT_S * 2, shield=True):
            await asyncio.wait(list(self._running))

    async def _answer(self, started: Started) -> None:
        """Run one call and write its answer as ``JSONRPCDispatcher._handle_request`` writes it."""
        settlement = await started.finish()
        if settlement.settled is Settled.ANSWERED and settlement.message is not None:
            await self._write(settlement.message)
        elif settlement.settled is Settled.CLOSED:
            error = JSONRPCError(
                jsonrpc="2.0",
                id=started.message.id,
                error=ErrorData(code=CONNECTION_CLOSED, message="Connection closed"),
            )
            with anyio.move_on_after(SHUTDOWN_WRITE_TIMEOUT_S, shield=True) as bound:
                await self._write(error)
            if bound.cancelled_caught:
                log.warning("stdio_direct.shutdown_write_blocked", request_id=started.message.id)
        else:
            await _settle_unanswered(started)

    async def _write(self, message: Any) -> None:
        try:
            await self._writes.send(SessionMessage(message=message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            log.debug("stdio_direct.answer_dropped", reason="write stream closed")


async def _settle_unanswered(started: Started) -> None:
    """The transport's hook for a request settled with no answer, as the dispatcher runs it (stdio has none)."""
    metadata = started.dctx.message_metadata
    if isinstance(metadata, ServerMessageMetadata) and metadata.on_request_unanswered is not None:
        try:
            await metadata.on_request_unanswered()
        except Exception:
            log.exception("stdio_direct.unanswered_hook_raised")


def _writing_to(writes: object, connections: Iterable[Connection]) -> Connection | None:
    """The connection whose dispatcher writes to ``writes``: the one this stream pair serves."""
    for conn in connections:
        if getattr(conn.outbound, "_write_stream", None) is writes:
            return conn
    return None


class DirectReads(LineReadStream):
    """The read stream the SDK's loop reads: what :meth:`StdioDirect.take` takes never reaches it."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], direct: StdioDirect) -> None:
        self._inner = inner
        self._direct = direct

    async def receive(self) -> SessionMessage | Exception:
        take = self._direct.take
        try:
            while True:
                item = await self._inner.receive()
                if not take(item):
                    return item
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._direct.end()
            raise

    async def aclose(self) -> None:
        self._direct.end()
        await self._inner.aclose()


class DirectWrites(LineWriteStream):
    """The write stream the SDK's loop writes: its close waits for the direct calls' last writes, as the
    dispatcher closes its write stream only after its handlers have ended."""

    def __init__(self, inner: WriteStream[SessionMessage]) -> None:
        self._inner = inner
        self.direct: StdioDirect | None = None

    async def send(self, item: SessionMessage) -> None:
        await self._inner.send(item)

    async def aclose(self) -> None:
        if self.direct is not None:
            self.direct.end()
            await self.direct.drained()
        await self._inner.aclose()
