"""A 2026-07-28 (stateless) ``tools/call`` answered in its own POST's task (issue #19: the lean call path).

The SDK's modern entry (``mcp.server._streamable_http_modern.handle_modern_request``) answers a stateless POST in
SSE mode (mcp-guard's: the client may be sent progress and log notifications) by spawning a task group with two
tasks — one runs the handler and feeds a zero-buffer memory stream, one waits for the client to disconnect —
while the POST's task reads the stream to decide between one JSON body and an SSE stream. Measured at 32 clients
that plumbing, with the two tasks the input-required bridge spawns per call (``frontend/input_required.py``),
put a 2026-07-28 call at ~1.5 ms of proxy CPU against ~0.9 ms for the same call on a 2025-11-25 session.

:class:`ModernDirect` runs the same steps in the POST's task, each by the SDK's own function, in the SDK's order:
the transport-security check, the Accept check, the body's parse and envelope validation, the duplicated-routing-
header check, the classifier's ladder, the ``Mcp-Param-*`` check, the request's ``Connection`` built from its
envelope, ``serve_one`` (the SDK's ``ServerRunner``: validation, the request context, the handler, the result's
shape) and ``_to_jsonrpc_response`` (its error mapping), answered by its ``_write`` (JSON with the table-mapped
status) or its ``_sse_event`` frames. What differs is only where things wait:

* Streaming: the dispatch context (:class:`_DirectDispatchContext`, the SDK's single-exchange context) writes a
  notification the handler sends (progress the client asked for, a log line) straight to the response: the first
  one commits ``text/event-stream`` with the SDK's headers, later ones and the answer follow as events. A call
  silent for :data:`PING_INTERVAL_S` commits the same stream and gets the SDK's keep-alive comment every interval
  of silence (a timer starts that writer only then).
* Client disconnect: the handler's scope is cancelled when the client goes away, as the SDK's watcher cancels its
  task group (a 2026-07-28 client cancels a call by closing the stream); nothing more is sent then. The front's
  httptools protocol says so with a callback (a :class:`DisconnectHook`: its
  :class:`~mcp_guard.frontend.httptools_protocol.LostHook`, called when ``receive()`` would return
  ``http.disconnect``); where it cannot (h11, a pipelined request) one plain asyncio task waits on ``receive()``
  for ``http.disconnect``, cancelled as soon as the handler returns.
* The per-request back-channel stays closed (``send_raw_request`` raises ``NoBackChannelError``): upstream
  questions become ``InputRequiredResult`` rounds in the handler, unchanged.

Which requests (:meth:`ModernDirect.takes`): a POST whose ``MCP-Protocol-Version`` header names a modern version,
whose ``Mcp-Method`` header is ``tools/call`` (the classifier refuses a body that disagrees, as on the SDK's path),
on a manager in SSE mode. Everything else keeps ``handle_modern_request``.

SDK internals it leans on (mcp 2.3, pinned ``<2.4``), all of ``mcp.server._streamable_http_modern`` unless said:
``_SingleExchangeDispatchContext`` (subclassed), ``_to_jsonrpc_response``, ``_write``, ``_write_rejection``,
``_sse_event``, ``_SSE_HEADERS``, ``_SSE_PING_INTERVAL``, ``_INVALID_BODY``, ``_is_notification_shaped``,
``_acknowledge_notification``, ``_mcp_param_rejection``; ``mcp.server.runner.serve_one`` (its four lines, in
:func:`_serve_one`, and ``ServerRunner.on_request`` a cached property);
``mcp.shared.inbound.classify_inbound_request`` / ``find_duplicated_routing_header``;
``StreamableHTTPSessionManager._handle_request`` / ``_lifespan_state`` / ``json_response`` (in
:mod:`mcp_guard.frontend.json_first`). tests/frontend/test_modern_direct.py runs every case on both paths and
compares the bodies and audit rows, so a release that moves them fails there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import anyio
from mcp.server._streamable_http_modern import (
    _INVALID_BODY,
    _SSE_HEADERS,
    _SSE_PING_INTERVAL,
    _acknowledge_notification,
    _is_notification_shaped,
    _mcp_param_rejection,
    _SingleExchangeDispatchContext,
    _sse_event,
    _to_jsonrpc_response,
    _write,
    _write_rejection,
)
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.runner import ServerRunner, aclose_shielded
from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.dispatcher import CallOptions
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    HEADER_MISMATCH,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mcp_guard.frontend.asgi_headers import first_header

__all__ = ["DIRECT_MODERN_METHODS", "DISCONNECT_HOOK", "PING_INTERVAL_S", "DisconnectHook", "ModernDirect"]

DIRECT_MODERN_METHODS = frozenset({"tools/call"})
"""The methods answered directly: the hot path. Listings, reads and ``server/discover`` keep the SDK's entry."""

PING_INTERVAL_S = _SSE_PING_INTERVAL
"""Silence after which a call's answer commits to SSE, and between its keep-alive comments (the SDK's value)."""

