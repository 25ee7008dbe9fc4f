"""One short SQLite transaction in a worker thread, bounded: the way the small SQLite stores reach their file.

The approval store and the console session store open the file per operation (several processes share it, and
an operation is rare), run one function inside ``BEGIN IMMEDIATE`` (writes: the file lock is taken at once, so
two writers queue instead of failing at commit) or ``BEGIN`` (reads), and commit or roll back. An operation that
cannot finish within ``timeout_s`` or that SQLite refuses raises :class:`~mcp_guard.errors.StateError` naming
the store and the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from mcp_guard.errors import StateError
from mcp_guard.state.sqlite_file import use_wal

__all__ = ["in_transaction"]

_T = TypeVar("_T")


async def in_transaction(
    path: str | Path, fn: Callable[[sqlite3.Connection], _T], *, write: bool, timeout_s: float, what: str
) -> _T:
    """``fn(connection)`` in one transaction on ``path``, in a thread, within ``timeout_s``."""
    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(_in_thread, path, fn, write, timeout_s, abandon_on_cancel=True)
    except TimeoutError:
        ms = f"{timeout_s * 1000:.0f} ms"
        raise StateError(f"{what} {path}: timed out after {ms}", cause=f"timed out after {ms}") from None
    except (sqlite3.Error, OSError) as e:
        raise StateError(f"{what} {path}: {e}", cause=str(e)) from None


def _in_thread(path: str | Path, fn: Callable[[sqlite3.Connection], _T], write: bool, timeout_s: float) -> _T:
    db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        use_wal(db)
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result
    finally:
        db.close()
