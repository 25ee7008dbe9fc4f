"""The pin store: the approved definition of every upstream tool, and definitions awaiting approval.

Kept in its own SQLite file (``[audit] state_path``, beside the audit database) so the audit log stays
append-only. The first time a tool is seen its definition hash is pinned (trust on first use). A later
definition with another hash is recorded as *pending*: the tool is hidden and its calls denied with
``tool_changed`` (``pinning = "enforce"``) until an operator runs ``mcp-guard tools approve``.

Operations are small synchronous SQLite statements: they run when an upstream's catalogue changes and
when an operator approves, never per call.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_guard.types import utc_now

__all__ = ["PendingChange", "Pin", "PinState", "PinStore"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tool_pins (
        server TEXT NOT NULL, tool TEXT NOT NULL, sha256 TEXT NOT NULL, definition TEXT NOT NULL,
        pinned_at TEXT NOT NULL, approved_by TEXT, PRIMARY KEY (server, tool))""",
    """CREATE TABLE IF NOT EXISTS tool_pending (
        server TEXT NOT NULL, tool TEXT NOT NULL, sha256 TEXT NOT NULL, definition TEXT NOT NULL,
        first_seen TEXT NOT NULL, PRIMARY KEY (server, tool, sha256))""",
)


@dataclass(frozen=True, slots=True)
class PinState:
    """What the store says about one observed definition."""

    pinned: bool  # the observed definition is the approved one
    changed: bool  # it differs from the approved one (awaiting approval)
    approved_sha256: str | None
    new: bool = False  # first sighting: pinned just now
    first_change: bool = False  # this changed definition was not seen before


@dataclass(frozen=True, slots=True)
class Pin:
    server: str
    tool: str
    sha256: str
    definition: dict[str, Any]
    pinned_at: str
    approved_by: str | None


@dataclass(frozen=True, slots=True)
class PendingChange:
    server: str
    tool: str
    sha256: str
    definition: dict[str, Any]
    first_seen: str
    approved: Pin | None

    def diff(self) -> str:
        """A unified diff of the approved definition against the pending one."""
        old = json.dumps(self.approved.definition if self.approved else {}, indent=2, sort_keys=True).splitlines()
        new = json.dumps(self.definition, indent=2, sort_keys=True).splitlines()
        return "\n".join(difflib.unified_diff(old, new, "approved", "pending", lineterm=""))


class PinStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        for stmt in _SCHEMA:
            self._db.execute(stmt)

    def close(self) -> None:
        self._db.close()

    def observe(self, server: str, tool: str, sha256: str, definition: dict[str, Any]) -> PinState:
        row = self._db.execute("SELECT sha256 FROM tool_pins WHERE server=? AND tool=?", (server, tool)).fetchone()
        if row is None:
            # OR IGNORE: another process may pin the tool between the read and here; it then won the race.
            cur = self._db.execute(
                "INSERT OR IGNORE INTO tool_pins (server, tool, sha256, definition, pinned_at, approved_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (server, tool, sha256, _dump(definition), utc_now(), "first-use"),
            )
            if cur.rowcount == 1:
                return PinState(pinned=True, changed=False, approved_sha256=sha256, new=True)
            row = self._db.execute("SELECT sha256 FROM tool_pins WHERE server=? AND tool=?", (server, tool)).fetchone()
        approved = str(row[0])
        if approved == sha256:
            return PinState(pinned=True, changed=False, approved_sha256=approved)
        cur = self._db.execute(
            "INSERT OR IGNORE INTO tool_pending (server, tool, sha256, definition, first_seen) VALUES (?, ?, ?, ?, ?)",
            (server, tool, sha256, _dump(definition), utc_now()),
        )
        return PinState(pinned=False, changed=True, approved_sha256=approved, first_change=cur.rowcount == 1)

    def approve(self, server: str, tool: str, sha256: str | None = None, *, by: str = "operator") -> Pin:
        """Approve the pending definition (the newest, or the one with ``sha256``). KeyError if none."""
        q = "SELECT sha256, definition FROM tool_pending WHERE server=? AND tool=?"
        args: tuple[str, ...] = (server, tool)
        if sha256:
            q += " AND sha256 LIKE ?"
            args += (sha256 + "%",)
        row = self._db.execute(q + " ORDER BY first_seen DESC LIMIT 1", args).fetchone()
        if row is None:
            raise KeyError(f"no pending change for {server}/{tool}")
        now = utc_now()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO tool_pins (server, tool, sha256, definition, pinned_at, approved_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (server, tool, row[0], row[1], now, by),
            )
            self._db.execute("DELETE FROM tool_pending WHERE server=? AND tool=?", (server, tool))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return Pin(server, tool, str(row[0]), json.loads(row[1]), now, by)

    def pins(self) -> list[Pin]:
        rows = self._db.execute(
            "SELECT server, tool, sha256, definition, pinned_at, approved_by FROM tool_pins ORDER BY server, tool"
        )
        return [Pin(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def pending(self) -> list[PendingChange]:
        pins = {(p.server, p.tool): p for p in self.pins()}
        rows = self._db.execute(
            "SELECT server, tool, sha256, definition, first_seen FROM tool_pending ORDER BY server, tool, first_seen"
        )
        return [PendingChange(r[0], r[1], r[2], json.loads(r[3]), r[4], pins.get((r[0], r[1]))) for r in rows]


def _dump(definition: dict[str, Any]) -> str:
    return json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
