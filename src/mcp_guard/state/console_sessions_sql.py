"""The SQL of the console session table, shared by the SQLite and PostgreSQL backends (``p``: placeholder)."""

from __future__ import annotations

import json
from typing import Any

from mcp_guard.state.console_sessions import MAX_SESSIONS

__all__ = ["DDL", "decode", "encode", "statements"]

DDL = (
    "CREATE TABLE IF NOT EXISTS console_sessions (key TEXT PRIMARY KEY, doc TEXT NOT NULL, expires_at {real} NOT NULL)",
    "CREATE INDEX IF NOT EXISTS console_sessions_by_expiry ON console_sessions (expires_at)",
)


def statements(p: str, every: str) -> dict[str, str]:
    """The statements with the driver's placeholder ``p`` and its "no limit" (``LIMIT -1``, ``LIMIT ALL``)."""
    return {
        "purge": f"DELETE FROM console_sessions WHERE expires_at <= {p}",
        "trim": (
            "DELETE FROM console_sessions WHERE key IN (SELECT key FROM console_sessions "
            f"ORDER BY expires_at DESC {every} OFFSET {MAX_SESSIONS - 1})"
        ),
        "insert": f"INSERT INTO console_sessions (key, doc, expires_at) VALUES ({p}, {p}, {p})",
        "get": f"SELECT doc FROM console_sessions WHERE key = {p} AND expires_at > {p}",
        "delete": f"DELETE FROM console_sessions WHERE key = {p} RETURNING doc, expires_at",
    }


def encode(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def decode(text: Any) -> dict[str, Any] | None:
    doc = json.loads(text) if isinstance(text, str) else None
    return doc if isinstance(doc, dict) else None
