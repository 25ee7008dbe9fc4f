"""Console logins: sessions in the shared session store, with an expiry and a CSRF token per session.

A person logs in to the console once with an API key or an access token (``POST /console/login``); the
browser then holds only an opaque, random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure``
when the front is reached over https). The admin API accepts that cookie instead of an ``Authorization`` header
(:class:`~mcp_guard.frontend.admin.AdminAuth`), and requires the session's CSRF token in the
:data:`CSRF_HEADER` of every request that acts.

**Why server-side rows in the shared store rather than a signed cookie.** A logout (or the expiry) must end the
session for good, on every replica: a copied cookie is worthless afterwards. A self-contained signed cookie
cannot promise that without a revocation list every replica reads — a shared table again, plus a signing key to
distribute and rotate. So the session *is* the row: :mod:`mcp_guard.state.console_sessions` keeps it in the
deployment's shared state (the SQLite state file for every process on a host; PostgreSQL for replicas), so a
login on one replica is valid on all, and a logout deletes the row for all. The store holds the sha256 of each
session id, never the id, so a dump of the table does not hand out live cookies; it is bounded (oldest dropped
first). Each admin request reads one row by primary key; a store that cannot answer means "not logged in"
(fail closed — the bearer header still works).

The principal is resolved once, at login (roles from ``[principals.<id>]`` merged in); a session lasts
``[console] session_ttl_s`` at most, so a role removed from the config takes effect at the next login.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from mcp_guard.errors import StateError
from mcp_guard.state.console_sessions import ConsoleSessionStore, MemoryConsoleSessionStore
from mcp_guard.types import AuthInfo, Principal

__all__ = ["COOKIE", "CSRF_HEADER", "ConsoleSession", "ConsoleSessions"]

log = structlog.get_logger("mcp_guard.console")

COOKIE = "mcp_guard_console"
CSRF_HEADER = "x-csrf-token"
_MAX_SID = 128


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    principal: Principal
    csrf: str  # sent to the page by GET /console/session; required in CSRF_HEADER on every acting request

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class ConsoleSessions:
    """The live console sessions of the deployment (see the module docstring)."""

    def __init__(
        self,
        ttl_s: float,
        store: ConsoleSessionStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self.store: ConsoleSessionStore = store if store is not None else MemoryConsoleSessionStore(clock=clock)

    async def open(self, principal: Principal) -> str:
        """A new session for ``principal``; returns the session id the cookie carries (StateError: not stored)."""
        sid = secrets.token_urlsafe(32)
        expires_at = self._clock() + self._ttl
        await self.store.put(_key(sid), _doc(principal, secrets.token_urlsafe(32)), expires_at)
        return sid

    async def get(self, sid: str | None) -> ConsoleSession | None:
        """The live session ``sid`` names (None: unknown, expired, logged out — or the store cannot answer)."""
        if not sid or len(sid) > _MAX_SID:
            return None
        try:
            doc = await self.store.get(_key(sid))
        except StateError as e:
            log.warning("console.session_store_unavailable", error=e.cause)
            return None
        return _session(doc)

    async def close(self, sid: str | None) -> ConsoleSession | None:
        """Log out on every replica: the session id is worthless from now on. The session it ended, if live."""
        if not sid or len(sid) > _MAX_SID:
            return None
        return _session(await self.store.delete(_key(sid)))


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _doc(principal: Principal, csrf: str) -> dict[str, Any]:
    """What a session row keeps: the principal's id, roles and scopes, how it logged in, and the CSRF token."""
    auth = principal.auth
    return {
        "principal": principal.id,
        "roles": list(principal.roles),
        "scopes": list(principal.scopes),
        "auth": {"method": auth.method, "issuer": auth.issuer, "client_id": auth.client_id},
        "csrf": csrf,
    }


def _session(doc: dict[str, Any] | None) -> ConsoleSession | None:
    if doc is None:
        return None
    try:
        auth = doc["auth"]
        principal = Principal(
            id=str(doc["principal"]),
            roles=tuple(str(r) for r in doc["roles"]),
            scopes=tuple(str(s) for s in doc["scopes"]),
            auth=AuthInfo(method=auth["method"], issuer=auth["issuer"], client_id=auth["client_id"]),
        )
        return ConsoleSession(principal, str(doc["csrf"]))
    except (KeyError, TypeError):
        return None
