"""Console logins: a server-side session table, in memory, with an expiry and a CSRF token per session.

A person logs in to the console once with an API key or an access token (``POST /console/login``); the
browser then holds only an opaque, random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure``
when the front is reached over https). The admin API accepts that cookie instead of an ``Authorization`` header
(:class:`~mcp_guard.frontend.admin.AdminAuth`), and requires the session's CSRF token in the
:data:`CSRF_HEADER` of every request that acts.

**Why a server-side table rather than a signed cookie.** A logout (or the expiry) ends the session for good,
on the server: a copied cookie is worthless afterwards, which a self-contained signed cookie cannot promise
without a revocation list — which is this table again. The cost is that sessions live in this process: a
restart logs everyone out, and replicas behind a load balancer need sticky sessions for the console (the
admin API with a bearer header works anywhere). The table stores the sha256 of each session id, never the id,
so a dump of the process memory does not hand out live cookies; it is bounded (:data:`MAX_SESSIONS`, the
oldest evicted first) so a login flood cannot grow it without limit.

The principal is resolved once, at login (roles from ``[principals.<id>]`` merged in); a session lasts
``[console] session_ttl_s`` at most, so a role removed from the config takes effect at the next login.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mcp_guard.types import Principal

__all__ = ["COOKIE", "CSRF_HEADER", "MAX_SESSIONS", "ConsoleSession", "ConsoleSessions"]

COOKIE = "mcp_guard_console"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    principal: Principal
    csrf: str  # sent to the page by GET /console/session; required in CSRF_HEADER on every acting request
    expires_at: float  # time.monotonic() seconds

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class ConsoleSessions:
    """The live console sessions of this process (see the module docstring)."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._live: OrderedDict[bytes, ConsoleSession] = OrderedDict()

    def open(self, principal: Principal) -> str:
        """A new session for ``principal``; returns the session id the cookie carries."""
        self._purge()
        while len(self._live) >= MAX_SESSIONS:
            self._live.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._live[_key(sid)] = ConsoleSession(principal, secrets.token_urlsafe(32), self._clock() + self._ttl)
        return sid

    def get(self, sid: str | None) -> ConsoleSession | None:
        """The live session ``sid`` names (None: unknown, expired or logged out)."""
        if not sid or len(sid) > 128:
            return None
        session = self._live.get(_key(sid))
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._live[_key(sid)]
            return None
        return session

    def close(self, sid: str | None) -> None:
        """Log out: the session id is worthless from now on."""
        if sid:
            self._live.pop(_key(sid), None)

    def __len__(self) -> int:
        return len(self._live)

    def _purge(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._live.items() if s.expires_at <= now]:
            del self._live[key]


def _key(sid: str) -> bytes:
    return hashlib.sha256(sid.encode()).digest()
