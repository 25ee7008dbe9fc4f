"""Helpers for the audit tests: events, direct SQLite access, tampering that bypasses the triggers."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from mcp_guard.audit import schema
from mcp_guard.audit.chain import canonical_json, row_hash
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
