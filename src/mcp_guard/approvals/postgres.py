"""Approvals in PostgreSQL (``[audit] backend = "postgres"``): table ``approvals`` in the DSN's default schema.

Every replica on one DSN sees the same approvals, so an approval granted on one (or by the CLI) releases a call
parked on another: the waiting call polls the row. Each transition is one statement of
:mod:`mcp_guard.approvals.sql` (autocommit, ``UPDATE … WHERE <state> RETURNING``), so concurrent approvers and
replicas serialise on the row; "now" is the server's ``now()``, one clock for every replica.

One connection per store, used under a lock and re-opened after a failure; every operation is bounded by
``timeout_s`` (client side, and the server's ``statement_timeout``/``lock_timeout`` match it) and raises
:class:`~mcp_guard.errors.StateError` when it cannot answer. The DSN's password never appears in a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from mcp_guard.approvals.base import Approval, ApprovalRequest, Status, Verdict
from mcp_guard.approvals.sql import Statements, ddl, from_row, insert_params
from mcp_guard.audit.pg_connection import LockedConnection
from mcp_guard.types import new_id

__all__ = ["PostgresApprovals"]

_SQL = Statements(p="%s", now="(EXTRACT(EPOCH FROM now())::float8)")
_LOCK_KEY = 0x6D63_7061  # advisory lock serialising the table's creation between replicas starting together


class PostgresApprovals:
    """The approval store in PostgreSQL."""

    def __init__(self, dsn: str, *, timeout_s: float = 1.0) -> None:
        self._db = LockedConnection(dsn, what="approval store", timeout_s=timeout_s)

    @property
    def location(self) -> str:
        return self._db.location

    async def start(self) -> None:
        """Connect and create the table (idempotent)."""

        async def create(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                for statement in ddl("double precision"):
                    await conn.execute(statement.encode())

        await self._db.run(create)

    async def aclose(self) -> None:
        await self._db.aclose()

    # ------------------------------------------------------------------ the protocol
    async def request(self, req: ApprovalRequest) -> tuple[Approval, bool]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> tuple[Approval, bool]:
            async with conn.transaction():
                # one request per binding at a time: two identical calls on two replicas share one approval
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (req.binding,))
                row = await (await conn.execute(_SQL.find_open.encode(), (req.binding, req.principal))).fetchone()
                if row is not None:
                    return from_row(row), False
                inserted = await (await conn.execute(_SQL.insert.encode(), insert_params(new_id(), req))).fetchone()
                assert inserted is not None
                return from_row(inserted), True

        return await self._db.run(run)

    async def get(self, approval_id: str) -> Approval | None:
        return await self._one(_SQL.get, (approval_id,))

    async def list(self, statuses: Sequence[Status] | None = None, limit: int = 200) -> list[Approval]:
        params: tuple[Any, ...] = (*(str(s) for s in statuses or ()), limit)

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[Approval]:
            return [from_row(r) for r in await (await conn.execute(_SQL.list(statuses).encode(), params)).fetchall()]

        return await self._db.run(run)

    async def decide(self, approval_id: str, verdict: Verdict, by: str, comment: str | None) -> Approval | None:
        return await self._one(_SQL.decide, (str(verdict), by, comment, approval_id))

    async def consume(self, approval_id: str) -> Approval | None:
        return await self._one(_SQL.consume, (approval_id,))

    async def restore(self, approval_id: str) -> None:
        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(_SQL.restore.encode(), (approval_id,))

        await self._db.run(run)

    async def expire(self, approval_id: str) -> Approval | None:
        return await self._one(_SQL.expire, (approval_id,))

    # ------------------------------------------------------------------ plumbing
    async def _one(self, statement: str, params: tuple[Any, ...]) -> Approval | None:
        async def run(conn: psycopg.AsyncConnection[Any]) -> Approval | None:
            row = await (await conn.execute(statement.encode(), params)).fetchone()
            return None if row is None else from_row(row)

        return await self._db.run(run)
