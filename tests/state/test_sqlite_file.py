"""The state file's set-up (mcp_guard.state.sqlite_file): whichever store opens a new file first makes it with the
small pages, in WAL mode; a file made before keeps its page size and still serves every store."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mcp_guard.pins import PinStore
from mcp_guard.state import Limit, SQLiteState
from mcp_guard.state.sqlite_file import PAGE_SIZE
from mcp_guard.state.sqlite_tx import in_transaction

pytestmark = pytest.mark.anyio


def _page_size_and_mode(path: Path) -> tuple[int, str]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()


async def _by_state(path: Path) -> None:
    store = SQLiteState(path)
    await store.start()
    try:
        assert (await store.admit([Limit("k", 5, 60.0)])).admitted
    finally:
        await store.aclose()


async def _by_pins(path: Path) -> None:
    pins = PinStore(path)
    try:
        pins.observe("srv", "tool", "a" * 64, {"name": "tool"})
    finally:
        pins.close()


async def _by_transaction(path: Path) -> None:
    # what the approval and console-session stores do: one transaction per operation
    await in_transaction(
        path, lambda db: db.execute("CREATE TABLE IF NOT EXISTS t (x)"), write=True, timeout_s=5.0, what="test"
    )


OPENERS: dict[str, Callable[[Path], Awaitable[None]]] = {
    "rate limits and flows": _by_state,
    "tool pins": _by_pins,
    "approvals / console sessions": _by_transaction,
}


@pytest.mark.parametrize("opener", OPENERS)
async def test_a_new_file_gets_the_small_pages_in_wal_mode(tmp_path: Path, opener: str) -> None:
    path = tmp_path / "state.db"
    await OPENERS[opener](path)
    assert PAGE_SIZE == 1024
    assert _page_size_and_mode(path) == (PAGE_SIZE, "wal")


async def test_a_file_made_with_other_pages_keeps_them_and_serves_every_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE earlier (x)")  # the file exists with its pages before any store opens it
    db.close()
    for opener in OPENERS.values():
        await opener(path)
    assert _page_size_and_mode(path) == (4096, "wal")
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"earlier", "rate_hits", "tool_pins", "t"} <= tables
