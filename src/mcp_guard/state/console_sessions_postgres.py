"""Console sessions in PostgreSQL: table ``console_sessions`` in the DSN's default schema, shared by every replica.

A login on one replica is a row every other replica reads; a logout deletes it for all. One connection per
store, used under a lock and re-opened after a failure; every operation is bounded by ``timeout_s`` and raises
:class:`~mcp_guard.errors.StateError` when it cannot answer. Expiry is each replica's wall clock
(``time.time()``; replicas are expected to run NTP — a skew of seconds only moves the end of an hours-long
session by that much). The DSN's password never appears in a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from mcp_guard.audit.pg_connection import LockedConnection
from mcp_guard.state.console_sessions_sql import DDL, decode, encode, statements

__all__ = ["PostgresConsoleSessions"]

_SQL = {k: v.encode() for k, v in statements("%s", "LIMIT ALL").items()}
_LOCK_KEY = 0x6D63_6373  # advisory lock serialising the table's creation between replicas starting together


class PostgresConsoleSessions:
    """The console session store in PostgreSQL."""

    def __init__(self, dsn: str, *, timeout_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._db = LockedConnection(dsn, what="console session store", timeout_s=timeout_s)
        self._clock = clock

    async def start(self) -> None:
        async def create(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                for statement in DDL:
                    await conn.execute(statement.format(real="double precision").encode())

        await self._db.run(create)

    async def aclose(self) -> None:
        await self._db.aclose()

    async def put(self, key: str, doc: dict[str, Any], expires_at: float) -> None:
        now = self._clock()

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(_SQL["purge"], (now,))
                await conn.execute(_SQL["trim"])
                await conn.execute(_SQL["insert"], (key, encode(doc), expires_at))

        await self._db.run(run)

    async def get(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        async def run(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            row = await (await conn.execute(_SQL["get"], (key, now))).fetchone()
            return None if row is None else decode(row[0])

        return await self._db.run(run)

    async def delete(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        async def run(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            row = await (await conn.execute(_SQL["delete"], (key,))).fetchone()
            return decode(row[0]) if row is not None and row[1] > now else None

        return await self._db.run(run)
