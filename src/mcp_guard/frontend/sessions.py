"""Client sessions: who is connected, as whom, and how to reach them.

A :class:`ClientSession` is created the first time a client connection sends a request (``initialize``
on the handshake era; every request is its own connection on the stateless 2026-07-28 era) and is
kept on the SDK connection's per-connection state. Its end is registered on the connection's exit
stack, so ``session.end`` is recorded however the connection closes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import mcp_types as types
import structlog
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

from mcp_guard.frontend.auth import principal_for
from mcp_guard.settings import Settings
from mcp_guard.types import Principal, SessionInfo, new_id

__all__ = ["ClientSession", "RequestDownstream", "SessionTable", "principal_for"]

log = structlog.get_logger("mcp_guard.frontend")

_STATE_KEY = "mcp_guard.session"
_NOTIFY_TIMEOUT_S = 5.0
_SAMPLING_RESULT: TypeAdapter[types.CreateMessageResult | types.CreateMessageResultWithTools] = TypeAdapter(
    cast(Any, types.CreateMessageResult | types.CreateMessageResultWithTools)
)


@dataclass(eq=False)
class ClientSession:
    info: SessionInfo
    principal: Principal
    connection: Connection
    modern: bool
    calls: int = 0
    subscriptions: set[str] = field(default_factory=set)  # exposed resource URIs

    @property
    def id(self) -> str:
        return self.info.id

    async def notify(self, fn: Callable[[Connection], Awaitable[None]]) -> None:
        """Send a standalone notification; a slow or gone client never blocks the caller for long."""
        if self.modern or not self.connection.has_standalone_channel:
            return
        with anyio.move_on_after(_NOTIFY_TIMEOUT_S), contextlib.suppress(Exception):
            await fn(self.connection)


class SessionTable:
    """Live client sessions, for broadcast notifications and audit of start/end."""

    def __init__(
        self,
        settings: Settings,
        on_start: Callable[[ClientSession], None],
        on_end: Callable[[ClientSession], None],
    ) -> None:
        self._settings = settings
        self._on_start = on_start
        self._on_end = on_end
        self.live: dict[str, ClientSession] = {}

    def for_request(self, ctx: ServerRequestContext[Any, Any], transport: str, principal_id: str) -> ClientSession:
        conn: Connection = ctx.session._connection
        existing = conn.state.get(_STATE_KEY)
        if existing is not None:
            sess: ClientSession = existing
            return sess
        params = conn.client_params
        client = params.client_info if params is not None else None
        modern = conn.protocol_version in MODERN_PROTOCOL_VERSIONS
        info = SessionInfo(
            id=conn.session_id or new_id(),
            transport=transport,  # type: ignore[arg-type]
            client_name=client.name if client else None,
            client_version=client.version if client else None,
        )
        sess = ClientSession(
            info=info, principal=principal_for(self._settings, principal_id), connection=conn, modern=modern
        )
        conn.state[_STATE_KEY] = sess
        if not modern:
            # Stateless requests are sessions of one request: not worth a start/end pair each.
            self.live[sess.id] = sess
            conn.exit_stack.callback(self._end, sess)
            self._on_start(sess)
        return sess

    def _end(self, sess: ClientSession) -> None:
        self.live.pop(sess.id, None)
        self._on_end(sess)

    async def broadcast(self, fn: Callable[[Connection], Awaitable[None]]) -> None:
        sessions = list(self.live.values())
        if not sessions:
            return
        async with anyio.create_task_group() as tg:
            for s in sessions:
                tg.start_soon(s.notify, fn)


class RequestDownstream:
    """One in-flight client request, as the registry sees it for upstream→client traffic."""

    def __init__(self, session: ClientSession, ctx: ServerRequestContext[Any, Any], timeout_s: float) -> None:
        self.session_id = session.id
        self.principal_id = session.principal.id
        self._session = session
        self._ctx = ctx
        self._timeout_s = timeout_s

    async def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any] | types.ErrorData:
        outbound = self._ctx.session._request_outbound
        if self._session.modern or not outbound.can_send_request:
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"mcp-guard: the client's connection cannot carry {method} (no back channel on this "
                f"protocol era/transport)",
            )
        try:
            return await outbound.send_raw_request(method, params, {"timeout": self._timeout_s})
        except MCPError as e:
            return e.error

    async def sampling(
        self, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        raw = await self._request(
            "sampling/createMessage", params.model_dump(by_alias=True, mode="json", exclude_none=True)
        )
        if isinstance(raw, types.ErrorData):
            return raw
        try:
            return _SAMPLING_RESULT.validate_python(raw, by_name=False)
        except ValueError as e:
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"client sent an invalid sampling result: {e}")

    async def elicitation(self, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        raw = await self._request(
            "elicitation/create", params.model_dump(by_alias=True, mode="json", exclude_none=True)
        )
        if isinstance(raw, types.ErrorData):
            return raw
        try:
            return types.ElicitResult.model_validate(raw, by_name=False)
        except ValueError as e:
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"client sent an invalid elicit result: {e}")

    async def list_roots(self) -> types.ListRootsResult | types.ErrorData:
        raw = await self._request("roots/list", {})
        if isinstance(raw, types.ErrorData):
            return raw
        try:
            return types.ListRootsResult.model_validate(raw, by_name=False)
        except ValueError as e:
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"client sent an invalid roots result: {e}")

    async def log_message(self, params: types.LoggingMessageNotificationParams) -> None:
        with anyio.move_on_after(_NOTIFY_TIMEOUT_S), contextlib.suppress(Exception), warnings.catch_warnings():
            # Forwarding an upstream's log message is part of the 2025-11-25 protocol, deprecated or not.
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await self._ctx.session.send_log_message(
                params.level, params.data, params.logger, related_request_id=self._ctx.request_id
            )
