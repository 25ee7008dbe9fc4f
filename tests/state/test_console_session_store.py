"""The console session store: two stores on one SQLite file or one PostgreSQL DSN see the same sessions (what two
processes or replicas do), expired rows are not answered, and a delete ends a session for both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from mcp_guard.state.console_sessions import ConsoleSessionStore, MemoryConsoleSessionStore
from mcp_guard.state.console_sessions_postgres import PostgresConsoleSessions
from mcp_guard.state.console_sessions_sqlite import SQLiteConsoleSessions

pytestmark = pytest.mark.anyio

NOW = 1_000_000.0


@asynccontextmanager
async def _pair(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[list[ConsoleSessionStore]]:
    """Two stores over one place, with a fixed clock (NOW)."""
    async with AsyncExitStack() as stack:
        stores: list[ConsoleSessionStore] = []
        for _ in range(2):
            if kind == "sqlite":
                lite = SQLiteConsoleSessions(tmp_path / "state.db", timeout_s=5, clock=lambda: NOW)
                await lite.start()
                stores.append(lite)
            else:
                dsn = request.getfixturevalue("pg_dsn")
                pg = PostgresConsoleSessions(dsn, timeout_s=5, clock=lambda: NOW)
                await pg.start()
                stores.append(pg)
            stack.push_async_callback(stores[-1].aclose)
        yield stores


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_session_stored_by_one_is_read_and_ended_by_the_other(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with _pair(kind, tmp_path, request) as (a, b):
        await a.put("k1", {"principal": "olga", "csrf": "c"}, NOW + 60)
        await a.put("old", {"principal": "gone"}, NOW - 1)
        assert await b.get("k1") == {"principal": "olga", "csrf": "c"}
        assert await b.get("old") is None and await b.get("nope") is None
        assert await b.delete("k1") == {"principal": "olga", "csrf": "c"}
        assert await a.get("k1") is None and await a.delete("k1") is None


async def test_the_memory_store_drops_expired_rows_as_it_stores() -> None:
    now = [0.0]
    store = MemoryConsoleSessionStore(clock=lambda: now[0])
    await store.put("a", {}, 5)
    now[0] = 6
    await store.put("b", {}, 10)
    assert len(store) == 1 and await store.get("a") is None and await store.get("b") == {}
