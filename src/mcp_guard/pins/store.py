"""The pin store: the approved definition of every upstream tool, and definitions awaiting approval.

Kept in its own SQLite file (``[audit] state_path``, beside the audit database) so the audit log stays
append-only. The first time a tool is seen in an upstream's first catalogue its definition hash is pinned
(trust on first use); a tool that appears later is recorded as *pending* unless ``new_tools = "trust"``.
A later definition with another hash is recorded as *pending* too: the tool is hidden and its calls denied with
``tool_changed`` (``pinning = "enforce"``) until an operator runs ``mcp-guard tools approve``.

Operations are small synchronous SQLite statements: they run when an upstream's catalogue changes and
when an operator approves, never per call.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_guard.state.sqlite_file import use_wal
from mcp_guard.types import utc_now

__all__ = ["MIN_SHA_PREFIX", "ApprovalRefused", "PendingChange", "Pin", "PinState", "PinStore", "reviewed"]

MIN_SHA_PREFIX = 8  # hex digits of a sha256 an approval must name (``tools pins`` shows 12)


class ApprovalRefused(KeyError):
    """An approval that would not name exactly the reviewed pending definition (a KeyError for old callers)."""


def reviewed(server: str, tool: str, rows: list[tuple[str, str]], sha256: str | None) -> tuple[str, str]:
    """The pending ``(sha256, definition)`` an approval names, of ``rows`` (oldest first) — every backend's one
    rule: the one whose sha256 starts with ``sha256`` (at least :data:`MIN_SHA_PREFIX` hex digits, matching
    exactly one), or without ``sha256`` the only one. Otherwise :class:`ApprovalRefused` naming what is pending."""
    if not rows:
        raise ApprovalRefused(f"no pending change for {server}/{tool}")
    listed = ", ".join(r[0][:12] for r in rows)
    if sha256 is None:
        if len(rows) > 1:
            raise ApprovalRefused(
                f"{len(rows)} pending definitions of {server}/{tool} ({listed}): name the one you reviewed with --sha"
            )
        return rows[0]
    wanted = sha256.lower()
    if len(wanted) < MIN_SHA_PREFIX or any(c not in "0123456789abcdef" for c in wanted):
        raise ApprovalRefused(f"--sha must be at least {MIN_SHA_PREFIX} hex digits of a pending sha256")
    matches = [r for r in rows if r[0].startswith(wanted)]
    if len(matches) != 1:
        what = "matches no" if not matches else "matches more than one"
        raise ApprovalRefused(f"--sha {sha256} {what} pending definition of {server}/{tool} (pending: {listed})")
    return matches[0]


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

    def to_json(self) -> dict[str, Any]:
        """What `tools pins --json` and the admin API show of a pending change (the definition as a diff)."""
        return {
            "server": self.server,
            "tool": self.tool,
            "sha256": self.sha256,
            "first_seen": self.first_seen,
            "approved_sha256": self.approved.sha256 if self.approved else None,
            "diff": self.diff(),
        }


OPEN_DEADLINE_S = 10.0
"""How long opening the file may keep meeting another process's lock (``run --workers N`` opens it N times at once)."""

_pause = time.sleep  # between attempts (a name of this module's own, so a test can take the wait's place)


def _open(path: Path) -> sqlite3.Connection:
    """The state file opened in WAL mode with the pin tables, retried while another process holds it.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once, without
    waiting out the busy timeout, when another connection holds a write lock it would have to wait for while holding
    its own read lock (two workers starting on one new file). A fresh attempt after a pause gets through.
    """
    deadline = time.monotonic() + OPEN_DEADLINE_S
    pause = 0.01
    while True:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            use_wal(db)
            for stmt in _SCHEMA:
                db.execute(stmt)
            return db
        except sqlite3.OperationalError as e:
            db.close()
            if "locked" not in str(e) or time.monotonic() + pause > deadline:
                raise
        except BaseException:
            db.close()
            raise
        _pause(pause)
        pause = min(pause * 2, 0.5)


class PinStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _open(self.path)

    def close(self) -> None:
        self._db.close()

    def observe(
        self, server: str, tool: str, sha256: str, definition: dict[str, Any], *, trust_new: bool = True
    ) -> PinState:
        """What the store says of a definition seen now. A tool with no pin is pinned on first use when
        ``trust_new``; otherwise it is recorded as pending (``changed``, no approved hash) like a change."""
        row = self._db.execute("SELECT sha256 FROM tool_pins WHERE server=? AND tool=?", (server, tool)).fetchone()
        if row is None and trust_new:
            # A tool already awaiting review (seen mid-session earlier) is not trusted by restarting the proxy.
            trust_new = (
                self._db.execute("SELECT 1 FROM tool_pending WHERE server=? AND tool=?", (server, tool)).fetchone()
                is None
            )
        if row is None and not trust_new:
            first = self._add_pending(server, tool, sha256, definition)
            return PinState(pinned=False, changed=True, approved_sha256=None, first_change=first)
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
        first = self._add_pending(server, tool, sha256, definition)
        return PinState(pinned=False, changed=True, approved_sha256=approved, first_change=first)

    def _add_pending(self, server: str, tool: str, sha256: str, definition: dict[str, Any]) -> bool:
        """Record a definition awaiting approval; True the first time this one is seen."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO tool_pending (server, tool, sha256, definition, first_seen) VALUES (?, ?, ?, ?, ?)",
            (server, tool, sha256, _dump(definition), utc_now()),
        )
        return cur.rowcount == 1

    def approve(self, server: str, tool: str, sha256: str | None = None, *, by: str = "operator") -> Pin:
        """Approve the pending definition the operator reviewed: the one whose sha256 starts with ``sha256``
        (at least :data:`MIN_SHA_PREFIX` hex digits, matching exactly one pending definition), or — without
        ``sha256`` — the only one. Several pending definitions and no hash, an ambiguous or unknown hash: a
        :class:`ApprovalRefused` naming what is pending, and nothing approved."""
        rows = self._db.execute(
            "SELECT sha256, definition FROM tool_pending WHERE server=? AND tool=? ORDER BY first_seen", (server, tool)
        ).fetchall()
        row = reviewed(server, tool, [(str(r[0]), str(r[1])) for r in rows], sha256)
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
