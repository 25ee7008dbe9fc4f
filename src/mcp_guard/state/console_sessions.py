"""Console logins shared by every replica: the session store seam (``frontend/console_sessions.py`` uses it).

A console session is a row keyed by the sha256 of its session id (never the id itself): a small JSON document
(the principal as resolved at login, the CSRF token) and a wall-clock expiry. Any replica on the same store
answers for any session, and deleting the row (a logout) ends it on every replica at once.

``open_console_sessions(settings)`` chooses the backend as every other shared store does::

    [audit] backend = "sqlite"    → table ``console_sessions`` in ``[audit] state_path`` (every process on the host)
    [audit] backend = "postgres"  → table ``console_sessions`` in ``[audit] dsn`` (every replica)

A Guard built directly (tests) keeps them in memory (:class:`MemoryConsoleSessionStore`). Every operation is
bounded by ``[audit] state_timeout_ms`` and raises :class:`~mcp_guard.errors.StateError` when it cannot answer
(the caller treats that as "not logged in": fail closed).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from mcp_guard.settings import Settings

__all__ = ["MAX_SESSIONS", "ConsoleSessionStore", "MemoryConsoleSessionStore", "open_console_sessions"]

MAX_SESSIONS = 10_000  # live rows kept at most; the oldest are dropped first (a login flood cannot grow it)


class ConsoleSessionStore(Protocol):
    """Session rows by key (the sha256 hex of a session id). Every method may raise StateError."""

    async def put(self, key: str, doc: dict[str, Any], expires_at: float) -> None:
        """Store a new session (and drop expired rows, and the oldest beyond :data:`MAX_SESSIONS`)."""
        ...

    async def get(self, key: str) -> dict[str, Any] | None:
        """The live session's document (None: unknown, expired or logged out)."""
        ...

    async def delete(self, key: str) -> dict[str, Any] | None:
        """End the session on every replica; its document if it was live."""
        ...

    async def aclose(self) -> None: ...


class MemoryConsoleSessionStore:
    """This process's sessions only (a Guard built without ``Guard.open``)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rows: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()

    async def put(self, key: str, doc: dict[str, Any], expires_at: float) -> None:
        now = self._clock()
        for k in [k for k, (_, exp) in self._rows.items() if exp <= now]:
            del self._rows[k]
        while len(self._rows) >= MAX_SESSIONS:
            self._rows.popitem(last=False)
        self._rows[key] = (doc, expires_at)

    async def get(self, key: str) -> dict[str, Any] | None:
        row = self._rows.get(key)
        if row is None or row[1] <= self._clock():
            return None
        return row[0]

    async def delete(self, key: str) -> dict[str, Any] | None:
        row = self._rows.pop(key, None)
        return None if row is None or row[1] <= self._clock() else row[0]

    def __len__(self) -> int:
        return len(self._rows)

    async def aclose(self) -> None:
        self._rows.clear()


@asynccontextmanager
async def open_console_sessions(settings: Settings) -> AsyncIterator[ConsoleSessionStore]:
    """The configured session store, opened (table created) and closed on exit; StateError if it cannot open."""
    timeout_s = settings.audit.state_timeout_ms / 1000
    store: ConsoleSessionStore
    if settings.audit.backend == "postgres" and settings.audit.dsn:
        from mcp_guard.state.console_sessions_postgres import PostgresConsoleSessions  # psycopg only when used

        store = pg = PostgresConsoleSessions(settings.audit.dsn, timeout_s=timeout_s)
        await pg.start()
    else:
        from mcp_guard.state.console_sessions_sqlite import SQLiteConsoleSessions

        store = lite = SQLiteConsoleSessions(settings.resolve_path(settings.audit.state_path), timeout_s=timeout_s)
        await lite.start()
    try:
        yield store
    finally:
        await store.aclose()
