"""Console sessions in SQLite: table ``console_sessions`` in the state file, shared by every process on the host.

Like the approval store: each operation opens its own connection in a worker thread, runs in one transaction
and closes (console requests are human-paced). Expiry is wall-clock time (``time.time()``), one clock for every
process on the host.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mcp_guard.state.console_sessions_sql import DDL, decode, encode, statements
from mcp_guard.state.sqlite_tx import in_transaction

__all__ = ["SQLiteConsoleSessions"]

_T = TypeVar("_T")
_SQL = statements("?", "LIMIT -1")


class SQLiteConsoleSessions:
    """The console session store in the SQLite state file."""

    def __init__(self, path: str | Path, *, timeout_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._clock = clock

    async def start(self) -> None:
        def create(db: sqlite3.Connection) -> None:
            for statement in DDL:
                db.execute(statement.format(real="REAL"))

        await self._run(create, write=True)

    async def aclose(self) -> None:
        """Nothing is held between operations."""

    async def put(self, key: str, doc: dict[str, Any], expires_at: float) -> None:
        now = self._clock()

        def run(db: sqlite3.Connection) -> None:
            db.execute(_SQL["purge"], (now,))
            db.execute(_SQL["trim"])
            db.execute(_SQL["insert"], (key, encode(doc), expires_at))

        await self._run(run, write=True)

    async def get(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        def run(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute(_SQL["get"], (key, now)).fetchone()
            return None if row is None else decode(row[0])

        return await self._run(run)

    async def delete(self, key: str) -> dict[str, Any] | None:
        now = self._clock()

        def run(db: sqlite3.Connection) -> dict[str, Any] | None:
            rows = db.execute(_SQL["delete"], (key,)).fetchall()
            return decode(rows[0][0]) if rows and rows[0][1] > now else None

        return await self._run(run, write=True)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        return await in_transaction(self.path, fn, write=write, timeout_s=self.timeout_s, what="console session store")
