"""Console sessions in PostgreSQL: table ``console_sessions`` in the DSN's default schema, shared by every replica.

A login on one replica is a row every other replica reads; a logout deletes it for all. One connection per
store, used under a lock and re-opened after a failure; every operation is bounded by ``timeout_s`` and raises
:class:`~mcp_guard.errors.StateError` when it cannot answer. Expiry is each replica's wall clock
(``time.time()``; replicas are expected to run NTP — a skew of seconds only moves the end of an hours-long
session by that much). The DSN's password never appears in a message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import psycopg

from mcp_guard.audit.postgres import connect_args, redact_dsn
from mcp_guard.errors import StateError
from mcp_guard.state.console_sessions_sql import DDL, decode, encode, statements

__all__ = ["PostgresConsoleSessions"]

_T = TypeVar("_T")
_SQL = {k: v.encode() for k, v in statements("%s", "LIMIT ALL").items()}
_LOCK_KEY = 0x6D63_6373  # advisory lock serialising the table's creation between replicas starting together


class PostgresConsoleSessions:
    """The console session store in PostgreSQL."""

    def __init__(self, dsn: str, *, timeout_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._dsn = dsn
        self.timeout_s = timeout_s
        self._clock = clock
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = anyio.Lock()

    async def start(self) -> None:
        async def create(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                for statement in DDL:
                    await conn.execute(statement.format(real="double precision").encode())

        await self._run(create)

    async def aclose(self) -> None:
        await self._drop()

    async def put(self, key: str, doc: dict[str, Any], expires_at: float) -> None:
        now = self._clock()

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(_SQL["purge"], (now,))
                await conn.execute(_SQL["trim"])
                await conn.execute(_SQL["insert"], (key, encode(doc), expires_at))

        await self._run(run)

    async def get(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        async def run(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            row = await (await conn.execute(_SQL["get"], (key, now))).fetchone()
            return None if row is None else decode(row[0])

        return await self._run(run)

    async def delete(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        async def run(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            row = await (await conn.execute(_SQL["delete"], (key,))).fetchone()
            return decode(row[0]) if row is not None and row[1] > now else None

        return await self._run(run)

    async def _run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``fn(connection)`` under the lock, bounded by ``timeout_s``; the connection is dropped after a failure."""
        location = redact_dsn(self._dsn)
        try:
            with anyio.fail_after(self.timeout_s):
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(**connect_args(self._dsn, self.timeout_s))
                    try:
                        return await fn(self._conn)
                    except BaseException:
                        await self._drop()
                        raise
        except TimeoutError:
            ms = f"{self.timeout_s * 1000:.0f} ms"
            raise StateError(
                f"console session store {location}: timed out after {ms}", cause=f"timed out after {ms}"
            ) from None
        except psycopg.Error as e:
            cause = type(e).__name__
            raise StateError(f"console session store {location}: {cause}: {e}", cause=cause) from None

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.move_on_after(1, shield=True):
                await conn.close()