DISCONNECT_HOOK = "mcp_guard.disconnect_hook"
"""The key, in a request's ``scope["extensions"]``, of the front's :class:`DisconnectHook` (where it offers one)."""


class DisconnectHook(Protocol):
    """What a front offers to tell a request that its client went away without a task waiting on ``receive()``
    (the httptools front's: :class:`mcp_guard.frontend.httptools_protocol.LostHook`)."""

    def arm(self, scope: Scope, on_disconnect: Callable[[], None]) -> bool:
        """Call ``on_disconnect`` once when ``receive()`` would return ``http.disconnect`` to the request of
        ``scope`` (until :meth:`disarm`); False when it cannot watch this request so (then wait on ``receive()``)."""
        ...

    def disarm(self) -> None:
        """No callback any more."""
        ...


_PING = b": ping\r\n\r\n"
_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.encode("ascii")
_METHOD_HEADER = MCP_METHOD_HEADER.encode("ascii")


class _Response:
    """One POST's answer, written in order by whoever has something to send: JSON until an event commits SSE.

    The handler's notifications and the keep-alive timer may both write; a lock keeps their frames whole and in
    the order they were sent. ``closed`` (the client went away) drops everything after it.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = asyncio.Lock()
        self.streaming = False
        self.closed = False
        self.last_write = time.monotonic()

    async def event(self, frame: bytes) -> None:
        """Write one SSE frame, committing ``text/event-stream`` (the SDK's headers) first if nothing was sent."""
        async with self._lock:
            if self.closed:
                return
            if not self.streaming:
                self.streaming = True
                await self._send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await self._send({"type": "http.response.body", "body": frame, "more_body": True})
            self.last_write = time.monotonic()

    async def finish(self, answer: JSONRPCResponse | JSONRPCError, scope: Scope, receive: Receive) -> None:
        """The answer: the stream's last event once streaming, else one JSON body (the SDK's ``_write``)."""
        async with self._lock:
            if self.closed:
                return
            if self.streaming:
                await self._send({"type": "http.response.body", "body": _sse_event(answer), "more_body": False})
            else:
                await _write(answer, scope, receive, self._send)


@dataclass
class _DirectDispatchContext(_SingleExchangeDispatchContext):
    """The SDK's single-exchange dispatch context, its notifications written straight to the POST's answer.

    The SDK's own ``notify`` frames and sends through its ``sink`` (a memory stream read by the POST's task); here
    the handler's task writes the same frame itself. ``progress`` and the closed back-channel are the SDK's.
    """

    response: _Response | None = field(default=None, kw_only=True)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None) -> None:
        if self.response is None:
            return
        body = dict(params) if params is not None else None
        await self.response.event(_sse_event(JSONRPCNotification(jsonrpc="2.0", method=method, params=body)))


class ModernDirect:
    """The direct path of one HTTP front for stateless requests: which it takes, and answering one."""

    def __init__(
        self, app: Server[Any], security: TransportSecuritySettings | None, lifespan_state: Callable[[], Any]
    ) -> None:
        self._app = app
        self._security = TransportSecurityMiddleware(security)
        self._lifespan_state = lifespan_state

    def takes(self, scope: Scope) -> bool:
        """Whether this request is answered here (module docstring); False leaves it to the SDK's modern entry."""
        if scope.get("method") != "POST":
            return False
        version = first_header(scope, _VERSION_HEADER)
        if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            return False
        return first_header(scope, _METHOD_HEADER) in DIRECT_MODERN_METHODS

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``handle_modern_request`` for a POST :meth:`takes` accepted (SSE mode), in this task."""
        request = Request(scope, receive)
        err = await self._security.validate_request(request, is_post=True)
        if err is not None:
            await err(scope, receive, send)
            return
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse):
            await Response(status_code=406)(scope, receive, send)
            return
        read = await self._request(request, scope, receive, send)
        if read is not None:
            await self._classified(request, *read, scope, receive, send)

    async def _request(
        self, request: Request, scope: Scope, receive: Receive, send: Send
    ) -> tuple[Any, JSONRPCRequest] | None:
        """The body as the SDK reads it (decoded, validated); None when it was answered already (a parse error, a
        notification, a batch)."""
        body = await request.body()
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            rej = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error"))
            await _write(rej, scope, receive, send)
            return None
        if _is_notification_shaped(decoded):
            await _acknowledge_notification(decoded, request, scope, receive, send)
            return None
        try:
            req = JSONRPCRequest.model_validate(decoded)
        except ValidationError:
            await _write(_INVALID_BODY, scope, receive, send)
            return None
        return decoded, req

    async def _classified(
        self, request: Request, decoded: Any, req: JSONRPCRequest, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The SDK's header checks and ladder, then the call; each refusal answered as the SDK answers it."""
        items = request.headers.items()  # decoded once: each lookup in Starlette's Headers scans the raw list
        duplicated = find_duplicated_routing_header(items)
        if duplicated is not None:
            message = f"{duplicated} header appears more than once"
            rejection = InboundLadderRejection(code=HEADER_MISMATCH, message=message)
            await _write_rejection(rejection, req.id, scope, receive, send)
            return
        verdict = classify_inbound_request(decoded, headers=_first_values(items))
        if isinstance(verdict, InboundLadderRejection):
            await _write_rejection(verdict, req.id, scope, receive, send)
            return
        lifespan_state = self._lifespan_state()
        param_rejection = await _mcp_param_rejection(self._app, request, req, verdict, lifespan_state)
        if param_rejection is not None:
            await _write_rejection(param_rejection, req.id, scope, receive, send)
            return
        envelope = (verdict.protocol_version, verdict.client_info, verdict.client_capabilities)
        connection = Connection.from_envelope(*envelope)
        response = _Response(send)
        dctx = _DirectDispatchContext(
            transport=TransportContext(kind="streamable-http", can_send_request=False, headers=request.headers),
            request_id=req.id,
            message_metadata=ServerMessageMetadata(request_context=request),
            progress_token=progress_token_from_params(req.params),
            response=response,
        )
        call = _serve_one(self._app, dctx, req.method, req.params, connection, lifespan_state)
        answer = await _until_disconnect(_to_jsonrpc_response(req.id, call), scope, receive, response)
        if answer is not None:
            await response.finish(answer, scope, receive)


