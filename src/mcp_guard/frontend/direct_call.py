"""A 2025-11-25 session's ``tools/call`` run in its own POST's task (issue #19: the lean call path).

Through the SDK alone, a request POST of a streamable-HTTP session crosses three tasks and three memory streams
before it is answered: the session transport hands the message to the session's dispatcher (its read loop), the
dispatcher spawns a task for the request that runs the ``ServerRunner`` (validation, the request context, the
handler, the result's shape) and writes the answer to the session's write stream, and the transport's message
router routes it to the POST waiting for it. At 32 concurrent clients that plumbing cost about 0.3 ms of proxy
CPU per call — more than the policy decision, both audit rows or the state transaction.

:class:`DirectCalls` does the dispatcher's part for one request in the POST's own task and runs the SDK's own
``ServerRunner.on_request`` for it: the same validation, the same ``ServerRequestContext`` (its session is the
SDK's ``ServerSession`` on a dispatch context of the session's own dispatcher), the same handler, the same result
shaping and error mapping. What the request does is unchanged; only the hops go:

* The back-channel is the SDK's: a log or progress notification for the call, or a request to the client
  (elicitation, sampling, roots) goes through the session's dispatcher and is routed to this POST by the
  transport as before. The first such message (:attr:`DirectContext.on_send`) tells the POST to answer with an
  SSE stream from then on; the answer then follows through the same ordered channel, behind what was sent
  before it. The client's answers to those requests reach the dispatcher as before.
* The request is registered in the dispatcher's in-flight table as the dispatcher registers its own, so the
  client's ``notifications/cancelled`` cancels it (it then settles unanswered, and the transport answers
  ``REQUEST_CANCELLED`` as it does for any cancelled request); the transport cancels it when the session ends.
* Errors map as the dispatcher maps them: an ``MCPError`` is its error, a pydantic ``ValidationError``
  ``INVALID_PARAMS``, anything else code 0 with the exception's text (and a log line).

Which requests (:meth:`DirectCalls.ready`): ``tools/call`` on a session whose SDK connection is known to
mcp-guard (it has made a request through the SDK path before: the session table holds it), has finished its
handshake, speaks the handshake era and is driven by the SDK's ``JSONRPCDispatcher``, on a server without SDK
middleware (mcp-guard's has none; one added later, such as the SDK's OpenTelemetry span, is kept on the path it was
written for). Everything else takes the SDK's path (:mod:`mcp_guard.frontend.json_first`).

SDK internals it leans on (mcp 2.3, pinned ``<2.4``): ``mcp.shared.jsonrpc_dispatcher._JSONRPCDispatchContext``
(subclassed, so the request context is the SDK's own), ``_InFlight`` and ``JSONRPCDispatcher._in_flight``.
tests/frontend/test_direct_call.py pins the behaviour against the SDK's path, so a release that moves them fails
there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import anyio
import structlog
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.runner import ServerRunner
from mcp.shared.dispatcher import CallOptions, coerce_request_id
from mcp.shared.jsonrpc_dispatcher import (
    JSONRPCDispatcher,
    _InFlight,
    _JSONRPCDispatchContext,
    handler_exception_to_error_data,
    progress_token_from_params,
)
from mcp.shared.message import MessageMetadata, ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import ErrorData, JSONRPCError, JSONRPCRequest, JSONRPCResponse
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

__all__ = [
    "DIRECT_METHODS",
    "DirectCalls",
    "DirectContext",
    "Ready",
    "SessionConnections",
    "Settled",
    "Settlement",
    "Started",
]

log = structlog.get_logger("mcp_guard.frontend")

DIRECT_METHODS = frozenset({"tools/call"})
"""The methods run directly: the hot path. Listings, reads and the rest are rare enough to keep the SDK's path."""

_RUNNER_KEY = "mcp_guard.direct_runner"  # in the SDK connection's per-connection state


class SessionConnections(Protocol):
    """Where the SDK connection of a live session is found (the front's session table)."""

    def connection_of(self, sdk_session_id: str) -> Connection | None:
        """The connection of the session the SDK named ``sdk_session_id``; None when mcp-guard does not know it."""
        ...


def _nothing() -> None:
    return None


@dataclass
class DirectContext(_JSONRPCDispatchContext[TransportContext]):
    """The SDK's dispatch context for one request, which says when the request first sends the client anything.

    ``on_send`` is called before the first notification or request goes out for this request (and again before
    later ones: it must be idempotent), so the POST can commit to an SSE answer before that message is routed to it.
    """

    on_send: Callable[[], None] = _nothing

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        if not self._closed:
            self.on_send()
        await super().notify(method, params, opts)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        if self.can_send_request:
            self.on_send()
        return await super().send_raw_request(method, params, opts)


