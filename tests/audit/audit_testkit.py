"""Helpers for the audit tests: events, direct SQLite access, tampering that bypasses the triggers,
and an in-memory backend and reader that hold the seams' contracts without a database."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.lowlevel

from mcp_guard.audit import Filters, schema
from mcp_guard.audit.chain import GENESIS, ChainHead, RowBody, canonical_json, chain_rows, row_hash
from mcp_guard.errors import AuditError
from mcp_guard.types import AuditEvent

PYTHON = sys.executable
SRC = str(Path(__file__).resolve().parents[2] / "src")


def event(i: int = 0, **overrides: Any) -> AuditEvent:
    """A realistic call.decision event, numbered ``i``."""
    fields: dict[str, Any] = {
        "kind": "call.decision",
        "session_id": "sess-1",
        "decision_id": f"dec-{i}",
        "principal": "alice",
        "server": "tickets",
        "tool": "create_ticket",
        "decision": "allow",
        "reasons": ("support may create tickets",),
        "arguments": {"title": f"ticket {i}", "priority": i % 3},
        "duration_ms": 0.5 + i,
        "policy_revision": "rev-1",
        "details": {"action": "tools/call", "call_id": f"call-{i}"},
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def rows(path: Path) -> list[sqlite3.Row]:
    """Every row of audit_events, read on a fresh connection of our own."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute("SELECT * FROM audit_events ORDER BY seq"))
    finally:
        conn.close()


def seqs(path: Path) -> list[int]:
    return [int(r["seq"]) for r in rows(path)]


def tamper(path: Path, *statements: str | tuple[str, tuple[Any, ...]]) -> None:
    """Run SQL against the file with the append-only triggers dropped, as an attacker would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        for st in statements:
            if isinstance(st, tuple):
                conn.execute(st[0], st[1])
            else:
                conn.execute(st)
    finally:
        conn.close()


def forged_row(path: Path, seq: int, prev_hash: str, **values: Any) -> tuple[Any, ...]:
    """A row for ``seq`` whose hash is computed correctly after ``prev_hash`` (a careful forger)."""
    body_values: dict[str, Any] = dict.fromkeys(schema.BODY_COLUMNS)
    body_values.update({"event_id": "forged", "ts": "2026-01-01T00:00:00.000000Z", "kind": "call.decision"})
    body_values.update(values)
    h = row_hash(prev_hash, seq, canonical_json([body_values[c] for c in schema.BODY_COLUMNS]))
    return (seq, *(body_values[c] for c in schema.BODY_COLUMNS), prev_hash, h)


INSERT_ANY = (
    f"INSERT INTO audit_events (seq, {', '.join(schema.BODY_COLUMNS)}, prev_hash, hash) "
    f"VALUES ({', '.join('?' for _ in schema.COLUMNS)})"
)


def child_env() -> dict[str, str]:
    """Environment for a child Python that must import mcp_guard from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NO_COLOR", None)
    return env


class MemoryBackend:
    """An :class:`~mcp_guard.audit.AuditBackend` over a list: the writer's contract, no database.

    ``fail_next`` makes the next append raise it (an AuditError: a failed transaction; anything else:
    a backend bug); ``gone`` is what :meth:`problem` reports.
    """

    location = "memory"

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.batches: list[int] = []
        self.fail_next: Exception | None = None
        self.gone: str | None = None

    async def read_head(self) -> ChainHead:
        return ChainHead(self.rows[-1][0], self.rows[-1][-1]) if self.rows else GENESIS

    async def append(self, batch: Sequence[RowBody]) -> int:
        await anyio.lowlevel.checkpoint()  # a transaction takes a trip through the event loop
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        head = await self.read_head()
        rows, _ = chain_rows(head, batch)
        self.rows.extend(rows)
        self.batches.append(len(rows))
        return head.seq + 1

    def problem(self) -> str | None:
        return self.gone


def _matches(row: dict[str, Any], f: Filters) -> bool:
    if f.since is not None and row["ts"] < f.since:
        return False
    if f.after_seq is not None and row["seq"] <= f.after_seq:
        return False
    if f.until_seq is not None and row["seq"] > f.until_seq:
        return False
    for column in ("principal", "server", "tool", "decision"):
        wanted = getattr(f, column)
        if wanted is not None and row[column] != wanted:
            return False
    return not f.kinds or any(row["kind"].startswith(k[:-1]) if k.endswith("*") else row["kind"] == k for k in f.kinds)


class MemoryReader:
    """An :class:`~mcp_guard.audit.AuditReader` over stored rows (a MemoryBackend's)."""

    location = "memory"

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows
        self.closed = False

    def head(self) -> ChainHead | None:
        return ChainHead(self._rows[-1][0], self._rows[-1][-1]) if self._rows else None

    def rows(self, filters: Filters | None = None, *, last: int | None = None) -> Iterator[tuple[Any, ...]]:
        f = filters or Filters()
        found = [r for r in self._rows if _matches(dict(zip(schema.COLUMNS, r, strict=True)), f)]
        return iter(found[-last:] if last else [] if last == 0 else found)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        if self.closed:
            raise AuditError("memory: reader is closed")
        yield

    def schema_warnings(self) -> tuple[str, ...]:
        return ()

    def close(self) -> None:
        self.closed = True
