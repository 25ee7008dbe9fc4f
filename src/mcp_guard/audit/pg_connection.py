"""One PostgreSQL connection shared by a small store: used under a lock, re-opened after a failure, every use bounded.

The approval store and the console session store each make a few short statements per operation; a pool would
be more machinery than they need. :class:`LockedConnection` is the one way they reach PostgreSQL, so both fail
the same way: an operation that cannot answer within ``timeout_s`` (connecting included) or that PostgreSQL
refuses raises :class:`~mcp_guard.errors.StateError` naming the store and the DSN without its password, and
the connection it used is closed so the next operation starts on a fresh one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import psycopg

from mcp_guard.audit.postgres import connect_args, redact_dsn
from mcp_guard.errors import StateError

__all__ = ["LockedConnection"]

_T = TypeVar("_T")


class LockedConnection:
    """A lazily opened connection to ``dsn``, one operation at a time, for the store named ``what``."""

    def __init__(self, dsn: str, *, what: str, timeout_s: float) -> None:
        self._dsn = dsn
        self._what = what
        self.timeout_s = timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = anyio.Lock()

    @property
    def location(self) -> str:
        """The DSN without its password (for messages)."""
        return redact_dsn(self._dsn)

    async def run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``fn(connection)`` under the lock, bounded by ``timeout_s``; the connection is dropped after a failure."""
        try:
            with anyio.fail_after(self.timeout_s):
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(**connect_args(self._dsn, self.timeout_s))
                    try:
                        return await fn(self._conn)
                    except BaseException:
                        await self.aclose()
                        raise
        except TimeoutError:
            ms = f"{self.timeout_s * 1000:.0f} ms"
            raise StateError(
                f"{self._what} {self.location}: timed out after {ms}", cause=f"timed out after {ms}"
            ) from None
        except psycopg.Error as e:
            cause = type(e).__name__
            raise StateError(f"{self._what} {self.location}: {cause}: {e}", cause=cause) from None

    async def aclose(self) -> None:
        """Close the connection, if open (at most a second: closing must not hang a failing operation)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.move_on_after(1, shield=True):
                await conn.close()
