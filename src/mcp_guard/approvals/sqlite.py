"""Approvals in SQLite: table ``approvals`` in the state file (``[audit] state_path``), shared by every process.

The proxy that parks a call and the ``mcp-guard approvals approve`` that releases it are two processes on one
file: each operation opens its own connection in a worker thread (approvals are rare and human-paced, so
the connect is cheap next to the safety of never holding a handle on a replaced file), runs one statement of
:mod:`mcp_guard.approvals.sql` in one transaction (``BEGIN IMMEDIATE`` for a transition, so two processes
serialise on the file's write lock) and closes. The clock is SQLite's ``julianday('now')`` — the host's,
the same for every process on it. Every operation is bounded by ``timeout_s`` and raises
:class:`~mcp_guard.errors.StateError` when it cannot answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mcp_guard.approvals.base import Approval, ApprovalRequest, Status, Verdict
from mcp_guard.approvals.sql import Statements, ddl, from_row, insert_params
from mcp_guard.state.sqlite_tx import in_transaction
from mcp_guard.types import new_id

__all__ = ["SQLiteApprovals"]

_T = TypeVar("_T")
_SQL = Statements(p="?", now="((julianday('now') - 2440587.5) * 86400.0)")


class SQLiteApprovals:
    """The approval store in the SQLite state file."""

    def __init__(self, path: str | Path, *, timeout_s: float = 1.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s

    async def start(self) -> None:
        """Create the table (idempotent)."""

        def create(db: sqlite3.Connection) -> None:
            for statement in ddl("REAL"):
                db.execute(statement)

        await self._run(create, write=True)

    async def aclose(self) -> None:
        """Nothing is held between operations."""

    # ------------------------------------------------------------------ the protocol
    async def request(self, req: ApprovalRequest) -> tuple[Approval, bool]:
        def run(db: sqlite3.Connection) -> tuple[Approval, bool]:
            row = _first(db.execute(_SQL.find_open, (req.binding, req.principal)))
            if row is not None:
                return from_row(row), False
            inserted = _first(db.execute(_SQL.insert, insert_params(new_id(), req)))
            assert inserted is not None
            return from_row(inserted), True

        return await self._run(run, write=True)

    async def get(self, approval_id: str) -> Approval | None:
        return await self._run(lambda db: _one(_first(db.execute(_SQL.get, (approval_id,)))))

    async def list(self, statuses: Sequence[Status] | None = None, limit: int = 200) -> list[Approval]:
        params: tuple[Any, ...] = (*(str(s) for s in statuses or ()), limit)
        return await self._run(lambda db: [from_row(r) for r in db.execute(_SQL.list(statuses), params).fetchall()])

    async def decide(self, approval_id: str, verdict: Verdict, by: str, comment: str | None) -> Approval | None:
        params = (str(verdict), by, comment, approval_id)
        return await self._run(lambda db: _one(_first(db.execute(_SQL.decide, params))), write=True)

    async def consume(self, approval_id: str) -> Approval | None:
        return await self._run(lambda db: _one(_first(db.execute(_SQL.consume, (approval_id,)))), write=True)

    async def restore(self, approval_id: str) -> None:
        await self._run(lambda db: db.execute(_SQL.restore, (approval_id,)), write=True)

    async def expire(self, approval_id: str) -> Approval | None:
        return await self._run(lambda db: _one(_first(db.execute(_SQL.expire, (approval_id,)))), write=True)

    # ------------------------------------------------------------------ plumbing
    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        return await in_transaction(self.path, fn, write=write, timeout_s=self.timeout_s, what="approval store")


def _first(cursor: sqlite3.Cursor) -> Sequence[Any] | None:
    """The first row, every row fetched (a RETURNING statement must be done before its transaction commits)."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _one(row: Sequence[Any] | None) -> Approval | None:
    return None if row is None else from_row(row)
