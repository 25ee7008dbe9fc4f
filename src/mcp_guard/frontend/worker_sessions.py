"""Session ids that name their worker (``mcp-guard run --workers N``, :mod:`mcp_guard.workers`).

Workers share one listening socket, so the kernel — not the session — decides which worker a connection
reaches. This ASGI wrapper makes that visible instead of silent: the ``Mcp-Session-Id`` a worker hands
out is ``w<index>-<id>``; a request carrying its own prefix has it stripped (the SDK's session manager sees
the id it made); one carrying another worker's prefix is answered 404 with a JSON-RPC error naming that
worker — the status a 2025-11-25 client already treats as "session expired, initialise again" — rather
than "session not found" for a session that does exist, one process over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["WorkerSessions", "session_prefix"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER = b"mcp-session-id"
_PREFIX = re.compile(rb"^w(\d+)-")


def session_prefix(index: int) -> str:
    """What worker ``index`` puts before the SDK's session id: the id a client sees is this plus the SDK's.

    The audit records the same (:attr:`~mcp_guard.frontend.sessions.SessionTable.id_prefix`), so an operator
    can match a row to the ``Mcp-Session-Id`` the client holds."""
    return f"w{index}-"


class WorkerSessions:
    """ASGI middleware: worker ``index`` prefixes the session ids it issues and only accepts its own."""

    def __init__(self, app: App, index: int) -> None:
        self._app = app
        self._index = index
        self._mine = session_prefix(index).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        for i, (name, value) in enumerate(headers):
            if name.lower() != _HEADER:
                continue
            other = _PREFIX.match(value)
            if other is not None and value[: other.end()] != self._mine:
                await self._refuse(send, int(other.group(1)))
                return
            if other is not None:
                headers[i] = (name, value[other.end() :])
                scope = dict(scope, headers=headers)
            break
        await self._app(scope, receive, self._prefixing(send))

    def _prefixing(self, send: Send) -> Send:
        async def prefixed(message: Message) -> None:
            if message.get("type") == "http.response.start":
                message["headers"] = [
                    (k, self._mine + v if k.lower() == _HEADER else v) for k, v in message.get("headers") or []
                ]
            await send(message)

        return prefixed

    async def _refuse(self, send: Send, owner: int) -> None:
        text = (
            f"Session not found: it belongs to worker {owner} of this mcp-guard, and this connection reached "
            f"worker {self._index} (workers share the port; keep a session on one connection, route on "
            "Mcp-Session-Id in a load balancer, or run --workers 1)"
        )
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": text}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