class Settled(Enum):
    """How a direct request ended (the transport answers each its own way)."""

    ANSWERED = "answered"  # a result or an error for the client: :attr:`Settlement.message`
    UNANSWERED = "unanswered"  # the client cancelled it: it gets the transport's REQUEST_CANCELLED
    CLOSED = "closed"  # the session ended under it


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a direct request ended, and its answer when it has one."""

    settled: Settled
    message: JSONRPCResponse | JSONRPCError | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """A request :meth:`DirectCalls.ready` accepted: the session's runner and dispatcher."""

    runner: ServerRunner[Any]
    dispatcher: JSONRPCDispatcher[Any]


class DirectCalls:
    """The direct path of one HTTP front: which requests take it, and running one (module docstring)."""

    def __init__(self, server: Server[Any], connections: SessionConnections) -> None:
        self._server = server
        self._connections = connections

    def ready(self, sdk_session_id: str, message: JSONRPCRequest, lifespan_state: Any) -> Ready | None:
        """The session's runner and dispatcher when ``message`` may run directly; None leaves it to the SDK."""
        if message.method not in DIRECT_METHODS or self._server.middleware:
            return None
        conn = self._connections.connection_of(sdk_session_id)
        if conn is None or not conn.initialize_accepted or conn.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        dispatcher = conn.outbound
        if not isinstance(dispatcher, JSONRPCDispatcher):
            return None
        runner = conn.state.get(_RUNNER_KEY)
        if runner is None:  # one per connection, as the SDK keeps one per connection
            runner = conn.state[_RUNNER_KEY] = ServerRunner(self._server, conn, lifespan_state)
        return Ready(runner, dispatcher)

    @staticmethod
    async def run(
        ready: Ready,
        message: JSONRPCRequest,
        metadata: MessageMetadata,
        scope: anyio.CancelScope,
        on_send: Callable[[], None],
    ) -> Settlement:
        """Run ``message`` as the dispatcher runs a request (``JSONRPCDispatcher._handle_request``), in this task.

        ``scope`` is the request's cancel scope: the dispatcher cancels it for the client's
        ``notifications/cancelled``, the transport when the session ends.
        """
        return await DirectCalls.start(ready, message, metadata, scope, on_send).finish()

    @staticmethod
    def start(
        ready: Ready,
        message: JSONRPCRequest,
        metadata: MessageMetadata,
        scope: anyio.CancelScope,
        on_send: Callable[[], None],
    ) -> Started:
        """Register ``message`` in the dispatcher's in-flight table now (as the dispatcher does when it reads it,
        before it reads the next message: a ``notifications/cancelled`` behind it finds it); :meth:`Started.finish`
        runs it."""
        dispatcher = ready.dispatcher
        dctx = DirectContext(
            transport=TransportContext(kind="jsonrpc", can_send_request=_can_send_request(metadata)),
            _dispatcher=dispatcher,
            _request_id=message.id,
            message_metadata=metadata,
            _progress_token=progress_token_from_params(message.params),
            on_send=on_send,
        )
        key = coerce_request_id(message.id)
        dispatcher._in_flight[key] = _InFlight(scope=scope, dctx=dctx)
        return Started(ready, message, scope, dctx)


@dataclass(slots=True)
class Started:
    """A direct request registered in its dispatcher's in-flight table, not yet run."""

    ready: Ready
    message: JSONRPCRequest
    scope: anyio.CancelScope
    dctx: DirectContext

    async def finish(self) -> Settlement:
        """Run the request to its settlement (the dispatcher's ``_handle_request``, less its writes)."""
        dispatcher, message, dctx = self.ready.dispatcher, self.message, self.dctx
        key = coerce_request_id(message.id)
        try:
            with self.scope:
                try:
                    result = await self.ready.runner.on_request(dctx, message.method, message.params)
                finally:
                    dctx.close()  # the back-channel ends with the handler, as the dispatcher ends it
                    if (entry := dispatcher._in_flight.get(key)) is not None and entry.dctx is dctx:
                        del dispatcher._in_flight[key]
                if not dctx.cancel_requested.is_set():
                    return Settlement(Settled.ANSWERED, JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result))
        except Exception as e:
            if not dctx.cancel_requested.is_set():
                return Settlement(Settled.ANSWERED, JSONRPCError(jsonrpc="2.0", id=message.id, error=_error_of(e)))
        if dctx.cancel_requested.is_set():
            return Settlement(Settled.UNANSWERED)
        return Settlement(Settled.CLOSED)  # the scope was cancelled, and not by the client: the session ended


def _can_send_request(metadata: MessageMetadata) -> bool:
    """Whether the request's transport has room for a request to the client: the SDK's default transport builder's
    rule (a duplex pipe unless the transport's metadata says otherwise)."""
    return metadata.can_send_request if isinstance(metadata, ServerMessageMetadata) else True


def _error_of(e: Exception) -> ErrorData:
    """The wire error of a handler's exception, as the SDK's dispatcher writes it."""
    error = handler_exception_to_error_data(e)
    if error is None:
        log.exception("direct_call.handler_raised")
        error = ErrorData(code=0, message=str(e))  # the dispatcher's own catch-all (it keeps code 0 for v1 compat)
    return error