async def _serve_one(
    app: Server[Any],
    dctx: _DirectDispatchContext,
    method: str,
    params: Mapping[str, Any] | None,
    connection: Connection,
    lifespan_state: Any,
) -> dict[str, Any]:
    """The SDK's ``serve_one`` — a ``ServerRunner`` for the request, its ``on_request``, the connection's exit stack
    closed (shielded) on the way out — with the runner's cached ``on_request`` dropped afterwards.

    Why: ``on_request`` is a cached property holding a bound method of its runner, so a runner that answered a
    request refers to itself; with its connection and the request's session that is a reference cycle of ~15 objects
    per request, freed only by the garbage collector — in pauses that grow with the load (tens of ms at 32 clients).
    Dropping the cached method leaves nothing for the collector."""
    runner = ServerRunner(app, connection, lifespan_state)
    try:
        return await runner.on_request(dctx, method, params)
    finally:
        runner.__dict__.pop("on_request", None)
        await aclose_shielded(connection)


async def _until_disconnect(
    answering: Any, request_scope: Scope, receive: Receive, response: _Response
) -> JSONRPCResponse | JSONRPCError | None:
    """Await ``answering`` (the call and its error mapping); None when the client disconnected first.

    The SDK's watcher (a task in the request's task group) becomes the front's disconnect callback, or where the front
    offers none one plain asyncio task waiting on ``receive()``; either cancels the call's scope. The keep-alive writer
    is a task started by a timer only once the call has been silent for :data:`PING_INTERVAL_S`. All end with the call.
    """
    loop = asyncio.get_running_loop()
    scope = anyio.CancelScope()
    hook: DisconnectHook | None = (request_scope.get("extensions") or {}).get(DISCONNECT_HOOK)
    watchers: list[asyncio.Task[None]] = []
    if hook is None or not hook.arm(request_scope, partial(_disconnected, scope, response)):
        hook = None
        watchers.append(loop.create_task(_watch_disconnect(receive, scope, response)))
    pinger: list[asyncio.Task[None]] = []

    def start_pinging() -> None:
        pinger.append(loop.create_task(_keep_alive(response)))

    timer = loop.call_later(PING_INTERVAL_S, start_pinging)
    answer: JSONRPCResponse | JSONRPCError | None = None
    try:
        with scope:
            answer = await answering
    finally:
        timer.cancel()
        if hook is not None:
            hook.disarm()
        tasks = (*watchers, *pinger)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    return None if scope.cancelled_caught else answer


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope, response: _Response) -> None:
    """Cancel the call when its client goes away (the SDK's ``watch_disconnect``)."""
    while (await receive()).get("type") != "http.disconnect":
        pass
    _disconnected(scope, response)


def _disconnected(scope: anyio.CancelScope, response: _Response) -> None:
    """The client went away: nothing more is sent, and the call is cancelled."""
    response.closed = True
    scope.cancel()


async def _keep_alive(response: _Response) -> None:
    """Commit the SSE stream and send the SDK's keep-alive comment after every :data:`PING_INTERVAL_S` of silence."""
    while not response.closed:
        while (wait := response.last_write + PING_INTERVAL_S - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)  # (a deadline that moves with every write: nothing to wait on but time)
        await response.event(_PING)


def _first_values(items: list[tuple[str, str]]) -> dict[str, str]:
    """``dict(request.headers)`` from the header list decoded once: each name's first value, names in order of
    first appearance. ``dict()`` of Starlette's ``Headers`` looks every name up again (a scan of the raw list
    each, ~900 bytecodes a request)."""
    first: dict[str, str] = {}
    for name, value in items:
        first.setdefault(name, value)
    return first
