"""Client sessions: who is connected, as whom, and how to reach them.

A :class:`DownstreamSession` is created the first time a client connection sends a request
(``initialize`` on the handshake era; every request is its own connection on the stateless 2026-07-28
era) and is kept on the SDK connection's per-connection state. Its end is registered on the connection's
exit stack, so ``session.end`` is recorded however the connection closes.

:class:`RequestChannel` is the :class:`~mcp_guard.channel.ClientChannel` of one handshake-era client
request: upstream→client traffic rides that request's own stream. :class:`RequestScopedChannel` is what
it shares with the input-required bridge's channel (log and progress on a client request, bounded).
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import RootModel, ValidationError

from mcp_guard.channel import (
    NOTIFY_TIMEOUT_S,
    REQUEST_TYPES,
    ClientMethod,
    capability_refusal,
    log_locally,
    missing_capability,
)
from mcp_guard.frontend.auth import principal_for
from mcp_guard.settings import Settings
from mcp_guard.types import Principal, SessionInfo, new_id

# logging/setLevel's levels, least severe first (RFC 5424 order, as MCP names them).
LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
)  # fmt: skip

__all__ = ["DownstreamSession", "RequestChannel", "RequestScopedChannel", "SessionTable", "principal_for"]

log = structlog.get_logger("mcp_guard.frontend")

_STATE_KEY = "mcp_guard.session"


class _RawResult(RootModel[dict[str, Any]]):
    """A client's result kept as it came (the SDK validates it against the method's result type first)."""


@dataclass(eq=False)
class DownstreamSession:
    """One client connection to mcp-guard (not to be confused with the SDK's client sessions upstream)."""

    info: SessionInfo
    principal: Principal  # who opened it; each request is decided on its own credentials (Handlers.principal_of)
    connection: Connection
    modern: bool
    calls: int = 0
    subscriptions: set[str] = field(default_factory=set)  # exposed resource URIs
    # logging/setLevel: relayed upstream log messages below it are dropped for this session (None: all pass).
    log_level: types.LoggingLevel | None = None

    @property
    def id(self) -> str:
        return self.info.id

    async def notify(self, fn: Callable[[Connection], Awaitable[None]]) -> None:
        """Send a standalone notification; a slow or gone client never blocks the caller for long."""
        if self.modern or not self.connection.has_standalone_channel:
            return
        with anyio.move_on_after(NOTIFY_TIMEOUT_S), contextlib.suppress(Exception):
            await fn(self.connection)


class SessionTable:
    """Live client sessions, for broadcast notifications and audit of start/end."""

    def __init__(
        self,
        settings: Settings,
        on_start: Callable[[DownstreamSession], None],
        on_end: Callable[[DownstreamSession], None],
    ) -> None:
        self._settings = settings
        self._on_start = on_start
        self._on_end = on_end
        self.live: dict[str, DownstreamSession] = {}
        # `run --workers N`: what this worker puts before the SDK's Mcp-Session-Id on the wire
        # (worker_sessions.session_prefix). A session's id is the one its client sees, so the audit rows, the
        # logs and the policy input name it as the client does; "" when the ids go out unchanged.
        self.id_prefix = ""

    def for_request(
        self, ctx: ServerRequestContext[Any, Any], transport: str, principal: Principal
    ) -> DownstreamSession:
        """The client session ``ctx`` belongs to, opened by ``principal`` if it is new."""
        sess = self.existing(ctx)
        return sess if sess is not None else self._open(_connection_of(ctx), transport, principal)

    @staticmethod
    def existing(ctx: ServerRequestContext[Any, Any]) -> DownstreamSession | None:
        """The client session ``ctx`` belongs to once :meth:`for_request` has opened it (None before): a request of a
        known session needs no principal to find it."""
        sess: DownstreamSession | None = _connection_of(ctx).state.get(_STATE_KEY)
        return sess

    def _open(self, conn: Connection, transport: str, principal: Principal) -> DownstreamSession:
        """A new client session on ``conn``, kept on its per-connection state (and, handshake era, in the table)."""
        params = conn.client_params
        client = params.client_info if params is not None else None
        modern = conn.protocol_version in MODERN_PROTOCOL_VERSIONS
        info = SessionInfo(
            id=self.id_prefix + conn.session_id if conn.session_id else new_id(),
            transport=transport,  # type: ignore[arg-type]
            client_name=client.name if client else None,
            client_version=client.version if client else None,
            stateless=modern,
        )
        sess = DownstreamSession(info=info, principal=principal, connection=conn, modern=modern)
        conn.state[_STATE_KEY] = sess
        if modern:
            # The session and its connection hold each other: let go when the request's connection closes, or each
            # request would leave a reference cycle (with the SDK's connection, ~18 objects) for the collector.
            conn.exit_stack.callback(conn.state.pop, _STATE_KEY, None)
        else:
            # Stateless requests are sessions of one request: not worth a start/end pair each.
            self.live[sess.id] = sess
            conn.exit_stack.callback(self._end, sess)
            self._on_start(sess)
        return sess

    def connection_of(self, sdk_session_id: str) -> Connection | None:
        """The SDK connection of the live session the SDK named ``sdk_session_id`` (the direct call path's lookup,
        mcp_guard.frontend.direct_call); None until the session has made a request through the handlers."""
        sess = self.live.get(self.id_prefix + sdk_session_id)
        return sess.connection if sess is not None else None

    def _end(self, sess: DownstreamSession) -> None:
        self.live.pop(sess.id, None)
        self._on_end(sess)

    async def broadcast(self, fn: Callable[[Connection], Awaitable[None]]) -> None:
        sessions = list(self.live.values())
        if not sessions:
            return
        async with anyio.create_task_group() as tg:
            for s in sessions:
                tg.start_soon(s.notify, fn)


class RequestScopedChannel(ABC):
    """Log and progress of an upstream, on the client request that is being served (if any).

    Both front channels send these the same way: on a request's own stream, at most
    :data:`~mcp_guard.channel.NOTIFY_TIMEOUT_S` per message, dropped (never raised) if the client is slow
    or gone. Subclasses say which request carries them now (:meth:`_carrier`).
    """

    channel_id: str
    principal_id: str

    @abstractmethod
    def _carrier(self) -> ServerRequestContext[Any, Any] | None:
        """The client request that carries log and progress now (None: there is none)."""

    def _log_level(self) -> types.LoggingLevel | None:
        """The least severe level the client asked for (logging/setLevel); None: every message."""
        return None

    async def notify_log(self, params: types.LoggingMessageNotificationParams) -> None:
        wanted = self._log_level()
        if wanted is not None and LOG_LEVELS.index(params.level) < LOG_LEVELS.index(wanted):
            return
        ctx = self._carrier()
        if ctx is None:  # a bridged call between rounds: no client request to carry it
            log_locally(params, call=self.channel_id)
            return
        with anyio.move_on_after(NOTIFY_TIMEOUT_S), contextlib.suppress(Exception), warnings.catch_warnings():
            # Relaying an upstream's log message is part of the 2025-11-25 protocol; deprecated in 2026-07-28 but
            # still allowed there (the SDK sends it only if the request opted in).
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await ctx.session.send_log_message(
                params.level, params.data, params.logger, related_request_id=ctx.request_id
            )

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        ctx = self._carrier()
        if ctx is None:
            return
        with anyio.move_on_after(NOTIFY_TIMEOUT_S), contextlib.suppress(Exception):
            await ctx.session.report_progress(progress, total, message)


class RequestChannel(RequestScopedChannel):
    """One in-flight handshake-era client request, as upstream→client traffic reaches it."""

    def __init__(self, session: DownstreamSession, ctx: ServerRequestContext[Any, Any], timeout_s: float) -> None:
        self.channel_id = session.id
        self.principal_id = session.principal.id
        self._modern = session.modern
        self._session = session
        self._ctx = ctx
        self._timeout_s = timeout_s

    @property
    def parked(self) -> bool:
        return False  # its request is being served for as long as the call is in flight

    def _carrier(self) -> ServerRequestContext[Any, Any] | None:
        return self._ctx

    def _log_level(self) -> types.LoggingLevel | None:
        return self._session.log_level

    async def request(
        self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | types.ErrorData:
        session = self._ctx.session
        if self._modern:
            # A 2026-07-28 request has no back channel. It meets this channel only when its client declared no
            # capability to answer anything (the input-required bridge then runs the call here, see
            # InputRequiredBridge.run): the question is refused as a round would refuse it.
            missing = missing_capability(method, params, session.client_capabilities)
            if missing is not None:
                log.info("bridge.capability_missing", call=self.channel_id, method=method, required=missing)
                return capability_refusal(method, missing)
        if self._modern or not session.can_send_request:
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"mcp-guard: the client's connection cannot carry {method} (no back channel on this "
                f"protocol era/transport)",
            )
        try:
            request = types.server_request_adapter.validate_python({"method": method, "params": params})
        except ValidationError as e:
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"mcp-guard: cannot relay {method}: {e}")
        try:
            answer = await session.send_request(
                request,
                _RawResult,
                request_read_timeout_seconds=self._timeout_s,
                metadata=ServerMessageMetadata(related_request_id=self._ctx.request_id),  # on this request's stream
            )
        except MCPError as e:
            return e.error
        except ValidationError as e:  # the SDK checks the client's result against the method's result type
            return REQUEST_TYPES[method].invalid(e)
        return answer.root


def _connection_of(ctx: ServerRequestContext[Any, Any]) -> Connection:
    """The SDK connection a request arrived on (its per-connection state, exit stack, standalone channel).

    The SDK (mcp 2.3.0) has no public accessor for it on a lowlevel handler's ``ServerRequestContext``:
    ``ServerSession`` keeps it private and only the (not yet constructed) ``Context`` exposes
    ``.connection``. This is the one place mcp-guard reads a private SDK attribute.
    """
    conn: Connection = ctx.session._connection
    return conn
