"""JSON responses unless the call streams, for 2025-11-25 (handshake-era) sessions over streamable HTTP.

The SDK's session transport answers every request POST either with an SSE stream (the default: headers at
once, each message an event, a ping task and a task group per request) or, in its JSON-response mode, with
one JSON body — which removes the request's back-channel for the whole server: no progress, no
upstream→client request (elicitation, sampling, roots) in the middle of a call. Neither is what a proxy
wants. Most calls stream nothing, and for them the SSE machinery is pure cost (about a millisecond of CPU
per call at 32 clients); a few stream, and they must keep working.

:class:`JsonFirstTransport` decides per request, after the fact — the protocol lets the server answer a POST
with either content type when the client accepts both (it must, on this era). The request is dispatched
with its back-channel open, exactly as in SSE mode, and the POST waits for the first message the session
routes to it:

* the request's own response (result or error, cancellations included) → one ``application/json`` body;
* anything else first (a progress or log notification related to the call, a server→client request) →
  ``text/event-stream`` from then on, that message as its first event, as the SDK would have sent it;
* nothing within :data:`JSON_WINDOW_S` → the same SSE stream, so a long call gets its headers and the
  stream's keep-alive pings as before (the 2026-07-28 transport of the SDK defers the same way).

Everything else — initialize, notifications and responses the client posts, a body that does not parse or
validate, an Accept header without both types, a session with an event store (resumable streams start with a
priming event) — is the SDK's own code path, unchanged.

A ``tools/call`` of an established session skips the session's dispatcher as well: :meth:`_answer_direct` runs it
in the POST's own task (:mod:`mcp_guard.frontend.direct_call`) and answers it the same way — one JSON body unless
the call sends the client something first or outlasts the window, then the same SSE stream.

It leans on these internals of ``mcp.server.streamable_http.StreamableHTTPServerTransport`` (mcp 2.3, pinned
``<2.4``): ``_handle_post_request`` (overridden), ``_read_stream_writer``, ``_request_streams``,
``_sse_stream_writers``, ``_event_store``, ``_check_content_type``, ``_validate_request_headers``,
``_create_session_message``, ``_create_json_response``, ``_create_error_response``, ``_run_sse_writer`` and
``_clean_up_memory_streams``, ``_write_stream``, ``terminate``;
and on ``StreamableHTTPSessionManager._admit_session`` / ``_server_instances`` / ``_session_owners`` /
``_lifespan_state``.
tests/frontend/test_json_first.py pins the behaviour (content type per case, the streamed events), so an SDK
release that moves them fails there, not in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any
from uuid import uuid4

import anyio
import pydantic_core
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_SSE,
    MCP_SESSION_ID_HEADER,
    REQUEST_CANCELLED,
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
)
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from mcp_guard.frontend.direct_call import DirectCalls, Ready, SessionConnections, Settled, Settlement
from mcp_guard.frontend.modern_direct import ModernDirect

__all__ = ["JSON_WINDOW_S", "JsonFirstSessionManager", "JsonFirstTransport"]

# How long a POST waits for its first message before it commits to SSE (so a slow call's client sees
# headers and pings instead of silence). The SDK's 2026-07-28 transport uses the same window.
JSON_WINDOW_S = 15.0

# The headers of a direct request's JSON answer, as Starlette's Response renders the SDK's (lowercased, latin-1).
_JSON_CONTENT_TYPE = (b"content-type", CONTENT_TYPE_JSON.encode("latin-1"))
_SESSION_ID_HEADER = MCP_SESSION_ID_HEADER.lower().encode("latin-1")

# (Accept, Content-Type) → whether a POST with them may be answered JSON-first (JsonFirstTransport._json_both_ways).
_JSON_BOTH_WAYS: dict[tuple[str, str], bool] = {}
_JSON_BOTH_WAYS_MAX = 256


@dataclass(frozen=True, slots=True)
class _Direct:
    """What a session transport needs to run calls directly: the front's :class:`DirectCalls` and the lifespan
    state the session manager hands its runners."""

    calls: DirectCalls
    lifespan_state: Callable[[], Any]


class JsonFirstTransport(StreamableHTTPServerTransport):
    """A session transport that answers a request POST with JSON unless the request streams (module docstring)."""

    def __init__(self, *args: Any, direct: _Direct | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct = direct  # None: every request through the session's dispatcher
        self._direct_scopes: set[anyio.CancelScope] = set()  # the direct calls in flight (cancelled at the end)

    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        message = await self._deferrable(request)
        if message is None:
            await super()._handle_post_request(scope, request, receive, send)
            return
        if not await self._validate_request_headers(request, send):  # session id: 400 / 404 as the SDK answers
            return
        direct = self._direct
        ready = None
        if direct is not None and self.mcp_session_id is not None:
            ready = direct.calls.ready(self.mcp_session_id, message, direct.lifespan_state())
        if ready is not None:
            await self._answer_direct(scope, request, receive, send, message, ready)
        else:
            await self._answer(scope, request, receive, send, message)

    async def terminate(self) -> None:
        for call in list(self._direct_scopes):
            call.cancel()  # as the session's dispatcher cancels its handlers when the session ends
        await super().terminate()

    async def _deferrable(self, request: Request) -> JSONRPCRequest | None:
        """The request this POST carries when it may be answered JSON-first; None leaves it to the SDK.

        Reads the body (Starlette keeps it, so the SDK's path reads the same bytes again); validation errors
        are not answered here: the SDK's path finds them again and answers them its own way.
        """
        if self._event_store is not None or self._read_stream_writer is None:
            return None
        if not self._json_both_ways(request):
            return None
        try:
            raw = pydantic_core.from_json(await request.body())
            message = JSONRPCRequest.model_validate(raw, by_name=False)
        except (ValueError, ValidationError):
            return None
        return None if message.method == "initialize" else message

    def _json_both_ways(self, request: Request) -> bool:
        """Whether the POST accepts JSON and SSE and carries JSON (the SDK's own checks), remembered per pair of header
        values: a client sends the same two on every request, and the checks are pure functions of them."""
        headers = request.headers
        key = (headers.get("accept", ""), headers.get("content-type", ""))
        verdict = _JSON_BOTH_WAYS.get(key)
        if verdict is None:
            has_json, has_sse = check_accept_headers(request)
            verdict = has_json and has_sse and self._check_content_type(request)
            if len(_JSON_BOTH_WAYS) < _JSON_BOTH_WAYS_MAX:  # (clients' values are few; a flood of new ones is not kept)
                _JSON_BOTH_WAYS[key] = verdict
        return verdict

    async def _answer(
        self, scope: Scope, request: Request, receive: Receive, send: Send, message: JSONRPCRequest
    ) -> None:
        """Dispatch the request with its back-channel open; answer JSON if its response comes first."""
        writer = self._read_stream_writer
        assert writer is not None  # checked by _deferrable
        request_id, framed = self._open_request(message, request)
        reader = self._request_streams[request_id][1]
        first: EventMessage | None = None
        try:
            await writer.send(framed)
            with anyio.move_on_after(JSON_WINDOW_S):
                first = await reader.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            # The session ended with this request in flight (terminated, idle-expired): no answer will come.
            await self._clean_up_memory_streams(request_id)
            await self._session_ended_answer()(scope, receive, send)
            return
        if first is not None and isinstance(first.message, JSONRPCResponse | JSONRPCError):
            await self._clean_up_memory_streams(request_id)
            await self._create_json_response(first.message)(scope, receive, send)
            return
        await self._stream(scope, receive, send, request_id, first)

    async def _answer_direct(
        self, scope: Scope, request: Request, receive: Receive, send: Send, message: JSONRPCRequest, ready: Ready
    ) -> None:
        """Run the request in this task (:mod:`mcp_guard.frontend.direct_call`); answer JSON unless it streams.

        The request's stream is registered, and the SSE answer started in a task of its own, only once the answer
        turns into a stream: when the call first sends the client something (before that message is routed here:
        everything the call sends goes through its dispatch context, which says so first) or when
        :data:`JSON_WINDOW_S` passes. Then its answer goes through the session's ordered write channel, behind what
        was sent before it, and the stream writer ends the response with it. A call that streams nothing — nearly
        every call — pays for neither the stream nor a task group (whose exit alone costs a turn of the event loop).
        """
        request_id = str(message.id)
        framed = self._frame(message, request, request_id)
        metadata = framed.metadata
        assert isinstance(metadata, ServerMessageMetadata)  # the transport frames every message with its own
        call = anyio.CancelScope()
        self._direct_scopes.add(call)
        streamer: asyncio.Task[None] | None = None

        def stream() -> None:
            nonlocal streamer
            if streamer is None:
                self._register(request_id)
                streamer = asyncio.get_running_loop().create_task(self._stream(scope, receive, send, request_id, None))

        window = asyncio.get_running_loop().call_later(JSON_WINDOW_S, stream)
        try:
            try:
                settlement = await DirectCalls.run(ready, message, metadata, call, stream)
            finally:
                window.cancel()
            if streamer is None:
                await self._send_json(settlement, message, scope, receive, send)
            else:
                await self._end_stream(settlement, metadata)
                await streamer  # the stream ends with the answer (or with the session)
        finally:
            self._direct_scopes.discard(call)
            if streamer is not None and not streamer.done():  # this POST was cancelled or failed: its stream ends too
                streamer.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait((streamer,))
                if not streamer.cancelled():
                    streamer.exception()  # (retrieved: the POST's own exception is the one that propagates)

    def _open_request(self, message: JSONRPCRequest, request: Request) -> tuple[str, SessionMessage]:
        """The request's stream id and the message framed as the SDK frames it, its stream registered (so the
        router routes what the session sends for it there)."""
        request_id = str(message.id)
        self._register(request_id)
        return request_id, self._frame(message, request, request_id)

    def _register(self, request_id: str) -> None:
        """Register the request's stream: the router routes what the session sends for the request there."""
        self._request_streams[request_id] = anyio.create_memory_object_stream[EventMessage](REQUEST_STREAM_BUFFER_SIZE)

    def _frame(self, message: JSONRPCRequest, request: Request, request_id: str) -> SessionMessage:
        """The message framed as the SDK frames it (its metadata: the HTTP request, the unanswered-request hook)."""
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
        return self._create_session_message(message, request, request_id, version)

    def _session_ended_answer(self) -> Any:
        """The answer to a request whose session ended before it was answered (the ASGI response to send)."""
        return self._create_error_response(
            "Session terminated before the request completed", HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR
        )

    async def _end_stream(self, settlement: Settlement, metadata: ServerMessageMetadata) -> None:
        """End a streamed direct answer through the ordered channel (what follows it in the stream ends it)."""
        try:
            answer = settlement.message
            if settlement.settled is Settled.ANSWERED and answer is not None and self._write_stream is not None:
                await self._write_stream.send(SessionMessage(answer))
            elif settlement.settled is Settled.UNANSWERED and metadata.on_request_unanswered is not None:
                await metadata.on_request_unanswered()  # REQUEST_CANCELLED, as for any cancelled request
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the session ended meanwhile: its streams (and this response's) are closed
        # Settled.CLOSED: the session's streams are closed, which ends the stream writer.

    async def _send_json(
        self, settlement: Settlement, message: JSONRPCRequest, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The JSON answer of a direct request that sent nothing before it: its result or error, or the transport's
        REQUEST_CANCELLED error for a request the client cancelled; a request whose session ended gets the SDK's
        answer for that.

        Sent as the two ASGI messages the SDK's ``_create_json_response`` would send (the same status, headers in
        the same order, the same body) without building a Starlette response for it.
        """
        answer = settlement.message if settlement.settled is Settled.ANSWERED else None
        if settlement.settled is Settled.UNANSWERED:  # what the transport answers a cancelled request with
            error = ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
            answer = JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
        if answer is None:
            await self._session_ended_answer()(scope, receive, send)
            return
        body = answer.model_dump_json(by_alias=True, exclude_unset=True).encode()
        headers = [_JSON_CONTENT_TYPE]
        if self.mcp_session_id:
            headers.append((_SESSION_ID_HEADER, self.mcp_session_id.encode("latin-1")))
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": HTTPStatus.OK, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, first: EventMessage | None
    ) -> None:
        """The rest of the request as the SDK's SSE response: ``first`` (if any) as its first event."""
        reader = self._request_streams[request_id][1]
        sse_writer, sse_reader = anyio.create_memory_object_stream[dict[str, Any]](0)
        self._sse_stream_writers[request_id] = sse_writer
        opening = self._create_event_data(first) if first is not None else None
        headers = {
            "Cache-Control": "no-cache, no-transform",
            "Connection": "keep-alive",
            "Content-Type": CONTENT_TYPE_SSE,
            **({MCP_SESSION_ID_HEADER: self.mcp_session_id} if self.mcp_session_id else {}),
        }
        response = EventSourceResponse(
            content=sse_reader,
            data_sender_callable=partial(self._run_sse_writer, request_id, sse_writer, reader, opening),
            headers=headers,
        )
        try:
            await response(scope, receive, send)
        finally:
            await sse_reader.aclose()


class JsonFirstSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, whose 2025-11-25 sessions get a :class:`JsonFirstTransport`.

    Session admission is the SDK's (the same limit, id format and owner binding); only the transport class
    differs. Stateless (2026-07-28) requests never reach a session transport: the SDK's own entry for them
    already answers JSON unless the call streams; with ``connections`` (the direct paths on), their
    ``tools/call`` is answered in its POST's task instead (:mod:`mcp_guard.frontend.modern_direct`).
    """

    def __init__(self, app: Server[Any], *, connections: SessionConnections | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._direct = (
            _Direct(DirectCalls(app, connections), lambda: self._lifespan_state) if connections is not None else None
        )
        self._modern = (
            ModernDirect(app, self.security_settings, lambda: self._lifespan_state)
            if connections is not None and not self.json_response
            else None
        )

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._modern is not None and self._task_group is not None and self._modern.takes(scope):
            await self._modern.handle(scope, receive, send)
            return
        await super()._handle_request(scope, receive, send)

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            return None
        transport = JsonFirstTransport(
            mcp_session_id=uuid4().hex,
            is_json_response_enabled=self.json_response,
            event_store=self.event_store,
            security_settings=self.security_settings,
            retry_interval=self.retry_interval,
            idle_timeout=self.session_idle_timeout,
            direct=self._direct,
        )
        session_id = transport.mcp_session_id
        assert session_id is not None
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = transport
        return transport
