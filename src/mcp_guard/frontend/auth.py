"""Who is calling: HTTP API-key authentication, and one principal resolver per transport.

A request's principal is found in two steps: a *resolver* names the principal id for the transport
(:func:`stdio_principal` — whoever launched mcp-guard; :func:`http_principal` — whoever
:class:`BearerAuth` authenticated), and :func:`principal_for` turns that id into the configured
:class:`~mcp_guard.types.Principal` (roles, attributes).

HTTP front authentication: ``Authorization: Bearer <key>`` → a configured principal.

Keys are never stored: each ``[principals.<id>]`` may carry ``api_key_sha256``; a request's key is
hashed and compared with every configured digest in constant time (``hmac.compare_digest``, no early
exit), so timing reveals neither which principal matched nor how much of a digest did. An unknown,
missing or malformed key is answered ``401`` before any MCP processing and recorded (without the key).

On success the principal rides the ASGI scope as an ``AuthenticatedUser`` — the form the SDK's session
manager binds a session to, so another principal presenting that session's id is answered 404.
The client's ``Authorization`` header never goes further than this check: upstreams are reached
through mcp-guard's own client sessions, which never copy client headers (no token passthrough).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_guard.settings import Settings
from mcp_guard.types import Principal

__all__ = [
    "ANONYMOUS",
    "BearerAuth",
    "PrincipalResolver",
    "http_principal",
    "key_digest",
    "key_digests",
    "principal_for",
    "stdio_principal",
]

ANONYMOUS = "anonymous"

# The principal id of the client that sent a request, as its transport knows it.
PrincipalResolver = Callable[[ServerRequestContext[Any, Any]], str]


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_digests(settings: Settings) -> dict[str, str]:
    """principal id → sha256 of its API key, for every principal that has one (what :class:`BearerAuth` checks)."""
    return {pid: p.api_key_sha256 for pid, p in settings.principals.items() if p.api_key_sha256}


def principal_for(settings: Settings, principal_id: str) -> Principal:
    """The configured principal (roles, attributes); an unconfigured id gets no roles."""
    p = settings.principals.get(principal_id)
    if p is None:
        return Principal(id=principal_id)
    return Principal(id=principal_id, roles=tuple(p.roles), attributes=dict(p.attributes))


def stdio_principal(principal_id: str) -> PrincipalResolver:
    """A stdio client is whoever launched mcp-guard: one configured id for every request."""

    def resolve(_ctx: ServerRequestContext[Any, Any]) -> str:
        return principal_id

    return resolve


def http_principal(ctx: ServerRequestContext[Any, Any]) -> str:
    """The principal :class:`BearerAuth` put on the request's ASGI scope (``anonymous`` if none)."""
    request = ctx.request
    user = getattr(request, "scope", {}).get("user") if request is not None else None
    name = getattr(user, "username", None)
    return name if isinstance(name, str) and name else ANONYMOUS


class BearerAuth:
    def __init__(
        self,
        app: ASGIApp,
        digests: dict[str, str],
        *,
        on_reject: Callable[[str, str | None], None],
        required: bool = True,
        anonymous_principal: str = ANONYMOUS,
    ) -> None:
        """``digests`` maps principal id → sha256 hex of its API key."""
        self.app = app
        self._digests = [(pid, bytes.fromhex(d)) for pid, d in digests.items()]
        self._on_reject = on_reject
        self._required = required
        self._anonymous = anonymous_principal

    def _match(self, key: str) -> str | None:
        got = hashlib.sha256(key.encode()).digest()
        found: str | None = None
        for pid, want in self._digests:
            if hmac.compare_digest(got, want):
                found = pid
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for k, v in scope.get("headers") or []:
            if k.lower() == b"authorization":
                header = v.decode("latin-1")
                break
        principal: str | None = None
        if header is not None and header[:7].lower() == "bearer " and header[7:].strip():
            principal = self._match(header[7:].strip())
            if principal is None:
                self._on_reject("invalid_key", _client(scope))
                await _unauthorized(send, "invalid API key")
                return
        elif header is not None:
            self._on_reject("malformed_authorization", _client(scope))
            await _unauthorized(send, "Authorization must be 'Bearer <key>'")
            return
        elif self._required:
            self._on_reject("missing_key", _client(scope))
            await _unauthorized(send, "missing Authorization: Bearer <key>")
            return
        else:
            principal = self._anonymous
        scope["user"] = AuthenticatedUser(AccessToken(token="<redacted>", client_id=principal, scopes=[]))
        await self.app(scope, receive, send)


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


async def _unauthorized(send: Send, message: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="mcp-guard"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
